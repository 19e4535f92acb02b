//! The status document: one type for what `status --json`, `replication-status`, the status
//! file, `status --from-file` and the metrics show. Written and read by the same code, so a
//! renamed field fails to compile (or to read, with the field's name), never silently
//! defaults.
//!
//! Serialized through `serde_json::Value` (`to_json`), so the keys come out sorted as they
//! always did.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::action::Mode;
use crate::facts::{
    Archiver, CommitProbe, Observation, ProbeFailure, SettingOverride, Slot, StandbyFacts,
    StandbyObservation, SyncRepWaiters, WalSender, WalletObservation,
};
use crate::level::Level;
use crate::lsn::Lsn;
use crate::policy::Policy;
use crate::syncnames::SyncNames;
use crate::timefmt::rfc3339;
use crate::verdict::{Finding, SenderJudgement, Verdict};

/// Version of the document's layout; bumped when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// A key that is always there, possibly `null`: missing, it is an error, not `None`.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Option::deserialize(d)
}

/// One check's report, and what the plugin adds around it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusDocument {
    pub schema: u32,
    /// This check's level.
    pub verdict: Level,
    pub findings: Vec<Finding>,
    pub checked_at: String,
    pub check_ms: f64,
    #[serde(deserialize_with = "nullable")]
    pub commit_probe_ms: Option<f64>,
    #[serde(deserialize_with = "nullable")]
    pub commit_probe: Option<CommitProbe>,
    pub primary: PrimaryPart,
    pub standbys: Vec<StandbyEntry>,
    #[serde(deserialize_with = "nullable")]
    pub sync: Option<SyncPart>,
    #[serde(deserialize_with = "nullable")]
    pub settings: Option<SettingsPart>,
    #[serde(deserialize_with = "nullable")]
    pub slots: Option<Vec<Slot>>,
    #[serde(deserialize_with = "nullable")]
    pub archiver: Option<Archiver>,
    #[serde(deserialize_with = "nullable")]
    pub syncrep_waiters: Option<SyncRepWaiters>,
    #[serde(deserialize_with = "nullable")]
    pub lightningd: Option<LightningdPart>,
    pub policy: PolicyPart,
    #[serde(flatten)]
    pub plugin: PluginPart,
}

/// What the plugin adds (absent from the CLI's own report): each key only when set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PluginPart {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// The debounced level the gate acts on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<Level>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_for_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before_init: Option<BeforeInit>,
    /// How old the report was when a method served it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_age_ms: Option<u64>,
    /// Set by the status file's writer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_at: Option<String>,
    /// Set by `status --from-file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_age_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// lightningd has not sent `init` yet (`plugin::preinit`).
    BeforeInit,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BeforeInit {
    pub waited_s: u64,
    pub message: String,
}

/// The wallet's server: reached, not reached, or not PostgreSQL at all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PrimaryPart {
    // Untagged: tried in this order, the one with the most required keys first.
    Reached(Box<ReachedPrimary>),
    Unreachable {
        dsn: String,
        reachable: bool,
        error: ProbeFailure,
    },
    NotPostgres {
        backend: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReachedPrimary {
    pub dsn: String,
    pub reachable: bool,
    pub server_version: String,
    pub in_recovery: bool,
    #[serde(deserialize_with = "nullable")]
    pub system_identifier: Option<String>,
    #[serde(deserialize_with = "nullable")]
    pub timeline: Option<u32>,
    pub postmaster_start: String,
    #[serde(deserialize_with = "nullable")]
    pub flush_lsn: Option<Lsn>,
    pub role: String,
    pub database: String,
    pub can_read_stats: bool,
}

impl PrimaryPart {
    pub fn flush_lsn(&self) -> Option<Lsn> {
        match self {
            PrimaryPart::Reached(p) => p.flush_lsn,
            _ => None,
        }
    }
}

/// A standby: one of the primary's WAL senders (`connected`), or a standby given by DSN
/// that is not among them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StandbyEntry {
    #[serde(deserialize_with = "nullable")]
    pub name: Option<String>,
    pub connected: bool,
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<WalSender>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counted: Option<bool>,
    /// Present (possibly `null`) when the sender was judged.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "present_or_absent"
    )]
    pub why_not: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_side: Option<StandbySide>,
}

/// `Some(None)` is a `null` that is there, `None` a key that is not.
mod present_or_absent {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Option<String>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().and_then(Option::as_ref).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<String>>, D::Error> {
        Option::<String>::deserialize(d).map(Some)
    }
}

