//! The runtime guard under a fake lightningd, against real clusters: the gate flips on a
//! silent downgrade and back, hooks answer whatever the payload, stop mode and the
//! self-fence stop the node, the status file tells the truth while lightningd reads nothing.

mod common;
mod fake_lightningd;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cln_replguard::cluster::{Cluster, ClusterSpec, Daemon, wait_for};
use serde_json::{Value, json};

use common::*;
use fake_lightningd::{Fake, InitOutcome, Setup};

fn healthy() -> (Cluster, Daemon) {
    let c = start(&ClusterSpec::pair());
    let s = fake_lightningd::lightningd_session(&c);
    (c, s)
}

fn started(setup: Setup) -> Fake {
    Fake::started(setup)
}

fn fundchannel() -> Value {
    json!({"rpc_command": {"id": "cli:fundchannel#1", "method": "fundchannel", "params": ["02ab", 100000]}})
}

/// An `openchannel` payload as lightningd sends it, with a field this plugin never heard of.
fn openchannel(hook: &str) -> Value {
    json!({hook: {
        "id": "03864ef025fde8fb587d989186ce6a4a186895ee44a926bfc370e2c366597a3f8f",
        "funding_msat": 100000000, "push_msat": 0, "dust_limit_msat": 546000,
        "max_htlc_value_in_flight_msat": 18446744073709551615u64, "channel_reserve_msat": 1000000,
        "htlc_minimum_msat": 0, "feerate_per_kw": 7500, "to_self_delay": 5, "max_accepted_htlcs": 483,
        "channel_flags": 1, "channel_type": {"bits": [12, 22], "names": ["static_remotekey/even", "anchors/even"]},
        "a_field_from_the_future": {"nested": true}
    }})
}

fn htlc() -> Value {
    json!({"onion": {"payload": "", "type": "tlv", "forward_msat": 1000, "outgoing_cltv_value": 500,
           "shared_secret": "00", "next_onion": "00"},
           "htlc": {"short_channel_id": "1x1x1", "id": 0, "amount_msat": 1001, "cltv_expiry": 510,
           "cltv_expiry_relative": 10, "payment_hash": "00"}, "forward_to": "00", "extra": 1})
}

/// lightningd freezes: its commit waits for the hung standby, and it reads no more of the
/// plugin's stdout. Returns the waiting writer.
fn freeze_lightningd(f: &Fake, c: &Cluster) -> Daemon {
    f.stop_reading.store(true, Ordering::SeqCst);
    c.standby("s1").hang_walreceiver().unwrap();
    c.spawn_sql("postgres", "postgres", "INSERT INTO public.t VALUES (1)")
        .unwrap()
}

/// The standby silently made asynchronous, and the plugin reporting it.
fn downgrade_and_wait_until_reported(c: &Cluster, f: &mut Fake) {
    c.set_sync_names("").unwrap();
    f.poll(
        "replication-status",
        json!({}),
        Duration::from_secs(10),
        |r| r["result"]["reported"] == "unsafe",
    );
}

fn gated(answer: &Value) -> bool {
    answer.pointer("/return/error/code").is_some()
}

#[test]
fn a_silent_downgrade_flips_the_gate_within_two_intervals_and_back_after_repair() {
    let (c, _s) = healthy();
    let mut f = started(Setup::new(&c.primary.wallet_dsn()));
    assert_eq!(
        f.hook("rpc_command", fundchannel()),
        json!({"result": "continue"})
    );

    c.primary
        .psql("ALTER SYSTEM SET synchronous_standby_names = ''")
        .unwrap();
    c.primary.reload().unwrap();
    let t = Instant::now();
    let mut answer = f.hook("rpc_command", fundchannel());
    while !gated(&answer) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the gate never closed"
        );
        std::thread::sleep(Duration::from_millis(50));
        answer = f.hook("rpc_command", fundchannel());
    }
    let flip = elapsed_ms(t);
    let e = &answer["return"]["error"];
    assert_eq!(e["code"], cln_replguard::guard::ERR_GATED);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("refuses fundchannel"),
        "{e}"
    );
    assert_eq!(e["data"]["verdict"], "unsafe");
    assert!(
        e["data"]["findings"]
            .to_string()
            .contains("sync-names-empty"),
        "{e}"
    );

    c.set_sync_names("FIRST 1 (s1)").unwrap();
    let t = Instant::now();
    while gated(&f.hook("rpc_command", fundchannel())) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the gate never opened again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let back = elapsed_ms(t);
    eprintln!(
        "gate closed {flip:.0} ms after the downgrade, opened {back:.0} ms after the repair (interval 1 s)"
    );
    assert!(
        flip < 2500.0,
        "closing took {flip:.0} ms: more than two intervals"
    );

    f.drain();
    let changes: Vec<&Value> = f
        .notifications
        .iter()
        .filter(|n| n["method"] == "replguard_state_changed")
        .collect();
    assert!(changes.len() >= 2, "{:?}", f.notifications);
    assert_eq!(changes[0]["params"]["previous"], "safe");
    assert_eq!(changes[0]["params"]["current"], "unsafe");
}

