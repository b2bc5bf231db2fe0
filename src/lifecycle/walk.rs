//! The backfill and the parity check: `b := up(a)` over the table in key
//! order, one batch per transaction with the cursor and counters committed
//! in the same transaction; and `b IS DISTINCT FROM up(a)` counted in one
//! short statement or range by range, never in one long transaction.
//!
//! The backfill cannot overwrite a newer value with an older one: each
//! batch computes `b` from the row's current `a` under the row lock of its
//! own UPDATE, and rows applications wrote meanwhile are already
//! dual-written (their `b` equals `up(a)`, so they are skipped).
//!
//! The parity check of a table small enough is one statement under a
//! time budget (a sequential pass, as the classic method counts); a bigger
//! table, or one whose pass runs past the budget, is walked range by range.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::store::{self, Record, Slice};
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
    /// The key columns' types, for keys written as text literals.
    key_types: Vec<String>,
    /// `up(a)` over the table's own row.
    up: String,
    new: String,
    /// The rows the backfill writes (`b is distinct from up(a)`; for an
    /// added column, those it is NULL in, when there is a value to give).
    fix: String,
    /// The rows the parity check counts as mismatches (for an added
    /// column: NULL in a column that is to be NOT NULL).
    bad: String,
}

impl Walk {
    pub fn new(record: &Record, key: &[(String, String)]) -> Walk {
        let spec = &record.spec;
        let names: Vec<String> = key.iter().map(|(c, _)| quote_ident(c)).collect();
        let new = quote_ident(&spec.to);
        let (up, fix, bad) = match (&spec.added, &spec.up, &spec.new_type) {
            (Some(added), _, _) => {
                let fill = added.fill();
                let fix = match fill {
                    Some(_) => format!("{new} is null"),
                    None => "false".into(),
                };
                let bad = match added.not_null {
                    true => format!("{new} is null"),
                    false => "false".into(),
                };
                (fill.unwrap_or_else(|| "null".into()), fix, bad)
            }
            (None, Some(up), Some(ty)) => {
                let up = format!("({})::{ty}", up);
                let differs = format!("{new} is distinct from {up}");
                (up, differs.clone(), differs)
            }
            _ => {
                let up = quote_ident(&spec.from);
                let differs = format!("{new} is distinct from {up}");
                (up, differs.clone(), differs)
            }
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
            up,
            new,
            fix,
            bad,
        }
    }

    /// Rows after `cursor` (all rows for `None`), as a WHERE condition
    /// with the key written as literals (the planner sees the range).
    fn after(&self, cursor: &Option<Vec<String>>) -> String {
        match cursor {
            Some(values) => format!("({}) > {}", self.key_list, self.literals(values)),
            None => "true".into(),
        }
    }

    /// Rows up to `upper` (inclusive), as a WHERE condition.
    fn up_to(&self, upper: &[String]) -> String {
        format!("({}) <= {}", self.key_list, self.literals(upper))
    }

    /// The next range of at most `batch` keys after `cursor` and up to
    /// `upper` (inclusive; `None`: no end): (rows in it, its last key),
    /// read from the key's index alone.
    async fn next_range(
        &self,
        client: &Client,
        cursor: &Option<Vec<String>>,
        upper: &Option<Vec<String>>,
        batch: i32,
    ) -> Result<(i64, Option<Vec<String>>), store::StoreError> {
        let answers = client
            .simple_query(&self.range_query(cursor, upper, batch))
            .await?;
        range_answer(&answers).ok_or_else(|| store::StoreError::Invalid {
            id: self.table.clone(),
            reason: "the key range query answered no readable row".into(),
        })
    }

