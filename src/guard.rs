//! The runtime guard's decisions, pure: how a stream of verdicts becomes the reported state
//! (alarm fast, clear slow), and what a hook answers in that state.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::facts::CommitProbe;
use crate::verdict::{Code, Level, Verdict};

/// Commands that open or grow channels: refused while the storage is not safe (`gate`).
pub const DEFAULT_GATED_COMMANDS: &[&str] = &[
    "fundchannel",
    "fundchannel_start",
    "multifundchannel",
    "openchannel_init",
    "openchannel_bump",
    "splice_init",
];

/// Payment commands, gated too with `replguard-gate-payments=true`.
pub const PAYMENT_COMMANDS: &[&str] =
    &["pay", "xpay", "keysend", "sendpay", "sendonion", "renepay"];

/// The commands the `rpc_command` hook listens to: the channel-opening ones, and the
/// payment ones when payments are gated (filters are fixed at `getmanifest`).
pub fn hooked_commands(payments: bool) -> Vec<&'static str> {
    DEFAULT_GATED_COMMANDS
        .iter()
        .chain(PAYMENT_COMMANDS.iter().filter(|_| payments))
        .copied()
        .collect()
}

/// Every command the `rpc_command` hook can listen to.
pub fn gateable_commands() -> Vec<&'static str> {
    DEFAULT_GATED_COMMANDS
        .iter()
        .chain(PAYMENT_COMMANDS)
        .copied()
        .collect()
}

/// JSON-RPC error code of a refused command.
pub const ERR_GATED: i64 = 2310;

/// What to do while the storage is not safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnsafe {
    /// Refuse what adds risk: channel opens (and payments, if asked).
    Gate,
    /// Stop lightningd once not-safe has lasted the grace period.
    Stop,
    /// Only log.
    Log,
}

impl std::str::FromStr for OnUnsafe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gate" => Ok(OnUnsafe::Gate),
            "stop" => Ok(OnUnsafe::Stop),
            "log" => Ok(OnUnsafe::Log),
            other => Err(format!(
                "\"{other}\" is not an action: expected gate, stop or log"
            )),
        }
    }
}

/// Whether `unknown` counts as not safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnknown {
    Reject,
    Allow,
}

impl std::str::FromStr for OnUnknown {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reject" => Ok(OnUnknown::Reject),
            "allow" => Ok(OnUnknown::Allow),
            other => Err(format!(
                "\"{other}\" is not a choice: expected reject or allow"
            )),
        }
    }
}

/// The reported state: changes to not-safe on one tick with a finding the catalogue marks
/// `Alarm::AtOnce` (commits blocked, a setting that says they are not replicated), or on two
/// bad ticks in a row; back on two good ticks.
#[derive(Clone, Debug)]
pub struct Debouncer {
    pub reported: Level,
    pub since: Instant,
    bad_streak: u32,
    good_streak: u32,
}

/// A change of the reported level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Level,
    pub to: Level,
}

/// A check that skipped the test commit relied on standby replies younger than the skip
/// window. Those replies go stale before the next regular check: check again right then, so
/// a hung standby is probed (and found out) one reply late, not up to a whole interval late.
/// In a steady pair this adds no checks: a new reply has come in by then.
pub fn next_check_in(probe: &CommitProbe, interval: Duration) -> Duration {
    /// Past the window's edge, so the reply it saw counts as stale.
    const MARGIN: Duration = Duration::from_millis(20);
    /// Never busy-loop on a reply that is already at the edge.
    const FLOOR: Duration = Duration::from_millis(100);
    match probe {
        CommitProbe::Skipped {
            oldest_reply_ms,
            within_ms,
        } => {
            let stale_in = Duration::from_secs_f64((within_ms - oldest_reply_ms).max(0.0) / 1000.0);
            (stale_in + MARGIN).clamp(FLOOR, interval.max(FLOOR))
        }
        _ => interval,
    }
}

pub fn is_good(l: Level) -> bool {
    matches!(l, Level::Safe | Level::Degraded)
}

