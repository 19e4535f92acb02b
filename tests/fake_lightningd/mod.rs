//! A fake lightningd: spawns the built plugin under a process named `lightningd`, speaks the
//! plugin protocol over its stdin/stdout, and serves `lightning-rpc` on a Unix socket with
//! the `listconfigs` answers a real lightningd gives (verified on v26.06).

#![allow(dead_code)]

use std::io::{BufReader, Write};
use std::os::unix::net::UnixListener;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const PLUGIN: &str = env!("CARGO_BIN_EXE_cln-replguard");

pub struct Setup {
    pub wallet: String,
    pub important: bool,
    pub version: String,
    pub options: Value,
    /// Extra environment for the plugin (test-only switches).
    pub env: Vec<(String, String)>,
    /// The plugin's descriptor limit (RLIMIT_NOFILE), as lightningd would hand it down.
    pub nofile: Option<u64>,
    /// lightningd's `config` file (and an empty `regtest/`), written before the plugin starts:
    /// the plugin reads it as it starts, so a file written after could come too late.
    pub config: Option<String>,
}

impl Setup {
    pub fn new(wallet: &str) -> Setup {
        Setup {
            wallet: wallet.into(),
            important: true,
            version: "v26.06.6".into(),
            options: json!({}),
            env: Vec::new(),
            nofile: None,
            config: None,
        }
    }

    pub fn config(mut self, text: &str) -> Setup {
        self.config = Some(text.into());
        self
    }

    pub fn option(mut self, name: &str, value: Value) -> Setup {
        self.options[name] = value;
        self
    }
}

/// What came of `init`.
#[derive(Debug)]
pub enum InitOutcome {
    Answered(Value),
    /// The wrapper (our "lightningd") ended: by the plugin's exit code, or by a signal.
    Ended(ExitStatus),
}

pub struct Fake {
    pub dir: tempfile::TempDir,
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Value>,
    /// `log` notifications received so far: (level, message).
    pub logs: Vec<(String, String)>,
    /// Other notifications.
    pub notifications: Vec<Value>,
    next_id: u64,
    setup_options: Option<Value>,
    /// Methods the plugin called on lightning-rpc, in order.
    pub rpc_calls: Arc<Mutex<Vec<String>>>,
    /// While set, nothing is read from the plugin's stdout (lightningd frozen on a commit).
    pub stop_reading: Arc<AtomicBool>,
    /// Everything the plugin wrote on stderr.
    pub stderr: Arc<Mutex<String>>,
}

impl Fake {
    /// Started, manifest taken and init answered with a result (the test fails otherwise).
    pub fn started(setup: Setup) -> Fake {
        let mut f = Fake::start(setup);
        f.getmanifest();
        let o = f.init(Duration::from_secs(30));
        assert!(
            matches!(&o, InitOutcome::Answered(r) if r["result"].is_object()),
            "{o:?} {:?}",
            f.logs
        );
        f
    }