    /// The query [`Walk::next_range`] runs, its bounds written as literals
    /// (so it can follow other statements in one simple query); it answers
    /// one text value, `[count, [last key as text…]]` (`[0, null]` when no
    /// key is left). A full batch is found by skipping `batch - 1` keys on
    /// the index; only a lane's last, short batch is counted. The key is
    /// turned into JSON for the one row that needs it, not for every row
    /// walked past.
    fn range_query(
        &self,
        cursor: &Option<Vec<String>>,
        upper: &Option<Vec<String>>,
        batch: i32,
    ) -> String {
        let mut range = self.after(cursor);
        if let Some(values) = upper {
            range = format!("{range} and {}", self.up_to(values));
        }
        format!(
            "select coalesce(
               (select json_build_array({batch}, json_build_array({key_text}))
                  from (select {keys} from {t} where {range} order by {keys} offset {skip} limit 1) pgshift_nth),
               (with keys as (select {keys} from {t} where {range} order by {keys} limit {batch})
                select json_build_array((select count(*) from keys),
                  (select json_build_array({key_text}) from (select {keys} from keys order by {desc} limit 1) pgshift_last)))
             )::text",
            keys = self.key_list,
            t = self.table,
            key_text = self.key_text,
            desc = self.key_desc,
            skip = batch.max(1) - 1,
        )
    }

    /// `(v1::text::T1, v2::text::T2)`: a key as SQL literals.
    fn literals(&self, values: &[String]) -> String {
        let cast: Vec<String> = values
            .iter()
            .zip(&self.key_types)
            .map(|(v, ty)| format!("{}::text::{ty}", sql_literal(v)))
            .collect();
        format!("({})", cast.join(", "))
    }

    /// Splits the keys after `cursor` into at most `parts` slices of about
    /// `remaining / parts` keys each (the bounds found on the key's index),
    /// the last one ending at `end`; empty when there is nothing to split.
    pub async fn split(
        &self,
        client: &Client,
        cursor: &Option<Vec<String>>,
        end: &Option<Vec<String>>,
        remaining: i64,
        parts: i32,
    ) -> Result<Vec<Slice>, tokio_postgres::Error> {
        let step = remaining / i64::from(parts.max(1));
        let mut bounds: Vec<Vec<String>> = Vec::new();
        let mut from = cursor.clone();
        while step > 0 && (bounds.len() as i64) < i64::from(parts) - 1 {
            let sql = format!(
                "select array[{key_text}] from {t} where {after} order by {keys} offset {skip} limit 1",
                key_text = self.key_text,
                t = self.table,
                after = self.after(&from),
                keys = self.key_list,
                skip = step - 1,
            );
            let Some(row) = client.query_opt(&sql, &[]).await? else {
                break;
            };
            let bound: Vec<String> = row.get(0);
            from = Some(bound.clone());
            bounds.push(bound);
        }
        if bounds.is_empty() {
            return Ok(Vec::new());
        }
        let mut slices = Vec::new();
        let mut lower = cursor.clone();
        for bound in bounds {
            slices.push(Slice {
                cursor: lower,
                upper: Some(bound.clone()),
                rows_done: 0,
            });
            lower = Some(bound);
        }
        slices.push(Slice {
            cursor: lower,
            upper: end.clone(),
            rows_done: 0,
        });
        Ok(slices)
    }

    /// The table's last key now (`None` for an empty table): where a
    /// backfill starting now ends.
    pub async fn last_key(
        &self,
        client: &Client,
    ) -> Result<Option<Vec<String>>, tokio_postgres::Error> {
        let sql = format!(
            "select array[{key_text}] from {t} order by {desc} limit 1",
            key_text = self.key_text,
            t = self.table,
            desc = self.key_desc,
        );
        Ok(client.query_opt(&sql, &[]).await?.map(|row| row.get(0)))
    }

    /// `UPDATE` of the rows after `cursor` up to `upper` where `b` differs
    /// from `up(a)`, with the key bounds written as literals, so it can go
    /// in one simple query with the COMMIT that releases its row locks.
    fn range_update(&self, cursor: &Option<Vec<String>>, upper: &[String]) -> String {
        format!(
            "update {t} set {b} = {up} where {after} and {up_to} and {fix}",
            t = self.table,
            b = self.new,
            up = self.up,
            fix = self.fix,
            after = self.after(cursor),
            up_to = self.up_to(upper),
        )
    }

    /// The parity check of the next range after `cursor` (see
    /// [`Walk::count_range`]), its mismatches fixed first with `fix`.
    async fn check_range(
        &self,
        client: &Client,
        cursor: &Option<Vec<String>>,
        batch: i32,
        fix: bool,
    ) -> Result<(i64, i64, Vec<String>, Option<Vec<String>>), store::StoreError> {
        if fix {
            if let (_, Some(upper)) = self.next_range(client, cursor, &None, batch).await? {
                client
                    .execute(&self.range_update(cursor, &upper), &[])
                    .await?;
            }
        }
        Ok(self.count_range(client, cursor, batch).await?)
    }

    /// The parity check of the whole table range by range: ranges of
    /// `batch` keys in key order, `pause` between them, each range's
    /// mismatches fixed first with `fix`.
    pub async fn check_ranges(
        &self,
        client: &Client,
        batch: i32,
        pause: Duration,
        fix: bool,
    ) -> Result<RangeCheck, store::StoreError> {
        let mut cursor: Option<Vec<String>> = None;
        let mut check = RangeCheck::default();
        loop {
            if cursor.is_some() && !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let (rows, bad, some, last) = self.check_range(client, &cursor, batch, fix).await?;
            if rows == 0 {
                return Ok(check);
            }
            check.ranges += 1;
            check.rows += rows;
            check.mismatches += bad;
            let room = 5usize.saturating_sub(check.samples.len());
            check.samples.extend(some.into_iter().take(room));
            cursor = last;
        }
    }

    /// The parity count of the whole table in one statement: (rows,
    /// mismatches, up to five mismatching keys in key order), or `None`
    /// when the statement ran past `budget_ms` and was cancelled (in its
    /// own read-only transaction: nothing is held afterwards). One
    /// sequential pass, as the classic method's count is: for a table
    /// this fits, cheaper in all than a walk on the key's index.
    pub async fn check_all(
        &self,
        client: &Client,
        budget_ms: u64,
    ) -> Result<Option<(i64, i64, Vec<String>)>, tokio_postgres::Error> {
        let (keys, key_text) = (&self.key_list, &self.key_text);
        let query = format!(
            "select count(*), count(*) filter (where pgshift_bad),
                    coalesce((array_agg(({key_text})::text order by {keys}) filter (where pgshift_bad))[1:5], '{{}}')
               from (select {keys}, {bad} as pgshift_bad from {t}) r",
            bad = self.bad,
            t = self.table,
        );
        client
            .batch_execute(&format!(
                "begin read only; set local statement_timeout = {budget_ms}"
            ))
            .await?;
        let answer = client.query_one(&query, &[]).await;
        client.batch_execute("rollback").await?;
        match answer {
            Ok(row) => Ok(Some((row.get(0), row.get(1), row.get(2)))),
            Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => Ok(None),
            Err(e) => Err(e),
        }
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
        let row = client
            .query_one(&self.count_range_query(cursor, batch), &[])
            .await?;
        Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
    }

    /// The query of [`Walk::count_range`]. A key of one column whose type
    /// has `max` is counted by one aggregate over the range (its last key
    /// is the largest); other keys (several columns, or types such as
    /// uuid) go through a materialized range read four times, which costs
    /// ≈ 2× as much (6.4–7.2 ms against 2.9–3.0 ms per 10,000 rows of
    /// `pgbench_accounts`, measured with pgbench on an idle scale-10 table).
    fn count_range_query(&self, cursor: &Option<Vec<String>>, batch: i32) -> String {
        let (keys, key_text) = (&self.key_list, &self.key_text);
        let range = format!(
            "select {keys}, {bad} as pgshift_bad from {t} where {after} order by {keys} limit {batch}",
            bad = self.bad,
            t = self.table,
            after = self.after(cursor),
        );
        match self.key_types.as_slice() {
            [key_type] if HAS_MAX.contains(&key_type.as_str()) => format!(
                "select count(*), count(*) filter (where pgshift_bad),
                        coalesce((array_agg(({key_text})::text order by {keys}) filter (where pgshift_bad))[1:5], '{{}}'),
                        case when count(*) > 0 then array[(max({keys}))::text] end
                   from ({range}) r"
            ),
            _ => format!(
                "with r as ({range})
                 select (select count(*) from r), (select count(*) from r where pgshift_bad),
                        array(select ({key_text})::text as pgshift_key from r where pgshift_bad order by {keys} limit 5),
                        (select array[{key_text}] from r order by {desc} limit 1)",
                desc = self.key_desc,
            ),
        }
    }
}

