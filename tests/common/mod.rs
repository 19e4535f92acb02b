//! Shared helpers for the integration tests: run the checks the way the CLI does.

#![allow(dead_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use cln_replguard::cluster::{Cluster, ClusterSpec};
use cln_replguard::dsn::{PgTarget, WalletDsn};
use cln_replguard::facts::Observation;
use cln_replguard::failover::{self, FailoverAnswer};
use cln_replguard::policy::Policy;
use cln_replguard::probe::{self, Targets};
use cln_replguard::verdict::{self, Code, Level, Verdict};

pub fn start(spec: &ClusterSpec) -> Cluster {
    Cluster::start(spec).unwrap_or_else(|e| panic!("cannot start the test cluster: {e:#}"))
}

pub fn targets(wallet_dsn: &str, standby_dsns: &[String]) -> Targets {
    Targets::new(
        WalletDsn::parse(wallet_dsn).expect("wallet DSN"),
        standby_dsns
            .iter()
            .map(|d| PgTarget::parse(d).expect("standby DSN"))
            .collect(),
    )
}

pub async fn check(wallet_dsn: &str, standby_dsns: &[String]) -> (Observation, Verdict) {
    let policy = Policy::default();
    let obs = probe::observe(&targets(wallet_dsn, standby_dsns), &policy).await;
    let v = verdict::evaluate(&obs, &policy);
    record_for_matrix("check", v.level.as_str(), codes(&v));
    (obs, v)
}

pub async fn failover(wallet_dsn: &str, standby_dsns: &[String], wait_ms: u64) -> FailoverAnswer {
    let obs = probe::observe_failover(
        &targets(wallet_dsn, standby_dsns),
        &Policy::default(),
        Duration::from_millis(wait_ms),
    )
    .await;
    let a = failover::evaluate(&obs);
    let readiness = format!("{:?}", a.readiness).to_lowercase();
    let blockers = a.blockers.iter().map(|r| r.code.as_str()).collect();
    record_for_matrix("failover-check", &readiness, blockers);
    a
}

/// With `REPLGUARD_MATRIX_LOG` set (`.ci/pg-matrix` sets it per major), appends one line per
/// answer: test name, what was asked, level and codes, tab-separated. The matrix run turns
/// these lines into its major × case table.
fn record_for_matrix(asked: &str, level: &str, codes: Vec<&str>) {
    use std::io::Write as _;
    let Some(path) = std::env::var_os("REPLGUARD_MATRIX_LOG") else {
        return;
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    let line = format!("{test}\t{asked}\t{level}\t{}\n", codes.join(","));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.to_string_lossy()));
    // One write per line: the tests of one binary run in parallel.
    f.write_all(line.as_bytes()).expect("write the matrix log");
}

pub fn codes(v: &Verdict) -> Vec<&'static str> {
    v.findings.iter().map(|f| f.code.as_str()).collect()
}

/// Asserts the level and that `code` is among the findings; prints the findings otherwise.
pub fn assert_verdict(v: &Verdict, level: Level, code: Code) {
    assert_eq!(v.level, level, "findings: {:#?}", v.findings);
    assert!(v.has(code), "expected {code}, got {:?}", codes(v));
}

/// Runs the built binary; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cln-replguard"))
        .args(args)
        .env_remove("LIGHTNINGD_PLUGIN")
        .env_remove("REPLGUARD_DSN")
        .output()
        .expect("run cln-replguard");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn elapsed_ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// A TCP port free on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
