//! Facts about a standby, read through the DSN the operator gave for it.

use crate::conninfo::{parse_setting, printed_value};
use crate::dsn::PgTarget;
use crate::facts::{ProbeFailure, StandbyFacts, Upstream, WalReceiver};
use crate::lsn::timeline_of_walfile;
use crate::policy::Policy;

use super::primary::parse_lsn;
use super::session::{Session, optional};

pub(crate) async fn observe(
    target: &PgTarget,
    policy: &Policy,
) -> Result<StandbyFacts, ProbeFailure> {
    let session = Session::open_monitor(target, policy.query_timeout).await?;
    let row = session
        .query_one(
            "standby",
            "SELECT current_setting('server_version_num')::int, pg_is_in_recovery(),
                    current_setting('cluster_name'),
                    CASE WHEN pg_is_in_recovery() THEN NULL
                         ELSE pg_walfile_name(pg_current_wal_lsn()) END,
                    pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,
                    (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::int8",
            &[],
        )
        .await?;
    let server_version_num: i32 = row.get(0);
    let in_recovery: bool = row.get(1);
    let system_identifier = super::primary::system_identifier(&session).await?;
    let (sender, receiver) = wal_receiver(&session).await?;
    let replay_paused = if !in_recovery {
        None
    } else {
        Some(replay_paused(&session, server_version_num).await?)
    };
    // With the primary gone the receiver shows nothing: the name, the upstream and the
    // timeline then come from the standby's own configuration and control file.
    let primary_conninfo = if in_recovery && (receiver.is_none() || sender.is_none()) {
        primary_conninfo(&session).await?
    } else {
        None
    };
    let receiver_name = receiver.as_ref().and_then(|r| r.application_name.clone());
    let configured_name = match receiver_name {
        Some(_) => None,
        None => primary_conninfo
            .as_deref()
            .and_then(|c| setting_value(c, "application_name")),
    };
    let upstream = match sender {
        Some(s) => vec![s],
        None => primary_conninfo
            .as_deref()
            .map(upstreams_of)
            .unwrap_or_default(),
    };
    let received_tli = receiver.as_ref().and_then(|r| r.received_tli);
    let timeline = if in_recovery && received_tli.is_some() {
        received_tli
    } else if in_recovery {
        checkpoint_timeline(&session).await?
    } else {
        row.get::<_, Option<String>>(3)
            .as_deref()
            .and_then(timeline_of_walfile)
    };
    Ok(StandbyFacts {
        server_version_num,
        in_recovery,
        system_identifier,
        configured_name,
        cluster_name: row.get(2),
        postmaster_started_us: row.get(6),
        timeline,
        receiver,
        replay_paused,
        receive_lsn: parse_lsn(row.get(4)),
        replay_lsn: parse_lsn(row.get(5)),
        upstream,
    })
}

/// The WAL receiver's row, if one runs, and the upstream it reports.
async fn wal_receiver(
    session: &Session,
) -> Result<(Option<Upstream>, Option<WalReceiver>), ProbeFailure> {
    let receiver_row = session
        .query(
            "wal receiver",
            "SELECT status, received_tli,
                    (extract(epoch FROM clock_timestamp() - last_msg_receipt_time) * 1000)::float8,
                    flushed_lsn::text, slot_name, conninfo, sender_host, sender_port
               FROM pg_stat_wal_receiver",
            &[],
        )
        .await?;
    let sender = receiver_row.first().and_then(|r| {
        Some(Upstream {
            host: r.get::<_, Option<String>>(6)?,
            port: u16::try_from(r.get::<_, Option<i32>>(7)?).ok()?,
        })
    });
    let receiver = receiver_row.first().map(|r| WalReceiver {
        status: r.get(0),
        received_tli: r.get::<_, Option<i32>>(1).map(|t| t as u32),
        last_msg_age_ms: r.get(2),
        flushed_lsn: parse_lsn(r.get(3)),
        slot_name: r.get(4),
        application_name: r
            .get::<_, Option<String>>(5)
            .and_then(|c| printed_value(&c, "application_name")),
    });
    Ok((sender, receiver))
}

/// Whether replay is paused (or pausing), in the words of the server's version.
async fn replay_paused(session: &Session, server_version_num: i32) -> Result<bool, ProbeFailure> {
    let sql = if server_version_num >= 140000 {
        "SELECT pg_get_wal_replay_pause_state() <> 'not paused'"
    } else {
        "SELECT pg_is_wal_replay_paused()"
    };
    Ok(session.query_one("replay", sql, &[]).await?.get(0))
}

/// The standby's configured `primary_conninfo`; `None` when privileges hide it.
async fn primary_conninfo(session: &Session) -> Result<Option<String>, ProbeFailure> {
    Ok(optional(
        session
            .query_one(
                "primary_conninfo",
                "SELECT current_setting('primary_conninfo')",
                &[],
            )
            .await,
    )?
    .map(|r| r.get::<_, String>(0)))
}

/// The timeline in the control file's last checkpoint; `None` when privileges hide it.
async fn checkpoint_timeline(session: &Session) -> Result<Option<u32>, ProbeFailure> {
    Ok(optional(
        session
            .query_one(
                "timeline",
                "SELECT timeline_id FROM pg_control_checkpoint()",
                &[],
            )
            .await,
    )?
    .map(|r| r.get::<_, i32>(0) as u32))
}

/// One value of a `primary_conninfo` setting, the last one given (as libpq reads it).
fn setting_value(conninfo: &str, key: &str) -> Option<String> {
    let params = parse_setting(conninfo).ok()?;
    crate::conninfo::get(&params, key).map(str::to_string)
}

/// The addresses a `primary_conninfo` names, as libpq pairs them: `host=a,b port=1,2` (or the
/// URI form), one port for every host. Empty — cannot tell — when they are not written in it:
/// no host (libpq's compiled-in default), a `service` (a file decides), or an unreadable string.
fn upstreams_of(conninfo: &str) -> Vec<Upstream> {
    let Ok(params) = parse_setting(conninfo) else {
        return vec![];
    };
    let get = |k: &str| -> Option<String> {
        crate::conninfo::get(&params, k)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    };
    if get("service").is_some() {
        return vec![];
    }
    let Some(hosts) = get("hostaddr").or(get("host")) else {
        return vec![];
    };
    let ports: Vec<Option<u16>> = get("port")
        .unwrap_or_else(|| "5432".into())
        .split(',')
        .map(|p| p.trim().parse().ok())
        .collect();
    let mut out = Vec::new();
    for (i, h) in hosts.split(',').enumerate() {
        let port = if ports.len() == 1 {
            ports[0]
        } else {
            ports.get(i).copied().flatten()
        };
        // A port we cannot read is no address to try.
        let Some(port) = port else { return vec![] };
        out.push(Upstream {
            host: h.trim().to_string(),
            port,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::upstreams_of;
    use crate::facts::Upstream;

    #[test]
    fn upstreams_pair_hosts_and_ports_as_libpq_does() {
        let up = |h: &str, p| Upstream {
            host: h.into(),
            port: p,
        };
        assert_eq!(
            upstreams_of("host=10.0.0.1 port=5433 application_name=s1"),
            [up("10.0.0.1", 5433)]
        );
        assert_eq!(upstreams_of("host=a,b port=1,2"), [up("a", 1), up("b", 2)]);
        assert_eq!(upstreams_of("host=a,b port=7"), [up("a", 7), up("b", 7)]);
        assert_eq!(upstreams_of("host=/tmp/s"), [up("/tmp/s", 5432)]);
        assert_eq!(
            upstreams_of(
                "postgresql://replicator@db1.example.com:5433/postgres?application_name=s1"
            ),
            [up("db1.example.com", 5433)]
        );
        assert_eq!(
            upstreams_of("hostaddr=10.0.0.1 host=db1 port=6"),
            [up("10.0.0.1", 6)]
        );
        // Not written in it: cannot tell.
        assert_eq!(upstreams_of("user=r application_name=s1"), []);
        assert_eq!(upstreams_of("service=primary application_name=s1"), []);
        assert_eq!(upstreams_of("host=a port=x"), []);
        // libpq takes the last value of a key: so does the fence.
        assert_eq!(
            upstreams_of("host=decoy.invalid port=5432 host=10.0.0.1 port=5433"),
            [up("10.0.0.1", 5433)]
        );
    }
}
