//! The `replguard-*` options: names and descriptions declared once, validated once into
//! `Settings`, for the plugin (lightningd passes them) and the CLI pre-flight (which reads
//! them from lightningd's config files), so both judge alike.

use std::time::{Duration, SystemTime};

use crate::action::Mode;
use crate::guard::GatePolicy;
use crate::policy::Policy;

pub const MODE: &str = "replguard-mode";
pub const DSN: &str = "replguard-dsn";
pub const STANDBY_DSN: &str = "replguard-standby-dsn";
pub const QUERY_TIMEOUT_MS: &str = "replguard-query-timeout-ms";
pub const PROBE_DEADLINE_MS: &str = "replguard-probe-deadline-ms";
pub const PROBE_SLOW_MS: &str = "replguard-probe-slow-ms";
pub const STARTUP_WAIT: &str = "replguard-startup-wait";
pub const INTERVAL: &str = "replguard-interval";
pub const ON_UNSAFE: &str = "replguard-on-unsafe";
pub const ON_UNKNOWN: &str = "replguard-on-unknown";
pub const UNSAFE_GRACE: &str = "replguard-unsafe-grace";
pub const GATE_PAYMENTS: &str = "replguard-gate-payments";
pub const GATED_COMMANDS: &str = "replguard-gated-commands";
pub const STATUS_FILE: &str = "replguard-status-file";
pub const REPLY_FRESH_MS: &str = "replguard-reply-fresh-ms";
pub const METRICS: &str = "replguard-metrics";
pub const METRICS_REMOTE: &str = "replguard-metrics-remote";
pub const ALERT_COMMAND: &str = "replguard-alert-command";
pub const ACCEPT_NO_STANDBY_UNTIL: &str = "replguard-accept-no-standby-until";
pub const EVIDENCE: &str = "replguard-evidence";
pub const PATRONI_URL: &str = "replguard-patroni-url";

/// How lightningd is told to type an option, with the default it shows in `listconfigs` and
/// `lightningd --help` (lightningd type-checks `int` and `bool` itself before we see them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Str(Option<&'static str>),
    /// Repeatable, no default.
    StrArray,
    Int(i64),
    Bool(bool),
}

/// One option as declared to lightningd.
pub struct Declared {
    pub name: &'static str,
    pub description: &'static str,
    pub kind: Kind,
    /// Changeable with `setconfig` while lightningd runs: only what neither weakens the
    /// startup decision nor the guard's thresholds (`RUNTIME_CHANGEABLE`).
    pub dynamic: bool,
}

/// `replguard-gated-commands`' default, as lightningd shows it.
pub const DEFAULT_GATED_COMMANDS: &str =
    "fundchannel,fundchannel_start,multifundchannel,openchannel_init,openchannel_bump,splice_init";

