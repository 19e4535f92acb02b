//! `cln-replguard setup`: the primary + synchronous standby topology as commands (contrib/
//! README.md). `local` builds and starts both servers here, to try it out; `primary` and
//! `standby` print each host's steps as a script, or apply them with `--apply`. Every step can
//! run again; a non-empty standby data directory is refused unless `--force`. The result is
//! judged by the same check as everything else.

mod input;
mod local;
mod plan;
mod quote;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};

use crate::pgbin::PgInstall;

use plan::Step;
use quote::{conf_literal, conninfo_value, sql_literal, wal_command_dir};

#[derive(Subcommand, Debug)]
pub enum SetupCommand {
    /// Both servers on this machine, under --dir (Unix sockets only), ending with a check.
    Local(LocalArgs),
    /// The primary host's steps: settings, pg_hba.conf, roles, wallet database, slot,
    /// synchronous_standby_names.
    Primary(PrimaryArgs),
    /// The standby host's steps: pg_basebackup -R -c fast with the slot, standby settings,
    /// start, wait until it streams.
    Standby(StandbyArgs),
    /// Prints the SCRAM-SHA-256 verifier of the password read from stdin: what `ALTER ROLE …
    /// PASSWORD` should get, so that the password never reaches the server (or its log). The
    /// printed `setup primary` script uses it.
    ScramVerifier,
}

#[derive(Args, Debug)]
pub struct Common {
    /// The standby's name: its application_name, its slot, and the name in
    /// synchronous_standby_names.
    #[arg(long, default_value = "s1")]
    pub name: String,
    /// A WAL archive directory both servers can reach (the primary copies WAL there, the
    /// standby's restore_command reads it when streaming falls behind).
    #[arg(long, value_name = "DIR")]
    pub archive_dir: Option<PathBuf>,
    /// Bound of the WAL a slot may hold for an absent standby (max_slot_wal_keep_size).
    #[arg(long, default_value = "10GB")]
    pub max_slot_wal_keep_size: String,
}

#[derive(Args, Debug)]
pub struct LocalArgs {
    /// Where both servers live (created; reused when run again).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 5433)]
    pub primary_port: u16,
    #[arg(long, default_value_t = 5434)]
    pub standby_port: u16,
    /// Replace a standby data directory that is not empty and not already this standby.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct PrimaryArgs {
    /// The primary's data directory (for pg_hba.conf and the restart).
    #[arg(long, value_name = "DIR")]
    pub pgdata: PathBuf,
    /// The address the primary listens on for the standby (listen_addresses); leave it out
    /// when the standby connects over a Unix socket.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The standby's address, allowed to replicate in pg_hba.conf (scram-sha-256).
    #[arg(long, value_name = "ADDR")]
    pub standby_addr: Option<String>,
    /// How to reach the primary as a superuser from this host.
    #[arg(long, value_name = "CONNINFO", default_value = "dbname=postgres")]
    pub admin: String,
    /// This primary already serves lightningd (after a failover): never restart it (settings
    /// that need a restart wait for your next one), and leave synchronous_standby_names to
    /// `setup standby --rewind-from`, which names the standby once it streams.
    #[arg(long)]
    pub rejoin: bool,
    /// Run the steps here instead of printing them.
    #[arg(long)]
    pub apply: bool,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct StandbyArgs {
    /// The standby's data directory (must be empty unless --force).
    #[arg(long, value_name = "DIR")]
    pub pgdata: PathBuf,
    #[arg(long, value_name = "HOST")]
    pub primary_host: String,
    #[arg(long, default_value_t = 5432)]
    pub primary_port: u16,
    /// After a failover: turn the old primary's data directory into a standby of the new
    /// primary with pg_rewind instead of a new clone. The value is how pg_rewind reaches the
    /// new primary as a superuser, e.g. "host=10.0.0.2 user=postgres dbname=postgres".
    #[arg(long, value_name = "CONNINFO")]
    pub rewind_from: Option<String>,
    /// The standby's own port, when not the one its files came with (clone and pg_rewind
    /// copy the primary's configuration).
    #[arg(long)]
    pub port: Option<u16>,
    /// The standby's own Unix socket directory, likewise.
    #[arg(long, value_name = "DIR")]
    pub socket_dir: Option<PathBuf>,
    /// The standby's own listen_addresses (the clone copies the primary's, an address the
    /// standby's host does not have). Give its network address if it may become a primary
    /// that a new standby connects to.
    #[arg(long, value_name = "ADDR", default_value = "localhost")]
    pub listen: String,
    /// How to start the standby, when not `pg_ctl -D <pgdata> start`. Debian keeps the
    /// configuration in /etc: e.g. "pg_ctlcluster 15 main start".
    #[arg(long, value_name = "COMMAND")]
    pub start_command: Option<String>,
    /// Run the steps here instead of printing them.
    #[arg(long)]
    pub apply: bool,
    #[command(flatten)]
    pub common: Common,
}

/// The replication role: it may only stream WAL.
const REPLICATOR: &str = "replicator";
/// lightningd's role and database; the plugin checks through it (pg_monitor).
const WALLET: &str = "lightningd";

/// Passwords go through the environment or ~/.pgpass: a conninfo given here is printed in
/// the script and shows in `ps`.
fn no_password(what: &str, conninfo: &str) -> Result<()> {
    let lower = conninfo.to_ascii_lowercase();
    // key=value, or a URI's user:password@ part.
    let uri_secret = lower
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    if lower.contains("password") || uri_secret {
        anyhow::bail!(
            "{what}: leave the password out (it would be printed and shown in ps); use \
             PGPASSWORD or ~/.pgpass"
        );
    }
    Ok(())
}

/// The standby's name becomes a slot name, an application_name and part of SQL: PostgreSQL's
/// slot-name rule keeps it safe in all three.
fn valid_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        anyhow::bail!("--name {name:?}: use lower-case letters, digits and _ (at most 63)");
    }
    Ok(())
}

