//! contrib/README.md's two-machine walk-through, run as it is written, across two hosts: two
//! network namespaces joined by a veth pair (10.0.0.1, the primary; 10.0.0.2, the standby).
//! Each host has its own /var/lib/postgresql, /var/run/postgresql, /etc/postgresql and
//! /var/log/postgresql (directories of this test, bind-mounted in the command's own mount
//! namespace) and both share /mnt (the WAL archive). Debian's layout
//! on both hosts (`pg_createcluster`, the configuration in /etc/postgresql, `pg_ctlcluster`):
//! the primary is restarted by setup, rewound after the failover and started again, all
//! Debian's way. Passwords travel over TCP with scram-sha-256.
//!
//! The commands come from contrib/README.md (the blocks marked `<!-- two-hosts:… -->`): when
//! the README changes, this test runs the new commands.
//!
//! Needs root (namespaces, mounts), `ip` (iproute2) and Debian's PostgreSQL packages
//! (postgresql-common): `.ci/run` installs them and runs this test; locally, as root:
//! `cargo test --test two_hosts -- --ignored`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt as _, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cln_replguard::pgbin::{process_alive, wait_for};

const PRIMARY_ADDR: &str = "10.0.0.1";
const STANDBY_ADDR: &str = "10.0.0.2";
/// Every command of a host is stopped after this (a hang is a failure, not a stuck test).
const COMMAND_DEADLINE_S: u32 = 300;

/// The directories each host has of its own, bind-mounted over the real ones.
const HOST_DIRS: [(&str, &str); 4] = [
    ("lib", "/var/lib/postgresql"),
    ("run", "/var/run/postgresql"),
    ("etc", "/etc/postgresql"),
    ("log", "/var/log/postgresql"),
];

struct Host {
    netns: String,
    veth: String,
    root: PathBuf,
    shared: PathBuf,
    env: BTreeMap<String, String>,
}

impl Host {
    /// `script` run by `sh -e` on this host, as root or (`user`) another user, with the
    /// host's environment plus `extra`.
    fn sh(&self, user: Option<&str>, script: &str, extra: &[(&str, &str)]) -> Output {
        let mut mounts = String::new();
        for (own, real) in HOST_DIRS {
            mounts += &format!("mount --bind {} {real} && ", self.root.join(own).display());
        }
        mounts += &format!("mount --bind {} /mnt && ", self.shared.display());
        let run = match user {
            Some(u) => format!("exec runuser -u {u} -- sh -ec \"$0\""),
            None => "exec sh -ec \"$0\"".into(),
        };
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", &COMMAND_DEADLINE_S.to_string()])
            .args(["ip", "netns", "exec", &self.netns, "unshare", "--mount"])
            .args(["sh", "-euc", &format!("{mounts}{run}"), script])
            .env_clear()
            .envs(&self.env)
            .envs(extra.iter().copied())
            .current_dir("/");
        cmd.output().expect("run a command on a test host")
    }

    /// Like `sh`, but the command must succeed; its stdout.
    fn ok(&self, user: Option<&str>, script: &str, extra: &[(&str, &str)]) -> String {
        let out = self.sh(user, script, extra);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "on {}: {script}\n→ {}\n{stdout}{stderr}",
            self.netns,
            out.status
        );
        stdout.into_owned()
    }

    fn link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        run(&["ip", "-n", &self.netns, "link", "set", &self.veth, state]);
    }

    /// Every process of this host, killed at once: the host is lost.
    fn crash(&self) {
        assert!(
            self.kill_all(),
            "{}: processes outlived SIGKILL",
            self.netns
        );
    }

    /// SIGKILL to every process in the namespace; whether they are all gone within 10 s.
    fn kill_all(&self) -> bool {
        let Ok(pids) = Command::new("ip")
            .args(["netns", "pids", &self.netns])
            .output()
        else {
            return false;
        };
        let pids: Vec<i32> = String::from_utf8_lossy(&pids.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        for &pid in &pids {
            // SAFETY: a signal to a process in the namespace this test made.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        wait_for("the host's processes gone", Duration::from_secs(10), || {
            Ok(pids.iter().all(|p| !process_alive(*p)))
        })
        .is_ok()
    }

    /// The environment of this host's postmaster (its data directory's pid file).
    fn postmaster_environ(&self, major: &str) -> String {
        let pid_file = self.root.join(format!("lib/{major}/main/postmaster.pid"));
        let pid = fs::read_to_string(pid_file).unwrap();
        let pid = pid.lines().next().unwrap().trim();
        fs::read_to_string(format!("/proc/{pid}/environ")).unwrap_or_default()
    }
}

