//! `cln-replguard setup`: the primary + synchronous standby topology as commands (contrib/
//! README.md). `local` builds and starts both servers here, to try it out; `primary` and
//! `standby` print each host's steps as a script, or apply them with `--apply`. Every step can
//! run again; a non-empty standby data directory is refused unless `--force`. The result is
//! judged by the same check as everything else.

mod args;
mod input;
mod local;
mod plan;
mod quote;
mod server;
mod steps;

use anyhow::{Context as _, Result};

use crate::pgtool::Tools;

pub use args::{Common, LocalArgs, PrimaryArgs, SetupCommand, StandbyArgs};
use plan::Step;
use quote::{conf_literal, conninfo_value};
use steps::{REPLICATOR, primary_steps, rejoin_steps, standby_steps};

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
            if let Some(c) = &a.restart_command {
                input::no_control_chars("--restart-command", c)?;
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
        }
        SetupCommand::ScramVerifier => {}
    }
    Ok(())
}

pub async fn run(cmd: SetupCommand) -> Result<i32> {
    check_input(&cmd)?;
    if let SetupCommand::Primary(PrimaryArgs { pgdata, .. })
    | SetupCommand::Standby(StandbyArgs { pgdata, .. }) = &cmd
    {
        crate::patroni::managed::refuse_datadir("setup", pgdata)?;
    }
    match cmd {
        SetupCommand::ScramVerifier => print_scram_verifier(),
        SetupCommand::Local(a) => local::local(a).await,
        SetupCommand::Primary(a) => {
            let hba_address = a
                .standby_addr
                .as_deref()
                .map(|v| input::hba_address("--standby-addr", v))
                .transpose()?;
            let pgdata = std::path::absolute(&a.pgdata).context("--pgdata")?;
            let steps = primary_steps(
                &a.common,
                &a.admin,
                &pgdata,
                a.listen.as_deref(),
                hba_address.as_deref(),
                a.rejoin,
                a.restart_command.as_deref(),
            );
            let tools = || Tools::find(None, Some(&pgdata));
            emit("the primary host", &steps, a.apply.then_some(tools))
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
            let pgdata = std::path::absolute(&a.pgdata).context("--pgdata")?;
            let steps = if a.rewind {
                rejoin_steps(&a.common, &source, &pgdata, &own, &itself, start)
            } else {
                standby_steps(&a.common, &source, &pgdata, &own, &itself, start)
            };
            let tools = || Ok(Tools::find(None, Some(&pgdata))?.with_copy_deadline(a.copy_timeout));
            emit("the standby host", &steps, a.apply.then_some(tools))
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

/// Prints the steps as a script, or (given how to find the tools) applies them here.
fn emit(title: &str, steps: &[Step], apply: Option<impl FnOnce() -> Result<Tools>>) -> Result<i32> {
    if let Some(tools) = apply {
        plan::apply(&tools()?, steps)?;
        println!("cln-replguard setup: done on {title}");
    } else {
        print!("{}", plan::render(title, steps));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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
            None,
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
            None,
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
