//! A session's `search_path`: what it is, where it came from, and how an
//! unqualified table name resolves through it.
//!
//! The proxy follows each session's path (startup parameters and options,
//! `SET [SESSION | LOCAL] search_path`, `RESET`, `set_config(…)`, `DISCARD
//! ALL`; see `proxy::search_path` for the transaction rules) and hands it to
//! the rewriter with every statement it rewrites ([`super::SessionContext`]).
//! A session that never set one uses the database's default: the
//! `ALTER ROLE … SET search_path` / `ALTER DATABASE … SET search_path`
//! settings and the server's own, read with the catalog, or
//! `"$user", public`.
//!
//! Resolution matters only where the catalog holds a table of that name in
//! more than one schema (or in a schema off the path): the migrating table
//! `public.t` is then told from `tenant.t`. A path pgshift could not read
//! (`set_config` with a computed value) leaves a name that exists in
//! several schemas unresolved, and statements on it are refused rather than
//! guessed.

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::Token;

use super::text::{folded, tokenize, Tok};

/// One element of a search path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Entry {
    /// `$user`: the schema named like the session's user, if it exists.
    User,
    /// A schema, by its stored (folded) name.
    Schema(String),
}

/// A search path, as a list of schemas to try in order. `unknown` marks a
/// path pgshift could not read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct SearchPath {
    pub entries: Vec<Entry>,
    pub unknown: bool,
}

impl SearchPath {
    /// Postgres's built-in default, `"$user", public`.
    pub fn builtin() -> SearchPath {
        SearchPath {
            entries: vec![Entry::User, Entry::Schema("public".into())],
            unknown: false,
        }
    }

    /// A path pgshift could not read.
    pub fn unknown() -> SearchPath {
        SearchPath {
            entries: Vec::new(),
            unknown: true,
        }
    }

    /// Parses the text form of a path, as in `postgresql.conf`, a startup
    /// parameter or `SHOW search_path`: comma-separated identifiers,
    /// double-quoted ones verbatim, others folded to lower case.
    pub fn parse_list(value: &str) -> SearchPath {
        let mut entries = Vec::new();
        let mut chars = value.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            let mut name = String::new();
            let mut quoted = false;
            if chars.peek() == Some(&'"') {
                quoted = true;
                chars.next();
                while let Some(c) = chars.next() {
                    if c == '"' {
                        if chars.peek() == Some(&'"') {
                            chars.next();
                            name.push('"');
                        } else {
                            break;
                        }
                    } else {
                        name.push(c);
                    }
                }
            }
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                chars.next();
                if !quoted {
                    name.push(c.to_ascii_lowercase());
                }
            }
            let name = if quoted {
                name
            } else {
                name.trim().to_string()
            };
            if !name.is_empty() {
                entries.push(entry(name));
            }
            if chars.next().is_none() {
                break;
            }
        }
        SearchPath {
            entries,
            unknown: false,
        }
    }

    /// The schema an unqualified name resolves to, given the schemas that
    /// hold a table of that name (`holders`) and the session's `user`.
    pub fn resolve<'h>(&self, holders: &[&'h str], user: &str) -> Resolved<'h> {
        if self.unknown {
            return match holders {
                [] => Resolved::Missing,
                [only] => Resolved::In(only),
                _ => Resolved::Ambiguous,
            };
        }
        for e in &self.entries {
            let schema = match e {
                Entry::User => user,
                Entry::Schema(s) => s.as_str(),
            };
            if let Some(h) = holders.iter().find(|h| **h == schema) {
                return Resolved::In(h);
            }
        }
        Resolved::Missing
    }
}

/// Where an unqualified table name leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved<'a> {
    /// The table in this schema.
    In(&'a str),
    /// No schema on the path holds one (Postgres reports it missing).
    Missing,
    /// The path is unknown and several schemas hold one.
    Ambiguous,
}

fn entry(name: String) -> Entry {
    if name == "$user" {
        Entry::User
    } else {
        Entry::Schema(name)
    }
}

/// A change to the session's path that a statement makes, if it succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `SET [SESSION] search_path …` (`local`: `SET LOCAL`, or
    /// `set_config(…, true)`, until the transaction ends).
    Set { path: SearchPath, local: bool },
    /// `SET search_path TO DEFAULT`, `RESET search_path`, `RESET ALL`,
    /// `DISCARD ALL`: back to the session's default.
    Reset { local: bool },
}

/// Whether `sql` may change the search path: a byte check so that other
/// statements are not tokenized.
pub fn may_change(sql: &[u8]) -> bool {
    static SEARCH_PATH: super::scan::Word = super::scan::Word::new(b"search_path");
    SEARCH_PATH.found_in(sql)
        || starts_with_word(sql, b"reset")
        || starts_with_word(sql, b"discard")
}

