//! pg_auto_failover recognised and judged from the wallet's server alone (no monitor URI):
//! pure functions of the primary's facts and its `pg_settings` signs.
//!
//! What pg_autoctl 2.0 does, measured on a real formation (PostgreSQL 15): it writes
//! `synchronous_standby_names` with `ALTER SYSTEM` (`postgresql.auto.conf`) as
//! `ANY k (pgautofailover_standby_<id>, …)`, listing the standbys in the replication quorum,
//! with k = number_sync_standbys, or 1 when that is 0; its other settings come from
//! `postgresql-auto-failover.conf`, which it includes from `postgresql.conf`. Its keeper's
//! sessions are short and carry no `application_name`; its WAL senders and slots are named as
//! the names are. When the monitor finds no healthy standby (about 20 s, its
//! `node_considered_unhealthy_timeout`) and number_sync_standbys is 0 (always so with one
//! standby) it assigns the primary `wait_primary` and pg_autoctl empties the names: PostgreSQL
//! then releases the commits waiting for the standby as acknowledged (no error, no
//! cancellation). With number_sync_standbys 1 and both standbys of a three-node formation
//! lost, the primary stays `primary`, the names stay and commits wait.

use crate::facts::PrimaryFacts;
use crate::syncnames::{SyncMethod, SyncNames};
use crate::verdict::{Code, Finding};

/// The prefix pg_auto_failover gives every standby's `application_name` and slot.
pub const STANDBY_PREFIX: &str = "pgautofailover_standby_";

/// A pg_auto_failover finding, and the verdict's own codes it explains better.
#[derive(Clone, Debug, PartialEq)]
pub struct Judged {
    pub finding: Finding,
    pub supersedes: Vec<Code>,
}

/// What shows pg_auto_failover on the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Signs {
    /// Standbys named in `synchronous_standby_names`.
    listed: usize,
    /// The `ANY k` of the names (1 when unparsed).
    required: u32,
    /// Settings from `postgresql-auto-failover.conf`.
    conf_settings: i64,
    /// Its replication slots (one per other node; they stay while a standby is away).
    slots: usize,
}

impl Signs {
    fn read(p: &PrimaryFacts) -> Signs {
        // pg_autoctl writes only `ANY k (…)`: names in another form are the operator's, even
        // when a standby kept pg_auto_failover's application_name.
        let (listed, required) = match &p.sync_names {
            Ok(SyncNames::Required(r)) if r.method == SyncMethod::Any => {
                let ours = |n: &&String| n.to_ascii_lowercase().starts_with(STANDBY_PREFIX);
                (r.names.iter().filter(ours).count(), r.num)
            }
            _ => (0, 1),
        };
        Signs {
            listed,
            required,
            conf_settings: p.ha_signs.autofailover_settings,
            slots: p
                .slots
                .iter()
                .filter(|s| s.name.starts_with(STANDBY_PREFIX))
                .count(),
        }
    }

    fn present(&self) -> bool {
        self.listed > 0 || self.conf_settings > 0 || self.slots > 0
    }

    /// What the operator can check on the server.
    fn evidence(&self) -> String {
        let mut seen = Vec::new();
        if self.conf_settings > 0 {
            seen.push(format!(
                "{} setting(s) from postgresql-auto-failover.conf",
                self.conf_settings
            ));
        }
        if self.slots > 0 {
            seen.push(format!("{} {STANDBY_PREFIX}* slot(s)", self.slots));
        }
        seen.join(", ")
    }
}

/// The pg_auto_failover finding for the wallet's server, if pg_auto_failover runs it.
pub fn judge(p: &PrimaryFacts) -> Option<Judged> {
    let s = Signs::read(p);
    if !s.present() || p.in_recovery {
        return None;
    }
    if p.sync_names_raw.trim().is_empty() {
        return Some(wait_primary(&s));
    }
    match s.listed {
        // Names not pg_autoctl's: the storage rules judge them as PostgreSQL does.
        0 => None,
        1 => Some(two_node(&p.sync_names_raw)),
        _ if s.required >= 2 => None,
        _ => Some(quorum(&p.sync_names_raw)),
    }
}

