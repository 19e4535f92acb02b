//! The PostgreSQL programs that `setup` and `failover` run for the operator (pg_ctl,
//! pg_basebackup, pg_rewind, psql, pg_controldata, initdb), and the operator's own start
//! command. Not the test harness's runner (`pgbin::PgInstall::tool`, which hides our `PG*`
//! variables from throwaway servers): here the operator's environment reaches the tools —
//! `PGPASSWORD`, `PGPASSFILE`, `~/.pgpass`, `PGHOST`… — exactly as when they type the command.
//!
//! And no tool can hang cln-replguard (a `pg_basebackup` waiting for a password at a prompt
//! nobody sees spun forever, issue 16):
//! - it cannot prompt: its stdin is /dev/null (or the script we give it), `--no-password` is
//!   passed where the tool has it, and it runs in a new session with no controlling terminal,
//!   so libpq cannot open /dev/tty to ask;
//! - an unreachable host fails within `PGCONNECT_TIMEOUT` (10 s unless the operator set it),
//!   not after the kernel's TCP retries;
//! - it runs under a deadline, after which its whole process group is killed;
//! - it dies with cln-replguard (`PR_SET_PDEATHSIG`), so no orphan is left spinning.
//!
//! A failure carries what the tool printed on stderr, and when the server asked for a
//! password that nobody gave, the error says which variable or file to set.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

/// How long an unreachable server may take to refuse, unless the operator set
/// `PGCONNECT_TIMEOUT` (libpq's default is to wait for the kernel: minutes).
const CONNECT_TIMEOUT_S: &str = "10";
/// Default deadline of `pg_basebackup` and `pg_rewind`, which copy the database.
pub const COPY_DEADLINE: Duration = Duration::from_secs(2 * 3600);

/// Whom the tools run as when cln-replguard runs as root (PostgreSQL refuses root).
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

/// The server programs of one installation, and whom to run them as.
#[derive(Debug)]
pub struct Tools {
    pub bindir: PathBuf,
    user: Option<User>,
    copy_deadline: Duration,
}

/// What a finished tool said.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Tools {
    /// The installation in `bindir`; else, unless `PG_BINDIR` says otherwise, Debian's of the
    /// data directory's own major (two majors are installed side by side during an upgrade,
    /// and `pg_config` names the newest: its pg_ctl cannot start an older cluster); else the
    /// one `pgbin::server_bindir` finds. As root, the
    /// tools run as the owner of `data` (or of its nearest existing parent) unless that is
    /// root, else as `postgres`.
    pub fn find(bindir: Option<&Path>, data: Option<&Path>) -> Result<Tools> {
        let bindir = bindir
            .map(Path::to_path_buf)
            .or_else(|| data.and_then(debian_bindir_of))
            .or_else(crate::pgbin::server_bindir)
            .ok_or_else(|| {
                anyhow!(
                    "PostgreSQL's programs were not found (pg_ctl, pg_basebackup, psql…): \
                     install them (Debian/Ubuntu: apt-get install postgresql) or point \
                     PG_BINDIR at their directory"
                )
            })?;
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            Some(owner_of(data).map_or_else(|| user_named("postgres"), Ok)?)
        } else {
            None
        };
        Ok(Tools {
            bindir,
            user,
            copy_deadline: COPY_DEADLINE,
        })
    }

    pub fn with_copy_deadline(mut self, deadline: Duration) -> Tools {
        self.copy_deadline = deadline;
        self
    }

    /// Runs `program`; its stdout, or an error with its stderr.
    pub fn run<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Result<String> {
        let done = self.exec(program, args, None)?;
        require_success(program, done, self.user.as_ref())
    }

    /// Runs `program` with `input` as its stdin (a psql script).
    pub fn run_input<S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: &[S],
        input: &[u8],
    ) -> Result<String> {
        let done = self.exec(program, args, Some(input))?;
        require_success(program, done, self.user.as_ref())
    }

    /// Runs `program` whatever its exit status (`pg_ctl status` says "not running" with 3).
    pub fn exec<S: AsRef<OsStr>>(
        &self,
        program: &str,
        args: &[S],
        input: Option<&[u8]>,
    ) -> Result<Finished> {
        let deadline = match program {
            "pg_basebackup" | "pg_rewind" => self.copy_deadline,
            "initdb" | "pg_ctl" => Duration::from_secs(300),
            _ => Duration::from_secs(120),
        };
        let creds = self.user.as_ref().map(Creds::of);
        spawn_guarded(self.command(program, args), creds, program, input, deadline)
    }

    /// The command line and environment of a tool: the operator's environment as it is, except
    /// that a server program (which the server inherits, with every backend and every
    /// archive_command) gets no password: `PGPASSWORD` in a server would let dblink and
    /// postgres_fdw connections use it.
    fn command<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        if NO_PROMPT_FLAG.contains(&program) {
            cmd.arg("--no-password");
        }
        cmd.args(args).env("LC_ALL", "C");
        if SERVER_PROGRAMS.contains(&program) {
            for (k, _) in std::env::vars_os() {
                if is_secret_variable(&k.to_string_lossy()) {
                    cmd.env_remove(k);
                }
            }
        }
        if let Some(u) = &self.user {
            cmd.current_dir("/");
            // libpq finds ~/.pgpass through HOME: that of the user the tool runs as.
            cmd.env("HOME", &u.home)
                .env("USER", &u.name)
                .env("LOGNAME", &u.name);
        }
        cmd
    }

    /// The user the tools run as, when not the invoking one: (name, uid).
    pub fn user(&self) -> Option<(&str, u32)> {
        self.user.as_ref().map(|u| (u.name.as_str(), u.uid))
    }

    /// Makes `path` belong to the user the tools run as.
    pub fn own(&self, path: &Path) -> Result<()> {
        crate::pgbin::own(path, self.user.as_ref().map(|u| (u.uid, u.gid)))
    }

    /// A directory only the tools' user may enter, as PostgreSQL wants its directories.
    pub fn mkdir(&self, path: &Path) -> Result<()> {
        crate::pgbin::private_dir(path, self.user.as_ref().map(|u| (u.uid, u.gid)))
    }
}

