//! End to end under Patroni: node A (wallet on Patroni's leader through its Unix socket,
//! cln-replguard as an important plugin following the local Patroni) pays node B (sqlite)
//! over one channel; the leader's host is lost — its Patroni, PostgreSQL and A SIGKILLed
//! together; Patroni promotes the member in /sync, and Patroni itself runs
//! contrib/patroni/on_role_change there, whose `systemctl --no-block start lightningd.service`
//! (a stand-in: no systemd here) runs what the unit and contrib's drop-in run — the
//! `--require-leader` pre-flight, then lightningd — on that host, with the same hsm_secret;
//! the channel is intact on both sides, nothing was broadcast, and payments continue.
//!
//! Each Patroni node is a "host" with its own lightning-dir (config: that host's wallet DSN
//! and Patroni URL). As root, lightningd runs there as Patroni's user, the one whose
//! callbacks start it.
//!
//! Ignored unless asked for with `--ignored` and `LIGHTNINGD`/`BITCOIND` naming the binaries;
//! asked for without them, it fails. Everything listens on 127.0.0.1 only.

mod common;
mod e2e_support;
mod patroni_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use cln_replguard::cluster::wait_for;
use serde_json::Value;

use e2e_support::*;
use patroni_support::{LIGHTNINGD_UNIT, PatroniCluster, PatroniSpec, Stamped};

const TEST: &str = "under_patroni_payments_survive_the_loss_of_the_leaders_host";
const AMOUNT_MSAT: u64 = 1_000_000;
const CHANNEL_SAT: u64 = 1_000_000;
const DROP_IN: &str = include_str!("../contrib/patroni/lightningd-patroni.conf");
const UNIT: &str = include_str!("../contrib/systemd/lightningd.service");

/// The last non-empty `key=` line of a unit file, as arguments, with the installed paths
/// replaced by this test's.
fn unit_line(text: &str, key: &str, lightning_dir: &Path, lightningd: &Path) -> Vec<String> {
    let line = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .rfind(|v| !v.trim().is_empty())
        .unwrap_or_else(|| panic!("no {key}= in the unit"));
    line.split_whitespace()
        .map(|w| match w {
            "/usr/local/bin/cln-replguard" => PLUGIN.to_string(),
            "/usr/local/bin/lightningd" => lightningd.display().to_string(),
            "/var/lib/lightningd/.lightning" => lightning_dir.display().to_string(),
            w => w.to_string(),
        })
        .collect()
}

/// Node A's host beside Patroni member `member`: a lightning-dir whose config names that
/// host's wallet DSN and Patroni URL (the rest is the same on every host), and the unit
/// for the systemctl stand-in: ExecStartPre from contrib's drop-in, ExecStart from the unit.
fn prepare_host<'a>(
    c: &PatroniCluster,
    member: &str,
    bins: &'a Bins,
    btc: &'a Bitcoind,
    base: &Path,
    port: u16,
) -> Node<'a> {
    let dir = base.join(format!("a-{member}"));
    fs::create_dir_all(dir.join("regtest")).unwrap();
    let node = Node {
        bins,
        dir: dir.clone(),
        btc,
        port,
    };
    let config = [
        "network=regtest".to_string(),
        format!("wallet={}", c.node(member).wallet_dsn()),
        format!("replguard-patroni-url={}", c.node(member).api_url()),
        format!("important-plugin={PLUGIN}"),
        format!("log-file={}", node.log_path().display()),
        "log-level=debug".into(),
        format!("bind-addr=127.0.0.1:{port}"),
        format!("bitcoin-cli={}", btc.cli[0]),
        format!("bitcoin-datadir={}", btc.datadir.display()),
        format!("bitcoin-rpcport={}", btc.rpcport),
        "bitcoin-rpcconnect=127.0.0.1".into(),
        "bitcoin-rpcuser=rg".into(),
        "bitcoin-rpcpassword=rg".into(),
        "developer".into(),
        "dev-bitcoind-poll=1".into(),
    ];
    fs::write(dir.join("config"), config.join("\n") + "\n").unwrap();
    c.node(member).define_unit(
        LIGHTNINGD_UNIT,
        &unit_line(DROP_IN, "ExecStartPre", &dir, &bins.lightningd),
        &unit_line(UNIT, "ExecStart", &dir, &bins.lightningd),
    );
    node
}

