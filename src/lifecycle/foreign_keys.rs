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
//! actions, match type and deferrability carry over.
//!
//! Foreign keys of other tables (or of the table itself) that *reference*
//! `a` move at `contract`, once `b` holds `up(a)` everywhere and has the
//! copy of `a`'s unique index: each is added again referencing `b`
//! (`NOT VALID`, then `VALIDATE CONSTRAINT`, which lets writes go on), and
//! the original is dropped in the same transaction as `a`.

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::Token;
use tokio_postgres::Client;

use super::ddl::{self, Constraint};
use crate::rewrite::migration::quote_ident;
use crate::rewrite::text::names;
use crate::rewrite::text::{splice, tokenize, Edit, Tok};

/// The foreign keys of `table` whose referencing columns include `column`
/// (copies made by pgshift left out).
pub async fn foreign_keys_of(
    client: &Client,
    table: &str,
    column: &str,
) -> Result<Vec<Constraint>, tokio_postgres::Error> {
    ddl::constraints_using(client, table, column, "f").await
}

/// A foreign key of another table (or of this one) that references the
/// old column.
#[derive(Debug, Clone)]
pub struct ReferencingKey {
    pub name: String,
    /// The referencing table, qualified and quoted (`regclass` text).
    pub table: String,
    /// `pg_get_constraintdef`: `FOREIGN KEY (…) REFERENCES t(…) …`.
    pub definition: String,
    /// Whether the constraint is validated.
    pub validated: bool,
}

impl ReferencingKey {
    /// `ALTER TABLE referencing DROP CONSTRAINT name`.
    pub fn drop_statement(&self) -> String {
        format!(
            "alter table {} drop constraint {}",
            self.table,
            quote_ident(&self.name)
        )
    }
}

/// Whose foreign keys [`referencing`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MadeBy {
    /// The table's own keys, pgshift's copies left out.
    Users,
    /// pgshift's copies (made at contract), for a rollback to drop before
    /// the column they reference goes.
    Pgshift,
}

/// The foreign keys that reference `column` of `table` (`contype = 'f'`,
/// `confkey` includes it), made by `made_by`.
pub async fn referencing(
    client: &Client,
    table: &str,
    column: &str,
    made_by: MadeBy,
) -> Result<Vec<ReferencingKey>, tokio_postgres::Error> {
    let copies = made_by == MadeBy::Pgshift;
    let rows = client
        .query(
            "select c.conname::text, c.conrelid::regclass::text, pg_get_constraintdef(c.oid), c.convalidated
               from pg_constraint c
               join pg_attribute a on a.attrelid = c.confrelid and a.attnum = any(c.confkey)
              where c.confrelid = $1::text::regclass and c.contype = 'f' and a.attname = $2
                and (c.conname like '%\\_pgshift\\_%') = $3
              order by 2, 1",
            &[&table, &column, &copies],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ReferencingKey {
            name: r.get(0),
            table: r.get(1),
            definition: r.get(2),
            validated: r.get(3),
        })
        .collect())
}

/// Edits replacing each token naming `from` by `to`.
fn column_edits(tokens: &[Tok], from: &str, to: &str) -> Vec<Edit> {
    tokens
        .iter()
        .filter(|t| names(&t.token, from))
        .map(|t| Edit {
            start: t.start,
            end: t.end,
            text: quote_ident(to),
        })
        .collect()
}

/// `alter table {table} add constraint {name} <definition edited> NOT
/// VALID` (a NOT VALID already in the definition is not repeated).
fn copied_constraint(
    table: &str,
    definition: &str,
    new_name: &str,
    mut edits: Vec<Edit>,
) -> Option<String> {
    if edits.is_empty() {
        return None;
    }
    let copied = splice(definition, &mut edits)?;
    Some(ddl::add_not_valid(table, new_name, &copied))
}

