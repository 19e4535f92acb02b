//! `cln-replguard evidence-check --standby-dsn DSN`: what the replicated evidence says about
//! promoting this standby now, without promoting it — for Patroni's `pre_promote` callback
//! (contrib/patroni/pre_promote), whose non-zero exit vetoes the promotion.

use anyhow::{Context as _, Result};

use crate::dsn::PgTarget;
use crate::evidence::{self, Judgement};
use crate::policy::Policy;
use crate::probe;

/// 0: the newest evidence says every acknowledged commit reached this standby; 2: it says
/// some may not have (or the standby is no standby); 3: nothing can be said.
pub async fn evidence_check(standby_dsn: &str) -> Result<i32> {
    let policy = Policy::default();
    let target = PgTarget::parse(standby_dsn).context("--standby-dsn")?;
    let facts = match probe::observe_standby(&target, &policy).await {
        Ok(f) => f,
        Err(f) => {
            println!("REPLGUARD EVIDENCE UNKNOWN: cannot check {target}: {f}");
            return Ok(3);
        }
    };
    if !facts.in_recovery {
        println!("REPLGUARD EVIDENCE NOT-COVERED: {target} is not in recovery (already a primary)");
        return Ok(2);
    }
    let newest = match probe::evidence::newest(&target, policy.query_timeout).await {
        Ok(n) => n,
        Err(f) => {
            println!("REPLGUARD EVIDENCE UNKNOWN: reading evidence on {target}: {f}");
            return Ok(3);
        }
    };
    let name = facts.walsender_name();
    let side = evidence::StandbySide {
        name: &name,
        system_id: facts.system_identifier.as_deref(),
        timeline: facts.timeline,
    };
    Ok(match evidence::judge(newest.as_ref(), &side) {
        Judgement::Covered => {
            println!("REPLGUARD EVIDENCE COVERED: {name} holds every acknowledged commit");
            0
        }
        Judgement::NotCovered { why } => {
            println!("REPLGUARD EVIDENCE NOT-COVERED: {why}");
            2
        }
        Judgement::Unverifiable { why } => {
            println!("REPLGUARD EVIDENCE UNKNOWN: {why}");
            3
        }
    })
}
