//! The plugin under a fake lightningd, against real clusters: the manifest, the startup
//! check in each mode and case, and the two RPC methods.

mod common;
mod fake_lightningd;

use std::time::{Duration, Instant};

use cln_replguard::cluster::{Cluster, ClusterSpec, Daemon};
use serde_json::{Value, json};

use common::*;
use fake_lightningd::{Fake, InitOutcome, Setup};

fn healthy() -> (Cluster, Daemon) {
    let c = start(&ClusterSpec::pair());
    let s = fake_lightningd::lightningd_session(&c);
    (c, s)
}

fn answered(o: &InitOutcome) -> bool {
    matches!(o, InitOutcome::Answered(r) if r["result"].is_object())
}

#[test]
fn manifest_declares_options_methods_and_the_notification() {
    let mut f = Fake::start(Setup::new("postgres://host=/nonexistent"));
    let m = f.getmanifest();
    let names: Vec<&str> = m["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    for d in cln_replguard::options::ALL {
        assert!(names.contains(&d.name), "{} missing from {names:?}", d.name);
    }
    // Typed, with the defaults lightningd shows in listconfigs and --help; only the
    // runtime-safe options are dynamic.
    let option = |name: &str| {
        m["options"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap()
            .clone()
    };
    for (name, ty, default) in [
        ("replguard-mode", "string", json!("enforce")),
        ("replguard-interval", "int", json!(1)),
        ("replguard-probe-deadline-ms", "int", json!(1000)),
        ("replguard-startup-wait", "int", json!(10)),
        ("replguard-gate-payments", "bool", json!(false)),
        ("replguard-evidence", "bool", json!(true)),
        ("replguard-on-unsafe", "string", json!("gate")),
        (
            "replguard-status-file",
            "string",
            json!("replguard-status.json"),
        ),
    ] {
        let o = option(name);
        assert_eq!(
            (o["type"].as_str(), &o["default"]),
            (Some(ty), &default),
            "{o}"
        );
    }
    let mut dynamic: Vec<&str> = m["options"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["dynamic"] == true)
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    dynamic.sort();
    assert_eq!(dynamic, ["replguard-alert-command", "replguard-interval"]);
    let methods: Vec<(&str, &str)> = m["rpcmethods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["usage"].as_str().unwrap()))
        .collect();
    // lightningd ≥ 24.08 shows only the usage in `lightning-cli help`: each says what its
    // parameters are and which of the plugin's error codes (2300–2310) it may answer.
    let usage = |name: &str| methods.iter().find(|(n, _)| *n == name).unwrap().1;
    let rs = usage("replication-status");
    assert!(rs.contains("no parameters") && rs.contains("2302"), "{rs}");
    let fc = usage("failover-check");
    assert!(
        fc.starts_with("[wait_ms]")
            && fc.contains(&format!(
                "default {}",
                cln_replguard::policy::DEFAULT_FAILOVER_WAIT.as_millis()
            ))
            && fc.contains("2300"),
        "{fc}"
    );
    for d in cln_replguard::options::ALL {
        assert!(
            !d.description.contains(":9750"),
            "{}: 9750 is the prometheus plugin's port",
            d.name
        );
    }
    assert_eq!(m["notifications"][0]["method"], "replguard_state_changed");
}

#[test]
fn safe_pair_starts_and_both_methods_answer() {
    let (c, _s) = healthy();
    let mut f = Fake::start(Setup::new(&c.primary.wallet_dsn()));
    f.getmanifest();
    let t = Instant::now();
    let o = f.init(Duration::from_secs(30));
    let took = elapsed_ms(t);
    assert!(answered(&o), "{o:?} logs: {:?}", f.logs);
    eprintln!("startup check on a healthy loopback pair: init answered in {took:.1} ms");

    let r = f.call("replication-status", json!({}));
    let s = &r["result"];
    assert_eq!(s["verdict"], "safe", "{r:#}");
    assert_eq!(s["lightningd"]["synchronous_commit"], "on");
    assert_eq!(s["mode"], "enforce");
    assert!(!r.to_string().contains("password"), "{r}");

    for params in [json!([]), json!([500]), json!({"wait_ms": 500})] {
        let r = f.call("failover-check", params.clone());
        assert_eq!(r["result"]["ready"], true, "{params}: {r:#}");
        assert_eq!(r["result"]["target"], "s1");
    }
    let r = f.call("failover-check", json!({"wait": 1}));
    assert_eq!(r["error"]["code"], -32602, "{r:#}");

    // The standby stops listening to synchronous commits: failover-check must fail.
    c.set_sync_names("").unwrap();
    let r = f.call("failover-check", json!([]));
    let e = &r["error"];
    assert_eq!(
        e["code"],
        cln_replguard::plugin::ERR_FAILOVER_NOT_READY,
        "{r:#}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("failover not safe: "),
        "{e}"
    );
    assert_eq!(e["data"]["ready"], false);
    assert!(
        e["data"]["blockers"][0].as_str().unwrap().contains("empty"),
        "{e}"
    );
    // replication-status reports the runtime guard's latest check, with its age.
    let r = f.poll(
        "replication-status",
        json!([]),
        Duration::from_secs(10),
        |r| r["result"]["verdict"] == "unsafe",
    );
    assert!(
        r["result"]["report_age_ms"].as_u64().unwrap() < 5000,
        "{r:#}"
    );
}

#[test]
fn enforce_with_unsafe_storage_exits_before_answering_init_with_the_findings_logged() {
    let (c, _s) = healthy();
    c.standby("s1").stop().unwrap();
    let setup = Setup::new(&c.primary.wallet_dsn()).option("replguard-startup-wait", json!("2"));
    let mut f = Fake::start(setup);
    f.getmanifest();
    let t = Instant::now();
    let o = f.init(Duration::from_secs(30));
    let took = elapsed_ms(t);
    let InitOutcome::Ended(status) = o else {
        panic!("init answered: {o:?}")
    };
    assert_eq!(status.code(), Some(1), "the important plugin exits");
    let broken = f.logs_at("broken").join("\n");
    assert!(
        broken.contains("refusing to run lightningd: the wallet's storage is unsafe"),
        "{broken}"
    );
    assert!(
        broken.contains("sync-standbys-short") && broken.contains("fix: "),
        "{broken}"
    );
    assert!(took < 8000.0, "took {took:.0} ms with a 2 s startup wait");
}

/// `plugin=` in Core Lightning means "lightningd runs whatever this plugin finds" (reckless
/// writes that line): as a plain plugin the guard never ends lightningd at startup; it says in
/// the log line why lightningd runs and how to make it refuse, and guards at runtime.
#[test]
fn enforce_as_a_plain_plugin_lets_lightningd_run_and_says_how_to_make_it_refuse() {
    let (c, _s) = healthy();
    c.set_sync_names("").unwrap();
    let mut setup =
        Setup::new(&c.primary.wallet_dsn()).option("replguard-startup-wait", json!("1"));
    setup.important = false;
    let mut f = Fake::start(setup);
    f.getmanifest();
    let o = f.init(Duration::from_secs(30));
    assert!(answered(&o), "{o:?} logs: {:?}", f.logs);
    assert!(f.alive(), "lightningd must not be ended");
    // The plugin serves (and its log lines, which may trail the init answer, have arrived).
    let r = f.call("replication-status", json!({}));
    assert_eq!(r["result"]["verdict"], "unsafe", "{r:#}");
    let warned = f.logs_at("warn").join("\n");
    assert!(
        warned.contains("loaded with plugin=, not important-plugin=")
            && warned.contains(
                "To have lightningd refuse to start, change the line to important-plugin="
            ),
        "{warned}"
    );
    assert!(warned.contains("sync-names-empty"), "{warned}");
}

#[test]
fn warn_mode_starts_on_unsafe_storage_and_logs_the_findings() {
    let (c, _s) = healthy();
    c.set_sync_names("").unwrap();
    let setup = Setup::new(&c.primary.wallet_dsn())
        .option("replguard-mode", json!("warn"))
        .option("replguard-startup-wait", json!("1"));
    let mut f = Fake::start(setup);
    f.getmanifest();
    let o = f.init(Duration::from_secs(30));
    assert!(answered(&o), "{o:?}");
    let r = f.call("replication-status", json!({}));
    assert_eq!(r["result"]["verdict"], "unsafe");
    assert_eq!(r["result"]["mode"], "warn");
    let warned = f.logs_at("warn").join("\n");
    assert!(warned.contains("sync-names-empty"), "logs: {:?}", f.logs);
}

#[test]
fn invalid_options_refuse_in_enforce_and_are_reported_in_warn() {
    let (c, _s) = healthy();
    let setup =
        Setup::new(&c.primary.wallet_dsn()).option("replguard-probe-deadline-ms", json!("soon"));
    let mut f = Fake::start(setup);
    f.getmanifest();
    let InitOutcome::Ended(status) = f.init(Duration::from_secs(30)) else {
        panic!()
    };
    assert_eq!(status.code(), Some(1));
    let broken = f.logs_at("broken").join("\n");
    assert!(
        broken.contains("replguard-probe-deadline-ms=soon"),
        "{broken}"
    );

    for (name, value) in [
        ("replguard-startup-wait", "500"),
        ("replguard-mode", "strict"),
    ] {
        let mut f = Fake::start(Setup::new(&c.primary.wallet_dsn()).option(name, json!(value)));
        f.getmanifest();
        let InitOutcome::Ended(_) = f.init(Duration::from_secs(30)) else {
            panic!("{name}")
        };
        assert!(
            f.logs_at("broken").join("\n").contains(name),
            "{:?}",
            f.logs
        );
    }

    let setup = Setup::new(&c.primary.wallet_dsn())
        .option("replguard-mode", json!("warn"))
        .option("replguard-probe-deadline-ms", json!("soon"));
    let mut f = Fake::start(setup);
    f.getmanifest();
    assert!(answered(&f.init(Duration::from_secs(30))), "{:?}", f.logs);
    assert!(
        f.logs_at("warn")
            .join("\n")
            .contains("replguard-probe-deadline-ms=soon")
    );
}

#[test]
fn a_sqlite_wallet_is_refused() {
    let mut f = Fake::start(
        Setup::new("sqlite3:///tmp/x/lightningd.sqlite3")
            .option("replguard-startup-wait", json!("0")),
    );
    f.getmanifest();
    let InitOutcome::Ended(status) = f.init(Duration::from_secs(30)) else {
        panic!()
    };
    assert_eq!(status.code(), Some(1));
    assert!(
        f.logs_at("broken").join("\n").contains("not-postgres"),
        "{:?}",
        f.logs
    );
}

/// With LIGHTNINGD_VERSION = `version`: in enforce, no init answer and `broken` in the log; in
/// warn, init answered and `warned` in the log.
fn version_refused_in_enforce_reported_in_warn(version: &str, broken: &str, warned: &str) {
    let (c, _s) = healthy();
    let mut setup = Setup::new(&c.primary.wallet_dsn());
    setup.version = version.into();
    let mut f = Fake::start(setup);
    f.getmanifest();
    let o = f.init(Duration::from_secs(30));
    assert!(matches!(o, InitOutcome::Ended(_)), "{o:?}");
    assert!(
        f.logs_at("broken").join("\n").contains(broken),
        "{:?}",
        f.logs
    );

    let mut setup = Setup::new(&c.primary.wallet_dsn()).option("replguard-mode", json!("warn"));
    setup.version = version.into();
    let mut f = Fake::start(setup);
    f.getmanifest();
    assert!(answered(&f.init(Duration::from_secs(30))));
    assert!(
        f.logs_at("warn").join("\n").contains(warned),
        "{:?}",
        f.logs
    );
}

#[test]
fn an_old_lightningd_is_refused_in_enforce_and_reported_in_warn() {
    version_refused_in_enforce_reported_in_warn(
        "v25.09.1",
        "v25.09.1 is older than v25.12",
        "older than v25.12",
    );
}

#[test]
fn an_unreadable_lightningd_version_is_refused_in_enforce_and_reported_in_warn() {
    version_refused_in_enforce_reported_in_warn(
        "a-custom-build",
        "cannot tell lightningd's version",
        "rpc_command gate is not registered",
    );
}

#[test]
fn a_hung_primary_gets_an_answer_within_the_configured_wait() {
    let (c, _s) = healthy();
    c.primary.hang_postmaster().unwrap();
    let setup = Setup::new(&c.primary.wallet_dsn()).option("replguard-startup-wait", json!("3"));
    let mut f = Fake::start(setup);
    f.getmanifest();
    let t = Instant::now();
    let o = f.init(Duration::from_secs(60));
    let took = elapsed_ms(t);
    assert!(matches!(o, InitOutcome::Ended(_)), "{o:?}");
    assert!(
        f.logs_at("broken").join("\n").contains("primary-timeout"),
        "{:?}",
        f.logs
    );
    assert!(took < 3000.0 + 2.0 * 2000.0 + 1000.0, "took {took:.0} ms");
    c.primary.resume();
}

#[test]
fn a_role_setting_weakened_while_running_is_restart_required() {
    let (c, _s) = healthy();
    let mut f = Fake::start(Setup::new(&c.primary.wallet_dsn()));
    f.getmanifest();
    assert!(answered(&f.init(Duration::from_secs(30))));
    // The runtime guard has checked once: its session to the primary is open (and kept)
    // before the role changes, as on a node that has run for a while.
    f.poll(
        "replication-status",
        json!({}),
        Duration::from_secs(10),
        |r| r["result"]["interval_ms"].is_number(),
    );
    c.primary
        .psql("ALTER ROLE lightningd SET synchronous_commit = local")
        .unwrap();
    // The runtime guard's next check sees it.
    let r = f.poll(
        "replication-status",
        json!({}),
        Duration::from_secs(10),
        |r| r["result"]["verdict"] != "safe",
    );
    let s = &r["result"];
    assert_eq!(s["verdict"], "degraded", "{s:#}");
    let codes: Vec<&str> = s["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["restart-required"]);
    assert_eq!(s["lightningd"]["synchronous_commit"], "on");
}

#[test]
fn a_monitoring_dsn_on_another_cluster_is_unsafe() {
    let (c, _s) = healthy();
    let other = start(&ClusterSpec::pair());
    let setup = Setup::new(&c.primary.wallet_dsn())
        .option("replguard-dsn", json!(other.primary.wallet_dsn()))
        .option("replguard-mode", json!("warn"));
    let mut f = Fake::start(setup);
    f.getmanifest();
    assert!(answered(&f.init(Duration::from_secs(30))));
    let r = f.call("replication-status", json!({}));
    let codes: Vec<Value> = r["result"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].clone())
        .collect();
    assert!(
        codes.contains(&json!("wallet-cluster-different")),
        "{codes:?}"
    );
}

#[test]
fn an_invalid_option_as_a_plain_plugin_is_logged_and_lightningd_runs() {
    let mut setup =
        Setup::new("postgres://host=/nonexistent").option("replguard-on-unsafe", json!("panic"));
    setup.important = false;
    let mut f = Fake::start(setup);
    f.getmanifest();
    let o = f.init(Duration::from_secs(30));
    assert!(answered(&o), "{o:?} logs: {:?}", f.logs);
    assert!(f.alive(), "lightningd must not be ended");
    // The plugin serves (and its log lines, which may trail the init answer, have arrived).
    let r = f.call("replication-status", json!({}));
    assert_eq!(r["result"]["mode"], "warn", "{r:#}");
    let warned = f.logs_at("warn").join("\n");
    assert!(
        warned.contains("replguard-on-unsafe") && warned.contains("important-plugin="),
        "{warned}"
    );
}

/// `setconfig` (lightningd forwards it for the options declared dynamic) is validated by the
/// same rules as at startup; the guard's safety options cannot change while it runs.
#[test]
fn setconfig_changes_only_the_runtime_safe_options_by_the_startup_rules() {
    let setup = Setup::new("postgres://host=/nonexistent").option("replguard-mode", json!("warn"));
    let mut f = Fake::start(setup);
    f.getmanifest();
    assert!(answered(&f.init(Duration::from_secs(30))), "{:?}", f.logs);
    let ok = f.call(
        "setconfig",
        json!({"config": "replguard-interval", "val": "5"}),
    );
    assert_eq!(ok["result"], json!({}), "{ok:#}");
    let ok = f.call(
        "setconfig",
        json!({"config": "replguard-alert-command", "val": "logger replguard"}),
    );
    assert_eq!(ok["result"], json!({}), "{ok:#}");
    let bad = f.call(
        "setconfig",
        json!({"config": "replguard-interval", "val": "0"}),
    );
    assert!(
        bad["error"].to_string().contains("between 1 and 3600"),
        "{bad:#}"
    );
    let bad = f.call(
        "setconfig",
        json!({"config": "replguard-mode", "val": "warn"}),
    );
    assert!(
        bad["error"]
            .to_string()
            .contains("cannot be changed while lightningd runs"),
        "{bad:#}"
    );
}

/// The hooks in a manifest: (name, rpc_command's filters).
fn hooks_of(m: &Value) -> (Vec<String>, Vec<String>) {
    let hooks = m["hooks"].as_array().unwrap();
    let names = hooks
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_string())
        .collect();
    let filters = hooks
        .iter()
        .filter(|h| h["name"] == "rpc_command")
        .flat_map(|h| h["filters"].as_array().cloned().unwrap_or_default())
        .map(|f| f.as_str().unwrap_or_default().to_string())
        .collect();
    (names, filters)
}

/// Only a configuration that gates payments puts the plugin on every incoming HTLC's path
/// (and on pay's): lightningd's configuration is read at getmanifest as the pre-flight reads
/// it; one that cannot be read registers the hooks, and the log says why.
#[test]
fn the_payment_hooks_are_registered_only_when_payments_are_gated() {
    for (config, registered, said) in [
        ("", false, "payments are not gated"),
        ("replguard-gate-payments=true\n", true, "payments are gated"),
        (
            "replguard-interval=0\n",
            true,
            "cannot read lightningd's configuration before init",
        ),
    ] {
        let mut setup =
            Setup::new("postgres://host=/nonexistent").option("replguard-mode", json!("warn"));
        setup.config = (!config.is_empty()).then(|| config.to_string());
        if registered && config.contains("gate-payments") {
            setup = setup.option("replguard-gate-payments", json!(true));
        }
        let mut f = Fake::start(setup);
        let m = f.getmanifest();
        let (names, filters) = hooks_of(&m);
        assert_eq!(
            names.iter().any(|n| n == "htlc_accepted"),
            registered,
            "{config:?}: {names:?}"
        );
        assert_eq!(
            filters.iter().any(|c| c == "pay"),
            registered,
            "{config:?}: {filters:?}"
        );
        assert!(filters.iter().any(|c| c == "fundchannel"), "{filters:?}");
        assert!(answered(&f.init(Duration::from_secs(30))), "{:?}", f.logs);
        f.call("replication-status", json!({}));
        let info = f.logs_at("info").join("\n");
        assert!(info.contains(said), "{config:?}: {info}");
    }
}

/// Options that gate payments although the configuration read at getmanifest did not: the
/// hooks are missing, so in enforce the node does not start (payments could not be refused).
#[test]
fn gated_payments_without_their_hooks_are_refused_in_enforce() {
    let setup =
        Setup::new("postgres://host=/nonexistent").option("replguard-gate-payments", json!(true));
    let mut f = Fake::start(setup);
    let (names, _) = hooks_of(&f.getmanifest());
    assert!(!names.iter().any(|n| n == "htlc_accepted"), "{names:?}");
    let InitOutcome::Ended(status) = f.init(Duration::from_secs(30)) else {
        panic!("init answered: {:?}", f.logs)
    };
    assert_eq!(status.code(), Some(1));
    let broken = f.logs_at("broken").join("\n");
    assert!(
        broken.contains("the payment hooks are not registered"),
        "{broken}"
    );
}
