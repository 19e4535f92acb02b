//! One test per rule, by behaviour. Each starts from a healthy pair and changes one fact.

use std::time::SystemTime;

use super::*;
use crate::facts::*;
use crate::lsn::Lsn;
use crate::syncnames::SyncNames;

const SYSID: &str = "7312345678901234567";
const PRIMARY_STARTED_US: i64 = 1_795_000_000_000_000;

pub(crate) fn sender(name: &str, sync_state: &str) -> WalSender {
    WalSender {
        pid: 100 + name.len() as i32 + name.bytes().map(i32::from).sum::<i32>(),
        application_name: name.into(),
        client_addr: None,
        state: Some("streaming".into()),
        sync_state: Some(sync_state.into()),
        sync_priority: Some(1),
        sent_lsn: Some(Lsn(0x3000100)),
        write_lsn: Some(Lsn(0x3000100)),
        flush_lsn: Some(Lsn(0x3000100)),
        replay_lsn: Some(Lsn(0x3000100)),
        // Idle pair: lag columns NULL, and that is normal.
        write_lag_ms: None,
        flush_lag_ms: None,
        replay_lag_ms: None,
        reply_age_ms: Some(3.0),
        reply_time_us: Some(1_700_000_000_000_000),
        reached_target: Some(true),
    }
}

pub(crate) fn primary() -> PrimaryFacts {
    PrimaryFacts {
        server_version_num: 150018,
        server_version: "15.18".into(),
        in_recovery: false,
        system_identifier: Some(SYSID.into()),
        timeline: Some(1),
        postmaster_start: "2026-11-26 12:00:00+00".into(),
        postmaster_started_us: PRIMARY_STARTED_US,
        flush_lsn: Some(Lsn(0x3000100)),
        can_read_stats: true,
        session: SessionFacts {
            role: "lightningd".into(),
            database: "lightningd".into(),
            synchronous_commit: "on".into(),
            synchronous_commit_source: "default".into(),
            overrides: vec![],
        },
        sync_names_raw: "FIRST 1 (s1)".into(),
        sync_names: SyncNames::parse("FIRST 1 (s1)"),
        commit_probe: CommitProbe::Acknowledged {
            ms: 1.1,
            lsn: Lsn(0x3000100),
            released_waiting: false,
        },
        walsenders: vec![sender("s1", "sync")],
        slots: vec![Slot {
            name: "s1".into(),
            active: true,
            active_pid: Some(4242),
            wal_status: Some("reserved".into()),
            restart_lsn: Some(Lsn(0x3000000)),
            invalidation_reason: None,
        }],
        max_slot_wal_keep_size_mb: 1024,
        wal_log_hints: true,
        data_checksums: false,
        archive_mode: "on".into(),
        archiver: Some(Archiver {
            archived_count: 3,
            failed_count: 0,
            last_failed_wal: None,
            last_failed_time: None,
            last_archived_time: Some("2026-11-26 12:00:01+00".into()),
            failing_now: false,
        }),
        syncrep_waiters: SyncRepWaiters::default(),
        wallet_cluster: WalletCluster::SameDsn,
        lightningd_sessions: None,
        ha_signs: crate::facts::ServerSigns {
            names_source: "configuration file".into(),
            names_sourcefile: Some("/data/postgresql.conf".into()),
            patroni_sessions: 0,
            autofailover_settings: 0,
            primary_slot_name: None,
        },
    }
}

pub(crate) fn standby_facts() -> StandbyFacts {
    StandbyFacts {
        configured_name: None,
        server_version_num: 150018,
        in_recovery: true,
        system_identifier: Some(SYSID.into()),
        cluster_name: "s1".into(),
        postmaster_started_us: PRIMARY_STARTED_US + 7_000_000,
        timeline: Some(1),
        receiver: Some(WalReceiver {
            status: Some("streaming".into()),
            received_tli: Some(1),
            last_msg_age_ms: Some(5.0),
            flushed_lsn: Some(Lsn(0x3000100)),
            slot_name: Some("s1".into()),
            application_name: Some("s1".into()),
        }),
        replay_paused: Some(false),
        receive_lsn: Some(Lsn(0x3000100)),
        replay_lsn: Some(Lsn(0x3000100)),
        upstream: vec![],
    }
}

