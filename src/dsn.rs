//! Wallet and standby DSNs: lightningd's `wallet=` forms turned into a connection config, and a
//! display of it that never carries the password.
//!
//! lightningd (`db/db_postgres.c`) strips `postgres://`, hands the rest to libpq's key=value
//! parser and, when that fails, passes the whole URI to libpq. We follow the same order so the
//! plugin reaches the server lightningd reaches.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use tokio_postgres::Config;
use tokio_postgres::config::Host;

/// The only scheme lightningd's PostgreSQL backend answers to.
pub const LIGHTNINGD_PG_SCHEME: &str = "postgres://";

/// libpq's compiled-in socket directory on Debian; other builds use /tmp.
const DEFAULT_SOCKET_DIRS: [&str; 2] = ["/var/run/postgresql", "/tmp"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DsnError {
    /// Not a DSN lightningd would accept at all.
    NotADsn,
    /// Looks like a PostgreSQL DSN but does not parse; the reason never includes the password.
    Invalid(String),
}

impl fmt::Display for DsnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DsnError::NotADsn => f.write_str(
                "not a lightningd wallet DSN: expected postgres://… (or sqlite3://… for the default backend)",
            ),
            DsnError::Invalid(why) => write!(f, "invalid PostgreSQL DSN: {why}"),
        }
    }
}

impl std::error::Error for DsnError {}

/// What lightningd's `wallet=` option names.
#[derive(Clone, Debug)]
pub enum WalletDsn {
    Postgres(Box<PgTarget>),
    /// Another backend (`sqlite3://…`): lightningd keeps the wallet in a local file.
    Other {
        scheme: String,
    },
}

impl WalletDsn {
    pub fn parse(dsn: &str) -> Result<WalletDsn, DsnError> {
        let dsn = dsn.trim();
        if let Some(rest) = dsn.strip_prefix(LIGHTNINGD_PG_SCHEME) {
            // lightningd's order: key=value pairs after the scheme, else the whole URI. Text
            // that starts like `keyword=` is judged as key=value only: read as a URI, its
            // pairs would become a host name, password included.
            let config = if starts_with_keyword(rest) {
                rest.parse::<Config>()
            } else {
                dsn.parse::<Config>()
            };
            let config = config.map_err(|e| DsnError::Invalid(e.to_string()))?;
            return Ok(WalletDsn::Postgres(Box::new(PgTarget::from_config(config))));
        }
        match dsn.split_once("://") {
            Some((scheme, _)) if !scheme.is_empty() => Ok(WalletDsn::Other {
                scheme: scheme.to_string(),
            }),
            _ => Err(DsnError::NotADsn),
        }
    }
}

/// A PostgreSQL server to connect to, with libpq's defaults filled in.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
}

impl PgTarget {
    /// Any libpq form: `postgres://` or `postgresql://` URI, or key=value pairs.
    pub fn parse(dsn: &str) -> Result<PgTarget, DsnError> {
        let dsn = dsn.trim();
        if dsn.starts_with(LIGHTNINGD_PG_SCHEME) {
            return match WalletDsn::parse(dsn)? {
                WalletDsn::Postgres(t) => Ok(*t),
                WalletDsn::Other { .. } => Err(DsnError::NotADsn),
            };
        }
        let config = dsn
            .parse::<Config>()
            .map_err(|e| DsnError::Invalid(e.to_string()))?;
        Ok(PgTarget::from_config(config))
    }

    pub fn from_config(mut config: Config) -> PgTarget {
        if config.get_user().is_none()
            && let Some(user) = os_user_name()
        {
            config.user(&user);
        }
        if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
            let dir = DEFAULT_SOCKET_DIRS
                .iter()
                .find(|d| Path::new(d).is_dir())
                .unwrap_or(&DEFAULT_SOCKET_DIRS[1]);
            config.host_path(dir);
        }
        PgTarget { config }
    }

    /// A config for one of our own sessions: marked with `application_name` so it can be told
    /// apart from lightningd's, and bounded at the TCP level too.
    pub fn session_config(&self, application_name: &str, timeout: Duration) -> Config {
        let mut c = self.config.clone();
        c.application_name(application_name);
        c.connect_timeout(timeout);
        c
    }

    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or("")
    }

    /// The `options` a session opened with this DSN starts with (`-c synchronous_commit=…`).
    pub fn options(&self) -> Option<&str> {
        self.config.get_options()
    }
}

impl fmt::Display for PgTarget {
    /// key=value form without the password: what logs, reports and errors show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let hosts: Vec<String> = c
            .get_hosts()
            .iter()
            .map(|h| match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        let mut parts = Vec::new();
        if !hosts.is_empty() {
            parts.push(format!("host={}", hosts.join(",")));
        }
        if !c.get_hostaddrs().is_empty() {
            let addrs: Vec<String> = c.get_hostaddrs().iter().map(|a| a.to_string()).collect();
            parts.push(format!("hostaddr={}", addrs.join(",")));
        }
        let ports: Vec<String> = c.get_ports().iter().map(|p| p.to_string()).collect();
        parts.push(format!(
            "port={}",
            if ports.is_empty() {
                "5432".to_string()
            } else {
                ports.join(",")
            }
        ));
        if let Some(user) = c.get_user() {
            parts.push(format!("user={user}"));
        }
        if let Some(db) = c.get_dbname() {
            parts.push(format!("dbname={db}"));
        }
        if let Some(opts) = c.get_options() {
            parts.push(format!("options='{opts}'"));
        }
        if c.get_password().is_some() {
            parts.push("password=<hidden>".into());
        }
        f.write_str(&parts.join(" "))
    }
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgTarget({self})")
    }
}