/// The copies (not yet validated) on `table` for new column `to`: foreign
/// keys and CHECK constraints.
pub async fn unvalidated_copies(
    client: &Client,
    table: &str,
    to: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select c.conname::text from pg_constraint c
               join pg_attribute a on a.attrelid = c.conrelid and a.attnum = any(c.conkey)
              where c.conrelid = $1::text::regclass and c.contype in ('f', 'c') and not c.convalidated
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

/// Which of a foreign key's two column lists a copy changes.
#[derive(Clone, Copy)]
pub enum Side {
    /// Its own columns, `FOREIGN KEY (…)`: the key is on the migrating table.
    Own,
    /// The columns it references, `REFERENCES t (…)`: the key is on
    /// another table and references the migrating one.
    Referenced,
}

/// `ALTER TABLE table ADD CONSTRAINT new_name <definition with from → to
/// in the `side` list> NOT VALID`; `None` when the definition is not a
/// foreign key naming `from` in that list.
pub fn copy_statement(
    side: Side,
    table: &str,
    definition: &str,
    new_name: &str,
    (from, to): (&str, &str),
) -> Option<String> {
    let tokens = tokenize(definition).ok()?;
    let list = match side {
        Side::Own => own_columns(&tokens)?,
        Side::Referenced => referenced_columns(&tokens)?,
    };
    let edits = column_edits(&tokens[list], from, to);
    copied_constraint(table, definition, new_name, edits)
}

/// The tokens between the parentheses of `FOREIGN KEY (…)`.
fn own_columns(tokens: &[Tok]) -> Option<std::ops::Range<usize>> {
    let is = |k: usize, keyword: Keyword| matches!(tokens.get(k).map(|t| &t.token), Some(Token::Word(w)) if w.keyword == keyword);
    if !is(0, Keyword::FOREIGN) || !is(1, Keyword::KEY) {
        return None;
    }
    if tokens.get(2).map(|t| &t.token) != Some(&Token::LParen) {
        return None;
    }
    let close = (3..tokens.len()).find(|&k| tokens[k].token == Token::RParen)?;
    Some(3..close)
}

/// The tokens between the parentheses after `REFERENCES t`.
fn referenced_columns(tokens: &[Tok]) -> Option<std::ops::Range<usize>> {
    let references = tokens
        .iter()
        .position(|t| matches!(&t.token, Token::Word(w) if w.keyword == Keyword::REFERENCES))?;
    let open = (references..tokens.len()).find(|&k| tokens[k].token == Token::LParen)?;
    let close = (open..tokens.len()).find(|&k| tokens[k].token == Token::RParen)?;
    Some(open + 1..close)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_referencing_columns_change() {
        assert_eq!(
            copy_statement(
                Side::Own,
                "public.child",
                "FOREIGN KEY (parent_id) REFERENCES parent(parent_id) ON DELETE CASCADE",
                "child_parent_id_fkey_pgshift_parent_ref",
                ("parent_id", "parent_ref")
            )
            .as_deref(),
            Some("alter table public.child add constraint child_parent_id_fkey_pgshift_parent_ref FOREIGN KEY (parent_ref) REFERENCES parent(parent_id) ON DELETE CASCADE NOT VALID")
        );
        assert_eq!(
            copy_statement(
                Side::Own,
                "t",
                "FOREIGN KEY (x, a) REFERENCES p(x, a) MATCH FULL DEFERRABLE NOT VALID",
                "fk_b",
                ("a", "b")
            )
            .as_deref(),
            Some("alter table t add constraint fk_b FOREIGN KEY (x, b) REFERENCES p(x, a) MATCH FULL DEFERRABLE NOT VALID")
        );
        assert_eq!(
            copy_statement(
                Side::Own,
                "t",
                "FOREIGN KEY (x) REFERENCES p(a)",
                "n",
                ("a", "b")
            ),
            None
        );
        assert_eq!(
            copy_statement(Side::Own, "t", "CHECK (a > 0)", "n", ("a", "b")),
            None
        );
    }

    #[test]
    fn only_the_referenced_columns_change() {
        assert_eq!(
            copy_statement(
                Side::Referenced,
                "public.child",
                "FOREIGN KEY (a, x) REFERENCES parent(x, a) ON UPDATE CASCADE DEFERRABLE INITIALLY DEFERRED",
                "child_fk_pgshift_b",
                ("a", "b")
            )
            .as_deref(),
            Some("alter table public.child add constraint child_fk_pgshift_b FOREIGN KEY (a, x) REFERENCES parent(x, b) ON UPDATE CASCADE DEFERRABLE INITIALLY DEFERRED NOT VALID")
        );
        assert_eq!(
            copy_statement(
                Side::Referenced,
                "c",
                "FOREIGN KEY (a) REFERENCES \"Odd\".\"a\"(\"a\")",
                "n",
                ("a", "New")
            )
            .as_deref(),
            Some("alter table c add constraint n FOREIGN KEY (a) REFERENCES \"Odd\".\"a\"(\"New\") NOT VALID")
        );
        assert_eq!(
            copy_statement(
                Side::Referenced,
                "c",
                "FOREIGN KEY (a) REFERENCES p(x)",
                "n",
                ("a", "b")
            ),
            None
        );
    }
}
