//! The runtime guard's loop: every `replguard-interval` a check (one at a time), the verdict
//! debounced (`guard::Debouncer`), the latest report kept for the methods and written to the
//! status file, each change logged once and notified, and the configured action taken.
//!
//! Nothing here waits on lightningd reading our stdout: while a commit waits for an absent
//! standby, lightningd is frozen, and so is its end of our pipe (DESIGN §2). Logging never
//! blocks; the notification is sent from its own task with a deadline; the status file is
//! ours.

use std::path::Path;
use std::time::{Duration, Instant};

use cln_plugin::Plugin;
use serde_json::json;

use super::NOTIFY_STATE_CHANGED;
use super::alert;
use super::lightningd;
use super::startup::{Inner, State};
use crate::guard::{self, Debouncer, OnUnsafe, StopDecision, Transition};
use crate::policy::Policy;
use crate::verdict::{Code, Verdict};
use crate::{evidence, probe, report, statusfile};

/// A notification not taken by then is dropped: lightningd is frozen or gone.
const NOTIFY_DEADLINE: Duration = Duration::from_secs(2);
/// `stop` not answered by then (lightningd frozen on a commit): end it with SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

pub(super) async fn run(plugin: Plugin<State>) {
    let st = plugin.state().0.clone();
    let Ok(targets) = &st.targets else { return };
    let mut debounce = Debouncer::new(st.level(), Instant::now());
    let mut next_check = tokio::time::Instant::now();
    let mut stopping = false;
    let mut fault = FaultStreak::default();
    // The primary's session, kept across checks: no backend fork per check.
    let mut kept = probe::Kept::default();
    // Periodic checks may rely on fresh standby replies instead of writing a test commit.
    let policy = Policy {
        skip_probe_within: st.settings.reply_fresh,
        ..st.settings.policy
    };
    // Each check's record goes to the evidence writer, which writes the changes on its own
    // time: the guard never waits for it.
    let writer = targets.evidence_writer().filter(|_| st.settings.evidence);
    let mut evidence = writer.map(|w| EvidenceWriter::spawn(w, policy));
    let metrics = st
        .settings
        .metrics
        .map(|addr| tokio::spawn(super::metrics_http::serve(addr, plugin.state().clone())));
    let mut metrics_ended_said = false;
    loop {
        tokio::time::sleep_until(next_check).await;
        EvidenceWriter::keep(&mut evidence, writer, policy);
        if !metrics_ended_said && metrics.as_ref().is_some_and(|m| m.is_finished()) {
            log::error!("the metrics endpoint ended: no metrics are served until a restart");
            metrics_ended_said = true;
        }
        let started = tokio::time::Instant::now();
        // interval and alert command may change with setconfig while we run.
        let runtime = st.guard.runtime();
        let mut obs = probe::observe_kept(targets, &policy, &mut kept).await;
        next_check = started
            + match obs.primary() {
                Some(p) => guard::next_check_in(&p.commit_probe, runtime.interval),
                None => runtime.interval,
            };
        obs.pinned_commit = st.pinned.clone();
        let v = crate::patroni::verdict_of(&obs, &policy, st.settings.patroni_url.as_ref(), false)
            .await;
        fault.observe(&v);
        if let Some(e) = &evidence {
            e.tx.send_replace(evidence::Record::of(&obs, &v));
        }
        count_check(&st, obs.primary().is_none());
        let now = Instant::now();
        let change = debounce.observe(&v, now);

        let mut rep = report::StatusDocument::of(&obs, &v, &policy);
        rep.plugin.mode = Some(st.settings.mode);
        rep.plugin.reported = Some(debounce.reported);
        rep.plugin.reported_for_ms = Some(debounce.held_for(now).as_millis() as u64);
        rep.plugin.interval_ms = Some(runtime.interval.as_millis() as u64);
        *st.guard.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, rep.clone()));
        // The level after the report it comes from: a hook that sees the new level finds its
        // findings too (it once answered a refusal with "findings": null in between).
        *st.guard.level.lock().unwrap_or_else(|e| e.into_inner()) = debounce.reported;
        if let Some(path) = &st.status_file
            && let Err(e) = statusfile::write(path, &rep)
        {
            log::warn!("cannot write the status file {}: {e}", path.display());
        }
        if let Some(t) = change {
            announce(&plugin, t, &v);
            if let Some(cmd) = &runtime.alert_command {
                tokio::spawn(alert::run(cmd.clone(), t, rep.to_json()));
            }
        }
        panic_if_told(st.guard.counters().checks);
        if stopping || st.settings.gate.on_unsafe == OnUnsafe::Log {
            continue;
        }
        // Self-fence: our standby took over; two primaries must not both run a node.
        if v.has(Code::StandbyPromoted) {
            stopping = true;
            stop_lightningd(
                &st.rpc_path,
                "a configured standby answers as a primary (promoted)",
                &v,
            )
            .await;
            continue;
        }
        stopping = stop_if_due(&st, &debounce, now, &v, &mut fault).await;
    }
}

