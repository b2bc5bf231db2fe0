//! The rewrite rules in force: a snapshot of every migration and its phase,
//! stamped with an epoch. A phase change publishes a whole new snapshot (one
//! new epoch), so every statement is rewritten under exactly one consistent
//! set of rules. The snapshot lives in an [`ArcSwap`]; readers on the hot
//! path take no lock and touch no reference count: each worker thread
//! keeps an `arc_swap::Cache` of it (one atomic load while nothing changed;
//! `cargo bench --bench rewrite -- snapshot` compares it with a plain load
//! and with the hand-rolled cache it replaced).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use dashmap::DashMap;

use super::catalog::Catalog;
use super::migration::{MigrationSpec, Phase};

/// One migration and the phase it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveMigration {
    pub spec: MigrationSpec,
    pub phase: Phase,
}

impl ActiveMigration {
    /// The old column `a` physically exists. A rename in place has one
    /// column, named `a` until the switch renames it `b`.
    pub fn has_old(&self) -> bool {
        if self.spec.added.is_some() {
            return false; // an added column has no old one
        }
        if self.spec.dropped {
            return self.phase.has_old();
        }
        match self.spec.in_place {
            true => matches!(self.phase, Phase::Planned | Phase::Expanded),
            false => self.phase.has_old(),
        }
    }

    /// The new column `b` physically exists.
    pub fn has_new(&self) -> bool {
        if self.spec.dropped {
            return false; // a dropped column has no new one
        }
        match self.spec.in_place {
            true => self.phase.reads_new(),
            false => self.phase.has_new(),
        }
    }

    /// Reads are answered from `b`.
    pub fn reads_new(&self) -> bool {
        self.phase.reads_new()
    }
}

/// Buckets of the in-flight counts by table name.
const IN_FLIGHT_BUCKETS: usize = 64;

/// The in-flight bucket of a migrating table's name ([`ANY_TABLE`]'s is
/// the last one).
fn bucket(table: &str) -> usize {
    if table == ANY_TABLE {
        return IN_FLIGHT_BUCKETS;
    }
    // FNV-1a: stable, and cheap for names this short.
    let hash = table.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (hash % IN_FLIGHT_BUCKETS as u64) as usize
}

/// A request in flight that touches some migrating table, not known which
/// (an EXECUTE, or a Bind, of a statement prepared before it was seen).
pub const ANY_TABLE: &str = "*";

/// How long a proxy holds the statements on a table whose column is being
/// renamed in place, at most: past it they go on under the rules in force
/// (the proxy renaming clears the barrier long before, or gives up).
pub const HOLD_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Applications told apart per migration (a flood of made-up names stops
/// here).
const MAX_APPLICATIONS: usize = 1000;

/// Statements rewritten and refused on account of one migration; kept
/// across epochs (one set per migration id).
#[derive(Debug, Default)]
pub struct MigrationCounters {
    /// The migration's id.
    pub id: Arc<str>,
    pub rewritten: AtomicU64,
    pub refused: AtomicU64,
    /// Statements that named the old column (the old shape).
    pub old_shape: AtomicU64,
    /// Unix milliseconds of the last one.
    pub old_shape_last_ms: AtomicU64,
    /// `application_name` → Unix milliseconds of its last old-shape
    /// statement (sharded: every worker notes old-shape statements here).
    old_shape_applications: DashMap<String, u64>,
}

/// Old-shape statements seen for one migration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OldShapeUsage {
    pub statements: u64,
    pub last_ms: u64,
    /// (application_name, Unix milliseconds of its last old-shape statement)
    pub applications: Vec<(String, u64)>,
}

impl MigrationCounters {
    /// Notes an old-shape statement from `application`.
    pub fn saw_old_shape(&self, application: Option<&str>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.old_shape.fetch_add(1, Ordering::Relaxed);
        self.old_shape_last_ms.fetch_max(now, Ordering::Relaxed);
        let apps = &self.old_shape_applications;
        let name = application.unwrap_or("");
        if let Some(mut last) = apps.get_mut(name) {
            *last = now;
        } else if apps.len() < MAX_APPLICATIONS {
            apps.insert(name.to_string(), now);
        }
    }

