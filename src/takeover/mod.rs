//! `cln-replguard failover`: promote the standby without guessing (contrib/FAILOVER.md).
//!
//! 1. **Fence** by action: the old lightningd stopped, the old primary stopped and marked with
//!    `standby.signal` (`fence`). What cannot be done from here is listed; going on without it
//!    needs `--old-host-unreachable`.
//! 2. **Verify** that the standby holds every acknowledged commit: live (`failover-check`
//!    against the old primary, when it still answers), else from the evidence the primary's
//!    monitor recorded, which replicated to the standby (`crate::evidence`). Without proof,
//!    refuse unless `--accept-unverified`; with proof of the contrary, unless `--accept-loss`.
//! 3. **Promote**, wait for the new timeline, `CHECKPOINT`.
//! 4. **After**: the new primary inherited `synchronous_standby_names`, so its first commit
//!    would wait for a standby that is not there. The operator chose with `--then`: wait for a
//!    new standby, or run alone for a bounded time (`replguard-accept-no-standby-until`).

mod fence;
mod reach;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};

use crate::dsn::{PgTarget, WalletDsn};
use crate::evidence::{self, Judgement};
use crate::facts::StandbyFacts;
use crate::failover;
use crate::options::{self, MAX_ACCEPT_NO_STANDBY};
use crate::policy::Policy;
use crate::probe::{self, Targets};

pub use fence::Fenced;

/// Exit status when the tool refused: nothing was promoted.
pub const EXIT_REFUSED: i32 = 2;

#[derive(Args, Debug)]
pub struct FailoverArgs {
    /// The standby to promote, on the wallet's database (the evidence table is there). Its role
    /// must be allowed to promote and checkpoint (a superuser, or EXECUTE on pg_promote plus
    /// the pg_checkpoint role).
    #[arg(
        long,
        value_name = "DSN",
        env = "REPLGUARD_STANDBY_DSN",
        hide_env_values = true
    )]
    pub standby_dsn: String,
    /// The old primary, for a live check while it still answers (a planned switchover).
    #[arg(long, value_name = "DSN")]
    pub old_primary_dsn: Option<String>,
    /// The old primary's data directory, when it is on this host: it is stopped and
    /// standby.signal is written into it.
    #[arg(long, value_name = "DIR")]
    pub old_primary_data: Option<PathBuf>,
    /// The old lightningd's RPC socket (<lightning-dir>/<network>/lightning-rpc), when on
    /// this host: it is stopped, and must stop answering.
    #[arg(long, value_name = "PATH")]
    pub lightning_rpc: Option<PathBuf>,
    /// Go on although the old lightningd or primary could not be fenced from here; what went
    /// unverified is printed, with the commands to run on the old host.
    #[arg(long)]
    pub old_host_unreachable: bool,
    /// Promote although nothing proves that the standby holds every acknowledged commit.
    #[arg(long)]
    pub accept_unverified: bool,
    /// Promote although the evidence says acknowledged commits may exist only on the old
    /// primary (they will be lost; the node risks a penalty if it broadcasts old state).
    #[arg(long)]
    pub accept_loss: bool,
    /// After promotion: wait for a new standby (commits block until one streams), or run
    /// alone for --alone-for (synchronous_standby_names emptied; the plugin accepts it until
    /// the printed time).
    #[arg(long = "then", value_enum, value_name = "CHOICE")]
    pub after: After,
    /// With --then run-alone: how long running without a standby is accepted (at most 7 days).
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub alone_for: humantime::Duration,
    /// Where pg_ctl is [default: PG_BINDIR, pg_config --bindir, /usr/lib/postgresql/*/bin].
    #[arg(long, value_name = "DIR")]
    pub pg_bindir: Option<PathBuf>,
    /// Bound of each wait (lightningd stopping, the old primary stopping, promotion).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum After {
    WaitForStandby,
    RunAlone,
}