impl Debouncer {
    pub fn new(initial: Level, now: Instant) -> Debouncer {
        Debouncer {
            reported: initial,
            since: now,
            bad_streak: 0,
            good_streak: 0,
        }
    }

    /// Feeds one tick's verdict; returns the transition, if the reported level changed.
    pub fn observe(&mut self, v: &Verdict, now: Instant) -> Option<Transition> {
        let observed = v.level;
        let next = if is_good(observed) {
            self.bad_streak = 0;
            self.good_streak += 1;
            if is_good(self.reported) || self.good_streak >= 2 {
                observed
            } else {
                self.reported
            }
        } else {
            self.good_streak = 0;
            self.bad_streak += 1;
            let at_once = v.findings.iter().any(|f| f.code.alarms_at_once());
            if !is_good(self.reported) || at_once || self.bad_streak >= 2 {
                observed
            } else {
                self.reported
            }
        };
        if next == self.reported {
            return None;
        }
        let t = Transition {
            from: self.reported,
            to: next,
        };
        self.reported = next;
        self.since = now;
        Some(t)
    }

    /// How long the reported level has held.
    pub fn held_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.since)
    }
}

/// Whether the reported level counts as not safe for acting on it.
pub fn not_safe(level: Level, on_unknown: OnUnknown) -> bool {
    match level {
        Level::Safe | Level::Degraded => false,
        Level::Unsafe => true,
        Level::Unknown => on_unknown == OnUnknown::Reject,
    }
}

/// What stop mode does after a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopDecision {
    /// Not stop mode, not (yet) not safe for the grace period.
    Wait,
    Stop,
    /// It would stop, but this check is not safe only because the plugin's own side failed
    /// (descriptors, memory): the storage was not judged. Stopping a healthy node for that
    /// would let anyone who can exhaust the plugin's resources (a local connection flood)
    /// take the node down, and a stopped node cannot watch its channels.
    NotForAPluginFault,
}

/// Whether stop mode stops lightningd now: the reported level has been not safe for `grace`,
/// and what this check learnt about the storage does not contradict it.
pub fn stop_decision(
    gate: &GatePolicy,
    reported: Level,
    held: Duration,
    grace: Duration,
    v: &Verdict,
) -> StopDecision {
    if gate.on_unsafe != OnUnsafe::Stop || !not_safe(reported, gate.on_unknown) || held < grace {
        return StopDecision::Wait;
    }
    if v.has(Code::PluginFault) && !not_safe(v.storage_level(), gate.on_unknown) {
        return StopDecision::NotForAPluginFault;
    }
    StopDecision::Stop
}

/// How the guard is set up.
#[derive(Clone, Debug, PartialEq)]
pub struct GatePolicy {
    pub on_unsafe: OnUnsafe,
    pub on_unknown: OnUnknown,
    pub gated_commands: Vec<String>,
    pub gate_payments: bool,
}

impl GatePolicy {
    /// Whether payments can be refused: `htlc_accepted` and the payment commands' filters
    /// are needed at `getmanifest`.
    pub fn payment_hooks_needed(&self) -> bool {
        self.gate_payments
            || self
                .gated_commands
                .iter()
                .any(|c| PAYMENT_COMMANDS.contains(&c.as_str()))
    }
}

impl Default for GatePolicy {
    fn default() -> Self {
        GatePolicy {
            on_unsafe: OnUnsafe::Gate,
            on_unknown: OnUnknown::Reject,
            gated_commands: DEFAULT_GATED_COMMANDS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            gate_payments: false,
        }
    }
}

impl GatePolicy {
    /// The RPC commands the `rpc_command` hook must see (its filters).
    pub fn hooked_commands(&self) -> Vec<String> {
        let mut c = self.gated_commands.clone();
        if self.gate_payments {
            c.extend(PAYMENT_COMMANDS.iter().map(|s| s.to_string()));
        }
        c
    }

