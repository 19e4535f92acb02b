//! Facts about the wallet's server, read through the wallet DSN.

use std::time::{Duration, Instant};

use tokio_postgres::Row;

use crate::dsn::PgTarget;
use crate::facts::{
    Archiver, CommitProbe, FailureKind, PrimaryFacts, ProbeFailure, ServerSigns, SessionFacts,
    SettingOverride, Slot, SyncRepWaiters, WalSender, WalletCluster,
};
use crate::lsn::{Lsn, timeline_of_walfile};
use crate::policy::Policy;
use crate::syncnames::SyncNames;

use super::commit::{self, PROBE_APPLICATION_NAME};
use super::freshness::{ReplyMemory, fresh_replies};
use super::session::{Session, optional};

/// `application_name` of our fact-reading sessions.
pub const MONITOR_APPLICATION_NAME: &str = "cln-replguard";

/// Oldest PostgreSQL whose views we read (`pg_replication_slots.wal_status` is from 13).
pub const MIN_SERVER_VERSION_NUM: i32 = 130000;

/// What to wait for after reading the basics.
#[derive(Clone, Copy)]
pub(crate) enum Mode {
    /// `status`/`check`: run the commit probe, then wait (up to its deadline) for the
    /// synchronous standbys to flush the probe's WAL.
    Status,
    /// `failover-check`: write nothing; wait up to `wait` for every named standby to flush
    /// up to `target` (the primary's flush position when the check started).
    Failover { wait: Duration },
}

/// Reads the primary's facts; the first failure ends the check with it. `kept` is a session
/// kept from the previous check (the runtime monitor): it is reused while it works, so a
/// check costs no new backend, and is left for the next one unless it failed.
pub(crate) async fn observe(
    target: &PgTarget,
    targets: &super::Targets,
    policy: &Policy,
    mode: Mode,
    kept: &mut super::Kept,
) -> Result<PrimaryFacts, ProbeFailure> {
    // A one-shot check always probes: start the probe now, beside the reads (its own
    // connection and commit overlap them). On a server in recovery its outcome is dropped.
    let early_probe = match mode {
        Mode::Status if policy.skip_probe_within.is_none() => {
            let (target, policy) = (target.clone(), *policy);
            Some(tokio::spawn(async move {
                probe_twice_if_slow(&target, &policy).await
            }))
        }
        _ => None,
    };
    let (mut session, seen) = match kept.session.take() {
        Some(k) if !k.session.is_closed() => (k.session, Some(k.overrides)),
        _ => (
            Session::open_monitor(target, policy.query_timeout).await?,
            None,
        ),
    };
    let replies = &mut kept.replies;
    let mut facts = read(
        &session,
        target,
        targets,
        policy,
        mode,
        early_probe,
        replies,
    )
    .await;
    // Role and database settings reach a session when it starts (DESIGN §2): once they
    // changed, a kept session shows lightningd's next session wrongly. Read again on a new one.
    if let (Ok(f), Some(seen)) = (&facts, &seen)
        && overrides_key(&f.session.overrides) != *seen
    {
        session = Session::open_monitor(target, policy.query_timeout).await?;
        facts = read(&session, target, targets, policy, mode, None, replies).await;
    }
    // A session whose query timed out may still be running it: never reuse that one.
    let reusable = match &facts {
        Ok(_) => true,
        Err(f) => !matches!(f.kind, FailureKind::Timeout | FailureKind::Unreachable),
    };
    if reusable && !session.is_closed() {
        let overrides = match (&facts, seen) {
            (Ok(f), _) => overrides_key(&f.session.overrides),
            (Err(_), Some(seen)) => seen,
            // Not known for this session: the next check compares with nothing, so reads
            // again on a new session.
            (Err(_), None) => String::new(),
        };
        kept.session = Some(KeptSession { session, overrides });
    }
    facts
}

/// A session kept between checks, and the role/database settings it started with.
pub(crate) struct KeptSession {
    session: Session,
    overrides: String,
}