/// One more check in the counters (and a failed one when the primary could not be read).
fn count_check(st: &Inner, failed: bool) {
    let mut c = st.guard.counters.lock().unwrap_or_else(|e| e.into_inner());
    c.checks += 1;
    if failed {
        c.failed += 1;
    }
}

/// Stop mode: stops lightningd once the storage has been not safe for the grace period —
/// never for a plugin fault alone (`guard::stop_decision`). Returns whether it stopped.
async fn stop_if_due(
    st: &Inner,
    debounce: &Debouncer,
    now: Instant,
    v: &Verdict,
    fault: &mut FaultStreak,
) -> bool {
    let held = debounce.held_for(now);
    match guard::stop_decision(
        &st.settings.gate,
        debounce.reported,
        held,
        st.settings.unsafe_grace,
        v,
    ) {
        StopDecision::Wait => false,
        StopDecision::NotForAPluginFault => {
            if !fault.told_stop {
                fault.told_stop = true;
                log::warn!(
                    "plugin fault: not stopping lightningd (replguard-on-unsafe=stop): the \
                     level is {} because of the plugin's own fault, not the storage's",
                    debounce.reported
                );
            }
            false
        }
        StopDecision::Stop => {
            let why = format!(
                "storage {} for {} s (replguard-unsafe-grace {} s)",
                debounce.reported,
                held.as_secs(),
                st.settings.unsafe_grace.as_secs()
            );
            stop_lightningd(&st.rpc_path, &why, v).await;
            true
        }
    }
}

/// A streak of checks with a plugin fault: told once when it begins and ends, not every check.
#[derive(Default)]
struct FaultStreak {
    on: bool,
    told_stop: bool,
}

impl FaultStreak {
    fn observe(&mut self, v: &Verdict) {
        match (v.finding(Code::PluginFault), self.on) {
            (Some(f), false) => {
                *self = FaultStreak {
                    on: true,
                    told_stop: false,
                };
                log::warn!("{}; retrying every check", f.message);
            }
            (None, true) => {
                *self = FaultStreak::default();
                log::info!("the plugin fault cleared: checks run again");
            }
            _ => {}
        }
    }
}

/// Tests only: `REPLGUARD_TEST_MONITOR_PANIC_AFTER=n` makes the monitor panic after its n-th
/// check, so a test can watch the supervisor at work. Read in debug builds only: a release
/// build ignores it.
fn panic_if_told(checks: u64) {
    #[cfg(debug_assertions)]
    if std::env::var("REPLGUARD_TEST_MONITOR_PANIC_AFTER")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        == Some(checks)
    {
        panic!("REPLGUARD_TEST_MONITOR_PANIC_AFTER={checks}: the monitor panics as told");
    }
    #[cfg(not(debug_assertions))]
    let _ = checks;
}

/// The evidence writer's task and the channel that feeds it the newest record.
struct EvidenceWriter {
    tx: tokio::sync::watch::Sender<Option<evidence::Record>>,
    task: tokio::task::JoinHandle<()>,
}

impl EvidenceWriter {
    fn spawn(target: &crate::dsn::PgTarget, policy: Policy) -> EvidenceWriter {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let task = tokio::spawn(evidence_writer(target.clone(), policy, rx));
        EvidenceWriter { tx, task }
    }

