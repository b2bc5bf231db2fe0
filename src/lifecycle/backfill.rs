//! The backfill as a background task of one proxy: the walk is split over
//! the migration's `workers` (each slice with a durable cursor of its own),
//! one session walks each slice batch by batch, they throttle together on
//! replication lag and lock waits, stop at a pause, wait out a lost
//! connection from the stored cursors, and the last one done marks the
//! migration backfilled.
//!
//! One proxy runs a migration's backfill at a time: its coordinating
//! session holds an advisory lock on the migration while the walk runs.
//! Another proxy that finds the backfill running leaves it alone, and
//! takes it over (from the stored cursors) once no pgshift session holds
//! that lock — the proxy that ran it crashed or lost its connection for
//! good. The lock's key is random, kept in the `pgshift` schema (closed to
//! other roles) and drawn anew at every run; a session of a role that
//! cannot read that schema holding the key (it saw it in `pg_locks`) is
//! named in the log and passed by with a new key, never waited for.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::walk::{self, Lane, Walk};
use super::{ddl, peers, store, ActionError, Lifecycle, Record, THROTTLE_CHECK_INTERVAL};
use crate::api;
use crate::rewrite::migration::Phase;

/// The most sessions one backfill walks the table with.
const MAX_BACKFILL_WORKERS: i32 = 16;

/// Shared by a backfill's workers: when the throttle question was last
/// answered "no", so that it is asked at most once a second in all.
#[derive(Default)]
struct ThrottleGate {
    last_clear: Mutex<Option<Instant>>,
}