fn overrides_key(o: &[SettingOverride]) -> String {
    o.iter()
        .map(|s| format!("{:?}/{:?}={}", s.database, s.role, s.value))
        .collect::<Vec<_>>()
        .join(";")
}

/// The reads that need only this session, and when the WAL senders' rows came.
type OtherReads = (
    Option<String>,
    Vec<SettingOverride>,
    Vec<Slot>,
    Archiver,
    SyncRepWaiters,
    Option<i64>,
    ServerSigns,
    (Vec<WalSender>, Instant),
);

/// Every read that does not wait on another, pipelined on the one connection: one wait
/// instead of eight. The WAL senders are read now too (a skip is decided on them, and it
/// warms the view for the read after the probe).
async fn read_pipelined(
    session: &Session,
    targets: &super::Targets,
) -> (Result<Row, ProbeFailure>, Result<OtherReads, ProbeFailure>) {
    let own_sessions = async {
        match (&targets.lightningd_dsn, targets.expect_lightningd_session) {
            (None, true) => lightningd_sessions(session, None).await.map(Some),
            _ => Ok(None),
        }
    };
    tokio::join!(session.query_one("server", BASICS_SQL, &[]), async {
        tokio::try_join!(
            system_identifier(session),
            overrides(session),
            slots(session),
            archiver(session),
            syncrep_waiters(session),
            own_sessions,
            super::manager::read(session),
            // When the rows came: the freshness rule measures on this process's clock.
            async { Ok((read_walsenders(session).await?, Instant::now())) },
        )
    })
}

async fn read(
    session: &Session,
    target: &PgTarget,
    targets: &super::Targets,
    policy: &Policy,
    mode: Mode,
    early_probe: Option<tokio::task::JoinHandle<CommitProbe>>,
    replies: &mut ReplyMemory,
) -> Result<PrimaryFacts, ProbeFailure> {
    let (basics, rest) = read_pipelined(session, targets).await;
    // The version first: on an older server the other reads fail for want of a column.
    let row = basics?;
    let server_version_num = supported_version(&row)?;
    let in_recovery: bool = row.get("in_recovery");
    let flush_lsn = parse_lsn(row.get("flush_lsn"));
    let sync_names_raw: String = row.get("sync_names");
    let sync_names = SyncNames::parse(&sync_names_raw);
    let (
        system_identifier,
        own_overrides,
        slots,
        archiver,
        waiters,
        own_sessions,
        ha_signs,
        senders_read,
    ) = rest?;
    let (senders_now, read_at) = senders_read;
    let reply_ages = replies.observe(&senders_now, read_at);
    let (session_facts, wallet_cluster) = match &targets.lightningd_dsn {
        None => (
            own_session_facts(&row, own_overrides),
            WalletCluster::SameDsn,
        ),
        Some(wallet) => lightningd_session(wallet, policy, system_identifier.as_deref()).await?,
    };
    let lightningd_sessions = match own_sessions {
        Some(n) => Some(n),
        None if targets.expect_lightningd_session => Some(
            lightningd_sessions(
                session,
                Some((&session_facts.role, &session_facts.database)),
            )
            .await?,
        ),
        None => None,
    };

    let (commit_probe, wait_for) = match mode {
        _ if in_recovery => (CommitProbe::NotRun, None),
        Mode::Status => {
            let skip = || fresh_replies(policy, &sync_names, &waiters, &senders_now, &reply_ages);
            let probe = status_probe(early_probe, target, policy, skip).await;
            let wait = wait_after_probe(&probe, policy);
            (probe, wait)
        }
        Mode::Failover { wait } => (CommitProbe::NotRun, flush_lsn.map(|l| (l, wait, true))),
    };
    // With nothing to wait for, the read taken with the others is the answer.
    let walsenders = match wait_for {
        None => senders_now,
        Some(wait_for) => walsenders_reaching(session, wait_for, &sync_names).await?,
    };

    Ok(PrimaryFacts {
        server_version_num,
        server_version: row.get("version"),
        in_recovery,
        system_identifier,
        timeline: row
            .get::<_, Option<String>>("walfile")
            .as_deref()
            .and_then(timeline_of_walfile),
        postmaster_start: row.get("started"),
        postmaster_started_us: row.get("started_us"),
        flush_lsn,
        can_read_stats: row.get("can_read_stats"),
        session: session_facts,
        sync_names_raw,
        sync_names,
        commit_probe,
        walsenders,
        slots,
        max_slot_wal_keep_size_mb: max_slot_wal_keep_size_mb(&row)?,
        wal_log_hints: row.get("wal_log_hints"),
        data_checksums: row.get("data_checksums"),
        archiver: (row.get::<_, String>("archive_mode") != "off").then_some(archiver),
        archive_mode: row.get("archive_mode"),
        syncrep_waiters: waiters,
        wallet_cluster,
        lightningd_sessions,
        ha_signs,
    })
}

