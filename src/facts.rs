//! Plain data that the probe observes and the verdict judges. No I/O, no opinions.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::level::Level;
use crate::lsn::Lsn;
use crate::syncnames::SyncNames;

/// Everything one check saw.
#[derive(Clone, Debug)]
pub struct Observation {
    pub checked_at: SystemTime,
    /// Wall time the whole check took.
    pub took_ms: f64,
    pub wallet: WalletObservation,
    /// One entry per standby DSN the operator gave.
    pub standbys: Vec<StandbyObservation>,
    /// lightningd's `synchronous_commit` as the plugin pinned it at `init` (plugin mode).
    pub pinned_commit: Option<PinnedCommit>,
}

/// What lightningd's own session runs with: read at `init` on a session opened with the
/// wallet DSN. Role and database settings apply when a session starts, so later changes of
/// those reach lightningd only at its next start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PinnedCommit {
    pub value: String,
    pub source: String,
}

// One observation per check: the size difference between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum WalletObservation {
    /// The wallet is not in PostgreSQL at all.
    NotPostgres { scheme: String },
    Postgres {
        /// The DSN as displayed (no password).
        target: String,
        primary: Result<PrimaryFacts, ProbeFailure>,
    },
}

/// Why a server could not be observed. `kind` drives the verdict; `detail` is for humans.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeFailure {
    pub kind: FailureKind,
    /// What was being done: "connect", "replication", …
    pub stage: String,
    pub detail: String,
}

/// `stage: detail`, as every message about a failed probe shows it.
impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.stage, self.detail)
    }
}

impl std::error::Error for ProbeFailure {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// No answer within the deadline (server hung, link cut).
    Timeout,
    /// The server refused the credentials.
    Auth,
    /// Nothing to connect to, or the connection broke.
    Unreachable,
    /// The server is starting, stopping or out of connections.
    Unavailable,
    /// The role may not run a query we need.
    Privilege,
    /// Anything else the server said.
    Query,
    /// The plugin's own side failed — out of file descriptors or memory, a task of ours that
    /// died: nothing was learnt about the server.
    PluginFault,
}

/// The wallet's server, seen through the wallet DSN.
#[derive(Clone, Debug, Serialize)]
pub struct PrimaryFacts {
    pub server_version_num: i32,
    pub server_version: String,
    pub in_recovery: bool,
    /// `None` when the role may not read `pg_control_system()`.
    pub system_identifier: Option<String>,
    pub timeline: Option<u32>,
    pub postmaster_start: String,
    /// `pg_postmaster_start_time()` in µs since the epoch (a number: its text depends on the
    /// session's TimeZone). With the timeline, what tells this server from another.
    pub postmaster_started_us: i64,
    /// `pg_current_wal_flush_lsn()` when the facts were taken (None on a standby).
    pub flush_lsn: Option<Lsn>,
    /// The role sees `pg_stat_replication`'s details (superuser or `pg_read_all_stats`).
    pub can_read_stats: bool,
    pub session: SessionFacts,
    pub sync_names_raw: String,
    /// Parsed `synchronous_standby_names`; the error names what PostgreSQL would not accept.
    pub sync_names: Result<SyncNames, String>,
    pub commit_probe: CommitProbe,
    pub walsenders: Vec<WalSender>,
    pub slots: Vec<Slot>,
    /// `max_slot_wal_keep_size` in MB; -1 is unbounded.
    pub max_slot_wal_keep_size_mb: i64,
    /// `pg_rewind` needs one of these to turn an old primary into a standby of the new one.
    pub wal_log_hints: bool,
    pub data_checksums: bool,
    pub archive_mode: String,
    pub archiver: Option<Archiver>,
    pub syncrep_waiters: SyncRepWaiters,
    /// When the monitoring DSN is not the wallet DSN: does the wallet DSN reach this cluster?
    pub wallet_cluster: WalletCluster,
    /// Client sessions of the wallet's role on the wallet's database, ours excepted; `None`
    /// when not asked (outside the plugin no lightningd runs).
    pub lightningd_sessions: Option<i64>,
    /// What shows an HA manager on this server (`crate::patroni` judges it).
    pub ha_signs: ServerSigns,
}

/// Whether the wallet DSN reaches the cluster the checks read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum WalletCluster {
    /// The checks run through the wallet DSN itself.
    SameDsn,
    /// Another DSN; both report this system identifier.
    Verified,
    Different {
        wallet: String,
        monitor: String,
    },
    Unverifiable {
        why: String,
    },
}

