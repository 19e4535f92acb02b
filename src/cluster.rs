//! Throwaway PostgreSQL clusters from the installed server binaries: a primary and standbys
//! on Unix sockets inside a temporary directory, with the faults the tests inject. One place
//! for cluster code, used by the integration tests, the demo and (later) the benchmarks.
//!
//! - Binaries: `PG_BINDIR`, else `pg_config --bindir`, else the newest
//!   `/usr/lib/postgresql/*/bin`.
//! - As root the servers run as an unprivileged user (`postgres`, else `nobody`): initdb
//!   refuses root.
//! - Teardown always runs (`Drop`, also while a test panics): paused processes are resumed and
//!   every server is stopped with `-m immediate`, then killed if it still runs.

use std::ffi::OsStr;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// The role lightningd would use in these clusters, with its database.
pub const WALLET_ROLE: &str = "lightningd";
const SUPERUSER: &str = "postgres";

pub use crate::pgbin::{PgInstall, run, wait_for};

/// One PostgreSQL server in the sandbox.
#[derive(Debug)]
pub struct Server {
    pub name: String,
    pub datadir: PathBuf,
    pub socket_dir: PathBuf,
    pub log: PathBuf,
    /// The port: it names the Unix socket, and is the TCP port once TCP is enabled.
    pub port: u16,
    /// Extra environment of its postmaster (and so of every server process).
    env: Vec<(String, String)>,
    install: Arc<PgInstall>,
    paused: Mutex<Vec<i32>>,
}

impl Server {
    /// libpq key=value DSN over the Unix socket.
    pub fn conninfo(&self, user: &str, dbname: &str) -> String {
        format!(
            "host={} port={} user={user} dbname={dbname}",
            self.socket_dir.display(),
            self.port
        )
    }

    /// The wallet DSN as lightningd takes it: `postgres://` + key=value pairs.
    pub fn wallet_dsn(&self) -> String {
        format!("postgres://{}", self.conninfo(WALLET_ROLE, WALLET_ROLE))
    }

    /// Runs SQL as the superuser; returns unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> Result<String> {
        let out = run(
            Command::new(self.install.bindir.join("psql"))
                .env_remove("PGOPTIONS")
                .env_remove("PGPASSWORD")
                .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
                .arg(self.conninfo(SUPERUSER, "postgres"))
                .arg("-c")
                .arg(sql)
                .stdin(Stdio::null()),
            &format!("psql on {}: {sql}", self.name),
        )?;
        Ok(out.trim().to_string())
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<String> {
        run(
            self.install
                .tool("pg_ctl")
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .arg("-D")
                .arg(&self.datadir)
                .arg("-l")
                .arg(&self.log)
                .args(args),
            &format!("pg_ctl {} on {}", args.join(" "), self.name),
        )
        .map_err(|e| {
            anyhow!(
                "{e:#}\n--- server log {}:\n{}",
                self.log.display(),
                self.log_tail()
            )
        })
    }

    pub fn start(&self) -> Result<()> {
        self.pg_ctl(&["-w", "-t", "60", "start"])?;
        Ok(())
    }

    /// A clean shutdown.
    pub fn stop(&self) -> Result<()> {
        self.resume();
        self.pg_ctl(&["-w", "-t", "60", "-m", "fast", "stop"])?;
        Ok(())
    }

    /// A crash: no shutdown checkpoint, clients cut off.
    pub fn crash(&self) -> Result<()> {
        self.resume();
        self.pg_ctl(&["-w", "-t", "60", "-m", "immediate", "stop"])?;
        Ok(())
    }

    /// The harshest crash: SIGKILL to the postmaster and every child at once. pg_ctl starts
    /// the postmaster as the leader of its own process group, so one signal reaches them all
    /// and no backend outlives the postmaster to finish a commit.
    pub fn kill_tree(&self) -> Result<()> {
        self.resume();
        let pid = self.postmaster_pid()?;
        // SAFETY: getpgid/kill on a pid read from this server's postmaster.pid.
        unsafe {
            if libc::getpgid(pid) != pid {
                bail!("postmaster {pid} does not lead its process group");
            }
            if libc::kill(-pid, libc::SIGKILL) != 0 {
                bail!("SIGKILL -{pid}: {}", std::io::Error::last_os_error());
            }
        }
        wait_for(
            "the killed postmaster to be gone",
            Duration::from_secs(10),
            || Ok(!crate::pgbin::process_alive(pid)),
        )
    }

