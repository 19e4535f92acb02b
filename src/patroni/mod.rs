//! cln-replguard on a Patroni cluster: the local Patroni's REST API read (`fetch`, `facts`)
//! and judged (`rules`), its findings added to the verdict; HA managers recognised on the
//! server when no Patroni URL is configured. See contrib/patroni/README.md.

pub mod autofailover;
pub mod facts;
pub mod failover;
pub mod fetch;
pub mod follow;
pub mod managed;
pub mod prepromote;
pub mod rules;

use std::time::Duration;

use crate::facts::Observation;
use crate::policy::Policy;
use crate::verdict::Verdict;

pub use facts::{ClusterView, DynamicConfig, NodeStatus, PatroniObservation};
pub use fetch::PatroniUrl;

/// Reads the local Patroni: `/patroni`, `/cluster`, `/config` at once, then the leader's
/// `/patroni` (the local answer when this node leads).
pub async fn observe(url: &PatroniUrl, deadline: Duration) -> PatroniObservation {
    let json = |path: &'static str| async move {
        let a = fetch::get(url, path, deadline).await?;
        match a.status {
            200 => Ok(a.body),
            // /patroni answers 503 on a node whose PostgreSQL is not running, with the body.
            503 if path == "/patroni" => Ok(a.body),
            s => Err(format!("{url}{path}: HTTP status {s}")),
        }
    };
    let (node, cluster, config) = tokio::join!(json("/patroni"), json("/cluster"), json("/config"));
    let node = node.and_then(|b| NodeStatus::parse(&b));
    let cluster = cluster.and_then(|b| ClusterView::parse(&b));
    let config = config.and_then(|b| DynamicConfig::parse(&b));
    let leader = match (&node, &cluster) {
        (Ok(n), Ok(c)) => match c.leader() {
            Some(l) if l.name == n.name => Some(Ok(n.clone())),
            Some(l) => Some(leader_status(l.api_url.as_deref(), deadline).await),
            None => None,
        },
        _ => None,
    };
    PatroniObservation {
        url: url.to_string(),
        node,
        cluster,
        config,
        leader,
    }
}

async fn leader_status(api_url: Option<&str>, deadline: Duration) -> Result<NodeStatus, String> {
    let url = PatroniUrl::of_member_api(api_url.ok_or("the leader has no api_url")?)?;
    let a = fetch::get(&url, "/patroni", deadline).await?;
    NodeStatus::parse(&a.body)
}

/// The local Patroni when a URL is configured; without one, nothing to read (the server's
/// signs of an HA manager came with the primary's facts).
pub async fn observe_if_configured(
    url: Option<&PatroniUrl>,
    deadline: Duration,
) -> Option<PatroniObservation> {
    match url {
        Some(u) => Some(observe(u, deadline).await),
        None => None,
    }
}

/// The verdict of one check, made the same way by every check — `status`, `check`, the
/// pre-flight, and the plugin's startup check, monitor and `replication-status`: the storage's
/// rules, then the HA manager's: with `replguard-patroni-url`, Patroni's findings; without
/// it, an HA manager seen on the server (Patroni's sessions, pg_auto_failover's signs) is
/// named.
pub async fn verdict_of(
    obs: &Observation,
    policy: &Policy,
    url: Option<&PatroniUrl>,
    require_leader: bool,
) -> Verdict {
    let v = crate::verdict::evaluate(obs, policy);
    let patroni = observe_if_configured(url, policy.query_timeout).await;
    amend(v, obs, patroni.as_ref(), require_leader)
}

/// `--require-leader`: the findings that say lightningd must not run here (the local node
/// is not the leader, the wallet DSN reaches another server, or a standby).
pub fn leadership_failed(v: &Verdict) -> bool {
    use crate::verdict::Code;
    [
        Code::PatroniNotLeader,
        Code::PatroniWalletNotLeader,
        Code::PatroniUnreachable,
        Code::PatroniForeign,
        Code::WalletOnStandby,
    ]
    .iter()
    .any(|c| v.has(*c))
}

/// The verdict with the HA manager's findings.
pub fn amend(
    v: Verdict,
    obs: &Observation,
    patroni: Option<&PatroniObservation>,
    require_leader: bool,
) -> Verdict {
    let j = rules::judge(&rules::Inputs {
        patroni,
        primary: obs.primary(),
        require_leader,
    });
    v.amended(j.findings, &j.supersedes)
}

#[cfg(test)]
mod tests;
