//! The migration lifecycle, run by pgshift itself: expand → backfill →
//! validate → switch reads → contract → complete, and rollback — each step
//! a legal transition of the durable record in [`store`], its DDL under the
//! lock discipline of [`ddl`], and a new rules epoch so every session sees
//! the new phase at its next statement.
//!
//! Actions are serialized (one at a time per proxy); the backfill runs as a
//! background task that commits its cursor with every batch and resumes
//! from it after a restart. Every transition and failure is appended to
//! `pgshift.events`.

pub mod backfill;
mod backfill_run;
pub mod checks;
pub mod ddl;
pub mod dependents;
pub mod foreign_keys;
pub mod handover;
pub mod indexes;
pub mod not_null;
pub mod peers;
pub mod store;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Config;
use crate::control;
use crate::rewrite::migration::{quote_ident, MigrationSpec, Phase};
use crate::rewrite::rules::{ActiveMigration, RulesCell};
use backfill::Walk;

tokio::task_local! {
    /// Who drives the action in progress, as its event records it (the
    /// admin port sets it per request: which token, or loopback).
    pub static ACTOR: &'static str;
}
use ddl::LockDiscipline;
use store::{Record, Validation};

/// Why an action did not happen, as the admin port answers it.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("no migration {0:?}")]
    NotFound(String),
    /// The action is not legal now (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    /// Failed in a way that may heal (a lost connection, a lock not
    /// granted in time, a deadlock, a server restarting).
    #[error("{0}")]
    Failed(String),
    /// Postgres refused a statement of the action for what it is (an
    /// `up` expression that fails on a row, a constraint, a permission):
    /// retrying cannot help.
    #[error("{0}")]
    Refused(String),
}

impl From<store::StoreError> for ActionError {
    fn from(e: store::StoreError) -> Self {
        match &e {
            store::StoreError::Postgres(pg) if !crate::pgerror::may_heal(pg) => {
                ActionError::Refused(e.to_string())
            }
            _ => ActionError::Failed(e.to_string()),
        }
    }
}

impl From<tokio_postgres::Error> for ActionError {
    fn from(e: tokio_postgres::Error) -> Self {
        let text = format!("Postgres: {}", crate::pgerror::describe(&e));
        if crate::pgerror::may_heal(&e) {
            ActionError::Failed(text)
        } else {
            ActionError::Refused(text)
        }
    }
}

impl From<ddl::DdlError> for ActionError {
    fn from(e: ddl::DdlError) -> Self {
        match &e {
            ddl::DdlError::Failed { source, .. } if !crate::pgerror::may_heal(source) => {
                ActionError::Refused(e.to_string())
            }
            _ => ActionError::Failed(e.to_string()),
        }
    }
}

/// How often a running backfill asks whether to throttle itself.
const THROTTLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The most sessions one backfill walks the table with.
const MAX_BACKFILL_WORKERS: i32 = 16;
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

/// The lifecycle driver of one proxy.
pub struct Lifecycle {
    config: Config,
    rules: Arc<RulesCell>,
    /// The records as last loaded or saved (never held across an await).
    records: Mutex<BTreeMap<String, Record>>,
    /// One action at a time.
    action: tokio::sync::Mutex<()>,
    /// Pause flags of running backfills.
    pauses: Mutex<BTreeMap<String, Arc<AtomicBool>>>,
    /// Serializes every change of the records and its publication, so a
    /// publication built from an older state can never land after a newer
    /// one (the poller and an action may both publish). A control-plane
    /// lock, never taken on the statement path.
    sync: tokio::sync::Mutex<()>,
    /// Why a running backfill is waiting, per migration.
    throttled: Mutex<BTreeMap<String, String>>,
    pub lock: LockDiscipline,
    /// Time between publishing rules that stop using a column and dropping
    /// it, so statements already rewritten under the old rules (sent but
    /// not yet executed) finish first.
    pub settle: Duration,
    /// This proxy's id in `pgshift.proxies`.
    id: String,
    options: peers::Options,
    /// The state version whose rules are in force here.
    applied: AtomicI64,
    poller: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        self.stop();
        // Best effort: leave the proxies table (a crashed proxy instead
        // ages out after `proxy_timeout`).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (config, id) = (self.config.clone(), self.id.clone());
            runtime.spawn(async move {
                if let Ok(client) = control::connect(&config).await {
                    let _ = peers::leave(&client, &id).await;
                }
            });
        }
    }
}

fn config_listen(config: &Config) -> String {
    config.listen.to_string()
}

impl Lifecycle {
    /// Creates the `pgshift` schema if needed, stores the configured
    /// migrations that are new (and applies a `phase` given in the config
    /// as an operator override), loads every record, publishes the rules
    /// and resumes interrupted backfills.
    pub async fn start(
        config: Config,
        rules: Arc<RulesCell>,
    ) -> Result<Arc<Lifecycle>, ActionError> {
        Self::start_with(config, rules, peers::Options::default()).await
    }

    /// [`Lifecycle::start`] with the coordination timing given.
    pub async fn start_with(
        config: Config,
        rules: Arc<RulesCell>,
        options: peers::Options,
    ) -> Result<Arc<Lifecycle>, ActionError> {
        let client = control::connect(&config)
            .await
            .map_err(|e| ActionError::Failed(e.to_string()))?;
        store::create_schema(&client).await?;
        // Host and listen address: two live proxies cannot share them, and
        // a proxy restarted after a crash takes its old place.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let id = format!("{host}/{}", config_listen(&config));
        let lifecycle = Arc::new(Lifecycle {
            config,
            rules,
            records: Mutex::new(BTreeMap::new()),
            action: tokio::sync::Mutex::new(()),
            pauses: Mutex::new(BTreeMap::new()),
            sync: tokio::sync::Mutex::new(()),
            throttled: Mutex::new(BTreeMap::new()),
            lock: LockDiscipline::default(),
            settle: Duration::from_millis(500),
            id,
            options,
            applied: AtomicI64::new(0),
            poller: Mutex::new(None),
        });
        lifecycle.reload(&lifecycle.config.clone()).await?;
        // Other proxies' changes arrive through the state version.
        let weak = Arc::downgrade(&lifecycle);
        let poller = tokio::spawn(async move {
            let mut client: Option<tokio_postgres::Client> = None;
            loop {
                let Some(this) = weak.upgrade() else { return };
                let poll = this.options.poll;
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = this.connect().await.ok();
                }
                if let Some(c) = &client {
                    let followed = match this.follow(c).await {
                        Ok(()) => this.adopt_orphaned_backfills(c).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = followed {
                        tracing::warn!(error = %e, "cannot follow the migration state; retrying");
                        client = None;
                    }
                }
                drop(this);
                tokio::time::sleep(poll).await;
            }
        });
        *lifecycle.poller.lock().unwrap_or_else(|e| e.into_inner()) = Some(poller);
        // Backfills left running (by this proxy before a restart, or by one
        // that is gone) go on from their cursors.
        lifecycle.adopt_orphaned_backfills(&client).await?;
        Ok(lifecycle)
    }

