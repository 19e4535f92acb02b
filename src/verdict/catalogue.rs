//! The finding catalogue: every code cln-replguard reports, declared once with the level it
//! gives, whether the guard alarms on it at once, and what it means. `Code`, its string form
//! (serde, `as_str`), the guard's alarm-at-once decision and the README's findings table all
//! come from here; a test fails when the README table and this catalogue differ.
//!
//! To add a code: one line here (the README test then tells you the row to paste), a rule
//! in `rules.rs` that produces it, and its test.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Severity;

/// How fast the runtime guard turns a finding into a reported not-safe level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alarm {
    /// Two bad checks in a row: one can be timing noise.
    Debounced,
    /// One check: the test commit is not being acknowledged, or the configuration itself says
    /// commits are not replicated (a setting read back is a fact, not timing noise, so waiting
    /// for a second check only delays the alarm).
    AtOnce,
}

/// One code's row of the catalogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The stable string operators and alerting match on.
    pub id: &'static str,
    /// The level a finding with this code gives, or `Advice`: none.
    pub severity: Severity,
    pub alarm: Alarm,
    /// One line, as in the README's findings table.
    pub meaning: &'static str,
}

/// Declares `Code` and its entries from one list: `Variant = "id", Level, Alarm, "meaning";`.
macro_rules! catalogue {
    ($($variant:ident = $id:literal, $severity:ident, $alarm:ident, $meaning:literal;)*) => {
        /// Stable finding codes: operators and alerting match on these strings.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Code {
            $(#[doc = $meaning] $variant,)*
        }

        impl Code {
            /// Every code, in the catalogue's (and the README table's) order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            pub fn entry(self) -> Entry {
                match self {
                    $(Code::$variant => Entry {
                        id: $id,
                        severity: Severity::$severity,
                        alarm: Alarm::$alarm,
                        meaning: $meaning,
                    },)*
                }
            }
        }
    };
}

