//! The commit probe: a tiny WAL-writing transaction whose acknowledgement measures the real
//! synchronous round trip (DESIGN §2).
//!
//! - `SET LOCAL synchronous_commit = on`, so a role- or database-level `local` cannot make a
//!   hung standby look healthy.
//! - One outstanding probe at most, across processes: the transaction takes an advisory lock,
//!   which PostgreSQL holds until the commit is acknowledged, so a second probe finds it taken
//!   and reports the first one's wait instead of piling up another waiting backend.
//! - Never cancelled: a cancel would end the wait and commit locally. A probe past its deadline
//!   stays waiting in its own task; that wait is the finding.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::dsn::PgTarget;
use crate::facts::CommitProbe;
use crate::lsn::Lsn;
use crate::policy::Policy;
use crate::syncnames::{Acknowledger, SyncNames};

use super::session::Session;

/// `application_name` of probe sessions, so they can be told apart in `pg_stat_activity`.
pub const PROBE_APPLICATION_NAME: &str = "cln-replguard-probe";

/// Advisory lock key shared by every cln-replguard process ("clnrpg" in ASCII).
const PROBE_LOCK_KEY: i64 = 0x636c_6e72_7067;

enum Step {
    /// Setup ended without a commit to wait for.
    Early(CommitProbe),
    Committing {
        lsn: Lsn,
        started: Instant,
        released_waiting: bool,
    },
    Done(Result<(), String>),
}

pub(crate) async fn run(target: &PgTarget, policy: &Policy) -> CommitProbe {
    let config = target.session_config(PROBE_APPLICATION_NAME, policy.query_timeout);
    let query_timeout = policy.query_timeout;
    let probe_deadline = policy.probe_deadline;
    let tls = target.tls();
    let (tx, mut rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let session = match Session::open(&config, tls, query_timeout).await {
            Ok(s) => s,
            Err(f) => {
                let _ = tx.send(Step::Early(failed_with(&f))).await;
                return;
            }
        };
        match prepare(&session, probe_deadline, query_timeout / 2).await {
            Ok(Ok((lsn, released_waiting))) => {
                let started = Instant::now();
                let _ = tx
                    .send(Step::Committing {
                        lsn,
                        started,
                        released_waiting,
                    })
                    .await;
                let done = session.batch_unbounded("commit probe", "COMMIT").await;
                let _ = tx.send(Step::Done(done.map_err(|f| f.detail))).await;
            }
            Ok(Err(early)) => {
                let _ = session.batch("commit probe", "ROLLBACK").await;
                let _ = tx.send(Step::Early(early)).await;
            }
            Err(f) => {
                let _ = tx.send(Step::Early(failed_with(&f))).await;
            }
        }
    });

    let (lsn, started, released_waiting) = match timeout(query_timeout, rx.recv()).await {
        Ok(Some(Step::Committing {
            lsn,
            started,
            released_waiting,
        })) => (lsn, started, released_waiting),
        Ok(Some(Step::Early(outcome))) => return outcome,
        Ok(_) => return failed("commit probe", "probe task ended unexpectedly"),
        Err(_) => {
            return failed(
                "commit probe",
                &format!(
                    "no answer within {} ms before commit",
                    query_timeout.as_millis()
                ),
            );
        }
    };
    let remaining = policy.probe_deadline.saturating_sub(started.elapsed());
    match timeout(remaining, rx.recv()).await {
        Ok(Some(Step::Done(Ok(())))) => CommitProbe::Acknowledged {
            ms: millis(started.elapsed()),
            lsn,
            released_waiting,
        },
        Ok(Some(Step::Done(Err(e)))) => failed("commit probe", &e),
        Ok(_) => failed("commit probe", "probe task ended unexpectedly"),
        Err(_) => CommitProbe::Waiting {
            waited_ms: millis(started.elapsed()),
            lsn,
        },
    }
}

