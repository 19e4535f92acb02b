//! lightningd's messages on our stdin, made readable before cln-plugin sees them.
//!
//! lightningd parses requests with a lenient tokenizer and forwards a client's parameters to the
//! `rpc_command` hook as the raw tokens it received (DESIGN §6): `lightning-cli -k fundchannel
//! id=[123x1]` reaches us as `"id":[123x1]`, which is not JSON. cln-plugin 0.7 ends its read
//! loop on the first message it cannot parse, the plugin exits, and an important plugin takes
//! lightningd down with it: a typo would stop the node. So every message passes through here:
//! valid JSON goes on untouched; anything else is read the way lightningd read it (a bare word
//! becomes a string, bytes that are not UTF-8 are replaced) and goes on as valid JSON, so the
//! hook still sees the method and answers as the gate decides. lightningd then rejects the
//! malformed parameter itself.

use std::borrow::Cow;

use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

/// cln-plugin's framing: messages are separated by an empty line (lightningd never sends one
/// inside a message).
const SEPARATOR: &[u8] = b"\n\n";

/// Deeper than this, a value is kept as its raw text: serde_json refuses nesting past 128, and a
/// client can nest as deep as it likes.
const MAX_DEPTH: usize = 64;

/// What becomes of one message.
#[derive(Debug, PartialEq, Eq)]
pub enum Passed<'a> {
    /// Valid JSON: passed on byte for byte.
    AsIs(&'a [u8]),
    /// Read leniently and written again as JSON.
    Repaired(String),
    /// Not a JSON-RPC call even when read leniently: cln-plugin would exit on it.
    Dropped(&'static str),
}

/// Decides what to pass on for one message (without its separator).
pub fn pass(message: &[u8]) -> Passed<'_> {
    match serde_json::from_slice::<Value>(message) {
        Ok(v) if is_call(&v) && v.get("params").is_some() => Passed::AsIs(message),
        Ok(v) => complete(v),
        Err(_) => complete(Lenient::new(message).value(0)),
    }
}

/// cln-plugin's dispatcher exits on a message without a string `method`, and on a request
/// without `params`: a missing `params` is added as null (lightningd means none).
fn complete(mut v: Value) -> Passed<'static> {
    if !is_call(&v) {
        return Passed::Dropped("no call with a method could be read from it");
    }
    if let Some(o) = v.as_object_mut() {
        o.entry("params").or_insert(Value::Null);
    }
    Passed::Repaired(v.to_string())
}

fn is_call(v: &Value) -> bool {
    v.get("method").is_some_and(Value::is_string)
}

/// Copies `input` to the returned stream, message by message, through `pass`. The stream ends
/// when `input` does (lightningd closed our stdin), and cln-plugin then ends as it always did.
pub fn pump<R>(mut input: R) -> (DuplexStream, JoinHandle<()>)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (reader, mut writer) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(async move {
        let mut pending: Vec<u8> = Vec::new();
        // Where the search for the next separator resumes: a message of megabytes arriving
        // in small reads is scanned once, not once per read.
        let mut scanned = 0;
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = match input.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&chunk[..n]);
            let mut start = 0;
            while let Some(end) = find(&pending[scanned..], SEPARATOR).map(|i| scanned + i) {
                let message = &pending[start..end];
                start = end + SEPARATOR.len();
                scanned = start;
                let out: Cow<[u8]> = match pass(message) {
                    Passed::AsIs(m) => Cow::Borrowed(m),
                    Passed::Repaired(m) => {
                        log::warn!(
                            "a message from lightningd was not valid JSON (a malformed RPC \
                             parameter?): read leniently, as lightningd does"
                        );
                        Cow::Owned(m.into_bytes())
                    }
                    Passed::Dropped(why) => {
                        log::warn!("a message from lightningd was ignored: {why}");
                        continue;
                    }
                };
                if writer.write_all(&out).await.is_err()
                    || writer.write_all(SEPARATOR).await.is_err()
                {
                    return;
                }
            }
            pending.drain(..start);
            // The last byte may be the first half of a separator.
            scanned = pending.len().saturating_sub(SEPARATOR.len() - 1);
        }
        let _ = writer.shutdown().await;
    });
    (reader, task)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A reader in the spirit of lightningd's non-strict tokenizer: structure from brackets,
