//! `setup primary --apply` on a real server: what reaches the server and its log, and that
//! the server it changed comes back.

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use cln_replguard::cluster::{Cluster, ClusterSpec};

use common::*;

/// A primary alone (no standby: naming `s1` blocks nothing here, nothing writes after it).
fn primary_alone(extra_conf: &[&str]) -> Cluster {
    let mut spec = ClusterSpec::with_standbys(&[], "");
    spec.archive = false;
    spec.primary_conf = extra_conf.iter().map(|s| s.to_string()).collect();
    start(&spec)
}

/// `setup primary --apply` against the cluster's primary, with extra arguments and env.
fn setup_primary(c: &Cluster, extra: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let p = &c.primary;
    let admin = p.conninfo("postgres", "postgres");
    let data = p.datadir.display().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cln-replguard"));
    cmd.args([
        "setup", "primary", "--pgdata", &data, "--admin", &admin, "--apply",
    ])
    .args(extra)
    .env_remove("LIGHTNINGD_PLUGIN")
    .env_remove("REPLGUARD_REPLICATION_PASSWORD")
    .env_remove("REPLGUARD_WALLET_PASSWORD");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run cln-replguard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Logs in over TCP with SCRAM; Ok(()) or psql's complaint.
fn login(c: &Cluster, user: &str, password: &str) -> Result<(), String> {
    let psql = c.bindir().join("psql");
    let out = Command::new(psql)
        .args(["-X", "-A", "-t", "-c", "SELECT current_user", "-d"])
        .arg(format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres",
            c.primary.port
        ))
        .env("PGPASSWORD", password)
        .env_remove("PGPASSFILE")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && said == user {
        Ok(())
    } else {
        Err(format!("{said}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

#[test]
fn setup_sends_a_scram_verifier_and_the_password_never_reaches_the_server_log() {
    let c = primary_alone(&["log_statement = 'ddl'", "listen_addresses = '127.0.0.1'"]);
    let (repl_pw, wallet_pw) = ("Sekret-repl-4711", "Sekret-wallet-0815");
    let (code, out, err) = setup_primary(
        &c,
        &[],
        &[
            ("REPLGUARD_REPLICATION_PASSWORD", repl_pw),
            ("REPLGUARD_WALLET_PASSWORD", wallet_pw),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!format!("{out}{err}").contains("Sekret"), "{out}{err}");

    let log = fs::read_to_string(&c.primary.log).unwrap();
    // log_statement=ddl logs the ALTER ROLE: only its verifier may be there.
    assert!(
        log.contains("ALTER ROLE replicator PASSWORD 'SCRAM-SHA-256$4096:"),
        "the statement was not logged as expected:\n{log}"
    );
    assert!(
        !log.contains("Sekret"),
        "a password reached the server log:\n{log}"
    );
    for role in ["replicator", "lightningd"] {
        let stored = c
            .primary
            .psql(&format!(
                "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = '{role}'"
            ))
            .unwrap();
        assert_eq!(stored, "t", "{role}");
    }

    // Both passwords log in with SCRAM; a wrong one does not.
    c.primary
        .prepend_hba("host all replicator,lightningd 127.0.0.1/32 scram-sha-256")
        .unwrap();
    login(&c, "replicator", repl_pw).unwrap();
    login(&c, "lightningd", wallet_pw).unwrap();
    let wrong = login(&c, "lightningd", "not-it").unwrap_err();
    assert!(wrong.contains("password authentication failed"), "{wrong}");
}

#[test]
fn a_host_name_standby_addr_makes_an_hba_line_postgresql_loads_and_the_restart_succeeds() {
    let c = primary_alone(&[]);
    // An archive directory a shell and SQL would both split: quoted for each, it archives.
    let archive = c.scratch_dir("wal it's 100%").unwrap();
    // --listen and archive_mode need a restart, which reads pg_hba.conf again.
    let (code, out, err) = setup_primary(
        &c,
        &[
            "--standby-addr",
            "db2.example.com",
            "--listen",
            "127.0.0.1",
            "--archive-dir",
            archive.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}\n--- log:\n{}", c.primary.log_tail());
    assert!(out.contains("restarting"), "{out}");
    assert_eq!(
        c.primary.psql("SHOW listen_addresses").unwrap(),
        "127.0.0.1"
    );
    // wal_keep_size is 13's (wal_keep_segments before): the oldest major read takes it.
    assert_eq!(c.primary.psql("SHOW wal_keep_size").unwrap(), "1GB");
    let segment = c
        .primary
        // The segment the switch completed, named from the switch's own position (just past
        // its record, inside that segment): the position after it is on the next segment's
        // first byte, which pg_walfile_name names as the completed one before 17 and as the
        // next one from 17 on.
        .psql("SELECT pg_walfile_name(pg_switch_wal())")
        .unwrap();
    cln_replguard::cluster::wait_for("the segment archived", Duration::from_secs(30), || {
        Ok(archive.join(&segment).is_file())
    })
    .unwrap_or_else(|e| {
        let archived: Vec<_> = fs::read_dir(&archive)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        panic!(
            "{e:#} ({segment}; archived: {archived:?})\n--- log:\n{}",
            c.primary.log_tail()
        )
    });
    let rules = c
        .primary
        .psql(
            "SELECT coalesce(error, array_to_string(address || database || user_name, ' ')) \
             FROM pg_hba_file_rules WHERE error IS NOT NULL OR 'replicator' = ANY(user_name)",
        )
        .unwrap();
    // Streaming, and pg_rewind's ordinary connection should this primary's standby come back.
    assert_eq!(
        rules, "db2.example.com replication replicator\ndb2.example.com postgres replicator",
        "{rules}"
    );

    // Garbage is refused before anything is touched, naming the option and the forms.
    let hba = fs::read_to_string(c.primary.datadir.join("pg_hba.conf")).unwrap();
    for bad in [
        "db2.example.com/32",
        "10.0.0.2\nlocal all all trust",
        "10.0.0.0/33",
    ] {
        let (code, out, err) = setup_primary(&c, &["--standby-addr", bad], &[]);
        assert_ne!(code, 0, "{bad:?} accepted: {out}");
        assert!(err.contains("--standby-addr"), "{err}");
        assert!(
            err.contains("host name") || err.contains("control character"),
            "{err}"
        );
        assert!(out.is_empty(), "nothing may run: {out}");
    }
    assert_eq!(
        fs::read_to_string(c.primary.datadir.join("pg_hba.conf")).unwrap(),
        hba
    );
}

/// The pids whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

#[test]
fn a_tool_that_waits_on_a_silent_server_dies_with_cln_replguard() {
    // A "primary" that accepts the connection and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let pgdata = dir.path().join("standby");
    // pg_basebackup must get as far as the connection: a directory its user may write.
    let install = cln_replguard::pgbin::PgInstall::find().unwrap();
    install.mkdir(&pgdata).unwrap();
    install.own(dir.path()).unwrap();
    let mut setup = Command::new(env!("CARGO_BIN_EXE_cln-replguard"))
        .args(["setup", "standby", "--pgdata"])
        .arg(&pgdata)
        .args([
            "--primary-host",
            "127.0.0.1",
            "--primary-port",
            &port,
            "--apply",
        ])
        .env("PGCONNECT_TIMEOUT", "600")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut tool = vec![];
    cln_replguard::cluster::wait_for("pg_basebackup running", Duration::from_secs(20), || {
        tool = children_of(setup.id());
        Ok(!tool.is_empty())
    })
    .unwrap();
    assert!(
        tool.iter().any(|p| cln_replguard::pgbin::process_alive(*p)),
        "pg_basebackup should still be waiting for the silent server"
    );
    setup.kill().unwrap();
    setup.wait().unwrap();
    let gone =
        cln_replguard::cluster::wait_for("pg_basebackup gone", Duration::from_secs(5), || {
            Ok(tool
                .iter()
                .all(|p| !cln_replguard::pgbin::process_alive(*p)))
        });
    for p in &tool {
        // SAFETY: cleanup of the tool this test started, should the fix be missing.
        unsafe { libc::kill(*p, libc::SIGKILL) };
    }
    gone.expect("the tool outlived cln-replguard");
}
