//! The rules, one function each. A rule reads the context and returns its findings; the
//! verdict is the worst severity among them. Thresholds come from `Policy`.

use crate::facts::{
    CommitProbe, FailureKind, Observation, PrimaryFacts, ProbeFailure, Slot, StandbyFacts,
    StandbyObservation, WalletCluster, WalletObservation,
};
use crate::policy::Policy;
use crate::syncnames::{SyncMethod, SyncNames};

use super::sync::{SyncAssessment, assess_sync};
use super::{Code, Finding};

pub(super) struct Context<'a> {
    pub obs: &'a Observation,
    pub policy: &'a Policy,
    /// The primary's facts when it was reached and is a primary: the replication rules
    /// judge only those.
    pub primary: Option<&'a PrimaryFacts>,
    pub sync: Option<SyncAssessment>,
}

impl<'a> Context<'a> {
    pub fn new(obs: &'a Observation, policy: &'a Policy) -> Self {
        let primary = match &obs.wallet {
            WalletObservation::Postgres { primary: Ok(p), .. } if !p.in_recovery => Some(p),
            _ => None,
        };
        Context {
            obs,
            policy,
            primary,
            sync: primary.and_then(assess_sync),
        }
    }

    /// Whether a standby has the primary's system identifier; `None` when either is unknown.
    fn same_cluster(&self, s: &StandbyFacts) -> Option<bool> {
        Some(self.primary_identity()? == s.system_identifier.as_deref()?)
    }

    /// The primary's system identifier, when known.
    fn primary_identity(&self) -> Option<&'a str> {
        match &self.obs.wallet {
            WalletObservation::Postgres { primary: Ok(p), .. } => p.system_identifier.as_deref(),
            _ => None,
        }
    }
}

type Rule = fn(&Context) -> Vec<Finding>;

/// Every check, in reading order. Add a new one here.
pub(super) const RULES: &[Rule] = &[
    wallet_backend,
    primary_reachable,
    wallet_server_is_primary,
    stats_privileges,
    sync_names,
    sync_standbys,
    wallet_cluster,
    synchronous_commit,
    restart_required,
    commit_probe,
    waiting_commits,
    slots,
    archiver,
    rewind,
    standbys,
];

fn wallet_backend(ctx: &Context) -> Vec<Finding> {
    match &ctx.obs.wallet {
        WalletObservation::NotPostgres { scheme } => vec![Finding::new(
            Code::NotPostgres,
            format!(
                "the wallet uses the {scheme}:// backend: lightningd's channel state lives on \
                 this machine only, with no synchronous copy"
            ),
            "move the wallet to PostgreSQL (wallet=postgres://…) with a synchronous standby; \
             see README \"Setting up the pair\"",
        )],
        WalletObservation::Postgres { .. } => vec![],
    }
}

/// The code of a wallet server that could not be observed. `failover-check` names it too.
pub(crate) fn primary_failure_code(kind: FailureKind) -> Code {
    match kind {
        FailureKind::Auth => Code::AuthFailed,
        FailureKind::Timeout => Code::PrimaryTimeout,
        FailureKind::Unreachable => Code::PrimaryUnreachable,
        FailureKind::Unavailable => Code::PrimaryUnavailable,
        FailureKind::Privilege => Code::PrivilegesInsufficient,
        FailureKind::Query => Code::QueryFailed,
        FailureKind::PluginFault => Code::PluginFault,
    }
}

