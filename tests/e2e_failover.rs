//! End to end: payments flow from node A (wallet on the primary of a real synchronous pair,
//! cln-replguard loaded as an important plugin) to node B (sqlite wallet) over one channel;
//! mid-stream the primary's whole process tree is SIGKILLed, the standby is promoted, A
//! restarts on it, and nothing is lost: both nodes agree on the channel, no channel closes,
//! every payment A reported complete is still complete, and new payments go through.
//!
//! Ignored unless asked for with `--ignored` and `LIGHTNINGD`/`BITCOIND` naming the binaries
//! (see tests/e2e.rs); asked for without them, it fails. Everything listens on 127.0.0.1 only.

mod common;
mod e2e_support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cln_replguard::cluster::{self, Cluster, ClusterSpec, Server, wait_for};
use serde_json::Value;

use common::*;
use e2e_support::*;

const TEST: &str = "payments_survive_a_primary_crash_and_failover";
/// Each payment, in msat.
const AMOUNT_MSAT: u64 = 1_000_000;
/// The channel A opens to B, in sat.
const CHANNEL_SAT: u64 = 1_000_000;
/// Payments completed before the primary is killed (at least).
const BEFORE_KILL: usize = 8;
/// Payments made after the restart on the new primary.
const AFTER_RESTART: usize = 5;

/// lightningd options for speed on regtest: poll bitcoind every second.
fn dev_opts() -> Vec<String> {
    vec!["--developer".into(), "--dev-bitcoind-poll=1".into()]
}

/// One payment A was asked to make.
#[derive(Clone, Debug)]
struct Attempt {
    label: String,
    payment_hash: String,
    /// `pay` returned and said `complete`.
    complete: bool,
    /// What `pay` said otherwise.
    error: String,
}

/// B invoices `AMOUNT_MSAT`, A pays it.
fn pay_once(a: &Node, b: &Node, label: &str) -> Attempt {
    let inv = b.json(&["invoice", &AMOUNT_MSAT.to_string(), label, "e2e failover"]);
    let bolt11 = inv["bolt11"].as_str().unwrap();
    let (code, out, err) = a.cli_split(&["pay", bolt11]);
    let complete = code == 0
        && json_of(&out)
            .map(|v| v["status"] == "complete")
            .unwrap_or(false);
    Attempt {
        label: label.to_string(),
        payment_hash: inv["payment_hash"].as_str().unwrap().to_string(),
        complete,
        error: if complete {
            String::new()
        } else {
            format!("exit {code}: {}{}", out.trim(), err.trim())
        },
    }
}

/// The only channel of `node`, from listpeerchannels.
fn channel(node: &Node) -> Value {
    let v = node.json(&["listpeerchannels"]);
    let chans = v["channels"].as_array().unwrap();
    assert_eq!(chans.len(), 1, "expected one channel: {v:#}");
    chans[0].clone()
}

fn msat(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an msat amount: {v}"))
}

/// Waits until both nodes see the channel connected, in CHANNELD_NORMAL, without HTLCs.
fn wait_channel_quiet(a: &Node, b: &Node, what: &str) {
    let mut last = (Value::Null, Value::Null);
    let r = wait_for(what, Duration::from_secs(120), || {
        let (ca, cb) = (channel(a), channel(b));
        let quiet = |c: &Value| {
            c["state"] == "CHANNELD_NORMAL"
                && c["peer_connected"] == true
                && c["htlcs"].as_array().is_none_or(|h| h.is_empty())
        };
        let ok = quiet(&ca) && quiet(&cb);
        last = (ca, cb);
        Ok(ok)
    });
    if let Err(e) = r {
        panic!("{e:#}\nA: {:#}\nB: {:#}", last.0, last.1);
    }
}

/// Every pid in the process tree under `root` (itself first), from /proc.
fn process_tree(root: i32) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(e.path().join("stat")).ok()?;
            // "pid (comm) state ppid …": comm may hold anything, so split after the last ')'.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    tree
}

/// Makes this test process reap the orphans it leaves, as an init system would. The
/// postmaster is orphaned at start (pg_ctl exits), and so are lightningd's subdaemons when it
/// dies. Where PID 1 does not reap (containers often), a SIGKILLed postmaster would stay a
/// zombie, which `kill(pid, 0)` — as pg_ctl and PostgreSQL's lock file check — takes for a
/// running server. (`cln-replguard failover` itself reads the state in /proc and treats a
/// zombie as gone; the test reaps anyway, as systemd would.)
fn reap_orphans() {
    // SAFETY: prctl with constant arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(
        r,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );
}

