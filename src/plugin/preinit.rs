//! Before `init`: the plugin runs from `getmanifest` on, while lightningd opens its wallet.
//! If the synchronous standby is gone, lightningd blocks on its first commit and `init`
//! never comes (DESIGN §2). After `replguard-startup-wait` without `init`, we find the wallet
//! DSN the way the pre-flight does (lightningd's command line and config files) and say what
//! we see — on stderr (lightningd's log/journal) and in the status file — until `init`
//! comes.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config;
use crate::facts::Observation;
use crate::lnconfig::{LightningConfig, Location};
use crate::probe::{self, Targets};
use crate::{dsn, report, statusfile, verdict};

/// One `key[=value]` of lightningd's configuration.
type OptionPair = (String, Option<String>);

/// lightningd's configuration as its plugins cannot yet ask for it: its config files, then
/// its command line (lightningd applies them in that order), from our parent's /proc entry.
fn lightningd_configuration() -> Result<(LightningConfig, Vec<OptionPair>), String> {
    let args = parent_args();
    let config = config::lightningd_config(&location(&args)).map_err(|e| e.to_string())?;
    let pairs = config
        .lines
        .iter()
        .map(|l| (l.key.clone(), l.value.clone()))
        .chain(cmdline_options(&args))
        .collect();
    Ok((config, pairs))
}

/// Whether the payment hooks (`htlc_accepted`, the payment commands' `rpc_command` filters)
/// go in the manifest, and the log line that says why. Only a configuration that gates
/// payments needs them: every incoming HTLC would otherwise wait on the plugin for nothing.
/// A configuration we cannot read (or options that do not validate) registers them, so a
/// `replguard-gate-payments=true` is never silently without its hooks.
pub fn payment_hooks() -> (bool, String) {
    let validated = lightningd_configuration().and_then(|(_, pairs)| {
        crate::options::settings(pairs.iter().map(|(k, v)| crate::options::Given {
            name: k,
            value: v.as_deref(),
            origin: "lightningd's configuration",
        }))
        .map_err(|e| e.to_string())
    });
    match validated {
        Ok(s) if s.gate.payment_hooks_needed() => (
            true,
            "payments are gated: htlc_accepted and the payment commands' hook are registered"
                .into(),
        ),
        Ok(_) => (
            false,
            "payments are not gated (replguard-gate-payments=false): no htlc_accepted hook, \
             incoming HTLCs do not wait on the plugin"
                .into(),
        ),
        Err(why) => (
            true,
            format!(
                "cannot read lightningd's configuration before init ({why}): htlc_accepted and \
                 the payment commands' hook are registered in case replguard-gate-payments=true"
            ),
        ),
    }
}

pub async fn watch(init_seen: Arc<AtomicBool>) {
    let Ok((config, pairs)) = lightningd_configuration() else {
        return;
    };
    let settings = config::settings_or_defaults(&pairs);
    let wallet = pairs
        .iter()
        .rev()
        .find(|(k, _)| k == "wallet")
        .and_then(|(_, v)| v.clone())
        .unwrap_or(config.wallet.clone());

    tokio::time::sleep(settings.startup_wait).await;
    if init_seen.load(Ordering::SeqCst) {
        return;
    }
    let Ok(wallet) = dsn::WalletDsn::parse(&wallet) else {
        return;
    };
    let targets = Targets::new(wallet, vec![]);
    // Where the plugin writes it after init too: relative to lightningd's network directory.
    let status_file = statusfile::location(
        &settings.status_file,
        &config.lightning_dir.join(&config.network),
    );
    let mut told = false;
    while !init_seen.load(Ordering::SeqCst) {
        let obs = probe::observe(&targets, &settings.policy).await;
        let v = crate::patroni::verdict_of(
            &obs,
            &settings.policy,
            settings.patroni_url.as_ref(),
            false,
        )
        .await;
        let message = blocked_message(&obs, &v, settings.startup_wait);
        // The file first: whoever reads our stderr report finds the file already there.
        if let Some(path) = &status_file {
            let mut rep = report::StatusDocument::of(&obs, &v, &settings.policy);
            rep.plugin.phase = Some(report::Phase::BeforeInit);
            rep.plugin.before_init = Some(report::BeforeInit {
                waited_s: settings.startup_wait.as_secs(),
                message: message.clone(),
            });
            rep.plugin.reported = Some(v.level);
            rep.plugin.interval_ms = Some(settings.interval.as_millis() as u64);
            let _ = statusfile::write(path, &rep);
        }
        let waiting = obs.primary().is_some_and(|p| p.syncrep_waiters.count > 0);
        if !told && (waiting || v.level != verdict::Level::Safe) {
            eprintln!("cln-replguard: {message}");
            for f in &v.findings {
                eprintln!("cln-replguard: {f}");
            }
            told = true;
        }
        tokio::time::sleep(settings.interval).await;
    }
}