pub(crate) fn observe(p: PrimaryFacts) -> Observation {
    Observation {
        checked_at: SystemTime::now(),
        took_ms: 3.0,
        wallet: WalletObservation::Postgres {
            target: "host=/tmp port=5432 user=lightningd".into(),
            primary: Ok(p),
        },
        standbys: vec![],
        pinned_commit: None,
    }
}

pub(crate) fn with_standby(
    mut obs: Observation,
    facts: Result<StandbyFacts, ProbeFailure>,
) -> Observation {
    obs.standbys.push(StandbyObservation {
        target: "host=/tmp/s1 port=5432 user=postgres".into(),
        facts,
    });
    obs
}

fn judge(obs: &Observation) -> Verdict {
    evaluate(obs, &Policy::default())
}

fn codes(v: &Verdict) -> Vec<&'static str> {
    v.findings.iter().map(|f| f.code.as_str()).collect()
}

fn assert_verdict(obs: &Observation, level: Level, code: Code) {
    let v = judge(obs);
    assert_eq!(v.level, level, "findings: {:?}", codes(&v));
    assert!(v.has(code), "expected {code} among {:?}", codes(&v));
}

fn failure(kind: FailureKind) -> ProbeFailure {
    ProbeFailure {
        kind,
        stage: "connect".into(),
        detail: "x".into(),
    }
}

#[test]
fn safe_when_the_named_standby_confirms_the_probe() {
    let v = judge(&with_standby(observe(primary()), Ok(standby_facts())));
    assert_eq!(v.level, Level::Safe, "{:?}", codes(&v));
    assert!(v.findings.is_empty());
    let sync = v.sync.unwrap();
    assert_eq!((sync.healthy, sync.required), (1, 1));
}

#[test]
fn idle_null_lags_and_an_aged_reply_are_not_findings() {
    let mut p = primary();
    p.walsenders[0].reply_age_ms = Some(9_800.0);
    assert_eq!(judge(&observe(p)).level, Level::Safe);
}

#[test]
fn unsafe_when_the_wallet_is_not_postgres() {
    let obs = Observation {
        wallet: WalletObservation::NotPostgres {
            scheme: "sqlite3".into(),
        },
        ..observe(primary())
    };
    assert_verdict(&obs, Level::Unsafe, Code::NotPostgres);
}

#[test]
fn unknown_when_the_primary_cannot_be_reached_with_a_code_per_cause() {
    for (kind, code) in [
        (FailureKind::Auth, Code::AuthFailed),
        (FailureKind::Timeout, Code::PrimaryTimeout),
        (FailureKind::Unreachable, Code::PrimaryUnreachable),
        (FailureKind::Unavailable, Code::PrimaryUnavailable),
        (FailureKind::Query, Code::QueryFailed),
        (FailureKind::PluginFault, Code::PluginFault),
    ] {
        let obs = Observation {
            wallet: WalletObservation::Postgres {
                target: "t".into(),
                primary: Err(failure(kind)),
            },
            ..observe(primary())
        };
        assert_verdict(&obs, Level::Unknown, code);
    }
}

/// The plugin's own side failing (out of descriptors) is said to be the plugin's: unknown,
/// with its own code and nothing about the storage, wherever it happened.
#[test]
fn a_plugin_fault_is_reported_as_the_plugins_not_the_storages() {
    let mut p = primary();
    p.commit_probe = CommitProbe::PluginFault {
        error: "connect: Too many open files (os error 24)".into(),
    };
    let v = judge(&with_standby(
        observe(p),
        Err(failure(FailureKind::PluginFault)),
    ));
    assert_eq!(v.level, Level::Unknown);
    assert_eq!(v.storage_level(), Level::Safe);
    assert!(
        v.findings.iter().all(|f| f.code == Code::PluginFault),
        "{:?}",
        codes(&v)
    );
    assert_eq!(v.findings.len(), 2);
    for f in &v.findings {
        assert!(f.message.starts_with("plugin fault: "), "{}", f.message);
    }
    assert!(!v.has(Code::StandbyUnreachable) && !v.has(Code::CommitProbeFailed));
}

