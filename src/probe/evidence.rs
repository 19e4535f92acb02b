//! Reads and writes `replguard.evidence` (see `crate::evidence`, and `facts::Record`). The table is ours, in its own
//! schema: nothing of lightningd's is touched. A write is a tiny transaction committed with
//! `synchronous_commit = local`, so recording "the standby is gone" never waits for that
//! standby; it reaches the standby with the WAL stream when there is one.

use std::time::Duration;

use crate::dsn::PgTarget;
use crate::facts::{FailureKind, ProbeFailure, Record, Recorded, worth_recording};
use crate::level::Level;

use super::primary::parse_lsn;
use super::session::Session;

/// Rows kept: enough history to read back a day of flapping, small enough to never matter.
const KEEP_ROWS: i64 = 1000;

/// The table as this version wants it. Rows are ordered by an identity the server assigns
/// (`GENERATED ALWAYS`: a client cannot choose it), and only the table's owner — lightningd's
/// wallet role, the only writer — may write; anyone may read, for the failover tool.
const CREATE_SQL: &str = "\
CREATE SCHEMA IF NOT EXISTS replguard;
CREATE TABLE IF NOT EXISTS replguard.evidence (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    level text NOT NULL,
    codes text[] NOT NULL,
    covered text[] NOT NULL,
    flush_lsn pg_lsn,
    timeline integer,
    system_identifier text,
    source text NOT NULL,
    sync_names text
);
ALTER TABLE replguard.evidence ADD COLUMN IF NOT EXISTS sync_names text;
DO $$
BEGIN
  -- An earlier version's table: a bigserial id that a client could set. The identity starts
  -- after every id there is.
  IF (SELECT attidentity FROM pg_attribute
       WHERE attrelid = 'replguard.evidence'::regclass AND attname = 'id') = '' THEN
    ALTER TABLE replguard.evidence ALTER COLUMN id DROP DEFAULT;
    DROP SEQUENCE IF EXISTS replguard.evidence_id_seq;
    EXECUTE format('ALTER TABLE replguard.evidence ALTER COLUMN id ADD GENERATED ALWAYS AS \
                    IDENTITY (START WITH %s)',
                   (SELECT coalesce(max(id), 0) + 1 FROM replguard.evidence));
  END IF;
END $$;
REVOKE ALL ON replguard.evidence FROM PUBLIC;
GRANT USAGE ON SCHEMA replguard TO PUBLIC;
GRANT SELECT ON replguard.evidence TO PUBLIC;
COMMENT ON TABLE replguard.evidence IS
  'cln-replguard: each change of replication verdict, read by cln-replguard failover on the standby'";

/// Every read and write of the evidence resolves names in the system catalog first: a role
/// that sets its own `search_path` could otherwise put look-alike `pg_class` views in front.
const CATALOG_FIRST: &str = "SET search_path = pg_catalog, pg_temp";

/// Whether the table is there in this version's shape (when it is, a write needs no DDL: no
/// catalog lock, no NOTICE in lightningd's log); whether it and its schema belong to the
/// writing role (NULL: no schema yet), compared as role oids; the foreign owner and the
/// writer, quoted for SQL. Read from the catalog by name: a schema another role owns may not
/// be usable (`to_regclass` would fail).
const CURRENT_SQL: &str = "\
WITH s AS (SELECT oid, nspowner FROM pg_namespace WHERE nspname = 'replguard'),
     t AS (SELECT c.oid, c.relowner FROM pg_class c, s
            WHERE c.relnamespace = s.oid AND c.relname = 'evidence'),
     me AS (SELECT oid FROM pg_roles WHERE rolname = current_user)
SELECT coalesce((SELECT a.attidentity = 'a' FROM pg_attribute a, t
                  WHERE a.attrelid = t.oid AND a.attname = 'id'), false)
   AND EXISTS (SELECT 1 FROM pg_attribute a, t
                WHERE a.attrelid = t.oid AND a.attname = 'sync_names' AND NOT a.attisdropped),
       (SELECT s.nspowner = me.oid
               AND coalesce((SELECT t.relowner = me.oid FROM t), true)
               AND NOT EXISTS (SELECT 1 FROM pg_trigger g, t
                                WHERE g.tgrelid = t.oid AND NOT g.tgisinternal)
               AND NOT EXISTS (SELECT 1 FROM pg_rewrite r, t WHERE r.ev_class = t.oid)
          FROM s, me),
       quote_ident(current_user)";

/// Who may have written the rows: the table's owner and its schema's; the other roles that
/// may change it; whether triggers or rules rewrite what is inserted; and whether table and
/// schema belong to the role that owns lightningd's own tables (its `vars` table, when there
/// is exactly one; else the database's owner) — the one role that may write the evidence.
const OWNERSHIP_SQL: &str = "\
WITH w AS (SELECT coalesce(
             (SELECT min(relowner) FROM pg_class WHERE relname = 'vars' AND relkind = 'r'
              HAVING count(*) = 1),
             (SELECT datdba FROM pg_database WHERE datname = current_database())) AS role)
