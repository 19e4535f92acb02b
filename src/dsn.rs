//! Wallet and standby DSNs, resolved the way libpq resolves them: the DSN's own values, then
//! the `PG*` environment, then the password file, then libpq's defaults. The result connects
//! to the server lightningd connects to, and displays without the password.
//!
//! lightningd (`db/db_postgres.c`) strips `postgres://`, hands the rest to libpq's key=value
//! parser and, when that fails, passes the whole URI to libpq. We follow the same order.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_postgres::Config;
use tokio_postgres::config::{
    ChannelBinding, LoadBalanceHosts, SslMode as DriverSslMode, TargetSessionAttrs,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::conninfo::{self, Params};
use crate::pgpass;
use crate::tls::{self, SslMode};

/// The only scheme lightningd's PostgreSQL backend answers to.
pub const LIGHTNINGD_PG_SCHEME: &str = "postgres://";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DsnError {
    /// Not a DSN lightningd would accept at all.
    NotADsn,
    /// Does not parse, or names something unsupported; never includes the password.
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

fn invalid(why: impl Into<String>) -> DsnError {
    DsnError::Invalid(why.into())
}

/// The environment libpq reads: `PG*` variables, the home directory, the OS user.
#[derive(Clone, Debug, Default)]
pub struct Env {
    vars: HashMap<String, String>,
    home: Option<PathBuf>,
    os_user: Option<String>,
}

impl Env {
    /// This process's environment.
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars()
                .filter(|(k, _)| k.starts_with("PG"))
                .collect(),
            home: std::env::var_os("HOME").map(PathBuf::from),
            os_user: os_user_name(),
        }
    }

    /// An environment with only what the caller sets (tests).
    pub fn empty() -> Env {
        Env::default()
    }

    pub fn with_var(mut self, key: &str, value: &str) -> Env {
        self.vars.insert(key.into(), value.into());
        self
    }

    pub fn with_home(mut self, home: &Path) -> Env {
        self.home = Some(home.into());
        self
    }

    pub fn with_os_user(mut self, user: &str) -> Env {
        self.os_user = Some(user.into());
        self
    }
}

/// The environment variable libpq reads for a keyword the DSN leaves out.
fn env_var_for(key: &str) -> Option<&'static str> {
    Some(match key {
        "host" => "PGHOST",
        "hostaddr" => "PGHOSTADDR",
        "port" => "PGPORT",
        "dbname" => "PGDATABASE",
        "user" => "PGUSER",
        "password" => "PGPASSWORD",
        "passfile" => "PGPASSFILE",
        "options" => "PGOPTIONS",
        "application_name" => "PGAPPNAME",
        "sslmode" => "PGSSLMODE",
        "sslrootcert" => "PGSSLROOTCERT",
        "sslcert" => "PGSSLCERT",
        "sslkey" => "PGSSLKEY",
        "connect_timeout" => "PGCONNECT_TIMEOUT",
        "service" => "PGSERVICE",
        "target_session_attrs" => "PGTARGETSESSIONATTRS",
        "channel_binding" => "PGCHANNELBINDING",
        "gssencmode" => "PGGSSENCMODE",
        "requiressl" => "PGREQUIRESSL",
        _ => return None,
    })
}

