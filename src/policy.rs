//! The thresholds the verdict judges by. One struct, shared by the CLI and (later) the plugin's
//! options, so both judge alike.

use std::time::{Duration, SystemTime};

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// Deadline of every connection attempt and every query.
    #[serde(serialize_with = "as_millis")]
    pub query_timeout: Duration,
    /// A test commit not acknowledged by the synchronous standbys within this is the finding
    /// that commits are blocked; lightningd backends waiting longer are too.
    #[serde(serialize_with = "as_millis")]
    pub probe_deadline: Duration,
    /// Acknowledged, but later than this: replication works with less margin than asked.
    #[serde(serialize_with = "as_millis")]
    pub probe_slow: Duration,
    /// Write-free liveness: when every synchronous standby that counts replied within this,
    /// and no commit has waited longer than `probe_slow`, the test commit is skipped (it writes WAL; with `archive_timeout`
    /// each write costs an archived segment). `None`: always probe (the CLI's one-shot).
    #[serde(serialize_with = "as_optional_millis")]
    pub skip_probe_within: Option<Duration>,
    /// After a failover, running without a standby is accepted until then
    /// (`replguard-accept-no-standby-until`): an empty `synchronous_standby_names` reads as
    /// degraded (`no-replica-accepted`) instead of unsafe. Never open-ended.
    #[serde(serialize_with = "as_optional_rfc3339")]
    pub accept_no_standby_until: Option<SystemTime>,
}

/// The defaults of the thresholds (`replguard-query-timeout-ms`, `--query-timeout-ms`, …): the
/// option descriptions and the CLI's help say the same numbers (a test in options.rs checks).
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_millis(2000);
pub const DEFAULT_PROBE_DEADLINE: Duration = Duration::from_millis(1000);
pub const DEFAULT_PROBE_SLOW: Duration = Duration::from_millis(250);

/// How long `failover-check` waits for a standby to flush up to the primary's position, by
/// default (the CLI's `--wait-ms`, the RPC method's `wait_ms`).
pub const DEFAULT_FAILOVER_WAIT: Duration = Duration::from_millis(2000);

impl Default for Policy {
    fn default() -> Self {
        Policy {
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            probe_deadline: DEFAULT_PROBE_DEADLINE,
            probe_slow: DEFAULT_PROBE_SLOW,
            skip_probe_within: None,
            accept_no_standby_until: None,
        }
    }
}

impl Policy {
    /// Checks the relations between thresholds; the message names the option to fix.
    pub fn validate(&self) -> Result<(), String> {
        if self.query_timeout.is_zero() || self.probe_deadline.is_zero() {
            return Err("query-timeout-ms and probe-deadline-ms must be greater than 0".into());
        }
        if self.probe_slow >= self.probe_deadline {
            return Err(format!(
                "probe-slow-ms ({} ms) must be below probe-deadline-ms ({} ms)",
                self.probe_slow.as_millis(),
                self.probe_deadline.as_millis()
            ));
        }
        Ok(())
    }
}

fn as_optional_millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_u64(d.as_millis() as u64),
        None => s.serialize_none(),
    }
}

fn as_optional_rfc3339<S: serde::Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&crate::timefmt::rfc3339(*t)),
        None => s.serialize_none(),
    }
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Policy::default().validate(), Ok(()));
    }

    #[test]
    fn slow_threshold_must_sit_below_the_deadline() {
        let p = Policy {
            probe_slow: Duration::from_millis(1000),
            ..Policy::default()
        };
        assert!(p.validate().unwrap_err().contains("probe-slow-ms"));
    }
}
