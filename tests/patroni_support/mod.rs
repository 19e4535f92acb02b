//! Throwaway Patroni clusters for the tests: one etcd and two or three Patroni nodes, each with
//! its PostgreSQL, all on loopback ports the kernel picked. Patroni (4.x, from PyPI) lives in
//! a virtualenv made once from /usr/bin/python3 and cached outside the checkout
//! (`CLN_REPLGUARD_CACHE`, else /var/cache/cln-replguard as root — the servers' user must read
//! it — else ~/.cache/cln-replguard). etcd is Debian's `etcd-server`. A machine without them
//! fails the tests (`.ci/run` installs both); nothing is skipped.
//!
//! As root, etcd, Patroni and so PostgreSQL run as the unprivileged user the PostgreSQL
//! harness uses. Teardown always runs (`Drop`, also while a test panics): Patroni is killed,
//! each PostgreSQL stopped with `-m immediate` (killed if it still runs), then etcd.

#![allow(dead_code)]

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cln_replguard::cluster::{PgInstall, run, wait_for};

/// What the venv is made with: the newest Patroni 4.x with its etcd v3 client and psycopg 3.
const PATRONI_REQUIREMENT: &str = "patroni[etcd3,psycopg3]>=4,<5";
pub const WALLET_ROLE: &str = "lightningd";
/// The unit contrib/patroni/on_role_change starts and stops (its default).
pub const LIGHTNINGD_UNIT: &str = "lightningd.service";

/// `systemctl` for the tests' Patroni (there is no systemd here), first in Patroni's PATH so
/// that contrib/patroni/on_role_change, run by Patroni itself, calls it. It records every call
/// (wall time, arguments) in `calls`. For a unit a test defined in its directory
/// ([`Node::define_unit`]) it does what systemd would: `--no-block start` queues a job and
/// returns at once; the job — in its own session, so that Patroni killing the next callback's
/// predecessor and its children cannot reach it, as it cannot reach a systemd job — runs
/// ExecStartPre, and when that passes, ExecStart. `--no-block stop` sends SIGTERM to the job's
/// process group (systemd's default KillMode=control-group). A start while the unit runs does
/// nothing, as in systemd. Nothing else is implemented (no Restart=, no other verbs).
const SYSTEMCTL_SHIM: &str = r#"#!/bin/sh
here=$(dirname "$0")
echo "$(date +%s.%N) $*" >> "$here/calls"
[ "$#" -eq 3 ] && [ "$1" = --no-block ] || { echo "systemctl stand-in: only --no-block start|stop UNIT" >&2; exit 2; }
verb=$2 unit=$3
[ -f "$here/$unit" ] || exit 0
pidfile="$here/$unit.pid"
running() { [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }
case $verb in
start)
  running && exit 0
  setsid sh -c '
    here=$1 unit=$2
    . "$here/$unit"
    event() { echo "$(date +%s.%N) $*" >> "$here/$unit.events"; }
    echo $$ > "$here/$unit.pid"
    event ExecStartPre
    exec_start_pre || { status=$?; event ExecStartPre-failed $status; exit $status; }
    event ExecStart $$
    exec_start' job "$here" "$unit" >> "$here/$unit.log" 2>&1 < /dev/null &
  ;;
stop)
  if running; then
    pid=$(cat "$pidfile")
    echo "$(date +%s.%N) stop $pid" >> "$here/$unit.events"
    kill -TERM "-$pid"
  fi
  ;;
*) echo "systemctl stand-in: only --no-block start|stop UNIT" >&2; exit 2 ;;
esac
"#;

/// The programs the clusters need, found (or the venv made) once per test process.
pub struct Tools {
    pub python: PathBuf,
    pub etcd: PathBuf,
    pub bindir: PathBuf,
    run_as: Option<(u32, u32)>,
}

pub fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        find_tools().unwrap_or_else(|e| {
            panic!(
                "the Patroni tests need etcd (Debian: apt-get install etcd-server) and Patroni \
                 4.x (made in a cached virtualenv); .ci/run installs both: {e:#}"
            )
        })
    })
}

