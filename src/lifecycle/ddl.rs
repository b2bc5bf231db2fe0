//! DDL under the lock-timeout discipline: every ALTER runs with a short
//! `lock_timeout` and is retried with jittered back-off, so that waiting
//! for a lock never queues application queries behind it for longer than
//! the timeout. An autovacuum in the way is cancelled by Postgres itself
//! once the waiting ALTER has waited `deadlock_timeout` (1 s by default,
//! as long as the lock timeout, so the ALTER gave up first and every retry
//! queued the application behind the same autovacuum again): where the
//! role may set it, each attempt lowers `deadlock_timeout` to
//! [`AUTOVACUUM_CANCEL_AFTER`]. Each attempt that times out logs who held
//! a lock for all of it. Plus what the expand and contract steps need to
//! read from the catalog: column types, the indexes on a column, NOT NULL.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::rewrite::migration::quote_ident;

/// How ALTERs wait for their lock.
#[derive(Debug, Clone, Copy)]
pub struct LockDiscipline {
    pub lock_timeout: Duration,
    pub attempts: u32,
    pub backoff: Duration,
}

impl Default for LockDiscipline {
    fn default() -> Self {
        LockDiscipline {
            lock_timeout: Duration::from_secs(1),
            attempts: 60,
            backoff: Duration::from_millis(250),
        }
    }
}

/// How long an ALTER waits before Postgres cancels an autovacuum that
/// holds its lock (the ALTER's `deadlock_timeout`, where the role may set
/// it: a superuser, or `GRANT SET ON PARAMETER deadlock_timeout`).
pub const AUTOVACUUM_CANCEL_AFTER: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum DdlError {
    #[error("gave up after {attempts} attempts to take the lock for `{sql}` (lock_timeout {timeout_ms} ms each); held for the whole last attempt by: {holders}")]
    LockNotAvailable {
        sql: String,
        attempts: u32,
        timeout_ms: u128,
        holders: String,
    },
    #[error("`{sql}` failed: {}", crate::pgerror::describe(source))]
    Failed {
        sql: String,
        source: tokio_postgres::Error,
    },
}

/// A pseudo-random fraction in [0, 1) (no RNG crate for one jitter).
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut x = u64::from(nanos) ^ 0x9E37_79B9_7F4A_7C15;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x % 10_000) as f64 / 10_000.0
}

/// Runs `sql` (one statement, in its own implicit transaction) with the
/// lock discipline; returns how many attempts it took.
pub async fn run_with_lock_timeout(
    client: &Client,
    sql: &str,
    discipline: LockDiscipline,
) -> Result<u32, DdlError> {
    let timeout_ms = discipline.lock_timeout.as_millis();
    let cancel_autovacuum = cancel_autovacuum_early(client).await;
    let mut holders = String::new();
    for attempt in 1..=discipline.attempts {
        // Who holds table locks as the wait begins (to name, should it
        // time out, those that held them all along).
        let before = lock_holders(client).await.unwrap_or_default();
        let text = format!("set local lock_timeout = '{timeout_ms}ms'; {cancel_autovacuum}{sql}");
        // `set local` needs a transaction block: the Query's statements
        // run in one implicit transaction.
        match client
            .batch_execute(&format!("begin; {text}; commit"))
            .await
        {
            Ok(()) => return Ok(attempt),
            Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                let _ = client.batch_execute("rollback").await;
                holders = describe_holders(client, &before).await;
                let wait = discipline.backoff.mul_f64(1.0 + jitter());
                tracing::info!(attempt, %sql, wait_ms = wait.as_millis() as u64, held_by = %holders, "lock not available; retrying");
                tokio::time::sleep(wait).await;
            }
            Err(source) => {
                let _ = client.batch_execute("rollback").await;
                return Err(DdlError::Failed {
                    sql: sql.to_string(),
                    source,
                });
            }
        }
    }
    Err(DdlError::LockNotAvailable {
        sql: sql.to_string(),
        attempts: discipline.attempts,
        timeout_ms,
        holders,
    })
}

/// The `set local` that makes an ALTER in this transaction cancel a
/// blocking autovacuum after [`AUTOVACUUM_CANCEL_AFTER`], where the role
/// may set it; empty otherwise.
pub async fn cancel_autovacuum_early(client: &Client) -> String {
    if may_set_deadlock_timeout(client).await {
        format!(
            "set local deadlock_timeout = '{}ms'; ",
            AUTOVACUUM_CANCEL_AFTER.as_millis()
        )
    } else {
        String::new()
    }
}

/// Whether this session may set `deadlock_timeout` (a superuser setting).
async fn may_set_deadlock_timeout(client: &Client) -> bool {
    let allowed = client
        .batch_execute("begin; set local deadlock_timeout = '1s'; rollback")
        .await
        .is_ok();
    if !allowed {
        let _ = client.batch_execute("rollback").await;
    }
    allowed
}

