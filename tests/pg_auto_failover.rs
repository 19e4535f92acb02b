//! cln-replguard on a real pg_auto_failover formation (pg_autoctl 2.0, a monitor and two or
//! three nodes on loopback): what the check says with no monitor URI, from the wallet's
//! server alone. The harness is `pg_auto_failover_support`; every case starts its own
//! formation and tears it down.

mod common;
mod pg_auto_failover_support;

use std::time::{Duration, Instant};

use cln_replguard::policy::Policy;
use cln_replguard::verdict::{Code, Level, Verdict};
use cln_replguard::{patroni, probe};
use pg_auto_failover_support::{Formation, WALLET_ROLE};

fn finding<'a>(v: &'a Verdict, code: &str) -> &'a cln_replguard::verdict::Finding {
    v.findings
        .iter()
        .find(|f| f.code.as_str() == code)
        .unwrap_or_else(|| panic!("expected {code}, got {:#?}", v.findings))
}

/// The verdict as `cln-replguard check --dsn` gives it: the storage's, then the HA manager's
/// findings (no Patroni URL).
async fn check(f: &Formation) -> Verdict {
    let policy = Policy::default();
    let targets = common::targets(&f.wallet_dsn(), &[]);
    let obs = probe::observe(&targets, &policy).await;
    let v = patroni::verdict_of(&obs, &policy, None, false).await;
    println!("{}: {:?}", v.level.as_str(), common::codes(&v));
    v
}

fn names(f: &Formation) -> String {
    f.psql(
        f.nodes[0].port,
        "postgres",
        "SHOW synchronous_standby_names",
    )
    .unwrap()
}

/// Two nodes: pg_auto_failover names its one standby; when that standby is lost the monitor
/// assigns wait_primary, pg_autoctl empties the names and PostgreSQL acknowledges the commit
/// that was waiting for the standby. Both states read as unsafe, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn two_node_formation_and_its_wait_primary_are_unsafe_with_the_reason() {
    let f = Formation::start(2);
    assert_eq!(names(&f), "ANY 1 (pgautofailover_standby_2)");
    let v = check(&f).await;
    assert_eq!(v.level, Level::Unsafe, "{:#?}", v.findings);
    let two = finding(&v, "pg-auto-failover-two-node");
    assert!(
        two.message.contains("wait_primary") && two.message.contains("acknowledge"),
        "{}",
        two.message
    );
    assert!(two.remedy.contains("pg_autoctl"), "{}", two.remedy);
    // `failover` gives way to pg_auto_failover's monitor, naming what to run instead, and
    // promotes nothing.
    let standby = f.superuser_dsn("n2");
    let (code, out, err) = common::cli(&[
        "failover",
        "--standby-dsn",
        &standby,
        "--then",
        "wait-for-standby",
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("pg_autoctl perform switchover"),
        "{out}{err}"
    );
    assert_eq!(
        f.psql(f.node("n2").port, "postgres", "SELECT pg_is_in_recovery()")
            .unwrap(),
        "t"
    );

    let started = Instant::now();
    f.stop_node("n2");
    commit_waiting_for_the_lost_standbys_is_acknowledged_alone(&f, Duration::from_secs(30));
    println!(
        "n2 stopped → n1 wait_primary, waiting commit acknowledged: {:.1} s",
        common::elapsed_ms(started) / 1000.0
    );
    f.wait_state("n1", "wait_primary", Duration::from_secs(10))
        .unwrap();
    assert_eq!(names(&f), "");
    let v = check(&f).await;
    assert_eq!(v.level, Level::Unsafe, "{:#?}", v.findings);
    let wait = finding(&v, "pg-auto-failover-wait-primary");
    assert!(
        wait.message.contains("pg_auto_failover"),
        "{}",
        wait.message
    );
    assert!(wait.remedy.contains("pg_autoctl"), "{}", wait.remedy);
    // Its own remedy replaces the generic one (ALTER SYSTEM would fight pg_autoctl).
    assert!(!v.has(Code::SyncNamesEmpty), "{:#?}", v.findings);
}

/// Three nodes: pg_autoctl raises number_sync_standbys to 1 when the second standby joins.
/// The names do not show it (`ANY 1 (…)` for 0 and 1 alike), so the check says degraded and
/// what to confirm; with both standbys lost pg_auto_failover keeps the names and commits
/// block, which the check calls unsafe as for any pair.
#[tokio::test(flavor = "multi_thread")]
async fn three_node_formation_with_one_sync_standby_is_degraded_for_what_the_names_hide() {
    let f = Formation::start(3);
    assert_eq!(f.number_sync_standbys().unwrap(), "1");
    let quorum = "ANY 1 (pgautofailover_standby_2, pgautofailover_standby_3)";
    assert_eq!(names(&f), quorum);
    let v = check(&f).await;
    assert_eq!(v.level, Level::Degraded, "{:#?}", v.findings);
    let advice = finding(&v, "pg-auto-failover-quorum");
    assert!(
        advice.remedy.contains("number-sync-standbys"),
        "{}",
        advice.remedy
    );

    f.stop_node("n2");
    f.stop_node("n3");
    f.wait_assigned("n2", "catchingup", Duration::from_secs(30))
        .unwrap();
    f.wait_assigned("n3", "catchingup", Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        f.states().unwrap()[0].2,
        "primary",
        "n1 must stay primary (not wait_primary)"
    );
    assert_eq!(names(&f), quorum);
    let v = check(&f).await;
    common::assert_verdict(&v, Level::Unsafe, Code::SyncStandbysShort);
    assert!(!v.has(Code::HaManagerUnconfigured), "{:#?}", v.findings);
}

