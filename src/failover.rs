//! `failover-check`: would a failover right now lose an acknowledged commit? A pure function of
//! an observation taken by `probe::observe_failover` (DESIGN §5).
//!
//! L is the primary's flush position when the check started: every commit acknowledged so far
//! is at or before it. A standby S is ready when (1) every synchronous acknowledgement
//! includes S, (2) lightningd's `synchronous_commit` waits for the flush, (3) S flushed up to
//! L, and (4) with S's DSN: same cluster and timeline, in recovery, receiving.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::facts::{Observation, PrimaryFacts, StandbyFacts, WalSender, WalletObservation};
use crate::lsn::Lsn;
use crate::syncnames::{SyncMethod, SyncNames, SyncRequirement};
use crate::verdict::{self, Code, OtherServer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Readiness {
    Ready,
    NotReady,
    /// Cannot tell (primary unreachable, columns hidden): never "ready".
    Unknown,
}

impl Readiness {
    /// 0 ready, 2 not ready, 3 unknown: non-zero whenever a failover could lose data.
    pub fn exit_code(self) -> i32 {
        match self {
            Readiness::Ready => 0,
            Readiness::NotReady => 2,
            Readiness::Unknown => 3,
        }
    }
}

/// Why a failover is not ready, or a standby not a target: its catalogue code, and the text
/// shown to the operator (in JSON too, where a reason is its text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    pub code: Code,
    pub text: String,
}