#[test]
fn unsafe_when_the_wallet_server_is_in_recovery() {
    let mut p = primary();
    p.in_recovery = true;
    assert_verdict(&observe(p), Level::Unsafe, Code::WalletOnStandby);
}

#[test]
fn unknown_not_unsafe_when_privileges_hide_the_replication_columns() {
    let mut p = primary();
    p.can_read_stats = false;
    for w in &mut p.walsenders {
        w.state = None;
        w.sync_state = None;
        w.flush_lsn = None;
        w.replay_lsn = None;
    }
    let v = judge(&observe(p));
    assert_eq!(v.level, Level::Unknown, "{:?}", codes(&v));
    assert!(v.has(Code::PrivilegesInsufficient));
    assert!(
        !v.has(Code::SyncStandbysShort),
        "hidden columns must not read as no standby"
    );
    let f = v.finding(Code::PrivilegesInsufficient).unwrap();
    assert!(
        f.remedy.contains("GRANT pg_monitor TO lightningd"),
        "{}",
        f.remedy
    );
}

#[test]
fn unsafe_when_sync_names_are_empty() {
    let mut p = primary();
    p.sync_names_raw = String::new();
    p.sync_names = Ok(SyncNames::Empty);
    p.walsenders[0].sync_state = Some("async".into());
    assert_verdict(&observe(p), Level::Unsafe, Code::SyncNamesEmpty);
}

#[test]
fn no_standby_after_a_failover_is_degraded_only_until_the_accepted_time() {
    let mut p = primary();
    p.sync_names_raw = String::new();
    p.sync_names = Ok(SyncNames::Empty);
    p.walsenders.clear();
    let obs = observe(p);
    let hour = std::time::Duration::from_secs(3600);
    let accepting = Policy {
        accept_no_standby_until: Some(obs.checked_at + hour),
        ..Policy::default()
    };
    let v = evaluate(&obs, &accepting);
    assert_eq!(v.level, Level::Degraded, "{:?}", codes(&v));
    assert_eq!(codes(&v), ["no-replica-accepted"]);
    let expired = Policy {
        accept_no_standby_until: Some(obs.checked_at - hour),
        ..Policy::default()
    };
    let v = evaluate(&obs, &expired);
    assert_eq!(v.level, Level::Unsafe);
    assert!(
        v.finding(Code::SyncNamesEmpty)
            .unwrap()
            .message
            .contains("ended")
    );
}

#[test]
fn an_acceptance_does_not_excuse_a_named_standby_that_is_missing() {
    let mut p = primary();
    p.walsenders.clear();
    let obs = observe(p);
    let accepting = Policy {
        accept_no_standby_until: Some(obs.checked_at + std::time::Duration::from_secs(60)),
        ..Policy::default()
    };
    // Names still set: commits wait for a standby that is not there.
    assert_eq!(evaluate(&obs, &accepting).level, Level::Unsafe);
}

#[test]
fn rewind_needs_wal_log_hints_or_checksums() {
    let mut p = primary();
    p.wal_log_hints = false;
    assert_verdict(&observe(p.clone()), Level::Safe, Code::RewindImpossible);
    p.data_checksums = true;
    assert_eq!(judge(&observe(p)).level, Level::Safe);
}

#[test]
fn a_standby_without_hot_standby_is_named_as_such() {
    let failure = ProbeFailure {
        kind: FailureKind::Unavailable,
        stage: "connect".into(),
        detail: "the database system is not accepting connections: Hot standby mode is \
                 disabled. (SQLSTATE 57P03)"
            .into(),
    };
    let obs = with_standby(observe(primary()), Err(failure));
    assert_verdict(&obs, Level::Unknown, Code::HotStandbyOff);
}

#[test]
fn unknown_when_sync_names_do_not_parse() {
    let mut p = primary();
    p.sync_names_raw = "FIRST x (s1)".into();
    p.sync_names = SyncNames::parse("FIRST x (s1)");
    assert_verdict(&observe(p), Level::Unknown, Code::SyncNamesInvalid);
}

#[test]
fn degraded_when_sync_names_accept_any_receiver() {
    let mut p = primary();
    p.sync_names_raw = "*".into();
    p.sync_names = SyncNames::parse("*");
    assert_verdict(&observe(p), Level::Degraded, Code::SyncNamesWildcard);
}