/// Every option. The plugin's manifest is built from this list.
pub const ALL: &[Declared] = &[
    Declared {
        name: MODE,
        description: "enforce (default): refuse to run on unsafe or unverifiable storage; warn: report and run",
        kind: Kind::Str(Some("enforce")),
        dynamic: false,
    },
    Declared {
        name: DSN,
        description: "DSN for monitoring (default: the wallet DSN); must reach the wallet's cluster",
        kind: Kind::Str(None),
        dynamic: false,
    },
    Declared {
        name: STANDBY_DSN,
        description: "a standby to check from its own side (repeatable)",
        kind: Kind::StrArray,
        dynamic: false,
    },
    Declared {
        name: QUERY_TIMEOUT_MS,
        description: "deadline of each connection and query, ms (default 2000)",
        kind: Kind::Int(2000),
        dynamic: false,
    },
    Declared {
        name: PROBE_DEADLINE_MS,
        description: "a test commit not acknowledged within this is unsafe, ms (default 1000)",
        kind: Kind::Int(1000),
        dynamic: false,
    },
    Declared {
        name: PROBE_SLOW_MS,
        description: "a test commit acknowledged later than this is degraded, ms (default 250)",
        kind: Kind::Int(250),
        dynamic: false,
    },
    Declared {
        name: STARTUP_WAIT,
        description: "seconds to wait for a go at startup (default 10, at most 100)",
        kind: Kind::Int(10),
        dynamic: false,
    },
    Declared {
        name: INTERVAL,
        description: "seconds between two runtime checks (default 1)",
        kind: Kind::Int(1),
        dynamic: true,
    },
    Declared {
        name: ON_UNSAFE,
        description: "at runtime, when not safe: gate (default: refuse channel opens), stop (lightningd, after the grace), log",
        kind: Kind::Str(Some("gate")),
        dynamic: false,
    },
    Declared {
        name: ON_UNKNOWN,
        description: "reject (default: unknown counts as unsafe) or allow",
        kind: Kind::Str(Some("reject")),
        dynamic: false,
    },
    Declared {
        name: UNSAFE_GRACE,
        description: "stop mode: seconds not-safe must last before lightningd is stopped (default 30)",
        kind: Kind::Int(30),
        dynamic: false,
    },
    Declared {
        name: GATE_PAYMENTS,
        description: "true: also refuse payments and fail incoming HTLCs while not safe (default false)",
        kind: Kind::Bool(false),
        dynamic: false,
    },
    Declared {
        name: GATED_COMMANDS,
        description: "comma-separated commands refused while not safe (default: the channel-opening ones)",
        kind: Kind::Str(Some(DEFAULT_GATED_COMMANDS)),
        dynamic: false,
    },
    Declared {
        name: STATUS_FILE,
        description: "status file written every check, readable while lightningd is frozen (default: replguard-status.json in the lightning-dir; 'off' for none)",
        kind: Kind::Str(Some(crate::statusfile::DEFAULT_NAME)),
        dynamic: false,
    },
    Declared {
        name: REPLY_FRESH_MS,
        description: "skip the test commit (which writes WAL) while every synchronous standby replied within this, ms (default 1250; 0: always probe)",
        kind: Kind::Int(1250),
        dynamic: false,
    },
    Declared {
        name: METRICS,
        description: "serve Prometheus metrics at this address, e.g. 127.0.0.1:9758 (default: off)",
        kind: Kind::Str(None),
        dynamic: false,
    },
    Declared {
        name: METRICS_REMOTE,
        description: "true: allow a replguard-metrics address that is not loopback (default false)",
        kind: Kind::Bool(false),
        dynamic: false,
    },
    Declared {
        name: ALERT_COMMAND,
        description: "run this command (sh -c) on each state change, the report on its stdin (default: none)",
        kind: Kind::Str(None),
        dynamic: true,
    },
    Declared {
        name: ACCEPT_NO_STANDBY_UNTIL,
        description: "after a failover: accept running without a synchronous standby until this RFC 3339 time, at most 7 days ahead (reported degraded: no-replica-accepted); printed by cln-replguard failover --then run-alone",
        kind: Kind::Str(None),
        dynamic: false,
    },
    Declared {
        name: EVIDENCE,
        description: "on (default): record each change of verdict in the table replguard.evidence, which replicates to the standby for cln-replguard failover to read; off: record nothing",
        kind: Kind::Bool(true),
        dynamic: false,
    },
    Declared {
        name: PATRONI_URL,
        description: "the local Patroni REST API, http://host:port (default: none): its settings are judged and lightningd follows its leader",
        kind: Kind::Str(None),
        dynamic: false,
    },
];

pub const DEFAULT_REPLY_FRESH: Duration = Duration::from_millis(1250);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_UNSAFE_GRACE: Duration = Duration::from_secs(30);

