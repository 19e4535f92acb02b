//! Benchmarks: how fast it checks, how fast it notices, what it costs. `cargo bench` prints
//! the table BENCHMARKS.md reports. Real clusters (the test harness), the built plugin under
//! the fake lightningd; alternating runs where two setups are compared.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/fake_lightningd/mod.rs"]
mod fake_lightningd;

use std::process::Command;
use std::time::{Duration, Instant};

use cln_replguard::cluster::{Cluster, ClusterSpec, Daemon, wait_for};
use fake_lightningd::{Fake, InitOutcome, Setup};
use serde_json::{Value, json};

struct Row {
    what: String,
    result: String,
    target: String,
    met: Option<bool>,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn started(c: &Cluster) -> (Fake, f64) {
    let mut f = Fake::start(Setup::new(&c.primary.wallet_dsn()));
    f.getmanifest();
    let t = Instant::now();
    let o = f.init(Duration::from_secs(30));
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(matches!(&o, InitOutcome::Answered(_)), "{o:?}");
    (f, ms)
}

fn status(f: &Fake) -> Value {
    let p = f.dir.path().join("replguard-status.json");
    std::fs::read_to_string(p)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

/// From the fault to the status file saying not safe (or lightningd stopped).
fn time_to_notice(f: &Fake, fault: impl FnOnce()) -> f64 {
    wait_for("safe", Duration::from_secs(30), || {
        Ok(status(f)["reported"] == "safe")
    })
    .unwrap();
    let t = Instant::now();
    fault();
    wait_for("not safe", Duration::from_secs(30), || {
        Ok(status(f)["reported"].as_str().is_some_and(|r| r != "safe") || f.stopped())
    })
    .unwrap();
    t.elapsed().as_secs_f64() * 1000.0
}

fn proc_stat(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (ticks / 100.0, rss_kb)
}

fn plugin_pid(f: &Fake) -> u32 {
    let out = Command::new("pgrep")
        .args(["-P", &f.child_id().to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn pgbench_tps(c: &Cluster, seconds: u32) -> f64 {
    let out = Command::new(c.bindir().join("pgbench"))
        .args(["-n", "-c", "4", "-j", "2", "-T", &seconds.to_string(), "-d"])
        .arg(c.primary.conninfo("postgres", "postgres"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("pgbench: {text}{}", String::from_utf8_lossy(&out.stderr)))
}

fn main() {
    // `cargo bench --bench replguard -- wal notice` runs only those sections (all by default).
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |section: &str| wanted.is_empty() || wanted.iter().any(|w| w == section);
    let mut rows = Vec::new();
    let healthy = |spec: &ClusterSpec| -> (Cluster, Daemon) {
        let c = common::start(spec);
        let s = fake_lightningd::lightningd_session(&c);
        (c, s)
    };

    // 1. Startup check through the fake lightningd, and the whole `check` process.
    if run("speed") {
        let (c, _s) = healthy(&ClusterSpec::pair());
        let mut init_ms: Vec<f64> = (0..50).map(|_| started(&c).1).collect();
        let med = percentile(&mut init_ms, 0.5);
        rows.push(Row {
            what: "startup check: init → answer, healthy loopback pair (50 runs)".into(),
            result: format!(
                "median {med:.1} ms, p99 {:.1} ms",
                percentile(&mut init_ms, 0.99)
            ),
            target: "median ≤ 20 ms".into(),
            met: Some(med <= 20.0),
        });
        let mut check_ms: Vec<f64> = (0..50)
            .map(|_| {
                let t = Instant::now();
                let (code, _, _) = common::cli(&["check", "--dsn", &c.primary.wallet_dsn()]);
                assert_eq!(code, 0);
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        rows.push(Row {
            what: "`cln-replguard check` whole process (50 runs)".into(),
            result: format!(
                "median {:.1} ms, p99 {:.1} ms",
                percentile(&mut check_ms, 0.5),
                percentile(&mut check_ms, 0.99)
            ),
            target: "-".into(),
            met: None,
        });

        // 2. replication-status round trip.
        let (mut f, _) = started(&c);
        wait_for("a report", Duration::from_secs(10), || {
            Ok(status(&f)["reported"] == "safe")
        })
        .unwrap();
        let mut rs: Vec<f64> = (0..200)
            .map(|_| {
                let t = Instant::now();
                let r = f.call("replication-status", json!({}));
                assert!(r["result"].is_object());
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        let med = percentile(&mut rs, 0.5);
        rows.push(Row {
            what: "`replication-status` round trip via the fake lightningd (200 calls)".into(),
            result: format!(
                "median {med:.2} ms, p99 {:.2} ms",
                percentile(&mut rs, 0.99)
            ),
            target: "median ≤ 5 ms".into(),
            met: Some(med <= 5.0),
        });

        // 3. Plugin RSS and CPU over 60 s idle (monitor at defaults).
        let pid = plugin_pid(&f);
        let (cpu0, _) = proc_stat(pid);
        std::thread::sleep(Duration::from_secs(60));
        let (cpu1, rss) = proc_stat(pid);
        let cpu_pct = (cpu1 - cpu0) / 60.0 * 100.0;
        rows.push(Row {
            what: "plugin RSS after 60 s idle".into(),
            result: format!("{:.1} MB", rss as f64 / 1024.0),
            target: "≤ 15 MB".into(),
            met: Some(rss as f64 / 1024.0 <= 15.0),
        });
        rows.push(Row {
            what: "plugin CPU over 60 s idle (1 check/s, default standby settings)".into(),
            result: format!("{cpu_pct:.2} % of a core"),
            target: "≤ 0.5 %".into(),
            met: Some(cpu_pct <= 0.5),
        });

        // 4. TPS cost: pgbench through synchronous replication, monitor on vs off, alternating.
        c.primary.psql("SELECT 1").unwrap();
        let init = Command::new(c.bindir().join("pgbench"))
            .args(["-i", "-s", "2", "-q", "-d"])
            .arg(c.primary.conninfo("postgres", "postgres"))
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        drop(f);
        let mut ratios = Vec::new();
        for _ in 0..10 {
            let off = pgbench_tps(&c, 5);
            let (f, _) = started(&c);
            let on = pgbench_tps(&c, 5);
            drop(f);
            ratios.push(on / off);
        }
        let med = percentile(&mut ratios, 0.5);
        rows.push(Row {
        what:
            "pgbench TPS, monitor on / off (10 alternating 5 s runs, 4 clients, sync replication)"
                .into(),
        result: format!(
            "ratio median {med:.3} (min {:.3}, max {:.3})",
            ratios[0],
            ratios[ratios.len() - 1]
        ),
        target: "≥ 0.97".into(),
        met: Some(med >= 0.97),
    });
        drop(c);
    }

    // 5. Time to notice, per fault, 10 repetitions (5 for promotion: each needs a new pair).
    if run("notice") {
        let (c, _s) = healthy(&ClusterSpec::pair());
        let (f, _) = started(&c);
        let mut hung: Vec<f64> = (0..10)
            .map(|_| {
                let ms = time_to_notice(&f, || {
                    c.standby("s1").hang_walreceiver().unwrap();
                });
                c.standby("s1").resume();
                c.wait_commits_flow().unwrap();
                ms
            })
            .collect();
        let (hm, hw) = (percentile(&mut hung, 0.5), percentile(&mut hung, 1.0));
        rows.push(Row {
        what: "hung standby (SIGSTOP walreceiver) noticed, 10 runs".into(),
        result: format!("median {hm:.0} ms, worst {hw:.0} ms"),
        target:
            "median ≤ 2 s, worst ≤ 3 s (PostgreSQL: streaming/sync until wal_sender_timeout, 60 s)"
                .into(),
        met: Some(hm <= 2000.0 && hw <= 3000.0),
    });
        let mut down: Vec<f64> = (0..10)
            .map(|_| {
                let ms = time_to_notice(&f, || {
                    c.primary
                        .psql("ALTER SYSTEM SET synchronous_standby_names = ''")
                        .unwrap();
                    c.primary.reload().unwrap();
                });
                c.set_sync_names("FIRST 1 (s1)").unwrap();
                ms
            })
            .collect();
        let (dm, dw) = (percentile(&mut down, 0.5), percentile(&mut down, 1.0));
        rows.push(Row {
            what: "silent downgrade (sync names emptied + reload) noticed, 10 runs".into(),
            result: format!("median {dm:.0} ms, worst {dw:.0} ms"),
            target: "median ≤ 2 s, worst ≤ 3 s".into(),
            met: Some(dm <= 2000.0 && dw <= 3000.0),
        });
        let mut stopped: Vec<f64> = (0..10)
            .map(|_| {
                let ms = time_to_notice(&f, || c.standby("s1").stop().unwrap());
                c.standby("s1").start().unwrap();
                c.wait_commits_flow().unwrap();
                ms
            })
            .collect();
        rows.push(Row {
            what: "standby stopped noticed, 10 runs".into(),
            result: format!(
                "median {:.0} ms, worst {:.0} ms",
                percentile(&mut stopped, 0.5),
                percentile(&mut stopped, 1.0)
            ),
            target: "-".into(),
            met: None,
        });
        drop(f);
        drop(c);
        let mut promoted: Vec<f64> = (0..5)
            .map(|_| {
                let (c, _s) = healthy(&ClusterSpec::pair());
                let standby = c.standby("s1").conninfo("postgres", "postgres");
                let mut f = Fake::start(
                    Setup::new(&c.primary.wallet_dsn())
                        .option("replguard-standby-dsn", json!([standby])),
                );
                f.getmanifest();
                assert!(matches!(
                    f.init(Duration::from_secs(30)),
                    InitOutcome::Answered(_)
                ));
                let ms = time_to_notice(&f, || {
                    c.standby("s1").psql("SELECT pg_promote(true, 30)").unwrap();
                });
                wait_for("stop", Duration::from_secs(10), || Ok(f.stopped())).unwrap();
                ms
            })
            .collect();
        rows.push(Row {
            what: "promoted standby → lightningd stopped (self-fence), 5 runs".into(),
            result: format!(
                "median {:.0} ms, worst {:.0} ms",
                percentile(&mut promoted, 0.5),
                percentile(&mut promoted, 1.0)
            ),
            target: "-".into(),
            met: None,
        });
    }

    // 6. What the monitor writes on an idle node with archive_timeout = 60 s and the standby
    //    replying every second (the setup tool's setting). The startup check always probes
    //    (one write at start), so the window starts after archive_timeout has passed.
    if run("wal") {
        let mut spec = ClusterSpec::pair();
        spec.standby_conf
            .push("wal_receiver_status_interval = 1s".into());
        spec.primary_conf.push("archive_timeout = 60".into());
        let (c, _s) = healthy(&spec);
        let sample = |c: &Cluster| -> (u64, u64) {
            let row = c
                .primary
                .psql("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint || ',' || archived_count FROM pg_stat_archiver")
                .unwrap();
            let (w, a) = row.split_once(',').unwrap();
            (w.parse().unwrap(), a.parse().unwrap())
        };
        let window = Duration::from_secs(60);
        std::thread::sleep(Duration::from_secs(65));
        let (w0, a0) = sample(&c);
        std::thread::sleep(window);
        let (w1, a1) = sample(&c);
        let (f, _) = started(&c);
        std::thread::sleep(Duration::from_secs(65));
        let (w2, a2) = sample(&c);
        let mut outcomes = std::collections::BTreeMap::new();
        let t = Instant::now();
        while t.elapsed() < window {
            let o = status(&f)["commit_probe"]["outcome"]
                .as_str()
                .unwrap_or("none")
                .to_string();
            *outcomes.entry(o).or_insert(0) += 1;
            std::thread::sleep(Duration::from_millis(500));
        }
        let (w3, a3) = sample(&c);
        drop(f);
        rows.push(Row {
            what: "idle node, archive_timeout = 60 s, standby replies every 1 s: 60 s window, monitor off / on".into(),
            result: format!(
                "WAL {} / {} bytes, archived segments {} / {}; probe outcomes seen: {outcomes:?}",
                w1 - w0,
                w3 - w2,
                a1 - a0,
                a3 - a2
            ),
            target: "0 archived segments per hour added by the monitor".into(),
            met: Some(a3 - a2 <= a1 - a0),
        });
    }

    println!("\n| measurement | result | target | met |\n|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} |",
            r.what,
            r.result,
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            }
        );
    }
}