    pub fn old_shape_usage(&self) -> OldShapeUsage {
        let mut applications: Vec<(String, u64)> = self
            .old_shape_applications
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        applications.sort();
        OldShapeUsage {
            statements: self.old_shape.load(Ordering::Relaxed),
            last_ms: self.old_shape_last_ms.load(Ordering::Relaxed),
            applications,
        }
    }
}

/// A consistent set of rules.
#[derive(Debug, Default)]
pub struct Rules {
    /// Increases by one with every published snapshot.
    pub epoch: u64,
    /// Migrations whose rules apply (complete and rolled-back ones are left out).
    pub migrations: Vec<ActiveMigration>,
    /// The counters of each of `migrations`, index for index.
    pub counters: Vec<Arc<MigrationCounters>>,
    /// Lower-cased names of the migrating tables, for the fast path.
    pub table_names: Vec<String>,
    /// The catalog snapshot names are resolved with.
    pub catalog: Arc<Catalog>,
    /// Tables (lower-cased names) whose statements are held until the
    /// instant given: a column of theirs is being renamed in place.
    pub holds: Vec<(String, std::time::Instant)>,
}

impl Rules {
    /// Whether a statement with this text is held now: it names a table
    /// under a rename barrier, other than those in `locked` (tables the
    /// session's open transaction has used, and so holds a lock on: the
    /// rename cannot happen before that transaction ends, and holding it
    /// would only make the rename wait for its lock in vain).
    pub fn holds(&self, sql: &[u8], locked: &[String]) -> bool {
        if self.holds.is_empty() {
            return false;
        }
        let now = std::time::Instant::now();
        self.holds.iter().any(|(table, until)| {
            now < *until && !locked.contains(table) && super::scan::mentions(sql, table.as_bytes())
        })
    }

    /// The migrating tables (lower-cased) whose names `sql` contains.
    pub fn tables_named(&self, sql: &[u8]) -> Vec<String> {
        self.table_names
            .iter()
            .filter(|name| super::scan::mentions(sql, name.as_bytes()))
            .cloned()
            .collect()
    }
}

impl Rules {
    fn new(
        epoch: u64,
        migrations: &[ActiveMigration],
        catalog: Arc<Catalog>,
        holds: Vec<(String, std::time::Instant)>,
        registry: &Mutex<HashMap<String, Arc<MigrationCounters>>>,
    ) -> Rules {
        let migrations: Vec<ActiveMigration> = migrations
            .iter()
            // A dropped column, once gone, leaves nothing to serve: a
            // client naming it gets Postgres' own error, as direct. A
            // kept name is the new column's once the old one is gone.
            .filter(|m| m.phase.rules_active())
            .filter(|m| m.spec.catalog.is_none() || m.spec.fill().is_some())
            .filter(|m| !(m.spec.dropped || m.spec.keep_name) || m.phase.has_old())
            .map(|m| match m.spec.fill() {
                // A set_not_null with a fill: its column is the one written.
                Some((column, _)) => {
                    let mut m = m.clone();
                    m.spec.from = column.to_string();
                    m
                }
                None => m.clone(),
            })
            .collect();
        let mut registry = registry.lock().unwrap_or_else(|e| e.into_inner());
        let counters = migrations
            .iter()
            .map(|m| {
                Arc::clone(registry.entry(m.spec.id.clone()).or_insert_with(|| {
                    Arc::new(MigrationCounters {
                        id: Arc::from(m.spec.id.as_str()),
                        ..MigrationCounters::default()
                    })
                }))
            })
            .collect();
        let mut table_names: Vec<String> = migrations
            .iter()
            .flat_map(|m| {
                // A renamed table under both its names.
                let renamed = m.spec.renamed_to.as_deref().map(str::to_lowercase);
                std::iter::once(m.spec.table.name.to_lowercase()).chain(renamed)
            })
            .collect();
        table_names.sort();
        table_names.dedup();
        Rules {
            epoch,
            migrations,
            counters,
            table_names,
            catalog,
            holds,
        }
    }
}

