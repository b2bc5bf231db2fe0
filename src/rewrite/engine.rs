//! The migration rewriter: the [`StatementRewriter`] pgshift runs when
//! migrations are configured.
//!
//! Today it is the fail-closed half of the phase table: a statement that
//! cannot touch a migrating table takes the fast path (byte scan, no parse)
//! and is forwarded byte for byte; a statement that names the table but
//! neither migrating column, no `*` over it and no column-less INSERT or COPY
//! into it is forwarded unchanged too, because its meaning is the same in
//! every phase. Every other statement touching a migrating table — one
//! that reads or writes `a` or `b`, expands `*`, or writes the table without
//! naming its columns — is refused with SQLSTATE 0A000 naming the migration,
//! the column and the reason, because rewriting it is not implemented yet.
//! Refusing is always safe: nothing is half-written, and the client learns
//! exactly what pgshift would not do.

use std::sync::Arc;

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, Tokenizer, Word};

use super::migration::quote_ident;
use super::rules::{ActiveMigration, Rules, RulesCell};
use super::scan::mentions_any;
use super::{Refusal, Rewrite, StatementKind, StatementRewriter};

/// SQLSTATE for a statement pgshift cannot rewrite safely.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";

/// The rewriter driven by the published migration rules.
#[derive(Debug, Clone)]
pub struct MigrationRewriter {
    rules: Arc<RulesCell>,
}

impl MigrationRewriter {
    pub fn new(rules: Arc<RulesCell>) -> Self {
        MigrationRewriter { rules }
    }
}

impl StatementRewriter for MigrationRewriter {
    fn rewrite<'a>(&self, _kind: StatementKind, sql: &'a [u8]) -> Rewrite<'a> {
        self.rules.with(|rules| {
            if rules.migrations.is_empty() || !mentions_any(sql, &rules.table_names) {
                return Rewrite::Unchanged;
            }
            match std::str::from_utf8(sql) {
                Ok(text) => check(text, rules),
                Err(_) => refuse_all(rules, "is not valid UTF-8, so pgshift cannot read it"),
            }
        })
    }
}

/// Looks at a statement that mentions a migrating table.
fn check<'a>(sql: &str, rules: &Rules) -> Rewrite<'a> {
    let tokens: Vec<Token> = match Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() {
        Ok(tokens) => tokens
            .into_iter()
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .collect(),
        Err(e) => return refuse_all(rules, &format!("cannot be tokenized ({e})")),
    };
    for m in &rules.migrations {
        if !tokens.iter().any(|t| names(t, &m.spec.table.name)) {
            continue;
        }
        if let Some(reason) = unsupported_use(&tokens, m) {
            return Rewrite::Refused(refusal(m, &reason));
        }
    }
    Rewrite::Unchanged
}

/// Why `tokens` (a statement that names `m`'s table) cannot pass unchanged.
fn unsupported_use(tokens: &[Token], m: &ActiveMigration) -> Option<String> {
    let spec = &m.spec;
    for column in [&spec.from, &spec.to] {
        if tokens.iter().any(|t| names(t, column)) {
            return Some(format!(
                "uses column {}, and rewriting statements that read or write a migrating column is not implemented yet",
                quote_ident(column)
            ));
        }
    }
    if let Some(Token::Word(w)) = tokens.first() {
        if w.keyword == Keyword::TABLE {
            return Some("reads every column (TABLE), which needs the column list expanded".into());
        }
    }
    for (i, t) in tokens.iter().enumerate() {
        if *t == Token::Mul && i > 0 && is_wildcard_context(&tokens[i - 1]) {
            return Some("selects * (all columns), which needs the column list expanded".into());
        }
    }
    for (i, t) in tokens.iter().enumerate() {
        let Token::Word(w) = t else { continue };
        let writes = match w.keyword {
            Keyword::INTO => i > 0 && is_keyword(&tokens[i - 1], Keyword::INSERT),
            Keyword::COPY => true,
            _ => false,
        };
        if !writes {
            continue;
        }
        // The table name (possibly schema-qualified) follows.
        let mut j = i + 1;
        while j + 1 < tokens.len() && tokens[j + 1] == Token::Period {
            j += 2;
        }
        if !tokens.get(j).is_some_and(|t| names(t, &spec.table.name)) {
            continue;
        }
        let mut next = j + 1;
        // An INSERT may alias the table: INSERT INTO t AS x (...).
        if tokens.get(next).is_some_and(|t| is_keyword(t, Keyword::AS)) {
            next += 2;
        }
        let has_column_list = tokens.get(next) == Some(&Token::LParen)
            && !tokens.get(next + 1).is_some_and(|t| {
                is_keyword(t, Keyword::SELECT)
                    || is_keyword(t, Keyword::VALUES)
                    || is_keyword(t, Keyword::WITH)
            });
        if !has_column_list {
            return Some(
                "writes the table without a column list, which needs the columns expanded".into(),
            );
        }
        if w.keyword == Keyword::INTO && m.phase.has_new() {
            return Some(format!(
                "inserts without naming {} or {}, which leaves the new column unset while the migration keeps both in step",
                quote_ident(&spec.from),
                quote_ident(&spec.to)
            ));
        }
    }
    None
}