/// Gone (reaped here if it was an orphan this process inherited).
fn dead(pid: i32) -> bool {
    // SAFETY: waitpid on one pid, without blocking; ECHILD when it is not our child.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie that is someone else's child to reap.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s == "Z" || s == "X"),
    }
}

/// SIGKILLs the server's postmaster and every process under it (stopped first, so that it
/// cannot fork while its children are listed); returns the pids, postmaster first.
fn kill_server_tree(server: &Server) -> Vec<i32> {
    let postmaster = server.postmaster_pid().unwrap();
    // SAFETY: signals to the postmaster this harness started, then to its descendants.
    unsafe { libc::kill(postmaster, libc::SIGSTOP) };
    let tree = process_tree(postmaster);
    for &pid in &tree {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    wait_for(
        "the primary's processes to die",
        Duration::from_secs(10),
        || Ok(tree.iter().all(|&p| dead(p))),
    )
    .unwrap();
    tree
}

/// The killed primary leaves its postmaster.pid behind: remove it (if it still names the
/// killed postmaster) before the cluster's teardown, which would otherwise signal that pid
/// should it have been reused meanwhile.
struct StalePidFile {
    datadir: PathBuf,
    pid: Option<i32>,
}

impl Drop for StalePidFile {
    fn drop(&mut self) {
        let Some(pid) = self.pid else { return };
        let file = self.datadir.join("postmaster.pid");
        let names_it = fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.lines().next().map(|l| l.trim() == pid.to_string()))
            .unwrap_or(false);
        if names_it && dead(pid) {
            let _ = fs::remove_file(file);
        }
    }
}

/// Sets the flag when dropped.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Whether something accepts connections on the JSON-RPC socket of a node.
fn rpc_answers(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}

/// Fails over from the dead primary to the standby with `cln-replguard failover --then
/// run-alone`; returns the lines it says to add to A's lightningd config.
fn fail_over(c: &Cluster, a: &Node) -> Vec<String> {
    let standby = c.standby("s1").conninfo("postgres", cluster::WALLET_ROLE);
    let old_data = c.primary.datadir.display().to_string();
    let rpc = a.rpc_path().display().to_string();
    let bindir = c.bindir().display().to_string();
    let (code, out, err) = cli(&[
        "failover",
        "--standby-dsn",
        &standby,
        "--old-primary-data",
        &old_data,
        "--lightning-rpc",
        &rpc,
        "--pg-bindir",
        &bindir,
        "--then",
        "run-alone",
        "--alone-for",
        "1h",
    ]);
    eprintln!("cln-replguard failover: exit {code}\n{out}{err}");
    assert_eq!(code, 0, "cln-replguard failover refused:\n{out}{err}");
    let accept: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with("replguard-accept-no-standby-until="))
        .map(str::to_string)
        .collect();
    assert_eq!(accept.len(), 1, "no acceptance line printed:\n{out}");
    accept
}