/// The host's files to Patroni's user: its callbacks start lightningd there.
fn hand_to_patroni_user(c: &PatroniCluster, path: &Path) {
    c.own(path).unwrap();
    if path.is_dir() {
        for e in fs::read_dir(path).unwrap() {
            hand_to_patroni_user(c, &e.unwrap().path());
        }
    }
}

/// Waits until the lightningd the stand-in started beside `member` serves; when it did
/// (wall clock). A failed pre-flight or a lightningd that ended fails the test.
fn wait_serving(c: &PatroniCluster, member: &str, a: &Node) -> SystemTime {
    let node = c.node(member);
    let mut at = None;
    wait_for(
        &format!("lightningd to serve beside {member}"),
        Duration::from_secs(120),
        || {
            if a.log().contains("Server started") {
                at = Some(SystemTime::now());
                return Ok(true);
            }
            let events = node.unit_events(LIGHTNINGD_UNIT);
            if let Some(e) = events.iter().find(|e| e.words[0] == "ExecStartPre-failed") {
                anyhow::bail!("the pre-flight failed: {e:?}");
            }
            if events.iter().any(|e| e.words[0] == "ExecStart")
                && node.unit_pid(LIGHTNINGD_UNIT).is_none()
            {
                anyhow::bail!("lightningd ended");
            }
            std::thread::sleep(Duration::from_millis(20));
            Ok(false)
        },
    )
    .unwrap_or_else(|e| {
        let unit_log =
            fs::read_to_string(node.shim_dir().join("lightningd.service.log")).unwrap_or_default();
        panic!(
            "{e:#}\ncalls: {:?}\nevents: {:?}\n--- unit output:\n{unit_log}\n--- log:\n{}",
            node.systemctl_calls(),
            node.unit_events(LIGHTNINGD_UNIT),
            a.log()
        )
    });
    at.unwrap()
}

/// The wall time of the stand-in's `word` event for the unit on `member`.
fn event_at(c: &PatroniCluster, member: &str, word: &str) -> SystemTime {
    c.node(member)
        .unit_events(LIGHTNINGD_UNIT)
        .iter()
        .rev()
        .find(|e| e.words[0] == word)
        .unwrap_or_else(|| panic!("no {word} on {member}"))
        .at
}