fn wait_primary(s: &Signs) -> Judged {
    Judged {
        finding: Finding::new(
            Code::PgAutoFailoverWaitPrimary,
            format!(
                "pg_auto_failover runs this server ({}) and has emptied \
                 synchronous_standby_names: its monitor found no healthy standby and put the \
                 primary in wait_primary (or single: no standby at all), and PostgreSQL \
                 acknowledges every commit, those that were waiting for the standby too, on \
                 the primary alone",
                s.evidence()
            ),
            format!(
                "bring the standby back (pg_autoctl run on its host; pg_autoctl show state lists \
                 it as secondary again and pg_autoctl restores the names). For commits that \
                 wait instead: three nodes and pg_autoctl set formation number-sync-standbys 1. \
                 Not ALTER SYSTEM: pg_autoctl overwrites the names{}",
                if s.conf_settings == 0 {
                    // Slots alone: pg_autoctl's file is hidden from this role, or gone.
                    ". If pg_auto_failover no longer runs here, its slots were left behind: \
                     drop them (pg_drop_replication_slot) and name the standby"
                } else {
                    ""
                }
            ),
        ),
        supersedes: vec![Code::SyncNamesEmpty],
    }
}

fn two_node(names: &str) -> Judged {
    Judged {
        finding: Finding::new(
            Code::PgAutoFailoverTwoNode,
            format!(
                "pg_auto_failover runs this server with one standby in its replication quorum \
                 (synchronous_standby_names = '{names}'), so number_sync_standbys is 0: when \
                 the standby is lost the monitor puts the primary in wait_primary, pg_autoctl \
                 empties the names and PostgreSQL acknowledges the waiting commits and every \
                 later one on the primary alone"
            ),
            "add a third node (pg_autoctl create postgres --monitor <monitor URI> on a third \
             host; pg_autoctl then raises number_sync_standbys to 1), or give a non-quorum \
             standby pg_autoctl set node replication-quorum true; check with pg_autoctl show \
             settings",
        ),
        supersedes: vec![],
    }
}

