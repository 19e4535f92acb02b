//! Table-driven tests of every DSN form and of the environment and password-file fallbacks.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use tokio_postgres::config::{Host, SslMode as DriverSslMode};

use super::*;

fn env() -> Env {
    Env::empty().with_os_user("osuser")
}

fn pg(dsn: &str, env: &Env) -> PgTarget {
    match WalletDsn::parse_with(dsn, env).unwrap_or_else(|e| panic!("{dsn}: {e}")) {
        WalletDsn::Postgres(t) => *t,
        other => panic!("{dsn}: {other:?}"),
    }
}

/// (host, port, user, dbname) of a resolved target.
type Summary<'a> = (&'a str, u16, &'a str, &'a str);

fn summary(t: &PgTarget) -> (String, u16, String, String) {
    let c = t.config();
    let host = match &c.get_hosts()[0] {
        Host::Tcp(h) => h.clone(),
        Host::Unix(p) => p.display().to_string(),
    };
    (
        host,
        c.get_ports()[0],
        c.get_user().unwrap().to_string(),
        c.get_dbname().unwrap().to_string(),
    )
}

fn password(t: &PgTarget) -> Option<String> {
    t.config()
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

#[test]
fn every_dsn_form_lightningd_accepts() {
    let cases: &[(&str, Summary)] = &[
        (
            "postgres://ln:pw@db1:5433/wallet",
            ("db1", 5433, "ln", "wallet"),
        ),
        (
            "postgres://ln@db1/wallet?port=5434",
            ("db1", 5434, "ln", "wallet"),
        ),
        (
            "postgres://host=/run/pg port=5444 user=ln dbname=wallet",
            ("/run/pg", 5444, "ln", "wallet"),
        ),
        (
            "postgres://ln@/wallet?host=%2Frun%2Fpg",
            ("/run/pg", 5432, "ln", "wallet"),
        ),
        (
            "postgres://%2Frun%2Fpg:5435/wallet",
            ("/run/pg", 5435, "osuser", "wallet"),
        ),
        (
            "postgres://[::1]:5436/wallet",
            ("::1", 5436, "osuser", "wallet"),
        ),
        (
            "postgres://",
            ("/var/run/postgresql", 5432, "osuser", "osuser"),
        ),
        (
            "postgres://user=ln",
            ("/var/run/postgresql", 5432, "ln", "ln"),
        ),
    ];
    for (dsn, (host, port, user, db)) in cases {
        let t = pg(dsn, &env());
        assert_eq!(
            summary(&t),
            (host.to_string(), *port, user.to_string(), db.to_string()),
            "{dsn}"
        );
    }
}

#[test]
fn the_environment_fills_what_the_dsn_leaves_out_and_never_overrides_it() {
    let e = env()
        .with_var("PGHOST", "envhost")
        .with_var("PGPORT", "6000")
        .with_var("PGUSER", "envuser")
        .with_var("PGDATABASE", "envdb")
        .with_var("PGPASSWORD", "envpw")
        .with_var("PGOPTIONS", "-c synchronous_commit=local")
        .with_var("PGAPPNAME", "app");
    let t = pg("postgres://", &e);
    assert_eq!(
        summary(&t),
        ("envhost".into(), 6000, "envuser".into(), "envdb".into())
    );
    assert_eq!(password(&t).as_deref(), Some("envpw"));
    assert_eq!(t.options(), Some("-c synchronous_commit=local"));
    assert_eq!(t.config().get_application_name(), Some("app"));

    let t = pg(
        "postgres://ln:dsnpw@dsnhost:5999/dsndb?options=-c%20x%3Dy",
        &e,
    );
    assert_eq!(
        summary(&t),
        ("dsnhost".into(), 5999, "ln".into(), "dsndb".into())
    );
    assert_eq!(password(&t).as_deref(), Some("dsnpw"));
    assert_eq!(t.options(), Some("-c x=y"));
}

#[test]
fn the_password_file_is_read_when_no_password_is_given() {
    let home = tempfile::tempdir().unwrap();
    let pgpass = home.path().join(".pgpass");
    fs::write(
        &pgpass,
        "db1:5432:wallet:ln:filepw\n/run/pg:5432:*:ln:sockpw\n",
    )
    .unwrap();
    fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o600)).unwrap();
    let e = env().with_home(home.path());

    let t = pg("postgres://ln@db1/wallet", &e);
    assert_eq!(password(&t).as_deref(), Some("filepw"));
    assert!(
        t.to_string()
            .contains("password=<hidden, from the password file>"),
        "{t}"
    );
    let t = pg("postgres://host=/run/pg user=ln dbname=x", &e);
    assert_eq!(password(&t).as_deref(), Some("sockpw"));
    // A password in the DSN, or PGPASSWORD, comes first.
    assert_eq!(
        password(&pg("postgres://ln:dsn@db1/wallet", &e)).as_deref(),
        Some("dsn")
    );
    let e2 = e.clone().with_var("PGPASSWORD", "env");
    assert_eq!(
        password(&pg("postgres://ln@db1/wallet", &e2)).as_deref(),
        Some("env")
    );
    // PGPASSFILE and passfile= name another file.
    let other = home.path().join("other");
    fs::write(&other, "*:*:*:*:otherpw\n").unwrap();
    fs::set_permissions(&other, fs::Permissions::from_mode(0o600)).unwrap();
    let e3 = e.clone().with_var("PGPASSFILE", other.to_str().unwrap());
    assert_eq!(
        password(&pg("postgres://ln@db1/wallet", &e3)).as_deref(),
        Some("otherpw")
    );
    let dsn = format!("postgres://host=db1 user=ln passfile={}", other.display());
    assert_eq!(password(&pg(&dsn, &e)).as_deref(), Some("otherpw"));
}