/// `/usr/lib/postgresql/<PG_VERSION>/bin` of a data directory (Debian's layout), when there.
fn debian_bindir_of(data: &Path) -> Option<PathBuf> {
    if std::env::var_os("PG_BINDIR").is_some() {
        return None;
    }
    let major = fs::read_to_string(data.join("PG_VERSION")).ok()?;
    let dir = PathBuf::from(format!("/usr/lib/postgresql/{}/bin", major.trim()));
    dir.join("pg_ctl").is_file().then_some(dir)
}

/// The programs that start a server, which inherits their environment.
const SERVER_PROGRAMS: [&str; 3] = ["pg_ctl", "initdb", "postgres"];

/// A variable a server must not inherit: a password, or what leads to one.
fn is_secret_variable(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper == "PGPASSFILE"
        || upper.starts_with("REPLGUARD_")
        || ["PASSWORD", "PASSWD", "SECRET"]
            .iter()
            .any(|w| upper.contains(w))
}

/// The identity a tool takes when we are root: uid, gid and the user's supplementary groups
/// (Debian's `postgres` reads its TLS key through the `ssl-cert` group; a tool started
/// without it starts a server that cannot).
struct Creds {
    uid: u32,
    gid: u32,
    groups: Vec<libc::gid_t>,
}

impl Creds {
    fn of(u: &User) -> Creds {
        let name = std::ffi::CString::new(u.name.as_str()).unwrap_or_default();
        let mut groups: Vec<libc::gid_t> = vec![0; 64];
        loop {
            let mut n = libc::c_int::try_from(groups.len()).unwrap_or(libc::c_int::MAX);
            // SAFETY: the buffer holds `n` entries; getgrouplist writes at most that many.
            let r =
                unsafe { libc::getgrouplist(name.as_ptr(), u.gid, groups.as_mut_ptr(), &mut n) };
            let n = usize::try_from(n).unwrap_or(0);
            if r >= 0 {
                groups.truncate(n);
                break;
            }
            groups.resize(n.max(groups.len() * 2), 0);
        }
        Creds {
            uid: u.uid,
            gid: u.gid,
            groups,
        }
    }
}

