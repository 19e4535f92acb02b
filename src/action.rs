//! DESIGN §5's "verdict × mode → action" table: one decision for the plugin's startup check
//! and the CLI pre-flight (and, later, the runtime guard).
//!
//! | verdict  | enforce                   | warn                      |
//! |----------|---------------------------|---------------------------|
//! | safe     | go                        | go                        |
//! | degraded | go, findings reported     | go, findings reported     |
//! | unsafe   | no go, findings reported  | go, findings reported     |
//! | unknown  | no go, findings reported  | go, findings reported     |

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::verdict::Level;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Refuse to run on storage that is not known to be safe (the default).
    Enforce,
    /// Report, and run anyway.
    Warn,
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Mode::Enforce),
            "warn" => Ok(Mode::Warn),
            other => Err(format!(
                "\"{other}\" is not a mode: expected enforce or warn"
            )),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// lightningd may start / the pre-flight passes.
    pub go: bool,
    /// The findings are worth the operator's attention (logged, or printed on stderr).
    pub report_findings: bool,
}

pub fn decide(level: Level, mode: Mode) -> Decision {
    match (level, mode) {
        (Level::Safe, _) => Decision {
            go: true,
            report_findings: false,
        },
        (Level::Degraded, _) | (Level::Unsafe | Level::Unknown, Mode::Warn) => Decision {
            go: true,
            report_findings: true,
        },
        (Level::Unsafe | Level::Unknown, Mode::Enforce) => Decision {
            go: false,
            report_findings: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table() {
        use Level::*;
        use Mode::*;
        let rows = [
            (Safe, Enforce, true, false),
            (Safe, Warn, true, false),
            (Degraded, Enforce, true, true),
            (Degraded, Warn, true, true),
            (Unsafe, Enforce, false, true),
            (Unsafe, Warn, true, true),
            (Unknown, Enforce, false, true),
            (Unknown, Warn, true, true),
        ];
        for (level, mode, go, report) in rows {
            assert_eq!(
                decide(level, mode),
                Decision {
                    go,
                    report_findings: report
                },
                "{level} × {mode}"
            );
        }
    }

    #[test]
    fn modes_parse_and_name_the_choices_when_wrong() {
        assert_eq!("warn".parse::<Mode>(), Ok(Mode::Warn));
        assert!(
            "Enforce"
                .parse::<Mode>()
                .unwrap_err()
                .contains("enforce or warn")
        );
    }
}