    /// SIGHUP: stores newly configured migrations, applies explicit
    /// `phase` overrides, reloads every record and publishes.
    pub async fn reload(&self, config: &Config) -> Result<(), ActionError> {
        let _one_at_a_time = self.action.lock().await;
        let client = self.connect().await?;
        let _synced = self.sync.lock().await;
        let mut changed = false;
        for m in &config.migrations {
            let stored =
                store::insert_if_absent(&client, &Record::new(m.spec.clone(), m.phase)).await?;
            if config.phase_overrides.contains(&m.spec.id) && stored.phase != m.phase {
                let mut r = stored;
                let from = r.phase;
                r.phase = m.phase;
                store::save(&client, &r).await?;
                store::event(
                    &client,
                    &m.spec.id,
                    "config",
                    "phase override",
                    &format!("{from} -> {}", m.phase),
                )
                .await?;
                changed = true;
            }
        }
        let version = if changed {
            peers::bump(&client).await?
        } else {
            peers::version(&client).await?
        };
        let records = store::load_all(&client).await?;
        *self.lock_records() = records
            .into_iter()
            .map(|r| (r.spec.id.clone(), r))
            .collect();
        self.publish(&client).await;
        self.applied.fetch_max(version, Ordering::AcqRel);
        peers::heartbeat(
            &client,
            &self.id,
            &config_listen(&self.config),
            version,
            &self.old_shape_json(),
        )
        .await?;
        self.renew_lease();
        Ok(())
    }

    /// One poll: heartbeat, and when the state version moved, reload and
    /// publish the records.
    async fn follow(&self, client: &tokio_postgres::Client) -> Result<(), ActionError> {
        let synced = self.sync.lock().await;
        let version = peers::version(client).await?;
        if version > self.applied.load(Ordering::Acquire) {
            let records = store::load_all(client).await?;
            *self.lock_records() = records
                .into_iter()
                .map(|r| (r.spec.id.clone(), r))
                .collect();
            self.publish(client).await;
            self.applied.fetch_max(version, Ordering::AcqRel);
            tracing::info!(version, "applied a migration state change");
        }
        drop(synced);
        let applied = self.applied.load(Ordering::Acquire);
        peers::heartbeat(
            client,
            &self.id,
            &config_listen(&self.config),
            applied,
            &self.old_shape_json(),
        )
        .await?;
        self.renew_lease();
        Ok(())
    }

    /// Confirms the rules in force for a while: less than the time after
    /// which other proxies stop waiting for this one, so a proxy that falls
    /// silent refuses statements on migrating tables before anyone else
    /// goes on without it.
    fn renew_lease(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let lease = self.options.proxy_timeout.as_millis() as u64 * 2 / 3;
        self.rules.renew_lease(now + lease);
    }

    /// Stops following the state (at shutdown; tests use it to make a
    /// proxy that no longer applies changes).
    pub fn stop(&self) {
        if let Some(poller) = self.poller.lock().unwrap_or_else(|e| e.into_inner()).take() {
            poller.abort();
        }
    }

    /// Stops following the state and removes this proxy from
    /// `pgshift.proxies`, so actions elsewhere no longer wait for it.
    pub async fn leave(&self) {
        self.stop();
        if let Ok(client) = self.connect().await {
            let _ = peers::leave(&client, &self.id).await;
        }
    }

