//! Evidence that survives the primary: each change of verdict is recorded in the table
//! `replguard.evidence` on the primary, in the wallet's database. The row travels with the WAL,
//! so after the primary host is lost the standby still holds what the monitor last saw and
//! when — the fact `cln-replguard failover` needs to promote without guessing (issue 6).
//!
//! What a row can prove, and what not: a row says "from this moment, every acknowledged commit
//! also reached these standbys", until a later row says otherwise. A later row written while
//! the standby no longer received WAL never reaches it; that is why the failover also requires
//! the standby to be named in the row, and why a standby that was cut off earlier than the
//! primary was lost cannot be told apart from one that was not (see contrib/FAILOVER.md).
//!
//! Pure decisions here; the reads and writes are in `probe::evidence`.

use serde::Serialize;

use crate::facts::Observation;
use crate::failover;
use crate::syncnames::SyncNames;
use crate::verdict::{Level, Verdict};

// The row itself is a fact the probe reads and writes; the decisions about it are here.
pub use crate::facts::{Record, Recorded, worth_recording};

impl Record {
    /// `None` when the primary was not reached: there is nothing to write to.
    pub fn of(obs: &Observation, v: &Verdict) -> Option<Record> {
        let p = obs.primary().filter(|p| !p.in_recovery)?;
        let mut covered = failover::covered_standbys(p);
        covered.sort();
        let mut codes: Vec<String> = v.findings.iter().map(|f| f.code.to_string()).collect();
        codes.sort();
        Some(Record {
            level: v.level,
            codes,
            covered,
            sync_names: Some(p.sync_names_raw.clone()),
            timeline: p.timeline,
            system_identifier: p.system_identifier.clone(),
        })
    }
}

/// What the newest row on a standby says about promoting it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "answer", rename_all = "kebab-case")]
pub enum Judgement {
    /// Every commit acknowledged up to the row's time also reached this standby.
    Covered,
    /// The row says the standby was not covered, or the pair was not safe: commits may exist
    /// only on the old primary.
    NotCovered { why: String },
    /// No row, or one from another cluster: nothing can be said.
    Unverifiable { why: String },
}

/// What the standby about to be promoted says of itself.
pub struct StandbySide<'a> {
    /// The name it streams under (its `application_name`).
    pub name: &'a str,
    pub system_id: Option<&'a str>,
    pub timeline: Option<u32>,
}

/// Judges the newest row on the standby that is about to be promoted.
pub fn judge(newest: Option<&Recorded>, standby: &StandbySide) -> Judgement {
    let standby_name = standby.name;
    let Some(row) = newest else {
        return Judgement::Unverifiable {
            why: "no evidence on the standby: the primary's monitor never recorded a verdict \
                  (replguard-evidence off, or the plugin/check never ran against this pair)"
                .into(),
        };
    };
    let r = &row.record;
    if let Some(why) = forgeable(row) {
        return Judgement::Unverifiable { why };
    }
    if let (Some(a), Some(b)) = (r.system_identifier.as_deref(), standby.system_id)
        && a != b
    {
        return Judgement::Unverifiable {
            why: format!("the newest evidence is from another cluster (system identifier {a})"),
        };
    }
    // A row from before an earlier failover says nothing about the primary just lost.
    if let (Some(a), Some(b)) = (r.timeline, standby.timeline)
        && a != b
    {
        return Judgement::Unverifiable {
            why: format!(
                "the newest evidence was recorded on timeline {a}, this standby follows timeline \
                 {b}: nothing was recorded since the last failover"
            ),
        };
    }
    let at = format!("{} ({:.0} s ago)", row.recorded_at, row.age_s);
    if !matches!(r.level, Level::Safe | Level::Degraded) {
        return Judgement::NotCovered {
            why: format!(
                "the primary's monitor last recorded {} at {at}: {}",
                r.level,
                r.codes.join(", ")
            ),
        };
    }
    if let Some(why) = membership_may_shift(r.sync_names.as_deref()) {
        return Judgement::Unverifiable {
            why: format!(
                "the newest evidence ({at}) cannot speak for later commits: {why}; check live \
                 against the old primary (--old-primary-dsn) while it answers"
            ),
        };
    }
    if !r
        .covered
        .iter()
        .any(|c| c.eq_ignore_ascii_case(standby_name))
    {
        return Judgement::NotCovered {
            why: format!(
                "at {at} the acknowledged commits included {} but not this standby ({standby_name})",
                if r.covered.is_empty() {
                    "no standby".to_string()
                } else {
                    r.covered.join(", ")
                }
            ),
        };
    }
    Judgement::Covered
}