pub const DEFAULT_STARTUP_WAIT: Duration = Duration::from_secs(10);
pub const MAX_STARTUP_WAIT: Duration = Duration::from_secs(100);

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub mode: Mode,
    pub dsn: Option<String>,
    pub standby_dsns: Vec<String>,
    pub policy: Policy,
    pub startup_wait: Duration,
    pub interval: Duration,
    pub gate: GatePolicy,
    pub unsafe_grace: Duration,
    /// `None`: the default place; `Some(None)`: off.
    pub status_file: Option<Option<String>>,
    pub metrics: Option<std::net::SocketAddr>,
    pub alert_command: Option<String>,
    /// The runtime guard's write-free liveness window (one-shot checks always probe).
    pub reply_fresh: Option<Duration>,
    /// Record verdict changes in `replguard.evidence` (`crate::evidence`).
    pub evidence: bool,
    /// The local Patroni's REST API (`crate::patroni`).
    pub patroni_url: Option<crate::patroni::PatroniUrl>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Enforce,
            dsn: None,
            standby_dsns: Vec::new(),
            policy: Policy::default(),
            reply_fresh: Some(DEFAULT_REPLY_FRESH),
            startup_wait: DEFAULT_STARTUP_WAIT,
            interval: DEFAULT_INTERVAL,
            gate: GatePolicy::default(),
            unsafe_grace: DEFAULT_UNSAFE_GRACE,
            status_file: None,
            metrics: None,
            alert_command: None,
            evidence: true,
            patroni_url: None,
        }
    }
}

/// An option that does not validate. The message names the option, where it was set, and
/// what is expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OptionError {
    /// Given without a value.
    Missing { name: String, origin: String },
    /// A value of the wrong form.
    Bad {
        name: String,
        value: String,
        origin: String,
        expected: String,
    },
    /// Not one of the option's words; `why` lists them.
    NotAChoice {
        name: String,
        origin: String,
        why: String,
    },
    /// A `replguard-` option we do not have (a typo).
    Unknown { name: String, origin: String },
    /// `replguard-metrics` beyond this machine without `replguard-metrics-remote=true`.
    NotLoopback { addr: std::net::SocketAddr },
    /// Thresholds that contradict each other (`Policy::validate`, which names the options
    /// without their prefix).
    Thresholds(String),
}

impl std::fmt::Display for OptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OptionError::Missing { name, origin } => write!(f, "{name} ({origin}) needs a value"),
            OptionError::Bad {
                name,
                value,
                origin,
                expected,
            } => write!(f, "{name}={value} ({origin}): expected {expected}"),
            OptionError::NotAChoice { name, origin, why } => write!(f, "{name} ({origin}): {why}"),
            OptionError::Unknown { name, origin } => {
                let known: Vec<&str> = ALL.iter().map(|d| d.name).collect();
                write!(
                    f,
                    "unknown option {name} ({origin}); known: {}",
                    known.join(", ")
                )
            }
            OptionError::NotLoopback { addr } => write!(
                f,
                "{METRICS}={addr}: not a loopback address; set {METRICS_REMOTE}=true to serve \
                 metrics beyond this machine"
            ),
            OptionError::Thresholds(why) => write!(f, "replguard-{why}"),
        }
    }
}

impl std::error::Error for OptionError {}

/// One option as given: name, value, and where (for the error message).
pub struct Given<'a> {
    pub name: &'a str,
    pub value: Option<&'a str>,
    pub origin: &'a str,
}

