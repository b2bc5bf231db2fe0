//! Copying the indexes that use the old column onto the new one at
//! `expand`: plain, multi-column, expression and partial indexes alike,
//! with their method, operator classes, collations, sort order, INCLUDE
//! list and uniqueness, each built `CONCURRENTLY` so writes go on.
//!
//! An index is copied from Postgres's own definition (`pg_get_indexdef`):
//! the column is replaced token by token wherever the definition names it
//! as a column (not as a function, a type or a qualified field), and the
//! statement becomes `CREATE … INDEX CONCURRENTLY IF NOT EXISTS`. A
//! primary key's index is copied too (as a unique index: the backfill
//! still walks the original); at contract the copy becomes the primary
//! key (`ADD PRIMARY KEY USING INDEX`) in the transaction that drops `a`.

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::Token;
use tokio_postgres::Client;

use crate::rewrite::migration::quote_ident;
use crate::rewrite::text::names;
use crate::rewrite::text::{splice, tokenize, Edit};

/// An index that uses the old column, as Postgres defines it.
#[derive(Debug, Clone)]
pub struct IndexDef {
    pub name: String,
    /// `pg_get_indexdef`: `CREATE [UNIQUE] INDEX name ON table USING …`.
    pub definition: String,
}

/// The valid indexes of `table` (the primary key's included) whose keys,
/// expressions or predicate use `column` (an index backing a constraint
/// has no column dependencies of its own: its keys are read from
/// `indkey`).
pub async fn indexes_using(
    client: &Client,
    table: &str,
    column: &str,
) -> Result<Vec<IndexDef>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select ic.relname::text, pg_get_indexdef(i.indexrelid)
               from pg_index i
               join pg_class ic on ic.oid = i.indexrelid
              where i.indrelid = $1::text::regclass and i.indisvalid
                and exists (select 1 from pg_attribute a
                             where a.attrelid = i.indrelid and a.attname = $2
                               and (a.attnum = any(i.indkey)
                                    -- expressions and predicates
                                    or exists (select 1 from pg_depend d
                                                where d.classid = 'pg_class'::regclass
                                                  and d.objid = i.indexrelid
                                                  and d.refobjid = i.indrelid
                                                  and d.refobjsubid = a.attnum)))
              order by 1",
            &[&table, &column],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| IndexDef {
            name: r.get(0),
            definition: r.get(1),
        })
        .collect())
}

/// The unique constraints of `table` that use `column`, and the copy of
/// each one's index on `to` when that exists and is valid: (constraint,
/// copied index). At contract each copy becomes a constraint again
/// (`ADD CONSTRAINT … UNIQUE USING INDEX`), so `b` ends with the
/// constraint `a` had, not only its index.
pub async fn unique_constraints_to_carry(
    client: &Client,
    table: &str,
    column: &str,
    to: &str,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    index_copies_of(client, table, column, to, "u").await
}

/// The primary key of `table` when it includes `column` and the copy of
/// its index on `to` exists and is valid: (constraint, copy).
pub async fn primary_key_to_carry(
    client: &Client,
    table: &str,
    column: &str,
    to: &str,
) -> Result<Option<(String, String)>, tokio_postgres::Error> {
    Ok(index_copies_of(client, table, column, to, "p")
        .await?
        .into_iter()
        .next())
}

/// The constraints of kind `kind` (`contype`) on `table` that use `column`
/// and have a valid copy of their index on `to`: (constraint, copy).
async fn index_copies_of(
    client: &Client,
    table: &str,
    column: &str,
    to: &str,
    kind: &str,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select c.conname::text, ic.relname::text
               from pg_constraint c
               join pg_class ic on ic.oid = c.conindid
               join pg_attribute a on a.attrelid = c.conrelid and a.attnum = any(c.conkey)
              where c.conrelid = $1::text::regclass and c.contype::text = $3 and a.attname = $2
              order by 1",
            &[&table, &column, &kind],
        )
        .await?;
    let mut out = Vec::new();
    for row in rows {
        let (constraint, index): (String, String) = (row.get(0), row.get(1));
        let copy = copy_name(&index, to);
        if valid_index(client, table, &copy).await? {
            out.push((constraint, copy));
        }
    }
    Ok(out)
}

/// Whether `table` has a valid index named `name`.
async fn valid_index(
    client: &Client,
    table: &str,
    name: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            "select 1 from pg_index i join pg_class c on c.oid = i.indexrelid
              where i.indrelid = $1::text::regclass and c.relname = $2 and i.indisvalid",
            &[&table, &name],
        )
        .await?
        .is_some())
}