fn primary_reachable(ctx: &Context) -> Vec<Finding> {
    let WalletObservation::Postgres {
        target,
        primary: Err(f),
    } = &ctx.obs.wallet
    else {
        return vec![];
    };
    let what = format!("cannot check the wallet server ({target}): {f}");
    let remedy = match f.kind {
        FailureKind::PluginFault => return vec![plugin_fault(what)],
        FailureKind::Auth => {
            "check the user and password of the wallet DSN (and pg_hba.conf on the server)"
                .to_string()
        }
        FailureKind::Timeout => format!(
            "the server did not answer within {} ms: check that it is running and not hung \
             (pg_isready), and the network path to it",
            ctx.policy.query_timeout.as_millis()
        ),
        FailureKind::Unreachable => {
            "check that PostgreSQL is running and listening where the DSN points (host, port, \
             socket directory)"
                .to_string()
        }
        FailureKind::Unavailable => {
            "the server is starting, stopping or out of connections; check its log".to_string()
        }
        FailureKind::Privilege => "GRANT pg_monitor TO the role of the DSN".to_string(),
        FailureKind::Query => "see the detail; the server's log has more".to_string(),
    };
    vec![Finding::new(primary_failure_code(f.kind), what, remedy)]
}

/// The plugin's own side failed: unknown, since nothing was learnt, and said to be ours — the
/// runtime guard does not act on it as on the storage's verdict (`Verdict::storage_level`).
fn plugin_fault(what: String) -> Finding {
    Finding::new(
        Code::PluginFault,
        format!("plugin fault: {what} — not a judgement of the storage"),
        "the plugin's process ran out of something (open files: raise LimitNOFILE of \
         lightningd's service; memory); it retries every check, and stop mode does not stop \
         lightningd for it",
    )
}

fn wallet_server_is_primary(ctx: &Context) -> Vec<Finding> {
    match &ctx.obs.wallet {
        WalletObservation::Postgres { primary: Ok(p), .. } if p.in_recovery => vec![Finding::new(
            Code::WalletOnStandby,
            "the wallet DSN points to a server in recovery (a standby): lightningd cannot \
             write there, or the DSN names the wrong server",
            "point wallet= at the primary; after a failover, at the promoted server",
        )],
        _ => vec![],
    }
}

fn stats_privileges(ctx: &Context) -> Vec<Finding> {
    match ctx.primary {
        Some(p) if !p.can_read_stats => vec![Finding::new(
            Code::PrivilegesInsufficient,
            format!(
                "role {} cannot see pg_stat_replication's details (state, sync_state, \
                 positions are hidden), so replication cannot be verified",
                p.session.role
            ),
            format!("GRANT pg_monitor TO {};", quote_ident(&p.session.role)),
        )],
        _ => vec![],
    }
}

fn sync_names(ctx: &Context) -> Vec<Finding> {
    let Some(p) = ctx.primary else { return vec![] };
    match &p.sync_names {
        Err(why) => vec![Finding::new(
            Code::SyncNamesInvalid,
            format!(
                "cannot read synchronous_standby_names = '{}': {why}",
                p.sync_names_raw
            ),
            "set it to FIRST n (names…), ANY n (names…) or a list of standby names",
        )],
        Ok(SyncNames::Empty) => vec![sync_names_empty(ctx)],
        Ok(SyncNames::Required(r)) if r.has_wildcard() => vec![Finding::new(
            Code::SyncNamesWildcard,
            format!(
                "synchronous_standby_names = '{}' accepts any WAL receiver's acknowledgement, \
                 not only your failover standby's",
                p.sync_names_raw
            ),
            "name the standby: ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 \
             (<standby>)'; SELECT pg_reload_conf();",
        )],
        Ok(SyncNames::Required(_)) => vec![],
    }
}