catalogue! {
    NotPostgres = "not-postgres", Unsafe, AtOnce,
        "the wallet is not in PostgreSQL (`sqlite3://…`)";
    AuthFailed = "auth-failed", Unknown, Debounced,
        "the server refused the wallet DSN's credentials";
    PrimaryUnreachable = "primary-unreachable", Unknown, Debounced,
        "nothing listening where the DSN points, or the connection broke";
    PrimaryTimeout = "primary-timeout", Unknown, Debounced,
        "no answer within `--query-timeout-ms` (server hung, link cut)";
    PrimaryUnavailable = "primary-unavailable", Unknown, Debounced,
        "starting up, shutting down, out of connections";
    QueryFailed = "query-failed", Unknown, Debounced,
        "a query failed (or PostgreSQL older than 13)";
    WalletOnStandby = "wallet-on-standby", Unsafe, AtOnce,
        "the wallet DSN points to a server in recovery";
    PrivilegesInsufficient = "privileges-insufficient", Unknown, Debounced,
        "the role cannot see `pg_stat_replication`'s details; fix: \
         `GRANT pg_monitor TO <role>`";
    SyncNamesEmpty = "sync-names-empty", Unsafe, AtOnce,
        "`synchronous_standby_names` is empty (an HA manager may have emptied it)";
    NoReplicaAccepted = "no-replica-accepted", Degraded, Debounced,
        "`synchronous_standby_names` is empty while `replguard-accept-no-standby-until` \
         accepts running without a standby (after a failover, until that time)";
    SyncNamesInvalid = "sync-names-invalid", Unknown, Debounced,
        "`synchronous_standby_names` does not parse";
    SyncNamesWildcard = "sync-names-wildcard", Degraded, Debounced,
        "`*`: any WAL receiver's acknowledgement counts";
    SyncStandbysShort = "sync-standbys-short", Unsafe, Debounced,
        "fewer healthy synchronous standbys than `FIRST n` / `ANY n` require (see below)";
    SynchronousCommitWeak = "synchronous-commit-weak", Unsafe, AtOnce,
        "lightningd's session gets `synchronous_commit` `local` or `off`";
    SynchronousCommitRemoteWrite = "synchronous-commit-remote-write", Degraded, Debounced,
        "… gets `remote_write` (survives a primary crash, not a standby OS crash)";
    SynchronousCommitUnrecognised = "synchronous-commit-unrecognised", Unknown, Debounced,
        "… gets a value cln-replguard does not know";
    CommitProbeTimeout = "commit-probe-timeout", Unsafe, AtOnce,
        "the test commit was not acknowledged within `--probe-deadline-ms`";
    CommitProbeAlreadyWaiting = "commit-probe-already-waiting", Unsafe, AtOnce,
        "an earlier test commit (from any process) still waits";
    CommitProbeSlow = "commit-probe-slow", Degraded, Debounced,
        "acknowledged, but slower than `--probe-slow-ms`";
    CommitProbeFailed = "commit-probe-failed", Unknown, Debounced,
        "the test commit could not run";
    CommitsBlocked = "commits-blocked", Unsafe, AtOnce,
        "other backends (lightningd's) wait for the standby longer than the probe deadline";
    SlotLost = "slot-lost", Unsafe, Debounced,
        "a physical slot lost WAL its standby needs, or was invalidated for the reason the \
         server names (17+; 18's `idle_replication_slot_timeout`)";
    SlotUnreserved = "slot-unreserved", Degraded, Debounced,
        "a slot is past `max_slot_wal_keep_size`";
    SlotInactive = "slot-inactive", Degraded, Debounced,
        "a slot has no standby connected";
    SlotRetentionUnbounded = "slot-retention-unbounded", Advice, Debounced,
        "slots exist and `max_slot_wal_keep_size = -1`, their standbys connected: a slot whose \
         standby goes away will keep WAL until the disk is full (an inactive slot is \
         `slot-inactive`, degraded, and says so)";
    ArchiveFailing = "archive-failing", Degraded, Debounced,
        "the last WAL archiving attempt failed (older failures since recovered do not count)";
    RewindImpossible = "rewind-impossible", Advice, Debounced,
        "`wal_log_hints` and data checksums are both off: after a failover, `pg_rewind` \
         cannot make the old primary a standby (a full clone is needed)";
    HotStandbyOff = "hot-standby-off", Unknown, Debounced,
        "a standby runs with `hot_standby = off`: nothing can be checked on it";
    StandbyUnreachable = "standby-unreachable", Unknown, Debounced,
        "a `--standby-dsn` does not answer";
    StandbyForeign = "standby-foreign", Unsafe, Debounced,
        "that standby belongs to another cluster (other system identifier)";
    StandbyPromoted = "standby-promoted", Unsafe, AtOnce,
        "that standby answers as a primary and is another server than the primary (higher \
         timeline, or another postmaster): the self-fence's trigger";
    StandbyDsnIsPrimary = "standby-dsn-is-primary", Unknown, Debounced,
        "that standby DSN reaches the primary itself (same postmaster and timeline: a host \
         list, VIP or pooler): fix the DSN";
    StandbyNotStreaming = "standby-not-streaming", Unsafe, Debounced,
        "its WAL receiver is not streaming";
    StandbyTimelineMismatch = "standby-timeline-mismatch", Unsafe, Debounced,
        "it is on another timeline than the primary";
    StandbyReplayPaused = "standby-replay-paused", Degraded, Debounced,
        "its WAL replay is paused";
    StandbyIdentityUnverified = "standby-identity-unverified", Unknown, Debounced,
        "its system identifier could not be compared, or it answers as a primary while the \
         primary's facts are missing";
    StandbyNotSync = "standby-not-sync", Unsafe, Debounced,
        "(`failover-check`) under `FIRST n`, that standby is not among the synchronous ones: \
         commits are acknowledged without it";
    StandbyQuorumOptional = "standby-quorum-optional", Unsafe, Debounced,
        "(`failover-check`) under `ANY n` of more names, a commit can be acknowledged without \
         that standby";
    StandbyNotNamed = "standby-not-named", Unsafe, Debounced,
        "(`failover-check`) that standby is not named in `synchronous_standby_names`";
    WalReceiverNotStandby = "wal-receiver-not-standby", Unsafe, Debounced,
        "(`failover-check`) that WAL sender reports no replay position: a WAL receiver, not a \
         standby";
    StandbyBehind = "standby-behind", Unsafe, Debounced,
        "(`failover-check`) that standby had not flushed up to the primary's flush position \
         when the wait ended";
    StandbyNotConnected = "standby-not-connected", Unsafe, Debounced,
        "(`failover-check`) a `--standby-dsn`'s standby has no WAL sender on the primary";
    StandbyNameShared = "standby-name-shared", Unsafe, Debounced,
        "(`failover-check`) another WAL sender streams under that standby's name: the two \
         cannot be told apart";
    RestartRequired = "restart-required", Degraded, Debounced,
        "(plugin) lightningd runs with a `synchronous_commit` its next start would not get: a \
         role/database setting was weakened after `init`";
    WalletClusterDifferent = "wallet-cluster-different", Unsafe, Debounced,
        "(plugin) `replguard-dsn` reaches another cluster than the wallet DSN";
    WalletClusterUnverified = "wallet-cluster-unverified", Unknown, Debounced,
        "(plugin) that could not be proven (privileges)";
    LightningdSessionNotFound = "lightningd-session-not-found", Unknown, Debounced,
        "(plugin) no session of lightningd's role on its database on the checked server";
    PluginFault = "plugin-fault", Unknown, Debounced,
        "the plugin's own side failed (out of file descriptors or memory, a task of its own \
         died): nothing was learnt about the storage; the guard retries every check and \
         `stop` mode does not stop lightningd for it";
    MonitorEnded = "monitor-ended", Unknown, Debounced,
        "(plugin) the runtime monitor ended (a bug): nothing is checked any more; restart the \
         plugin";
    HaManagerUnconfigured = "ha-manager-unconfigured", Unknown, Debounced,
        "Patroni runs the cluster (its sessions are on the server) and its settings are not \
         read: set `replguard-patroni-url`";
    PgAutoFailoverTwoNode = "pg-auto-failover-two-node", Unsafe, AtOnce,
        "pg_auto_failover with one standby in its quorum (number_sync_standbys 0): when the \
         standby is lost, `wait_primary` empties the names and the primary acknowledges \
         commits alone";
    PgAutoFailoverWaitPrimary = "pg-auto-failover-wait-primary", Unsafe, AtOnce,
        "pg_auto_failover emptied the names (`wait_primary`, or `single`): the primary \
         acknowledges every commit alone until a standby is back";
    PgAutoFailoverQuorum = "pg-auto-failover-quorum", Degraded, Debounced,
        "pg_auto_failover's `ANY 1 (…)` over two or more standbys reads the same for \
         number_sync_standbys 0 and 1; with 0, losing every standby makes the primary \
         acknowledge commits alone: make sure it is 1 or more";
    PatroniUnreachable = "patroni-unreachable", Unknown, Debounced,
        "(Patroni) the REST API at `replguard-patroni-url` (or the leader's) does not answer \
         or answers something unreadable";
    PatroniForeign = "patroni-foreign", Unknown, Debounced,
        "(Patroni) that Patroni manages another cluster (other system identifier)";
    PatroniSyncModeOff = "patroni-sync-mode-off", Unsafe, AtOnce,
        "(Patroni) `synchronous_mode` is off: an asynchronous replica may be promoted";
    PatroniStrictOff = "patroni-strict-off", Unsafe, AtOnce,
        "(Patroni) `synchronous_mode_strict` is off: Patroni empties the names when the \
         standby fails, and commits are acknowledged by the primary alone";
    PatroniSyncNamesOverridden = "patroni-sync-names-overridden", Unsafe, AtOnce,
        "(Patroni) the effective `synchronous_standby_names` is not Patroni's (`ALTER SYSTEM` \
         in `postgresql.auto.conf`, the command line…): it will not follow Patroni";
    PatroniNamesUnverified = "patroni-names-unverified", Unknown, Debounced,
        "(Patroni) the role cannot see where `synchronous_standby_names` comes from \
         (`pg_read_all_settings`)";
    PatroniNoSyncStandby = "patroni-no-sync-standby", Unsafe, Debounced,
        "(Patroni) strict mode and no member in `/sync`: the names are Patroni's placeholder \
         (`*`) and every commit waits";
    PatroniNotInSync = "patroni-not-in-sync", Unsafe, Debounced,
        "(`failover-check` under Patroni) Patroni would not promote that standby: it is not \
         in the DCS `/sync` key, or it is tagged `nofailover`";
    PatroniQuorumMode = "patroni-quorum-mode", Degraded, Debounced,
        "(Patroni) `synchronous_mode: quorum`: the evidence cannot vouch for a candidate under \
         `ANY k (…)`, so `pre_promote` vetoes every automatic failover";
    PatroniNoFailoverCandidate = "patroni-no-failover-candidate", Degraded, Debounced,
        "(Patroni) every member in `/sync` is tagged `nofailover`: no automatic failover";
    PatroniPaused = "patroni-paused", Degraded, Debounced,
        "(Patroni) maintenance mode: no automatic failover";
    PatroniFailsafeActive = "patroni-failsafe-active", Degraded, Debounced,
        "(Patroni) failsafe mode is active: the DCS is unreachable, no failover can happen";
    PatroniWalletNotLeader = "patroni-wallet-not-leader", Unsafe, AtOnce,
        "(Patroni) the wallet DSN's server is not Patroni's leader (or there is no leader)";
    PatroniNotLeader = "patroni-not-leader", Unsafe, AtOnce,
        "(`check --require-leader`) the local Patroni is not the leader";
    StatusFileStale = "status-file-stale", Unknown, Debounced,
        "(`status --from-file`) the status file is older than 3 check intervals";
}

