//! Configuration resolution, in one place for the three ways settings come in: the CLI
//! (`--dsn`, or lightningd's configuration for the pre-flight), the plugin at `init`
//! (lightningd's options and its wallet DSN from `listconfigs`), and the plugin before `init`
//! (lightningd's command line and files). Options become `Settings` (`options::settings`
//! validates them); settings and a wallet DSN become `Targets`, what to check.

use std::path::PathBuf;

use anyhow::Context as _;

use crate::action::Mode;
use crate::dsn::{DsnError, PgTarget, WalletDsn};
use crate::lnconfig::{self, ConfigError, LightningConfig, Location};
use crate::options::{self, Settings};
use crate::policy::Policy;
use crate::probe::Targets;

/// What the command line and, in pre-flight mode, lightningd's configuration resolve to.
pub struct Resolved {
    pub targets: Targets,
    pub policy: Policy,
    /// Record changes of verdict (`replguard-evidence`).
    pub evidence: bool,
    /// Set when read from lightningd's configuration: the pre-flight decides by it.
    pub preflight: Option<Preflight>,
    /// The local Patroni's REST API (`--patroni-url`, `replguard-patroni-url`).
    pub patroni_url: Option<crate::patroni::PatroniUrl>,
}

pub struct Preflight {
    pub mode: Mode,
    pub config: LightningConfig,
}

/// lightningd's configuration files, found as lightningd finds them (`~` is `HOME`).
pub fn lightningd_config(loc: &Location) -> Result<LightningConfig, ConfigError> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    lnconfig::load(loc, home.as_deref())
}

/// lightningd's configuration and the plugin's options in it, validated (the pre-flight).
pub fn from_lightningd_config(loc: &Location) -> anyhow::Result<(LightningConfig, Settings)> {
    let config = lightningd_config(loc).context("lightningd's configuration")?;
    let settings = options::settings(config.lines.iter().map(|l| options::Given {
        name: &l.key,
        value: l.value.as_deref(),
        origin: &l.origin,
    }))
    .context("lightningd's configuration")?;
    Ok((config, settings))
}

/// The plugin's options among lightningd's configuration (before `init`). When one of them is
/// invalid (init will refuse it), the defaults — but `replguard-status-file` is still
/// honoured, `off` included, so no file appears where the operator said none should.
pub fn settings_or_defaults(pairs: &[(String, Option<String>)]) -> Settings {
    let given = |only: Option<&str>| {
        options::settings(
            pairs
                .iter()
                .filter(|(k, _)| only.is_none_or(|o| k == o))
                .map(|(k, v)| options::Given {
                    name: k,
                    value: v.as_deref(),
                    origin: "lightningd's configuration",
                }),
        )
    };
    given(None).unwrap_or_else(|_| Settings {
        status_file: given(Some(options::STATUS_FILE))
            .map(|s| s.status_file)
            .unwrap_or(Some(None)),
        ..Settings::default()
    })
}

/// Standby DSNs, in the order given.
pub fn standby_targets<'a>(
    dsns: impl IntoIterator<Item = &'a String>,
) -> Result<Vec<PgTarget>, DsnError> {
    dsns.into_iter().map(|d| PgTarget::parse(d)).collect()
}

/// The plugin's targets at `init`: lightningd's wallet DSN — or `replguard-dsn` when given,
/// with lightningd's own DSN kept to read its session settings — and the standbys.
pub fn plugin_targets(wallet: &str, settings: &Settings) -> Result<Targets, String> {
    let wallet = WalletDsn::parse(wallet).map_err(|e| format!("lightningd's wallet DSN: {e}"))?;
    let mut targets = match (&settings.dsn, &wallet) {
        (Some(monitor), WalletDsn::Postgres(w)) => {
            let monitor =
                WalletDsn::parse(monitor).map_err(|e| format!("{}: {e}", options::DSN))?;
            let mut t = Targets::new(monitor, vec![]);
            t.lightningd_dsn = Some(w.as_ref().clone());
            t
        }
        _ => Targets::new(wallet, vec![]),
    };
    targets.standbys = standby_targets(&settings.standby_dsns)
        .map_err(|e| format!("{}: {e}", options::STANDBY_DSN))?;
    targets.expect_lightningd_session = true;
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, Option<String>)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), Some(v.to_string())))
            .collect()
    }

    #[test]
    fn the_status_file_option_holds_even_beside_an_invalid_option() {
        let off = [("replguard-status-file", "off")];
        assert_eq!(settings_or_defaults(&pairs(&off)).status_file, Some(None));
        let both = [
            ("replguard-status-file", "/srv/s.json"),
            ("replguard-interval", "soon"),
            ("alias", "x"),
        ];
        let s = settings_or_defaults(&pairs(&both));
        assert_eq!(s.status_file, Some(Some("/srv/s.json".into())));
        assert_eq!(s.interval, Settings::default().interval);
        assert_eq!(
            settings_or_defaults(&pairs(&[("alias", "x")])).status_file,
            None
        );
    }
}