    /// Serves TLS on 127.0.0.1 with the given PEM certificate and key (restarts the server).
    /// Plain TCP connections are refused, so a successful connection proves TLS was used.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) -> Result<()> {
        let (cert, key) = (
            self.datadir.join("server.crt"),
            self.datadir.join("server.key"),
        );
        fs::write(&cert, cert_pem)?;
        fs::write(&key, key_pem)?;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
        self.install.own(&cert)?;
        self.install.own(&key)?;
        self.append_conf(
            "postgresql.conf",
            &[
                "listen_addresses = '127.0.0.1'".into(),
                "ssl = on".into(),
                "ssl_cert_file = 'server.crt'".into(),
                "ssl_key_file = 'server.key'".into(),
            ],
        )?;
        self.prepend_hba("hostnossl all all 127.0.0.1/32 reject")?;
        self.stop()?;
        self.start()
    }

    /// Puts an authentication rule before the others (first match wins) and reloads.
    pub fn prepend_hba(&self, line: &str) -> Result<()> {
        let path = self.datadir.join("pg_hba.conf");
        let old = fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        fs::write(&path, format!("{line}\n{old}"))?;
        self.install.own(&path)?;
        self.reload()
    }

    pub fn reload(&self) -> Result<()> {
        self.psql("SELECT pg_reload_conf()")?;
        Ok(())
    }

    pub fn postmaster_pid(&self) -> Result<i32> {
        let text = fs::read_to_string(self.datadir.join("postmaster.pid"))
            .with_context(|| format!("{} is not running", self.name))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| anyhow!("unreadable postmaster.pid of {}", self.name))
    }

    /// Hangs the standby's WAL receiver (SIGSTOP): it stays connected, the primary keeps
    /// showing it `streaming`/`sync` while every commit waits (DESIGN §2).
    pub fn hang_walreceiver(&self) -> Result<i32> {
        let pid: i32 = self
            .psql("SELECT pid FROM pg_stat_wal_receiver")?
            .parse()
            .with_context(|| format!("{} has no WAL receiver", self.name))?;
        self.pause(pid)?;
        Ok(pid)
    }

    /// Hangs the whole server: the postmaster stops accepting connections.
    pub fn hang_postmaster(&self) -> Result<()> {
        let pid = self.postmaster_pid()?;
        self.pause(pid)
    }

    fn pause(&self, pid: i32) -> Result<()> {
        // SAFETY: kill with a pid we read from PostgreSQL itself.
        if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
            bail!("SIGSTOP {pid}: {}", std::io::Error::last_os_error());
        }
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(pid);
        Ok(())
    }

    /// Resumes every process this harness paused on this server.
    pub fn resume(&self) {
        let pids: Vec<i32> = self
            .paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for pid in pids {
            // SAFETY: SIGCONT to a pid we paused.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }

    pub fn system_identifier(&self) -> Result<String> {
        self.psql("SELECT system_identifier FROM pg_control_system()")
    }

    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn append_conf(&self, file: &str, lines: &[String]) -> Result<()> {
        let path = self.datadir.join(file);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("open {}", path.display()))?;
        for l in lines {
            writeln!(f, "{l}")?;
        }
        drop(f);
        self.install.own(&path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.resume();
        if !self.datadir.join("postmaster.pid").exists() {
            return;
        }
        let stopped = self
            .pg_ctl(&["-w", "-t", "10", "-m", "immediate", "stop"])
            .is_ok();
        if !stopped && let Ok(pid) = self.postmaster_pid() {
            // SAFETY: the postmaster of a server this harness started.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// What to build.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Standby names; each is its `application_name`, `cluster_name` and slot name.
    pub standbys: Vec<String>,
    /// `synchronous_standby_names` once the standbys are attached ('' leaves it empty).
    pub sync_names: String,
    /// A physical replication slot per standby.
    pub slots: bool,
    /// A WAL archive directory, with `restore_command` on the standbys.
    pub archive: bool,
    /// Extra `postgresql.conf` lines for the primary.
    pub primary_conf: Vec<String>,
    /// Extra configuration lines for every standby.
    pub standby_conf: Vec<String>,
    /// Extra environment of every standby's server (e.g. an `LD_PRELOAD` that skews its
    /// clock).
    pub standby_env: Vec<(String, String)>,
}

impl ClusterSpec {
    /// A primary and one synchronous standby `s1`, slot and archive: the classic pair.
    pub fn pair() -> ClusterSpec {
        ClusterSpec::with_standbys(&["s1"], "FIRST 1 (s1)")
    }

    pub fn with_standbys(names: &[&str], sync_names: &str) -> ClusterSpec {
        ClusterSpec {
            standbys: names.iter().map(|s| s.to_string()).collect(),
            sync_names: sync_names.to_string(),
            slots: true,
            archive: true,
            primary_conf: vec![],
            standby_conf: vec![],
            standby_env: vec![],
        }
    }
}

/// A primary with its standbys. Drops standbys first, then the primary, then the directory.
#[derive(Debug)]
pub struct Cluster {
    pub standbys: Vec<Server>,
    pub primary: Server,
    pub archive_dir: PathBuf,
    install: Arc<PgInstall>,
    // Last: removed after every server has stopped.
    dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(spec: &ClusterSpec) -> Result<Cluster> {
        let install = PgInstall::find()?;
        let dir = tempfile::Builder::new()
            .prefix("replguard-")
            .tempdir_in("/tmp")
            .context("creating the sandbox directory")?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        install.own(dir.path())?;
        let archive_dir = dir.path().join("archive");
        install.mkdir(&archive_dir)?;

        let primary = Self::server(&install, dir.path(), "primary", &[])?;
        run(
            install
                .tool("initdb")
                .arg("-D")
                .arg(&primary.datadir)
                .args([
                    "-U",
                    SUPERUSER,
                    "-A",
                    "trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]),
            "initdb",
        )?;
        let mut conf = vec![
            "listen_addresses = ''".to_string(),
            format!(
                "unix_socket_directories = '{}'",
                primary.socket_dir.display()
            ),
            format!("port = {}", primary.port),
            "cluster_name = 'primary'".into(),
            "fsync = off".into(),
            "shared_buffers = 16MB".into(),
            "max_connections = 50".into(),
            "wal_level = replica".into(),
            "max_wal_senders = 10".into(),
            "max_replication_slots = 10".into(),
            "max_slot_wal_keep_size = 1GB".into(),
            "wal_log_hints = on".into(),
        ];
        if spec.archive {
            conf.push("archive_mode = on".into());
            conf.push(format!(
                "archive_command = 'test ! -f {0}/%f && cp %p {0}/%f'",
                archive_dir.display()
            ));
        }
        conf.extend(spec.primary_conf.iter().cloned());
        primary.append_conf("postgresql.conf", &conf)?;
        primary.start()?;
        primary.psql(&format!(
            "CREATE ROLE {WALLET_ROLE} LOGIN; GRANT pg_monitor TO {WALLET_ROLE}"
        ))?;
        // CREATE DATABASE cannot share psql's implicit transaction.
        primary.psql(&format!(
            "CREATE DATABASE {WALLET_ROLE} OWNER {WALLET_ROLE}"
        ))?;

        let mut cluster = Cluster {
            standbys: Vec::new(),
            primary,
            archive_dir,
            install,
            dir,
        };
        for name in &spec.standbys {
            cluster.add_standby_with_env(
                name,
                spec.slots,
                spec.archive,
                &spec.standby_conf,
                &spec.standby_env,
            )?;
        }
        if !spec.sync_names.is_empty() {
            cluster.set_sync_names(&spec.sync_names)?;
        }
        Ok(cluster)
    }

    fn server(
        install: &Arc<PgInstall>,
        root: &Path,
        name: &str,
        env: &[(String, String)],
    ) -> Result<Server> {
        let base = root.join(name);
        install.mkdir(&base)?;
        let socket_dir = base.join("sock");
        install.mkdir(&socket_dir)?;
        Ok(Server {
            name: name.to_string(),
            datadir: base.join("data"),
            socket_dir,
            log: base.join("server.log"),
            port: free_tcp_port()?,
            env: env.to_vec(),
            install: install.clone(),
            paused: Mutex::new(Vec::new()),
        })
    }

    /// Clones a standby from the primary and waits until it streams.
    pub fn add_standby(
        &mut self,
        name: &str,
        slot: bool,
        archive: bool,
        extra_conf: &[String],
    ) -> Result<()> {
        self.add_standby_with_env(name, slot, archive, extra_conf, &[])
    }

    /// `add_standby`, its server started with extra environment.
    pub fn add_standby_with_env(
        &mut self,
        name: &str,
        slot: bool,
        archive: bool,
        extra_conf: &[String],
        env: &[(String, String)],
    ) -> Result<()> {
        let standby = Self::server(&self.install, self.dir.path(), name, env)?;
        let mut cmd = self.install.tool("pg_basebackup");
        cmd.arg("-D")
            .arg(&standby.datadir)
            .arg("-d")
            .arg(self.primary.conninfo(SUPERUSER, "postgres"))
            .args(["-c", "fast", "-X", "stream", "--no-sync"]);
        if slot {
            cmd.args(["-C", "-S", name]);
        }
        run(&mut cmd, &format!("pg_basebackup for {name}"))?;
        let mut conf = vec![
            format!(
                "unix_socket_directories = '{}'",
                standby.socket_dir.display()
            ),
            format!("port = {}", standby.port),
            format!("cluster_name = '{name}'"),
            format!(
                "primary_conninfo = '{} application_name={name}'",
                self.primary.conninfo(SUPERUSER, "postgres")
            ),
        ];
        if slot {
            conf.push(format!("primary_slot_name = '{name}'"));
        }
        if archive {
            conf.push(format!(
                "restore_command = 'cp {}/%f %p'",
                self.archive_dir.display()
            ));
        }
        conf.extend(extra_conf.iter().cloned());
        standby.append_conf("postgresql.auto.conf", &conf)?;
        standby.append_conf("standby.signal", &[])?;
        standby.start()?;
        let sql = format!(
            "SELECT count(*) FROM pg_stat_replication \
              WHERE application_name = '{name}' AND state = 'streaming'"
        );
        wait_for(
            &format!("{name} to stream"),
            Duration::from_secs(60),
            || Ok(self.primary.psql(&sql)? == "1"),
        )?;
        self.standbys.push(standby);
        Ok(())
    }

    /// Sets `synchronous_standby_names`, reloads, and waits until the primary uses it.
    pub fn set_sync_names(&self, names: &str) -> Result<()> {
        let quoted = names.replace('\'', "''");
        self.primary.psql(&format!(
            "ALTER SYSTEM SET synchronous_standby_names = '{quoted}'"
        ))?;
        self.primary.reload()?;
        wait_for(
            "the new synchronous_standby_names",
            Duration::from_secs(30),
            || {
                let now = self.primary.psql("SHOW synchronous_standby_names")?;
                // When the names cover a running standby, wait until the primary uses it.
                let covers_one = match crate::syncnames::SyncNames::parse(names) {
                    Ok(crate::syncnames::SyncNames::Required(r)) => {
                        self.standbys.iter().any(|s| r.names_standby(&s.name))
                    }
                    _ => false,
                };
                let attached = !covers_one
                    || self.primary.psql(
                        "SELECT count(*) FROM pg_stat_replication WHERE sync_state <> 'async'",
                    )? != "0";
                Ok(now == names && attached)
            },
        )
    }

    /// Where the PostgreSQL binaries in use are.
    pub fn bindir(&self) -> &Path {
        &self.install.bindir
    }

    pub fn standby(&self, name: &str) -> &Server {
        self.standbys
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no standby {name}"))
    }

    /// Waits until every standby streams again and no commit waits for one (after a fault
    /// was repaired or the primary restarted).
    pub fn wait_commits_flow(&self) -> Result<()> {
        let streaming = format!(
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' \
               AND application_name IN ({})",
            self.standbys
                .iter()
                .map(|s| format!("'{}'", s.name))
                .collect::<Vec<_>>()
                .join(",")
        );
        wait_for("commits to flow", Duration::from_secs(60), || {
            let all_streaming = self.standbys.is_empty()
                || self.primary.psql(&streaming)? == self.standbys.len().to_string();
            Ok(all_streaming
                && self
                    .primary
                    .psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")?
                    == "0")
        })
    }

    /// Starts a server tool as a background process (e.g. `pg_receivewal`), killed on drop.
    pub fn spawn_tool<I, S>(&self, tool: &str, args: I) -> Result<Daemon>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let child = self
            .install
            .tool(tool)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {tool}"))?;
        Ok(Daemon { child })
    }

    /// Runs SQL on the primary in a background psql session (a commit that will wait for an
    /// absent standby, a session that stays open…), ended when the handle drops.
    pub fn spawn_sql(&self, user: &str, dbname: &str, sql: &str) -> Result<Daemon> {
        let dsn = self.primary.conninfo(user, dbname);
        self.spawn_tool("psql", ["-X", "-q", "-d", &dsn, "-c", sql])
    }

    /// A directory inside the sandbox that the servers' user may write.
    pub fn scratch_dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.dir.path().join(name);
        self.install.mkdir(&d)?;
        Ok(d)
    }
}

/// A TCP port free on 127.0.0.1 right now (the kernel picks it).
fn free_tcp_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A background process killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
