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
//!
//! This module owns the driver (start, reload, following the store,
//! publishing rules, dispatching an action); each action lives in its own
//! file: [`expand`], [`backfill`] (the action and its background task;
//! the SQL of a walk in [`walk`]), [`validate`], [`switch`], [`contract`]
//! (and `complete`), [`rollback`]; [`status`] reports. The DDL helpers
//! they share: [`ddl`] (lock discipline), [`checks`], [`indexes`],
//! [`foreign_keys`], [`not_null`], [`dependents`], [`handover`]; the
//! state: [`store`]; the other proxies: [`peers`].

mod add_column;
pub mod applied;
mod autopilot;
mod backfill;
pub mod carry;
mod catalog_steps;
pub mod checks;
mod contract;
pub mod ddl;
pub mod dependents;
mod drop_column;
mod expand;
pub mod foreign_keys;
pub mod handover;
mod in_place;
pub mod indexes;
pub mod not_null;
mod not_null_steps;
pub mod peers;
mod rollback;
mod status;
pub mod store;
mod switch;
mod validate;
pub mod walk;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::{Action, MigrationStatus, NewMigration};
use crate::config::Config;
use crate::control;
use crate::rewrite::migration::{quote_ident, Phase};
use crate::rewrite::rules::{ActiveMigration, RulesCell, HOLD_MAX};

tokio::task_local! {
    /// Who drives the action in progress, as its event records it (the
    /// admin port sets it per request: which token, or loopback).
    pub static ACTOR: &'static str;
}
use ddl::LockDiscipline;
use store::Record;

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
    /// Index builds in progress, per migration.
    builds: Arc<Mutex<BTreeMap<String, crate::api::IndexBuild>>>,
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
    /// The catalog's signature when the snapshot in force was read, and
    /// the polls since it was last compared ([`control::catalog_signature`]).
    catalog_seen: Mutex<(Option<i64>, u32)>,
    /// An autopilot step is under way here.
    autopilot_busy: std::sync::atomic::AtomicBool,
}

