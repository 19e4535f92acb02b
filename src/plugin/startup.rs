//! The startup check at `init`: lightningd has opened its wallet and waits for our answer
//! before it talks to any peer (DESIGN §2). We decide by `action::decide`; a no-go in
//! `enforce` stops the node before "Server started".

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use cln_plugin::ConfiguredPlugin;
use serde_json::json;
use tokio::io::{DuplexStream, Stdout};

use super::lightningd;
use crate::action::{self, Mode};
use crate::config;
use crate::facts::{FailureKind, Observation, PinnedCommit, ProbeFailure, WalletObservation};
use crate::lightningd_rpc;
use crate::options::{self, Settings};
use crate::policy::Policy;
use crate::probe::{self, Targets};
use crate::verdict::{Level, Verdict};

/// What the RPC methods work with once lightningd runs.
#[derive(Clone)]
pub struct State(pub Arc<Inner>);

pub struct Inner {
    /// What to check; the reason when nothing can be (warn mode only).
    pub targets: Result<Targets, String>,
    /// lightningd's `synchronous_commit`, pinned at `init`.
    pub pinned: Option<PinnedCommit>,
    /// The options, validated (the mode and the policy included).
    pub settings: Settings,
    /// lightningd's JSON-RPC socket.
    pub rpc_path: PathBuf,
    /// Where the status file goes (`None`: off).
    pub status_file: Option<PathBuf>,
    /// What the runtime guard last concluded; read by the hooks and the methods.
    pub guard: GuardShared,
}

pub struct GuardShared {
    /// The reported (debounced) level the hooks act on.
    pub level: std::sync::Mutex<Level>,
    /// The last report and when it was taken.
    pub latest: std::sync::Mutex<Option<(Instant, crate::report::StatusDocument)>>,
    pub counters: std::sync::Mutex<crate::metrics::Counters>,
    /// The options `setconfig` may change while lightningd runs.
    pub runtime: std::sync::Mutex<Runtime>,
}

/// The runtime-safe options (declared `dynamic`), as last set.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub interval: Duration,
    pub alert_command: Option<String>,
}

impl GuardShared {
    pub fn new(level: Level, settings: &Settings) -> GuardShared {
        GuardShared {
            runtime: std::sync::Mutex::new(Runtime {
                interval: settings.interval,
                alert_command: settings.alert_command.clone(),
            }),
            level: std::sync::Mutex::new(level),
            latest: std::sync::Mutex::new(None),
            counters: std::sync::Mutex::new(crate::metrics::Counters::default()),
        }
    }

