//! libpq connection strings, parsed the way libpq parses them (`fe-connect.c`): the
//! key=value form and the `postgres[ql]://` URI form, both into the same ordered list of
//! (keyword, value) pairs. Pure text handling; what the pairs mean is `dsn.rs`'s job.

use std::fmt;

/// Every keyword libpq knows (PostgreSQL 17). An unknown one is an error, as in libpq.
pub const LIBPQ_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "gssencmode",
    "sslmode",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcertmode",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "require_auth",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
    "requiressl",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConninfoError(pub String);

impl fmt::Display for ConninfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConninfoError {}

fn err(msg: impl Into<String>) -> ConninfoError {
    ConninfoError(msg.into())
}

/// Ordered (keyword, value) pairs; a later pair overrides an earlier one.
pub type Params = Vec<(String, String)>;

/// The value of `key`, the last one given.
pub fn get<'a>(params: &'a Params, key: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub fn is_uri(s: &str) -> bool {
    s.starts_with("postgresql://") || s.starts_with("postgres://")
}

/// Either form, as libpq decides: a URI by its prefix, else key=value.
pub fn parse(s: &str) -> Result<Params, ConninfoError> {
    if is_uri(s) {
        parse_uri(s)
    } else {
        parse_key_value(s)
    }
}

/// `host=/tmp port=5432 user='a b' password=x\'y`.
pub fn parse_key_value(s: &str) -> Result<Params, ConninfoError> {
    key_value_pairs(s, Reading::Given)
}

/// One value of a conninfo as the server prints it (`pg_stat_wal_receiver.conninfo`): values
/// as they are, unquoted and unescaped, and keywords perhaps newer than `LIBPQ_KEYWORDS`.
/// `None` when the key is absent or the text does not parse.
pub fn printed_value(conninfo: &str, key: &str) -> Option<String> {
    key_value_pairs(conninfo, Reading::Printed)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// libpq's `isspace` in the C locale: a non-ASCII space (U+00A0, U+3000) is part of a value,
/// not a separator, there as here.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// A server's setting written in libpq's syntax (`primary_conninfo`), in either form: escapes
/// as libpq reads them, any keyword (the server's libpq may be newer than our list), and the
/// last value of a key wins (`get`), as in libpq.
pub fn parse_setting(s: &str) -> Result<Params, ConninfoError> {
    if is_uri(s) {
        parse_uri(s)
    } else {
        key_value_pairs(s, Reading::Setting)
    }
}

/// Who wrote the key=value text.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Given to us, as to libpq: `\` escapes everywhere, only keywords libpq knows.
    Given,
    /// Printed by the server: a backslash outside quotes is a backslash, any keyword.
    Printed,
    /// Written for the server's libpq: `\` escapes everywhere, any keyword.
    Setting,
}

fn key_value_pairs(s: &str, reading: Reading) -> Result<Params, ConninfoError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| is_space(*c)).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !is_space(*c)) {
            key.push(c);
        }
        while chars.next_if(|c| is_space(*c)).is_some() {}
        if chars.next() != Some('=') {
            return Err(err(format!(
                "missing \"=\" after \"{key}\" in connection info string"
            )));
        }
        while chars.next_if(|c| is_space(*c)).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(err("unterminated quoted string in connection info string"));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !is_space(*c)) {
                if c == '\\' && reading != Reading::Printed {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        if reading == Reading::Given && !LIBPQ_KEYWORDS.contains(&key.as_str()) {
            return Err(err(format!("invalid connection option \"{key}\"")));
        }
        out.push((key, value));
    }
}

