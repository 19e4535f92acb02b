//! What a data directory says about how its server runs: where it logs, whether a Debian
//! cluster (configuration in /etc, started by `pg_ctlcluster`) owns it, which configuration
//! file its single-user recovery needs, the socket it listens on, and a pid file left by a
//! server that is gone. Read from `postmaster.pid`, `postmaster.opts` and `/proc`: no SQL.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// `postmaster.opts` of the last start: the command line, each argument in double quotes.
fn last_start_options(data: &Path) -> Vec<String> {
    let text = fs::read_to_string(data.join("postmaster.opts")).unwrap_or_default();
    text.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The `config_file` the server was last started with, when not the data directory's own;
/// else the Debian cluster's whose `data_directory` it is (pg_rewind does not keep
/// `postmaster.opts`).
pub fn config_file(data: &Path) -> Option<PathBuf> {
    last_start_options(data)
        .iter()
        .find_map(|a| a.strip_prefix("config_file=").map(PathBuf::from))
        .or_else(|| debian_config_naming(data))
}

/// The /etc/postgresql/<v>/<name>/postgresql.conf whose `data_directory` is `data`.
fn debian_config_naming(data: &Path) -> Option<PathBuf> {
    let wanted = data.display().to_string();
    let versions = fs::read_dir("/etc/postgresql").ok()?;
    versions
        .flatten()
        .filter_map(|v| fs::read_dir(v.path()).ok())
        .flat_map(|clusters| clusters.flatten())
        .map(|c| c.path().join("postgresql.conf"))
        .find(|conf| {
            fs::read_to_string(conf).is_ok_and(|text| {
                text.lines().any(|l| {
                    let l = l.trim();
                    l.strip_prefix("data_directory").is_some_and(|rest| {
                        let value = rest.trim_start().trim_start_matches('=').trim();
                        let value = value.split('#').next().unwrap_or("").trim();
                        value.trim_matches('\'') == wanted
                    })
                })
            })
        })
}

/// The Debian cluster (version, name) whose configuration is in /etc/postgresql/<v>/<name>:
/// `pg_ctlcluster` starts and restarts it (with its log, its systemd unit and its options).
pub fn debian_cluster(data: &Path) -> Option<(String, String)> {
    let conf = config_file(data)?;
    let rest = conf.strip_prefix("/etc/postgresql").ok()?;
    let parts: Vec<String> = rest
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [version, name, file] if file == "postgresql.conf" => Some((version.clone(), name.clone())),
        _ => None,
    }
}

/// The postmaster's pid when `postmaster.pid` names a process that runs (a killed one its
/// parent has not reaped yet does not: `pg_ctl status` would say it runs).
pub fn postmaster_alive(data: &Path) -> Option<i32> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    crate::pgbin::process_alive(pid).then_some(pid)
}

/// `host=<socket directory> port=<port>` of the running server (postmaster.pid lines 5 and
/// 4): a check of this very server, whatever PGHOST/PGPORT say.
pub fn local_address(data: &Path) -> Option<String> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let port = lines.get(3)?.trim();
    let dir = lines.get(4)?.split(',').next()?.trim();
    (!port.is_empty() && !dir.is_empty())
        .then(|| format!("host={} port={port}", super::quote::conninfo_value(dir)))
}

/// Where the running server writes what it prints (its stderr): the file `pg_ctl -l` or the
/// service gave it, so that a restart by `pg_ctl` logs there too. Only a regular file that
/// `owner` (the user the tools run as; None: ourselves) owns and may write: `pg_ctl restart`
/// stops the server before it opens the log, so a log it cannot open (a terminal, a FIFO,
/// root's file) would leave the server stopped. A pipe or a socket is a journal or the
/// logging collector's.
pub fn current_log(data: &Path, owner: Option<u32>) -> Result<PathBuf> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let pid_file = data.join("postmaster.pid");
    let pid = fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        .with_context(|| format!("reading the server's pid from {}", pid_file.display()))?;
    let target = fs::read_link(format!("/proc/{pid}/fd/2"))
        .with_context(|| format!("cannot see where the server (pid {pid}) logs"))?;
    let shown = target.display().to_string();
    // SAFETY: geteuid has no preconditions.
    let owner = owner.unwrap_or_else(|| unsafe { libc::geteuid() });
    let usable = fs::metadata(&target)
        .is_ok_and(|m| m.is_file() && m.uid() == owner && m.permissions().mode() & 0o200 != 0);
    if target.is_absolute() && !shown.ends_with(" (deleted)") && usable {
        return Ok(target);
    }
    bail!(
        "{} logs to {shown}, which a restart by pg_ctl could not reopen as the server's user \
         (a terminal, a journal, a file of another user): give the command that restarts it \
         with --restart-command (e.g. 'systemctl restart postgresql')",
        data.display()
    )
}