#[test]
fn unsafe_when_the_only_standby_is_gone() {
    let mut p = primary();
    p.walsenders.clear();
    p.slots[0].active = false;
    assert_verdict(&observe(p), Level::Unsafe, Code::SyncStandbysShort);
}

#[test]
fn unsafe_when_the_standby_is_attached_but_asynchronous() {
    let mut p = primary();
    p.walsenders[0].sync_state = Some("async".into());
    p.sync_names_raw = "other".into();
    p.sync_names = SyncNames::parse("other");
    let v = judge(&observe(p));
    assert_eq!(v.level, Level::Unsafe);
    let f = v.finding(Code::SyncStandbysShort).unwrap();
    assert!(f.message.contains("s1: not named"), "{}", f.message);
}

#[test]
fn unsafe_when_a_sync_standby_did_not_confirm_the_probe() {
    let mut p = primary();
    p.walsenders[0].reached_target = Some(false);
    assert_verdict(&observe(p), Level::Unsafe, Code::SyncStandbysShort);
}

#[test]
fn unsafe_when_first_2_has_one_of_two_standbys() {
    let mut p = primary();
    p.sync_names_raw = "FIRST 2 (s1, s2)".into();
    p.sync_names = SyncNames::parse(&p.sync_names_raw);
    assert_verdict(&observe(p), Level::Unsafe, Code::SyncStandbysShort);
}

#[test]
fn safe_when_any_2_has_both_standbys_in_quorum() {
    let mut p = primary();
    p.sync_names_raw = "ANY 2 (s1, s2)".into();
    p.sync_names = SyncNames::parse(&p.sync_names_raw);
    p.walsenders = vec![sender("s1", "quorum"), sender("s2", "quorum")];
    p.slots.clear();
    assert_eq!(judge(&observe(p.clone())).level, Level::Safe);
    p.walsenders.pop();
    assert_verdict(&observe(p), Level::Unsafe, Code::SyncStandbysShort);
}

#[test]
fn a_wal_receiver_that_is_no_standby_does_not_count() {
    let mut p = primary();
    p.sync_names_raw = "*".into();
    p.sync_names = SyncNames::parse("*");
    let mut receivewal = sender("pg_receivewal", "sync");
    receivewal.replay_lsn = None;
    p.walsenders = vec![receivewal];
    p.slots.clear();
    let v = judge(&observe(p));
    assert_eq!(v.level, Level::Unsafe);
    assert!(v.has(Code::SyncStandbysShort) && v.has(Code::SyncNamesWildcard));
}

#[test]
fn synchronous_commit_is_judged_as_lightningds_session_gets_it() {
    for (value, source, level, code) in [
        ("local", "user", Level::Unsafe, Code::SynchronousCommitWeak),
        (
            "off",
            "database",
            Level::Unsafe,
            Code::SynchronousCommitWeak,
        ),
        (
            "remote_write",
            "configuration file",
            Level::Degraded,
            Code::SynchronousCommitRemoteWrite,
        ),
        (
            "bogus",
            "client",
            Level::Unknown,
            Code::SynchronousCommitUnrecognised,
        ),
    ] {
        let mut p = primary();
        p.session.synchronous_commit = value.into();
        p.session.synchronous_commit_source = source.into();
        assert_verdict(&observe(p), level, code);
    }
    let mut p = primary();
    p.session.synchronous_commit = "remote_apply".into();
    assert_eq!(judge(&observe(p)).level, Level::Safe);
}

#[test]
fn a_role_level_override_gets_a_role_level_remedy() {
    let mut p = primary();
    p.session.synchronous_commit = "local".into();
    p.session.synchronous_commit_source = "user".into();
    let v = judge(&observe(p));
    let f = &v.findings[0];
    assert!(f.message.contains("ALTER ROLE lightningd"), "{}", f.message);
    assert!(
        f.remedy
            .contains("ALTER ROLE lightningd RESET synchronous_commit"),
        "{}",
        f.remedy
    );
}