/// Keywords that would change which server we reach or how we authenticate, and that we do
/// not implement: refusing them beats silently connecting differently from lightningd.
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "service",
        "service files (pg_service.conf); spell the parameters out",
    ),
    ("sslcert", "client certificates"),
    ("sslkey", "client certificates"),
    ("sslcrl", "certificate revocation lists"),
    ("sslcrldir", "certificate revocation lists"),
    ("requirepeer", "requirepeer"),
    ("require_auth", "require_auth"),
    ("replication", "replication connections"),
];

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
    /// Resolves with this process's environment.
    pub fn parse(dsn: &str) -> Result<WalletDsn, DsnError> {
        WalletDsn::parse_with(dsn, &Env::from_process())
    }

    pub fn parse_with(dsn: &str, env: &Env) -> Result<WalletDsn, DsnError> {
        let dsn = dsn.trim();
        if let Some(rest) = dsn.strip_prefix(LIGHTNINGD_PG_SCHEME) {
            // lightningd's order: key=value pairs after the scheme, else the whole URI. Text
            // that starts like `keyword=` is judged as key=value only: read as a URI, its
            // pairs would become a host name, password included.
            let params = if starts_with_keyword(rest) {
                conninfo::parse_key_value(rest)
            } else {
                conninfo::parse_uri(dsn)
            }
            .map_err(|e| invalid(e.0))?;
            return Ok(WalletDsn::Postgres(Box::new(PgTarget::resolve(
                &params, env,
            )?)));
        }
        match dsn.split_once("://") {
            Some((scheme, _)) if !scheme.is_empty() => Ok(WalletDsn::Other {
                scheme: scheme.to_string(),
            }),
            _ => Err(DsnError::NotADsn),
        }
    }
}

/// A PostgreSQL server to connect to, fully resolved.
#[derive(Clone)]
pub struct PgTarget {
    config: Config,
    tls: MakeRustlsConnect,
    sslmode: SslMode,
    display: String,
    /// What libpq would have warned about (an ignored password file…).
    pub warnings: Vec<String>,
}

impl PgTarget {
    /// Any libpq form (`postgres://`/`postgresql://` URI, key=value), this process's
    /// environment.
    pub fn parse(dsn: &str) -> Result<PgTarget, DsnError> {
        PgTarget::parse_with(dsn, &Env::from_process())
    }

    pub fn parse_with(dsn: &str, env: &Env) -> Result<PgTarget, DsnError> {
        let dsn = dsn.trim();
        if dsn.starts_with(LIGHTNINGD_PG_SCHEME) {
            return match WalletDsn::parse_with(dsn, env)? {
                WalletDsn::Postgres(t) => Ok(*t),
                WalletDsn::Other { .. } => Err(DsnError::NotADsn),
            };
        }
        let params = conninfo::parse(dsn).map_err(|e| invalid(e.0))?;
        PgTarget::resolve(&params, env)
    }

    /// DSN values, then the environment, then the password file, then defaults.
    pub fn resolve(params: &Params, env: &Env) -> Result<PgTarget, DsnError> {
        let lookup = Lookup { params, env };
        refuse_unsupported(&lookup)?;

        let mut c = Config::new();
        let hosts = apply_hosts(&mut c, &lookup)?;
        let ports = apply_ports(&mut c, &lookup)?;
        let user = lookup
            .value("user")
            .or_else(|| env.os_user.clone())
            .ok_or_else(|| invalid("no user given and the OS user name is unknown"))?;
        c.user(&user);
        let dbname = lookup.value("dbname").unwrap_or_else(|| user.clone());
        c.dbname(&dbname);
        apply_session_settings(&mut c, &lookup)?;

        let server = PassfileKey {
            host: &hosts[0],
            port: ports.first().copied().unwrap_or(5432).to_string(),
            dbname: &dbname,
            user: &user,
        };
        let (password_source, warnings) = apply_password(&mut c, &lookup, &server);
        let (sslmode, tls) = apply_tls(&mut c, &lookup, &hosts)?;

        let display = display(&c, sslmode, password_source);
        Ok(PgTarget {
            config: c,
            tls,
            sslmode,
            display,
            warnings,
        })
    }

    /// A config for one of our own sessions: marked with `application_name` so it can be told
    /// apart from lightningd's, and bounded at the TCP level too.
    pub fn session_config(&self, application_name: &str, timeout: Duration) -> Config {
        let mut c = self.config.clone();
        c.application_name(application_name);
        if c.get_connect_timeout().is_none_or(|t| *t > timeout) {
            c.connect_timeout(timeout);
        }
        c
    }