/// Runs the failover; returns the exit status (0 promoted, 2 refused).
pub async fn run(a: FailoverArgs) -> Result<i32> {
    let wait = Duration::from_secs(a.timeout);
    let policy = Policy::default();
    let standby = PgTarget::parse(&a.standby_dsn).context("--standby-dsn")?;
    let alone_until = SystemTime::now() + *a.alone_for;
    if a.after == After::RunAlone && *a.alone_for > MAX_ACCEPT_NO_STANDBY {
        anyhow::bail!("--alone-for: at most 7 days");
    }

    say("standby", &format!("checking {standby}"));
    let facts = probe::observe_standby(&standby, &policy)
        .await
        .map_err(|f| anyhow::anyhow!("the standby: {f}"))?;
    if !facts.in_recovery {
        say_refused(&format!(
            "{standby} already answers as a primary (timeline {:?}): nothing to promote; if \
             that was not this tool, two primaries may exist — stop lightningd everywhere first",
            facts.timeline
        ));
        return Ok(EXIT_REFUSED);
    }
    if let Some((manager, evidence)) =
        crate::patroni::managed::manager_on(&standby, policy.query_timeout).await
    {
        say_refused(&crate::patroni::managed::refusal(
            manager, "failover", &evidence,
        ));
        return Ok(EXIT_REFUSED);
    }
    let t = Takeover {
        a: &a,
        name: facts.walsender_name(),
        standby,
        facts,
        policy,
        wait,
    };
    let Some(verified) = t.fence_and_verify().await? else {
        return Ok(EXIT_REFUSED);
    };
    t.say_verified(&verified);
    t.promote(alone_until).await?;
    Ok(0)
}

/// What every step works with: the operator's arguments and the standby to promote.
struct Takeover<'a> {
    a: &'a FailoverArgs,
    standby: PgTarget,
    facts: StandbyFacts,
    /// The name the standby streams under.
    name: String,
    policy: Policy,
    /// Bound of each wait.
    wait: Duration,
}

