//! The Prometheus text exposition of the runtime guard's latest report: built from the same
//! JSON the status file carries, so the three out-of-band views never disagree.

use std::fmt::Write as _;

use crate::facts::WalSender;
use crate::report::StatusDocument;

/// Checks run by the monitor, and those that could not observe the primary at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub checks: u64,
    pub failed: u64,
}

const LEVELS: [&str; 4] = ["safe", "degraded", "unsafe", "unknown"];

/// Renders the metrics; `report` is a status report (`None` before the first check).
pub fn render(report: Option<&StatusDocument>, counters: Counters) -> String {
    let mut m = Exposition(String::new());
    let reported = report.map_or("unknown", |r| r.reported_level().as_str());
    m.metric(
        "replguard_verdict",
        "gauge",
        "1 for the reported (debounced) verdict, 0 for the others",
        &LEVELS
            .iter()
            .map(|l| {
                (
                    format!("{{level=\"{l}\"}}"),
                    f64::from(u8::from(*l == reported)),
                )
            })
            .collect::<Vec<_>>(),
    );
    if let Some(r) = report {
        storage_metrics(&mut m, r);
        finding_metrics(&mut m, r);
    }
    m.metric(
        "replguard_checks_total",
        "counter",
        "checks run by the runtime guard",
        &[(String::new(), counters.checks as f64)],
    );
    m.metric(
        "replguard_checks_failed_total",
        "counter",
        "checks that could not observe the primary",
        &[(String::new(), counters.failed as f64)],
    );
    m.0
}

/// The metrics of the last check: standbys, replies, flush gaps, the probe, the waiters.
fn storage_metrics(m: &mut Exposition, r: &StatusDocument) {
    let sync = r.sync.as_ref();
    m.metric(
        "replguard_sync_standbys_healthy",
        "gauge",
        "synchronous standbys that confirmed the last check",
        &[(String::new(), sync.map_or(0.0, |s| f64::from(s.healthy)))],
    );
    m.metric(
        "replguard_sync_standbys_required",
        "gauge",
        "synchronous standbys synchronous_standby_names requires",
        &[(String::new(), sync.map_or(0.0, |s| f64::from(s.required)))],
    );
    let primary_flush = r.primary.flush_lsn();
    // The connected standbys, each with its WAL sender's row.
    let standbys: Vec<(&str, &WalSender)> = r
        .standbys
        .iter()
        .filter(|s| s.connected)
        .filter_map(|s| Some((s.name.as_deref().unwrap_or(""), s.sender.as_ref()?)))
        .collect();
    let label = |name: &str| format!("{{standby=\"{}\"}}", escape(name));
    m.metric(
        "replguard_standby_reply_age_seconds",
        "gauge",
        "age of the standby's last reply to the primary",
        &standbys
            .iter()
            .filter_map(|(name, s)| s.reply_age_ms.map(|ms| (label(name), ms / 1000.0)))
            .collect::<Vec<_>>(),
    );
    m.metric(
        "replguard_standby_flush_gap_bytes",
        "gauge",
        "WAL bytes the primary flushed that the standby has not",
        &standbys
            .iter()
            .filter_map(|(name, s)| {
                Some((label(name), primary_flush?.bytes_after(s.flush_lsn?) as f64))
            })
            .collect::<Vec<_>>(),
    );
    m.metric(
        "replguard_commit_probe_seconds",
        "gauge",
        "round trip of the last acknowledged test commit (NaN when none)",
        &[(
            String::new(),
            r.commit_probe_ms.map_or(f64::NAN, |ms| ms / 1000.0),
        )],
    );
    let w = r.syncrep_waiters.clone().unwrap_or_default();
    m.metric(
        "replguard_syncrep_waiting_backends",
        "gauge",
        "backends (ours excepted) waiting for the synchronous standby",
        &[(String::new(), w.count as f64)],
    );
    m.metric(
        "replguard_syncrep_longest_wait_seconds",
        "gauge",
        "longest of those waits",
        &[(String::new(), w.longest_ms.map_or(0.0, |ms| ms / 1000.0))],
    );
}