fn quorum(names: &str) -> Judged {
    Judged {
        finding: Finding::new(
            Code::PgAutoFailoverQuorum,
            format!(
                "pg_auto_failover writes synchronous_standby_names = '{names}' for \
                 number_sync_standbys 0 and 1 alike, and the server cannot tell which: with 1, \
                 commits wait when every standby is lost; with 0, pg_autoctl then empties the \
                 names and the primary acknowledges commits alone (measured)"
            ),
            "pg_autoctl show settings on the monitor: number_sync_standbys must be 1 or more \
             (pg_autoctl set formation number-sync-standbys 1)",
        ),
        supersedes: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{ServerSigns, Slot};
    use crate::verdict::tests::primary;

    fn server(names: &str, slots: &[&str]) -> PrimaryFacts {
        PrimaryFacts {
            sync_names_raw: names.into(),
            sync_names: SyncNames::parse(names),
            slots: slots
                .iter()
                .map(|n| Slot {
                    name: n.to_string(),
                    ..slot()
                })
                .collect(),
            ..primary()
        }
    }

    fn slot() -> Slot {
        Slot {
            name: String::new(),
            active: false,
            active_pid: None,
            wal_status: None,
            restart_lsn: None,
            invalidation_reason: None,
        }
    }

    fn signs(conf_settings: i64) -> ServerSigns {
        ServerSigns {
            names_source: "configuration file".into(),
            names_sourcefile: Some("/srv/pg/postgresql.auto.conf".into()),
            patroni_sessions: 0,
            autofailover_settings: conf_settings,
            primary_slot_name: None,
        }
    }

    /// `None`: the role may not see `sourcefile`, so no setting counts as the file's.
    fn with(p: &PrimaryFacts, s: Option<&ServerSigns>) -> PrimaryFacts {
        PrimaryFacts {
            ha_signs: s.cloned().unwrap_or_else(|| signs(0)),
            ..p.clone()
        }
    }

    fn code(p: &PrimaryFacts, s: Option<&ServerSigns>) -> Option<Code> {
        judge(&with(p, s)).map(|j| j.finding.code)
    }

    #[test]
    fn a_server_without_its_signs_is_not_pg_auto_failovers() {
        assert_eq!(code(&server("n2", &["n2"]), Some(&signs(0))), None);
        assert_eq!(code(&server("", &[]), None), None);
    }

    #[test]
    fn one_standby_in_the_quorum_is_the_two_node_formation() {
        let p = server(
            "ANY 1 (pgautofailover_standby_2)",
            &["pgautofailover_standby_2"],
        );
        let j = judge(&with(&p, Some(&signs(21)))).unwrap();
        assert_eq!(j.finding.code, Code::PgAutoFailoverTwoNode);
        assert!(
            j.finding
                .message
                .contains("acknowledges the waiting commits")
        );
        assert!(j.finding.remedy.contains("pg_autoctl create postgres"));
        // The names alone suffice (a role that may not read sourcefile).
        assert_eq!(code(&p, None), Some(Code::PgAutoFailoverTwoNode));
    }

    #[test]
    fn emptied_names_are_wait_primary_replacing_the_generic_finding() {
        let slots = ["pgautofailover_standby_2"];
        let j = judge(&with(&server("", &slots), Some(&signs(21)))).unwrap();
        assert_eq!(j.finding.code, Code::PgAutoFailoverWaitPrimary);
        assert_eq!(j.supersedes, [Code::SyncNamesEmpty]);
        assert!(
            j.finding.message.contains("21 setting(s)"),
            "{}",
            j.finding.message
        );
        assert!(
            !j.finding.remedy.contains("left behind"),
            "{}",
            j.finding.remedy
        );
        // Either sign alone: the settings file (slots dropped) or the slots (sourcefile hidden,
        // or pg_auto_failover gone and its slots left: the remedy says both).
        assert_eq!(
            code(&server("", &[]), Some(&signs(3))),
            Some(Code::PgAutoFailoverWaitPrimary)
        );
        let slots_only = judge(&with(&server("", &slots), None)).unwrap();
        assert_eq!(slots_only.finding.code, Code::PgAutoFailoverWaitPrimary);
        assert!(
            slots_only.finding.remedy.contains("left behind"),
            "{}",
            slots_only.finding.remedy
        );
    }

    #[test]
    fn two_standbys_any_1_is_degraded_and_any_2_needs_nothing() {
        let any1 = "ANY 1 (pgautofailover_standby_2, pgautofailover_standby_3)";
        assert_eq!(
            code(&server(any1, &[]), Some(&signs(21))),
            Some(Code::PgAutoFailoverQuorum)
        );
        let any2 = "ANY 2 (pgautofailover_standby_2, pgautofailover_standby_3, \
                    pgautofailover_standby_4)";
        assert_eq!(code(&server(any2, &[]), Some(&signs(21))), None);
    }

    /// pg_autoctl writes only `ANY k (…)`: a pair whose operator wrote the names in another
    /// form (a standby still called pgautofailover_standby_2 after pg_auto_failover was
    /// removed, and `cln-replguard setup`/`failover` name the walsender as it calls itself) is
    /// not pg_auto_failover's, and must not be gated as its two-node formation.
    #[test]
    fn names_pg_autoctl_never_writes_are_not_pg_auto_failovers() {
        for names in [
            "pgautofailover_standby_2",
            "FIRST 1 (pgautofailover_standby_2)",
            "1 (pgautofailover_standby_2, pgautofailover_standby_3)",
        ] {
            assert_eq!(code(&server(names, &[]), None), None, "{names}");
        }
    }

    #[test]
    fn a_standby_and_foreign_names_are_left_to_the_other_rules() {
        let standby = PrimaryFacts {
            in_recovery: true,
            ..server("", &["pgautofailover_standby_1"])
        };
        assert_eq!(code(&standby, Some(&signs(21))), None);
        assert_eq!(code(&server("FIRST 1 (n2)", &[]), Some(&signs(21))), None);
    }
}
