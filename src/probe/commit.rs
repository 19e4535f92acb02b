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
                let _ = tx.send(Step::Early(failed(&f.stage, &f.detail))).await;
                return;
            }
        };
        match prepare(&session, probe_deadline, query_timeout / 2).await {
            Ok(Ok(lsn)) => {
                let started = Instant::now();
                let _ = tx.send(Step::Committing { lsn, started }).await;
                let done = session.batch_unbounded("commit probe", "COMMIT").await;
                let _ = tx.send(Step::Done(done.map_err(|f| f.detail))).await;
            }
            Ok(Err(early)) => {
                let _ = session.batch("commit probe", "ROLLBACK").await;
                let _ = tx.send(Step::Early(early)).await;
            }
            Err(f) => {
                let _ = tx.send(Step::Early(failed(&f.stage, &f.detail))).await;
            }
        }
    });

    let (lsn, started) = match timeout(query_timeout, rx.recv()).await {
        Ok(Some(Step::Committing { lsn, started })) => (lsn, started),
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
) -> Result<Result<Lsn, CommitProbe>, crate::facts::ProbeFailure> {
    let begin = format!(
        "BEGIN; SET LOCAL synchronous_commit = on; SET LOCAL statement_timeout = 0; {}",
        write_if_locked()
    );
    let mut written = session.simple_value("commit probe", &begin).await?;
    // Another probe holds the lock. If it waits for the standby past our deadline, that
    // wait is the answer; if it is merely in flight (another check of this process, or a
    // monitoring run of the CLI), it ends within milliseconds: try again.
    let give_up = Instant::now() + lock_budget;
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
        if past_deadline || Instant::now() >= give_up {
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
    Ok(Ok(lsn))
}

/// The probe's WAL record, written only when this transaction got the probe lock; its LSN,
/// or NULL when another probe holds the lock.
fn write_if_locked() -> String {
    format!(
        "SELECT CASE WHEN pg_try_advisory_xact_lock({PROBE_LOCK_KEY}) \
         THEN pg_logical_emit_message(true, 'cln-replguard', 'probe')::text END"
    )
}

fn failed(stage: &str, detail: &str) -> CommitProbe {
    CommitProbe::Failed {
        error: format!("{stage}: {detail}"),
    }
}

pub(crate) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}
