//! `replguard-alert-command`: run on every level change, bounded in time, with the report on
//! stdin and the transition in its environment.

use std::ffi::{OsStr, OsString};
use std::time::Duration;

use serde_json::Value;

use crate::guard::Transition;

/// A command that cannot finish by then is killed: alerts must not pile up.
const ALERT_DEADLINE: Duration = Duration::from_secs(10);

/// Runs the alert command with this process's environment, less its secrets.
pub(super) async fn run(cmd: String, t: Transition, report: Value) {
    let inherited: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    run_with_env(cmd, t, report, inherited).await
}

/// lightningd's environment may hold the wallet's password (PGPASSWORD, a DSN) and the
/// setup's; an alert only reports a level change and needs none of them. A variable is
/// withheld when its name says it is a secret or a DSN (`*PASSWORD*`, `*PASSWD*`, `*SECRET*`,
/// `*DSN`, any case), or its value carries a password (`scheme://user:password@…`,
/// `password=`). Paths such as PGPASSFILE stay: they name a file, they are not its content.
fn is_secret(name: &OsStr, value: &OsStr) -> bool {
    let name = name.to_string_lossy().to_ascii_uppercase();
    let value = value.to_string_lossy();
    let secret_name = ["PASSWORD", "PASSWD", "SECRET"]
        .iter()
        .any(|w| name.contains(w))
        || name.ends_with("DSN");
    let uri_password = value
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    secret_name || uri_password || value.to_ascii_lowercase().contains("password=")
}

async fn run_with_env(
    cmd: String,
    t: Transition,
    report: Value,
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
) {
    use tokio::io::AsyncWriteExt;
    let child = tokio::process::Command::new("sh")
        .args(["-c", &cmd])
        .env_clear()
        .envs(inherited.into_iter().filter(|(k, v)| !is_secret(k, v)))
        .env("REPLGUARD_PREVIOUS", t.from.as_str())
        .env("REPLGUARD_CURRENT", t.to.as_str())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            log::warn!("replguard-alert-command could not start: {e}");
            return;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(report.to_string().as_bytes()).await;
    }
    match tokio::time::timeout(ALERT_DEADLINE, child.wait()).await {
        Ok(Ok(s)) if s.success() => {}
        Ok(Ok(s)) => log::warn!("replguard-alert-command ended with {s}"),
        Ok(Err(e)) => log::warn!("replguard-alert-command: {e}"),
        Err(_) => log::warn!("replguard-alert-command killed after {ALERT_DEADLINE:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::Level;

    fn var(k: &str, v: &str) -> (OsString, OsString) {
        (k.into(), v.into())
    }

    #[test]
    fn what_counts_as_a_secret() {
        let secret = |k: &str, v: &str| is_secret(OsStr::new(k), OsStr::new(v));
        assert!(secret("PGPASSWORD", "x"));
        assert!(secret("replguard_wallet_password", "x"));
        assert!(secret("REPLGUARD_STANDBY_DSN", "host=db"));
        assert!(secret("ANYTHING", "postgres://u:p@h/db"));
        assert!(secret("ANYTHING", "host=h Password=p"));
        assert!(!secret("PGPASSFILE", "/home/ln/.pgpass"));
        assert!(!secret("HOME", "/home/ln"));
        assert!(!secret("URL", "https://alerts.example/hook?a=b@c"));
        assert!(!secret("URL", "postgres://ln@db/ln"));
    }

    #[tokio::test]
    async fn the_alert_command_never_sees_a_password_or_a_dsn_holding_one() {
        let d = tempfile::tempdir().unwrap();
        let seen = d.path().join("env");
        let cmd = format!("env > '{}'", seen.display());
        let inherited = [
            var("PATH", "/usr/bin:/bin"),
            var("PGPASSFILE", "/etc/lightningd/pgpass"),
            var("PGHOST", "/run/postgresql"),
            var("PGPASSWORD", "Secret-pgpassword"),
            var("REPLGUARD_WALLET_PASSWORD", "Secret-wallet"),
            var("REPLGUARD_REPLICATION_PASSWORD", "Secret-replication"),
            var("ALERT_SMTP_PASSWD", "Secret-passwd"),
            var("webhook_secret", "Secret-webhook"),
            var("REPLGUARD_DSN", "postgres://ln:Secret-dsn@db/ln"),
            var("DATABASE_URL", "postgresql://ln:Secret-url@db/ln"),
            var("WALLET_CONNINFO", "host=db password=Secret-conninfo"),
        ];
        let t = Transition {
            from: Level::Safe,
            to: Level::Unsafe,
        };
        run_with_env(cmd, t, serde_json::json!({}), inherited).await;
        let env = std::fs::read_to_string(&seen).unwrap();
        assert!(
            !env.contains("Secret-"),
            "a secret reached the alert:\n{env}"
        );
        for kept in [
            "PATH=/usr/bin:/bin",
            "PGPASSFILE=/etc/lightningd/pgpass",
            "PGHOST=/run/postgresql",
            "REPLGUARD_PREVIOUS=safe",
            "REPLGUARD_CURRENT=unsafe",
        ] {
            assert!(env.lines().any(|l| l == kept), "{kept} missing in\n{env}");
        }
    }
}