/// What the plugin says when `init` has not come after the startup wait.
fn blocked_message(obs: &Observation, v: &verdict::Verdict, waited: std::time::Duration) -> String {
    let waiting = obs.primary().map_or(0, |p| p.syncrep_waiters.count);
    format!(
        "lightningd has not initialised its plugins {} s after starting; its wallet's storage \
         is {}{}",
        waited.as_secs(),
        v.level,
        if waiting > 0 {
            format!(
                ", and {waiting} commit(s) wait for the synchronous standby: lightningd is \
                 blocked on its wallet"
            )
        } else {
            String::new()
        }
    )
}

/// lightningd's command line, from /proc.
fn parent_args() -> Vec<String> {
    // SAFETY: getppid has no preconditions.
    let ppid = unsafe { libc::getppid() };
    std::fs::read(format!("/proc/{ppid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `--key=value` and `--key value` arguments, as (key, value) pairs.
fn cmdline_options(args: &[String]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut it = args.iter().skip(1).peekable();
    while let Some(a) = it.next() {
        let Some(opt) = a.strip_prefix("--") else {
            continue;
        };
        match opt.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
            None => {
                let value = it.next_if(|n| !n.starts_with('-')).cloned();
                out.push((opt.to_string(), value));
            }
        }
    }
    out
}

fn location(args: &[String]) -> Location {
    let opts = cmdline_options(args);
    let get = |k: &str| {
        opts.iter()
            .rev()
            .find(|(key, _)| key == k)
            .and_then(|(_, v)| v.clone())
    };
    let network = get("network").or_else(|| {
        ["mainnet", "testnet", "testnet4", "signet", "regtest"]
            .iter()
            .rev()
            .find(|n| opts.iter().any(|(k, _)| k == *n))
            .map(|n| {
                if *n == "mainnet" {
                    "bitcoin".to_string()
                } else {
                    n.to_string()
                }
            })
    });
    Location {
        lightning_dir: get("lightning-dir").map(PathBuf::from),
        network,
        conf: get("conf").map(PathBuf::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn reads_lightningds_command_line() {
        let a = args(&[
            "lightningd",
            "--lightning-dir=/ln",
            "--regtest",
            "--wallet",
            "postgres://x",
            "--log-level=debug",
        ]);
        let l = location(&a);
        assert_eq!(l.lightning_dir, Some(PathBuf::from("/ln")));
        assert_eq!(l.network.as_deref(), Some("regtest"));
        let o = cmdline_options(&a);
        assert!(o.contains(&("wallet".into(), Some("postgres://x".into()))));
        let l = location(&args(&[
            "lightningd",
            "--mainnet",
            "--conf",
            "/etc/ln.conf",
        ]));
        assert_eq!(l.network.as_deref(), Some("bitcoin"));
        assert_eq!(l.conf, Some(PathBuf::from("/etc/ln.conf")));
    }
}