SELECT quote_ident(pg_get_userbyid(c.relowner)),
       quote_ident(pg_get_userbyid(n.nspowner)),
       coalesce((SELECT array_agg(DISTINCT CASE a.grantee WHEN 0 THEN 'PUBLIC'
                                          ELSE quote_ident(pg_get_userbyid(a.grantee)) END)
                   FROM aclexplode(c.relacl) a
                  WHERE a.grantee <> c.relowner
                    AND a.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')),
                '{}'),
       EXISTS (SELECT 1 FROM pg_trigger g WHERE g.tgrelid = c.oid AND NOT g.tgisinternal)
         OR EXISTS (SELECT 1 FROM pg_rewrite r WHERE r.ev_class = c.oid),
       c.relowner = w.role AND n.nspowner = w.role,
       quote_ident(pg_get_userbyid(w.role))
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, w
 WHERE n.nspname = 'replguard' AND c.relname = 'evidence'";

/// Writes `record` unless the newest row already says the same; returns whether it wrote.
pub async fn record_if_changed(
    target: &PgTarget,
    record: &Record,
    source: &str,
    deadline: Duration,
) -> Result<bool, ProbeFailure> {
    let session = Session::open_monitor(target, deadline).await?;
    session.batch("evidence", CATALOG_FIRST).await?;
    let current = table_is_current(&session).await?;
    let newest = newest_on(&session).await?;
    if !worth_recording(newest.as_ref().map(|r| &r.record), record) {
        return Ok(false);
    }
    write(&session, record, source, current).await?;
    Ok(true)
}

/// Whether the table is there in this version's shape; an error when the schema or table is
/// not wholly the writer's (another owner, a trigger, a rule).
async fn table_is_current(session: &Session) -> Result<bool, ProbeFailure> {
    let current = session.query_one("evidence", CURRENT_SQL, &[]).await?;
    let (wholly_mine, writer): (Option<bool>, String) = (current.get(1), current.get(2));
    if wholly_mine == Some(false) {
        // An earlier version wrote through the monitoring DSN: its role may own the schema or
        // the table, and may have left triggers, rules or forged rows behind. Handing the
        // table over would keep them; only starting afresh removes them all.
        return Err(ProbeFailure {
            kind: FailureKind::Query,
            stage: "evidence".into(),
            detail: format!(
                "the schema replguard, or its table evidence, is not wholly {writer}'s \
                 (lightningd's wallet role, the evidence's only writer): another role owns it, \
                 or a trigger or rule rewrites it. As a superuser run DROP SCHEMA replguard \
                 CASCADE; CREATE SCHEMA replguard AUTHORIZATION {writer}; the next write \
                 creates the table afresh"
            ),
        });
    }
    Ok(current.get(0))
}

/// The newest row, read through any DSN of the wallet's database (primary or standby).
/// `Ok(None)`: no table or no row.
pub async fn newest(
    target: &PgTarget,
    deadline: Duration,
) -> Result<Option<Recorded>, ProbeFailure> {
    let session = Session::open_monitor(target, deadline).await?;
    session.batch("evidence", CATALOG_FIRST).await?;
    newest_on(&session).await
}

async fn write(
    session: &Session,
    r: &Record,
    source: &str,
    current: bool,
) -> Result<(), ProbeFailure> {
    // Two processes creating the schema at once can collide on the catalog; the second try
    // finds it there.
    match write_once(session, r, source, current).await {
        Err(f) if f.kind != FailureKind::Timeout => write_once(session, r, source, current).await,
        done => done,
    }
}

/// One transaction, table creation included: every commit of ours is local, so none can
/// wait on an absent standby (and be counted as a blocked commit of lightningd's).
async fn write_once(
    session: &Session,
    r: &Record,
    source: &str,
    current: bool,
) -> Result<(), ProbeFailure> {
    let ddl = if current {
        ""
    } else {
        // IF NOT EXISTS answers with a NOTICE when the schema is there: not for the log.
        CREATE_SQL
    };
    let begun = session
        .batch(
            "evidence",
            &format!(
                "BEGIN; SET LOCAL synchronous_commit = local; SET LOCAL lock_timeout = '1s'; \
                 SET LOCAL client_min_messages = warning; {ddl}"
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
                    (level, codes, covered, flush_lsn, timeline, system_identifier, source,
                     sync_names)
             VALUES ($1, $2, $3, pg_current_wal_flush_lsn(), $4, $5, $6, $7)",
            &[
                &r.level.as_str(),
                &r.codes,
                &r.covered,
                &r.timeline.map(|t| t as i32),
                &r.system_identifier,
                &source,
                &r.sync_names,
            ],
        )
        .await;
    // Trimmed by count: the newest KEEP_ROWS stay, whatever their ids.
    let trimmed = match written {
        Ok(_) => {
            session
                .query(
                    "evidence",
                    "DELETE FROM replguard.evidence
                      WHERE id NOT IN (SELECT id FROM replguard.evidence
                                        ORDER BY id DESC LIMIT $1)",
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
    let ownership = session.query_one("evidence", OWNERSHIP_SQL, &[]).await?;
    let rows = session
        .query(
            "evidence",
            "SELECT id, to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    extract(epoch FROM now() - recorded_at)::float8,
                    level, codes, covered, flush_lsn::text, timeline, system_identifier, source,
                    to_jsonb(e) ->> 'sync_names'
               FROM replguard.evidence e ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let level_text: String = row.get(3);
    let level = Level::from_recorded(&level_text);
    Ok(Some(Recorded {
        id: row.get(0),
        recorded_at: row.get(1),
        age_s: row.get(2),
        record: Record {
            level,
            codes: row.get(4),
            covered: row.get(5),
            sync_names: row.get(10),
            timeline: row.get::<_, Option<i32>>(7).map(|t| t as u32),
            system_identifier: row.get(8),
        },
        flush_lsn: parse_lsn(row.get(6)),
        source: row.get(9),
        owner: ownership.get(0),
        schema_owner: ownership.get(1),
        other_writers: ownership.get(2),
        rewritten: ownership.get(3),
        owned_by_the_wallets_role: ownership.get::<_, Option<bool>>(4).unwrap_or(false),
        wallets_role: ownership.get(5),
    }))
}
