//! A column rename done in place (`"op": "rename_column"`): nothing is
//! copied. Both names are served by rewriting while the one physical column
//! keeps its name; at the switch it is renamed (`ALTER TABLE … RENAME
//! COLUMN`, a catalog change) behind a barrier, and the rules flip. The
//! barrier also serves the contract of a type change that keeps the
//! column's name (the old column dropped, the new one renamed to it).
//!
//! The barrier: the record's `barrier` flag goes up and every proxy
//! acknowledges it, holding from then on each statement that names the
//! table (Query, Parse, a Bind or EXECUTE of a statement that does). Then
//! one transaction renames the column, stores the next phase with the flag
//! down and bumps the state version, so the physical name and the stored
//! phase never disagree. The proxies apply the new rules and release what
//! they held, rewritten under them. When the rename cannot take its lock
//! within the lock timeout (a transaction holds the table), the barrier is
//! lowered, the held statements go on under the old rules, and the whole
//! attempt is made again after the back-off.

use std::time::Duration;

use tokio_postgres::error::SqlState;

use super::store::{self, Record};
use super::{ddl, peers, ActionError, Lifecycle};
use crate::rewrite::migration::{quote_ident, Phase};

/// How long the proxies have to acknowledge the barrier before the attempt
/// is given up (their sessions are held meanwhile).
const BARRIER_ACK: Duration = Duration::from_secs(2);
/// How long the rename waits for its lock in one attempt, at most (the
/// lock discipline's timeout when shorter): the statements held behind the
/// barrier wait as long, so an attempt that cannot have the lock gives up
/// soon, lets them go on, and tries again after the back-off.
const BARRIER_LOCK_TIMEOUT: Duration = Duration::from_millis(200);
/// How long a proxy waits for the requests it sent before the barrier
/// (those touching a migrating table) to be answered before it holds.
const BARRIER_DRAIN: Duration = Duration::from_millis(1500);

impl Lifecycle {
    /// `expand`: nothing to add; the column (or table) `to` must not exist.
    pub(super) async fn expand_in_place(&self, mut record: Record) -> Result<(), ActionError> {
        if record.phase != Phase::Planned {
            return Err(Self::illegal(&record, "expand", "phase planned"));
        }
        let client = self.connect().await?;
        let spec = &record.spec;
        let table = spec.table.to_string();
        if spec.renamed_to.is_some() {
            Self::check_table_rename(&client, spec).await?;
            record.phase = Phase::Expanded;
            let detail = "nothing copied: both names served from the one table";
            return self.commit(&client, record, "expand", detail, true).await;
        }
        Self::existing_column(&client, &table, &spec.from).await?;
        if ddl::column_info(&client, &table, &spec.to).await?.is_some() {
            let to = quote_ident(&spec.to);
            return Err(ActionError::Conflict(format!(
                "table {table} already has a column {to}: a rename in place needs the name free"
            )));
        }
        record.phase = Phase::Expanded;
        let detail = "nothing copied: both names served from the one column";
        self.commit(&client, record, "expand", detail, true).await
    }

    /// `switch-reads`: the column renamed `from` → `to` (to new) or back
    /// (to old), behind the barrier.
    pub(super) async fn switch_in_place(
        &self,
        record: Record,
        to_new: bool,
    ) -> Result<(), ActionError> {
        let (now, next) = match to_new {
            true => (Phase::Expanded, Phase::Switched),
            false => (Phase::Switched, Phase::Expanded),
        };
        if record.phase == next {
            return Ok(());
        }
        if record.phase != now {
            let needs = format!("phase {now}");
            return Err(Self::illegal(&record, "switch-reads", &needs));
        }
        self.rename_behind_barrier(record, to_new, next, "switch-reads")
            .await
    }

    /// `contract`: nothing to drop (the old name is gone since the switch);
    /// the old-shape guard still decides whether clients are done with it.
    pub(super) async fn contract_in_place(
        &self,
        mut record: Record,
        options: &crate::api::Contract,
    ) -> Result<(), ActionError> {
        if record.phase != Phase::Switched {
            return Err(Self::illegal(&record, "contract", "phase switched"));
        }
        let client = self.connect().await?;
        self.check_no_old_shape(&client, &record, options).await?;
        record.phase = Phase::Contracted;
        let detail = "nothing to drop: the column was renamed in place";
        self.commit(&client, record, "contract", detail, true).await
    }

    /// `rollback`: the rules end; a column already renamed is renamed back
    /// behind the barrier first.
    pub(super) async fn rollback_in_place(&self, mut record: Record) -> Result<(), ActionError> {
        match record.phase {
            Phase::Planned | Phase::Expanded => {
                let client = self.connect().await?;
                record.phase = Phase::RolledBack;
                self.commit(&client, record, "rollback", "rules off", true)
                    .await
            }
            Phase::Switched | Phase::Contracted => {
                self.rename_behind_barrier(record, false, Phase::RolledBack, "rollback")
                    .await
            }
            _ => Err(Self::illegal(
                &record,
                "rollback",
                "a phase before complete",
            )),
        }
    }

