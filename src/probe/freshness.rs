//! How old a standby's last reply is, judged on our clock, and whether fresh replies may
//! stand in for the commit probe (`Policy::skip_probe_within`).
//!
//! `pg_stat_replication.reply_time` is stamped by the standby's own clock (DESIGN §6): the
//! primary's `now() - reply_time` is off by the clock difference. A standby an hour ahead
//! sends replies that look an hour younger than they are — "fresh" for an hour, so the probe
//! was skipped and a hung standby stayed safe until `wal_sender_timeout`. So the age that
//! decides is bounded by what this process saw on its own monotonic clock, between reads:
//! - a reply seen at an earlier read is at least as old as the time since that read;
//! - a reply not there at the previous read arrived after it: at most as old as the time
//!   since that read;
//! - the standby's clock is believed only within those bounds, and never when it puts the
//!   reply in the future (a negative age says the clocks disagree, not that it is fresh).
//!
//! A reply that stops changing (a hung standby) therefore ages on our clock whatever the
//! standby's clock says. Pure rules; the memory between reads is kept by the caller.

use std::collections::HashMap;
use std::time::Instant;

use crate::facts::{CommitProbe, SyncRepWaiters, WalSender};
use crate::policy::Policy;
use crate::syncnames::SyncNames;

/// What is known about the age of one reply, in ms, at the moment of a read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ReplyTiming {
    /// The primary's `clock_timestamp() - reply_time`: the primary's clock minus the
    /// standby's; right only when the two clocks agree.
    pub cross_clock_ms: f64,
    /// Time since this reply was first seen: it is at least this old.
    pub at_least_ms: f64,
    /// Time since the read before the one that first saw it: it is at most this old.
    /// `None` when it was already there at the first read we remember.
    pub at_most_ms: Option<f64>,
}

/// The reply's age for the freshness rule; `None`: unknown, so never fresh.
pub(crate) fn reply_age_ms(t: ReplyTiming) -> Option<f64> {
    let estimate = if t.cross_clock_ms >= 0.0 {
        t.cross_clock_ms.min(t.at_most_ms.unwrap_or(f64::INFINITY))
    } else {
        // A reply from the future: the standby's clock is ahead, its stamp tells nothing.
        t.at_most_ms?
    };
    Some(estimate.max(t.at_least_ms))
}

/// One reply as first seen.
#[derive(Clone, Debug)]
struct Sighting {
    reply_time_us: i64,
    first_seen: Instant,
    /// The read before the first sighting: the reply arrived after it.
    arrived_after: Option<Instant>,
}

/// The replies seen at the previous read, per WAL sender (pid and name). Kept by the runtime
/// monitor from one check to the next; a one-shot check starts with an empty one.
#[derive(Debug, Default)]
pub(crate) struct ReplyMemory {
    last_read: Option<Instant>,
    seen: HashMap<(i32, String), Sighting>,
}

impl ReplyMemory {
    /// Records a read of `pg_stat_replication` taken at `read_at`; returns each sender's
    /// reply age for the freshness rule (`None`: no reply, or an age nobody can tell).
    pub(crate) fn observe(&mut self, senders: &[WalSender], read_at: Instant) -> Vec<Option<f64>> {
        let mut seen = HashMap::new();
        let ages = senders
            .iter()
            .map(|s| {
                let (Some(reply_time_us), Some(cross_clock_ms)) = (s.reply_time_us, s.reply_age_ms)
                else {
                    return None;
                };
                let key = (s.pid, s.application_name.clone());
                let sighting = match self.seen.remove(&key) {
                    Some(old) if old.reply_time_us == reply_time_us => old,
                    // New since the previous read (or the first read): it arrived after that.
                    _ => Sighting {
                        reply_time_us,
                        first_seen: read_at,
                        arrived_after: self.last_read,
                    },
                };
                let ms = |since: Instant| read_at.duration_since(since).as_secs_f64() * 1000.0;
                let timing = ReplyTiming {
                    cross_clock_ms,
                    at_least_ms: ms(sighting.first_seen),
                    at_most_ms: sighting.arrived_after.map(ms),
                };
                seen.insert(key, sighting);
                reply_age_ms(timing)
            })
            .collect();
        self.seen = seen;
        self.last_read = Some(read_at);
        ages
    }
}

