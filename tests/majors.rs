//! Findings whose cause changed between PostgreSQL majors, checked on whichever major the
//! harness runs (`PG_BINDIR`; `.ci/pg-matrix` runs this file on 13 to 18). Each test reads
//! the server's major and asserts what that major must give: never a test that passes
//! because the major did not have the case.

mod common;

use std::time::Duration;

use cln_replguard::cluster::{Cluster, ClusterSpec, wait_for};
use cln_replguard::verdict::{Code, Level};
use common::{assert_verdict, check, codes, start};

fn major(c: &Cluster) -> u32 {
    let num: u32 = c
        .primary
        .psql("SHOW server_version_num")
        .unwrap()
        .parse()
        .unwrap();
    num / 10000
}

/// 18's initdb turns data checksums on by default, and pg_rewind can work with them alone:
/// a default 18 pair without `wal_log_hints` can be rewound, an older one cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_impossible_follows_the_majors_checksum_default() {
    let mut spec = ClusterSpec::pair();
    spec.primary_conf.push("wal_log_hints = off".into());
    let c = start(&spec);
    let (obs, v) = check(&c.primary.wallet_dsn(), &[]).await;
    let p = obs.primary().unwrap();
    assert!(!p.wal_log_hints);
    if major(&c) >= 18 {
        assert!(p.data_checksums, "18's initdb default");
        assert!(!v.has(Code::RewindImpossible), "{:?}", codes(&v));
        assert_eq!(v.level, Level::Safe, "{:#?}", v.findings);
    } else {
        assert!(!p.data_checksums, "the initdb default before 18");
        // Advice: listed, the verdict unchanged (every acknowledged commit is replicated).
        assert_verdict(&v, Level::Safe, Code::RewindImpossible);
    }
}

/// Fills WAL past `max_slot_wal_keep_size` while the standby is down, then checkpoints:
/// the slot is invalidated.
fn invalidate_slot_by_wal_volume(c: &Cluster) {
    c.primary.psql("CREATE TABLE filler (x int)").unwrap();
    c.standby("s1").stop().unwrap();
    // How each major shows an invalidated slot is what the test is about: wait for either
    // sign (13 to 15 also forget its restart_lsn), then let the verdict speak.
    wait_for(
        "the slot to be invalidated",
        Duration::from_secs(60),
        || {
            for _ in 0..4 {
                // The standby is down: this session's commits must not wait for it.
                c.primary.psql(
                    "SET synchronous_commit = local; INSERT INTO filler SELECT 1; \
                 SELECT pg_switch_wal()",
                )?;
            }
            c.primary.psql("CHECKPOINT")?;
            Ok(c.primary.psql(
                "SELECT wal_status = 'lost' OR restart_lsn IS NULL FROM pg_replication_slots",
            )? == "t")
        },
    )
    .unwrap();
}

/// `wal_status` (13) says a slot lost its WAL: the reason 13 is the oldest major read. On
/// every major the invalidated slot must come out as `slot-lost`, never as nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_that_lost_its_wal_is_slot_lost_on_every_major() {
    let mut spec = ClusterSpec::pair();
    spec.archive = false;
    spec.primary_conf
        .push("max_slot_wal_keep_size = 32MB".into());
    let c = start(&spec);
    invalidate_slot_by_wal_volume(&c);
    let (_, v) = check(&c.primary.wallet_dsn(), &[]).await;
    assert!(
        v.has(Code::SlotLost),
        "major {}: {:?}",
        major(&c),
        codes(&v)
    );
    assert_eq!(v.level, Level::Unsafe, "{:#?}", v.findings);
    let lost = v
        .findings
        .iter()
        .find(|f| f.code == Code::SlotLost)
        .unwrap();
    assert!(lost.message.contains("lost WAL"), "{}", lost.message);
}

/// 18's `idle_replication_slot_timeout` invalidates a slot whose standby stayed away, even
/// with all its WAL still there: that slot can no longer serve its standby, so it is
/// `slot-lost` like one that lost WAL. Before 18 the setting does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_invalidated_for_idleness_is_slot_lost_from_18_on() {
    let c = start(&ClusterSpec::pair());
    let exists = c
        .primary
        .psql("SELECT count(*) FROM pg_settings WHERE name = 'idle_replication_slot_timeout'")
        .unwrap();
    if major(&c) < 18 {
        assert_eq!(exists, "0", "idle_replication_slot_timeout is new in 18");
        return;
    }
    c.primary
        .psql("ALTER SYSTEM SET idle_replication_slot_timeout = '1s'")
        .unwrap();
    c.primary.reload().unwrap();
    c.standby("s1").stop().unwrap();
    wait_for(
        "the idle slot to be invalidated",
        Duration::from_secs(60),
        || {
            // The timeout is checked at checkpoints, which need new WAL to run.
            c.primary.psql("SELECT pg_switch_wal(); CHECKPOINT")?;
            Ok(c.primary
                .psql("SELECT coalesce(invalidation_reason, 'none') FROM pg_replication_slots")?
                == "idle_timeout")
        },
    )
    .unwrap();
    let (_, v) = check(&c.primary.wallet_dsn(), &[]).await;
    let lost = v.findings.iter().find(|f| f.code == Code::SlotLost);
    let lost = lost.unwrap_or_else(|| panic!("{:?}", codes(&v)));
    // Its WAL is all there: the finding must give the real cause, not "lost WAL".
    assert!(
        lost.message.contains("idle_replication_slot_timeout"),
        "{}",
        lost.message
    );
}