impl ThrottleGate {
    /// Whether the caller should ask now; a caller told yes asks for all.
    fn due(&self) -> bool {
        let mut last = self.last_clear.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < THROTTLE_CHECK_INTERVAL) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// While throttled, every worker asks again before its next batch.
    fn ask_again(&self) {
        *self.last_clear.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Draws a new random lock key for migration `$1` unless its key is no
/// longer `$2` (another proxy drew one first); the new key, if drawn.
const DRAW_KEY: &str = "update pgshift.migrations
     set backfill_lock_key = ('x' || replace(gen_random_uuid()::text, '-', ''))::bit(64)::bigint
     where id = $1 and backfill_lock_key = $2 returning backfill_lock_key";

/// Whether a session of a role that may read the `pgshift` schema (a
/// proxy's) holds the advisory lock of key `$1`.
const HELD_BY_PGSHIFT: &str =
    "select exists (select from pg_locks l join pg_stat_activity a on a.pid = l.pid
     where l.locktype = 'advisory' and l.granted and l.objsubid = 1
       and l.classid = (($1::bigint >> 32) & 4294967295)::oid
       and l.objid = ($1::bigint & 4294967295)::oid
       and has_schema_privilege(a.usesysid, 'pgshift', 'usage'))";

/// Who else holds the advisory lock of key `$1` (pid and role), if anyone.
const HELD_BY: &str = "select l.pid, coalesce(a.usename::text, '?') from pg_locks l
     left join pg_stat_activity a on a.pid = l.pid
     where l.locktype = 'advisory' and l.granted and l.objsubid = 1
       and l.classid = (($1::bigint >> 32) & 4294967295)::oid
       and l.objid = ($1::bigint & 4294967295)::oid and l.pid <> pg_backend_pid()";

/// The stored lock key of migration `id`'s backfill.
async fn lock_key(client: &tokio_postgres::Client, id: &str) -> Result<i64, ActionError> {
    Ok(client
        .query_one(
            "select backfill_lock_key from pgshift.migrations where id = $1",
            &[&id],
        )
        .await?
        .get(0))
}

/// Makes the backfill of `id` this session's: takes its stored lock key if
/// it is free and no pgshift session holds it, then draws and takes a new
/// one (a key seen in `pg_locks` during an earlier run is worth nothing);
/// false when another proxy runs it.
async fn take_backfill_lock(
    client: &tokio_postgres::Client,
    id: &str,
) -> Result<bool, ActionError> {
    let key = lock_key(client, id).await?;
    let free: bool = client
        .query_one("select pg_try_advisory_lock($1)", &[&key])
        .await?
        .get(0);
    if !free {
        if client.query_one(HELD_BY_PGSHIFT, &[&key]).await?.get(0) {
            return Ok(false);
        }
        let holders: Vec<String> = client
            .query(HELD_BY, &[&key])
            .await?
            .iter()
            .map(|r| {
                format!(
                    "pid {} (role {})",
                    r.get::<_, i32>(0),
                    r.get::<_, String>(1)
                )
            })
            .collect();
        tracing::warn!(migration = %id, holders = %holders.join(", "), "a session outside pgshift holds the backfill's lock key; drawing a new key");
    }
    let drawn = client.query_opt(DRAW_KEY, &[&id, &key]).await?;
    let taken = match drawn {
        Some(row) => {
            let new: i64 = row.get(0);
            client
                .query_one("select pg_advisory_lock($1)", &[&new])
                .await?;
            true
        }
        // Another proxy drew a key first: it runs the backfill.
        None => false,
    };
    if free {
        client
            .execute("select pg_advisory_unlock($1)", &[&key])
            .await?;
    }
    Ok(taken)
}

/// Where a run of the backfill went.
enum Ran {
    /// Here, until done, paused or stopped.
    Here,
    /// Another proxy holds the backfill's lock: it runs it.
    Elsewhere,
}

/// How a worker's walk of its lane ended.
enum LaneEnd {
    Done,
    /// Paused, or stopped because another worker failed.
    Stopped,
}

impl Lifecycle {
    /// Starts the backfill task of `id` (it runs until done or paused)
    /// unless one runs here already.
    pub(super) fn spawn_backfill(self: &Arc<Self>, id: &str) {
        let flag = Arc::new(AtomicBool::new(false));
        {
            let mut pauses = self.pauses.lock().unwrap_or_else(|e| e.into_inner());
            if pauses.contains_key(id) {
                return;
            }
            pauses.insert(id.to_string(), Arc::clone(&flag));
        }
        let this = Arc::clone(self);
        let id = id.to_string();
        tokio::spawn(async move {
            // A lost connection (Postgres restarting, a network blip) is
            // waited out: the batches in flight rolled back with their
            // cursors, so the walk goes on from the stored cursors. A
            // failure that lasts (5 minutes) stops the backfill, and one
            // that cannot heal (Postgres refused a batch: the `up`
            // expression failed on a row, a constraint) stops it at once,
            // with Postgres' message on /status.
            let mut wait = Duration::from_millis(250);
            let mut failing_since: Option<Instant> = None;
            let result = loop {
                match this.run_backfill(&id, &flag).await {
                    Err(ActionError::Failed(e))
                        if failing_since.is_none_or(|t| t.elapsed() < Duration::from_secs(300))
                            && !flag.load(Ordering::Acquire) =>
                    {
                        failing_since.get_or_insert_with(Instant::now);
                        tracing::warn!(migration = %id, error = %e, retry_ms = wait.as_millis() as u64, "backfill interrupted; it goes on from its cursor");
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                    other => break other,
                }
            };
            if let Ok(Ran::Elsewhere) = result {
                tracing::info!(migration = %id, "the backfill runs on another proxy; this one takes it over if that one stops");
            }
            this.set_throttled(&id, None);
            if let Err(e) = result {
                tracing::error!(migration = %id, error = %e, "backfill stopped; resume it with POST /migrations/{id}/resume");
                if let Ok(mut record) = this.record(&id) {
                    record.backfill.running = false;
                    record.backfill.paused = true;
                    record.backfill.error = Some(e.to_string());
                    if let Ok(client) = this.connect().await {
                        // The stored progress is the truth (a batch whose
                        // answer was lost may have committed).
                        let _ = load_progress(&client, &mut record).await;
                        let _ = store::save(&client, &record).await;
                        let _ =
                            store::event(&client, &id, "backfill", "failed", &e.to_string()).await;
                    }
                    this.lock_records().insert(id.clone(), record);
                }
            }
            // Only now (the record says how it ended) may the poller
            // consider taking the backfill over.
            let mut pauses = this.pauses.lock().unwrap_or_else(|e| e.into_inner());
            if pauses.get(&id).is_some_and(|f| Arc::ptr_eq(f, &flag)) {
                pauses.remove(&id);
            }
        });
    }

    /// Stops `record`'s running backfill wherever it runs — `paused` is
    /// committed, the new state version reaches the proxy running it, and
    /// its workers stop at their next batch (here, at once through their
    /// flag) — and waits (60 s at most) until it has stopped.
    pub(super) async fn stop_backfill(&self, record: &Record) -> Result<(), ActionError> {
        let id = &record.spec.id;
        if let Some(flag) = self
            .pauses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            flag.store(true, Ordering::Release);
        }
        // Durable, and for whichever proxy runs it (a proxy that takes the
        // backfill over later carries the pause out); only the flag, and
        // only while it runs: a walk that has just ended keeps its end.
        let client = self.connect().await?;
        if store::ask_pause(&client, id).await? {
            store::event(&client, id, "admin", "pause", "asked").await?;
            peers::bump(&client).await?;
            if let Some(current) = self.lock_records().get_mut(id) {
                current.backfill.paused = current.backfill.running;
            }
        }
        // The runner saves running = false when its workers have stopped.
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.record(id)?.backfill.running {
            if Instant::now() > deadline {
                return Err(ActionError::Failed(
                    "the backfill did not stop within 60 s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Takes over the backfills the store says are running that no proxy
    /// runs (their lock is free), asking on `client`: at start, and on
    /// every poll.
    pub(super) async fn adopt_orphaned_backfills(
        self: &Arc<Self>,
        client: &tokio_postgres::Client,
    ) -> Result<(), ActionError> {
        let running: Vec<String> = self
            .records()
            .into_iter()
            // (A pause asked of a runner that then died is carried out by
            // the proxy taking it over: its workers stop at once.)
            .filter(|r| r.phase == Phase::Backfilling && r.backfill.running)
            .map(|r| r.spec.id)
            .filter(|id| {
                !self
                    .pauses
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains_key(id)
            })
            .collect();
        for id in running {
            let key = lock_key(client, &id).await?;
            let held: bool = client.query_one(HELD_BY_PGSHIFT, &[&key]).await?.get(0);
            if !held {
                tracing::info!(migration = %id, "the backfill is running and no proxy runs it: going on from its cursor");
                self.spawn_backfill(&id);
            }
        }
        Ok(())
    }

    /// The lanes the walk goes on in: the stored slices, or the walk cut
    /// into `workers` slices when it starts (stored before any batch), or
    /// one lane from the cursor; the shared record told where it stands.
    async fn lanes(
        &self,
        client: &tokio_postgres::Client,
        record: &mut Record,
        walk: &Walk,
    ) -> Result<Vec<Lane>, ActionError> {
        let id = record.spec.id.clone();
        let b = &mut record.backfill;
        if b.slices.is_empty() && b.workers > 1 {
            let remaining = b.rows_total.unwrap_or(0) - b.rows_done;
            let slices = walk
                .split(client, &b.cursor, &b.end, remaining, b.workers)
                .await?;
            if !slices.is_empty() {
                store::save_slices(client, &id, &slices).await?;
                tracing::info!(migration = %id, workers = slices.len(), "the backfill walks the table in slices, one session each");
                b.slices = slices;
            }
        }
        let lanes: Vec<Lane> = if b.slices.is_empty() {
            vec![Lane::new(None, b.cursor.clone(), b.end.clone())]
        } else {
            b.slices
                .iter()
                .enumerate()
                .map(|(i, s)| Lane::new(Some(i), s.cursor.clone(), s.upper.clone()))
                .collect()
        };
        if let Some(current) = self.lock_records().get_mut(&id) {
            current.backfill.cursor = b.cursor.clone();
            current.backfill.rows_done = b.rows_done;
            current.backfill.slices = b.slices.clone();
        }
        Ok(lanes)
    }

    /// Walks `lanes` at once, one worker each, until all are done or
    /// stopped (a pause; another worker's failure; the coordinating
    /// session `client`, which holds the lock, lost): whether all are done.
    async fn walk_lanes(
        self: &Arc<Self>,
        id: &str,
        client: &tokio_postgres::Client,
        walk: Arc<Walk>,
        lanes: Vec<Lane>,
        pause: &Arc<AtomicBool>,
    ) -> Result<bool, ActionError> {
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(ThrottleGate::default());
        let mut workers = JoinSet::new();
        for lane in lanes {
            let this = Arc::clone(self);
            let (id, walk, pause, stop, gate) = (
                id.to_string(),
                Arc::clone(&walk),
                Arc::clone(pause),
                Arc::clone(&stop),
                Arc::clone(&gate),
            );
            workers
                .spawn(async move { this.walk_lane(&id, &walk, lane, &pause, &stop, &gate).await });
        }
        let mut first_error = None;
        let mut all_done = true;
        loop {
            // The walk is this proxy's only while its session holds the
            // lock: once that session is lost, the workers stop.
            let joined = tokio::select! {
                joined = workers.join_next() => match joined {
                    Some(joined) => joined,
                    None => break,
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if client.is_closed() && !stop.swap(true, Ordering::AcqRel) {
                        first_error.get_or_insert(ActionError::Failed(
                            "the backfill's coordinating session (holding its lock) was lost".into(),
                        ));
                    }
                    continue;
                }
            };
            let ended = joined.unwrap_or_else(|e| {
                Err(ActionError::Failed(format!("a backfill worker ended: {e}")))
            });
            match ended {
                Ok(LaneEnd::Done) => {}
                Ok(LaneEnd::Stopped) => all_done = false,
                Err(e) => {
                    all_done = false;
                    stop.store(true, Ordering::Release);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(all_done),
        }
    }

    async fn run_backfill(
        self: &Arc<Self>,
        id: &str,
        pause: &Arc<AtomicBool>,
    ) -> Result<Ran, ActionError> {
        let client = self.connect().await?;
        // Held by this session until the run ends (or the session is lost).
        if !take_backfill_lock(&client, id).await? {
            return Ok(Ran::Elsewhere);
        }
        // The stored record is the truth (a batch whose commit answer was
        // lost may have committed): go on from its cursors and counters,
        // with the settings in force here.
        let mut record = self.record(id)?;
        load_progress(&client, &mut record).await?;
        let table = record.spec.table.to_string();
        let key = ddl::walk_key(&client, &table)
            .await?
            .ok_or_else(|| ActionError::Conflict(format!("table {table} has no key to walk")))?;
        let walk = Arc::new(Walk::new(&record, &key));
        let lanes = self.lanes(&client, &mut record, &walk).await?;

        let all_done = self.walk_lanes(id, &client, walk, lanes, pause).await?;

        let mut record = self.record(id)?;
        load_progress(&client, &mut record).await?;
        if !all_done {
            record.backfill.running = false;
            record.backfill.paused = true;
            // Under a new state version: a proxy that asked for the pause
            // learns that it happened.
            let detail = format!("at {} rows", record.backfill.rows_done);
            self.store_change(&client, record, "backfill", "paused", &detail)
                .await?;
            return Ok(Ran::Here);
        }
        let b = &mut record.backfill;
        if let Some(last) = b.slices.pop() {
            b.cursor = last.cursor;
            b.slices.clear();
        }
        record.phase = Phase::Backfilled;
        record.backfill.running = false;
        record.backfill.rows_total = Some(record.backfill.rows_done);
        record.backfill.finished_ms = Some(store::now_ms(&client).await?);
        // Same rules (dual writes) as while backfilling: nothing to wait for.
        let detail = format!("{} rows", record.backfill.rows_done);
        self.store_change(&client, record, "backfill", "done", &detail)
            .await?;
        Ok(Ran::Here)
    }

    /// Adds what one batch of `lane` committed to the shared record (its
    /// rows, the lane's cursor, a time-targeted batch size).
    fn note_progress(
        &self,
        id: &str,
        lane: &Lane,
        walked: i64,
        batch_size: i32,
        settings: &store::Backfill,
    ) {
        if let Some(current) = self.lock_records().get_mut(id) {
            let b = &mut current.backfill;
            b.rows_done += walked;
            match lane.slice.and_then(|i| b.slices.get_mut(i)) {
                Some(slice) => {
                    slice.cursor = lane.cursor.clone();
                    slice.rows_done += walked;
                }
                None => b.cursor = lane.cursor.clone(),
            }
            if let Some(total) = b.rows_total {
                b.rows_total = Some(total.max(b.rows_done));
            }
            if settings.batch_target_ms > 0 && b.batch_target_ms > 0 {
                b.batch_size = batch_size;
            }
        }
    }

    /// One worker: walks `lane` batch by batch on a session of its own
    /// until it is done, the backfill is paused, or `stop` (another worker
    /// failed).
    async fn walk_lane(
        &self,
        id: &str,
        walk: &Walk,
        mut lane: Lane,
        pause: &AtomicBool,
        stop: &AtomicBool,
        gate: &ThrottleGate,
    ) -> Result<LaneEnd, ActionError> {
        let mut client = self.connect().await?;
        let record = self.record(id)?;
        let table = record.spec.table.to_string();
        let mut batch_size = record.backfill.batch_size;
        loop {
            // Settings changed through the admin port (of any proxy) apply
            // from the next batch; so does a pause asked through the store.
            let settings = self.record(id)?.backfill;
            if pause.load(Ordering::Acquire) || stop.load(Ordering::Acquire) || settings.paused {
                return Ok(LaneEnd::Stopped);
            }
            if settings.batch_target_ms <= 0 {
                batch_size = settings.batch_size;
            }
            // Asked at most once a second (and before every batch while
            // throttled): reading pg_locks takes every lock-manager
            // partition lock, which the application's sessions then wait
            // for — asked per batch, the question itself slowed them.
            if gate.due() {
                let reason = walk::throttle_reason(
                    &client,
                    &table,
                    settings.max_replication_lag_ms,
                    settings.max_lock_waits,
                )
                .await?;
                let was = self.set_throttled(id, reason.clone());
                if let Some(reason) = reason {
                    gate.ask_again();
                    if was.as_deref() != Some(reason.as_str()) {
                        tracing::info!(migration = %id, %reason, "backfill throttled");
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            let batch_started = Instant::now();
            let (walked, _updated) = walk::commit_batch(
                &mut client,
                walk,
                id,
                &mut lane,
                batch_size,
                settings.batch_timeout_ms,
            )
            .await?;
            if walked == 0 {
                return Ok(LaneEnd::Done);
            }
            if settings.batch_target_ms > 0 {
                batch_size = resized(
                    batch_size,
                    batch_started.elapsed(),
                    settings.batch_target_ms,
                );
            }
            self.note_progress(id, &lane, walked, batch_size, &settings);
            if settings.batch_pause_ms > 0 {
                tokio::time::sleep(Duration::from_millis(settings.batch_pause_ms as u64)).await;
            }
        }
    }
}

/// Time-targeted sizing: the batch size moved towards the target duration
/// (`target_ms`), at most doubling or halving per batch, within 100 to
/// 100,000 rows.
fn resized(batch_size: i32, took: Duration, target_ms: i32) -> i32 {
    let took = took.as_secs_f64().max(0.001);
    let target = f64::from(target_ms) / 1000.0;
    let factor = (target / took).clamp(0.5, 2.0);
    let size = (f64::from(batch_size) * factor).round();
    size.clamp(100.0, 100_000.0) as i32
}

/// Replaces `record`'s backfill progress (cursor, rows done, slices) with
/// the stored one.
async fn load_progress(
    client: &tokio_postgres::Client,
    record: &mut Record,
) -> Result<(), ActionError> {
    if let Some(stored) = store::load_all(client)
        .await?
        .into_iter()
        .find(|r| r.spec.id == record.spec.id)
    {
        record.backfill.cursor = stored.backfill.cursor;
        record.backfill.rows_done = stored.backfill.rows_done;
        record.backfill.slices = stored.backfill.slices;
    }
    Ok(())
}

/// The `backfill`, `pause` and `resume` actions.
impl Lifecycle {
    pub(super) async fn backfill(
        self: &Arc<Self>,
        mut record: Record,
        settings: &api::Backfill,
    ) -> Result<(), ActionError> {
        // Settings may change at any time, running or not.
        let changed = apply_settings(&mut record, settings)?;
        let client = self.connect().await?;
        if record.phase == Phase::Backfilling && record.backfill.running {
            if changed {
                self.commit(
                    &client,
                    record,
                    "backfill settings",
                    &serde_json::to_string(settings).unwrap_or_default(),
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
        let total = estimated_rows(&client, &table).await?;
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

    pub(super) async fn pause(&self, record: Record) -> Result<(), ActionError> {
        if !(record.phase == Phase::Backfilling && record.backfill.running) {
            return Err(Self::illegal(&record, "pause", "a running backfill"));
        }
        self.stop_backfill(&record).await
    }

    pub(super) async fn resume(self: &Arc<Self>, record: Record) -> Result<(), ActionError> {
        if record.phase != Phase::Backfilling || record.backfill.running {
            return Err(Self::illegal(&record, "resume", "a paused backfill"));
        }
        self.backfill(record, &api::Backfill::default()).await
    }

    /// Sets (or clears) why `id`'s backfill waits; returns the previous reason.
    pub(super) fn set_throttled(&self, id: &str, reason: Option<String>) -> Option<String> {
        let mut map = self.throttled.lock().unwrap_or_else(|e| e.into_inner());
        match reason {
            Some(r) => map.insert(id.to_string(), r),
            None => map.remove(id),
        }
    }
}

/// Applies the backfill settings given (to the record); whether any was.
fn apply_settings(record: &mut Record, settings: &api::Backfill) -> Result<bool, ActionError> {
    let setting = |v: Option<i64>| v.map(|v| v.clamp(0, i32::MAX as i64) as i32);
    if let Some(v) = setting(settings.batch_size) {
        if v < 1 {
            return Err(ActionError::BadRequest(
                "batch_size must be at least 1".into(),
            ));
        }
        record.backfill.batch_size = v;
    }
    if let Some(v) = setting(settings.batch_pause_ms) {
        record.backfill.batch_pause_ms = v;
    }
    if let Some(v) = setting(settings.workers) {
        if !(1..=MAX_BACKFILL_WORKERS).contains(&v) {
            return Err(ActionError::BadRequest(format!(
                "workers must be from 1 to {MAX_BACKFILL_WORKERS}"
            )));
        }
        record.backfill.workers = v;
    }
    if let Some(v) = settings.max_replication_lag_ms {
        record.backfill.max_replication_lag_ms = v.clamp(-1, i32::MAX as i64) as i32;
    }
    if let Some(v) = settings.max_lock_waits {
        record.backfill.max_lock_waits = v.clamp(-1, i32::MAX as i64) as i32;
    }
    if let Some(v) = setting(settings.batch_target_ms) {
        record.backfill.batch_target_ms = v;
    }
    if let Some(v) = setting(settings.batch_timeout_ms) {
        record.backfill.batch_timeout_ms = v.max(1);
    }
    Ok(settings.changes_anything())
}

/// How many rows `table` holds: the planner's estimate; a table never
/// analyzed has none, and is counted instead (under a timeout: no estimate
/// beats a long scan).
async fn estimated_rows(client: &tokio_postgres::Client, table: &str) -> Result<i64, ActionError> {
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
    Ok(total)
}
