//! End to end under Patroni: node A (wallet on Patroni's leader through its Unix socket,
//! cln-replguard as an important plugin following the local Patroni) pays node B (sqlite)
//! over one channel; the leader's host is lost — its Patroni, PostgreSQL and A SIGKILLed
//! together; Patroni promotes the member in /sync; A is started beside the new leader (its
//! `--require-leader` pre-flight first, as the systemd drop-in runs it when on_role_change
//! starts the unit) with the same lightning-dir and hsm_secret; the channel is intact on both
//! sides, nothing was broadcast, and payments continue.
//!
//! Ignored unless asked for with `--ignored` and `LIGHTNINGD`/`BITCOIND` naming the binaries;
//! asked for without them, it fails. Everything listens on 127.0.0.1 only.

mod common;
mod e2e_support;
mod patroni_support;

use std::fs;
use std::time::{Duration, Instant};

use cln_replguard::cluster::wait_for;
use serde_json::Value;

use e2e_support::*;
use patroni_support::{PatroniCluster, PatroniSpec};

const TEST: &str = "under_patroni_payments_survive_the_loss_of_the_leaders_host";
const AMOUNT_MSAT: u64 = 1_000_000;
const CHANNEL_SAT: u64 = 1_000_000;

fn dev_opts(c: &PatroniCluster, node: &str) -> Vec<String> {
    vec![
        "--developer".into(),
        "--dev-bitcoind-poll=1".into(),
        format!("--replguard-patroni-url={}", c.node(node).api_url()),
    ]
}

fn pay(a: &Node, b: &Node, label: &str) -> bool {
    let inv = b.json(&["invoice", &AMOUNT_MSAT.to_string(), label, "e2e patroni"]);
    let (code, out, _) = a.cli_split(&["pay", inv["bolt11"].as_str().unwrap()]);
    code == 0 && json_of(&out).is_ok_and(|v| v["status"] == "complete")
}

fn channel(node: &Node) -> Value {
    let v = node.json(&["listpeerchannels"]);
    let chans = v["channels"].as_array().unwrap();
    assert_eq!(chans.len(), 1, "expected one channel: {v:#}");
    chans[0].clone()
}

fn wait_channel_normal(a: &Node, b: &Node, what: &str) {
    wait_for(what, Duration::from_secs(120), || {
        let ok = |c: &Value| {
            c["state"] == "CHANNELD_NORMAL"
                && c["peer_connected"] == true
                && c["htlcs"].as_array().is_none_or(|h| h.is_empty())
        };
        Ok(ok(&channel(a)) && ok(&channel(b)))
    })
    .unwrap_or_else(|e| panic!("{e:#}\nA: {:#}\nB: {:#}", channel(a), channel(b)));
}

fn pid_gone(pid: i32) -> bool {
    // SAFETY: waitpid on one pid without blocking (reaps it when it is our child).
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    !cln_replguard::pgbin::process_alive(pid)
}

