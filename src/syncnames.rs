//! `synchronous_standby_names`, parsed the way PostgreSQL's `syncrep_gram.y` reads it.
//!
//! Forms: empty (no synchronous replication), `a, b` (= `FIRST 1 (a, b)`), `n (a, b)`
//! (= `FIRST n`), `FIRST n (…)`, `ANY n (…)`; `*` matches any standby. Keywords are
//! case-insensitive and so is the matching of names against `application_name`.

use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMethod {
    /// The `num` connected standbys with the highest priority (earliest in the list).
    First,
    /// Any `num` of the listed standbys (quorum commit).
    Any,
}

/// What `synchronous_standby_names` asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequirement {
    pub method: SyncMethod,
    pub num: u32,
    pub names: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SyncNames {
    /// Empty: commits never wait for a standby.
    Empty,
    Required(SyncRequirement),
}

/// A WAL sender as PostgreSQL counts it when it releases waiting commits.
#[derive(Clone, Debug)]
pub struct Acknowledger {
    pub streaming: bool,
    /// `pg_stat_replication.sync_state`: `sync`, `quorum`, `potential`, `async`.
    pub sync_state: Option<String>,
    pub flush: Option<Lsn>,
}

impl SyncRequirement {
    /// Whether the standbys PostgreSQL counts now have flushed through `l`: a commit at or
    /// before `l` that still waits then waits only for their next status reply, which any new
    /// WAL brings (DESIGN §6, after the names were changed). `FIRST n`: the n synchronous
    /// standbys; `ANY n`: n of the quorum. Hidden columns count as not flushed.
    pub fn flushed_through(&self, senders: &[Acknowledger], l: Lsn) -> bool {
        let reached = |a: &&Acknowledger| a.streaming && a.flush.is_some_and(|f| f >= l);
        let in_state = |state: &'static str| {
            senders
                .iter()
                .filter(move |a| a.sync_state.as_deref() == Some(state))
        };
        let num = self.num as usize;
        match self.method {
            SyncMethod::First => {
                let sync: Vec<&Acknowledger> = in_state("sync").collect();
                sync.len() >= num && sync.iter().all(reached)
            }
            SyncMethod::Any => in_state("quorum").filter(reached).count() >= num,
        }
    }

    pub fn has_wildcard(&self) -> bool {
        self.names.iter().any(|n| n == "*")
    }

    /// The list position (0 = highest priority) that `application_name` matches, as PostgreSQL
    /// assigns `sync_priority`.
    pub fn priority_of(&self, application_name: &str) -> Option<usize> {
        self.names
            .iter()
            .position(|n| n == "*" || n.eq_ignore_ascii_case(application_name))
    }

    pub fn names_standby(&self, application_name: &str) -> bool {
        self.priority_of(application_name).is_some()
    }

    /// Whether the set of standbys that acknowledge a commit can change only by a change of
    /// this setting: every named standby is required and none is `*`. With `FIRST 1 (a, b)`,
    /// PostgreSQL makes `b` synchronous on its own when `a` goes, and commits acknowledged by
    /// `b` alone never reach `a` (DESIGN §6): what was true of `a` once says nothing of later
    /// commits. Only under a fixed membership can a recorded row speak for the future.
    pub fn membership_is_fixed(&self) -> bool {
        !self.has_wildcard() && self.num as usize >= self.names.len()
    }
}

