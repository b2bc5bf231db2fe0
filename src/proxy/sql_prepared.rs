//! SQL-level prepared statements of one session (`PREPARE name AS …`,
//! `EXECUTE name(…)`), kept true across rules epochs.
//!
//! `PREPARE` is rewritten like any statement (its inner statement under the
//! rules in force) and recorded here with that epoch and its original text.
//! An `EXECUTE` of a statement prepared under older rules would run the old
//! rewrite, so pgshift replaces it with the statement itself, its `$n`
//! replaced by the EXECUTE's arguments (cast to the declared parameter
//! types), rewritten under the current rules: the same rows and the same
//! command tag as the EXECUTE would give on the new phase.

use std::collections::HashMap;

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::Token;

use crate::rewrite::text::{splice, tokenize, Edit, Tok};

/// One SQL-level prepared statement.
#[derive(Debug, Clone)]
struct Prepared {
    /// The inner statement as the client wrote it.
    inner: String,
    /// Declared parameter types, if any (`PREPARE p (int, text) AS …`).
    types: Vec<String>,
    epoch: u64,
}

/// The session's SQL-level prepared statements.
#[derive(Debug, Default)]
pub struct SqlPrepared {
    by_name: HashMap<String, Prepared>,
}

fn is_keyword(t: &Tok, k: Keyword) -> bool {
    matches!(&t.token, Token::Word(w) if w.keyword == k)
}

fn word_name(t: &Tok) -> Option<String> {
    match &t.token {
        Token::Word(w) if w.quote_style.is_some() => Some(w.value.clone()),
        Token::Word(w) => Some(w.value.to_lowercase()),
        _ => None,
    }
}

/// Splits the comma-separated items of the parenthesized list starting at
/// token `open` (a `(`): the byte ranges of the items, and the index of the
/// token after the closing `)`.
fn list_items(toks: &[Tok], open: usize) -> Option<(Vec<(usize, usize)>, usize)> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start: Option<usize> = None;
    let mut end = 0;
    for (i, t) in toks.iter().enumerate().skip(open + 1) {
        match t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen if depth == 0 => {
                if let Some(s) = start {
                    items.push((s, end));
                }
                return Some((items, i + 1));
            }
            Token::RParen | Token::RBracket => depth -= 1,
            Token::Comma if depth == 0 => {
                items.push((start.take()?, end));
                continue;
            }
            _ => {}
        }
        start.get_or_insert(t.start);
        end = t.end;
    }
    None
}

/// The statements of a Query text, split at top-level `;`.
fn statements(sql: &str) -> Vec<&str> {
    let Ok(toks) = tokenize(sql) else {
        return vec![sql];
    };
    let mut out = Vec::new();
    let mut start = 0;
    for t in toks.iter().filter(|t| t.token == Token::SemiColon) {
        out.push(&sql[start..t.start]);
        start = t.end;
    }
    if !sql[start..].trim().is_empty() {
        out.push(&sql[start..]);
    }
    out
}

/// `PREPARE name [(types)] AS statement` (one statement): (name, types,
/// inner statement).
pub fn parse_prepare(sql: &str) -> Option<(String, Vec<String>, String)> {
    let toks = tokenize(sql).ok()?;
    if !toks
        .first()
        .is_some_and(|t| is_keyword(t, Keyword::PREPARE))
    {
        return None;
    }
    let name = word_name(toks.get(1)?)?;
    let mut at = 2;
    let mut types = Vec::new();
    if toks.get(at).map(|t| &t.token) == Some(&Token::LParen) {
        let (items, next) = list_items(&toks, at)?;
        types = items.iter().map(|&(s, e)| sql[s..e].to_string()).collect();
        at = next;
    }
    if !toks.get(at).is_some_and(|t| is_keyword(t, Keyword::AS)) {
        return None;
    }
    let inner_start = toks.get(at + 1)?.start;
    Some((name, types, sql[inner_start..].trim_end().to_string()))
}

/// `EXECUTE name [(args)]`: (name, argument texts).
fn parse_execute(sql: &str) -> Option<(String, Vec<String>)> {
    let toks = tokenize(sql).ok()?;
    let toks: Vec<Tok> = toks
        .into_iter()
        .filter(|t| t.token != Token::SemiColon)
        .collect();
    if !toks
        .first()
        .is_some_and(|t| is_keyword(t, Keyword::EXECUTE))
    {
        return None;
    }
    let name = word_name(toks.get(1)?)?;
    let mut args = Vec::new();
    if toks.get(2).map(|t| &t.token) == Some(&Token::LParen) {
        let (items, next) = list_items(&toks, 2)?;
        if next != toks.len() {
            return None;
        }
        args = items.iter().map(|&(s, e)| sql[s..e].to_string()).collect();
    } else if toks.len() != 2 {
        return None;
    }
    Some((name, args))
}

impl SqlPrepared {
    /// Notes the `PREPARE`s of a Query the server is about to run under
    /// `epoch`.
    pub fn prepared(&mut self, sql: &str, epoch: u64) {
        for statement in statements(sql) {
            if let Some((name, types, inner)) = parse_prepare(statement) {
                self.by_name.insert(
                    name,
                    Prepared {
                        inner,
                        types,
                        epoch,
                    },
                );
            }
        }
    }

    pub fn deallocated(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    pub fn clear(&mut self) {
        self.by_name.clear();
    }

    /// For an `EXECUTE` of a statement prepared before `epoch`: the
    /// statement to run instead (not yet rewritten), its parameters
    /// replaced by the arguments.
    pub fn stale_execute(&self, sql: &str, epoch: u64) -> Option<String> {
        let (name, args) = parse_execute(sql)?;
        let prepared = self.by_name.get(&name)?;
        if prepared.epoch >= epoch {
            return None;
        }
        let toks = tokenize(&prepared.inner).ok()?;
        let mut edits = Vec::new();
        for t in &toks {
            if let Token::Placeholder(p) = &t.token {
                let n: usize = p.strip_prefix('$')?.parse().ok()?;
                let arg = args.get(n.checked_sub(1)?)?;
                let text = match prepared.types.get(n - 1) {
                    Some(ty) => format!("({arg})::{ty}"),
                    None => format!("({arg})"),
                };
                edits.push(Edit {
                    start: t.start,
                    end: t.end,
                    text,
                });
            }
        }
        splice(&prepared.inner, &mut edits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_execute_becomes_its_statement() {
        let mut p = SqlPrepared::default();
        p.prepared(
            "PREPARE bump (int, int) AS UPDATE t SET a = a + $1 WHERE id = $2;",
            3,
        );
        assert_eq!(p.stale_execute("EXECUTE bump(5, 7)", 3), None, "current");
        assert_eq!(
            p.stale_execute("execute bump (5, 7);", 4).as_deref(),
            Some("UPDATE t SET a = a + (5)::int WHERE id = (7)::int")
        );
        assert_eq!(p.stale_execute("EXECUTE other(1)", 4), None);
        p.deallocated("bump");
        assert_eq!(p.stale_execute("EXECUTE bump(5, 7)", 4), None);
        p.prepared("prepare q as select a from t; prepare r as select 1;", 1);
        assert_eq!(p.stale_execute("EXECUTE r", 2).as_deref(), Some("select 1"));
        assert_eq!(
            p.stale_execute("EXECUTE q", 2).as_deref(),
            Some("select a from t")
        );
    }
}
