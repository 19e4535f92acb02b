//! Throwaway pg_auto_failover formations for the tests: a monitor and two or three keepers
//! (`pg_autoctl run`), each with its PostgreSQL on 127.0.0.1 and a Unix socket in the
//! formation's directory. pg_auto_failover 2.0 is Debian's `pg-auto-failover-cli` (pg_autoctl)
//! and `postgresql-15-auto-failover` (the extension, for PostgreSQL 15 only); a machine without
//! them fails the tests (`.ci/run` installs both), nothing is skipped.
//!
//! `pg_autoctl create monitor` has no `--listen` and starts the monitor's PostgreSQL with
//! `-h *`: every server is started through a wrapper `postgres` (in a bin directory of
//! symlinks, given as `--pgctl`'s directory) that appends loopback-only `listen_addresses`, the
//! socket directory and a small `shared_buffers` (pg_autoctl would size it to a quarter of the
//! machine's memory). As root, everything runs as the unprivileged user the PostgreSQL harness
//! uses. Teardown always runs (`Drop`, also while a test panics): each keeper gets SIGQUIT
//! (immediate stop of its PostgreSQL), then SIGKILL, and a postmaster still alive is killed.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cln_replguard::cluster::{run, wait_for};
use cln_replguard::pgbin::{own, private_dir, process_alive};

pub const PG_AUTOCTL: &str = "/usr/bin/pg_autoctl";
pub const WALLET_ROLE: &str = "lightningd";

/// The monitor's health checks, shortened so a lost standby is noticed in about 2 s instead
/// of pg_auto_failover's 20 s (`node_considered_unhealthy_timeout`).
const FAST_HEALTH_CHECKS: &[(&str, &str)] = &[
    ("pgautofailover.health_check_period", "500"),
    ("pgautofailover.health_check_retry_delay", "200"),
    ("pgautofailover.health_check_timeout", "1000"),
    ("pgautofailover.health_check_max_retries", "1"),
    ("pgautofailover.node_considered_unhealthy_timeout", "1500"),
];

/// The PostgreSQL bin directory pg_auto_failover's extension is built for.
fn autofailover_bindir() -> Result<PathBuf> {
    if !Path::new(PG_AUTOCTL).is_file() {
        bail!("no {PG_AUTOCTL}");
    }
    let mut found: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")?
        .flatten()
        .map(|e| e.path())
        .filter(|d| d.join("lib/pgautofailover.so").is_file() && d.join("bin/pg_ctl").is_file())
        .map(|d| d.join("bin"))
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| anyhow!("no /usr/lib/postgresql/*/lib/pgautofailover.so"))
}