impl SyncNames {
    pub fn parse(s: &str) -> Result<SyncNames, String> {
        let tokens = tokenize(s)?;
        if tokens.is_empty() {
            return Ok(SyncNames::Empty);
        }
        let mut p = Parser { tokens, pos: 0 };
        let req = p.config()?;
        if p.pos != p.tokens.len() {
            return Err(format!("unexpected {} in {s:?}", p.tokens[p.pos]));
        }
        Ok(SyncNames::Required(req))
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Name(String),
    Num(u32),
    First,
    Any,
    Open,
    Close,
    Comma,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Name(n) => write!(f, "name {n:?}"),
            Token::Num(n) => write!(f, "number {n}"),
            Token::First => f.write_str("FIRST"),
            Token::Any => f.write_str("ANY"),
            Token::Open => f.write_str("'('"),
            Token::Close => f.write_str("')'"),
            Token::Comma => f.write_str("','"),
        }
    }
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ',' | '*' => {
                chars.next();
                out.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    ',' => Token::Comma,
                    _ => Token::Name("*".into()),
                });
            }
            '"' => {
                chars.next();
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            name.push('"');
                        }
                        Some('"') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("unterminated quoted name in {s:?}")),
                    }
                }
                out.push(Token::Name(name));
            }
            c if c.is_ascii_digit() => {
                let mut digits = String::new();
                while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    digits.push(d);
                    chars.next();
                }
                let n = digits
                    .parse()
                    .map_err(|_| format!("number {digits} too large in {s:?}"))?;
                out.push(Token::Num(n));
            }
            c if c.is_alphabetic() || c == '_' || !c.is_ascii() => {
                let mut word = String::new();
                while let Some(&d) = chars
                    .peek()
                    .filter(|d| d.is_alphanumeric() || **d == '_' || **d == '$' || !d.is_ascii())
                {
                    word.push(d);
                    chars.next();
                }
                out.push(if word.eq_ignore_ascii_case("first") {
                    Token::First
                } else if word.eq_ignore_ascii_case("any") {
                    Token::Any
                } else {
                    Token::Name(word)
                });
            }
            other => return Err(format!("unexpected character {other:?} in {s:?}")),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn config(&mut self) -> Result<SyncRequirement, String> {
        let method = match self.peek() {
            Some(Token::First) => Some(SyncMethod::First),
            Some(Token::Any) => Some(SyncMethod::Any),
            _ => None,
        };
        if let Some(method) = method {
            self.pos += 1;
            let num = match self.next() {
                Some(Token::Num(n)) => n,
                other => {
                    return Err(format!(
                        "expected a number after {method:?}, found {}",
                        describe(other)
                    ));
                }
            };
            return self.counted(method, num);
        }
        // `n (list)` is FIRST n; a lone number is a standby name.
        if let (Some(Token::Num(n)), Some(Token::Open)) =
            (self.tokens.first().cloned(), self.tokens.get(1))
        {
            self.pos += 1;
            return self.counted(SyncMethod::First, n);
        }
        Ok(SyncRequirement {
            method: SyncMethod::First,
            num: 1,
            names: self.list()?,
        })
    }

    fn counted(&mut self, method: SyncMethod, num: u32) -> Result<SyncRequirement, String> {
        if num == 0 {
            return Err("the number of synchronous standbys must be at least 1".into());
        }
        match self.next() {
            Some(Token::Open) => {}
            other => return Err(format!("expected '(', found {}", describe(other))),
        }
        let names = self.list()?;
        match self.next() {
            Some(Token::Close) => {}
            other => return Err(format!("expected ')', found {}", describe(other))),
        }
        Ok(SyncRequirement { method, num, names })
    }

    fn list(&mut self) -> Result<Vec<String>, String> {
        let mut names = Vec::new();
        loop {
            match self.next() {
                Some(Token::Name(n)) => names.push(n),
                Some(Token::Num(n)) => names.push(n.to_string()),
                other => {
                    return Err(format!(
                        "expected a standby name, found {}",
                        describe(other)
                    ));
                }
            }
            if self.peek() == Some(&Token::Comma) {
                self.pos += 1;
            } else {
                return Ok(names);
            }
        }
    }
}