    /// Renames the column (`from` → `to` when `forward`, else back) and
    /// moves the record to `next`, behind the barrier.
    async fn rename_behind_barrier(
        &self,
        record: Record,
        forward: bool,
        next: Phase,
        action: &str,
    ) -> Result<(), ActionError> {
        let spec = &record.spec;
        let rename = match &spec.renamed_to {
            Some(new) => {
                let (from, to) = match forward {
                    true => (spec.table.name.as_str(), new.as_str()),
                    false => (new.as_str(), spec.table.name.as_str()),
                };
                format!(
                    "alter table {}.{} rename to {}",
                    quote_ident(&spec.table.schema),
                    quote_ident(from),
                    quote_ident(to)
                )
            }
            None => {
                let (from, to) = match forward {
                    true => (&spec.from, &spec.to),
                    false => (&spec.to, &spec.from),
                };
                format!(
                    "alter table {} rename column {} to {}",
                    spec.table,
                    quote_ident(from),
                    quote_ident(to)
                )
            }
        };
        self.behind_barrier(record, rename, next, action).await
    }

    /// A table rename needs the table, and its new name free in its schema.
    pub(super) async fn check_table_rename(
        client: &tokio_postgres::Client,
        spec: &crate::rewrite::migration::MigrationSpec,
    ) -> Result<(), ActionError> {
        let schema = quote_ident(&spec.table.schema);
        let new = spec.renamed_to.as_deref().unwrap_or_default();
        let taken = format!("{schema}.{}", quote_ident(new));
        let row = client
            .query_one(
                "select to_regclass($1) is not null, to_regclass($2) is not null",
                &[&spec.table.to_string(), &taken],
            )
            .await?;
        match (row.get::<_, bool>(0), row.get::<_, bool>(1)) {
            (true, false) => Ok(()),
            (false, _) => Err(ActionError::Conflict(format!(
                "there is no table {}",
                spec.table
            ))),
            (true, true) => Err(ActionError::Conflict(format!(
                "schema {schema} already has a relation {}: a table rename needs the name free",
                quote_ident(new)
            ))),
        }
    }

    /// Runs `rename` (DDL naming the table's columns anew) and moves the
    /// record to `next` in one transaction, behind the barrier; retried
    /// under the lock discipline, lowering the barrier between attempts.
    pub(super) async fn behind_barrier(
        &self,
        record: Record,
        rename: String,
        next: Phase,
        action: &str,
    ) -> Result<(), ActionError> {
        let client = self.connect().await?;
        let spec = &record.spec;
        let mut flipped = record.clone();
        flipped.phase = next;
        flipped.barrier = false;
        let mut holders = String::new();
        for attempt in 1..=self.lock.attempts.max(1) {
            let started = std::time::Instant::now();
            self.raise_barrier(&client, &record, action).await?;
            let before = ddl::lock_holders(&client).await.unwrap_or_default();
            match self.rename_and_flip(&client, &flipped, &rename).await {
                Ok(Some(version)) => {
                    let held_ms = started.elapsed().as_millis();
                    tracing::info!(migration = %spec.id, attempt, held_ms, "renamed in place behind the barrier");
                    return self
                        .announce(&client, &flipped, version, action, &rename, held_ms)
                        .await;
                }
                Ok(None) => {
                    let wait = self.lock.backoff;
                    holders = ddl::describe_holders(&client, &before).await;
                    tracing::info!(migration = %spec.id, attempt, wait_ms = wait.as_millis() as u64, held_by = %holders, "the rename did not get its lock; barrier lowered, retrying");
                    self.lower_barrier(&client, &record, action).await?;
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    self.lower_barrier(&client, &record, action).await?;
                    return Err(e);
                }
            }
        }
        Err(ActionError::Failed(format!(
            "`{rename}` did not get its lock in {} attempts of {} ms (held for the whole last attempt by: {holders}); nothing changed, and both shapes are still served",
            self.lock.attempts,
            self.rename_lock_timeout().as_millis()
        )))
    }

    /// How long one attempt of the rename waits for its lock.
    fn rename_lock_timeout(&self) -> Duration {
        self.lock.lock_timeout.min(BARRIER_LOCK_TIMEOUT)
    }