/// A transaction of another session holding locks on tables.
#[derive(Debug, Clone)]
pub(super) struct LockHolder {
    pid: i32,
    /// Its virtual transaction id (`pg_locks.virtualtransaction`, visible
    /// to every role): the same one seen twice is the same transaction.
    transaction: String,
    /// `client backend`, `autovacuum worker`, … (`None`: not visible to
    /// this role without `pg_read_all_stats`, as are the age and query).
    backend_type: Option<String>,
    application_name: Option<String>,
    /// Seconds since its transaction began.
    seconds: Option<f64>,
    /// Its current (or last) statement, shortened.
    query: Option<String>,
    /// The tables it holds locks on, with the modes.
    locks: String,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(backend_type) = &self.backend_type else {
            return write!(
                f,
                "pid {} holding {} (who it is is not visible to this role: grant it pg_read_all_stats)",
                self.pid, self.locks
            );
        };
        write!(f, "pid {} ({backend_type}", self.pid)?;
        if let Some(name) = self.application_name.as_deref().filter(|n| !n.is_empty()) {
            write!(f, ", application {name:?}")?;
        }
        write!(f, ")")?;
        if let Some(seconds) = self.seconds {
            write!(f, " in a transaction for {seconds:.1} s")?;
        }
        write!(f, ", holding {}", self.locks)?;
        if let Some(query) = &self.query {
            write!(f, ": {query}")?;
        }
        Ok(())
    }
}

/// The transactions of other sessions of this database that hold locks
/// on tables (not the system catalogs), oldest first.
pub(super) async fn lock_holders(
    client: &Client,
) -> Result<Vec<LockHolder>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select l.pid, l.virtualtransaction, a.backend_type, a.application_name,
                    extract(epoch from clock_timestamp() - a.xact_start)::float8,
                    left(regexp_replace(a.query, '\\s+', ' ', 'g'), 120),
                    string_agg(distinct l.relation::regclass::text || ' ' || l.mode, ', ')
               from pg_locks l
               join pg_class c on c.oid = l.relation and c.relkind in ('r', 'p', 'm')
               left join pg_stat_activity a on a.pid = l.pid
              where l.granted and l.locktype = 'relation'
                and l.database = (select oid from pg_database where datname = current_database())
                and l.pid <> pg_backend_pid()
                and c.relnamespace <> 'pg_catalog'::regnamespace
              group by 1, 2, 3, 4, 5, 6
              order by 5 desc nulls first",
            &[],
        )
        .await?;
    rows.iter()
        .map(|r| {
            Ok(LockHolder {
                pid: r.try_get(0)?,
                transaction: r.try_get(1)?,
                backend_type: r.try_get(2)?,
                application_name: r.try_get(3)?,
                seconds: r.try_get(4)?,
                query: r.try_get(5)?,
                locks: r.try_get(6)?,
            })
        })
        .collect()
}

/// Of the transactions holding table locks now, those that already held
/// them at `before` (taken as a wait began): the ones the whole wait can
/// have waited for — application transactions that came and went during
/// it are not listed. One line for a log or an error message.
pub(super) async fn describe_holders(client: &Client, before: &[LockHolder]) -> String {
    let now = match lock_holders(client).await {
        Ok(now) => now,
        Err(e) => return format!("(cannot read pg_locks: {e})"),
    };
    let throughout: Vec<String> = now
        .iter()
        .filter(|h| {
            before
                .iter()
                .any(|b| b.pid == h.pid && b.transaction == h.transaction)
        })
        .take(5)
        .map(LockHolder::to_string)
        .collect();
    if throughout.is_empty() {
        "no transaction held a table lock for the whole wait (a queue of short transactions, or a holder that has just finished)".into()
    } else {
        throughout.join("; ")
    }
}

/// Runs one statement outside a transaction (CREATE/DROP INDEX CONCURRENTLY).
pub async fn run(client: &Client, sql: &str) -> Result<(), DdlError> {
    client
        .batch_execute(sql)
        .await
        .map_err(|source| DdlError::Failed {
            sql: sql.to_string(),
            source,
        })
}

/// A column as the catalog declares it.
#[derive(Debug, Clone)]
pub struct ColumnInfo {
    pub type_name: String,
    pub not_null: bool,
    /// Its default expression (not a generated column's), if any.
    pub default: Option<String>,
}

/// `table`'s column `column`, if it exists (`table` is a quoted,
/// qualified name).
pub async fn column_info(
    client: &Client,
    table: &str,
    column: &str,
) -> Result<Option<ColumnInfo>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "select format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    case when a.attgenerated = '' then pg_get_expr(d.adbin, d.adrelid) end
               from pg_attribute a
               left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
              where a.attrelid = $1::text::regclass and a.attname = $2 and a.attnum > 0
                and not a.attisdropped",
            &[&table, &column],
        )
        .await?;
    Ok(row.map(|r| ColumnInfo {
        type_name: r.get(0),
        not_null: r.get(1),
        default: r.get(2),
    }))
}

