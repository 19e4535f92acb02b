//! lightningd's configuration, read the way lightningd reads it (`common/configdir.c`), to
//! find the wallet DSN and our own `replguard-*` options before lightningd runs:
//!
//! - `--conf FILE` (relative to the current directory) is the only file read, and must exist;
//!   it may set `lightning-dir` and `network`.
//! - Otherwise `<lightning-dir>/config` (optional; may set `network`), then
//!   `<lightning-dir>/<network>/config` (optional).
//! - `include PATH` is relative to the including file's directory and must exist.
//! - Command line values come last; the last `wallet=` wins; none means lightningd's sqlite3
//!   default in the network directory.
//! - Files are bytes to lightningd: only the lines read here (`wallet`, `network`,
//!   `lightning-dir`, `conf`, `replguard-*`) must be UTF-8.

use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

/// Where lightningd would look, as given on its command line.
#[derive(Clone, Debug, Default)]
pub struct Location {
    pub lightning_dir: Option<PathBuf>,
    pub network: Option<String>,
    pub conf: Option<PathBuf>,
}

/// One `key[=value]` line and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigLine {
    pub key: String,
    pub value: Option<String>,
    pub origin: String,
}

#[derive(Clone, Debug)]
pub struct LightningConfig {
    pub lightning_dir: PathBuf,
    pub network: String,
    /// The wallet DSN lightningd will use (its sqlite3 default when none is set).
    pub wallet: String,
    /// `file:line` of the `wallet=` line, or "lightningd's default".
    pub wallet_origin: String,
    /// Every line, in the order lightningd applies them.
    pub lines: Vec<ConfigLine>,
}

impl LightningConfig {
    /// The values of `key`, in order (the last one wins for single-valued options).
    pub fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a ConfigLine> + 'a {
        self.lines.iter().filter(move |l| l.key == key)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

const NETWORK_ALIASES: &[(&str, &str)] = &[
    ("mainnet", "bitcoin"),
    ("testnet", "testnet"),
    ("testnet4", "testnet4"),
    ("signet", "signet"),
    ("regtest", "regtest"),
];

const MAX_INCLUDE_DEPTH: usize = 100;

/// Reads the configuration. `home` is `$HOME` (the default lightning-dir is under it).
pub fn load(loc: &Location, home: Option<&Path>) -> Result<LightningConfig, ConfigError> {
    let cwd =
        std::env::current_dir().map_err(|e| ConfigError(format!("current directory: {e}")))?;
    let mut lightning_dir = match &loc.lightning_dir {
        Some(d) => cwd.join(d),
        None => home.map_or_else(|| cwd.clone(), |h| h.join(".lightning")),
    };
    let mut lines = Vec::new();
    let network;
    if let Some(conf) = &loc.conf {
        read_file(&cwd.join(conf), true, 0, &mut lines)?;
        if loc.lightning_dir.is_none()
            && let Some(d) = last_value(&lines, "lightning-dir")
        {
            lightning_dir = cwd.join(d);
        }
        network = loc
            .network
            .clone()
            .or_else(|| network_of(&lines))
            .unwrap_or_else(|| "bitcoin".into());
    } else {
        read_file(&lightning_dir.join("config"), false, 0, &mut lines)?;
        for forbidden in ["lightning-dir", "conf"] {
            if let Some(l) = lines.iter().find(|l| l.key == forbidden) {
                return Err(ConfigError(format!(
                    "{}: {forbidden} is not permitted in implicit configuration files",
                    l.origin
                )));
            }
        }
        network = loc
            .network
            .clone()
            .or_else(|| network_of(&lines))
            .unwrap_or_else(|| "bitcoin".into());
        let base_len = lines.len();
        read_file(
            &lightning_dir.join(&network).join("config"),
            false,
            0,
            &mut lines,
        )?;
        if let Some(l) = lines[base_len..]
            .iter()
            .find(|l| l.key == "network" || NETWORK_ALIASES.iter().any(|(a, _)| *a == l.key))
        {
            return Err(ConfigError(format!(
                "{}: network is not permitted in network-specific configuration files",
                l.origin
            )));
        }
    }
    let (wallet, wallet_origin) = match lines.iter().rev().find(|l| l.key == "wallet") {
        Some(ConfigLine {
            value: Some(v),
            origin,
            ..
        }) => (v.clone(), origin.clone()),
        Some(l) => return Err(ConfigError(format!("{}: wallet needs a value", l.origin))),
        None => (
            format!(
                "sqlite3://{}",
                lightning_dir
                    .join(&network)
                    .join("lightningd.sqlite3")
                    .display()
            ),
            "lightningd's default".to_string(),
        ),
    };
    Ok(LightningConfig {
        lightning_dir,
        network,
        wallet,
        wallet_origin,
        lines,
    })
}

fn last_value<'a>(lines: &'a [ConfigLine], key: &str) -> Option<&'a str> {
    lines
        .iter()
        .rev()
        .find(|l| l.key == key)
        .and_then(|l| l.value.as_deref())
}

