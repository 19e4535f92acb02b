//! The only module that talks to PostgreSQL. Every connection and query runs under a deadline;
//! what comes out is plain facts (`crate::facts`), judged elsewhere.

mod commit;
pub mod evidence;
mod freshness;
mod manager;
mod primary;
pub mod promote;
mod session;
mod standby;

use std::time::{Duration, Instant, SystemTime};

use crate::dsn::{PgTarget, WalletDsn};
use crate::facts::{Observation, Record, StandbyObservation, WalletObservation};
use crate::policy::Policy;

pub use commit::PROBE_APPLICATION_NAME;
pub use primary::{MIN_SERVER_VERSION_NUM, MONITOR_APPLICATION_NAME};

/// What to check: the wallet DSN and the standbys the operator named.
#[derive(Clone, Debug)]
pub struct Targets {
    /// The DSN the checks read through: the wallet DSN, or the plugin's `replguard-dsn`.
    pub wallet: WalletDsn,
    pub standbys: Vec<PgTarget>,
    /// lightningd's wallet DSN when `wallet` is another (monitoring) DSN: lightningd's session
    /// settings are read through it, and it must reach the same cluster.
    pub lightningd_dsn: Option<PgTarget>,
    /// Look for lightningd's own sessions on the server (plugin mode).
    pub expect_lightningd_session: bool,
}

impl Targets {
    /// The usual case: everything through the wallet DSN.
    pub fn new(wallet: WalletDsn, standbys: Vec<PgTarget>) -> Targets {
        Targets {
            wallet,
            standbys,
            lightningd_dsn: None,
            expect_lightningd_session: false,
        }
    }
}

impl Targets {
    /// Where verdicts are recorded (`replguard.evidence`): through lightningd's own wallet
    /// DSN, never a monitoring DSN. The table's owner is its only writer, so a monitoring role
    /// — often shared with other tools — cannot forge the evidence a failover trusts.
    pub fn evidence_writer(&self) -> Option<&PgTarget> {
        match (&self.lightningd_dsn, &self.wallet) {
            (Some(t), _) => Some(t),
            (None, WalletDsn::Postgres(t)) => Some(t),
            (None, _) => None,
        }
    }

    /// What libpq would have warned about while resolving the DSNs.
    pub fn warnings(&self) -> Vec<String> {
        let wallet = match &self.wallet {
            WalletDsn::Postgres(t) => Some(t.as_ref()),
            WalletDsn::Other { .. } => None,
        };
        wallet
            .into_iter()
            .chain(&self.standbys)
            .flat_map(|t| t.warnings.iter().cloned())
            .collect()
    }
}

/// Whether a server accepts a session at this DSN now (after a fence, it must not).
pub async fn answers(dsn: &WalletDsn, deadline: std::time::Duration) -> bool {
    match dsn {
        WalletDsn::Postgres(t) => session::Session::open_monitor(t, deadline).await.is_ok(),
        WalletDsn::Other { .. } => false,
    }
}

/// The signs of an HA manager on the wallet's server (`crate::patroni` judges them).
pub async fn observe_server_signs(
    target: &PgTarget,
    deadline: Duration,
) -> Result<crate::facts::ServerSigns, crate::facts::ProbeFailure> {
    manager::observe(target, deadline).await
}

/// One standby's facts, read through its own DSN.
pub async fn observe_standby(
    target: &PgTarget,
    policy: &Policy,
) -> Result<crate::facts::StandbyFacts, crate::facts::ProbeFailure> {
    standby::observe(target, policy).await
}

/// Records a verdict in `replguard.evidence` when it changed (`evidence::Record::of` makes the
/// record; `None` when the primary was not reached). `Ok(None)`: nothing to record. A failure
/// is for the caller to warn about; it never changes the verdict.
pub async fn record_evidence(
    targets: &Targets,
    record: Option<Record>,
    source: &str,
    policy: &Policy,
) -> Result<Option<bool>, String> {
    let (Some(t), Some(record)) = (targets.evidence_writer(), record) else {
        return Ok(None);
    };
    evidence::record_if_changed(t, &record, source, policy.query_timeout)
        .await
        .map(Some)
        .map_err(|f| format!("cannot record evidence: {f}"))
}

/// `status`/`check`: the primary's facts with a commit probe, and each standby's.
pub async fn observe(targets: &Targets, policy: &Policy) -> Observation {
    observe_with(targets, policy, primary::Mode::Status, &mut Kept::default()).await
}

/// The primary's session kept from one check to the next (the runtime monitor): a check then
/// forks no backend and prepares no statement on the primary.
/// Also the replies seen at the previous check, so that their age is judged on this
/// process's clock (`freshness`).
#[derive(Default)]
pub struct Kept {
    session: Option<primary::KeptSession>,
    replies: freshness::ReplyMemory,
}

/// `observe`, reusing (and keeping for the next call) the primary's session in `kept`.
pub async fn observe_kept(targets: &Targets, policy: &Policy, kept: &mut Kept) -> Observation {
    observe_with(targets, policy, primary::Mode::Status, kept).await
}

/// `failover-check`: writes nothing; waits up to `wait` for the named standbys to flush up to
/// the primary's flush position taken when the check starts.
pub async fn observe_failover(targets: &Targets, policy: &Policy, wait: Duration) -> Observation {
    let mut one_shot = Kept::default();
    observe_with(
        targets,
        policy,
        primary::Mode::Failover { wait },
        &mut one_shot,
    )
    .await
}

async fn observe_with(
    targets: &Targets,
    policy: &Policy,
    mode: primary::Mode,
    kept: &mut Kept,
) -> Observation {
    let checked_at = SystemTime::now();
    let start = Instant::now();
    let standby_tasks: Vec<_> = targets
        .standbys
        .iter()
        .map(|t| {
            let (t, p) = (t.clone(), *policy);
            tokio::spawn(async move { standby::observe(&t, &p).await })
        })
        .collect();
    let wallet = match &targets.wallet {
        WalletDsn::Other { scheme } => WalletObservation::NotPostgres {
            scheme: scheme.clone(),
        },
        WalletDsn::Postgres(t) => WalletObservation::Postgres {
            target: t.to_string(),
            primary: primary::observe(t, targets, policy, mode, kept).await,
        },
    };
    let mut standbys = Vec::new();
    for (t, task) in targets.standbys.iter().zip(standby_tasks) {
        // The task died (a panic of ours): a plugin fault, nothing learnt about the standby.
        let facts = task.await.unwrap_or_else(|e| {
            Err(crate::facts::ProbeFailure {
                kind: crate::facts::FailureKind::PluginFault,
                stage: "standby".into(),
                detail: format!("probe task failed: {e}"),
            })
        });
        standbys.push(StandbyObservation {
            target: t.to_string(),
            facts,
        });
    }
    Observation {
        checked_at,
        took_ms: commit::millis(start.elapsed()),
        wallet,
        standbys,
        pinned_commit: None,
    }
}
