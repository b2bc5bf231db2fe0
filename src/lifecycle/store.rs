//! The durable state of the migrations, in the upstream database's own
//! `pgshift` schema (created idempotently at start): one row per migration
//! (spec, phase, backfill cursor and counters, last validation), an event
//! history, and the proxies serving the database. A proxy that starts —
//! or restarts after a crash — reads it and goes on where it was.

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, GenericClient};

use crate::rewrite::migration::{quote_ident, MigrationSpec, Phase};

/// Creates the schema and its tables if they are missing.
pub const SCHEMA: &str = "
create schema if not exists pgshift;
create table if not exists pgshift.migrations (
    id text primary key,
    table_name text not null,
    from_column text not null,
    to_column text not null,
    new_type text,
    up text,
    down text,
    phase text not null,
    backfill_cursor text[],
    rows_done bigint not null default 0,
    rows_total bigint,
    backfill_running boolean not null default false,
    backfill_paused boolean not null default false,
    batch_size integer not null default 1000,
    batch_pause_ms integer not null default 0,
    batch_timeout_ms integer not null default 30000,
    backfill_started_ms bigint,
    backfill_finished_ms bigint,
    validation_mismatches bigint,
    validation_samples text[],
    validation_ms bigint,
    write_path_changed_ms bigint not null default 0,
    not_null_check text,
    updated_ms bigint not null default 0
);
create table if not exists pgshift.state (
    id boolean primary key default true check (id),
    version bigint not null default 0
);
insert into pgshift.state (id, version) values (true, 0) on conflict do nothing;
create table if not exists pgshift.proxies (
    id text primary key,
    address text not null,
    applied_version bigint not null default 0,
    heartbeat_ms bigint not null,
    started_ms bigint not null
);
alter table pgshift.proxies add column if not exists old_shape jsonb not null default '{}';
alter table pgshift.migrations add column if not exists batch_target_ms integer not null default 0;
alter table pgshift.migrations add column if not exists max_replication_lag_ms integer not null default 10000;
alter table pgshift.migrations add column if not exists max_lock_waits integer not null default 16;
alter table pgshift.migrations add column if not exists old_after text;
alter table pgshift.migrations add column if not exists backfill_workers integer not null default 1;
alter table pgshift.migrations add column if not exists backfill_slices jsonb not null default '[]';
alter table pgshift.migrations add column if not exists carried jsonb not null default '{}';
alter table pgshift.migrations add column if not exists backfill_end text[];
alter table pgshift.migrations add column if not exists backfill_lock_key bigint not null
    default ('x' || replace(gen_random_uuid()::text, '-', ''))::bit(64)::bigint;
alter table pgshift.migrations add column if not exists backfill_error text;
alter table pgshift.migrations add column if not exists op text not null default 'copy_column';
alter table pgshift.migrations add column if not exists barrier_ms bigint;
alter table pgshift.migrations add column if not exists catalog_keys jsonb;
alter table pgshift.migrations add column if not exists catalog_undo text;
alter table pgshift.migrations add column if not exists autopilot jsonb;
create table if not exists pgshift.applied_files (
    file text primary key,
    checksum text not null,
    applied_at timestamptz not null default now(),
    statements integer not null,
    migrations text[] not null default '{}'
);
create table if not exists pgshift.events (
    id bigserial primary key,
    migration_id text not null,
    at timestamptz not null default now(),
    actor text not null,
    action text not null,
    detail text not null default ''
);
";

/// Milliseconds since the Unix epoch, as Postgres computes it.
pub const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

pub use crate::api::Slice;

/// Backfill settings and progress.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Backfill {
    /// Key of the last row done (text of each key column), `None` before
    /// the first batch. With several workers, where the walk stood when it
    /// was split into `slices`.
    pub cursor: Option<Vec<String>>,
    /// Rows walked so far, over every slice.
    pub rows_done: i64,
    /// The table's last key when the backfill started: the walk ends there
    /// (a row inserted after it was dual-written already; walking on would
    /// chase the application's inserts for ever). `None`: to the end.
    pub end: Option<Vec<String>>,
    /// How many sessions walk the table at once (from the next start of
    /// the walk: it is split when it starts).
    pub workers: i32,
    /// The walk's slices while it is split over several workers (empty:
    /// one walk from `cursor`).
    pub slices: Vec<Slice>,
    pub rows_total: Option<i64>,
    pub running: bool,
    pub paused: bool,
    pub batch_size: i32,
    pub batch_pause_ms: i32,
    pub batch_timeout_ms: i32,
    /// With a target (ms), the batch size is adjusted after every batch so
    /// that a batch takes about that long; 0: fixed `batch_size`.
    pub batch_target_ms: i32,
    /// The backfill waits while a standby's replay lag exceeds this (ms).
    pub max_replication_lag_ms: i32,
    /// … or while more sessions than this wait for locks on the table.
    pub max_lock_waits: i32,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// What stopped the backfill last (Postgres' own message), until it
    /// is resumed.
    pub error: Option<String>,
}

