//! What shows that an HA manager runs the server, read through the wallet DSN: where the
//! effective `synchronous_standby_names` comes from, Patroni's own sessions (Patroni
//! names them `Patroni heartbeat`, `Patroni restapi`…) and pg_auto_failover's settings file.
//! The checks read them on the primary's own session (`primary.rs`); `observe` is for the
//! one-shot refusals of `failover`/`setup`.

use std::time::Duration;

use super::session::Session;
use crate::dsn::PgTarget;
use crate::facts::{ProbeFailure, ServerSigns};

// Not filtered on `backend_type`: without `pg_read_all_stats` a role sees only the
// `application_name` and user of other roles' sessions. Patroni connects as its superuser; a
// session of any other role calling itself Patroni (any client may) is not taken for it.
const SIGNS_SQL: &str = "
SELECT s.source, s.sourcefile,
       (SELECT count(*) FROM pg_stat_activity a JOIN pg_roles r ON r.oid = a.usesysid
         WHERE r.rolsuper AND a.application_name LIKE 'Patroni%') AS patroni,
       (SELECT count(*) FROM pg_settings
         WHERE sourcefile LIKE '%/postgresql-auto-failover.conf') AS autofailover,
       NULLIF(current_setting('primary_slot_name'), '') AS primary_slot
  FROM pg_settings s WHERE s.name = 'synchronous_standby_names'";

pub async fn observe(target: &PgTarget, deadline: Duration) -> Result<ServerSigns, ProbeFailure> {
    read(&Session::open_monitor(target, deadline).await?).await
}

/// The signs, read on an open session.
pub(super) async fn read(session: &Session) -> Result<ServerSigns, ProbeFailure> {
    let row = session.query_one("ha-manager", SIGNS_SQL, &[]).await?;
    Ok(ServerSigns {
        names_source: row.get("source"),
        names_sourcefile: row.get("sourcefile"),
        patroni_sessions: row.get("patroni"),
        autofailover_settings: row.get("autofailover"),
        primary_slot_name: row.get("primary_slot"),
    })
}
