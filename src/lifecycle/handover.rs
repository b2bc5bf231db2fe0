//! Handing the old column's constraints and names over to the new one at
//! `contract`, so that once `a` is dropped `b` stands exactly where `a`
//! stood: referenced by the same foreign keys, the primary key if `a` was
//! in it, and every copied index and constraint under its original name.
//!
//! Two steps. [`move_referencing_keys`] runs before the contract changes
//! anything: each foreign key that references `a` (from another table or
//! from this one) is added again referencing `b` — `NOT VALID`, then
//! `VALIDATE CONSTRAINT`, which lets reads and writes go on — using the
//! copy of `a`'s unique index made at expand. A copy that Postgres refuses
//! (a type change the referencing column cannot follow) stops the contract
//! with the reason, before anything is dropped. [`key_transaction`] then
//! hands the keys over while both columns are still written: the original
//! referencing keys go, their copies take their names, and the copy of the
//! primary key's index becomes the primary key (`ADD PRIMARY KEY USING
//! INDEX`: no scan, `b` is already `NOT NULL`) — after which `a`'s NOT NULL
//! can be dropped before the rules stop writing `a`. [`final_transaction`]
//! drops `a` (with its indexes and constraints) and gives the copies the
//! originals' names.
//!
//! Exclusion constraints are the exception: Postgres can build one only
//! under a lock that stops writes for the whole build, so the contract
//! refuses while one uses `a` without an equivalent on `b`
//! ([`exclusion_constraints_left`]) and says what to add.

use std::collections::HashSet;

use sqlparser::tokenizer::Token;
use tokio_postgres::Client;

use super::ddl::{self, LockDiscipline};
use super::foreign_keys::{self, MadeBy};
use super::{indexes, ActionError};
use crate::rewrite::migration::{quote_ident, MigrationSpec};
use crate::rewrite::text::names;
use crate::rewrite::text::{splice, tokenize, Edit};

/// Adds a copy referencing `b` of every foreign key that references `a`
/// (validated when the original is), unless a validated copy is already
/// there. Fails with a 409 naming the key when Postgres refuses the copy;
/// the failed copy is removed.
pub async fn move_referencing_keys(
    client: &Client,
    spec: &MigrationSpec,
    lock: LockDiscipline,
) -> Result<(), ActionError> {
    let table = spec.table.to_string();
    let done: HashSet<(String, String)> =
        foreign_keys::referencing(client, &table, &spec.to, MadeBy::Pgshift)
            .await?
            .into_iter()
            .filter(|c| c.validated)
            .map(|c| (c.table, c.name))
            .collect();
    for fk in foreign_keys::referencing(client, &table, &spec.from, MadeBy::Users).await? {
        let name = foreign_keys::copy_name(&fk.name, &spec.to);
        if done.contains(&(fk.table.clone(), name.clone())) {
            continue;
        }
        let refuse = |why: String| {
            ActionError::Conflict(format!(
                "foreign key {} on {} references {}.{}; it could not be moved onto {}, so {} cannot be dropped: {why}",
                quote_ident(&fk.name),
                fk.table,
                table,
                quote_ident(&spec.from),
                quote_ident(&spec.to),
                quote_ident(&spec.from),
            ))
        };
        let Some(copy) = foreign_keys::copy_statement(
            foreign_keys::Side::Referenced,
            &fk.table,
            &fk.definition,
            &name,
            (&spec.from, &spec.to),
        ) else {
            return Err(refuse(format!(
                "its definition could not be read ({})",
                fk.definition
            )));
        };
        let drop = format!(
            "alter table {} drop constraint if exists {}",
            fk.table,
            quote_ident(&name)
        );
        let mut added = ddl::run_with_lock_timeout(client, &format!("{drop}; {copy}"), lock).await;
        if added.is_ok() && fk.validated {
            added = ddl::run_with_lock_timeout(
                client,
                &format!(
                    "alter table {} validate constraint {}",
                    fk.table,
                    quote_ident(&name)
                ),
                lock,
            )
            .await;
        }
        if let Err(e) = added {
            let _ = ddl::run_with_lock_timeout(client, &drop, lock).await;
            return Err(refuse(e.to_string()));
        }
        tracing::info!(constraint = %fk.name, table = %fk.table, copy = %name, "foreign key referencing the old column copied onto the new one");
    }
    Ok(())
}