    pub fn start(setup: Setup) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        if let Some(text) = &setup.config {
            std::fs::write(dir.path().join("config"), text).unwrap();
            std::fs::create_dir_all(dir.path().join("regtest")).unwrap();
        }
        let rpc_calls = Arc::new(Mutex::new(Vec::new()));
        serve_rpc(dir.path().join("lightning-rpc"), &setup, rpc_calls.clone());
        // Our "lightningd": a shell named lightningd that runs the plugin as its child, so
        // the plugin's parent is a process called lightningd, as in real life.
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::os::unix::fs::symlink("/bin/sh", bin.join("lightningd")).unwrap();
        // lightningd's own arguments follow, as the plugin reads them from /proc before init.
        let lightning_dir = format!("--lightning-dir={}", dir.path().display());
        let mut command = Command::new(bin.join("lightningd"));
        if let Some(n) = setup.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; it runs in the child before exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .args([
                "-c",
                "\"$0\"; exit $?",
                PLUGIN,
                &lightning_dir,
                "--network=regtest",
            ])
            .current_dir(dir.path())
            .env("LIGHTNINGD_PLUGIN", "1")
            .env("LIGHTNINGD_VERSION", &setup.version)
            .env_remove("REPLGUARD_DSN")
            .envs(setup.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the plugin");
        // What the plugin writes on stderr (lightningd would log it), also shown as it comes.
        let stderr_text = Arc::new(Mutex::new(String::new()));
        let sink = stderr_text.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{line}");
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        // A small pipe, as a frozen lightningd's would soon be full.
        // SAFETY: F_SETPIPE_SZ on a pipe fd we own.
        unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&stdout),
                libc::F_SETPIPE_SZ,
                4096,
            );
        }
        let (tx, rx) = channel();
        let stop_reading = Arc::new(AtomicBool::new(false));
        let paused = stop_reading.clone();
        std::thread::spawn(move || {
            let stream =
                serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>();
            for v in stream {
                while paused.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                match v {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        let mut fake = Fake {
            dir,
            child,
            stdin,
            rx,
            logs: Vec::new(),
            notifications: Vec::new(),
            next_id: 0,
            setup_options: None,
            rpc_calls,
            stop_reading,
            stderr: stderr_text,
        };
        fake.setup_options = Some(setup.options.clone());
        fake
    }

    fn send(&mut self, method: &str, params: Value) -> String {
        self.next_id += 1;
        let id = format!("fake/{method}#{}", self.next_id);
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        write!(self.stdin, "{msg}\n\n").unwrap();
        self.stdin.flush().unwrap();
        id
    }

    /// Waits for the response to `id`, collecting notifications on the way.
    fn response(&mut self, id: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) if v.get("id").and_then(Value::as_str) == Some(id) => return Some(v),
                Ok(v) => self.note(v),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None;
                }
            }
        }
    }

    fn note(&mut self, v: Value) {
        if v.get("method").and_then(Value::as_str) == Some("log") {
            let p = &v["params"];
            self.logs.push((
                p["level"].as_str().unwrap_or("").to_string(),
                p["message"].as_str().unwrap_or("").to_string(),
            ));
        } else {
            self.notifications.push(v);
        }
    }

    pub fn getmanifest(&mut self) -> Value {
        let id = self.send("getmanifest", json!({"allow-deprecated-apis": false}));
        let r = self
            .response(&id, Duration::from_secs(30))
            .expect("getmanifest answered");
        r["result"].clone()
    }

    /// Sends `init` and waits up to `timeout` for the answer or the end of the process.
    pub fn init(&mut self, timeout: Duration) -> InitOutcome {
        let params = json!({
            "options": self.setup_options.clone().unwrap_or(json!({})),
            "configuration": {
                "lightning-dir": self.dir.path(),
                "rpc-file": "lightning-rpc",
                "startup": true,
                "network": "regtest",
                "feature_set": {},
            },
        });
        let id = self.send("init", params);
        match self.response(&id, timeout) {
            Some(r) => InitOutcome::Answered(r),
            None => InitOutcome::Ended(
                self.wait_end(Duration::from_secs(5))
                    .expect("no answer and no exit"),
            ),
        }
    }

    /// A JSON-RPC call as lightningd forwards it: returns the whole response.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.send(method, params);
        self.response(&id, Duration::from_secs(30))
            .expect("method answered")
    }

    pub fn wait_end(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Drain what the plugin wrote before it went.
                while let Ok(v) = self.rx.recv_timeout(Duration::from_millis(200)) {
                    self.note(v);
                }
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs_at(&self, level: &str) -> Vec<&str> {
        self.logs
            .iter()
            .filter(|(l, _)| l == level)
            .map(|(_, m)| m.as_str())
            .collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        // The plugin is the shell's child: end it first, then the shell.
        let _ = Command::new("pkill")
            .args(["-9", "-P", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Serves `listconfigs` on the lightning-rpc socket.
fn serve_rpc(path: PathBuf, setup: &Setup, calls: Arc<Mutex<Vec<String>>>) {
    let listener = UnixListener::bind(&path).unwrap();
    let wallet = setup.wallet.clone();
    let important = setup.important;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let wallet = wallet.clone();
            let calls = calls.clone();
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let reqs = serde_json::Deserializer::from_reader(BufReader::new(stream))
                    .into_iter::<Value>();
                for req in reqs.flatten() {
                    calls
                        .lock()
                        .unwrap()
                        .push(req["method"].as_str().unwrap_or("").to_string());
                    let result = match (req["method"].as_str(), req["params"]["config"].as_str()) {
                        (Some("stop"), _) => json!("Shutdown complete"),
                        (Some("listconfigs"), Some("wallet")) => {
                            json!({"configs": {"wallet": {"source": "cmdline", "value_str": wallet}}})
                        }
                        (Some("listconfigs"), Some("important-plugin")) if important => json!({
                            "configs": {"important-plugin": {"values_str": [PLUGIN], "sources": ["cmdline"]}}
                        }),
                        (Some("listconfigs"), Some(_)) => json!({"configs": {}}),
                        _ => {
                            let e = json!({"jsonrpc": "2.0", "id": req["id"], "error": {"code": -32601, "message": "Unknown command"}});
                            let _ = write!(out, "{e}\n\n");
                            continue;
                        }
                    };
                    let r = json!({"jsonrpc": "2.0", "id": req["id"], "result": result});
                    let _ = write!(out, "{r}\n\n");
                }
            });
        }
    });
}