/// The programs whose libpq connection could otherwise prompt for a password.
const NO_PROMPT_FLAG: [&str; 2] = ["psql", "pg_basebackup"];

/// The operator's own command (`pg_ctlcluster 15 main start`, `systemctl restart …`), run as
/// the invoking user through `sh -c`, under the same guarantees as the tools, without the
/// passwords of the environment.
pub fn shell(command: &str, deadline: Duration) -> Result<String> {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", command]);
    // It starts a server (pg_ctlcluster, systemctl…), which must not inherit a password.
    for (k, _) in std::env::vars_os() {
        if is_secret_variable(&k.to_string_lossy()) {
            cmd.env_remove(k);
        }
    }
    let done = spawn_guarded(cmd, None, command, None, deadline)?;
    require_success(command, done, None)
}

fn require_success(what: &str, done: Finished, user: Option<&User>) -> Result<String> {
    if done.status.success() {
        return Ok(done.stdout);
    }
    let said = done.stderr.trim();
    let status = match (done.status.code(), done.status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => done.status.to_string(),
    };
    match password_hint(said, user) {
        Some(hint) => bail!("{what} failed ({status}): {said}\n{hint}"),
        None => bail!("{what} failed ({status}): {said}"),
    }
}

/// When the server asked for a password: which variable or file would have given it.
fn password_hint(stderr: &str, user: Option<&User>) -> Option<String> {
    let (path, file) = match std::env::var_os("PGPASSFILE") {
        Some(f) => (
            PathBuf::from(&f),
            format!(
                "the password file PGPASSFILE names ({})",
                f.to_string_lossy()
            ),
        ),
        None => {
            let home = user.map_or_else(
                || std::env::var_os("HOME").map_or("~".into(), PathBuf::from),
                |u| u.home.clone(),
            );
            let path = home.join(".pgpass");
            let file = format!("{} (mode 0600)", path.display());
            (path, file)
        }
    };
    let as_user = user.map_or(String::new(), |u| {
        format!(" (as root, PostgreSQL's programs run as user {})", u.name)
    });
    if stderr.contains("no password supplied") {
        // libpq skips a password file it cannot open without a word: say so, or the
        // operator looks at a file that holds the right password and sees no reason.
        if let Some(why) = unreadable_for(&path, user) {
            return Some(format!(
                "the server asks for a password and none was given: {why}"
            ));
        }
        Some(format!(
            "the server asks for a password and none was given: export PGPASSWORD (for the \
             standby: PGPASSWORD=\"$REPLGUARD_REPLICATION_PASSWORD\") or put it in \
             {file}{as_user}"
        ))
    } else if stderr.contains("password authentication failed") {
        Some(format!(
            "the server refused the password given (PGPASSWORD or {file}): it must be the one \
             `setup primary` set from REPLGUARD_REPLICATION_PASSWORD{as_user}"
        ))
    } else {
        None
    }
}

/// Why the password file at `path` exists but the tools cannot read it (they run as `user`,
/// or as we do); `None` when it is absent or readable.
fn unreadable_for(path: &Path, user: Option<&User>) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    let mode = m.mode();
    let readable = match user {
        Some(u) => {
            (m.uid() == u.uid && mode & 0o400 != 0)
                || (m.gid() == u.gid && mode & 0o040 != 0)
                || mode & 0o004 != 0
        }
        None => {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
            // SAFETY: access(2) on a NUL-terminated path; it only reads it.
            unsafe { libc::access(c.as_ptr(), libc::R_OK) == 0 }
        }
    };
    if readable {
        return None;
    }
    let who = user.map_or("this user".to_string(), |u| format!("user {}", u.name));
    let fix = user.map_or(String::new(), |u| {
        format!(
            ": chown {} {} && chmod 0600 {}",
            u.name,
            path.display(),
            path.display()
        )
    });
    Some(format!(
        "the password file {} exists but {who} cannot read it (owner uid {}, mode {:04o}), and \
         libpq skips it without a word{fix}",
        path.display(),
        m.uid(),
        mode & 0o7777
    ))
}