/// Where the current rules are published.
#[derive(Debug)]
pub struct RulesCell {
    /// Distinguishes cells in the per-thread cache (an address could be reused).
    id: u64,
    current: Arc<ArcSwap<Rules>>,
    /// One publisher at a time (each reads the epoch it follows).
    publishing: Mutex<()>,
    counters: Mutex<HashMap<String, Arc<MigrationCounters>>>,
    /// Unix ms until which the rules are known to be current (renewed by
    /// the lifecycle each time it confirms the stored state); 0: no lease
    /// (rules that only change by configuration).
    lease_until_ms: AtomicU64,
    /// Requests in flight that touch a migrating table, over every
    /// session, counted in the bucket of each table's name (the last one:
    /// [`ANY_TABLE`]). Atomics, no lock: every such request counts here
    /// twice. Names sharing a bucket only make a barrier wait longer.
    in_flight: [std::sync::atomic::AtomicI64; IN_FLIGHT_BUCKETS + 1],
    /// DDL passed through this proxy since its lifecycle last looked at
    /// the catalog: it looks at its next poll. (One flag per proxy: two
    /// proxies in one process must not take each other's.)
    catalog_stale: std::sync::atomic::AtomicBool,
    /// The newest snapshot's epoch and whether it holds statements on
    /// some table, stored after the snapshot: read for every Bind,
    /// Describe and statement with one atomic load (the thread's snapshot
    /// cache costs ten times that).
    epoch: AtomicU64,
    holding: std::sync::atomic::AtomicBool,
    /// The newest snapshot has migrations (stored after it, as `epoch`).
    migrating: std::sync::atomic::AtomicBool,
}

impl RulesCell {
    /// A cell holding `migrations` as epoch 1, with no catalog snapshot yet.
    pub fn new(migrations: &[ActiveMigration]) -> RulesCell {
        Self::with_catalog(migrations, Catalog::empty())
    }

    /// A cell holding `migrations` and `catalog` as epoch 1.
    pub fn with_catalog(migrations: &[ActiveMigration], catalog: Catalog) -> RulesCell {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let counters = Mutex::new(HashMap::new());
        let first = Rules::new(1, migrations, Arc::new(catalog), Vec::new(), &counters);
        let migrating = !first.migrations.is_empty();
        RulesCell {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            current: Arc::new(ArcSwap::from_pointee(first)),
            publishing: Mutex::new(()),
            counters,
            lease_until_ms: AtomicU64::new(0),
            in_flight: std::array::from_fn(|_| std::sync::atomic::AtomicI64::new(0)),
            catalog_stale: std::sync::atomic::AtomicBool::new(false),
            epoch: AtomicU64::new(1),
            holding: std::sync::atomic::AtomicBool::new(false),
            migrating: std::sync::atomic::AtomicBool::new(migrating),
        }
    }

    /// Notes that DDL passed through (the catalog may have changed).
    pub fn catalog_may_have_changed(&self) {
        self.catalog_stale.store(true, Ordering::Relaxed);
    }

    /// Whether DDL passed through since the last call.
    pub fn take_catalog_stale(&self) -> bool {
        self.catalog_stale.swap(false, Ordering::Relaxed)
    }

    /// Publishes new migrations (with the catalog snapshot in force);
    /// returns the new epoch.
    pub fn publish(&self, migrations: &[ActiveMigration]) -> u64 {
        self.replace(|current| {
            let holds = current.holds.clone();
            (migrations.to_vec(), Arc::clone(&current.catalog), holds)
        })
    }

    /// Publishes a new catalog snapshot (with the migrations in force);
    /// returns the new epoch.
    pub fn publish_catalog(&self, catalog: Catalog) -> u64 {
        let catalog = Arc::new(catalog);
        self.replace(move |current| {
            let holds = current.holds.clone();
            (current.migrations.clone(), catalog, holds)
        })
    }

