//! The monitor's supervisor: it keeps the monitor task's handle and notices its end.

use std::time::Instant;

use cln_plugin::Plugin;

use super::monitor;
use super::startup::State;
use crate::dsn::WalletDsn;
use crate::facts::{FailureKind, Observation, ProbeFailure, WalletObservation};
use crate::report::StatusDocument;
use crate::statusfile;
use crate::verdict::{Code, Finding, Level, Verdict};

/// Runs the monitor and watches it. Were it to end — a panic or a return — no check would run
/// any more and the hooks would decide on its last level forever. So an ended monitor fails
/// closed: the level becomes unknown (the gate closes), and why is logged, in the report the
/// methods serve and in the status file. It takes no `stop`: the storage was not judged, the
/// plugin failed (a node stopped for the plugin's own fault cannot watch its channels).
pub async fn supervised(plugin: Plugin<State>) {
    let st = plugin.state().0.clone();
    if st.targets.is_err() {
        // Nothing to check (warn mode): no monitor, and the level is unknown already.
        return;
    }
    let why = match tokio::spawn(monitor::run(plugin)).await {
        Ok(()) => "the runtime monitor ended".to_string(),
        Err(e) if e.is_panic() => format!(
            "the runtime monitor panicked: {}",
            panic_text(e.into_panic().as_ref())
        ),
        Err(e) => format!("the runtime monitor was cancelled: {e}"),
    };
    log::error!(
        "{why}; no check runs any more: the level is unknown (the gate refuses) until the \
         plugin restarts"
    );
    *st.guard.level.lock().unwrap_or_else(|e| e.into_inner()) = Level::Unknown;
    let latest = st.guard.latest().map(|(_, r)| r);
    let rep = ended_report(
        latest.unwrap_or_else(|| never_checked(&st.settings.policy, &targets_wallet(&st), &why)),
        &why,
    );
    if let Some(path) = &st.status_file
        && let Err(e) = statusfile::write(path, &rep)
    {
        log::warn!("cannot write the status file {}: {e}", path.display());
    }
    *st.guard.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), rep));
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

fn targets_wallet(st: &super::startup::Inner) -> WalletDsn {
    match &st.targets {
        Ok(t) => t.wallet.clone(),
        // Not reached: `supervised` returns first when there is nothing to check.
        Err(_) => WalletDsn::Other {
            scheme: "none".into(),
        },
    }
}

/// The report when the monitor ended before its first check: the primary was not observed,
/// for the plugin's own fault.
fn never_checked(policy: &crate::policy::Policy, wallet: &WalletDsn, why: &str) -> StatusDocument {
    let wallet = match wallet {
        WalletDsn::Other { scheme } => WalletObservation::NotPostgres {
            scheme: scheme.clone(),
        },
        WalletDsn::Postgres(t) => WalletObservation::Postgres {
            target: t.to_string(),
            primary: Err(ProbeFailure {
                kind: FailureKind::PluginFault,
                stage: "monitor".into(),
                detail: why.to_string(),
            }),
        },
    };
    let obs = Observation {
        checked_at: std::time::SystemTime::now(),
        took_ms: 0.0,
        wallet,
        standbys: vec![],
        pinned_commit: None,
    };
    let nothing = Verdict {
        level: Level::Unknown,
        findings: vec![],
        sync: None,
    };
    StatusDocument::of(&obs, &nothing, policy)
}

/// The last report turned unknown with a finding that says the monitor ended and why; what
/// it saw before stays for the reader.
fn ended_report(mut rep: StatusDocument, why: &str) -> StatusDocument {
    let finding = Finding::new(
        Code::MonitorEnded,
        format!(
            "{why}: the storage is no longer checked; the values below are from its last check"
        ),
        "restart the plugin (lightning-cli plugin start, or restart lightningd) and report \
         the error in lightningd's log",
    );
    rep.verdict = Level::Unknown;
    rep.plugin.reported = Some(Level::Unknown);
    rep.plugin.reported_for_ms = Some(0);
    rep.findings.insert(0, finding);
    rep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_monitor_turns_the_last_report_unknown_and_says_why() {
        let mut last = crate::report::tests::plugin_document();
        last.verdict = Level::Safe;
        last.plugin.reported = Some(Level::Safe);
        last.findings = vec![];
        let r = ended_report(last.clone(), "the runtime monitor panicked: boom").to_json();
        assert_eq!(r["verdict"], "unknown");
        assert_eq!(r["reported"], "unknown");
        assert_eq!(r["findings"][0]["code"], "monitor-ended");
        assert_eq!(r["findings"][0]["severity"], "unknown");
        assert!(
            r["findings"][0]["message"]
                .as_str()
                .unwrap()
                .contains("boom")
        );
        // What the last check saw stays.
        assert_eq!(r["primary"], last.to_json()["primary"]);
        let wallet = WalletDsn::Other {
            scheme: "sqlite3".into(),
        };
        let first = never_checked(&Default::default(), &wallet, "ended");
        let r = ended_report(first, "the runtime monitor ended").to_json();
        assert_eq!(r["findings"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn a_panic_message_is_read_from_either_payload() {
        assert_eq!(panic_text(&"static"), "static");
        assert_eq!(panic_text(&String::from("owned")), "owned");
        assert_eq!(panic_text(&7u8), "(no message)");
    }
}
