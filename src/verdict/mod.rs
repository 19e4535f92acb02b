//! The verdict: a pure, total function of what the probe saw and the policy. No I/O here, so
//! every rule is tested without a server (`tests.rs`).
//!
//! To add a check: write a rule in `rules.rs` and list it in `rules::RULES`; give it a `Code`.

mod rules;
mod sync;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::Serialize;

use crate::facts::Observation;
use crate::policy::Policy;

pub use crate::level::Level;
pub use sync::{SenderJudgement, SyncAssessment, assess_sync};

/// Stable finding codes: operators and alerting match on these strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Code {
    NotPostgres,
    AuthFailed,
    PrimaryUnreachable,
    PrimaryTimeout,
    PrimaryUnavailable,
    QueryFailed,
    WalletOnStandby,
    PrivilegesInsufficient,
    SyncNamesEmpty,
    NoReplicaAccepted,
    SyncNamesInvalid,
    SyncNamesWildcard,
    SyncStandbysShort,
    SynchronousCommitWeak,
    SynchronousCommitRemoteWrite,
    SynchronousCommitUnrecognised,
    CommitProbeTimeout,
    CommitProbeAlreadyWaiting,
    CommitProbeSlow,
    CommitProbeFailed,
    CommitsBlocked,
    SlotLost,
    SlotUnreserved,
    SlotInactive,
    SlotRetentionUnbounded,
    ArchiveFailing,
    RewindImpossible,
    HotStandbyOff,
    StandbyUnreachable,
    StandbyForeign,
    StandbyPromoted,
    StandbyDsnIsPrimary,
    StandbyNotStreaming,
    StandbyTimelineMismatch,
    StandbyReplayPaused,
    StandbyIdentityUnverified,
    RestartRequired,
    WalletClusterDifferent,
    WalletClusterUnverified,
    LightningdSessionNotFound,
    /// The plugin's own side failed (descriptors, memory): not a judgement of the storage.
    PluginFault,
    /// The plugin's runtime monitor ended: no check runs any more (plugin mode).
    MonitorEnded,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::NotPostgres => "not-postgres",
            Code::AuthFailed => "auth-failed",
            Code::PrimaryUnreachable => "primary-unreachable",
            Code::PrimaryTimeout => "primary-timeout",
            Code::PrimaryUnavailable => "primary-unavailable",
            Code::QueryFailed => "query-failed",
            Code::WalletOnStandby => "wallet-on-standby",
            Code::PrivilegesInsufficient => "privileges-insufficient",
            Code::SyncNamesEmpty => "sync-names-empty",
            Code::NoReplicaAccepted => "no-replica-accepted",
            Code::SyncNamesInvalid => "sync-names-invalid",
            Code::SyncNamesWildcard => "sync-names-wildcard",
            Code::SyncStandbysShort => "sync-standbys-short",
            Code::SynchronousCommitWeak => "synchronous-commit-weak",
            Code::SynchronousCommitRemoteWrite => "synchronous-commit-remote-write",
            Code::SynchronousCommitUnrecognised => "synchronous-commit-unrecognised",
            Code::CommitProbeTimeout => "commit-probe-timeout",
            Code::CommitProbeAlreadyWaiting => "commit-probe-already-waiting",
            Code::CommitProbeSlow => "commit-probe-slow",
            Code::CommitProbeFailed => "commit-probe-failed",
            Code::CommitsBlocked => "commits-blocked",
            Code::SlotLost => "slot-lost",
            Code::SlotUnreserved => "slot-unreserved",
            Code::SlotInactive => "slot-inactive",
            Code::SlotRetentionUnbounded => "slot-retention-unbounded",
            Code::ArchiveFailing => "archive-failing",
            Code::RewindImpossible => "rewind-impossible",
            Code::HotStandbyOff => "hot-standby-off",
            Code::StandbyUnreachable => "standby-unreachable",
            Code::StandbyForeign => "standby-foreign",
            Code::StandbyPromoted => "standby-promoted",
            Code::StandbyDsnIsPrimary => "standby-dsn-is-primary",
            Code::StandbyNotStreaming => "standby-not-streaming",
            Code::StandbyTimelineMismatch => "standby-timeline-mismatch",
            Code::StandbyReplayPaused => "standby-replay-paused",
            Code::StandbyIdentityUnverified => "standby-identity-unverified",
            Code::RestartRequired => "restart-required",
            Code::WalletClusterDifferent => "wallet-cluster-different",
            Code::WalletClusterUnverified => "wallet-cluster-unverified",
            Code::LightningdSessionNotFound => "lightningd-session-not-found",
            Code::PluginFault => "plugin-fault",
            Code::MonitorEnded => "monitor-ended",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reason for the verdict: what is wrong, and what to do about it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    pub code: Code,
    pub severity: Level,
    pub message: String,
    pub remedy: String,
}

impl Finding {
    pub fn new(
        code: Code,
        severity: Level,
        message: impl Into<String>,
        remedy: impl Into<String>,
    ) -> Self {
        Finding {
            code,
            severity,
            message: message.into(),
            remedy: remedy.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub level: Level,
    /// Worst first.
    pub findings: Vec<Finding>,
    /// How the connected standbys measure up against `synchronous_standby_names`.
    pub sync: Option<SyncAssessment>,
}

impl Verdict {
    pub fn has(&self, code: Code) -> bool {
        self.finding(code).is_some()
    }

    pub fn finding(&self, code: Code) -> Option<&Finding> {
        self.findings.iter().find(|f| f.code == code)
    }

    /// The level from what was learnt about the storage: the plugin's own faults left out
    /// (they say nothing about it). Equal to `level` unless a plugin fault raised it.
    pub fn storage_level(&self) -> Level {
        self.findings
            .iter()
            .filter(|f| f.code != Code::PluginFault)
            .map(|f| f.severity)
            .max()
            .unwrap_or(Level::Safe)
    }
}

/// Judges one observation. Total: every input gets a level; "don't know" is `unknown`.
pub fn evaluate(obs: &Observation, policy: &Policy) -> Verdict {
    let ctx = rules::Context::new(obs, policy);
    let mut findings: Vec<Finding> = rules::RULES.iter().flat_map(|rule| rule(&ctx)).collect();
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    let level = findings
        .iter()
        .map(|f| f.severity)
        .max()
        .unwrap_or(Level::Safe);
    Verdict {
        level,
        findings,
        sync: ctx.sync,
    }
}
