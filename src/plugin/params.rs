//! One typed parser per RPC method, accepting positional and named parameters.

use std::time::Duration;

use serde_json::Value;

use crate::policy::DEFAULT_FAILOVER_WAIT;

/// A longer wait would hold the caller (and a `&&` chain) for no useful answer.
pub const MAX_FAILOVER_WAIT: Duration = Duration::from_secs(60);

/// `replication-status` takes nothing.
pub fn no_params(params: &Value) -> Result<(), String> {
    match params {
        Value::Null => Ok(()),
        Value::Array(a) if a.is_empty() => Ok(()),
        Value::Object(o) if o.is_empty() => Ok(()),
        other => Err(format!(
            "replication-status takes no parameters, got {other}"
        )),
    }
}

/// `failover-check [wait_ms]`, or `{"wait_ms": N}`.
pub fn failover_wait(params: &Value) -> Result<Duration, String> {
    let raw = match params {
        Value::Null => None,
        Value::Array(a) => match a.as_slice() {
            [] => None,
            [v] => Some(v),
            _ => {
                return Err(format!(
                    "failover-check takes at most one parameter (wait_ms), got {}",
                    a.len()
                ));
            }
        },
        Value::Object(o) => {
            if let Some(k) = o.keys().find(|k| *k != "wait_ms") {
                return Err(format!(
                    "failover-check: unknown parameter {k:?} (expected wait_ms)"
                ));
            }
            o.get("wait_ms")
        }
        other => {
            return Err(format!(
                "failover-check: parameters must be an array or an object, got {other}"
            ));
        }
    };
    let ms = match raw {
        None | Some(Value::Null) => return Ok(DEFAULT_FAILOVER_WAIT),
        Some(Value::Number(n)) => n.as_u64(),
        // lightning-cli passes positional arguments that look like numbers as numbers, but
        // `-k wait_ms=500` may arrive as a string.
        Some(Value::String(s)) => s.parse().ok(),
        Some(_) => None,
    }
    .ok_or_else(|| "failover-check: wait_ms must be a whole number of milliseconds".to_string())?;
    let wait = Duration::from_millis(ms);
    if wait > MAX_FAILOVER_WAIT {
        return Err(format!(
            "failover-check: wait_ms {ms} is above the maximum of {}",
            MAX_FAILOVER_WAIT.as_millis()
        ));
    }
    Ok(wait)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn failover_wait_by_position_by_name_or_default() {
        for (params, ms) in [
            (json!(null), 2000),
            (json!([]), 2000),
            (json!({}), 2000),
            (json!([500]), 500),
            (json!(["750"]), 750),
            (json!({"wait_ms": 0}), 0),
            (json!({"wait_ms": "1500"}), 1500),
            (json!({"wait_ms": null}), 2000),
        ] {
            assert_eq!(
                failover_wait(&params),
                Ok(Duration::from_millis(ms)),
                "{params}"
            );
        }
    }

    #[test]
    fn failover_wait_errors_name_the_parameter() {
        for (params, expected) in [
            (json!([1, 2]), "at most one parameter"),
            (json!({"wait": 5}), "unknown parameter \"wait\""),
            (json!([-5]), "whole number"),
            (json!(["soon"]), "whole number"),
            (json!([1.5]), "whole number"),
            (json!([600000]), "maximum"),
            (json!("x"), "array or an object"),
        ] {
            let e = failover_wait(&params).unwrap_err();
            assert!(e.contains(expected), "{params}: {e}");
        }
    }

    #[test]
    fn replication_status_takes_nothing() {
        assert!(no_params(&json!([])).is_ok());
        assert!(no_params(&json!({})).is_ok());
        assert!(no_params(&json!(null)).is_ok());
        assert!(no_params(&json!([1])).is_err());
    }
}