/// When the new leader: left recovery; had a synchronous standby streaming and named in
/// `synchronous_standby_names` (strict mode first writes `*`, which the check does not
/// count); had that standby in Patroni's `/sync` key (`/cluster` role `sync_standby`) —
/// wall clock, seen every 100 ms until `done`: what the pre-flight waits for.
fn watch_new_leader(
    c: &PatroniCluster,
    leader: &str,
    done: &AtomicBool,
) -> [Option<SystemTime>; 3] {
    let mut seen = [None; 3];
    while !done.load(Ordering::SeqCst) && seen.iter().any(Option::is_none) {
        let state = c.psql(
            c.node(leader),
            "SELECT NOT pg_is_in_recovery(), current_setting('synchronous_standby_names') \
             NOT IN ('', '*') AND EXISTS (SELECT 1 FROM pg_stat_replication \
             WHERE sync_state = 'sync' AND state = 'streaming')",
        );
        let in_sync_key = c.get_json(leader, "/cluster").is_ok_and(|v| {
            v["members"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["role"] == "sync_standby"))
        });
        let now = SystemTime::now();
        let state = state.unwrap_or_default();
        let holds = [state.starts_with('t'), state.ends_with('t'), in_sync_key];
        for (at, holds) in seen.iter_mut().zip(holds) {
            if at.is_none() && holds {
                *at = Some(now);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    seen
}

fn ms_between(a: SystemTime, b: SystemTime) -> f64 {
    b.duration_since(a)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
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

/// Every host holds the same hsm_secret: the one A made on its first host.
fn share_hsm_secret(c: &PatroniCluster, hosts: &[Node]) {
    let secret = hosts[0].dir.join("regtest/hsm_secret");
    wait_for("A's hsm_secret", Duration::from_secs(10), || {
        Ok(secret.is_file())
    })
    .unwrap();
    for host in &hosts[1..] {
        let copy = host.dir.join("regtest/hsm_secret");
        fs::copy(&secret, &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o400)).unwrap();
        hand_to_patroni_user(c, &host.dir);
    }
}

/// The funding outpoint and B's balance after five payments A → B.
struct Channel {
    txid: String,
    outnum: String,
    paid_before: u64,
}

fn open_channel_and_pay(a: &Node, b: &Node) -> Channel {
    let funding = a.fund_channel_to(b, CHANNEL_SAT);
    wait_channel_normal(a, b, "the channel to be normal");
    for i in 0..5 {
        assert!(
            pay(a, b, &format!("before-{i}")),
            "payment {i} before the loss failed"
        );
    }
    wait_channel_normal(a, b, "the payments to settle");
    let paid_before = msat(&channel(b)["to_us_msat"]);
    assert_eq!(paid_before, 5 * AMOUNT_MSAT);
    Channel {
        txid: funding["txid"].as_str().unwrap().to_string(),
        outnum: funding["outnum"].to_string(),
        paid_before,
    }
}

/// `member`'s host is lost: its Patroni, PostgreSQL and lightningd (with its plugins) at
/// once. When (wall clock).
fn lose_host(c: &PatroniCluster, member: &str, a: &Node) -> SystemTime {
    let a_pid = c
        .node(member)
        .unit_pid(LIGHTNINGD_UNIT)
        .unwrap_or_else(|| panic!("A runs beside {member}"));
    let lost_at = SystemTime::now();
    // SAFETY: the process group the systemctl stand-in started for A.
    unsafe { libc::kill(-a_pid, libc::SIGKILL) };
    c.kill_node(member).unwrap();
    wait_for("A to be gone", Duration::from_secs(30), || {
        Ok(pid_gone(a_pid) && std::os::unix::net::UnixStream::connect(a.rpc_path()).is_err())
    })
    .unwrap();
    lost_at
}

/// The member Patroni promoted (its `/leader` answers 200), and when the test saw it.
fn wait_promotion(c: &PatroniCluster, candidates: [&'static str; 2]) -> (&'static str, SystemTime) {
    let mut leader = None;
    wait_for(
        "Patroni to promote a member",
        Duration::from_secs(90),
        || {
            leader = candidates
                .into_iter()
                .find(|l| c.get(l, "/leader").is_ok_and(|(s, _)| s == 200));
            Ok(leader.is_some())
        },
    )
    .unwrap();
    (leader.unwrap(), SystemTime::now())
}

/// Patroni's on_role_change ran `systemctl --no-block start` beside `leader` (after the
/// loss) and nowhere else; that call.
fn started_only_beside(
    c: &PatroniCluster,
    leader: &str,
    other: &str,
    lost_at: SystemTime,
) -> Stamped {
    let start_call = c
        .node(leader)
        .systemctl_calls()
        .into_iter()
        .find(|call| call.words == ["--no-block", "start", LIGHTNINGD_UNIT])
        .unwrap_or_else(|| panic!("no start on {leader}"));
    assert!(start_call.at > lost_at, "{start_call:?}");
    assert!(
        !c.node(other)
            .systemctl_calls()
            .iter()
            .any(|call| call.words.iter().any(|w| w == "start")),
        "{other} was told to start lightningd too: {:?}",
        c.node(other).systemctl_calls()
    );
    assert!(c.node(other).unit_pid(LIGHTNINGD_UNIT).is_none());
    start_call
}

/// The channel is normal on both sides, B's balance unchanged, nothing broadcast, and
/// payments continue.
fn assert_channel_intact(a: &Node, b: &Node, btc: &Bitcoind, ch: &Channel) {
    wait_channel_normal(a, b, "the channel to be normal again");
    assert_eq!(
        msat(&channel(b)["to_us_msat"]),
        ch.paid_before,
        "B's balance changed across the failover"
    );
    // Nothing broadcast: the funding output is unspent and the mempool holds nothing of ours.
    let mempool = btc.ok(&["getrawmempool"]);
    assert_eq!(
        mempool.trim().trim_matches(|c| c == '[' || c == ']').trim(),
        "",
        "{mempool}"
    );
    let utxo = btc.ok(&["gettxout", &ch.txid, &ch.outnum]);
    assert!(!utxo.trim().is_empty(), "the funding output was spent");
    for i in 0..3 {
        assert!(
            pay(a, b, &format!("after-{i}")),
            "payment {i} after the failover failed"
        );
    }
}

/// What the test saw from the host loss to A serving beside the new leader (wall clock).
struct Moments {
    lost: SystemTime,
    promoted: SystemTime,
    start_call: SystemTime,
    /// Left recovery; standby named and streaming; standby in /sync (see watch_new_leader).
    leader_state: [Option<SystemTime>; 3],
    serving: SystemTime,
}

fn print_split(c: &PatroniCluster, leader: &str, m: &Moments) {
    let (pre_at, exec_at) = (
        event_at(c, leader, "ExecStartPre"),
        event_at(c, leader, "ExecStart"),
    );
    let after_promotion = |t: Option<SystemTime>| {
        t.map_or("not seen".to_string(), |t| {
            format!("{:.0} ms", ms_between(m.promoted, t))
        })
    };
    let [writable, named, in_sync_key] = m.leader_state;
    eprintln!(
        "e2e patroni: after the promotion was seen, {leader} left recovery at +{}, had a \
         synchronous standby streaming and named at +{}, in /sync at +{}",
        after_promotion(writable),
        after_promotion(named),
        after_promotion(in_sync_key)
    );
    eprintln!(
        "e2e patroni: {leader} promoted {:.0} ms after the host loss (Patroni); A serving \
         beside it {:.0} ms after that (ours): on_role_change's systemctl start {:.0} ms after \
         the promotion was seen, pre-flight {:.0} ms, lightningd start {:.0} ms",
        ms_between(m.lost, m.promoted),
        ms_between(m.promoted, m.serving),
        ms_between(m.promoted, m.start_call),
        ms_between(pre_at, exec_at),
        ms_between(exec_at, m.serving),
    );
    let unit_output = fs::read_to_string(c.node(leader).shim_dir().join("lightningd.service.log"))
        .unwrap_or_default();
    for line in unit_output.lines().filter(|l| l.contains("pre-flight")) {
        eprintln!("e2e patroni: {leader}'s ExecStartPre: {line}");
    }
}

#[test]
#[ignore = "needs LIGHTNINGD and BITCOIND (real lightningd and bitcoind binaries)"]
fn under_patroni_payments_survive_the_loss_of_the_leaders_host() {
    let bins = bins_or_fail(TEST);
    // Three members: after the leader's loss the promoted one still has a synchronous
    // standby, so strict mode lets commits through.
    let c = PatroniCluster::start(&PatroniSpec::strict(3));
    let dir = tempfile::tempdir().unwrap();
    // Patroni's user runs lightningd on the new leader's host: it must reach its dir and
    // bitcoind's.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let btc = Bitcoind::start(&bins, dir.path());
    let a_port = common::free_port();
    let hosts: Vec<Node> = ["n1", "n2", "n3"]
        .iter()
        .map(|m| prepare_host(&c, m, &bins, &btc, dir.path(), a_port))
        .collect();
    for host in &hosts {
        hand_to_patroni_user(&c, &host.dir);
    }
    let b = Node::new(&bins, dir.path().join("b"), &btc);

    // The operator starts A on n1's host (`systemctl start lightningd`): pre-flight, then A.
    c.node("n1")
        .systemctl(&["--no-block", "start", LIGHTNINGD_UNIT])
        .unwrap();
    wait_serving(&c, "n1", &hosts[0]);
    share_hsm_secret(&c, &hosts);
    let run_b = b.run_with(
        None,
        None,
        &["--developer".into(), "--dev-bitcoind-poll=1".into()],
    );
    assert!(run_b.started, "B did not start:\n{}", run_b.log);
    let ch = open_channel_and_pay(&hosts[0], &b);

    let lost = lose_host(&c, "n1", &hosts[0]);
    let (leader, promoted) = wait_promotion(&c, ["n2", "n3"]);
    let (other, a) = if leader == "n2" {
        ("n3", &hosts[1])
    } else {
        ("n2", &hosts[2])
    };
    // Nothing but Patroni's on_role_change starts A beside the new leader.
    let done = AtomicBool::new(false);
    let (serving, leader_state) = std::thread::scope(|s| {
        let watch = s.spawn(|| watch_new_leader(&c, leader, &done));
        let serving = wait_serving(&c, leader, a);
        done.store(true, Ordering::SeqCst);
        (serving, watch.join().unwrap())
    });
    let start_call = started_only_beside(&c, leader, other, lost).at;
    assert_channel_intact(a, &b, &btc, &ch);
    let moments = Moments {
        lost,
        promoted,
        start_call,
        leader_state,
        serving,
    };
    print_split(&c, leader, &moments);
    // The operator stops A the way on_role_change does.
    c.node(leader)
        .systemctl(&["--no-block", "stop", LIGHTNINGD_UNIT])
        .unwrap();
    wait_for("A to stop", Duration::from_secs(30), || {
        Ok(c.node(leader).unit_pid(LIGHTNINGD_UNIT).is_none())
    })
    .unwrap();
    b.stop(run_b);
}

fn msat(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not an msat amount: {v}"))
}