/// Empty names mean no commit waits for a standby. After a failover the operator may accept
/// that for a bounded time (`Policy::accept_no_standby_until`); past it, it is unsafe again.
fn sync_names_empty(ctx: &Context) -> Finding {
    let restore = "build a standby (cln-replguard setup standby, contrib/README.md), then \
                   ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (<standby>)'; SELECT \
                   pg_reload_conf();";
    match ctx.policy.accept_no_standby_until {
        Some(until) if ctx.obs.checked_at < until => Finding::new(
            Code::NoReplicaAccepted,
            format!(
                "no synchronous standby: accepted until {} (replguard-accept-no-standby-until); \
                 until a standby is back, a loss of this server loses channel state",
                crate::timefmt::rfc3339(until)
            ),
            restore,
        ),
        Some(until) => Finding::new(
            Code::SyncNamesEmpty,
            format!(
                "synchronous_standby_names is empty, and the acceptance of running without a \
                 standby ended at {}",
                crate::timefmt::rfc3339(until)
            ),
            restore,
        ),
        None => Finding::new(
            Code::SyncNamesEmpty,
            "synchronous_standby_names is empty: commits are acknowledged before any standby \
             has them",
            "ALTER SYSTEM SET synchronous_standby_names = 'FIRST 1 (<standby>)'; SELECT \
             pg_reload_conf(); (an HA manager may have emptied it: check its state)",
        ),
    }
}

fn sync_standbys(ctx: &Context) -> Vec<Finding> {
    let (Some(p), Some(a)) = (ctx.primary, &ctx.sync) else {
        return vec![];
    };
    if a.healthy >= a.required {
        return vec![];
    }
    let Ok(SyncNames::Required(req)) = &p.sync_names else {
        return vec![];
    };
    let seen: Vec<String> = a
        .senders
        .iter()
        .filter(|s| !s.counted)
        .map(|s| {
            format!(
                "{}: {}",
                display_name(&s.name),
                s.why_not.as_deref().unwrap_or("")
            )
        })
        .collect();
    let method = match req.method {
        SyncMethod::First => "FIRST",
        SyncMethod::Any => "ANY",
    };
    vec![Finding::new(
        Code::SyncStandbysShort,
        format!(
            "{} of {} required synchronous standbys healthy ({method} {} of {}){}",
            a.healthy,
            a.required,
            req.num,
            req.names.join(", "),
            if seen.is_empty() {
                "; no other WAL sender is connected".to_string()
            } else {
                format!("; {}", seen.join("; "))
            }
        ),
        "start or repair the standby (its log, pg_stat_wal_receiver on it) and check that its \
         application_name matches synchronous_standby_names",
    )]
}

fn wallet_cluster(ctx: &Context) -> Vec<Finding> {
    let Some(p) = ctx.primary else { return vec![] };
    let mut out = match &p.wallet_cluster {
        WalletCluster::SameDsn | WalletCluster::Verified => vec![],
        WalletCluster::Different { wallet, monitor } => vec![Finding::new(
            Code::WalletClusterDifferent,
            format!(
                "the wallet DSN reaches cluster {wallet}, but replguard-dsn reaches {monitor}: \
                 the checks look at a server lightningd does not write to"
            ),
            "point replguard-dsn at the wallet's primary (or remove it to check through the \
             wallet DSN)",
        )],
        WalletCluster::Unverifiable { why } => vec![Finding::new(
            Code::WalletClusterUnverified,
            format!("cannot prove that replguard-dsn reaches the wallet's cluster: {why}"),
            "GRANT pg_monitor to the roles of both DSNs, or remove replguard-dsn",
        )],
    };
    if p.lightningd_sessions == Some(0) {
        out.push(Finding::new(
            Code::LightningdSessionNotFound,
            format!(
                "no session of role {} on database {} on this server: lightningd's wallet may be \
                 on another server",
                p.session.role, p.session.database
            ),
            "check that wallet= and replguard-dsn name the same server",
        ));
    }
    out
}

/// Where a `synchronous_commit` came from, by `pg_settings.source`: these apply when a
/// session starts; the others (default, configuration file) follow reloads.
const SESSION_START_SOURCES: &[&str] = &["user", "database", "database user", "client"];

/// How much a value waits for: ordered from weakest to strongest.
fn strength(value: &str) -> Option<u8> {
    ["off", "local", "remote_write", "on", "remote_apply"]
        .iter()
        .position(|v| *v == value)
        .map(|p| p as u8)
}