/// Every value is checked before any step is built (`input`): nothing runs on bad input.
fn check_input(cmd: &SetupCommand) -> Result<()> {
    let common = match cmd {
        SetupCommand::Local(a) => &a.common,
        SetupCommand::Primary(a) => &a.common,
        SetupCommand::Standby(a) => &a.common,
        SetupCommand::ScramVerifier => return Ok(()),
    };
    valid_name(&common.name)?;
    if let Some(d) = &common.archive_dir {
        input::path("--archive-dir", d, true)?;
    }
    input::wal_size("--max-slot-wal-keep-size", &common.max_slot_wal_keep_size)?;
    match cmd {
        SetupCommand::Local(a) => input::path("--dir", &a.dir, false)?,
        SetupCommand::Primary(a) => {
            input::path("--pgdata", &a.pgdata, false)?;
            input::no_control_chars("--admin", &a.admin)?;
            no_password("--admin", &a.admin)?;
            if let Some(l) = &a.listen {
                input::listen_addresses("--listen", l)?;
            }
            if let Some(addr) = &a.standby_addr {
                input::hba_address("--standby-addr", addr)?;
            }
        }
        SetupCommand::Standby(a) => {
            input::path("--pgdata", &a.pgdata, false)?;
            input::host("--primary-host", &a.primary_host)?;
            input::listen_addresses("--listen", &a.listen)?;
            if let Some(d) = &a.socket_dir {
                input::path("--socket-dir", d, true)?;
            }
            if let Some(c) = &a.start_command {
                input::no_control_chars("--start-command", c)?;
            }
            if let Some(c) = &a.rewind_from {
                input::no_control_chars("--rewind-from", c)?;
                no_password("--rewind-from", c)?;
            }
        }
        SetupCommand::ScramVerifier => {}
    }
    Ok(())
}

