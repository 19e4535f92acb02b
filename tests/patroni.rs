//! cln-replguard on a real Patroni cluster (etcd, Patroni 4.x, PostgreSQL on loopback): the
//! harness is `patroni_support`. Every case starts its own cluster and tears it down.

mod common;
mod fake_lightningd;
mod patroni_support;

use common::cli;

use std::time::Duration;

use patroni_support::{LIGHTNINGD_UNIT, PatroniCluster, PatroniSpec};

/// The facts the Patroni rules build on, checked on the real engine: the REST fields read,
/// the synchronous standby in `/cluster`, and strict mode's `*` when the standby's host is
/// lost.
#[test]
fn patroni_behaves_as_the_rules_assume() {
    let c = PatroniCluster::start(&PatroniSpec::strict(2));
    let status = c.get_json("n1", "/patroni").unwrap();
    assert_eq!(status["role"], "primary", "{status}");
    assert_eq!(status["patroni"]["name"], "n1");
    assert!(status["database_system_identifier"].is_string(), "{status}");
    assert!(status["timeline"].is_u64(), "{status}");
    let config = c.get_json("n1", "/config").unwrap();
    assert_eq!(config["synchronous_mode"], true, "{config}");
    assert_eq!(config["synchronous_mode_strict"], true, "{config}");
    let cluster = c.get_json("n1", "/cluster").unwrap();
    let n2 = cluster["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "n2")
        .cloned()
        .unwrap();
    assert_eq!(n2["role"], "sync_standby", "{cluster}");
    assert_eq!(c.get("n2", "/leader").unwrap().0, 503);
    let n1 = c.node("n1");
    assert_eq!(c.psql(n1, "SHOW synchronous_standby_names").unwrap(), "n2");
    // Patroni writes the names into postgresql.conf (not postgresql.auto.conf).
    assert!(
        c.psql(
            n1,
            "SELECT sourcefile FROM pg_settings WHERE name = 'synchronous_standby_names'"
        )
        .unwrap()
        .ends_with("/postgresql.conf")
    );
    assert!(
        c.psql(
            n1,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'Patroni%'"
        )
        .unwrap()
            != "0"
    );
    c.kill_node("n2").unwrap();
    c.wait("strict mode to write *", Duration::from_secs(30), || {
        Ok(c.psql(n1, "SHOW synchronous_standby_names")? == "*")
    });
}

/// `check` through `node`'s wallet DSN, with `url_of`'s Patroni URL (none: `None`).
fn check(c: &PatroniCluster, node: &str, url_of: Option<&str>, extra: &[&str]) -> (i32, String) {
    let dsn = c.node(node).wallet_dsn();
    let url = url_of.map(|n| c.node(n).api_url());
    let mut args = vec!["check", "--dsn", &dsn];
    if let Some(u) = &url {
        args.extend(["--patroni-url", u]);
    }
    args.extend(extra);
    let (code, out, err) = cli(&args);
    (code, format!("{out}{err}"))
}

#[test]
fn a_healthy_strict_patroni_cluster_is_safe_and_its_leader_passes_require_leader() {
    let c = PatroniCluster::start(&PatroniSpec::strict(2));
    let (code, out) = check(&c, "n1", Some("n1"), &["--require-leader"]);
    assert_eq!(code, 0, "{out}");
    // The replica's Patroni is not the leader: --require-leader fails there.
    let (code, out) = check(&c, "n1", Some("n2"), &["--require-leader"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("patroni-not-leader"), "{out}");
    // Patroni's pre_promote on n2: no evidence yet vetoes; once the leader's check recorded
    // a safe verdict, it lets the promotion go; an old lightningd still answering vetoes.
    let (code, out) = pre_promote(&c, "n2", "");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("EVIDENCE UNKNOWN"), "{out}");
    let (code, out) = check(&c, "n1", Some("n1"), &["--record-evidence"]);
    assert_eq!(code, 0, "{out}");
    let written = c
        .psql(c.node("n1"), "SELECT pg_current_wal_flush_lsn()")
        .unwrap();
    c.wait(
        "the evidence to be replayed on n2",
        Duration::from_secs(10),
        || {
            Ok(c.psql(
                c.node("n2"),
                &format!("SELECT pg_last_wal_replay_lsn() >= '{written}'"),
            )? == "t")
        },
    );
    let (code, out) = pre_promote(&c, "n2", "");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("EVIDENCE COVERED"), "{out}");
    let old_lightningd = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = old_lightningd.local_addr().unwrap().to_string();
    let (code, out) = pre_promote(&c, "n2", &addr);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("still answers"), "{out}");
    // Without the URL, Patroni is recognised by its sessions and named.
    let (code, out) = check(&c, "n1", None, &[]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("ha-manager-unconfigured") && out.contains("Patroni"),
        "{out}"
    );
}