/// `postgres[ql]://[user[:password]@][host][:port][,…][/dbname][?key=value&…]`.
pub fn parse_uri(s: &str) -> Result<Params, ConninfoError> {
    let rest = s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
        .ok_or_else(|| err("not a postgres:// URI"))?;
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, dbname) = match before_query.split_once('/') {
        Some((a, d)) => (a, Some(d)),
        None => (before_query, None),
    };
    // libpq ends the user:password part at the first '/' or '?'. An '@' only after that point
    // most likely ends a password holding an unencoded '/' or '?': the port, database name or
    // query would then be pieces of the password, so no error below may quote them.
    let spilled = !authority.contains('@') && rest[authority.len()..].contains('@');
    if spilled && dbname.is_some_and(|d| d.contains('@')) {
        return Err(err(SPILLED_USERINFO));
    }
    let mut out = Vec::new();
    let hosts = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !user.is_empty() {
                out.push(("user".into(), decode(user)?));
            }
            if let Some(p) = password {
                out.push(("password".into(), decode(p)?));
            }
            hosts
        }
        None => authority,
    };
    if !hosts.is_empty() {
        let mut host_list = Vec::new();
        let mut port_list = Vec::new();
        for spec in hosts.split(',') {
            let (host, port) = split_host_port(spec)?;
            if spilled && port.is_some_and(|p| !p.bytes().all(|b| b.is_ascii_digit())) {
                return Err(err(SPILLED_USERINFO));
            }
            host_list.push(decode(host)?);
            port_list.push(port.map(decode).transpose()?.unwrap_or_default());
        }
        if host_list.iter().any(|h| !h.is_empty()) {
            out.push(("host".into(), host_list.join(",")));
        }
        if port_list.iter().any(|p| !p.is_empty()) {
            out.push(("port".into(), port_list.join(",")));
        }
    }
    if let Some(d) = dbname.filter(|d| !d.is_empty()) {
        out.push(("dbname".into(), decode(d)?));
    }
    let query_params = uri_query(query.unwrap_or_default());
    if spilled && query_params.is_err() {
        return Err(err(SPILLED_USERINFO));
    }
    out.extend(query_params?);
    Ok(out)
}

/// What an `@` after a URI's first '/' or '?' most likely means; says nothing of the text.
const SPILLED_USERINFO: &str = "the URI has an \"@\" after its first \"/\" or \"?\": in a \
     user:password part, percent-encode \"/\" as %2F, \"?\" as %3F and \"@\" as %40 (in a \
     database name too)";

/// The `?key=value&…` part of a URI.
fn uri_query(query: &str) -> Result<Params, ConninfoError> {
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            err(format!(
                "missing key/value separator \"=\" in URI query parameter \"{}\"",
                decode_lossy(pair)
            ))
        })?;
        let k = decode(k)?;
        // libpq's URI alias for the SSL setting of old JDBC URLs.
        let (k, v) = if k == "ssl" && v == "true" {
            ("sslmode".to_string(), "require".to_string())
        } else {
            (k, decode(v)?)
        };
        if !LIBPQ_KEYWORDS.contains(&k.as_str()) {
            return Err(err(format!("invalid URI query parameter: \"{k}\"")));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn split_host_port(spec: &str) -> Result<(&str, Option<&str>), ConninfoError> {
    if let Some(rest) = spec.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| err("missing \"]\" in IPv6 host address in URI"))?;
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None if after.is_empty() => Ok((host, None)),
            None => Err(err("unexpected character after IPv6 host address in URI")),
        };
    }
    Ok(match spec.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (spec, None),
    })
}

/// Percent-decoding as libpq does it; `%00` and malformed escapes are errors. The message
/// never repeats the text (it may be a password).
fn decode(s: &str) -> Result<String, ConninfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| err("invalid percent-encoded token in URI"))?;
            if hex == 0 {
                return Err(err("forbidden value %00 in percent-encoded value"));
            }
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| err("percent-encoded value is not UTF-8"))
}