#[test]
fn hooks_gate_what_adds_risk_and_answer_any_payload() {
    let (c, _s) = healthy();
    // In lightningd's configuration, where the plugin reads it at getmanifest.
    let mut setup =
        Setup::new(&c.primary.wallet_dsn()).option("replguard-gate-payments", json!("true"));
    setup.config = Some("replguard-gate-payments=true\n".into());
    let mut f = started(setup);
    let pay = json!({"rpc_command": {"id": 1, "method": "pay", "params": {"bolt11": "lnbcrt1"}}});
    let getinfo = json!({"rpc_command": {"id": 2, "method": "getinfo", "params": []}});
    // Safe: everything goes on, malformed payloads too.
    for (hook, payload) in [
        ("rpc_command", fundchannel()),
        ("rpc_command", pay.clone()),
        ("openchannel", openchannel("openchannel")),
        ("openchannel2", openchannel("openchannel2")),
        ("htlc_accepted", htlc()),
        ("rpc_command", json!("garbage")),
        ("openchannel", json!(null)),
        ("htlc_accepted", json!([1, 2, 3])),
    ] {
        assert_eq!(
            f.hook(hook, payload.clone())["result"],
            "continue",
            "{hook} {payload}"
        );
    }
    downgrade_and_wait_until_reported(&c, &mut f);
    assert!(gated(&f.hook("rpc_command", fundchannel())));
    assert!(gated(&f.hook("rpc_command", pay)));
    assert_eq!(
        f.hook("rpc_command", getinfo),
        json!({"result": "continue"}),
        "ungated command"
    );
    for hook in ["openchannel", "openchannel2"] {
        let a = f.hook(hook, openchannel(hook));
        assert_eq!(a["result"], "reject", "{hook}: {a}");
        assert!(
            a["error_message"].as_str().unwrap().contains("unsafe"),
            "{a}"
        );
    }
    assert_eq!(
        f.hook("htlc_accepted", htlc()),
        json!({"result": "fail", "failure_message": "2002"})
    );
    // Malformed while unsafe: still an answer, and not a go.
    assert!(gated(&f.hook("rpc_command", json!({"rpc_command": 7}))));
    assert_eq!(f.hook("openchannel", json!("x"))["result"], "reject");
}

/// `lightning-cli -k fundchannel id=[123x1] amount=100000`, as lightningd forwards it: the
/// client's tokens as they came, which is not JSON (DESIGN §6).
const MALFORMED_FUNDCHANNEL: &[u8] = br#"{"rpc_command":{"id":"cli:fundchannel#9","method":"fundchannel","params":{"id":[123x1],"amount":100000}}}"#;