/// The standby as seen through its own DSN.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StandbySide {
    Reached {
        #[serde(flatten)]
        facts: Box<StandbyFacts>,
        dsn: String,
        reachable: bool,
    },
    Unreachable {
        dsn: String,
        reachable: bool,
        error: ProbeFailure,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyncPart {
    pub required: u32,
    pub healthy: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SettingsPart {
    pub synchronous_standby_names: String,
    #[serde(deserialize_with = "nullable")]
    pub sync_requirement: Option<SyncNames>,
    pub synchronous_commit: String,
    pub synchronous_commit_source: String,
    pub synchronous_commit_overrides: Vec<SettingOverride>,
    pub archive_mode: String,
    pub max_slot_wal_keep_size_mb: i64,
    pub wal_log_hints: bool,
    pub data_checksums: bool,
}

/// lightningd's `synchronous_commit` as the plugin pinned it at `init`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LightningdPart {
    pub synchronous_commit: String,
    pub synchronous_commit_source: String,
    pub pinned: String,
}

/// The thresholds, as `Policy` serializes them (milliseconds, RFC 3339).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyPart {
    pub query_timeout: u64,
    pub probe_deadline: u64,
    pub probe_slow: u64,
    #[serde(deserialize_with = "nullable")]
    pub skip_probe_within: Option<u64>,
    #[serde(deserialize_with = "nullable")]
    pub accept_no_standby_until: Option<String>,
}

impl From<&Policy> for PolicyPart {
    fn from(p: &Policy) -> Self {
        PolicyPart {
            query_timeout: p.query_timeout.as_millis() as u64,
            probe_deadline: p.probe_deadline.as_millis() as u64,
            probe_slow: p.probe_slow.as_millis() as u64,
            skip_probe_within: p.skip_probe_within.map(|d| d.as_millis() as u64),
            accept_no_standby_until: p.accept_no_standby_until.map(rfc3339),
        }
    }
}

/// Why a document could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum DocumentError {
    NotJson(String),
    NoSchema,
    UnknownSchema(Value),
    Invalid(String),
}

impl std::fmt::Display for DocumentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DocumentError::NotJson(e) => write!(f, "not JSON: {e}"),
            DocumentError::NoSchema => write!(f, "no \"schema\" field: not a status document"),
            DocumentError::UnknownSchema(v) => write!(
                f,
                "schema {v} is not one this version reads (it reads schema {SCHEMA_VERSION})"
            ),
            DocumentError::Invalid(e) => write!(f, "not a schema {SCHEMA_VERSION} document: {e}"),
        }
    }
}

impl std::error::Error for DocumentError {}

impl StatusDocument {
    /// The report of one check.
    pub fn of(obs: &Observation, verdict: &Verdict, policy: &Policy) -> StatusDocument {
        let primary = obs.primary();
        StatusDocument {
            schema: SCHEMA_VERSION,
            verdict: verdict.level,
            findings: verdict.findings.clone(),
            checked_at: rfc3339(obs.checked_at),
            check_ms: obs.took_ms,
            commit_probe_ms: primary.and_then(|p| p.commit_probe.ms()),
            commit_probe: primary.map(|p| p.commit_probe.clone()),
            primary: PrimaryPart::of(obs),
            standbys: standby_entries(obs, verdict),
            sync: verdict.sync.as_ref().map(|a| SyncPart {
                required: a.required,
                healthy: a.healthy,
            }),
            settings: primary.map(|p| SettingsPart {
                synchronous_standby_names: p.sync_names_raw.clone(),
                sync_requirement: p.sync_names.clone().ok(),
                synchronous_commit: p.session.synchronous_commit.clone(),
                synchronous_commit_source: p.session.synchronous_commit_source.clone(),
                synchronous_commit_overrides: p.session.overrides.clone(),
                archive_mode: p.archive_mode.clone(),
                max_slot_wal_keep_size_mb: p.max_slot_wal_keep_size_mb,
                wal_log_hints: p.wal_log_hints,
                data_checksums: p.data_checksums,
            }),
            slots: primary.map(|p| p.slots.clone()),
            archiver: primary.and_then(|p| p.archiver.clone()),
            syncrep_waiters: primary.map(|p| p.syncrep_waiters.clone()),
            lightningd: obs.pinned_commit.as_ref().map(|pin| LightningdPart {
                synchronous_commit: pin.value.clone(),
                synchronous_commit_source: pin.source.clone(),
                pinned: "at init".into(),
            }),
            policy: PolicyPart::from(policy),
            plugin: PluginPart::default(),
        }
    }

