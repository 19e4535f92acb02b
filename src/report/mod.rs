//! Verdict + facts → the report: one JSON schema (CLI `--json`, later the RPC methods and the
//! status file) and the text an operator reads.

mod document;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::facts::{Observation, WalletObservation};
use crate::failover::FailoverAnswer;
use crate::policy::Policy;
use crate::syncnames::SyncNames;
use crate::timefmt::rfc3339;
use crate::verdict::Verdict;

pub use document::{
    BeforeInit, DocumentError, LightningdPart, Phase, PluginPart, PolicyPart, PrimaryPart,
    ReachedPrimary, SCHEMA_VERSION, SettingsPart, StandbyEntry, StandbySide, StatusDocument,
    SyncPart,
};

pub fn failover_json(obs: &Observation, answer: &FailoverAnswer) -> Value {
    let mut v = serde_json::to_value(answer).unwrap_or(Value::Null);
    v["checked_at"] = json!(rfc3339(obs.checked_at));
    v["check_ms"] = json!(obs.took_ms);
    v["primary"] = json!(PrimaryPart::of(obs));
    v["synchronous_commit"] = json!(obs.primary().map(|p| &p.session.synchronous_commit));
    v["synchronous_standby_names"] = json!(obs.primary().map(|p| &p.sync_names_raw));
    v
}

/// The human-readable report of `cln-replguard status`.
pub fn status_text(obs: &Observation, verdict: &Verdict) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "verdict: {}", verdict.level.as_str().to_uppercase());
    match &obs.wallet {
        WalletObservation::NotPostgres { scheme } => {
            let _ = writeln!(out, "wallet:  {scheme}:// backend (not PostgreSQL)");
        }
        WalletObservation::Postgres { target, primary } => {
            let _ = writeln!(out, "wallet:  {target}");
            match primary {
                Err(f) => {
                    let _ = writeln!(out, "primary: not checked ({f})");
                }
                Ok(p) => {
                    let _ = writeln!(
                        out,
                        "primary: PostgreSQL {}, {}, timeline {}, flushed to {}",
                        p.server_version,
                        if p.in_recovery {
                            "IN RECOVERY"
                        } else {
                            "primary"
                        },
                        p.timeline.map_or("?".into(), |t| t.to_string()),
                        p.flush_lsn.map_or("?".into(), |l| l.to_string()),
                    );
                    let sync = match (&p.sync_names, &verdict.sync) {
                        (Ok(SyncNames::Empty), _) => {
                            "none (synchronous_standby_names is empty)".into()
                        }
                        (_, Some(a)) => format!(
                            "'{}': {} of {} required healthy",
                            p.sync_names_raw, a.healthy, a.required
                        ),
                        _ => format!("'{}'", p.sync_names_raw),
                    };
                    let _ = writeln!(out, "sync:    {sync}");
                    let _ = writeln!(
                        out,
                        "commit:  synchronous_commit = {} for lightningd's sessions ({})",
                        p.session.synchronous_commit, p.session.synchronous_commit_source
                    );
                    let _ = writeln!(out, "probe:   {}", probe_text(&p.commit_probe));
                    for w in &p.walsenders {
                        let _ = writeln!(out, "standby: {}", sender_text(w, verdict));
                    }
                    if p.walsenders.is_empty() {
                        let _ = writeln!(out, "standby: none connected");
                    }
                }
            }
        }
    }
    for s in &obs.standbys {
        let line = match &s.facts {
            Err(f) => format!("unreachable ({f})"),
            Ok(f) => format!(
                "{} as '{}', receiver {}, timeline {}{}",
                if f.in_recovery {
                    "in recovery"
                } else {
                    "NOT in recovery"
                },
                f.walsender_name(),
                f.receiver
                    .as_ref()
                    .and_then(|r| r.status.clone())
                    .unwrap_or_else(|| "not running".into()),
                f.timeline.map_or("?".into(), |t| t.to_string()),
                if f.replay_paused == Some(true) {
                    ", replay PAUSED"
                } else {
                    ""
                },
            ),
        };
        let _ = writeln!(out, "standby DSN {}: {line}", s.target);
    }
    if verdict.findings.is_empty() {
        let _ = writeln!(out, "findings: none");
    } else {
        let _ = writeln!(out, "findings:");
        for f in &verdict.findings {
            let _ = writeln!(out, "  {}", f.headline());
            let _ = writeln!(out, "      fix: {}", f.remedy);
        }
    }
    out
}

