//! What the plugin adds to an incoming payment on a real lightningd: B (wallet on the real
//! primary/standby pair, the plugin important) is paid by A over a channel, with
//! `replguard-gate-payments` false (the default: no `htlc_accepted` hook) and true (the hook on
//! every incoming HTLC), alternately. Ignored unless asked for: `LIGHTNINGD=… BITCOIND=… cargo
//! test --test e2e_htlc -- --ignored --nocapture` (prints the latencies for BENCHMARKS.md).

mod common;
mod e2e_support;

use std::time::{Duration, Instant};

use cln_replguard::cluster::{Cluster, ClusterSpec, wait_for};
use serde_json::Value;

use common::*;
use e2e_support::*;

/// Payments per run of B; runs per setting.
const PAYMENTS: usize = 25;
const ROUNDS: usize = 3;

fn dev_opts() -> Vec<String> {
    vec!["--developer".into(), "--dev-bitcoind-poll=1".into()]
}

fn channel_quiet(node: &Node) -> bool {
    let v = node.json(&["listpeerchannels"]);
    v["channels"].as_array().unwrap().iter().any(|c| {
        c["state"] == "CHANNELD_NORMAL"
            && c["peer_connected"] == true
            && c["htlcs"].as_array().is_none_or(|h| h.is_empty())
    })
}

fn wait_quiet(a: &Node, b: &Node) {
    wait_for("the channel to be normal", Duration::from_secs(120), || {
        Ok(channel_quiet(a) && channel_quiet(b))
    })
    .unwrap();
}

/// `PAYMENTS` payments A → B; the milliseconds each `pay` took.
fn pay_many(a: &Node, b: &Node, tag: &str) -> Vec<f64> {
    (0..PAYMENTS)
        .map(|i| {
            let inv = b.json(&["invoice", "1000000", &format!("{tag}-{i}"), "htlc latency"]);
            let bolt11 = inv["bolt11"].as_str().unwrap();
            let t = Instant::now();
            let v: Value = a.json(&["pay", bolt11]);
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(v["status"], "complete", "{v:#}");
            ms
        })
        .collect()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
#[ignore = "needs LIGHTNINGD and BITCOIND (real lightningd and bitcoind binaries)"]
fn incoming_payments_wait_on_the_plugin_only_when_payments_are_gated() {
    let bins = bins_or_fail("incoming_payments_wait_on_the_plugin_only_when_payments_are_gated");
    let c: Cluster = start(&ClusterSpec::pair());
    let dir = tempfile::tempdir().unwrap();
    let btc = Bitcoind::start(&bins, dir.path());
    let a = Node::new(&bins, dir.path().join("a"), &btc);
    let b = Node::new(&bins, dir.path().join("b"), &btc);
    let wallet = c.primary.wallet_dsn();

    let run_a = a.run_with(None, None, &dev_opts());
    assert!(run_a.started, "A did not start:\n{}", run_a.log);
    let mut run_b = b.run(&wallet, "important-plugin", &dev_opts());
    assert!(run_b.started, "B did not start:\n{}", run_b.log);
    a.fund_channel_to(&b, 1_000_000);
    let b_id = b.json(&["getinfo"])["id"].as_str().unwrap().to_string();
    wait_quiet(&a, &b);
    // Warm up both sides once before measuring.
    pay_many(&a, &b, "warmup");

    let mut ms = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for gated in [false, true] {
            b.stop(run_b);
            let mut opts = dev_opts();
            opts.push(format!("--replguard-gate-payments={gated}"));
            run_b = b.run(&wallet, "important-plugin", &opts);
            assert!(run_b.started, "B did not start:\n{}", run_b.log);
            let said = if gated {
                "payments are gated"
            } else {
                "payments are not gated"
            };
            assert!(run_b.log.contains(said), "{}", run_b.log);
            a.json(&["connect", &b_id, "127.0.0.1", &b.port.to_string()]);
            wait_quiet(&a, &b);
            let mut run = pay_many(&a, &b, &format!("r{round}-{gated}"));
            ms[usize::from(gated)].extend(run.iter().copied());
            eprintln!(
                "round {round}, replguard-gate-payments={gated}: median {:.1} ms",
                median(&mut run)
            );
        }
    }
    let (mut off, mut on) = (ms[0].clone(), ms[1].clone());
    let (m_off, m_on) = (median(&mut off), median(&mut on));
    eprintln!(
        "pay A→B, {} payments each, B's plugin with replguard-gate-payments=false (no \
         htlc_accepted hook): median {m_off:.1} ms (min {:.1}, max {:.1}); =true (hook on each \
         incoming HTLC): median {m_on:.1} ms (min {:.1}, max {:.1}); difference of medians \
         {:.1} ms",
        off.len(),
        off[0],
        off[off.len() - 1],
        on[0],
        on[on.len() - 1],
        m_on - m_off
    );
    b.stop(run_b);
    a.stop(run_a);
}