/// lightningd's running session's value: the pinned one, unless it came from the server
/// configuration, which a reload changes for running sessions too.
fn lightningd_commit<'a>(ctx: &'a Context, p: &'a PrimaryFacts) -> (&'a str, String) {
    let fresh = &p.session;
    match &ctx.obs.pinned_commit {
        None => (fresh.synchronous_commit.as_str(), setting_origin(p)),
        Some(pin)
            if !SESSION_START_SOURCES.contains(&pin.source.as_str())
                && !SESSION_START_SOURCES.contains(&fresh.synchronous_commit_source.as_str()) =>
        {
            (
                fresh.synchronous_commit.as_str(),
                "server configuration, applied on reload".to_string(),
            )
        }
        Some(pin) => (
            pin.value.as_str(),
            format!("pinned at init, source: {}", pin.source),
        ),
    }
}

fn restart_required(ctx: &Context) -> Vec<Finding> {
    let Some(p) = ctx.primary else { return vec![] };
    if ctx.obs.pinned_commit.is_none() {
        return vec![];
    }
    let (running, _) = lightningd_commit(ctx, p);
    let next = p.session.synchronous_commit.as_str();
    match (strength(next), strength(running)) {
        (Some(n), Some(r)) if n < r => vec![Finding::new(
            Code::RestartRequired,
            format!(
                "lightningd runs with synchronous_commit = {running}, but its next start would get \
                 {next} ({}): the node becomes unsafe when it restarts",
                setting_origin(p)
            ),
            format!("{} before lightningd restarts", reset_hint(p)),
        )],
        _ => vec![],
    }
}

/// What a `synchronous_commit` value of lightningd's sessions is a finding of; none when its
/// commits wait for the standby to flush. `failover-check` asks the same question.
pub(crate) fn synchronous_commit_code(value: &str) -> Option<Code> {
    match value {
        "on" | "remote_apply" => None,
        "remote_write" => Some(Code::SynchronousCommitRemoteWrite),
        "local" | "off" => Some(Code::SynchronousCommitWeak),
        _ => Some(Code::SynchronousCommitUnrecognised),
    }
}

fn synchronous_commit(ctx: &Context) -> Vec<Finding> {
    let Some(p) = ctx.primary else { return vec![] };
    let (value, origin) = lightningd_commit(ctx, p);
    let Some(code) = synchronous_commit_code(value) else {
        return vec![];
    };
    let effect = match code {
        Code::SynchronousCommitRemoteWrite => {
            "a commit is acknowledged once the standby has written it, before it is flushed: \
             it survives a primary crash but not a standby OS crash"
        }
        Code::SynchronousCommitWeak => "lightningd's commits do not wait for the standby",
        _ => "this value is not one cln-replguard knows",
    };
    vec![Finding::new(
        code,
        format!("lightningd's session runs with synchronous_commit = {value} ({origin}): {effect}"),
        format!(
            "{}, then restart lightningd (it reads the setting when its session starts)",
            reset_hint(p)
        ),
    )]
}

fn setting_origin(p: &PrimaryFacts) -> String {
    let s = &p.session;
    match s.synchronous_commit_source.as_str() {
        "user" => format!("set by ALTER ROLE {}", s.role),
        "database" => format!("set by ALTER DATABASE {}", s.database),
        "database user" => format!("set by ALTER ROLE {} IN DATABASE {}", s.role, s.database),
        "client" => "set by the DSN's options or PGOPTIONS".to_string(),
        "configuration file" => "set in the server configuration".to_string(),
        other => format!("source: {other}"),
    }
}

fn reset_hint(p: &PrimaryFacts) -> String {
    let s = &p.session;
    let (role, db) = (quote_ident(&s.role), quote_ident(&s.database));
    match s.synchronous_commit_source.as_str() {
        "user" => format!("ALTER ROLE {role} RESET synchronous_commit;"),
        "database" => format!("ALTER DATABASE {db} RESET synchronous_commit;"),
        "database user" => format!("ALTER ROLE {role} IN DATABASE {db} RESET synchronous_commit;"),
        "client" => {
            "remove -c synchronous_commit from the DSN's options (and from PGOPTIONS)".into()
        }
        _ => "ALTER SYSTEM SET synchronous_commit = on; SELECT pg_reload_conf();".into(),
    }
}

