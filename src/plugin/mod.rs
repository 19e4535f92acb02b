//! Plugin mode: lightningd starts the binary with `LIGHTNINGD_PLUGIN=1`.
//!
//! - `getmanifest`: the `replguard-*` options (all taken as strings and validated by
//!   `options::settings`, so a bad value is our error naming the option, not a panic), the
//!   two RPC methods, the notification topic the runtime guard will use.
//! - `init`: the startup check (`startup`): go → answer `init`; no go in `enforce` → the
//!   findings reach lightningd's log, then the node is stopped before "Server started".
//! - `replication-status`, `failover-check` (`methods`).

mod alert;
mod hooks;
pub mod input;
mod lightningd;
mod methods;
mod metrics_http;
mod monitor;
pub mod params;
mod patroni_fence;
mod preinit;
mod startup;
mod supervisor;

use anyhow::Result;
use cln_plugin::options::{
    ConfigOption, DefaultBooleanConfigOption, DefaultIntegerConfigOption,
    DefaultStringConfigOption, StringArrayConfigOption, StringConfigOption,
};
use cln_plugin::{Builder, HookBuilder, HookFilter, RpcMethodBuilder};

use crate::options;

pub use crate::lightningd_rpc::{MIN_LIGHTNINGD, parse_version};
pub use methods::{ERR_FAILOVER_NOT_READY, ERR_FAILOVER_UNKNOWN};
pub use startup::State;

/// Custom notification sent when the verdict changes (runtime guard).
pub const NOTIFY_STATE_CHANGED: &str = "replguard_state_changed";

pub fn run() -> i32 {
    crate::runtime::run_to_exit_code(serve(), 1)
}

async fn serve() -> Result<i32> {
    // lightningd's messages pass through `input` first: one cln-plugin cannot parse would end
    // the plugin, and with it an important plugin's lightningd.
    let (stdin, _pump) = input::pump(tokio::io::stdin());
    let mut builder = Builder::new(stdin, tokio::io::stdout())
        .notification(cln_plugin::messages::NotificationTopic::new(
            NOTIFY_STATE_CHANGED,
        ))
        .rpcmethod_from_builder(
            RpcMethodBuilder::new("replication-status", methods::replication_status)
                .description(
                    "The wallet's replication: verdict (safe/degraded/unsafe/unknown), findings \
                     with remedies, standbys, settings",
                )
                .usage(
                    "(no parameters): the verdict, findings with remedies, standbys; error \
                     2302 when there is nothing to check",
                ),
        )
        .rpcmethod_from_builder(
            RpcMethodBuilder::new("failover-check", methods::failover_check)
                .description(
                    "Go/no-go: fails unless a failover to a standby right now loses no \
                     acknowledged commit",
                )
                .usage(
                    "[wait_ms] (milliseconds to wait for a standby to catch up, default 2000); \
                     errors 2300 not ready, 2301 cannot tell, 2302 nothing to check",
                ),
        );
    for d in options::ALL {
        builder = declare(builder, d);
    }
    builder = builder.setconfig_callback(methods::setconfig);
    builder = builder
        .hook_from_builder(HookBuilder::new("openchannel", hooks::openchannel))
        .hook_from_builder(HookBuilder::new("openchannel2", hooks::openchannel));
    // Only a configuration that gates payments puts us on every incoming HTLC's path.
    let (payment_hooks, payment_hooks_why) = if lightningd::parent_lightningd().is_some() {
        preinit::payment_hooks()
    } else {
        (
            true,
            "not started by lightningd: the payment hooks are registered".into(),
        )
    };
    if payment_hooks {
        builder =
            builder.hook_from_builder(HookBuilder::new("htlc_accepted", hooks::htlc_accepted));
    }
    // Without filters (lightningd before 25.12) an rpc_command hook would see every call,
    // our own listconfigs during init included, which nobody answers yet: a deadlock.
    let version = std::env::var("LIGHTNINGD_VERSION").unwrap_or_default();
    if crate::lightningd_rpc::hook_filters_supported(&version).is_ok() {
        let filters = crate::guard::hooked_commands(payment_hooks)
            .into_iter()
            .map(|c| HookFilter::Str(c.to_string()))
            .collect();
        builder = builder.hook_from_builder(
            HookBuilder::new("rpc_command", hooks::rpc_command).filters(filters),
        );
    }
    let init_seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if lightningd::parent_lightningd().is_some() {
        tokio::spawn(preinit::watch(init_seen.clone()));
    }
    let configured = builder.configure().await;
    init_seen.store(true, std::sync::atomic::Ordering::SeqCst);
    let Some(configured) = configured? else {
        // lightningd --help: no init comes.
        return Ok(0);
    };
    // The logger exists from configure() on: the manifest's reason is said now.
    log::info!("{payment_hooks_why}");
    let state = startup::check(&configured, payment_hooks).await;
    let plugin = configured.start(state).await?;
    // The supervisor keeps the monitor's handle and fails closed when it ends.
    tokio::spawn(supervisor::supervised(plugin.clone()));
    // The Patroni fence is kept too: its end, other than by stopping lightningd, is logged.
    let fence = tokio::spawn(patroni_fence::run(plugin.clone()));
    tokio::spawn(async move {
        if let Err(e) = fence.await {
            log::error!(
                "the Patroni fence ended ({e}): lightningd no longer follows Patroni's leader;                  restart the plugin"
            );
        }
    });
    plugin.join().await?;
    Ok(0)
}

