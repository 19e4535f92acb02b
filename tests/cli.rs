//! The operator CLI as a user runs it: exit codes, the one-line check, the JSON schema, and
//! errors for bad input.

mod common;

use cln_replguard::cluster::ClusterSpec;
use serde_json::Value;

use common::*;

#[test]
fn status_json_has_the_documented_schema_on_a_healthy_pair() {
    let c = start(&ClusterSpec::pair());
    let standby = c.standby("s1").conninfo("postgres", "postgres");
    let dsn = c.primary.wallet_dsn();
    let (code, out, err) = cli(&["status", "--json", "--dsn", &dsn, "--standby-dsn", &standby]);
    assert_eq!(code, 0, "{out}{err}");
    let v: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["verdict"], "safe");
    assert_eq!(v["findings"], Value::Array(vec![]));
    for key in [
        "primary",
        "standbys",
        "settings",
        "commit_probe_ms",
        "checked_at",
        "policy",
    ] {
        assert!(!v[key].is_null(), "missing {key}: {out}");
    }
    assert!(v["commit_probe_ms"].as_f64().unwrap() < 250.0);
    assert_eq!(v["settings"]["synchronous_standby_names"], "FIRST 1 (s1)");
    assert_eq!(v["settings"]["synchronous_commit"], "on");
    let s1 = &v["standbys"][0];
    assert_eq!(s1["name"], "s1");
    assert_eq!(s1["counted"], true);
    assert_eq!(s1["standby_side"]["in_recovery"], true);
    assert_eq!(
        v["primary"]["system_identifier"],
        s1["standby_side"]["system_identifier"]
    );

    let (code, line, _) = cli(&["check", "--dsn", &dsn]);
    assert_eq!(code, 0);
    assert!(line.starts_with("REPLGUARD SAFE: "), "{line}");
    assert!(line.contains("| commit_probe="), "{line}");
    assert_eq!(line.lines().count(), 1);

    let (code, out, _) = cli(&[
        "failover-check",
        "--json",
        "--dsn",
        &dsn,
        "--standby-dsn",
        &standby,
    ]);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ready"], true);
    assert_eq!(v["target"], "s1");
}

#[test]
fn findings_carry_code_severity_message_and_remedy_and_exit_2_when_unsafe() {
    let c = start(&ClusterSpec::pair());
    c.set_sync_names("").unwrap();
    let dsn = c.primary.wallet_dsn();
    let (code, out, _) = cli(&["status", "--json", "--dsn", &dsn]);
    assert_eq!(code, 2, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "unsafe");
    let f = &v["findings"][0];
    assert_eq!(f["code"], "sync-names-empty");
    assert_eq!(f["severity"], "unsafe");
    assert!(f["message"].as_str().unwrap().contains("empty"));
    assert!(
        f["remedy"]
            .as_str()
            .unwrap()
            .contains("synchronous_standby_names")
    );

    let (code, out, _) = cli(&["status", "--dsn", &dsn]);
    assert_eq!(code, 2);
    assert!(out.starts_with("verdict: UNSAFE"), "{out}");
    assert!(out.contains("fix: "), "{out}");

    let (code, out, _) = cli(&["failover-check", "--dsn", &dsn]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("NOT READY"), "{out}");
}

#[test]
fn degraded_exits_1() {
    let c = start(&ClusterSpec::pair());
    c.set_sync_names("*").unwrap();
    let (code, out, _) = cli(&["check", "--dsn", &c.primary.wallet_dsn()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("REPLGUARD DEGRADED"), "{out}");
    assert!(out.contains("sync-names-wildcard"), "{out}");
}

/// The seed guide's default pair (checksums off, wal_log_hints off, a slot without a WAL
/// limit): every acknowledged commit is replicated, so SAFE and exit 0, with the advice and
/// its remedies listed.
#[test]
fn a_default_pair_is_safe_with_advice_and_exits_0() {
    let mut spec = ClusterSpec::pair();
    spec.primary_conf.push("max_slot_wal_keep_size = -1".into());
    spec.primary_conf.push("wal_log_hints = off".into());
    let c = start(&spec);
    let dsn = c.primary.wallet_dsn();
    let (code, out, err) = cli(&["check", "--dsn", &dsn]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("REPLGUARD SAFE"), "{out}");
    // From 18 on, initdb turns data checksums on: pg_rewind works without wal_log_hints.
    let checksums = c.primary.psql("SHOW data_checksums").unwrap() == "on";
    let advice = if checksums { "1 advice" } else { "2 advice" };
    assert!(out.contains(advice), "{out}");
    let (code, out, _) = cli(&["status", "--dsn", &dsn]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verdict: SAFE"), "{out}");
    assert!(out.contains("[advice] slot-retention-unbounded"), "{out}");
    if !checksums {
        assert!(out.contains("[advice] rewind-impossible"), "{out}");
        assert!(
            out.contains("fix: ALTER SYSTEM SET wal_log_hints = on"),
            "{out}"
        );
    }
    let (code, out, _) = cli(&["status", "--json", "--dsn", &dsn]);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "safe");
    let severities: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["severity"].as_str().unwrap())
        .collect();
    assert!(severities.iter().all(|s| *s == "advice"), "{out}");
    assert_eq!(severities.len(), if checksums { 1 } else { 2 }, "{out}");
}

