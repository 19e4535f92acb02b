//! Failover trials on a real Patroni cluster: the leader's host is lost (Patroni and
//! PostgreSQL SIGKILLed together) while a writer commits through synchronous replication;
//! Patroni promotes the member in /sync; every commit the writer saw acknowledged must be on
//! the new leader. Ten trials alternate the leader (REPLGUARD_PATRONI_TRIALS for more). The
//! negative control (synchronous mode off, the link to the standby hung) shows the trial
//! can see a loss — and `check` called that cluster unsafe beforehand.

mod patroni_support;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use patroni_support::{PatroniCluster, PatroniSpec, ms_since};

/// A writer committing numbered rows one by one on `conninfo`; what was acknowledged is kept.
struct Writer {
    acked: Arc<Mutex<Vec<i64>>>,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<String>>,
}

impl Writer {
    fn start(conninfo: String, first: i64) -> Writer {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let count = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (a, c, s) = (acked.clone(), count.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (client, conn) =
                    match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
                        Ok(x) => x,
                        Err(e) => return format!("connect: {e}"),
                    };
                tokio::spawn(conn);
                let mut n = first;
                while !s.load(Ordering::SeqCst) {
                    // Bounded: a commit that waits forever is not acknowledged.
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&n];
                    let insert = client.execute("INSERT INTO trial (n) VALUES ($1)", &params);
                    match tokio::time::timeout(Duration::from_secs(30), insert).await {
                        Ok(Ok(_)) => {
                            a.lock().unwrap().push(n);
                            c.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Err(e)) => return format!("ended at {n}: {e}"),
                        Err(_) => return format!("commit {n} not acknowledged within 30 s"),
                    }
                    n += 1;
                }
                "stopped".to_string()
            })
        });
        Writer {
            acked,
            count,
            stop,
            thread: Some(thread),
        }
    }

    fn wait_acked(&self, n: u64, c: &PatroniCluster) {
        c.wait("the writer's commits", Duration::from_secs(30), || {
            Ok(self.count.load(Ordering::SeqCst) >= n)
        });
    }

    /// Waits for the writer to end (its server is gone); the acknowledged rows.
    fn finish(mut self) -> (Vec<i64>, String) {
        self.stop.store(true, Ordering::SeqCst);
        let why = self.thread.take().unwrap().join().unwrap();
        let acked = self.acked.lock().unwrap().clone();
        (acked, why)
    }
}

fn other(name: &str) -> &'static str {
    if name == "n1" { "n2" } else { "n1" }
}

/// Acknowledged rows missing on `node`.
fn missing_on(c: &PatroniCluster, node: &str, acked: &[i64]) -> Vec<i64> {
    let present: std::collections::HashSet<i64> = c
        .psql_db(c.node(node), "lightningd", "SELECT n FROM trial")
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    acked
        .iter()
        .copied()
        .filter(|n| !present.contains(n))
        .collect()
}

/// One trial: the leader's host is lost while the writer commits. Returns (acknowledged,
/// lost, ms from the kill to the new leader).
fn trial(c: &PatroniCluster, leader: &str, first: i64) -> (usize, Vec<i64>, f64) {
    let w = Writer::start(c.node(leader).conninfo("lightningd", "lightningd"), first);
    w.wait_acked(20, c);
    c.kill_node(leader).unwrap();
    let killed = Instant::now();
    let (acked, why) = w.finish();
    let new = other(leader);
    c.wait(
        "the replica to be promoted",
        Duration::from_secs(90),
        || {
            Ok(c.get(new, "/leader")?.0 == 200
                && c.psql(c.node(new), "SELECT pg_is_in_recovery()")? == "f")
        },
    );
    let promoted_ms = ms_since(killed);
    let lost = missing_on(c, new, &acked);
    eprintln!(
        "trial: {} acknowledged on {leader} (writer: {why}), {} lost; {new} promoted {promoted_ms:.0} ms after the kill",
        acked.len(),
        lost.len()
    );
    (acked.len(), lost, promoted_ms)
}

fn create_table(c: &PatroniCluster) {
    c.psql_db(
        c.node("n1"),
        "lightningd",
        "CREATE TABLE trial (n bigint PRIMARY KEY); ALTER TABLE trial OWNER TO lightningd",
    )
    .unwrap();
}

#[test]
#[ignore = "ten host-loss failovers take about 5 minutes (Patroni's ttl is at least 20 s each): .ci/run runs them with --ignored"]
fn losing_the_leaders_host_while_committing_loses_no_acknowledged_commit() {
    let trials: usize = std::env::var("REPLGUARD_PATRONI_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let c = PatroniCluster::start(&PatroniSpec::strict(2));
    create_table(&c);
    let mut leader = "n1";
    let mut promoted = Vec::new();
    let mut total_acked = 0;
    for i in 0..trials {
        let (acked, lost, ms) = trial(&c, leader, (i as i64 + 1) * 1_000_000);
        assert!(
            lost.is_empty(),
            "trial {i}: acknowledged commits lost: {lost:?}"
        );
        total_acked += acked;
        promoted.push(ms);
        // The old leader's host comes back: it rejoins as a replica (pg_rewind).
        c.start_patroni(leader).unwrap();
        c.wait_sync_standby(Duration::from_secs(90)).unwrap();
        leader = other(leader);
    }
    promoted.sort_by(f64::total_cmp);
    eprintln!(
        "patroni trials: {trials}, {total_acked} acknowledged commits, 0 lost; kill -> promoted: median {:.0} ms, worst {:.0} ms",
        promoted[promoted.len() / 2],
        promoted[promoted.len() - 1]
    );
}

/// Negative control: synchronous mode off and the link to the replica hung first (its WAL
/// sender stopped). `check` says unsafe beforehand, and the same trial then loses
/// acknowledged commits.
#[test]
fn negative_control_async_patroni_with_a_hung_standby_loses_commits() {
    let c = PatroniCluster::start(&PatroniSpec {
        synchronous_mode: false,
        synchronous_mode_strict: false,
        ..PatroniSpec::strict(2)
    });
    create_table(&c);
    let dsn = c.node("n1").wallet_dsn();
    let url = c.node("n1").api_url();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cln-replguard"))
        .args(["check", "--dsn", &dsn, "--patroni-url", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("patroni-sync-mode-off"), "{text}");

    // The replication link hangs: n1's WAL sender to n2 is stopped, so nothing written from
    // now on reaches n2 (stopping n2's WAL receiver instead leaves the WAL in its socket
    // buffer, read once it resumes).
    let sender: i32 = c
        .psql(
            c.node("n1"),
            "SELECT pid FROM pg_stat_replication WHERE application_name = 'n2'",
        )
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: a WAL sender of a server this test's Patroni started; it dies with n1.
    unsafe { libc::kill(sender, libc::SIGSTOP) };
    let w = Writer::start(c.node("n1").conninfo("lightningd", "lightningd"), 1);
    w.wait_acked(50, &c);
    c.kill_node("n1").unwrap();
    let (acked, why) = w.finish();
    c.wait(
        "the replica to be promoted",
        Duration::from_secs(90),
        || {
            Ok(c.get("n2", "/leader")?.0 == 200
                && c.psql(c.node("n2"), "SELECT pg_is_in_recovery()")? == "f")
        },
    );
    let lost = missing_on(&c, "n2", &acked);
    eprintln!(
        "negative control: {} acknowledged (writer: {why}), {} lost",
        acked.len(),
        lost.len()
    );
    assert!(
        !lost.is_empty(),
        "the control lost nothing: the trial could not see a loss"
    );
}
