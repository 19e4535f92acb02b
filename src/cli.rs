//! The operator commands. Exit codes follow the Monitoring Plugins convention:
//! 0 safe, 1 degraded, 2 unsafe, 3 unknown (and 3 for a usage error: nothing was checked).

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

use crate::dsn::{PgTarget, WalletDsn};
use crate::policy::Policy;
use crate::probe::{self, Targets};
use crate::{failover, report, verdict};

/// Exit status when the command line itself is wrong: nothing was checked, so "unknown".
pub const EXIT_USAGE: i32 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "cln-replguard",
    version,
    about = "Verifies that Core Lightning's PostgreSQL wallet is synchronously replicated",
    long_about = "Verifies that Core Lightning's PostgreSQL wallet is synchronously replicated.\n\
                  Exit status: 0 safe, 1 degraded, 2 unsafe, 3 unknown.\n\
                  Run without a subcommand by lightningd, it is the plugin."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The whole picture: verdict, findings with remedies, standbys, settings.
    Status {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// One line and an exit status, for monitoring systems and scripts.
    Check {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        policy: PolicyArgs,
    },
    /// Go/no-go: would a failover right now lose an acknowledged commit? Exit 0 only if not.
    FailoverCheck {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        /// How long to wait for a standby to flush up to the primary's position.
        #[arg(long, value_name = "MS", default_value_t = 2000)]
        wait_ms: u64,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Starts a throwaway primary+standby pair here, shows safe → standby hung → unsafe →
    /// restored → safe, then removes everything.
    Demo,
}

#[derive(Args, Debug)]
pub struct TargetArgs {
    /// The wallet DSN, exactly as lightningd's wallet= option (postgres://…). Prefer the
    /// environment variable: a password on the command line shows in `ps`.
    #[arg(
        long,
        env = "REPLGUARD_DSN",
        value_name = "DSN",
        hide_env_values = true
    )]
    pub dsn: String,
    /// A standby to check from its own side (repeatable): libpq key=value or URI.
    #[arg(long = "standby-dsn", value_name = "DSN")]
    pub standby_dsn: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// Deadline of each connection and query.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub query_timeout_ms: u64,
    /// A test commit not acknowledged within this means commits are blocked (unsafe).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub probe_deadline_ms: u64,
    /// A test commit acknowledged later than this is degraded.
    #[arg(long, value_name = "MS", default_value_t = 250)]
    pub probe_slow_ms: u64,
}

impl PolicyArgs {
    pub fn policy(&self) -> Result<Policy> {
        let p = Policy {
            query_timeout: Duration::from_millis(self.query_timeout_ms),
            probe_deadline: Duration::from_millis(self.probe_deadline_ms),
            probe_slow: Duration::from_millis(self.probe_slow_ms),
        };
        p.validate().map_err(anyhow::Error::msg)?;
        Ok(p)
    }
}

impl TargetArgs {
    pub fn targets(&self) -> Result<Targets> {
        let wallet = WalletDsn::parse(&self.dsn).context("--dsn")?;
        let standbys = self
            .standby_dsn
            .iter()
            .map(|d| PgTarget::parse(d).context("--standby-dsn"))
            .collect::<Result<Vec<_>>>()?;
        let targets = Targets { wallet, standbys };
        for w in targets.warnings() {
            eprintln!("cln-replguard: warning: {w}");
        }
        Ok(targets)
    }
}

/// Runs the CLI; returns the process exit status.
pub fn run(cli: Cli) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cln-replguard: cannot start the async runtime: {e}");
            return EXIT_USAGE;
        }
    };
    let code = rt.block_on(async {
        match execute(cli.command).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("cln-replguard: {e:#}");
                EXIT_USAGE
            }
        }
    });
    // A commit probe left waiting on a blocked standby must not keep the process alive.
    rt.shutdown_background();
    code
}

async fn execute(command: Command) -> Result<i32> {
    match command {
        Command::Status {
            target,
            policy,
            json,
        } => {
            let (targets, policy) = (target.targets()?, policy.policy()?);
            let obs = probe::observe(&targets, &policy).await;
            let v = verdict::evaluate(&obs, &policy);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report::status_json(&obs, &v, &policy))?
                );
            } else {
                print!("{}", report::status_text(&obs, &v));
            }
            Ok(v.level.exit_code())
        }
        Command::Check { target, policy } => {
            let (targets, policy) = (target.targets()?, policy.policy()?);
            let obs = probe::observe(&targets, &policy).await;
            let v = verdict::evaluate(&obs, &policy);
            println!("{}", report::check_line(&obs, &v, &policy));
            Ok(v.level.exit_code())
        }
        Command::FailoverCheck {
            target,
            policy,
            wait_ms,
            json,
        } => {
            let (targets, policy) = (target.targets()?, policy.policy()?);
            let obs =
                probe::observe_failover(&targets, &policy, Duration::from_millis(wait_ms)).await;
            let answer = failover::evaluate(&obs);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report::failover_json(&obs, &answer))?
                );
            } else {
                print!("{}", report::failover_text(&answer));
            }
            Ok(answer.readiness.exit_code())
        }
        Command::Demo => crate::demo::run().await,
    }
}