/// Why no row of this table can be trusted, whatever it says (`None`: it can be read).
fn forgeable(row: &Recorded) -> Option<String> {
    let r = &row.record;
    if !row.owned_by_the_wallets_role {
        return Some(format!(
            "replguard.evidence belongs to {} and its schema to {}, not both to {} (the \
             role that owns lightningd's tables), so its rows could be forged",
            row.owner.as_deref().unwrap_or("?"),
            row.schema_owner.as_deref().unwrap_or("?"),
            row.wallets_role.as_deref().unwrap_or("?")
        ));
    }
    if row.rewritten {
        return Some(
            "a trigger or rule on replguard.evidence may rewrite what is inserted, so its \
             rows could be forged"
                .into(),
        );
    }
    if r.system_identifier.is_none() || r.timeline.is_none() {
        return Some(
            "the newest evidence records no system identifier or timeline: it cannot be \
             tied to this cluster and timeline"
                .into(),
        );
    }
    if !row.other_writers.is_empty() {
        return Some(format!(
            "besides its owner {}, the roles {} may write replguard.evidence, so its rows \
             could be forged: revoke their INSERT, UPDATE, DELETE and TRUNCATE",
            row.owner.as_deref().unwrap_or("?"),
            row.other_writers.join(", ")
        ));
    }
    None
}

