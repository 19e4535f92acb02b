//! Every value `setup` takes from its command line, checked before any step is built: no
//! control characters anywhere (a newline would start a new shell command or configuration
//! line), and the values PostgreSQL parses in a form it accepts, so that a typo cannot leave a
//! server that refuses to start. Messages name the option and the expected form.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Result, bail};

/// Refuses control characters (newline, carriage return, NUL, tab…) in any value.
pub fn no_control_chars(option: &str, value: &str) -> Result<()> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        bail!(
            "{option}: control character {:?} in the value; give it on one line, without \
             control characters",
            c
        );
    }
    Ok(())
}

/// A path given to setup: text without control characters, and absolute when `absolute`.
pub fn path(option: &str, p: &Path, absolute: bool) -> Result<()> {
    let Some(text) = p.to_str() else {
        bail!("{option}: the path is not valid UTF-8");
    };
    no_control_chars(option, text)?;
    if absolute && !p.is_absolute() {
        bail!("{option} {text:?}: give an absolute path");
    }
    Ok(())
}

/// A DNS host name as PostgreSQL resolves it: dot-separated labels of letters, digits and
/// inner hyphens.
/// RFC 1123: letters, digits and inner hyphens, and a last label that is not all digits —
/// `10.0.0`, `127.1` or `167772162` are numeric addresses to PostgreSQL, which then finds the
/// next field of a pg_hba line to be their mask.
fn is_host_name(s: &str) -> bool {
    !looks_like_numeric_ipv4(s)
        && !s.is_empty()
        && s.len() <= 253
        && !s
            .rsplit('.')
            .next()
            .is_some_and(|top| top.bytes().all(|b| b.is_ascii_digit()))
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// What `inet_aton` (and so PostgreSQL's pg_hba reader) takes for an IPv4 address: one to four
/// labels, each a decimal, octal (`0…`) or hexadecimal (`0x…`) number — `0xa000002`,
/// `0x7f.1`, `10.0.0.0x2`.
fn looks_like_numeric_ipv4(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    (1..=4).contains(&labels.len())
        && labels.iter().all(|l| {
            let l = l.to_ascii_lowercase();
            match l.strip_prefix("0x") {
                Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
                None => !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()),
            }
        })
}

/// The pg_hba.conf address field for `--standby-addr`: an IP address (a /32 or /128 mask is
/// added), an address with a CIDR mask, a host name (PostgreSQL looks it up on each
/// connection), a `.domain` suffix, or `samehost`/`samenet`/`all`. A host name with a mask
/// (`db2.example.com/32`) is what made PostgreSQL refuse the whole file.
pub fn hba_address(option: &str, value: &str) -> Result<String> {
    no_control_chars(option, value)?;
    let expected = || {
        anyhow::anyhow!(
            "{option} {value:?}: expected an IP address (10.0.0.2), an address with a CIDR \
             mask (10.0.0.0/24), a host name (db2.example.com), a .domain suffix \
             (.example.com), or samehost / samenet / all"
        )
    };
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }));
    }
    if let Some((addr, mask)) = value.split_once('/') {
        let ip: IpAddr = addr.parse().map_err(|_| expected())?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        return match mask.parse::<u8>() {
            Ok(m) if m <= max && mask.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(format!("{ip}/{m}"))
            }
            _ => Err(expected()),
        };
    }
    let keyword = ["samehost", "samenet", "all"].contains(&value);
    let suffix = value.strip_prefix('.').is_some_and(is_host_name);
    if keyword || suffix || is_host_name(value) {
        return Ok(value.to_string());
    }
    Err(expected())
}

/// listen_addresses: empty (Unix sockets only), `*`, or a comma-separated list of IP
/// addresses and host names.
pub fn listen_addresses(option: &str, value: &str) -> Result<()> {
    no_control_chars(option, value)?;
    let ok = |a: &str| a == "*" || a.parse::<IpAddr>().is_ok() || is_host_name(a);
    if value.trim().is_empty() || value.split(',').map(str::trim).all(ok) {
        return Ok(());
    }
    bail!(
        "{option} {value:?}: expected IP addresses or host names separated by commas \
         (10.0.0.1,localhost), * for all, or \"\" for Unix sockets only"
    )
}

