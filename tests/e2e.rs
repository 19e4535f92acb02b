//! End to end against a real lightningd and bitcoind (regtest) on a real primary/standby
//! pair. Ignored unless asked for: `LIGHTNINGD=… BITCOIND=… cargo test --test e2e -- --ignored`
//! (`lightning-cli` and `bitcoin-cli` are looked for beside them, or given as
//! `LIGHTNING_CLI`/`BITCOIN_CLI`); asked for without the binaries, it fails. Everything listens
//! on 127.0.0.1 only.

mod common;
mod e2e_support;

use std::time::{Duration, Instant};

use cln_replguard::cluster::{Cluster, ClusterSpec};

use common::*;
use e2e_support::*;

#[test]
#[ignore = "needs LIGHTNINGD and BITCOIND (real lightningd and bitcoind binaries)"]
fn real_lightningd_with_the_plugin_on_a_real_pair() {
    let b = bins_or_fail("real_lightningd_with_the_plugin_on_a_real_pair");
    let c: Cluster = start(&ClusterSpec::pair());
    let dir = tempfile::tempdir().unwrap();
    let btc = Bitcoind::start(&b, dir.path());
    let node = Node::new(&b, dir.path().join("ln"), &btc);
    let wallet = c.primary.wallet_dsn();
    let cases_dir = dir.path();

    // 1. A safe pair: the node starts, replication-status says safe, failover-check exits 0.
    let run = node.run(&wallet, "important-plugin", &[]);
    assert!(run.started, "lightningd did not start:\n{}", run.log);
    eprintln!("safe pair: {:?}", lines_with(&run.log, "startup check"));
    let (code, out) = node.cli(&["replication-status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"verdict\": \"safe\""), "{out}");
    assert!(!out.contains("password"), "{out}");
    eprintln!("lightning-cli replication-status:\n{out}");
    let (code, out) = node.cli(&["failover-check"]);
    assert_eq!(code, 0, "{out}");
    eprintln!("lightning-cli failover-check:\n{out}");

    // listconfigs shows every replguard-* option that has a default, typed (issue 14, item 2).
    let configs = node.json(&["listconfigs"]);
    let mine: serde_json::Map<String, serde_json::Value> = configs["configs"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("replguard-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    eprintln!(
        "lightning-cli listconfigs (replguard-*):\n{}",
        serde_json::to_string_pretty(&mine).unwrap()
    );
    for d in cln_replguard::options::ALL {
        use cln_replguard::options::Kind;
        let shown = &mine.get(d.name).cloned().unwrap_or_default();
        match d.kind {
            Kind::Int(i) => assert_eq!(shown["value_int"], i, "{}: {shown}", d.name),
            Kind::Bool(b) => assert_eq!(shown["value_bool"], b, "{}: {shown}", d.name),
            Kind::Str(Some(v)) => assert_eq!(shown["value_str"], v, "{}: {shown}", d.name),
            Kind::Str(None) | Kind::StrArray => {}
        }
    }
    // A runtime-safe option changes with setconfig; a safety option does not.
    let (code, out) = node.cli(&["setconfig", "replguard-interval", "2"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = node.cli(&["setconfig", "replguard-mode", "warn"]);
    assert_ne!(code, 0, "{out}");
    eprintln!("setconfig replguard-mode: {out}");

    // 1b. A typo in a gated command's parameter reaches the rpc_command hook as raw tokens,
    // not JSON (DESIGN §6): the plugin answers, lightningd rejects the parameter itself, and
    // both live on (issue 11, item 9).
    let malformed = ["-k", "fundchannel", "id=[123x1]", "amount=100000"];
    let (code, out) = node.cli(&malformed);
    eprintln!("malformed fundchannel on a safe pair: exit {code}\n{out}");
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("cln-replguard refuses"), "{out}");
    let (code, out) = node.cli(&["replication-status"]);
    assert_eq!(code, 0, "the plugin lives on: {out}");
    assert!(
        node.log().contains("not valid JSON"),
        "the plugin said what it did"
    );

    // 5. Weakening the role's synchronous_commit while running: restart-required.
    c.primary
        .psql("ALTER ROLE lightningd SET synchronous_commit = local")
        .unwrap();
    // replication-status reports the runtime guard's latest check (one per second).
    let out = node.cli_until(&["replication-status"], |o| o.contains("restart-required"));
    assert!(out.contains("restart-required"), "{out}");
    c.primary
        .psql("ALTER ROLE lightningd RESET synchronous_commit")
        .unwrap();

    // 6. The standby silently downgraded to async while running: failover-check fails.
    c.set_sync_names("").unwrap();
    let (code, out) = node.cli(&["failover-check"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("failover not safe"), "{out}");
    eprintln!("failover-check while async: exit {code}\n{out}");
    // The runtime guard's gate: fundchannel is refused by the plugin, and says why.
    let t = Instant::now();
    let peer = "02".to_string() + &"ab".repeat(32);
    let refused = loop {
        let (code, out) = node.cli(&["fundchannel", &peer, "100000"]);
        if out.contains("cln-replguard refuses fundchannel") {
            break (code, out);
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "fundchannel was never gated: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "fundchannel gated {:.0} ms after the downgrade was seen by failover-check: exit {}\n{}",
        elapsed_ms(t),
        refused.0,
        refused.1
    );
    assert_ne!(refused.0, 0);
    // The same typo while unsafe: still gated, by the plugin, and the node lives on.
    let (code, out) = node.cli(&malformed);
    eprintln!("malformed fundchannel while unsafe: exit {code}\n{out}");
    assert!(out.contains("cln-replguard refuses fundchannel"), "{out}");
    assert_eq!(node.cli(&["getinfo"]).0, 0, "lightningd lives on");
    let out = node.cli_until(&["replication-status"], |o| o.contains("sync-names-empty"));
    assert!(out.contains("sync-names-empty"), "{out}");
    node.stop(run);

    // 2. Standby attached but async, important-plugin + enforce: no start.
    let short_wait = ["--replguard-startup-wait=2".to_string()];
    let run = node.run(&wallet, "important-plugin", &short_wait);
    assert!(
        !run.started,
        "lightningd started on async replication:\n{}",
        run.log
    );
    assert!(run.log.contains("sync-names-empty"), "{}", run.log);
    eprintln!("important + async: {:?}", lines_with(&run.log, "refusing"));

    // 3. The same as a plain plugin: Core Lightning runs lightningd whatever a plain plugin
    // finds; the log line says so and how to make it refuse.
    let run = node.run(&wallet, "plugin", &short_wait);
    assert!(run.started, "{}", run.log);
    assert!(
        run.log.contains("change the line to important-plugin="),
        "{}",
        run.log
    );
    node.stop(run);

    // 4. warn: runs and logs it.
    let run = node.run(
        &wallet,
        "important-plugin",
        &["--replguard-mode=warn".into()],
    );
    assert!(run.started, "{}", run.log);
    assert!(run.log.contains("sync-names-empty"), "{}", run.log);
    node.stop(run);
    let _ = cases_dir;
}