/// The last parity check.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Validation {
    pub mismatches: i64,
    /// Keys of a few mismatching rows.
    pub samples: Vec<String>,
    pub at_ms: i64,
}

/// One migration's durable record.
#[derive(Debug, Clone)]
pub struct Record {
    pub spec: MigrationSpec,
    pub phase: Phase,
    pub backfill: Backfill,
    pub validation: Option<Validation>,
    /// When the write path last changed (expand): a validation older than
    /// this does not count.
    pub write_path_changed_ms: i64,
    /// The check carrying `a`'s NOT NULL to `b` (added at validate, once
    /// the backfill has filled `b`), if any.
    pub not_null_check: Option<String>,
    /// What the contract changed beyond the two columns before its point of
    /// no return, for a rollback to put back.
    pub carried: Carried,
    /// A rename in place is about to happen: every proxy holds the
    /// statements on the table until the rules flip (or for at most
    /// [`crate::rewrite::rules::HOLD_MAX`]).
    pub barrier: bool,
    /// When the barrier went up (Unix ms, the database's clock): a barrier
    /// left up by a proxy that died holds nothing once it is that old.
    pub barrier_ms: Option<i64>,
    /// A catalog operation's way back, recorded before it changes
    /// anything: `set_default`'s previous default (`""`: there was none).
    pub catalog_undo: Option<String>,
    /// What the autopilot does with the migration.
    pub autopilot: crate::api::Autopilot,
}

/// What a contract changed outside the migrating columns while both still
/// existed: objects redefined to read `b`, and `a`'s NOT NULL dropped so
/// that no write can fail once writes no longer reach `a` — which a
/// rollback puts back before it drops `b` — and `a`'s keys handed over to
/// `b`, after which the contract can only be finished.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Carried {
    #[serde(default)]
    pub old_not_null_dropped: bool,
    /// The primary key or keys referencing `a` are on `b` now: past this
    /// point a contract is finished, not rolled back.
    #[serde(default)]
    pub keys_handed_over: bool,
    #[serde(default)]
    pub redefined: Vec<Redefined>,
}

/// One object the contract redefined onto `b`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Redefined {
    /// What it is, as the events name it (`view app.v`, `trigger t on app.u`).
    pub object: String,
    /// The SQL that puts its definition back on `a`.
    pub restore: String,
}

