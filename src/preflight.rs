//! The pre-flight: `cln-replguard check --lightning-dir DIR [--wait SECONDS]`, run before
//! lightningd starts (systemd `ExecStartPre`). It is the only check that can see a standby
//! that is already gone: lightningd then blocks on its first commit before any plugin runs
//! (DESIGN §2). It decides by the same table as the plugin's startup check (`action`).

use std::time::{Duration, Instant};

use crate::action;
use crate::config::{Preflight, Resolved};
use crate::evidence::Record;
use crate::facts::Observation;
use crate::probe;
use crate::report;
use crate::verdict::Verdict;

/// Pause between two attempts while waiting for a go.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// One check as `status`, `check` and the pre-flight make it: the storage, then the HA
/// manager (`crate::patroni`) judged with it.
pub async fn observe_and_judge(r: &Resolved, require_leader: bool) -> (Observation, Verdict) {
    let obs = probe::observe(&r.targets, &r.policy).await;
    let v =
        crate::patroni::verdict_of(&obs, &r.policy, r.patroni_url.as_ref(), require_leader).await;
    (obs, v)
}

/// Returns the exit status: 0 go; otherwise the verdict's (2 unsafe, 3 unknown). With
/// `require_leader`, not being Patroni's leader fails it in every mode.
pub async fn run(r: &Resolved, p: &Preflight, wait: Option<Duration>, require_leader: bool) -> i32 {
    let policy = &r.policy;
    let started = Instant::now();
    let deadline = wait.map(|w| started + w);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (obs, v) = observe_and_judge(r, require_leader).await;
        let mut d = action::decide(v.level, p.mode);
        if require_leader && crate::patroni::leadership_failed(&v) {
            d.go = false;
            d.report_findings = true;
        }
        let out_of_time = deadline.is_none_or(|d| Instant::now() >= d);
        if d.go || out_of_time {
            if r.evidence {
                record_evidence(r, &obs, &v).await;
            }
            println!("{}", report::check_line(&obs, &v, policy));
            if d.report_findings {
                print_findings(&v);
            }
            eprintln!(
                "cln-replguard: pre-flight {} for {} (wallet from {}, replguard-mode={}){}",
                if d.go { "passed" } else { "FAILED" },
                p.config.lightning_dir.join(&p.config.network).display(),
                p.config.wallet_origin,
                p.mode,
                if wait.is_some() {
                    format!(
                        " after {attempts} check(s) in {:.1} s",
                        started.elapsed().as_secs_f64()
                    )
                } else {
                    String::new()
                }
            );
            if !d.go {
                eprintln!(
                    "cln-replguard: lightningd must not start: its storage is {} (set \
                     replguard-mode=warn to start anyway)",
                    v.level
                );
                return v.level.exit_code();
            }
            return 0;
        }
        let left = deadline.map_or(RETRY_EVERY, |d| d.saturating_duration_since(Instant::now()));
        tokio::time::sleep(left.min(RETRY_EVERY)).await;
    }
}

/// Records a change of verdict (`check`, pre-flight or not); a failure is a warning on
/// stderr, never the exit status.
pub(crate) async fn record_evidence(r: &Resolved, obs: &Observation, v: &Verdict) {
    let record = Record::of(obs, v);
    if let Err(e) = probe::record_evidence(&r.targets, record, "check", &r.policy).await {
        eprintln!("cln-replguard: warning: {e} (--no-evidence to skip)");
    }
}

fn print_findings(v: &Verdict) {
    for f in &v.findings {
        eprintln!("cln-replguard: {}", f.headline());
        eprintln!("cln-replguard:     fix: {}", f.remedy);
    }
}
