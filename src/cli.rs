//! The operator commands. Exit codes follow the Monitoring Plugins convention:
//! 0 safe, 1 degraded, 2 unsafe, 3 unknown (and 3 for a usage error: nothing was checked).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::{self, Preflight, Resolved};
use crate::dsn::WalletDsn;
use crate::lnconfig::Location;
use crate::probe::{self, Targets};
use crate::{failover, options, policy, preflight, report};

/// Exit status when the command line itself is wrong: nothing was checked, so "unknown".
pub const EXIT_USAGE: i32 = 3;

/// `cln-replguard --version`: the version and the git commit it was built from (build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CLN_REPLGUARD_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "cln-replguard",
    version = VERSION,
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
        /// Read the plugin's status file instead of checking (works while lightningd is
        /// frozen); a file older than 3 check intervals reads as unknown.
        #[arg(long, value_name = "PATH")]
        from_file: Option<PathBuf>,
    },
    /// One line and an exit status, for monitoring systems and scripts. With
    /// --lightning-dir, the pre-flight before lightningd starts (systemd ExecStartPre): it
    /// passes or fails by replguard-mode, as the plugin's startup check does.
    Check {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Pre-flight: retry until the check says go, for at most this many seconds.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
        /// Pre-flight: do not record the verdict in replguard.evidence (by default the
        /// pre-flight records a change of verdict there, as the plugin does, for
        /// `cln-replguard failover` to read on the standby).
        #[arg(long)]
        no_evidence: bool,
        /// Pass only when the local Patroni (--patroni-url or replguard-patroni-url) is the
        /// leader and the wallet DSN reaches its PostgreSQL: the pre-flight on a Patroni host.
        #[arg(long)]
        require_leader: bool,
        /// Without --lightning-dir: record a change of verdict in replguard.evidence. Only
        /// through lightningd's own wallet DSN: a check run as another role would record what
        /// that role's commits get, not lightningd's.
        #[arg(long, conflicts_with = "no_evidence")]
        record_evidence: bool,
    },
    /// Go/no-go: would a failover right now lose an acknowledged commit? Exit 0 only if not.
    FailoverCheck {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        /// How long to wait for a standby to flush up to the primary's position.
        #[arg(long, value_name = "MS", default_value_t = policy::DEFAULT_FAILOVER_WAIT.as_millis() as u64)]
        wait_ms: u64,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Promotes the standby after fencing the old node and verifying that the standby holds
    /// every acknowledged commit (contrib/FAILOVER.md). Exit 0 promoted, 2 refused.
    Failover(crate::takeover::FailoverArgs),
    /// What the replicated evidence on this standby says about promoting it now, without
    /// promoting: exit 0 covered, 2 not covered, 3 unknown (Patroni's pre_promote,
    /// contrib/patroni/).
    EvidenceCheck {
        /// The standby, on the wallet's database (the evidence table is there).
        #[arg(
            long,
            value_name = "DSN",
            env = "REPLGUARD_STANDBY_DSN",
            hide_env_values = true
        )]
        standby_dsn: String,
    },
    /// Builds the primary + synchronous standby pair: here (local), or prints/applies each
    /// host's steps (primary, standby). See contrib/README.md.
    #[command(subcommand)]
    Setup(crate::setup::SetupCommand),
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
    pub dsn: Option<String>,
    /// A standby to check from its own side (repeatable): libpq key=value or URI.
    #[arg(long = "standby-dsn", value_name = "DSN")]
    pub standby_dsn: Vec<String>,
    /// Take the wallet DSN and the replguard-* options from lightningd's configuration in
    /// this directory (as lightningd --lightning-dir). Makes `check` the pre-flight.
    #[arg(long, value_name = "DIR", conflicts_with = "dsn")]
    pub lightning_dir: Option<PathBuf>,
    /// With the configuration: lightningd's --network (default: from the config, else bitcoin).
    #[arg(long, value_name = "NETWORK", conflicts_with = "dsn")]
    pub network: Option<String>,
    /// With the configuration: lightningd's --conf (the only file lightningd then reads).
    #[arg(long, value_name = "FILE", conflicts_with = "dsn")]
    pub conf: Option<PathBuf>,
    /// The local Patroni REST API, http://host:port [default: replguard-patroni-url]: its
    /// settings and leader are judged with the rest.
    #[arg(long, value_name = "URL")]
    pub patroni_url: Option<String>,
}

