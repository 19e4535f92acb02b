//! The Patroni rules on plain data: each finding from the answers that give it, and the
//! healthy strict cluster giving none.

use super::facts::*;
use super::rules::{Inputs, judge, patroni_time_us};
use crate::facts::PrimaryFacts;
use crate::verdict::Code;
use crate::verdict::tests::primary;

const STARTED: &str = "2026-11-26 12:00:00.250000+00:00";

fn node(name: &str, role: &str) -> NodeStatus {
    NodeStatus {
        name: name.into(),
        scope: "wallet".into(),
        role: role.into(),
        state: "running".into(),
        timeline: Some(1),
        system_identifier: primary().system_identifier,
        postmaster_start: Some(STARTED.into()),
        paused: false,
        failsafe_active: false,
        version: "4.1.5".into(),
    }
}

fn member(name: &str, role: &str) -> Member {
    Member {
        name: name.into(),
        role: role.into(),
        state: "streaming".into(),
        api_url: Some(format!("http://127.0.0.1:8008/patroni#{name}")),
        host: None,
        port: None,
        timeline: Some(1),
        nofailover: false,
    }
}

/// n1 leads (and is the local node), n2 is in /sync; strict synchronous mode.
fn healthy() -> PatroniObservation {
    PatroniObservation {
        url: "http://127.0.0.1:8008".into(),
        node: Ok(node("n1", "primary")),
        cluster: Ok(ClusterView {
            members: vec![member("n1", "leader"), member("n2", "sync_standby")],
            paused: false,
        }),
        config: Ok(DynamicConfig {
            synchronous_mode: SyncMode::On,
            synchronous_mode_strict: true,
            synchronous_node_count: Some(1),
            failsafe_mode: false,
            maximum_lag_on_failover: None,
        }),
        leader: Some(Ok(node("n1", "primary"))),
    }
}

fn patronis_names() -> ServerSigns {
    ServerSigns {
        names_source: "configuration file".into(),
        names_sourcefile: Some("/var/lib/postgresql/15/main/postgresql.conf".into()),
        patroni_sessions: 2,
        autofailover_settings: 0,
        primary_slot_name: None,
    }
}

fn wallet_server() -> PrimaryFacts {
    PrimaryFacts {
        postmaster_started_us: patroni_time_us(STARTED).unwrap(),
        sync_names_raw: "n2".into(),
        ha_signs: patronis_names(),
        ..primary()
    }
}

fn codes_of(p: Option<&PatroniObservation>, signs: &ServerSigns, leader: bool) -> Vec<Code> {
    let primary = PrimaryFacts {
        ha_signs: signs.clone(),
        ..wallet_server()
    };
    judge(&Inputs {
        patroni: p,
        primary: Some(&primary),
        require_leader: leader,
    })
    .findings
    .iter()
    .map(|f| f.code)
    .collect()
}

#[test]
fn a_healthy_strict_cluster_led_by_the_wallets_server_gives_no_finding() {
    assert_eq!(codes_of(Some(&healthy()), &patronis_names(), true), []);
}

#[test]
fn sync_mode_off_and_strict_off_are_unsafe() {
    let mut p = healthy();
    p.config.as_mut().unwrap().synchronous_mode_strict = false;
    assert_eq!(
        codes_of(Some(&p), &patronis_names(), false),
        [Code::PatroniStrictOff]
    );
    p.config.as_mut().unwrap().synchronous_mode = SyncMode::Off;
    assert_eq!(
        codes_of(Some(&p), &patronis_names(), false),
        [Code::PatroniSyncModeOff]
    );
    assert_eq!(
        Code::PatroniStrictOff.severity(),
        crate::verdict::Severity::Unsafe
    );
}

#[test]
fn names_from_postgresql_auto_conf_or_the_command_line_are_an_override() {
    let mut signs = patronis_names();
    signs.names_sourcefile = Some("/data/postgresql.auto.conf".into());
    assert_eq!(
        codes_of(Some(&healthy()), &signs, false),
        [Code::PatroniSyncNamesOverridden]
    );
    let cmdline = ServerSigns {
        names_source: "command line".into(),
        names_sourcefile: None,
        ..patronis_names()
    };
    assert_eq!(
        codes_of(Some(&healthy()), &cmdline, false),
        [Code::PatroniSyncNamesOverridden]
    );
    signs.names_sourcefile = None;
    assert_eq!(
        codes_of(Some(&healthy()), &signs, false),
        [Code::PatroniNamesUnverified]
    );
}