/// Tokens after which `*` is a wildcard, not multiplication.
fn is_wildcard_context(prev: &Token) -> bool {
    match prev {
        Token::Comma | Token::Period => true,
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::SELECT | Keyword::DISTINCT | Keyword::ALL | Keyword::RETURNING
        ),
        _ => false,
    }
}

fn is_keyword(token: &Token, keyword: Keyword) -> bool {
    matches!(token, Token::Word(w) if w.keyword == keyword)
}

/// The word token names `folded` (an unquoted word in any case, or a quoted
/// one exactly).
fn names(token: &Token, folded: &str) -> bool {
    match token {
        Token::Word(Word {
            value, quote_style, ..
        }) => match quote_style {
            Some(_) => value == folded,
            None => value.eq_ignore_ascii_case(folded),
        },
        _ => false,
    }
}

fn refusal(m: &ActiveMigration, reason: &str) -> Refusal {
    let spec = &m.spec;
    Refusal {
        code: FEATURE_NOT_SUPPORTED,
        message: format!(
            "pgshift refused a statement on table {} during migration \"{}\" ({} -> {}, phase {}): it {}",
            spec.table,
            spec.id,
            quote_ident(&spec.from),
            quote_ident(&spec.to),
            m.phase,
            reason
        ),
        detail: None,
        hint: Some(
            "pgshift refuses what it cannot rewrite safely, so nothing is half-written; statements that do not touch the migrating columns pass unchanged."
                .into(),
        ),
    }
}

fn refuse_all<'a>(rules: &Rules, reason: &str) -> Rewrite<'a> {
    match rules.migrations.first() {
        Some(m) => Rewrite::Refused(refusal(m, reason)),
        None => Rewrite::Unchanged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::migration::{MigrationSpec, Phase};

    fn rewriter(phase: Phase) -> MigrationRewriter {
        let m = ActiveMigration {
            spec: MigrationSpec::new(
                "accounts_balance",
                "pgbench_accounts",
                "abalance",
                "balance",
                None,
                None,
                None,
            )
            .unwrap(),
            phase,
        };
        MigrationRewriter::new(Arc::new(RulesCell::new(&[m])))
    }

    fn verdict(r: &MigrationRewriter, sql: &str) -> Rewrite<'static> {
        match r.rewrite(StatementKind::SimpleQuery, sql.as_bytes()) {
            Rewrite::Unchanged => Rewrite::Unchanged,
            Rewrite::Refused(x) => Rewrite::Refused(x),
            Rewrite::Replaced(_) => panic!("nothing is rewritten yet"),
        }
    }

    #[test]
    fn statements_that_cannot_touch_the_columns_pass() {
        let r = rewriter(Phase::Expanded);
        for sql in [
            "select 1",
            "select * from pgbench_branches",
            "select aid, bid from pgbench_accounts where aid = $1",
            "update pgbench_accounts set filler = 'x' where aid = 1",
            "delete from pgbench_accounts where aid = 3",
            "insert into pgbench_history (tid, bid, aid, delta) values (1, 2, 3, 4)",
            "select count(*) from pgbench_accounts",
            "select aid * 2 from pgbench_accounts",
        ] {
            assert_eq!(verdict(&r, sql), Rewrite::Unchanged, "{sql}");
        }
    }

    #[test]
    fn statements_that_touch_them_are_refused_with_the_reason() {
        let r = rewriter(Phase::Expanded);
        for (sql, says) in [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
                "uses column abalance",
            ),
            (
                "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
                "uses column abalance",
            ),
            (
                "select \"balance\" from Pgbench_Accounts",
                "uses column balance",
            ),
            ("select * from pgbench_accounts", "selects *"),
            ("select a.* from pgbench_accounts a", "selects *"),
            ("table pgbench_accounts", "TABLE"),
            (
                "insert into pgbench_accounts values (1, 1, 0, '')",
                "without a column list",
            ),
            (
                "insert into public.pgbench_accounts (aid, bid) values (1, 1)",
                "inserts without naming",
            ),
            ("copy pgbench_accounts from stdin", "without a column list"),
        ] {
            match verdict(&r, sql) {
                Rewrite::Refused(refusal) => {
                    assert_eq!(refusal.code, "0A000");
                    assert!(refusal.message.contains(says), "{sql}: {}", refusal.message);
                    assert!(
                        refusal.message.contains("migration \"accounts_balance\""),
                        "{}",
                        refusal.message
                    );
                    assert!(
                        refusal.message.contains("phase expanded"),
                        "{}",
                        refusal.message
                    );
                }
                other => panic!("{sql}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_phase_matters_where_it_should() {
        let planned = rewriter(Phase::Planned);
        let sql = "insert into pgbench_accounts (aid, bid) values (1, 1)";
        assert_eq!(
            verdict(&planned, sql),
            Rewrite::Unchanged,
            "no new column yet"
        );
        let done = rewriter(Phase::Complete);
        assert_eq!(
            verdict(&done, "select abalance from pgbench_accounts"),
            Rewrite::Unchanged
        );
    }
}
