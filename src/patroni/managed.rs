//! `failover` and `setup` on a cluster an HA manager runs (Patroni, pg_auto_failover): they
//! would fight it (a promotion behind its back, `ALTER SYSTEM` that overrides what it
//! writes), so they refuse and say what to do with the manager instead.

use std::path::Path;
use std::time::Duration;

use super::autofailover::STANDBY_PREFIX;
use crate::dsn::PgTarget;
use crate::facts::ServerSigns;
use crate::probe;

/// The HA managers `failover` and `setup` give way to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    Patroni,
    PgAutoFailover,
}

/// Files a manager keeps in a data directory it runs: Patroni's renamed original
/// configuration and its cache of the DCS's dynamic settings; pg_autoctl's own settings,
/// included from `postgresql.conf`.
const MANAGER_FILES: &[(&str, Manager)] = &[
    ("patroni.dynamic.json", Manager::Patroni),
    ("postgresql.base.conf", Manager::Patroni),
    ("postgresql-auto-failover.conf", Manager::PgAutoFailover),
];

/// What the operator does instead, for `what` (`failover`, `setup`).
pub fn refusal(manager: Manager, what: &str, evidence: &str) -> String {
    match manager {
        Manager::Patroni => format!(
            "Patroni manages this cluster ({evidence}); cln-replguard {what} would fight it. \
             Use Patroni: `patronictl switchover --candidate <member>` while the leader runs, \
             `patronictl failover --candidate <member>` when it is gone, after `cln-replguard \
             failover-check --patroni-url http://<local>:8008` says the member is ready. \
             Patroni's settings to change instead of ALTER SYSTEM (patronictl edit-config): \
             synchronous_mode: on, synchronous_mode_strict: on, synchronous_node_count: 1 \
             (contrib/patroni/README.md)"
        ),
        Manager::PgAutoFailover => format!(
            "pg_auto_failover manages this cluster ({evidence}); cln-replguard {what} would \
             fight its monitor. Use `pg_autoctl perform switchover` (or `pg_autoctl perform \
             failover`) after `cln-replguard failover-check` says the standby is ready, and \
             `pg_autoctl set formation number-sync-standbys 1` instead of ALTER SYSTEM"
        ),
    }
}

/// The manager file found in `datadir`, if any.
pub fn manager_file_in(datadir: &Path) -> Option<(Manager, String)> {
    MANAGER_FILES
        .iter()
        .map(|(f, m)| (*m, datadir.join(f)))
        .find(|(_, p)| p.is_file())
        .map(|(m, p)| (m, p.display().to_string()))
}

/// `Err(refusal)` when an HA manager runs `datadir`.
pub fn refuse_datadir(what: &str, datadir: &Path) -> anyhow::Result<()> {
    match manager_file_in(datadir) {
        Some((m, f)) => Err(anyhow::anyhow!(refusal(m, what, &format!("{f} exists")))),
        None => Ok(()),
    }
}

/// The manager whose signs the server at `target` shows, if any (a server that does not
/// answer says nothing here; the caller's own checks report it).
pub async fn manager_on(target: &PgTarget, deadline: Duration) -> Option<(Manager, String)> {
    let signs = probe::observe_server_signs(target, deadline).await.ok()?;
    if signs.patroni_sessions > 0 {
        let seen = format!("{} Patroni session(s) on {target}", signs.patroni_sessions);
        return Some((Manager::Patroni, seen));
    }
    autofailover_seen(&signs).map(|seen| (Manager::PgAutoFailover, format!("{seen} on {target}")))
}

/// pg_auto_failover's signs on a standby: its settings file (a role with
/// `pg_read_all_settings` sees it) or its slot name (any role sees it).
fn autofailover_seen(signs: &ServerSigns) -> Option<String> {
    if signs.autofailover_settings > 0 {
        return Some(format!(
            "{} setting(s) from postgresql-auto-failover.conf",
            signs.autofailover_settings
        ));
    }
    let slot = signs.primary_slot_name.as_deref()?;
    slot.to_ascii_lowercase()
        .starts_with(STANDBY_PREFIX)
        .then(|| format!("primary_slot_name '{slot}'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_streaming_through_pg_autoctls_slot_is_pg_auto_failovers() {
        let signs = |slot: Option<&str>| ServerSigns {
            names_source: "default".into(),
            names_sourcefile: None,
            patroni_sessions: 0,
            autofailover_settings: 0,
            primary_slot_name: slot.map(str::to_string),
        };
        let seen = autofailover_seen(&signs(Some("pgautofailover_standby_2")));
        assert!(seen.unwrap().contains("pgautofailover_standby_2"));
        assert_eq!(autofailover_seen(&signs(Some("n2"))), None);
        assert_eq!(autofailover_seen(&signs(None)), None);
    }

    #[test]
    fn a_data_directory_pg_autoctl_runs_is_refused_with_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("postgresql-auto-failover.conf"), "").unwrap();
        let e = refuse_datadir("setup", d.path()).unwrap_err().to_string();
        assert!(e.contains("pg_auto_failover manages this cluster"), "{e}");
        assert!(e.contains("pg_autoctl perform switchover"), "{e}");
    }

    #[test]
    fn a_data_directory_with_patronis_files_is_refused_with_what_to_do() {
        let d = tempfile::tempdir().unwrap();
        assert!(refuse_datadir("setup", d.path()).is_ok());
        std::fs::write(d.path().join("postgresql.base.conf"), "").unwrap();
        let e = refuse_datadir("setup", d.path()).unwrap_err().to_string();
        assert!(e.contains("postgresql.base.conf exists"), "{e}");
        assert!(e.contains("patronictl switchover") && e.contains("patronictl failover"));
        assert!(e.contains("synchronous_mode_strict: on"));
    }
}
