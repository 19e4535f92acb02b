//! Patroni's configuration and state judged against what cln-replguard needs: pure functions
//! of the REST answers (`facts.rs`), the wallet server's facts and its `pg_settings` signs.
//! Also the HA managers recognised without a Patroni URL (Patroni's sessions; pg_auto_failover,
//! judged in `autofailover.rs`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::autofailover;
use super::facts::{NodeStatus, PatroniObservation, ServerSigns, SyncMode};
use crate::facts::PrimaryFacts;
use crate::verdict::{Code, Finding};

/// What the rules judge.
#[derive(Clone, Copy, Debug, Default)]
pub struct Inputs<'a> {
    /// `None`: no `replguard-patroni-url` configured.
    pub patroni: Option<&'a PatroniObservation>,
    /// The wallet DSN's server, when reached.
    pub primary: Option<&'a PrimaryFacts>,
    /// `check --require-leader`: the local Patroni must be the leader.
    pub require_leader: bool,
}

/// The findings, and the verdict's own codes they explain better (and so replace).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Judgement {
    pub findings: Vec<Finding>,
    pub supersedes: Vec<Code>,
}

pub fn judge(i: &Inputs) -> Judgement {
    match i.patroni {
        None => unconfigured_manager(i.primary),
        Some(p) => judge_patroni(p, i),
    }
}

/// Without a Patroni URL: an HA manager recognised on the server is named, with what to do.
fn unconfigured_manager(primary: Option<&PrimaryFacts>) -> Judgement {
    let Some(p) = primary else {
        return Judgement::default();
    };
    let s = &p.ha_signs;
    if s.patroni_sessions > 0 {
        return only(Finding::new(
            Code::HaManagerUnconfigured,
            format!(
                "Patroni manages this cluster ({} Patroni session(s) on the server) and may \
                 rewrite synchronous_standby_names or promote a standby at any time; its \
                 settings are not checked",
                s.patroni_sessions
            ),
            "set replguard-patroni-url (CLI: --patroni-url) to the local Patroni REST API, \
             e.g. http://127.0.0.1:8008 (contrib/patroni/README.md)",
        ));
    }
    match autofailover::judge(p) {
        Some(a) => Judgement {
            findings: vec![a.finding],
            supersedes: a.supersedes,
        },
        None => Judgement::default(),
    }
}

fn unreachable(what: &str, url: &str, err: &str) -> Finding {
    Finding::new(
        Code::PatroniUnreachable,
        format!("{what} of the Patroni REST API at {url}: {err}"),
        "start Patroni or fix replguard-patroni-url (the local node's REST API, as in \
         patroni.yml's restapi.connect_address)",
    )
}

fn judge_patroni(p: &PatroniObservation, i: &Inputs) -> Judgement {
    let (node, cluster, config) = match (&p.node, &p.cluster, &p.config) {
        (Ok(n), Ok(c), Ok(cf)) => (n, c, cf),
        (Err(e), _, _) => return only(unreachable("GET /patroni", &p.url, e)),
        (_, Err(e), _) => return only(unreachable("GET /cluster", &p.url, e)),
        (_, _, Err(e)) => return only(unreachable("GET /config", &p.url, e)),
    };
    if let Some(f) = foreign(node, i.primary) {
        return only(f);
    }
    let mut j = Judgement::default();
    j.findings.extend(sync_settings(
        config.synchronous_mode,
        config.synchronous_mode_strict,
    ));
    if config.synchronous_mode == SyncMode::Quorum {
        j.findings.push(Finding::new(
            Code::PatroniQuorumMode,
            "Patroni's synchronous_mode is quorum: the names are ANY k (…), so which standby \
             holds a commit can shift from one commit to the next, and cln-replguard's \
             evidence cannot vouch for a candidate; contrib/patroni/pre_promote then vetoes \
             every automatic failover",
            "patronictl edit-config -s synchronous_mode=on (with synchronous_mode_strict=on, \
             synchronous_node_count=1): Patroni names the one standby it may promote",
        ));
    }
    let in_sync: Vec<_> = cluster
        .members
        .iter()
        .filter(|m| m.is_synchronous())
        .collect();
    if !in_sync.is_empty() && in_sync.iter().all(|m| m.nofailover) {
        let names: Vec<_> = in_sync.iter().map(|m| m.name.as_str()).collect();
        j.findings.push(Finding::new(
            Code::PatroniNoFailoverCandidate,
            format!(
                "every member in Patroni's /sync key ({}) is tagged nofailover: commits reach \
                 a second host, but Patroni will not promote it when the leader is lost",
                names.join(", ")
            ),
            "remove nofailover (or set failover_priority > 0) on a synchronous member, or \
             add a replica that may be promoted",
        ));
    }
    if node.paused || cluster.paused {
        j.findings.push(Finding::new(
            Code::PatroniPaused,
            "Patroni is paused (maintenance mode): it will not fail over when the leader is lost",
            "patronictl resume once the maintenance is over",
        ));
    }
    if node.failsafe_active {
        j.findings.push(Finding::new(
            Code::PatroniFailsafeActive,
            "Patroni's failsafe mode is active: the DCS is unreachable and the leader keeps \
             running only because every member answers; no failover can happen",
            "restore the DCS (etcd) connection",
        ));
    }
    if config.synchronous_mode != SyncMode::Off {
        j.findings
            .extend(i.primary.and_then(|p| names_override(&p.ha_signs)));
        if config.synchronous_mode_strict && !cluster.members.iter().any(|m| m.is_synchronous()) {
            let names = i.primary.map_or("", |p| p.sync_names_raw.as_str());
            j.findings.push(Finding::new(
                Code::PatroniNoSyncStandby,
                format!(
                    "no member is in Patroni's /sync key: strict mode holds every commit \
                     (synchronous_standby_names = '{names}' is Patroni's placeholder, not a \
                     standby) until a replica catches up"
                ),
                "bring a replica back (patronictl list shows each member's state)",
            ));
            j.supersedes.push(Code::SyncNamesWildcard);
        }
    }
    j.findings.extend(leadership(
        p,
        node,
        cluster.leader().map(|m| m.name.as_str()),
        i,
    ));
    j
}

