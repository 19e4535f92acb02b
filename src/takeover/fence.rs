//! Fencing by action: the old lightningd stopped and its RPC gone; the old primary stopped and
//! marked so that it can only ever start again as a standby (`standby.signal`).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use serde_json::json;

use super::reach::{self, Reach};
use crate::facts::Upstream;
use crate::lightningd_rpc;
use crate::pgtool::Tools;

/// What one fencing step established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fenced {
    /// Done or checked from here.
    Verified(String),
    /// Could not be done or checked from here; proceeding needs `--old-host-unreachable`.
    Unverified(String),
    /// Must not proceed, whatever the flags (e.g. the old primary still runs).
    Refused(String),
}

/// Stops the old lightningd through its RPC socket and waits until nothing answers there.
pub async fn lightningd(rpc: Option<&Path>, wait: Duration) -> Fenced {
    let Some(rpc) = rpc else {
        return Fenced::Unverified(
            "the old lightningd was not checked (no --lightning-rpc): make sure it is stopped \
             and disabled on its host"
                .into(),
        );
    };
    match reach::unix(rpc) {
        Reach::Answers => {}
        Reach::CannotTell(why) => {
            return Fenced::Refused(format!(
                "cannot tell whether lightningd runs ({why}): run this as lightningd's user or \
                 root, or stop lightningd on its host and leave out --lightning-rpc"
            ));
        }
        Reach::Gone => {
            if let Some(pid) = lightningd_pid(rpc).filter(|p| crate::pgbin::process_alive(*p)) {
                return Fenced::Refused(format!(
                    "nothing answers at {} but lightningd (pid {pid}) still runs: stop it",
                    rpc.display()
                ));
            }
            return Fenced::Verified(format!("no lightningd answers at {}", rpc.display()));
        }
    }
    if let Err(e) = lightningd_rpc::call(rpc, "stop", json!({}), Duration::from_secs(10)).await {
        // A lightningd frozen on a commit does not answer; it must still go.
        return Fenced::Refused(format!(
            "lightningd answers at {} but did not take `stop` ({e:#}): stop it (kill it if it \
             is frozen), then run this again",
            rpc.display()
        ));
    }
    let start = Instant::now();
    while answers(rpc) {
        if start.elapsed() > wait {
            return Fenced::Refused(format!(
                "lightningd at {} accepted `stop` but still answers after {} s",
                rpc.display(),
                wait.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // lightningd closes its RPC socket before it has finished shutting down: wait for the
    // process itself (its pid file is <lightning-dir>/lightningd-<network>.pid).
    if let Some(pid) = lightningd_pid(rpc) {
        while crate::pgbin::process_alive(pid) {
            if start.elapsed() > wait {
                return Fenced::Refused(format!(
                    "lightningd (pid {pid}) still runs {} s after `stop`",
                    wait.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Fenced::Verified(format!(
        "lightningd at {} stopped (its RPC socket no longer answers, its process is gone)",
        rpc.display()
    ))
}

/// lightningd's pid from the pid file beside its network directory, if there is one.
fn lightningd_pid(rpc: &Path) -> Option<i32> {
    let network_dir = rpc.parent()?;
    let network = network_dir.file_name()?.to_str()?;
    let pid_file = network_dir
        .parent()?
        .join(format!("lightningd-{network}.pid"));
    fs::read_to_string(pid_file).ok()?.trim().parse().ok()
}

/// Until proven gone, a socket counts as answering.
fn answers(rpc: &Path) -> bool {
    reach::unix(rpc) != Reach::Gone
}

/// Stops the old primary (`pg_ctl stop -m fast`, which first sends its remaining WAL to the
/// connected standbys) and writes `standby.signal`, so a restart by a unit or a person brings
/// it back in recovery, never as a second primary.
pub fn old_primary(
    data: &Path,
    bindir: Option<&Path>,
    wait: Duration,
    cluster: Option<&str>,
    upstream: &[Upstream],
) -> Fenced {
    if !data.join("PG_VERSION").is_file() {
        return Fenced::Refused(format!(
            "{} is not a PostgreSQL data directory (no PG_VERSION)",
            data.display()
        ));
    }
    // As root, the tools run as the data directory's owner: PostgreSQL refuses root.
    let tools = Tools::find(bindir, Some(data)).map_err(|e| format!("{e:#}"));
    // The directory must be this cluster's: fencing another one would leave the real old
    // primary running while saying it was stopped.
    if let Some(expected) = cluster {
        match system_identifier(data, &tools) {
            Ok(found) if found == expected => {}
            Ok(found) => {
                return Fenced::Refused(format!(
                    "{} belongs to another cluster (system identifier {found}, the standby's \
                     {expected})",
                    data.display()
                ));
            }
            Err(e) => {
                return Fenced::Refused(format!(
                    "cannot tell which cluster {} is: {e}",
                    data.display()
                ));
            }
        }
    }
    let was_running = postmaster_alive(data);
    if let (Some(pid), Some(false)) = (was_running, serves_upstream(data, upstream)) {
        return Fenced::Refused(format!(
            "the postmaster in {} (pid {pid}) is not the one the standby streamed from ({}): \
             give the old primary's own data directory",
            data.display(),
            list(upstream)
        ));
    }
    if let Some(pid) = was_running {
        let tools = match &tools {
            Ok(t) => t,
            Err(e) => {
                return Fenced::Refused(format!(
                    "the old primary runs (pid {pid}) and pg_ctl was not found to stop it ({e}): \
                     give --pg-bindir"
                ));
            }
        };
        let timeout = wait.as_secs().max(1).to_string();
        let args = [
            "-D".as_ref(),
            data.as_os_str(),
            "stop".as_ref(),
            "-m".as_ref(),
            "fast".as_ref(),
            "-w".as_ref(),
            "-t".as_ref(),
            timeout.as_ref(),
        ];
        if let Err(e) = tools.run("pg_ctl", &args) {
            return Fenced::Refused(format!("the old primary (pid {pid}) did not stop: {e:#}"));
        }
    }
    if let Some(pid) = postmaster_alive(data) {
        return Fenced::Refused(format!("the old primary still runs (pid {pid})"));
    }
    let signal = data.join("standby.signal");
    if let Err(e) = write_owned(&signal, data) {
        return Fenced::Refused(format!("cannot write {}: {e}", signal.display()));
    }
    Fenced::Verified(format!(
        "old primary {}; {} written: it can only start as a standby",
        if was_running.is_some() {
            "stopped (pg_ctl stop -m fast)"
        } else {
            "not running"
        },
        signal.display()
    ))
}

/// The old primary's address after the fence: "stopped" needs positive proof that nothing
/// answers where the standby streamed from. A cold copy of the cluster shares its system
/// identifier, so a stopped data directory alone proves nothing about the running server.
pub fn old_primary_address(upstream: &[Upstream], wait: Duration) -> Fenced {
    let timeout = wait.min(Duration::from_secs(3));
    match reach::any_server(upstream, timeout) {
        Reach::Gone => Fenced::Verified(format!(
            "nothing answers at {}, where the standby streamed from",
            list(upstream)
        )),
        Reach::Answers => Fenced::Refused(format!(
            "a server still answers at {}, where the standby streamed from: the old primary \
             runs (was --old-primary-data a copy of its directory?); stop it on its host",
            list(upstream)
        )),
        Reach::CannotTell(why) => Fenced::Unverified(format!(
            "cannot tell whether the old primary still answers where the standby streamed \
             from: {why}"
        )),
    }
}

fn list(upstream: &[Upstream]) -> String {
    let all: Vec<String> = upstream.iter().map(|u| format!("'{u}'")).collect();
    if all.is_empty() {
        "an unknown address".into()
    } else {
        all.join(", ")
    }
}

/// Whether the postmaster running in `data` serves one of the standby's upstream addresses:
/// its `postmaster.pid` names its port (line 4) and socket directory (line 5). `None`: cannot
/// tell (no upstream known, no pid file).
fn serves_upstream(data: &Path, upstream: &[Upstream]) -> Option<bool> {
    let pid_file = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    listens_on(&pid_file, upstream)
}

fn listens_on(pid_file: &str, upstream: &[Upstream]) -> Option<bool> {
    if upstream.is_empty() {
        return None;
    }
    let lines: Vec<&str> = pid_file.lines().collect();
    let port: u16 = lines.get(3)?.trim().parse().ok()?;
    let socket_dirs: Vec<&str> = lines.get(4).map_or(vec![], |l| l.split(',').collect());
    Some(upstream.iter().any(|u| {
        u.port == port && (!u.host.starts_with('/') || socket_dirs.contains(&u.host.as_str()))
    }))
}

/// `pg_controldata`'s "Database system identifier" of a data directory.
fn system_identifier(data: &Path, tools: &Result<Tools, String>) -> Result<String, String> {
    let tools = tools
        .as_ref()
        .map_err(|e| format!("pg_controldata not found ({e}): give --pg-bindir"))?;
    let out = tools
        .run("pg_controldata", &["-D".as_ref(), data.as_os_str()])
        .map_err(|e| format!("{e:#}"))?;
    out.lines()
        .find_map(|l| l.strip_prefix("Database system identifier:"))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| "pg_controldata printed no system identifier".to_string())
}

/// The postmaster's pid when `postmaster.pid` names a live process.
fn postmaster_alive(data: &Path) -> Option<i32> {
    let text = fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: i32 = text.lines().next()?.trim().parse().ok()?;
    crate::pgbin::process_alive(pid).then_some(pid)
}

fn write_owned(path: &Path, owner_of: &Path) -> std::io::Result<()> {
    fs::write(path, "")?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    let m = fs::metadata(owner_of)?;
    std::os::unix::fs::chown(path, Some(m.uid()), Some(m.gid()))
}

/// What the operator runs on the old host when this one cannot reach it.
pub fn old_host_commands(data: Option<&PathBuf>) -> Vec<String> {
    let data = data
        .map(|d| d.display().to_string())
        .unwrap_or_else(|| "<old primary's data directory>".into());
    vec![
        "lightning-cli stop; systemctl disable --now lightningd".into(),
        format!("pg_ctl -D {data} stop -m fast   # as the postgres user"),
        format!("touch {data}/standby.signal     # it may only come back as a standby"),
        "systemctl disable postgresql@<version>-<cluster>   # or your unit's name".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID_FILE: &str =
        "4242\n/srv/pg/data\n1733000000\n5433\n/tmp/sock\n*\n  5433001  32768\nready\n";

    fn up(host: &str, port: u16) -> Upstream {
        Upstream {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn a_running_postmaster_must_serve_the_address_the_standby_streamed_from() {
        assert_eq!(listens_on(PID_FILE, &[up("127.0.0.1", 5433)]), Some(true));
        assert_eq!(listens_on(PID_FILE, &[up("/tmp/sock", 5433)]), Some(true));
        assert_eq!(listens_on(PID_FILE, &[up("127.0.0.1", 5432)]), Some(false));
        assert_eq!(listens_on(PID_FILE, &[up("/other", 5433)]), Some(false));
        assert_eq!(listens_on(PID_FILE, &[]), None);
        assert_eq!(listens_on("4242\n", &[up("h", 1)]), None);
    }

    #[tokio::test]
    async fn a_socket_that_cannot_be_opened_is_no_proof_that_lightningd_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("regtest");
        fs::write(&file, "").unwrap();
        // connect() through a regular file fails with ENOTDIR: neither "no such file" nor
        // "refused", like a permission error.
        let f = lightningd(Some(&file.join("lightning-rpc")), Duration::from_secs(1)).await;
        assert!(
            matches!(&f, Fenced::Refused(m) if m.contains("cannot tell")),
            "{f:?}"
        );
        let f = lightningd(
            Some(&dir.path().join("lightning-rpc")),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(f, Fenced::Verified(_)), "{f:?}");
    }

    #[test]
    fn an_address_that_answers_after_the_fence_refuses() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let f = old_primary_address(&[up("127.0.0.1", port)], Duration::from_secs(1));
        assert!(
            matches!(&f, Fenced::Refused(m) if m.contains("still answers")),
            "{f:?}"
        );
        drop(l);
        let f = old_primary_address(&[up("127.0.0.1", port)], Duration::from_secs(1));
        assert!(matches!(f, Fenced::Verified(_)), "{f:?}");
        assert!(matches!(
            old_primary_address(&[], Duration::from_secs(1)),
            Fenced::Unverified(_)
        ));
    }
}