fn commit_probe(ctx: &Context) -> Vec<Finding> {
    let Some(p) = ctx.primary else { return vec![] };
    let deadline = ctx.policy.probe_deadline.as_millis();
    match &p.commit_probe {
        CommitProbe::NotRun | CommitProbe::Skipped { .. } => vec![],
        CommitProbe::Acknowledged { ms, .. }
            if *ms > ctx.policy.probe_slow.as_secs_f64() * 1000.0 =>
        {
            vec![Finding::new(
                Code::CommitProbeSlow,
                format!(
                    "a test commit took {ms:.0} ms to be acknowledged by the synchronous \
                     standbys (slower than {} ms)",
                    ctx.policy.probe_slow.as_millis()
                ),
                "check the standby's load and the network between the servers",
            )]
        }
        CommitProbe::Acknowledged { .. } => vec![],
        CommitProbe::Waiting { waited_ms, .. } => vec![Finding::new(
            Code::CommitProbeTimeout,
            format!(
                "a test commit has waited {waited_ms:.0} ms (deadline {deadline} ms) for the \
                 synchronous standbys: commits are blocked, lightningd's included"
            ),
            "bring the standby back (it may be hung or cut off); do not cancel waiting backends: \
             a cancelled wait commits locally without a replica",
        )],
        CommitProbe::AlreadyWaiting { waiting_ms } => vec![Finding::new(
            Code::CommitProbeAlreadyWaiting,
            format!(
                "an earlier test commit is still waiting for the synchronous standbys{}: \
                 commits are blocked",
                waiting_ms.map_or(String::new(), |ms| format!(" (for {:.1} s)", ms / 1000.0))
            ),
            "bring the standby back (it may be hung or cut off); do not cancel waiting backends",
        )],
        CommitProbe::PluginFault { error } => {
            vec![plugin_fault(format!(
                "the test commit did not run: {error}"
            ))]
        }
        CommitProbe::Failed { error } => vec![Finding::new(
            Code::CommitProbeFailed,
            format!("the test commit failed: {error}"),
            "the wallet role needs to be able to run a transaction; see the detail",
        )],
    }
}

fn waiting_commits(ctx: &Context) -> Vec<Finding> {
    let Some(p) = ctx.primary else { return vec![] };
    let w = &p.syncrep_waiters;
    let deadline_ms = ctx.policy.probe_deadline.as_secs_f64() * 1000.0;
    match w.longest_ms {
        Some(longest) if w.count > 0 && longest > deadline_ms => vec![Finding::new(
            Code::CommitsBlocked,
            format!(
                "{} backend(s) wait for the synchronous standby, the longest for {:.1} s: \
                 lightningd is frozen while its commit waits",
                w.count,
                longest / 1000.0
            ),
            "bring the standby back; do not cancel the waiting backends (a cancelled wait \
             commits locally without a replica)",
        )],
        _ => vec![],
    }
}