#[test]
fn patroni_with_strict_off_is_unsafe() {
    let c = PatroniCluster::start(&PatroniSpec {
        synchronous_mode_strict: false,
        ..PatroniSpec::strict(2)
    });
    let (code, out) = check(&c, "n1", Some("n1"), &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("patroni-strict-off"), "{out}");
}

/// Patroni reads its booleans with `parse_bool` (`on`/`true`/`yes`/`1`, any case): any other
/// value is false. `synchronous_mode_strict: 2` is not strict to Patroni, which empties the
/// names when the standby is lost; the check must not read it as strict.
#[test]
fn a_strict_value_patroni_reads_as_false_is_unsafe() {
    let c = PatroniCluster::start(&PatroniSpec::strict(2));
    c.patronictl(&["edit-config", "--force", "-s", "synchronous_mode_strict=2"])
        .unwrap();
    c.wait("/config to say 2", Duration::from_secs(10), || {
        Ok(c.get_json("n1", "/config")?["synchronous_mode_strict"] == 2)
    });
    let (code, out) = check(&c, "n1", Some("n1"), &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("patroni-strict-off"), "{out}");
    // What Patroni does with it: not strict, the names emptied once the standby is lost.
    c.kill_node("n2").unwrap();
    let n1 = c.node("n1");
    c.wait(
        "Patroni to empty the names",
        Duration::from_secs(30),
        || Ok(c.psql(n1, "SHOW synchronous_standby_names")?.is_empty()),
    );
}

#[test]
fn patroni_with_synchronous_mode_off_is_unsafe() {
    let c = PatroniCluster::start(&PatroniSpec {
        synchronous_mode: false,
        synchronous_mode_strict: false,
        ..PatroniSpec::strict(2)
    });
    let (code, out) = check(&c, "n1", Some("n1"), &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("patroni-sync-mode-off"), "{out}");
}

#[test]
fn names_set_by_alter_system_over_patronis_are_unsafe() {
    let c = PatroniCluster::start(&PatroniSpec::strict(2));
    let n1 = c.node("n1");
    let patronis = c.psql(n1, "SHOW synchronous_standby_names").unwrap();
    // The very value Patroni wrote, now from postgresql.auto.conf: it would stay when
    // Patroni changes its own.
    c.psql(
        n1,
        &format!("ALTER SYSTEM SET synchronous_standby_names = '{patronis}'"),
    )
    .unwrap();
    c.psql(n1, "SELECT pg_reload_conf()").unwrap();
    c.wait("the override to apply", Duration::from_secs(10), || {
        Ok(c.psql(
            n1,
            "SELECT sourcefile FROM pg_settings WHERE name = 'synchronous_standby_names'",
        )?
        .ends_with("postgresql.auto.conf"))
    });
    let (code, out) = check(&c, "n1", Some("n1"), &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("patroni-sync-names-overridden"), "{out}");
}

#[test]
fn a_paused_patroni_is_degraded() {
    let c = PatroniCluster::start(&PatroniSpec::strict(2));
    c.patronictl(&["pause", "--wait"]).unwrap();
    let (code, out) = check(&c, "n1", Some("n1"), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("patroni-paused"), "{out}");
}

#[test]
fn patroni_rest_api_down_is_unknown() {
    let c = PatroniCluster::start(&PatroniSpec::strict(2));
    // Patroni gone, its PostgreSQL still serving: the storage looks fine, Patroni's side is
    // not known.
    c.kill_patroni("n1");
    let (code, out) = check(&c, "n1", Some("n1"), &[]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("patroni-unreachable"), "{out}");
}