    pub fn tls(&self) -> MakeRustlsConnect {
        self.tls.clone()
    }

    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or("")
    }

    /// The `options` a session opened with this DSN starts with (`-c synchronous_commit=…`).
    pub fn options(&self) -> Option<&str> {
        self.config.get_options()
    }

    /// The underlying driver config (tests and diagnostics).
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Where libpq finds a keyword's value: the DSN, else its `PG*` variable; empty means unset.
struct Lookup<'a> {
    params: &'a Params,
    env: &'a Env,
}

impl Lookup<'_> {
    fn value(&self, key: &str) -> Option<String> {
        conninfo::get(self.params, key)
            .map(str::to_string)
            .or_else(|| env_var_for(key).and_then(|v| self.env.vars.get(v).cloned()))
            .filter(|v| !v.is_empty())
    }
}

/// Refuses keywords we do not implement, before anything else is read.
fn refuse_unsupported(lookup: &Lookup) -> Result<(), DsnError> {
    for (key, what) in UNSUPPORTED {
        if lookup.value(key).is_some() {
            return Err(invalid(format!(
                "{key}: {what} are not supported by cln-replguard"
            )));
        }
    }
    if lookup.value("gssencmode").as_deref() == Some("require") {
        return Err(invalid(
            "gssencmode=require: GSSAPI encryption is not supported",
        ));
    }
    Ok(())
}

/// `host` (socket directories and names) and `hostaddr`; returns the host list as given.
fn apply_hosts(c: &mut Config, lookup: &Lookup) -> Result<Vec<String>, DsnError> {
    let hosts: Vec<String> = lookup
        .value("host")
        .unwrap_or_else(|| pgpass::DEFAULT_SOCKET_DIR.to_string())
        .split(',')
        .map(str::to_string)
        .collect();
    for h in &hosts {
        if h.starts_with('/') {
            c.host_path(h);
        } else if !h.is_empty() {
            c.host(h);
        }
    }
    if let Some(addrs) = lookup.value("hostaddr") {
        for a in addrs.split(',') {
            let ip: IpAddr = a
                .parse()
                .map_err(|_| invalid(format!("hostaddr: \"{a}\" is not an IP address")))?;
            c.hostaddr(ip);
        }
    }
    Ok(hosts)
}

fn apply_ports(c: &mut Config, lookup: &Lookup) -> Result<Vec<u16>, DsnError> {
    let ports: Vec<u16> = lookup
        .value("port")
        .unwrap_or_else(|| "5432".into())
        .split(',')
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| invalid(format!("port: \"{p}\" is not a port number")))
        })
        .collect::<Result<_, _>>()?;
    for p in &ports {
        c.port(*p);
    }
    Ok(ports)
}

/// `options`, `application_name`, `connect_timeout`, `target_session_attrs`,
/// `channel_binding` and `load_balance_hosts`.
fn apply_session_settings(c: &mut Config, lookup: &Lookup) -> Result<(), DsnError> {
    if let Some(o) = lookup.value("options") {
        c.options(&o);
    }
    if let Some(a) = lookup.value("application_name") {
        c.application_name(&a);
    }
    if let Some(t) = lookup.value("connect_timeout") {
        let secs: i64 = t.trim().parse().map_err(|_| {
            invalid(format!(
                "connect_timeout: \"{t}\" is not a number of seconds"
            ))
        })?;
        // libpq: 0 or less waits forever, and the minimum is 2 s.
        if secs > 0 {
            c.connect_timeout(Duration::from_secs(secs.max(2) as u64));
        }
    }
    if let Some(t) = lookup.value("target_session_attrs") {
        c.target_session_attrs(match t.as_str() {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            other => {
                return Err(invalid(format!(
                    "target_session_attrs={other} is not supported (any, read-write, read-only)"
                )));
            }
        });
    }
    if let Some(b) = lookup.value("channel_binding") {
        c.channel_binding(match b.as_str() {
            "disable" => ChannelBinding::Disable,
            "prefer" => ChannelBinding::Prefer,
            "require" => ChannelBinding::Require,
            other => {
                return Err(invalid(format!(
                    "invalid channel_binding value: \"{other}\""
                )));
            }
        });
    }
    if lookup.value("load_balance_hosts").as_deref() == Some("random") {
        c.load_balance_hosts(LoadBalanceHosts::Random);
    }
    Ok(())
}