#[test]
fn strict_mode_without_a_member_in_sync_explains_the_wildcard() {
    let mut p = healthy();
    p.cluster.as_mut().unwrap().members[1].role = "replica".into();
    let primary = PrimaryFacts {
        sync_names_raw: "*".into(),
        ..wallet_server()
    };
    let j = judge(&Inputs {
        patroni: Some(&p),
        primary: Some(&primary),
        require_leader: false,
    });
    assert_eq!(j.findings.len(), 1, "{:?}", j.findings);
    assert_eq!(j.findings[0].code, Code::PatroniNoSyncStandby);
    assert!(j.findings[0].message.contains("'*'"));
    assert_eq!(j.supersedes, [Code::SyncNamesWildcard]);
}

#[test]
fn quorum_mode_is_degraded_and_says_pre_promote_will_veto() {
    let mut p = healthy();
    p.config.as_mut().unwrap().synchronous_mode = SyncMode::Quorum;
    let codes = codes_of(Some(&p), &patronis_names(), false);
    assert_eq!(codes, [Code::PatroniQuorumMode]);
    assert_eq!(
        Code::PatroniQuorumMode.severity(),
        crate::verdict::Severity::Degraded
    );
}

#[test]
fn a_sync_member_tagged_nofailover_leaves_no_failover_candidate() {
    let mut p = healthy();
    let members = &mut p.cluster.as_mut().unwrap().members;
    let synced = members.iter_mut().find(|m| m.is_synchronous()).unwrap();
    synced.nofailover = true;
    assert_eq!(
        codes_of(Some(&p), &patronis_names(), false),
        [Code::PatroniNoFailoverCandidate]
    );
}

#[test]
fn paused_and_failsafe_are_degraded() {
    let mut p = healthy();
    p.cluster.as_mut().unwrap().paused = true;
    p.node.as_mut().unwrap().failsafe_active = true;
    assert_eq!(
        codes_of(Some(&p), &patronis_names(), false),
        [Code::PatroniPaused, Code::PatroniFailsafeActive]
    );
}

#[test]
fn an_unreachable_or_foreign_patroni_is_unknown_and_nothing_else_is_judged() {
    let mut p = healthy();
    p.config = Err("cannot connect".into());
    p.node.as_mut().unwrap().paused = true;
    assert_eq!(
        codes_of(Some(&p), &patronis_names(), true),
        [Code::PatroniUnreachable]
    );
    let mut p = healthy();
    p.node.as_mut().unwrap().system_identifier = Some("1".into());
    assert_eq!(
        codes_of(Some(&p), &patronis_names(), true),
        [Code::PatroniForeign]
    );
}

#[test]
fn a_wallet_server_other_than_the_leader_is_unsafe() {
    let mut p = healthy();
    // Same timeline, another postmaster: a server Patroni does not lead.
    p.leader = Some(Ok(NodeStatus {
        postmaster_start: Some("2026-11-26 13:00:00.250000+01:00".into()),
        ..node("n1", "primary")
    }));
    assert_eq!(codes_of(Some(&p), &patronis_names(), false), []);
    p.leader
        .as_mut()
        .unwrap()
        .as_mut()
        .unwrap()
        .postmaster_start = Some("2026-11-26 12:00:01+00".into());
    assert_eq!(
        codes_of(Some(&p), &patronis_names(), false),
        [Code::PatroniWalletNotLeader]
    );
    let mut p = healthy();
    p.leader.as_mut().unwrap().as_mut().unwrap().timeline = Some(2);
    assert_eq!(
        codes_of(Some(&p), &patronis_names(), false),
        [Code::PatroniWalletNotLeader]
    );
    let mut p = healthy();
    p.cluster.as_mut().unwrap().members[0].role = "replica".into();
    assert_eq!(
        codes_of(Some(&p), &patronis_names(), false),
        [Code::PatroniWalletNotLeader]
    );
}

#[test]
fn require_leader_fails_on_a_replica_node() {
    let mut p = healthy();
    p.node = Ok(node("n2", "replica"));
    assert_eq!(codes_of(Some(&p), &patronis_names(), false), []);
    assert_eq!(
        codes_of(Some(&p), &patronis_names(), true),
        [Code::PatroniNotLeader]
    );
}

