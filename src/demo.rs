//! `cln-replguard demo`: a throwaway local primary+standby pair, checked while healthy, with
//! the standby hung, and after it is restored. Everything is stopped and removed at the end,
//! also on Ctrl-C.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster::{Cluster, ClusterSpec};
use crate::dsn::{PgTarget, WalletDsn};
use crate::policy::Policy;
use crate::probe::{self, Targets};
use crate::verdict::{self, Level};
use crate::{failover, report};

pub async fn run() -> Result<i32> {
    println!("== Starting a throwaway primary and a synchronous standby 's1' (Unix sockets, /tmp)");
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(&ClusterSpec::pair()))
        .await
        .context("starting the pair")??;
    let outcome = tokio::select! {
        r = scenario(&cluster) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    println!("\n== Stopping both servers and removing their directories");
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    outcome
}

async fn scenario(c: &Cluster) -> Result<i32> {
    let policy = Policy::default();
    let targets = Targets::new(
        WalletDsn::parse(&c.primary.wallet_dsn())?,
        vec![PgTarget::parse(
            &c.standby("s1").conninfo("postgres", "postgres"),
        )?],
    );
    println!("   wallet DSN:  {}", c.primary.wallet_dsn());
    println!(
        "   standby DSN: {}",
        c.standby("s1").conninfo("postgres", "postgres")
    );

    println!("\n== 1. cln-replguard status  (healthy pair)");
    let first = status(&targets, &policy).await;

    println!("\n== 2. The standby's WAL receiver hangs (SIGSTOP). PostgreSQL itself still says:");
    c.standby("s1").hang_walreceiver()?;
    println!(
        "   pg_stat_replication: {}",
        c.primary
            .psql("SELECT application_name || ' state=' || state || ' sync_state=' || sync_state FROM pg_stat_replication")?
    );
    println!("   cln-replguard status:");
    let hung_at = Instant::now();
    let second = status(&targets, &policy).await;
    println!(
        "   (noticed {:.1} s after the hang)",
        hung_at.elapsed().as_secs_f64()
    );

    println!("\n== 3. cln-replguard failover-check  (while hung)");
    let obs = probe::observe_failover(&targets, &policy, Duration::from_millis(500)).await;
    print!(
        "{}",
        indent(&report::failover_text(&failover::evaluate(&obs)))
    );

    println!("\n== 4. The standby resumes (SIGCONT)");
    c.standby("s1").resume();
    tokio::task::block_in_place(|| c.wait_commits_flow())?;
    let third = status(&targets, &policy).await;

    let expected = [Level::Safe, Level::Unsafe, Level::Safe];
    let seen = [first, second, third];
    println!(
        "\n== Verdicts: {} (expected {})",
        names(&seen),
        names(&expected)
    );
    if seen != expected {
        bail!("the demo did not see the expected verdicts");
    }
    Ok(0)
}

async fn status(targets: &Targets, policy: &Policy) -> Level {
    let obs = probe::observe(targets, policy).await;
    let v = verdict::evaluate(&obs, policy);
    print!("{}", indent(&report::status_text(&obs, &v)));
    v.level
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}

fn names(levels: &[Level]) -> String {
    levels
        .iter()
        .map(|l| l.as_str())
        .collect::<Vec<_>>()
        .join(" → ")
}
