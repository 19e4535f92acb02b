//! The status document: the same JSON as the builder it replaced (kept here as the oracle),
//! read back into the same value, and strict about what it reads.

use serde_json::{Value, json};

use super::*;
use crate::facts::{
    CommitProbe, FailureKind, PinnedCommit, ProbeFailure, StandbyObservation, WalSender,
};
use crate::lsn::Lsn;
use crate::verdict::tests::{observe, primary, sender, standby_facts, with_standby};
use crate::verdict::{Level, SenderJudgement, evaluate};

// The hand-built JSON the document replaced, verbatim (issue 12, item 2).
fn status_json(obs: &Observation, verdict: &Verdict, policy: &Policy) -> Value {
    let primary = obs.primary();
    let mut standbys: Vec<Value> = primary
        .map(|p| {
            p.walsenders
                .iter()
                .map(|w| {
                    let judgement = verdict
                        .sync
                        .as_ref()
                        .and_then(|a| a.senders.iter().find(|s| s.pid == w.pid));
                    sender_json(w, judgement, obs.standby_named(&w.application_name))
                })
                .collect()
        })
        .unwrap_or_default();
    // Standbys given by DSN that do not appear among the primary's WAL senders.
    for s in &obs.standbys {
        let listed = primary.is_some_and(|p| {
            s.facts.as_ref().is_ok_and(|f| {
                p.walsenders
                    .iter()
                    .any(|w| w.application_name.eq_ignore_ascii_case(&f.walsender_name()))
            })
        });
        if !listed {
            standbys.push(json!({
                "name": s.facts.as_ref().map(|f| f.walsender_name()).ok(),
                "connected": false,
                "standby_side": standby_side_json(s),
            }));
        }
    }
    json!({
        "schema": SCHEMA_VERSION,
        "verdict": verdict.level,
        "findings": verdict.findings,
        "checked_at": rfc3339(obs.checked_at),
        "check_ms": obs.took_ms,
        "commit_probe_ms": primary.and_then(|p| p.commit_probe.ms()),
        "commit_probe": primary.map(|p| &p.commit_probe),
        "primary": primary_json(obs),
        "standbys": standbys,
        "sync": verdict.sync.as_ref().map(|a| json!({"required": a.required, "healthy": a.healthy})),
        "settings": primary.map(|p| json!({
            "synchronous_standby_names": p.sync_names_raw,
            "sync_requirement": p.sync_names.as_ref().ok(),
            "synchronous_commit": p.session.synchronous_commit,
            "synchronous_commit_source": p.session.synchronous_commit_source,
            "synchronous_commit_overrides": p.session.overrides,
            "archive_mode": p.archive_mode,
            "max_slot_wal_keep_size_mb": p.max_slot_wal_keep_size_mb,
            "wal_log_hints": p.wal_log_hints,
            "data_checksums": p.data_checksums,
        })),
        "slots": primary.map(|p| &p.slots),
        "archiver": primary.and_then(|p| p.archiver.as_ref()),
        "syncrep_waiters": primary.map(|p| &p.syncrep_waiters),
        "lightningd": obs.pinned_commit.as_ref().map(|pin| json!({
            "synchronous_commit": pin.value,
            "synchronous_commit_source": pin.source,
            "pinned": "at init",
        })),
        "policy": policy,
    })
}

fn primary_json(obs: &Observation) -> Value {
    match &obs.wallet {
        WalletObservation::NotPostgres { scheme } => json!({ "backend": scheme }),
        WalletObservation::Postgres { target, primary } => match primary {
            Err(f) => json!({ "dsn": target, "reachable": false, "error": f }),
            Ok(p) => json!({
                "dsn": target,
                "reachable": true,
                "server_version": p.server_version,
                "in_recovery": p.in_recovery,
                "system_identifier": p.system_identifier,
                "timeline": p.timeline,
                "postmaster_start": p.postmaster_start,
                "flush_lsn": p.flush_lsn,
                "role": p.session.role,
                "database": p.session.database,
                "can_read_stats": p.can_read_stats,
            }),
        },
    }
}

fn sender_json(
    w: &WalSender,
    judgement: Option<&SenderJudgement>,
    dsn: Option<&StandbyObservation>,
) -> Value {
    let mut v = serde_json::to_value(w).unwrap_or(Value::Null);
    v["name"] = json!(w.application_name);
    v["connected"] = json!(true);
    if let Some(j) = judgement {
        v["counted"] = json!(j.counted);
        v["why_not"] = json!(j.why_not);
    }
    if let Some(s) = dsn {
        v["standby_side"] = standby_side_json(s);
    }
    v
}

fn standby_side_json(s: &StandbyObservation) -> Value {
    match &s.facts {
        Ok(f) => {
            let mut v = serde_json::to_value(f).unwrap_or(Value::Null);
            v["dsn"] = json!(s.target);
            v["reachable"] = json!(true);
            v
        }
        Err(e) => json!({ "dsn": s.target, "reachable": false, "error": e }),
    }
}