fn slots(ctx: &Context) -> Vec<Finding> {
    let Some(p) = ctx.primary else { return vec![] };
    let mut out = Vec::new();
    for s in &p.slots {
        match s.wal_status.as_deref() {
            Some("lost") => out.push(Finding::new(
                Code::SlotLost,
                slot_lost_message(s),
                "rebuild the standby (pg_basebackup, or pg_rewind) and recreate the slot",
            )),
            Some("unreserved") => out.push(Finding::new(
                Code::SlotUnreserved,
                format!(
                    "replication slot {} is past max_slot_wal_keep_size: its WAL may be removed \
                     at the next checkpoint",
                    s.name
                ),
                "bring the standby back to streaming before the WAL is removed",
            )),
            _ => {}
        }
        if !s.active {
            // Without a WAL limit an abandoned slot is the real danger: the disk fills and
            // the primary stops.
            let unbounded = if p.max_slot_wal_keep_size_mb < 0 {
                ", and max_slot_wal_keep_size = -1: it keeps WAL until the primary's disk is full"
            } else {
                ""
            };
            out.push(Finding::new(
                Code::SlotInactive,
                format!(
                    "replication slot {} has no standby connected{unbounded}",
                    s.name
                ),
                "start the standby that uses it, or drop the slot if that standby is gone \
                 (SELECT pg_drop_replication_slot(…))",
            ));
        }
    }
    if !p.slots.is_empty() && p.max_slot_wal_keep_size_mb < 0 {
        out.push(Finding::new(
            Code::SlotRetentionUnbounded,
            "max_slot_wal_keep_size = -1: should a slot's standby go away, the slot keeps WAL \
             until the primary's disk is full (advice: replication is not affected now)",
            "ALTER SYSTEM SET max_slot_wal_keep_size = '10GB' (sized to your disk); SELECT \
             pg_reload_conf();",
        ));
    }
    out
}

/// What invalidated the slot, where the server says (17+). 18's `idle_replication_slot_timeout`
/// invalidates a slot whose WAL is all still there: "lost WAL" would send the operator
/// looking for the wrong cause.
fn slot_lost_message(s: &Slot) -> String {
    match s.invalidation_reason.as_deref() {
        None | Some("wal_removed") => {
            format!(
                "replication slot {} lost WAL its standby still needs",
                s.name
            )
        }
        Some("idle_timeout") => format!(
            "replication slot {} was invalidated by idle_replication_slot_timeout (no standby \
             used it for that long): its standby can no longer stream through it",
            s.name
        ),
        Some(reason) => format!(
            "replication slot {} was invalidated ({reason}): its standby can no longer stream \
             through it",
            s.name
        ),
    }
}

fn archiver(ctx: &Context) -> Vec<Finding> {
    match ctx.primary.and_then(|p| p.archiver.as_ref()) {
        Some(a) if a.failing_now => vec![Finding::new(
            Code::ArchiveFailing,
            format!(
                "WAL archiving is failing (last failure {} on {}): the archive fallback is not \
                 there",
                a.last_failed_time.as_deref().unwrap_or("?"),
                a.last_failed_wal.as_deref().unwrap_or("?")
            ),
            "check archive_command in the primary's log; the archive must be writable",
        )],
        _ => vec![],
    }
}

/// After a failover the old primary comes back as a standby through `pg_rewind`, which needs
/// hint bits in the WAL; without them the only way back to a pair is a full new clone.
fn rewind(ctx: &Context) -> Vec<Finding> {
    match ctx.primary {
        Some(p) if !p.wal_log_hints && !p.data_checksums => vec![Finding::new(
            Code::RewindImpossible,
            "wal_log_hints is off and data checksums are off: after a failover, pg_rewind \
             cannot turn this server into a standby of the new primary (a full clone is needed)",
            "ALTER SYSTEM SET wal_log_hints = on; then restart the primary",
        )],
        _ => vec![],
    }
}

type StandbyRule = fn(&Context, &StandbyObservation) -> Option<Finding>;

/// Every check of one standby, in reading order: `standbys` runs them on each standby in turn,
/// so a standby's findings stay together. Add a new one here.
const STANDBY_RULES: &[StandbyRule] = &[
    standby_failure,
    standby_foreign,
    standby_answers_as_primary,
    standby_identity_unverified,
    standby_not_streaming,
    standby_timeline,
    standby_replay_paused,
];

fn standbys(ctx: &Context) -> Vec<Finding> {
    ctx.obs
        .standbys
        .iter()
        .flat_map(|s| STANDBY_RULES.iter().filter_map(move |rule| rule(ctx, s)))
        .collect()
}

