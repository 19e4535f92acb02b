//! The verdict: a pure, total function of what the probe saw and the policy. No I/O here, so
//! every rule is tested without a server (`tests.rs`).
//!
//! To add a check: give it a `Code` in `catalogue.rs` (its level, alarm and meaning; the
//! README test prints the table row), write a rule in `rules.rs` that produces it and list the
//! rule in `rules::RULES` (`rules::STANDBY_RULES` for a check of each standby); test it in
//! `tests.rs`.

mod catalogue;
mod rules;
mod sync;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::facts::Observation;
use crate::policy::Policy;

pub use crate::level::{Level, Severity};
pub use catalogue::{Alarm, Code, Entry};
pub(crate) use rules::{
    OtherServer, other_server, primary_failure_code, standby_failure_code, synchronous_commit_code,
};
pub use sync::{SenderJudgement, SyncAssessment, assess_sync};

/// One reason for the verdict: what is wrong, and what to do about it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub code: Code,
    pub severity: Severity,
    pub message: String,
    pub remedy: String,
}

impl Finding {
    /// A finding of `code`, at the level the catalogue gives it.
    pub fn new(code: Code, message: impl Into<String>, remedy: impl Into<String>) -> Self {
        Finding {
            code,
            severity: code.severity(),
            message: message.into(),
            remedy: remedy.into(),
        }
    }

    /// What is wrong, without the remedy: `[severity] code: message`, for reports that put
    /// the fix on a line of its own.
    pub fn headline(&self) -> String {
        format!("[{}] {}: {}", self.severity, self.code, self.message)
    }
}

/// One line: `[severity] code: message — fix: remedy`.
impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} — fix: {}", self.headline(), self.remedy)
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
    /// How the sync assessment judged the WAL sender with this pid, if it judged it.
    pub fn sender_judgement(&self, pid: i32) -> Option<&SenderJudgement> {
        self.sync
            .as_ref()
            .and_then(|a| a.senders.iter().find(|s| s.pid == pid))
    }

    /// With findings judged outside `evaluate` (the HA manager's, `crate::patroni`) added,
    /// and the codes they explain better removed; the level follows.
    pub fn amended(mut self, extra: Vec<Finding>, supersedes: &[Code]) -> Verdict {
        self.findings.retain(|f| !supersedes.contains(&f.code));
        self.findings.extend(extra);
        self.findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
        self.level = self
            .findings
            .iter()
            .filter_map(|f| f.severity.level())
            .max()
            .unwrap_or(Level::Safe);
        self
    }

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
            .filter_map(|f| f.severity.level())
            .max()
            .unwrap_or(Level::Safe)
    }
}

/// Judges one observation. Total: every input gets a level; "don't know" is `unknown`.
pub fn evaluate(obs: &Observation, policy: &Policy) -> Verdict {
    let ctx = rules::Context::new(obs, policy);
    let mut findings: Vec<Finding> = rules::RULES.iter().flat_map(|rule| rule(&ctx)).collect();
    findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
    // Advice is listed, never counted.
    let level = findings
        .iter()
        .filter_map(|f| f.severity.level())
        .max()
        .unwrap_or(Level::Safe);
    Verdict {
        level,
        findings,
        sync: ctx.sync,
    }
}