impl Code {
    pub fn as_str(self) -> &'static str {
        self.entry().id
    }

    pub fn severity(self) -> Severity {
        self.entry().severity
    }

    /// Whether one check with this finding is enough for the guard to report not safe.
    pub fn alarms_at_once(self) -> bool {
        self.entry().alarm == Alarm::AtOnce
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Code {
    type Err = String;
    fn from_str(s: &str) -> Result<Code, String> {
        Code::ALL
            .iter()
            .copied()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("\"{s}\" is not a finding code"))
    }
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Code, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's findings table, as the catalogue says it.
    fn readme_table() -> String {
        let mut out = String::from("| code | severity | when |\n|---|---|---|\n");
        for c in Code::ALL {
            let e = c.entry();
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                e.id, e.severity, e.meaning
            ));
        }
        out
    }

    /// The findings table in README.md, from its header row to the first line after it that
    /// is not a table row.
    fn readme_findings_table() -> String {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("| code | severity | when |")
            .expect("README.md has a findings table");
        readme[start..]
            .lines()
            .take_while(|l| l.starts_with('|'))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn the_readme_findings_table_is_the_catalogue() {
        let readme = readme_findings_table();
        let want = readme_table();
        assert!(
            readme == want,
            "README.md's findings table differs from src/verdict/catalogue.rs; paste this \
             table in its place:\n\n{want}"
        );
    }

    #[test]
    fn every_code_has_its_own_string_and_reads_back() {
        for (i, c) in Code::ALL.iter().enumerate() {
            assert_eq!(c.as_str().parse::<Code>(), Ok(*c));
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
            assert!(
                !Code::ALL[..i].iter().any(|o| o.as_str() == c.as_str()),
                "{c}"
            );
            assert!(
                !c.entry().meaning.contains('|'),
                "{c}: a | breaks the table"
            );
        }
    }
}
