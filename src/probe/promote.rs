//! The SQL of a failover, on the standby being promoted: promote and wait for the new
//! timeline, `CHECKPOINT`, and the choice about the inherited `synchronous_standby_names`.

use std::time::{Duration, Instant};

use crate::dsn::PgTarget;
use crate::facts::{FailureKind, ProbeFailure};
use crate::lsn::{Lsn, timeline_of_walfile};

use super::primary::parse_lsn;
use super::session::Session;

/// What the promoted server reports.
#[derive(Clone, Debug)]
pub struct Promoted {
    pub timeline: u32,
    pub lsn: Option<Lsn>,
    pub took: Duration,
    /// `synchronous_standby_names` it inherited from the old primary (DESIGN §2).
    pub sync_names: String,
}

/// `pg_promote(wait => true)`, then waits until the server writes on a new timeline, then
/// `CHECKPOINT` (so a crash right after does not replay the whole recovery again, and
/// `pg_rewind` of the old primary sees the new timeline in the control file).
pub async fn promote(
    target: &PgTarget,
    old_timeline: Option<u32>,
    wait: Duration,
) -> Result<Promoted, ProbeFailure> {
    let start = Instant::now();
    let wait_s = wait.as_secs().clamp(1, i32::MAX as u64) as i32;
    // The session deadline must cover pg_promote's own wait.
    let session = Session::open_monitor(target, wait + Duration::from_secs(5)).await?;
    let row = session
        .query_one("promote", "SELECT pg_promote(true, $1)", &[&wait_s])
        .await
        .map_err(|f| match f.kind {
            FailureKind::Privilege => ProbeFailure {
                detail: format!(
                    "{} — promote as a superuser, or GRANT EXECUTE ON FUNCTION pg_promote TO \
                     the DSN's role",
                    f.detail
                ),
                ..f
            },
            _ => f,
        })?;
    if !row.get::<_, bool>(0) {
        return Err(ProbeFailure {
            kind: FailureKind::Timeout,
            stage: "promote".into(),
            detail: format!(
                "the standby did not finish promotion within {wait_s} s. It may still finish: \
                 check pg_is_in_recovery() on it before anything else, and if it is the \
                 primary now, the --then step was not done (its synchronous_standby_names are \
                 the old primary's)"
            ),
        });
    }
    loop {
        let row = session
            .query_one(
                "new timeline",
                "SELECT pg_is_in_recovery(),
                        CASE WHEN pg_is_in_recovery() THEN NULL
                             ELSE pg_walfile_name(pg_current_wal_lsn()) END,
                        CASE WHEN pg_is_in_recovery() THEN NULL
                             ELSE pg_current_wal_lsn()::text END,
                        current_setting('synchronous_standby_names')",
                &[],
            )
            .await?;
        let timeline = row
            .get::<_, Option<String>>(1)
            .as_deref()
            .and_then(timeline_of_walfile);
        match timeline {
            Some(t) if !row.get::<_, bool>(0) && old_timeline.is_none_or(|old| t > old) => {
                session.batch("checkpoint", "CHECKPOINT").await?;
                return Ok(Promoted {
                    timeline: t,
                    lsn: parse_lsn(row.get(2)),
                    took: start.elapsed(),
                    sync_names: row.get(3),
                });
            }
            _ if start.elapsed() > wait => {
                return Err(ProbeFailure {
                    kind: FailureKind::Timeout,
                    stage: "new timeline".into(),
                    detail: format!(
                        "promoted, but no new timeline after {} s (still on {:?})",
                        wait.as_secs(),
                        timeline
                    ),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Lets commits through without a standby: `ALTER SYSTEM` plus a reload, so it also holds
/// after a restart — until a standby is back and the names are set again.
pub async fn clear_sync_names(target: &PgTarget, deadline: Duration) -> Result<(), ProbeFailure> {
    let session = Session::open_monitor(target, deadline).await?;
    // Two statements, two round trips: ALTER SYSTEM refuses the implicit transaction of a
    // multi-statement batch.
    session
        .batch(
            "synchronous_standby_names",
            "ALTER SYSTEM SET synchronous_standby_names = ''",
        )
        .await?;
    session
        .batch("synchronous_standby_names", "SELECT pg_reload_conf()")
        .await
}