/// `keyword=` at the start, as in libpq's key=value form.
fn starts_with_keyword(s: &str) -> bool {
    let s = s.trim_start();
    let key_len = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    key_len > 0 && s[key_len..].trim_start().starts_with('=')
}

fn os_user_name() -> Option<String> {
    // SAFETY: getpwuid returns a pointer into static storage or NULL; we copy the name out
    // before any other call could overwrite it.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return None;
        }
        let name = std::ffi::CStr::from_ptr((*pw).pw_name);
        Some(name.to_string_lossy().into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(dsn: &str) -> PgTarget {
        match WalletDsn::parse(dsn).unwrap() {
            WalletDsn::Postgres(t) => *t,
            other => panic!("{dsn}: {other:?}"),
        }
    }

    #[test]
    fn reads_a_uri_with_every_part() {
        let t =
            pg("postgres://ln:s3cret@db.example:5433/wallet?sslmode=disable&application_name=x");
        let c = &t.config;
        assert_eq!(c.get_user(), Some("ln"));
        assert_eq!(c.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(c.get_hosts(), &[Host::Tcp("db.example".into())]);
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(c.get_dbname(), Some("wallet"));
        assert_eq!(c.get_application_name(), Some("x"));
    }

    #[test]
    fn reads_key_value_pairs_after_the_scheme_as_lightningd_does() {
        let t = pg("postgres://host=/run/pg port=5444 user=ln dbname=wallet password=pw");
        let c = &t.config;
        assert_eq!(c.get_hosts(), &[Host::Unix("/run/pg".into())]);
        assert_eq!(c.get_ports(), &[5444]);
        assert_eq!(c.get_user(), Some("ln"));
        assert_eq!(c.get_dbname(), Some("wallet"));
    }

    #[test]
    fn reads_a_socket_directory_given_as_uri_parameter() {
        let t = pg("postgres://ln@/wallet?host=%2Frun%2Fpg&port=5444");
        assert_eq!(t.config.get_hosts(), &[Host::Unix("/run/pg".into())]);
        assert_eq!(t.config.get_ports(), &[5444]);
    }

    #[test]
    fn keeps_session_options_that_change_durability() {
        let t = pg("postgres://user=ln host=/tmp options='-c synchronous_commit=local'");
        assert_eq!(t.options(), Some("-c synchronous_commit=local"));
    }

    #[test]
    fn fills_libpq_defaults_for_user_and_host() {
        let t = pg("postgres://");
        assert!(t.config.get_user().is_some_and(|u| !u.is_empty()));
        assert!(matches!(t.config.get_hosts(), [Host::Unix(_)]));
    }

    #[test]
    fn another_backend_is_named_not_rejected() {
        match WalletDsn::parse("sqlite3:///home/ln/.lightning/bitcoin/lightningd.sqlite3") {
            Ok(WalletDsn::Other { scheme }) => assert_eq!(scheme, "sqlite3"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn text_that_is_no_dsn_is_an_error() {
        assert_eq!(
            WalletDsn::parse("lightningd.sqlite3").unwrap_err(),
            DsnError::NotADsn
        );
        // lightningd selects its backend by the exact scheme `postgres://`.
        assert!(matches!(
            WalletDsn::parse("postgresql://u@h/db"),
            Ok(WalletDsn::Other { .. })
        ));
    }

    #[test]
    fn display_and_errors_never_show_the_password() {
        for dsn in [
            "postgres://ln:TopSecret1@h:5432/db",
            "postgres://user=ln password=TopSecret1 host=h",
        ] {
            let t = pg(dsn);
            let shown = format!(
                "{t} {t:?} {:?}",
                t.session_config("x", Duration::from_secs(1))
            );
            assert!(!shown.contains("TopSecret1"), "{shown}");
            assert!(shown.contains("password=<hidden>"), "{shown}");
        }
        for bad in [
            "postgres://ln:TopSecret1@h:notaport/db",
            "postgres://user=ln password=TopSecret1 bogus=1",
            "postgres://ln:TopSecret1@h/db?bogus=1",
        ] {
            let err = WalletDsn::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid PostgreSQL DSN"), "{err}");
            assert!(!err.contains("TopSecret1"), "{err}");
        }
    }

    #[test]
    fn standby_dsns_take_any_libpq_form() {
        for dsn in [
            "host=/tmp port=5433 user=postgres",
            "postgresql://postgres@localhost:5433/postgres",
            "postgres://postgres@localhost:5433/postgres",
        ] {
            let t = PgTarget::parse(dsn).unwrap();
            assert_eq!(t.user(), "postgres", "{dsn}");
        }
    }
}