/// Validates every `replguard-*` option; later values override earlier ones, except the
/// repeatable standby DSN. The error names the option, where it was set, and what is expected.
pub fn settings<'a>(given: impl IntoIterator<Item = Given<'a>>) -> Result<Settings, OptionError> {
    let mut s = Settings::default();
    let mut metrics_remote = false;
    for g in given {
        match g.name {
            MODE => s.mode = choice(&g)?,
            DSN => s.dsn = Some(required(&g)?.to_string()),
            STANDBY_DSN => s.standby_dsns.push(required(&g)?.to_string()),
            QUERY_TIMEOUT_MS => s.policy.query_timeout = milliseconds(&g)?,
            PROBE_DEADLINE_MS => s.policy.probe_deadline = milliseconds(&g)?,
            PROBE_SLOW_MS => s.policy.probe_slow = milliseconds(&g)?,
            STARTUP_WAIT => s.startup_wait = startup_wait(&g)?,
            INTERVAL => s.interval = seconds(&g, 1, 3600)?,
            UNSAFE_GRACE => s.unsafe_grace = seconds(&g, 0, 86400)?,
            ON_UNSAFE => s.gate.on_unsafe = choice(&g)?,
            ON_UNKNOWN => s.gate.on_unknown = choice(&g)?,
            GATE_PAYMENTS => s.gate.gate_payments = boolean(&g)?,
            GATED_COMMANDS => s.gate.gated_commands = gated_commands(&g)?,
            REPLY_FRESH_MS => s.reply_fresh = reply_fresh(&g)?,
            METRICS => {
                let v = required(&g)?;
                s.metrics = Some(
                    v.parse()
                        .map_err(|_| bad(&g, v, "an address and port, e.g. 127.0.0.1:9758"))?,
                );
            }
            METRICS_REMOTE => metrics_remote = boolean(&g)?,
            PATRONI_URL => {
                let v = required(&g)?;
                s.patroni_url = Some(crate::patroni::PatroniUrl::parse(v).map_err(|_| {
                    let shown = crate::patroni::fetch::without_password(v);
                    bad(&g, &shown, "http://host:port (the local Patroni REST API)")
                })?);
            }
            ALERT_COMMAND => s.alert_command = Some(required(&g)?.to_string()),
            ACCEPT_NO_STANDBY_UNTIL => {
                s.policy.accept_no_standby_until = Some(accept_until(&g, SystemTime::now())?)
            }
            EVIDENCE => s.evidence = boolean(&g)?,
            STATUS_FILE => {
                let v = required(&g)?;
                s.status_file = Some((v != "off").then(|| v.to_string()));
            }
            other if other.starts_with("replguard-") => return Err(unknown_option(&g)),
            _ => {}
        }
    }
    if let Some(addr) = s.metrics
        && !addr.ip().is_loopback()
        && !metrics_remote
    {
        return Err(OptionError::NotLoopback { addr });
    }
    s.policy.validate().map_err(OptionError::Thresholds)?;
    Ok(s)
}

/// A change `setconfig` may make while lightningd runs (the options declared `dynamic`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuntimeChange {
    Interval(Duration),
    AlertCommand(Option<String>),
}

/// Validates a `setconfig` of a dynamic option with the same rules as at startup; `None`
/// (the option unset) brings its default back.
pub fn runtime_change(name: &str, value: Option<&str>) -> Result<RuntimeChange, OptionError> {
    let given = value.map(|value| Given {
        name,
        value: Some(value),
        origin: "setconfig",
    });
    let s = settings(given)?;
    match name {
        INTERVAL => Ok(RuntimeChange::Interval(s.interval)),
        ALERT_COMMAND => Ok(RuntimeChange::AlertCommand(s.alert_command)),
        _ => Err(OptionError::NotAChoice {
            name: name.to_string(),
            origin: "setconfig".into(),
            why: "cannot be changed while lightningd runs".into(),
        }),
    }
}

/// A `replguard-` name we do not know.
fn unknown_option(g: &Given) -> OptionError {
    OptionError::Unknown {
        name: g.name.to_string(),
        origin: g.origin.to_string(),
    }
}

/// A whole number of milliseconds above 0.
fn milliseconds(g: &Given) -> Result<Duration, OptionError> {
    let v = required(g)?;
    let n: u64 = v
        .trim()
        .parse()
        .map_err(|_| bad(g, v, "a whole number of milliseconds"))?;
    if n == 0 {
        return Err(bad(g, v, "a number of milliseconds above 0"));
    }
    Ok(Duration::from_millis(n))
}

