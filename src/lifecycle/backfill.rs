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
    /// The key columns' types, for keys given as text parameters.
    key_types: Vec<String>,
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
            key_types: key.iter().map(|(_, ty)| ty.clone()).collect(),
            width: key.len(),
            up,
            new: quote_ident(&spec.to),
        }
    }

    /// `($n::text::T1, $n+1::text::T2)`: a key as text parameters from `$n`.
    fn key_params(&self, first: usize) -> String {
        let params: Vec<String> = self
            .key_types
            .iter()
            .enumerate()
            .map(|(i, ty)| format!("${}::text::{ty}", first + i))
            .collect();
        format!("({})", params.join(", "))
    }

    /// Rows after `cursor` (all rows for `None`), as a WHERE condition.
    fn after(&self, cursor: &Option<Vec<String>>) -> String {
        match cursor {
            Some(_) => format!("({}) > {}", self.key_list, self.key_params(1)),
            None => "true".into(),
        }
    }

    fn params<'a>(&self, cursor: &'a Option<Vec<String>>) -> Vec<&'a (dyn ToSql + Sync)> {
        match cursor {
            Some(values) => values.iter().map(|v| v as &(dyn ToSql + Sync)).collect(),
            None => Vec::new(),
        }
    }

    /// `(k1, k2) <= ($n::text::T1, …)`: the upper end of a range, its
    /// parameters numbered after the cursor's.
    fn up_to(&self, cursor: &Option<Vec<String>>) -> String {
        let first = if cursor.is_some() { self.width + 1 } else { 1 };
        format!("({}) <= {}", self.key_list, self.key_params(first))
    }

    /// The next range after `cursor`: (rows in it, its last key), read
    /// from the key's index alone.
    async fn next_range(
        &self,
        client: &impl tokio_postgres::GenericClient,
        cursor: &Option<Vec<String>>,
        batch: i32,
    ) -> Result<(i64, Option<Vec<String>>), tokio_postgres::Error> {
        let sql = format!(
            "with keys as (select {keys} from {t} where {after} order by {keys} limit {batch})
             select (select count(*) from keys), (select array[{key_text}] from keys order by {desc} limit 1)",
            keys = self.key_list,
            t = self.table,
            after = self.after(cursor),
            key_text = self.key_text,
            desc = self.key_desc,
        );
        let row = client.query_one(&sql, &self.params(cursor)).await?;
        Ok((row.get(0), row.get(1)))
    }

    /// One backfill batch after `cursor`: (rows walked, rows updated, the
    /// last key). The range is found on the key's index, then updated with
    /// a range predicate (an index range scan, never a join). Runs in the
    /// caller's transaction.
    /// `UPDATE` of the rows after `cursor` up to `upper` where `b` differs
    /// from `up(a)`, with the key bounds written as literals, so it can go
    /// in one simple query with the COMMIT that releases its row locks.
    fn range_update(&self, cursor: &Option<Vec<String>>, upper: &[String]) -> String {
        let literals = |values: &[String]| {
            let cast: Vec<String> = values
                .iter()
                .zip(&self.key_types)
                .map(|(v, ty)| format!("{}::text::{ty}", sql_literal(v)))
                .collect();
            format!("({})", cast.join(", "))
        };
        let after = match cursor {
            Some(values) => format!("({}) > {}", self.key_list, literals(values)),
            None => "true".into(),
        };
        format!(
            "update {t} set {b} = {up} where {after} and ({keys}) <= {upper} and {b} is distinct from {up}",
            t = self.table,
            b = self.new,
            up = self.up,
            keys = self.key_list,
            upper = literals(upper),
        )
    }

    pub async fn check_range(
        &self,
        client: &Client,
        cursor: &Option<Vec<String>>,
        batch: i32,
        fix: bool,
    ) -> Result<(i64, i64, Vec<String>, Option<Vec<String>>), tokio_postgres::Error> {
        if !fix {
            return self.count_range(client, cursor, batch).await;
        }
        let (rows, last) = self.next_range(client, cursor, batch).await?;
        let Some(upper) = &last else {
            return Ok((0, 0, Vec::new(), None));
        };
        let mut params = self.params(cursor);
        params.extend(upper.iter().map(|v| v as &(dyn ToSql + Sync)));
        let range = format!("{} and {}", self.after(cursor), self.up_to(cursor));
        if fix {
            client
                .execute(
                    &format!(
                        "update {t} set {b} = {up} where {range} and {b} is distinct from {up}",
                        t = self.table,
                        b = self.new,
                        up = self.up,
                    ),
                    &params,
                )
                .await?;
        }
        let row = client
            .query_one(
                &format!(
                    "with bad as (select ({key_text})::text as k from {t} where {range} and {b} is distinct from {up})
                     select (select count(*) from bad), array(select k from bad order by k limit 5)",
                    key_text = self.key_text,
                    t = self.table,
                    b = self.new,
                    up = self.up,
                ),
                &params,
            )
            .await?;
        Ok((rows, row.get(0), row.get(1), last))
    }

    /// The parity count of the next range after `cursor` in one statement
    /// and one pass over the rows: (rows in the range, mismatches, up to
    /// five mismatching keys, the range's last key).
    async fn count_range(
        &self,
        client: &Client,
        cursor: &Option<Vec<String>>,
        batch: i32,
    ) -> Result<(i64, i64, Vec<String>, Option<Vec<String>>), tokio_postgres::Error> {
        let sql = format!(
            "with r as (select {keys}, {b} is distinct from {up} as pgshift_bad from {t} where {after} order by {keys} limit {batch})
             select (select count(*) from r), (select count(*) from r where pgshift_bad),
                    array(select ({key_text})::text as pgshift_key from r where pgshift_bad order by {keys} limit 5),
                    (select array[{key_text}] from r order by {desc} limit 1)",
            keys = self.key_list,
            b = self.new,
            up = self.up,
            t = self.table,
            after = self.after(cursor),
            key_text = self.key_text,
            desc = self.key_desc,
        );
        let row = client.query_one(&sql, &self.params(cursor)).await?;
        Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
    }

    pub fn width(&self) -> usize {
        self.width
    }
}