fn describe(t: Option<Token>) -> String {
    t.map_or_else(|| "the end".to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: SyncMethod, num: u32, names: &[&str]) -> SyncNames {
        SyncNames::Required(SyncRequirement {
            method,
            num,
            names: names.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn parses_every_form_postgres_accepts() {
        use SyncMethod::*;
        let cases: &[(&str, SyncNames)] = &[
            ("", SyncNames::Empty),
            ("   ", SyncNames::Empty),
            ("s1", req(First, 1, &["s1"])),
            ("s1, s2", req(First, 1, &["s1", "s2"])),
            ("2 (s1, s2, s3)", req(First, 2, &["s1", "s2", "s3"])),
            ("FIRST 2 (s1, s2)", req(First, 2, &["s1", "s2"])),
            ("first 1 (s1)", req(First, 1, &["s1"])),
            ("ANY 2 (s1,s2,s3)", req(Any, 2, &["s1", "s2", "s3"])),
            ("any 1 (a, b)", req(Any, 1, &["a", "b"])),
            ("*", req(First, 1, &["*"])),
            ("ANY 1 (*)", req(Any, 1, &["*"])),
            (
                "\"My Standby\", \"a\"\"b\"",
                req(First, 1, &["My Standby", "a\"b"]),
            ),
            ("standby_1$x", req(First, 1, &["standby_1$x"])),
        ];
        for (input, expected) in cases {
            assert_eq!(
                &SyncNames::parse(input).unwrap(),
                expected,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn rejects_what_postgres_rejects() {
        for bad in [
            "FIRST (a)",
            "ANY 0 (a)",
            "FIRST 1 a",
            "ANY 1 (a",
            "a,",
            "a b",
            "\"open",
            "a; b",
        ] {
            assert!(SyncNames::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn matches_names_case_insensitively_and_by_wildcard() {
        let SyncNames::Required(r) = SyncNames::parse("FIRST 1 (Alpha, beta)").unwrap() else {
            panic!()
        };
        assert_eq!(r.priority_of("alpha"), Some(0));
        assert_eq!(r.priority_of("BETA"), Some(1));
        assert_eq!(r.priority_of("gamma"), None);
        assert!(!r.has_wildcard());
        let SyncNames::Required(w) = SyncNames::parse("a, *").unwrap() else {
            panic!()
        };
        assert!(w.has_wildcard());
        assert_eq!(w.priority_of("anything"), Some(1));
    }

    #[test]
    fn membership_is_fixed_only_when_every_named_standby_is_required() {
        for (setting, fixed) in [
            ("FIRST 1 (a)", true),
            ("a", true),
            ("FIRST 2 (a, b)", true),
            ("ANY 2 (a, b)", true),
            ("FIRST 1 (a, b)", false),
            ("a, b", false),
            ("ANY 1 (a, b)", false),
            ("*", false),
            ("FIRST 2 (a, *)", false),
        ] {
            let SyncNames::Required(r) = SyncNames::parse(setting).unwrap() else {
                panic!("{setting}")
            };
            assert_eq!(r.membership_is_fixed(), fixed, "{setting}");
        }
    }

    #[test]
    fn waiting_commits_are_only_unreplied_when_the_counted_standbys_flushed_past_them() {
        let a = |state: &str, flush: u64| Acknowledger {
            streaming: true,
            sync_state: Some(state.into()),
            flush: Some(Lsn(flush)),
        };
        let req = |s: &str| match SyncNames::parse(s).unwrap() {
            SyncNames::Required(r) => r,
            SyncNames::Empty => panic!(),
        };
        let l = Lsn(100);
        assert!(req("s1").flushed_through(&[a("sync", 100)], l));
        assert!(!req("s1").flushed_through(&[a("sync", 99)], l));
        assert!(
            !req("s1").flushed_through(&[a("potential", 200)], l),
            "none sync"
        );
        assert!(
            !req("FIRST 2 (a, b)").flushed_through(&[a("sync", 200)], l),
            "one of two"
        );
        assert!(
            !req("FIRST 2 (a, b)").flushed_through(&[a("sync", 200), a("sync", 50)], l),
            "one behind"
        );
        assert!(req("ANY 1 (a, b)").flushed_through(&[a("quorum", 50), a("quorum", 150)], l));
        assert!(!req("ANY 2 (a, b)").flushed_through(&[a("quorum", 50), a("quorum", 150)], l));
        let hidden = Acknowledger {
            streaming: true,
            sync_state: None,
            flush: None,
        };
        assert!(!req("s1").flushed_through(&[hidden], l));
        let mut stopped = a("sync", 200);
        stopped.streaming = false;
        assert!(!req("s1").flushed_through(&[stopped], l));
    }
}
