//! What shows that an HA manager runs the server, read through the wallet DSN: where the
//! effective `synchronous_standby_names` comes from, and Patroni's own sessions (Patroni
//! names them `Patroni heartbeat`, `Patroni restapi`…).

use std::time::Duration;

use super::session::Session;
use crate::dsn::PgTarget;
use crate::facts::{ProbeFailure, ServerSigns};

const SIGNS_SQL: &str = "
SELECT s.source, s.sourcefile,
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND application_name LIKE 'Patroni%') AS patroni
  FROM pg_settings s WHERE s.name = 'synchronous_standby_names'";

pub async fn observe(target: &PgTarget, deadline: Duration) -> Result<ServerSigns, ProbeFailure> {
    let session = Session::open_monitor(target, deadline).await?;
    let row = session.query_one("ha-manager", SIGNS_SQL, &[]).await?;
    Ok(ServerSigns {
        names_source: row.get("source"),
        names_sourcefile: row.get("sourcefile"),
        patroni_sessions: row.get("patroni"),
    })
}
