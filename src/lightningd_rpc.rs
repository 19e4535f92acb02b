//! Talking to lightningd, for the plugin and for `cln-replguard failover` alike: one bounded
//! JSON-RPC call, and which lightningd versions the guard works with.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde_json::Value;

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
}