/// The live column just before `column` in `table` (skipping `skip`):
/// `Some("")` when it comes first, `None` when there is no such column.
pub async fn column_before(
    client: &Client,
    table: &str,
    column: &str,
    skip: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "select coalesce((select p.attname::text from pg_attribute p
                               where p.attrelid = a.attrelid and p.attnum > 0 and not p.attisdropped
                                 and p.attnum < a.attnum and p.attname <> $3
                               order by p.attnum desc limit 1), '')
               from pg_attribute a
              where a.attrelid = $1::text::regclass and a.attname = $2 and not a.attisdropped",
            &[&table, &column, &skip],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// Whether an index of this name exists and is invalid (a failed
/// CREATE INDEX CONCURRENTLY leaves one behind).
pub async fn invalid_index(
    client: &Client,
    schema: &str,
    name: &str,
) -> Result<Option<bool>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "select i.indisvalid from pg_index i join pg_class c on c.oid = i.indexrelid
               join pg_namespace n on n.oid = c.relnamespace where n.nspname = $1 and c.relname = $2",
            &[&schema, &name],
        )
        .await?;
    Ok(row.map(|r| !r.get::<_, bool>(0)))
}

/// A constraint as Postgres defines it.
#[derive(Debug, Clone)]
pub struct Constraint {
    pub name: String,
    /// `pg_get_constraintdef`: `FOREIGN KEY (…) REFERENCES …`, `CHECK (…)`.
    pub definition: String,
}

/// `ALTER TABLE table ADD CONSTRAINT name <definition> NOT VALID` (a NOT
/// VALID already in the definition is not repeated): a copy enforced for
/// new writes at once, validated later without blocking them.
pub fn add_not_valid(table: &str, name: &str, definition: &str) -> String {
    let not_valid = if definition.ends_with("NOT VALID") {
        ""
    } else {
        " NOT VALID"
    };
    format!(
        "alter table {table} add constraint {} {definition}{not_valid}",
        quote_ident(name)
    )
}

/// The constraints of `table` of the kinds in `kinds` (`contype` letters:
/// `"f"`, `"c"`, `"ufc"`) whose own columns include `column`; pgshift's
/// copies and its NOT NULL check left out.
pub async fn constraints_using(
    client: &Client,
    table: &str,
    column: &str,
    kinds: &str,
) -> Result<Vec<Constraint>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select c.conname::text, pg_get_constraintdef(c.oid)
               from pg_constraint c
               join pg_attribute a on a.attrelid = c.conrelid and a.attnum = any(c.conkey)
              where c.conrelid = $1::text::regclass and strpos($3, c.contype::text) > 0
                and a.attname = $2
                and c.conname not like '%\\_pgshift\\_%' and c.conname not like 'pgshift\\_%'
              order by 1",
            &[&table, &column, &kinds],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Constraint {
            name: r.get(0),
            definition: r.get(1),
        })
        .collect())
}

/// The key a backfill walks: the primary key, or else a unique index whose
/// columns are all NOT NULL — (column, type) in key order.
pub async fn walk_key(
    client: &Client,
    table: &str,
) -> Result<Option<Vec<(String, String)>>, tokio_postgres::Error> {
    let rows = client
        .query(
            "select i.indexrelid, i.indisprimary, a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull, k.n
               from pg_index i
               cross join lateral unnest(i.indkey) with ordinality k(attnum, n)
               join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
              where i.indrelid = $1::text::regclass and i.indisunique and i.indisvalid
                and i.indexprs is null and i.indpred is null
              order by i.indisprimary desc, i.indexrelid, k.n",
            &[&table],
        )
        .await?;
    let mut current: Option<u32> = None;
    let mut key: Vec<(String, String)> = Vec::new();
    let mut usable = true;
    for r in &rows {
        let index: u32 = r.get(0);
        if current != Some(index) {
            if current.is_some() && usable && !key.is_empty() {
                return Ok(Some(key));
            }
            current = Some(index);
            key.clear();
            usable = true;
        }
        let not_null: bool = r.get(4);
        usable &= not_null;
        key.push((r.get(2), r.get(3)));
    }
    Ok((usable && !key.is_empty()).then_some(key))
}

/// The indexes and constraints of `table` that use a column of `one` and
/// a column of `other` (names).
pub async fn objects_spanning(
    client: &Client,
    table: &str,
    one: &[String],
    other: &[String],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "with t as (select $1::text::regclass as oid),
                  objects as (
                    select c.relname::text as name, i.indkey::int2[] as cols
                      from pg_index i join pg_class c on c.oid = i.indexrelid, t where i.indrelid = t.oid
                    union all
                    select k.conname::text, k.conkey from pg_constraint k, t where k.conrelid = t.oid)
             select distinct name from objects o
              where exists (select 1 from pg_attribute a, t where a.attrelid = t.oid and a.attnum = any(o.cols) and a.attname = any($2))
                and exists (select 1 from pg_attribute a, t where a.attrelid = t.oid and a.attnum = any(o.cols) and a.attname = any($3))
              order by 1",
            &[&table, &one, &other],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