    /// Publishes new migrations and a new catalog snapshot together.
    pub fn publish_with_catalog(&self, migrations: &[ActiveMigration], catalog: Catalog) -> u64 {
        let catalog = Arc::new(catalog);
        self.replace(move |current| (migrations.to_vec(), catalog, current.holds.clone()))
    }

    /// Publishes new migrations, with a new catalog snapshot when one is
    /// given, and the tables whose statements are held from now on, each
    /// for at most the time given (a table held already keeps its
    /// deadline).
    pub fn publish_holding(
        &self,
        migrations: &[ActiveMigration],
        catalog: Option<Catalog>,
        held: &[(String, std::time::Duration)],
    ) -> u64 {
        let catalog = catalog.map(Arc::new);
        self.replace(move |current| {
            let now = std::time::Instant::now();
            let holds = held
                .iter()
                .map(|(t, left)| {
                    let kept = current.holds.iter().find(|(h, _)| h == t);
                    (
                        t.clone(),
                        kept.map_or(now + (*left).min(HOLD_MAX), |(_, u)| *u),
                    )
                })
                .collect();
            let catalog = catalog.unwrap_or_else(|| Arc::clone(&current.catalog));
            (migrations.to_vec(), catalog, holds)
        })
    }

    fn replace(
        &self,
        next: impl FnOnce(
            &Rules,
        ) -> (
            Vec<ActiveMigration>,
            Arc<Catalog>,
            Vec<(String, std::time::Instant)>,
        ),
    ) -> u64 {
        let _one = self.publishing.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.current.load_full();
        let epoch = current.epoch + 1;
        let (migrations, catalog, holds) = next(&current);
        let fresh = Rules::new(epoch, &migrations, catalog, holds, &self.counters);
        let holding = !fresh.holds.is_empty();
        let migrating = !fresh.migrations.is_empty();
        self.current.store(Arc::new(fresh));
        // (After the snapshot: an epoch read first never names rules
        // newer than those a rewrite then loads.)
        self.epoch.store(epoch, Ordering::Release);
        self.holding.store(holding, Ordering::Release);
        self.migrating.store(migrating, Ordering::Release);
        epoch
    }

