//! The backfill and the parity check: `b := up(a)` over the table in key
//! order, one batch per transaction with the cursor and counters committed
//! in the same transaction; and `b IS DISTINCT FROM up(a)` counted range by
//! range, never in one long transaction.
//!
//! The backfill cannot overwrite a newer value with an older one: each
//! batch computes `b` from the row's current `a` under the row lock of its
//! own UPDATE, and rows applications wrote meanwhile are already
//! dual-written (their `b` equals `up(a)`, so they are skipped).

use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::store::{self, Record};
use crate::rewrite::migration::quote_ident;

/// The SQL pieces a walk over the table needs.
#[derive(Debug, Clone)]
pub struct Walk {
    table: String,
    /// `k1, k2` (quoted).
    key_list: String,
    /// `(k1::text), (k2::text)` for reading a key back as text.
    key_text: String,
    /// `k1 desc, k2 desc`.
    key_desc: String,
    /// `($1::text::T1, $2::text::T2)`: a key given as text parameters.
    key_params: String,
    width: usize,
    /// `up(a)` over the table's own row.
    up: String,
    new: String,
}

impl Walk {
    pub fn new(record: &Record, key: &[(String, String)]) -> Walk {
        let spec = &record.spec;
        let names: Vec<String> = key.iter().map(|(c, _)| quote_ident(c)).collect();
        let up = match (&spec.up, &spec.new_type) {
            (Some(up), Some(ty)) => format!("({})::{ty}", up),
            _ => quote_ident(&spec.from),
        };
        Walk {
            table: spec.table.to_string(),
            key_list: names.join(", "),
            key_text: names
                .iter()
                .map(|c| format!("({c})::text"))
                .collect::<Vec<_>>()
                .join(", "),
            key_desc: names
                .iter()
                .map(|c| format!("{c} desc"))
                .collect::<Vec<_>>()
                .join(", "),
            key_params: format!(
                "({})",
                key.iter()
                    .enumerate()
                    .map(|(i, (_, ty))| format!("${}::text::{ty}", i + 1))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            width: key.len(),
            up,
            new: quote_ident(&spec.to),
        }
    }

    /// Rows after `cursor` (all rows for `None`), as a WHERE condition.
    fn after(&self, cursor: &Option<Vec<String>>) -> String {
        match cursor {
            Some(_) => format!("({}) > {}", self.key_list, self.key_params),
            None => "true".into(),
        }
    }

    fn params<'a>(&self, cursor: &'a Option<Vec<String>>) -> Vec<&'a (dyn ToSql + Sync)> {
        match cursor {
            Some(values) => values.iter().map(|v| v as &(dyn ToSql + Sync)).collect(),
            None => Vec::new(),
        }
    }

    /// One backfill batch after `cursor`: (rows walked, rows updated, the
    /// last key). Runs in the caller's transaction.
    pub async fn backfill_batch(
        &self,
        client: &impl tokio_postgres::GenericClient,
        cursor: &Option<Vec<String>>,
        batch: i32,
    ) -> Result<(i64, i64, Option<Vec<String>>), tokio_postgres::Error> {
        let sql = format!(
            "with keys as (select {keys} from {t} where {after} order by {keys} limit {batch}),
                  upd as (update {t} set {b} = {up} from keys
                           where ({qualified}) = ({key_cols}) and {t}.{b} is distinct from {up}
                           returning 1)
             select (select count(*) from keys), (select count(*) from upd),
                    (select array[{key_text}] from keys order by {desc} limit 1)",
            keys = self.key_list,
            t = self.table,
            after = self.after(cursor),
            b = self.new,
            up = self.up,
            qualified = self
                .key_list
                .split(", ")
                .map(|c| format!("{}.{c}", self.table))
                .collect::<Vec<_>>()
                .join(", "),
            key_cols = self
                .key_list
                .split(", ")
                .map(|c| format!("keys.{c}"))
                .collect::<Vec<_>>()
                .join(", "),
            key_text = self.key_text,
            desc = self.key_desc,
        );
        let row = client.query_one(&sql, &self.params(cursor)).await?;
        Ok((row.get(0), row.get(1), row.get(2)))
    }

    /// Parity over the range after `cursor` (`batch` keys): (rows in the
    /// range, mismatches, a few mismatching keys, the last key). With
    /// `fix`, mismatching rows are set first (the catch-up pass).
    pub async fn check_range(
        &self,
        client: &Client,
        cursor: &Option<Vec<String>>,
        batch: i32,
        fix: bool,
    ) -> Result<(i64, i64, Vec<String>, Option<Vec<String>>), tokio_postgres::Error> {
        let keys = format!(
            "select {keys} from {t} where {after} order by {keys} limit {batch}",
            keys = self.key_list,
            t = self.table,
            after = self.after(cursor),
        );
        let fix_cte = if fix {
            format!(
                ", fixed as (update {t} set {b} = {up} where ({keys}) in (select {keys} from keys) and {b} is distinct from {up} returning 1)",
                t = self.table,
                b = self.new,
                up = self.up,
                keys = self.key_list,
            )
        } else {
            String::new()
        };
        let sql = format!(
            "with keys as ({keys}){fix_cte},
                  bad as (select ({key_text})::text as k from {t}
                           where ({key_list}) in (select {key_list} from keys) and {b} is distinct from {up})
             select (select count(*) from keys), (select count(*) from bad),
                    array(select k from bad order by k limit 5),
                    (select array[{key_text}] from keys order by {desc} limit 1)",
            t = self.table,
            key_list = self.key_list,
            key_text = self.key_text,
            b = self.new,
            up = self.up,
            desc = self.key_desc,
        );
        let row = client.query_one(&sql, &self.params(cursor)).await?;
        Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
    }

    pub fn width(&self) -> usize {
        self.width
    }
}

/// Commits one batch and the record's new cursor and counters together.
pub async fn commit_batch(
    client: &mut Client,
    walk: &Walk,
    record: &mut Record,
) -> Result<(i64, i64), store::StoreError> {
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "set local statement_timeout = {}",
        record.backfill.batch_timeout_ms.max(1)
    ))
    .await?;
    let (walked, updated, last) = walk
        .backfill_batch(
            &tx,
            &record.backfill.cursor,
            record.backfill.batch_size.max(1),
        )
        .await?;
    if walked > 0 {
        record.backfill.cursor = last;
        record.backfill.rows_done += walked;
    }
    store::save(&tx, record).await?;
    tx.commit().await?;
    Ok((walked, updated))
}