#[test]
fn a_password_file_others_can_read_is_ignored_with_a_warning() {
    let home = tempfile::tempdir().unwrap();
    let pgpass = home.path().join(".pgpass");
    fs::write(&pgpass, "*:*:*:*:pw\n").unwrap();
    fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o644)).unwrap();
    let t = pg("postgres://ln@db1/wallet", &env().with_home(home.path()));
    assert_eq!(password(&t), None);
    assert!(
        t.warnings[0].contains("group or world access"),
        "{:?}",
        t.warnings
    );
}

#[test]
fn sslmode_as_libpq_applies_it() {
    let t = pg("postgres://ln@db1/w?sslmode=require", &env());
    assert_eq!(t.config().get_ssl_mode(), DriverSslMode::Require);
    assert_eq!(t.sslmode(), SslMode::Require);
    let t = pg(
        "postgres://ln@db1/w",
        &env().with_var("PGSSLMODE", "disable"),
    );
    assert_eq!(t.config().get_ssl_mode(), DriverSslMode::Disable);
    // Unix sockets never use TLS, whatever sslmode says.
    let t = pg("postgres://host=/run/pg sslmode=require", &env());
    assert_eq!(t.config().get_ssl_mode(), DriverSslMode::Disable);
    let t = pg("postgres://ln@db1/w", &env());
    assert_eq!(t.config().get_ssl_mode(), DriverSslMode::Prefer);
}

#[test]
fn what_cannot_be_honoured_is_an_error_naming_it() {
    for (dsn, expected) in [
        ("postgres://ln@db1/w?sslmode=verify-full", "sslrootcert"),
        (
            "postgres://ln@db1/w?sslmode=verify-ca&sslrootcert=/nonexistent.pem",
            "does not exist",
        ),
        ("postgres://ln@db1/w?sslmode=sometimes", "invalid sslmode"),
        ("postgres://service=wallet", "service"),
        ("postgres://host=db1 sslcert=/c.pem", "client certificates"),
        ("postgres://ln@db1:notaport/w", "port"),
        (
            "postgres://ln@db1/w?connect_timeout=soon",
            "connect_timeout",
        ),
        (
            "postgres://ln@db1/w?target_session_attrs=standby",
            "target_session_attrs",
        ),
        ("postgres://hostaddr=db1", "hostaddr"),
    ] {
        let e = WalletDsn::parse_with(dsn, &env()).unwrap_err().to_string();
        assert!(e.contains(expected), "{dsn}: {e}");
    }
}