/// The statements of the transaction that hands `a`'s keys over to `b`
/// while both columns exist and are written: the original keys referencing
/// `a` are dropped and their copies (referencing `b`) take their names,
/// and the copy of the primary key's index becomes the primary key (`ADD
/// PRIMARY KEY USING INDEX`: no scan, `b` is already `NOT NULL`; the index
/// takes the constraint's name). Empty when `a` is in no key. After it,
/// nothing keeps `a`'s NOT NULL from being dropped.
pub async fn key_transaction(
    client: &Client,
    spec: &MigrationSpec,
) -> Result<Vec<String>, ActionError> {
    let table = spec.table.to_string();
    let referencing = foreign_keys::referencing(client, &table, &spec.from, MadeBy::Users).await?;
    let mut sql: Vec<String> = referencing
        .iter()
        .map(foreign_keys::ReferencingKey::drop_statement)
        .collect();
    if let Some((constraint, index)) =
        indexes::primary_key_to_carry(client, &table, &spec.from, &spec.to).await?
    {
        sql.push(format!(
            "alter table {table} drop constraint {c}; alter table {table} add constraint {c} primary key using index {}",
            quote_ident(&index),
            c = quote_ident(&constraint),
        ));
    }
    for fk in &referencing {
        sql.push(format!(
            "alter table {} rename constraint {} to {}",
            fk.table,
            quote_ident(&foreign_keys::copy_name(&fk.name, &spec.to)),
            quote_ident(&fk.name)
        ));
    }
    Ok(sql)
}

/// The statements of the transaction that drops `a` (with its indexes and
/// constraints) and gives every copy on `b` its original's name.
pub async fn final_transaction(
    client: &Client,
    spec: &MigrationSpec,
) -> Result<Vec<String>, ActionError> {
    let table = spec.table.to_string();
    let schema = quote_ident(&spec.table.schema);
    let existing = constraint_names(client, &table).await?;
    let mut sql = vec![format!(
        "alter table {table} drop column {}",
        quote_ident(&spec.from)
    )];
    // Copied indexes (not those now backing a constraint: the constraint's
    // rename renames its index too).
    for index in indexes::indexes_using(client, &table, &spec.from).await? {
        let copy = indexes::copy_name(&index.name, &spec.to);
        let exists = ddl::invalid_index(client, &spec.table.schema, &copy)
            .await?
            .is_some();
        if !existing.contains(&copy) && exists {
            sql.push(format!(
                "alter index {schema}.{} rename to {}",
                quote_ident(&copy),
                quote_ident(&index.name)
            ));
        }
    }
    // Unique constraints carried at contract, the table's own foreign keys
    // and checks copied at expand.
    for own in ddl::constraints_using(client, &table, &spec.from, "ufc").await? {
        let name = own.name;
        let copy = foreign_keys::copy_name(&name, &spec.to);
        if existing.contains(&copy) {
            sql.push(format!(
                "alter table {table} rename constraint {} to {}",
                quote_ident(&copy),
                quote_ident(&name)
            ));
        }
    }
    Ok(sql)
}

/// Exclusion constraints that use `a` and have no equivalent on `b` yet:
/// (name, the same constraint on `b`). Postgres builds an exclusion
/// constraint only under a lock that blocks writes for the whole build and
/// cannot take over an existing index for one, so pgshift does not build
/// it; the contract refuses to drop `a` (and with it the constraint) until
/// the operator has added it on `b` or says to drop it.
pub async fn exclusion_constraints_left(
    client: &Client,
    spec: &MigrationSpec,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select c.conname::text, pg_get_constraintdef(c.oid),
                    exists (select 1 from pg_attribute a
                             where a.attrelid = c.conrelid and a.attname = $2
                               and a.attnum = any(c.conkey))
               from pg_constraint c
              where c.conrelid = $1::text::regclass and c.contype = 'x'
              order by 1",
            &[&spec.table.to_string(), &spec.from],
        )
        .await?;
    let all: Vec<(String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    Ok(all
        .iter()
        .filter(|(_, _, uses_a)| *uses_a)
        .filter_map(|(name, definition, _)| {
            let on_b = replace_column(definition, &spec.from, &spec.to)?;
            let carried = all.iter().any(|(_, d, _)| *d == on_b);
            (!carried).then(|| (name.clone(), on_b))
        })
        .collect())
}

/// `definition` with every token naming column `from` replaced by `to` —
/// not a type after `::`, a field after `.` or a function before `(`.
pub fn replace_column(definition: &str, from: &str, to: &str) -> Option<String> {
    replace_column_with(definition, from, &quote_ident(to))
}

/// [`replace_column`] with the text `replacement` (an expression) in
/// place of each reference to `from`.
pub fn replace_column_with(definition: &str, from: &str, replacement: &str) -> Option<String> {
    let tokens = tokenize(definition).ok()?;
    let is = |k: Option<usize>, token: Token| {
        k.and_then(|k| tokens.get(k))
            .is_some_and(|t| t.token == token)
    };
    let mut edits: Vec<Edit> = tokens
        .iter()
        .enumerate()
        .filter(|&(k, t)| {
            names(&t.token, from)
                && !is(k.checked_sub(1), Token::DoubleColon)
                && !is(k.checked_sub(1), Token::Period)
                && !is(Some(k + 1), Token::LParen)
        })
        .map(|(_, t)| t)
        .map(|t| Edit {
            start: t.start,
            end: t.end,
            text: replacement.to_string(),
        })
        .collect();
    splice(definition, &mut edits)
}

/// The names of `table`'s constraints.
pub async fn constraint_names(
    client: &Client,
    table: &str,
) -> Result<HashSet<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select conname::text from pg_constraint where conrelid = $1::text::regclass",
            &[&table],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