/// Why the standbys acknowledging commits could have changed after the row without a change of
/// configuration (`None`: they could not).
fn membership_may_shift(sync_names: Option<&str>) -> Option<String> {
    let Some(raw) = sync_names else {
        return Some(
            "it does not record synchronous_standby_names (written by an older cln-replguard)"
                .into(),
        );
    };
    match SyncNames::parse(raw) {
        Ok(SyncNames::Required(r)) if r.membership_is_fixed() => None,
        // Nothing was covered then: the row's covered list (empty) says so.
        Ok(SyncNames::Empty) => None,
        Ok(SyncNames::Required(_)) => Some(format!(
            "under synchronous_standby_names = '{raw}' PostgreSQL itself may make another \
             standby synchronous, and commits it alone acknowledged never reach this one"
        )),
        Err(e) => Some(format!(
            "its synchronous_standby_names '{raw}' cannot be read: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lsn::Lsn;

    fn row(level: Level, covered: &[&str]) -> Recorded {
        Recorded {
            id: 7,
            recorded_at: "2026-11-26T12:00:00Z".into(),
            age_s: 30.0,
            record: Record {
                level,
                codes: vec![],
                covered: covered.iter().map(|c| c.to_string()).collect(),
                sync_names: Some("FIRST 1 (s1)".into()),
                timeline: Some(1),
                system_identifier: Some("73".into()),
            },
            flush_lsn: Some(Lsn(0x3000000)),
            source: "plugin".into(),
            owner: Some("lightningd".into()),
            schema_owner: Some("lightningd".into()),
            other_writers: vec![],
            rewritten: false,
            owned_by_the_wallets_role: true,
            wallets_role: Some("lightningd".into()),
        }
    }

    #[test]
    fn covered_only_when_the_newest_row_is_good_and_names_the_standby() {
        let r = row(Level::Safe, &["s1"]);
        assert_eq!(judge(Some(&r), &side("s1", Some("73"))), Judgement::Covered);
        assert_eq!(judge(Some(&r), &side("S1", None)), Judgement::Covered);
        assert!(matches!(
            judge(Some(&r), &side("s2", Some("73"))),
            Judgement::NotCovered { why } if why.contains("not this standby (s2)")
        ));
        let degraded = row(Level::Degraded, &["s1"]);
        assert_eq!(
            judge(Some(&degraded), &side("s1", None)),
            Judgement::Covered
        );
    }

    #[test]
    fn an_unsafe_or_unknown_row_or_none_is_never_covered() {
        let mut r = row(Level::Unsafe, &[]);
        r.record.codes = vec!["sync-names-empty".into()];
        assert!(matches!(
            judge(Some(&r), &side("s1", None)),
            Judgement::NotCovered { why } if why.contains("recorded unsafe") && why.contains("sync-names-empty")
        ));
        assert!(matches!(
            judge(None, &side("s1", None)),
            Judgement::Unverifiable { .. }
        ));
        assert!(matches!(
            judge(Some(&row(Level::Safe, &["s1"])), &side("s1", Some("99"))),
            Judgement::Unverifiable { why } if why.contains("another cluster")
        ));
    }

    fn side<'a>(name: &'a str, system_id: Option<&'a str>) -> StandbySide<'a> {
        StandbySide {
            name,
            system_id,
            timeline: Some(1),
        }
    }

    #[test]
    fn a_row_from_an_earlier_timeline_proves_nothing() {
        let r = row(Level::Safe, &["s1"]);
        let later = StandbySide {
            name: "s1",
            system_id: Some("73"),
            timeline: Some(2),
        };
        assert!(matches!(
            judge(Some(&r), &later),
            Judgement::Unverifiable { why } if why.contains("timeline 1")
        ));
    }

    #[test]
    fn a_row_speaks_for_later_commits_only_when_every_named_standby_is_required() {
        for (names, covered) in [
            (Some("FIRST 2 (s1, s2)"), true),
            (Some("ANY 2 (s1, s2)"), true),
            (Some("s1"), true),
            (Some("FIRST 1 (s1, s2)"), false),
            (Some("ANY 1 (s1, s2)"), false),
            (Some("s1, *"), false),
            (None, false),
        ] {
            let mut r = row(Level::Safe, &["s1"]);
            r.record.sync_names = names.map(str::to_string);
            let j = judge(Some(&r), &side("s1", Some("73")));
            if covered {
                assert_eq!(j, Judgement::Covered, "{names:?}");
            } else {
                assert!(
                    matches!(&j, Judgement::Unverifiable { why } if why.contains("--old-primary-dsn")),
                    "{names:?}: {j:?}"
                );
            }
        }
    }

    #[test]
    fn no_row_is_trusted_when_roles_besides_the_owner_may_write_the_table() {
        let mut r = row(Level::Safe, &["s1"]);
        r.other_writers = vec!["watcher".into()];
        assert!(matches!(
            judge(Some(&r), &side("s1", Some("73"))),
            Judgement::Unverifiable { why } if why.contains("watcher")
        ));
    }

    #[test]
    fn no_row_is_trusted_from_a_table_another_role_owns_or_without_its_cluster_and_timeline() {
        let mut r = row(Level::Safe, &["s1"]);
        r.owned_by_the_wallets_role = false;
        r.owner = Some("watcher".into());
        assert!(matches!(
            judge(Some(&r), &side("s1", Some("73"))),
            Judgement::Unverifiable { why } if why.contains("belongs to watcher")
        ));
        let mut r = row(Level::Safe, &["s1"]);
        r.rewritten = true;
        assert!(matches!(
            judge(Some(&r), &side("s1", Some("73"))),
            Judgement::Unverifiable { why } if why.contains("trigger or rule")
        ));
        for (sysid, timeline) in [(None, Some(1)), (Some("73".to_string()), None)] {
            let mut r = row(Level::Safe, &["s1"]);
            r.record.system_identifier = sysid;
            r.record.timeline = timeline;
            assert!(matches!(
                judge(Some(&r), &side("s1", Some("73"))),
                Judgement::Unverifiable { why } if why.contains("no system identifier")
            ));
        }
    }

    #[test]
    fn only_changes_are_recorded() {
        let a = row(Level::Safe, &["s1"]).record;
        assert!(worth_recording(None, &a));
        assert!(!worth_recording(Some(&a), &a.clone()));
        let b = row(Level::Safe, &["s1", "s2"]).record;
        assert!(worth_recording(Some(&a), &b));
    }
}