/// The server's `version_num`, or the failure that says it is too old to read.
fn supported_version(row: &Row) -> Result<i32, ProbeFailure> {
    let server_version_num: i32 = row.get("version_num");
    if server_version_num < MIN_SERVER_VERSION_NUM {
        return Err(ProbeFailure {
            kind: FailureKind::Query,
            stage: "server".into(),
            detail: format!(
                "PostgreSQL {} is not supported; cln-replguard reads PostgreSQL 13 or newer",
                row.get::<_, String>("version")
            ),
        });
    }
    Ok(server_version_num)
}

/// lightningd's session settings when the checks read through the wallet DSN itself: this
/// session's.
fn own_session_facts(row: &Row, overrides: Vec<SettingOverride>) -> SessionFacts {
    SessionFacts {
        role: row.get("role"),
        database: row.get("db"),
        synchronous_commit: row.get("sync_commit"),
        synchronous_commit_source: row.get("sync_commit_source"),
        overrides,
    }
}

/// `status`'s commit probe: the one started beside the reads, else the skip that fresh
/// standby replies allow, else a probe now.
async fn status_probe(
    early_probe: Option<tokio::task::JoinHandle<CommitProbe>>,
    target: &PgTarget,
    policy: &Policy,
    skip: impl FnOnce() -> Option<CommitProbe>,
) -> CommitProbe {
    match early_probe {
        // The task died (a panic of ours): nothing was learnt about the standbys.
        Some(started) => started.await.unwrap_or_else(|e| CommitProbe::PluginFault {
            error: format!("commit probe task: {e}"),
        }),
        None => match skip() {
            Some(skipped) => skipped,
            None => probe_twice_if_slow(target, policy).await,
        },
    }
}

/// Standbys get the rest of the deadline to confirm an acknowledged probe; a probe still
/// waiting already says all there is to say.
fn wait_after_probe(probe: &CommitProbe, policy: &Policy) -> Option<(Lsn, Duration, bool)> {
    match probe {
        CommitProbe::Acknowledged { lsn, .. } => Some((*lsn, policy.probe_deadline, false)),
        CommitProbe::Waiting { lsn, .. } => Some((*lsn, Duration::ZERO, false)),
        _ => None,
    }
}

fn max_slot_wal_keep_size_mb(row: &Row) -> Result<i64, ProbeFailure> {
    megabytes(row.get("max_slot_keep")).ok_or_else(|| ProbeFailure {
        kind: FailureKind::Query,
        stage: "server".into(),
        detail: format!(
            "unreadable max_slot_wal_keep_size {:?}",
            row.get::<_, String>("max_slot_keep")
        ),
    })
}

const SESSION_SQL: &str = "\
SELECT current_user::text, current_database()::text, current_setting('synchronous_commit'),
       (SELECT source FROM pg_settings WHERE name = 'synchronous_commit')";