    /// Whether `command` is refused now. `None` when it may go on.
    pub fn refuse_command(&self, command: &str, level: Level) -> Option<String> {
        let gated = self.on_unsafe == OnUnsafe::Gate
            && not_safe(level, self.on_unknown)
            && self.hooked_commands().iter().any(|c| c == command);
        gated.then(|| {
            format!(
                "cln-replguard refuses {command}: the wallet's storage is {level} (see \
                 lightning-cli replication-status)"
            )
        })
    }

    /// Whether a peer's channel open is rejected now.
    pub fn refuse_peer_open(&self, level: Level) -> bool {
        self.on_unsafe == OnUnsafe::Gate && not_safe(level, self.on_unknown)
    }

    /// Whether an incoming HTLC is failed now.
    pub fn refuse_htlc(&self, level: Level) -> bool {
        self.gate_payments && self.refuse_peer_open(level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Finding;

    fn verdict(level: Level, codes: &[Code]) -> Verdict {
        Verdict {
            level,
            findings: codes.iter().map(|c| Finding::new(*c, "m", "r")).collect(),
            sync: None,
        }
    }

    #[test]
    fn one_bad_tick_is_not_yet_an_alarm_two_are() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Level::Safe, t0);
        let bad = verdict(Level::Unsafe, &[Code::SyncStandbysShort]);
        assert_eq!(d.observe(&bad, t0), None);
        assert_eq!(
            d.observe(&bad, t0),
            Some(Transition {
                from: Level::Safe,
                to: Level::Unsafe
            })
        );
    }

    #[test]
    fn a_missed_probe_deadline_or_a_weakened_setting_alarms_at_once() {
        let t0 = Instant::now();
        for code in [
            Code::CommitProbeTimeout,
            Code::CommitProbeAlreadyWaiting,
            Code::CommitsBlocked,
            Code::StandbyPromoted,
            Code::SyncNamesEmpty,
            Code::SynchronousCommitWeak,
        ] {
            let mut d = Debouncer::new(Level::Safe, t0);
            assert!(
                d.observe(&verdict(Level::Unsafe, &[code]), t0).is_some(),
                "{code}"
            );
        }
    }