/// One connected WAL sender: name, state, flush position, reply age, and why it does not
/// count when it does not.
fn sender_text(w: &crate::facts::WalSender, verdict: &Verdict) -> String {
    let judgement = verdict.sender_judgement(w.pid);
    format!(
        "{} {}/{} flushed {}{}{}",
        if w.application_name.is_empty() {
            "?"
        } else {
            &w.application_name
        },
        w.state.as_deref().unwrap_or("?"),
        w.sync_state.as_deref().unwrap_or("?"),
        w.flush_lsn.map_or("?".into(), |l| l.to_string()),
        w.reply_age_ms.map_or(String::new(), |a| format!(
            ", reply {:.1} s ago",
            a / 1000.0
        )),
        judgement
            .and_then(|j| j.why_not.as_deref())
            .map_or(String::new(), |why| format!(" — {why}")),
    )
}

/// One line for monitoring systems: `REPLGUARD SAFE: …` with perfdata after `|`.
pub fn check_line(obs: &Observation, verdict: &Verdict, policy: &Policy) -> String {
    // Advice never leads a line whose level it did not set: "SAFE: verified (2 advice: …)".
    let (advice, counted): (Vec<_>, Vec<_>) = verdict
        .findings
        .iter()
        .partition(|f| f.severity == crate::verdict::Severity::Advice);
    let mut summary = match counted.first() {
        None => "synchronous replication verified".to_string(),
        Some(f) => {
            let also: Vec<&str> = counted[1..].iter().map(|f| f.code.as_str()).collect();
            format!(
                "{} ({}){}",
                f.message,
                f.code,
                if also.is_empty() {
                    String::new()
                } else {
                    format!("; also {}", also.join(", "))
                }
            )
        }
    };
    if !advice.is_empty() {
        let codes: Vec<&str> = advice.iter().map(|f| f.code.as_str()).collect();
        summary.push_str(&format!(" ({} advice: {})", advice.len(), codes.join(", ")));
    }
    let mut perf = Vec::new();
    if let Some(ms) = obs.primary().and_then(|p| p.commit_probe.ms()) {
        perf.push(format!(
            "commit_probe={:.3}ms;{};{}",
            ms,
            policy.probe_slow.as_millis(),
            policy.probe_deadline.as_millis()
        ));
    }
    if let Some(a) = &verdict.sync {
        perf.push(format!("sync_standbys={};;{}:", a.healthy, a.required));
    }
    format!(
        "REPLGUARD {}: {summary}{}",
        verdict.level.as_str().to_uppercase(),
        if perf.is_empty() {
            String::new()
        } else {
            format!(" | {}", perf.join(" "))
        }
    )
}

pub fn failover_text(answer: &FailoverAnswer) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "failover: {}{}",
        match answer.readiness {
            crate::failover::Readiness::Ready => "READY",
            crate::failover::Readiness::NotReady => "NOT READY",
            crate::failover::Readiness::Unknown => "UNKNOWN",
        },
        answer
            .target
            .as_ref()
            .map_or(String::new(), |t| format!(" — target {t}")),
    );
    if let Some(l) = answer.primary_flush_lsn {
        let _ = writeln!(out, "primary flushed to {l} when the check began");
    }
    for b in &answer.blockers {
        let _ = writeln!(out, "  blocker: {b}");
    }
    for s in &answer.standbys {
        let _ = writeln!(
            out,
            "  {} {}: {}",
            if s.ready { "ready    " } else { "not ready" },
            s.name,
            if s.reasons.is_empty() {
                format!(
                    "flushed to {}",
                    s.flush_lsn.map_or("?".into(), |l| l.to_string())
                )
            } else {
                let texts: Vec<String> = s.reasons.iter().map(ToString::to_string).collect();
                texts.join("; ")
            }
        );
    }
    if answer.standbys.is_empty() && answer.blockers.is_empty() {
        let _ = writeln!(out, "  no standby is connected");
    }
    out
}

fn probe_text(p: &crate::facts::CommitProbe) -> String {
    use crate::facts::CommitProbe::*;
    match p {
        NotRun => "not run".into(),
        Acknowledged {
            ms,
            released_waiting,
            ..
        } => format!(
            "test commit acknowledged in {ms:.1} ms{}",
            if *released_waiting {
                " (after releasing commits that waited only for a standby's reply)"
            } else {
                ""
            }
        ),
        Waiting { waited_ms, .. } => {
            format!("test commit NOT acknowledged after {waited_ms:.0} ms (left waiting)")
        }
        AlreadyWaiting { waiting_ms } => format!(
            "an earlier test commit is still waiting{}",
            waiting_ms.map_or(String::new(), |ms| format!(" ({:.1} s)", ms / 1000.0))
        ),
        Failed { error } => format!("failed: {error}"),
        PluginFault { error } => format!("not run, plugin fault: {error}"),
        Skipped {
            oldest_reply_ms, ..
        } => format!(
            "skipped: every synchronous standby replied within {oldest_reply_ms:.0} ms (no write needed)"
        ),
    }
}