/// A host goes with everything it ran, even when the test panics (its veth with it).
impl Drop for Host {
    fn drop(&mut self) {
        self.kill_all();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// The two hosts and their link; the hosts go first (fields drop in order), then the
/// directories they used.
struct TwoHosts {
    primary: Host,
    standby: Host,
    _dir: tempfile::TempDir,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn postgres_ids() -> (u32, u32) {
    let out = Command::new("id")
        .args(["-u", "postgres"])
        .output()
        .unwrap();
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let out = Command::new("id")
        .args(["-g", "postgres"])
        .output()
        .unwrap();
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    (uid, gid)
}

fn owned_dir(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    let (uid, gid) = postgres_ids();
    chown(path, Some(uid), Some(gid)).unwrap();
}

/// The Debian installation's major (its /usr/lib/postgresql/<major>/bin): the layout the
/// walk-through's paths and `pg_ctlcluster` use.
fn debian_major() -> String {
    let mut majors: Vec<u32> = fs::read_dir("/usr/lib/postgresql")
        .expect("Debian's PostgreSQL packages (apt-get install postgresql)")
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .filter(|m| Path::new(&format!("/usr/lib/postgresql/{m}/bin/initdb")).is_file())
        .collect();
    majors.sort();
    majors
        .pop()
        .expect("a PostgreSQL server in /usr/lib/postgresql")
        .to_string()
}

fn two_hosts(major: &str) -> TwoHosts {
    assert_eq!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() },
        0,
        "network namespaces and mounts need root"
    );
    let dir = tempfile::Builder::new()
        .prefix("replguard-2hosts-")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let shared = dir.path().join("shared");
    owned_dir(&shared, 0o755);
    owned_dir(&shared.join("walarchive"), 0o700);
    let tag = std::process::id() % 100_000;
    let bin = Path::new(env!("CARGO_BIN_EXE_cln-replguard"))
        .parent()
        .unwrap();
    let path = format!(
        "{}:/usr/lib/postgresql/{major}/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        bin.display()
    );
    let host = |name: &str| {
        let root = dir.path().join(name);
        owned_dir(&root, 0o755);
        for (own, _) in HOST_DIRS {
            owned_dir(&root.join(own), 0o755);
        }
        owned_dir(&root.join("lib").join(major), 0o755);
        fs::set_permissions(root.join("run"), fs::Permissions::from_mode(0o2775)).unwrap();
        let netns = format!("rg{name}{tag}");
        run(&["ip", "netns", "add", &netns]);
        let mut env = BTreeMap::new();
        env.insert("PATH".to_string(), path.clone());
        env.insert("LC_ALL".to_string(), "C".to_string());
        env.insert("HOME".to_string(), "/root".to_string());
        Host {
            veth: format!("v{name}{tag}"),
            netns,
            root,
            shared: shared.clone(),
            env,
        }
    };
    let primary = host("a");
    let standby = host("b");
    let hosts = TwoHosts {
        primary,
        standby,
        _dir: dir,
    };
    let (p, s) = (&hosts.primary, &hosts.standby);
    run(&[
        "ip", "link", "add", &p.veth, "type", "veth", "peer", "name", &s.veth,
    ]);
    for (h, addr) in [(p, PRIMARY_ADDR), (s, STANDBY_ADDR)] {
        run(&["ip", "link", "set", &h.veth, "netns", &h.netns]);
        run(&[
            "ip",
            "-n",
            &h.netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &h.veth,
        ]);
        run(&["ip", "-n", &h.netns, "link", "set", "lo", "up"]);
        h.link(true);
    }
    hosts
}

/// The commands of the README block marked `<!-- two-hosts:LABEL -->`, for this major.
/// Lines that hold a placeholder (`…`) are the operator's to fill in: the test sets those
/// variables itself.
fn readme_block(label: &str, major: &str) -> String {
    let readme =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/README.md")).unwrap();
    let marker = format!("<!-- two-hosts:{label} -->");
    let after = readme
        .split_once(&marker)
        .unwrap_or_else(|| panic!("contrib/README.md has no block {marker}"))
        .1;
    let body = after
        .trim_start()
        .strip_prefix("```sh\n")
        .unwrap_or_else(|| panic!("{marker} is not followed by a sh block"));
    let body = &body[..body.find("```").expect("the block ends")];
    body.lines()
        .filter(|l| !l.contains('…'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("postgresql/15/", &format!("postgresql/{major}/"))
        .replace("pg_ctlcluster 15 ", &format!("pg_ctlcluster {major} "))
}

/// Every block the README marks is one this test runs.
const BLOCKS: [&str; 7] = [
    "primary",
    "standby",
    "check",
    "failover",
    "rejoin-new-primary",
    "rejoin-old-primary",
    "check-new-primary",
];

/// The time a step took, printed as the operator would see it.
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    eprintln!("two_hosts: {what}: {:.2} s", start.elapsed().as_secs_f64());
    out
}

#[test]
#[ignore = "needs root, iproute2 and Debian's postgresql-common; .ci/run runs it"]
fn the_two_machine_walk_through_works_across_two_hosts_and_back() {
    let major = debian_major();
    let readme =
        fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/README.md")).unwrap();
    let marked = readme.matches("<!-- two-hosts:").count();
    assert_eq!(
        marked,
        BLOCKS.len(),
        "a README block this test does not run"
    );
    let hosts = two_hosts(&major);
    let (a, b) = (&hosts.primary, &hosts.standby);
    let secrets = [
        ("REPLGUARD_REPLICATION_PASSWORD", "repl 'pass' \"word\""),
        ("REPLGUARD_WALLET_PASSWORD", "wallet-secret-7"),
    ];

    // Both hosts in Debian's layout (configuration in /etc/postgresql, pg_ctlcluster). The
    // primary runs; its local connections are trusted (the check below connects as
    // lightningd from root), TCP takes scram-sha-256.
    let data = format!("/var/lib/postgresql/{major}/main");
    a.ok(
        None,
        &format!(
            "pg_createcluster {major} main -- --auth-local=trust --auth-host=scram-sha-256 \
             >/dev/null && pg_ctlcluster {major} main start"
        ),
        &[],
    );
    // The standby's cluster made, stopped, its data directory emptied.
    b.ok(
        None,
        &format!(
            "pg_createcluster {major} main >/dev/null && rm -rf {data} && \
             install -d -o postgres -g postgres -m 0700 {data}"
        ),
        &[],
    );

    let out = timed("1. setup primary", || {
        a.ok(None, &readme_block("primary", &major), &secrets)
    });
    assert!(
        out.contains(&format!("(pg_ctlcluster {major} main restart)")),
        "wal_log_hints waits for a restart, Debian's way: {out}"
    );
    let log = a.ok(
        None,
        &format!("cat /var/log/postgresql/postgresql-{major}-main.log"),
        &[],
    );
    assert!(
        log.contains("received fast shutdown request") && log.contains("ready to accept"),
        "the restart logs where the server logged before:\n{log}"
    );
    let environ = a.postmaster_environ(&major);
    assert!(
        !environ.contains("REPLGUARD_") && !environ.contains("PGPASSWORD"),
        "a password in the server's environment: {environ:?}"
    );

    // Without the password, the standby step stops at once and says what to set.
    let start = Instant::now();
    let no_password = readme_block("standby", &major);
    let out = b.sh(None, &no_password, &[]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert!(
        said.contains("no password supplied") && said.contains("PGPASSWORD"),
        "{said}"
    );
    eprintln!(
        "two_hosts: standby without a password ({:.2} s):\n{said}",
        start.elapsed().as_secs_f64()
    );

    let out = timed("2. setup standby", || {
        b.ok(None, &readme_block("standby", &major), &secrets[..1])
    });
    assert!(out.contains("done on the standby host"), "{out}");
    let environ = b.postmaster_environ(&major);
    assert!(
        !environ.contains("REPLGUARD_") && !environ.contains("PGPASSWORD"),
        "a password in the standby's environment: {environ:?}"
    );

    let out = timed("3. check", || {
        a.ok(None, &readme_block("check", &major), &[])
    });
    assert!(out.starts_with("REPLGUARD SAFE"), "{out}");
    eprintln!("two_hosts: {out}");

    // The link goes down: commits block, and the check says so at once.
    a.link(false);
    let start = Instant::now();
    let check = "REPLGUARD_DSN='postgres://host=/var/run/postgresql user=lightningd \
                 dbname=lightningd' cln-replguard check || true";
    let out = a.ok(None, check, &[]);
    let took = start.elapsed();
    assert!(out.starts_with("REPLGUARD UNSAFE"), "{out}");
    assert!(took < Duration::from_secs(2), "unsafe after {took:?}");
    eprintln!(
        "two_hosts: link down → {} ({:.2} s)",
        out.trim(),
        took.as_secs_f64()
    );
    a.link(true);
    // The standby's connection comes back when TCP retransmits (backing off while the link
    // was down): until then the test commit of the check above is still waiting.
    let start = Instant::now();
    let check_again = readme_block("check", &major);
    let mut last = String::new();
    let back = wait_for(
        "safe again after the link is up",
        Duration::from_secs(60),
        || {
            last = String::from_utf8_lossy(&a.sh(None, &check_again, &[]).stdout).into_owned();
            Ok(last.starts_with("REPLGUARD SAFE"))
        },
    );
    assert!(back.is_ok(), "link up again: {last}");
    eprintln!(
        "two_hosts: link up → safe again ({:.2} s)",
        start.elapsed().as_secs_f64()
    );

    // The primary host is lost; the standby takes over.
    a.crash();
    a.link(false);
    let out = timed("failover", || {
        b.ok(Some("postgres"), &readme_block("failover", &major), &[])
    });
    assert!(out.contains("replguard-accept-no-standby-until="), "{out}");

    // Back to a pair: the old primary is rewound and streams from the new one.
    a.link(true);
    let rejoin = readme_block("rejoin-new-primary", &major);
    let out = timed("rejoin on the new primary", || {
        b.ok(None, &rejoin, &secrets[..1])
    });
    assert!(out.contains("p1 does not stream yet"), "{out}");
    let out = timed("rewind the old primary", || {
        a.ok(
            None,
            &readme_block("rejoin-old-primary", &major),
            &secrets[..1],
        )
    });
    assert!(out.contains("pg_rewind"), "{out}");
    assert!(
        out.contains(&format!("pg_ctlcluster {major} main start")),
        "the rewound Debian cluster starts Debian's way: {out}"
    );
    let out = timed("name it on the new primary", || {
        b.ok(None, &rejoin, &secrets[..1])
    });
    assert!(out.contains("FIRST 1 (p1)"), "{out}");
    let out = b.ok(
        Some("postgres"),
        &readme_block("check-new-primary", &major),
        &[],
    );
    assert!(out.starts_with("REPLGUARD SAFE"), "safe again: {out}");
    eprintln!("two_hosts: {out}");
}
