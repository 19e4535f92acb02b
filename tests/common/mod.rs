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
    (obs, v)
}

pub async fn failover(wallet_dsn: &str, standby_dsns: &[String], wait_ms: u64) -> FailoverAnswer {
    let obs = probe::observe_failover(
        &targets(wallet_dsn, standby_dsns),
        &Policy::default(),
        Duration::from_millis(wait_ms),
    )
    .await;
    failover::evaluate(&obs)
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