/// The name of the copy of index `name` on column `to` (at most 63 bytes).
pub fn copy_name(name: &str, to: &str) -> String {
    let mut out = format!("{name}_pgshift_{to}");
    while out.len() > 63 {
        out.pop();
    }
    out
}

/// `definition` rebuilt as `CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT
/// EXISTS new_name …` with column `from` replaced by `to`; `None` when the
/// definition is not the shape `pg_get_indexdef` gives or never names
/// `from` as a column.
pub fn copy_statement(definition: &str, new_name: &str, from: &str, to: &str) -> Option<String> {
    let tokens = tokenize(definition).ok()?;
    let word = |k: usize| match tokens.get(k).map(|t| &t.token) {
        Some(Token::Word(w)) => Some(w),
        _ => None,
    };
    // CREATE [UNIQUE] INDEX name ON …
    let mut k = 0;
    if word(k)?.keyword != Keyword::CREATE {
        return None;
    }
    k += 1;
    if word(k)?.keyword == Keyword::UNIQUE {
        k += 1;
    }
    if word(k)?.keyword != Keyword::INDEX {
        return None;
    }
    let name = tokens.get(k + 1)?;
    word(k + 1)?;
    let using =
        (k + 2..tokens.len()).find(|&i| word(i).is_some_and(|w| w.keyword == Keyword::USING))?;
    let mut edits = vec![Edit {
        start: name.start,
        end: name.end,
        text: format!("CONCURRENTLY IF NOT EXISTS {}", quote_ident(new_name)),
    }];
    for i in using + 2..tokens.len() {
        let names_column = names(&tokens[i].token, from);
        let prev = i.checked_sub(1).map(|j| &tokens[j].token);
        let next = tokens.get(i + 1).map(|t| &t.token);
        let is_column = names_column
            && !matches!(prev, Some(Token::Period | Token::DoubleColon))
            && !matches!(next, Some(Token::LParen | Token::Period));
        if is_column {
            edits.push(Edit {
                start: tokens[i].start,
                end: tokens[i].end,
                text: quote_ident(to),
            });
        }
    }
    if edits.len() == 1 {
        return None;
    }
    splice(definition, &mut edits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_index_is_copied_onto_the_new_column() {
        let cases = [
            (
                "CREATE INDEX t_a_idx ON public.t USING btree (a)",
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_a_idx_pgshift_b ON public.t USING btree (b)",
            ),
            (
                "CREATE UNIQUE INDEX t_x_a_idx ON public.t USING btree (x, a DESC NULLS LAST) INCLUDE (note)",
                "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_x_a_idx_pgshift_b ON public.t USING btree (x, b DESC NULLS LAST) INCLUDE (note)",
            ),
            (
                "CREATE INDEX t_lower ON public.t USING btree (lower((a)::text) text_pattern_ops) WHERE (a IS NOT NULL)",
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_lower_pgshift_b ON public.t USING btree (lower((b)::text) text_pattern_ops) WHERE (b IS NOT NULL)",
            ),
            (
                "CREATE INDEX t_part ON public.t USING btree (id) WHERE (a > 0)",
                "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_part_pgshift_b ON public.t USING btree (id) WHERE (b > 0)",
            ),
        ];
        for (definition, expected) in cases {
            let name = definition
                .split_whitespace()
                .nth(if definition.contains("UNIQUE") { 3 } else { 2 })
                .unwrap();
            assert_eq!(
                copy_statement(definition, &copy_name(name, "b"), "a", "b").as_deref(),
                Some(expected),
                "{definition}"
            );
        }
    }

    #[test]
    fn functions_types_and_fields_named_like_the_column_stay() {
        // A function `a(…)`, a type `a`, a field `(r).a`, the table `a`.
        let out = copy_statement(
            "CREATE INDEX i ON public.a USING btree (a(a), (a)::a, ((r).a))",
            "i_b",
            "a",
            "b",
        );
        assert_eq!(
            out.as_deref(),
            Some("CREATE INDEX CONCURRENTLY IF NOT EXISTS i_b ON public.a USING btree (a(b), (b)::a, ((r).a))")
        );
        assert_eq!(
            copy_statement("CREATE INDEX i ON t USING btree (x)", "i_b", "a", "b"),
            None
        );
        assert_eq!(copy_statement("DROP TABLE t", "i_b", "a", "b"), None);
        assert_eq!(copy_name(&"n".repeat(60), "balance").len(), 63);
    }
}