fn only(f: Finding) -> Judgement {
    Judgement {
        findings: vec![f],
        supersedes: vec![],
    }
}

/// The Patroni URL belongs to another cluster than the wallet's server.
fn foreign(node: &NodeStatus, primary: Option<&PrimaryFacts>) -> Option<Finding> {
    let ours = primary?.system_identifier.as_deref()?;
    let theirs = node.system_identifier.as_deref()?;
    (ours != theirs).then(|| {
        Finding::new(
            Code::PatroniForeign,
            format!(
                "the Patroni at that URL manages another cluster (scope {}, system identifier \
                 {theirs}) than the wallet's server ({ours})",
                node.scope
            ),
            "point replguard-patroni-url at the Patroni of the wallet's cluster",
        )
    })
}

fn sync_settings(mode: SyncMode, strict: bool) -> Option<Finding> {
    if mode == SyncMode::Off {
        return Some(Finding::new(
            Code::PatroniSyncModeOff,
            "Patroni's synchronous_mode is off: Patroni may promote an asynchronous replica \
             that lacks acknowledged commits",
            "patronictl edit-config -s synchronous_mode=on -s synchronous_mode_strict=on",
        ));
    }
    (!strict).then(|| {
        Finding::new(
            Code::PatroniStrictOff,
            "Patroni's synchronous_mode_strict is off: when the synchronous standby fails, \
             Patroni empties synchronous_standby_names and commits are acknowledged by the \
             primary alone",
            "patronictl edit-config -s synchronous_mode_strict=on",
        )
    })
}

/// Patroni writes the names into its `postgresql.conf`; a value from anywhere else
/// (`ALTER SYSTEM` → `postgresql.auto.conf`, the command line) wins over Patroni's and stays
/// when Patroni changes its own.
fn names_override(s: &ServerSigns) -> Option<Finding> {
    let file = s.names_sourcefile.as_deref();
    let patronis = s.names_source == "configuration file"
        && file.is_some_and(|f| f.rsplit('/').next() == Some("postgresql.conf"));
    if patronis {
        return None;
    }
    if s.names_source == "configuration file" && file.is_none() {
        return Some(Finding::new(
            Code::PatroniNamesUnverified,
            "cannot see which file synchronous_standby_names comes from (pg_settings.sourcefile \
             is hidden from this role): an override of Patroni's value would go unnoticed",
            "GRANT pg_read_all_settings (or pg_monitor) TO the wallet role",
        ));
    }
    Some(Finding::new(
        Code::PatroniSyncNamesOverridden,
        format!(
            "synchronous_standby_names comes from {} ({}), not from Patroni's postgresql.conf: \
             it overrides what Patroni writes and will not follow a change of standby",
            file.unwrap_or("-"),
            s.names_source
        ),
        "ALTER SYSTEM RESET synchronous_standby_names; SELECT pg_reload_conf(); (let Patroni \
         manage the setting)",
    ))
}