#[test]
fn commit_probe_outcomes() {
    let cases = [
        (
            CommitProbe::Acknowledged {
                ms: 400.0,
                lsn: Lsn(1),
                released_waiting: false,
            },
            Level::Degraded,
            Code::CommitProbeSlow,
        ),
        (
            CommitProbe::Waiting {
                waited_ms: 1000.0,
                lsn: Lsn(1),
            },
            Level::Unsafe,
            Code::CommitProbeTimeout,
        ),
        (
            CommitProbe::AlreadyWaiting {
                waiting_ms: Some(30_000.0),
            },
            Level::Unsafe,
            Code::CommitProbeAlreadyWaiting,
        ),
        (
            CommitProbe::Failed { error: "x".into() },
            Level::Unknown,
            Code::CommitProbeFailed,
        ),
        (
            CommitProbe::PluginFault { error: "x".into() },
            Level::Unknown,
            Code::PluginFault,
        ),
    ];
    for (probe, level, code) in cases {
        let mut p = primary();
        p.commit_probe = probe;
        assert_verdict(&observe(p), level, code);
    }
}

#[test]
fn unsafe_when_backends_wait_for_the_standby_past_the_deadline() {
    let mut p = primary();
    p.syncrep_waiters = SyncRepWaiters {
        count: 2,
        longest_ms: Some(5_000.0),
    };
    assert_verdict(&observe(p.clone()), Level::Unsafe, Code::CommitsBlocked);
    // A commit waiting for less than the deadline is a commit in flight.
    p.syncrep_waiters.longest_ms = Some(3.0);
    assert_eq!(judge(&observe(p)).level, Level::Safe);
}

/// 17+ say why a slot was invalidated; 18's idle timeout leaves the WAL in place.
#[test]
fn a_lost_slot_names_the_cause_the_server_gives() {
    for (reason, says) in [
        (None, "lost WAL"),
        (Some("wal_removed"), "lost WAL"),
        (Some("idle_timeout"), "idle_replication_slot_timeout"),
        (
            Some("wal_level_insufficient"),
            "invalidated (wal_level_insufficient)",
        ),
    ] {
        let mut p = primary();
        p.slots[0].wal_status = Some("lost".into());
        p.slots[0].invalidation_reason = reason.map(String::from);
        let v = judge(&observe(p));
        let f = v
            .findings
            .iter()
            .find(|f| f.code == Code::SlotLost)
            .unwrap();
        assert!(f.message.contains(says), "{reason:?}: {}", f.message);
        assert_eq!(v.level, Level::Unsafe);
    }
}

#[test]
fn slot_states() {
    for (status, level, code) in [
        ("lost", Level::Unsafe, Code::SlotLost),
        ("unreserved", Level::Degraded, Code::SlotUnreserved),
    ] {
        let mut p = primary();
        p.slots[0].wal_status = Some(status.into());
        assert_verdict(&observe(p), level, code);
    }
    let mut p = primary();
    p.slots.push(Slot {
        name: "old".into(),
        active: false,
        active_pid: None,
        wal_status: Some("extended".into()),
        restart_lsn: None,
        invalidation_reason: None,
    });
    assert_verdict(&observe(p), Level::Degraded, Code::SlotInactive);
    let mut p = primary();
    p.max_slot_wal_keep_size_mb = -1;
    assert_verdict(&observe(p), Level::Safe, Code::SlotRetentionUnbounded);
}

/// The seed guide's pair: checksums off, wal_log_hints off, a slot without a WAL limit whose
/// standby streams. Every acknowledged commit is replicated: safe, with two pieces of advice
/// that do not change the level.
#[test]
fn a_default_pair_is_safe_with_advice() {
    let mut p = primary();
    p.wal_log_hints = false;
    p.data_checksums = false;
    p.max_slot_wal_keep_size_mb = -1;
    let v = judge(&observe(p));
    assert_eq!(v.level, Level::Safe, "findings: {:?}", codes(&v));
    assert_eq!(codes(&v), ["slot-retention-unbounded", "rewind-impossible"]);
    assert!(v.findings.iter().all(|f| f.severity == Severity::Advice));
    assert!(v.findings.iter().all(|f| !f.remedy.is_empty()));
    assert_eq!(v.storage_level(), Level::Safe);
}