fn find_tools() -> Result<Tools> {
    let etcd = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow!("no etcd in /usr/bin or /usr/local/bin"))?;
    let install = PgInstall::find()?;
    // SAFETY: geteuid has no preconditions.
    let run_as = if unsafe { libc::geteuid() } == 0 {
        Some(unprivileged_user()?)
    } else {
        None
    };
    Ok(Tools {
        python: patroni_venv()?.join("bin/python"),
        etcd,
        bindir: install.bindir.clone(),
        run_as,
    })
}

/// Where the venv is cached: readable by the servers' user when we are root.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CLN_REPLGUARD_CACHE") {
        return PathBuf::from(d);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/cln-replguard");
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache")
        });
    base.join("cln-replguard")
}

/// The cached venv, made when missing. A lock file keeps two test processes from building it
/// at once; it is built beside and renamed into place, so a half-made venv is never used.
/// (Run through `python -m`, so the rename does not break script paths.)
fn patroni_venv() -> Result<PathBuf> {
    let cache = cache_dir();
    fs::create_dir_all(&cache).with_context(|| format!("mkdir {}", cache.display()))?;
    fs::set_permissions(&cache, fs::Permissions::from_mode(0o755))?;
    let venv = cache.join("patroni-venv");
    let lock = fs::File::create(cache.join("patroni-venv.lock"))?;
    // SAFETY: flock on a file we hold open; released when it closes.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        bail!("flock: {}", std::io::Error::last_os_error());
    }
    if patroni_version(&venv).is_ok_and(|v| v.starts_with("4.")) {
        return Ok(venv);
    }
    let partial = cache.join("patroni-venv.partial");
    let _ = fs::remove_dir_all(&partial);
    run(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&partial),
        "python3 -m venv (Debian: apt-get install python3-venv)",
    )?;
    run(
        Command::new(partial.join("bin/python")).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            PATRONI_REQUIREMENT,
        ]),
        &format!("pip install {PATRONI_REQUIREMENT}"),
    )?;
    let _ = fs::remove_dir_all(&venv);
    fs::rename(&partial, &venv)?;
    let v = patroni_version(&venv)?;
    if !v.starts_with("4.") {
        bail!("the venv holds Patroni {v}, not 4.x");
    }
    Ok(venv)
}

fn patroni_version(venv: &Path) -> Result<String> {
    let out = run(
        Command::new(venv.join("bin/python")).args([
            "-c",
            "from patroni.version import __version__; print(__version__)",
        ]),
        "patroni version",
    )?;
    Ok(out.trim().to_string())
}

fn unprivileged_user() -> Result<(u32, u32)> {
    for name in ["postgres", "nobody"] {
        let cname = std::ffi::CString::new(name)?;
        // SAFETY: getpwnam returns NULL or a pointer to static storage we read at once.
        let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
        if !pw.is_null() {
            // SAFETY: non-null pointer from getpwnam.
            return Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) });
        }
    }
    bail!("running as root, and neither user postgres nor nobody exists")
}

impl Tools {
    /// A command run as the servers' user, with no PG* variables of ours.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd.env("LC_ALL", "C.UTF-8").stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid).current_dir("/");
        }
        cmd
    }

    fn own(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .with_context(|| format!("chown {}", path.display()))?;
        }
        Ok(())
    }

    fn mkdir(&self, path: &Path) -> Result<()> {
        fs::create_dir_all(path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
        self.own(path)
    }
}

/// Patroni's dynamic settings the cluster is bootstrapped with.
#[derive(Clone, Debug)]
pub struct PatroniSpec {
    pub nodes: usize,
    pub synchronous_mode: bool,
    pub synchronous_mode_strict: bool,
}

