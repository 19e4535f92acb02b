//! The Prometheus text exposition of the runtime guard's latest report: built from the same
//! JSON the status file carries, so the three out-of-band views never disagree.

use std::fmt::Write as _;

use serde_json::Value;

use crate::lsn::Lsn;

/// Checks run by the monitor, and those that could not observe the primary at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub checks: u64,
    pub failed: u64,
}

const LEVELS: [&str; 4] = ["safe", "degraded", "unsafe", "unknown"];

/// Renders the metrics; `report` is a status report (`None` before the first check).
pub fn render(report: Option<&Value>, counters: Counters) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {}", number(*v));
        }
    };
    let reported = report
        .and_then(|r| r["reported"].as_str().or(r["verdict"].as_str()))
        .unwrap_or("unknown");
    metric(
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
        let sync = &r["sync"];
        metric(
            "replguard_sync_standbys_healthy",
            "gauge",
            "synchronous standbys that confirmed the last check",
            &[(String::new(), sync["healthy"].as_f64().unwrap_or(0.0))],
        );
        metric(
            "replguard_sync_standbys_required",
            "gauge",
            "synchronous standbys synchronous_standby_names requires",
            &[(String::new(), sync["required"].as_f64().unwrap_or(0.0))],
        );
        let primary_flush: Option<Lsn> = r["primary"]["flush_lsn"]
            .as_str()
            .and_then(|l| l.parse().ok());
        let standbys: Vec<&Value> = r["standbys"]
            .as_array()
            .map(|a| a.iter().filter(|s| s["connected"] == true).collect())
            .unwrap_or_default();
        let label = |s: &Value| {
            format!(
                "{{standby=\"{}\"}}",
                escape(s["name"].as_str().unwrap_or(""))
            )
        };
        metric(
            "replguard_standby_reply_age_seconds",
            "gauge",
            "age of the standby's last reply to the primary",
            &standbys
                .iter()
                .filter_map(|s| s["reply_age_ms"].as_f64().map(|ms| (label(s), ms / 1000.0)))
                .collect::<Vec<_>>(),
        );
        metric(
            "replguard_standby_flush_gap_bytes",
            "gauge",
            "WAL bytes the primary flushed that the standby has not",
            &standbys
                .iter()
                .filter_map(|s| {
                    let f: Lsn = s["flush_lsn"].as_str()?.parse().ok()?;
                    Some((label(s), primary_flush?.bytes_after(f) as f64))
                })
                .collect::<Vec<_>>(),
        );
        metric(
            "replguard_commit_probe_seconds",
            "gauge",
            "round trip of the last acknowledged test commit (NaN when none)",
            &[(
                String::new(),
                r["commit_probe_ms"]
                    .as_f64()
                    .map_or(f64::NAN, |ms| ms / 1000.0),
            )],
        );
        let w = &r["syncrep_waiters"];
        metric(
            "replguard_syncrep_waiting_backends",
            "gauge",
            "backends (ours excepted) waiting for the synchronous standby",
            &[(String::new(), w["count"].as_f64().unwrap_or(0.0))],
        );
        metric(
            "replguard_syncrep_longest_wait_seconds",
            "gauge",
            "longest of those waits",
            &[(
                String::new(),
                w["longest_ms"].as_f64().map_or(0.0, |ms| ms / 1000.0),
            )],
        );
    }
    metric(
        "replguard_checks_total",
        "counter",
        "checks run by the runtime guard",
        &[(String::new(), counters.checks as f64)],
    );
    metric(
        "replguard_checks_failed_total",
        "counter",
        "checks that could not observe the primary",
        &[(String::new(), counters.failed as f64)],
    );
    out
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
    use serde_json::json;

    #[test]
    fn renders_every_metric_from_a_report() {
        let report = json!({
            "verdict": "unsafe", "reported": "unsafe",
            "sync": {"healthy": 0, "required": 1},
            "primary": {"flush_lsn": "0/3000200"},
            "standbys": [{"name": "s\"1", "connected": true, "flush_lsn": "0/3000100", "reply_age_ms": 1500.0}],
            "commit_probe_ms": null,
            "syncrep_waiters": {"count": 2, "longest_ms": 4200.0},
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
    fn before_the_first_check_the_verdict_is_unknown() {
        let text = render(None, Counters::default());
        assert!(
            text.contains("replguard_verdict{level=\"unknown\"} 1"),
            "{text}"
        );
        assert!(!text.contains("replguard_sync_standbys_healthy"));
    }
}