/// `failover` gives way to pg_auto_failover with the role contrib/FAILOVER.md documents
/// (EXECUTE on pg_promote and pg_checkpoint, no pg_read_all_settings): such a role cannot see
/// pg_settings.sourcefile, so postgresql-auto-failover.conf is no sign for it, but the
/// standby's own signs are there to any role (its primary_slot_name, its slots).
#[tokio::test(flavor = "multi_thread")]
async fn failover_with_the_documented_promote_role_gives_way_to_pg_auto_failover() {
    let f = Formation::start(2);
    f.psql(
        f.nodes[0].port,
        "postgres",
        "CREATE ROLE promoter LOGIN; \
         GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO promoter; \
         GRANT pg_checkpoint TO promoter",
    )
    .unwrap();
    let n2 = f.node("n2").port;
    cln_replguard::cluster::wait_for("the role to reach n2", Duration::from_secs(30), || {
        Ok(f.psql(
            n2,
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname = 'promoter'",
        )? == "1")
    })
    .unwrap();
    let seen = f
        .psql_as(
            n2,
            Some("promoter"),
            WALLET_ROLE,
            "SELECT current_setting('primary_slot_name') || ' / ' || \
             (SELECT string_agg(slot_name, ',') FROM pg_replication_slots)",
        )
        .unwrap();
    println!("what the promote role sees on n2: {seen}");
    let standby = format!(
        "host={} port={n2} user=promoter dbname={WALLET_ROLE}",
        f.superuser_dsn("n2")
            .split(' ')
            .next()
            .unwrap()
            .trim_start_matches("host=")
    );
    let (code, out, err) = common::cli(&[
        "failover",
        "--standby-dsn",
        &standby,
        "--then",
        "wait-for-standby",
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("pg_auto_failover manages this cluster"),
        "{out}{err}"
    );
}

/// Three nodes with number_sync_standbys 0 (`pg_autoctl set formation number-sync-standbys
/// 0`, one command on any node): the names are the same `ANY 1 (…)` as with 1, but once both
/// standbys are lost the monitor assigns wait_primary and the waiting commit is acknowledged
/// on the primary alone, as in the two-node formation the check calls unsafe. The check must
/// not call this formation safe beforehand (review: it says SAFE with advice).
#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_with_number_sync_standbys_0_are_not_called_safe() {
    let f = Formation::start(3);
    let n1 = f.node("n1").pgdata.display().to_string();
    let out = f
        .pg_autoctl()
        .args([
            "set",
            "formation",
            "number-sync-standbys",
            "0",
            "--pgdata",
            &n1,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(f.number_sync_standbys().unwrap(), "0");
    let quorum = "ANY 1 (pgautofailover_standby_2, pgautofailover_standby_3)";
    cln_replguard::cluster::wait_for(
        "pg_autoctl to settle the names",
        Duration::from_secs(30),
        || Ok(names(&f) == quorum),
    )
    .unwrap();
    let before = check(&f).await;

    f.stop_node("n2");
    f.stop_node("n3");
    commit_waiting_for_the_lost_standbys_is_acknowledged_alone(&f, Duration::from_secs(60));
    println!("both standbys lost → wait_primary, the waiting commit acknowledged alone");
    assert_ne!(before.level, Level::Safe, "{:#?}", before.findings);
}

/// Its standbys lost, a commit on n1 waits; the monitor assigns n1 wait_primary within
/// `timeout`, pg_autoctl empties the names, and the commit is acknowledged: no error, no
/// cancellation, on the primary alone.
fn commit_waiting_for_the_lost_standbys_is_acknowledged_alone(f: &Formation, timeout: Duration) {
    let waiting = f
        .psql_command(
            f.nodes[0].port,
            Some(WALLET_ROLE),
            WALLET_ROLE,
            "CREATE TABLE acknowledged_alone (i int)",
        )
        .output_async();
    f.wait_assigned("n1", "wait_primary", timeout).unwrap();
    let out = waiting.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `Command::output` on a thread: the commit runs while the test goes on.
trait OutputAsync {
    fn output_async(self) -> std::thread::JoinHandle<std::process::Output>;
}

impl OutputAsync for std::process::Command {
    fn output_async(mut self) -> std::thread::JoinHandle<std::process::Output> {
        std::thread::spawn(move || self.output().expect("run psql"))
    }
}
