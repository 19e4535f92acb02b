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

/// A number in 0..n, different at each call (no need for a good generator: it only spreads
/// the moments of the faults).
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() % n
}

/// pgbench's tables on the primary, at this scale.
fn pgbench_init(c: &Cluster, scale: u32) {
    let init = Command::new(c.bindir().join("pgbench"))
        .args(["-i", "-s", &scale.to_string(), "-q", "-d"])
        .arg(c.primary.conninfo("postgres", "postgres"))
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
}

/// "median … ms, worst … ms" of timings in ms.
fn median_worst(v: &mut [f64]) -> String {
    format!(
        "median {:.0} ms, worst {:.0} ms",
        percentile(v, 0.5),
        percentile(v, 1.0)
    )
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

/// From the fault to the status file saying not safe (or lightningd stopped). The fault lands
/// at a random moment of the check and reply cycle: right after "safe" is seen would always be
/// right after a check (the repetition before ends when a check says safe again), one phase
/// of the cycle only.
fn time_to_notice(f: &Fake, fault: impl FnOnce()) -> f64 {
    wait_for("safe", Duration::from_secs(30), || {
        Ok(status(f)["reported"] == "safe")
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(random_below(1500)));
    assert_eq!(status(f)["reported"], "safe", "still safe before the fault");
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
        pgbench_init(&c, 2);
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
    if run("htlc") {
        htlc_latency(&mut rows, &healthy(&ClusterSpec::pair()).0);
    }

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
            result: median_worst(&mut stopped),
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
            result: median_worst(&mut promoted),
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

    // 7. The same pair seen by check_postgres (hot_standby_delay) and by `cln-replguard check`.
    if run("compare") {
        compare(&mut rows);
    }

    // 8. How long PostgreSQL itself shows a hung standby as streaming/sync.
    if run("pgdetect") {
        pgdetect(&mut rows);
    }

    // 9. A standby behind a veth pair whose link goes down (network namespaces).
    if run("netns") {
        netns(&mut rows);
    }

    println!("\n| measurement | result | target | met |\n|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} |",
            r.what.replace('|', "\\|"),
            r.result.replace('|', "\\|"),
            r.target.replace('|', "\\|"),
            match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            }
        );
    }
}

/// `cln-replguard check` on a DSN: (exit status, first line without perfdata, whole process ms).
/// What the `htlc_accepted` hook adds to an incoming HTLC: its round trip through the fake
/// lightningd with payments gated (the only configuration that registers it), on a safe pair.
/// Without gating the hook is not in the manifest: lightningd never calls it, it adds nothing.
fn htlc_latency(rows: &mut Vec<Row>, c: &Cluster) {
    let htlc = json!({"onion": {"payload": "", "type": "tlv", "forward_msat": 1000,
        "outgoing_cltv_value": 500, "shared_secret": "00", "next_onion": "00"},
        "htlc": {"short_channel_id": "1x1x1", "id": 0, "amount_msat": 1001, "cltv_expiry": 510,
        "cltv_expiry_relative": 10, "payment_hash": "00"}, "forward_to": "00"});
    for gated in [false, true] {
        let mut setup = Setup::new(&c.primary.wallet_dsn());
        if gated {
            setup = setup.option("replguard-gate-payments", json!(true));
            setup.config = Some("replguard-gate-payments=true\n".into());
        }
        let mut f = Fake::start(setup);
        let registered = f.getmanifest()["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["name"] == "htlc_accepted");
        assert_eq!(registered, gated);
        assert!(matches!(
            f.init(Duration::from_secs(30)),
            InitOutcome::Answered(_)
        ));
        if !gated {
            rows.push(Row {
                what: "`htlc_accepted` with `replguard-gate-payments=false` (default)".into(),
                result: "not registered: lightningd never calls the plugin, 0 added".into(),
                target: "0".into(),
                met: Some(true),
            });
            continue;
        }
        let mut ms: Vec<f64> = (0..1000)
            .map(|_| {
                let t = Instant::now();
                let r = f.hook("htlc_accepted", htlc.clone());
                assert_eq!(r["result"], "continue", "{r}");
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        rows.push(Row {
            what: "`htlc_accepted` round trip via the fake lightningd, payments gated, safe (1000 HTLCs)".into(),
            result: format!(
                "median {:.3} ms, p99 {:.3} ms",
                percentile(&mut ms, 0.5),
                percentile(&mut ms, 0.99)
            ),
            target: "-".into(),
            met: None,
        });
    }
}

fn replguard_check(dsn: &str) -> (i32, String, f64) {
    let t = Instant::now();
    let (code, out, err) = common::cli(&["check", "--dsn", dsn]);
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let text = if out.trim().is_empty() { err } else { out };
    (code, first_line(&text), ms)
}

/// The first line of a monitoring plugin's output, without the perfdata after ` | `.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("").trim();
    line.split(" | ").next().unwrap_or("").trim().to_string()
}

fn median_p99(v: &mut [f64]) -> String {
    format!(
        "median {:.1} ms, p99 {:.1} ms",
        percentile(v, 0.5),
        percentile(v, 0.99)
    )
}

/// check_postgres from the Debian package `check-postgres` (or a `check_postgres.pl` on the
/// PATH): the program, and whether `--action` has to be given.
fn find_check_postgres() -> Option<(std::path::PathBuf, bool)> {
    let path = std::env::var_os("PATH")?;
    for (name, needs_action) in [
        ("check_postgres", true),
        ("check_postgres.pl", true),
        ("check_postgres_hot_standby_delay", false),
    ] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some((p, needs_action));
            }
        }
    }
    None
}