/// lightningd's session settings, read through the wallet DSN when the checks use another
/// one, and whether that DSN reaches the same cluster.
async fn lightningd_session(
    wallet: &PgTarget,
    policy: &Policy,
    monitor_id: Option<&str>,
) -> Result<(SessionFacts, WalletCluster), ProbeFailure> {
    let session = Session::open(
        &wallet.session_config(MONITOR_APPLICATION_NAME, policy.query_timeout),
        wallet.tls(),
        policy.query_timeout,
    )
    .await
    .map_err(|f| ProbeFailure {
        stage: format!("wallet DSN {}", f.stage),
        ..f
    })?;
    let row = session
        .query_one("wallet session", SESSION_SQL, &[])
        .await?;
    let facts = SessionFacts {
        role: row.get(0),
        database: row.get(1),
        synchronous_commit: row.get(2),
        synchronous_commit_source: row.get(3),
        overrides: overrides(&session).await?,
    };
    let cluster = match (monitor_id, system_identifier(&session).await?) {
        (Some(m), Some(w)) if m == w => WalletCluster::Verified,
        (Some(m), Some(w)) => WalletCluster::Different {
            wallet: w,
            monitor: m.to_string(),
        },
        _ => WalletCluster::Unverifiable {
            why: "a role may not read pg_control_system(): GRANT pg_monitor to the roles of \
                  both DSNs"
                .into(),
        },
    };
    Ok((facts, cluster))
}

/// Client sessions of lightningd's role on its database, our own excepted. `None`: the role
/// and database of this very session (the wallet DSN itself), known before any answer.
async fn lightningd_sessions(
    session: &Session,
    role_and_db: Option<(&str, &str)>,
) -> Result<i64, ProbeFailure> {
    let (role, db) = role_and_db.unzip();
    let row = session
        .query_one(
            "lightningd sessions",
            "SELECT count(*) FROM pg_stat_activity
              WHERE backend_type = 'client backend'
                AND usename = coalesce($1, current_user)
                AND datname = coalesce($2, current_database())
                AND coalesce(application_name, '') NOT LIKE 'cln-replguard%'
                AND pid <> pg_backend_pid()",
            &[&role, &db],
        )
        .await?;
    Ok(row.get(0))
}

/// A single slow acknowledgement is often a scheduling hiccup (measured: the first commit on
/// a loaded 2-core machine took 300 ms, the next ones under 1 ms). "Slow" is meant as a state
/// of the pair, so a slow probe is repeated once and the newer evidence decides: the faster
/// acknowledgement, or a probe that now waits.
async fn probe_twice_if_slow(target: &PgTarget, policy: &Policy) -> CommitProbe {
    let first = commit::run(target, policy).await;
    let Some(first_ms) = first.ms() else {
        return first;
    };
    if first_ms <= policy.probe_slow.as_secs_f64() * 1000.0 {
        return first;
    }
    let second = commit::run(target, policy).await;
    match second.ms() {
        Some(ms) if ms > first_ms => first,
        _ => second,
    }
}

