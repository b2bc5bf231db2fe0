//! Carrying the foreign keys the old column takes part in over to the new
//! one, so `b` ends up constrained exactly as `a` was.
//!
//! At `expand` each foreign key of the table whose own columns include `a`
//! is added again with `b` in `a`'s place, as `NOT VALID` (enforced for
//! every new write at once — the dual writes satisfy it because `a` does —
//! without scanning the table under a lock); at `contract`, before `a` is
//! dropped, each copy is validated (`VALIDATE CONSTRAINT` takes a lock that
//! lets reads and writes go on). The definition comes from Postgres
//! (`pg_get_constraintdef`) with only the referencing column list changed:
//! actions, match type and deferrability carry over. Foreign keys of other
//! tables that reference `a` are not moved (they would need a unique key on
//! `b` and a re-pointed constraint).

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::Token;
use tokio_postgres::Client;

use crate::rewrite::migration::quote_ident;
use crate::rewrite::plan::names;
use crate::rewrite::text::{splice, tokenize, Edit};

/// A foreign key of the table that includes the old column.
#[derive(Debug, Clone)]
pub struct ForeignKey {
    pub name: String,
    /// `pg_get_constraintdef`: `FOREIGN KEY (…) REFERENCES …`.
    pub definition: String,
}

/// The foreign keys of `table` whose referencing columns include `column`
/// (copies made by pgshift left out).
pub async fn foreign_keys_of(
    client: &Client,
    table: &str,
    column: &str,
) -> Result<Vec<ForeignKey>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select c.conname::text, pg_get_constraintdef(c.oid)
               from pg_constraint c
               join pg_attribute a on a.attrelid = c.conrelid and a.attnum = any(c.conkey)
              where c.conrelid = $1::text::regclass and c.contype = 'f' and a.attname = $2
                and c.conname not like '%\\_pgshift\\_%'
              order by 1",
            &[&table, &column],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ForeignKey {
            name: r.get(0),
            definition: r.get(1),
        })
        .collect())
}

/// The copies (not yet validated) on `table` for new column `to`.
pub async fn unvalidated_copies(
    client: &Client,
    table: &str,
    to: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select c.conname::text from pg_constraint c
               join pg_attribute a on a.attrelid = c.conrelid and a.attnum = any(c.conkey)
              where c.conrelid = $1::text::regclass and c.contype = 'f' and not c.convalidated
                and a.attname = $2 and c.conname like '%\\_pgshift\\_%'
              order by 1",
            &[&table, &to],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The name of the copy of constraint `name` for column `to` (≤ 63 bytes).
pub fn copy_name(name: &str, to: &str) -> String {
    super::indexes::copy_name(name, to)
}

/// `ALTER TABLE table ADD CONSTRAINT new_name <definition with from → to>
/// NOT VALID`; `None` when the definition is not a foreign key naming
/// `from` among its own columns.
pub fn copy_statement(
    table: &str,
    definition: &str,
    new_name: &str,
    from: &str,
    to: &str,
) -> Option<String> {
    let tokens = tokenize(definition).ok()?;
    let is = |k: usize, keyword: Keyword| matches!(tokens.get(k).map(|t| &t.token), Some(Token::Word(w)) if w.keyword == keyword);
    if !is(0, Keyword::FOREIGN) || !is(1, Keyword::KEY) {
        return None;
    }
    if tokens.get(2).map(|t| &t.token) != Some(&Token::LParen) {
        return None;
    }
    let close = (3..tokens.len()).find(|&k| tokens[k].token == Token::RParen)?;
    let mut edits = Vec::new();
    for t in &tokens[3..close] {
        if names(&t.token, from) {
            edits.push(Edit {
                start: t.start,
                end: t.end,
                text: quote_ident(to),
            });
        }
    }
    if edits.is_empty() {
        return None;
    }
    let copied = splice(definition, &mut edits)?;
    // A NOT VALID already in the definition (the original was never
    // validated) is not repeated.
    let not_valid = if copied.ends_with("NOT VALID") {
        ""
    } else {
        " NOT VALID"
    };
    Some(format!(
        "alter table {table} add constraint {} {copied}{not_valid}",
        quote_ident(new_name)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_referencing_columns_change() {
        assert_eq!(
            copy_statement(
                "public.child",
                "FOREIGN KEY (parent_id) REFERENCES parent(parent_id) ON DELETE CASCADE",
                "child_parent_id_fkey_pgshift_parent_ref",
                "parent_id",
                "parent_ref"
            )
            .as_deref(),
            Some("alter table public.child add constraint child_parent_id_fkey_pgshift_parent_ref FOREIGN KEY (parent_ref) REFERENCES parent(parent_id) ON DELETE CASCADE NOT VALID")
        );
        assert_eq!(
            copy_statement(
                "t",
                "FOREIGN KEY (x, a) REFERENCES p(x, a) MATCH FULL DEFERRABLE NOT VALID",
                "fk_b",
                "a",
                "b"
            )
            .as_deref(),
            Some("alter table t add constraint fk_b FOREIGN KEY (x, b) REFERENCES p(x, a) MATCH FULL DEFERRABLE NOT VALID")
        );
        assert_eq!(
            copy_statement("t", "FOREIGN KEY (x) REFERENCES p(a)", "n", "a", "b"),
            None
        );
        assert_eq!(copy_statement("t", "CHECK (a > 0)", "n", "a", "b"), None);
    }
}