/// What a range-by-range parity check found.
#[derive(Debug, Default)]
pub struct RangeCheck {
    pub ranges: u64,
    pub rows: i64,
    pub mismatches: i64,
    /// The first five mismatching keys, in key order.
    pub samples: Vec<String>,
}

/// Key types (as `format_type` names them) whose `max` follows the
/// key's own order — the order of the walk's `ORDER BY`.
const HAS_MAX: [&str; 9] = [
    "smallint",
    "integer",
    "bigint",
    "numeric",
    "text",
    "date",
    "timestamp without time zone",
    "timestamp with time zone",
    "character varying",
];

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

/// Where one backfill worker walks: the whole table from the migration's
/// cursor, or one slice of it.
#[derive(Debug, Clone)]
pub struct Lane {
    /// The slice's index in the migration's `backfill_slices`; `None`: the
    /// single walk, whose cursor is `backfill_cursor`.
    pub slice: Option<usize>,
    /// The last key done (exclusive lower bound of the next batch).
    pub cursor: Option<Vec<String>>,
    /// The lane's last key (inclusive); `None`: the end of the table.
    pub upper: Option<Vec<String>>,
    /// The next batch's range, found by the last batch's round trip.
    ahead: Option<(i64, Option<Vec<String>>)>,
}

impl Lane {
    pub fn new(
        slice: Option<usize>,
        cursor: Option<Vec<String>>,
        upper: Option<Vec<String>>,
    ) -> Lane {
        Lane {
            slice,
            cursor,
            upper,
            ahead: None,
        }
    }
}