    /// This proxy's old-shape usage, as its heartbeat publishes it.
    fn old_shape_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (id, usage) in self.rules.old_shape_usage() {
            let apps: serde_json::Map<String, Value> = usage
                .applications
                .iter()
                .map(|(name, ms)| (name.clone(), json!(ms)))
                .collect();
            out.insert(
                id,
                json!({ "statements": usage.statements, "last_ms": usage.last_ms, "applications": apps }),
            );
        }
        Value::Object(out)
    }

    /// This proxy's id in `pgshift.proxies`.
    pub fn proxy_id(&self) -> &str {
        &self.id
    }

    fn records(&self) -> Vec<Record> {
        self.lock_records().values().cloned().collect()
    }

    fn lock_records(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, id: &str) -> Result<Record, ActionError> {
        self.lock_records()
            .get(id)
            .cloned()
            .ok_or_else(|| ActionError::NotFound(id.to_string()))
    }

    /// Publishes the records' phases, with a fresh catalog snapshot read
    /// over `client` (the connection the change was made on: no new
    /// backend per epoch), as a new rules epoch.
    async fn publish(&self, client: &tokio_postgres::Client) {
        let migrations: Vec<ActiveMigration> = self
            .records()
            .into_iter()
            .map(|r| ActiveMigration {
                spec: r.spec,
                phase: r.phase,
            })
            .collect();
        let epoch = match control::read_catalog(client).await {
            Ok(catalog) => self.rules.publish_with_catalog(&migrations, catalog),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the catalog; publishing with the last snapshot");
                self.rules.publish(&migrations)
            }
        };
        for m in &migrations {
            tracing::info!(epoch, migration = %m.spec.id, phase = %m.phase, "rules in force");
        }
    }

    /// Saves `record` (and its event), makes it the current one, publishes
    /// the new rules here and (with `wait`) waits until every live proxy
    /// has applied them — for changes of the rewrite rules; progress that
    /// leaves the rules as they were (the backfill's) does not wait.
    async fn commit(
        &self,
        client: &tokio_postgres::Client,
        record: Record,
        action: &str,
        detail: &str,
        wait: bool,
    ) -> Result<(), ActionError> {
        let version = self
            .store_change(
                client,
                record,
                ACTOR.try_with(|a| *a).unwrap_or("admin"),
                action,
                detail,
            )
            .await?;
        peers::heartbeat(
            client,
            &self.id,
            &config_listen(&self.config),
            version,
            &self.old_shape_json(),
        )
        .await?;
        if !wait {
            return Ok(());
        }
        peers::wait_for(client, version, self.options)
            .await
            .map_err(ActionError::Failed)
    }

    /// Saves `record` with its event under a new state version, makes it
    /// the current one and publishes the rules here: the new version.
    async fn store_change(
        &self,
        client: &tokio_postgres::Client,
        record: Record,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> Result<i64, ActionError> {
        let _synced = self.sync.lock().await;
        store::save(client, &record).await?;
        store::event(client, &record.spec.id, actor, action, detail).await?;
        let version = peers::bump(client).await?;
        self.lock_records().insert(record.spec.id.clone(), record);
        self.publish(client).await;
        self.applied.fetch_max(version, Ordering::AcqRel);
        Ok(version)
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, ActionError> {
        control::connect(&self.config)
            .await
            .map_err(|e| ActionError::Failed(e.to_string()))
    }

    /// `POST /migrations`: adds a migration (phase planned) to the store;
    /// every proxy of the database applies it before this returns.
    pub async fn add(&self, body: &Value) -> Result<Value, ActionError> {
        let text = |key: &str| body.get(key).and_then(Value::as_str);
        let (Some(id), Some(table), Some(from), Some(to)) =
            (text("id"), text("table"), text("from"), text("to"))
        else {
            return Err(ActionError::BadRequest(
                "a migration needs \"id\", \"table\", \"from\" and \"to\" (and, for a type change, \"type\", \"up\", \"down\")".into(),
            ));
        };
        let spec = crate::rewrite::migration::MigrationSpec::new(
            id,
            table,
            from,
            to,
            text("type"),
            text("up"),
            text("down"),
        )
        .map_err(|e| ActionError::BadRequest(e.to_string()))?;
        let _one_at_a_time = self.action.lock().await;
        for other in self.records() {
            let clash = other.spec.id == spec.id
                || (other.spec.table == spec.table
                    && !matches!(other.phase, Phase::Complete | Phase::RolledBack)
                    && [&other.spec.from, &other.spec.to]
                        .iter()
                        .any(|c| **c == spec.from || **c == spec.to));
            if clash {
                return Err(ActionError::Conflict(format!(
                    "migration {:?} clashes with migration {:?} (same id, or a column of the same table in flight)",
                    spec.id, other.spec.id
                )));
            }
        }
        let client = self.connect().await?;
        let table = spec.table.to_string();
        let exists: bool = client
            .query_one("select to_regclass($1) is not null", &[&table])
            .await?
            .get(0);
        if !exists {
            return Err(ActionError::Conflict(format!("there is no table {table}")));
        }
        if ddl::column_info(&client, &table, &spec.from)
            .await?
            .is_none()
        {
            return Err(ActionError::Conflict(format!(
                "table {table} has no column {}",
                quote_ident(&spec.from)
            )));
        }
        // What depends on a is found now, not by a failing DROP at the end.
        let found = dependents::find(&client, &spec, &self.rules.load().catalog).await?;
        dependents::refuse_uncarried(&spec, &found)?;
        let record =
            store::insert_if_absent(&client, &Record::new(spec.clone(), Phase::Planned)).await?;
        self.commit(&client, record, "add", &body.to_string(), true)
            .await?;
        drop(_one_at_a_time);
        self.status_of(&spec.id)
    }

    /// Runs `action` on migration `id`; the answer is the migration's status.
    pub async fn act(
        self: &Arc<Self>,
        id: &str,
        action: &str,
        body: &Value,
    ) -> Result<Value, ActionError> {
        let _one_at_a_time = self.action.lock().await;
        let record = self.record(id)?;
        match action {
            "expand" => self.expand(record).await?,
            "backfill" => self.backfill(record, body).await?,
            "pause" => self.pause(record).await?,
            "resume" => self.resume(record).await?,
            "validate" => self.validate(record, body).await?,
            "switch-reads" => self.switch_reads(record, body).await?,
            "contract" => self.contract(record, body).await?,
            "complete" => self.complete(record).await?,
            "rollback" => self.rollback(record).await?,
            other => return Err(ActionError::NotFound(format!("action {other:?}"))),
        }
        self.status_of(id)
    }

    fn illegal(record: &Record, action: &str, needs: &str) -> ActionError {
        ActionError::Conflict(format!(
            "migration {:?} is {}: {action} needs {needs}",
            record.spec.id, record.phase
        ))
    }

    async fn expand(&self, mut record: Record) -> Result<(), ActionError> {
        if record.phase != Phase::Planned {
            return Err(Self::illegal(&record, "expand", "phase planned"));
        }
        let client = self.connect().await?;
        let spec = record.spec.clone();
        let table = spec.table.to_string();
        let old = ddl::column_info(&client, &table, &spec.from)
            .await?
            .ok_or_else(|| {
                ActionError::Conflict(format!(
                    "table {table} has no column {}",
                    quote_ident(&spec.from)
                ))
            })?;
        let new_type = spec
            .new_type
            .clone()
            .unwrap_or_else(|| old.type_name.clone());
        let (a, b) = (quote_ident(&spec.from), quote_ident(&spec.to));
        let attempts = ddl::run_with_lock_timeout(
            &client,
            &format!("alter table {table} add column if not exists {b} {new_type}"),
            self.lock,
        )
        .await?;
        // a's default becomes b's (converted): once a is gone, an INSERT
        // that leaves the column out gets what it got before. Only future
        // rows take it (no table rewrite); until contract every INSERT
        // writes b explicitly.
        if let Some(default) = &old.default {
            ddl::run_with_lock_timeout(
                &client,
                &format!(
                    "alter table {table} alter column {b} set default {}",
                    spec.up_of(&format!("({default})"))
                ),
                self.lock,
            )
            .await?;
        }
        // Indexes using a (keys, expressions, predicates), copied onto b
        // without blocking writes.
        for index in indexes::indexes_using(&client, &table, &spec.from).await? {
            let name = indexes::copy_name(&index.name, &spec.to);
            if ddl::invalid_index(&client, &spec.table.schema, &name).await? == Some(true) {
                ddl::run(
                    &client,
                    &format!(
                        "drop index concurrently if exists {}.{}",
                        quote_ident(&spec.table.schema),
                        quote_ident(&name)
                    ),
                )
                .await?;
            }
            let Some(copy) =
                indexes::copy_statement(&index.definition, &name, &spec.from, &spec.to)
            else {
                tracing::warn!(index = %index.name, definition = %index.definition, "index not copied: its definition could not be read");
                continue;
            };
            ddl::run(&client, &copy).await?;
        }
        // Foreign keys a takes part in: added on b as NOT VALID (enforced
        // for new writes at once), validated at contract.
        for fk in foreign_keys::foreign_keys_of(&client, &table, &spec.from).await? {
            let name = foreign_keys::copy_name(&fk.name, &spec.to);
            if let Some(copy) =
                foreign_keys::copy_statement(&table, &fk.definition, &name, &spec.from, &spec.to)
            {
                self.copy_constraint(&client, &spec, "foreign key", &fk.name, &name, &copy)
                    .await?;
            }
        }
        // CHECK constraints on a: added on b as NOT VALID too.
        for check in checks::checks_on(&client, &table, &spec.from).await? {
            let name = indexes::copy_name(&check.name, &spec.to);
            if let Some(copy) = checks::copy_statement(&table, &check.definition, &name, &spec) {
                self.copy_constraint(
                    &client,
                    &spec,
                    "check constraint",
                    &check.name,
                    &name,
                    &copy,
                )
                .await?;
            }
        }
        // a's NOT NULL reaches b at validate, once the backfill has filled
        // b (see `not_null`): a NOT VALID check added now would fail every
        // UPDATE of a row the backfill has not reached yet.
        record.phase = Phase::Expanded;
        record.write_path_changed_ms = store::now_ms(&client).await?;
        self.commit(
            &client,
            record,
            "expand",
            &format!("added {b} {new_type} (lock attempts: {attempts}); {a} dual-written"),
            true,
        )
        .await?;
        Ok(())
    }

    /// Adds the `NOT VALID` copy `copy` (named `name`) of constraint
    /// `original` on `b`, replacing a leftover of the same name. One that
    /// `b`'s type cannot carry (a type change) is reported as an event, not
    /// fatal: the migration goes on without it.
    async fn copy_constraint(
        &self,
        client: &tokio_postgres::Client,
        spec: &MigrationSpec,
        kind: &str,
        original: &str,
        name: &str,
        copy: &str,
    ) -> Result<(), ActionError> {
        let sql = format!(
            "alter table {} drop constraint if exists {}; {copy}",
            spec.table,
            quote_ident(name)
        );
        if let Err(e) = ddl::run_with_lock_timeout(client, &sql, self.lock).await {
            tracing::warn!(constraint = %original, error = %e, "{kind} not copied");
            store::event(
                client,
                &spec.id,
                "expand",
                &format!("{kind} not copied"),
                &format!("{original}: {e}"),
            )
            .await?;
        }
        Ok(())
    }

    async fn backfill(
        self: &Arc<Self>,
        mut record: Record,
        body: &Value,
    ) -> Result<(), ActionError> {
        // Settings may change at any time, running or not.
        let setting = |key: &str| {
            body.get(key)
                .and_then(Value::as_i64)
                .map(|v| v.clamp(0, i32::MAX as i64) as i32)
        };
        let changed = setting("batch_size").is_some()
            || setting("batch_pause_ms").is_some()
            || setting("batch_timeout_ms").is_some()
            || setting("batch_target_ms").is_some()
            || setting("max_replication_lag_ms").is_some()
            || setting("max_lock_waits").is_some()
            || setting("workers").is_some();
        if let Some(v) = setting("batch_size") {
            if v < 1 {
                return Err(ActionError::BadRequest(
                    "batch_size must be at least 1".into(),
                ));
            }
            record.backfill.batch_size = v;
        }
        if let Some(v) = setting("batch_pause_ms") {
            record.backfill.batch_pause_ms = v;
        }
        if let Some(v) = setting("workers") {
            if !(1..=MAX_BACKFILL_WORKERS).contains(&v) {
                return Err(ActionError::BadRequest(format!(
                    "workers must be from 1 to {MAX_BACKFILL_WORKERS}"
                )));
            }
            record.backfill.workers = v;
        }
        if let Some(v) = body.get("max_replication_lag_ms").and_then(Value::as_i64) {
            record.backfill.max_replication_lag_ms = v.clamp(-1, i32::MAX as i64) as i32;
        }
        if let Some(v) = body.get("max_lock_waits").and_then(Value::as_i64) {
            record.backfill.max_lock_waits = v.clamp(-1, i32::MAX as i64) as i32;
        }
        if let Some(v) = setting("batch_target_ms") {
            record.backfill.batch_target_ms = v;
        }
        if let Some(v) = setting("batch_timeout_ms") {
            record.backfill.batch_timeout_ms = v.max(1);
        }
        let client = self.connect().await?;
        if record.phase == Phase::Backfilling && record.backfill.running {
            if changed {
                self.commit(
                    &client,
                    record,
                    "backfill settings",
                    &body.to_string(),
                    false,
                )
                .await?;
                return Ok(());
            }
            return Err(Self::illegal(
                &record,
                "backfill",
                "a backfill that is not running (it is; pause or change its settings)",
            ));
        }
        if !matches!(record.phase, Phase::Expanded | Phase::Backfilling) {
            return Err(Self::illegal(&record, "backfill", "phase expanded"));
        }
        let table = record.spec.table.to_string();
        let Some(key) = ddl::walk_key(&client, &table).await? else {
            return Err(ActionError::Conflict(format!(
                "table {table} has no primary key (nor a unique index on NOT NULL columns) to walk the backfill in order"
            )));
        };
        // The planner's estimate; a table never analyzed has none, and is
        // counted instead (under a timeout: no estimate beats a long scan).
        let mut total: i64 = client
            .query_one(
                "select reltuples::bigint from pg_class where oid = $1::text::regclass",
                &[&table],
            )
            .await?
            .get(0);
        if total <= 0 {
            let count = format!("select count(*) from {table}");
            let counted = client.query_one(&count, &[]);
            total = match tokio::time::timeout(Duration::from_secs(10), counted).await {
                Ok(Ok(row)) => row.get(0),
                _ => 0,
            };
        }
        if record.phase == Phase::Expanded {
            // Rows inserted from now on are dual-written: the walk ends at
            // today's last key instead of chasing the inserts.
            record.backfill.end = Walk::new(&record, &key).last_key(&client).await?;
        }
        record.phase = Phase::Backfilling;
        record.backfill.running = true;
        record.backfill.paused = false;
        record.backfill.error = None;
        record.backfill.rows_total = Some(total.max(record.backfill.rows_done));
        if record.backfill.started_ms.is_none() {
            record.backfill.started_ms = Some(store::now_ms(&client).await?);
        }
        let id = record.spec.id.clone();
        self.commit(&client, record, "backfill", "started", false)
            .await?;
        self.spawn_backfill(&id);
        Ok(())
    }

    async fn pause(&self, record: Record) -> Result<(), ActionError> {
        if !(record.phase == Phase::Backfilling && record.backfill.running) {
            return Err(Self::illegal(&record, "pause", "a running backfill"));
        }
        self.stop_backfill(&record).await
    }

    async fn resume(self: &Arc<Self>, record: Record) -> Result<(), ActionError> {
        if record.phase != Phase::Backfilling || record.backfill.running {
            return Err(Self::illegal(&record, "resume", "a paused backfill"));
        }
        self.backfill(record, &Value::Null).await
    }

    /// Sets (or clears) why `id`'s backfill waits; returns the previous reason.
    fn set_throttled(&self, id: &str, reason: Option<String>) -> Option<String> {
        let mut map = self.throttled.lock().unwrap_or_else(|e| e.into_inner());
        match reason {
            Some(r) => map.insert(id.to_string(), r),
            None => map.remove(id),
        }
    }

    async fn validate(&self, mut record: Record, body: &Value) -> Result<(), ActionError> {
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
        let fix = body.get("fix").and_then(Value::as_bool).unwrap_or(false);
        // Ranges of `range_rows` keys with `pause_ms` between them (the
        // backfill's pause unless given): the check's share of the
        // database is the operator's choice, as the backfill's is.
        let range_rows = match body.get("range_rows").map(Value::as_u64) {
            None => VALIDATE_RANGE_ROWS,
            Some(Some(n @ 1..=1_000_000)) => n as i32,
            Some(_) => {
                return Err(ActionError::BadRequest(
                    "range_rows must be a number from 1 to 1000000".into(),
                ))
            }
        };
        let pause = match body.get("pause_ms").map(Value::as_u64) {
            None => u64::try_from(record.backfill.batch_pause_ms).unwrap_or(0),
            Some(Some(ms)) => ms,
            Some(None) => {
                return Err(ActionError::BadRequest(
                    "pause_ms must be a number of milliseconds".into(),
                ))
            }
        };
        // One statement within `one_pass_ms` (default 5 s) for a table of
        // at most 1 GiB, unless the request describes a walk (its range
        // size or pause) or a fix (a fix writes range by range).
        let one_pass_ms = match body.get("one_pass_ms").map(Value::as_u64) {
            None => ONE_PASS_BUDGET_MS,
            Some(Some(ms @ 0..=60_000)) => ms,
            Some(_) => {
                return Err(ActionError::BadRequest(
                    "one_pass_ms must be a number of milliseconds from 0 (never) to 60000".into(),
                ))
            }
        };
        let walk_asked = fix || body.get("range_rows").is_some() || body.get("pause_ms").is_some();
        let client = self.connect().await?;
        let table = record.spec.table.to_string();
        let key = ddl::walk_key(&client, &table)
            .await?
            .ok_or_else(|| ActionError::Conflict(format!("table {table} has no key to walk")))?;
        let walk = Walk::new(&record, &key);
        let started = std::time::Instant::now();
        // Why a table that could have been one statement was walked.
        let mut why_walked = String::new();
        let mut one_pass = None;
        if !walk_asked && one_pass_ms > 0 {
            // The table's heap, or its partitions' (`pg_partition_tree`
            // lists nothing for a table that is not partitioned).
            let bytes: i64 = client
                .query_one(
                    "select greatest(pg_relation_size(t),
                                     (select sum(pg_relation_size(relid)) from pg_partition_tree(t)))::bigint
                       from (select $1::text::regclass as t) pgshift_table",
                    &[&table],
                )
                .await?
                .get(0);
            if bytes <= ONE_PASS_MAX_BYTES {
                one_pass = walk.check_all(&client, one_pass_ms).await?;
                if one_pass.is_none() {
                    why_walked = format!("; one statement ran past {one_pass_ms} ms");
                }
            } else {
                why_walked = format!(
                    "; the table's {} MiB are more than one statement's",
                    bytes >> 20
                );
            }
        }
        let (mismatches, samples, how) = match one_pass {
            Some((rows, bad, some)) => {
                let how = format!(
                    "one statement over {rows} rows in {} ms",
                    started.elapsed().as_millis()
                );
                (bad, some, how)
            }
            None => {
                let walked = walk
                    .check_ranges(&client, range_rows, Duration::from_millis(pause), fix)
                    .await?;
                let how = format!(
                    "{} range{} of up to {range_rows} keys over {} rows in {} ms{why_walked}",
                    walked.ranges,
                    if walked.ranges == 1 { "" } else { "s" },
                    walked.rows,
                    started.elapsed().as_millis()
                );
                (walked.mismatches, walked.samples, how)
            }
        };
        tracing::info!(migration = %record.spec.id, mismatches, checked = %how, "parity check done");
        let at_ms = store::now_ms(&client).await?;
        record.validation = Some(Validation {
            mismatches,
            samples,
            at_ms,
        });
        if mismatches == 0 {
            let old_not_null = ddl::column_info(&client, &table, &record.spec.from)
                .await?
                .is_some_and(|c| c.not_null);
            if old_not_null || record.not_null_check.is_some() {
                record.not_null_check = Some(
                    not_null::add_valid_check(&client, &table, &record.spec.to, self.lock).await?,
                );
            }
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

    async fn switch_reads(&self, mut record: Record, body: &Value) -> Result<(), ActionError> {
        let to = body.get("to").and_then(Value::as_str).ok_or_else(|| {
            ActionError::BadRequest("body must be {\"to\": \"new\"} or {\"to\": \"old\"}".into())
        })?;
        let client = self.connect().await?;
        match to {
            "new" => {
                if record.phase == Phase::Switched {
                    return Ok(());
                }
                if record.phase != Phase::Validated {
                    return Err(Self::illegal(
                        &record,
                        "switch-reads to new",
                        "phase validated",
                    ));
                }
                match &record.validation {
                    Some(v) if v.mismatches > 0 => {
                        return Err(ActionError::Conflict(format!("the last validation found {} mismatches (e.g. keys {:?}); validate again (with {{\"fix\": true}} to fix them)", v.mismatches, v.samples)))
                    }
                    Some(v) if v.at_ms < record.write_path_changed_ms => {
                        return Err(ActionError::Conflict("the last validation is older than the last change of the write path; validate again".into()))
                    }
                    None => return Err(ActionError::Conflict("no validation yet; run validate".into())),
                    Some(_) => {}
                }
                record.phase = Phase::Switched;
            }
            "old" => {
                if record.phase == Phase::Validated {
                    return Ok(());
                }
                if record.phase != Phase::Switched {
                    return Err(Self::illegal(
                        &record,
                        "switch-reads to old",
                        "phase switched",
                    ));
                }
                record.phase = Phase::Validated;
            }
            other => {
                return Err(ActionError::BadRequest(format!(
                    "\"to\" must be \"new\" or \"old\", not {other:?}"
                )))
            }
        }
        self.commit(&client, record, "switch-reads", to, true)
            .await?;
        Ok(())
    }

    async fn contract(&self, mut record: Record, body: &Value) -> Result<(), ActionError> {
        let client = self.connect().await?;
        let spec = record.spec.clone();
        let table = spec.table.to_string();
        match record.phase {
            Phase::Switched => {
                self.check_no_old_shape(&client, &record, body).await?;
                Self::check_exclusion_constraints(&client, &spec, body).await?;
                self.prepare_contract(&client, &mut record).await?;
                // Stop writing a before dropping it: once these rules are
                // out, nothing reads or writes a any more.
                record.phase = Phase::Contracted;
                self.commit(&client, record.clone(), "contract", "rules: b only", true)
                    .await?;
                tokio::time::sleep(self.settle).await;
            }
            // A contract whose DROP failed is finished by running it again.
            Phase::Contracted
                if ddl::column_info(&client, &table, &spec.from)
                    .await?
                    .is_some() =>
            {
                handover::move_referencing_keys(&client, &spec, self.lock).await?;
            }
            _ => {
                return Err(Self::illegal(
                    &record,
                    "contract",
                    "reads switched to new (phase switched)",
                ))
            }
        }
        // One transaction: the keys referencing a, a itself, the primary
        // key taken over by b's index, the copies renamed as the originals.
        let last = handover::final_transaction(&client, &spec).await?;
        let attempts = ddl::run_with_lock_timeout(&client, &last.join("; "), self.lock).await?;
        self.commit(
            &client,
            record,
            "contract",
            &format!(
                "dropped {} (lock attempts: {attempts})",
                quote_ident(&spec.from)
            ),
            true,
        )
        .await?;
        Ok(())
    }

    /// What a contract does while both columns exist and the rules still
    /// write both, so that a failure leaves the migration switched and
    /// fully working: b takes over the keys referencing a, a's NOT NULL,
    /// unique constraints and foreign keys; a's NOT NULL goes last. Each
    /// change is stored as it is made (a rollback puts back what needs it).
    async fn prepare_contract(
        &self,
        client: &tokio_postgres::Client,
        record: &mut Record,
    ) -> Result<(), ActionError> {
        let spec = record.spec.clone();
        let table = spec.table.to_string();
        // Whatever else depends on a (created since the migration was
        // registered, too) must be carried, or nothing changes.
        let found = dependents::find(client, &spec, &self.rules.load().catalog).await?;
        dependents::refuse_uncarried(&spec, &found)?;
        // Foreign keys referencing a are moved onto b first: one that
        // cannot move stops the contract before any other change.
        handover::move_referencing_keys(client, &spec, self.lock).await?;
        // Where a stands, so `*` keeps the old shape's order once it is gone.
        record.spec.old_after = ddl::column_before(client, &table, &spec.from, &spec.to).await?;
        if record.not_null_check.is_some() {
            let check = not_null::add_valid_check(client, &table, &spec.to, self.lock).await?;
            not_null::set_proven(client, &table, &spec.to, &check, self.lock).await?;
            record.not_null_check = None;
            self.save_step(client, record, "b set not null").await?;
        }
        // Unique constraints on a: their index copies on b become the
        // same constraints on b (the index is taken over, not rebuilt).
        let constraints = handover::constraint_names(client, &table).await?;
        for (constraint, index) in
            indexes::unique_constraints_to_carry(client, &table, &spec.from, &spec.to).await?
        {
            let copy = indexes::copy_name(&constraint, &spec.to);
            if constraints.contains(&copy) {
                continue; // carried by an earlier attempt
            }
            ddl::run_with_lock_timeout(
                client,
                &format!(
                    "alter table {table} add constraint {} unique using index {}",
                    quote_ident(&copy),
                    quote_ident(&index)
                ),
                self.lock,
            )
            .await?;
        }
        // The foreign keys and checks copied at expand, validated before a
        // goes (SHARE UPDATE EXCLUSIVE: reads and writes go on meanwhile).
        for name in foreign_keys::unvalidated_copies(client, &table, &spec.to).await? {
            ddl::run_with_lock_timeout(
                client,
                &format!(
                    "alter table {table} validate constraint {}",
                    quote_ident(&name)
                ),
                self.lock,
            )
            .await?;
        }
        // Views, triggers, policies… read b from now on (a and down(b)
        // agree while both are written); a rollback puts them back.
        if !found.is_empty() {
            let carried = dependents::carry(client, &found, self.lock).await;
            let (done, failed) = match carried {
                Ok(done) => (done, None),
                Err((done, e)) => (done, Some(e)),
            };
            let names: Vec<String> = done.iter().map(|d| d.object.clone()).collect();
            record.carried.redefined.extend(done);
            self.save_step(
                client,
                record,
                &format!("carried onto b: {}", names.join(", ")),
            )
            .await?;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        // The keys: referencing keys and the primary key move onto b.
        let keys = handover::key_transaction(client, &spec).await?;
        if !keys.is_empty() {
            ddl::run_with_lock_timeout(client, &keys.join("; "), self.lock).await?;
            record.carried.keys_handed_over = true;
            self.save_step(client, record, "keys handed over to b")
                .await?;
        }
        // Last: once the rules stop writing a, an INSERT must not fail on
        // a's NOT NULL in the moment before a is dropped.
        let old_not_null = ddl::column_info(client, &table, &spec.from)
            .await?
            .is_some_and(|c| c.not_null);
        if old_not_null {
            not_null::drop(client, &table, &spec.from, self.lock).await?;
            record.carried.old_not_null_dropped = true;
            self.save_step(client, record, "a drop not null").await?;
        }
        Ok(())
    }

    /// Stores a step of an action that leaves the rules as they are (no
    /// new state version: the other proxies have nothing to apply).
    async fn save_step(
        &self,
        client: &tokio_postgres::Client,
        record: &Record,
        detail: &str,
    ) -> Result<(), ActionError> {
        let _synced = self.sync.lock().await;
        store::save(client, record).await?;
        store::event(client, &record.spec.id, "admin", "step", detail).await?;
        self.lock_records()
            .insert(record.spec.id.clone(), record.clone());
        Ok(())
    }

    /// Refuses to contract while an exclusion constraint uses `a` with no
    /// equivalent on `b` (dropping `a` would drop it), unless the body says
    /// `"drop_exclusion_constraints": true`.
    async fn check_exclusion_constraints(
        client: &tokio_postgres::Client,
        spec: &MigrationSpec,
        body: &Value,
    ) -> Result<(), ActionError> {
        let allowed = body
            .get("drop_exclusion_constraints")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let left = handover::exclusion_constraints_left(client, spec).await?;
        if left.is_empty() || allowed {
            return Ok(());
        }
        let list: Vec<String> = left
            .iter()
            .map(|(name, on_b)| {
                format!(
                    "{} (to keep it: alter table {} add constraint <name> {on_b})",
                    quote_ident(name),
                    spec.table
                )
            })
            .collect();
        Err(ActionError::Conflict(format!(
            "dropping {} would drop the exclusion constraint(s) {}; Postgres builds an exclusion constraint only under a lock that blocks writes, so pgshift does not: add it on {} yourself and contract again, or pass {{\"drop_exclusion_constraints\": true}}",
            quote_ident(&spec.from),
            list.join(", "),
            quote_ident(&spec.to)
        )))
    }

    /// Refuses to contract while applications still send old-shape
    /// statements (through any live proxy) within the window, unless forced.
    async fn check_no_old_shape(
        &self,
        client: &tokio_postgres::Client,
        record: &Record,
        body: &Value,
    ) -> Result<(), ActionError> {
        if body.get("force").and_then(Value::as_bool) == Some(true) {
            return Ok(());
        }
        let window = Duration::from_secs(
            body.get("window_secs")
                .and_then(Value::as_u64)
                .unwrap_or(600),
        );
        // Our own usage first, so it is current in the table.
        peers::heartbeat(
            client,
            &self.id,
            &config_listen(&self.config),
            self.applied.load(Ordering::Acquire),
            &self.old_shape_json(),
        )
        .await?;
        let users = peers::old_shape_users(client, &record.spec.id, window, self.options).await?;
        if users.is_empty() {
            return Ok(());
        }
        let now = store::now_ms(client).await?;
        let list: Vec<String> = users
            .iter()
            .take(10)
            .map(|(app, proxy, at)| {
                let name = if app.is_empty() {
                    "(no application_name)"
                } else {
                    app.as_str()
                };
                format!("{name} via {proxy}, {} s ago", (now - at).max(0) / 1000)
            })
            .collect();
        Err(ActionError::Conflict(format!(
            "old-shape statements (naming {}) were seen in the last {} s from: {}; move them to {} first, or contract with {{\"force\": true}}",
            quote_ident(&record.spec.from),
            window.as_secs(),
            list.join("; "),
            quote_ident(&record.spec.to),
        )))
    }

    async fn complete(&self, mut record: Record) -> Result<(), ActionError> {
        if record.phase != Phase::Contracted {
            return Err(Self::illegal(&record, "complete", "phase contracted"));
        }
        let client = self.connect().await?;
        record.phase = Phase::Complete;
        self.commit(&client, record, "complete", "rules removed", true)
            .await?;
        Ok(())
    }

    async fn rollback(&self, mut record: Record) -> Result<(), ActionError> {
        let spec = record.spec.clone();
        let table = spec.table.to_string();
        if record.phase == Phase::RolledBack {
            // A rollback whose DROP failed is finished by running it again.
            let client = self.connect().await?;
            if ddl::column_info(&client, &table, &spec.to).await?.is_none() {
                return Err(Self::illegal(
                    &record,
                    "rollback",
                    "a phase before contracted",
                ));
            }
            self.put_back_carried(&client, &mut record).await?;
            return self.drop_new_column(&client, &record).await;
        }
        if matches!(record.phase, Phase::Contracted | Phase::Complete) {
            return Err(Self::illegal(
                &record,
                "rollback",
                "a phase before contracted",
            ));
        }
        if record.carried.keys_handed_over {
            return Err(ActionError::Conflict(format!(
                "migration {:?}: a contract already handed the keys of {} (primary key, foreign keys referencing it) over to {}; finish it with contract",
                record.spec.id,
                quote_ident(&spec.from),
                quote_ident(&spec.to)
            )));
        }
        if record.backfill.running {
            self.stop_backfill(&record).await?;
            record = self.record(&record.spec.id)?;
        }
        let client = self.connect().await?;
        // What a contract that stopped short changed goes back while both
        // columns are still written; then reads go back on a and dual
        // writes off; then b goes.
        self.put_back_carried(&client, &mut record).await?;
        record.phase = Phase::RolledBack;
        record.backfill.running = false;
        self.commit(&client, record.clone(), "rollback", "rules off", true)
            .await?;
        tokio::time::sleep(self.settle).await;
        self.drop_new_column(&client, &record).await
    }

    /// Puts back what a contract that stopped short changed beyond the two
    /// columns — the objects it redefined onto `b` (last first), `a`'s NOT
    /// NULL — and takes `b`'s NOT NULL off, before a rollback stops writing
    /// `b`. Each is stored as it is done.
    async fn put_back_carried(
        &self,
        client: &tokio_postgres::Client,
        record: &mut Record,
    ) -> Result<(), ActionError> {
        let spec = record.spec.clone();
        while let Some(object) = record.carried.redefined.last().cloned() {
            ddl::run_with_lock_timeout(client, &object.restore, self.lock).await?;
            record.carried.redefined.pop();
            self.save_step(client, record, &format!("put back {}", object.object))
                .await?;
        }
        if record.carried.old_not_null_dropped {
            not_null::restore(client, &spec.table.to_string(), &spec.from, self.lock).await?;
            record.carried.old_not_null_dropped = false;
            self.save_step(client, record, "a set not null again")
                .await?;
        }
        // b's NOT NULL (its check, or the real one a contract set) goes
        // while writes still reach b: once they stop, an INSERT would fail
        // on it in the moment before b is dropped.
        let b_not_null = ddl::column_info(client, &spec.table.to_string(), &spec.to)
            .await?
            .is_some_and(|c| c.not_null);
        if record.not_null_check.is_some() || b_not_null {
            not_null::relax(client, &spec.table.to_string(), &spec.to, self.lock).await?;
            record.not_null_check = None;
            self.save_step(client, record, "b drop not null").await?;
        }
        Ok(())
    }

    async fn drop_new_column(
        &self,
        client: &tokio_postgres::Client,
        record: &Record,
    ) -> Result<(), ActionError> {
        let spec = &record.spec;
        // Foreign keys moved onto b by a contract that stopped short go
        // first (they depend on b's unique index).
        let mut sql: Vec<String> =
            foreign_keys::referencing_copies(client, &spec.table.to_string(), &spec.to)
                .await?
                .iter()
                .map(foreign_keys::ReferencingKey::drop_statement)
                .collect();
        sql.push(format!(
            "alter table {} drop column if exists {}",
            spec.table,
            quote_ident(&spec.to)
        ));
        ddl::run_with_lock_timeout(client, &sql.join("; "), self.lock).await?;
        store::event(
            client,
            &spec.id,
            "admin",
            "rollback",
            &format!("dropped {}", quote_ident(&spec.to)),
        )
        .await?;
        // A new catalog snapshot (b is gone), under the same rules.
        let _synced = self.sync.lock().await;
        self.publish(client).await;
        Ok(())
    }

    /// One migration's status, as `/status` lists it.
    pub fn status_of(&self, id: &str) -> Result<Value, ActionError> {
        let record = self.record(id)?;
        Ok(self.status_json(&record))
    }

    fn status_json(&self, r: &Record) -> Value {
        let counters = self.rules.counters();
        let (rewritten, refused) = counters
            .iter()
            .find(|(id, _, _)| *id == r.spec.id)
            .map(|(_, a, b)| (*a, *b))
            .unwrap_or((0, 0));
        let old_shape = self
            .rules
            .old_shape_usage()
            .into_iter()
            .find(|(id, _)| *id == r.spec.id)
            .map(|(_, u)| json!({
                "statements": u.statements,
                "last_ms": u.last_ms,
                "applications": u.applications.iter().map(|(name, ms)| json!({"name": name, "last_ms": ms})).collect::<Vec<_>>(),
            }));
        let b = &r.backfill;
        json!({
            "id": r.spec.id,
            "table": r.spec.table.to_string(),
            "from": r.spec.from,
            "to": r.spec.to,
            "type": r.spec.new_type,
            "phase": r.phase.as_str(),
            "read_source": if r.phase.reads_new() { "new" } else { "old" },
            "backfill": {
                "rows_done": b.rows_done,
                "rows_total": b.rows_total,
                "workers": b.workers,
                "slices": b.slices,
                "running": b.running,
                "paused": b.paused,
                "batch_size": b.batch_size,
                "batch_pause_ms": b.batch_pause_ms,
                "batch_timeout_ms": b.batch_timeout_ms,
                "batch_target_ms": b.batch_target_ms,
                "max_replication_lag_ms": b.max_replication_lag_ms,
                "max_lock_waits": b.max_lock_waits,
                "throttled": self.throttled.lock().unwrap_or_else(|e| e.into_inner()).get(&r.spec.id).cloned(),
                "started_ms": b.started_ms,
                "finished_ms": b.finished_ms,
                "error": b.error,
            },
            "validation": r.validation.as_ref().map(|v| json!({
                "mismatches": v.mismatches,
                "samples": v.samples,
                "at_ms": v.at_ms,
            })),
            "statements": { "rewritten": rewritten, "refused": refused },
            "old_shape": old_shape,
        })
    }

    /// The Prometheus text exposition of this proxy and its migrations.
    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let (accepted, active, rejected) = crate::proxy::stats::sessions();
        let _ = writeln!(out, "# HELP pgshift_sessions Client sessions relayed now.\n# TYPE pgshift_sessions gauge\npgshift_sessions {active}");
        let _ = writeln!(out, "# HELP pgshift_sessions_total Client sessions relayed since start.\n# TYPE pgshift_sessions_total counter\npgshift_sessions_total {accepted}");
        let _ = writeln!(out, "# HELP pgshift_sessions_rejected_total Connections refused at max_client_connections.\n# TYPE pgshift_sessions_rejected_total counter\npgshift_sessions_rejected_total {rejected}");
        let _ = writeln!(out, "# HELP pgshift_rules_epoch The rewrite rules epoch in force.\n# TYPE pgshift_rules_epoch gauge\npgshift_rules_epoch {}", self.rules.epoch());
        let _ = writeln!(out, "# HELP pgshift_state_version The migration state version applied.\n# TYPE pgshift_state_version gauge\npgshift_state_version {}", self.applied.load(Ordering::Acquire));
        let counters = self.rules.counters();
        let usage = self.rules.old_shape_usage();
        let records = self.records();
        let label = |id: &str| id.replace('\\', "\\\\").replace('"', "\\\"");
        let mut family = |name: &str, kind: &str, help: &str, values: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in values {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        };
        family(
            "pgshift_migration_phase",
            "gauge",
            "1 for each migration's current phase.",
            records
                .iter()
                .flat_map(|r| {
                    Phase::ALL.iter().map(move |p| {
                        (
                            format!("migration=\"{}\",phase=\"{}\"", label(&r.spec.id), p),
                            u8::from(*p == r.phase).to_string(),
                        )
                    })
                })
                .collect(),
        );
        family(
            "pgshift_statements_rewritten_total",
            "counter",
            "Statements rewritten for a migration.",
            counters
                .iter()
                .map(|(id, rw, _)| (format!("migration=\"{}\"", label(id)), rw.to_string()))
                .collect(),
        );
        family(
            "pgshift_statements_refused_total",
            "counter",
            "Statements refused (SQLSTATE 0A000) for a migration.",
            counters
                .iter()
                .map(|(id, _, rf)| (format!("migration=\"{}\"", label(id)), rf.to_string()))
                .collect(),
        );
        family(
            "pgshift_statements_old_shape_total",
            "counter",
            "Statements naming a migration's old column.",
            usage
                .iter()
                .map(|(id, u)| {
                    (
                        format!("migration=\"{}\"", label(id)),
                        u.statements.to_string(),
                    )
                })
                .collect(),
        );
        family(
            "pgshift_backfill_rows_done",
            "gauge",
            "Rows the backfill has walked.",
            records
                .iter()
                .map(|r| {
                    (
                        format!("migration=\"{}\"", label(&r.spec.id)),
                        r.backfill.rows_done.to_string(),
                    )
                })
                .collect(),
        );
        family(
            "pgshift_backfill_rows_total",
            "gauge",
            "Rows the backfill expects to walk (an estimate until it ends).",
            records
                .iter()
                .map(|r| {
                    (
                        format!("migration=\"{}\"", label(&r.spec.id)),
                        r.backfill.rows_total.unwrap_or(0).to_string(),
                    )
                })
                .collect(),
        );
        family(
            "pgshift_backfill_running",
            "gauge",
            "1 while the backfill runs.",
            records
                .iter()
                .map(|r| {
                    (
                        format!("migration=\"{}\"", label(&r.spec.id)),
                        u8::from(r.backfill.running).to_string(),
                    )
                })
                .collect(),
        );
        family(
            "pgshift_validation_mismatches",
            "gauge",
            "Mismatches the last validation found (-1: none yet).",
            records
                .iter()
                .map(|r| {
                    (
                        format!("migration=\"{}\"", label(&r.spec.id)),
                        r.validation
                            .as_ref()
                            .map_or(-1, |v| v.mismatches)
                            .to_string(),
                    )
                })
                .collect(),
        );
        out
    }

    /// Every migration's status.
    pub fn status(&self) -> Value {
        let migrations: Vec<Value> = self.records().iter().map(|r| self.status_json(r)).collect();
        json!({
            "rules_epoch": self.rules.epoch(),
            "database": self.config.control.database,
            "upstream": self.config.upstream.to_string(),
            "migrations": migrations,
        })
    }
}
