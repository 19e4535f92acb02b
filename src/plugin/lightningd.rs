//! What the plugin needs from lightningd itself: its version, two `listconfigs` answers, and
//! a way to be heard while exiting.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

/// Hook `filters` arrived in lightningd 25.12; the runtime guard depends on them (DESIGN §2).
pub const MIN_LIGHTNINGD: (u32, u32) = (25, 12);

/// `v26.06.6`, `v25.12rc1-3-gabc`, `26.06` → (26, 6). `None` when it does not start like one.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let v = v.trim().trim_start_matches('v');
    let mut parts = v.splitn(2, '.');
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    Some((major, minor.parse().ok()?))
}

/// Whether this lightningd can filter the `rpc_command` hook, which the gate needs: without
/// filters the hook would see every call, our own `listconfigs` during init included
/// (DESIGN §2). A version we cannot read is no proof of support: `Err` says why, for the
/// startup check to refuse (`enforce`) or report (`warn`) like an old lightningd.
pub fn hook_filters_supported(version: &str) -> Result<(), String> {
    match parse_version(version) {
        Some(v) if v >= MIN_LIGHTNINGD => Ok(()),
        Some(_) => Err(format!(
            "lightningd {version} is older than v{}.{}: hook filters are missing, which the \
             guard needs; upgrade lightningd",
            MIN_LIGHTNINGD.0, MIN_LIGHTNINGD.1
        )),
        None => Err(format!(
            "cannot tell lightningd's version from LIGHTNINGD_VERSION={version:?}: the guard \
             needs hook filters (v{}.{} or later), so its rpc_command gate is not registered",
            MIN_LIGHTNINGD.0, MIN_LIGHTNINGD.1
        )),
    }
}

/// One call to lightningd's JSON-RPC socket, bounded.
pub async fn call(
    rpc_path: &Path,
    method: &str,
    params: Value,
    deadline: Duration,
) -> Result<Value> {
    let fut = async {
        let mut rpc = cln_rpc::ClnRpc::new(rpc_path)
            .await
            .with_context(|| format!("connecting to {}", rpc_path.display()))?;
        rpc.call_raw::<Value, _>(method, &params)
            .await
            .map_err(|e| anyhow!("{method}: {e}"))
    };
    tokio::time::timeout(deadline, fut).await.map_err(|_| {
        anyhow!(
            "{method}: no answer from lightningd within {} ms",
            deadline.as_millis()
        )
    })?
}

/// `listconfigs {"config": "wallet"}` → the DSN lightningd opened its wallet with.
pub fn wallet_from_listconfigs(v: &Value) -> Option<String> {
    v.pointer("/configs/wallet/value_str")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// `listconfigs {"config": "important-plugin"}` → the paths given.
pub fn important_plugins(v: &Value) -> Vec<String> {
    v.pointer("/configs/important-plugin/values_str")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether one of `paths` names this very binary.
pub fn names_this_binary(paths: &[String], lightning_dir: &Path) -> bool {
    let Ok(me) = std::env::current_exe().and_then(|p| p.canonicalize()) else {
        return false;
    };
    paths
        .iter()
        .any(|p| lightning_dir.join(p).canonicalize().is_ok_and(|p| p == me))
}

/// Writes log notifications straight to stdout and flushes: the asynchronous logger loses
/// the last lines before an exit (DESIGN §2: 0 of 5 arrived). A short pause first lets the
/// queued asynchronous lines go out, so lines are not interleaved.
pub fn log_now(level: &str, lines: &[String]) {
    std::thread::sleep(Duration::from_millis(200));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in lines {
        let msg = json!({
            "jsonrpc": "2.0",
            "method": "log",
            "params": {"level": level, "message": format!("cln-replguard: {line}")},
        });
        let _ = write!(out, "{msg}\n\n");
    }
    let _ = out.flush();
}

/// The parent process, if it is lightningd.
pub fn parent_lightningd() -> Option<i32> {
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    let comm = std::fs::read_to_string(format!("/proc/{ppid}/comm")).ok()?;
    (comm.trim() == "lightningd").then_some(ppid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_as_lightningd_prints_them() {
        for (v, expected) in [
            ("v26.06.6", Some((26, 6))),
            ("v25.12", Some((25, 12))),
            ("v25.12rc1-3-gabcdef", Some((25, 12))),
            ("25.09.1", Some((25, 9))),
            ("v24.11.2-modded", Some((24, 11))),
            ("unknown", None),
            ("", None),
        ] {
            assert_eq!(parse_version(v), expected, "{v}");
        }
        assert!(parse_version("v25.09").unwrap() < MIN_LIGHTNINGD);
        assert!(parse_version("v26.06.6").unwrap() >= MIN_LIGHTNINGD);
    }

    #[test]
    fn hook_filters_need_a_version_that_can_be_read() {
        assert!(hook_filters_supported("v26.06.6").is_ok());
        assert!(
            hook_filters_supported("v25.09")
                .unwrap_err()
                .contains("older")
        );
        for unreadable in ["", "garbage", "vX.Y", "26"] {
            assert!(
                hook_filters_supported(unreadable)
                    .unwrap_err()
                    .contains("cannot tell"),
                "{unreadable:?}"
            );
        }
    }

    #[test]
    fn listconfigs_answers() {
        let w = json!({"configs": {"wallet": {"source": "cmdline", "value_str": "postgres://x"}}});
        assert_eq!(wallet_from_listconfigs(&w).as_deref(), Some("postgres://x"));
        let i = json!({"configs": {"important-plugin": {"values_str": ["/a", "b"], "sources": ["c", "d"]}}});
        assert_eq!(important_plugins(&i), ["/a", "b"]);
        assert!(important_plugins(&json!({"configs": {}})).is_empty());
    }
}