impl Reason {
    pub fn new(code: Code, text: impl Into<String>) -> Reason {
        Reason {
            code,
            text: text.into(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FailoverAnswer {
    pub readiness: Readiness,
    pub ready: bool,
    /// The standby to fail over to: the first ready one in priority order.
    pub target: Option<String>,
    /// L: the primary's flush position when the check started.
    pub primary_flush_lsn: Option<Lsn>,
    /// Reasons that rule out every standby.
    pub blockers: Vec<Reason>,
    pub standbys: Vec<StandbyReadiness>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StandbyReadiness {
    pub name: String,
    pub ready: bool,
    pub flush_lsn: Option<Lsn>,
    /// Bytes it was still short of L when the wait ended.
    pub missing_bytes: Option<u64>,
    /// The DSN it was checked through as well, when given.
    pub dsn: Option<String>,
    pub reasons: Vec<Reason>,
}

pub fn evaluate(obs: &Observation) -> FailoverAnswer {
    let unknown = |why: Reason| answer(Readiness::Unknown, None, vec![why], vec![]);
    let p = match &obs.wallet {
        WalletObservation::NotPostgres { scheme } => {
            return answer(
                Readiness::NotReady,
                None,
                vec![Reason::new(
                    Code::NotPostgres,
                    format!("the wallet is in {scheme}://, not replicated"),
                )],
                vec![],
            );
        }
        WalletObservation::Postgres {
            primary: Err(f), ..
        } => {
            return unknown(Reason::new(
                verdict::primary_failure_code(f.kind),
                format!("cannot check the primary: {f}"),
            ));
        }
        WalletObservation::Postgres { primary: Ok(p), .. } => p,
    };
    if p.in_recovery {
        return answer(
            Readiness::NotReady,
            None,
            vec![Reason::new(
                Code::WalletOnStandby,
                "the wallet DSN points to a server in recovery, not the primary",
            )],
            vec![],
        );
    }
    if !p.can_read_stats {
        return unknown(Reason::new(
            Code::PrivilegesInsufficient,
            format!(
                "role {} cannot see pg_stat_replication's details: GRANT pg_monitor TO it",
                p.session.role
            ),
        ));
    }
    let Some(l) = p.flush_lsn else {
        return unknown(Reason::new(
            Code::QueryFailed,
            "the primary did not report its flush position",
        ));
    };
    let req = match &p.sync_names {
        Err(why) => {
            return unknown(Reason::new(
                Code::SyncNamesInvalid,
                format!("cannot read synchronous_standby_names: {why}"),
            ));
        }
        Ok(SyncNames::Empty) => None,
        Ok(SyncNames::Required(r)) => Some(r),
    };

    let blockers = blockers(p, req);

    let mut standbys: Vec<StandbyReadiness> = p
        .walsenders
        .iter()
        .map(|w| judge_sender(obs, p, w, req, l, &blockers))
        .collect();
    standbys.extend(not_connected(obs, p));
    // Priority order: the first ready standby is the target.
    standbys.sort_by_key(|s| {
        req.and_then(|r| r.priority_of(&s.name))
            .unwrap_or(usize::MAX)
    });
    let target = standbys.iter().find(|s| s.ready).map(|s| s.name.clone());
    let readiness = if target.is_some() {
        Readiness::Ready
    } else {
        Readiness::NotReady
    };
    answer(readiness, Some(l), blockers, standbys)
}

/// Standbys the operator named (`--standby-dsn`) that are not connected at all.
fn not_connected(obs: &Observation, p: &PrimaryFacts) -> Vec<StandbyReadiness> {
    let mut out = Vec::new();
    for s in &obs.standbys {
        let name = s.facts.as_ref().map(|f| f.walsender_name()).ok();
        let connected = name.as_ref().is_some_and(|n| p.has_sender_named(n));
        if connected {
            continue;
        }
        out.push(StandbyReadiness {
            name: name.unwrap_or_else(|| s.target.clone()),
            ready: false,
            flush_lsn: None,
            missing_bytes: None,
            dsn: Some(s.target.clone()),
            reasons: vec![match &s.facts {
                Err(f) => Reason::new(
                    verdict::standby_failure_code(f),
                    format!("its DSN did not answer: {f}"),
                ),
                Ok(_) => Reason::new(Code::StandbyNotConnected, "not connected to the primary"),
            }],
        });
    }
    out
}

/// Reasons that rule out every standby: no acknowledgement waits for a named one.
fn blockers(p: &PrimaryFacts, req: Option<&SyncRequirement>) -> Vec<Reason> {
    let mut blockers = Vec::new();
    match req {
        None => blockers.push(Reason::new(
            Code::SyncNamesEmpty,
            "synchronous_standby_names is empty: no commit waited for any standby",
        )),
        Some(r) if r.has_wildcard() => blockers.push(Reason::new(
            Code::SyncNamesWildcard,
            format!(
                "synchronous_standby_names = '{}' lets any WAL receiver acknowledge commits",
                p.sync_names_raw
            ),
        )),
        Some(_) => {}
    }
    if let Some(code) = verdict::synchronous_commit_code(&p.session.synchronous_commit) {
        blockers.push(Reason::new(
            code,
            format!(
                "lightningd's sessions run with synchronous_commit = {}: commits do not wait \
                 for the standby to flush",
                p.session.synchronous_commit
            ),
        ));
    }
    blockers
}

/// The standbys a recorded row may call covered: every acknowledged commit includes them now
/// (conditions (1) and (2), whatever their flush position) *and will go on including them
/// until the configuration changes* — which needs every named standby required
/// (`SyncRequirement::membership_is_fixed`). Under `FIRST 1 (a, b)` a live check may find
/// `a` ready, but a row cannot say so for later commits. This is what the evidence records
/// (`crate::evidence`).
pub fn covered_standbys(p: &PrimaryFacts) -> Vec<String> {
    let Ok(SyncNames::Required(r)) = &p.sync_names else {
        return vec![];
    };
    if p.in_recovery || !r.membership_is_fixed() || !blockers(p, Some(r)).is_empty() {
        return vec![];
    }
    // PostgreSQL counts WAL senders, not names: two senders under one name (a default
    // cluster_name on two standbys) make `ANY 1 (a)` a choice between them, and neither can be
    // told apart from the other later. Then no row vouches for any standby.
    // Only names the setting matches count: two async `walreceiver`s acknowledge nothing.
    if p.walsenders
        .iter()
        .any(|w| r.names_standby(&w.application_name) && shares_its_name(p, w))
    {
        return vec![];
    }
    p.walsenders
        .iter()
        .filter(|w| acknowledgement_reasons(w, Some(r)).is_empty())
        .map(|w| w.application_name.clone())
        .collect()
}

/// Whether another WAL sender streams under the same `application_name`.
fn shares_its_name(p: &PrimaryFacts, w: &WalSender) -> bool {
    p.walsenders
        .iter()
        .any(|o| o.pid != w.pid && o.application_name.eq_ignore_ascii_case(&w.application_name))
}

/// Why commits can be acknowledged without this WAL sender's standby (empty: they cannot).
fn acknowledgement_reasons(w: &WalSender, req: Option<&SyncRequirement>) -> Vec<Reason> {
    let mut reasons = Vec::new();
    match req {
        Some(r) if r.names_standby(&w.application_name) && !r.has_wildcard() => match r.method {
            SyncMethod::First if w.sync_state.as_deref() != Some("sync") => {
                reasons.push(Reason::new(
                    Code::StandbyNotSync,
                    format!(
                        "not among the {} synchronous standbys that must acknowledge every \
                         commit (sync_state {})",
                        r.num,
                        w.sync_state.as_deref().unwrap_or("unknown")
                    ),
                ));
            }
            SyncMethod::Any if (r.num as usize) < r.names.len() => {
                reasons.push(Reason::new(
                    Code::StandbyQuorumOptional,
                    format!(
                        "ANY {} of {} standbys: a commit can be acknowledged without this one",
                        r.num,
                        r.names.len()
                    ),
                ));
            }
            _ => {}
        },
        Some(r) if !r.names_standby(&w.application_name) => {
            reasons.push(Reason::new(
                Code::StandbyNotNamed,
                "not named in synchronous_standby_names",
            ));
        }
        _ => {}
    }
    if !w.is_streaming() {
        reasons.push(Reason::new(
            Code::StandbyNotStreaming,
            format!(
                "not streaming (state {})",
                w.state.as_deref().unwrap_or("unknown")
            ),
        ));
    }
    if !w.reports_replay() {
        reasons.push(Reason::new(
            Code::WalReceiverNotStandby,
            "reports no replay position: a WAL receiver, not a standby",
        ));
    }
    reasons
}

fn judge_sender(
    obs: &Observation,
    p: &PrimaryFacts,
    w: &WalSender,
    req: Option<&SyncRequirement>,
    l: Lsn,
    blockers: &[Reason],
) -> StandbyReadiness {
    let mut reasons = acknowledgement_reasons(w, req);
    if shares_its_name(p, w) {
        reasons.push(Reason::new(
            Code::StandbyNameShared,
            format!(
                "another WAL sender streams under the name {}: the two cannot be told apart \
                 (give each standby its own application_name)",
                w.application_name
            ),
        ));
    }
    let missing = w.flush_lsn.map(|f| l.bytes_after(f));
    if w.reached_target != Some(true) {
        reasons.push(Reason::new(
            Code::StandbyBehind,
            format!(
                "flushed up to {} only, short of the primary's {l}{}",
                w.flush_lsn.map_or("nothing".to_string(), |f| f.to_string()),
                missing.map_or(String::new(), |m| format!(" by {m} bytes"))
            ),
        ));
    }
    let dsn = obs.standby_named(&w.application_name);
    if let Some(s) = dsn {
        match &s.facts {
            Ok(f) => reasons.extend(standby_side_reasons(p, f)),
            Err(e) => reasons.push(Reason::new(
                verdict::standby_failure_code(e),
                format!("its DSN did not answer: {e}"),
            )),
        }
    }
    StandbyReadiness {
        name: w.application_name.clone(),
        ready: reasons.is_empty() && blockers.is_empty(),
        flush_lsn: w.flush_lsn,
        missing_bytes: missing.filter(|m| *m > 0),
        dsn: dsn.map(|s| s.target.clone()),
        reasons,
    }
}

fn standby_side_reasons(p: &PrimaryFacts, s: &StandbyFacts) -> Vec<Reason> {
    let mut out = Vec::new();
    match (&p.system_identifier, &s.system_identifier) {
        (Some(a), Some(b)) if a != b => out.push(Reason::new(
            Code::StandbyForeign,
            format!("belongs to another cluster (system identifier {b} ≠ {a})"),
        )),
        (Some(_), Some(_)) => {}
        _ => out.push(Reason::new(
            Code::StandbyIdentityUnverified,
            "its system identifier could not be compared with the primary's",
        )),
    }
    if !s.in_recovery {
        // The code the status check would give this server; the text stays the plain fact.
        let code = match verdict::other_server(Some(p), s) {
            OtherServer::Yes(_) => Code::StandbyPromoted,
            OtherServer::No => Code::StandbyDsnIsPrimary,
            OtherServer::CannotTell => Code::StandbyIdentityUnverified,
        };
        out.push(Reason::new(code, "answers as a primary, not a standby"));
    }
    if let (Some(a), Some(b)) = (p.timeline, s.timeline)
        && a != b
    {
        out.push(Reason::new(
            Code::StandbyTimelineMismatch,
            format!("on timeline {b}, the primary on {a}"),
        ));
    }
    let streaming = s
        .receiver
        .as_ref()
        .is_some_and(|r| r.status.as_deref() == Some("streaming"));
    if s.in_recovery && !streaming {
        out.push(Reason::new(
            Code::StandbyNotStreaming,
            "its WAL receiver is not streaming",
        ));
    }
    out
}

fn answer(
    readiness: Readiness,
    l: Option<Lsn>,
    blockers: Vec<Reason>,
    standbys: Vec<StandbyReadiness>,
) -> FailoverAnswer {
    FailoverAnswer {
        readiness,
        ready: readiness == Readiness::Ready,
        target: standbys.iter().find(|s| s.ready).map(|s| s.name.clone()),
        primary_flush_lsn: l,
        blockers,
        standbys,
    }
}