#[test]
fn require_leader_needs_the_wallet_server_reached_and_identified() {
    let p = healthy();
    let judged = |primary: Option<&PrimaryFacts>| -> Vec<Code> {
        judge(&Inputs {
            patroni: Some(&p),
            primary,
            require_leader: true,
        })
        .findings
        .iter()
        .map(|f| f.code)
        .collect()
    };
    assert_eq!(judged(None), [Code::PatroniWalletNotLeader]);
    let hidden = PrimaryFacts {
        system_identifier: None,
        ..wallet_server()
    };
    assert_eq!(judged(Some(&hidden)), [Code::PatroniWalletNotLeader]);
    assert_eq!(judged(Some(&wallet_server())), []);
}

#[test]
fn without_a_url_the_ha_manager_is_recognised() {
    assert_eq!(
        codes_of(None, &patronis_names(), false),
        [Code::HaManagerUnconfigured]
    );
    let none = ServerSigns {
        patroni_sessions: 0,
        ..patronis_names()
    };
    assert_eq!(codes_of(None, &none, false), []);
    let two_node = PrimaryFacts {
        sync_names_raw: "ANY 1 (pgautofailover_standby_2)".into(),
        sync_names: crate::syncnames::SyncNames::parse("ANY 1 (pgautofailover_standby_2)"),
        ha_signs: none,
        ..wallet_server()
    };
    let j = judge(&Inputs {
        patroni: None,
        primary: Some(&two_node),
        require_leader: false,
    });
    assert_eq!(j.findings[0].code, Code::PgAutoFailoverTwoNode);
    assert!(j.findings[0].message.contains("wait_primary"));
}

#[test]
fn rest_answers_parse_as_patroni_4_writes_them() {
    let n = NodeStatus::parse(
        r#"{"state": "running", "postmaster_start_time": "2026-12-02 22:40:39.450905+00:00",
            "role": "primary", "server_version": 150020, "timeline": 1, "pause": true,
            "database_system_identifier": "7714840324165797079",
            "patroni": {"version": "4.1.5", "scope": "h15x", "name": "n1"}}"#,
    )
    .unwrap();
    assert!(n.is_primary() && n.paused && !n.failsafe_active);
    assert_eq!(n.timeline, Some(1));
    assert!(
        NodeStatus::parse(r#"{"role": "master", "patroni": {"scope": "s", "name": "a"}}"#)
            .unwrap()
            .is_primary()
    );
    assert!(NodeStatus::parse(r#"{"role": "primary"}"#).is_err());
    let c = DynamicConfig::parse(r#"{"ttl": 20, "synchronous_mode": "quorum"}"#).unwrap();
    assert_eq!(c.synchronous_mode, SyncMode::Quorum);
    assert!(!c.synchronous_mode_strict);
    let c = DynamicConfig::parse(r#"{"synchronous_mode": true, "synchronous_mode_strict": "on"}"#)
        .unwrap();
    assert!(c.synchronous_mode == SyncMode::On && c.synchronous_mode_strict);
    assert!(DynamicConfig::parse(r#"{"synchronous_mode": "maybe"}"#).is_err());
    // Patroni's parse_bool: 2 and 1.0 are not true, so not strict; 1 and "YES" are.
    for (strict, patronis) in [("2", false), ("1.0", false), ("\"y\"", false), ("1", true)] {
        let c = DynamicConfig::parse(&format!(
            r#"{{"synchronous_mode": "YES", "synchronous_mode_strict": {strict}}}"#
        ))
        .unwrap();
        assert_eq!(c.synchronous_mode, SyncMode::On);
        assert_eq!(c.synchronous_mode_strict, patronis, "{strict}");
    }
    let v = ClusterView::parse(
        r#"{"members": [{"name": "n2", "role": "sync_standby", "state": "streaming"}], "pause": true}"#,
    )
    .unwrap();
    assert!(v.paused && v.member("n2").unwrap().is_synchronous() && v.leader().is_none());
}

#[test]
fn patroni_times_read_with_their_offset() {
    let utc = patroni_time_us("2026-12-02 22:40:39.450905+00:00").unwrap();
    assert_eq!(
        patroni_time_us("2026-12-02 23:40:39.450905+01:00"),
        Some(utc)
    );
    assert_eq!(patroni_time_us("2026-12-02 20:40:39.450905-02"), Some(utc));
    assert_eq!(patroni_time_us("yesterday"), None);
}