#[test]
#[ignore = "needs LIGHTNINGD and BITCOIND (real lightningd and bitcoind binaries)"]
fn payments_survive_a_primary_crash_and_failover() {
    let bins = bins_or_fail(TEST);
    let t0 = Instant::now();
    reap_orphans();
    let c: Cluster = start(&ClusterSpec::pair());
    // Dropped before the cluster: see StalePidFile.
    let mut stale = StalePidFile {
        datadir: c.primary.datadir.clone(),
        pid: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let btc = Bitcoind::start(&bins, dir.path());
    let a = Node::new(&bins, dir.path().join("a"), &btc);
    let b = Node::new(&bins, dir.path().join("b"), &btc);

    // 1. A on the primary with the plugin, B on sqlite; fund A, open A→B, make it normal.
    let mut run_a = a.run(&c.primary.wallet_dsn(), "important-plugin", &dev_opts());
    assert!(run_a.started, "A did not start:\n{}", run_a.log);
    let run_b = b.run_with(None, None, &dev_opts());
    assert!(run_b.started, "B did not start:\n{}", run_b.log);
    let funding = a.fund_channel_to(&b, CHANNEL_SAT);
    let funding_txid = funding["txid"].as_str().unwrap().to_string();
    let funding_outnum = funding["outnum"].as_u64().unwrap();
    wait_channel_quiet(&a, &b, "the channel to be normal on both sides");
    let a_outputs_before: Vec<Value> = a.json(&["listfunds"])["outputs"]
        .as_array()
        .unwrap()
        .clone();
    let setup = t0.elapsed();

    // 2. + 3. Payments flow; mid-stream the primary's whole process tree is SIGKILLed.
    let attempts: Mutex<Vec<Attempt>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let mut killed_pids = Vec::new();
    let mut a_fate = String::new();
    let mut a_children = String::new();
    let mut caught_mid_payment: Option<String> = None;
    let mut a_exit_after = Duration::ZERO;
    let kill_at = std::thread::scope(|s| {
        // The payer stops on a panic here too (the scope joins it before unwinding on).
        let _stop_payer = SetOnDrop(&stop);
        let payer = s.spawn(|| {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let att = pay_once(&a, &b, &format!("before-{n}"));
                n += 1;
                let complete = att.complete;
                attempts.lock().unwrap().push(att);
                if !complete {
                    break;
                }
            }
        });
        let flowing = wait_for("payments to flow", Duration::from_secs(120), || {
            let done = attempts
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.complete)
                .count();
            Ok(done >= BEFORE_KILL || payer.is_finished())
        });
        let before = attempts.lock().unwrap().clone();
        if flowing.is_err() || before.iter().any(|a| !a.complete) {
            stop.store(true, Ordering::SeqCst);
            panic!("payments did not flow before the kill: {flowing:?}\n{before:#?}");
        }

        // A's subdaemons and plugins, to see that none outlives it.
        let a_tree = process_tree(run_a.proc.as_ref().unwrap().pid() as i32);
        // The primary dies mid-payment: preferably once B was paid an invoice whose payment
        // A has not reported yet (B released the preimage; A is still writing the outcome).
        // Only a preference: after 10 s of trying the kill comes anyway.
        let _ = wait_for(
            "B to be paid an invoice A has not reported paid yet",
            Duration::from_secs(10),
            || {
                let reported: BTreeSet<String> = attempts
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|a| a.complete)
                    .map(|a| a.label.clone())
                    .collect();
                let inv = b.json(&["listinvoices"]);
                caught_mid_payment = inv["invoices"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|i| i["status"] == "paid")
                    .filter_map(|i| i["label"].as_str())
                    .find(|l| !reported.contains(*l))
                    .map(str::to_string);
                Ok(caught_mid_payment.is_some())
            },
        );
        let kill_at = Instant::now();
        killed_pids = kill_server_tree(&c.primary);
        stale.pid = Some(killed_pids[0]);

        // A dies on its own, or hangs: after 60 s it is killed (and it is said so).
        let proc_a = run_a.proc.as_mut().unwrap();
        let ended = wait_for(
            "A to end",
            Duration::from_secs(60),
            || Ok(!proc_a.running()),
        );
        a_exit_after = kill_at.elapsed();
        a_fate = match ended {
            Ok(()) => format!(
                "A ended by itself {:.0} ms after the kill: {}",
                a_exit_after.as_secs_f64() * 1000.0,
                proc_a.0.wait().unwrap()
            ),
            Err(_) => {
                let _ = proc_a.0.kill();
                format!(
                    "A still ran 60 s after the kill and was SIGKILLed: {}",
                    proc_a.0.wait().unwrap()
                )
            }
        };
        // Nothing of the old A may still talk to B or to the database when A restarts.
        let children_gone = wait_for(
            "A's subdaemons and plugins to end",
            Duration::from_secs(30),
            // A itself is reaped by its handle.
            || Ok(a_tree[1..].iter().all(|&p| dead(p))),
        );
        a_children = match children_gone {
            Ok(()) => format!(
                "its {} subdaemons and plugins ended {:.0} ms after the kill",
                a_tree.len() - 1,
                kill_at.elapsed().as_secs_f64() * 1000.0
            ),
            Err(_) => {
                let left: Vec<String> = a_tree[1..]
                    .iter()
                    .filter(|&&p| !dead(p))
                    .map(|&p| {
                        let cmd = fs::read_to_string(format!("/proc/{p}/cmdline"))
                            .unwrap_or_default()
                            .replace('\0', " ");
                        // SAFETY: a process of the A this test started.
                        unsafe { libc::kill(p, libc::SIGKILL) };
                        format!("{p} {cmd}")
                    })
                    .collect();
                format!("still running 30 s after the kill, SIGKILLed: {left:?}")
            }
        };
        stop.store(true, Ordering::SeqCst);
        payer.join().unwrap();
        kill_at
    });
    let a_log_at_death = a.log();
    drop(run_a);
    let before: Vec<Attempt> = attempts.into_inner().unwrap();
    let reported: Vec<&Attempt> = before.iter().filter(|a| a.complete).collect();
    let unresolved: Vec<&Attempt> = before.iter().filter(|a| !a.complete).collect();
    match &caught_mid_payment {
        Some(label) => eprintln!(
            "killed once B had been paid {label} before A's pay for it was seen to complete \
             (A's pay then said: {})",
            before
                .iter()
                .find(|a| &a.label == label)
                .map_or("-".to_string(), |a| if a.complete {
                    "complete".to_string()
                } else {
                    a.error.clone()
                })
        ),
        None => eprintln!("killed between two payments (no window caught in 10 s)"),
    }
    eprintln!("{a_fate}; {a_children}");
    eprintln!(
        "killed the primary's tree ({} processes); {} payments reported complete, {} not: {:#?}",
        killed_pids.len(),
        reported.len(),
        unresolved.len(),
        unresolved
    );
    // What lightningd said as it died (its backtrace lines left out).
    for l in a_log_at_death
        .lines()
        .filter(|l| {
            (l.contains("BROKEN") && !l.contains("backtrace:"))
                || (l.contains("replguard") && !l.contains("DEBUG"))
        })
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
    {
        eprintln!("A log: {l}");
    }
    let rpc_file_left = a.rpc_path().exists();
    eprintln!(
        "A's lightning-rpc after its death: file {}, answers: {}",
        if rpc_file_left {
            "left behind"
        } else {
            "removed"
        },
        rpc_answers(&a.rpc_path())
    );

    // 4. Fail over.
    let t_failover = Instant::now();
    let accept = fail_over(&c, &a);
    let failover_took = t_failover.elapsed();
    eprintln!(
        "failover took {:.0} ms; A's config gets: {accept:?}",
        failover_took.as_secs_f64() * 1000.0
    );
    let config = a.dir.join("config");
    let mut text = fs::read_to_string(&config).unwrap_or_default();
    for l in &accept {
        text.push_str(l);
        text.push('\n');
    }
    fs::write(&config, text).unwrap();

    // 5. A restarts on the new primary.
    let new_primary = c.standby("s1");
    let t_restart = Instant::now();
    let run_a = a.run(&new_primary.wallet_dsn(), "important-plugin", &dev_opts());
    assert!(
        run_a.started,
        "A did not restart on the new primary:\n{}",
        run_a.log
    );
    eprintln!(
        "A restarted on the new primary in {:.0} ms: {:?}",
        t_restart.elapsed().as_secs_f64() * 1000.0,
        lines_with(&run_a.log, "startup check")
    );
    assert!(
        c.primary.datadir.join("standby.signal").exists(),
        "the old primary was not marked as a standby"
    );
    // Running alone is accepted, and said so: degraded, no-replica-accepted.
    let status = a.json(&["replication-status"]);
    let codes: Vec<&str> = status["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["code"].as_str())
        .collect();
    eprintln!(
        "replication-status after the failover: {} {codes:?}",
        status["verdict"]
    );
    assert_eq!(status["verdict"], "degraded", "{status:#}");
    assert!(codes.contains(&"no-replica-accepted"), "{status:#}");

    wait_channel_quiet(&a, &b, "the channel to be normal again after the restart");
    // Every payment resolves (the one in flight at the kill, too).
    wait_for("A's payments to resolve", Duration::from_secs(60), || {
        let pays = a.json(&["listpays"]);
        Ok(pays["pays"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["status"] != "pending"))
    })
    .unwrap();

    let check = |when: &str, expect_complete: usize| {
        let (ca, cb) = (channel(&a), channel(&b));
        let total = msat(&ca["total_msat"]);
        assert_eq!(total, msat(&cb["total_msat"]), "{when}: totals differ");
        assert_eq!(total, CHANNEL_SAT * 1000);
        let (a_us, b_us) = (msat(&ca["to_us_msat"]), msat(&cb["to_us_msat"]));
        assert_eq!(a_us + b_us, total, "{when}: A {a_us} + B {b_us} != {total}");
        // B's paid invoices and A's complete payments are the same set, worth B's side.
        let pays = a.json(&["listpays"]);
        let complete: BTreeMap<String, u64> = pays["pays"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"] == "complete")
            .map(|p| {
                (
                    p["payment_hash"].as_str().unwrap().to_string(),
                    msat(&p["amount_msat"]),
                )
            })
            .collect();
        let invoices = b.json(&["listinvoices"]);
        let paid: BTreeMap<String, u64> = invoices["invoices"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["status"] == "paid")
            .map(|i| {
                (
                    i["payment_hash"].as_str().unwrap().to_string(),
                    msat(&i["amount_received_msat"]),
                )
            })
            .collect();
        assert_eq!(
            complete, paid,
            "{when}: A's complete payments != B's paid invoices"
        );
        assert_eq!(complete.len(), expect_complete, "{when}");
        assert_eq!(
            b_us,
            paid.values().sum::<u64>(),
            "{when}: B's balance is not what it was paid"
        );
        eprintln!(
            "{when}: {} payments complete; A {a_us} msat, B {b_us} msat, total {total} msat",
            complete.len()
        );
        complete
    };

    // The payment in flight at the kill, if any, may have completed or failed: count it in.
    let pays_after = a.json(&["listpays"]);
    let in_flight_completed =
        unresolved
            .iter()
            .filter(|u| {
                pays_after["pays"].as_array().unwrap().iter().any(|p| {
                    p["payment_hash"] == u.payment_hash.as_str() && p["status"] == "complete"
                })
            })
            .count();
    for u in &unresolved {
        let st: Vec<&Value> = pays_after["pays"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["payment_hash"] == u.payment_hash.as_str())
            .map(|p| &p["status"])
            .collect();
        eprintln!(
            "in flight at the kill: {} (pay said: {}) → after the restart: {st:?}",
            u.label, u.error
        );
    }
    let complete = check("after the failover", reported.len() + in_flight_completed);
    for r in &reported {
        assert!(
            complete.contains_key(&r.payment_hash),
            "{} was reported complete before the kill and is not complete now",
            r.label
        );
    }

    // No channel closed, no penalty: nothing closed, the funding output unspent, nothing
    // on chain for either node beyond what A had before.
    for (name, n) in [("A", &a), ("B", &b)] {
        let closed = n.json(&["listclosedchannels"]);
        assert_eq!(
            closed["closedchannels"].as_array().unwrap().len(),
            0,
            "{name} closed a channel: {closed:#}"
        );
    }
    let txout = btc.ok(&["gettxout", &funding_txid, &funding_outnum.to_string()]);
    assert!(!txout.is_empty(), "the funding output was spent");
    let mempool: Value = serde_json::from_str(&btc.ok(&["getrawmempool"])).unwrap();
    assert_eq!(
        mempool,
        serde_json::json!([]),
        "a transaction was broadcast"
    );
    assert_eq!(
        b.json(&["listfunds"])["outputs"].as_array().unwrap().len(),
        0,
        "B has on-chain outputs"
    );
    // A rescans recent blocks as it starts, so its change output is unconfirmed for a moment.
    let mut a_outputs = Vec::new();
    let same = wait_for(
        "A's on-chain outputs to be as before the kill",
        Duration::from_secs(60),
        || {
            a_outputs = a.json(&["listfunds"])["outputs"]
                .as_array()
                .unwrap()
                .clone();
            Ok(a_outputs == a_outputs_before)
        },
    );
    assert!(
        same.is_ok(),
        "A's on-chain outputs changed: {a_outputs:#?}\nbefore: {a_outputs_before:#?}"
    );

    // New payments succeed on the new primary.
    for n in 0..AFTER_RESTART {
        let att = pay_once(&a, &b, &format!("after-{n}"));
        assert!(att.complete, "payment after the restart failed: {att:?}");
    }
    wait_channel_quiet(&a, &b, "the channel to settle after the new payments");
    check(
        "after the new payments",
        reported.len() + in_flight_completed + AFTER_RESTART,
    );

    // 6. Stop everything (Drop does it on a panic).
    a.stop(run_a);
    b.stop(run_b);
    eprintln!(
        "setup {:.1} s; A's death {:.0} ms after the kill; total {:.1} s (kill at {:.1} s)",
        setup.as_secs_f64(),
        a_exit_after.as_secs_f64() * 1000.0,
        t0.elapsed().as_secs_f64(),
        kill_at.duration_since(t0).as_secs_f64(),
    );
}