const BASICS_SQL: &str = "\
SELECT current_setting('server_version_num')::int AS version_num,
       current_setting('server_version') AS version,
       pg_is_in_recovery() AS in_recovery,
       pg_postmaster_start_time()::text AS started,
       (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::int8 AS started_us,
       current_user::text AS role,
       current_database()::text AS db,
       current_setting('synchronous_standby_names') AS sync_names,
       current_setting('synchronous_commit') AS sync_commit,
       (SELECT source FROM pg_settings WHERE name = 'synchronous_commit') AS sync_commit_source,
       pg_has_role('pg_read_all_stats', 'USAGE') AS can_read_stats,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_current_wal_flush_lsn()::text END AS flush_lsn,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_walfile_name(pg_current_wal_lsn()) END AS walfile,
       current_setting('archive_mode') AS archive_mode,
       current_setting('max_slot_wal_keep_size') AS max_slot_keep,
       current_setting('wal_log_hints')::bool AS wal_log_hints,
       current_setting('data_checksums')::bool AS data_checksums";

async fn overrides(session: &Session) -> Result<Vec<SettingOverride>, ProbeFailure> {
    // Role and database settings apply when a session starts; these are the ones that apply
    // to a session of this role on this database (DESIGN §2).
    let rows = session
        .query(
            "synchronous_commit overrides",
            "SELECT d.datname::text, r.rolname::text,
                    substr(cfg, length('synchronous_commit=') + 1)
               FROM pg_db_role_setting s
               LEFT JOIN pg_database d ON d.oid = s.setdatabase
               LEFT JOIN pg_roles r ON r.oid = s.setrole
               CROSS JOIN LATERAL unnest(s.setconfig) AS cfg
              WHERE cfg LIKE 'synchronous_commit=%'
                AND s.setdatabase IN (0, (SELECT oid FROM pg_database
                                           WHERE datname = current_database()))
                AND s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = session_user))",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| SettingOverride {
            database: r.get(0),
            role: r.get(1),
            value: r.get(2),
        })
        .collect())
}

/// `None` when the role may not read `pg_control_system()` (it needs `pg_monitor`).
pub(crate) async fn system_identifier(session: &Session) -> Result<Option<String>, ProbeFailure> {
    let row = optional(
        session
            .query_one(
                "system identifier",
                "SELECT system_identifier::text FROM pg_control_system()",
                &[],
            )
            .await,
    )?;
    Ok(row.and_then(|r| r.get(0)))
}

const WALSENDERS_SQL: &str = "\
SELECT pid, coalesce(application_name, '') AS name, client_addr::text AS client_addr,
       state, sync_state, sync_priority,
       sent_lsn::text AS sent, write_lsn::text AS write, flush_lsn::text AS flush,
       replay_lsn::text AS replay,
       (extract(epoch FROM write_lag) * 1000)::float8 AS write_lag,
       (extract(epoch FROM flush_lag) * 1000)::float8 AS flush_lag,
       (extract(epoch FROM replay_lag) * 1000)::float8 AS replay_lag,
       (extract(epoch FROM clock_timestamp() - reply_time) * 1000)::float8 AS reply_age,
       (extract(epoch FROM reply_time) * 1000000)::int8 AS reply_time_us
  FROM pg_stat_replication
 ORDER BY pid";

