//! The plugin follows the local Patroni (`replguard-patroni-url`): when this node stops being
//! the leader — lock lost, role or timeline changed, or Patroni silent too long — lightningd
//! is stopped at once, in every `replguard-on-unsafe` mode but `log`. The decision is
//! `patroni::follow`; this is its polling loop.

use std::time::Instant;

use cln_plugin::Plugin;

use super::startup::State;
use crate::guard::OnUnsafe;
use crate::patroni::follow::{self, Baseline, Poll};
use crate::patroni::{NodeStatus, PatroniUrl, fetch};
use crate::verdict::{Code, Finding, Level, Verdict};

/// Runs the fence until it stops lightningd (or forever, while this node leads).
pub(super) async fn run(plugin: Plugin<State>) {
    let st = plugin.state().0.clone();
    let Some(url) = st.settings.patroni_url.clone() else {
        return;
    };
    if st.settings.gate.on_unsafe == OnUnsafe::Log {
        log::info!(
            "replguard-on-unsafe=log: lightningd does not follow Patroni's leader at {url} \
             (a leader change is only logged by the checks)"
        );
        return;
    }
    let mut baseline: Option<Baseline> = None;
    let mut last_answer = Instant::now();
    loop {
        tokio::time::sleep(follow::POLL_EVERY).await;
        let poll = match poll_leader(&url).await {
            Ok((holds_lock, node)) => {
                last_answer = Instant::now();
                Poll::Answer { holds_lock, node }
            }
            Err(why) => Poll::Silent {
                for_: last_answer.elapsed(),
                why,
            },
        };
        if let Some(why) = follow::must_stop(baseline.as_ref(), &poll) {
            super::monitor::stop_lightningd(&st.rpc_path, &why, &not_leader(&why)).await;
            return;
        }
        let next = follow::next_baseline(baseline.clone(), &poll);
        if next != baseline
            && let Some(b) = &next
        {
            log::info!(
                "following Patroni at {url}: this node ({}) leads on timeline {:?}; lightningd \
                 is stopped when that changes",
                b.name,
                b.timeline
            );
        }
        baseline = next;
    }
}

/// `GET /leader`: 200 only on the member holding the leader lock; the body is its status.
async fn poll_leader(url: &PatroniUrl) -> Result<(bool, NodeStatus), String> {
    let a = fetch::get(url, "/leader", follow::POLL_DEADLINE).await?;
    let node = NodeStatus::parse(&a.body).map_err(|e| format!("{url}/leader: {e}"))?;
    Ok((a.status == 200, node))
}

fn not_leader(why: &str) -> Verdict {
    Verdict {
        level: Level::Unsafe,
        findings: vec![Finding::new(
            Code::PatroniNotLeader,
            why,
            "start lightningd beside the new leader (its on_role_change callback, \
             contrib/patroni/)",
        )],
        sync: None,
    }
}