/// Polls between two looks at the catalog's signature (at the default
/// poll of 200 ms: every 2 s).
const CATALOG_POLLS: u32 = 10;

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
            builds: Arc::new(Mutex::new(BTreeMap::new())),
            lock: LockDiscipline::default(),
            settle: Duration::from_millis(500),
            id,
            options,
            applied: AtomicI64::new(0),
            poller: Mutex::new(None),
            catalog_seen: Mutex::new((None, 0)),
            autopilot_busy: std::sync::atomic::AtomicBool::new(false),
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
                        Ok(()) => match this.adopt_orphaned_backfills(c).await {
                            Ok(()) => this.autopilot_step(c).await,
                            Err(e) => Err(e),
                        },
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
        self.heartbeat(&client, version).await?;
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
            // A rename barrier counts as applied once the requests sent
            // before it are answered; until then the next poll tries again.
            if self.drained_for_barrier().await {
                self.applied.fetch_max(version, Ordering::AcqRel);
                tracing::info!(version, "applied a migration state change");
            }
        }
        drop(synced);
        if let Err(e) = self.follow_catalog(client).await {
            tracing::warn!(error = %e, "cannot read the catalog; the snapshot in force stays");
        }
        let applied = self.applied.load(Ordering::Acquire);
        self.heartbeat(client, applied).await?;
        self.renew_lease();
        Ok(())
    }

    /// Every [`CATALOG_POLLS`] polls, or at the next one after DDL passed
    /// through this proxy: when the catalog changed (DDL run here or
    /// anywhere else), a fresh snapshot is published, so `*` and name
    /// resolution never plan with a table's old columns for long.
    async fn follow_catalog(
        &self,
        client: &tokio_postgres::Client,
    ) -> Result<(), control::ControlError> {
        let due = {
            let mut seen = self.catalog_seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.1 += 1;
            let due = seen.1 >= CATALOG_POLLS || self.rules.take_catalog_stale();
            if due {
                seen.1 = 0;
            }
            due
        };
        if !due {
            return Ok(());
        }
        let signature = control::catalog_signature(client).await?;
        let last = self
            .catalog_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0;
        if last == Some(signature) {
            return Ok(());
        }
        let catalog = control::read_catalog(client).await?;
        self.catalog_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0 = Some(signature);
        let epoch = self.rules.publish_catalog(catalog);
        tracing::info!(epoch, "the catalog changed: a fresh snapshot is in force");
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
        let held = self.held_tables(client).await;
        let catalog = match control::read_catalog(client).await {
            Ok(catalog) => Some(catalog),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the catalog; publishing with the last snapshot");
                None
            }
        };
        let epoch = self.rules.publish_holding(&migrations, catalog, &held);
        for m in &migrations {
            tracing::info!(epoch, migration = %m.spec.id, phase = %m.phase, "rules in force");
        }
    }

    /// The tables under a rename barrier, each with how much longer it
    /// holds: [`HOLD_MAX`] from when it went up, by the database's clock,
    /// so a barrier left by a proxy that died holds nothing for long.
    async fn held_tables(&self, client: &tokio_postgres::Client) -> Vec<(String, Duration)> {
        let raised: Vec<(String, Option<i64>)> = self
            .records()
            .iter()
            .filter(|r| r.barrier)
            .flat_map(|r| {
                // A renamed table is held under both its names.
                let names =
                    std::iter::once(r.spec.table.name.clone()).chain(r.spec.renamed_to.clone());
                names.map(move |n| (n.to_lowercase(), r.barrier_ms))
            })
            .collect();
        if raised.is_empty() {
            return Vec::new();
        }
        let now = store::now_ms(client).await.unwrap_or(0);
        let max = HOLD_MAX.as_millis() as i64;
        raised
            .into_iter()
            .filter_map(|(table, at)| {
                // (Raised here just now: its time is not read back.)
                let left = max - now.saturating_sub(at.unwrap_or(now));
                (left > 0).then(|| (table, Duration::from_millis(left as u64)))
            })
            .collect()
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
        self.heartbeat(client, version).await?;
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

    /// This proxy's heartbeat, reporting `version` applied.
    pub(super) async fn heartbeat(
        &self,
        client: &tokio_postgres::Client,
        version: i64,
    ) -> Result<(), ActionError> {
        let listen = config_listen(&self.config);
        peers::heartbeat(client, &self.id, &listen, version, &self.old_shape_json()).await?;
        Ok(())
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, ActionError> {
        control::connect(&self.config)
            .await
            .map_err(|e| ActionError::Failed(e.to_string()))
    }

    /// `POST /migrations`: adds a migration (phase planned) to the store;
    /// every proxy of the database applies it before this returns.
    pub async fn add(&self, m: &NewMigration) -> Result<MigrationStatus, ActionError> {
        let spec = m
            .spec()
            .map_err(|e| ActionError::BadRequest(e.to_string()))?;
        let _one_at_a_time = self.action.lock().await;
        for other in self.records() {
            let clash = other.spec.id == spec.id
                || (!matches!(other.phase, Phase::Complete | Phase::RolledBack)
                    && other.spec.clashes_with(&spec));
            if clash {
                return Err(ActionError::Conflict(format!(
                    "migration {:?} clashes with migration {:?} (same id; a column it moves, adds or drops; the same index or constraint; a table being renamed)",
                    spec.id, other.spec.id
                )));
            }
        }
        let client = self.connect().await?;
        self.check_beside(&client, &spec).await?;
        let table = spec.table.to_string();
        let exists: bool = client
            .query_one("select to_regclass($1) is not null", &[&table])
            .await?
            .get(0);
        if !exists {
            return Err(ActionError::Conflict(format!("there is no table {table}")));
        }
        if let Some(catalog) = &spec.catalog {
            self.check_catalog_add(&client, &spec, &catalog.op).await?;
        } else if let Some(added) = &spec.added {
            self.check_added_add(&client, &spec, added).await?;
        } else if spec.dropped {
            self.check_dropped_add(&client, &spec).await?;
        } else if spec.renamed_to.is_some() {
            Self::check_table_rename(&client, &spec).await?;
        } else {
            self.check_column_add(&client, &spec).await?;
        }
        let record =
            store::insert_if_absent(&client, &Record::new(spec.clone(), Phase::Planned)).await?;
        let detail = serde_json::to_string(m).unwrap_or_default();
        self.commit(&client, record, "add", &detail, true).await?;
        drop(_one_at_a_time);
        self.status_of(&spec.id)
    }

    /// A migration moving a column of a table another one is moving a
    /// column of: no index or constraint may span both (each migration
    /// rebuilds and drops its own column's, which would take the other's).
    async fn check_beside(
        &self,
        client: &tokio_postgres::Client,
        spec: &crate::rewrite::migration::MigrationSpec,
    ) -> Result<(), ActionError> {
        if spec.catalog.is_some() {
            return Ok(());
        }
        let table = spec.table.to_string();
        for other in self.records() {
            let in_flight = !matches!(other.phase, Phase::Complete | Phase::RolledBack);
            if !in_flight || other.spec.catalog.is_some() || other.spec.table != spec.table {
                continue;
            }
            let shared =
                ddl::objects_spanning(client, &table, &spec.columns(), &other.spec.columns())
                    .await?;
            if let Some(name) = shared.first() {
                return Err(ActionError::Conflict(format!(
                    "{} spans a column of this migration and one of migration {:?}, in flight on the same table: each migration rebuilds its own column's indexes and constraints; finish one first",
                    quote_ident(name),
                    other.spec.id
                )));
            }
        }
        Ok(())
    }

    /// What a migration moving a column needs before it is stored.
    async fn check_column_add(
        &self,
        client: &tokio_postgres::Client,
        spec: &crate::rewrite::migration::MigrationSpec,
    ) -> Result<(), ActionError> {
        let table = spec.table.to_string();
        Self::existing_column(client, &table, &spec.from).await?;
        if spec.in_place {
            // Renamed in place, the column keeps every index, constraint,
            // key and view on it: nothing to carry.
            if ddl::column_info(client, &table, &spec.to).await?.is_some() {
                return Err(ActionError::Conflict(format!(
                    "table {table} already has a column {}: a rename in place needs the name free",
                    quote_ident(&spec.to)
                )));
            }
        } else {
            if spec.keep_name && ddl::column_info(client, &table, &spec.to).await?.is_some() {
                return Err(ActionError::Conflict(format!(
                    "table {table} already has a column {}, the working name of a type change that keeps {}'s name (left by an earlier migration?)",
                    quote_ident(&spec.to),
                    quote_ident(&spec.from)
                )));
            }
            // What depends on a is found now, not by a failing DROP at the end.
            let found = dependents::find(client, spec, &self.rules.load().catalog).await?;
            dependents::refuse_uncarried(spec, &found)?;
        }
        Ok(())
    }

    /// Runs `action` on migration `id`; the answer is the migration's status.
    pub async fn act(
        self: &Arc<Self>,
        id: &str,
        action: Action,
    ) -> Result<MigrationStatus, ActionError> {
        let _one_at_a_time = self.action.lock().await;
        let record = self.record(id)?;
        if record.spec.catalog.is_some() {
            self.act_catalog(record, action).await?;
            return self.status_of(id);
        }
        if record.spec.in_place || record.spec.renamed_to.is_some() {
            self.act_in_place(record, action).await?;
            return self.status_of(id);
        }
        if record.spec.added.is_some() {
            self.act_added(record, action).await?;
            return self.status_of(id);
        }
        if record.spec.dropped {
            self.act_dropped(record, action).await?;
            return self.status_of(id);
        }
        match action {
            Action::Expand => self.expand(record).await?,
            Action::Backfill(settings) => self.backfill(record, &settings).await?,
            Action::Pause => self.pause(record).await?,
            Action::Resume => self.resume(record).await?,
            Action::Validate(options) => self.validate(record, &options).await?,
            Action::SwitchReads(to) => self.switch_reads(record, to.to).await?,
            Action::Contract(options) => self.contract(record, &options).await?,
            Action::Complete => self.complete(record).await?,
            Action::Rollback => self.rollback(record).await?,
        }
        self.status_of(id)
    }

    /// An action on a rename done in place ([`in_place`]).
    async fn act_in_place(&self, record: Record, action: Action) -> Result<(), ActionError> {
        match action {
            Action::Expand => self.expand_in_place(record).await,
            Action::SwitchReads(to) => {
                let to_new = to.to == crate::api::ReadSource::New;
                self.switch_in_place(record, to_new).await
            }
            Action::Contract(options) => self.contract_in_place(record, &options).await,
            Action::Complete => self.complete(record).await,
            Action::Rollback => self.rollback_in_place(record).await,
            Action::Backfill(_) | Action::Pause | Action::Resume | Action::Validate(_) => {
                Err(ActionError::Conflict(format!(
                    "migration {:?} renames its column or table in place: there is nothing to backfill or validate; after expand, switch-reads renames it",
                    record.spec.id
                )))
            }
        }
    }

    /// `column` of `table` (quoted, qualified), which must exist (else 409).
    pub(super) async fn existing_column(
        client: &tokio_postgres::Client,
        table: &str,
        column: &str,
    ) -> Result<ddl::ColumnInfo, ActionError> {
        ddl::column_info(client, table, column)
            .await?
            .ok_or_else(|| {
                ActionError::Conflict(format!(
                    "table {table} has no column {}",
                    quote_ident(column)
                ))
            })
    }

    fn illegal(record: &Record, action: &str, needs: &str) -> ActionError {
        ActionError::Conflict(format!(
            "migration {:?} is {}: {action} needs {needs}",
            record.spec.id, record.phase
        ))
    }
}