/// Re-reads `pg_stat_replication` until the standbys that must have `target` (synchronous
/// ones, or with `all_named` every named one) flushed it, or the wait is over.
async fn walsenders_reaching(
    session: &Session,
    (target, wait, all_named): (Lsn, Duration, bool),
    sync_names: &Result<SyncNames, String>,
) -> Result<Vec<WalSender>, ProbeFailure> {
    let start = Instant::now();
    loop {
        let mut senders = read_walsenders(session).await?;
        for s in &mut senders {
            s.reached_target = s.flush_lsn.map(|f| f >= target);
        }
        let must_reach = |s: &WalSender| {
            s.is_streaming()
                && if all_named {
                    matches!(sync_names, Ok(SyncNames::Required(r)) if r.names_standby(&s.application_name))
                } else {
                    s.is_synchronous()
                }
        };
        let pending = senders
            .iter()
            .any(|s| must_reach(s) && s.reached_target != Some(true));
        if !pending || start.elapsed() >= wait {
            return Ok(senders);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn read_walsenders(session: &Session) -> Result<Vec<WalSender>, ProbeFailure> {
    let rows = session.query("replication", WALSENDERS_SQL, &[]).await?;
    Ok(rows.iter().map(walsender).collect())
}

fn walsender(r: &Row) -> WalSender {
    WalSender {
        pid: r.get("pid"),
        application_name: r.get("name"),
        client_addr: r.get("client_addr"),
        state: r.get("state"),
        sync_state: r.get("sync_state"),
        sync_priority: r.get("sync_priority"),
        sent_lsn: parse_lsn(r.get("sent")),
        write_lsn: parse_lsn(r.get("write")),
        flush_lsn: parse_lsn(r.get("flush")),
        replay_lsn: parse_lsn(r.get("replay")),
        write_lag_ms: r.get("write_lag"),
        flush_lag_ms: r.get("flush_lag"),
        replay_lag_ms: r.get("replay_lag"),
        reply_age_ms: r.get("reply_age"),
        reply_time_us: r.get("reply_time_us"),
        reached_target: None,
    }
}

async fn slots(session: &Session) -> Result<Vec<Slot>, ProbeFailure> {
    // `invalidation_reason` is new in 17. This read is pipelined before the server's version
    // is known, so the column is taken from the row as JSON: NULL where it does not exist
    // (13 to 16), instead of a query that fails there.
    let rows = session
        .query(
            "slots",
            "SELECT slot_name::text, active, active_pid, wal_status, restart_lsn::text,
                    to_jsonb(s) ->> 'invalidation_reason'
               FROM pg_replication_slots s WHERE slot_type = 'physical' ORDER BY slot_name",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Slot {
            name: r.get(0),
            active: r.get(1),
            active_pid: r.get(2),
            wal_status: r.get(3),
            restart_lsn: parse_lsn(r.get(4)),
            invalidation_reason: r.get(5),
        })
        .collect())
}

async fn archiver(session: &Session) -> Result<Archiver, ProbeFailure> {
    let r = session
        .query_one(
            "archiver",
            "SELECT archived_count, failed_count, last_failed_wal,
                    last_failed_time::text, last_archived_time::text,
                    coalesce(last_failed_time > last_archived_time,
                             last_failed_time IS NOT NULL) AS failing_now
               FROM pg_stat_archiver",
            &[],
        )
        .await?;
    Ok(Archiver {
        archived_count: r.get(0),
        failed_count: r.get(1),
        last_failed_wal: r.get(2),
        last_failed_time: r.get(3),
        last_archived_time: r.get(4),
        failing_now: r.get(5),
    })
}

async fn syncrep_waiters(session: &Session) -> Result<SyncRepWaiters, ProbeFailure> {
    let r = session
        .query_one(
            "waiting commits",
            "SELECT count(*), max(extract(epoch FROM clock_timestamp() - query_start) * 1000)::float8
               FROM pg_stat_activity
              WHERE wait_event = 'SyncRep' AND application_name IS DISTINCT FROM $1",
            &[&PROBE_APPLICATION_NAME],
        )
        .await?;
    Ok(SyncRepWaiters {
        count: r.get(0),
        longest_ms: r.get(1),
    })
}

/// A size setting as `current_setting` shows it (`-1`, `512kB`, `1024MB`, `10GB`, `1TB`), in
/// MB. (`pg_settings` has it as a number, but reading that view costs a cold backend about
/// 2 ms: it builds every setting.)
fn megabytes(shown: String) -> Option<i64> {
    let s = shown.trim();
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: i64 = digits.parse().ok()?;
    let mb = match &s[digits.len()..] {
        "" if n < 0 => return Some(-1),
        "kB" => n / 1024,
        "MB" | "" => n,
        "GB" => n * 1024,
        "TB" => n * 1024 * 1024,
        _ => return None,
    };
    Some(mb)
}

pub(crate) fn parse_lsn(text: Option<String>) -> Option<Lsn> {
    text.and_then(|t| t.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_as_postgresql_shows_them() {
        for (shown, mb) in [
            ("-1", -1),
            ("1GB", 1024),
            ("1536MB", 1536),
            ("2TB", 2097152),
            ("4096kB", 4),
        ] {
            assert_eq!(super::megabytes(shown.into()), Some(mb), "{shown}");
        }
        assert_eq!(super::megabytes("10 parsecs".into()), None);
    }
}
