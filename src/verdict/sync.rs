//! Which connected WAL senders really count toward what `synchronous_standby_names` requires.
//! `sync_state` alone is not enough (DESIGN §2): a hung standby stays `sync` for a minute, and
//! `pg_receivewal` can be `sync` without being a standby one could fail over to.

use serde::Serialize;

use crate::facts::{PrimaryFacts, WalSender};
use crate::syncnames::{SyncNames, SyncRequirement};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyncAssessment {
    pub required: u32,
    pub healthy: u32,
    pub senders: Vec<SenderJudgement>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SenderJudgement {
    pub pid: i32,
    pub name: String,
    /// Counts as a healthy synchronous standby.
    pub counted: bool,
    /// Why it does not count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
}

/// `None` when there is nothing to assess: no requirement, or privileges hide the columns.
pub fn assess_sync(primary: &PrimaryFacts) -> Option<SyncAssessment> {
    let Ok(SyncNames::Required(req)) = &primary.sync_names else {
        return None;
    };
    if !primary.can_read_stats {
        return None;
    }
    let senders: Vec<SenderJudgement> = primary
        .walsenders
        .iter()
        .map(|s| {
            let why_not = why_not_counted(s, req);
            SenderJudgement {
                pid: s.pid,
                name: s.application_name.clone(),
                counted: why_not.is_none(),
                why_not,
            }
        })
        .collect();
    Some(SyncAssessment {
        required: req.num,
        healthy: senders.iter().filter(|s| s.counted).count() as u32,
        senders,
    })
}

fn why_not_counted(s: &WalSender, req: &SyncRequirement) -> Option<String> {
    if !req.names_standby(&s.application_name) {
        return Some("not named in synchronous_standby_names".into());
    }
    match s.state.as_deref() {
        Some("streaming") => {}
        Some(other) => return Some(format!("not streaming (state {other})")),
        None => return Some("state hidden".into()),
    }
    if !s.is_synchronous() {
        return Some(format!(
            "not synchronous (sync_state {})",
            s.sync_state.as_deref().unwrap_or("unknown")
        ));
    }
    if !s.reports_replay() {
        return Some(
            "reports no replay position: a WAL receiver such as pg_receivewal, not a standby"
                .into(),
        );
    }
    if s.reached_target == Some(false) {
        return Some("did not flush the test commit's WAL in time (hung or cut off?)".into());
    }
    None
}