pub async fn run(cmd: SetupCommand) -> Result<i32> {
    check_input(&cmd)?;
    match cmd {
        SetupCommand::ScramVerifier => print_scram_verifier(),
        SetupCommand::Local(a) => local::local(a).await,
        SetupCommand::Primary(a) => {
            let hba_address = a
                .standby_addr
                .as_deref()
                .map(|v| input::hba_address("--standby-addr", v))
                .transpose()?;
            let steps = primary_steps(
                &a.common,
                &a.admin,
                &a.pgdata,
                a.listen.as_deref(),
                hba_address.as_deref(),
                a.rejoin,
            );
            emit("the primary host", &steps, a.apply)
        }
        SetupCommand::Standby(a) => {
            let source = format!(
                "host={} port={} user={REPLICATOR} application_name={}",
                conninfo_value(&a.primary_host),
                a.primary_port,
                a.common.name
            );
            let mut own = vec![format!("listen_addresses = {}", conf_literal(&a.listen))];
            if let Some(p) = a.port {
                own.push(format!("port = {p}"));
            }
            let socket_dir = a.socket_dir.as_ref().map(|d| d.display().to_string());
            if let Some(d) = &socket_dir {
                own.push(format!("unix_socket_directories = {}", conf_literal(d)));
            }
            let mut itself = "dbname=postgres".to_string();
            if let Some(d) = &socket_dir {
                itself += &format!(" host={}", conninfo_value(d));
            }
            if let Some(p) = a.port {
                itself += &format!(" port={p}");
            }
            let start = a.start_command.as_deref();
            let steps = match &a.rewind_from {
                None => standby_steps(&a.common, &source, &a.pgdata, &own, &itself, start),
                Some(admin) => {
                    rejoin_steps(&a.common, admin, &source, &a.pgdata, &own, &itself, start)
                }
            };
            emit("the standby host", &steps, a.apply)
        }
    }
}

/// The password from stdin (one trailing newline dropped, as `echo` adds it) → its verifier.
fn print_scram_verifier() -> Result<i32> {
    use std::io::Read as _;
    let mut password = Vec::new();
    std::io::stdin()
        .read_to_end(&mut password)
        .context("reading the password from stdin")?;
    for end in [&b"\n"[..], b"\r"] {
        if password.ends_with(end) {
            password.pop();
        }
    }
    if password.is_empty() {
        anyhow::bail!("no password on stdin");
    }
    println!("{}", plan::scram_verifier(&password));
    Ok(0)
}

fn emit(title: &str, steps: &[Step], apply: bool) -> Result<i32> {
    if apply {
        plan::apply(&*PgInstall::find()?, steps)?;
        println!("cln-replguard setup: done on {title}");
    } else {
        print!("{}", plan::render(title, steps));
    }
    Ok(0)
}