#[test]
fn a_malformed_parameter_gets_an_answer_and_the_plugin_lives_on() {
    let (c, _s) = healthy();
    let mut f = started(Setup::new(&c.primary.wallet_dsn()));
    let mut not_utf8 =
        br#"{"rpc_command":{"id":"cli:fundchannel#10","method":"fundchannel","params":{"id":"caf"#
            .to_vec();
    not_utf8.extend_from_slice(b"\xe9\"}}}");
    let deep = format!(
        r#"{{"rpc_command":{{"method":"fundchannel","params":{{"id":{}{}}}}}}}"#,
        "[".repeat(3000),
        "]".repeat(3000)
    );
    for raw in [MALFORMED_FUNDCHANNEL, &not_utf8, deep.as_bytes()] {
        let answer = f.hook_raw("rpc_command", raw).expect("the hook answered");
        // Safe: lightningd goes on and rejects the parameter itself.
        assert_eq!(answer["result"], json!({"result": "continue"}), "{answer}");
    }
    downgrade_and_wait_until_reported(&c, &mut f);
    let answer = f
        .hook_raw("rpc_command", MALFORMED_FUNDCHANNEL)
        .expect("the hook answered");
    assert!(gated(&answer["result"]), "unsafe: still gated: {answer}");
    assert!(
        answer.get("error").is_none(),
        "never an error answer: {answer}"
    );
    // Alive: it still answers its methods.
    let r = f.call("replication-status", json!({}));
    assert_eq!(r["result"]["reported"], "unsafe", "{r}");
    assert!(
        f.wait_end(Duration::from_millis(100)).is_none(),
        "the plugin exited"
    );
}

#[test]
fn stop_mode_stops_lightningd_after_the_grace() {
    let (c, _s) = healthy();
    let setup = Setup::new(&c.primary.wallet_dsn())
        .option("replguard-on-unsafe", json!("stop"))
        .option("replguard-unsafe-grace", json!("2"));
    let f = started(setup);
    c.set_sync_names("").unwrap();
    let t = Instant::now();
    wait_for("lightningd to be stopped", Duration::from_secs(20), || {
        Ok(f.stopped())
    })
    .unwrap();
    let took = elapsed_ms(t);
    eprintln!("stop mode: lightningd stopped {took:.0} ms after the downgrade (grace 2 s)");
    assert!(took >= 2000.0, "stopped before the grace: {took:.0} ms");
}

#[test]
fn a_promoted_standby_stops_lightningd_at_once() {
    let (c, _s) = healthy();
    let standby = c.standby("s1").conninfo("postgres", "postgres");
    let setup =
        Setup::new(&c.primary.wallet_dsn()).option("replguard-standby-dsn", json!([standby]));
    let f = started(setup);
    assert!(!f.stopped());
    run_pg_ctl_promote(&c);
    let t = Instant::now();
    wait_for(
        "the self-fence",
        Duration::from_secs(20),
        || Ok(f.stopped()),
    )
    .unwrap();
    eprintln!(
        "self-fence: lightningd stopped {:.0} ms after the promotion",
        elapsed_ms(t)
    );
}

fn run_pg_ctl_promote(c: &Cluster) {
    c.standby("s1").psql("SELECT pg_promote(true, 30)").unwrap();
}