impl PatroniSpec {
    /// What cln-replguard requires: synchronous mode, strict.
    pub fn strict(nodes: usize) -> PatroniSpec {
        PatroniSpec {
            nodes,
            synchronous_mode: true,
            synchronous_mode_strict: true,
        }
    }
}

/// One Patroni node: its PostgreSQL and its REST API.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub datadir: PathBuf,
    pub socket_dir: PathBuf,
    pub pg_port: u16,
    pub api_port: u16,
    pub config: PathBuf,
    pub log: PathBuf,
    patroni: Mutex<Option<Child>>,
}

impl Node {
    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    pub fn conninfo(&self, user: &str, dbname: &str) -> String {
        format!(
            "host={} port={} user={user} dbname={dbname}",
            self.socket_dir.display(),
            self.pg_port
        )
    }

    /// lightningd's wallet DSN through this node's Unix socket.
    pub fn wallet_dsn(&self) -> String {
        format!("postgres://{}", self.conninfo(WALLET_ROLE, WALLET_ROLE))
    }

    pub fn postmaster_pid(&self) -> Result<i32> {
        let text = fs::read_to_string(self.datadir.join("postmaster.pid"))
            .with_context(|| format!("{}'s PostgreSQL is not running", self.name))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| anyhow!("unreadable postmaster.pid of {}", self.name))
    }

    pub fn patroni_running(&self) -> bool {
        let mut guard = self.patroni.lock().unwrap_or_else(|e| e.into_inner());
        matches!(guard.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Where this node's `systemctl` stand-in lives, with what it recorded and the units a
    /// test defined (see [`SYSTEMCTL_SHIM`]).
    pub fn shim_dir(&self) -> PathBuf {
        self.dir.join("systemd-shim")
    }

    /// Every `systemctl` call on this node (Patroni's callbacks, or the test as operator).
    pub fn systemctl_calls(&self) -> Vec<Stamped> {
        read_stamped(&self.shim_dir().join("calls"))
    }

    /// What the stand-in's job for `unit` did: `ExecStartPre`, `ExecStartPre-failed N`,
    /// `ExecStart PID`, `stop PID`.
    pub fn unit_events(&self, unit: &str) -> Vec<Stamped> {
        read_stamped(&self.shim_dir().join(format!("{unit}.events")))
    }

    /// The process (group) the stand-in started for `unit`, while it runs.
    pub fn unit_pid(&self, unit: &str) -> Option<i32> {
        let pid: i32 = fs::read_to_string(self.shim_dir().join(format!("{unit}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        cln_replguard::pgbin::process_alive(pid).then_some(pid)
    }

    /// Defines `unit` for the stand-in: what systemd would run for it on this host, each
    /// command as its arguments (`ExecStartPre`, then `ExecStart`).
    pub fn define_unit(&self, unit: &str, exec_start_pre: &[String], exec_start: &[String]) {
        let quoted = |args: &[String]| -> String {
            args.iter()
                .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let text = format!(
            "exec_start_pre() {{ {}; }}\nexec_start() {{ exec {}; }}\n",
            quoted(exec_start_pre),
            quoted(exec_start)
        );
        fs::write(self.shim_dir().join(unit), text).expect("write the unit");
    }

    /// Runs `systemctl ARGS` through this node's stand-in, as the operator would (as the
    /// servers' user, like Patroni's callbacks: the unit runs as that user either way).
    pub fn systemctl(&self, args: &[&str]) -> Result<String> {
        run(
            tools()
                .command(&self.shim_dir().join("systemctl"))
                .args(args),
            &format!("systemctl {}", args.join(" ")),
        )
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// etcd, Patroni nodes `n1`…, their PostgreSQL servers; `n1` bootstraps and leads at first.
pub struct PatroniCluster {
    pub nodes: Vec<Node>,
    pub scope: String,
    etcd_port: u16,
    etcd: Mutex<Option<Child>>,
    tools: &'static Tools,
    // Last: removed after every process has stopped.
    dir: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl PatroniCluster {
    pub fn start(spec: &PatroniSpec) -> PatroniCluster {
        Self::try_start(spec)
            .unwrap_or_else(|e| panic!("cannot start the Patroni test cluster: {e:#}"))
    }

    fn try_start(spec: &PatroniSpec) -> Result<PatroniCluster> {
        let tools = tools();
        let dir = tempfile::Builder::new()
            .prefix("replguard-patroni-")
            .tempdir_in("/tmp")?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        tools.own(dir.path())?;
        let scope = format!(
            "rg{}",
            dir.path()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .replace(['-', '.'], "")
        );
        let mut cluster = PatroniCluster {
            nodes: Vec::new(),
            scope,
            etcd_port: free_port()?,
            etcd: Mutex::new(None),
            tools,
            dir,
        };
        // The repo's script, copied: the checkout need not be readable by the servers' user.
        let script = cluster.dir.path().join("on_role_change");
        fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/contrib/patroni/on_role_change"
            ),
            &script,
        )?;
        cluster.start_etcd()?;
        for i in 1..=spec.nodes {
            let node = cluster.make_node(&format!("n{i}"), spec)?;
            cluster.nodes.push(node);
        }
        cluster.start_patroni("n1")?;
        cluster.wait_leader("n1", Duration::from_secs(90))?;
        // Strict mode holds every commit while n1 is alone: these commit locally.
        let leader = cluster.node("n1");
        cluster.psql_with(
            leader,
            &format!("CREATE ROLE {WALLET_ROLE} LOGIN; GRANT pg_monitor TO {WALLET_ROLE}"),
            "-c synchronous_commit=local",
        )?;
        cluster.psql_with(
            leader,
            &format!("CREATE DATABASE {WALLET_ROLE} OWNER {WALLET_ROLE}"),
            "-c synchronous_commit=local",
        )?;
        for i in 2..=spec.nodes {
            cluster.start_patroni(&format!("n{i}"))?;
        }
        cluster.wait_members_streaming(Duration::from_secs(90))?;
        if spec.synchronous_mode {
            cluster.wait_sync_standby(Duration::from_secs(60))?;
        }
        Ok(cluster)
    }

    /// Starts etcd; when it dies at once (a port picked as free was taken meanwhile by
    /// another test), again on other ports.
    fn start_etcd(&mut self) -> Result<()> {
        let mut last = anyhow!("etcd not started");
        for attempt in 0..3 {
            if attempt > 0 {
                self.etcd_port = free_port()?;
            }
            match self.try_start_etcd(attempt) {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            kill_child(&self.etcd);
        }
        Err(last)
    }

    fn try_start_etcd(&self, attempt: usize) -> Result<()> {
        let data = self.dir.path().join(format!("etcd{attempt}"));
        self.tools.mkdir(&data)?;
        let log_path = self.dir.path().join(format!("etcd{attempt}.log"));
        let log = fs::File::create(&log_path)?;
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{}", free_port()?);
        let child = self
            .tools
            .command(&self.tools.etcd)
            .args(["--name", "e1", "--data-dir"])
            .arg(data.join("member"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("e1={peer}")])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd")?;
        *self.etcd.lock().unwrap() = Some(child);
        let mut ended = None;
        wait_for("etcd to answer", Duration::from_secs(30), || {
            let mut slot = self.etcd.lock().unwrap();
            if let Some(Ok(Some(status))) = slot.as_mut().map(|c| c.try_wait()) {
                ended = Some(status);
                return Ok(true);
            }
            drop(slot);
            Ok(http_get(self.etcd_port, "/health")
                .is_ok_and(|(s, body)| s == 200 && body.contains("true")))
        })
        .and_then(|()| match ended {
            Some(status) => Err(anyhow!("etcd ended: {status}")),
            None => Ok(()),
        })
        .map_err(|e| {
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            anyhow!(
                "{e:#}\n--- etcd's log:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
    }

    fn make_node(&self, name: &str, spec: &PatroniSpec) -> Result<Node> {
        let dir = self.dir.path().join(name);
        self.tools.mkdir(&dir)?;
        let node = Node {
            name: name.to_string(),
            datadir: dir.join("data"),
            socket_dir: dir.clone(),
            pg_port: free_port()?,
            api_port: free_port()?,
            config: dir.join("patroni.yml"),
            log: dir.join("patroni.log"),
            dir,
            patroni: Mutex::new(None),
        };
        fs::write(&node.config, self.node_yaml(&node, spec))?;
        self.tools.own(&node.config)?;
        let shim = node.shim_dir();
        fs::create_dir_all(&shim)?;
        fs::write(shim.join("systemctl"), SYSTEMCTL_SHIM)?;
        fs::set_permissions(shim.join("systemctl"), fs::Permissions::from_mode(0o755))?;
        self.tools.own(&shim.join("systemctl"))?;
        self.tools.own(&shim)?;
        Ok(node)
    }

    /// The node's patroni.yml. Short loop so the tests see Patroni's reactions quickly; ttl
    /// is Patroni's minimum.
    fn node_yaml(&self, node: &Node, spec: &PatroniSpec) -> String {
        format!(
            r#"scope: {scope}
name: {name}
log: {{level: INFO}}
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
etcd3:
  hosts: 127.0.0.1:{etcd}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 1
    retry_timeout: 5
    synchronous_mode: {sync}
    synchronous_mode_strict: {strict}
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_log_hints: 'on'
        fsync: 'off'
        max_connections: 50
        shared_buffers: 16MB
        max_slot_wal_keep_size: 1GB
  initdb: [{{encoding: UTF8}}, {{locale: C}}]
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {data}
  bin_dir: {bindir}
  pgpass: {dir}/pgpass
  # A spread checkpoint would make each replica's clone wait minutes.
  basebackup:
    - checkpoint: fast
  authentication:
    replication: {{username: replicator, password: replicator-test}}
    superuser: {{username: postgres, password: postgres-test}}
    rewind: {{username: postgres, password: postgres-test}}
  parameters:
    unix_socket_directories: '{dir}'
  callbacks:
    on_role_change: {on_role_change}
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
"#,
            scope = self.scope,
            name = node.name,
            api = node.api_port,
            etcd = self.etcd_port,
            sync = spec.synchronous_mode,
            strict = spec.synchronous_mode_strict,
            pg = node.pg_port,
            data = node.datadir.display(),
            bindir = self.tools.bindir.display(),
            dir = node.dir.display(),
            on_role_change = self.dir.path().join("on_role_change").display(),
        )
    }

    /// Hands `path` to the servers' user (when we are root): what Patroni's callbacks — and
    /// so the units they start — may write.
    pub fn own(&self, path: &Path) -> Result<()> {
        self.tools.own(path)
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Starts (or restarts) a node's Patroni.
    pub fn start_patroni(&self, name: &str) -> Result<()> {
        let node = self.node(name);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)?;
        let child = self
            .tools
            .command(&self.tools.python)
            .args(["-m", "patroni"])
            .arg(&node.config)
            .env("PATH", shim_first_path(node))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting patroni")?;
        *node.patroni.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    /// The host is lost: its Patroni and its PostgreSQL die at once (SIGKILL).
    pub fn kill_node(&self, name: &str) -> Result<()> {
        let node = self.node(name);
        kill_child(&node.patroni);
        if let Ok(pid) = node.postmaster_pid() {
            // Its children too, at once: a backend stopped by a test (SIGSTOP) would never
            // notice the postmaster's death and outlive the test.
            for p in std::iter::once(pid).chain(children_of(pid)) {
                // SAFETY: the postmaster of a server this harness's Patroni started, and
                // its children.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
            wait_for("the postmaster to be gone", Duration::from_secs(10), || {
                Ok(!cln_replguard::pgbin::process_alive(pid))
            })?;
        }
        Ok(())
    }

    /// Only the node's Patroni stops (SIGKILL); its PostgreSQL keeps running.
    pub fn kill_patroni(&self, name: &str) {
        kill_child(&self.node(name).patroni);
    }

    /// Runs SQL as the superuser over the node's socket; unaligned, tuples-only output.
    pub fn psql(&self, node: &Node, sql: &str) -> Result<String> {
        self.psql_with(node, sql, "")
    }

    /// `psql` with these session options (`PGOPTIONS`).
    pub fn psql_with(&self, node: &Node, sql: &str, options: &str) -> Result<String> {
        self.psql_on(node, "postgres", sql, options)
    }

    /// `psql` as the superuser on database `dbname`.
    pub fn psql_db(&self, node: &Node, dbname: &str, sql: &str) -> Result<String> {
        self.psql_on(node, dbname, sql, "")
    }

    fn psql_on(&self, node: &Node, dbname: &str, sql: &str, options: &str) -> Result<String> {
        let out = run(
            Command::new(self.tools.bindir.join("psql"))
                .env("PGOPTIONS", options)
                .env_remove("PGPASSWORD")
                .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
                .arg(node.conninfo("postgres", dbname))
                .arg("-c")
                .arg(sql)
                .stdin(Stdio::null()),
            &format!("psql on {}: {sql}", node.name),
        )?;
        Ok(out.trim().to_string())
    }

    /// `patronictl -c <n1's config> ARGS`; returns its stdout.
    pub fn patronictl(&self, args: &[&str]) -> Result<String> {
        run(
            self.tools
                .command(&self.tools.python)
                .args([
                    "-c",
                    "import sys; from patroni.ctl import ctl; sys.argv[0] = 'patronictl'; ctl()",
                    "-c",
                ])
                .arg(&self.nodes[0].config)
                .args(args),
            &format!("patronictl {}", args.join(" ")),
        )
    }

    /// `GET path` on a node's REST API: (status, body).
    pub fn get(&self, name: &str, path: &str) -> Result<(u16, String)> {
        http_get(self.node(name).api_port, path)
    }

    /// The node's `GET path` answer as JSON (any status).
    pub fn get_json(&self, name: &str, path: &str) -> Result<serde_json::Value> {
        let (_, body) = self.get(name, path)?;
        serde_json::from_str(&body).with_context(|| format!("{path} is not JSON: {body}"))
    }

    pub fn wait_leader(&self, name: &str, timeout: Duration) -> Result<()> {
        wait_for(&format!("{name} to lead"), timeout, || {
            Ok(self.get(name, "/leader")?.0 == 200
                && self.get_json(name, "/patroni")?["role"] == "primary")
        })
        .map_err(|e| anyhow!("{e:#}\n--- {name}'s log:\n{}", self.node(name).log_tail()))
    }

    /// The member the DCS names leader, as `GET /cluster` on any answering node says.
    pub fn leader(&self) -> Option<String> {
        self.nodes.iter().find_map(|n| {
            let c = self.get_json(&n.name, "/cluster").ok()?;
            c["members"].as_array()?.iter().find_map(|m| {
                (m["role"] == "leader").then(|| m["name"].as_str().unwrap_or("").to_string())
            })
        })
    }

    fn wait_members_streaming(&self, timeout: Duration) -> Result<()> {
        let leader = self.nodes[0].name.clone();
        wait_for("every replica to stream", timeout, || {
            let c = self.get_json(&leader, "/cluster")?;
            let members = c["members"].as_array().cloned().unwrap_or_default();
            Ok(members.len() == self.nodes.len()
                && members
                    .iter()
                    .filter(|m| m["role"] != "leader")
                    .all(|m| m["state"] == "streaming"))
        })
        .map_err(|e| {
            let logs: Vec<String> = self
                .nodes
                .iter()
                .map(|n| format!("--- {}'s log:\n{}", n.name, n.log_tail()))
                .collect();
            anyhow!("{e:#}\n{}", logs.join("\n"))
        })
    }

    /// Waits until Patroni put a synchronous standby into the names and the leader uses it.
    pub fn wait_sync_standby(&self, timeout: Duration) -> Result<()> {
        wait_for("a synchronous standby", timeout, || {
            let Some(leader) = self.leader() else {
                return Ok(false);
            };
            let node = self.node(&leader);
            let names = self.psql(node, "SHOW synchronous_standby_names")?;
            let sync = self.psql(
                node,
                "SELECT count(*) FROM pg_stat_replication WHERE sync_state IN ('sync', 'quorum')",
            )?;
            let in_sync_key = self.get_json(&leader, "/cluster")?["members"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["role"] == "sync_standby"));
            Ok(!names.is_empty() && names != "*" && sync != "0" && in_sync_key)
        })
    }

    /// Runs `f` until it holds or `timeout` passes (polling every 20 ms).
    pub fn wait(&self, what: &str, timeout: Duration, f: impl FnMut() -> Result<bool>) {
        wait_for(what, timeout, f).unwrap_or_else(|e| {
            let logs: Vec<String> = self
                .nodes
                .iter()
                .map(|n| format!("--- {}'s log:\n{}", n.name, n.log_tail()))
                .collect();
            panic!("{e:#}\n{}", logs.join("\n"))
        })
    }

    fn stop_postgres(&self, node: &Node) {
        if !node.datadir.join("postmaster.pid").exists() {
            return;
        }
        let stopped = self
            .tools
            .command(&self.tools.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(&node.datadir)
            .args(["-w", "-t", "10", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !stopped && let Ok(pid) = node.postmaster_pid() {
            // SAFETY: the postmaster of a server this harness's Patroni started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// PATH with the node's `systemctl` stand-in first: what Patroni's callbacks run.
fn shim_first_path(node: &Node) -> std::ffi::OsString {
    let rest = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let mut dirs = vec![node.shim_dir()];
    dirs.extend(std::env::split_paths(&rest));
    std::env::join_paths(dirs).expect("PATH without ':' in its parts")
}

/// The processes whose parent is `pid` (from /proc).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                // The parent pid is the second field after the parenthesised command name.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|ppid| ppid.parse::<i32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

fn kill_child(slot: &Mutex<Option<Child>>) {
    if let Some(mut child) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        // What the systemctl stand-in started (lightningd): not our child, its own group.
        for node in &self.nodes {
            if let Some(pid) = node.unit_pid(LIGHTNINGD_UNIT) {
                // SAFETY: the process group the stand-in made for this cluster's unit.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
        // Patroni first, so it does not restart the PostgreSQL we stop.
        for node in &self.nodes {
            kill_child(&node.patroni);
        }
        for node in &self.nodes {
            self.stop_postgres(node);
        }
        kill_child(&self.etcd);
    }
}

/// A minimal blocking `GET` on 127.0.0.1 (the harness's own: the library's is async).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header end in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    Ok((status, body.to_string()))
}

/// One line the `systemctl` stand-in recorded: when (wall clock) and what.
#[derive(Clone, Debug)]
pub struct Stamped {
    pub at: std::time::SystemTime,
    pub words: Vec<String>,
}

impl Stamped {
    /// Milliseconds from `earlier` to this line (negative when it came first).
    pub fn ms_after(&self, earlier: std::time::SystemTime) -> f64 {
        match self.at.duration_since(earlier) {
            Ok(d) => d.as_secs_f64() * 1000.0,
            Err(e) => -e.duration().as_secs_f64() * 1000.0,
        }
    }
}

/// `<seconds.nanoseconds> word…` lines (`date +%s.%N`); a missing file is no line.
fn read_stamped(path: &Path) -> Vec<Stamped> {
    let text = fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let secs: f64 = words.next()?.parse().ok()?;
            Some(Stamped {
                at: std::time::UNIX_EPOCH + Duration::from_secs_f64(secs),
                words: words.map(str::to_string).collect(),
            })
        })
        .collect()
}

/// Milliseconds since `start`.
pub fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}