/// The code of a standby that could not be observed. `failover-check` names it too.
pub(crate) fn standby_failure_code(f: &ProbeFailure) -> Code {
    // PostgreSQL 14+ says so when a standby runs with hot_standby = off: it streams, but
    // nothing can be checked on it (nor read from it in a failover).
    if f.detail.contains("Hot standby mode is disabled") {
        Code::HotStandbyOff
    } else if f.kind == FailureKind::PluginFault {
        Code::PluginFault
    } else {
        Code::StandbyUnreachable
    }
}

fn standby_failure(_: &Context, s: &StandbyObservation) -> Option<Finding> {
    let Err(f) = &s.facts else { return None };
    let target = &s.target;
    Some(match standby_failure_code(f) {
        Code::HotStandbyOff => Finding::new(
            Code::HotStandbyOff,
            format!("cannot check standby {target}: it runs with hot_standby = off"),
            "on the standby: ALTER SYSTEM SET hot_standby = on; then restart it",
        ),
        Code::PluginFault => plugin_fault(format!("cannot check standby {target}: {f}")),
        code => Finding::new(
            code,
            format!("cannot check standby {target}: {f}"),
            "check that the standby runs and that its DSN (--standby-dsn) is right",
        ),
    })
}

/// A standby of another cluster gets this finding only: nothing else about it matters.
fn standby_foreign(ctx: &Context, s: &StandbyObservation) -> Option<Finding> {
    let facts = s.facts.as_ref().ok()?;
    if ctx.same_cluster(facts) != Some(false) {
        return None;
    }
    Some(Finding::new(
        Code::StandbyForeign,
        format!(
            "standby {} belongs to another cluster (system identifier {} ≠ the primary's {})",
            s.target,
            facts.system_identifier.as_deref().unwrap_or("?"),
            ctx.primary_identity().unwrap_or("?")
        ),
        "clone the standby from this primary (pg_basebackup), or fix --standby-dsn",
    ))
}

/// A standby of this cluster, or of one that cannot be told, whatever it answers as.
fn not_foreign<'a>(ctx: &Context, s: &'a StandbyObservation) -> Option<&'a StandbyFacts> {
    let facts = s.facts.as_ref().ok()?;
    (ctx.same_cluster(facts) != Some(false)).then_some(facts)
}

/// A standby that is in recovery and not of another cluster: the rules of a replica apply.
fn replica<'a>(ctx: &Context, s: &'a StandbyObservation) -> Option<&'a StandbyFacts> {
    not_foreign(ctx, s).filter(|facts| facts.in_recovery)
}

fn standby_answers_as_primary(ctx: &Context, s: &StandbyObservation) -> Option<Finding> {
    let facts = not_foreign(ctx, s).filter(|facts| !facts.in_recovery)?;
    Some(answers_as_primary(
        ctx,
        &s.target,
        facts,
        ctx.same_cluster(facts),
    ))
}

fn standby_identity_unverified(ctx: &Context, s: &StandbyObservation) -> Option<Finding> {
    let facts = replica(ctx, s)?;
    ctx.same_cluster(facts).is_none().then(|| {
        Finding::new(
            Code::StandbyIdentityUnverified,
            format!(
                "cannot compare standby {}'s system identifier with the primary's",
                s.target
            ),
            "GRANT pg_monitor TO the roles of both DSNs",
        )
    })
}

fn standby_not_streaming(ctx: &Context, s: &StandbyObservation) -> Option<Finding> {
    let facts = replica(ctx, s)?;
    let status = facts.receiver.as_ref().and_then(|r| r.status.as_deref());
    (status != Some("streaming")).then(|| {
        Finding::new(
            Code::StandbyNotStreaming,
            format!(
                "standby {} is not receiving WAL (receiver {})",
                s.target,
                status.unwrap_or("not running")
            ),
            "check primary_conninfo on the standby, its log, and that the primary accepts it \
             (pg_hba.conf, max_wal_senders)",
        )
    })
}

