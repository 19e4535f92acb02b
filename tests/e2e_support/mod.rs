//! Shared by the end-to-end tests: the binaries, bitcoind (regtest) and lightningd nodes,
//! each process killed when its handle drops (also while a test panics). Everything listens
//! on 127.0.0.1 only.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cln_replguard::cluster::wait_for;
use serde_json::Value;

use crate::common::free_port;

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_cln-replguard");

pub struct Bins {
    pub lightningd: PathBuf,
    pub lightning_cli: PathBuf,
    pub bitcoind: PathBuf,
    pub bitcoin_cli: PathBuf,
}

fn sibling(var: &str, beside: &Path, candidates: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let dir = beside.parent()?;
    candidates.iter().map(|c| dir.join(c)).find(|p| p.is_file())
}

/// The binaries from `LIGHTNINGD` and `BITCOIND` (`lightning-cli` and `bitcoin-cli` beside
/// them, or `LIGHTNING_CLI`/`BITCOIN_CLI`); `None` when either variable is unset.
pub fn bins() -> Option<Bins> {
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

/// The binaries. The tests that need them are `#[ignore]`d (`cargo test` lists them as ignored,
/// not as passed); one asked for with `--ignored` without them fails rather than pass unrun.
pub fn bins_or_fail(test: &str) -> Bins {
    bins().unwrap_or_else(|| {
        panic!(
            "{test} cannot run: set LIGHTNINGD and BITCOIND to the binaries (lightningd built \
             with PostgreSQL support)"
        )
    })
}

/// A child process killed on drop.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Whether the process still runs (an ended one is reaped).
    pub fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Bitcoind {
    _proc: Proc,
    pub cli: Vec<String>,
    pub rpcport: u16,
    pub datadir: PathBuf,
}

impl Bitcoind {
    pub fn start(b: &Bins, dir: &Path) -> Bitcoind {
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
        btc.mine(101);
        btc
    }

    pub fn rpc(&self, args: &[&str]) -> Output {
        Command::new(&self.cli[0])
            .args(&self.cli[1..])
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs a call that must succeed; its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.rpc(args);
        assert!(
            out.status.success(),
            "bitcoin-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Mines `n` blocks to the miner's wallet.
    pub fn mine(&self, n: u32) {
        let addr = self.ok(&["getnewaddress"]);
        self.ok(&["generatetoaddress", &n.to_string(), &addr]);
    }

    pub fn height(&self) -> u64 {
        self.ok(&["getblockcount"]).parse().unwrap()
    }
}

pub struct Node<'a> {
    pub bins: &'a Bins,
    pub dir: PathBuf,
    pub btc: &'a Bitcoind,
    /// Where it listens for peers (the same across restarts).
    pub port: u16,
}

/// How a lightningd run ended up.
pub struct Run {
    pub proc: Option<Proc>,
    pub started: bool,
    pub log: String,
}

impl<'a> Node<'a> {
    pub fn new(bins: &'a Bins, dir: PathBuf, btc: &'a Bitcoind) -> Node<'a> {
        fs::create_dir_all(&dir).unwrap();
        Node {
            bins,
            dir,
            btc,
            port: free_port(),
        }
    }

    /// Funds this node on chain (0.1 BTC, confirmed), opens a channel of `sat` to `peer` and
    /// buries the funding 6 deep. Returns `fundchannel`'s answer (`txid`, `outnum`…).
    pub fn fund_channel_to(&self, peer: &Node, sat: u64) -> Value {
        let addr = self.json(&["newaddr", "bech32"])["bech32"]
            .as_str()
            .unwrap()
            .to_string();
        self.btc.ok(&["sendtoaddress", &addr, "0.1"]);
        self.btc.mine(1);
        wait_for("the funds to confirm", Duration::from_secs(60), || {
            Ok(self.json(&["listfunds"])["outputs"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["status"] == "confirmed"))
        })
        .unwrap();
        let peer_id = peer.json(&["getinfo"])["id"].as_str().unwrap().to_string();
        self.json(&["connect", &peer_id, "127.0.0.1", &peer.port.to_string()]);
        let funding = self.json(&["fundchannel", &peer_id, &sat.to_string()]);
        self.btc.mine(6);
        funding
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// The JSON-RPC socket.
    pub fn rpc_path(&self) -> PathBuf {
        self.dir.join("regtest").join("lightning-rpc")
    }

    /// Starts lightningd with the plugin and waits until it serves ("Server started") or ends.
    pub fn run(&self, wallet: &str, plugin_line: &str, extra: &[String]) -> Run {
        self.run_with(Some(wallet), Some(plugin_line), extra)
    }

    /// Starts lightningd (default sqlite wallet when `wallet` is `None`; the plugin loaded
    /// with `plugin_line`, e.g. `important-plugin`, when given) and waits until it serves or
    /// ends.
    pub fn run_with(
        &self,
        wallet: Option<&str>,
        plugin_line: Option<&str>,
        extra: &[String],
    ) -> Run {
        let _ = fs::remove_file(self.log_path());
        let mut cmd = Command::new(&self.bins.lightningd);
        cmd.arg("--network=regtest")
            .arg(format!("--lightning-dir={}", self.dir.display()));
        if let Some(wallet) = wallet {
            cmd.arg(format!("--wallet={wallet}"));
        }
        if let Some(line) = plugin_line {
            cmd.arg(format!("--{line}={PLUGIN}"));
        }
        cmd.arg(format!("--log-file={}", self.log_path().display()))
            .arg("--log-level=debug")
            .arg(format!("--bind-addr=127.0.0.1:{}", self.port))
            .arg(format!("--bitcoin-cli={}", self.btc.cli[0]))
            .arg(format!("--bitcoin-datadir={}", self.btc.datadir.display()))
            .arg(format!("--bitcoin-rpcport={}", self.btc.rpcport))
            .arg("--bitcoin-rpcconnect=127.0.0.1")
            .args(["--bitcoin-rpcuser=rg", "--bitcoin-rpcpassword=rg"])
            .args(extra)
            .env_remove("LIGHTNINGD_PLUGIN")
            .stdout(Stdio::null())
            // Plugins' stderr ends up here too.
            .stderr(fs::File::create(self.dir.join("stderr")).unwrap());
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
                let mut log = fs::read_to_string(self.log_path()).unwrap_or_default();
                eprintln!("lightningd ended: {status}");
                let stderr = fs::read_to_string(self.dir.join("stderr")).unwrap_or_default();
                if !stderr.trim().is_empty() {
                    log.push_str("--- stderr:\n");
                    log.push_str(&stderr);
                }
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

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs lightning-cli; (exit code, stdout, stderr).
    pub fn cli_split(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(&self.bins.lightning_cli)
            .arg("--network=regtest")
            .arg(format!("--lightning-dir={}", self.dir.display()))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs lightning-cli; (exit code, stdout and stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String) {
        let (code, out, err) = self.cli_split(args);
        (code, format!("{out}{err}"))
    }

    /// A call that must succeed, as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        let (code, out, err) = self.cli_split(args);
        assert_eq!(code, 0, "lightning-cli {args:?}: {out}{err}");
        json_of(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// Repeats a command until its output satisfies `pred` (10 s at most); the last output.
    pub fn cli_until(&self, args: &[&str], pred: impl Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let (_, out) = self.cli(args);
            if pred(&out) || t.elapsed() > Duration::from_secs(10) {
                return out;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops lightningd cleanly (`stop`), waiting for it to end (killed after 30 s).
    pub fn stop(&self, mut run: Run) {
        if let Some(p) = run.proc.as_mut() {
            let _ = self.cli(&["stop"]);
            let _ = wait_for("lightningd to stop", Duration::from_secs(30), || {
                Ok(!p.running())
            });
        }
        drop(run);
    }
}

/// lightning-cli's JSON output, without the notification lines (`# …`) it prints first.
pub fn json_of(out: &str) -> serde_json::Result<Value> {
    let json: String = out
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    serde_json::from_str(&json)
}

pub fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}