impl Record {
    pub fn new(spec: MigrationSpec, phase: Phase) -> Record {
        Record {
            spec,
            phase,
            backfill: Backfill {
                cursor: None,
                rows_done: 0,
                end: None,
                workers: 1,
                slices: Vec::new(),
                rows_total: None,
                running: false,
                paused: false,
                batch_size: 1000,
                batch_pause_ms: 0,
                batch_timeout_ms: 30_000,
                batch_target_ms: 0,
                max_replication_lag_ms: 10_000,
                max_lock_waits: 16,
                started_ms: None,
                finished_ms: None,
                error: None,
            },
            validation: None,
            write_path_changed_ms: 0,
            not_null_check: None,
            carried: Carried::default(),
            barrier: false,
            barrier_ms: None,
            catalog_undo: None,
            autopilot: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", crate::pgerror::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("migration {id:?} in pgshift.migrations is not valid: {reason}")]
    Invalid { id: String, reason: String },
}

pub async fn create_schema(client: &Client) -> Result<(), StoreError> {
    // Two proxies starting at once may race on CREATE … IF NOT EXISTS;
    // an advisory lock serializes them.
    client
        .batch_execute(&format!(
            "select pg_advisory_lock(7316298450); {SCHEMA} select pg_advisory_unlock(7316298450);"
        ))
        .await?;
    Ok(())
}

const COLUMNS: &str = "id, table_name, from_column, to_column, new_type, up, down, phase,
    backfill_cursor, rows_done, rows_total, backfill_running, backfill_paused, batch_size,
    batch_pause_ms, batch_timeout_ms, backfill_started_ms, backfill_finished_ms,
    validation_mismatches, validation_samples, validation_ms, write_path_changed_ms, not_null_check,
    batch_target_ms, max_replication_lag_ms, max_lock_waits, old_after, backfill_workers,
    backfill_slices::text, carried::text, backfill_end, backfill_error, op, barrier_ms,
    catalog_keys::text, catalog_undo, autopilot::text";

fn from_row(row: &tokio_postgres::Row) -> Result<Record, StoreError> {
    let id: String = row.try_get(0)?;
    let invalid = |reason: String| StoreError::Invalid {
        id: id.clone(),
        reason,
    };
    let table: String = row.try_get(1)?;
    let op_text: String = row.try_get(32)?;
    let op = crate::api::Op::parse(&op_text).ok_or_else(|| invalid(format!("op {op_text:?}")))?;
    let mut spec = spec_of(row, &id, &table, op).map_err(invalid)?;
    spec.old_after = row.try_get(26)?;
    let phase_text: String = row.try_get(7)?;
    let phase =
        Phase::parse(&phase_text).ok_or_else(|| invalid(format!("phase {phase_text:?}")))?;
    let slices_json: String = row.try_get(28)?;
    let slices: Vec<Slice> = serde_json::from_str(&slices_json)
        .map_err(|e| invalid(format!("backfill_slices {slices_json:?}: {e}")))?;
    let carried_json: String = row.try_get(29)?;
    let carried: Carried = serde_json::from_str(&carried_json)
        .map_err(|e| invalid(format!("carried {carried_json:?}: {e}")))?;
    let validation = match row.try_get::<_, Option<i64>>(18)? {
        Some(mismatches) => Some(Validation {
            mismatches,
            samples: row
                .try_get::<_, Option<Vec<String>>>(19)?
                .unwrap_or_default(),
            at_ms: row.try_get::<_, Option<i64>>(20)?.unwrap_or(0),
        }),
        None => None,
    };
    Ok(Record {
        spec,
        phase,
        backfill: Backfill {
            cursor: row.try_get(8)?,
            rows_done: row.try_get(9)?,
            end: row.try_get(30)?,
            workers: row.try_get(27)?,
            slices,
            rows_total: row.try_get(10)?,
            running: row.try_get(11)?,
            paused: row.try_get(12)?,
            batch_size: row.try_get(13)?,
            batch_pause_ms: row.try_get(14)?,
            batch_timeout_ms: row.try_get(15)?,
            batch_target_ms: row.try_get(23)?,
            max_replication_lag_ms: row.try_get(24)?,
            max_lock_waits: row.try_get(25)?,
            started_ms: row.try_get(16)?,
            finished_ms: row.try_get(17)?,
            error: row.try_get(31)?,
        },
        validation,
        write_path_changed_ms: row.try_get(21)?,
        not_null_check: row.try_get(22)?,
        carried,
        barrier: row.try_get::<_, Option<i64>>(33)?.is_some(),
        barrier_ms: row.try_get(33)?,
        catalog_undo: row.try_get(35)?,
        autopilot: {
            let text: Option<String> = row.try_get(36)?;
            serde_json::from_str(text.as_deref().unwrap_or("{\"mode\":\"off\"}"))
                .map_err(|e| invalid(format!("autopilot {text:?}: {e}")))?
        },
    })
}

/// The spec of a migration that moves a column, from its row.
fn column_spec(
    row: &tokio_postgres::Row,
    id: &str,
    table: &str,
    op: crate::api::Op,
) -> Result<MigrationSpec, String> {
    let text = |i: usize| {
        row.try_get::<_, Option<String>>(i)
            .map_err(|e| e.to_string())
    };
    let (from, to) = (text(2)?.unwrap_or_default(), text(3)?.unwrap_or_default());
    let (new_type, up, down) = (text(4)?, text(5)?, text(6)?);
    let spec = MigrationSpec::new(
        id,
        table,
        &from,
        &to,
        new_type.as_deref(),
        up.as_deref(),
        down.as_deref(),
    )
    .map_err(|e| e.reason)?;
    match op {
        crate::api::Op::RenameColumn => spec.renamed_in_place().map_err(|e| e.reason),
        crate::api::Op::ChangeType => {
            let keys: KeepNameKeys = stored_keys(row)?;
            Ok(MigrationSpec {
                keep_name: keys.keep_name,
                new_shape: keys.new_shape,
                ..spec
            })
        }
        _ => Ok(spec),
    }
}

/// What a `change_type` keeps in `catalog_keys` (its columns, types and
/// conversions are in their own columns; `down` over the working name).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeepNameKeys {
    #[serde(default)]
    keep_name: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    new_shape: Option<crate::rewrite::marker::ShapeMarker>,
}

/// A stored migration's spec, checked again, by its operation.
fn spec_of(
    row: &tokio_postgres::Row,
    id: &str,
    table: &str,
    op: crate::api::Op,
) -> Result<MigrationSpec, String> {
    use crate::api::Op;
    let spec = match op {
        Op::DropColumn => {
            let from: Option<String> = row.try_get(2).map_err(|e| e.to_string())?;
            let keys: DropColumnKeys = stored_keys(row)?;
            let column = from.as_deref().unwrap_or_default();
            MigrationSpec::drop_column(id, table, column, keys.new_shape)
        }
        Op::AddColumn => MigrationSpec::add_column(id, table, &stored_keys(row)?),
        Op::RenameTable => {
            let to: Option<String> = row.try_get(3).map_err(|e| e.to_string())?;
            MigrationSpec::rename_table(id, table, to.as_deref().unwrap_or_default())
        }
        op if op.is_catalog() => MigrationSpec::catalog(id, table, op, stored_keys(row)?),
        op => return column_spec(row, id, table, op),
    };
    spec.map_err(|e| e.reason)
}

/// What a `drop_column` keeps in `catalog_keys` (its column is `from_column`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DropColumnKeys {
    #[serde(default)]
    new_shape: Option<crate::rewrite::marker::ShapeMarker>,
}

