//! `set_not_null` and `drop_not_null`, the catalog operations on a
//! column's NOT NULL, done the scan-free way of [`super::not_null`]:
//!
//! - `set_not_null`: at expand, `CHECK (c IS NOT NULL) NOT VALID` (new
//!   writes checked at once; refused while rows hold NULL, since such a
//!   check fails every later UPDATE of those rows — with `up`, those rows
//!   are given it first, in batches); at validate, the check
//!   validated without blocking writes; at contract, `SET NOT NULL` (proven
//!   by the check: no scan under the exclusive lock) and the check dropped.
//!   Rollback takes off whatever of it is there, NOT NULL included.
//! - `drop_not_null`: checked at expand, dropped at contract.

use tokio_postgres::Client;

use super::not_null::{self, AndCheck};
use super::{ddl, ActionError, Lifecycle};
use crate::rewrite::migration::{quote_ident, TableName};

impl Lifecycle {
    /// At `POST /migrations` and expand: the column exists and is (for
    /// `set`) nullable, or (for a drop) NOT NULL and outside the primary key.
    pub(super) async fn check_not_null_op(
        &self,
        client: &Client,
        table: &TableName,
        column: &str,
        set: bool,
    ) -> Result<(), ActionError> {
        let t = table.to_string();
        let c = quote_ident(column);
        let is = Self::existing_column(client, &t, column).await?.not_null;
        if set && is {
            return Err(ActionError::Conflict(format!(
                "column {c} of {t} is NOT NULL already"
            )));
        }
        if !set && !is {
            return Err(ActionError::Conflict(format!(
                "column {c} of {t} is nullable already"
            )));
        }
        if !set {
            let in_key: bool = client
                .query_one(
                    "select exists (select 1 from pg_constraint k join pg_attribute a
                       on a.attrelid = k.conrelid and a.attnum = any(k.conkey)
                      where k.conrelid = $1::text::regclass and k.contype = 'p' and a.attname = $2)",
                    &[&t, &column],
                )
                .await?
                .get(0);
            if in_key {
                return Err(ActionError::Conflict(format!(
                    "column {c} of {t} is in the primary key, whose columns stay NOT NULL"
                )));
            }
        }
        Ok(())
    }

    /// `set_not_null` at expand: the NOT VALID check, once no row holds
    /// NULL (with a fill, the rows holding NULL are given it first).
    pub(super) async fn expand_set_not_null(
        &self,
        client: &Client,
        table: &TableName,
        column: &str,
        fill: Option<&str>,
    ) -> Result<String, ActionError> {
        let t = table.to_string();
        let c = quote_ident(column);
        let check = not_null::check_name(column);
        let exists: bool = client
            .query_one(
                "select exists (select 1 from pg_constraint where conrelid = $1::text::regclass and conname = $2)",
                &[&t, &check],
            )
            .await?
            .get(0);
        if !exists {
            self.check_not_null_op(client, table, column, true).await?;
            if let Some(fill) = fill {
                let filled = fill_nulls(client, &t, &c, fill).await?;
                tracing::info!(table = %t, column = %c, rows = filled, "rows holding NULL given the fill");
            }
            // A plain read: it takes no lock that holds back writes.
            let nulls: bool = client
                .query_one(
                    &format!("select exists (select 1 from {t} where {c} is null)"),
                    &[],
                )
                .await?
                .get(0);
            if nulls {
                return Err(ActionError::Conflict(format!(
                    "rows of {t} hold NULL in {c}: fill them first (UPDATE {t} SET {c} = … WHERE {c} IS NULL, in batches), then expand again; a NOT VALID check would fail every later UPDATE of those rows"
                )));
            }
            let sql = format!(
                "alter table {t} add constraint {} check ({c} is not null) not valid",
                quote_ident(&check)
            );
            ddl::run_with_lock_timeout(client, &sql, self.lock).await?;
        }
        Ok(format!(
            "CHECK ({c} IS NOT NULL) NOT VALID: new writes checked"
        ))
    }

    /// `set_not_null` at validate: the check proven over the rows.
    pub(super) async fn validate_set_not_null(
        &self,
        client: &Client,
        table: &TableName,
        column: &str,
    ) -> Result<String, ActionError> {
        let check = quote_ident(&not_null::check_name(column));
        let sql = format!("alter table {table} validate constraint {check}");
        ddl::run_with_lock_timeout(client, &sql, self.lock).await?;
        Ok(format!("{check} validated: no row holds NULL"))
    }

    /// `set_not_null` at contract: `SET NOT NULL`, proven by the check;
    /// `drop_not_null`: the NOT NULL dropped.
    pub(super) async fn contract_not_null(
        &self,
        client: &Client,
        table: &TableName,
        column: &str,
        set: bool,
    ) -> Result<String, ActionError> {
        let t = table.to_string();
        let c = quote_ident(column);
        if set {
            let check = not_null::check_name(column);
            not_null::set_proven(client, &t, column, &check, self.lock).await?;
            Ok(format!(
                "{c} SET NOT NULL (proven by the valid check, which is dropped)"
            ))
        } else {
            not_null::drop(client, &t, column, AndCheck::Keep, self.lock).await?;
            Ok(format!("{c} DROP NOT NULL"))
        }
    }

    /// `set_not_null` rolled back: its check and, after contract, the NOT
    /// NULL it set.
    pub(super) async fn rollback_set_not_null(
        &self,
        client: &Client,
        table: &TableName,
        column: &str,
        contracted: bool,
    ) -> Result<String, ActionError> {
        let t = table.to_string();
        let c = quote_ident(column);
        if contracted {
            not_null::drop(client, &t, column, AndCheck::Drop, self.lock).await?;
            return Ok(format!("{c}'s NOT NULL dropped"));
        }
        let check = quote_ident(&not_null::check_name(column));
        let sql = format!("alter table {t} drop constraint if exists {check}");
        ddl::run_with_lock_timeout(client, &sql, self.lock).await?;
        Ok(format!("{check} dropped"))
    }
}

/// Gives the rows of `t` holding NULL in `c` the `fill` (a constant
/// checked when the migration was registered), 1,000 rows a transaction;
/// the rows filled.
async fn fill_nulls(client: &Client, t: &str, c: &str, fill: &str) -> Result<u64, ActionError> {
    let batch = format!(
        "update {t} set {c} = ({fill}) where ctid = any(array(select ctid from {t} where {c} is null limit 1000))"
    );
    let mut total = 0;
    loop {
        let n = client.execute(batch.as_str(), &[]).await?;
        if n == 0 {
            return Ok(total);
        }
        total += n;
    }
}
