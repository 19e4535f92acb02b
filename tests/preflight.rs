//! The pre-flight (`check --lightning-dir`) as systemd's ExecStartPre runs it: the wallet DSN
//! and replguard-* options come from lightningd's configuration files.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use cln_replguard::cluster::ClusterSpec;

use common::*;

fn lightning_dir(base: &str, network: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("config"), base).unwrap();
    fs::create_dir_all(d.path().join("bitcoin")).unwrap();
    fs::write(d.path().join("bitcoin/config"), network).unwrap();
    d
}

fn preflight(dir: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["check", "--lightning-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    cli(&args)
}

#[test]
fn a_healthy_pair_passes_and_an_absent_standby_blocks_the_start() {
    let c = start(&ClusterSpec::pair());
    // The DSN sits in an included file, as an operator keeps secrets apart.
    let d = lightning_dir("include wallet.conf\n", "");
    fs::write(
        d.path().join("wallet.conf"),
        format!("wallet={}\n", c.primary.wallet_dsn()),
    )
    .unwrap();
    let (code, out, err) = preflight(d.path(), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("REPLGUARD SAFE"), "{out}");
    assert!(err.contains("pre-flight passed"), "{err}");

    c.standby("s1").stop().unwrap();
    let (code, out, err) = preflight(d.path(), &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("pre-flight FAILED"), "{err}");
    assert!(err.contains("[unsafe] sync-standbys-short"), "{err}");
    assert!(err.contains("fix: "), "{err}");
    assert!(err.contains("lightningd must not start"), "{err}");

    // replguard-mode=warn in the network config: reported, and lightningd may start.
    fs::write(d.path().join("bitcoin/config"), "replguard-mode=warn\n").unwrap();
    let (code, _, err) = preflight(d.path(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("[unsafe] sync-standbys-short"), "{err}");
    assert!(err.contains("pre-flight passed"), "{err}");
}

#[test]
fn a_degraded_pair_may_start_with_its_findings_on_stderr() {
    let c = start(&ClusterSpec::pair());
    c.set_sync_names("*").unwrap();
    let d = lightning_dir(&format!("wallet={}\n", c.primary.wallet_dsn()), "");
    let (code, out, err) = preflight(d.path(), &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("REPLGUARD DEGRADED"), "{out}");
    assert!(err.contains("[degraded] sync-names-wildcard"), "{err}");
}

#[test]
fn no_wallet_line_means_lightningds_sqlite_default_which_fails() {
    let d = lightning_dir("alias=node\n", "");
    let (code, out, err) = preflight(d.path(), &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("not-postgres"), "{out}");
    assert!(err.contains("lightningd's default"), "{err}");
}

#[test]
fn wait_until_the_standby_is_back_or_fail_at_the_deadline() {
    let c = start(&ClusterSpec::pair());
    let d = lightning_dir(&format!("wallet={}\n", c.primary.wallet_dsn()), "");
    c.standby("s1").stop().unwrap();

    let t = Instant::now();
    let (code, out, err) = preflight(d.path(), &["--wait", "2"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("pre-flight FAILED"), "{err}");
    let took = t.elapsed().as_secs_f64();
    assert!((2.0..6.0).contains(&took), "took {took:.1} s");

    // Start the pre-flight first, then bring the standby back: it must end in a go.
    let child = Command::new(env!("CARGO_BIN_EXE_cln-replguard"))
        .args([
            "check",
            "--lightning-dir",
            d.path().to_str().unwrap(),
            "--wait",
            "60",
        ])
        .env_remove("LIGHTNINGD_PLUGIN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.standby("s1").start().unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("pre-flight passed"), "{err}");
}

#[test]
fn bad_options_in_the_config_fail_with_their_place() {
    let d = lightning_dir(
        "wallet=postgres://host=/tmp\n",
        "replguard-probe-deadline-ms=soon\n",
    );
    let (code, _, err) = preflight(d.path(), &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("replguard-probe-deadline-ms=soon"), "{err}");
    assert!(err.contains("bitcoin/config:1"), "{err}");
}

#[test]
fn a_latin1_alias_is_no_reason_to_keep_the_node_down() {
    // lightningd reads its files as bytes: `alias=Café` in Latin-1 is fine for it.
    let d = lightning_dir("", "");
    fs::write(d.path().join("config"), b"alias=Caf\xe9\n").unwrap();
    let (code, out, err) = preflight(d.path(), &[]);
    // The configuration was read: the verdict is about the wallet (sqlite3), not the file.
    assert_eq!(code, 2, "{out}{err}");
    assert!(out.contains("not-postgres"), "{out}");

    fs::write(
        d.path().join("config"),
        b"alias=x\nwallet=postgres://user=caf\xe9\n",
    )
    .unwrap();
    let (code, _, err) = preflight(d.path(), &[]);
    assert_eq!(code, 3, "{err}");
    let place = format!("{}:2", d.path().join("config").display());
    assert!(err.contains(&place) && err.contains("UTF-8"), "{err}");
}