/// ALTER SYSTEM for everything the pair relies on, then the roles, the wallet database,
/// the slot, and last the synchronous standby name (from then on, commits wait for it).
/// `hba_address` is the standby's address as pg_hba.conf takes it (`input::hba_address`).
fn primary_steps(
    c: &Common,
    admin: &str,
    pgdata: &Path,
    listen: Option<&str>,
    hba_address: Option<&str>,
    rejoin: bool,
) -> Vec<Step> {
    let mut settings = vec![
        "wal_level = 'replica'".to_string(),
        "max_wal_senders = 10".into(),
        "max_replication_slots = 10".into(),
        "wal_keep_size = '1GB'".into(),
        format!(
            "max_slot_wal_keep_size = {}",
            sql_literal(&c.max_slot_wal_keep_size)
        ),
        "wal_log_hints = on".into(),
        "synchronous_commit = on".into(),
    ];
    if let Some(l) = listen {
        settings.push(format!("listen_addresses = {}", sql_literal(l)));
    }
    if let Some(a) = &c.archive_dir {
        settings.push("archive_mode = on".into());
        let dir = wal_command_dir(&a.display().to_string());
        settings.push(format!(
            "archive_command = {}",
            sql_literal(&format!("test ! -f {dir}/%f && cp %p {dir}/%f"))
        ));
    }
    let alter: String = settings
        .iter()
        .map(|s| format!("ALTER SYSTEM SET {s};\n"))
        .collect();
    let mut steps = vec![Step::Psql {
        what: "replication settings (ALTER SYSTEM)".into(),
        conninfo: admin.into(),
        script: alter,
    }];
    if let Some(addr) = hba_address {
        steps.push(Step::AppendToHba {
            conninfo: admin.into(),
            line: format!("host replication {REPLICATOR} {addr} scram-sha-256"),
        });
    }
    if rejoin {
        steps.push(Step::Note(
            "--rejoin: no restart here; settings that need one (wal_log_hints, \
             listen_addresses…) take effect at your next restart"
                .into(),
        ));
    } else {
        steps.push(Step::Start {
            data: pgdata.to_path_buf(),
            log: pgdata.join("../server.log"),
            restart_if_pending: Some(admin.to_string()),
            command: None,
        });
    }
    let name = &c.name;
    steps.push(roles_database_slot(name, admin));
    for (role, from_env) in [
        (REPLICATOR, "REPLGUARD_REPLICATION_PASSWORD"),
        (WALLET, "REPLGUARD_WALLET_PASSWORD"),
    ] {
        steps.push(Step::SetPassword {
            role,
            from_env,
            conninfo: admin.into(),
        });
    }
    if rejoin {
        steps.push(Step::Note(format!(
            "synchronous_standby_names left as they are: `setup standby --rewind-from` names \
             {name} once it streams"
        )));
    } else {
        steps.push(name_the_standby(name, admin));
        steps.push(Step::Note(format!(
            "from now on every commit on the primary waits for standby {name}: set it up next \
             (cln-replguard setup standby)"
        )));
    }
    steps
}

/// The roles, the wallet database and the slot, each created only when missing.
/// `name` is a checked standby name (`valid_name`), safe inside SQL as it is.
fn roles_database_slot(name: &str, admin: &str) -> Step {
    Step::Psql {
        what: format!("roles {REPLICATOR} and {WALLET}, database {WALLET}, slot {name}"),
        conninfo: admin.into(),
        script: format!(
            "SELECT 'CREATE ROLE {REPLICATOR} REPLICATION LOGIN'
              WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{REPLICATOR}') \\gexec
SELECT 'CREATE ROLE {WALLET} LOGIN'
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{WALLET}') \\gexec
GRANT pg_monitor TO {WALLET};
SELECT 'CREATE DATABASE {WALLET} OWNER {WALLET}'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{WALLET}') \\gexec
SELECT pg_create_physical_replication_slot('{name}')
  WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '{name}');
"
        ),
    }
}

/// `synchronous_standby_names = 'FIRST 1 (name)'` on the primary, and a reload.
fn name_the_standby(name: &str, admin: &str) -> Step {
    Step::Psql {
        what: format!("synchronous_standby_names = 'FIRST 1 ({name})'"),
        conninfo: admin.into(),
        script: format!(
            "ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 ({name})';\nSELECT \
             pg_reload_conf();\n"
        ),
    }
}

/// The clone, the standby's own settings, its start, and the wait until it streams.
fn standby_steps(
    c: &Common,
    source: &str,
    pgdata: &Path,
    local_conf: &[String],
    itself: &str,
    start_command: Option<&str>,
) -> Vec<Step> {
    let name = &c.name;
    let mut steps = vec![Step::Clone {
        dir: pgdata.to_path_buf(),
        args: vec![
            "-D".into(),
            pgdata.display().to_string(),
            "-d".into(),
            source.into(),
            "-R".into(),
            "-c".into(),
            "fast".into(),
            "-X".into(),
            "stream".into(),
            "-S".into(),
            name.clone(),
        ],
    }];
    let mut conf: Vec<String> = local_conf.to_vec();
    conf.extend([
        "hot_standby = on".to_string(),
        // Replies every second: the monitor's write-free liveness evidence (DESIGN §2).
        "wal_receiver_status_interval = '1s'".into(),
        format!("cluster_name = '{name}'"),
    ]);
    if let Some(a) = &c.archive_dir {
        let dir = wal_command_dir(&a.display().to_string());
        conf.push(format!(
            "restore_command = {}",
            conf_literal(&format!("cp {dir}/%f %p"))
        ));
    }
    for line in conf {
        steps.push(Step::AppendOnce {
            path: pgdata.join("postgresql.auto.conf"),
            line,
        });
    }
    steps.push(Step::Start {
        data: pgdata.to_path_buf(),
        log: pgdata.join("../server.log"),
        restart_if_pending: None,
        command: start_command.map(str::to_string),
    });
    steps.push(Step::WaitFor {
        what: format!("standby {name} receiving WAL"),
        conninfo: itself.to_string(),
        sql: "SELECT status FROM pg_stat_wal_receiver".into(),
        expect: "streaming".into(),
    });
    steps
}

