//! `failover` and `setup` on a cluster Patroni manages: they would fight it (a promotion
//! behind its back, `ALTER SYSTEM` that overrides what Patroni writes), so they refuse and say
//! what to do with Patroni instead.

use std::path::Path;
use std::time::Duration;

use crate::dsn::PgTarget;
use crate::probe;

/// Files Patroni keeps in a data directory it manages: the original configuration it renames
/// and includes, and its cache of the DCS's dynamic settings.
const PATRONI_FILES: &[&str] = &["patroni.dynamic.json", "postgresql.base.conf"];

/// What the operator does instead, for `what` (`failover`, `setup`).
pub fn refusal(what: &str, evidence: &str) -> String {
    format!(
        "Patroni manages this cluster ({evidence}); cln-replguard {what} would fight it. \
         Use Patroni: `patronictl switchover --candidate <member>` while the leader runs, \
         `patronictl failover --candidate <member>` when it is gone, after `cln-replguard \
         failover-check --patroni-url http://<local>:8008` says the member is ready. Patroni's \
         settings to change instead of ALTER SYSTEM (patronictl edit-config): \
         synchronous_mode: on, synchronous_mode_strict: on, synchronous_node_count: 1 \
         (contrib/patroni/README.md)"
    )
}

/// The Patroni file found in `datadir`, if any.
pub fn patroni_file_in(datadir: &Path) -> Option<String> {
    PATRONI_FILES
        .iter()
        .map(|f| datadir.join(f))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// `Err(refusal)` when `datadir` is managed by Patroni.
pub fn refuse_datadir(what: &str, datadir: &Path) -> anyhow::Result<()> {
    match patroni_file_in(datadir) {
        Some(f) => Err(anyhow::anyhow!(refusal(what, &format!("{f} exists")))),
        None => Ok(()),
    }
}

/// Patroni's sessions on the server at `target`, when it has some (a server that does not
/// answer says nothing here; the caller's own checks report it).
pub async fn patroni_sessions_on(target: &PgTarget, deadline: Duration) -> Option<String> {
    let signs = probe::observe_server_signs(target, deadline).await.ok()?;
    (signs.patroni_sessions > 0)
        .then(|| format!("{} Patroni session(s) on {target}", signs.patroni_sessions))
}

#[cfg(test)]
mod tests {
    use super::*;

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