#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// Deadline of each connection and query [default: 2000, or replguard-query-timeout-ms].
    #[arg(long, value_name = "MS")]
    pub query_timeout_ms: Option<u64>,
    /// A test commit not acknowledged within this means commits are blocked (unsafe)
    /// [default: 1000, or replguard-probe-deadline-ms].
    #[arg(long, value_name = "MS")]
    pub probe_deadline_ms: Option<u64>,
    /// A test commit acknowledged later than this is degraded [default: 250, or
    /// replguard-probe-slow-ms].
    #[arg(long, value_name = "MS")]
    pub probe_slow_ms: Option<u64>,
    /// After a failover: an empty synchronous_standby_names is degraded, not unsafe, until
    /// this RFC 3339 time (at most 7 days ahead) [default: replguard-accept-no-standby-until].
    #[arg(long, value_name = "TIME")]
    pub accept_no_standby_until: Option<String>,
}

impl TargetArgs {
    fn uses_config(&self) -> bool {
        self.lightning_dir.is_some() || self.conf.is_some() || self.network.is_some()
    }

    pub fn resolve(&self, policy_args: &PolicyArgs) -> Result<Resolved> {
        let (wallet_dsn, mut settings, preflight_config) = if self.uses_config() {
            let loc = Location {
                lightning_dir: self.lightning_dir.clone(),
                network: self.network.clone(),
                conf: self.conf.clone(),
            };
            let (config, settings) = config::from_lightningd_config(&loc)?;
            if settings.dsn.is_some() {
                eprintln!(
                    "cln-replguard: note: the pre-flight checks through the wallet DSN itself \
                     (what lightningd will use); {} is for the plugin",
                    options::DSN
                );
            }
            (config.wallet.clone(), settings, Some(config))
        } else {
            let dsn = self
                .dsn
                .clone()
                .context("give the wallet DSN (--dsn or REPLGUARD_DSN), or --lightning-dir")?;
            (dsn, options::Settings::default(), None)
        };
        if let Some(ms) = policy_args.query_timeout_ms {
            settings.policy.query_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = policy_args.probe_deadline_ms {
            settings.policy.probe_deadline = Duration::from_millis(ms);
        }
        if let Some(ms) = policy_args.probe_slow_ms {
            settings.policy.probe_slow = Duration::from_millis(ms);
        }
        if let Some(t) = &policy_args.accept_no_standby_until {
            let given = options::Given {
                name: "--accept-no-standby-until",
                value: Some(t),
                origin: "command line",
            };
            settings.policy.accept_no_standby_until =
                Some(options::accept_until(&given, std::time::SystemTime::now())?);
        }
        settings.policy.validate().map_err(anyhow::Error::msg)?;
        if let Some(u) = &self.patroni_url {
            settings.patroni_url =
                Some(crate::patroni::PatroniUrl::parse(u).map_err(anyhow::Error::msg)?);
        }
        let wallet = WalletDsn::parse(&wallet_dsn).context(match &preflight_config {
            Some(c) => format!("wallet= ({})", c.wallet_origin),
            None => "--dsn".to_string(),
        })?;
        let standbys =
            config::standby_targets(settings.standby_dsns.iter().chain(&self.standby_dsn))
                .context("standby DSN")?;
        let targets = Targets::new(wallet, standbys);
        for w in targets.warnings() {
            eprintln!("cln-replguard: warning: {w}");
        }
        Ok(Resolved {
            patroni_url: settings.patroni_url.clone(),
            targets,
            policy: settings.policy,
            evidence: settings.evidence,
            preflight: preflight_config.map(|config| Preflight {
                mode: settings.mode,
                config,
            }),
        })
    }
}

/// Runs the CLI; returns the process exit status.
pub fn run(cli: Cli) -> i32 {
    crate::runtime::run_to_exit_code(execute(cli.command), EXIT_USAGE)
}

async fn execute(command: Command) -> Result<i32> {
    match command {
        Command::Status {
            from_file: Some(path),
            json,
            ..
        } => {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading the status file {}", path.display()))?;
            let doc = report::StatusDocument::from_json(&text)
                .with_context(|| format!("{} is not a status file", path.display()))?;
            let (doc, level) = crate::statusfile::judge(doc, std::time::SystemTime::now());
            if json {
                println!("{}", serde_json::to_string_pretty(&doc.to_json())?);
            } else {
                print!("{}", crate::statusfile::text(&doc));
            }
            Ok(level.exit_code())
        }
        Command::Status {
            target,
            policy,
            json,
            from_file: None,
        } => {
            let r = target.resolve(&policy)?;
            let (obs, v) = preflight::observe_and_judge(&r, false).await;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &report::StatusDocument::of(&obs, &v, &r.policy).to_json()
                    )?
                );
            } else {
                print!("{}", report::status_text(&obs, &v));
            }
            Ok(v.level.exit_code())
        }
        Command::Check {
            target,
            policy,
            wait,
            no_evidence,
            record_evidence,
            require_leader,
        } => {
            let mut r = target.resolve(&policy)?;
            r.evidence = match &r.preflight {
                Some(_) => r.evidence && !no_evidence,
                None => record_evidence,
            };
            if require_leader && r.patroni_url.is_none() {
                anyhow::bail!(
                    "--require-leader needs the local Patroni: give --patroni-url (or set {})",
                    options::PATRONI_URL
                );
            }
            match &r.preflight {
                Some(p) => {
                    Ok(preflight::run(&r, p, wait.map(Duration::from_secs), require_leader).await)
                }
                None if wait.is_some() => {
                    anyhow::bail!(
                        "--wait belongs to the pre-flight: give --lightning-dir (or --conf)"
                    )
                }
                None => Ok(check_once(&r, require_leader).await),
            }
        }
        Command::FailoverCheck {
            target,
            policy,
            wait_ms,
            json,
        } => failover_check(&target, &policy, wait_ms, json).await,
        Command::Failover(args) => crate::takeover::run(args).await,
        Command::EvidenceCheck { standby_dsn } => {
            crate::patroni::prepromote::evidence_check(&standby_dsn).await
        }
        Command::Setup(cmd) => crate::setup::run(cmd).await,
        Command::Demo => crate::demo::run().await,
    }
}

/// `check` without the configuration: one line and the verdict's exit status.
async fn check_once(r: &Resolved, require_leader: bool) -> i32 {
    let (obs, v) = preflight::observe_and_judge(r, require_leader).await;
    println!("{}", report::check_line(&obs, &v, &r.policy));
    if r.evidence {
        preflight::record_evidence(r, &obs, &v).await;
    }
    v.level.exit_code()
}

/// `failover-check`: the go/no-go, with Patroni's `/sync` when `--patroni-url` is given.
async fn failover_check(
    target: &TargetArgs,
    policy: &PolicyArgs,
    wait_ms: u64,
    json: bool,
) -> Result<i32> {
    let r = target.resolve(policy)?;
    let obs = probe::observe_failover(&r.targets, &r.policy, Duration::from_millis(wait_ms)).await;
    let answer = crate::patroni::failover::judged(
        failover::evaluate(&obs),
        r.patroni_url.as_ref(),
        r.policy.query_timeout,
    )
    .await;
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