/// Spawns `cmd` so that it cannot prompt, cannot outlive us, and is killed (with its process
/// group) at `deadline`. Output goes to unnamed files, not pipes: a server started by the tool
/// may keep inherited descriptors open long after the tool ended, and a pipe would then never
/// reach end-of-file.
fn spawn_guarded(
    mut cmd: Command,
    creds: Option<Creds>,
    what: &str,
    input: Option<&[u8]>,
    deadline: Duration,
) -> Result<Finished> {
    let mut out = tempfile::tempfile().context("a file for the tool's output")?;
    let mut err = tempfile::tempfile().context("a file for the tool's errors")?;
    let stdin = match input {
        Some(bytes) => {
            let mut f = tempfile::tempfile().context("a file for the tool's input")?;
            f.write_all(bytes)?;
            f.rewind()?;
            Stdio::from(f)
        }
        None => Stdio::null(),
    };
    // 0 (or nothing) would be libpq's "wait as long as the kernel does".
    let connect_timeout = std::env::var("PGCONNECT_TIMEOUT").unwrap_or_default();
    if connect_timeout.trim().parse::<i64>().is_ok_and(|t| t <= 0) || connect_timeout.is_empty() {
        cmd.env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_S);
    }
    cmd.stdin(stdin)
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?);
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Groups, then gid, then uid: after the uid change nothing else may change.
            if let Some(c) = &creds
                && (libc::setgroups(c.groups.len(), c.groups.as_ptr()) < 0
                    || libc::setgid(c.gid) < 0
                    || libc::setuid(c.uid) < 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            // A session of its own: no controlling terminal to prompt on, and a process
            // group to kill whole.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // After the uid change (which would clear it), so it holds for the tool.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other(
                    "cln-replguard ended before the tool began",
                ));
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {what} ({:?})", cmd.get_program()))?;
    let status = wait_until(&mut child, deadline)?;
    let read = |f: &mut fs::File| -> Result<String> {
        let mut s = String::new();
        f.rewind()?;
        f.take(1 << 20).read_to_string(&mut s).ok();
        Ok(s)
    };
    let (stdout, stderr) = (read(&mut out)?, read(&mut err)?);
    match status {
        Some(status) => Ok(Finished {
            status,
            stdout,
            stderr,
        }),
        None => bail!(
            "{what} did not finish within {} and was stopped (with every process it \
             started){}",
            humantime::format_duration(deadline),
            match stderr.trim() {
                "" => String::new(),
                s => format!("; it said: {s}"),
            }
        ),
    }
}

/// The exit status, or `None` when the deadline passed (the process group is then killed
/// and reaped).
fn wait_until(child: &mut std::process::Child, deadline: Duration) -> Result<Option<ExitStatus>> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if start.elapsed() >= deadline {
            let pgid = i32::try_from(child.id()).unwrap_or(0);
            if pgid > 0 {
                // SAFETY: a signal to the process group the child leads (setsid above).
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
            }
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline.saturating_sub(start.elapsed())));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The owner of `data`, or of its nearest existing parent, unless that is root.
fn owner_of(data: Option<&Path>) -> Option<User> {
    let mut p = data?;
    let meta = loop {
        match fs::metadata(p) {
            Ok(m) => break m,
            Err(_) => p = p.parent()?,
        }
    };
    (meta.uid() != 0).then(|| user_by_uid(meta.uid(), meta.gid()))
}

fn user_by_uid(uid: u32, gid: u32) -> User {
    // SAFETY: getpwuid returns NULL or a pointer to static storage we read at once.
    let pw = unsafe { libc::getpwuid(uid) };
    if pw.is_null() {
        return User {
            name: uid.to_string(),
            uid,
            gid,
            home: PathBuf::from("/"),
        };
    }
    // SAFETY: non-null pointer from getpwuid, whose strings are NUL-terminated.
    unsafe { user_from(&*pw) }
}

fn user_named(name: &str) -> Result<User> {
    let cname = std::ffi::CString::new(name)?;
    // SAFETY: getpwnam returns NULL or a pointer to static storage we read at once.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        bail!(
            "running as root, and no user {name} exists to run PostgreSQL's programs as: run \
             cln-replguard as the user that owns the data directory"
        );
    }
    // SAFETY: non-null pointer from getpwnam.
    Ok(unsafe { user_from(&*pw) })
}

