//! Where the PostgreSQL server programs (initdb, pg_ctl, pg_basebackup…) are: `PG_BINDIR`,
//! else `pg_config --bindir`, else the newest /usr/lib/postgresql/<version>/bin (Debian). How
//! to run them (as an unprivileged user when we are root), and whether a server process still
//! runs. Shared by `setup` (real servers) and the test harness `cluster` (throwaway ones).

use std::fs;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

pub fn server_bindir() -> Option<PathBuf> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(d) = std::env::var_os("PG_BINDIR").map(PathBuf::from) {
        return has_server(&d).then_some(d);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&d) {
            return Some(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let d = e.path().join("bin");
            has_server(&d).then_some((v, d))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}

/// Running, not a zombie: a killed postmaster whose parent has not reaped it yet still
/// answers `kill(pid, 0)`.
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The installed PostgreSQL server binaries, and the user to run them as.
#[derive(Debug)]
pub struct PgInstall {
    pub bindir: PathBuf,
    run_as: Option<(u32, u32)>,
}

impl PgInstall {
    pub fn find() -> Result<Arc<PgInstall>> {
        let bindir = server_bindir().ok_or_else(|| {
            anyhow!(
                "PostgreSQL server binaries not found (initdb, pg_ctl, postgres). Install them, \
                 e.g. `apt-get install postgresql` on Debian/Ubuntu, or point PG_BINDIR at their \
                 directory"
            )
        })?;
        // SAFETY: geteuid has no preconditions.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(unprivileged_user()?)
        } else {
            None
        };
        Ok(Arc::new(PgInstall { bindir, run_as }))
    }

    /// A server tool, run as the unprivileged user when we are root, with no PG* variables
    /// of ours leaking into it.
    pub fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(name));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PG") {
                cmd.env_remove(k);
            }
        }
        cmd.env("LC_ALL", "C").stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
            cmd.current_dir("/");
        }
        cmd
    }

    /// Makes `path` belong to the user the servers run as.
    pub fn own(&self, path: &Path) -> Result<()> {
        own(path, self.run_as)
    }

    pub fn mkdir(&self, path: &Path) -> Result<()> {
        private_dir(path, self.run_as)
    }
}

/// Makes `path` belong to `owner` (uid, gid), when given.
pub fn own(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// A directory only `owner` may enter, as PostgreSQL wants its directories.
pub fn private_dir(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    fs::create_dir_all(path).with_context(|| format!("mkdir {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    own(path, owner)
}

fn unprivileged_user() -> Result<(u32, u32)> {
    for name in ["postgres", "nobody"] {
        let cname = std::ffi::CString::new(name)?;
        // SAFETY: getpwnam returns NULL or a pointer to static storage we read at once.
        let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
        if !pw.is_null() {
            // SAFETY: non-null pointer from getpwnam.
            let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
            return Ok((uid, gid));
        }
    }
    bail!("running as root, and neither user postgres nor nobody exists to run the servers as")
}

/// Runs a command, returning stdout; failure carries the exit status and stderr.
pub fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out: Output = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `cond` every 20 ms until it is true or `timeout` passes.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    let mut last_err = None;
    loop {
        match cond() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            bail!(
                "timed out after {:?} waiting for {what}{}",
                timeout,
                last_err.map_or(String::new(), |e| format!(" (last error: {e:#})"))
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