impl Fake {
    /// Calls a hook as lightningd does and returns its result.
    pub fn hook(&mut self, name: &str, payload: Value) -> Value {
        let r = self.call(name, payload);
        assert!(
            r.get("error").is_none(),
            "a hook must never answer with an error: {r}"
        );
        r["result"].clone()
    }

    /// Calls a hook with `params` written as they are, JSON or not, as lightningd forwards a
    /// client's raw tokens (DESIGN §6). `None`: no answer within 30 s.
    pub fn hook_raw(&mut self, name: &str, params: &[u8]) -> Option<Value> {
        self.next_id += 1;
        let id = format!("fake/{name}#{}", self.next_id);
        let head = format!(r#"{{"jsonrpc":"2.0","id":"{id}","method":"{name}","params":"#);
        self.stdin.write_all(head.as_bytes()).unwrap();
        self.stdin.write_all(params).unwrap();
        self.stdin.write_all(b"}\n\n").unwrap();
        self.stdin.flush().unwrap();
        self.response(&id, Duration::from_secs(30))
    }

    /// Polls `method` until `pred` holds on its response, or panics after `timeout`.
    pub fn poll(
        &mut self,
        method: &str,
        params: Value,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.call(method, params.clone());
            if pred(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{method} never matched; last: {r:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Takes in what the plugin sent so far (logs and notifications).
    pub fn drain(&mut self) {
        while let Ok(v) = self.rx.recv_timeout(Duration::from_millis(50)) {
            self.note(v);
        }
    }

    /// The pid of our "lightningd" (the plugin's parent).
    pub fn child_id(&self) -> u32 {
        self.child.id()
    }

    /// The plugin's own pid (our "lightningd" is its parent).
    pub fn plugin_pid(&self) -> u32 {
        let id = self.child.id();
        let children =
            std::fs::read_to_string(format!("/proc/{id}/task/{id}/children")).unwrap_or_default();
        children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("the plugin runs")
    }

    /// Whether our "lightningd" still runs (the plugin may end it with SIGTERM).
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn stopped(&self) -> bool {
        self.rpc_calls.lock().unwrap().iter().any(|m| m == "stop")
    }
}

/// lightningd keeps one session open on its wallet database; the plugin looks for it.
pub fn lightningd_session(c: &cln_replguard::cluster::Cluster) -> cln_replguard::cluster::Daemon {
    let d = c
        .spawn_sql("lightningd", "lightningd", "SELECT pg_sleep(3600)")
        .unwrap();
    cln_replguard::cluster::wait_for("lightningd's session", Duration::from_secs(10), || {
        Ok(c.primary.psql(
            "SELECT count(*) FROM pg_stat_activity \
              WHERE usename = 'lightningd' AND query LIKE '%pg_sleep%'",
        )? == "1")
    })
    .unwrap();
    d
}

pub fn ended_by_sigterm(s: &ExitStatus) -> bool {
    s.signal() == Some(libc_sigterm())
}

fn libc_sigterm() -> i32 {
    15
}