/// A slot whose standby is gone, with unbounded retention: the primary's disk fills. That is
/// `slot-inactive` (degraded), which says the retention is unbounded.
#[test]
fn an_inactive_slot_with_unbounded_retention_is_degraded_and_says_why() {
    let mut p = primary();
    p.max_slot_wal_keep_size_mb = -1;
    p.slots[0].active = false;
    let v = judge(&observe(p));
    assert_eq!(v.level, Level::Degraded, "findings: {:?}", codes(&v));
    let f = v.finding(Code::SlotInactive).unwrap();
    assert!(
        f.message.contains("until the primary's disk is full"),
        "{}",
        f.message
    );
}

#[test]
fn only_a_current_archive_failure_counts() {
    let mut p = primary();
    let a = p.archiver.as_mut().unwrap();
    a.failed_count = 7; // old failures, since recovered
    assert_eq!(judge(&observe(p.clone())).level, Level::Safe);
    p.archiver.as_mut().unwrap().failing_now = true;
    assert_verdict(&observe(p), Level::Degraded, Code::ArchiveFailing);
}

#[test]
fn standby_side_findings() {
    let mut foreign = standby_facts();
    foreign.system_identifier = Some("1".into());
    let mut promoted = standby_facts();
    promoted.in_recovery = false;
    promoted.receiver = None;
    let mut not_streaming = standby_facts();
    not_streaming.receiver.as_mut().unwrap().status = Some("waiting".into());
    let mut other_tl = standby_facts();
    other_tl.timeline = Some(2);
    let mut paused = standby_facts();
    paused.replay_paused = Some(true);
    let mut hidden = standby_facts();
    hidden.system_identifier = None;
    for (facts, level, code) in [
        (foreign, Level::Unsafe, Code::StandbyForeign),
        (promoted, Level::Unsafe, Code::StandbyPromoted),
        (not_streaming, Level::Unsafe, Code::StandbyNotStreaming),
        (other_tl, Level::Unsafe, Code::StandbyTimelineMismatch),
        (paused, Level::Degraded, Code::StandbyReplayPaused),
        (hidden, Level::Unknown, Code::StandbyIdentityUnverified),
    ] {
        assert_verdict(&with_standby(observe(primary()), Ok(facts)), level, code);
    }
    assert_verdict(
        &with_standby(observe(primary()), Err(failure(FailureKind::Unreachable))),
        Level::Unknown,
        Code::StandbyUnreachable,
    );
}

/// A standby DSN that answers as a primary is a promotion (the self-fence's trigger) only on
/// evidence of another server; the primary itself behind that DSN is a DSN to fix.
#[test]
fn a_standby_dsn_answering_as_a_primary_by_behaviour() {
    let out_of_recovery = |started_us: i64, timeline: u32| {
        let mut s = standby_facts();
        s.in_recovery = false;
        s.receiver = None;
        s.replay_paused = None;
        s.postmaster_started_us = started_us;
        s.timeline = Some(timeline);
        s
    };
    let no_primary = Observation {
        wallet: WalletObservation::Postgres {
            target: "host=/tmp port=5432 user=lightningd".into(),
            primary: Err(failure(FailureKind::Timeout)),
        },
        ..observe(primary())
    };
    for (behaviour, obs, facts, code, not) in [
        (
            "another postmaster on a higher timeline: promoted",
            observe(primary()),
            out_of_recovery(PRIMARY_STARTED_US + 9, 2),
            Code::StandbyPromoted,
            Code::StandbyDsnIsPrimary,
        ),
        (
            "another postmaster on the same timeline (a copy started as primary): promoted",
            observe(primary()),
            out_of_recovery(PRIMARY_STARTED_US + 9, 1),
            Code::StandbyPromoted,
            Code::StandbyDsnIsPrimary,
        ),
        (
            "the primary's own postmaster and timeline: the DSN reaches the primary",
            observe(primary()),
            out_of_recovery(PRIMARY_STARTED_US, 1),
            Code::StandbyDsnIsPrimary,
            Code::StandbyPromoted,
        ),
        (
            "no primary facts to compare with: cannot tell",
            no_primary,
            out_of_recovery(PRIMARY_STARTED_US + 9, 2),
            Code::StandbyIdentityUnverified,
            Code::StandbyPromoted,
        ),
    ] {
        let v = judge(&with_standby(obs, Ok(facts)));
        assert!(v.has(code), "{behaviour}: {:?}", codes(&v));
        assert!(!v.has(not), "{behaviour}: {:?}", codes(&v));
    }
    let mut p = primary();
    p.timeline = Some(3);
    let v = judge(&with_standby(
        observe(p),
        Ok(out_of_recovery(PRIMARY_STARTED_US, 3)),
    ));
    let f = v
        .finding(Code::StandbyDsnIsPrimary)
        .expect("standby-dsn-is-primary");
    assert_eq!(f.severity, Severity::Unknown);
}

