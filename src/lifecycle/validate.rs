//! `validate`: the parity check of the new column against `up(old)` —
//! one statement over the table when it fits the budget, else range by
//! range — with optional repair (`fix`), and the NOT NULL check carried to
//! the new column once it holds.

use std::time::Duration;

use super::store::{Record, Validation};
use super::walk::Walk;
use super::{ddl, not_null, store, ActionError, Lifecycle};
use crate::api;
use crate::rewrite::migration::Phase;

/// Keys per range of the parity check unless the action says otherwise.
const VALIDATE_RANGE_ROWS: i32 = 10_000;
/// The parity check's one-statement time budget unless the action says
/// otherwise: past it the statement is cancelled and the table walked.
/// Under a CPU-bound pgbench load on two cores, the statement over a
/// scale-10 `pgbench_accounts` (256 MB) took 0.6 s and, once, over 1 s
/// (70–90 ms idle); a snapshot held for seconds holds vacuum back by
/// seconds — the long transactions to avoid last minutes.
const ONE_PASS_BUDGET_MS: u64 = 5_000;
/// Tables bigger than this (main fork) are walked without trying one
/// statement: ≈ 0.3–0.4 s of sequential reading from memory at most.
const ONE_PASS_MAX_BYTES: i64 = 1 << 30;

impl Lifecycle {
    pub(super) async fn validate(
        &self,
        mut record: Record,
        options: &api::Validate,
    ) -> Result<(), ActionError> {
        if !matches!(
            record.phase,
            Phase::Backfilled | Phase::Validated | Phase::Switched
        ) {
            return Err(Self::illegal(
                &record,
                "validate",
                "a finished backfill (phase backfilled, validated or switched)",
            ));
        }
        let plan = Plan::of(options, &record)?;
        let fix = plan.fix;
        let client = self.connect().await?;
        let table = record.spec.table.to_string();
        let key = ddl::walk_key(&client, &table)
            .await?
            .ok_or_else(|| ActionError::Conflict(format!("table {table} has no key to walk")))?;
        let walk = Walk::new(&record, &key);
        let (mismatches, samples, how) = check(&client, &walk, &table, &plan).await?;
        tracing::info!(migration = %record.spec.id, mismatches, checked = %how, "parity check done");
        let at_ms = store::now_ms(&client).await?;
        record.validation = Some(Validation {
            mismatches,
            samples,
            at_ms,
        });
        if mismatches == 0 {
            self.carry_not_null(&client, &mut record).await?;
            if record.phase == Phase::Backfilled {
                record.phase = Phase::Validated;
            }
        }
        self.commit(
            &client,
            record,
            "validate",
            &format!(
                "{mismatches} mismatches{} ({how})",
                if fix { " after the catch-up pass" } else { "" }
            ),
            true,
        )
        .await?;
        Ok(())
    }

    /// Once `b` matches: `a`'s NOT NULL carried to `b` as a valid check.
    async fn carry_not_null(
        &self,
        client: &tokio_postgres::Client,
        record: &mut Record,
    ) -> Result<(), ActionError> {
        let table = record.spec.table.to_string();
        let old_not_null = match &record.spec.added {
            Some(added) => added.not_null,
            None => ddl::column_info(client, &table, &record.spec.from)
                .await?
                .is_some_and(|c| c.not_null),
        };
        if old_not_null || record.not_null_check.is_some() {
            record.not_null_check =
                Some(not_null::add_valid_check(client, &table, &record.spec.to, self.lock).await?);
        }
        Ok(())
    }
}

/// The parity check as planned: one statement when it fits, else range by
/// range. Returns the mismatches, samples of them, and how it was checked.
async fn check(
    client: &tokio_postgres::Client,
    walk: &Walk,
    table: &str,
    plan: &Plan,
) -> Result<(i64, Vec<String>, String), ActionError> {
    let started = std::time::Instant::now();
    let (one_pass, why_walked) = match plan.walk_asked || plan.one_pass_ms == 0 {
        true => (None, String::new()),
        false => one_statement(client, walk, table, plan.one_pass_ms).await?,
    };
    if let Some((rows, bad, some)) = one_pass {
        let how = format!(
            "one statement over {rows} rows in {} ms",
            started.elapsed().as_millis()
        );
        return Ok((bad, some, how));
    }
    let range_rows = plan.range_rows;
    let walked = walk
        .check_ranges(
            client,
            range_rows,
            Duration::from_millis(plan.pause_ms),
            plan.fix,
        )
        .await?;
    let how = format!(
        "{} range{} of up to {range_rows} keys over {} rows in {} ms{why_walked}",
        walked.ranges,
        if walked.ranges == 1 { "" } else { "s" },
        walked.rows,
        started.elapsed().as_millis()
    );
    Ok((walked.mismatches, walked.samples, how))
}

/// How a validation checks, from its options.
struct Plan {
    fix: bool,
    /// Keys per range of a walk.
    range_rows: i32,
    /// Pause between ranges (the backfill's pause unless given): the
    /// check's share of the database is the operator's choice, as the
    /// backfill's is.
    pause_ms: u64,
    /// The one-statement check's budget (0: always walk).
    one_pass_ms: u64,
    /// The request describes a walk (its range size or pause) or a fix (a
    /// fix writes range by range): no one-statement check.
    walk_asked: bool,
}

impl Plan {
    fn of(options: &api::Validate, record: &Record) -> Result<Plan, ActionError> {
        let range_rows = match options.range_rows {
            None => VALIDATE_RANGE_ROWS,
            Some(n @ 1..=1_000_000) => n as i32,
            Some(_) => {
                return Err(ActionError::BadRequest(
                    "range_rows must be a number from 1 to 1000000".into(),
                ))
            }
        };
        let one_pass_ms = match options.one_pass_ms {
            None => ONE_PASS_BUDGET_MS,
            Some(ms @ 0..=60_000) => ms,
            Some(_) => {
                return Err(ActionError::BadRequest(
                    "one_pass_ms must be a number of milliseconds from 0 (never) to 60000".into(),
                ))
            }
        };
        let fix = options.fix.unwrap_or(false);
        Ok(Plan {
            fix,
            range_rows,
            pause_ms: options
                .pause_ms
                .unwrap_or_else(|| u64::try_from(record.backfill.batch_pause_ms).unwrap_or(0)),
            one_pass_ms,
            walk_asked: fix || options.range_rows.is_some() || options.pause_ms.is_some(),
        })
    }
}

/// The one-statement check of a table of at most [`ONE_PASS_MAX_BYTES`]
/// within `budget_ms`: its answer, or `None` and why the table is walked
/// instead.
async fn one_statement(
    client: &tokio_postgres::Client,
    walk: &Walk,
    table: &str,
    budget_ms: u64,
) -> Result<(Option<(i64, i64, Vec<String>)>, String), ActionError> {
    // The table's heap, or its partitions' (`pg_partition_tree` lists
    // nothing for a table that is not partitioned).
    let bytes: i64 = client
        .query_one(
            "select greatest(pg_relation_size(t),
                             (select sum(pg_relation_size(relid)) from pg_partition_tree(t)))::bigint
               from (select $1::text::regclass as t) pgshift_table",
            &[&table],
        )
        .await?
        .get(0);
    if bytes > ONE_PASS_MAX_BYTES {
        let why = format!(
            "; the table's {} MiB are more than one statement's",
            bytes >> 20
        );
        return Ok((None, why));
    }
    let answer = walk.check_all(client, budget_ms).await?;
    let why = match answer {
        None => format!("; one statement ran past {budget_ms} ms"),
        Some(_) => String::new(),
    };
    Ok((answer, why))
}