#[test]
fn another_backend_is_named_not_rejected() {
    match WalletDsn::parse_with(
        "sqlite3:///home/ln/.lightning/bitcoin/lightningd.sqlite3",
        &env(),
    ) {
        Ok(WalletDsn::Other { scheme }) => assert_eq!(scheme, "sqlite3"),
        other => panic!("{other:?}"),
    }
    // lightningd selects its backend by the exact scheme `postgres://`.
    assert!(matches!(
        WalletDsn::parse_with("postgresql://u@h/db", &env()),
        Ok(WalletDsn::Other { .. })
    ));
    assert_eq!(
        WalletDsn::parse_with("lightningd.sqlite3", &env()).unwrap_err(),
        DsnError::NotADsn
    );
}

#[test]
fn display_and_errors_never_show_the_password() {
    for dsn in [
        "postgres://ln:TopSecret1@h:5432/db",
        "postgres://user=ln password=TopSecret1 host=h",
    ] {
        let t = pg(dsn, &env());
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
        "postgres://ln:Top%zzSecret1@h/db",
        "postgres://user=ln password='TopSecret1",
    ] {
        let err = WalletDsn::parse_with(bad, &env()).unwrap_err().to_string();
        assert!(err.starts_with("invalid PostgreSQL DSN"), "{err}");
        assert!(!err.contains("TopSecret1"), "{err}");
    }
}

/// libpq ends the user:password part at the first `/` or `?`: an unencoded one in the password
/// makes the rest of it a port, a database name or a query. None of it may be echoed.
#[test]
fn a_password_with_an_unencoded_slash_or_question_mark_is_never_echoed() {
    for bad in [
        "postgres://user:Xq7/Zw9@host/db",
        "postgres://user:Xq7/Zw9@host",
        "postgres://user:7193/Zw9@host/db",
        "postgres://user:Xq7?Zw9@host/db",
        "postgres://user:Xq7?Kv5=Zw9@host/db",
        "postgresql://user:Xq7/Zw9@host/db",
    ] {
        let err = match PgTarget::parse_with(bad, &env()) {
            Err(e) => e.to_string(),
            Ok(t) => panic!("{bad}: accepted as {t}"),
        };
        assert!(err.starts_with("invalid PostgreSQL DSN"), "{err}");
        for part in ["Xq7", "Zw9", "7193", "Kv5"] {
            assert!(!err.contains(part), "{bad}: {part:?} echoed in {err}");
        }
        assert!(err.contains("%2F"), "{bad}: the remedy is missing in {err}");
    }
    // A '@' that belongs to a query value stays allowed (user@server names).
    let t = pg("postgres://h:5432/db?user=ln@srv", &env());
    assert_eq!(
        summary(&t),
        ("h".into(), 5432, "ln@srv".into(), "db".into())
    );
}

#[test]
fn standby_dsns_take_any_libpq_form() {
    for dsn in [
        "host=/tmp port=5433 user=postgres",
        "postgresql://postgres@localhost:5433/postgres",
        "postgres://postgres@localhost:5433/postgres",
    ] {
        let t = PgTarget::parse_with(dsn, &env()).unwrap();
        assert_eq!(t.user(), "postgres", "{dsn}");
    }
}

#[test]
fn connect_timeout_follows_libpq_and_our_deadline_caps_it() {
    let t = pg("postgres://ln@h/w?connect_timeout=1", &env());
    assert_eq!(
        t.config().get_connect_timeout(),
        Some(&Duration::from_secs(2))
    );
    let c = pg("postgres://ln@h/w?connect_timeout=30", &env())
        .session_config("x", Duration::from_secs(2));
    assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(2)));
    assert_eq!(c.get_application_name(), Some("x"));
}
