//! `replication-status` and `failover-check`. Both evaluate live; `failover-check` fails
//! with a JSON-RPC error when a failover right now could lose data, so that
//! `lightning-cli failover-check && lightning-cli fundchannel …` goes on only when safe.

use cln_plugin::Plugin;
use serde_json::{Value, json};

use super::params;
use super::startup::State;
use crate::failover::{self, Readiness};
use crate::{probe, report};

/// Not ready: a failover now could lose an acknowledged commit.
pub const ERR_FAILOVER_NOT_READY: i64 = 2300;
/// Cannot tell (primary unreachable, privileges…): never a go.
pub const ERR_FAILOVER_UNKNOWN: i64 = 2301;
/// JSON-RPC "invalid params".
const ERR_INVALID_PARAMS: i64 = -32602;

/// An error cln-plugin passes to the client as is: its text must be the JSON object.
fn rpc_error(code: i64, message: String, data: Value) -> anyhow::Error {
    anyhow::anyhow!(json!({ "code": code, "message": message, "data": data }).to_string())
}

pub async fn replication_status(
    plugin: Plugin<State>,
    params: Value,
) -> Result<Value, anyhow::Error> {
    params::no_params(&params).map_err(|e| rpc_error(ERR_INVALID_PARAMS, e, Value::Null))?;
    let st = &plugin.state().0;
    let targets = checkable(&st.targets)?;
    // The runtime guard's latest report, with its age; a live check before its first one.
    let latest = st.guard.latest();
    if let Some((at, mut report)) = latest {
        report.plugin.report_age_ms = Some(at.elapsed().as_millis() as u64);
        return Ok(report.to_json());
    }
    let mut obs = probe::observe(targets, &st.settings.policy).await;
    obs.pinned_commit = st.pinned.clone();
    let v = crate::patroni::verdict_of(
        &obs,
        &st.settings.policy,
        st.settings.patroni_url.as_ref(),
        false,
    )
    .await;
    let mut out = report::StatusDocument::of(&obs, &v, &st.settings.policy);
    out.plugin.mode = Some(st.settings.mode);
    out.plugin.report_age_ms = Some(0);
    Ok(out.to_json())
}

pub async fn failover_check(plugin: Plugin<State>, params: Value) -> Result<Value, anyhow::Error> {
    let wait = params::failover_wait(&params)
        .map_err(|e| rpc_error(ERR_INVALID_PARAMS, e, Value::Null))?;
    let st = &plugin.state().0;
    let targets = checkable(&st.targets)?;
    let obs = probe::observe_failover(targets, &st.settings.policy, wait).await;
    // Under Patroni, only a member Patroni would promote is a target (`/sync`).
    let answer = crate::patroni::failover::judged(
        failover::evaluate(&obs),
        st.settings.patroni_url.as_ref(),
        st.settings.policy.query_timeout,
    )
    .await;
    let data = report::failover_json(&obs, &answer);
    match answer.readiness {
        Readiness::Ready => Ok(data),
        Readiness::NotReady => Err(rpc_error(
            ERR_FAILOVER_NOT_READY,
            format!("failover not safe: {}", first_reason(&answer)),
            data,
        )),
        Readiness::Unknown => Err(rpc_error(
            ERR_FAILOVER_UNKNOWN,
            format!("failover safety unknown: {}", first_reason(&answer)),
            data,
        )),
    }
}

/// Error code when the plugin has nothing to check (warn mode without a usable wallet DSN).
pub const ERR_NOTHING_TO_CHECK: i64 = 2302;

fn checkable(
    t: &Result<crate::probe::Targets, String>,
) -> Result<&crate::probe::Targets, anyhow::Error> {
    t.as_ref().map_err(|why| {
        rpc_error(
            ERR_NOTHING_TO_CHECK,
            format!("nothing to check: {why}"),
            Value::Null,
        )
    })
}

fn first_reason(a: &failover::FailoverAnswer) -> String {
    a.blockers
        .first()
        .map(ToString::to_string)
        .or_else(|| {
            a.standbys
                .first()
                .and_then(|s| s.reasons.first().map(|r| format!("{}: {r}", s.name)))
        })
        .unwrap_or_else(|| "no standby is connected".into())
}

/// `setconfig` of a dynamic option (`replguard-interval`, `replguard-alert-command`):
/// validated by the same rules as at startup, then in force from the next check. lightningd
/// keeps the value for `listconfigs`; the guard reads its copy in the state.
pub async fn setconfig(plugin: Plugin<State>, params: Value) -> Result<Value, anyhow::Error> {
    let name = params["config"].as_str().unwrap_or_default().to_string();
    let value = params["val"].as_str();
    let change = crate::options::runtime_change(&name, value)
        .map_err(|e| rpc_error(ERR_INVALID_PARAMS, e.to_string(), Value::Null))?;
    log::info!("setconfig {name}: in force from the next check");
    plugin.state().0.guard.change(change);
    Ok(json!({}))
}
