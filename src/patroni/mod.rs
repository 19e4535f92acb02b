//! cln-replguard on a Patroni cluster: the local Patroni's REST API read (`fetch`, `facts`)
//! and judged (`rules`), its findings added to the verdict; HA managers recognised on the
//! server when no Patroni URL is configured. See contrib/patroni/README.md.

pub mod facts;
pub mod failover;
pub mod fetch;
pub mod follow;
pub mod managed;
pub mod prepromote;
pub mod rules;

use std::time::Duration;

use crate::dsn::WalletDsn;
use crate::facts::{Observation, ServerSigns};
use crate::probe::{self, Targets};
use crate::verdict::Verdict;

pub use facts::{ClusterView, DynamicConfig, NodeStatus, PatroniObservation};
pub use fetch::PatroniUrl;

/// What `check`, `status` and the pre-flight learn about the HA manager.
#[derive(Clone, Debug, Default)]
pub struct Manager {
    pub patroni: Option<PatroniObservation>,
    pub signs: Option<ServerSigns>,
}

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

/// Reads what the verdict needs to know about the HA manager: the server's signs (when the
/// wallet's server answered) and, with a URL, the local Patroni.
pub async fn observe_manager(
    obs: &Observation,
    targets: &Targets,
    url: Option<&PatroniUrl>,
    deadline: Duration,
) -> Manager {
    let signs = match (&targets.wallet, obs.primary()) {
        (WalletDsn::Postgres(t), Some(_)) => probe::observe_server_signs(t, deadline).await.ok(),
        _ => None,
    };
    let patroni = match url {
        Some(u) => Some(observe(u, deadline).await),
        None => None,
    };
    Manager { patroni, signs }
}

/// The plugin's checks (startup and runtime): with `replguard-patroni-url`, the verdict
/// with Patroni's findings; without it, the verdict as it is (recognising an unconfigured
/// manager is left to `check`/`status`, so a node already running is not gated for it).
pub async fn judged_for_plugin(
    v: Verdict,
    obs: &Observation,
    targets: &Targets,
    url: Option<&PatroniUrl>,
    deadline: Duration,
) -> Verdict {
    let Some(url) = url else { return v };
    let m = observe_manager(obs, targets, Some(url), deadline).await;
    amend(v, obs, &m, false)
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
pub fn amend(v: Verdict, obs: &Observation, m: &Manager, require_leader: bool) -> Verdict {
    let j = rules::judge(&rules::Inputs {
        patroni: m.patroni.as_ref(),
        signs: m.signs.as_ref(),
        primary: obs.primary(),
        require_leader,
    });
    v.amended(j.findings, &j.supersedes)
}

#[cfg(test)]
mod tests;
