//! The plugin's status file, read back by `cln-replguard status --from-file`: the report is
//! written every check, so it stays readable while lightningd is frozen on a commit. A file
//! that stopped changing means the plugin stopped checking: "unknown", never the old verdict.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::verdict::Level;

/// A report older than this many check intervals is stale.
pub const STALE_AFTER_INTERVALS: u32 = 3;

/// The document as read, with `verdict` forced to unknown (and a finding saying why) when
/// it is stale or unreadable; and the level to exit with.
pub fn judge(mut doc: Value, now: SystemTime) -> (Value, Level) {
    let interval = Duration::from_millis(doc["interval_ms"].as_u64().unwrap_or(1000));
    let written = doc["written_at"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok());
    let age = written.map(|w| now.duration_since(w).unwrap_or_default());
    let stale_after = interval * STALE_AFTER_INTERVALS;
    let problem = match age {
        None => Some("the status file has no readable written_at".to_string()),
        Some(a) if a > stale_after => Some(format!(
            "the status file is {:.1} s old (more than {STALE_AFTER_INTERVALS} check intervals): \
             the plugin is not checking (lightningd stopped, or the plugin hung)",
            a.as_secs_f64()
        )),
        Some(_) => None,
    };
    doc["file_age_ms"] = json!(age.map(|a| a.as_millis() as u64));
    let level = match problem {
        Some(why) => {
            doc["verdict"] = json!("unknown");
            let finding = json!({
                "code": "status-file-stale",
                "severity": "unknown",
                "message": why,
                "remedy": "check that lightningd and the plugin run (journalctl, lightningd's log)",
            });
            match doc["findings"].as_array_mut() {
                Some(f) => f.insert(0, finding),
                None => doc["findings"] = json!([finding]),
            }
            Level::Unknown
        }
        None => match doc["verdict"].as_str() {
            Some("safe") => Level::Safe,
            Some("degraded") => Level::Degraded,
            Some("unsafe") => Level::Unsafe,
            _ => Level::Unknown,
        },
    };
    (doc, level)
}

/// A short human summary of a status file.
pub fn text(doc: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "verdict: {} (from the plugin's status file, {:.1} s old; reported {})",
        doc["verdict"].as_str().unwrap_or("unknown").to_uppercase(),
        doc["file_age_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
        doc["reported"].as_str().unwrap_or("?"),
    );
    let waiters = &doc["syncrep_waiters"];
    if waiters["count"].as_i64().unwrap_or(0) > 0 {
        let _ = writeln!(
            out,
            "waiting: {} commit(s) wait for the standby, the longest {:.1} s",
            waiters["count"],
            waiters["longest_ms"].as_f64().unwrap_or(0.0) / 1000.0
        );
    }
    for f in doc["findings"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  [{}] {}: {}\n      fix: {}",
            f["severity"].as_str().unwrap_or(""),
            f["code"].as_str().unwrap_or(""),
            f["message"].as_str().unwrap_or(""),
            f["remedy"].as_str().unwrap_or("")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(written: SystemTime, verdict: &str) -> Value {
        json!({
            "verdict": verdict,
            "findings": [],
            "interval_ms": 1000,
            "written_at": crate::report::rfc3339(written),
        })
    }

    #[test]
    fn a_fresh_file_keeps_its_verdict() {
        let now = SystemTime::now();
        let (d, l) = judge(doc(now - Duration::from_millis(1500), "unsafe"), now);
        assert_eq!(l, Level::Unsafe);
        assert_eq!(d["verdict"], "unsafe");
    }

    #[test]
    fn a_file_older_than_three_intervals_is_unknown() {
        let now = SystemTime::now();
        let (d, l) = judge(doc(now - Duration::from_secs(4), "safe"), now);
        assert_eq!(l, Level::Unknown);
        assert_eq!(d["verdict"], "unknown");
        assert_eq!(d["findings"][0]["code"], "status-file-stale");
    }

    #[test]
    fn a_file_without_a_time_is_unknown() {
        let (_, l) = judge(json!({"verdict": "safe"}), SystemTime::now());
        assert_eq!(l, Level::Unknown);
    }
}
