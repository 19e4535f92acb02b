//! `reckless install` as a Core Lightning operator runs it, against a real lightningd on a real
//! primary/standby pair. Ignored unless asked for: `LIGHTNINGD=… BITCOIND=… cargo test --test
//! e2e_reckless -- --ignored`. reckless is CLN's `tools/reckless` (a Python script) beside
//! LIGHTNINGD's source tree, or `RECKLESS`. It installs from a local directory named like the
//! plugin (a copy of this checkout's tracked files), so no network is needed: cargo runs
//! offline from the local registry cache. reckless builds a release binary from scratch: this
//! test takes minutes.

mod common;
mod e2e_support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cln_replguard::cluster::{Cluster, ClusterSpec};

use common::*;
use e2e_support::*;

/// CLN's reckless: `RECKLESS`, else `tools/reckless` in the source tree LIGHTNINGD was built in.
fn reckless(b: &Bins) -> PathBuf {
    if let Some(p) = std::env::var_os("RECKLESS") {
        return PathBuf::from(p);
    }
    let tree = b.lightningd.parent().and_then(Path::parent).unwrap();
    let p = tree.join("tools").join("reckless");
    assert!(
        p.is_file(),
        "no reckless at {}: set RECKLESS to CLN's tools/reckless",
        p.display()
    );
    p
}

/// A source directory named like the plugin holding this checkout's tracked files, as a
/// fresh clone would have them.
fn plugin_source(into: &Path) -> PathBuf {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(checkout)
        .output()
        .expect("git ls-files");
    assert!(listed.status.success(), "git ls-files: {listed:?}");
    let dir = into.join("cln-replguard");
    for rel in listed.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel).unwrap());
        let from = checkout.join(rel);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        let to = dir.join(rel);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&from, &to).unwrap();
    }
    dir
}

/// Runs `reckless -v -l <lightning-dir> --network regtest <args>`: its exit code and the
/// session. reckless logs on stdout; `cargo build -vv`, which it runs with our stdout and
/// stderr, writes thousands of lines, of which only cargo's verdict ("Finished …", errors) is
/// kept.
fn run_reckless(b: &Bins, node: &Node, args: &[&str]) -> (i32, String) {
    let out = Command::new("python3")
        .arg(reckless(b))
        .args(["-v", "-l"])
        .arg(&node.dir)
        .args(["--network", "regtest"])
        .args(args)
        .env("LIGHTNING_CLI", &b.lightning_cli)
        // Offline: the dependencies come from the local cargo registry cache.
        .env("CARGO_NET_OFFLINE", "true")
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs reckless");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let cargo: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("Finished") || t.starts_with("error") || t.starts_with("Traceback")
        })
        .collect();
    // cargo -vv also prints each build script's output on stdout, as "[crate x.y] …";
    // reckless's own lines start with a date ("[2026-…] DEBUG: …") or with no bracket.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let reckless: Vec<&str> = stdout
        .lines()
        .filter(|l| {
            l.strip_prefix('[')
                .is_none_or(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    let session = format!(
        "{}\n--- cargo (stderr, {} lines, its verdict only):\n{}",
        reckless.join("\n"),
        stderr.lines().count(),
        cargo.join("\n")
    );
    (out.status.code().unwrap_or(-1), session)
}

#[test]
#[ignore = "needs LIGHTNINGD and BITCOIND (real binaries), python3 and CLN's tools/reckless"]
fn reckless_installs_the_plugin_and_lightningd_runs_it() {
    let b = bins_or_fail("reckless_installs_the_plugin_and_lightningd_runs_it");
    let c: Cluster = start(&ClusterSpec::pair());
    let dir = tempfile::tempdir().unwrap();
    let btc = Bitcoind::start(&b, dir.path());
    let node = Node::new(&b, dir.path().join("ln"), &btc);
    let wallet = c.primary.wallet_dsn();
    // reckless edits the network's config file (it asks before creating one).
    fs::create_dir_all(node.dir.join("regtest")).unwrap();
    fs::write(node.dir.join("regtest").join("config"), "").unwrap();
    let source = plugin_source(dir.path());

    // 1. Installed while lightningd is stopped, as the plugin is not dynamic: reckless builds
    // it, test-runs it bare (exit 0 wanted) and enables it with a plain plugin= line.
    let t = std::time::Instant::now();
    let (code, out) = run_reckless(&b, &node, &["install", source.to_str().unwrap()]);
    let session = out;
    eprintln!(
        "reckless install ({:.0} s): exit {code}\n{session}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(code, 0, "{session}");
    assert!(session.contains("plugin installed"), "{session}");
    let conf_path = node.dir.join("reckless").join("regtest-reckless.conf");
    let conf = fs::read_to_string(&conf_path).unwrap();
    eprintln!("{}:\n{conf}", conf_path.display());
    let line = conf
        .lines()
        .find(|l| l.starts_with("plugin=") && l.ends_with("/cln-replguard"))
        .unwrap_or_else(|| panic!("no plugin= line: {conf}"))
        .to_string();

    // 2. lightningd loads it from reckless's line (no plugin option of ours) on a safe pair.
    let run = node.run_with(Some(&wallet), None, &[]);
    assert!(run.started, "lightningd did not start:\n{}", run.log);
    let (code, out) = node.cli(&["plugin", "list"]);
    assert!(code == 0 && out.contains("cln-replguard"), "{out}");
    let (code, out) = node.cli(&["replication-status"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"verdict\": \"safe\""), "{out}");
    node.stop(run);

    // 3. Unsafe storage with reckless's plain plugin= line: lightningd starts (what plugin=
    // means in Core Lightning), and the log line says so and how to make it refuse.
    c.set_sync_names("").unwrap();
    let short_wait = ["--replguard-startup-wait=1".to_string()];
    let run = node.run_with(Some(&wallet), None, &short_wait);
    assert!(run.started, "{}", run.log);
    let said = lines_with(&run.log, "not important-plugin=");
    eprintln!("plain plugin= on unsafe storage: {said:#?}");
    assert!(
        said.iter()
            .any(|l| l.contains("change the line to important-plugin=")),
        "{}",
        run.log
    );
    node.stop(run);

    // 4. The documented step after reckless: the line becomes important-plugin=, and
    // lightningd refuses to run on the same unsafe storage.
    let important = line.replacen("plugin=", "important-plugin=", 1);
    fs::write(&conf_path, conf.replace(&line, &important)).unwrap();
    let run = node.run_with(Some(&wallet), None, &short_wait);
    assert!(!run.started, "lightningd started:\n{}", run.log);
    eprintln!(
        "important-plugin= on unsafe storage: {:#?}",
        lines_with(&run.log, "refusing")
    );
    assert!(
        run.log.contains("refusing to run lightningd"),
        "{}",
        run.log
    );
}