/// braces, commas, colons and quotes; anything else is a bare word. It always returns a value
/// and always ends: every step consumes at least one byte.
struct Lenient<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Lenient<'a> {
    fn new(s: &'a [u8]) -> Self {
        Lenient { s, i: 0 }
    }

    fn peek(&mut self) -> Option<u8> {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
        self.s.get(self.i).copied()
    }

    fn value(&mut self, depth: usize) -> Value {
        match self.peek() {
            Some(b'{' | b'[') if depth >= MAX_DEPTH => Value::String(self.raw_nested()),
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => Value::String(self.string()),
            // A separator where a value belongs: no value (the caller consumes it).
            Some(b',' | b':' | b']' | b'}') | None => Value::Null,
            Some(_) => self.bare_word(),
        }
    }

    fn object(&mut self, depth: usize) -> Value {
        self.i += 1;
        let mut map = Map::new();
        loop {
            match self.peek() {
                None => break,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                // Stray separators and brackets are skipped.
                Some(b',' | b':' | b']') => self.i += 1,
                Some(_) => {
                    let key = match self.value(depth) {
                        Value::String(k) => k,
                        other => other.to_string(),
                    };
                    let value = if self.peek() == Some(b':') {
                        self.i += 1;
                        self.value(depth)
                    } else {
                        Value::Null
                    };
                    map.insert(key, value);
                }
            }
        }
        Value::Object(map)
    }

    fn array(&mut self, depth: usize) -> Value {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            match self.peek() {
                None => break,
                Some(b']') => {
                    self.i += 1;
                    break;
                }
                Some(b',' | b':' | b'}') => self.i += 1,
                Some(_) => items.push(self.value(depth)),
            }
        }
        Value::Array(items)
    }

    /// A quoted string; its escapes as JSON reads them, or its bytes as they are.
    fn string(&mut self) -> String {
        let start = self.i;
        self.i += 1;
        while self.i < self.s.len() {
            match self.s[self.i] {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    break;
                }
                _ => self.i += 1,
            }
        }
        self.i = self.i.min(self.s.len());
        let quoted = &self.s[start..self.i];
        serde_json::from_slice::<String>(quoted).unwrap_or_else(|_| {
            let inner = quoted.strip_prefix(b"\"").unwrap_or(quoted);
            let inner = inner.strip_suffix(b"\"").unwrap_or(inner);
            String::from_utf8_lossy(inner).into_owned()
        })
    }

    /// A run up to the next separator: a number, `true`, `false`, `null`, or else a string.
    fn bare_word(&mut self) -> Value {
        let start = self.i;
        while self.i < self.s.len()
            && !self.s[self.i].is_ascii_whitespace()
            && !b",:[]{}\"".contains(&self.s[self.i])
        {
            self.i += 1;
        }
        let word = &self.s[start..self.i];
        serde_json::from_slice::<Value>(word)
            .ok()
            .filter(|v| !v.is_object() && !v.is_array() && !v.is_string())
            .unwrap_or_else(|| Value::String(String::from_utf8_lossy(word).into_owned()))
    }

    /// A value nested too deep, kept as its text up to its matching bracket.
    fn raw_nested(&mut self) -> String {
        let start = self.i;
        let mut depth = 0usize;
        let mut in_string = false;
        while self.i < self.s.len() {
            let b = self.s[self.i];
            self.i += 1;
            match (in_string, b) {
                (true, b'\\') => self.i += 1,
                (true, b'"') => in_string = false,
                (false, b'"') => in_string = true,
                (false, b'{' | b'[') => depth += 1,
                (false, b'}' | b']') => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        self.i = self.i.min(self.s.len());
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn repaired(raw: &str) -> Value {
        match pass(raw.as_bytes()) {
            Passed::Repaired(s) => serde_json::from_str(&s).unwrap(),
            other => panic!("{raw}: {other:?}"),
        }
    }

    #[test]
    fn valid_json_passes_byte_for_byte() {
        let m = br#"{"jsonrpc":"2.0","id":"cln:rpc_command#7","method":"rpc_command","params":{}}"#;
        assert_eq!(pass(m), Passed::AsIs(&m[..]));
    }

    #[test]
    fn a_malformed_parameter_becomes_a_string_and_the_method_stays_readable() {
        let v = repaired(
            r#"{"jsonrpc":"2.0","id":"cln:rpc_command#7","method":"rpc_command","params":{"rpc_command":{"id":"cli:fundchannel#1","method":"fundchannel","params":{"id":[123x1],"amount":100000}}}}"#,
        );
        assert_eq!(v["id"], json!("cln:rpc_command#7"));
        assert_eq!(v["params"]["rpc_command"]["method"], json!("fundchannel"));
        assert_eq!(
            v["params"]["rpc_command"]["params"],
            json!({"id": ["123x1"], "amount": 100000})
        );
    }

    #[test]
    fn bare_words_numbers_and_literals_read_as_lightningd_reads_them() {
        let v = repaired(
            r#"{"method":"m","id":1,"params":[abc, 12, -1.5e3, true, null, 0x1f, "s\"q", 02ab]}"#,
        );
        assert_eq!(
            v["params"],
            json!(["abc", 12, -1500.0, true, null, "0x1f", "s\"q", "02ab"])
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_replaced() {
        let mut m = br#"{"method":"m","id":1,"params":{"label":"caf"#.to_vec();
        m.push(0xe9);
        m.extend_from_slice(br#""}}"#);
        let Passed::Repaired(s) = pass(&m) else {
            panic!()
        };
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["params"]["label"], json!("caf\u{fffd}"));
    }

    #[test]
    fn nesting_deeper_than_serde_allows_is_kept_as_text() {
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let v = repaired(&format!(
            r#"{{"method":"m","id":1,"params":{{"x":{deep},"y":2}}}}"#
        ));
        assert!(v["params"]["x"].is_array());
        assert_eq!(v["params"]["y"], json!(2));
    }

    #[test]
    fn truncated_or_stray_tokens_still_end_with_a_value() {
        for raw in [
            r#"{"method":"m","id":1,"params":{"a":[1,2"#,
            r#"{"method":"m","id":1,"params":{"a"::,,]]}}"#,
            r#"{"method":"m","id":1,"params":"unterminated"#,
            r#"{"method":"m","id":1,"params":{x y z}}"#,
        ] {
            let v = repaired(raw);
            assert_eq!(v["method"], json!("m"), "{raw}");
        }
    }

    #[test]
    fn what_is_no_call_is_dropped_rather_than_ending_the_plugin() {
        assert!(matches!(pass(b"[1, 2"), Passed::Dropped(_)));
        assert!(matches!(pass(b"garbage"), Passed::Dropped(_)));
        assert!(matches!(pass(br#"{"id":1}"#), Passed::Dropped(_)));
        assert!(matches!(pass(b"[1,2]"), Passed::Dropped(_)));
    }

    #[test]
    fn a_call_without_params_gets_null_params() {
        assert_eq!(repaired(r#"{"method":"m","id":1}"#)["params"], Value::Null);
    }

    #[tokio::test]
    async fn a_large_message_in_small_reads_is_passed_whole_and_in_linear_time() {
        let big = format!(
            r#"{{"method":"m","id":1,"params":{{"psbt":"{}"}}}}"#,
            "a".repeat(8 * 1024 * 1024)
        );
        let expected = big.len() + SEPARATOR.len();
        let (client, server) = tokio::io::duplex(4096);
        let (mut out, task) = pump(server);
        let writer = tokio::spawn(async move {
            let mut client = client;
            for piece in format!("{big}\n\n").as_bytes().chunks(1000) {
                client.write_all(piece).await.unwrap();
            }
        });
        let started = std::time::Instant::now();
        let mut text = Vec::new();
        out.read_to_end(&mut text).await.unwrap();
        writer.await.unwrap();
        task.await.unwrap();
        assert_eq!(text.len(), expected);
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    #[tokio::test]
    async fn the_pump_splits_on_empty_lines_and_repairs_each_message() {
        let input: &[u8] = b"{\"method\":\"a\",\"params\":{}}\n\n{\"method\":\"b\",\"params\":[x]}\n\nnot json\n\n{\"method\":\"c\",\"params\":[]}\n\n";
        let (mut out, task) = pump(input);
        let mut text = String::new();
        out.read_to_string(&mut text).await.unwrap();
        task.await.unwrap();
        let methods: Vec<String> = text
            .split("\n\n")
            .filter(|m| !m.is_empty())
            .map(|m| serde_json::from_str::<Value>(m).unwrap()["method"].to_string())
            .collect();
        assert_eq!(methods, ["\"a\"", "\"b\"", "\"c\""]);
    }
}
