//! The steps of each host, as data: the primary's settings, roles and slot; the standby's
//! clone, settings and start; the old primary's rejoin.

use std::path::Path;

use super::Common;
use super::plan::Step;
use super::quote::{conf_literal, sql_literal, wal_command_dir};

/// The replication role: it may only stream WAL.
pub(super) const REPLICATOR: &str = "replicator";
/// lightningd's role and database; the plugin checks through it (pg_monitor).
pub(super) const WALLET: &str = "lightningd";
/// ALTER SYSTEM for everything the pair relies on, then the roles, the wallet database,
/// the slot, and last the synchronous standby name (from then on, commits wait for it).
/// `hba_address` is the standby's address as pg_hba.conf takes it (`input::hba_address`).
pub(super) fn primary_steps(
    c: &Common,
    admin: &str,
    pgdata: &Path,
    listen: Option<&str>,
    hba_address: Option<&str>,
    rejoin: bool,
    restart_command: Option<&str>,
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
        // Streaming, and pg_rewind when this server's standby comes back after a failover
        // (pg_rewind reads files through an ordinary connection to database postgres).
        for database in ["replication", "postgres"] {
            steps.push(Step::AppendToHba {
                conninfo: admin.into(),
                line: format!("host {database} {REPLICATOR} {addr} scram-sha-256"),
            });
        }
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
            log: log_beside(pgdata),
            restart_if_pending: Some(admin.to_string()),
            command: restart_command.map(str::to_string),
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
        steps.push(Step::NameOnceStreaming {
            name: name.clone(),
            conninfo: admin.into(),
        });
    } else {
        steps.push(name_the_standby(name, admin));
        steps.push(Step::Note(format!(
            "from now on every commit on the primary waits for standby {name}: set it up next \
             (cln-replguard setup standby)"
        )));
    }
    steps
}

/// The functions pg_rewind runs on its source (PostgreSQL's pg_rewind documentation).
const REWIND_FUNCTIONS: [&str; 4] = [
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
];

/// The roles, the wallet database and the slot, each created only when missing. The
/// replication role may also run the four functions pg_rewind needs (PostgreSQL's pg_rewind
/// documentation): it reads no more than its base backups already copy.
/// `name` is a checked standby name (`valid_name`), safe inside SQL as it is.
fn roles_database_slot(name: &str, admin: &str) -> Step {
    // Granted only when missing: after a failover they came with the copy, and a write here
    // would wait for a standby that is not back yet. In database postgres, where pg_rewind
    // connects (function privileges are per database), whatever database --admin names.
    let grants: String = REWIND_FUNCTIONS
        .iter()
        .map(|f| {
            format!(
                "SELECT 'GRANT EXECUTE ON FUNCTION {f} TO {REPLICATOR}'\n  WHERE NOT \
                 has_function_privilege('{REPLICATOR}', '{f}', 'EXECUTE') \\gexec\n"
            )
        })
        .collect();
    Step::Psql {
        what: format!("roles {REPLICATOR} and {WALLET}, database {WALLET}, slot {name}"),
        conninfo: admin.into(),
        script: format!(
            "SELECT 'CREATE ROLE {REPLICATOR} REPLICATION LOGIN'
              WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{REPLICATOR}') \\gexec
SELECT 'CREATE ROLE {WALLET} LOGIN'
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{WALLET}') \\gexec
GRANT pg_monitor TO {WALLET};
\\connect postgres
SET synchronous_commit = local;
{grants}
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
pub(super) fn standby_steps(
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
        log: log_beside(pgdata),
        restart_if_pending: None,
        command: start_command.map(str::to_string),
    });
    steps.push(Step::WaitFor {
        what: format!("standby {name} receiving WAL"),
        conninfo: itself.to_string(),
        sql: "SELECT status FROM pg_stat_wal_receiver".into(),
        expect: "streaming".into(),
        server: Some(pgdata.to_path_buf()),
    });
    steps
}

/// The old primary back as a standby: pg_rewind from the new primary as the replication role
/// (it needed wal_log_hints or checksums: the `rewind-impossible` finding); `-R` writes the
/// streaming connection, password included (as `pg_basebackup -R` does); then the standby
/// settings. The new primary names it once it streams (`setup primary --rejoin`, again).
pub(super) fn rejoin_steps(
    c: &Common,
    source: &str,
    pgdata: &Path,
    own: &[String],
    itself: &str,
    start_command: Option<&str>,
) -> Vec<Step> {
    let mut steps = vec![
        Step::Rewind {
            dir: pgdata.to_path_buf(),
            source: format!("{source} dbname=postgres"),
        },
        Step::AppendOnce {
            path: pgdata.join("postgresql.auto.conf"),
            line: format!("primary_slot_name = '{}'", c.name),
        },
    ];
    let mut rest = standby_steps(c, source, pgdata, own, itself, start_command);
    rest.remove(0); // no clone
    steps.extend(rest);
    steps.push(Step::Note(format!(
        "standby {} streams: on the new primary, run `cln-replguard setup primary --rejoin …` \
         again, which names it in synchronous_standby_names",
        c.name
    )));
    steps
}

/// Where a server we start logs: beside its data directory (never in the current one).
fn log_beside(pgdata: &Path) -> std::path::PathBuf {
    pgdata
        .parent()
        .map_or_else(|| pgdata.join("server.log"), |p| p.join("server.log"))
}