/// A host to connect to: a host name, an IP address, or a Unix socket directory.
pub fn host(option: &str, value: &str) -> Result<()> {
    no_control_chars(option, value)?;
    if value.parse::<IpAddr>().is_ok() || is_host_name(value) || value.starts_with('/') {
        return Ok(());
    }
    bail!("{option} {value:?}: expected a host name, an IP address, or a socket directory (/…)")
}

/// max_slot_wal_keep_size: -1 (unbounded) or a size with an optional memory unit.
pub fn wal_size(option: &str, value: &str) -> Result<()> {
    no_control_chars(option, value)?;
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = value[digits.len()..].to_string();
    let number_ok = !digits.trim().is_empty() && digits.trim().bytes().all(|b| b.is_ascii_digit());
    let unit_ok = ["", "B", "kB", "MB", "GB", "TB"].contains(&unit.as_str());
    if value == "-1" || (number_ok && unit_ok) {
        return Ok(());
    }
    bail!(
        "{option} {value:?}: expected a size such as 10GB or 512MB (units B, kB, MB, GB, TB), or -1"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hba_addresses_come_out_in_a_form_pg_hba_accepts() {
        for (given, line) in [
            ("10.0.0.2", "10.0.0.2/32"),
            ("fe80::2", "fe80::2/128"),
            ("10.0.0.0/24", "10.0.0.0/24"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("db2.example.com", "db2.example.com"),
            ("db2", "db2"),
            (".example.com", ".example.com"),
            ("samenet", "samenet"),
        ] {
            assert_eq!(
                hba_address("--standby-addr", given).unwrap(),
                line,
                "{given}"
            );
        }
        for bad in [
            "db2.example.com/32",
            "10.0.0.2/33",
            "10.0.0.2/-1",
            "",
            "db 2",
            "10.0.0.2\nlocal all all trust",
            "-x.example.com",
            "a'b",
            "10.0.0",
            "127.1",
            "167772162",
            "0xa000002",
            "0x7f.1",
            "10.0.0.0x2",
        ] {
            let e = hba_address("--standby-addr", bad).unwrap_err().to_string();
            assert!(e.starts_with("--standby-addr"), "{e}");
        }
    }

    #[test]
    fn a_newline_or_a_quote_never_gets_through() {
        let e = no_control_chars("--start-command", "pg_ctlcluster 15 main start\nrm -rf /")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--start-command") && e.contains("control character"),
            "{e}"
        );
        assert!(
            listen_addresses("--listen", "10.0.0.1'; ALTER SYSTEM SET fsync = off; --").is_err()
        );
        assert!(listen_addresses("--listen", "10.0.0.1\n").is_err());
        assert!(listen_addresses("--listen", "10.0.0.1, localhost").is_ok());
        assert!(listen_addresses("--listen", "*").is_ok());
        assert!(listen_addresses("--listen", "").is_ok());
        assert!(wal_size("--max-slot-wal-keep-size", "10GB").is_ok());
        assert!(wal_size("--max-slot-wal-keep-size", "-1").is_ok());
        assert!(wal_size("--max-slot-wal-keep-size", "512 MB").is_ok());
        assert!(wal_size("--max-slot-wal-keep-size", "10GB'; DROP DATABASE x; --").is_err());
        assert!(wal_size("--max-slot-wal-keep-size", "10gb").is_err());
        assert!(wal_size("--max-slot-wal-keep-size", "GB").is_err());
        assert!(host("--primary-host", "10.0.0.1 password=x").is_err());
        assert!(host("--primary-host", "/run/postgresql").is_ok());
        assert!(path("--archive-dir", Path::new("/mnt/wal\nrm -rf /"), true).is_err());
        assert!(path("--archive-dir", Path::new("wal"), true).is_err());
        assert!(path("--archive-dir", Path::new("/mnt/it's wal"), true).is_ok());
    }
}