/// Why the backfill should wait before its next batch, if it should: a
/// standby replaying too far behind, or too many sessions waiting for
/// locks on the table.
pub async fn throttle_reason(
    client: &Client,
    table: &str,
    max_lag_ms: i32,
    max_lock_waits: i32,
) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "select coalesce((select max(extract(epoch from greatest(write_lag, flush_lag, replay_lag)) * 1000)
                                from pg_stat_replication), 0)::float8,
                    (select count(*) from pg_locks
                      where not granted and relation = $1::text::regclass)",
            &[&table],
        )
        .await?;
    let (lag_ms, waits): (f64, i64) = (row.get(0), row.get(1));
    if max_lag_ms >= 0 && lag_ms > f64::from(max_lag_ms) {
        return Ok(Some(format!(
            "replication lag {lag_ms:.0} ms > max_replication_lag_ms {max_lag_ms}"
        )));
    }
    if max_lock_waits >= 0 && waits > i64::from(max_lock_waits) {
        return Ok(Some(format!(
            "{waits} sessions wait for locks on {table} > max_lock_waits {max_lock_waits}"
        )));
    }
    Ok(None)
}

/// Commits one batch and the record's new cursor and counters together.
pub async fn commit_batch(
    client: &mut Client,
    walk: &Walk,
    record: &mut Record,
) -> Result<(i64, i64), store::StoreError> {
    // The range is found first, outside the transaction; then the UPDATE,
    // the progress and the COMMIT go in one simple query: one round trip
    // per batch, and the batch's row locks are held only while it runs on
    // the server, never across a round trip.
    let cursor = record.backfill.cursor.clone();
    let (walked, last) = walk
        .next_range(&*client, &cursor, record.backfill.batch_size.max(1))
        .await?;
    let Some(upper) = last else {
        return Ok((0, 0));
    };
    let mut next = record.clone();
    next.backfill.cursor = Some(upper.clone());
    next.backfill.rows_done += walked;
    let progress = format!(
        "update pgshift.migrations set backfill_cursor = array[{cursor}]::text[], rows_done = {done},
                batch_size = {size}, updated_ms = {now} where id = {id}",
        cursor = upper
            .iter()
            .map(|v| sql_literal(v))
            .collect::<Vec<_>>()
            .join(", "),
        done = next.backfill.rows_done,
        size = next.backfill.batch_size,
        now = store::NOW_MS,
        id = sql_literal(&next.spec.id),
    );
    // Losing the last batches' commits in a crash is harmless (the cursor
    // goes back with them, and b = up(a) is idempotent), so the backfill
    // does not wait for the WAL flush of each batch.
    let batch = format!(
        "begin; set local statement_timeout = {timeout}; set local synchronous_commit = off;
         {update}; {progress}; commit",
        timeout = record.backfill.batch_timeout_ms.max(1),
        update = walk.range_update(&cursor, &upper),
    );
    match client.simple_query(&batch).await {
        Ok(answers) => {
            // The first command count is the BEGIN's, the UPDATE's follows
            // the two SETs.
            let updated = answers
                .iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n as i64),
                    _ => None,
                })
                .nth(3)
                .unwrap_or(0);
            *record = next;
            Ok((walked, updated))
        }
        Err(e) => {
            let _ = client.batch_execute("rollback").await;
            Err(e.into())
        }
    }
}

/// `value` as an SQL string literal (an `E''` literal when it holds a
/// backslash, so the server's `standard_conforming_strings` does not matter).
fn sql_literal(value: &str) -> String {
    let quoted = value.replace('\'', "''");
    if quoted.contains('\\') {
        format!("E'{}'", quoted.replace('\\', "\\\\"))
    } else {
        format!("'{quoted}'")
    }
}

#[cfg(test)]
mod literal_tests {
    use super::sql_literal;

    #[test]
    fn key_values_are_quoted_whatever_they_hold() {
        assert_eq!(sql_literal("42"), "'42'");
        assert_eq!(sql_literal("o'brien"), "'o''brien'");
        assert_eq!(sql_literal(r"a\b'"), r"E'a\\b'''");
    }
}
