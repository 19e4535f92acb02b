//! `cln-replguard failover` and the evidence it reads, on real pairs: its refusals, a planned
//! switchover, and the zero-loss crash trials (issue 6): a writer commits increasing numbers,
//! the whole primary process tree is SIGKILLed at a random moment, the standby is promoted with
//! the tool, and the last acknowledged number must be on it. Control runs (role
//! `synchronous_commit = local`, an async standby) must lose commits, so the trial is known
//! to be able to fail. `REPLGUARD_TRIALS=n` sets the count of safe trials (default 3).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use cln_replguard::cluster::{Cluster, ClusterSpec, Server, wait_for};

use common::*;

/// The standby's DSN as the failover tool takes it: the superuser, on the wallet's database.
fn admin_dsn(s: &Server) -> String {
    s.conninfo("postgres", "lightningd")
}

fn sql_on_wallet_db(s: &Server, sql: &str) -> String {
    let out = std::process::Command::new(
        cln_replguard::pgbin::server_bindir()
            .expect("PostgreSQL binaries")
            .join("psql"),
    )
    .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
    .arg(admin_dsn(s))
    .arg("-c")
    .arg(sql)
    .output()
    .expect("psql");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// psql as `user` on the wallet's database: its output, or its error.
fn psql_as(s: &Server, user: &str, sql: &str) -> Result<String, String> {
    let out = std::process::Command::new(
        cln_replguard::pgbin::server_bindir()
            .expect("PostgreSQL binaries")
            .join("psql"),
    )
    .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
    .arg(s.conninfo(user, "lightningd"))
    .arg("-c")
    .arg(sql)
    .output()
    .expect("psql");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Waits until the standby holds `count` evidence rows: what the primary recorded reached it.
fn wait_for_rows(s: &Server, count: &str) {
    wait_for(
        "the evidence rows on the standby",
        Duration::from_secs(10),
        || Ok(sql_on_wallet_db(s, "SELECT count(*) FROM replguard.evidence") == count),
    )
    .unwrap();
}

/// The evidence table as an earlier version created it (a client-settable bigserial id), made
/// by `role`, followed by `then` (more SQL, in the same session).
fn old_evidence_table(c: &Cluster, role: &str, then: &str) {
    if role != "lightningd" {
        c.primary
            .psql(&format!(
                "CREATE ROLE {role} LOGIN; GRANT pg_monitor TO {role}"
            ))
            .unwrap();
        sql_on_wallet_db(
            &c.primary,
            &format!("GRANT CREATE ON DATABASE lightningd TO {role}"),
        );
    }
    psql_as(
        &c.primary,
        role,
        &format!(
            "CREATE SCHEMA replguard; CREATE TABLE replguard.evidence (id bigserial PRIMARY \
             KEY, recorded_at timestamptz NOT NULL DEFAULT now(), level text NOT NULL, codes \
             text[] NOT NULL, covered text[] NOT NULL, flush_lsn pg_lsn, timeline integer, \
             system_identifier text, source text NOT NULL); {then}"
        ),
    )
    .unwrap();
}

/// The newest row reached the standby, the primary is lost, and the failover refuses: the
/// role `watcher` could have written that row.
fn refused_as_forgeable_by_watcher(c: &Cluster) {
    c.wait_commits_flow().unwrap();
    wait_for_rows(c.standby("s1"), "1");
    c.primary.crash().unwrap();
    let (code, out) = failover(c, &["--then", "wait-for-standby"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("could be forged") && out.contains("watcher"),
        "{out}"
    );
    assert!(in_recovery(c.standby("s1")), "nothing promoted");
}

fn in_recovery(s: &Server) -> bool {
    s.psql("SELECT pg_is_in_recovery()").unwrap() == "t"
}

/// `cln-replguard check` against the primary: records the verdict as evidence.
fn check_and_record(c: &Cluster) -> (i32, String) {
    let (code, out, err) = cli(&[
        "check",
        "--record-evidence",
        "--dsn",
        &c.primary.wallet_dsn(),
    ]);
    assert!(!err.contains("cannot record evidence"), "{err}");
    (code, out)
}

fn failover(c: &Cluster, extra: &[&str]) -> (i32, String) {
    failover_to(c, "s1", extra)
}

fn failover_to(c: &Cluster, standby: &str, extra: &[&str]) -> (i32, String) {
    let rpc = c
        .scratch_dir("no-lightningd")
        .unwrap()
        .join("lightning-rpc");
    let owned = [
        admin_dsn(c.standby(standby)),
        c.primary.datadir.display().to_string(),
        rpc.display().to_string(),
    ];
    let mut args = vec![
        "failover",
        "--standby-dsn",
        &owned[0],
        "--old-primary-data",
        &owned[1],
        "--lightning-rpc",
        &owned[2],
        "--timeout",
        "30",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = cli(&args);
    (code, format!("{out}{err}"))
}

/// The level word of `check`'s line: `REPLGUARD SAFE: …` → `safe`.
fn level_of(line: &str) -> String {
    line.trim_start_matches("REPLGUARD ")
        .split(':')
        .next()
        .unwrap_or("")
        .to_lowercase()
}

/// Commits 1, 2, 3… as lightningd's role, each in its own transaction; `acked` is the last
/// number whose COMMIT returned.
struct Writer {
    acked: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Writer {
    fn start(c: &Cluster, pad: usize) -> Writer {
        let dsn = c.primary.conninfo("lightningd", "lightningd");
        let acked = Arc::new(AtomicI64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, s) = (acked.clone(), stop.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let thread = thread::spawn(move || {
            rt.block_on(async move {
                let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                    .await
                    .expect("writer connects");
                tokio::spawn(conn);
                // The pad is stored as it is: compressed, 4000 equal bytes would be a few
                // dozen and the "large" rows would fit in the socket buffers after all (on
                // 18, 2000 of them did: the control run lost nothing).
                client
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS trial (n bigint PRIMARY KEY, pad text);
                         ALTER TABLE trial ALTER COLUMN pad SET STORAGE EXTERNAL",
                    )
                    .await
                    .expect("trial table");
                let pad = "x".repeat(pad);
                let mut n: i64 = 0;
                while !s.load(Ordering::Relaxed) {
                    n += 1;
                    match client
                        .execute("INSERT INTO trial VALUES ($1, $2)", &[&n, &pad])
                        .await
                    {
                        Ok(_) => a.store(n, Ordering::SeqCst),
                        Err(_) => return, // the server is gone
                    }
                }
            })
        });
        Writer {
            acked,
            stop,
            thread: Some(thread),
        }
    }

    fn wait_acked(&self, at_least: i64) {
        wait_for("acknowledged commits", Duration::from_secs(60), || {
            Ok(self.acked.load(Ordering::SeqCst) >= at_least)
        })
        .unwrap();
    }

    fn acked(&self) -> i64 {
        self.acked.load(Ordering::SeqCst)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One crash trial; returns (verdict before, acknowledged, present on the promoted standby).
struct Trial {
    verdict: String,
    acked: i64,
    present: i64,
    tool_output: String,
}

fn crash_trial(
    c: &Cluster,
    pause_receiver: bool,
    kill_after: Duration,
    tool_flags: &[&str],
) -> Trial {
    let (_, line) = check_and_record(c);
    let verdict = level_of(&line);
    // A large row per commit: with the receiver paused, the WAL outgrows every socket buffer,
    // so the lost commits cannot hide in one.
    let writer = Writer::start(c, if pause_receiver { 4000 } else { 100 });
    writer.wait_acked(20);
    if pause_receiver {
        c.standby("s1").hang_walreceiver().unwrap();
        let before = writer.acked();
        writer.wait_acked(before + 2000);
    } else {
        // The experiment's random kill moment, not a wait for a condition.
        thread::sleep(kill_after);
    }
    c.primary.kill_tree().unwrap();
    let acked = writer.acked();
    drop(writer);
    c.standby("s1").resume();
    let (code, out) = failover(c, tool_flags);
    assert_eq!(code, 0, "failover: {out}");
    assert!(!in_recovery(c.standby("s1")), "{out}");
    let present: i64 = sql_on_wallet_db(c.standby("s1"), "SELECT coalesce(max(n), 0) FROM trial")
        .parse()
        .unwrap();
    Trial {
        verdict,
        acked,
        present,
        tool_output: out,
    }
}

fn trials() -> usize {
    std::env::var("REPLGUARD_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

#[test]
fn safe_pairs_lose_no_acknowledged_commit_when_the_primary_is_killed() {
    let n = trials();
    let mut lost_any = 0;
    for i in 0..n {
        let c = start(&ClusterSpec::pair());
        // A pseudo-random moment, different for each trial and run.
        let nanos = Instant::now().elapsed().subsec_nanos() as u64 ^ (std::process::id() as u64);
        let kill_after =
            Duration::from_millis(50 + (nanos.wrapping_mul(2654435761) + i as u64 * 97) % 450);
        let t = crash_trial(&c, false, kill_after, &["--then", "run-alone"]);
        eprintln!(
            "trial {}/{n}: verdict before {}, killed after {:?}: acknowledged {}, on the new \
             primary {}",
            i + 1,
            t.verdict,
            kill_after,
            t.acked,
            t.present
        );
        assert_eq!(t.verdict, "safe");
        assert!(t.acked > 0);
        assert!(
            t.tool_output.contains("holds every acknowledged commit"),
            "{}",
            t.tool_output
        );
        if t.present < t.acked {
            lost_any += 1;
        }
    }
    assert_eq!(
        lost_any, 0,
        "acknowledged commits lost in {lost_any} of {n} safe trials"
    );
}

#[test]
fn control_with_role_synchronous_commit_local_loses_commits_and_the_tool_refuses() {
    let c = start(&ClusterSpec::pair());
    c.primary
        .psql("ALTER ROLE lightningd SET synchronous_commit = local")
        .unwrap();
    // The refusal first: evidence says unsafe, so without --accept-loss nothing is promoted.
    let (_, line) = check_and_record(&c);
    assert_eq!(level_of(&line), "unsafe", "{line}");
    let writer = Writer::start(&c, 4000);
    writer.wait_acked(20);
    c.standby("s1").hang_walreceiver().unwrap();
    let before = writer.acked();
    writer.wait_acked(before + 2000);
    c.primary.kill_tree().unwrap();
    let acked = writer.acked();
    drop(writer);
    c.standby("s1").resume();
    let (code, out) = failover(&c, &["--then", "run-alone"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("REFUSED") && out.contains("synchronous-commit-weak"),
        "{out}"
    );
    assert!(
        in_recovery(c.standby("s1")),
        "a refusal must promote nothing"
    );
    // Forced: the loss the verdict warned about is real.
    let (code, out) = failover(&c, &["--then", "run-alone", "--accept-loss"]);
    assert_eq!(code, 0, "{out}");
    let present: i64 = sql_on_wallet_db(c.standby("s1"), "SELECT coalesce(max(n), 0) FROM trial")
        .parse()
        .unwrap();
    eprintln!(
        "control (role synchronous_commit = local): acknowledged {acked}, on the new primary {present}"
    );
    assert!(
        present < acked,
        "the control run must lose commits: {present} ≥ {acked}"
    );
}

#[test]
fn control_with_an_async_standby_loses_commits() {
    let c = start(&ClusterSpec::pair());
    c.set_sync_names("").unwrap();
    let t = crash_trial(
        &c,
        true,
        Duration::ZERO,
        &["--then", "run-alone", "--accept-loss"],
    );
    eprintln!(
        "control (async standby): verdict before {}, acknowledged {}, on the new primary {}",
        t.verdict, t.acked, t.present
    );
    assert_eq!(t.verdict, "unsafe");
    assert!(t.tool_output.contains("NOT COVERED"), "{}", t.tool_output);
    assert!(t.present < t.acked, "the control run must lose commits");
}

#[test]
fn refuses_without_fencing_or_without_evidence_and_promotes_nothing() {
    let c = start(&ClusterSpec::pair());
    let standby = admin_dsn(c.standby("s1"));
    check_and_record(&c);
    // Nothing said about the old node, and it still answers where the standby streams
    // from: refused whatever the flags.
    let no_flags = ["failover", "--standby-dsn", &standby, "--then", "run-alone"];
    let (code, out, _) = cli(&no_flags);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("still answers"), "{out}");
    // The old primary answers, and its data directory is not given: it cannot be stopped.
    let (code, out, _) = cli(&[
        "failover",
        "--standby-dsn",
        &standby,
        "--old-primary-dsn",
        &c.primary.wallet_dsn(),
        "--then",
        "run-alone",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("still answers"), "{out}");
    // A data directory of another cluster is not the old primary: refused, and that other
    // server is left running.
    let other = start(&ClusterSpec::pair());
    let (code, out, _) = cli(&[
        "failover",
        "--standby-dsn",
        &standby,
        "--old-primary-data",
        &other.primary.datadir.display().to_string(),
        "--then",
        "run-alone",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("belongs to another cluster"), "{out}");
    assert_eq!(other.primary.psql("SELECT 1").unwrap(), "1");
    assert!(in_recovery(c.standby("s1")));
    // The old primary is gone, but nothing was fenced from here: not fenced, with what to run
    // on the old host.
    c.primary.kill_tree().unwrap();
    let (code, out, _) = cli(&no_flags);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("not fenced") && out.contains("standby.signal"),
        "{out}"
    );
    assert!(in_recovery(c.standby("s1")));

    // Crashed primary, no evidence ever recorded: unverifiable, refused before the fence,
    // so the old primary's directory is left as it was.
    let fresh = start(&ClusterSpec::pair());
    fresh.primary.kill_tree().unwrap();
    let (code, out) = failover(&fresh, &["--then", "wait-for-standby"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("no evidence") && out.contains("--accept-unverified"),
        "{out}"
    );
    assert!(out.contains("left as it was"), "{out}");
    assert!(
        in_recovery(fresh.standby("s1")),
        "a refusal must promote nothing"
    );
    assert!(!fresh.primary.datadir.join("standby.signal").exists());
}

#[test]
fn planned_switchover_checks_live_then_runs_alone_within_the_accepted_time() {
    let c = start(&ClusterSpec::pair());
    let (code, out) = failover(
        &c,
        &[
            "--old-primary-dsn",
            &c.primary.wallet_dsn(),
            "--then",
            "run-alone",
            "--alone-for",
            "2h",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("s1 ready"), "{out}");
    assert!(out.contains("timeline 2"), "{out}");
    let accept = out
        .lines()
        .find_map(|l| l.strip_prefix("replguard-accept-no-standby-until="))
        .unwrap_or_else(|| panic!("no acceptance line in {out}"))
        .to_string();
    // The old primary was stopped cleanly and fenced.
    assert!(
        c.primary.postmaster_pid().is_err() || !c.primary.datadir.join("postmaster.pid").exists()
    );
    assert!(c.primary.datadir.join("standby.signal").is_file());
    // The new primary runs alone: degraded while accepted, unsafe without the acceptance.
    let new_primary = c.standby("s1").wallet_dsn();
    let (code, line, _) = cli(&[
        "check",
        "--dsn",
        &new_primary,
        "--accept-no-standby-until",
        &accept,
    ]);
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("no-replica-accepted"), "{line}");
    let (code, line, _) = cli(&["check", "--dsn", &new_primary]);
    assert_eq!(code, 2, "{line}");
    assert!(line.contains("sync-names-empty"), "{line}");
}

#[test]
fn evidence_is_written_on_change_only_and_reaches_the_standby() {
    let c = start(&ClusterSpec::pair());
    let count = |s: &Server| sql_on_wallet_db(s, "SELECT count(*) FROM replguard.evidence");
    check_and_record(&c);
    check_and_record(&c);
    assert_eq!(
        count(&c.primary),
        "1",
        "an unchanged verdict writes nothing"
    );
    c.wait_commits_flow().unwrap();
    wait_for("the row on the standby", Duration::from_secs(10), || {
        Ok(count(c.standby("s1")) == "1")
    })
    .unwrap();
    let row = sql_on_wallet_db(
        c.standby("s1"),
        "SELECT level, covered FROM replguard.evidence",
    );
    assert_eq!(row, "safe|{s1}");
    c.set_sync_names("").unwrap();
    check_and_record(&c);
    assert_eq!(count(&c.primary), "2");
}

#[test]
fn a_cold_copy_of_the_data_directory_does_not_pass_for_the_stopped_old_primary() {
    let c = start(&ClusterSpec::pair());
    check_and_record(&c);
    c.wait_commits_flow().unwrap();
    wait_for_rows(c.standby("s1"), "1");
    // A copy shares the cluster's system identifier, and no postmaster runs in it.
    let copy = c.scratch_dir("copy").unwrap().join("data");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(&c.primary.datadir)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(cp.success());
    std::fs::remove_file(copy.join("postmaster.pid")).unwrap();
    let rpc = c
        .scratch_dir("no-lightningd")
        .unwrap()
        .join("lightning-rpc");
    let (code, out, err) = cli(&[
        "failover",
        "--standby-dsn",
        &admin_dsn(c.standby("s1")),
        "--old-primary-data",
        &copy.display().to_string(),
        "--lightning-rpc",
        &rpc.display().to_string(),
        "--then",
        "wait-for-standby",
        "--timeout",
        "10",
    ]);
    assert_eq!(code, 2, "refused: {out}{err}");
    assert!(out.contains("still answers"), "{out}");
    assert!(in_recovery(c.standby("s1")), "nothing promoted");
    assert!(!in_recovery(&c.primary), "the real primary untouched");
}

/// An earlier version wrote through the monitoring DSN, so its role may own the table. The
/// writer names the hand-over to run, and no row is trusted while another role can write.
#[test]
fn an_evidence_table_another_role_can_write_is_named_and_not_trusted() {
    let c = start(&ClusterSpec::pair());
    old_evidence_table(&c, "watcher", "");
    let record = || {
        let (_, _, err) = cli(&[
            "check",
            "--record-evidence",
            "--dsn",
            &c.primary.wallet_dsn(),
        ]);
        err
    };
    let err = record();
    assert!(
        err.contains("not wholly lightningd's") && err.contains("DROP SCHEMA replguard CASCADE"),
        "{err}"
    );
    // Started afresh as the message says: the writer creates its own table.
    sql_on_wallet_db(
        &c.primary,
        "DROP SCHEMA replguard CASCADE; CREATE SCHEMA replguard AUTHORIZATION lightningd",
    );
    check_and_record(&c);
    // A trigger could rewrite every row: the writer stops and says so.
    sql_on_wallet_db(
        &c.primary,
        "CREATE FUNCTION public.rewrite() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN NEW.level := 'safe'; RETURN NEW; END $$; \
         CREATE TRIGGER rewrite BEFORE INSERT ON replguard.evidence \
         FOR EACH ROW EXECUTE FUNCTION public.rewrite()",
    );
    let err = record();
    assert!(err.contains("trigger or rule"), "{err}");
    sql_on_wallet_db(&c.primary, "DROP TRIGGER rewrite ON replguard.evidence");
    // Another role may write: rows are written, not trusted.
    sql_on_wallet_db(&c.primary, "GRANT INSERT ON replguard.evidence TO watcher");
    refused_as_forgeable_by_watcher(&c);
}

/// A table the monitoring role owns, with a row it wrote: the owner is not the role that owns
/// lightningd's tables, so the row is not trusted (second review: it was, and promoted).
#[test]
fn rows_in_a_table_the_monitoring_role_owns_are_not_trusted() {
    let c = start(&ClusterSpec::pair());
    let sysid = c.primary.system_identifier().unwrap();
    old_evidence_table(
        &c,
        "watcher",
        &format!(
            "ALTER TABLE replguard.evidence ADD COLUMN sync_names text; \
             INSERT INTO replguard.evidence (level, codes, covered, timeline, \
             system_identifier, source, sync_names) \
             VALUES ('safe', '{{}}', '{{s1}}', 1, '{sysid}', 'plugin', 'FIRST 1 (s1)')"
        ),
    );
    refused_as_forgeable_by_watcher(&c);
}

/// A wallet role whose name needs quoting in SQL still owns and writes its table, change
/// after change (second review: the names were compared as text, quoted against unquoted).
#[test]
fn a_wallet_role_whose_name_needs_quoting_keeps_writing() {
    let c = start(&ClusterSpec::pair());
    c.primary
        .psql("CREATE ROLE \"Cln-Wallet\" LOGIN; GRANT pg_monitor TO \"Cln-Wallet\"")
        .unwrap();
    sql_on_wallet_db(
        &c.primary,
        "GRANT CREATE ON DATABASE lightningd TO \"Cln-Wallet\"",
    );
    let dsn = format!(
        "postgres://{}",
        c.primary.conninfo("Cln-Wallet", "lightningd")
    );
    let record = || {
        let (_, _, err) = cli(&["check", "--record-evidence", "--dsn", &dsn]);
        assert!(!err.contains("cannot record evidence"), "{err}");
    };
    record();
    c.set_sync_names("").unwrap();
    record();
    assert_eq!(
        sql_on_wallet_db(&c.primary, "SELECT count(*) FROM replguard.evidence"),
        "2"
    );
}

/// PostgreSQL counts WAL senders, not names: with two standbys streaming as `a` (as two with
/// libpq's default name would), `ANY 1 (a)` lets either acknowledge alone. No row may then
/// vouch for `a` (found by the second review of issue 11).
#[test]
fn two_standbys_under_one_name_are_never_vouched_for() {
    let c = start(&ClusterSpec::with_standbys(&["a", "b"], ""));
    let b = c.standby("b");
    let conninfo = format!(
        "{} application_name=a",
        c.primary.conninfo("postgres", "postgres")
    );
    b.psql(&format!("ALTER SYSTEM SET primary_conninfo = '{conninfo}'"))
        .unwrap();
    b.reload().unwrap();
    wait_for("two senders named a", Duration::from_secs(30), || {
        Ok(c.primary.psql(
            "SELECT count(*) FROM pg_stat_replication \
              WHERE application_name = 'a' AND state = 'streaming'",
        )? == "2")
    })
    .unwrap();
    c.set_sync_names("ANY 1 (a)").unwrap();
    c.wait_commits_flow().unwrap();
    check_and_record(&c);
    c.wait_commits_flow().unwrap();
    wait_for_rows(c.standby("a"), "1");
    // The real `a` goes; the next commit is acknowledged by `b` alone; the primary is lost.
    c.standby("a").stop().unwrap();
    psql_as(
        &c.primary,
        "lightningd",
        "CREATE TABLE after_a (x int); INSERT INTO after_a VALUES (1)",
    )
    .unwrap();
    c.primary.crash().unwrap();
    c.standby("a").start().unwrap();
    let (code, out) = failover_to(&c, "a", &["--then", "wait-for-standby"]);
    assert_eq!(code, 2, "refused: {out}");
    assert!(in_recovery(c.standby("a")), "nothing promoted: {out}");
}

#[test]
fn a_row_under_first_1_of_2_does_not_vouch_for_a_standby_postgres_replaced() {
    let c = start(&ClusterSpec::with_standbys(&["a", "b"], "FIRST 1 (a, b)"));
    c.wait_commits_flow().unwrap();
    let (code, line) = check_and_record(&c);
    assert!(code <= 1, "the pair is good when recorded: {line}");
    c.wait_commits_flow().unwrap();
    wait_for_rows(c.standby("a"), "1");
    // `a` goes: PostgreSQL makes `b` synchronous on its own, and this commit is acknowledged
    // by `b` alone. Then the primary is lost.
    c.standby("a").stop().unwrap();
    c.primary
        .psql("CREATE TABLE after_a (x int); INSERT INTO after_a VALUES (1)")
        .unwrap();
    c.primary.crash().unwrap();
    c.standby("a").start().unwrap();
    let (code, out) = failover_to(&c, "a", &["--then", "wait-for-standby"]);
    assert_eq!(code, 2, "refused: {out}");
    assert!(
        out.contains("FIRST 1 (a, b)") && out.contains("--accept-unverified"),
        "{out}"
    );
    assert!(in_recovery(c.standby("a")), "nothing promoted");
}

#[test]
fn the_evidence_is_ordered_by_the_server_trimmed_by_count_and_written_by_its_owner_only() {
    let c = start(&ClusterSpec::pair());
    // An earlier version's table, with a row whose id a client chose.
    old_evidence_table(
        &c,
        "lightningd",
        "INSERT INTO replguard.evidence (id, level, codes, covered, source) \
         SELECT g, 'unknown', '{}', '{}', 'old' FROM generate_series(1, 1005) g",
    );
    check_and_record(&c);
    let newest = "SELECT source || '/' || level FROM replguard.evidence ORDER BY id DESC LIMIT 1";
    assert_eq!(
        psql_as(&c.primary, "lightningd", newest).unwrap(),
        "check/safe"
    );
    assert_eq!(
        psql_as(
            &c.primary,
            "lightningd",
            "SELECT count(*) FROM replguard.evidence"
        )
        .unwrap(),
        "1000",
        "the newest 1000 rows are kept"
    );
    // No client can choose a row's place, not even the writer.
    let forged = "INSERT INTO replguard.evidence (id, level, codes, covered, source) \
                  VALUES (9000000000000000000, 'safe', '{}', '{s1}', 'forged')";
    let e = psql_as(&c.primary, "lightningd", forged).unwrap_err();
    assert!(e.contains("GENERATED ALWAYS"), "{e}");
    // A monitoring role reads, and cannot write.
    c.primary
        .psql("CREATE ROLE watcher LOGIN; GRANT pg_monitor TO watcher")
        .unwrap();
    assert_eq!(
        psql_as(&c.primary, "watcher", newest).unwrap(),
        "check/safe",
        "readable by anyone"
    );
    let e = psql_as(
        &c.primary,
        "watcher",
        "INSERT INTO replguard.evidence (level, codes, covered, source) \
         VALUES ('safe', '{}', '{s1}', 'forged')",
    )
    .unwrap_err();
    assert!(e.contains("permission denied"), "{e}");
    // A verdict recorded through a monitoring DSN is refused, and says so.
    c.set_sync_names("").unwrap();
    let (_, _, err) = cli(&[
        "check",
        "--record-evidence",
        "--dsn",
        &format!("postgres://{}", c.primary.conninfo("watcher", "lightningd")),
    ]);
    assert!(err.contains("cannot record evidence"), "{err}");
    assert_eq!(
        psql_as(&c.primary, "lightningd", newest).unwrap(),
        "check/safe"
    );
}

/// Stops the servers `setup local` started, even when the test fails.
struct LocalPair {
    dir: tempfile::TempDir,
}

impl LocalPair {
    fn data(&self, which: &str) -> std::path::PathBuf {
        self.dir.path().join(which).join("data")
    }

    fn sock(&self, which: &str) -> String {
        self.dir
            .path()
            .join(which)
            .join("sock")
            .display()
            .to_string()
    }
}

impl Drop for LocalPair {
    fn drop(&mut self) {
        let pg = cln_replguard::cluster::PgInstall::find().unwrap();
        for which in ["primary", "standby"] {
            let _ = pg
                .tool("pg_ctl")
                .arg("-D")
                .arg(self.data(which))
                .args(["stop", "-m", "immediate", "-w"])
                .output();
        }
    }
}

#[test]
fn setup_local_then_failover_then_the_old_primary_rejoins_and_the_pair_is_safe_again() {
    let pair = LocalPair {
        dir: tempfile::Builder::new()
            .prefix("replguard-setup-")
            .tempdir()
            .unwrap(),
    };
    let dir = pair.dir.path().display().to_string();
    let (pp, sp) = (free_port().to_string(), free_port().to_string());
    let setup = [
        "setup",
        "local",
        "--dir",
        &dir,
        "--primary-port",
        &pp,
        "--standby-port",
        &sp,
    ];
    let (code, out, err) = cli(&setup);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("REPLGUARD SAFE"), "{out}");
    // Again: nothing rebuilt, still safe.
    let (code, out, err) = cli(&setup);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("initdb") && !out.contains("clone"), "{out}");

    // The primary dies; the standby takes over, alone for a while.
    let primary_pid: i32 = std::fs::read_to_string(pair.data("primary").join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: SIGKILL to the process group of the postmaster this test started.
    unsafe { libc::kill(-primary_pid, libc::SIGKILL) };
    wait_for("the old primary gone", Duration::from_secs(10), || {
        Ok(!cln_replguard::pgbin::process_alive(primary_pid))
    })
    .unwrap();
    let new_admin = format!(
        "host={} port={sp} user=postgres dbname=postgres",
        pair.sock("standby")
    );
    let (code, out, err) = cli(&[
        "failover",
        "--standby-dsn",
        &format!(
            "host={} port={sp} user=postgres dbname=lightningd",
            pair.sock("standby")
        ),
        "--old-primary-data",
        &pair.data("primary").display().to_string(),
        "--lightning-rpc",
        &format!("{dir}/no-lightningd-rpc"),
        "--then",
        "wait-for-standby",
    ]);
    assert_eq!(code, 0, "{out}{err}");

    // Back to a pair: the new primary prepares for the old one, which is rewound and
    // rejoins; then the new primary names it.
    let new_data = pair.data("standby").display().to_string();
    let rejoin = [
        "setup", "primary", "--pgdata", &new_data, "--admin", &new_admin, "--name", "p1",
        "--rejoin", "--apply",
    ];
    let (code, out, err) = cli(&rejoin);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains("restarting"),
        "--rejoin never restarts: {out}"
    );
    assert!(
        out.contains("p1 does not stream yet"),
        "not named before it streams: {out}"
    );
    let (code, out, err) = cli(&[
        "setup",
        "standby",
        "--pgdata",
        &pair.data("primary").display().to_string(),
        "--primary-host",
        &pair.sock("standby"),
        "--primary-port",
        &sp,
        "--name",
        "p1",
        "--port",
        &pp,
        "--socket-dir",
        &pair.sock("primary"),
        "--listen",
        "",
        "--rewind",
        "--apply",
    ]);
    let log =
        std::fs::read_to_string(pair.dir.path().join("primary/server.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    assert_eq!(code, 0, "{out}{err}\n--- log:\n{}", tail.join("\n"));
    assert!(out.contains("pg_rewind"), "{out}");
    // The new primary names it, now that it streams.
    let (code, out, err) = cli(&rejoin);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("FIRST 1 (p1)"), "named once it streams: {out}");
    let new_wallet = format!(
        "postgres://host={} port={sp} user=lightningd dbname=lightningd",
        pair.sock("standby")
    );
    let (code, line, _) = cli(&["check", "--dsn", &new_wallet]);
    assert_eq!(code, 0, "{line}");
}