#[test]
fn under_patroni_failover_check_targets_only_the_member_in_sync_and_failover_and_setup_refuse() {
    let c = PatroniCluster::start(&PatroniSpec::strict(3));
    let names = c
        .psql(c.node("n1"), "SHOW synchronous_standby_names")
        .unwrap();
    let (sync, other) = if names.contains("n2") {
        ("n2", "n3")
    } else {
        ("n3", "n2")
    };
    let dsn = c.node("n1").wallet_dsn();
    let url = c.node("n1").api_url();
    let (code, out, err) = cli(&[
        "failover-check",
        "--dsn",
        &dsn,
        "--patroni-url",
        &url,
        "--json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["target"], sync, "{answer}");
    let other_entry = answer["standbys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == other)
        .cloned()
        .unwrap_or_else(|| panic!("{other} missing: {answer}"));
    assert_eq!(other_entry["ready"], false, "{answer}");
    assert!(other_entry.to_string().contains("not in /sync"), "{answer}");

    // The plugin's `lightning-cli failover-check` applies the same rule.
    {
        use fake_lightningd::{Fake, Setup};
        let _session = WalletSession::open(&c, "n1");
        let setup = Setup::new(&dsn).option("replguard-patroni-url", serde_json::json!(url));
        let mut f = Fake::start(setup);
        f.getmanifest();
        let o = f.init(Duration::from_secs(30));
        assert!(
            matches!(&o, fake_lightningd::InitOutcome::Answered(r) if r["result"].is_object()),
            "{o:?} {:?}",
            f.logs
        );
        let reply = f.call("failover-check", serde_json::json!({}));
        let answer = &reply["result"];
        assert_eq!(answer["target"], sync, "{reply}");
        let other_entry = answer["standbys"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == other))
            .cloned()
            .unwrap_or_else(|| panic!("{other} missing: {reply}"));
        assert_eq!(other_entry["ready"], false, "{reply}");
        assert!(other_entry.to_string().contains("not in /sync"), "{reply}");
    }

    // failover and setup refuse, naming patronictl and the settings.
    let standby_dsn = c.node(sync).conninfo("postgres", "lightningd");
    let (code, out, err) = cli(&[
        "failover",
        "--standby-dsn",
        &standby_dsn,
        "--then",
        "wait-for-standby",
    ]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("patronictl failover --candidate"),
        "{out}{err}"
    );
    assert_eq!(
        c.psql(c.node(sync), "SELECT pg_is_in_recovery()").unwrap(),
        "t",
        "nothing was promoted"
    );
    let pgdata = c.node("n1").datadir.display().to_string();
    let (code, out, err) = cli(&["setup", "primary", "--pgdata", &pgdata]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains("Patroni manages this cluster"), "{err}");
    assert!(err.contains("synchronous_mode_strict: on"), "{err}");
}

/// A lightning-dir whose config holds the node's wallet DSN and Patroni URL.
fn lightning_dir(c: &PatroniCluster, node: &str, mode: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(
        d.path().join("config"),
        format!(
            "wallet={}\nreplguard-patroni-url={}\nreplguard-mode={mode}\n",
            c.node(node).wallet_dsn(),
            c.node(node).api_url()
        ),
    )
    .unwrap();
    d
}

fn preflight(dir: &tempfile::TempDir) -> (i32, String) {
    let (code, out, err) = cli(&[
        "check",
        "--lightning-dir",
        dir.path().to_str().unwrap(),
        "--require-leader",
        "--no-evidence",
    ]);
    (code, format!("{out}{err}"))
}

#[test]
fn the_require_leader_preflight_passes_only_beside_the_leader_and_follows_a_switchover() {
    let c = PatroniCluster::start(&PatroniSpec::strict(2));
    let (on_n1, on_n2) = (
        lightning_dir(&c, "n1", "enforce"),
        lightning_dir(&c, "n2", "warn"),
    );
    let (code, out) = preflight(&on_n1);
    assert_eq!(code, 0, "{out}");
    // On the replica's host, even replguard-mode=warn does not let lightningd start.
    let (code, out) = preflight(&on_n2);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("patroni-not-leader") && out.contains("pre-flight FAILED"),
        "{out}"
    );

    c.patronictl(&["switchover", "--candidate", "n2", "--force"])
        .unwrap();
    c.wait("n2 to lead", Duration::from_secs(60), || {
        Ok(c.leader().as_deref() == Some("n2") && c.get("n2", "/leader")?.0 == 200)
    });
    c.wait_sync_standby(Duration::from_secs(60)).unwrap();
    let (code, out) = preflight(&on_n1);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("patroni-not-leader"), "{out}");
    let (code, out) = preflight(&on_n2);
    assert_eq!(code, 0, "{out}");
}