/// What a session opened with the wallet DSN gets: lightningd's own durability.
#[derive(Clone, Debug, Serialize)]
pub struct SessionFacts {
    pub role: String,
    pub database: String,
    /// `SHOW synchronous_commit` on that session.
    pub synchronous_commit: String,
    /// `pg_settings.source` of it: default, configuration file, database, user, client, …
    pub synchronous_commit_source: String,
    /// `ALTER ROLE/DATABASE … SET synchronous_commit` entries that apply to this role/database.
    pub overrides: Vec<SettingOverride>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SettingOverride {
    /// `None`: every database.
    pub database: Option<String>,
    /// `None`: every role.
    pub role: Option<String>,
    pub value: String,
}

/// The test commit that measures the synchronous round trip.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum CommitProbe {
    /// Not attempted (failover-check writes nothing).
    NotRun,
    /// Committed and acknowledged by the synchronous standbys.
    Acknowledged {
        ms: f64,
        lsn: Lsn,
        /// An earlier probe (and any other commit) waited only for a reply the standbys owed
        /// after `synchronous_standby_names` changed; one small write released them first.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        released_waiting: bool,
    },
    /// Still waiting at the deadline; left waiting, never cancelled.
    Waiting {
        waited_ms: f64,
        lsn: Lsn,
    },
    /// Not needed: every synchronous standby that counts replied within `within_ms`, and no
    /// commit waits (write-free liveness evidence).
    Skipped {
        oldest_reply_ms: f64,
        within_ms: f64,
    },
    /// An earlier probe (from any process) is still waiting; that wait is the answer.
    AlreadyWaiting {
        waiting_ms: Option<f64>,
    },
    Failed {
        error: String,
    },
    /// Not run: the plugin's own side failed (`FailureKind::PluginFault`).
    PluginFault {
        error: String,
    },
}

impl PrimaryFacts {
    /// Whether a WAL sender streams under `name` (matched as PostgreSQL matches names).
    pub fn has_sender_named(&self, name: &str) -> bool {
        self.walsenders
            .iter()
            .any(|w| w.application_name.eq_ignore_ascii_case(name))
    }
}

impl CommitProbe {
    pub fn ms(&self) -> Option<f64> {
        match self {
            CommitProbe::Acknowledged { ms, .. } => Some(*ms),
            _ => None,
        }
    }
}

/// One row of `pg_stat_replication`. Columns the role may not see are `None`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WalSender {
    pub pid: i32,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: Option<String>,
    pub sync_state: Option<String>,
    pub sync_priority: Option<i32>,
    pub sent_lsn: Option<Lsn>,
    pub write_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    /// NULL a few seconds after the last WAL write on a healthy pair: idle, not unknown.
    pub write_lag_ms: Option<f64>,
    pub flush_lag_ms: Option<f64>,
    pub replay_lag_ms: Option<f64>,
    /// The primary's clock minus the standby's `reply_time`: off by any difference between
    /// the two clocks (negative when the standby's runs ahead). Freshness is judged with
    /// this process's own clock too (`probe::freshness`).
    pub reply_age_ms: Option<f64>,
    /// `reply_time` itself (µs since the epoch, the standby's clock): tells a new reply from
    /// one seen at the previous check.
    #[serde(skip)]
    pub reply_time_us: Option<i64>,
    /// Its flush position reached the position the check waited for: the commit probe's WAL
    /// (`status`), or the primary's flush position when the check began (`failover-check`).
    /// `None` when the check waited for nothing.
    pub reached_target: Option<bool>,
}

impl WalSender {
    pub fn is_streaming(&self) -> bool {
        self.state.as_deref() == Some("streaming")
    }

    pub fn is_synchronous(&self) -> bool {
        matches!(self.sync_state.as_deref(), Some("sync") | Some("quorum"))
    }

    /// A standby reports the position it replayed; `pg_receivewal` and other WAL receivers
    /// only store WAL, so they never do.
    pub fn reports_replay(&self) -> bool {
        self.replay_lsn.is_some()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Slot {
    pub name: String,
    pub active: bool,
    pub active_pid: Option<i32>,
    /// reserved, extended, unreserved, lost (NULL before the slot was first used).
    pub wal_status: Option<String>,
    pub restart_lsn: Option<Lsn>,
    /// Why the slot was invalidated (17+: `wal_removed`, 18+: `idle_timeout`…); `None` when
    /// it was not, or the server is older than 17 and does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalidation_reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Archiver {
    pub archived_count: i64,
    pub failed_count: i64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<String>,
    pub last_archived_time: Option<String>,
    /// The last attempt failed (a failure newer than the last success).
    pub failing_now: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncRepWaiters {
    /// Backends other than our probes waiting for the synchronous standby.
    pub count: i64,
    pub longest_ms: Option<f64>,
}

/// A standby seen through the DSN the operator gave for it.
#[derive(Clone, Debug)]
pub struct StandbyObservation {
    pub target: String,
    pub facts: Result<StandbyFacts, ProbeFailure>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StandbyFacts {
    pub server_version_num: i32,
    pub in_recovery: bool,
    pub system_identifier: Option<String>,
    /// `application_name` in its `primary_conninfo`, read when the receiver is not running
    /// (superuser or `pg_read_all_settings`).
    pub configured_name: Option<String>,
    pub cluster_name: String,
    /// `pg_postmaster_start_time()` in µs since the epoch: equal to the primary's, it is the
    /// primary itself (a host list, VIP or pooler behind the standby DSN).
    pub postmaster_started_us: i64,
    /// The timeline it receives (standby; from its control file when not receiving) or writes
    /// (if it answers as a primary).
    pub timeline: Option<u32>,
    pub receiver: Option<WalReceiver>,
    pub replay_paused: Option<bool>,
    pub receive_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    /// Where it streams (or last streamed) from: the receiver's sender while it runs, else
    /// the hosts and ports of its `primary_conninfo`. Empty: cannot tell.
    pub upstream: Vec<Upstream>,
}

/// A server address as libpq reads it: a host name, an IP address, or a socket directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "host={} port={}", self.host, self.port)
    }
}

impl StandbyFacts {
    /// The name it announces to the primary (`application_name` in `primary_conninfo`, else
    /// `cluster_name`, else PostgreSQL's default `walreceiver`).
    pub fn walsender_name(&self) -> String {
        self.receiver
            .as_ref()
            .and_then(|r| r.application_name.clone())
            .or_else(|| self.configured_name.clone())
            .or_else(|| (!self.cluster_name.is_empty()).then(|| self.cluster_name.clone()))
            .unwrap_or_else(|| "walreceiver".to_string())
    }
}

/// `pg_stat_wal_receiver`, from the standby's side.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WalReceiver {
    pub status: Option<String>,
    pub received_tli: Option<u32>,
    pub last_msg_age_ms: Option<f64>,
    pub flushed_lsn: Option<Lsn>,
    pub slot_name: Option<String>,
    pub application_name: Option<String>,
}

impl Observation {
    /// The primary's facts, when it was reached.
    pub fn primary(&self) -> Option<&PrimaryFacts> {
        match &self.wallet {
            WalletObservation::Postgres { primary: Ok(p), .. } => Some(p),
            _ => None,
        }
    }