type PluginBuilder = Builder<State, tokio::io::DuplexStream, tokio::io::Stdout>;

/// One option in the manifest, typed and with its default (shown by `listconfigs` and
/// `lightningd --help`); the value is validated by `options::settings` all the same.
fn declare(builder: PluginBuilder, d: &options::Declared) -> PluginBuilder {
    use options::Kind;
    let (name, description) = (d.name, d.description);
    match d.kind {
        Kind::Str(Some(default)) => {
            let o: DefaultStringConfigOption =
                ConfigOption::new_str_with_default(name, default, description);
            builder.option(if d.dynamic { o.dynamic() } else { o })
        }
        Kind::Str(None) => {
            let o: StringConfigOption = ConfigOption::new_str_no_default(name, description);
            builder.option(if d.dynamic { o.dynamic() } else { o })
        }
        Kind::StrArray => {
            let o: StringArrayConfigOption =
                ConfigOption::new_str_arr_no_default(name, description);
            builder.option(o)
        }
        Kind::Int(default) => {
            let o: DefaultIntegerConfigOption =
                ConfigOption::new_i64_with_default(name, default, description);
            builder.option(if d.dynamic { o.dynamic() } else { o })
        }
        Kind::Bool(default) => {
            let o: DefaultBooleanConfigOption =
                ConfigOption::new_bool_with_default(name, default, description);
            builder.option(if d.dynamic { o.dynamic() } else { o })
        }
    }
}

/// The plugin's own JSON-RPC error codes (README "Error codes"), clear of lightningd's.
pub const ERROR_CODES: std::ops::RangeInclusive<i64> = 2300..=2310;

#[cfg(test)]
mod tests {
    #[test]
    fn every_error_code_is_in_the_plugins_range_and_documented() {
        let readme = include_str!("../../README.md");
        assert!(readme.contains("**2300–2310**"));
        for code in [
            super::methods::ERR_FAILOVER_NOT_READY,
            super::methods::ERR_FAILOVER_UNKNOWN,
            super::methods::ERR_NOTHING_TO_CHECK,
            crate::guard::ERR_GATED,
        ] {
            assert!(super::ERROR_CODES.contains(&code), "{code}");
            assert!(readme.contains(&format!("{code} ")), "{code} not in README");
        }
    }
}