    /// The last report and when it was taken.
    pub fn latest(&self) -> Option<(Instant, crate::report::StatusDocument)> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn runtime(&self) -> Runtime {
        self.runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A `setconfig` the options module accepted.
    pub fn change(&self, c: options::RuntimeChange) {
        let mut r = self.runtime.lock().unwrap_or_else(|e| e.into_inner());
        match c {
            options::RuntimeChange::Interval(i) => r.interval = i,
            options::RuntimeChange::AlertCommand(a) => r.alert_command = a,
        }
    }

    pub fn counters(&self) -> crate::metrics::Counters {
        *self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    pub fn level(&self) -> Level {
        *self.guard.level.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Pause between two attempts while waiting for a go.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Returns the state when lightningd may go on; otherwise stops the node and exits.
pub async fn check(
    c: &ConfiguredPlugin<State, DuplexStream, Stdout>,
    payment_hooks: bool,
) -> State {
    let started = Instant::now();
    let conf = c.configuration();
    let lightning_dir = PathBuf::from(&conf.lightning_dir);
    let rpc_path = lightning_dir.join(&conf.rpc_file);

    // Whether lightningd stops by itself when we exit decides how to refuse; ask first, so
    // every refusal below (bad options included) stops the node.
    let (important, wallet) = ask_lightningd(&rpc_path, &lightning_dir).await;
    let settings = settings_or_refuse(c, important);
    let deadline = started + settings.startup_wait;
    refuse_unsupported_lightningd(&settings, important);
    if settings.gate.payment_hooks_needed() && !payment_hooks {
        let problem =
            "replguard-gate-payments=true (or a payment command gated), but lightningd's \
                       configuration read before init did not say so: the payment hooks are not \
                       registered, so payments cannot be refused; restart lightningd"
                .to_string();
        if settings.mode == Mode::Enforce {
            no_go(vec![problem], important);
        } else {
            log::warn!("{problem}");
        }
    }

    let targets = match wallet.map(|v| lightningd::wallet_from_listconfigs(&v)) {
        Ok(Some(w)) => config::plugin_targets(&w, &settings),
        Ok(None) => Err("lightningd did not tell its wallet DSN".to_string()),
        Err(e) => Err(format!("cannot ask lightningd for its wallet DSN: {e:#}")),
    };
    let targets = match targets {
        Ok(t) => t,
        Err(problem) => {
            // warn, or a plain plugin: lightningd runs; the methods say why nothing can be
            // checked.
            if settings.mode == Mode::Enforce {
                no_go(vec![problem.clone()], important);
            } else {
                log::warn!("{problem}; nothing to check (replguard-mode=warn)");
            }
            return State(Arc::new(Inner {
                targets: Err(problem),
                pinned: None,
                status_file: status_file(&settings, &lightning_dir),
                guard: GuardShared::new(Level::Unknown, &settings),
                settings,
                rpc_path,
            }));
        }
    };
    for w in targets.warnings() {
        log::warn!("{w}");
    }

    let (obs, verdict, decision) = check_until_go(&targets, &settings, deadline).await;
    act_on_the_decision(&verdict, decision, started.elapsed(), &settings, important);
    let pinned = obs.primary().map(|p| PinnedCommit {
        value: p.session.synchronous_commit.clone(),
        source: p.session.synchronous_commit_source.clone(),
    });
    State(Arc::new(Inner {
        targets: Ok(targets),
        pinned,
        status_file: status_file(&settings, &lightning_dir),
        guard: GuardShared::new(verdict.level, &settings),
        settings,
        rpc_path,
    }))
}

/// Whether lightningd names us an important plugin (it then stops by itself when we exit),
/// and its `wallet` config. Both at once: lightningd waits for our init answer.
async fn ask_lightningd(
    rpc_path: &std::path::Path,
    lightning_dir: &std::path::Path,
) -> (bool, anyhow::Result<serde_json::Value>) {
    let ask = |config: &'static str, timeout| {
        lightningd_rpc::call(
            rpc_path,
            "listconfigs",
            json!({ "config": config }),
            timeout,
        )
    };
    let query_timeout = Policy::default().query_timeout;
    let (important, wallet) = tokio::join!(
        ask("important-plugin", query_timeout),
        ask("wallet", query_timeout)
    );
    let important = match important {
        Ok(v) => lightningd::names_this_binary(&lightningd::important_plugins(&v), lightning_dir),
        Err(e) => {
            log::debug!("listconfigs important-plugin: {e:#}");
            false
        }
    };
    (important, wallet)
}

/// The options, validated; invalid ones stop the node in enforce mode, else the defaults in
/// warn mode.
fn settings_or_refuse(
    c: &ConfiguredPlugin<State, DuplexStream, Stdout>,
    important: bool,
) -> Settings {
    match read_settings(c) {
        Ok(s) => s,
        Err((mode, problem)) => {
            if mode == Mode::Enforce {
                no_go(
                    vec![format!(
                        "invalid option, using the defaults with replguard-mode=warn: {problem}"
                    )],
                    important,
                );
            } else {
                log::warn!("invalid option, using the defaults (replguard-mode=warn): {problem}");
            }
            Settings {
                mode: Mode::Warn,
                ..Settings::default()
            }
        }
    }
}

/// A lightningd whose hooks cannot be filtered: refused in enforce mode, a warning otherwise.
fn refuse_unsupported_lightningd(settings: &Settings, important: bool) {
    let version = std::env::var("LIGHTNINGD_VERSION").unwrap_or_default();
    if let Err(problem) = lightningd_rpc::hook_filters_supported(&version) {
        if settings.mode == Mode::Enforce {
            no_go(vec![problem], important);
        } else {
            log::warn!("{problem}");
        }
    }
}

/// Checks again, a pause apart, until the decision is a go or the deadline has passed.
async fn check_until_go(
    targets: &Targets,
    settings: &Settings,
    deadline: Instant,
) -> (Observation, Verdict, action::Decision) {
    loop {
        let obs = observe_until(targets, &settings.policy, deadline).await;
        let v = crate::patroni::verdict_of(
            &obs,
            &settings.policy,
            settings.patroni_url.as_ref(),
            false,
        )
        .await;
        let d = action::decide(v.level, settings.mode);
        if d.go || Instant::now() >= deadline {
            return (obs, v, d);
        }
        tokio::time::sleep(RETRY_EVERY.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
}

/// A no-go stops the node with the findings; a go logs them when the decision says so, then
/// the outcome.
fn act_on_the_decision(
    verdict: &Verdict,
    decision: action::Decision,
    took: Duration,
    settings: &Settings,
    important: bool,
) {
    if !decision.go {
        let mut lines = vec![format!(
            "the wallet's storage is {} (replguard-mode=enforce, checked for {:.1} s)",
            verdict.level,
            took.as_secs_f64()
        )];
        lines.extend(finding_lines(verdict));
        no_go(lines, important);
    } else if decision.report_findings {
        for l in finding_lines(verdict) {
            log::warn!("{l}");
        }
    } else {
        // Safe, perhaps with advice: worth reading once, not a warning.
        for l in finding_lines(verdict) {
            log::info!("{l}");
        }
    }
    log::info!(
        "startup check: {} in {} ms (replguard-mode={})",
        verdict.level,
        took.as_millis(),
        settings.mode
    );
}

/// `replguard-status-file`, relative paths under the lightning-dir.
fn status_file(settings: &Settings, lightning_dir: &std::path::Path) -> Option<PathBuf> {
    crate::statusfile::location(&settings.status_file, lightning_dir)
}

/// The options as lightningd passed them, validated. On error: the mode to act in (enforce
/// unless warn was given plainly) and the problem.
fn read_settings(
    c: &ConfiguredPlugin<State, DuplexStream, Stdout>,
) -> Result<Settings, (Mode, options::OptionError)> {
    use cln_plugin::options::Value;
    let mut given: Vec<(&str, String)> = Vec::new();
    for d in options::ALL {
        let name = d.name;
        match c.option_str(name) {
            Ok(Some(Value::String(s))) => given.push((name, s)),
            Ok(Some(Value::StringArray(a))) => given.extend(a.into_iter().map(|s| (name, s))),
            Ok(Some(Value::Integer(i))) => given.push((name, i.to_string())),
            Ok(Some(Value::Boolean(b))) => given.push((name, b.to_string())),
            _ => {}
        }
    }
    options::settings(given.iter().map(|(name, value)| options::Given {
        name,
        value: Some(value.as_str()),
        origin: "lightningd option",
    }))
    .map_err(|problem| {
        let warn = given
            .iter()
            .any(|(n, v)| *n == options::MODE && v == "warn");
        (if warn { Mode::Warn } else { Mode::Enforce }, problem)
    })
}

/// One observation, cut off at the startup deadline (but given at least a query timeout):
/// lightningd kills a plugin that has not answered `init` within 120 s.
async fn observe_until(targets: &Targets, policy: &Policy, deadline: Instant) -> Observation {
    let budget = deadline
        .saturating_duration_since(Instant::now())
        .max(policy.query_timeout * 2);
    match tokio::time::timeout(budget, probe::observe(targets, policy)).await {
        Ok(obs) => obs,
        Err(_) => Observation {
            checked_at: SystemTime::now(),
            took_ms: budget.as_secs_f64() * 1000.0,
            wallet: WalletObservation::Postgres {
                target: "the wallet's server".into(),
                primary: Err(ProbeFailure {
                    kind: FailureKind::Timeout,
                    stage: "startup check".into(),
                    detail: format!("no verdict within {} ms", budget.as_millis()),
                }),
            },
            standbys: vec![],
            pinned_commit: None,
        },
    }
}

fn finding_lines(v: &Verdict) -> Vec<String> {
    v.findings.iter().map(ToString::to_string).collect()
}

/// A no-go at startup in `enforce`. As `important-plugin` we stop the node (`refuse`). A plain
/// `plugin=` means, in Core Lightning, that lightningd runs whatever the plugin finds (and
/// `reckless install` writes that line): we say so in the same log line, with how to make
/// lightningd refuse, and go on as the runtime guard.
fn no_go(mut lines: Vec<String>, important: bool) {
    if important {
        lines[0] = format!("refusing to run lightningd: {}", lines[0]);
        refuse(lines);
    }
    let path = std::env::args()
        .next()
        .unwrap_or_else(|| "cln-replguard".into());
    lines[0] = format!(
        "{}: lightningd starts anyway, because cln-replguard is loaded with plugin=, not \
         important-plugin=, and Core Lightning never stops for a plain plugin; the runtime \
         guard still acts (replguard-on-unsafe). To have lightningd refuse to start, change the \
         line to important-plugin={path}",
        lines[0]
    );
    for l in &lines {
        log::warn!("{l}");
    }
}

/// Stops the node: the lines reach lightningd's log, then we exit. As `important-plugin`
/// that makes lightningd shut down before "Server started" (DESIGN §2).
fn refuse(lines: Vec<String>) -> ! {
    lightningd::log_now("broken", &lines);
    for l in &lines {
        eprintln!("cln-replguard: {l}");
    }
    std::process::exit(1)
}
