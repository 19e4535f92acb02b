//! One PostgreSQL session with a deadline on everything it does, and errors classified by
//! SQLSTATE into what the verdict needs to know.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, Row, SimpleQueryMessage, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::facts::{FailureKind, ProbeFailure};

pub(crate) struct Session {
    client: Client,
    connection: JoinHandle<()>,
    deadline: Duration,
    /// Statements prepared on this session, by their text: a session kept across checks
    /// (the runtime monitor) then runs each query in one round trip instead of two.
    prepared: Mutex<HashMap<String, Statement>>,
}

impl Session {
    /// Connects, the whole handshake bounded by `deadline` (a stopped postmaster accepts the
    /// socket connection and then never answers).
    pub async fn open(
        config: &Config,
        tls: MakeRustlsConnect,
        deadline: Duration,
    ) -> Result<Session, ProbeFailure> {
        let (client, connection) = within("connect", deadline, config.connect(tls)).await?;
        Ok(Session {
            client,
            connection: tokio::spawn(async move {
                let _ = connection.await;
            }),
            deadline,
            prepared: Mutex::new(HashMap::new()),
        })
    }

    /// A session named `cln-replguard` (so lightningd's own sessions can be told from ours),
    /// with `deadline` on the connection and on every query.
    pub async fn open_monitor(
        target: &crate::dsn::PgTarget,
        deadline: Duration,
    ) -> Result<Session, ProbeFailure> {
        Session::open(
            &target.session_config(super::MONITOR_APPLICATION_NAME, deadline),
            target.tls(),
            deadline,
        )
        .await
    }

    /// The connection broke (server gone, or ended by us after a timeout): open a new one.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    async fn statement(&self, sql: &str) -> Result<Statement, tokio_postgres::Error> {
        let cached = self
            .prepared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sql)
            .cloned();
        match cached {
            Some(s) => Ok(s),
            None => {
                let s = self.client.prepare(sql).await?;
                self.prepared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(sql.to_string(), s.clone());
                Ok(s)
            }
        }
    }

    pub async fn query(
        &self,
        stage: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, ProbeFailure> {
        let run = async {
            let statement = self.statement(sql).await?;
            self.client.query(&statement, params).await
        };
        within(stage, self.deadline, run).await
    }

    /// Statements in one round trip (simple query protocol, no parameters); returns the
    /// first column of the first row the last of them returned.
    pub async fn simple_value(
        &self,
        stage: &str,
        sql: &str,
    ) -> Result<Option<String>, ProbeFailure> {
        let messages = within(stage, self.deadline, self.client.simple_query(sql)).await?;
        Ok(messages
            .iter()
            .rev()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
                _ => None,
            })
            .flatten())
    }

    pub async fn query_one(
        &self,
        stage: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Row, ProbeFailure> {
        let mut rows = self.query(stage, sql, params).await?;
        if rows.len() != 1 {
            return Err(ProbeFailure {
                kind: FailureKind::Query,
                stage: stage.into(),
                detail: format!("expected one row, got {}", rows.len()),
            });
        }
        Ok(rows.remove(0))
    }

    /// Runs statements without the session deadline; the caller bounds the wait itself (the
    /// commit probe must be able to outlive its deadline without being cancelled).
    pub async fn batch_unbounded(&self, stage: &str, sql: &str) -> Result<(), ProbeFailure> {
        self.client
            .batch_execute(sql)
            .await
            .map_err(|e| classify(stage, &e))
    }

    pub async fn batch(&self, stage: &str, sql: &str) -> Result<(), ProbeFailure> {
        within(stage, self.deadline, self.client.batch_execute(sql)).await
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Dropping the client makes the connection task say goodbye and end. A hung server
        // never lets it finish, so the task is ended for good a little later.
        let handle = self.connection.abort_handle();
        let grace = self.deadline;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(grace).await;
                handle.abort();
            });
        }
    }
}

/// `work` bounded by `deadline`: a driver error is classified for `stage`, no answer in time
/// is the `Timeout` failure every bounded step of a session reports alike.
async fn within<T>(
    stage: &str,
    deadline: Duration,
    work: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, ProbeFailure> {
    match timeout(deadline, work).await {
        Err(_) => Err(ProbeFailure {
            kind: FailureKind::Timeout,
            stage: stage.into(),
            detail: format!("no answer within {} ms", deadline.as_millis()),
        }),
        Ok(r) => r.map_err(|e| classify(stage, &e)),
    }
}

/// A read the role may not be allowed (`pg_monitor`, superuser-only settings): `None` then.
pub(crate) fn optional(r: Result<Row, ProbeFailure>) -> Result<Option<Row>, ProbeFailure> {
    match r {
        Ok(row) => Ok(Some(row)),
        Err(f) if f.kind == FailureKind::Privilege => Ok(None),
        Err(f) => Err(f),
    }
}

/// Maps a driver error to what the verdict needs; the detail is the server's own words.
pub(crate) fn classify(stage: &str, e: &tokio_postgres::Error) -> ProbeFailure {
    let (kind, detail) = match e.as_db_error() {
        Some(db) => {
            let code = db.code();
            let kind = if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            {
                FailureKind::Auth
            } else if *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::TOO_MANY_CONNECTIONS
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
            {
                FailureKind::Unavailable
            } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
                FailureKind::Privilege
            } else {
                FailureKind::Query
            };
            let detail = db.detail().map(|d| format!(": {d}")).unwrap_or_default();
            (
                kind,
                format!("{}{detail} (SQLSTATE {})", db.message(), code.code()),
            )
        }
        None if local_fault(e).is_some() => (FailureKind::PluginFault, chain(e)),
        None => {
            let text = chain(e);
            // The driver's own words when the server asks for a password we do not have.
            let kind = if text.contains("password missing") {
                FailureKind::Auth
            } else {
                FailureKind::Unreachable
            };
            (kind, text)
        }
    };
    ProbeFailure {
        kind,
        stage: stage.into(),
        detail,
    }
}

/// Errors of this process's own resources, not of the server or the path to it: out of
/// descriptors (per process, per system), of buffer space, of memory.
const LOCAL_ERRNOS: &[i32] = &[libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM];

/// The operating system error in `e`'s chain that says this process ran out of something.
pub(crate) fn local_fault<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a std::io::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.raw_os_error().is_some_and(|n| LOCAL_ERRNOS.contains(&n))
        {
            return Some(io);
        }
        cur = err.source();
    }
    None
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that wraps another, as the driver's connect error wraps the socket's.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error connecting to server")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn running_out_of_our_own_descriptors_or_memory_is_a_local_fault() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            let e = Wrapped(std::io::Error::from_raw_os_error(errno));
            assert!(local_fault(&e).is_some(), "errno {errno}");
        }
    }

    #[test]
    fn the_servers_side_and_the_path_to_it_are_not() {
        for errno in [
            libc::ECONNREFUSED,
            libc::ENOENT,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
        ] {
            let e = Wrapped(std::io::Error::from_raw_os_error(errno));
            assert!(local_fault(&e).is_none(), "errno {errno}");
        }
        let plain = std::io::Error::other("too many open files, says the text");
        assert!(local_fault(&plain).is_none());
    }
}