#[test]
fn the_status_file_shows_blocked_commits_while_lightningd_reads_nothing() {
    let (c, _s) = healthy();
    c.primary.psql("CREATE TABLE public.t (x int)").unwrap();
    let f = started(Setup::new(&c.primary.wallet_dsn()));
    let status = f.dir.path().join("replguard-status.json");
    wait_for("the first status file", Duration::from_secs(10), || {
        Ok(status.exists())
    })
    .unwrap();

    let t = Instant::now();
    let _writer = freeze_lightningd(&f, &c);
    let mut seen = Value::Null;
    wait_for(
        "the status file to show the blocked commit",
        Duration::from_secs(10),
        || {
            let doc: Value = serde_json::from_str(&std::fs::read_to_string(&status)?)?;
            let ok =
                doc["reported"] == "unsafe" && doc["syncrep_waiters"]["count"].as_i64() > Some(0);
            seen = doc;
            Ok(ok)
        },
    )
    .unwrap();
    let took = elapsed_ms(t);
    eprintln!(
        "status file: unsafe with {} waiting commit(s) {took:.0} ms after the hang, stdout unread",
        seen["syncrep_waiters"]["count"]
    );
    assert!(took < 3000.0, "took {took:.0} ms");
    let (code, out, _) = cli(&["status", "--from-file", status.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("commit(s) wait for the standby"), "{out}");
    c.standby("s1").resume();
}

#[test]
fn a_healthy_idle_pair_never_flips_for_a_minute() {
    let (c, _s) = healthy();
    let mut f = started(Setup::new(&c.primary.wallet_dsn()));
    let status = f.dir.path().join("replguard-status.json");
    let t = Instant::now();
    let mut reads = 0;
    while t.elapsed() < Duration::from_secs(60) {
        if let Ok(text) = std::fs::read_to_string(&status) {
            let doc: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(doc["reported"], "safe", "after {:?}: {doc:#}", t.elapsed());
            reads += 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    f.drain();
    assert!(reads > 100, "{reads}");
    assert!(
        !f.notifications
            .iter()
            .any(|n| n["method"] == "replguard_state_changed"),
        "{:?}",
        f.notifications
    );
}

/// The standby is gone before lightningd starts: lightningd blocks opening its wallet and
/// never sends `init`. After the startup wait the plugin says so, on stderr and in the
/// status file, from lightningd's own configuration.
#[test]
fn before_init_a_blocked_wallet_is_reported() {
    let c = start(&ClusterSpec::pair());
    c.primary.psql("CREATE TABLE public.t (x int)").unwrap();
    c.standby("s1").stop().unwrap();
    // lightningd's first commit, blocked.
    let _writer = c
        .spawn_sql("postgres", "postgres", "INSERT INTO public.t VALUES (1)")
        .unwrap();
    let config = format!(
        "wallet={}\nreplguard-startup-wait=1\n",
        c.primary.wallet_dsn()
    );
    let mut f =
        Fake::start(Setup::new("unused: the plugin reads the config files").config(&config));
    f.getmanifest();
    // No init: lightningd is stuck.
    let status = f.dir.path().join("regtest/replguard-status.json");
    let t = Instant::now();
    wait_for(
        "the before-init status file",
        Duration::from_secs(20),
        || {
            let Ok(text) = std::fs::read_to_string(&status) else {
                return Ok(false);
            };
            let doc: Value = serde_json::from_str(&text)?;
            Ok(doc["phase"] == "before-init" && doc["syncrep_waiters"]["count"].as_i64() > Some(0))
        },
    )
    .unwrap();
    wait_for("the stderr report", Duration::from_secs(5), || {
        Ok(f.stderr
            .lock()
            .unwrap()
            .contains("lightningd is blocked on its wallet"))
    })
    .unwrap();
    eprintln!(
        "before init: reported {:.0} ms after getmanifest (startup wait 1 s)",
        elapsed_ms(t)
    );
    let (code, out, _) = cli(&["status", "--from-file", status.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
}

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn metrics_tell_the_blocked_commits_while_lightningd_reads_nothing() {
    let (c, _s) = healthy();
    c.primary.psql("CREATE TABLE public.t (x int)").unwrap();
    let port = free_port();
    let f = started(
        Setup::new(&c.primary.wallet_dsn())
            .option("replguard-metrics", json!(format!("127.0.0.1:{port}"))),
    );
    wait_for("the endpoint", Duration::from_secs(10), || {
        Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
    })
    .unwrap();
    // Before the first check the endpoint says unknown; then the healthy pair is safe.
    wait_for("a safe scrape", Duration::from_secs(10), || {
        Ok(scrape(port).contains("replguard_verdict{level=\"safe\"} 1"))
    })
    .unwrap();
    let t = Instant::now();
    let _writer = freeze_lightningd(&f, &c);
    let mut text = String::new();
    wait_for(
        "the scrape to show the blocked commit",
        Duration::from_secs(10),
        || {
            text = scrape(port);
            Ok(text.contains("replguard_verdict{level=\"unsafe\"} 1")
                && text.contains("replguard_syncrep_waiting_backends 1"))
        },
    )
    .unwrap();
    eprintln!(
        "metrics scrape {:.0} ms after the hang, stdout unread:\n{text}",
        elapsed_ms(t)
    );
    assert!(scrape(port).starts_with("HTTP/1.0 200 OK"));
    c.standby("s1").resume();
}

#[test]
fn the_alert_command_gets_each_change_with_the_report() {
    let (c, _s) = healthy();
    let out = tempfile::tempdir().unwrap();
    let cmd = format!(
        "cat > {}/alert-$REPLGUARD_PREVIOUS-$REPLGUARD_CURRENT.json",
        out.path().display()
    );
    let _f =
        started(Setup::new(&c.primary.wallet_dsn()).option("replguard-alert-command", json!(cmd)));
    c.set_sync_names("").unwrap();
    let file = out.path().join("alert-safe-unsafe.json");
    wait_for("the alert", Duration::from_secs(10), || {
        Ok(file.exists() && std::fs::metadata(&file)?.len() > 0)
    })
    .unwrap();
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(report["verdict"], "unsafe");
    assert!(report["findings"].to_string().contains("sync-names-empty"));
}

/// With `wal_receiver_status_interval = 1s` on the standby its replies are proof of life: an
/// idle node writes no test commit (no WAL, no archived segment), and a hang is still seen.
#[test]
fn fresh_standby_replies_spare_the_write_and_a_hang_is_still_seen() {
    let mut spec = ClusterSpec::pair();
    spec.standby_conf
        .push("wal_receiver_status_interval = 1s".into());
    let c = start(&spec);
    let _s = fake_lightningd::lightningd_session(&c);
    let f = started(Setup::new(&c.primary.wallet_dsn()));
    let status = f.dir.path().join("replguard-status.json");
    let read =
        || -> Value { serde_json::from_str(&std::fs::read_to_string(&status).unwrap()).unwrap() };
    wait_for("a first report", Duration::from_secs(10), || {
        Ok(status.exists())
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let lsn_before = c.primary.psql("SELECT pg_current_wal_lsn()").unwrap();
    let mut outcomes = Vec::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(500));
        let doc = read();
        assert_eq!(doc["reported"], "safe", "{doc:#}");
        outcomes.push(doc["commit_probe"]["outcome"].as_str().unwrap().to_string());
    }
    let lsn_after = c.primary.psql("SELECT pg_current_wal_lsn()").unwrap();
    assert!(outcomes.iter().all(|o| o == "skipped"), "{outcomes:?}");
    assert_eq!(
        lsn_before, lsn_after,
        "the monitor wrote WAL on an idle node"
    );

    c.standby("s1").hang_walreceiver().unwrap();
    let t = Instant::now();
    wait_for("the hang to be seen", Duration::from_secs(10), || {
        Ok(read()["reported"] == "unsafe")
    })
    .unwrap();
    eprintln!(
        "write-free liveness: 10 idle checks skipped the probe, WAL stayed at {lsn_after}; hang seen in {:.0} ms",
        elapsed_ms(t)
    );
    c.standby("s1").resume();
}

#[test]
fn the_monitor_records_each_change_of_verdict_as_evidence_and_nothing_while_it_holds() {
    let (c, _s) = healthy();
    let evidence = |server: &cln_replguard::cluster::Server| {
        let out = std::process::Command::new(c.bindir().join("psql"))
            .args(["-X", "-A", "-t", "-q", "-d"])
            .arg(server.conninfo("postgres", "lightningd"))
            .arg("-c")
            .arg(
                "SELECT coalesce(string_agg(level || '/' || source || '/' || \
                 array_to_string(covered, ','), ' ' ORDER BY id), '') \
                 FROM replguard.evidence",
            )
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mut f = started(Setup::new(&c.primary.wallet_dsn()));
    wait_for("the first record", Duration::from_secs(10), || {
        Ok(evidence(&c.primary) == "safe/plugin/s1")
    })
    .unwrap();
    // Checks go on; an unchanged verdict writes nothing.
    let checks = |f: &Fake| {
        let p = f.dir.path().join("replguard-status.json");
        std::fs::read_to_string(p).unwrap_or_default()
    };
    let before = checks(&f);
    wait_for("another check", Duration::from_secs(10), || {
        Ok(checks(&f) != before)
    })
    .unwrap();
    assert_eq!(evidence(&c.primary), "safe/plugin/s1");

    c.primary
        .psql("ALTER SYSTEM SET synchronous_standby_names = ''")
        .unwrap();
    c.primary.reload().unwrap();
    wait_for("the unsafe record", Duration::from_secs(10), || {
        Ok(evidence(&c.primary) == "safe/plugin/s1 unsafe/plugin/")
    })
    .unwrap();
    // It reached the standby with the WAL (asynchronously now, which is the point).
    wait_for("the record on the standby", Duration::from_secs(10), || {
        Ok(evidence(c.standby("s1")) == "safe/plugin/s1 unsafe/plugin/")
    })
    .unwrap();
    // The second write found the table in place: no DDL, no NOTICE in lightningd's log.
    f.drain();
    let notices: Vec<_> = f
        .logs
        .iter()
        .filter(|(_, m)| m.contains("already exists"))
        .collect();
    assert!(notices.is_empty(), "{notices:?}");
}

/// A standby DSN that reaches the primary itself (here its own socket; in the field a host
/// list falling back to it, a VIP or a pooler) is a configuration error to report, never a
/// reason to stop a healthy node.
#[test]
fn a_standby_dsn_that_reaches_the_primary_does_not_stop_lightningd() {
    let (c, _s) = healthy();
    let primary_as_standby = c.primary.conninfo("postgres", "postgres");
    // `warn`: the standby side cannot be verified (unknown), which `enforce` refuses at
    // startup; the runtime guard is what is tested here.
    let setup = Setup::new(&c.primary.wallet_dsn())
        .option("replguard-mode", json!("warn"))
        .option("replguard-standby-dsn", json!([primary_as_standby]));
    let f = started(setup);
    let status = f.dir.path().join("replguard-status.json");
    let read = || -> Value {
        serde_json::from_str(&std::fs::read_to_string(&status).unwrap_or_default())
            .unwrap_or(Value::Null)
    };
    wait_for("a report of the check", Duration::from_secs(10), || {
        Ok(read()["findings"].is_array())
    })
    .unwrap();
    let first = read();
    let codes = first["findings"].to_string();
    assert!(!f.stopped(), "lightningd was stopped: {codes}");
    assert!(codes.contains("standby-dsn-is-primary"), "{first:#}");
    assert!(!codes.contains("standby-promoted"), "{first:#}");
    // The self-fence would have run right after that report: one more report, still running.
    let at = first["checked_at"].clone();
    wait_for("the next report", Duration::from_secs(10), || {
        Ok(read()["checked_at"] != at)
    })
    .unwrap();
    assert!(!f.stopped(), "lightningd was stopped");
}

/// The status file is replaced through a temporary file. A link planted where the old code
/// put it (`replguard-status.json.tmp`) must not be followed: the file it points to stays as
/// it was, and the status file is a plain file that only its owner can change.
#[test]
fn a_link_planted_at_the_status_files_temporary_path_is_not_followed() {
    use std::os::unix::fs::PermissionsExt;
    let victim_dir = tempfile::tempdir().unwrap();
    let victim = victim_dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    // Unreachable wallet, warn mode: the monitor runs and writes the status file each check.
    let mut f = Fake::start(
        Setup::new("postgres://host=/nonexistent").option("replguard-mode", json!("warn")),
    );
    let status = f.dir.path().join("replguard-status.json");
    std::os::unix::fs::symlink(&victim, f.dir.path().join("replguard-status.json.tmp")).unwrap();
    f.getmanifest();
    assert!(matches!(
        f.init(Duration::from_secs(30)),
        InitOutcome::Answered(_)
    ));
    wait_for("a status file", Duration::from_secs(10), || {
        let Ok(text) = std::fs::read_to_string(&status) else {
            return Ok(false);
        };
        let doc: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(doc["verdict"] == "unknown")
    })
    .unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let meta = std::fs::symlink_metadata(&status).unwrap();
    assert!(meta.file_type().is_file(), "{meta:?}");
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(
        mode & 0o137,
        0,
        "mode {mode:o}: writable by others or executable"
    );
}

/// Before `init`, `replguard-status-file` from lightningd's configuration decides where the
/// report goes, `off` included.
#[test]
fn before_init_the_status_file_option_is_honoured() {
    let elsewhere = tempfile::tempdir().unwrap();
    let chosen = elsewhere.path().join("chosen.json");
    for (value, expected) in [
        (chosen.to_str().unwrap(), Some(chosen.clone())),
        ("off", None),
    ] {
        let config = format!(
            "wallet=postgres://host=/nonexistent\nreplguard-startup-wait=0\n\
             replguard-status-file={value}\n"
        );
        let mut f =
            Fake::start(Setup::new("unused: the plugin reads the config files").config(&config));
        f.getmanifest();
        // The report on stderr comes after the status file was written (or not).
        wait_for("the stderr report", Duration::from_secs(20), || {
            Ok(f.stderr
                .lock()
                .unwrap()
                .contains("has not initialised its plugins"))
        })
        .unwrap();
        let default = f.dir.path().join("regtest/replguard-status.json");
        assert!(!default.exists(), "{value}: written to the default place");
        if let Some(path) = expected {
            let doc: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(doc["phase"], "before-init");
        }
    }
}

/// The monitor is supervised: when it ends (here a panic after its second check, through the
/// debug-build-only `REPLGUARD_TEST_MONITOR_PANIC_AFTER`), the level becomes unknown — the
/// gate closes — and the reason is logged, in `replication-status` and in the status file.
#[test]
fn an_ended_monitor_closes_the_gate_and_says_why() {
    let (c, _s) = healthy();
    let mut setup = Setup::new(&c.primary.wallet_dsn());
    setup
        .env
        .push(("REPLGUARD_TEST_MONITOR_PANIC_AFTER".into(), "2".into()));
    let mut f = started(setup);
    let r = f.poll(
        "replication-status",
        json!({}),
        Duration::from_secs(15),
        |r| {
            r["result"]["findings"]
                .to_string()
                .contains("monitor-ended")
        },
    );
    let s = &r["result"];
    assert_eq!(s["verdict"], "unknown", "{s:#}");
    assert_eq!(s["reported"], "unknown", "{s:#}");
    let finding = &s["findings"][0];
    assert_eq!(finding["code"], "monitor-ended", "{s:#}");
    assert!(
        finding["message"].as_str().unwrap().contains("panicked"),
        "{finding}"
    );
    let answer = f.hook("rpc_command", fundchannel());
    assert!(gated(&answer), "the gate stays open: {answer}");
    let status = f.dir.path().join("replguard-status.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&status).unwrap()).unwrap();
    assert_eq!(doc["verdict"], "unknown", "{doc:#}");
    assert!(
        doc["findings"].to_string().contains("monitor-ended"),
        "{doc:#}"
    );
    let (code, out, _) = cli(&["status", "--from-file", status.to_str().unwrap()]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("monitor-ended"), "{out}");
    f.drain();
    assert!(
        f.logs_at("broken")
            .iter()
            .chain(f.logs_at("error").iter())
            .any(|l| l.contains("monitor") && l.contains("panicked")),
        "{:?}",
        f.logs
    );
    assert!(!f.stopped());
}

/// The plugin's CPU time so far, in seconds (utime + stime).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which ends with the last ')'.
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Sets a running process's soft descriptor limit (the hard one stays).
fn set_soft_nofile(pid: u32, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with a valid pid and pointers to rlimit structs we own.
    unsafe {
        assert_eq!(
            libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old),
            0
        );
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        assert_eq!(
            libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()),
            0,
            "{}",
            std::io::Error::last_os_error()
        );
    }
}

/// lightningd hands its descriptor limit down to its plugins. A local flood of connections to
/// the metrics port, four times that limit, must not use the plugin's descriptors up (its
/// probe would fail, the verdict go unknown and stop mode stop a healthy node), nor make it
/// spin on accept errors.
#[test]
fn a_connection_flood_on_the_metrics_port_leaves_the_guard_working() {
    let (c, _s) = healthy();
    let port = free_port();
    let mut setup = Setup::new(&c.primary.wallet_dsn())
        .option("replguard-metrics", json!(format!("127.0.0.1:{port}")))
        .option("replguard-on-unsafe", json!("stop"))
        .option("replguard-unsafe-grace", json!("1"));
    setup.nofile = Some(256);
    let mut f = started(setup);
    wait_for("a safe scrape", Duration::from_secs(10), || {
        Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && scrape(port).contains("replguard_verdict{level=\"safe\"} 1"))
    })
    .unwrap();
    let pid = f.plugin_pid();
    let cpu_before = cpu_seconds(pid);
    let t = Instant::now();
    // 1000 connections that never send a request, held open by this side.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let held: Vec<_> = (0..1000)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
        .collect();
    let mut most = 0;
    while t.elapsed() < Duration::from_secs(10) {
        most = most.max(open_descriptors(pid));
        let r = f.call("replication-status", json!({}));
        assert_eq!(
            r["result"]["reported"],
            "safe",
            "during the flood, after {:?}: {r:#}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let wall = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    eprintln!(
        "flood: {} connections held for {wall:.1} s; the plugin used at most {most} descriptors \
         (limit 256) and {cpu:.2} s of CPU",
        held.len()
    );
    assert!(held.len() > 256, "only {} connections", held.len());
    assert!(f.alive() && !f.stopped(), "lightningd was stopped");
    assert!(cpu < wall * 0.3, "{cpu:.2} s of CPU in {wall:.1} s");
    drop(held);
    assert!(scrape(port).starts_with("HTTP/1.0 200 OK"));
}

/// The plugin's own descriptors run out (its limit is lowered while it runs): the probe
/// cannot open its session. That is a plugin fault, reported as one — not a judgement of the
/// storage — and stop mode does not stop lightningd for it. With descriptors free again the
/// verdict comes back.
#[test]
fn a_plugin_out_of_descriptors_is_a_plugin_fault_that_stops_nothing() {
    let (c, _s) = healthy();
    let setup = Setup::new(&c.primary.wallet_dsn())
        .option("replguard-on-unsafe", json!("stop"))
        .option("replguard-unsafe-grace", json!("1"));
    let mut f = started(setup);
    f.poll(
        "replication-status",
        json!({}),
        Duration::from_secs(10),
        |r| r["result"]["interval_ms"].is_number(),
    );
    let pid = f.plugin_pid();
    // Only stdin, stdout and stderr fit under the limit: every new descriptor fails.
    set_soft_nofile(pid, 3);
    let r = f.poll(
        "replication-status",
        json!({}),
        Duration::from_secs(20),
        |r| {
            r["result"]["reported"] == "unknown"
                && r["result"]["reported_for_ms"].as_u64() > Some(3000)
        },
    );
    set_soft_nofile(pid, 1024);
    let s = &r["result"];
    let fault = s["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "plugin-fault")
        .unwrap_or_else(|| panic!("no plugin-fault finding: {s:#}"));
    assert!(
        fault["message"]
            .as_str()
            .unwrap()
            .starts_with("plugin fault: "),
        "{fault}"
    );
    assert!(
        fault["message"]
            .as_str()
            .unwrap()
            .contains("Too many open files"),
        "{fault}"
    );
    assert!(f.alive() && !f.stopped(), "lightningd was stopped: {s:#}");
    f.poll(
        "replication-status",
        json!({}),
        Duration::from_secs(10),
        |r| r["result"]["reported"] == "safe",
    );
    f.drain();
    assert!(
        f.logs_at("warn")
            .iter()
            .any(|l| l.contains("plugin fault") && l.contains("not stopping")),
        "{:?}",
        f.logs
    );
}

/// A session of `user` on the primary under `application_name`, held open until dropped.
fn session_named(c: &Cluster, user: &str, application_name: &str) -> Daemon {
    let d = c
        .spawn_sql(
            user,
            user,
            &format!("SET application_name = '{application_name}'; SELECT pg_sleep(3600)"),
        )
        .unwrap();
    wait_for(application_name, Duration::from_secs(10), || {
        Ok(c.primary.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{application_name}'"
        ))? == "1")
    })
    .unwrap();
    d
}

/// Without `replguard-patroni-url`, a cluster whose server shows Patroni's sessions is named
/// by the plugin as `check` and the pre-flight name it: Patroni may rewrite the names or
/// promote at any time, and nothing reads its settings. Patroni's heartbeat session is
/// played by a session with its application_name.
#[test]
fn a_patroni_cluster_without_the_url_is_named_by_the_plugin() {
    let (c, _s) = healthy();
    let _patroni = session_named(&c, "postgres", "Patroni heartbeat");
    // Any client may call itself Patroni: lightningd's own role doing so is not taken for it.
    let _impostor = session_named(&c, "lightningd", "Patroni restapi");
    let mut f =
        started(Setup::new(&c.primary.wallet_dsn()).option("replguard-mode", json!("warn")));
    let r = f.poll(
        "replication-status",
        json!({}),
        Duration::from_secs(10),
        |r| {
            r["result"]["findings"]
                .to_string()
                .contains("ha-manager-unconfigured")
        },
    );
    let text = r["result"].to_string();
    assert!(text.contains("replguard-patroni-url"), "{r:#}");
    assert!(text.contains("(1 Patroni session(s)"), "{r:#}");
    assert_eq!(r["result"]["verdict"], "unknown", "{r:#}");
}