impl Takeover<'_> {
    fn side(&self) -> evidence::StandbySide<'_> {
        evidence::StandbySide {
            name: &self.name,
            system_id: self.facts.system_identifier.as_deref(),
            timeline: self.facts.timeline,
        }
    }

    /// Steps 1 to 4: fence lightningd, verify, fence the old primary, verify again. The
    /// judgement to promote on; `None` when refused (and said why).
    async fn fence_and_verify(&self) -> Result<Option<Judgement>> {
        let a = self.a;
        // 1. Fence lightningd first: no commit may happen after what is verified next.
        let lightningd = fence::lightningd(a.lightning_rpc.as_deref(), self.wait).await;
        let mut unverified = Vec::new();
        if let Some(stop) = tally("lightningd", &lightningd, &mut unverified) {
            say_refused(&format!("{stop}; nothing else was done"));
            return Ok(None);
        }

        // 2. Verify before touching the old primary: a refusal leaves it as it was.
        let live = match &a.old_primary_dsn {
            Some(dsn) => live_check(dsn, &self.standby, &self.name, &self.policy).await?,
            None => None,
        };
        let first = match &live {
            Some(j) => j.clone(),
            None => from_evidence(&self.standby, &self.side(), &self.policy).await?,
        };
        if let Some(why) = refusal(&first, a, &self.name) {
            say_refused(&format!("{why}. The old primary was left as it was"));
            return Ok(None);
        }

        // 3. Fence the old primary.
        let Some(undo) = self
            .fence_old_primary(live.is_some(), &mut unverified)
            .await?
        else {
            return Ok(None);
        };

        // 4. Without a live answer, the evidence again: a row may have arrived meanwhile.
        let verified = match live {
            Some(j) => j,
            None => from_evidence(&self.standby, &self.side(), &self.policy).await?,
        };
        if let Some(why) = refusal(&verified, a, &self.name) {
            say_refused(&format!("{why}.{undo}"));
            return Ok(None);
        }
        Ok(Some(verified))
    }

    /// Step 3: the old primary stopped and marked, nothing answering where the standby
    /// streamed from. The hint to undo the fence (empty when there is none); `None` when
    /// refused (and said why).
    async fn fence_old_primary(
        &self,
        live_answered: bool,
        unverified: &mut Vec<String>,
    ) -> Result<Option<String>> {
        let a = self.a;
        let primary = match &a.old_primary_data {
            Some(d) => fence::old_primary(
                d,
                a.pg_bindir.as_deref(),
                self.wait,
                self.facts.system_identifier.as_deref(),
                &self.facts.upstream,
            ),
            None if live_answered => Fenced::Refused(
                "the old primary still answers and its data directory is not on this host \
                 (--old-primary-data): stop it on its host first"
                    .into(),
            ),
            None => Fenced::Unverified(
                "the old primary was not stopped or marked from here (no --old-primary-data)"
                    .into(),
            ),
        };
        let undo = match (&primary, &a.old_primary_data) {
            (Fenced::Verified(_), Some(d)) => format!(
                " To bring the old primary back as it was: rm {}/standby.signal, then start it.",
                d.display()
            ),
            _ => String::new(),
        };
        if let Some(stop) = tally("old primary", &primary, unverified) {
            say_refused(&format!("{stop}; nothing was promoted.{undo}"));
            return Ok(None);
        }
        // Whatever was fenced, nothing may still answer where the standby streamed from.
        let address = fence::old_primary_address(&self.facts.upstream, self.wait);
        if let Some(stop) = tally("old primary's address", &address, unverified) {
            say_refused(&format!("{stop}; nothing was promoted.{undo}"));
            return Ok(None);
        }
        if let (true, Some(dsn)) = (live_answered, &a.old_primary_dsn)
            && probe::answers(&WalletDsn::parse(dsn)?, self.policy.query_timeout).await
        {
            say_refused(&format!(
                "the old primary still answers at its DSN after the fence: --old-primary-data \
                 is not its data directory?{undo}"
            ));
            return Ok(None);
        }
        if !unverified.is_empty() {
            if !a.old_host_unreachable {
                say_refused(&format!(
                    "the old node is not fenced from here.{undo} On the old host run (or pass \
                     --old-host-unreachable if that host is gone for good):"
                ));
                for c in fence::old_host_commands(a.old_primary_data.as_ref()) {
                    println!("    {c}");
                }
                return Ok(None);
            }
            say(
                "fence",
                "going on with --old-host-unreachable; run these on the old host before it \
                 returns:",
            );
            for c in fence::old_host_commands(a.old_primary_data.as_ref()) {
                println!("    {c}");
            }
        }
        Ok(Some(undo))
    }

    fn say_verified(&self, verified: &Judgement) {
        say(
            "verify",
            &match verified {
                Judgement::Covered => format!("{} holds every acknowledged commit", self.name),
                Judgement::NotCovered { why } => {
                    format!("NOT COVERED, going on (--accept-loss): {why}")
                }
                Judgement::Unverifiable { why } => format!(
                    "UNVERIFIED, going on ({}): {why}",
                    if self.a.accept_unverified {
                        "--accept-unverified"
                    } else {
                        "--accept-loss"
                    }
                ),
            },
        );
    }

    /// Steps 5 and 6: promote, then the inherited `synchronous_standby_names` as the operator
    /// chose (`--then`).
    async fn promote(&self, alone_until: SystemTime) -> Result<()> {
        let standby = &self.standby;
        let promoted = probe::promote::promote(standby, self.facts.timeline, self.wait)
            .await
            .map_err(|f| anyhow::anyhow!("promotion: {f}"))?;
        say(
            "promote",
            &format!(
                "{standby} is the primary on timeline {} at {} ({} ms), CHECKPOINT done",
                promoted.timeline,
                promoted
                    .lsn
                    .map_or_else(|| "?".to_string(), |l| l.to_string()),
                promoted.took.as_millis()
            ),
        );

        match self.a.after {
            After::WaitForStandby => say(
                "after",
                &format!(
                    "synchronous_standby_names = '{}' kept: lightningd's commits wait until \
                     such a standby streams from this server (cln-replguard setup standby, \
                     contrib/README.md)",
                    promoted.sync_names
                ),
            ),
            After::RunAlone => {
                probe::promote::clear_sync_names(standby, self.policy.query_timeout)
                    .await
                    .map_err(|f| anyhow::anyhow!("{f}"))?;
                say(
                    "after",
                    &format!(
                        "synchronous_standby_names emptied: commits no longer wait for a \
                         standby. Add to lightningd's config, then start it:\n{}={}",
                        options::ACCEPT_NO_STANDBY_UNTIL,
                        crate::timefmt::rfc3339_seconds(alone_until)
                    ),
                );
            }
        }
        say(
            "next",
            "point lightningd's wallet= at this server, start it, and build a new standby",
        );
        Ok(())
    }
}

