//! The old column's NOT NULL across a migration, moved so that no write a
//! client's shape allows ever fails on its account.
//!
//! - **validate** carries it to `b`: `CHECK (b IS NOT NULL) NOT VALID`,
//!   then `VALIDATE CONSTRAINT`. Not earlier: a NOT VALID check is enforced
//!   on every new row version, so added at expand it would fail every
//!   UPDATE of a row the backfill had not reached yet, whatever column the
//!   UPDATE set. Once the backfill is done every row has `b` and the dual
//!   write keeps it filled.
//! - **contract** sets `NOT NULL` on `b` (no table scan: the valid check
//!   proves it) and drops the check, then drops `a`'s NOT NULL before the
//!   rules stop writing `a`, so an INSERT in between cannot fail on it.
//! - **rollback** takes `b`'s NOT NULL (or its check) off while writes
//!   still reach `b` — once they stop, an INSERT would fail on it in the
//!   moment before `b` is dropped — and puts `a`'s back the same scan-free
//!   way, when a contract that stopped short had dropped it.
//!
//! Every ALTER runs under the lock discipline of [`super::ddl`].

use tokio_postgres::Client;

use super::ddl::{self, DdlError, LockDiscipline};
use crate::rewrite::migration::quote_ident;

/// The name of pgshift's NOT NULL check on `column` (at most 63 bytes).
pub fn check_name(column: &str) -> String {
    let mut name = format!("pgshift_{column}_not_null");
    while name.len() > 63 {
        name.pop();
    }
    name
}

/// Adds (unless it is there) and validates `CHECK (column IS NOT NULL)` on
/// `table`; returns its name.
pub async fn add_valid_check(
    client: &Client,
    table: &str,
    column: &str,
    lock: LockDiscipline,
) -> Result<String, DdlError> {
    let name = check_name(column);
    let (c, q) = (quote_ident(&name), quote_ident(column));
    let exists = client
        .query_opt(
            "select 1 from pg_constraint where conrelid = $1::text::regclass and conname = $2",
            &[&table, &name],
        )
        .await
        .map_err(|source| DdlError::Failed {
            sql: format!("(looking for constraint {c})"),
            source,
        })?
        .is_some();
    if !exists {
        ddl::run_with_lock_timeout(
            client,
            &format!("alter table {table} add constraint {c} check ({q} is not null) not valid"),
            lock,
        )
        .await?;
    }
    // SHARE UPDATE EXCLUSIVE: reads and writes go on while it scans.
    ddl::run_with_lock_timeout(
        client,
        &format!("alter table {table} validate constraint {c}"),
        lock,
    )
    .await?;
    Ok(name)
}

/// `SET NOT NULL` on `column`, proven by the valid check `check`, which is
/// then dropped.
pub async fn set_proven(
    client: &Client,
    table: &str,
    column: &str,
    check: &str,
    lock: LockDiscipline,
) -> Result<(), DdlError> {
    ddl::run_with_lock_timeout(
        client,
        &format!(
            "alter table {table} alter column {} set not null; alter table {table} drop constraint if exists {}",
            quote_ident(column),
            quote_ident(check)
        ),
        lock,
    )
    .await?;
    Ok(())
}

/// What [`drop`] takes off a column besides its NOT NULL.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AndCheck {
    /// Only the NOT NULL (the old column at contract).
    Keep,
    /// pgshift's own `IS NOT NULL` check too (the new column at rollback).
    Drop,
}

/// Drops `column`'s NOT NULL, and pgshift's check on it when asked (catalog
/// changes, no scan).
pub async fn drop(
    client: &Client,
    table: &str,
    column: &str,
    check: AndCheck,
    lock: LockDiscipline,
) -> Result<(), DdlError> {
    let mut sql = String::new();
    if check == AndCheck::Drop {
        let name = quote_ident(&check_name(column));
        sql = format!("alter table {table} drop constraint if exists {name}; ");
    }
    let column = quote_ident(column);
    sql.push_str(&format!(
        "alter table {table} alter column {column} drop not null"
    ));
    ddl::run_with_lock_timeout(client, &sql, lock).await?;
    Ok(())
}

/// Puts `column`'s NOT NULL back without a scan under an exclusive lock:
/// a valid check first, then `SET NOT NULL`.
pub async fn restore(
    client: &Client,
    table: &str,
    column: &str,
    lock: LockDiscipline,
) -> Result<(), DdlError> {
    let check = add_valid_check(client, table, column, lock).await?;
    set_proven(client, table, column, &check, lock).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_fit_an_identifier() {
        assert_eq!(check_name("full_name"), "pgshift_full_name_not_null");
        assert_eq!(check_name(&"x".repeat(70)).len(), 63);
    }
}