#[test]
fn unsafe_outranks_unknown_and_findings_come_worst_first() {
    let mut p = primary();
    p.session.synchronous_commit = "local".into();
    p.slots[0].wal_status = Some("unreserved".into());
    let obs = with_standby(observe(p), Err(failure(FailureKind::Timeout)));
    let v = judge(&obs);
    assert_eq!(v.level, Level::Unsafe);
    let levels: Vec<Severity> = v.findings.iter().map(|f| f.severity).collect();
    let mut sorted = levels.clone();
    sorted.sort_by_key(|l| std::cmp::Reverse(*l));
    assert_eq!(levels, sorted);
}

#[test]
fn exit_codes_follow_monitoring_plugins() {
    assert_eq!(
        [Level::Safe, Level::Degraded, Level::Unsafe, Level::Unknown].map(Level::exit_code),
        [0, 1, 2, 3]
    );
}

fn pinned(value: &str, source: &str) -> Option<PinnedCommit> {
    Some(PinnedCommit {
        value: value.into(),
        source: source.into(),
    })
}

#[test]
fn a_role_setting_weakened_after_init_requires_a_restart_but_does_not_reach_lightningd() {
    let mut p = primary();
    p.session.synchronous_commit = "local".into();
    p.session.synchronous_commit_source = "user".into();
    let mut obs = observe(p);
    obs.pinned_commit = pinned("on", "default");
    let v = judge(&obs);
    assert_eq!(v.level, Level::Degraded, "{:?}", codes(&v));
    assert!(v.has(Code::RestartRequired));
    assert!(
        !v.has(Code::SynchronousCommitWeak),
        "lightningd still runs with on"
    );
}

#[test]
fn a_server_setting_weakened_by_reload_reaches_the_running_lightningd() {
    let mut p = primary();
    p.session.synchronous_commit = "local".into();
    p.session.synchronous_commit_source = "configuration file".into();
    let mut obs = observe(p);
    obs.pinned_commit = pinned("on", "default");
    assert_verdict(&obs, Level::Unsafe, Code::SynchronousCommitWeak);
}

#[test]
fn a_weak_value_pinned_at_init_stays_unsafe_after_the_role_is_fixed() {
    let mut obs = observe(primary());
    obs.pinned_commit = pinned("local", "user");
    let v = judge(&obs);
    assert_verdict(&obs, Level::Unsafe, Code::SynchronousCommitWeak);
    assert!(
        !v.has(Code::RestartRequired),
        "the next start is stronger, not weaker"
    );
}

#[test]
fn the_monitoring_dsn_must_reach_the_wallets_cluster() {
    let mut p = primary();
    p.wallet_cluster = WalletCluster::Different {
        wallet: "1".into(),
        monitor: "2".into(),
    };
    assert_verdict(&observe(p), Level::Unsafe, Code::WalletClusterDifferent);
    let mut p = primary();
    p.wallet_cluster = WalletCluster::Unverifiable { why: "x".into() };
    assert_verdict(&observe(p), Level::Unknown, Code::WalletClusterUnverified);
    let mut p = primary();
    p.wallet_cluster = WalletCluster::Verified;
    assert_eq!(judge(&observe(p)).level, Level::Safe);
}

#[test]
fn no_lightningd_session_on_the_server_is_unknown() {
    let mut p = primary();
    p.lightningd_sessions = Some(0);
    assert_verdict(
        &observe(p.clone()),
        Level::Unknown,
        Code::LightningdSessionNotFound,
    );
    p.lightningd_sessions = Some(1);
    assert_eq!(judge(&observe(p)).level, Level::Safe);
}