/// The write-free alternative to the probe (`Policy::skip_probe_within`): `Some(Skipped)`
/// when enough synchronous standbys replied recently (`ages`, one per sender, from
/// `ReplyMemory::observe`) and no commit has waited for them longer than `probe_slow`. Under
/// load commits always wait a little; short waits are commits being acknowledged, the same
/// proof the probe would give. A standby that replies but stops confirming flushes makes the
/// waits grow past that at once, and the probe runs.
pub(crate) fn fresh_replies(
    policy: &Policy,
    sync_names: &Result<SyncNames, String>,
    waiters: &SyncRepWaiters,
    senders: &[WalSender],
    ages: &[Option<f64>],
) -> Option<CommitProbe> {
    let (Some(within), Ok(SyncNames::Required(req))) = (policy.skip_probe_within, sync_names)
    else {
        return None;
    };
    let slow_ms = policy.probe_slow.as_secs_f64() * 1000.0;
    if waiters.count > 0 && waiters.longest_ms.is_none_or(|ms| ms >= slow_ms) {
        return None;
    }
    let within_ms = within.as_secs_f64() * 1000.0;
    let counted: Vec<f64> = senders
        .iter()
        .zip(ages)
        .filter(|(s, _)| {
            s.is_streaming()
                && s.is_synchronous()
                && s.reports_replay()
                && req.names_standby(&s.application_name)
        })
        .filter_map(|(_, age)| age.filter(|age| *age <= within_ms))
        .collect();
    if (counted.len() as u32) < req.num {
        return None;
    }
    Some(CommitProbe::Skipped {
        oldest_reply_ms: counted.iter().cloned().fold(0.0, f64::max),
        within_ms,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lsn::Lsn;

    const HOUR_AHEAD_MS: f64 = -3_600_000.0;

    fn timing(cross_clock_ms: f64, at_least_ms: f64, at_most_ms: Option<f64>) -> ReplyTiming {
        ReplyTiming {
            cross_clock_ms,
            at_least_ms,
            at_most_ms,
        }
    }

    #[test]
    fn the_reply_age_rule_by_behaviour() {
        for (behaviour, t, age) in [
            (
                "clocks agree: the primary's reading is the age",
                timing(300.0, 0.0, Some(900.0)),
                Some(300.0),
            ),
            (
                "clocks agree, first read: the primary's reading",
                timing(300.0, 0.0, None),
                Some(300.0),
            ),
            (
                "a reply from the future at the first read: age unknown",
                timing(HOUR_AHEAD_MS, 0.0, None),
                None,
            ),
            (
                "a reply from the future, new since the previous read: at most that long ago",
                timing(HOUR_AHEAD_MS, 0.0, Some(950.0)),
                Some(950.0),
            ),
            (
                "a reply from the future seen before: ages on our clock from the read before",
                timing(HOUR_AHEAD_MS, 2000.0, Some(2900.0)),
                Some(2900.0),
            ),
            (
                "the standby's clock a little ahead: never younger than our own sighting",
                timing(100.0, 1500.0, None),
                Some(1500.0),
            ),
            (
                "the standby's clock behind: never older than the previous read",
                timing(60_000.0, 0.0, Some(800.0)),
                Some(800.0),
            ),
        ] {
            assert_eq!(reply_age_ms(t), age, "{behaviour}");
        }
    }

    fn sender(reply_time_us: i64, cross_clock_ms: f64) -> WalSender {
        WalSender {
            pid: 42,
            application_name: "s1".into(),
            client_addr: None,
            state: Some("streaming".into()),
            sync_state: Some("sync".into()),
            sync_priority: Some(1),
            sent_lsn: Some(Lsn(1)),
            write_lsn: Some(Lsn(1)),
            flush_lsn: Some(Lsn(1)),
            replay_lsn: Some(Lsn(1)),
            write_lag_ms: None,
            flush_lag_ms: None,
            replay_lag_ms: None,
            reply_age_ms: Some(cross_clock_ms),
            reply_time_us: Some(reply_time_us),
            reached_target: None,
        }
    }

    fn skip_policy() -> Policy {
        Policy {
            skip_probe_within: Some(Duration::from_millis(1250)),
            ..Policy::default()
        }
    }

    fn skipped(memory: &mut ReplyMemory, s: WalSender, at: Instant) -> bool {
        let ages = memory.observe(std::slice::from_ref(&s), at);
        fresh_replies(
            &skip_policy(),
            &SyncNames::parse("FIRST 1 (s1)"),
            &SyncRepWaiters::default(),
            &[s],
            &ages,
        )
        .is_some()
    }

    /// The monitor's checks against a standby an hour ahead that replies every second, then
    /// hangs: its replies count while they keep coming, and stop counting one window after
    /// the last one, on our clock.
    #[test]
    fn a_standby_an_hour_ahead_is_fresh_only_while_its_replies_keep_coming() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut m = ReplyMemory::default();
        let future = |n: i64| sender(n * 1_000_000, HOUR_AHEAD_MS);
        assert!(
            !skipped(&mut m, future(1), at(0)),
            "first read: unknown age"
        );
        assert!(skipped(&mut m, future(2), at(1000)), "a new reply since");
        // The standby hangs: reply 2 is the last one.
        assert!(
            skipped(&mut m, future(2), at(1200)),
            "at most 1.2 s old: still within the window"
        );
        assert!(
            !skipped(&mut m, future(2), at(1300)),
            "the last reply is now older than the window on our clock"
        );
    }

    #[test]
    fn a_one_shot_check_never_trusts_a_reply_from_the_future() {
        let mut m = ReplyMemory::default();
        assert_eq!(
            m.observe(&[sender(5, HOUR_AHEAD_MS)], Instant::now()),
            vec![None]
        );
    }

    #[test]
    fn a_reconnected_sender_starts_over() {
        let t0 = Instant::now();
        let mut m = ReplyMemory::default();
        m.observe(&[sender(1, 10.0)], t0);
        let mut again = sender(1, 2000.0);
        again.pid = 43;
        let later = t0 + Duration::from_millis(500);
        // Same reply_time, another WAL sender: a new reply, arrived after the previous read.
        assert_eq!(m.observe(&[again], later), vec![Some(500.0)]);
    }
}
