//! Reads and writes `replguard.evidence` (see `crate::evidence`). The table is ours, in its own
//! schema: nothing of lightningd's is touched. A write is a tiny transaction committed with
//! `synchronous_commit = local`, so recording "the standby is gone" never waits for that
//! standby; it reaches the standby with the WAL stream when there is one.

use std::time::Duration;

use crate::dsn::PgTarget;
use crate::evidence::{Record, Recorded};
use crate::facts::{FailureKind, ProbeFailure};
use crate::verdict::Level;

use super::primary::parse_lsn;
use super::session::Session;

/// Rows kept: enough history to read back a day of flapping, small enough to never matter.
const KEEP_ROWS: i64 = 1000;

const CREATE_SQL: &str = "\
CREATE SCHEMA IF NOT EXISTS replguard;
CREATE TABLE IF NOT EXISTS replguard.evidence (
    id bigserial PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    level text NOT NULL,
    codes text[] NOT NULL,
    covered text[] NOT NULL,
    flush_lsn pg_lsn,
    timeline integer,
    system_identifier text,
    source text NOT NULL
);
COMMENT ON TABLE replguard.evidence IS
  'cln-replguard: each change of replication verdict, read by cln-replguard failover on the standby'";

/// Writes `record` unless the newest row already says the same; returns whether it wrote.
pub async fn record_if_changed(
    target: &PgTarget,
    record: &Record,
    source: &str,
    deadline: Duration,
) -> Result<bool, ProbeFailure> {
    let session = Session::open_monitor(target, deadline).await?;
    let newest = newest_on(&session).await?;
    if !crate::evidence::worth_recording(newest.as_ref().map(|r| &r.record), record) {
        return Ok(false);
    }
    write(&session, record, source).await?;
    Ok(true)
}

/// The newest row, read through any DSN of the wallet's database (primary or standby).
/// `Ok(None)`: no table or no row.
pub async fn newest(
    target: &PgTarget,
    deadline: Duration,
) -> Result<Option<Recorded>, ProbeFailure> {
    let session = Session::open_monitor(target, deadline).await?;
    newest_on(&session).await
}

async fn write(session: &Session, r: &Record, source: &str) -> Result<(), ProbeFailure> {
    // Two processes creating the schema at once can collide on the catalog; the second try
    // finds it there.
    match write_once(session, r, source).await {
        Err(f) if f.kind != FailureKind::Timeout => write_once(session, r, source).await,
        done => done,
    }
}

/// One transaction, table creation included: every commit of ours is local, so none can
/// wait on an absent standby (and be counted as a blocked commit of lightningd's).
async fn write_once(session: &Session, r: &Record, source: &str) -> Result<(), ProbeFailure> {
    let begun = session
        .batch(
            "evidence",
            &format!(
                "BEGIN; SET LOCAL synchronous_commit = local; SET LOCAL lock_timeout = '1s'; \
                 {CREATE_SQL}"
            ),
        )
        .await;
    if let Err(e) = begun {
        let _ = session.batch("evidence", "ROLLBACK").await;
        return Err(e);
    }
    let written = session
        .query(
            "evidence",
            "INSERT INTO replguard.evidence
                    (level, codes, covered, flush_lsn, timeline, system_identifier, source)
             VALUES ($1, $2, $3, pg_current_wal_flush_lsn(), $4, $5, $6)",
            &[
                &r.level.as_str(),
                &r.codes,
                &r.covered,
                &r.timeline.map(|t| t as i32),
                &r.system_identifier,
                &source,
            ],
        )
        .await;
    let trimmed = match written {
        Ok(_) => {
            session
                .query(
                    "evidence",
                    "DELETE FROM replguard.evidence
                      WHERE id <= (SELECT max(id) FROM replguard.evidence) - $1",
                    &[&KEEP_ROWS],
                )
                .await
        }
        Err(e) => Err(e),
    };
    match trimmed {
        Ok(_) => session.batch("evidence", "COMMIT").await,
        Err(e) => {
            let _ = session.batch("evidence", "ROLLBACK").await;
            Err(e)
        }
    }
}

async fn newest_on(session: &Session) -> Result<Option<Recorded>, ProbeFailure> {
    let exists = session
        .query_one(
            "evidence",
            "SELECT to_regclass('replguard.evidence') IS NOT NULL",
            &[],
        )
        .await?;
    if !exists.get::<_, bool>(0) {
        return Ok(None);
    }
    let rows = session
        .query(
            "evidence",
            "SELECT id, to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    extract(epoch FROM now() - recorded_at)::float8,
                    level, codes, covered, flush_lsn::text, timeline, system_identifier, source
               FROM replguard.evidence ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let level_text: String = row.get(3);
    let level = match level_text.as_str() {
        "safe" => Level::Safe,
        "degraded" => Level::Degraded,
        "unsafe" => Level::Unsafe,
        _ => Level::Unknown,
    };
    Ok(Some(Recorded {
        id: row.get(0),
        recorded_at: row.get(1),
        age_s: row.get(2),
        record: Record {
            level,
            codes: row.get(4),
            covered: row.get(5),
            timeline: row.get::<_, Option<i32>>(7).map(|t| t as u32),
            system_identifier: row.get(8),
        },
        flush_lsn: parse_lsn(row.get(6)),
        source: row.get(9),
    }))
}