/// `check_postgres --action=hot_standby_delay` on the pair (primary first, standby second),
/// with the thresholds of its documentation's third example (bytes *and* time, so that an
/// idle primary does not alarm): (exit status, first line, whole process ms).
fn check_postgres_run(cp: &(std::path::PathBuf, bool), c: &Cluster) -> (i32, String, f64) {
    let (p, s) = (&c.primary, c.standby("s1"));
    let mut cmd = Command::new(&cp.0);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("PG") {
            cmd.env_remove(k);
        }
    }
    if cp.1 {
        cmd.arg("--action=hot_standby_delay");
    }
    cmd.arg(format!(
        "--dbhost={},{}",
        p.socket_dir.display(),
        s.socket_dir.display()
    ))
    .arg(format!("--dbport={},{}", p.port, s.port))
    .args([
        "--dbuser=postgres",
        "--dbname=postgres",
        "--warning=1048576 and 2 min",
        "--critical=16777216 and 10 min",
    ]);
    let t = Instant::now();
    let out = cmd.output().expect("run check_postgres");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    // The sandbox's socket paths make the line long and say nothing.
    let sandbox = p.socket_dir.parent().and_then(|d| d.parent());
    if let Some(d) = sandbox {
        text = text.replace(&d.display().to_string(), "…");
    }
    (out.status.code().unwrap_or(-1), first_line(&text), ms)
}

