//! Integration tests against real primary/standby clusters: one test per fault, asserting the
//! level and the finding code. Servers are started by the harness and always torn down.

mod common;

use std::time::{Duration, Instant};

use cln_replguard::cluster::{ClusterSpec, wait_for};
use cln_replguard::facts::CommitProbe;
use cln_replguard::policy::Policy;
use cln_replguard::verdict::{Code, Level};
use cln_replguard::{guard, probe, verdict};

use common::*;

fn standby_dsn(c: &cln_replguard::cluster::Cluster, name: &str) -> String {
    c.standby(name).conninfo("postgres", "postgres")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_pair_is_safe() {
    let c = start(&ClusterSpec::pair());
    let (obs, v) = check(&c.primary.wallet_dsn(), &[standby_dsn(&c, "s1")]).await;
    assert_eq!(v.level, Level::Safe, "{:#?}", v.findings);
    let p = obs.primary().unwrap();
    assert!(
        matches!(p.commit_probe, CommitProbe::Acknowledged { .. }),
        "{:?}",
        p.commit_probe
    );
    assert_eq!(
        v.sync.as_ref().map(|s| (s.healthy, s.required)),
        Some((1, 1))
    );
    assert_eq!(p.walsenders[0].reached_target, Some(true));
}

/// With default standby settings (`wal_receiver_status_interval = 10s`) the reply age of an
/// idle healthy standby grows to 10 s: no check may call that unsafe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_healthy_pair_is_safe_at_every_check_for_15_seconds() {
    let c = start(&ClusterSpec::pair());
    let start_at = Instant::now();
    let mut checks = 0;
    let mut oldest_reply_ms: f64 = 0.0;
    while start_at.elapsed() < Duration::from_secs(15) {
        let (obs, v) = check(&c.primary.wallet_dsn(), &[]).await;
        assert_eq!(v.level, Level::Safe, "check {checks}: {:#?}", v.findings);
        let w = &obs.primary().unwrap().walsenders[0];
        oldest_reply_ms = oldest_reply_ms.max(w.reply_age_ms.unwrap_or(0.0));
        checks += 1;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    assert!(checks >= 12, "only {checks} checks in 15 s");
    eprintln!(
        "idle pair: {checks} checks, all safe; oldest reply age seen {oldest_reply_ms:.0} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_stopped_is_unsafe() {
    let c = start(&ClusterSpec::pair());
    c.standby("s1").stop().unwrap();
    let (_, v) = check(&c.primary.wallet_dsn(), &[]).await;
    assert_verdict(&v, Level::Unsafe, Code::SyncStandbysShort);
    assert!(v.has(Code::CommitProbeTimeout), "{:?}", codes(&v));
    assert!(v.has(Code::SlotInactive), "{:?}", codes(&v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_crashed_is_unsafe() {
    let c = start(&ClusterSpec::pair());
    c.standby("s1").crash().unwrap();
    let (_, v) = check(&c.primary.wallet_dsn(), &[standby_dsn(&c, "s1")]).await;
    assert_verdict(&v, Level::Unsafe, Code::SyncStandbysShort);
    assert!(v.has(Code::StandbyUnreachable), "{:?}", codes(&v));
}

/// The hung standby stays `streaming`/`sync` in PostgreSQL for `wal_sender_timeout` (60 s);
/// the check must call it not-safe within 3 s, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_standby_is_unsafe_within_3_seconds_worst_of_10() {
    let c = start(&ClusterSpec::pair());
    let mut times = Vec::new();
    for round in 0..10 {
        c.standby("s1").hang_walreceiver().unwrap();
        let hung_at = Instant::now();
        let (obs, v) = check(&c.primary.wallet_dsn(), &[]).await;
        times.push(elapsed_ms(hung_at));
        assert_verdict(&v, Level::Unsafe, Code::CommitProbeTimeout);
        let w = &obs.primary().unwrap().walsenders[0];
        assert_eq!(
            (w.state.as_deref(), w.sync_state.as_deref()),
            (Some("streaming"), Some("sync")),
            "round {round}: PostgreSQL itself should still call the hung standby healthy"
        );
        c.standby("s1").resume();
        c.wait_commits_flow().unwrap();
    }
    times.sort_by(f64::total_cmp);
    eprintln!(
        "hung standby detected: median {:.0} ms, worst {:.0} ms, all {:?}",
        times[times.len() / 2],
        times[times.len() - 1],
        times.iter().map(|t| t.round()).collect::<Vec<_>>()
    );
    assert!(
        times[times.len() - 1] < 3000.0,
        "worst {:.0} ms",
        times[times.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_paused_is_degraded() {
    let c = start(&ClusterSpec::pair());
    c.standby("s1")
        .psql("SELECT pg_wal_replay_pause()")
        .unwrap();
    let (_, v) = check(&c.primary.wallet_dsn(), &[standby_dsn(&c, "s1")]).await;
    assert_verdict(&v, Level::Degraded, Code::StandbyReplayPaused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_sync_names_with_an_async_standby_is_unsafe() {
    let c = start(&ClusterSpec::with_standbys(&["s1"], ""));
    let (obs, v) = check(&c.primary.wallet_dsn(), &[]).await;
    assert_verdict(&v, Level::Unsafe, Code::SyncNamesEmpty);
    let w = &obs.primary().unwrap().walsenders[0];
    assert_eq!(w.sync_state.as_deref(), Some("async"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_downgrade_to_async_is_unsafe() {
    let c = start(&ClusterSpec::pair());
    c.set_sync_names("").unwrap();
    let (_, v) = check(&c.primary.wallet_dsn(), &[]).await;
    assert_verdict(&v, Level::Unsafe, Code::SyncNamesEmpty);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_attached_under_another_name_is_unsafe() {
    let c = start(&ClusterSpec::with_standbys(&["s1"], ""));
    c.set_sync_names("FIRST 1 (other)").unwrap();
    let (_, v) = check(&c.primary.wallet_dsn(), &[]).await;
    assert_verdict(&v, Level::Unsafe, Code::SyncStandbysShort);
    let f = v.finding(Code::SyncStandbysShort).unwrap();
    assert!(f.message.contains("s1: not named"), "{}", f.message);
}

/// A role setting applies to sessions that start after it: the check opens a new session with
/// the wallet DSN, as lightningd does at its next start. The probe itself is not fooled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_level_synchronous_commit_local_is_unsafe() {
    let c = start(&ClusterSpec::pair());
    c.primary
        .psql("ALTER ROLE lightningd SET synchronous_commit = local")
        .unwrap();
    let (obs, v) = check(&c.primary.wallet_dsn(), &[]).await;
    assert_verdict(&v, Level::Unsafe, Code::SynchronousCommitWeak);
    let p = obs.primary().unwrap();
    assert_eq!(p.session.synchronous_commit_source, "user");
    assert_eq!(p.session.overrides.len(), 1);
    assert!(matches!(p.commit_probe, CommitProbe::Acknowledged { .. }));

    // The same weakening through the DSN's options.
    let dsn = format!(
        "postgres://{} options='-c synchronous_commit=off'",
        c.primary.conninfo("postgres", "postgres")
    );
    let (_, v) = check(&dsn, &[]).await;
    assert_verdict(&v, Level::Unsafe, Code::SynchronousCommitWeak);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_2_with_one_of_two_standbys_down_is_unsafe() {
    let c = start(&ClusterSpec::with_standbys(
        &["s1", "s2"],
        "FIRST 2 (s1, s2)",
    ));
    let (_, v) = check(&c.primary.wallet_dsn(), &[]).await;
    assert_eq!(v.level, Level::Safe, "{:#?}", v.findings);
    c.standby("s2").stop().unwrap();
    let (_, v) = check(&c.primary.wallet_dsn(), &[]).await;
    assert_verdict(&v, Level::Unsafe, Code::SyncStandbysShort);
    assert!(v.has(Code::CommitProbeTimeout), "{:?}", codes(&v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_2_with_one_of_two_standbys_down_is_unsafe() {
    let c = start(&ClusterSpec::with_standbys(&["s1", "s2"], "ANY 2 (s1, s2)"));
    let (_, v) = check(&c.primary.wallet_dsn(), &[]).await;
    assert_eq!(v.level, Level::Safe, "{:#?}", v.findings);
    c.standby("s2").crash().unwrap();
    let (_, v) = check(&c.primary.wallet_dsn(), &[]).await;
    assert_verdict(&v, Level::Unsafe, Code::SyncStandbysShort);
}

/// `ANY 1 (s1, s2)`: a commit may be acknowledged by either one alone, so neither is a safe
/// failover target by itself — even while both have every position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_1_of_2_names_no_failover_target() {
    let c = start(&ClusterSpec::with_standbys(&["s1", "s2"], "ANY 1 (s1, s2)"));
    let (_, v) = check(&c.primary.wallet_dsn(), &[]).await;
    assert_eq!(v.level, Level::Safe, "{:#?}", v.findings);
    let a = failover(&c.primary.wallet_dsn(), &[], 2000).await;
    assert!(!a.ready, "{a:#?}");
    assert_eq!(a.standbys.len(), 2);
    for s in &a.standbys {
        assert!(
            s.reasons.iter().any(|r| r.text.contains("ANY 1 of 2")),
            "{s:#?}"
        );
    }
    // With s2 gone, s1 still is not guaranteed every commit from here on.
    c.standby("s2").stop().unwrap();
    let a = failover(&c.primary.wallet_dsn(), &[], 500).await;
    assert!(!a.ready, "{a:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_of_another_cluster_is_unsafe() {
    let c = start(&ClusterSpec::pair());
    let other = start(&ClusterSpec::pair());
    assert_ne!(
        c.primary.system_identifier().unwrap(),
        other.primary.system_identifier().unwrap()
    );
    let (_, v) = check(&c.primary.wallet_dsn(), &[standby_dsn(&other, "s1")]).await;
    assert_verdict(&v, Level::Unsafe, Code::StandbyForeign);
    let a = failover(&c.primary.wallet_dsn(), &[standby_dsn(&other, "s1")], 500).await;
    assert!(!a.ready, "{a:#?}");
}

/// `pg_receivewal --synchronous` under `*` acknowledges commits, but it is no standby: there
/// is nothing to fail over to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_receiver_that_is_no_standby_does_not_count() {
    let c = start(&ClusterSpec::with_standbys(&[], ""));
    let dir = c.scratch_dir("receivewal").unwrap();
    let _receiver = c
        .spawn_tool(
            "pg_receivewal",
            [
                "--synchronous".as_ref(),
                "--no-loop".as_ref(),
                "-D".as_ref(),
                dir.as_os_str(),
                "-d".as_ref(),
                c.primary.conninfo("postgres", "postgres").as_ref(),
            ],
        )
        .unwrap();
    c.set_sync_names("*").unwrap();
    wait_for("pg_receivewal to be sync", Duration::from_secs(30), || {
        Ok(c.primary
            .psql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'")?
            == "1")
    })
    .unwrap();
    let (obs, v) = check(&c.primary.wallet_dsn(), &[]).await;
    assert_verdict(&v, Level::Unsafe, Code::SyncStandbysShort);
    assert!(v.has(Code::SyncNamesWildcard), "{:?}", codes(&v));
    assert!(matches!(
        obs.primary().unwrap().commit_probe,
        CommitProbe::Acknowledged { .. }
    ));
    assert!(!failover(&c.primary.wallet_dsn(), &[], 500).await.ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_role_is_unknown_with_the_grant_to_run() {
    let c = start(&ClusterSpec::pair());
    c.primary.psql("CREATE ROLE plain LOGIN").unwrap();
    let dsn = format!("postgres://{}", c.primary.conninfo("plain", "lightningd"));
    let (obs, v) = check(&dsn, &[]).await;
    assert_verdict(&v, Level::Unknown, Code::PrivilegesInsufficient);
    let f = v.finding(Code::PrivilegesInsufficient).unwrap();
    assert!(
        f.remedy.contains("GRANT pg_monitor TO plain"),
        "{}",
        f.remedy
    );
    // The replication row exists, its details are hidden: that must not read as "no standby".
    assert!(!v.has(Code::SyncStandbysShort), "{:?}", codes(&v));
    assert_eq!(obs.primary().unwrap().walsenders.len(), 1);
    let a = failover(&dsn, &[], 500).await;
    assert_eq!(
        a.readiness,
        cln_replguard::failover::Readiness::Unknown,
        "{a:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_unknown_and_never_shown() {
    let c = start(&ClusterSpec::pair());
    c.primary
        // PostgreSQL 13 still stores an md5 hash by default, which scram-sha-256 refuses.
        .psql(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE pwuser LOGIN PASSWORD 'RightPass7'; GRANT pg_monitor TO pwuser",
        )
        .unwrap();
    c.primary
        .prepend_hba("local all pwuser scram-sha-256")
        .unwrap();
    let base = c.primary.conninfo("pwuser", "lightningd");
    let good = format!("postgres://{base} password=RightPass7");
    let bad = format!("postgres://{base} password=WrongPass9");

    let (_, v) = check(&good, &[]).await;
    assert_eq!(v.level, Level::Safe, "{:#?}", v.findings);
    let (_, v) = check(&bad, &[]).await;
    assert_verdict(&v, Level::Unknown, Code::AuthFailed);

    for dsn in [&good, &bad] {
        for args in [
            vec!["status", "--json", "--dsn", dsn],
            vec!["status", "--dsn", dsn],
            vec!["check", "--dsn", dsn],
            vec!["failover-check", "--json", "--dsn", dsn],
        ] {
            let (_, out, err) = cli(&args);
            for secret in ["RightPass7", "WrongPass9"] {
                assert!(
                    !out.contains(secret) && !err.contains(secret),
                    "{args:?}: {out}{err}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let dsn = format!(
        "postgres://host={} port=5432 user=lightningd dbname=lightningd",
        dir.path().display()
    );
    let (_, v) = check(&dsn, &[]).await;
    assert_verdict(&v, Level::Unknown, Code::PrimaryUnreachable);
}

/// A stopped postmaster accepts the socket connection and never answers: the check must end
/// within its deadline with "unknown", never hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_primary_is_unknown_within_the_deadline() {
    let c = start(&ClusterSpec::pair());
    c.primary.hang_postmaster().unwrap();
    let t = Instant::now();
    let (_, v) = check(&c.primary.wallet_dsn(), &[standby_dsn(&c, "s1")]).await;
    let took = elapsed_ms(t);
    assert_verdict(&v, Level::Unknown, Code::PrimaryTimeout);
    assert!(took < 3000.0, "took {took:.0} ms");
    let t = Instant::now();
    let (code, out, _) = cli(&["check", "--dsn", &c.primary.wallet_dsn()]);
    assert_eq!(code, 3, "{out}");
    assert!(elapsed_ms(t) < 3500.0);
    c.primary.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wallet_is_unsafe() {
    let (_, v) = check(
        "sqlite3:///home/ln/.lightning/bitcoin/lightningd.sqlite3",
        &[],
    )
    .await;
    assert_verdict(&v, Level::Unsafe, Code::NotPostgres);
    let (code, out, _) = cli(&["check", "--dsn", "sqlite3:///x/lightningd.sqlite3"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("REPLGUARD UNSAFE"), "{out}");
}

/// One outstanding probe at most, across processes: a second check finds the first probe
/// still waiting and reports it instead of adding another waiting backend. Backends of the
/// wallet waiting longer than the deadline are reported too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_one_probe_waits_and_blocked_commits_are_reported() {
    let c = start(&ClusterSpec::pair());
    c.primary.psql("CREATE TABLE public.t (x int)").unwrap();
    c.standby("s1").hang_walreceiver().unwrap();
    // A lightningd-like commit that now waits for the standby.
    let writer = {
        let dsn = c.primary.conninfo("postgres", "postgres");
        let psql = c.bindir().join("psql");
        std::process::Command::new(psql)
            .args([
                "-X",
                "-q",
                "-d",
                &dsn,
                "-c",
                "INSERT INTO public.t VALUES (1)",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (_, first) = check(&c.primary.wallet_dsn(), &[]).await;
    assert!(first.has(Code::CommitProbeTimeout), "{:?}", codes(&first));
    wait_for(
        "the writer to wait past the deadline",
        Duration::from_secs(10),
        || {
            Ok(c.primary.psql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep' \
               AND application_name = 'psql' AND clock_timestamp() - query_start > '1.2 s'",
            )? == "1")
        },
    )
    .unwrap();
    let (code, out, _) = cli(&["check", "--dsn", &c.primary.wallet_dsn()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("commit-probe-already-waiting"), "{out}");
    assert!(out.contains("commits-blocked"), "{out}");
    let waiting_probes = c
        .primary
        .psql(
            "SELECT count(*) FROM pg_stat_activity \
              WHERE application_name = 'cln-replguard-probe' AND wait_event = 'SyncRep'",
        )
        .unwrap();
    assert_eq!(waiting_probes, "1");
    c.standby("s1").resume();
    c.wait_commits_flow().unwrap();
    let mut writer = writer;
    assert!(writer.wait().unwrap().success());
    let (_, v) = check(&c.primary.wallet_dsn(), &[]).await;
    assert_eq!(v.level, Level::Safe, "{:#?}", v.findings);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_check_names_the_synchronous_standby_with_the_position() {
    let c = start(&ClusterSpec::with_standbys(
        &["s1", "s2"],
        "FIRST 1 (s1, s2)",
    ));
    let dsns = [standby_dsn(&c, "s1"), standby_dsn(&c, "s2")];
    let a = failover(&c.primary.wallet_dsn(), &dsns, 2000).await;
    assert!(a.ready, "{a:#?}");
    assert_eq!(a.target.as_deref(), Some("s1"));
    let s2 = a.standbys.iter().find(|s| s.name == "s2").unwrap();
    assert!(!s2.ready, "s2 is only potential: {s2:#?}");

    // The target hangs: nothing can promise its position any more.
    c.standby("s1").hang_walreceiver().unwrap();
    c.primary.psql("SELECT pg_switch_wal()").unwrap();
    let a = failover(&c.primary.wallet_dsn(), &dsns, 300).await;
    assert!(!a.ready, "{a:#?}");
    c.standby("s1").resume();
}

/// A probe merely in flight (another check, a monitoring run of the CLI) is not a blocked
/// commit: concurrent checks of a healthy pair must all be safe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_do_not_mistake_each_other_for_a_blocked_commit() {
    let c = start(&ClusterSpec::pair());
    let dsn = c.primary.wallet_dsn();
    for round in 0..5 {
        let (a, b, c2, d) = tokio::join!(
            check(&dsn, &[]),
            check(&dsn, &[]),
            check(&dsn, &[]),
            check(&dsn, &[])
        );
        for (_, v) in [a, b, c2, d] {
            assert_eq!(v.level, Level::Safe, "round {round}: {:#?}", v.findings);
        }
    }
}

/// Commits that waited under names no standby could satisfy stay blocked after the names are
/// repaired, until the standby's next status reply (up to 10 s with the default interval,
/// DESIGN §6). The next check sees that the required standby already flushed them, writes one
/// small record, and every waiter — lightningd's commit and the earlier probe — is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_left_after_the_names_are_repaired_are_released_by_one_small_write() {
    let c = start(&ClusterSpec::pair());
    let dsn = c.primary.wallet_dsn();
    c.set_sync_names("FIRST 2 (s1, other)").unwrap();
    let (_, v) = check(&dsn, &[]).await;
    assert_eq!(v.level, Level::Unsafe, "{:#?}", v.findings);
    let _lightningd = c
        .spawn_sql("postgres", "postgres", "CREATE TABLE waits (x int)")
        .unwrap();
    let waiting = || {
        c.primary
            .psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
            .unwrap()
    };
    wait_for("two waiting commits", Duration::from_secs(10), || {
        Ok(waiting() == "2")
    })
    .unwrap();
    c.set_sync_names("s1").unwrap();
    let started = Instant::now();
    let (obs, _) = check(&dsn, &[]).await;
    let probe = &obs.primary().unwrap().commit_probe;
    assert!(
        matches!(
            probe,
            CommitProbe::Acknowledged {
                released_waiting: true,
                ..
            }
        ),
        "{probe:?}"
    );
    wait_for("no waiting commit", Duration::from_secs(2), || {
        Ok(waiting() == "0")
    })
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "released in {:?}",
        started.elapsed()
    );
    assert_eq!(
        c.primary
            .psql("SELECT count(*) FROM pg_class WHERE relname = 'waits'")
            .unwrap(),
        "1",
        "lightningd's commit went through"
    );
    let (_, v) = check(&dsn, &[]).await;
    assert_eq!(v.level, Level::Safe, "{:#?}", v.findings);
}

/// An `LD_PRELOAD` shim, compiled here with the system C compiler (the one Rust links with),
/// that moves the wall clock of the process it is loaded into `skew_s` seconds ahead:
/// `clock_gettime(CLOCK_REALTIME*)`, `gettimeofday` and `time`. Debian's libfaketime did not
/// reach the walreceiver's `reply_time`; these three calls do.
fn clock_ahead_shim(dir: &std::path::Path, skew_s: i64) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let src = dir.join("clock_ahead.c");
    let lib = dir.join("clock_ahead.so");
    std::fs::write(
        &src,
        format!(
            r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <time.h>
#include <sys/time.h>
#define SKEW {skew_s}
int clock_gettime(clockid_t id, struct timespec *ts) {{
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = dlsym(RTLD_NEXT, "clock_gettime");
    int r = real(id, ts);
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) ts->tv_sec += SKEW;
    return r;
}}
int gettimeofday(struct timeval *restrict tv, void *restrict tz) {{
    static int (*real)(struct timeval *restrict, void *restrict);
    if (!real) real = dlsym(RTLD_NEXT, "gettimeofday");
    int r = real(tv, tz);
    if (r == 0 && tv) tv->tv_sec += SKEW;
    return r;
}}
time_t time(time_t *t) {{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}}
"#
        ),
    )
    .unwrap();
    let out = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .output()
        .expect("run cc (the C compiler Rust links with) to build the clock shim");
    assert!(
        out.status.success(),
        "cc failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The servers run as an unprivileged user when the tests run as root.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o755)).unwrap();
    lib
}

/// `reply_time` is the standby's clock (DESIGN §6). A standby an hour ahead sends replies
/// that look younger than zero; judged by that age they were fresh for an hour, the
/// monitor's checks skipped the test commit, and a hung standby stayed "safe" until
/// `wal_sender_timeout`. Freshness is judged on the primary's clock: the hang is found out
/// within a few seconds, as on a standby with a right clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_standby_whose_clock_runs_ahead_is_found_out_by_the_monitor_s_checks() {
    let shim_dir = tempfile::tempdir().unwrap();
    let shim = clock_ahead_shim(shim_dir.path(), 3600);
    let mut spec = ClusterSpec::pair();
    spec.standby_conf
        .push("wal_receiver_status_interval = 1s".into());
    spec.standby_env
        .push(("LD_PRELOAD".into(), shim.display().to_string()));
    let c = start(&spec);
    // The fault is in place: the primary sees the standby's replies an hour in the future.
    let age_s: f64 = c
        .primary
        .psql("SELECT extract(epoch FROM clock_timestamp() - reply_time) FROM pg_stat_replication")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        age_s < -3000.0,
        "the standby's clock is not ahead: reply age {age_s} s"
    );

    // The monitor's checks: kept session and memory, probe skipped on fresh replies.
    let t = targets(&c.primary.wallet_dsn(), &[]);
    let policy = Policy {
        skip_probe_within: Some(Duration::from_millis(1250)),
        ..Policy::default()
    };
    let mut kept = probe::Kept::default();
    let interval = Duration::from_secs(1);
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        let obs = probe::observe_kept(&t, &policy, &mut kept).await;
        let v = verdict::evaluate(&obs, &policy);
        assert_eq!(v.level, Level::Safe, "healthy pair: {:#?}", v.findings);
        let p = &obs.primary().unwrap().commit_probe;
        outcomes.push(outcome(p));
        tokio::time::sleep(guard::next_check_in(p, interval)).await;
    }

    c.standby("s1").hang_walreceiver().unwrap();
    let hung_at = Instant::now();
    loop {
        let obs = probe::observe_kept(&t, &policy, &mut kept).await;
        let v = verdict::evaluate(&obs, &policy);
        let p = &obs.primary().unwrap().commit_probe;
        outcomes.push(outcome(p));
        if v.level == Level::Unsafe {
            assert!(v.has(Code::CommitProbeTimeout), "{:?}", codes(&v));
            break;
        }
        assert!(
            hung_at.elapsed() < Duration::from_secs(8),
            "the hang is not seen {:.1} s after it began: {} ({:?}); checks: {outcomes:?}",
            hung_at.elapsed().as_secs_f64(),
            v.level,
            p
        );
        tokio::time::sleep(guard::next_check_in(p, interval)).await;
    }
    eprintln!(
        "standby clock 3600 s ahead: hang seen in {:.0} ms; checks: {outcomes:?}",
        elapsed_ms(hung_at)
    );
    c.standby("s1").resume();
}

fn outcome(p: &CommitProbe) -> &'static str {
    match p {
        CommitProbe::Skipped { .. } => "skipped",
        CommitProbe::Acknowledged { .. } => "acknowledged",
        CommitProbe::Waiting { .. } => "waiting",
        CommitProbe::AlreadyWaiting { .. } => "already-waiting",
        CommitProbe::NotRun => "not-run",
        CommitProbe::Failed { .. } => "failed",
        CommitProbe::PluginFault { .. } => "plugin-fault",
    }
}

/// A standby DSN can reach the primary itself: a host list that falls back to it, a VIP, a
/// pooler. That server answers as a primary with this cluster's identifier, but it is no
/// promotion — the same postmaster, on the primary's timeline. Only another server that left
/// recovery is `standby-promoted` (the self-fence's trigger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_dsn_reaching_the_primary_is_told_from_a_promoted_standby() {
    let c = start(&ClusterSpec::pair());
    let wallet = c.primary.wallet_dsn();
    let primary_as_standby = c.primary.conninfo("postgres", "postgres");
    let (_, v) = check(&wallet, std::slice::from_ref(&primary_as_standby)).await;
    assert!(!v.has(Code::StandbyPromoted), "{:#?}", v.findings);
    assert_verdict(&v, Level::Unknown, Code::StandbyDsnIsPrimary);

    // A real promotion is still one.
    c.standby("s1").psql("SELECT pg_promote(true, 30)").unwrap();
    let (_, v) = check(&wallet, &[standby_dsn(&c, "s1")]).await;
    assert_verdict(&v, Level::Unsafe, Code::StandbyPromoted);
    assert!(!v.has(Code::StandbyDsnIsPrimary), "{:?}", codes(&v));

    // A host list whose first host (the standby) is down falls back to the primary.
    c.standby("s1").stop().unwrap();
    let (s, p) = (c.standby("s1"), &c.primary);
    let host_list = format!(
        "host={},{} port={},{} user=postgres dbname=postgres",
        s.socket_dir.display(),
        p.socket_dir.display(),
        s.port,
        p.port
    );
    let (_, v) = check(&wallet, &[host_list]).await;
    assert!(!v.has(Code::StandbyPromoted), "{:#?}", v.findings);
    assert!(v.has(Code::StandbyDsnIsPrimary), "{:?}", codes(&v));
}
