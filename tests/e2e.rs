//! End to end against a real lightningd and bitcoind (regtest) on a real primary/standby
//! pair. Runs when `LIGHTNINGD` and `BITCOIND` name the binaries (`lightning-cli` and
//! `bitcoin-cli` are looked for beside them, or given as `LIGHTNING_CLI`/`BITCOIN_CLI`);
//! otherwise it says it was skipped. Everything listens on 127.0.0.1 only.

mod common;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cln_replguard::cluster::{Cluster, ClusterSpec, wait_for};

use common::*;

const PLUGIN: &str = env!("CARGO_BIN_EXE_cln-replguard");

struct Bins {
    lightningd: PathBuf,
    lightning_cli: PathBuf,
    bitcoind: PathBuf,
    bitcoin_cli: PathBuf,
}

fn sibling(var: &str, beside: &Path, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let dir = beside.parent()?;
    candidates.iter().map(|c| dir.join(c)).find(|p| p.is_file())
}

fn bins() -> Option<Bins> {
    let lightningd = PathBuf::from(std::env::var_os("LIGHTNINGD")?);
    let bitcoind = PathBuf::from(std::env::var_os("BITCOIND")?);
    Some(Bins {
        lightning_cli: sibling(
            "LIGHTNING_CLI",
            &lightningd,
            &["lightning-cli", "../cli/lightning-cli"],
        )
        .expect("lightning-cli beside LIGHTNINGD, or LIGHTNING_CLI"),
        bitcoin_cli: sibling("BITCOIN_CLI", &bitcoind, &["bitcoin-cli"])
            .expect("bitcoin-cli beside BITCOIND, or BITCOIN_CLI"),
        lightningd,
        bitcoind,
    })
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Bitcoind {
    _proc: Proc,
    cli: Vec<String>,
    rpcport: u16,
    datadir: PathBuf,
}

impl Bitcoind {
    fn start(b: &Bins, dir: &Path) -> Bitcoind {
        let datadir = dir.join("bitcoind");
        fs::create_dir_all(&datadir).unwrap();
        let rpcport = free_port();
        let auth = ["-rpcuser=rg".to_string(), "-rpcpassword=rg".to_string()];
        let common = vec![
            "-regtest".to_string(),
            format!("-datadir={}", datadir.display()),
            format!("-rpcport={rpcport}"),
        ];
        let p = Command::new(&b.bitcoind)
            .args(&common)
            .args(&auth)
            .args([
                "-server",
                "-listen=0",
                "-rpcbind=127.0.0.1",
                "-rpcallowip=127.0.0.1",
                "-fallbackfee=0.0002",
                "-txindex=0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut cli = vec![b.bitcoin_cli.display().to_string()];
        cli.extend(common);
        cli.extend(auth);
        cli.push("-rpcconnect=127.0.0.1".into());
        let btc = Bitcoind {
            _proc: Proc(p),
            cli,
            rpcport,
            datadir,
        };
        wait_for("bitcoind RPC", Duration::from_secs(60), || {
            Ok(btc.rpc(&["getblockcount"]).status.success())
        })
        .unwrap();
        btc.rpc(&["createwallet", "miner"]);
        let addr = String::from_utf8(btc.rpc(&["getnewaddress"]).stdout).unwrap();
        assert!(
            btc.rpc(&["generatetoaddress", "101", addr.trim()])
                .status
                .success()
        );
        btc
    }

    fn rpc(&self, args: &[&str]) -> Output {
        Command::new(&self.cli[0])
            .args(&self.cli[1..])
            .args(args)
            .output()
            .unwrap()
    }
}

struct Node<'a> {
    bins: &'a Bins,
    dir: PathBuf,
    btc: &'a Bitcoind,
}

/// How a lightningd run ended up.
struct Run {
    proc: Option<Proc>,
    started: bool,
    log: String,
}

impl<'a> Node<'a> {
    fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// Starts lightningd and waits until it serves ("Server started") or ends.
    fn run(&self, wallet: &str, plugin_line: &str, extra: &[String]) -> Run {
        let _ = fs::remove_file(self.log_path());
        let mut cmd = Command::new(&self.bins.lightningd);
        cmd.arg("--network=regtest")
            .arg(format!("--lightning-dir={}", self.dir.display()))
            .arg(format!("--wallet={wallet}"))
            .arg(format!("--{plugin_line}={PLUGIN}"))
            .arg(format!("--log-file={}", self.log_path().display()))
            .arg("--log-level=debug")
            .arg(format!("--bind-addr=127.0.0.1:{}", free_port()))
            .arg(format!("--bitcoin-cli={}", self.btc.cli[0]))
            .arg(format!("--bitcoin-datadir={}", self.btc.datadir.display()))
            .arg(format!("--bitcoin-rpcport={}", self.btc.rpcport))
            .arg("--bitcoin-rpcconnect=127.0.0.1")
            .args(["--bitcoin-rpcuser=rg", "--bitcoin-rpcpassword=rg"])
            .args(extra)
            .env_remove("LIGHTNINGD_PLUGIN")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let log = fs::read_to_string(self.log_path()).unwrap_or_default();
            if log.contains("Server started") {
                return Run {
                    proc: Some(Proc(child)),
                    started: true,
                    log,
                };
            }
            if let Some(status) = child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                let log = fs::read_to_string(self.log_path()).unwrap_or_default();
                eprintln!("lightningd ended: {status}");
                return Run {
                    proc: None,
                    started: log.contains("Server started"),
                    log,
                };
            }
            assert!(
                Instant::now() < deadline,
                "lightningd neither started nor ended:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cli(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(&self.bins.lightning_cli)
            .arg("--network=regtest")
            .arg(format!("--lightning-dir={}", self.dir.display()))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Repeats a command until its output satisfies `pred` (10 s at most); the last output.
    fn cli_until(&self, args: &[&str], pred: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let (_, out) = self.cli(args);
            if pred(&out) || t.elapsed() > Duration::from_secs(10) {
                return out;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&self, run: Run) {
        if run.proc.is_some() {
            let _ = self.cli(&["stop"]);
        }
        drop(run);
    }
}

fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn real_lightningd_with_the_plugin_on_a_real_pair() {
    let Some(b) = bins() else {
        // Straight to stderr: the test harness would swallow eprintln! of a passing test.
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED real_lightningd_with_the_plugin_on_a_real_pair: set LIGHTNINGD and BITCOIND \
             to the binaries (lightningd built with PostgreSQL support) to run it"
        );
        return;
    };
    let c: Cluster = start(&ClusterSpec::pair());
    let dir = tempfile::tempdir().unwrap();
    let btc = Bitcoind::start(&b, dir.path());
    let node = Node {
        bins: &b,
        dir: dir.path().join("ln"),
        btc: &btc,
    };
    fs::create_dir_all(&node.dir).unwrap();
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

    // 3. The same as a plain plugin: the node does not run either.
    let run = node.run(&wallet, "plugin", &short_wait);
    assert!(
        !run.started,
        "lightningd started with a plain plugin:\n{}",
        run.log
    );
    assert!(
        run.log.contains("important-plugin=/path/to/cln-replguard"),
        "{}",
        run.log
    );

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