    /// The JSON every output shows (keys sorted).
    pub fn to_json(&self) -> Value {
        // Only strings, numbers and maps with string keys: cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Reads a document: its schema first, then every field (the error names the one that
    /// is missing or wrong).
    pub fn from_json(text: &str) -> Result<StatusDocument, DocumentError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| DocumentError::NotJson(e.to_string()))?;
        StatusDocument::from_value(v)
    }

    pub fn from_value(v: Value) -> Result<StatusDocument, DocumentError> {
        match v.get("schema") {
            None => return Err(DocumentError::NoSchema),
            Some(s) if s.as_u64() != Some(u64::from(SCHEMA_VERSION)) => {
                return Err(DocumentError::UnknownSchema(s.clone()));
            }
            Some(_) => {}
        }
        let doc: StatusDocument =
            serde_json::from_value(v).map_err(|e| DocumentError::Invalid(e.to_string()))?;
        // A flattened part reads as absent when a field of it is missing: say so instead.
        if let Some(i) = doc
            .standbys
            .iter()
            .position(|s| s.connected != s.sender.is_some())
        {
            return Err(DocumentError::Invalid(format!(
                "standbys[{i}]: a connected standby needs its WAL sender's fields (pid, \
                 application_name, …), a standby not connected has none"
            )));
        }
        Ok(doc)
    }

    /// The level the gate acts on: the debounced one when the plugin set it.
    pub fn reported_level(&self) -> Level {
        self.plugin.reported.unwrap_or(self.verdict)
    }
}

impl PrimaryPart {
    pub(crate) fn of(obs: &Observation) -> PrimaryPart {
        match &obs.wallet {
            WalletObservation::NotPostgres { scheme } => PrimaryPart::NotPostgres {
                backend: scheme.clone(),
            },
            WalletObservation::Postgres { target, primary } => match primary {
                Err(f) => PrimaryPart::Unreachable {
                    dsn: target.clone(),
                    reachable: false,
                    error: f.clone(),
                },
                Ok(p) => PrimaryPart::Reached(Box::new(ReachedPrimary {
                    dsn: target.clone(),
                    reachable: true,
                    server_version: p.server_version.clone(),
                    in_recovery: p.in_recovery,
                    system_identifier: p.system_identifier.clone(),
                    timeline: p.timeline,
                    postmaster_start: p.postmaster_start.clone(),
                    flush_lsn: p.flush_lsn,
                    role: p.session.role.clone(),
                    database: p.session.database.clone(),
                    can_read_stats: p.can_read_stats,
                })),
            },
        }
    }
}

/// The primary's WAL senders, then the standbys given by DSN that are not among them.
fn standby_entries(obs: &Observation, verdict: &Verdict) -> Vec<StandbyEntry> {
    let primary = obs.primary();
    let mut entries: Vec<StandbyEntry> = primary
        .map(|p| {
            p.walsenders
                .iter()
                .map(|w| {
                    StandbyEntry::connected(
                        w,
                        verdict.sender_judgement(w.pid),
                        obs.standby_named(&w.application_name),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    for s in &obs.standbys {
        let listed = primary.is_some_and(|p| {
            s.facts
                .as_ref()
                .is_ok_and(|f| p.has_sender_named(&f.walsender_name()))
        });
        if !listed {
            entries.push(StandbyEntry {
                name: s.facts.as_ref().map(|f| f.walsender_name()).ok(),
                connected: false,
                sender: None,
                counted: None,
                why_not: None,
                standby_side: Some(StandbySide::of(s)),
            });
        }
    }
    entries
}

impl StandbyEntry {
    fn connected(
        w: &WalSender,
        judgement: Option<&SenderJudgement>,
        dsn: Option<&StandbyObservation>,
    ) -> StandbyEntry {
        StandbyEntry {
            name: Some(w.application_name.clone()),
            connected: true,
            // The document holds what it shows: `reply_time_us` is never serialized.
            sender: Some(WalSender {
                reply_time_us: None,
                ..w.clone()
            }),
            counted: judgement.map(|j| j.counted),
            why_not: judgement.map(|j| j.why_not.clone()),
            standby_side: dsn.map(StandbySide::of),
        }
    }
}

impl StandbySide {
    fn of(s: &StandbyObservation) -> StandbySide {
        match &s.facts {
            Ok(f) => StandbySide::Reached {
                facts: Box::new(f.clone()),
                dsn: s.target.clone(),
                reachable: true,
            },
            Err(e) => StandbySide::Unreachable {
                dsn: s.target.clone(),
                reachable: false,
                error: e.clone(),
            },
        }
    }
}
