//! The gate: hooks that refuse what adds risk while the storage is not safe. A hook always
//! answers, whatever the payload: an error answer would kill lightningd, and a typed hook
//! exits the plugin on a payload it cannot read, after which lightningd drops its hooks and
//! the gate fails open (DESIGN §2). So payloads are read as plain JSON, leniently.

use cln_plugin::Plugin;
use serde_json::{Value, json};

use super::startup::State;
use crate::guard::ERR_GATED;

pub async fn rpc_command(plugin: Plugin<State>, v: Value) -> Result<Value, anyhow::Error> {
    Ok(rpc_command_answer(&plugin.state().0, &v))
}

pub async fn openchannel(plugin: Plugin<State>, _v: Value) -> Result<Value, anyhow::Error> {
    Ok(peer_open_answer(&plugin.state().0))
}

pub async fn htlc_accepted(plugin: Plugin<State>, _v: Value) -> Result<Value, anyhow::Error> {
    let st = &plugin.state().0;
    Ok(if st.settings.gate.refuse_htlc(st.level()) {
        // temporary_node_failure: the sender may retry later, or elsewhere.
        json!({"result": "fail", "failure_message": "2002"})
    } else {
        json!({"result": "continue"})
    })
}

pub fn rpc_command_answer(st: &super::startup::Inner, v: &Value) -> Value {
    let level = st.level();
    let method = v
        .pointer("/rpc_command/method")
        .or_else(|| v.get("method"))
        .and_then(Value::as_str);
    let refusal =
        match method {
            Some(m) => st.settings.gate.refuse_command(m, level),
            // Unreadable: lightningd only sends the filtered commands, so refuse when not safe.
            None => st.settings.gate.refuse_peer_open(level).then(|| {
                format!("cln-replguard refuses the command: the wallet's storage is {level}")
            }),
        };
    match refusal {
        None => json!({"result": "continue"}),
        Some(message) => {
            let findings = st
                .guard
                .latest()
                .map(|(_, r)| json!(r.findings))
                .unwrap_or(Value::Null);
            json!({"return": {"error": {
                "code": ERR_GATED,
                "message": message,
                "data": {"verdict": level, "findings": findings},
            }}})
        }
    }
}

pub fn peer_open_answer(st: &super::startup::Inner) -> Value {
    let level = st.level();
    if st.settings.gate.refuse_peer_open(level) {
        json!({
            "result": "reject",
            "error_message": format!("channel opens are paused: this node's channel storage is {level}"),
        })
    } else {
        json!({"result": "continue"})
    }
}