fn network_of(lines: &[ConfigLine]) -> Option<String> {
    lines.iter().rev().find_map(|l| {
        if l.key == "network" {
            l.value.clone()
        } else {
            NETWORK_ALIASES
                .iter()
                .find(|(alias, _)| *alias == l.key)
                .map(|(_, net)| net.to_string())
        }
    })
}

/// Keys whose values cln-replguard uses: these lines must be text. lightningd itself reads
/// its files as bytes, so any other line (a Latin-1 `alias=Café`) is kept as lossy text and
/// is no reason to stop.
fn needed(key: &[u8]) -> bool {
    const KEYS: &[&str] = &["wallet", "network", "lightning-dir", "conf"];
    KEYS.iter().any(|k| key == k.as_bytes())
        || NETWORK_ALIASES.iter().any(|(a, _)| key == a.as_bytes())
        || key.starts_with(b"replguard-")
}

fn read_file(
    path: &Path,
    must_exist: bool,
    depth: usize,
    out: &mut Vec<ConfigLine>,
) -> Result<(), ConfigError> {
    let bytes = match fs::read(path) {
        Ok(t) => t,
        Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ConfigError(format!(
                "opening and reading {}: {e}",
                path.display()
            )));
        }
    };
    for (i, line) in bytes.split(|b| *b == b'\r' || *b == b'\n').enumerate() {
        if line.is_empty() || line.starts_with(b"#") {
            continue;
        }
        let origin = format!("{}:{}", path.display(), i + 1);
        if let Some(included) = line.strip_prefix(b"include ") {
            // A path is bytes on Unix, as lightningd passes it to open(2).
            let included = Path::new(std::ffi::OsStr::from_bytes(included));
            if depth >= MAX_INCLUDE_DEPTH {
                return Err(ConfigError(format!(
                    "{origin}: include loop with {}",
                    included.display()
                )));
            }
            let dir = path.parent().unwrap_or(Path::new("/"));
            read_file(&dir.join(included), true, depth + 1, out)?;
            continue;
        }
        out.push(config_line(line, origin)?);
    }
    Ok(())
}