fn standby_timeline(ctx: &Context, s: &StandbyObservation) -> Option<Finding> {
    let facts = replica(ctx, s)?;
    let (a, b) = (ctx.primary?.timeline?, facts.timeline?);
    (a != b).then(|| {
        Finding::new(
            Code::StandbyTimelineMismatch,
            format!(
                "standby {} is on timeline {b}, the primary on {a}",
                s.target
            ),
            "rebuild the standby from the current primary (pg_rewind or pg_basebackup)",
        )
    })
}

fn standby_replay_paused(ctx: &Context, s: &StandbyObservation) -> Option<Finding> {
    let facts = replica(ctx, s)?;
    (facts.replay_paused == Some(true)).then(|| {
        Finding::new(
            Code::StandbyReplayPaused,
            format!(
                "standby {} has WAL replay paused: it keeps the WAL but a failover would \
                 first have to replay the backlog",
                s.target
            ),
            "SELECT pg_wal_replay_resume(); on the standby",
        )
    })
}

/// Whether the server behind a standby DSN that answers as a primary is the primary itself.
#[derive(Debug, PartialEq)]
pub(crate) enum OtherServer {
    /// Another server left recovery; the evidence, for the message.
    Yes(String),
    /// The primary's own postmaster, on its timeline: the DSN reaches the primary.
    No,
    /// The primary's facts are missing: nothing to compare with.
    CannotTell,
}

/// The self-fence stops lightningd, so it needs evidence of another server: a higher
/// timeline than the primary's, or another postmaster (its start time, to the µs). Not the
/// address: one postmaster listens on several, and Unix sockets have none.
pub(crate) fn other_server(primary: Option<&PrimaryFacts>, s: &StandbyFacts) -> OtherServer {
    let Some(p) = primary else {
        return OtherServer::CannotTell;
    };
    if let (Some(theirs), Some(ours)) = (s.timeline, p.timeline)
        && theirs > ours
    {
        return OtherServer::Yes(format!("on timeline {theirs}, the primary on {ours}"));
    }
    if s.postmaster_started_us != p.postmaster_started_us {
        return OtherServer::Yes("a server other than the primary (another postmaster)".into());
    }
    OtherServer::No
}

fn answers_as_primary(
    ctx: &Context,
    target: &str,
    s: &StandbyFacts,
    same_cluster: Option<bool>,
) -> Finding {
    match other_server(ctx.primary, s) {
        OtherServer::Yes(evidence) => Finding::new(
            Code::StandbyPromoted,
            format!(
                "standby {target} answers as a primary{} ({evidence}): two servers may accept \
                 writes for this wallet",
                if same_cluster == Some(true) {
                    " with this cluster's system identifier"
                } else {
                    ""
                }
            ),
            "stop lightningd now; decide which server holds the newest channel state before \
             anything else writes (see FAILOVER.md)",
        ),
        OtherServer::No => Finding::new(
            Code::StandbyDsnIsPrimary,
            format!(
                "standby DSN {target} reaches the primary itself (same postmaster, same \
                 timeline): the standby cannot be checked through it"
            ),
            "point --standby-dsn / replguard-standby-dsn at the standby alone: no host list, \
             VIP or pooler that can lead to the primary",
        ),
        OtherServer::CannotTell => Finding::new(
            Code::StandbyIdentityUnverified,
            format!(
                "standby {target} answers as a primary; without the primary's facts it cannot \
                 be told from the primary itself"
            ),
            "make the primary reachable through the wallet DSN; check --standby-dsn",
        ),
    }
}

fn display_name(name: &str) -> &str {
    if name.is_empty() {
        "(no application_name)"
    } else {
        name
    }
}

/// SQL identifier quoting, for remedies an operator pastes into psql.
pub(crate) fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && !name.is_empty();
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}