fn samples() -> Vec<Observation> {
    let healthy = with_standby(observe(primary()), Ok(standby_facts()));
    let mut unlisted = standby_facts();
    unlisted.cluster_name = "s9".into();
    unlisted.receiver = None;
    let with_unlisted = with_standby(healthy.clone(), Ok(unlisted));
    let mut pinned = healthy.clone();
    pinned.pinned_commit = Some(PinnedCommit {
        value: "on".into(),
        source: "default".into(),
    });
    let mut probing = primary();
    probing.commit_probe = CommitProbe::Waiting {
        waited_ms: 1000.0,
        lsn: Lsn(0x3000100),
    };
    probing.walsenders.push(sender("s2", "potential"));
    probing.sync_names = SyncNames::parse("");
    probing.archiver = None;
    let failure = ProbeFailure {
        kind: FailureKind::Timeout,
        stage: "connect".into(),
        detail: "no answer".into(),
    };
    let unreachable = with_standby(
        Observation {
            wallet: WalletObservation::Postgres {
                target: "host=/tmp".into(),
                primary: Err(failure.clone()),
            },
            ..observe(primary())
        },
        Err(failure),
    );
    let sqlite = Observation {
        wallet: WalletObservation::NotPostgres {
            scheme: "sqlite3".into(),
        },
        ..observe(primary())
    };
    vec![
        healthy,
        with_unlisted,
        pinned,
        observe(probing),
        unreachable,
        sqlite,
    ]
}

fn policies() -> [Policy; 2] {
    let accepting = Policy {
        skip_probe_within: Some(std::time::Duration::from_millis(1500)),
        accept_no_standby_until: Some(std::time::SystemTime::UNIX_EPOCH),
        ..Policy::default()
    };
    [Policy::default(), accepting]
}

#[test]
fn the_document_serializes_to_the_json_the_report_always_had() {
    for policy in policies() {
        for obs in samples() {
            let v = evaluate(&obs, &policy);
            assert_eq!(
                StatusDocument::of(&obs, &v, &policy).to_json(),
                status_json(&obs, &v, &policy)
            );
        }
    }
}

/// A document with every field the plugin sets (for the tests of its readers).
pub(crate) fn plugin_document() -> StatusDocument {
    let obs = with_standby(observe(primary()), Ok(standby_facts()));
    let mut doc = StatusDocument::of(
        &obs,
        &evaluate(&obs, &Policy::default()),
        &Policy::default(),
    );
    doc.plugin = PluginPart {
        mode: Some(crate::action::Mode::Enforce),
        reported: Some(Level::Degraded),
        reported_for_ms: Some(1200),
        interval_ms: Some(1000),
        phase: Some(Phase::BeforeInit),
        before_init: Some(BeforeInit {
            waited_s: 60,
            message: "blocked".into(),
        }),
        report_age_ms: Some(3),
        written_at: Some("2026-11-26T12:00:00.123Z".into()),
        file_age_ms: Some(400),
    };
    doc
}

#[test]
fn a_written_document_reads_back_equal() {
    for policy in policies() {
        for obs in samples() {
            let doc = StatusDocument::of(&obs, &evaluate(&obs, &policy), &policy);
            let text = serde_json::to_string_pretty(&doc.to_json()).unwrap();
            assert_eq!(StatusDocument::from_json(&text).unwrap(), doc);
        }
    }
    let doc = plugin_document();
    let text = doc.to_json().to_string();
    assert_eq!(StatusDocument::from_json(&text).unwrap(), doc);
}

#[test]
fn the_plugin_fields_are_the_keys_they_always_were() {
    let v = plugin_document().to_json();
    assert_eq!(v["mode"], "enforce");
    assert_eq!(v["reported"], "degraded");
    assert_eq!(v["reported_for_ms"], 1200);
    assert_eq!(v["interval_ms"], 1000);
    assert_eq!(v["phase"], "before-init");
    assert_eq!(
        v["before_init"],
        json!({"waited_s": 60, "message": "blocked"})
    );
    assert_eq!(v["report_age_ms"], 3);
    assert_eq!(v["written_at"], "2026-11-26T12:00:00.123Z");
    assert_eq!(v["file_age_ms"], 400);
}

fn sample_json() -> Value {
    plugin_document().to_json()
}

#[test]
fn an_unknown_schema_is_an_error_that_says_so() {
    let mut v = sample_json();
    v["schema"] = json!(2);
    let e = StatusDocument::from_value(v).unwrap_err();
    assert_eq!(e, DocumentError::UnknownSchema(json!(2)));
    assert!(e.to_string().contains("schema 2"), "{e}");
    let mut v = sample_json();
    v.as_object_mut().unwrap().remove("schema");
    assert_eq!(
        StatusDocument::from_value(v).unwrap_err(),
        DocumentError::NoSchema
    );
}

#[test]
fn a_missing_field_is_an_error_that_names_it() {
    for key in [
        "verdict",
        "findings",
        "primary",
        "policy",
        "commit_probe_ms",
        "syncrep_waiters",
    ] {
        let mut v = sample_json();
        v.as_object_mut().unwrap().remove(key);
        let e = StatusDocument::from_value(v).unwrap_err().to_string();
        assert!(e.contains(key), "{key}: {e}");
    }
    let mut v = sample_json();
    v["standbys"][0].as_object_mut().unwrap().remove("pid");
    let e = StatusDocument::from_value(v).unwrap_err().to_string();
    assert!(e.contains("standbys[0]"), "{e}");
    let mut v = sample_json();
    v["reported"] = json!("fine");
    let e = StatusDocument::from_value(v).unwrap_err().to_string();
    assert!(e.contains("fine"), "{e}");
}