    /// The standby (given by DSN) that connects to the primary as `application_name`.
    pub fn standby_named(&self, application_name: &str) -> Option<&StandbyObservation> {
        self.standbys.iter().find(|s| {
            s.facts
                .as_ref()
                .is_ok_and(|f| f.walsender_name().eq_ignore_ascii_case(application_name))
        })
    }
}

// What `replguard.evidence` holds (`crate::evidence` decides what to write and what a row
// proves; `probe::evidence` reads and writes it).

/// What the monitor records about one check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    pub level: Level,
    pub codes: Vec<String>,
    /// The standbys every acknowledged commit included, and will include until the
    /// configuration changes (`failover::covered_standbys`).
    pub covered: Vec<String>,
    /// `synchronous_standby_names` as the primary had it: whether a row can speak for later
    /// commits depends on it (`SyncRequirement::membership_is_fixed`).
    pub sync_names: Option<String>,
    pub timeline: Option<u32>,
    pub system_identifier: Option<String>,
}

/// A row as read back (on the primary, or on the standby after it replicated).
#[derive(Clone, Debug, Serialize)]
pub struct Recorded {
    pub id: i64,
    pub recorded_at: String,
    /// Seconds between the row and the moment it was read.
    pub age_s: f64,
    pub record: Record,
    /// The primary's flush position when the row was written.
    pub flush_lsn: Option<Lsn>,
    pub source: String,
    /// The table's owner: its only legitimate writer, lightningd's wallet role.
    pub owner: Option<String>,
    /// The owner of its schema (who could drop and recreate the table).
    pub schema_owner: Option<String>,
    /// Other roles that may change the table (PUBLIC included); none, or no row is trusted.
    pub other_writers: Vec<String>,
    /// A trigger or rule may rewrite what is inserted: no row is trusted.
    pub rewritten: bool,
    /// The table and its schema belong to the role that owns lightningd's own tables (or,
    /// without them, the database): else no row is trusted.
    pub owned_by_the_wallets_role: bool,
    /// That role, for the operator.
    pub wallets_role: Option<String>,
}

/// Whether a change is worth a row: the level, the findings, or the covered standbys moved.
/// Unchanged checks write nothing (an idle node must not produce WAL: DESIGN §2).
pub fn worth_recording(last: Option<&Record>, now: &Record) -> bool {
    last != Some(now)
}

/// Where the primary's effective `synchronous_standby_names` comes from (`pg_settings`), and
/// whether Patroni's sessions or pg_auto_failover's settings file are on the server: read on
/// the primary's session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerSigns {
    /// `pg_settings.source` (`configuration file`, `command line`…).
    pub names_source: String,
    /// `pg_settings.sourcefile`; `None` when the role may not see it (no
    /// `pg_read_all_settings`) or the value is not from a file.
    pub names_sourcefile: Option<String>,
    /// Client sessions whose `application_name` starts with `Patroni`.
    pub patroni_sessions: i64,
    /// Settings whose `pg_settings.sourcefile` is pg_auto_failover's
    /// `postgresql-auto-failover.conf` (pg_autoctl includes it from `postgresql.conf`): it
    /// stays while pg_autoctl empties the names, where the keeper's short sessions (no
    /// `application_name`) show nothing. 0 too when the role may not see `sourcefile`.
    pub autofailover_settings: i64,
    /// A standby's `primary_slot_name`, when set: pg_autoctl names it
    /// `pgautofailover_standby_<id>`, and any role may read it (a role that can promote need
    /// not see `sourcefile`).
    pub primary_slot_name: Option<String>,
}