/// # Safety
/// `pw` must come from getpwnam/getpwuid, just now.
unsafe fn user_from(pw: &libc::passwd) -> User {
    let text = |p: *const libc::c_char| {
        // SAFETY: the caller's promise: NUL-terminated strings of a passwd entry.
        unsafe { std::ffi::CStr::from_ptr(p) }
            .to_string_lossy()
            .into_owned()
    };
    User {
        name: text(pw.pw_name),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        home: PathBuf::from(text(pw.pw_dir)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_file_the_tools_user_cannot_read_is_named_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let pgpass = dir.path().join(".pgpass");
        std::fs::write(&pgpass, "*:*:*:replicator:secret\n").unwrap();
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let owner = std::fs::metadata(&pgpass).unwrap().uid();
        let other = User {
            name: "postgres".into(),
            uid: owner + 1,
            gid: u32::MAX - 1,
            home: dir.path().into(),
        };
        let said = "pg_basebackup: error: fe_sendauth: no password supplied";
        let hint = password_hint(said, Some(&other)).unwrap();
        assert!(
            hint.contains("exists but user postgres cannot read it")
                && hint.contains(&format!("chown postgres {}", pgpass.display())),
            "{hint}"
        );
        assert!(!hint.contains("secret"), "{hint}");
        // Its owner reads it: the usual advice.
        let owner = User {
            uid: owner,
            ..other
        };
        let hint = password_hint(said, Some(&owner)).unwrap();
        assert!(hint.contains("export PGPASSWORD"), "{hint}");
    }

    fn sh(script: &str, deadline: Duration) -> Result<String> {
        shell(script, deadline)
    }

    #[test]
    fn a_tool_past_its_deadline_is_killed_with_everything_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        let start = Instant::now();
        let e = sh(
            &format!("sleep 300 & echo $! > {}; wait", pidfile.display()),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        assert!(
            format!("{e:#}").contains("did not finish within 300ms"),
            "{e:#}"
        );
        let pid: i32 = fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        crate::pgbin::wait_for("the grandchild gone", Duration::from_secs(5), || {
            Ok(!crate::pgbin::process_alive(pid))
        })
        .unwrap();
    }

    #[test]
    fn a_tool_has_no_terminal_to_prompt_on_and_reads_nothing() {
        // A prompt opens /dev/tty: in a session of its own there is none. stdin is empty.
        let out = sh(
            "if ( : < /dev/tty ) 2>/dev/null; then echo tty; else echo none; fi; cat; echo end",
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out, "none\nend\n");
    }

    #[test]
    fn the_operators_environment_reaches_the_tool_and_a_connect_timeout_is_set() {
        let tools = Tools {
            bindir: "/usr/bin".into(),
            user: None,
            copy_deadline: COPY_DEADLINE,
        };
        let cmd = tools.command("psql", &["-d", "dbname=postgres"]);
        let touched: Vec<_> = cmd.get_envs().map(|(k, _)| k.to_owned()).collect();
        assert_eq!(
            touched,
            vec![std::ffi::OsString::from("LC_ALL")],
            "nothing hidden"
        );
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args[0], "--no-password", "psql may never prompt");
        let timeout = std::env::var("PGCONNECT_TIMEOUT").unwrap_or(CONNECT_TIMEOUT_S.into());
        let out = sh("echo $PGCONNECT_TIMEOUT", Duration::from_secs(10)).unwrap();
        assert_eq!(out.trim(), timeout);
    }

    #[test]
    fn a_failure_carries_stderr_and_a_missing_password_names_what_to_set() {
        let e = sh(
            "echo 'pg_basebackup: error: fe_sendauth: no password supplied' >&2; exit 1",
            Duration::from_secs(10),
        )
        .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("exit status 1"), "{e}");
        assert!(e.contains("fe_sendauth: no password supplied"), "{e}");
        assert!(e.contains("export PGPASSWORD"), "{e}");
        assert!(e.contains(".pgpass"), "{e}");
    }
}