/// Says a fencing step; returns why to stop, if it must. Unverified steps are collected.
fn tally(what: &str, f: &Fenced, unverified: &mut Vec<String>) -> Option<String> {
    match f {
        Fenced::Verified(m) => {
            say(what, m);
            None
        }
        Fenced::Unverified(m) => {
            say(what, &format!("UNVERIFIED: {m}"));
            unverified.push(m.clone());
            None
        }
        Fenced::Refused(m) => {
            say(what, &format!("REFUSED: {m}"));
            Some(format!("fencing {what} failed"))
        }
    }
}

/// Why the judgement forbids promoting, given the operator's flags (`None`: go).
fn refusal(j: &Judgement, a: &FailoverArgs, name: &str) -> Option<String> {
    match j {
        Judgement::Covered => None,
        Judgement::NotCovered { .. } if a.accept_loss => None,
        Judgement::NotCovered { why } => Some(format!(
            "acknowledged commits may exist only on the old primary: {why}. Bring the old \
             primary back instead, or pass --accept-loss"
        )),
        Judgement::Unverifiable { .. } if a.accept_unverified || a.accept_loss => None,
        Judgement::Unverifiable { why } => Some(format!(
            "cannot verify that {name} holds every acknowledged commit: {why}. Pass \
             --accept-unverified to promote anyway"
        )),
    }
}

/// The newest evidence on the standby, said and judged.
async fn from_evidence(
    standby: &PgTarget,
    side: &evidence::StandbySide<'_>,
    policy: &Policy,
) -> Result<Judgement> {
    let newest = probe::evidence::newest(standby, policy.query_timeout)
        .await
        .map_err(|f| anyhow::anyhow!("reading evidence: {f}"))?;
    if let Some(r) = &newest {
        say(
            "evidence",
            &format!(
                "newest row {} at {} ({:.0} s ago, by {} as {}, timeline {}): {}, commits \
                 covered by [{}]",
                r.id,
                r.recorded_at,
                r.age_s,
                r.source,
                r.owner.as_deref().unwrap_or("?"),
                r.record
                    .timeline
                    .map_or_else(|| "?".to_string(), |t| t.to_string()),
                r.record.level,
                r.record.covered.join(", ")
            ),
        );
    }
    Ok(evidence::judge(newest.as_ref(), side))
}

/// DESIGN §5's failover-check on the old primary, for this standby. `None`: the old primary
/// does not answer, and the evidence decides.
async fn live_check(
    dsn: &str,
    standby: &PgTarget,
    name: &str,
    policy: &Policy,
) -> Result<Option<Judgement>> {
    let wallet = WalletDsn::parse(dsn).context("--old-primary-dsn")?;
    let targets = Targets::new(wallet, vec![standby.clone()]);
    let obs = probe::observe_failover(&targets, policy, Duration::from_secs(2)).await;
    if obs.primary().is_none() {
        say(
            "live check",
            "the old primary does not answer: the evidence decides",
        );
        return Ok(None);
    }
    let answer = failover::evaluate(&obs);
    let this = answer
        .standbys
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(name));
    let judgement = match this {
        Some(s) if s.ready => {
            say(
                "live check",
                &format!("failover-check on the old primary: {name} ready"),
            );
            Judgement::Covered
        }
        _ => {
            // Its own reasons, then those that rule out every standby.
            let mut why = match this {
                Some(s) => s.reasons.iter().map(ToString::to_string).collect(),
                None => vec![format!("{name} is not connected to the old primary")],
            };
            why.extend(answer.blockers.iter().map(ToString::to_string));
            let why = why.join("; ");
            say(
                "live check",
                &format!("failover-check on the old primary: {name} NOT ready: {why}"),
            );
            Judgement::NotCovered { why }
        }
    };
    Ok(Some(judgement))
}

fn say(step: &str, what: &str) {
    println!("cln-replguard failover: {step}: {what}");
}

fn say_refused(why: &str) {
    println!("cln-replguard failover: REFUSED: {why}");
}
