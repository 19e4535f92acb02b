//! The password file, read by libpq's rules: `host:port:database:user:password` lines, `*`
//! matching anything, `\:` and `\\` escapes, and a file readable by group or others ignored
//! with a warning.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// libpq's socket directory on Debian: a connection there is looked up as `localhost`.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// What the file said for this connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(String),
    NotFound,
    /// The file exists but libpq would not use it; the text says why.
    Ignored(String),
}

/// Looks up the password for (host, port, database, user). `host` is the host name or the
/// socket directory as given in the DSN.
pub fn lookup(path: &Path, host: &str, port: &str, database: &str, user: &str) -> Lookup {
    let Ok(meta) = fs::metadata(path) else {
        return Lookup::NotFound;
    };
    if !meta.is_file() {
        return Lookup::Ignored(format!(
            "password file {} is not a plain file",
            path.display()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return Lookup::Ignored(format!(
            "password file {} has group or world access; permissions should be u=rw (0600) or \
             less",
            path.display()
        ));
    }
    let Ok(text) = fs::read_to_string(path) else {
        return Lookup::Ignored(format!("password file {} is not readable", path.display()));
    };
    let host = if host.is_empty() || host == DEFAULT_SOCKET_DIR {
        "localhost"
    } else {
        host
    };
    let wanted = [host, port, database, user];
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_fields(line);
        if fields.len() < 5 {
            continue;
        }
        let matches = fields[..4]
            .iter()
            .zip(wanted)
            .all(|(field, value)| field == "*" || field == value);
        if matches {
            return Lookup::Found(fields[4..].join(":"));
        }
    }
    Lookup::NotFound
}

/// Splits on unescaped `:`; `\x` stands for `x`.
fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(text: &str, mode: u32) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        fs::write(f.path(), text).unwrap();
        fs::set_permissions(f.path(), fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    #[test]
    fn matches_fields_wildcards_and_escapes_in_order() {
        let f = file(
            "# comment\n\
             db1:5432:wallet:ln:first\n\
             db1:*:*:ln:second\n\
             /run/pg:5433:*:ln:sock\\:et\n\
             localhost:5432:*:*:local:with:colons\n\
             *:*:*:*:fallback\n",
            0o600,
        );
        let p = f.path();
        assert_eq!(
            lookup(p, "db1", "5432", "wallet", "ln"),
            Lookup::Found("first".into())
        );
        assert_eq!(
            lookup(p, "db1", "6000", "other", "ln"),
            Lookup::Found("second".into())
        );
        assert_eq!(
            lookup(p, "/run/pg", "5433", "x", "ln"),
            Lookup::Found("sock:et".into())
        );
        assert_eq!(
            lookup(p, DEFAULT_SOCKET_DIR, "5432", "x", "y"),
            Lookup::Found("local:with:colons".into())
        );
        assert_eq!(
            lookup(p, "elsewhere", "1", "d", "u"),
            Lookup::Found("fallback".into())
        );
    }

    #[test]
    fn no_line_no_password() {
        let f = file("db1:5432:wallet:ln:pw\n", 0o600);
        assert_eq!(
            lookup(f.path(), "db2", "5432", "wallet", "ln"),
            Lookup::NotFound
        );
        assert_eq!(
            lookup(Path::new("/nonexistent/pgpass"), "h", "1", "d", "u"),
            Lookup::NotFound
        );
    }

    #[test]
    fn a_file_others_can_read_is_ignored_with_the_reason() {
        let f = file("*:*:*:*:pw\n", 0o644);
        match lookup(f.path(), "h", "5432", "d", "u") {
            Lookup::Ignored(why) => assert!(why.contains("0600"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