    /// Only a real promotion is the self-fence's evidence; a standby DSN reaching the primary
    /// is a configuration error, judged like any other unknown.
    #[test]
    fn a_standby_dsn_reaching_the_primary_is_no_alarm_at_once() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Level::Safe, t0);
        let v = verdict(Level::Unknown, &[Code::StandbyDsnIsPrimary]);
        assert_eq!(d.observe(&v, t0), None);
        assert!(!Code::StandbyDsnIsPrimary.alarms_at_once());
    }

    #[test]
    fn clearing_takes_two_good_ticks_and_a_bad_one_resets_the_count() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Level::Unsafe, t0);
        let good = verdict(Level::Safe, &[]);
        let bad = verdict(Level::Unsafe, &[Code::SyncNamesEmpty]);
        assert_eq!(d.observe(&good, t0), None);
        assert_eq!(d.observe(&bad, t0), None);
        assert_eq!(d.observe(&good, t0), None);
        assert!(d.observe(&good, t0).is_some());
        assert_eq!(d.reported, Level::Safe);
    }

    #[test]
    fn moves_within_good_or_within_bad_follow_at_once() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Level::Safe, t0);
        assert!(d.observe(&verdict(Level::Degraded, &[]), t0).is_some());
        let mut d = Debouncer::new(Level::Unsafe, t0);
        assert!(d.observe(&verdict(Level::Unknown, &[]), t0).is_some());
    }

    #[test]
    fn the_gate_refuses_only_listed_commands_and_only_when_not_safe() {
        let g = GatePolicy::default();
        assert!(g.refuse_command("fundchannel", Level::Unsafe).is_some());
        assert!(g.refuse_command("fundchannel", Level::Unknown).is_some());
        assert!(g.refuse_command("fundchannel", Level::Degraded).is_none());
        assert!(g.refuse_command("getinfo", Level::Unsafe).is_none());
        assert!(g.refuse_command("pay", Level::Unsafe).is_none());
        assert!(!g.refuse_htlc(Level::Unsafe));
        let p = GatePolicy {
            gate_payments: true,
            ..GatePolicy::default()
        };
        assert!(p.refuse_command("pay", Level::Unsafe).is_some());
        assert!(p.refuse_htlc(Level::Unsafe));
        let allow = GatePolicy {
            on_unknown: OnUnknown::Allow,
            ..GatePolicy::default()
        };
        assert!(
            allow
                .refuse_command("fundchannel", Level::Unknown)
                .is_none()
        );
        assert!(!allow.refuse_peer_open(Level::Unknown));
        let log = GatePolicy {
            on_unsafe: OnUnsafe::Log,
            ..GatePolicy::default()
        };
        assert!(log.refuse_command("fundchannel", Level::Unsafe).is_none());
    }

    #[test]
    fn stop_mode_never_stops_for_a_plugin_fault_alone() {
        let stop = GatePolicy {
            on_unsafe: OnUnsafe::Stop,
            ..GatePolicy::default()
        };
        let (grace, held) = (Duration::from_secs(30), Duration::from_secs(31));
        let fault = verdict(Level::Unknown, &[Code::PluginFault]);
        assert_eq!(
            stop_decision(&stop, Level::Unknown, held, grace, &fault),
            StopDecision::NotForAPluginFault
        );
        // A plugin fault beside a storage finding: the storage's verdict decides.
        let mut both = verdict(Level::Unsafe, &[Code::SyncNamesEmpty]);
        both.findings
            .push(Finding::new(Code::PluginFault, "m", "r"));
        assert_eq!(
            stop_decision(&stop, Level::Unsafe, held, grace, &both),
            StopDecision::Stop
        );
        // The storage's own unknown (a timeout) stops as before; so does a long unsafe.
        let timeout = verdict(Level::Unknown, &[Code::PrimaryTimeout]);
        assert_eq!(
            stop_decision(&stop, Level::Unknown, held, grace, &timeout),
            StopDecision::Stop
        );
        assert_eq!(
            stop_decision(
                &stop,
                Level::Unknown,
                Duration::from_secs(1),
                grace,
                &timeout
            ),
            StopDecision::Wait
        );
        // Not stop mode, or on-unknown=allow: nothing to stop.
        let gate = GatePolicy::default();
        assert_eq!(
            stop_decision(&gate, Level::Unsafe, held, grace, &both),
            StopDecision::Wait
        );
        let allow = GatePolicy {
            on_unknown: OnUnknown::Allow,
            ..stop.clone()
        };
        assert_eq!(
            stop_decision(&allow, Level::Unknown, held, grace, &fault),
            StopDecision::Wait
        );
    }

    #[test]
    fn the_storage_level_leaves_plugin_faults_out() {
        let mut v = verdict(Level::Unknown, &[Code::PluginFault]);
        assert_eq!(v.storage_level(), Level::Safe);
        v.findings
            .push(Finding::new(Code::CommitProbeSlow, "m", "r"));
        assert_eq!(v.storage_level(), Level::Degraded);
    }

    #[test]
    fn a_skipped_probe_brings_the_next_check_to_when_its_evidence_goes_stale() {
        let second = Duration::from_secs(1);
        let skipped = |age: f64| CommitProbe::Skipped {
            oldest_reply_ms: age,
            within_ms: 1250.0,
        };
        assert_eq!(
            next_check_in(&skipped(900.0), second),
            Duration::from_millis(370)
        );
        // A fresh reply leaves more than the interval: the interval rules.
        assert_eq!(next_check_in(&skipped(100.0), second), second);
        // At the edge already: soon, but not at once.
        assert_eq!(
            next_check_in(&skipped(1250.0), second),
            Duration::from_millis(100)
        );
        let probed = CommitProbe::Acknowledged {
            ms: 2.0,
            lsn: crate::lsn::Lsn(1),
            released_waiting: false,
        };
        assert_eq!(next_check_in(&probed, second), second);
    }
}