/// One `key[=value]` line: text when cln-replguard needs it, lossy text otherwise.
fn config_line(line: &[u8], origin: String) -> Result<ConfigLine, ConfigError> {
    let key = line.split(|b| *b == b'=').next().unwrap_or_default();
    let line = if needed(key) {
        std::str::from_utf8(line)
            .map_err(|e| {
                ConfigError(format!(
                    "{origin}: {}: not valid UTF-8 at byte {} of the line; cln-replguard reads \
                     this line and needs it as text",
                    String::from_utf8_lossy(key),
                    e.valid_up_to() + 1
                ))
            })?
            .to_string()
    } else {
        String::from_utf8_lossy(line).into_owned()
    };
    let (key, value) = match line.split_once('=') {
        Some((k, v)) => (k.to_string(), Some(v.to_string())),
        None => (line, None),
    };
    Ok(ConfigLine { key, value, origin })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    fn loc(dir: &Path) -> Location {
        Location {
            lightning_dir: Some(dir.into()),
            ..Location::default()
        }
    }

    #[test]
    fn the_network_config_overrides_the_base_config() {
        let d = tempfile::tempdir().unwrap();
        write(
            &d.path().join("config"),
            "# base\nwallet=postgres://base\nreplguard-mode=warn\n",
        );
        write(&d.path().join("bitcoin/config"), "wallet=postgres://net\n");
        let c = load(&loc(d.path()), None).unwrap();
        assert_eq!(c.network, "bitcoin");
        assert_eq!(c.wallet, "postgres://net");
        assert!(
            c.wallet_origin.ends_with("bitcoin/config:1"),
            "{}",
            c.wallet_origin
        );
        assert_eq!(
            c.values("replguard-mode").last().unwrap().value.as_deref(),
            Some("warn")
        );
    }

    #[test]
    fn the_base_config_or_the_command_line_chooses_the_network() {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("config"), "regtest\n");
        write(
            &d.path().join("regtest/config"),
            "wallet=postgres://regtest\n",
        );
        write(
            &d.path().join("signet/config"),
            "wallet=postgres://signet\n",
        );
        let c = load(&loc(d.path()), None).unwrap();
        assert_eq!(
            (c.network.as_str(), c.wallet.as_str()),
            ("regtest", "postgres://regtest")
        );
        let mut l = loc(d.path());
        l.network = Some("signet".into());
        let c = load(&l, None).unwrap();
        assert_eq!(c.wallet, "postgres://signet");
    }

    #[test]
    fn includes_are_relative_to_the_including_file_and_must_exist() {
        let d = tempfile::tempdir().unwrap();
        write(
            &d.path().join("config"),
            "include secrets/db.conf\nreplguard-standby-dsn=host=a\n",
        );
        write(
            &d.path().join("secrets/db.conf"),
            "wallet=postgres://included\nreplguard-standby-dsn=host=b\n",
        );
        let c = load(&loc(d.path()), None).unwrap();
        assert_eq!(c.wallet, "postgres://included");
        let standbys: Vec<_> = c
            .values("replguard-standby-dsn")
            .map(|l| l.value.clone().unwrap())
            .collect();
        assert_eq!(standbys, ["host=b", "host=a"]);
        write(&d.path().join("config"), "include missing.conf\n");
        let e = load(&loc(d.path()), None).unwrap_err().to_string();
        assert!(e.contains("missing.conf"), "{e}");
        write(&d.path().join("config"), "include config\n");
        assert!(
            load(&loc(d.path()), None)
                .unwrap_err()
                .to_string()
                .contains("include loop")
        );
    }

    #[test]
    fn without_a_wallet_line_lightningd_uses_sqlite() {
        let d = tempfile::tempdir().unwrap();
        let c = load(&loc(d.path()), None).unwrap();
        assert!(c.wallet.starts_with("sqlite3://"), "{}", c.wallet);
        assert!(
            c.wallet.ends_with("bitcoin/lightningd.sqlite3"),
            "{}",
            c.wallet
        );
        assert_eq!(c.wallet_origin, "lightningd's default");
        // The default lightning-dir is ~/.lightning.
        let c = load(&Location::default(), Some(d.path())).unwrap();
        assert!(c.lightning_dir.ends_with(".lightning"));
    }

    #[test]
    fn an_explicit_conf_is_the_only_file_and_must_exist() {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("config"), "wallet=postgres://base\n");
        write(
            &d.path().join("my.conf"),
            "network=testnet\nwallet=postgres://explicit\n",
        );
        let l = Location {
            conf: Some(d.path().join("my.conf")),
            lightning_dir: Some(d.path().into()),
            network: None,
        };
        let c = load(&l, None).unwrap();
        assert_eq!(
            (c.network.as_str(), c.wallet.as_str()),
            ("testnet", "postgres://explicit")
        );
        let l = Location {
            conf: Some(d.path().join("nope.conf")),
            ..Location::default()
        };
        assert!(load(&l, None).is_err());
    }

    #[test]
    fn a_latin1_byte_on_an_unrelated_line_does_not_stop_the_preflight() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("config");
        fs::write(
            &path,
            b"alias=Caf\xe9\nwallet=postgres://host=/run/postgresql dbname=ln\n",
        )
        .unwrap();
        let c = load(&loc(d.path()), None).unwrap();
        assert_eq!(c.wallet, "postgres://host=/run/postgresql dbname=ln");
        assert!(c.wallet_origin.ends_with("config:2"), "{}", c.wallet_origin);
    }

    #[test]
    fn a_non_utf8_byte_in_a_line_we_read_names_the_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("config");
        fs::write(&path, b"alias=ok\nwallet=postgres://user=caf\xe9\n").unwrap();
        let e = load(&loc(d.path()), None).unwrap_err().to_string();
        assert!(e.contains(&format!("{}:2", path.display())), "{e}");
        assert!(e.contains("wallet") && e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn options_lightningd_refuses_in_a_file_are_refused_here_too() {
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("bitcoin/config"), "network=regtest\n");
        assert!(
            load(&loc(d.path()), None)
                .unwrap_err()
                .to_string()
                .contains("network-specific")
        );
        let d = tempfile::tempdir().unwrap();
        write(&d.path().join("config"), "lightning-dir=/elsewhere\n");
        assert!(
            load(&loc(d.path()), None)
                .unwrap_err()
                .to_string()
                .contains("not permitted")
        );
    }
}