fn compare(rows: &mut Vec<Row>) {
    let Some(cp) = find_check_postgres() else {
        rows.push(Row {
            what: "`check_postgres --action=hot_standby_delay` next to `cln-replguard check`"
                .into(),
            result: "check_postgres not installed: apt-get install check-postgres".into(),
            target: "-".into(),
            met: None,
        });
        return;
    };
    let (c, _s) = {
        let c = common::start(&ClusterSpec::pair());
        let s = fake_lightningd::lightningd_session(&c);
        (c, s)
    };
    let dsn = c.primary.wallet_dsn();
    // (a) A healthy idle pair, whole process, alternating (one warm-up each first).
    check_postgres_run(&cp, &c);
    replguard_check(&dsn);
    let runs = 30;
    let (mut cp_ms, mut rg_ms) = (Vec::new(), Vec::new());
    let (mut cp_seen, mut rg_seen) = (
        std::collections::BTreeMap::new(),
        std::collections::BTreeMap::new(),
    );
    for _ in 0..runs {
        let (code, line, ms) = check_postgres_run(&cp, &c);
        cp_ms.push(ms);
        cp_seen.entry(code).or_insert(line);
        let (code, line, ms) = replguard_check(&dsn);
        rg_ms.push(ms);
        rg_seen.entry(code).or_insert(line);
    }
    let seen = |m: &std::collections::BTreeMap<i32, String>| {
        m.iter()
            .map(|(k, v)| format!("exit {k} `{v}`"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    rows.push(Row {
        what: format!(
            "healthy idle pair, whole process, {runs} alternating runs: `check_postgres --action=hot_standby_delay`"
        ),
        result: format!("{}; said {}", median_p99(&mut cp_ms), seen(&cp_seen)),
        target: "-".into(),
        met: None,
    });
    rows.push(Row {
        what: format!(
            "healthy idle pair, whole process, {runs} alternating runs: `cln-replguard check`"
        ),
        result: format!("{}; said {}", median_p99(&mut rg_ms), seen(&rg_seen)),
        target: "-".into(),
        met: None,
    });

    // (b) Hung standby (walreceiver SIGSTOPped), idle primary: each tool run once right after
    // the hang, check_postgres first (it then sees a truly idle primary; the probe of
    // `cln-replguard check` writes).
    let reps = 5;
    let (mut cp_hung, mut rg_hung) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        c.wait_commits_flow().unwrap();
        std::thread::sleep(Duration::from_secs(1));
        c.standby("s1").hang_walreceiver().unwrap();
        let t0 = Instant::now();
        let (code, line, ms) = check_postgres_run(&cp, &c);
        cp_hung.push((code, line, ms, t0.elapsed().as_secs_f64() * 1000.0));
        let t1 = Instant::now();
        let (code, line, ms) = replguard_check(&dsn);
        rg_hung.push((code, line, ms, t1.elapsed().as_secs_f64() * 1000.0));
        c.standby("s1").resume();
    }
    let summary = |v: &Vec<(i32, String, f64, f64)>| {
        let mut said = std::collections::BTreeMap::new();
        for (code, line, _, _) in v {
            said.entry(*code).or_insert((0, line.clone())).0 += 1;
        }
        let mut ms: Vec<f64> = v.iter().map(|r| r.2).collect();
        let said = said
            .iter()
            .map(|(code, (n, line))| format!("exit {code} `{line}` ({n}/{})", v.len()))
            .collect::<Vec<_>>()
            .join("; ");
        format!(
            "{said}; answer in median {:.0} ms (max {:.0} ms) after the process started",
            percentile(&mut ms, 0.5),
            percentile(&mut ms, 1.0)
        )
    };
    rows.push(Row {
        what: format!(
            "hung standby (SIGSTOP walreceiver), idle primary, {reps} runs: `check_postgres --action=hot_standby_delay` started at the hang"
        ),
        result: summary(&cp_hung),
        target: "-".into(),
        met: None,
    });
    rows.push(Row {
        what: format!(
            "hung standby (SIGSTOP walreceiver), idle primary, {reps} runs: `cln-replguard check` started at the hang"
        ),
        result: summary(&rg_hung),
        target: "-".into(),
        met: None,
    });

    // How long check_postgres goes on saying it: once a second for 75 s of one hang, past
    // wal_sender_timeout (60 s), on an idle primary with nothing else connecting.
    c.wait_commits_flow().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    c.standby("s1").hang_walreceiver().unwrap();
    let t0 = Instant::now();
    let mut polled = Vec::new();
    while t0.elapsed() < Duration::from_secs(75) {
        let at = t0.elapsed().as_secs_f64();
        let (code, line, _) = check_postgres_run(&cp, &c);
        polled.push((at, code, line));
        std::thread::sleep(Duration::from_secs(1));
    }
    c.standby("s1").resume();
    let ok = polled.iter().filter(|r| r.1 == 0).count();
    // "… <bytes> and <seconds> seconds": the replay delay in bytes.
    let delay = |line: &str| -> Option<u64> {
        line.rsplit_once(" and ")?
            .0
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    };
    let grew = polled
        .iter()
        .find(|r| delay(&r.2).is_some_and(|b| b > 8192))
        .map_or("never".to_string(), |r| format!("{:.1} s", r.0));
    let first_alarm = polled
        .iter()
        .find(|r| r.1 != 0)
        .map_or("never".to_string(), |r| {
            format!("first at {:.1} s: exit {} `{}`", r.0, r.1, r.2)
        });
    let last = polled.last().unwrap();
    rows.push(Row {
        what: "hung standby, idle primary: `check_postgres --action=hot_standby_delay` once a second for 75 s (wal_sender_timeout 60 s)".into(),
        result: format!(
            "exit 0 in {ok}/{} runs; non-OK: {first_alarm}; replay delay first over 8 KiB at {grew}; last (at {:.1} s): exit {} `{}`",
            polled.len(),
            last.0,
            last.1,
            last.2
        ),
        target: "-".into(),
        met: None,
    });
}

/// Hangs the standby `s1` and polls the primary's pg_stat_replication every 100 ms over one
/// open session until the row is no longer `streaming`/`sync`: (seconds it stayed,
/// seconds since the standby's last reply when it was hung, what the row became).
fn streaming_sync_for(c: &Cluster, hang: impl FnOnce(), limit: Duration) -> (f64, f64, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(
            &c.primary.conninfo("postgres", "postgres"),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let q = "SELECT state || '/' || sync_state, \
                        extract(epoch FROM now() - reply_time)::float8 \
                   FROM pg_stat_replication WHERE application_name = 's1'";
        let before = client.query_one(q, &[]).await.unwrap();
        let reply_age: f64 = before.get(1);
        hang();
        let t0 = Instant::now();
        loop {
            let rows = client.query(q, &[]).await.unwrap();
            let now = rows.first().map(|r| r.get::<_, String>(0));
            if now.as_deref() != Some("streaming/sync") {
                let became = now.unwrap_or_else(|| "row gone".into());
                return (t0.elapsed().as_secs_f64(), reply_age, became);
            }
            if t0.elapsed() > limit {
                return (
                    t0.elapsed().as_secs_f64(),
                    reply_age,
                    "still streaming/sync".into(),
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

fn pgdetect(rows: &mut Vec<Row>) {
    // Five pairs: three left alone, one where `cln-replguard check` runs in a loop from the
    // hang on (its probe commits are that primary's only writes), one with a writer
    // (pgbench at 50 tx/s with synchronous_commit = local, so that it keeps writing WAL at
    // the hung standby instead of blocking on its first commit).
    let pairs: Vec<(Cluster, Daemon)> = (0..5)
        .map(|_| {
            let c = common::start(&ClusterSpec::pair());
            let s = fake_lightningd::lightningd_session(&c);
            (c, s)
        })
        .collect();
    let writer_pair = &pairs[4].0;
    pgbench_init(writer_pair, 1);
    writer_pair.wait_commits_flow().unwrap();
    let limit = Duration::from_secs(120);
    let t_all = Instant::now();
    let (results, notice) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<Instant>();
        let probe_dsn = pairs[3].0.primary.wallet_dsn();
        let noticer = scope.spawn(move || {
            let t0 = rx.recv().unwrap();
            loop {
                let (code, line, _) = replguard_check(&probe_dsn);
                if code != 0 || t0.elapsed() > Duration::from_secs(90) {
                    return (t0.elapsed().as_secs_f64() * 1000.0, code, line);
                }
            }
        });
        let handles: Vec<_> = pairs
            .iter()
            .enumerate()
            .map(|(i, (c, _))| {
                let tx = tx.clone();
                scope.spawn(move || {
                    let mut writer = (i == 4).then(|| {
                        let w = Command::new(c.bindir().join("pgbench"))
                            .args(["-n", "-c", "1", "-R", "50", "-T", "150", "-d"])
                            .arg(c.primary.conninfo("postgres", "postgres"))
                            .env("PGOPTIONS", "-c synchronous_commit=local")
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::null())
                            .spawn()
                            .unwrap();
                        std::thread::sleep(Duration::from_secs(2));
                        w
                    });
                    let r = streaming_sync_for(
                        c,
                        || {
                            c.standby("s1").hang_walreceiver().unwrap();
                            if i == 3 {
                                tx.send(Instant::now()).unwrap();
                            }
                        },
                        limit,
                    );
                    if let Some(w) = writer.as_mut() {
                        let _ = w.kill();
                        let _ = w.wait();
                    }
                    c.standby("s1").resume();
                    r
                })
            })
            .collect();
        drop(tx);
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        (results, noticer.join().unwrap())
    });
    let wall = t_all.elapsed().as_secs_f64();
    let fmt = |r: &(f64, f64, String)| {
        format!(
            "{:.1} s (last reply {:.1} s before the hang; then {})",
            r.0, r.1, r.2
        )
    };
    let mut idle: Vec<f64> = results[..4].iter().map(|r| r.0).collect();
    let mut sums: Vec<f64> = results[..4].iter().map(|r| r.0 + r.1).collect();
    rows.push(Row {
        what: "PostgreSQL: hung standby (SIGSTOP walreceiver) still `streaming`/`sync` in pg_stat_replication, idle primary, 4 pairs at once (wal_sender_timeout 60 s, wal_receiver_status_interval 10 s)".into(),
        result: format!(
            "median {:.1} s, min {:.1} s, max {:.1} s; time + age of the last reply at the hang: {:.1}–{:.1} s; each: {}",
            percentile(&mut idle, 0.5),
            percentile(&mut idle, 0.0),
            percentile(&mut idle, 1.0),
            percentile(&mut sums, 0.0),
            percentile(&mut sums, 1.0),
            results[..4].iter().map(fmt).collect::<Vec<_>>().join("; ")
        ),
        target: "-".into(),
        met: None,
    });
    rows.push(Row {
        what: "the same with a writer (pgbench 50 tx/s, synchronous_commit = local), 1 pair".into(),
        result: fmt(&results[4]),
        target: "-".into(),
        met: None,
    });
    rows.push(Row {
        what: "`cln-replguard check` in a loop from the hang (on one of those idle pairs)".into(),
        result: format!(
            "exit {} after {:.0} ms: `{}` (the plugin's monitor: see the hung-standby row of `notice`); wall time of the section's hang phase {wall:.0} s",
            notice.1, notice.0, notice.2
        ),
        target: "-".into(),
        met: None,
    });
}

/// Network namespaces and a veth pair made for the bench, removed on drop (also on panic).
struct Netns {
    primary_ns: String,
    standby_ns: String,
}

const NETNS_PRIMARY_ADDR: &str = "10.213.7.1";
const NETNS_STANDBY_ADDR: &str = "10.213.7.2";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Two namespaces joined by a veth pair on a /30 that exists only between them.
    fn new() -> Result<Netns, String> {
        let id = std::process::id();
        let n = Netns {
            primary_ns: format!("rgbench-p{id}"),
            standby_ns: format!("rgbench-s{id}"),
        };
        let (vp, vs) = (format!("rgp{id}"), format!("rgs{id}"));
        let (p, s) = (n.primary_ns.as_str(), n.standby_ns.as_str());
        ip(&["netns", "add", p])?;
        ip(&["netns", "add", s])?;
        ip(&[
            "link", "add", &vp, "netns", p, "type", "veth", "peer", "name", &vs, "netns", s,
        ])?;
        ip(&[
            "-n",
            p,
            "addr",
            "add",
            &format!("{NETNS_PRIMARY_ADDR}/30"),
            "dev",
            &vp,
        ])?;
        ip(&[
            "-n",
            s,
            "addr",
            "add",
            &format!("{NETNS_STANDBY_ADDR}/30"),
            "dev",
            &vs,
        ])?;
        for (ns, dev) in [(p, vp.as_str()), (s, vs.as_str()), (p, "lo"), (s, "lo")] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(n)
    }

    fn standby_link(&self, up: bool) {
        let dev = format!("rgs{}", std::process::id());
        ip(&[
            "-n",
            &self.standby_ns,
            "link",
            "set",
            &dev,
            if up { "up" } else { "down" },
        ])
        .unwrap();
    }

    /// Starts a stopped server of the cluster inside a namespace, as the user owning its
    /// data directory.
    fn start_in(&self, ns: &str, c: &Cluster, s: &cln_replguard::cluster::Server) {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(&s.datadir).unwrap();
        let mut cmd = Command::new("ip");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        let out = cmd
            .args(["netns", "exec", ns, "setpriv"])
            .arg(format!("--reuid={}", meta.uid()))
            .arg(format!("--regid={}", meta.gid()))
            .arg("--clear-groups")
            .arg(c.bindir().join("pg_ctl"))
            .arg("-D")
            .arg(&s.datadir)
            .arg("-l")
            .arg(&s.log)
            .args(["-w", "-t", "60", "start"])
            .env("LC_ALL", "C")
            .current_dir("/")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start in {ns}: {}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            s.log_tail()
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespaces removes the veth pair with them.
        let _ = ip(&["netns", "del", &self.primary_ns]);
        let _ = ip(&["netns", "del", &self.standby_ns]);
    }
}

fn netns(rows: &mut Vec<Row>) {
    let what = "standby behind a veth pair (primary and standby each in a network namespace), standby's link set down: `cln-replguard check` in a loop says unsafe";
    // Declared before the cluster: dropped after its servers have stopped.
    let lab = match Netns::new() {
        Ok(l) => l,
        Err(e) => {
            rows.push(Row {
                what: what.into(),
                result: format!("not measured: {e}"),
                target: "-".into(),
                met: None,
            });
            return;
        }
    };
    let c = common::start(&ClusterSpec::pair());
    let subnet = "10.213.7.0/30";
    c.primary
        .prepend_hba(&format!("host replication all {subnet} trust"))
        .unwrap();
    c.primary
        .prepend_hba(&format!("host all all {subnet} trust"))
        .unwrap();
    c.primary
        .psql(&format!(
            "ALTER SYSTEM SET listen_addresses = '{NETNS_PRIMARY_ADDR}'"
        ))
        .unwrap();
    let standby = c.standby("s1");
    standby
        .psql(&format!(
            "ALTER SYSTEM SET primary_conninfo = 'host={NETNS_PRIMARY_ADDR} port={} user=postgres dbname=postgres application_name=s1'",
            c.primary.port
        ))
        .unwrap();
    standby.stop().unwrap();
    c.primary.stop().unwrap();
    lab.start_in(&lab.primary_ns, &c, &c.primary);
    lab.start_in(&lab.standby_ns, &c, standby);
    wait_for(
        "s1 to stream over the veth",
        Duration::from_secs(60),
        || {
            Ok(c.primary.psql(&format!(
                "SELECT count(*) FROM pg_stat_replication WHERE application_name = 's1' \
               AND state = 'streaming' AND sync_state = 'sync' \
               AND client_addr = '{NETNS_STANDBY_ADDR}'"
            ))? == "1")
        },
    )
    .unwrap();
    let session = fake_lightningd::lightningd_session(&c);
    let dsn = c.primary.wallet_dsn();
    let reps = 10;
    let mut ms = Vec::new();
    let mut said = std::collections::BTreeMap::new();
    let mut pg_view = std::collections::BTreeMap::new();
    let mut recovered = Vec::new();
    for _ in 0..reps {
        c.wait_commits_flow().unwrap();
        wait_for("safe", Duration::from_secs(30), || {
            Ok(replguard_check(&dsn).0 == 0)
        })
        .unwrap();
        lab.standby_link(false);
        let t0 = Instant::now();
        let (code, line) = loop {
            let (code, line, _) = replguard_check(&dsn);
            if code != 0 {
                break (code, line);
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "never unsafe");
        };
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        *said.entry((code, line)).or_insert(0) += 1;
        let view = c
            .primary
            .psql("SELECT coalesce(string_agg(state || '/' || sync_state, ','), 'no row') FROM pg_stat_replication")
            .unwrap();
        *pg_view.entry(view).or_insert(0) += 1;
        lab.standby_link(true);
        let t1 = Instant::now();
        c.wait_commits_flow().unwrap();
        recovered.push(t1.elapsed().as_secs_f64());
    }
    let said = said
        .iter()
        .map(|((code, line), n)| format!("exit {code} `{line}` ({n}/{reps})"))
        .collect::<Vec<_>>()
        .join("; ");
    let pg_view = pg_view
        .iter()
        .map(|(v, n)| format!("{v} ({n}/{reps})"))
        .collect::<Vec<_>>()
        .join(", ");
    rows.push(Row {
        what: format!("{what}, {reps} runs"),
        result: format!(
            "median {:.0} ms, worst {:.0} ms; said {said}; pg_stat_replication at that moment: {pg_view}; commits flowed again {:.1} s (median) after the link came back",
            percentile(&mut ms, 0.5),
            percentile(&mut ms, 1.0),
            percentile(&mut recovered, 0.5)
        ),
        target: "-".into(),
        met: None,
    });

    // The plugin's monitor (default settings) under the fake lightningd, same fault.
    let (f, _) = started(&c);
    let mut monitor: Vec<f64> = (0..reps)
        .map(|_| {
            c.wait_commits_flow().unwrap();
            let ms = time_to_notice(&f, || lab.standby_link(false));
            lab.standby_link(true);
            ms
        })
        .collect();
    c.wait_commits_flow().unwrap();
    drop(f);
    rows.push(Row {
        what: format!(
            "the same fault, noticed by the plugin's monitor (status file not safe), {reps} runs"
        ),
        result: median_worst(&mut monitor),
        target: "-".into(),
        met: None,
    });
    drop(session);
    drop(c);
    drop(lab);
}