    /// The tasks beside the monitor are kept and their end noticed: a writer that died would
    /// leave the standby with an older verdict as the newest, so it starts again.
    fn keep(
        evidence: &mut Option<EvidenceWriter>,
        target: Option<&crate::dsn::PgTarget>,
        policy: Policy,
    ) {
        if let (Some(t), Some(e)) = (target, evidence.as_ref())
            && e.task.is_finished()
        {
            log::error!(
                "the evidence writer ended unexpectedly; starting it again (cln-replguard \
                 failover reads what it writes)"
            );
            *evidence = Some(EvidenceWriter::spawn(t, policy));
        }
    }
}

/// Pause before writing again after a failed write, doubled while writes keep failing (a
/// lasting cause, such as a table another role owns, then costs a session every 30 s, not
/// every second).
const EVIDENCE_RETRY: Duration = Duration::from_secs(1);
const EVIDENCE_RETRY_MAX: Duration = Duration::from_secs(30);

/// Writes the newest record to `replguard.evidence` whenever it differs from the last one
/// written. A failed write is retried (with the newest record then) until it succeeds: the
/// standby must never keep an older "safe" row as the newest because a write failed. The
/// failure is logged once per record.
async fn evidence_writer(
    target: crate::dsn::PgTarget,
    policy: Policy,
    mut rx: tokio::sync::watch::Receiver<Option<evidence::Record>>,
) {
    let mut written: Option<evidence::Record> = None;
    let mut warned: Option<evidence::Record> = None;
    let mut retry = EVIDENCE_RETRY;
    loop {
        let newest = rx.borrow_and_update().clone();
        if let Some(record) = newest
            && evidence::worth_recording(written.as_ref(), &record)
        {
            match probe::evidence::record_if_changed(
                &target,
                &record,
                "plugin",
                policy.query_timeout,
            )
            .await
            {
                Ok(_) => {
                    written = Some(record);
                    retry = EVIDENCE_RETRY;
                }
                Err(f) => {
                    if warned.as_ref() != Some(&record) {
                        log::warn!(
                            "cannot record the verdict in replguard.evidence ({f}); retrying. \
                             Until it is written, cln-replguard failover reads an older verdict \
                             on the standby"
                        );
                        warned = Some(record);
                    }
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(EVIDENCE_RETRY_MAX);
                    continue;
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

fn announce(plugin: &Plugin<State>, t: Transition, v: &Verdict) {
    let codes: Vec<&str> = v.findings.iter().map(|f| f.code.as_str()).collect();
    if guard::is_good(t.to) {
        log::info!("replication {} → {}", t.from, t.to);
    } else {
        log::warn!("replication {} → {}: {}", t.from, t.to, codes.join(", "));
        for f in &v.findings {
            log::warn!("{f}");
        }
    }
    let payload = json!({
        "previous": t.from,
        "current": t.to,
        "findings": v.findings,
    });
    let plugin = plugin.clone();
    tokio::spawn(async move {
        let send = plugin.send_custom_notification(NOTIFY_STATE_CHANGED.to_string(), payload);
        if tokio::time::timeout(NOTIFY_DEADLINE, send).await.is_err() {
            log::debug!("{NOTIFY_STATE_CHANGED} not delivered within {NOTIFY_DEADLINE:?}");
        }
    });
}

/// Asks lightningd to stop; if it does not answer (frozen on a commit), ends it.
pub(super) async fn stop_lightningd(rpc_path: &Path, why: &str, v: &Verdict) {
    let mut lines = vec![format!("stopping lightningd: {why}")];
    lines.extend(
        v.findings
            .iter()
            .map(|f| format!("[{}] {}: {}", f.severity, f.code, f.message)),
    );
    for l in &lines {
        log::error!("{l}");
    }
    match crate::lightningd_rpc::call(rpc_path, "stop", json!({}), STOP_DEADLINE).await {
        Ok(_) => log::error!("lightningd accepted stop"),
        Err(e) => {
            log::error!("stop was not answered ({e:#}); ending lightningd");
            if let Some(pid) = lightningd::parent_lightningd() {
                // SAFETY: signalling our parent, which /proc says is lightningd.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    }
}
