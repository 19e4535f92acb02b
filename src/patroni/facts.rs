//! What Patroni's REST API says, as plain data (parsed here from its JSON, judged in
//! `rules.rs`). Fields Patroni leaves out when false (`pause`, `failsafe_mode_is_active`)
//! read as false; a field the rules need that is missing makes the answer unreadable.

use serde::Serialize;
use serde_json::Value;

pub use crate::facts::ServerSigns;

/// `GET /patroni` of one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    /// The member's name (`patroni.name`).
    pub name: String,
    /// The cluster's name in the DCS (`patroni.scope`).
    pub scope: String,
    /// `primary` (`master` before 4.0), `replica`, `standby_leader`…
    pub role: String,
    /// `running`, `starting`, `stopped`…
    pub state: String,
    pub timeline: Option<u32>,
    pub system_identifier: Option<String>,
    /// `postmaster_start_time` as Patroni prints it: tells this PostgreSQL from a restart.
    pub postmaster_start: Option<String>,
    pub paused: bool,
    pub failsafe_active: bool,
    pub version: String,
}

impl NodeStatus {
    pub fn is_primary(&self) -> bool {
        self.role == "primary" || self.role == "master"
    }

    pub fn parse(body: &str) -> Result<NodeStatus, String> {
        let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
        let text = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
        Ok(NodeStatus {
            name: text("/patroni/name").ok_or("no patroni.name")?,
            scope: text("/patroni/scope").ok_or("no patroni.scope")?,
            role: text("/role").ok_or("no role")?,
            state: text("/state").unwrap_or_default(),
            timeline: v["timeline"].as_u64().and_then(|t| u32::try_from(t).ok()),
            system_identifier: text("/database_system_identifier"),
            postmaster_start: text("/postmaster_start_time"),
            paused: v["pause"].as_bool().unwrap_or(false),
            failsafe_active: v["failsafe_mode_is_active"].as_bool().unwrap_or(false),
            version: text("/patroni/version").unwrap_or_default(),
        })
    }
}

/// One member in `GET /cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Member {
    pub name: String,
    /// `leader`, `standby_leader`, `sync_standby`, `quorum_standby`, `replica`.
    pub role: String,
    pub state: String,
    pub api_url: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub timeline: Option<u32>,
    /// Tagged `nofailover` (or `failover_priority` ≤ 0): Patroni never promotes it, even
    /// from `/sync` (it does make such a member synchronous when no other can be).
    pub nofailover: bool,
}

impl Member {
    /// In the DCS `/sync` key: a member Patroni may promote in synchronous mode.
    pub fn is_synchronous(&self) -> bool {
        self.role == "sync_standby" || self.role == "quorum_standby"
    }
}

/// Patroni's `Tags.nofailover`: the `nofailover` tag's Python truth when it is set, else
/// `failover_priority` ≤ 0.
fn nofailover(tags: &Value) -> bool {
    match &tags["nofailover"] {
        Value::Null => {}
        Value::Bool(b) => return *b,
        Value::Number(n) => return n.as_f64() != Some(0.0),
        Value::String(s) => return !s.is_empty(),
        Value::Array(a) => return !a.is_empty(),
        Value::Object(o) => return !o.is_empty(),
    }
    let priority = match &tags["failover_priority"] {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    priority.is_some_and(|p| p <= 0)
}

/// `GET /cluster`: the members as the DCS has them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    pub members: Vec<Member>,
    pub paused: bool,
}

impl ClusterView {
    pub fn leader(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.role == "leader")
    }

    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    pub fn parse(body: &str) -> Result<ClusterView, String> {
        let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
        let members = v["members"]
            .as_array()
            .ok_or("no members")?
            .iter()
            .map(|m| Member {
                name: m["name"].as_str().unwrap_or_default().to_string(),
                role: m["role"].as_str().unwrap_or_default().to_string(),
                state: m["state"].as_str().unwrap_or_default().to_string(),
                api_url: m["api_url"].as_str().map(str::to_string),
                host: m["host"].as_str().map(str::to_string),
                port: m["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
                timeline: m["timeline"].as_u64().and_then(|t| u32::try_from(t).ok()),
                nofailover: nofailover(&m["tags"]),
            })
            .collect();
        Ok(ClusterView {
            members,
            paused: v["pause"].as_bool().unwrap_or(false),
        })
    }
}

/// `synchronous_mode`: `false`/`true` before 4.0, also `"off"`/`"on"`/`"quorum"` since.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncMode {
    Off,
    On,
    Quorum,
}

/// `GET /config`: the dynamic settings in the DCS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DynamicConfig {
    pub synchronous_mode: SyncMode,
    pub synchronous_mode_strict: bool,
    pub synchronous_node_count: Option<u64>,
    pub failsafe_mode: bool,
    pub maximum_lag_on_failover: Option<u64>,
}

impl DynamicConfig {
    pub fn parse(body: &str) -> Result<DynamicConfig, String> {
        let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
        let mode = &v["synchronous_mode"];
        let synchronous_mode = match (mode, parse_bool(mode)) {
            (Value::Null, _) | (_, Some(false)) => SyncMode::Off,
            (_, Some(true)) => SyncMode::On,
            (Value::String(s), None) if s.eq_ignore_ascii_case("quorum") => SyncMode::Quorum,
            (other, None) => return Err(format!("synchronous_mode {other} is not known")),
        };
        Ok(DynamicConfig {
            synchronous_mode,
            synchronous_mode_strict: truthy(&v["synchronous_mode_strict"]),
            synchronous_node_count: v["synchronous_node_count"].as_u64(),
            failsafe_mode: truthy(&v["failsafe_mode"]),
            maximum_lag_on_failover: v["maximum_lag_on_failover"].as_u64(),
        })
    }
}

/// A setting on, as Patroni's `check_mode` reads it: only what `parse_bool` calls true.
fn truthy(v: &Value) -> bool {
    parse_bool(v) == Some(true)
}

/// Patroni's `utils.parse_bool`: `str(value).lower()` is `on`/`true`/`yes`/`1` (true) or
/// `off`/`false`/`no`/`0` (false); anything else (`2`, `1.0`, `"y"`) is neither, which
/// `check_mode` takes as off. Reading more values as true than Patroni would call a
/// non-strict cluster strict.
fn parse_bool(v: &Value) -> Option<bool> {
    // Python's str() of the JSON value: True/False, 2, 1.0, the string itself.
    let text = match v {
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.to_lowercase(),
        _ => return None,
    };
    match text.as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// Everything learnt from the local Patroni for one check. Each answer may have failed: the
/// error says why (unreachable, not JSON…).
#[derive(Clone, Debug, Serialize)]
pub struct PatroniObservation {
    pub url: String,
    pub node: Result<NodeStatus, String>,
    pub cluster: Result<ClusterView, String>,
    pub config: Result<DynamicConfig, String>,
    /// The leader's own `/patroni` (the local one when it leads), to compare with the wallet
    /// DSN's server; `None` when there is no leader to ask.
    pub leader: Option<Result<NodeStatus, String>>,
}