#[test]
fn evidence_covers_a_name_only_when_one_standby_bears_it() {
    let p = primary();
    assert_eq!(crate::failover::covered_standbys(&p), ["s1"]);
    let mut twins = primary();
    let mut other = sender("s1", "potential");
    other.pid += 1;
    twins.walsenders.push(other);
    assert!(crate::failover::covered_standbys(&twins).is_empty());
    // Both covered under ANY 1 (s1): still a choice between two standbys.
    let mut any_twins = twins.clone();
    any_twins.sync_names_raw = "ANY 1 (s1)".into();
    any_twins.sync_names = SyncNames::parse(&any_twins.sync_names_raw);
    for w in &mut any_twins.walsenders {
        w.sync_state = Some("quorum".into());
    }
    assert!(crate::failover::covered_standbys(&any_twins).is_empty());
    // Two async receivers sharing the default name acknowledge nothing: s1 stays covered.
    let mut receivers = primary();
    for pid in [900, 901] {
        let mut w = sender("walreceiver", "async");
        w.pid = pid;
        receivers.walsenders.push(w);
    }
    assert_eq!(crate::failover::covered_standbys(&receivers), ["s1"]);
    let mut local = primary();
    local.session.synchronous_commit = "local".into();
    assert!(crate::failover::covered_standbys(&local).is_empty());
}

#[test]
fn evidence_covers_no_standby_that_postgres_may_replace_on_its_own() {
    let mut p = primary();
    p.sync_names_raw = "FIRST 1 (s1, s2)".into();
    p.sync_names = SyncNames::parse(&p.sync_names_raw);
    assert!(crate::failover::covered_standbys(&p).is_empty());
    p.sync_names_raw = "FIRST 2 (s1, s2)".into();
    p.sync_names = SyncNames::parse(&p.sync_names_raw);
    let mut s2 = sender("s2", "sync");
    s2.pid += 1;
    p.walsenders.push(s2);
    assert_eq!(crate::failover::covered_standbys(&p), ["s1", "s2"]);
}

/// `failover-check` names a condition by the code the status check gives it, so an operator
/// (and the catalogue) sees one name for one cause.
#[test]
fn failover_reasons_carry_the_code_the_status_check_gives() {
    let blocker_codes = |obs: &Observation| -> Vec<Code> {
        let a = crate::failover::evaluate(obs);
        let on_standbys = a.standbys.iter().flat_map(|s| s.reasons.iter());
        a.blockers
            .iter()
            .chain(on_standbys)
            .map(|r| r.code)
            .collect()
    };
    let mut empty = primary();
    empty.sync_names_raw = String::new();
    empty.sync_names = SyncNames::parse("");
    let mut weak = primary();
    weak.session.synchronous_commit = "local".into();
    let mut other = standby_facts();
    other.system_identifier = Some("1".into());
    let unreachable = Err(failure(FailureKind::Unreachable));
    let mut down = primary();
    down.walsenders.clear();
    let cases = [
        (observe(empty), Code::SyncNamesEmpty),
        (observe(weak), Code::SynchronousCommitWeak),
        (
            with_standby(observe(primary()), Ok(other)),
            Code::StandbyForeign,
        ),
        (
            with_standby(observe(down), unreachable),
            Code::StandbyUnreachable,
        ),
    ];
    for (obs, code) in cases {
        assert!(judge(&obs).has(code), "{code}: {:?}", codes(&judge(&obs)));
        assert!(
            blocker_codes(&obs).contains(&code),
            "{code}: {:?}",
            blocker_codes(&obs)
        );
    }
    let reasons = crate::failover::evaluate(&with_standby(observe(primary()), Ok(standby_facts())));
    assert!(reasons.ready, "{reasons:?}");
}

/// Every log line and report shows a finding and a failed probe the same way.
#[test]
fn findings_and_probe_failures_display_themselves() {
    let f = Finding::new(Code::SlotInactive, "slot s1 is idle", "start it");
    assert_eq!(f.severity, Severity::Degraded);
    assert_eq!(f.headline(), "[degraded] slot-inactive: slot s1 is idle");
    assert_eq!(
        f.to_string(),
        "[degraded] slot-inactive: slot s1 is idle — fix: start it"
    );
    let failed = failure(FailureKind::Timeout);
    assert_eq!(failed.to_string(), "connect: x");
    let as_error: &dyn std::error::Error = &failed;
    assert_eq!(as_error.to_string(), "connect: x");
}
