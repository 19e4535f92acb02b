//! `failover-check` under Patroni: a standby is a target only if Patroni would promote it —
//! a member in the DCS `/sync` key — besides having flushed every acknowledged commit.

use super::facts::PatroniObservation;
use crate::failover::{FailoverAnswer, Readiness, Reason};
use crate::verdict::Code;

/// The answer with Patroni's rule applied when the local Patroni is configured: one place
/// for `cln-replguard failover-check` and `lightning-cli failover-check`.
pub async fn judged(
    a: FailoverAnswer,
    url: Option<&super::PatroniUrl>,
    timeout: std::time::Duration,
) -> FailoverAnswer {
    match url {
        Some(url) => amend(a, &super::observe(url, timeout).await),
        None => a,
    }
}

pub fn amend(mut a: FailoverAnswer, p: &PatroniObservation) -> FailoverAnswer {
    let cluster = match &p.cluster {
        Ok(c) => c,
        Err(e) => {
            a.blockers.push(Reason::new(
                Code::PatroniUnreachable,
                format!("cannot read Patroni's members at {}: {e}", p.url),
            ));
            for s in &mut a.standbys {
                s.ready = false;
            }
            a.readiness = Readiness::Unknown;
            return retarget(a);
        }
    };
    for s in &mut a.standbys {
        let why = match cluster.member(&s.name) {
            Some(m) if m.nofailover => {
                format!(
                    "Patroni would not promote it: tagged nofailover (role {})",
                    m.role
                )
            }
            Some(m) if m.is_synchronous() => continue,
            Some(m) => format!(
                "Patroni would not promote it: role {}, not in /sync",
                m.role
            ),
            None => "Patroni does not know a member of that name".to_string(),
        };
        s.ready = false;
        s.reasons.push(Reason::new(Code::PatroniNotInSync, why));
    }
    retarget(a)
}

/// The target and readiness again, after standbys were ruled out.
fn retarget(mut a: FailoverAnswer) -> FailoverAnswer {
    a.target = a.standbys.iter().find(|s| s.ready).map(|s| s.name.clone());
    if a.target.is_none() && a.readiness == Readiness::Ready {
        a.readiness = Readiness::NotReady;
    }
    a.ready = a.readiness == Readiness::Ready;
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::StandbyReadiness;
    use crate::patroni::facts::{ClusterView, Member};

    fn ready(name: &str) -> StandbyReadiness {
        StandbyReadiness {
            name: name.into(),
            ready: true,
            flush_lsn: None,
            missing_bytes: Some(0),
            dsn: None,
            reasons: vec![],
        }
    }

    fn answer() -> FailoverAnswer {
        FailoverAnswer {
            readiness: Readiness::Ready,
            ready: true,
            target: Some("n2".into()),
            primary_flush_lsn: None,
            blockers: vec![],
            standbys: vec![ready("n2"), ready("n3")],
        }
    }

    fn patroni(roles: &[(&str, &str)]) -> PatroniObservation {
        PatroniObservation {
            url: "http://127.0.0.1:8008".into(),
            node: Err("-".into()),
            cluster: Ok(ClusterView {
                members: roles
                    .iter()
                    .map(|(n, r)| Member {
                        name: n.to_string(),
                        role: r.to_string(),
                        state: "streaming".into(),
                        api_url: None,
                        host: None,
                        port: None,
                        timeline: Some(1),
                        nofailover: false,
                    })
                    .collect(),
                paused: false,
            }),
            config: Err("-".into()),
            leader: None,
        }
    }

    #[test]
    fn only_a_member_in_sync_is_a_target() {
        let a = amend(
            answer(),
            &patroni(&[("n1", "leader"), ("n2", "replica"), ("n3", "sync_standby")]),
        );
        assert_eq!(a.target.as_deref(), Some("n3"));
        assert!(a.ready);
        assert_eq!(a.standbys[0].reasons[0].code, Code::PatroniNotInSync);
        let a = amend(answer(), &patroni(&[("n1", "leader"), ("n2", "replica")]));
        assert_eq!((a.readiness, a.target), (Readiness::NotReady, None));
    }

    #[test]
    fn a_member_in_sync_tagged_nofailover_is_no_target() {
        let mut p = patroni(&[("n1", "leader"), ("n2", "sync_standby")]);
        p.cluster.as_mut().unwrap().members[1].nofailover = true;
        let a = amend(answer(), &p);
        assert_eq!((a.readiness, a.target), (Readiness::NotReady, None));
        assert!(a.standbys[0].reasons[0].text.contains("nofailover"));
        let tags = |t: &str| {
            let body = format!(
                r#"{{"members": [{{"name": "n2", "role": "sync_standby", "tags": {t}}}]}}"#
            );
            ClusterView::parse(&body).unwrap().members[0].nofailover
        };
        assert!(tags(r#"{"nofailover": true}"#));
        assert!(tags(r#"{"failover_priority": 0}"#));
        assert!(tags(r#"{"failover_priority": "-1"}"#));
        assert!(!tags(r#"{"nofailover": false, "failover_priority": 0}"#));
        assert!(!tags(r#"{"failover_priority": 2}"#));
        assert!(!tags("{}"));
    }

    #[test]
    fn unreadable_members_make_it_unknown() {
        let mut p = patroni(&[]);
        p.cluster = Err("cannot connect".into());
        let a = amend(answer(), &p);
        assert_eq!(
            (a.readiness, a.ready, a.target),
            (Readiness::Unknown, false, None)
        );
    }
}