/// Seconds, at most `MAX_STARTUP_WAIT`.
fn startup_wait(g: &Given) -> Result<Duration, OptionError> {
    let v = required(g)?;
    let secs: u64 = v
        .trim()
        .parse()
        .map_err(|_| bad(g, v, "a whole number of seconds"))?;
    if Duration::from_secs(secs) > MAX_STARTUP_WAIT {
        return Err(bad(
            g,
            v,
            "at most 100 seconds (lightningd gives a plugin 120 s to start)",
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// A comma-separated list of commands the guard's hook listens to.
fn gated_commands(g: &Given) -> Result<Vec<String>, OptionError> {
    let v = required(g)?;
    let commands: Vec<String> = v
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    // The hook's filters are fixed in the manifest, before options arrive: only
    // commands it listens to can be gated.
    let known = crate::guard::gateable_commands();
    if let Some(c) = commands.iter().find(|c| !known.contains(&c.as_str())) {
        return Err(bad(
            g,
            v,
            &format!("a list of {} ({c} cannot be gated)", known.join(", ")),
        ));
    }
    Ok(commands)
}

/// Milliseconds; 0 turns the skip off (always probe).
fn reply_fresh(g: &Given) -> Result<Option<Duration>, OptionError> {
    let v = required(g)?;
    let ms: u64 = v
        .trim()
        .parse()
        .map_err(|_| bad(g, v, "a whole number of milliseconds (0: always probe)"))?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

/// The longest time a node may run without a standby on one acceptance.
pub const MAX_ACCEPT_NO_STANDBY: Duration = Duration::from_secs(7 * 24 * 3600);

/// An RFC 3339 time, at most `MAX_ACCEPT_NO_STANDBY` after `now`: running without a replica
/// is a bounded, dated decision, never a standing one.
pub fn accept_until(g: &Given, now: SystemTime) -> Result<SystemTime, OptionError> {
    let v = required(g)?;
    let t = humantime::parse_rfc3339_weak(v.trim())
        .map_err(|_| bad(g, v, "an RFC 3339 time such as 2026-11-26T18:00:00Z"))?;
    if t > now + MAX_ACCEPT_NO_STANDBY {
        return Err(bad(g, v, "a time at most 7 days ahead"));
    }
    Ok(t)
}

/// One of a fixed set of words (`FromStr` says which ones in its error).
fn choice<T: std::str::FromStr<Err = String>>(g: &Given) -> Result<T, OptionError> {
    required(g)?.parse().map_err(|why| OptionError::NotAChoice {
        name: g.name.to_string(),
        origin: g.origin.to_string(),
        why,
    })
}

/// One vocabulary for every boolean: `true`/`false` as lightningd shows them (and also its
/// `yes`/`no`), `on`/`off` as `replguard-evidence` took before.
pub fn boolean(g: &Given) -> Result<bool, OptionError> {
    let v = required(g)?;
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" => Ok(true),
        "false" | "no" | "off" => Ok(false),
        _ => Err(bad(g, v, "true or false")),
    }
}

fn seconds(g: &Given, min: u64, max: u64) -> Result<Duration, OptionError> {
    let v = required(g)?;
    let n: u64 = v
        .trim()
        .parse()
        .map_err(|_| bad(g, v, "a whole number of seconds"))?;
    if !(min..=max).contains(&n) {
        return Err(bad(g, v, &format!("between {min} and {max} seconds")));
    }
    Ok(Duration::from_secs(n))
}

fn required<'a>(g: &Given<'a>) -> Result<&'a str, OptionError> {
    g.value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| OptionError::Missing {
            name: g.name.to_string(),
            origin: g.origin.to_string(),
        })
}

fn bad(g: &Given, value: &str, expected: &str) -> OptionError {
    OptionError::Bad {
        name: g.name.to_string(),
        value: value.to_string(),
        origin: g.origin.to_string(),
        expected: expected.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, Option<&str>)]) -> Result<Settings, String> {
        settings(pairs.iter().map(|(n, v)| Given {
            name: n,
            value: *v,
            origin: "config:1",
        }))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn descriptions_and_cli_help_state_the_defaults_in_force() {
        use crate::policy::{DEFAULT_PROBE_DEADLINE, DEFAULT_PROBE_SLOW, DEFAULT_QUERY_TIMEOUT};
        let description = |name: &str| ALL.iter().find(|d| d.name == name).unwrap().description;
        let ms = |d: Duration| d.as_millis();
        for (name, stated) in [
            (
                QUERY_TIMEOUT_MS,
                format!("(default {})", ms(DEFAULT_QUERY_TIMEOUT)),
            ),
            (
                PROBE_DEADLINE_MS,
                format!("(default {})", ms(DEFAULT_PROBE_DEADLINE)),
            ),
            (
                PROBE_SLOW_MS,
                format!("(default {})", ms(DEFAULT_PROBE_SLOW)),
            ),
            (
                REPLY_FRESH_MS,
                format!("(default {};", ms(DEFAULT_REPLY_FRESH)),
            ),
            (
                STARTUP_WAIT,
                format!("(default {},", DEFAULT_STARTUP_WAIT.as_secs()),
            ),
            (
                INTERVAL,
                format!("(default {})", DEFAULT_INTERVAL.as_secs()),
            ),
            (
                UNSAFE_GRACE,
                format!("(default {})", DEFAULT_UNSAFE_GRACE.as_secs()),
            ),
        ] {
            assert!(description(name).contains(&stated), "{name}: {stated}");
        }
        // The CLI's threshold flags have no clap default (the configuration may give one):
        // their help states the same numbers.
        use clap::CommandFactory;
        let mut cli = crate::cli::Cli::command();
        let help = cli
            .find_subcommand_mut("status")
            .unwrap()
            .render_long_help()
            .to_string();
        for d in [
            DEFAULT_QUERY_TIMEOUT,
            DEFAULT_PROBE_DEADLINE,
            DEFAULT_PROBE_SLOW,
        ] {
            assert!(help.contains(&format!("[default: {},", ms(d))), "{help}");
        }
    }

    #[test]
    fn a_patroni_url_with_a_password_is_refused_without_echoing_it() {
        let e = parse(&[(PATRONI_URL, Some("http://patroni:s3cret@127.0.0.1:8008"))]).unwrap_err();
        assert!(e.contains(PATRONI_URL), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn only_the_runtime_safe_options_change_at_runtime_and_by_the_same_rules() {
        assert_eq!(
            runtime_change(INTERVAL, Some("5")),
            Ok(RuntimeChange::Interval(Duration::from_secs(5)))
        );
        assert_eq!(
            runtime_change(INTERVAL, None),
            Ok(RuntimeChange::Interval(DEFAULT_INTERVAL))
        );
        assert_eq!(
            runtime_change(ALERT_COMMAND, Some("logger x")),
            Ok(RuntimeChange::AlertCommand(Some("logger x".into())))
        );
        let e = runtime_change(INTERVAL, Some("0")).unwrap_err().to_string();
        assert!(e.contains("between 1 and 3600"), "{e}");
        let e = runtime_change(MODE, Some("warn")).unwrap_err().to_string();
        assert!(e.contains("cannot be changed while lightningd runs"), "{e}");
        let dynamic: Vec<&str> = ALL.iter().filter(|d| d.dynamic).map(|d| d.name).collect();
        assert_eq!(dynamic, [INTERVAL, ALERT_COMMAND]);
    }

    #[test]
    fn every_boolean_takes_true_false_and_on_off() {
        for name in [GATE_PAYMENTS, METRICS_REMOTE, EVIDENCE] {
            for (v, expected) in [
                ("true", true),
                ("on", true),
                ("Yes", true),
                ("false", false),
                ("off", false),
                ("no", false),
            ] {
                let g = Given {
                    name,
                    value: Some(v),
                    origin: "config:1",
                };
                assert_eq!(boolean(&g), Ok(expected), "{name}={v}");
            }
        }
        assert!(!parse(&[(EVIDENCE, Some("false"))]).unwrap().evidence);
        assert!(
            parse(&[(GATE_PAYMENTS, Some("on"))])
                .unwrap()
                .gate
                .gate_payments
        );
    }

    #[test]
    fn the_declared_defaults_are_the_defaults_in_force() {
        let defaults: Vec<(&str, String)> = ALL
            .iter()
            .filter_map(|d| match d.kind {
                Kind::Str(Some(v)) => Some((d.name, v.to_string())),
                Kind::Int(i) => Some((d.name, i.to_string())),
                Kind::Bool(b) => Some((d.name, b.to_string())),
                Kind::Str(None) | Kind::StrArray => None,
            })
            .collect();
        let pairs: Vec<(&str, Option<&str>)> = defaults
            .iter()
            .map(|(n, v)| (*n, Some(v.as_str())))
            .collect();
        let mut s = parse(&pairs).unwrap();
        assert_eq!(
            s.status_file,
            Some(Some(crate::statusfile::DEFAULT_NAME.into()))
        );
        s.status_file = None;
        assert_eq!(s, Settings::default());
        assert_eq!(
            DEFAULT_GATED_COMMANDS,
            crate::guard::DEFAULT_GATED_COMMANDS.join(",")
        );
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(parse(&[]).unwrap(), Settings::default());
        let s = parse(&[
            (MODE, Some("warn")),
            (STANDBY_DSN, Some("host=a")),
            (STANDBY_DSN, Some("host=b")),
            (PROBE_DEADLINE_MS, Some("2000")),
            (PROBE_DEADLINE_MS, Some("1500")),
            (STARTUP_WAIT, Some("30")),
            ("wallet", Some("postgres://x")),
        ])
        .unwrap();
        assert_eq!(s.mode, Mode::Warn);
        assert_eq!(s.standby_dsns, ["host=a", "host=b"]);
        assert_eq!(s.policy.probe_deadline, Duration::from_millis(1500));
        assert_eq!(s.startup_wait, Duration::from_secs(30));
    }

    #[test]
    fn accepting_no_standby_is_dated_and_bounded() {
        let now = humantime::parse_rfc3339("2026-11-26T12:00:00Z").unwrap();
        let given = |v: &'static str| Given {
            name: ACCEPT_NO_STANDBY_UNTIL,
            value: Some(v),
            origin: "config:1",
        };
        assert_eq!(
            accept_until(&given("2026-11-27T12:00:00Z"), now),
            Ok(now + Duration::from_secs(86400))
        );
        let far = accept_until(&given("2026-12-24T12:00:00Z"), now)
            .unwrap_err()
            .to_string();
        assert!(far.contains("at most 7 days ahead"), "{far}");
        let bad = accept_until(&given("tomorrow"), now)
            .unwrap_err()
            .to_string();
        assert!(bad.contains("RFC 3339"), "{bad}");
    }

    #[test]
    fn errors_name_the_option_the_place_and_what_is_expected() {
        for (pairs, expected) in [
            (
                vec![(MODE, Some("strict"))],
                "replguard-mode (config:1): \"strict\" is not a mode",
            ),
            (
                vec![(PROBE_SLOW_MS, Some("fast"))],
                "replguard-probe-slow-ms=fast (config:1): expected a whole number",
            ),
            (vec![(QUERY_TIMEOUT_MS, Some("0"))], "above 0"),
            (vec![(STARTUP_WAIT, Some("101"))], "at most 100 seconds"),
            (vec![(DSN, None)], "replguard-dsn (config:1) needs a value"),
            (
                vec![("replguard-mdoe", Some("warn"))],
                "unknown option replguard-mdoe",
            ),
            (
                vec![(PROBE_SLOW_MS, Some("1500"))],
                "replguard-probe-slow-ms",
            ),
            (
                vec![(ON_UNSAFE, Some("panic"))],
                "expected gate, stop or log",
            ),
            (
                vec![(ON_UNKNOWN, Some("maybe"))],
                "expected reject or allow",
            ),
            (vec![(GATE_PAYMENTS, Some("maybe"))], "true or false"),
            (vec![(INTERVAL, Some("0"))], "between 1 and 3600"),
            (
                vec![(METRICS, Some("0.0.0.0:9758"))],
                "replguard-metrics-remote=true",
            ),
            (vec![(METRICS, Some("localhost"))], "an address and port"),
        ] {
            let e = parse(&pairs).unwrap_err();
            assert!(e.contains(expected), "{pairs:?}: {e}");
        }
    }
}