#[test]
fn bad_input_is_a_clear_error_with_exit_3_and_no_password() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["check", "--dsn", "lightningd.sqlite3"],
            "not a lightningd wallet DSN",
        ),
        (
            &["check", "--dsn", "postgres://ln:Hush4@h:notaport/db"],
            "invalid PostgreSQL DSN",
        ),
        (
            &[
                "check",
                "--dsn",
                "postgres://host=/tmp",
                "--standby-dsn",
                "user=x password=Hush4 bogus=1",
            ],
            "standby DSN: invalid PostgreSQL DSN: invalid connection option \"bogus\"",
        ),
        (
            &[
                "check",
                "--dsn",
                "postgres://host=/tmp",
                "--probe-slow-ms",
                "2000",
            ],
            "probe-slow-ms",
        ),
        (&["check"], "--dsn"),
        (&["no-such-command"], "unrecognized subcommand"),
    ];
    for (args, expected) in cases {
        let (code, out, err) = cli(args);
        assert_eq!(code, 3, "{args:?}: {out}{err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert!(
            !err.contains("Hush4") && !out.contains("Hush4"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn the_dsn_can_come_from_the_environment() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cln-replguard"))
        .args(["check"])
        .env("REPLGUARD_DSN", "sqlite3:///x/lightningd.sqlite3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not-postgres"));
}

#[test]
fn help_and_version_exit_0() {
    let (code, out, _) = cli(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("failover-check") && out.contains("Exit status"),
        "{out}"
    );
    assert_eq!(cli(&["--version"]).0, 0);
}

/// `--version` names the commit the binary was built from, as git says it for this checkout.
#[test]
fn version_prints_the_git_commit_it_was_built_from() {
    let (code, out, _) = cli(&["--version"]);
    assert_eq!(code, 0);
    let git = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git");
    let sha = String::from_utf8_lossy(&git.stdout).trim().to_string();
    assert_eq!(sha.len(), 12, "not a git checkout? {git:?}");
    assert!(
        out.starts_with(&format!(
            "cln-replguard {} (commit {sha}",
            env!("CARGO_PKG_VERSION")
        )),
        "{out}"
    );
}

/// CLN's `reckless install` test-runs the built binary with no arguments and no
/// `LIGHTNINGD_PLUGIN`, and keeps the install only on exit 0 (or a 10 s timeout): bare, the
/// binary prints its usage and exits 0. A wrong flag is still a usage error (3).
#[test]
fn no_arguments_print_the_usage_and_exit_0_but_an_unknown_flag_exits_3() {
    let (code, out, err) = cli(&[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Usage: cln-replguard"), "{out}");
    assert!(out.contains("failover-check"), "{out}");
    let (code, _, err) = cli(&["--no-such-flag"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
}

/// lightningd in developer mode starts every plugin with `--developer`: still the plugin.
#[test]
fn plugin_mode_takes_the_flags_lightningd_passes_to_plugins() {
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::process::{Command, Stdio};
    for flag in ["--developer", "--dev-debug-self"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cln-replguard"))
            .arg(flag)
            .env("LIGHTNINGD_PLUGIN", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(
                br#"{"jsonrpc":"2.0","id":1,"method":"getmanifest","params":{"allow-deprecated-apis":false}}"#,
            )
            .unwrap();
        stdin.write_all(b"\n\n").unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        drop(stdin);
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "{flag}: no manifest ({e}): {line}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(
            v["result"]["options"]
                .as_array()
                .is_some_and(|o| !o.is_empty()),
            "{flag}: {v}"
        );
    }
}