    /// (migration id, statements rewritten, statements refused) for every
    /// migration ever published in this cell, sorted by id.
    pub fn counters(&self) -> Vec<(String, u64, u64)> {
        let registry = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, u64, u64)> = registry
            .iter()
            .map(|(id, c)| {
                (
                    id.clone(),
                    c.rewritten.load(Ordering::Relaxed),
                    c.refused.load(Ordering::Relaxed),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Old-shape usage of every migration ever published in this cell.
    pub fn old_shape_usage(&self) -> Vec<(String, OldShapeUsage)> {
        let registry = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<(String, OldShapeUsage)> = registry
            .iter()
            .map(|(id, c)| (id.clone(), c.old_shape_usage()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Confirms the rules as current until `until_ms` (Unix ms).
    pub fn renew_lease(&self, until_ms: u64) {
        self.lease_until_ms.fetch_max(until_ms, Ordering::Release);
    }

    /// How many ms ago the lease ran out, if there is one and it has.
    pub fn lease_lapsed(&self) -> Option<u64> {
        let until = self.lease_until_ms.load(Ordering::Acquire);
        if until == 0 {
            return None;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        (now > until).then(|| now - until)
    }

    /// Counts a request in flight that touches the migrating `tables`.
    pub fn in_flight(&self, tables: &[String], delta: i64) {
        for (k, table) in tables.iter().enumerate() {
            if tables[..k].contains(table) {
                continue; // one request, counted once per table
            }
            self.in_flight[bucket(table)].fetch_add(delta, Ordering::AcqRel);
        }
    }

    /// Requests in flight now that touch one of `tables` (or some table
    /// not known, or a table whose name shares a bucket).
    pub fn touching_in_flight(&self, tables: &[String]) -> i64 {
        let mut buckets: Vec<usize> = tables.iter().map(|t| bucket(t)).collect();
        buckets.push(IN_FLIGHT_BUCKETS);
        buckets.sort_unstable();
        buckets.dedup();
        buckets
            .iter()
            .map(|&b| self.in_flight[b].load(Ordering::Acquire))
            .sum()
    }

    /// This cell's identity (unique in the process).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The epoch of the newest snapshot.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether the newest snapshot has migrations (without one, no
    /// statement is planned).
    pub fn migrating(&self) -> bool {
        self.migrating.load(Ordering::Acquire)
    }

    /// Whether the newest snapshot holds statements on some table (the
    /// rename barrier).
    pub fn holding(&self) -> bool {
        self.holding.load(Ordering::Acquire)
    }

    /// The newest snapshot, as an owned reference (not for the hot path).
    pub fn load(&self) -> Arc<Rules> {
        self.current.load_full()
    }

    /// Runs `f` with the newest snapshot, from this thread's cache of this
    /// cell: one atomic load while nothing changed, no lock, no reference
    /// count change. (Called again from inside `f`, it loads the snapshot
    /// from the cell instead.)
    pub fn with<R>(&self, f: impl FnOnce(&Rules) -> R) -> R {
        type Cached = arc_swap::Cache<Arc<ArcSwap<Rules>>, Arc<Rules>>;
        thread_local! {
            static CACHE: RefCell<Option<(u64, Cached)>> = const { RefCell::new(None) };
        }
        CACHE.with(|cache| {
            let Ok(mut cache) = cache.try_borrow_mut() else {
                return f(&self.current.load());
            };
            if !matches!(&*cache, Some((id, _)) if *id == self.id) {
                *cache = Some((self.id, arc_swap::Cache::new(Arc::clone(&self.current))));
            }
            match &mut *cache {
                Some((_, cached)) => f(cached.load()),
                None => f(&Rules::default()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn migration(phase: Phase) -> ActiveMigration {
        ActiveMigration {
            spec: MigrationSpec::new("m", "Accounts", "a", "b", None, None, None).unwrap(),
            phase,
        }
    }

    #[test]
    fn publishing_makes_a_new_epoch_that_readers_see() {
        let cell = Arc::new(RulesCell::new(&[migration(Phase::Planned)]));
        assert_eq!(
            cell.with(|r| (r.epoch, r.migrations[0].phase)),
            (1, Phase::Planned)
        );
        assert_eq!(
            cell.with(|r| r.table_names.clone()),
            vec!["accounts".to_string()]
        );
        assert_eq!(cell.publish(&[migration(Phase::Switched)]), 2);
        assert_eq!(
            cell.with(|r| (r.epoch, r.migrations[0].phase)),
            (2, Phase::Switched)
        );
        cell.publish(&[migration(Phase::Complete)]);
        assert!(
            cell.with(|r| r.migrations.is_empty()),
            "complete migrations have no rules"
        );
        // A second cell on the same thread is not confused with the first.
        let other = Arc::new(RulesCell::new(&[]));
        assert!(other.with(|r| r.table_names.is_empty()));
        assert_eq!(cell.with(|r| r.epoch), 3);
    }
}

#[cfg(test)]
mod in_flight_tests {
    use super::*;

    #[test]
    fn a_barrier_waits_for_its_tables_and_the_unknown_ones_only() {
        let cell = RulesCell::new(&[]);
        let (branches, tellers) = ("branches".to_string(), "tellers".to_string());
        cell.in_flight(&[tellers.clone(), tellers.clone()], 1);
        assert_eq!(
            cell.touching_in_flight(std::slice::from_ref(&tellers)),
            1,
            "counted once"
        );
        if bucket(&branches) != bucket(&tellers) {
            assert_eq!(cell.touching_in_flight(std::slice::from_ref(&branches)), 0);
        }
        cell.in_flight(&[ANY_TABLE.to_string()], 1);
        assert_eq!(cell.touching_in_flight(std::slice::from_ref(&branches)), 1);
        cell.in_flight(std::slice::from_ref(&tellers), -1);
        cell.in_flight(&[ANY_TABLE.to_string()], -1);
        assert_eq!(cell.touching_in_flight(&[tellers, branches]), 0);
    }
}
