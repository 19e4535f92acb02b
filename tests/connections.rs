//! Every connection form against a real server: the environment, the password file, TLS with
//! a certificate made here. Run through the CLI binary so the environment is the child's.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use cln_replguard::cluster::{Cluster, ClusterSpec};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use common::*;

/// Runs `cln-replguard check` with exactly these PG* variables and HOME.
fn check_with_env(dsn: &str, vars: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cln-replguard"));
    cmd.args(["check", "--dsn", dsn])
        .env_remove("LIGHTNINGD_PLUGIN");
    for (k, _) in std::env::vars() {
        if k.starts_with("PG") || k == "HOME" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(vars.iter().copied());
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn with_password_role(c: &Cluster) {
    c.primary
        // PostgreSQL 13 still stores an md5 hash by default, which scram-sha-256 refuses.
        .psql(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE ln LOGIN PASSWORD 'Pa55word'; GRANT pg_monitor TO ln",
        )
        .unwrap();
    c.primary.prepend_hba("local all ln scram-sha-256").unwrap();
}

#[test]
fn pg_variables_fill_an_empty_dsn() {
    let c = start(&ClusterSpec::pair());
    with_password_role(&c);
    let sock = c.primary.socket_dir.display().to_string();
    let port = c.primary.port.to_string();
    let base = [
        ("PGHOST", sock.as_str()),
        ("PGPORT", port.as_str()),
        ("PGUSER", "ln"),
        ("PGDATABASE", "lightningd"),
    ];
    let (code, out, err) = check_with_env(
        "postgres://",
        &[base.as_slice(), &[("PGPASSWORD", "Pa55word")]].concat(),
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = check_with_env("postgres://", &base);
    assert_eq!(code, 3, "no password anywhere: {out}");
    assert!(out.contains("auth-failed"), "{out}");
    // PGOPTIONS reaches the session like lightningd's.
    let (code, out, _) = check_with_env(
        "postgres://",
        &[
            base.as_slice(),
            &[
                ("PGPASSWORD", "Pa55word"),
                ("PGOPTIONS", "-c synchronous_commit=local"),
            ],
        ]
        .concat(),
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("synchronous-commit-weak"), "{out}");
}

#[test]
fn the_password_file_is_used_by_libpqs_rules() {
    let c = start(&ClusterSpec::pair());
    with_password_role(&c);
    let home = tempfile::tempdir().unwrap();
    let pgpass = home.path().join(".pgpass");
    fs::write(
        &pgpass,
        format!(
            "{}:{}:*:ln:Pa55word\n",
            c.primary.socket_dir.display(),
            c.primary.port
        ),
    )
    .unwrap();
    fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o600)).unwrap();
    let dsn = format!("postgres://{}", c.primary.conninfo("ln", "lightningd"));
    let home_var = home.path().to_str().unwrap();
    let (code, out, err) = check_with_env(&dsn, &[("HOME", home_var)]);
    assert_eq!(code, 0, "{out}{err}");
    // Readable by others: libpq ignores it, and says so.
    fs::set_permissions(&pgpass, fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, err) = check_with_env(&dsn, &[("HOME", home_var)]);
    assert_eq!(code, 3, "{out}");
    assert!(err.contains("group or world access"), "{err}");
    // PGPASSFILE names another one.
    let other = home.path().join("wallet.pgpass");
    fs::write(&other, "*:*:*:ln:Pa55word\n").unwrap();
    fs::set_permissions(&other, fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, _) = check_with_env(
        &dsn,
        &[("HOME", home_var), ("PGPASSFILE", other.to_str().unwrap())],
    );
    assert_eq!(code, 0, "{out}");
}

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A CA and a server certificate for `localhost` only (not 127.0.0.1).
fn make_pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

#[test]
fn tls_by_sslmode_with_a_certificate_made_here() {
    let c = start(&ClusterSpec::pair());
    let pki = make_pki();
    c.primary.enable_tls(&pki.cert_pem, &pki.key_pem).unwrap();
    c.wait_commits_flow().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, &pki.ca_pem).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    fs::write(&other_ca, make_pki().ca_pem).unwrap();
    let port = c.primary.port;
    let dsn =
        |host: &str, extra: &str| format!("postgres://lightningd@{host}:{port}/lightningd?{extra}");
    let ca = ca.display();
    let other_ca = other_ca.display();
    let cases = [
        (
            dsn("127.0.0.1", "sslmode=require"),
            0,
            "encrypted, not verified",
        ),
        (
            dsn(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            0,
            "name and chain verified",
        ),
        (
            dsn("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")),
            0,
            "chain verified, any name",
        ),
        (
            dsn(
                "127.0.0.1",
                &format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            3,
            "certificate is for localhost",
        ),
        (
            dsn(
                "localhost",
                &format!("sslmode=verify-full&sslrootcert={other_ca}"),
            ),
            3,
            "signed by another CA",
        ),
        (
            dsn(
                "127.0.0.1",
                &format!("sslmode=require&sslrootcert={other_ca}"),
            ),
            3,
            "require + root cert verifies",
        ),
        (
            dsn("127.0.0.1", "sslmode=disable"),
            3,
            "the server refuses plain TCP",
        ),
    ];
    for (dsn, expected, why) in &cases {
        let (code, out, err) = check_with_env(dsn, &[]);
        assert_eq!(code, *expected, "{why}: {dsn}\n{out}{err}");
    }
}