/// The last check's findings, advice included (which never changes `replguard_verdict`).
fn finding_metrics(m: &mut Exposition, r: &StatusDocument) {
    use crate::verdict::Severity;
    m.metric(
        "replguard_findings",
        "gauge",
        "findings of the last check by severity (advice does not change the verdict)",
        &[
            Severity::Unsafe,
            Severity::Unknown,
            Severity::Degraded,
            Severity::Advice,
        ]
        .iter()
        .map(|sev| {
            let n = r.findings.iter().filter(|f| f.severity == *sev).count();
            (format!("{{severity=\"{sev}\"}}"), n as f64)
        })
        .collect::<Vec<_>>(),
    );
    m.metric(
        "replguard_finding",
        "gauge",
        "1 for each finding of the last check; its remedy is in replication-status",
        &r.findings
            .iter()
            .map(|f| {
                (
                    format!("{{code=\"{}\",severity=\"{}\"}}", f.code, f.severity),
                    1.0,
                )
            })
            .collect::<Vec<_>>(),
    );
}

/// Prometheus' text exposition being written.
struct Exposition(String);

impl Exposition {
    fn metric(&mut self, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(self.0, "{name}{labels} {}", number(*v));
        }
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::SyncRepWaiters;
    use crate::lsn::Lsn;
    use crate::report::{PrimaryPart, SyncPart};
    use crate::verdict::Level;

    #[test]
    fn renders_every_metric_from_a_report() {
        let mut report = crate::report::tests::plugin_document();
        report.verdict = Level::Unsafe;
        report.plugin.reported = Some(Level::Unsafe);
        report.sync = Some(SyncPart {
            healthy: 0,
            required: 1,
        });
        if let PrimaryPart::Reached(p) = &mut report.primary {
            p.flush_lsn = Some(Lsn(0x3000200));
        }
        report.standbys.truncate(1);
        let standby = &mut report.standbys[0];
        standby.name = Some("s\"1".into());
        let sender = standby.sender.as_mut().unwrap();
        sender.flush_lsn = Some(Lsn(0x3000100));
        sender.reply_age_ms = Some(1500.0);
        report.commit_probe_ms = None;
        report.syncrep_waiters = Some(SyncRepWaiters {
            count: 2,
            longest_ms: Some(4200.0),
        });
        let text = render(
            Some(&report),
            Counters {
                checks: 7,
                failed: 1,
            },
        );
        for line in [
            "replguard_verdict{level=\"unsafe\"} 1",
            "replguard_verdict{level=\"safe\"} 0",
            "replguard_sync_standbys_healthy 0",
            "replguard_sync_standbys_required 1",
            "replguard_standby_reply_age_seconds{standby=\"s\\\"1\"} 1.5",
            "replguard_standby_flush_gap_bytes{standby=\"s\\\"1\"} 256",
            "replguard_commit_probe_seconds NaN",
            "replguard_syncrep_waiting_backends 2",
            "replguard_syncrep_longest_wait_seconds 4.2",
            "replguard_checks_total 7",
            "replguard_checks_failed_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn advice_is_listed_and_leaves_the_verdict_alone() {
        let mut report = crate::report::tests::plugin_document();
        report.verdict = Level::Safe;
        report.plugin.reported = Some(Level::Safe);
        report.findings = vec![crate::verdict::Finding::new(
            crate::verdict::Code::RewindImpossible,
            "m",
            "r",
        )];
        let text = render(Some(&report), Counters::default());
        for line in [
            "replguard_verdict{level=\"safe\"} 1",
            "replguard_findings{severity=\"advice\"} 1",
            "replguard_findings{severity=\"degraded\"} 0",
            "replguard_finding{code=\"rewind-impossible\",severity=\"advice\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn before_the_first_check_the_verdict_is_unknown() {
        let text = render(None, Counters::default());
        assert!(
            text.contains("replguard_verdict{level=\"unknown\"} 1"),
            "{text}"
        );
        assert!(!text.contains("replguard_sync_standbys_healthy"));
    }
}
