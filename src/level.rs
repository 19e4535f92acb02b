//! How safe the wallet's storage is: the verdict's scale. Below the probe, which reads levels
//! back from `replguard.evidence`, and the verdict, which decides them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How safe the wallet's storage is. Ordered: a worse level compares greater.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Every rule holds.
    Safe,
    /// Every acknowledged commit is replicated, with less margin than asked.
    Degraded,
    /// Cannot tell. Never reported as safe.
    Unknown,
    /// An acknowledged commit may exist only on the primary, or the next one may; or commits
    /// are blocked.
    Unsafe,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Safe => "safe",
            Level::Degraded => "degraded",
            Level::Unknown => "unknown",
            Level::Unsafe => "unsafe",
        }
    }

    /// Monitoring-Plugins exit status: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    pub fn exit_code(self) -> i32 {
        match self {
            Level::Safe => 0,
            Level::Degraded => 1,
            Level::Unsafe => 2,
            Level::Unknown => 3,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How much a finding weighs. The levels, and below them `Advice`: a finding that does not
/// touch the replication guarantee (every acknowledged commit is replicated all the same). It
/// is listed with its remedy and never changes the verdict's level or the exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Advice,
    Degraded,
    Unknown,
    Unsafe,
}

impl Severity {
    /// The level a finding of this severity gives the verdict; advice gives none.
    pub fn level(self) -> Option<Level> {
        match self {
            Severity::Advice => None,
            Severity::Degraded => Some(Level::Degraded),
            Severity::Unknown => Some(Level::Unknown),
            Severity::Unsafe => Some(Level::Unsafe),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Advice => "advice",
            Severity::Degraded => "degraded",
            Severity::Unknown => "unknown",
            Severity::Unsafe => "unsafe",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Level {
    /// A level as `as_str` wrote it (in `replguard.evidence`); anything else reads as unknown.
    pub fn from_recorded(text: &str) -> Level {
        match text {
            "safe" => Level::Safe,
            "degraded" => Level::Degraded,
            "unsafe" => Level::Unsafe,
            _ => Level::Unknown,
        }
    }
}