/// The old primary back as a standby: pg_rewind to the new primary's timeline (it needed
/// wal_log_hints or checksums: the `rewind-impossible` finding), then the standby settings.
fn rejoin_steps(
    c: &Common,
    admin: &str,
    source: &str,
    pgdata: &Path,
    own: &[String],
    itself: &str,
    start_command: Option<&str>,
) -> Vec<Step> {
    let marker = format!("primary_conninfo = {}", conf_literal(source));
    let mut steps = vec![Step::Rewind {
        dir: pgdata.to_path_buf(),
        source: admin.to_string(),
        done_marker: marker.clone(),
    }];
    // pg_rewind -R wrote primary_conninfo with the superuser's DSN; the later line wins.
    steps.push(Step::AppendOnce {
        path: pgdata.join("postgresql.auto.conf"),
        line: marker,
    });
    steps.push(Step::AppendOnce {
        path: pgdata.join("postgresql.auto.conf"),
        line: format!("primary_slot_name = '{}'", c.name),
    });
    let mut rest = standby_steps(c, source, pgdata, own, itself, start_command);
    rest.remove(0); // no clone
    steps.extend(rest);
    // Streaming now: the new primary may wait for it.
    steps.push(name_the_standby(&c.name, admin));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common() -> Common {
        Common {
            name: "s1".into(),
            archive_dir: Some("/mnt/walarchive".into()),
            max_slot_wal_keep_size: "10GB".into(),
        }
    }

    #[test]
    fn the_primary_script_sets_what_the_checks_look_for_and_names_the_standby_last() {
        let steps = primary_steps(
            &common(),
            "dbname=postgres",
            Path::new("/var/lib/postgresql/15/main"),
            Some("10.0.0.1"),
            Some("10.0.0.2/32"),
            false,
        );
        let script = plan::render("primary", &steps);
        for expected in [
            "ALTER SYSTEM SET wal_log_hints = on;",
            "ALTER SYSTEM SET max_slot_wal_keep_size = '10GB';",
            "ALTER SYSTEM SET wal_keep_size = '1GB';",
            "ALTER SYSTEM SET synchronous_commit = on;",
            "archive_command = 'test ! -f /mnt/walarchive/%f && cp %p /mnt/walarchive/%f'",
            "host replication replicator 10.0.0.2/32 scram-sha-256",
            "SHOW hba_file",
            "GRANT pg_monitor TO lightningd;",
            "pg_create_physical_replication_slot('s1')",
            "${REPLGUARD_REPLICATION_PASSWORD:-}",
        ] {
            assert!(
                script.contains(expected),
                "missing {expected:?} in\n{script}"
            );
        }
        let names = script
            .find("synchronous_standby_names = 'FIRST 1 (s1)'")
            .unwrap();
        let slot = script.find("pg_create_physical_replication_slot").unwrap();
        assert!(
            slot < names,
            "the standby is named only once everything else is ready"
        );
        assert!(!script.contains("wal_keep_segments"));
    }

    #[test]
    fn the_standby_script_clones_with_the_slot_and_replies_every_second() {
        let steps = standby_steps(
            &common(),
            "host=10.0.0.1 port=5432 user=replicator application_name=s1",
            Path::new("/srv/pg"),
            &["listen_addresses = '10.0.0.2'".to_string()],
            "dbname=postgres",
            Some("pg_ctlcluster 15 main start"),
        );
        let script = plan::render("standby", &steps);
        assert!(script.contains("pg_basebackup -D /srv/pg -d"), "{script}");
        assert!(script.contains("-R -c fast -X stream -S s1"), "{script}");
        assert!(script.contains("wal_receiver_status_interval"), "{script}");
        assert!(script.contains("hot_standby = on"), "{script}");
        assert!(script.contains("restore_command"), "{script}");
        assert!(script.contains("is not empty: refusing"), "{script}");
        assert!(
            script.contains("listen_addresses = '\\''10.0.0.2'\\''"),
            "{script}"
        );
        assert!(
            script.contains("|| pg_ctlcluster 15 main start"),
            "{script}"
        );
    }

    #[test]
    fn values_with_quotes_stay_values_in_sql_config_and_shell() {
        let c = Common {
            name: "s1".into(),
            archive_dir: Some("/mnt/it's 100%".into()),
            max_slot_wal_keep_size: "10GB".into(),
        };
        let steps = primary_steps(
            &c,
            "dbname=postgres",
            Path::new("/srv/pg"),
            Some("*"),
            None,
            false,
        );
        let script = plan::render("primary", &steps);
        // A shell word with % doubled for PostgreSQL, in a SQL literal with '' for each '.
        let archive = r"ALTER SYSTEM SET archive_command = 'test ! -f ''/mnt/it''\''''s 100%%''/%f && cp %p ''/mnt/it''\''''s 100%%''/%f';";
        assert!(script.contains(archive), "{script}");
        let steps = standby_steps(
            &c,
            "host=p",
            Path::new("/srv/pg"),
            &[],
            "dbname=postgres",
            None,
        );
        let restore = steps.iter().find_map(|s| match s {
            Step::AppendOnce { line, .. } if line.starts_with("restore_command") => {
                Some(line.clone())
            }
            _ => None,
        });
        // In a configuration file a backslash is doubled too.
        assert_eq!(
            restore.as_deref(),
            Some(r"restore_command = 'cp ''/mnt/it''\\''''s 100%%''/%f %p'")
        );
    }

    #[test]
    fn bad_values_are_refused_naming_their_option() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            cmd: SetupCommand,
        }
        let primary = |extra: &[&str]| {
            let mut args = vec!["x", "primary", "--pgdata", "/srv/pg"];
            args.extend_from_slice(extra);
            let cli = <Cli as clap::Parser>::try_parse_from(args).unwrap();
            check_input(&cli.cmd).map_err(|e| e.to_string())
        };
        assert!(primary(&["--standby-addr", "db2.example.com"]).is_ok());
        for (args, option) in [
            (
                &["--standby-addr", "db2.example.com/32"][..],
                "--standby-addr",
            ),
            (&["--listen", "10.0.0.1\nrm -rf /"], "--listen"),
            (
                &["--listen", "10.0.0.1'; ALTER SYSTEM SET fsync = off; --"],
                "--listen",
            ),
            (
                &[
                    "--max-slot-wal-keep-size",
                    "10GB'; DROP DATABASE lightningd; --",
                ],
                "--max-slot-wal-keep-size",
            ),
            (
                &["--archive-dir", "/mnt/wal\nSQL\nrm -rf /"],
                "--archive-dir",
            ),
            (&["--admin", "dbname=postgres\n"], "--admin"),
        ] {
            let e = primary(args).unwrap_err();
            assert!(e.starts_with(option), "{args:?}: {e}");
        }
    }

    #[test]
    fn a_password_on_the_command_line_or_an_odd_name_is_refused() {
        assert!(no_password("--admin", "host=x password=secret").is_err());
        assert!(no_password("--admin", "postgres://u:secret@h/db").is_err());
        assert!(no_password("--admin", "postgres://u@h/db").is_ok());
        assert!(valid_name("s1").is_ok());
        assert!(valid_name("s1'; DROP").is_err());
        assert!(no_password("--admin", "host=x user=postgres").is_ok());
    }
}
