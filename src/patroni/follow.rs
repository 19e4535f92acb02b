//! The plugin follows the local Patroni: lightningd may write only while this node holds
//! Patroni's leader lock. A pure decision per poll of `GET /leader` (200 only on the node
//! holding the lock; its body is the node's `/patroni` status); the polling is the plugin's.

use std::time::Duration;

use super::facts::NodeStatus;

/// How often the plugin asks: a change is seen within this plus one request's deadline,
/// well inside the 2 s the fence allows.
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// One request's deadline.
pub const POLL_DEADLINE: Duration = Duration::from_millis(750);
/// How long the REST API may stay silent before lightningd is stopped anyway. Another
/// member can take the lock only once the leader key's ttl (at least 20 s in Patroni) has
/// passed since the lock's last renewal. Patroni renews it every `loop_wait`, so the last
/// renewal is normally just before our last answer, and stopping within half the minimum
/// ttl comes before any other node can be promoted. A 200 only proves the lock had not
/// expired yet: if Patroni's loop stalled before its REST API went silent, the lock may
/// expire sooner. Then the old primary's commits wait for the standby that was promoted
/// (strict synchronous mode), so lightningd cannot commit a new state meanwhile.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(10);

/// What one poll saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Poll {
    /// An answer: the status code of `/leader` and the node's status.
    Answer { holds_lock: bool, node: NodeStatus },
    /// No usable answer (refused, timed out, unreadable), for this long since the last one.
    Silent { for_: Duration, why: String },
}

/// The leadership lightningd started under: the first answer that holds the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Baseline {
    pub name: String,
    pub timeline: Option<u32>,
}

/// The baseline after this poll: the first answer that leads sets it; a timeline the first
/// answer lacked (PostgreSQL still starting) is taken from the first answer that has one, so
/// a later promotion elsewhere is still seen as a change.
pub fn next_baseline(baseline: Option<Baseline>, poll: &Poll) -> Option<Baseline> {
    let Poll::Answer { node, .. } = poll else {
        return baseline;
    };
    match baseline {
        None => Some(Baseline {
            name: node.name.clone(),
            timeline: node.timeline,
        }),
        Some(b) => Some(Baseline {
            timeline: b.timeline.or(node.timeline),
            ..b
        }),
    }
}

/// Why lightningd must stop now, or `None` to keep running. `baseline` is `None` until a
/// first answer showed this node leading.
pub fn must_stop(baseline: Option<&Baseline>, poll: &Poll) -> Option<String> {
    match poll {
        Poll::Silent { for_, why } => (*for_ >= SILENCE_LIMIT).then(|| {
            format!(
                "the local Patroni has not answered for {} s ({why}): another member may be \
                 promoted once the leader key expires",
                for_.as_secs()
            )
        }),
        Poll::Answer { holds_lock, node } => {
            if !holds_lock || !node.is_primary() {
                return Some(format!(
                    "this node ({}) is no longer Patroni's leader: role {}{}",
                    node.name,
                    node.role,
                    if *holds_lock {
                        ""
                    } else {
                        ", leader lock not held"
                    }
                ));
            }
            let b = baseline?;
            if node.name != b.name {
                return Some(format!(
                    "the Patroni URL now answers as member {} (lightningd started beside {})",
                    node.name, b.name
                ));
            }
            match (b.timeline, node.timeline) {
                (Some(was), Some(now)) if now != was => Some(format!(
                    "the leader's timeline changed from {was} to {now}: a promotion happened"
                )),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(role: &str, timeline: u32) -> NodeStatus {
        NodeStatus {
            name: "n1".into(),
            scope: "s".into(),
            role: role.into(),
            state: "running".into(),
            timeline: Some(timeline),
            system_identifier: None,
            postmaster_start: None,
            paused: false,
            failsafe_active: false,
            version: "4.1.5".into(),
        }
    }

    fn base() -> Baseline {
        Baseline {
            name: "n1".into(),
            timeline: Some(1),
        }
    }

    fn answer(holds_lock: bool, node: NodeStatus) -> Poll {
        Poll::Answer { holds_lock, node }
    }

    #[test]
    fn the_leader_with_the_lock_keeps_running() {
        assert_eq!(
            must_stop(Some(&base()), &answer(true, status("primary", 1))),
            None
        );
        assert_eq!(must_stop(None, &answer(true, status("primary", 1))), None);
    }

    #[test]
    fn losing_the_lock_the_role_or_the_timeline_stops_at_once() {
        let lost = must_stop(Some(&base()), &answer(false, status("primary", 1))).unwrap();
        assert!(lost.contains("lock not held"), "{lost}");
        assert!(must_stop(Some(&base()), &answer(true, status("replica", 1))).is_some());
        assert!(must_stop(None, &answer(false, status("replica", 1))).is_some());
        let tl = must_stop(Some(&base()), &answer(true, status("primary", 2))).unwrap();
        assert!(tl.contains("timeline changed from 1 to 2"), "{tl}");
        let other = NodeStatus {
            name: "n2".into(),
            ..status("primary", 1)
        };
        assert!(must_stop(Some(&base()), &answer(true, other)).is_some());
    }

    #[test]
    fn a_timeline_missing_from_the_first_answer_is_taken_from_the_next() {
        let no_tl = NodeStatus {
            timeline: None,
            ..status("primary", 1)
        };
        let b = next_baseline(None, &answer(true, no_tl));
        assert_eq!(b.as_ref().unwrap().timeline, None);
        let b = next_baseline(b, &answer(true, status("primary", 3)));
        assert_eq!(b.as_ref().unwrap().timeline, Some(3));
        // Once known it stays: a change is what must_stop reports, not a new baseline.
        let b = next_baseline(b, &answer(true, status("primary", 4)));
        assert_eq!(b.as_ref().unwrap().timeline, Some(3));
        assert!(must_stop(b.as_ref(), &answer(true, status("primary", 4))).is_some());
    }

    #[test]
    fn silence_stops_only_after_the_limit() {
        let short = Poll::Silent {
            for_: SILENCE_LIMIT - Duration::from_millis(1),
            why: "refused".into(),
        };
        assert_eq!(must_stop(Some(&base()), &short), None);
        let long = Poll::Silent {
            for_: SILENCE_LIMIT,
            why: "refused".into(),
        };
        assert!(
            must_stop(Some(&base()), &long)
                .unwrap()
                .contains("has not answered")
        );
    }
}