fn decode_lossy(s: &str) -> String {
    decode(s).unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &Params) -> Vec<(&str, &str)> {
        p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn key_value_forms() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("", &[]),
            ("host=/tmp port=5433", &[("host", "/tmp"), ("port", "5433")]),
            (
                "host = /tmp  dbname=ln",
                &[("host", "/tmp"), ("dbname", "ln")],
            ),
            ("password='a b\\'c'", &[("password", "a b'c")]),
            ("password=a\\ b", &[("password", "a b")]),
            (
                "options='-c synchronous_commit=local'",
                &[("options", "-c synchronous_commit=local")],
            ),
            (
                "sslmode=verify-full sslrootcert=/etc/ca.pem",
                &[("sslmode", "verify-full"), ("sslrootcert", "/etc/ca.pem")],
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                pairs(&parse_key_value(input).unwrap()),
                *expected,
                "{input:?}"
            );
        }
    }

    #[test]
    fn key_value_errors() {
        for (input, expected) in [
            ("host", "missing \"=\""),
            ("bogus=1", "invalid connection option \"bogus\""),
            ("password='open", "unterminated"),
            ("user:pw@host/db", "missing \"=\""),
        ] {
            let e = parse_key_value(input).unwrap_err().to_string();
            assert!(e.contains(expected), "{input:?}: {e}");
        }
    }

    #[test]
    fn uri_forms() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("postgres://", &[]),
            ("postgresql://h", &[("host", "h")]),
            (
                "postgres://ln:p%40ss@db1:5433/wallet",
                &[
                    ("user", "ln"),
                    ("password", "p@ss"),
                    ("host", "db1"),
                    ("port", "5433"),
                    ("dbname", "wallet"),
                ],
            ),
            (
                "postgres://%2Fvar%2Frun%2Fpostgresql/ln",
                &[("host", "/var/run/postgresql"), ("dbname", "ln")],
            ),
            (
                "postgres:///ln?host=/run/pg&port=5444",
                &[("dbname", "ln"), ("host", "/run/pg"), ("port", "5444")],
            ),
            (
                "postgres://[::1]:5433/db",
                &[("host", "::1"), ("port", "5433"), ("dbname", "db")],
            ),
            (
                "postgres://a:1,b:2/db",
                &[("host", "a,b"), ("port", "1,2"), ("dbname", "db")],
            ),
            (
                "postgres://h/db?sslmode=verify-ca&sslrootcert=%2Fca.pem",
                &[
                    ("host", "h"),
                    ("dbname", "db"),
                    ("sslmode", "verify-ca"),
                    ("sslrootcert", "/ca.pem"),
                ],
            ),
            (
                "postgres://h?ssl=true",
                &[("host", "h"), ("sslmode", "require")],
            ),
            (
                "postgres://u@h?options=-c%20synchronous_commit%3Doff",
                &[
                    ("user", "u"),
                    ("host", "h"),
                    ("options", "-c synchronous_commit=off"),
                ],
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(pairs(&parse_uri(input).unwrap()), *expected, "{input:?}");
        }
    }

    #[test]
    fn uri_errors_never_repeat_the_password() {
        for (input, expected) in [
            ("postgres://u:Sec%zzret@h/db", "invalid percent-encoded"),
            ("postgres://h/db?bogus=1", "invalid URI query parameter"),
            ("postgres://[::1/db", "missing \"]\""),
            ("postgres://u:Sec%00ret@h", "%00"),
        ] {
            let e = parse_uri(input).unwrap_err().to_string();
            assert!(e.contains(expected), "{input:?}: {e}");
            assert!(!e.contains("Sec"), "{e}");
        }
    }

    #[test]
    fn the_last_value_wins() {
        let p = parse("host=a host=b").unwrap();
        assert_eq!(get(&p, "host"), Some("b"));
        assert_eq!(get(&p, "port"), None);
    }

    #[test]
    fn reads_values_from_a_printed_conninfo() {
        let c = "user=postgres password=******** channel_binding=prefer \
                 host=/tmp/x port=5432 application_name=s1 fallback_application_name=walreceiver";
        assert_eq!(printed_value(c, "application_name").as_deref(), Some("s1"));
        assert_eq!(printed_value(c, "host").as_deref(), Some("/tmp/x"));
        assert_eq!(printed_value(c, "dbname"), None);
        let q = "host='/tmp/a b' application_name='it\\'s'";
        assert_eq!(printed_value(q, "host").as_deref(), Some("/tmp/a b"));
        assert_eq!(
            printed_value(q, "application_name").as_deref(),
            Some("it's")
        );
        // As printed: a keyword newer than ours is no error, a backslash is a backslash.
        let newer = "host=/tmp/x min_protocol_version=3.2 application_name=a\\b";
        assert_eq!(printed_value(newer, "host").as_deref(), Some("/tmp/x"));
        // A setting: the last value of a key wins, as in libpq; newer keywords pass.
        let setting =
            parse_setting("host=decoy port=1 host=10.0.0.1 port=2 sslnegotiation=x").unwrap();
        assert_eq!(get(&setting, "host"), Some("10.0.0.1"));
        assert_eq!(get(&setting, "port"), Some("2"));
        // A non-ASCII space separates nothing, as in libpq.
        let wide = parse_setting("host=p application_name=s1\u{3000}host=d").unwrap();
        assert_eq!(get(&wide, "host"), Some("p"));
        assert_eq!(
            printed_value(newer, "application_name").as_deref(),
            Some("a\\b")
        );
    }
}