/// The first server, as the password file is keyed.
struct PassfileKey<'a> {
    host: &'a str,
    port: String,
    dbname: &'a str,
    user: &'a str,
}

/// The DSN's password, else the password file's; returns where it came from (for the
/// display) and what libpq would have warned about.
fn apply_password(
    c: &mut Config,
    lookup: &Lookup,
    server: &PassfileKey,
) -> (Option<&'static str>, Vec<String>) {
    let mut warnings = Vec::new();
    if let Some(p) = lookup.value("password") {
        c.password(p);
        return (Some("given"), warnings);
    }
    let file = lookup
        .value("passfile")
        .map(PathBuf::from)
        .or_else(|| lookup.env.home.as_ref().map(|h| h.join(".pgpass")));
    let mut source = None;
    if let Some(file) = file {
        match pgpass::lookup(&file, server.host, &server.port, server.dbname, server.user) {
            pgpass::Lookup::Found(p) => {
                c.password(p);
                source = Some("from the password file");
            }
            pgpass::Lookup::Ignored(why) => warnings.push(why),
            pgpass::Lookup::NotFound => {}
        }
    }
    (source, warnings)
}

/// `sslmode` (or the old `requiressl`) and `sslrootcert`, turned into the driver's mode and
/// our TLS connector.
fn apply_tls(
    c: &mut Config,
    lookup: &Lookup,
    hosts: &[String],
) -> Result<(SslMode, MakeRustlsConnect), DsnError> {
    let sslmode = match lookup.value("sslmode") {
        Some(m) => SslMode::parse(&m).map_err(invalid)?,
        None if lookup.value("requiressl").as_deref() == Some("1") => SslMode::Require,
        None => SslMode::Prefer,
    };
    // libpq ignores sslmode on Unix sockets: no TLS there.
    let only_sockets = hosts.iter().all(|h| h.starts_with('/'));
    c.ssl_mode(match sslmode {
        _ if only_sockets => DriverSslMode::Disable,
        SslMode::Disable => DriverSslMode::Disable,
        SslMode::Allow | SslMode::Prefer => DriverSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => DriverSslMode::Require,
    });
    let root_cert = lookup
        .value("sslrootcert")
        .map(PathBuf::from)
        .or_else(|| {
            lookup
                .env
                .home
                .as_ref()
                .map(|h| h.join(".postgresql/root.crt"))
        })
        .filter(|p| p.is_file());
    if let Some(explicit) = lookup.value("sslrootcert")
        && !Path::new(&explicit).is_file()
        && sslmode.requires_tls()
    {
        return Err(invalid(format!(
            "sslrootcert: root certificate file \"{explicit}\" does not exist"
        )));
    }
    let verify = tls::verification(sslmode, root_cert.is_some());
    let tls = tls::connector(verify, root_cert.as_deref()).map_err(invalid)?;
    Ok((sslmode, tls))
}

/// key=value form without the password: what logs, reports and errors show.
fn display(c: &Config, sslmode: SslMode, password: Option<&str>) -> String {
    use tokio_postgres::config::Host;
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
    parts.push(format!("port={}", ports.join(",")));
    if let Some(user) = c.get_user() {
        parts.push(format!("user={user}"));
    }
    if let Some(db) = c.get_dbname() {
        parts.push(format!("dbname={db}"));
    }
    if let Some(opts) = c.get_options() {
        parts.push(format!("options='{opts}'"));
    }
    if sslmode != SslMode::Prefer {
        parts.push(format!("sslmode={sslmode}"));
    }
    if let Some(source) = password {
        parts.push(if source == "given" {
            "password=<hidden>".to_string()
        } else {
            format!("password=<hidden, {source}>")
        });
    }
    parts.join(" ")
}

impl fmt::Display for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgTarget({})", self.display)
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
mod tests;
