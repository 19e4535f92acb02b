//! What the plugin needs from lightningd itself beyond the bounded RPC call and the version
//! (`crate::lightningd_rpc`): two `listconfigs` answers, and a way to be heard while exiting.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

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
    fn listconfigs_answers() {
        let w = json!({"configs": {"wallet": {"source": "cmdline", "value_str": "postgres://x"}}});
        assert_eq!(wallet_from_listconfigs(&w).as_deref(), Some("postgres://x"));
        let i = json!({"configs": {"important-plugin": {"values_str": ["/a", "b"], "sources": ["c", "d"]}}});
        assert_eq!(important_plugins(&i), ["/a", "b"]);
        assert!(important_plugins(&json!({"configs": {}})).is_empty());
    }
}