/// The wallet DSN's server must be Patroni's leader; with `--require-leader`, the local node
/// must be it too.
fn leadership(
    p: &PatroniObservation,
    node: &NodeStatus,
    leader: Option<&str>,
    i: &Inputs,
) -> Vec<Finding> {
    let mut out = Vec::new();
    let Some(leader) = leader else {
        return vec![Finding::new(
            Code::PatroniWalletNotLeader,
            "Patroni's cluster has no leader (the leader key is free): no server should take \
             lightningd's writes now",
            "wait for Patroni to elect a leader (patronictl list)",
        )];
    };
    if i.require_leader && (node.name != leader || !node.is_primary()) {
        out.push(Finding::new(
            Code::PatroniNotLeader,
            format!(
                "this node ({}, role {}) is not Patroni's leader ({leader})",
                node.name, node.role
            ),
            "start lightningd on the leader's host, or move the leader with patronictl \
             switchover",
        ));
    }
    if i.require_leader {
        out.extend(wallet_unproven(node, i.primary));
    }
    let Some(primary) = i.primary.filter(|p| !p.in_recovery) else {
        return out;
    };
    match &p.leader {
        None => {}
        Some(Err(e)) => out.push(unreachable("GET /patroni on the leader", leader, e)),
        Some(Ok(l)) => {
            if let Some(why) = differs(primary, l) {
                out.push(Finding::new(
                    Code::PatroniWalletNotLeader,
                    format!("the wallet DSN's server is not Patroni's leader {leader}: {why}"),
                    "point the wallet DSN at the leader's own Unix socket (never a VIP or a \
                     multi-host DSN) and restart lightningd beside the leader",
                ));
            }
        }
    }
    out
}

/// `--require-leader`: the wallet DSN must be shown to reach this node's PostgreSQL. A DSN
/// that reached no server, or a system identifier one side hides, proves nothing, and the
/// pre-flight must fail in every `replguard-mode` (a standby reached is `wallet-on-standby`).
fn wallet_unproven(node: &NodeStatus, primary: Option<&PrimaryFacts>) -> Option<Finding> {
    let why = match primary {
        None => "the wallet DSN reached no server".to_string(),
        Some(p) if p.system_identifier.is_none() || node.system_identifier.is_none() => {
            "the system identifier of the wallet's server or of this node's PostgreSQL cannot \
             be read (GRANT pg_monitor to the wallet's role)"
                .to_string()
        }
        Some(_) => return None,
    };
    Some(Finding::new(
        Code::PatroniWalletNotLeader,
        format!("cannot show that the wallet DSN reaches this node's PostgreSQL: {why}"),
        "point the wallet DSN at this host's Unix socket and let the pre-flight retry (--wait)",
    ))
}

/// Why the wallet's server is not the leader's PostgreSQL, if it is not.
fn differs(primary: &PrimaryFacts, leader: &NodeStatus) -> Option<String> {
    if let (Some(a), Some(b)) = (primary.timeline, leader.timeline)
        && a != b
    {
        return Some(format!("it is on timeline {a}, the leader on {b}"));
    }
    let started = leader
        .postmaster_start
        .as_deref()
        .and_then(patroni_time_us)?;
    // Both read pg_postmaster_start_time(): the same server gives the same instant.
    (started != primary.postmaster_started_us).then(|| {
        format!(
            "it started at {}, the leader's PostgreSQL at {}",
            primary.postmaster_start,
            leader.postmaster_start.as_deref().unwrap_or("")
        )
    })
}

/// `2026-12-02 22:40:39.450905+00:00` (Patroni's `postmaster_start_time`) in µs since the
/// epoch.
pub fn patroni_time_us(text: &str) -> Option<i64> {
    let text = text.trim();
    let split = text.rfind(['+', '-']).filter(|&i| i > 10)?;
    let (local, offset) = text.split_at(split);
    let t = humantime::parse_rfc3339_weak(&local.replacen(' ', "T", 1)).ok()?;
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let digits: Vec<i64> = offset[1..]
        .split(':')
        .map(|d| d.parse().ok())
        .collect::<Option<_>>()?;
    let offset_s = match digits[..] {
        [h] => h * 3600,
        [h, m] => h * 3600 + m * 60,
        _ => return None,
    };
    let utc_us = i64::try_from(t.duration_since(UNIX_EPOCH).ok()?.as_micros()).ok()?;
    Some(utc_us - sign * offset_s * 1_000_000)
}

/// For tests and callers that hold a `SystemTime`.
pub fn us_of(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as i64
}