fn unprivileged_owner() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres")?;
    // SAFETY: getpwnam returns NULL or a pointer to static storage we read at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("running as root and no user postgres to run the servers as");
    }
    // SAFETY: non-null pointer from getpwnam.
    Ok(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

/// One `pg_autoctl run` (the monitor or a node) and its PostgreSQL.
pub struct Keeper {
    pub name: String,
    pub pgdata: PathBuf,
    pub port: u16,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Keeper {
    fn postmaster_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.pgdata.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stops the keeper with `signal` and waits for it to end (and for its PostgreSQL).
    fn stop_with(&self, signal: i32) {
        let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let postmaster = self.postmaster_pid();
        // SAFETY: the pg_autoctl this harness started, not yet reaped.
        unsafe { libc::kill(child.id() as i32, signal) };
        let start = Instant::now();
        while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        if let Some(pid) = postmaster.filter(|p| process_alive(*p)) {
            // SAFETY: the postmaster of a server this harness's pg_autoctl started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A monitor and nodes `n1`…; `n1` is the primary.
pub struct Formation {
    pub monitor: Keeper,
    pub nodes: Vec<Keeper>,
    sock: PathBuf,
    bin: PathBuf,
    real_bin: PathBuf,
    owner: Option<(u32, u32)>,
    // Last: removed after every process has stopped.
    dir: tempfile::TempDir,
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Formation {
    /// A monitor and `nodes` nodes, every node secondary or primary.
    pub fn start(nodes: usize) -> Formation {
        Self::try_start(nodes).unwrap_or_else(|e| {
            panic!(
                "cannot start the pg_auto_failover formation (Debian: apt-get install \
                 postgresql-15-auto-failover pg-auto-failover-cli; .ci/run installs them): {e:#}"
            )
        })
    }

    fn try_start(nodes: usize) -> Result<Formation> {
        let real_bin = autofailover_bindir()?;
        let owner = unprivileged_owner()?;
        let dir = tempfile::Builder::new()
            .prefix("replguard-pgaf-")
            .tempdir_in("/tmp")?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        own(dir.path(), owner)?;
        let sock = dir.path().join("sock");
        private_dir(&sock, owner)?;
        fs::set_permissions(&sock, fs::Permissions::from_mode(0o755))?;
        let keeper = |name: &str| -> Result<Keeper> {
            Ok(Keeper {
                name: name.to_string(),
                pgdata: dir.path().join(name),
                port: free_port()?,
                log: dir.path().join(format!("{name}.log")),
                child: Mutex::new(None),
            })
        };
        let f = Formation {
            monitor: keeper("monitor")?,
            nodes: (1..=nodes)
                .map(|i| keeper(&format!("n{i}")))
                .collect::<Result<_>>()?,
            sock,
            bin: dir.path().join("bin"),
            real_bin,
            owner,
            dir,
        };
        let started = Instant::now();
        f.make_bin()?;
        f.start_monitor()?;
        let monitor_ms = started.elapsed().as_millis();
        f.add_node(0)?;
        f.wait_state("n1", "single", Duration::from_secs(30))?;
        f.create_wallet_role()?;
        let n1_ms = started.elapsed().as_millis();
        for i in 1..nodes {
            f.add_node(i)?;
        }
        f.wait_all_running(Duration::from_secs(60))?;
        f.fast_health_checks()?;
        println!(
            "formation of {nodes}: monitor {monitor_ms} ms, n1 single {n1_ms} ms, all running {} ms",
            started.elapsed().as_millis()
        );
        Ok(f)
    }

    /// The bin directory pg_autoctl is pointed at: the real programs, but `postgres` and
    /// `pg_ctl` are scripts (pg_ctl would resolve a symlink back to the real directory).
    fn make_bin(&self) -> Result<()> {
        fs::create_dir_all(&self.bin)?;
        for e in fs::read_dir(&self.real_bin)?.flatten() {
            let name = e.file_name();
            if name != "postgres" && name != "pg_ctl" {
                std::os::unix::fs::symlink(e.path(), self.bin.join(&name))?;
            }
        }
        let postgres = format!(
            "#!/bin/sh\n# Later -c options win over pg_autoctl's -h '*' and its tuning.\n\
             exec {real}/postgres \"$@\" -c listen_addresses=127.0.0.1 \
             -c unix_socket_directories={sock} -c shared_buffers=16MB -c fsync=off\n",
            real = self.real_bin.display(),
            sock = self.sock.display()
        );
        let pg_ctl = format!(
            "#!/bin/sh\nexec {}/pg_ctl \"$@\"\n",
            self.real_bin.display()
        );
        for (name, text) in [("postgres", postgres), ("pg_ctl", pg_ctl)] {
            let path = self.bin.join(name);
            fs::write(&path, text)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
        Ok(())
    }

    /// `pg_autoctl ARGS` as the servers' user, in the formation's own configuration home.
    pub fn pg_autoctl(&self) -> Command {
        let mut cmd = Command::new(PG_AUTOCTL);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        let home = self.dir.path();
        cmd.env("LC_ALL", "C.UTF-8")
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_DATA_HOME", home.join("share"))
            .env("PGHOST", &self.sock)
            .stdin(Stdio::null())
            .current_dir(home);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn common_create_args(&self, k: &Keeper) -> Vec<String> {
        vec![
            "--pgdata".into(),
            k.pgdata.display().to_string(),
            "--pgport".into(),
            k.port.to_string(),
            "--pgctl".into(),
            self.bin.join("pg_ctl").display().to_string(),
            "--hostname".into(),
            "127.0.0.1".into(),
            "--auth".into(),
            "trust".into(),
            "--no-ssl".into(),
        ]
    }

    fn start_monitor(&self) -> Result<()> {
        let args = self.common_create_args(&self.monitor);
        run(
            self.pg_autoctl().args(["create", "monitor"]).args(&args),
            "pg_autoctl create monitor",
        )?;
        self.run_keeper(&self.monitor)?;
        let port = self.monitor.port;
        wait_for("the monitor to answer", Duration::from_secs(30), || {
            Ok(self.psql(port, "pg_auto_failover", "SELECT 1").is_ok())
        })?;
        Ok(())
    }

    /// Once every node runs: set before, they slow each node's joining down to minutes.
    fn fast_health_checks(&self) -> Result<()> {
        let port = self.monitor.port;
        for (name, value) in FAST_HEALTH_CHECKS {
            self.psql(
                port,
                "postgres",
                &format!("ALTER SYSTEM SET {name} = '{value}'"),
            )?;
        }
        self.psql(port, "postgres", "SELECT pg_reload_conf()")?;
        Ok(())
    }

    fn monitor_uri(&self) -> String {
        format!(
            "postgres://autoctl_node@127.0.0.1:{}/pg_auto_failover?sslmode=disable",
            self.monitor.port
        )
    }

    fn add_node(&self, i: usize) -> Result<()> {
        let k = &self.nodes[i];
        let args = self.common_create_args(k);
        run(
            self.pg_autoctl()
                .args([
                    "create",
                    "postgres",
                    "--name",
                    &k.name,
                    "--listen",
                    "127.0.0.1",
                ])
                .args(["--monitor", &self.monitor_uri()])
                .args(&args),
            &format!("pg_autoctl create postgres {}", k.name),
        )?;
        self.run_keeper(k)
    }

    /// Starts (or restarts) `pg_autoctl run` for a keeper.
    fn run_keeper(&self, k: &Keeper) -> Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&k.log)?;
        let child = self
            .pg_autoctl()
            .args(["run", "--pgdata"])
            .arg(&k.pgdata)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting pg_autoctl run")?;
        *k.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    fn create_wallet_role(&self) -> Result<()> {
        let port = self.nodes[0].port;
        // The monitor may have n1 as single before n1's keeper restarted its PostgreSQL.
        wait_for("n1 to answer", Duration::from_secs(30), || {
            Ok(self.psql(port, "postgres", "SELECT 1").is_ok())
        })
        .map_err(|e| self.with_logs(e))?;
        self.psql(
            port,
            "postgres",
            &format!("CREATE ROLE {WALLET_ROLE} LOGIN; GRANT pg_monitor TO {WALLET_ROLE}"),
        )?;
        self.psql(
            port,
            "postgres",
            &format!("CREATE DATABASE {WALLET_ROLE} OWNER {WALLET_ROLE}"),
        )?;
        // The database's pages are dirty; each standby's pg_basebackup asks for a spread
        // checkpoint, which would pace their writing over minutes.
        self.psql(port, "postgres", "CHECKPOINT")?;
        Ok(())
    }

    pub fn node(&self, name: &str) -> &Keeper {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// lightningd's wallet DSN through the primary's Unix socket.
    pub fn wallet_dsn(&self) -> String {
        format!(
            "postgres://{WALLET_ROLE}@/{WALLET_ROLE}?host={}&port={}",
            self.sock.display(),
            self.nodes[0].port
        )
    }

    /// A superuser DSN for the node `name`'s server, through its Unix socket.
    pub fn superuser_dsn(&self, name: &str) -> String {
        let user = match self.owner {
            Some(_) => "postgres".to_string(),
            None => std::env::var("USER").unwrap_or_else(|_| "postgres".into()),
        };
        format!(
            "host={} port={} user={user} dbname={WALLET_ROLE}",
            self.sock.display(),
            self.node(name).port
        )
    }

    /// psql on a server of the formation over its socket, as the servers' user; unaligned,
    /// tuples only.
    pub fn psql(&self, port: u16, dbname: &str, sql: &str) -> Result<String> {
        self.psql_as(port, None, dbname, sql)
    }

    /// `psql` as `user` (default: the servers' user).
    pub fn psql_command(&self, port: u16, user: Option<&str>, dbname: &str, sql: &str) -> Command {
        let mut cmd = Command::new(self.real_bin.join("psql"));
        cmd.env_remove("PGPASSWORD")
            .env_remove("PGOPTIONS")
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.sock)
            .args(["-p", &port.to_string(), "-d", dbname, "-c", sql])
            .stdin(Stdio::null());
        if let Some(u) = user {
            cmd.args(["-U", u]);
        }
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid).current_dir("/");
        }
        cmd
    }

    pub fn psql_as(
        &self,
        port: u16,
        user: Option<&str>,
        dbname: &str,
        sql: &str,
    ) -> Result<String> {
        let out = run(
            &mut self.psql_command(port, user, dbname, sql),
            &format!("psql on port {port}: {sql}"),
        )?;
        Ok(out.trim().to_string())
    }

    /// `reported/assigned` state of each node, as the monitor has them.
    pub fn states(&self) -> Result<Vec<(String, String, String)>> {
        let out = self.psql(
            self.monitor.port,
            "pg_auto_failover",
            "SELECT nodename, reportedstate, goalstate FROM pgautofailover.node ORDER BY nodeid",
        )?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut it = l.split('|');
                Some((
                    it.next()?.to_string(),
                    it.next()?.to_string(),
                    it.next()?.to_string(),
                ))
            })
            .collect())
    }

    /// Waits until the monitor reports `name` in `state` (reported and assigned).
    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Result<()> {
        wait_for(&format!("{name} to be {state}"), timeout, || {
            Ok(self
                .states()?
                .iter()
                .any(|(n, r, g)| n == name && r == state && g == state))
        })
        .map_err(|e| self.with_logs(e))
    }

    /// Waits until the monitor assigns `name` the goal state `state` (the keeper may not run).
    pub fn wait_assigned(&self, name: &str, state: &str, timeout: Duration) -> Result<()> {
        wait_for(&format!("{name} to be assigned {state}"), timeout, || {
            Ok(self
                .states()?
                .iter()
                .any(|(n, _, g)| n == name && g == state))
        })
        .map_err(|e| self.with_logs(e))
    }

    fn wait_all_running(&self, timeout: Duration) -> Result<()> {
        self.wait_state("n1", "primary", timeout)?;
        for k in &self.nodes[1..] {
            self.wait_state(&k.name, "secondary", timeout)?;
        }
        Ok(())
    }

    fn with_logs(&self, e: anyhow::Error) -> anyhow::Error {
        let logs: Vec<String> = std::iter::once(&self.monitor)
            .chain(&self.nodes)
            .map(|k| format!("--- {}'s log:\n{}", k.name, k.log_tail()))
            .collect();
        anyhow!("{e:#}\n{}", logs.join("\n"))
    }

    /// The node's host is gone for pg_auto_failover: its keeper and PostgreSQL stop (fast).
    pub fn stop_node(&self, name: &str) {
        self.node(name).stop_with(libc::SIGINT);
    }

    /// `SELECT number_sync_standbys` of the default formation, on the monitor.
    pub fn number_sync_standbys(&self) -> Result<String> {
        self.psql(
            self.monitor.port,
            "pg_auto_failover",
            "SELECT number_sync_standbys FROM pgautofailover.formation \
             WHERE formationid = 'default'",
        )
    }
}

impl Drop for Formation {
    fn drop(&mut self) {
        // The nodes first: a monitor gone first would leave them retrying it.
        for k in &self.nodes {
            k.stop_with(libc::SIGQUIT);
        }
        self.monitor.stop_with(libc::SIGQUIT);
    }
}