/// A killed postmaster that its parent has not reaped yet still "exists" for PostgreSQL's
/// lock-file checks (containers whose PID 1 does not reap), so pg_rewind's single-user
/// recovery, and the start after it, would refuse. A pid file whose process is gone or a
/// zombie is stale, and so is the socket lock file it names (postmaster.pid: line 4 the port,
/// line 5 the socket directory).
pub fn remove_stale_pid_file(dir: &std::path::Path) -> Result<()> {
    let pid_file = dir.join("postmaster.pid");
    let Ok(text) = fs::read_to_string(&pid_file) else {
        return Ok(());
    };
    let lines: Vec<&str> = text.lines().collect();
    let pid: i32 = lines.first().unwrap_or(&"").trim().parse().unwrap_or(0);
    if pid > 0 && crate::pgbin::process_alive(pid) {
        bail!("{} is running (pid {pid}): stop it first", dir.display());
    }
    if let (Some(port), Some(socket_dir)) = (lines.get(3), lines.get(4))
        && !socket_dir.trim().is_empty()
    {
        let lock =
            std::path::Path::new(socket_dir.trim()).join(format!(".s.PGSQL.{}.lock", port.trim()));
        let holder: Option<i32> = fs::read_to_string(&lock)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()));
        if holder == Some(pid) {
            fs::remove_file(&lock).with_context(|| format!("removing {}", lock.display()))?;
        }
    }
    fs::remove_file(&pid_file).with_context(|| format!("removing {}", pid_file.display()))
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use super::*;

    #[test]
    fn a_restart_logs_where_the_server_logs_and_a_journal_needs_the_service() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let spawn = |stderr: Stdio| {
            std::process::Command::new("sleep")
                .arg("30")
                .stderr(stderr)
                .spawn()
                .unwrap()
        };
        let mut to_file = spawn(Stdio::from(fs::File::create(&log).unwrap()));
        fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n", to_file.id()),
        )
        .unwrap();
        let found = current_log(dir.path(), None);
        to_file.kill().unwrap();
        to_file.wait().unwrap();
        assert_eq!(found.unwrap(), log);
        // Another user's file: pg_ctl, run as the server's user, could not reopen it.
        // SAFETY: geteuid has no preconditions.
        let other = unsafe { libc::geteuid() } + 1;
        let mut again = spawn(Stdio::from(fs::File::create(&log).unwrap()));
        fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n", again.id()),
        )
        .unwrap();
        let refused = current_log(dir.path(), Some(other));
        again.kill().unwrap();
        again.wait().unwrap();
        assert!(refused.is_err(), "{refused:?}");
        let mut to_pipe = spawn(Stdio::piped());
        fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n", to_pipe.id()),
        )
        .unwrap();
        let e = current_log(dir.path(), None).unwrap_err().to_string();
        to_pipe.kill().unwrap();
        to_pipe.wait().unwrap();
        assert!(
            e.contains("pipe:") && e.contains("--restart-command"),
            "{e}"
        );
    }

    #[test]
    fn a_debian_cluster_is_known_by_the_configuration_it_started_with() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(debian_cluster(dir.path()), None);
        fs::write(
            dir.path().join("postmaster.opts"),
            "/usr/lib/postgresql/15/bin/postgres \"-D\" \"/var/lib/postgresql/15/main\" \"-c\" \
             \"config_file=/etc/postgresql/15/main/postgresql.conf\"\n",
        )
        .unwrap();
        assert_eq!(
            config_file(dir.path()),
            Some(PathBuf::from("/etc/postgresql/15/main/postgresql.conf"))
        );
        assert_eq!(
            debian_cluster(dir.path()),
            Some(("15".to_string(), "main".to_string()))
        );
    }
}