/// BEGIN, take the probe lock, write the WAL record: one round trip (a BEGIN inside a
/// multi-statement simple query keeps the transaction open after it). `Ok(Err(..))`: no
/// commit to wait for.
async fn prepare(
    session: &Session,
    probe_deadline: Duration,
    lock_budget: Duration,
) -> Result<Result<(Lsn, bool), CommitProbe>, crate::facts::ProbeFailure> {
    let begin = format!("{BEGIN_PROBE} {}", write_if_locked());
    let mut written = session.simple_value("commit probe", &begin).await?;
    // Another probe holds the lock. If it waits for the standby past our deadline, that
    // wait is the answer — unless it waits only for a reply the standbys owe (below); if it
    // is merely in flight (another check of this process, or a monitoring run of the CLI),
    // it ends within milliseconds: try again.
    let mut give_up = Instant::now() + lock_budget;
    let mut released = false;
    while written.is_none() {
        let waiting_ms: Option<f64> = session
            .query_one(
                "commit probe",
                "SELECT max(extract(epoch FROM clock_timestamp() - query_start) * 1000)::float8 \
                 FROM pg_stat_activity WHERE application_name = $1 AND wait_event = 'SyncRep'",
                &[&PROBE_APPLICATION_NAME],
            )
            .await?
            .get(0);
        let past_deadline =
            waiting_ms.is_some_and(|ms| ms >= probe_deadline.as_secs_f64() * 1000.0);
        if past_deadline && !released {
            if !release_unreplied(session).await? {
                return Ok(Err(CommitProbe::AlreadyWaiting { waiting_ms }));
            }
            // The waiting probe commits once the standbys reply (the WAL writer flushes the
            // record within wal_writer_delay, 200 ms by default); then the lock is free.
            released = true;
            give_up = Instant::now() + lock_budget;
        } else if Instant::now() >= give_up {
            return Ok(Err(CommitProbe::AlreadyWaiting { waiting_ms }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        written = session
            .simple_value("commit probe", &write_if_locked())
            .await?;
    }
    let lsn =
        written
            .unwrap_or_default()
            .parse()
            .map_err(|e: String| crate::facts::ProbeFailure {
                kind: crate::facts::FailureKind::Query,
                stage: "commit probe".into(),
                detail: e,
            })?;
    if released {
        log::info!(
            "released commits that waited only for a standby's reply (the standbys \
             synchronous_standby_names now requires had already flushed them)"
        );
    }
    Ok(Ok((lsn, released)))
}

/// Commits still waiting although the standbys the names now require have flushed past them
/// wait only for those standbys' next reply: after `synchronous_standby_names` is repaired,
/// up to `wal_receiver_status_interval` (DESIGN §6). Any new WAL makes the standbys reply,
/// and the reply releases every such waiter, lightningd's included. So when that holds, commit
/// one small WAL record locally (it waits for nothing), and cancel nothing. `Ok(true)`: written, and the probe's transaction begun again.
async fn release_unreplied(session: &Session) -> Result<bool, crate::facts::ProbeFailure> {
    // Every waiting commit flushed locally before it began to wait, so sampling the flush
    // position after the waiters were seen bounds them all.
    let row = session
        .query_one(
            "commit probe",
            "SELECT pg_current_wal_flush_lsn()::text, current_setting('synchronous_standby_names')",
            &[],
        )
        .await?;
    let (Some(l), Ok(SyncNames::Required(req))) = (
        super::primary::parse_lsn(row.get(0)),
        SyncNames::parse(&row.get::<_, String>(1)),
    ) else {
        return Ok(false);
    };
    let senders: Vec<Acknowledger> = session
        .query(
            "commit probe",
            "SELECT state = 'streaming', sync_state, flush_lsn::text FROM pg_stat_replication",
            &[],
        )
        .await?
        .iter()
        .map(|r| Acknowledger {
            streaming: r.get::<_, Option<bool>>(0).unwrap_or(false),
            sync_state: r.get(1),
            flush: super::primary::parse_lsn(r.get(2)),
        })
        .collect();
    if !req.flushed_through(&senders, l) {
        return Ok(false);
    }
    // Our own probe transaction has written nothing yet: end it, commit the record locally
    // (a commit flushes at once and wakes the WAL senders, where a non-transactional record
    // could sit until a hibernating WAL writer wakes), and begin the probe again.
    session
        .batch(
            "commit probe",
            &format!(
                "ROLLBACK; BEGIN; SET LOCAL synchronous_commit = local; \
                 SELECT pg_logical_emit_message(true, 'cln-replguard', 'release'); COMMIT; \
                 {BEGIN_PROBE}"
            ),
        )
        .await?;
    Ok(true)
}

/// The probe's transaction: it waits for the standbys whatever the role or database says, and
/// for as long as it takes (its wait is the finding; it is never cancelled).
const BEGIN_PROBE: &str =
    "BEGIN; SET LOCAL synchronous_commit = on; SET LOCAL statement_timeout = 0;";

/// The probe's WAL record, written only when this transaction got the probe lock; its LSN,
/// or NULL when another probe holds the lock.
fn write_if_locked() -> String {
    format!(
        "SELECT CASE WHEN pg_try_advisory_xact_lock({PROBE_LOCK_KEY}) \
         THEN pg_logical_emit_message(true, 'cln-replguard', 'probe')::text END"
    )
}

/// A failure of the plugin's own side stays one: it says nothing about the standbys.
fn failed_with(f: &crate::facts::ProbeFailure) -> CommitProbe {
    let error = f.to_string();
    match f.kind {
        crate::facts::FailureKind::PluginFault => CommitProbe::PluginFault { error },
        _ => CommitProbe::Failed { error },
    }
}

fn failed(stage: &str, detail: &str) -> CommitProbe {
    CommitProbe::Failed {
        error: format!("{stage}: {detail}"),
    }
}

pub(crate) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}