/// Commits one batch of `lane` (at most `batch_size` keys) together with
/// the lane's new cursor and the migration's row count, and moves the
/// lane's cursor on: (rows walked, rows updated); `(0, 0)` once the lane
/// is done.
pub async fn commit_batch(
    client: &mut Client,
    walk: &Walk,
    migration: &str,
    lane: &mut Lane,
    batch_size: i32,
    timeout_ms: i32,
) -> Result<(i64, i64), store::StoreError> {
    // The range is found first, outside the transaction (both its bounds
    // literals: the planner sees the range and walks the key's index);
    // then the UPDATE, the progress, the COMMIT and the search for the
    // next batch's range go in one simple query: one round trip per batch,
    // and the batch's row locks are held only while it runs on the server,
    // never across a round trip.
    let batch_size = batch_size.max(1);
    let (walked, last) = match lane.ahead.take() {
        Some(found) => found,
        None => {
            walk.next_range(client, &lane.cursor, &lane.upper, batch_size)
                .await?
        }
    };
    let Some(upper) = last else {
        return Ok((0, 0));
    };
    let cursor_set = match lane.slice {
        None => format!(
            "backfill_cursor = array[{}]::text[]",
            upper
                .iter()
                .map(|v| sql_literal(v))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        // Only this slice's fields: the other workers commit theirs into
        // the same row (each UPDATE reads the row as the last commit left it).
        Some(i) => format!(
            "backfill_slices = jsonb_set(jsonb_set(backfill_slices, '{{{i},cursor}}', {cursor}::jsonb),
                 '{{{i},rows_done}}', to_jsonb(coalesce((backfill_slices->{i}->>'rows_done')::bigint, 0) + {walked}))",
            cursor = sql_literal(&serde_json::to_string(&upper).unwrap_or_else(|_| "null".into())),
        ),
    };
    let progress = format!(
        "update pgshift.migrations set {cursor_set}, rows_done = rows_done + {walked},
                batch_size = {batch_size}, updated_ms = {now} where id = {id}",
        now = store::NOW_MS,
        id = sql_literal(migration),
    );
    // Losing the last batches' commits in a crash is harmless (the cursor
    // goes back with them, and b = up(a) is idempotent), so the backfill
    // does not wait for the WAL flush of each batch.
    let batch = format!(
        "begin; set local statement_timeout = {timeout}; set local synchronous_commit = off;
         {update}; {progress}; commit; {next}",
        timeout = timeout_ms.max(1),
        update = walk.range_update(&lane.cursor, &upper),
        next = walk.range_query(&Some(upper.clone()), &lane.upper, batch_size),
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
            lane.cursor = Some(upper);
            lane.ahead = range_answer(&answers);
            Ok((walked, updated))
        }
        Err(e) => {
            let _ = client.batch_execute("rollback").await;
            Err(e.into())
        }
    }
}

/// The count and last key in the answers to a [`Walk::range_query`] (its
/// row is the last one in them); `None` if they hold none that reads.
fn range_answer(
    answers: &[tokio_postgres::SimpleQueryMessage],
) -> Option<(i64, Option<Vec<String>>)> {
    let row = answers.iter().rev().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
        _ => None,
    })?;
    let (count, last): (i64, Option<Vec<String>>) = serde_json::from_str(row.get(0)?).ok()?;
    match (count, &last) {
        (0, None) => Some((0, None)),
        (1.., Some(_)) => Some((count, last)),
        _ => None,
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
