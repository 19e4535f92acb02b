//! The only code that talks to Patroni: a minimal HTTP/1.1 `GET` over a tokio `TcpStream`,
//! the whole exchange under one deadline. Patroni's REST API is a small Python
//! `http.server` that answers with `Content-Length` and closes when asked; a client crate
//! (hyper, reqwest) would add a dependency tree for four GETs on loopback. Plain `http://`
//! only: the API is meant to be reached on the same host (the README says why).

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest answer read: `/cluster` of a big cluster is a few kB.
const MAX_BODY: usize = 1 << 20;

/// `http://host:port`, as `replguard-patroni-url` takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatroniUrl {
    pub host: String,
    pub port: u16,
}

impl PatroniUrl {
    /// Accepts `http://host[:port][/]` (port 8008, Patroni's default, when left out).
    pub fn parse(text: &str) -> Result<PatroniUrl, String> {
        let text = &without_password(text);
        let rest = text.strip_prefix("http://").ok_or_else(|| {
            format!("\"{text}\": give http://host:port (the local Patroni REST API; https is not supported)")
        })?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains(['/', '@', '?', '#']) {
            return Err(format!(
                "\"{text}\": give http://host:port, without a path or credentials"
            ));
        }
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("\"{text}\": cannot read host and port"))?;
        Ok(PatroniUrl { host, port })
    }

    /// The same API on another member: `api_url` from `GET /cluster`
    /// (`http://host:port/patroni`).
    pub fn of_member_api(api_url: &str) -> Result<PatroniUrl, String> {
        let base = api_url
            .strip_suffix("/patroni")
            .unwrap_or(api_url)
            .to_string();
        PatroniUrl::parse(&base)
    }
}

/// `text` with the user information of its authority (`user:password@`) replaced by `***@`:
/// a URL is echoed in errors, and a password must never be.
pub fn without_password(text: &str) -> String {
    let start = text.find("://").map_or(0, |i| i + 3);
    let end = text[start..]
        .find(['/', '?', '#'])
        .map_or(text.len(), |i| start + i);
    match text[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &text[..start], &text[start + at..]),
        None => text.to_string(),
    }
}

fn split_host_port(authority: &str) -> Option<(String, u16)> {
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, rest) = v6.split_once(']')?;
        let port = match rest.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if rest.is_empty() => 8008,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => None,
        None => Some((authority.to_string(), 8008)),
    }
}

impl fmt::Display for PatroniUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "http://{}:{}", self.host, self.port)
        }
    }
}

/// An answer: the status code and the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// `GET path` with `deadline` on connecting, sending and reading. Any status is an answer
/// (Patroni says 503 on `/leader` of a replica); no answer is an error naming what failed.
pub async fn get(url: &PatroniUrl, path: &str, deadline: Duration) -> Result<Answer, String> {
    match tokio::time::timeout(deadline, exchange(url, path)).await {
        Ok(r) => r,
        Err(_) => Err(format!("{url}{path}: no answer within {deadline:?}")),
    }
}

async fn exchange(url: &PatroniUrl, path: &str) -> Result<Answer, String> {
    let mut stream = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| format!("{url}: cannot connect: {e}"))?;
    let host = url.to_string();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        host.trim_start_matches("http://")
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("{url}{path}: cannot send: {e}"))?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_BODY as u64 + 16 * 1024)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("{url}{path}: cannot read the answer: {e}"))?;
    parse_answer(&raw).map_err(|e| format!("{url}{path}: {e}"))
}

/// Reads an HTTP/1.x answer read to the end of the connection.
pub fn parse_answer(raw: &[u8]) -> Result<Answer, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no end of header")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = match status_line.split_whitespace().collect::<Vec<_>>()[..] {
        [version, code, ..] if version.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .map_err(|_| format!("bad status line {status_line:?}"))?,
        _ => return Err(format!("not an HTTP answer: {status_line:?}")),
    };
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse::<usize>().ok(),
            "transfer-encoding" if !value.trim().eq_ignore_ascii_case("identity") => {
                return Err(format!("unsupported transfer-encoding {}", value.trim()));
            }
            _ => {}
        }
    }
    let body = &raw[end + 4..];
    let body = match length {
        Some(n) if n > body.len() => {
            return Err(format!("answer cut short ({} of {n} bytes)", body.len()));
        }
        Some(n) => &body[..n],
        None => body,
    };
    if body.len() > MAX_BODY {
        return Err("answer larger than 1 MiB".into());
    }
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_and_without_port() {
        let u = PatroniUrl::parse("http://127.0.0.1:8009/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8009));
        assert_eq!(PatroniUrl::parse("http://db1").unwrap().port, 8008);
        let v6 = PatroniUrl::parse("http://[::1]:8010").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8010));
        assert_eq!(v6.to_string(), "http://[::1]:8010");
        let member = PatroniUrl::of_member_api("http://10.0.0.2:8008/patroni").unwrap();
        assert_eq!(member.to_string(), "http://10.0.0.2:8008");
    }

    #[test]
    fn urls_other_than_plain_http_host_port_are_refused() {
        for bad in [
            "https://db1:8008",
            "db1:8008",
            "http://",
            "http://db1:8008/patroni",
            "http://u:p@db1:8008",
            "http://db1:port",
        ] {
            assert!(PatroniUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_url_with_credentials_is_refused_without_echoing_the_password() {
        for bad in [
            "http://patroni:s3cret@127.0.0.1:8008",
            "https://patroni:s3cret@127.0.0.1:8008",
            "http://patroni:s3cret@127.0.0.1:8008/patroni",
        ] {
            let e = PatroniUrl::parse(bad).unwrap_err();
            assert!(!e.contains("s3cret"), "{bad}: {e}");
        }
    }

    #[test]
    fn answers_parse_by_content_length_or_to_the_end() {
        let a = parse_answer(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}xx")
            .unwrap();
        assert_eq!((a.status, a.body.as_str()), (503, "{}"));
        let b = parse_answer(b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n{\"a\":1}").unwrap();
        assert_eq!((b.status, b.body.as_str()), (200, "{\"a\":1}"));
    }

    #[test]
    fn broken_answers_are_errors() {
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").is_err());
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(
            parse_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}").is_err()
        );
    }
}