    /// Raises the barrier and waits until every live proxy holds; lowers
    /// it again when one does not in time.
    async fn raise_barrier(
        &self,
        client: &tokio_postgres::Client,
        record: &Record,
        action: &str,
    ) -> Result<(), ActionError> {
        let version = self.store_barrier(client, record, true, action).await?;
        if !self.drained_for_barrier().await {
            self.lower_barrier(client, record, action).await?;
            return Err(ActionError::Failed(format!(
                "requests touching the table were still in flight {} ms after the rename barrier went up (a long statement?); nothing was renamed",
                BARRIER_DRAIN.as_millis()
            )));
        }
        self.heartbeat(client, version).await?;
        let options = peers::Options {
            ack_timeout: BARRIER_ACK,
            ..self.options
        };
        if let Err(e) = peers::wait_for(client, version, options).await {
            self.lower_barrier(client, record, action).await?;
            return Err(ActionError::Failed(format!(
                "the rename barrier was not held by every proxy in time ({e}); nothing was renamed"
            )));
        }
        Ok(())
    }

    /// Under a barrier: waits (at most [`BARRIER_DRAIN`]) until no request
    /// touching a migrating table is in flight — every statement sent
    /// before the barrier has reached the server and holds its lock, or is
    /// done — and answers whether that happened. True at once without a
    /// barrier.
    pub(super) async fn drained_for_barrier(&self) -> bool {
        let now = std::time::Instant::now();
        let held: Vec<String> = self
            .rules
            .load()
            .holds
            .iter()
            .filter(|(_, until)| *until > now)
            .map(|(table, _)| table.clone())
            .collect();
        if held.is_empty() {
            return true;
        }
        let deadline = tokio::time::Instant::now() + BARRIER_DRAIN;
        // Only the held tables' requests: one on another table may wait
        // for a row lock of a transaction whose next statement is held.
        while self.rules.touching_in_flight(&held) > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(in_flight = self.rules.touching_in_flight(&held), "requests sent before the rename barrier are still in flight; not acknowledging it yet");
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    /// Lowers the barrier: the held statements go on under the rules of
    /// `record`'s phase.
    async fn lower_barrier(
        &self,
        client: &tokio_postgres::Client,
        record: &Record,
        action: &str,
    ) -> Result<(), ActionError> {
        let version = self.store_barrier(client, record, false, action).await?;
        self.heartbeat(client, version).await
    }

    /// Stores `record` with the barrier up or down, as a new state version
    /// published here; returns the version.
    async fn store_barrier(
        &self,
        client: &tokio_postgres::Client,
        record: &Record,
        up: bool,
        action: &str,
    ) -> Result<i64, ActionError> {
        let mut changed = record.clone();
        changed.barrier = up;
        let detail = if up {
            "barrier raised"
        } else {
            "barrier lowered"
        };
        self.store_change(client, changed, "pgshift", action, detail)
            .await
    }

    /// One transaction: the rename (under `lock_timeout`), the record in
    /// its next phase with the barrier down, a new state version. Then the
    /// new rules are published here. Returns the version; `None` when the
    /// rename did not get its lock in time (nothing changed).
    async fn rename_and_flip(
        &self,
        client: &tokio_postgres::Client,
        flipped: &Record,
        rename: &str,
    ) -> Result<Option<i64>, ActionError> {
        let cancel_autovacuum = ddl::cancel_autovacuum_early(client).await;
        let _synced = self.sync.lock().await;
        let timeout_ms = self.rename_lock_timeout().as_millis();
        let transaction = async {
            let begin = format!(
                "begin; set local lock_timeout = '{timeout_ms}ms'; {cancel_autovacuum}{rename}"
            );
            match client.batch_execute(&begin).await {
                Err(e) if e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => return Ok(None),
                other => other?,
            }
            store::save(client, flipped).await?;
            let version = peers::bump(client).await?;
            client.batch_execute("commit").await?;
            Ok::<_, ActionError>(Some(version))
        };
        let version = match transaction.await {
            Ok(Some(version)) => version,
            other => {
                let _ = client.batch_execute("rollback").await;
                return other;
            }
        };
        self.lock_records()
            .insert(flipped.spec.id.clone(), flipped.clone());
        self.publish(client).await;
        self.applied
            .fetch_max(version, std::sync::atomic::Ordering::AcqRel);
        Ok(Some(version))
    }

    /// After the flip: the event, and every proxy's acknowledgement.
    async fn announce(
        &self,
        client: &tokio_postgres::Client,
        flipped: &Record,
        version: i64,
        action: &str,
        rename: &str,
        held_ms: u128,
    ) -> Result<(), ActionError> {
        let actor = super::ACTOR.try_with(|a| *a).unwrap_or("admin");
        let detail = format!("{rename} (statements held {held_ms} ms)");
        store::event(client, &flipped.spec.id, actor, action, &detail).await?;
        self.heartbeat(client, version).await?;
        peers::wait_for(client, version, self.options)
            .await
            .map_err(ActionError::Failed)
    }
}