#[test]
#[ignore = "needs LIGHTNINGD and BITCOIND (real lightningd and bitcoind binaries)"]
fn under_patroni_payments_survive_the_loss_of_the_leaders_host() {
    let bins = bins_or_fail(TEST);
    // Three members: after the leader's loss the promoted one still has a synchronous
    // standby, so strict mode lets commits through.
    let c = PatroniCluster::start(&PatroniSpec::strict(3));
    let dir = tempfile::tempdir().unwrap();
    let btc = Bitcoind::start(&bins, dir.path());
    let a = Node::new(&bins, dir.path().join("a"), &btc);
    let b = Node::new(&bins, dir.path().join("b"), &btc);

    let mut run_a = a.run(
        &c.node("n1").wallet_dsn(),
        "important-plugin",
        &dev_opts(&c, "n1"),
    );
    assert!(run_a.started, "A did not start:\n{}", run_a.log);
    let run_b = b.run_with(
        None,
        None,
        &["--developer".into(), "--dev-bitcoind-poll=1".into()],
    );
    assert!(run_b.started, "B did not start:\n{}", run_b.log);
    let b_id = b.json(&["getinfo"])["id"].as_str().unwrap().to_string();
    let addr = a.json(&["newaddr", "bech32"])["bech32"]
        .as_str()
        .unwrap()
        .to_string();
    btc.ok(&["sendtoaddress", &addr, "0.1"]);
    btc.mine(1);
    wait_for("A's funds", Duration::from_secs(60), || {
        Ok(a.json(&["listfunds"])["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["status"] == "confirmed"))
    })
    .unwrap();
    a.json(&["connect", &b_id, "127.0.0.1", &b.port.to_string()]);
    let funding = a.json(&["fundchannel", &b_id, &CHANNEL_SAT.to_string()]);
    let funding_txid = funding["txid"].as_str().unwrap().to_string();
    btc.mine(6);
    wait_channel_normal(&a, &b, "the channel to be normal");
    for i in 0..5 {
        assert!(
            pay(&a, &b, &format!("before-{i}")),
            "payment {i} before the loss failed"
        );
    }
    wait_channel_normal(&a, &b, "the payments to settle");
    let paid_before = msat(&channel(&b)["to_us_msat"]);
    assert_eq!(paid_before, 5 * AMOUNT_MSAT);

    // The leader's host is lost: Patroni, PostgreSQL and lightningd at once.
    let a_pid = run_a.proc.as_ref().unwrap().pid() as i32;
    let lost_at = Instant::now();
    // SAFETY: the lightningd this test started.
    unsafe { libc::kill(a_pid, libc::SIGKILL) };
    c.kill_node("n1").unwrap();
    let _ = run_a.proc.as_mut().unwrap().0.wait();
    drop(run_a);
    wait_for(
        "A's lightning-rpc to stop answering",
        Duration::from_secs(30),
        || Ok(std::os::unix::net::UnixStream::connect(a.rpc_path()).is_err()),
    )
    .unwrap();
    let _ = fs::remove_file(a.rpc_path());
    assert!(pid_gone(a_pid));

    let mut leader = None;
    wait_for(
        "Patroni to promote a member",
        Duration::from_secs(90),
        || {
            leader = c.leader().filter(|l| l != "n1");
            Ok(leader
                .as_ref()
                .is_some_and(|l| c.get(l, "/leader").is_ok_and(|(s, _)| s == 200)))
        },
    )
    .unwrap();
    let leader = leader.unwrap();
    let promoted_ms = lost_at.elapsed().as_secs_f64() * 1000.0;
    c.wait_sync_standby(Duration::from_secs(60)).unwrap();

    // What on_role_change + the drop-in do on the new leader's host: the pre-flight, then A.
    fs::write(
        a.dir.join("config"),
        format!(
            "wallet={}\nreplguard-patroni-url={}\n",
            c.node(&leader).wallet_dsn(),
            c.node(&leader).api_url()
        ),
    )
    .unwrap();
    let pre = std::process::Command::new(PLUGIN)
        .args(["check", "--lightning-dir"])
        .arg(&a.dir)
        .args(["--network", "regtest", "--require-leader", "--wait", "30"])
        .output()
        .unwrap();
    assert!(
        pre.status.success(),
        "pre-flight on {leader}: {}{}",
        String::from_utf8_lossy(&pre.stdout),
        String::from_utf8_lossy(&pre.stderr)
    );
    // The unit gives lightningd the same settings on its command line.
    fs::remove_file(a.dir.join("config")).unwrap();
    let run_a = a.run(
        &c.node(&leader).wallet_dsn(),
        "important-plugin",
        &dev_opts(&c, &leader),
    );
    assert!(
        run_a.started,
        "A did not start beside {leader}:\n{}",
        run_a.log
    );
    let serving_ms = lost_at.elapsed().as_secs_f64() * 1000.0;
    wait_channel_normal(&a, &b, "the channel to be normal again");
    assert_eq!(
        msat(&channel(&b)["to_us_msat"]),
        paid_before,
        "B's balance changed across the failover"
    );
    // Nothing broadcast: the funding output is unspent and the mempool holds nothing of ours.
    let mempool = btc.ok(&["getrawmempool"]);
    assert_eq!(
        mempool.trim().trim_matches(|c| c == '[' || c == ']').trim(),
        "",
        "{mempool}"
    );
    let utxo = btc.ok(&["gettxout", &funding_txid, &funding["outnum"].to_string()]);
    assert!(!utxo.trim().is_empty(), "the funding output was spent");
    for i in 0..3 {
        assert!(
            pay(&a, &b, &format!("after-{i}")),
            "payment {i} after the failover failed"
        );
    }
    eprintln!(
        "e2e patroni: {leader} promoted {promoted_ms:.0} ms after the host loss (Patroni), A \
         serving beside it {serving_ms:.0} ms after (pre-flight and start: {:.0} ms)",
        serving_ms - promoted_ms
    );
    a.stop(run_a);
    b.stop(run_b);
}

fn msat(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an msat amount: {v}"))
}