/// `--require-leader` passes only when the wallet DSN reaches the leader's PostgreSQL: a DSN
/// that reaches no server (the leader's socket gone, a typo) proves nothing, in every mode.
#[test]
fn the_require_leader_preflight_fails_when_the_wallet_reaches_no_server_even_in_warn() {
    let c = PatroniCluster::start(&PatroniSpec::strict(2));
    let d = tempfile::tempdir().unwrap();
    let nowhere = d.path().join("no-socket-here");
    std::fs::create_dir(&nowhere).unwrap();
    std::fs::write(
        d.path().join("config"),
        format!(
            "wallet=postgres://host={} port=5 user=lightningd dbname=lightningd\n\
             replguard-patroni-url={}\nreplguard-mode=warn\n",
            nowhere.display(),
            c.node("n1").api_url()
        ),
    )
    .unwrap();
    let (code, out) = preflight(&d);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("pre-flight FAILED"), "{out}");
}

/// lightningd keeps a session open on its wallet; the plugin looks for it.
struct WalletSession(std::process::Child);

impl WalletSession {
    fn open(c: &PatroniCluster, node: &str) -> WalletSession {
        let child = std::process::Command::new(patroni_support::tools().bindir.join("psql"))
            .args([
                "-X",
                "-q",
                "-d",
                &c.node(node).conninfo("lightningd", "lightningd"),
            ])
            .args(["-c", "SELECT pg_sleep(3600)"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        c.wait("lightningd's session", Duration::from_secs(10), || {
            Ok(c.psql(
                c.node(node),
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'lightningd' \
                 AND query LIKE '%pg_sleep%'",
            )? == "1")
        });
        WalletSession(child)
    }
}

impl Drop for WalletSession {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one switchover showed: the plugin's fence, and Patroni's on_role_change callbacks.
struct Round {
    /// The old leader's `/leader` stopped answering 200 → the fake lightningd got `stop`.
    fence_ms: f64,
    /// The old leader lost the lock → its on_role_change ran `systemctl --no-block stop`.
    stop_call_ms: f64,
    /// The new leader's `/leader` answered 200 → its on_role_change ran `… start`.
    start_call_ms: f64,
}

/// The moments the test saw, polling every 20 ms: the lock lost on `from`, `to` leading
/// (its `/leader` 200), the fake lightningd told to stop.
#[derive(Debug, Default)]
struct Seen {
    lock_lost: Option<std::time::SystemTime>,
    new_leads: Option<std::time::SystemTime>,
    stopped: Option<std::time::SystemTime>,
}

/// A fake lightningd with the plugin beside `from` (default gate mode), then
/// `patronictl switchover` to `to`: the plugin must stop it within 2 s of `from` losing the
/// leader lock, and Patroni's on_role_change (the real contrib script) must run
/// `systemctl --no-block stop` on `from` and `… start` on `to`.
fn fence_round(c: &PatroniCluster, from: &str, to: &str) -> Round {
    use fake_lightningd::{Fake, Setup};
    let _session = WalletSession::open(c, from);
    let setup = Setup::new(&c.node(from).wallet_dsn()).option(
        "replguard-patroni-url",
        serde_json::json!(c.node(from).api_url()),
    );
    let mut f = Fake::started(setup);
    let logged = |f: &Fake, text: &str| f.logs.iter().any(|(_, m)| m.contains(text));
    c.wait(
        "the plugin to follow Patroni",
        Duration::from_secs(10),
        || {
            f.drain();
            Ok(logged(&f, "following Patroni"))
        },
    );
    assert!(!f.stopped());

    let since = std::time::SystemTime::now();
    let seen = std::thread::scope(|s| {
        let run = s.spawn(|| c.patronictl(&["switchover", "--candidate", to, "--force"]));
        let mut seen = Seen::default();
        let start = std::time::Instant::now();
        while (seen.lock_lost.is_none() || seen.new_leads.is_none() || seen.stopped.is_none())
            && start.elapsed() < Duration::from_secs(60)
        {
            let now = std::time::SystemTime::now();
            if seen.lock_lost.is_none() && c.get(from, "/leader").map_or(true, |(s, _)| s != 200) {
                seen.lock_lost = Some(now);
            }
            if seen.new_leads.is_none() && c.get(to, "/leader").is_ok_and(|(s, _)| s == 200) {
                seen.new_leads = Some(now);
            }
            if seen.stopped.is_none() && f.stopped() {
                seen.stopped = Some(now);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        run.join().unwrap().unwrap();
        seen
    });
    let (Some(lock_lost), Some(new_leads), Some(stopped)) =
        (seen.lock_lost, seen.new_leads, seen.stopped)
    else {
        panic!("{from} → {to}: {seen:?}; logs: {:?}", f.logs);
    };
    let ms = |a: std::time::SystemTime, b: std::time::SystemTime| {
        b.duration_since(a)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let fence_ms = ms(lock_lost, stopped);
    assert!(fence_ms < 2000.0, "{from} → {to}: {fence_ms:.0} ms");
    f.drain();
    assert!(logged(&f, "no longer Patroni's leader"), "{:?}", f.logs);

    // Patroni's callbacks, as the systemctl stand-in recorded them.
    let call = |node: &str, verb: &str| {
        let mut found = None;
        c.wait(
            &format!("on_role_change on {node} to run systemctl {verb}"),
            Duration::from_secs(30),
            || {
                found = c.node(node).systemctl_calls().into_iter().find(|call| {
                    call.at >= since && call.words == ["--no-block", verb, LIGHTNINGD_UNIT]
                });
                Ok(found.is_some())
            },
        );
        found.unwrap()
    };
    let stop_call_ms = call(from, "stop").ms_after(lock_lost);
    let start_call_ms = call(to, "start").ms_after(new_leads);
    for (node, verb) in [(from, "start"), (to, "stop")] {
        let wrong: Vec<_> = c
            .node(node)
            .systemctl_calls()
            .into_iter()
            .filter(|call| call.at >= since && call.words.iter().any(|w| w == verb))
            .collect();
        assert!(wrong.is_empty(), "{node} ran systemctl {verb}: {wrong:?}");
    }
    c.wait_sync_standby(Duration::from_secs(60)).unwrap();
    Round {
        fence_ms,
        stop_call_ms,
        start_call_ms,
    }
}

/// Median and worst of `values`.
fn median_worst(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (median, values[n - 1])
}

/// Switchovers back and forth (`PATRONI_FENCE_ROUNDS`, default 2): each time the plugin
/// stops the old leader's (fake) lightningd within 2 s, and Patroni's own on_role_change
/// calls — the contrib script, `systemctl` a stand-in that records — stop lightningd on the
/// old leader's host and start it on the new one's.
#[test]
fn switchovers_stop_the_old_leaders_lightningd_within_two_seconds_and_on_role_change_moves_it() {
    let rounds: usize = std::env::var("PATRONI_FENCE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let c = PatroniCluster::start(&PatroniSpec::strict(2));
    let mut results = Vec::new();
    for i in 0..rounds {
        let (from, to) = if i % 2 == 0 {
            ("n1", "n2")
        } else {
            ("n2", "n1")
        };
        let r = fence_round(&c, from, to);
        eprintln!(
            "patroni fence round {}: {from} → {to}: lightningd stopped {:.0} ms after {from} \
             lost the leader lock; on_role_change: systemctl stop on {from} {:.0} ms after \
             the lock was lost, start on {to} {:.0} ms after {to} led",
            i + 1,
            r.fence_ms,
            r.stop_call_ms,
            r.start_call_ms
        );
        results.push(r);
    }
    let mut fence: Vec<f64> = results.iter().map(|r| r.fence_ms).collect();
    let mut stops: Vec<f64> = results.iter().map(|r| r.stop_call_ms).collect();
    let mut starts: Vec<f64> = results.iter().map(|r| r.start_call_ms).collect();
    let ((fm, fw), (sm, sw), (tm, tw)) = (
        median_worst(&mut fence),
        median_worst(&mut stops),
        median_worst(&mut starts),
    );
    eprintln!(
        "patroni fence over {rounds} switchovers: lock lost → lightningd stopped median \
         {fm:.0} ms, worst {fw:.0} ms; on_role_change stop median {sm:.0} ms, worst {sw:.0} ms; \
         on_role_change start median {tm:.0} ms, worst {tw:.0} ms"
    );
}

/// Runs contrib/patroni/pre_promote on `node` as Patroni would; (exit code, output).
fn pre_promote(c: &PatroniCluster, node: &str, old_lightningd: &str) -> (i32, String) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/patroni/pre_promote");
    let out = std::process::Command::new(script)
        .env("REPLGUARD", env!("CARGO_BIN_EXE_cln-replguard"))
        .env(
            "REPLGUARD_STANDBY_DSN",
            c.node(node).conninfo("postgres", "lightningd"),
        )
        .env("OLD_LIGHTNINGD", old_lightningd)
        .env("WAIT_OLD", "1")
        .output()
        .expect("run pre_promote");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Quorum mode (`synchronous_mode: quorum`, Patroni 4's `ANY k (…)`): the evidence cannot
/// vouch for any one standby, so pre_promote vetoes every promotion. `check` must say so
/// (degraded: no automatic failover), not SAFE, which it said before (review finding).
#[test]
fn under_quorum_mode_check_says_pre_promote_will_veto_every_failover() {
    let c = PatroniCluster::start(&PatroniSpec::strict(3));
    c.patronictl(&["edit-config", "--force", "-s", "synchronous_mode=quorum"])
        .unwrap();
    let n1 = c.node("n1");
    c.wait("Patroni to write ANY", Duration::from_secs(30), || {
        Ok(c.psql(n1, "SHOW synchronous_standby_names")?
            .starts_with("ANY"))
    });
    let names = c.psql(n1, "SHOW synchronous_standby_names").unwrap();
    let (code, out) = check(&c, "n1", Some("n1"), &["--record-evidence"]);
    // Degraded, not SAFE: the check must not call a cluster fine whose failover our own
    // pre_promote will refuse.
    assert_eq!(code, 1, "{names}: {out}");
    assert!(out.contains("patroni-quorum-mode"), "{names}: {out}");
    let written = c.psql(n1, "SELECT pg_current_wal_flush_lsn()").unwrap();
    c.wait("n2 to replay the evidence", Duration::from_secs(10), || {
        Ok(c.psql(
            c.node("n2"),
            &format!("SELECT pg_last_wal_replay_lsn() >= '{written}'"),
        )? == "t")
    });
    let (code, out) = pre_promote(&c, "n2", "");
    assert_eq!(code, 1, "pre_promote under '{names}': {out}");
    assert!(out.contains("cannot speak for later commits"), "{out}");
}

/// pre_promote's first veto: an OLD_LIGHTNINGD entry it cannot check (a bracketed IPv6
/// literal as lightningd writes it, a name that does not resolve, a comma-separated list, no
/// port) must veto, not read as "the old lightningd is gone". The evidence part is stubbed
/// out (`true`): only the old-lightningd check is under test.
#[test]
fn pre_promote_vetoes_an_old_lightningd_it_cannot_check() {
    let v6 = std::net::TcpListener::bind("[::1]:0").expect("IPv6 loopback");
    let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (p6, p4) = (
        v6.local_addr().unwrap().port(),
        v4.local_addr().unwrap().port(),
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/patroni/pre_promote");
    for entry in [
        format!("[::1]:{p6}"),
        format!("no-such-host.invalid:{p4}"),
        format!("127.0.0.1:{p4},127.0.0.1:{p4}"),
        "localhost".to_string(),
    ] {
        let out = std::process::Command::new(script)
            .env("REPLGUARD", "true")
            .env("OLD_LIGHTNINGD", &entry)
            .env("WAIT_OLD", "1")
            .output()
            .expect("run pre_promote");
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{entry}: approved ({said})");
        assert!(said.contains("veto"), "{entry}: {said}");
    }
}

/// With replguard-patroni-url the plugin's startup check judges Patroni too: strict mode off
/// refuses the start in enforce mode, naming the finding.
#[test]
fn the_plugin_refuses_to_start_on_patroni_with_strict_off() {
    use fake_lightningd::{Fake, InitOutcome, Setup};
    let c = PatroniCluster::start(&PatroniSpec {
        synchronous_mode_strict: false,
        ..PatroniSpec::strict(2)
    });
    let _session = WalletSession::open(&c, "n1");
    let setup = Setup::new(&c.node("n1").wallet_dsn())
        .option(
            "replguard-patroni-url",
            serde_json::json!(c.node("n1").api_url()),
        )
        .option("replguard-startup-wait", serde_json::json!("1"));
    let mut f = Fake::start(setup);
    f.getmanifest();
    let o = f.init(Duration::from_secs(30));
    f.drain();
    assert!(
        !matches!(&o, InitOutcome::Answered(r) if r["result"].is_object()) || f.stopped(),
        "started: {o:?}"
    );
    assert!(
        f.logs.iter().any(|(_, m)| m.contains("patroni-strict-off")),
        "{:?}",
        f.logs
    );
}