/// The stored `catalog_keys` of a migration, as its operation's keys.
fn stored_keys<T: serde::de::DeserializeOwned>(row: &tokio_postgres::Row) -> Result<T, String> {
    let text: Option<String> = row.try_get(34).map_err(|e| e.to_string())?;
    serde_json::from_str(text.as_deref().unwrap_or("{}"))
        .map_err(|e| format!("catalog_keys {text:?}: {e}"))
}

/// Every migration in the store, by id.
pub async fn load_all(client: &impl GenericClient) -> Result<Vec<Record>, StoreError> {
    let rows = client
        .query(
            &format!("select {COLUMNS} from pgshift.migrations order by id"),
            &[],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

/// Inserts `record` unless a migration with its id exists; returns the
/// stored record (the existing one wins: the store is the truth).
pub async fn insert_if_absent(
    client: &impl GenericClient,
    record: &Record,
) -> Result<Record, StoreError> {
    let spec = &record.spec;
    client
        .execute(
            &format!(
                "insert into pgshift.migrations (id, table_name, from_column, to_column, new_type, up, down, phase, op, catalog_keys, updated_ms)
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb, {NOW_MS}) on conflict (id) do nothing"
            ),
            &[
                &spec.id,
                &spec.table.to_string(),
                &column_name(&spec.from),
                &column_name(spec.renamed_to.as_deref().unwrap_or(&spec.to)),
                &spec.new_type,
                &spec.up,
                &spec.down,
                &record.phase.as_str(),
                &spec.op().as_str(),
                &match (&spec.catalog, &spec.added) {
                    (Some(c), _) => serde_json::to_string(&c.keys).ok(),
                    (None, Some(a)) => serde_json::to_string(&a.keys).ok(),
                    (None, None) if spec.keep_name => serde_json::to_string(&KeepNameKeys {
                        keep_name: true,
                        new_shape: spec.new_shape.clone(),
                    })
                    .ok(),
                    (None, None) => spec
                        .new_shape
                        .as_ref()
                        .map(|m| serde_json::json!({ "new_shape": m }).to_string()),
                },
            ],
        )
        .await?;
    let row = client
        .query_one(
            &format!("select {COLUMNS} from pgshift.migrations where id = $1"),
            &[&spec.id],
        )
        .await?;
    from_row(&row)
}

/// A column name as stored (quoted as in SQL; empty for none).
fn column_name(name: &str) -> String {
    if name.is_empty() {
        String::new()
    } else {
        quote_ident(name)
    }
}

/// Saves everything but the spec — and, while the backfill runs, but its
/// progress (cursor, rows done, slices): its workers commit that with each
/// batch, and a record read before their last batch must not take it back.
pub async fn save(client: &impl GenericClient, r: &Record) -> Result<(), StoreError> {
    let b = &r.backfill;
    let v = r.validation.as_ref();
    let slices = slices_json(&b.slices);
    client
        .execute(
            &format!(
                "update pgshift.migrations set phase = $2,
                   backfill_cursor = case when $6 then backfill_cursor else $3 end,
                   rows_done = case when $6 then rows_done else $4 end,
                   backfill_slices = case when $6 then backfill_slices else $23::text::jsonb end,
                   backfill_workers = $22,
                   rows_total = $5, backfill_running = $6, backfill_paused = $7, batch_size = $8,
                   batch_pause_ms = $9, batch_timeout_ms = $10, backfill_started_ms = $11,
                   backfill_finished_ms = $12, validation_mismatches = $13, validation_samples = $14,
                   validation_ms = $15, write_path_changed_ms = $16, not_null_check = $17,
                   batch_target_ms = $18, max_replication_lag_ms = $19, max_lock_waits = $20,
                   old_after = $21, carried = $24::text::jsonb, backfill_end = $25,
                   backfill_error = $26,
                   barrier_ms = case when $27 then coalesce(barrier_ms, {NOW_MS}) end,
                   catalog_undo = $28,
                   autopilot = $29::text::jsonb,
                   updated_ms = {NOW_MS}
                 where id = $1"
            ),
            &[
                &r.spec.id,
                &r.phase.as_str(),
                &b.cursor,
                &b.rows_done,
                &b.rows_total,
                &b.running,
                &b.paused,
                &b.batch_size,
                &b.batch_pause_ms,
                &b.batch_timeout_ms,
                &b.started_ms,
                &b.finished_ms,
                &v.map(|v| v.mismatches),
                &v.map(|v| v.samples.clone()),
                &v.map(|v| v.at_ms),
                &r.write_path_changed_ms,
                &r.not_null_check,
                &b.batch_target_ms,
                &b.max_replication_lag_ms,
                &b.max_lock_waits,
                &r.spec.old_after,
                &b.workers,
                &slices,
                &serde_json::to_string(&r.carried).unwrap_or_else(|_| "{}".into()),
                &b.end,
                &b.error,
                &r.barrier,
                &r.catalog_undo,
                &serde_json::to_string(&r.autopilot).unwrap_or_else(|_| "{}".into()),
            ],
        )
        .await?;
    Ok(())
}

/// `slices` as the JSON stored in `backfill_slices`.
fn slices_json(slices: &[Slice]) -> String {
    serde_json::to_string(slices).unwrap_or_else(|_| "[]".into())
}

/// Stores the slices a backfill was just split into (while it runs, which
/// [`save`] leaves alone).
pub async fn save_slices(
    client: &impl GenericClient,
    id: &str,
    slices: &[Slice],
) -> Result<(), StoreError> {
    client
        .execute(
            "update pgshift.migrations set backfill_slices = $2::text::jsonb where id = $1",
            &[&id, &slices_json(slices)],
        )
        .await?;
    Ok(())
}

/// Asks the running backfill of `id` to pause (whichever proxy runs it reads
/// it at its next batch); false if it was not running any more.
pub async fn ask_pause(client: &impl GenericClient, id: &str) -> Result<bool, StoreError> {
    let asked = client
        .execute(
            &format!(
                "update pgshift.migrations set backfill_paused = true, updated_ms = {NOW_MS}
                 where id = $1 and backfill_running"
            ),
            &[&id],
        )
        .await?;
    Ok(asked == 1)
}

/// Appends to the event history.
pub async fn event(
    client: &impl GenericClient,
    migration: &str,
    actor: &str,
    action: &str,
    detail: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "insert into pgshift.events (migration_id, actor, action, detail) values ($1, $2, $3, $4)",
            &[&migration, &actor, &action, &detail],
        )
        .await?;
    Ok(())
}

/// Milliseconds since the Unix epoch on the database's clock.
pub async fn now_ms(client: &impl GenericClient) -> Result<i64, StoreError> {
    Ok(client
        .query_one(&format!("select {NOW_MS}"), &[])
        .await?
        .get(0))
}
