//! cln-replguard on a real Patroni cluster (etcd, Patroni 4.x, PostgreSQL on loopback): the
//! harness is `patroni_support`. Every case starts its own cluster and tears it down.

mod patroni_support;

use std::time::Duration;

use patroni_support::{PatroniCluster, PatroniSpec};

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