fn starts_with_word(sql: &[u8], word: &[u8]) -> bool {
    let Some(start) = sql.iter().position(|b| !b.is_ascii_whitespace()) else {
        return false;
    };
    sql.get(start..start + word.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(word))
}

/// The path changes `sql` makes, in order.
pub fn changes(sql: &str) -> Vec<Change> {
    let Ok(tokens) = tokenize(sql) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for statement in tokens.split(|t| t.token == Token::SemiColon) {
        if let Some(change) = statement_change(statement) {
            out.push(change);
        }
        out.extend(set_config_calls(statement));
    }
    out
}

fn word(t: Option<&Tok>) -> Option<(String, Keyword, bool)> {
    match &t?.token {
        Token::Word(w) => Some((folded(w), w.keyword, w.quote_style.is_some())),
        _ => None,
    }
}

/// `SET … search_path …`, `RESET search_path | ALL`, `DISCARD ALL`.
fn statement_change(toks: &[Tok]) -> Option<Change> {
    let (first, ..) = word(toks.first())?;
    match first.as_str() {
        "reset" => {
            let (what, ..) = word(toks.get(1))?;
            (what == "search_path" || what == "all").then_some(Change::Reset { local: false })
        }
        "discard" => {
            let (what, ..) = word(toks.get(1))?;
            (what == "all").then_some(Change::Reset { local: false })
        }
        "set" => {
            let mut i = 1;
            let mut local = false;
            match word(toks.get(i)).map(|w| w.0).as_deref() {
                Some("session") => i += 1,
                Some("local") => {
                    local = true;
                    i += 1
                }
                _ => {}
            }
            if word(toks.get(i)).map(|w| w.0).as_deref() != Some("search_path") {
                return None;
            }
            i += 1;
            match toks.get(i).map(|t| &t.token) {
                Some(Token::Eq) => {}
                Some(Token::Word(w)) if w.keyword == Keyword::TO => {}
                // `SET search_path FROM CURRENT` and the like.
                _ => {
                    return Some(Change::Set {
                        path: SearchPath::unknown(),
                        local,
                    })
                }
            }
            Some(value_list(&toks[i + 1..], local))
        }
        _ => None,
    }
}

/// The value list of a `SET search_path TO …`.
fn value_list(toks: &[Tok], local: bool) -> Change {
    if toks.len() == 1 && word(toks.first()).is_some_and(|(w, _, q)| w == "default" && !q) {
        return Change::Reset { local };
    }
    let mut entries = Vec::new();
    let mut expect_value = true;
    for t in toks {
        match (&t.token, expect_value) {
            (Token::Word(w), true) => {
                entries.push(entry(folded(w)));
                expect_value = false;
            }
            (Token::SingleQuotedString(s), true) => {
                entries.push(entry(s.clone()));
                expect_value = false;
            }
            (Token::Comma, false) => expect_value = true,
            _ => {
                return Change::Set {
                    path: SearchPath::unknown(),
                    local,
                }
            }
        }
    }
    Change::Set {
        path: SearchPath {
            entries,
            unknown: false,
        },
        local,
    }
}

/// `set_config('search_path', value, is_local)` calls in a statement; a
/// value or flag that is not a literal makes the path unknown.
fn set_config_calls(toks: &[Tok]) -> Vec<Change> {
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        let is_call = word(Some(t)).is_some_and(|(w, _, q)| w == "set_config" && !q)
            && toks.get(i + 1).is_some_and(|t| t.token == Token::LParen);
        if !is_call {
            continue;
        }
        let args = &toks[(i + 2).min(toks.len())..];
        let literal = |k: usize| match args.get(k).map(|t| &t.token) {
            Some(Token::SingleQuotedString(s)) => Some(s.clone()),
            _ => None,
        };
        let names_path = match args.first().map(|t| &t.token) {
            Some(Token::SingleQuotedString(s)) => s.eq_ignore_ascii_case("search_path"),
            // A computed setting name: it may be the path.
            _ => true,
        };
        if !names_path {
            continue;
        }
        let separated = args.get(1).map(|t| &t.token) == Some(&Token::Comma)
            && args.get(3).map(|t| &t.token) == Some(&Token::Comma);
        let value = literal(2).filter(|_| separated && literal(0).is_some());
        let local = match word(args.get(4)).map(|w| w.0).as_deref() {
            Some("false") => Some(false),
            Some("true") => Some(true),
            _ => None,
        };
        match (value, local) {
            (Some(v), Some(local)) => out.push(Change::Set {
                path: SearchPath::parse_list(&v),
                local,
            }),
            (_, local) => out.push(Change::Set {
                path: SearchPath::unknown(),
                local: local.unwrap_or(false),
            }),
        }
    }
    out
}

/// The path a session's startup packet sets: a `search_path` parameter, or
/// `-c search_path=…` / `--search_path=…` in `options`.
pub fn from_startup(search_path: Option<&str>, options: Option<&str>) -> Option<SearchPath> {
    if let Some(value) = search_path {
        return Some(SearchPath::parse_list(value));
    }
    option_value(options?, "search_path").map(|v| SearchPath::parse_list(&v))
}

/// The value the startup `options` (`-c name=value`, `--name=value`,
/// separated by spaces, `\` escaping the next character) give setting
/// `name` last, as Postgres reads them (`-` and `_` alike in the name).
pub fn option_value(options: &str, name: &str) -> Option<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            c if c.is_whitespace() => {
                if !current.is_empty() {
                    words.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    let mut found = None;
    let mut i = 0;
    while i < words.len() {
        let setting = match words[i].as_str() {
            "-c" => {
                i += 1;
                words.get(i).map(String::as_str)
            }
            w => w.strip_prefix("--").or_else(|| w.strip_prefix("-c")),
        };
        if let Some((key, value)) = setting.and_then(|s| s.split_once('=')) {
            if key.replace('-', "_").eq_ignore_ascii_case(name) {
                found = Some(value.to_string());
            }
        }
        i += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(names: &[&str]) -> SearchPath {
        SearchPath {
            entries: names.iter().map(|n| entry(n.to_string())).collect(),
            unknown: false,
        }
    }

    #[test]
    fn the_text_form_folds_unquoted_names() {
        assert_eq!(
            SearchPath::parse_list(r#""$user", public"#),
            SearchPath::builtin()
        );
        assert_eq!(
            SearchPath::parse_list(r#"Tenant_A, "Mixed Case", "quo""te""#),
            path(&["tenant_a", "Mixed Case", "quo\"te"])
        );
        assert_eq!(SearchPath::parse_list(""), path(&[]));
    }

    #[test]
    fn set_reset_and_set_config_are_read() {
        let set = |names: &[&str], local| Change::Set {
            path: path(names),
            local,
        };
        assert_eq!(
            changes("SET search_path TO tenant_b, public"),
            vec![set(&["tenant_b", "public"], false)]
        );
        assert_eq!(
            changes("set local SEARCH_PATH = 'Tenant', \"$user\""),
            vec![set(&["Tenant", "$user"], true)]
        );
        assert_eq!(
            changes("SET SESSION search_path TO DEFAULT"),
            vec![Change::Reset { local: false }]
        );
        assert_eq!(
            changes("RESET search_path; select 1; RESET ALL; DISCARD ALL; RESET work_mem"),
            vec![Change::Reset { local: false }; 3]
        );
        assert_eq!(
            changes("SELECT set_config('search_path', 'a, b', false)"),
            vec![set(&["a", "b"], false)]
        );
        assert_eq!(
            changes("SELECT set_config('search_path', $1, true)"),
            vec![Change::Set {
                path: SearchPath::unknown(),
                local: true
            }]
        );
        assert_eq!(
            changes("SELECT set_config('work_mem', '1MB', false)"),
            vec![]
        );
        assert_eq!(changes("SET work_mem = '1MB'"), vec![]);
        assert!(may_change(b"  reset all"));
        assert!(may_change(b"SET Search_Path TO x"));
        assert!(!may_change(b"SELECT 1"));
    }

    #[test]
    fn startup_parameters_and_options_set_it() {
        assert_eq!(
            from_startup(Some("app, public"), None),
            Some(path(&["app", "public"]))
        );
        assert_eq!(
            from_startup(None, Some("-c search_path=app,public -c work_mem=1MB")),
            Some(path(&["app", "public"]))
        );
        assert_eq!(
            from_startup(None, Some("--search-path=app\\ x")),
            Some(path(&["app x"]))
        );
        assert_eq!(from_startup(None, Some("-c work_mem=1MB")), None);
    }

    #[test]
    fn names_resolve_along_the_path() {
        let p = path(&["$user", "tenant_b", "public"]);
        assert_eq!(
            p.resolve(&["public", "tenant_b"], "alice"),
            Resolved::In("tenant_b")
        );
        assert_eq!(
            p.resolve(&["alice", "public"], "alice"),
            Resolved::In("alice")
        );
        assert_eq!(p.resolve(&["other"], "alice"), Resolved::Missing);
        let unknown = SearchPath::unknown();
        assert_eq!(
            unknown.resolve(&["public"], "alice"),
            Resolved::In("public")
        );
        assert_eq!(
            unknown.resolve(&["public", "x"], "alice"),
            Resolved::Ambiguous
        );
    }
}
