//! The migration rewriter: the [`StatementRewriter`] pgshift runs when
//! migrations are configured.
//!
//! A statement that cannot touch a migrating table takes the fast path (a
//! byte scan, no parse) and is forwarded byte for byte. One that can is
//! planned under the rules in force ([`super::plan`]): rewritten per the
//! phase table, forwarded unchanged when its meaning is the same in every
//! phase, or refused with SQLSTATE 0A000 naming the migration, the column
//! and the reason when pgshift cannot rewrite it safely. Plans are cached per
//! worker thread, keyed by the SQL text and checked against the rules epoch,
//! so a repeated statement costs one hash lookup.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::literals::{normalize, with_sentinels, Kind, Normalized, Template};
use super::migration::quote_ident;
use super::plan::{plan_noting, Notes, Plan};
use super::rules::{ActiveMigration, Rules, RulesCell};
use super::scan::mentions_any;
use super::{Refusal, Rewrite, StatementKind, StatementRewriter};

/// SQLSTATE for a statement pgshift cannot rewrite safely.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// SQLSTATE (object_not_in_prerequisite_state) while pgshift cannot
/// confirm that its rules are current.
pub const STATE_UNCONFIRMED: &str = "55000";
/// SQLSTATE of a statement too large to plan (`program_limit_exceeded`).
pub const TOO_LARGE: &str = "54000";

/// The largest statement text planned on a migrating table. Planning is
/// linear (about 0.3–0.5 µs a byte here), and it runs on the session's
/// worker thread: past this a statement would stall that worker's other
/// sessions for more than a few hundred milliseconds.
pub const MAX_PLANNED_BYTES: usize = 1 << 20;
/// The bytes of statement text and plans kept per worker thread (256 KiB
/// in unit tests, so that they can fill it).
const CACHE_BYTES: usize = if cfg!(test) { 256 << 10 } else { 32 << 20 };

/// The rewriter driven by the published migration rules.
#[derive(Debug, Clone)]
pub struct MigrationRewriter {
    rules: Arc<RulesCell>,
    /// What the DDL gate does with DDL statements.
    ddl: crate::sql_plan::gate::DdlMode,
    /// The jobs of the gate's `migrate` mode.
    migrating: Option<Arc<crate::sql_plan::migrate::Migrating>>,
}

impl MigrationRewriter {
    pub fn new(rules: Arc<RulesCell>) -> Self {
        MigrationRewriter {
            rules,
            ddl: Default::default(),
            migrating: None,
        }
    }

    /// The rewriter carrying DDL out through `carrier` in `migrate` mode.
    pub fn with_carrier(mut self, carrier: crate::sql_plan::migrate::CarrierSlot) -> Self {
        self.migrating = Some(Arc::new(crate::sql_plan::migrate::Migrating::new(carrier)));
        self
    }

    /// The rewriter with the DDL gate in `mode`.
    pub fn with_ddl(mut self, mode: crate::sql_plan::gate::DdlMode) -> Self {
        self.ddl = mode;
        self
    }
}

/// Statement texts the plan cache holds at most.
const CACHE_CAPACITY: usize = 4096;
/// Plans kept per text (for sessions that resolve names differently).
const PLANS_PER_TEXT: usize = 8;

/// A cached plan: which rules it was made under, its outcome, and the
/// migration (index in the rules) each use of it counts for.
struct Cached {
    /// About how many bytes it holds (the statement text it was made for).
    bytes: usize,
    cell: u64,
    epoch: u64,
    /// The session context's key: names may resolve differently elsewhere.
    session: u64,
    outcome: CachedOutcome,
    tally: Tally,
    /// The statement's result shape under these rules (see
    /// [`StatementRewriter::result_key`]).
    result: u64,
}

enum CachedOutcome {
    /// The same for every statement with this key.
    Fixed(Rewrite<'static>),
    /// A rewrite to fill with the statement's own literals.
    Template(Template),
}

/// What a planned statement counts as, per migration index.
#[derive(Default)]
struct Tally {
    rewritten: Vec<usize>,
    refused: Option<usize>,
    /// Migrations whose old column the statement names (old-shape use).
    old_shape: Vec<usize>,
}

thread_local! {
    /// The migration the last statement this thread rewrote or refused
    /// counts for ([`StatementRewriter::attribution`]).
    static ATTRIBUTED: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
    /// The migrations whose old shape the last statement this thread
    /// rewrote names ([`StatementRewriter::old_shape_named`]).
    static OLD_SHAPE: RefCell<Vec<Arc<str>>> = const { RefCell::new(Vec::new()) };
    /// Whether the last statement this thread was asked about names a
    /// migrating table ([`StatementRewriter::touched`]).
    static TOUCHED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Tally {
    fn record(&self, rules: &Rules) {
        let first = self.refused.or_else(|| self.rewritten.first().copied());
        let id = first
            .and_then(|i| rules.counters.get(i))
            .map(|c| Arc::clone(&c.id));
        ATTRIBUTED.with(|a| *a.borrow_mut() = id);
        for &i in &self.rewritten {
            if let Some(c) = rules.counters.get(i) {
                c.rewritten.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(c) = self.refused.and_then(|i| rules.counters.get(i)) {
            c.refused.fetch_add(1, Ordering::Relaxed);
        }
        OLD_SHAPE.with(|o| {
            let mut o = o.borrow_mut();
            o.clear();
            let ids = self.old_shape.iter().filter_map(|&i| rules.counters.get(i));
            o.extend(ids.map(|c| Arc::clone(&c.id)));
        });
        if !self.old_shape.is_empty() {
            super::with_current_session(|s| {
                let application = s.and_then(|s| s.application.as_deref());
                for &i in &self.old_shape {
                    if let Some(c) = rules.counters.get(i) {
                        c.saw_old_shape(application);
                    }
                }
            });
        }
    }
}

/// The plans of a statement text, weighed in bytes (its key and the
/// texts its plans were made for), and at least a [`CACHE_CAPACITY`]th of
/// the cache: so it holds at most that many texts, however short (a big
/// map of short statements costs more per miss than it saves).
#[derive(Clone)]
struct PlanBytes;

impl quick_cache::Weighter<Box<[u8]>, Vec<Cached>> for PlanBytes {
    fn weight(&self, key: &Box<[u8]>, plans: &Vec<Cached>) -> u64 {
        let bytes = key.len() + plans.iter().map(|c| c.bytes).sum::<usize>();
        bytes.max(CACHE_BYTES / CACHE_CAPACITY) as u64
    }
}

/// Plans by statement text (literals masked), per worker thread: bounded
/// by [`CACHE_BYTES`] and [`CACHE_CAPACITY`], the coldest evicted first
/// (quick_cache's CLOCK-Pro policy: one scan of new statements does not
/// flush the hot ones).
type PlanCache = quick_cache::unsync::Cache<Box<[u8]>, Vec<Cached>, PlanBytes>;

thread_local! {
    static PLANS: RefCell<PlanCache> = RefCell::new(PlanCache::with_weighter(
        CACHE_CAPACITY,
        CACHE_BYTES as u64,
        PlanBytes,
    ));
}

/// The refusal of a statement larger than [`MAX_PLANNED_BYTES`].
fn too_large(len: usize) -> Refusal {
    Refusal {
        code: TOO_LARGE,
        message: format!(
            "pgshift refused a statement of {len} bytes on a migrating table: while a migration is active it plans statements of at most {} bytes, as planning a larger one would stall the other sessions it serves",
            MAX_PLANNED_BYTES
        ),
        detail: None,
        hint: Some("Split it into smaller statements (a bulk INSERT into batches of rows), or send it once the migration is complete.".into()),
        routine: None,
    }
}

impl MigrationRewriter {
    /// A DDL statement: the carrier's answer or the gate's refusal;
    /// `None` to go on with it as written.
    fn ddl(&self, sql: &[u8]) -> Option<Rewrite<'static>> {
        use crate::sql_plan::{gate, migrate::Answer};
        self.rules.catalog_may_have_changed();
        let pid = super::with_current_session(|s| s.map_or(0, |s| s.backend_pid));
        match self.migrating.as_ref().and_then(|m| m.answer(sql, pid)) {
            Some(Answer::Tag(tag)) => Some(Rewrite::Done(tag)),
            Some(Answer::Refuse(refusal)) => Some(Rewrite::Refused(refusal)),
            // Sent as written (its table is the client's own so far).
            Some(Answer::AsWritten) => None,
            None => {
                let mode = super::with_current_session(|s| s.and_then(|s| s.ddl));
                gate::check(sql, mode.unwrap_or(self.ddl)).map(Rewrite::Refused)
            }
        }
    }
}

impl StatementRewriter for MigrationRewriter {
    fn rewrite<'a>(&self, kind: StatementKind, sql: &'a [u8]) -> Rewrite<'a> {
        self.rewrite_logged(kind, sql, &tracing::Span::none())
    }

    fn passes_unread(&self, sql: &[u8]) -> bool {
        // (What `rewrite_logged` looks at before it returns unchanged.)
        if self.rules.migrating() || crate::sql_plan::gate::is_ddl(sql) {
            return false;
        }
        TOUCHED.with(|t| t.set(false));
        true
    }

    fn rewrite_logged<'a>(
        &self,
        _kind: StatementKind,
        sql: &'a [u8],
        span: &tracing::Span,
    ) -> Rewrite<'a> {
        // (A statement the gate answers touches no table.)
        TOUCHED.with(|t| t.set(false));
        if crate::sql_plan::gate::is_ddl(sql) {
            if let Some(answer) = span.in_scope(|| self.ddl(sql)) {
                return answer;
            }
        }
        // (Without migrations, no statement is planned: not even the
        // snapshot is read.)
        if !self.rules.migrating() {
            return Rewrite::Unchanged;
        }
        self.rules.with(|rules| {
            let touched = !rules.migrations.is_empty() && mentions_any(sql, &rules.table_names);
            TOUCHED.with(|t| t.set(touched));
            if !touched {
                return Rewrite::Unchanged;
            }
            ATTRIBUTED.with(|a| a.borrow_mut().take());
            OLD_SHAPE.with(|o| o.borrow_mut().clear());
            // Rules this proxy could not confirm lately may be out of date
            // (another proxy may have changed the phase): fail safe.
            if let Some(late_ms) = self.rules.lease_lapsed() {
                return Rewrite::Refused(state_unconfirmed(late_ms));
            }
            if sql.len() > MAX_PLANNED_BYTES {
                return Rewrite::Refused(too_large(sql.len()));
            }
            // Statements that differ only in their literals share a plan.
            let normalized = normalize(sql);
            let at = PlanKey {
                key: cache_key(sql, &normalized),
                cell: self.rules.id(),
                epoch: rules.epoch,
                session: super::marker::session_key(&rules.migrations),
            };
            let literals = normalized.as_ref().map_or(&[][..], |n| &n.literals[..]);
            if let Some(outcome) = cached_outcome(&at, sql, literals, rules) {
                return outcome;
            }
            let Ok(text) = std::str::from_utf8(sql) else {
                let (outcome, tally) =
                    refuse_all(rules, "is not valid UTF-8, so pgshift cannot read it");
                tally.record(rules);
                return outcome;
            };
            let (outcome, cached, tally, result) = plan_for_cache(text, literals, rules);
            tally.record(rules);
            if let Some(cached) = cached {
                let entry = Cached {
                    bytes: sql.len(),
                    cell: at.cell,
                    epoch: at.epoch,
                    session: at.session,
                    outcome: cached,
                    tally,
                    result,
                };
                remember(at.key, entry);
            }
            outcome
        })
    }

    fn epoch(&self) -> Option<u64> {
        Some(self.rules.epoch())
    }

    fn holds(&self, sql: &[u8], locked: &[String]) -> bool {
        self.rules.with(|rules| rules.holds(sql, locked))
    }

    fn tables_named(&self, sql: &[u8]) -> Vec<String> {
        self.rules.with(|rules| rules.tables_named(sql))
    }

    fn holding(&self) -> bool {
        self.rules.holding()
    }

    fn pending(&self, sql: &[u8], backend_pid: i32, catalog_only: bool) -> bool {
        self.migrating
            .as_ref()
            .is_some_and(|m| m.pending(sql, backend_pid, catalog_only))
    }

    fn touched(&self) -> bool {
        TOUCHED.with(|t| t.get())
    }

    fn in_flight(&self, tables: &[String], delta: i64) {
        self.rules.in_flight(tables, delta);
    }

    fn attribution(&self) -> Option<Arc<str>> {
        ATTRIBUTED.with(|a| a.borrow().clone())
    }

    fn old_shape_named(&self) -> Vec<Arc<str>> {
        // (Kept only for statements that named a migrating table.)
        match TOUCHED.with(|t| t.get()) {
            true => OLD_SHAPE.with(|o| o.borrow().clone()),
            false => Vec::new(),
        }
    }

    fn saw_old_shape(&self, migrations: &[Arc<str>], application: Option<&str>) {
        self.rules.with(|rules| {
            for c in rules.counters.iter().filter(|c| migrations.contains(&c.id)) {
                c.saw_old_shape(application);
            }
        })
    }

    fn result_key(&self, sql: &[u8]) -> u64 {
        self.rules.with(|rules| {
            if rules.migrations.is_empty() || !mentions_any(sql, &rules.table_names) {
                return 0;
            }
            let normalized = normalize(sql);
            let key = cache_key(sql, &normalized);
            let session = super::marker::session_key(&rules.migrations);
            let cached = PLANS.with(|plans| {
                lookup(&plans.borrow(), key, self.rules.id(), rules.epoch, session)
                    .map(|c| c.result)
            });
            // Not cached (a refusal quoting its literals): planned again.
            cached.unwrap_or_else(|| match std::str::from_utf8(sql) {
                Ok(text) => check(text, rules).2,
                Err(_) => 0,
            })
        })
    }
}

/// The plan cache's key of a statement: its text with the literals
/// replaced by markers, or the text itself.
fn cache_key<'k>(sql: &'k [u8], normalized: &'k Option<Normalized>) -> &'k [u8] {
    match normalized {
        Some(n) if !n.key.is_empty() => &n.key,
        _ => sql,
    }
}

/// The refusal of a statement while the rules lease has lapsed for
/// `late_ms` milliseconds.
fn state_unconfirmed(late_ms: u64) -> Refusal {
    Refusal {
        code: STATE_UNCONFIRMED,
        message: format!(
            "pgshift refused a statement on a migrating table: it has not been able to confirm the migration state in the database for {} s, so its rewrite rules may be out of date",
            late_ms / 1000 + 1
        ),
        detail: None,
        hint: Some("Retry in a moment; statements on other tables are not affected. Check that pgshift can reach its control database.".into()),
        routine: None,
    }
}

/// Where a plan is cached: the statement's literal-free key, and the
/// rules and session it was made under.
struct PlanKey<'k> {
    key: &'k [u8],
    cell: u64,
    epoch: u64,
    session: u64,
}

/// The outcome of a cached plan for this statement, counted, if there is
/// one that still holds.
fn cached_outcome<'a>(
    at: &PlanKey<'_>,
    sql: &[u8],
    literals: &[(usize, usize, Kind)],
    rules: &Rules,
) -> Option<Rewrite<'a>> {
    PLANS.with(|plans| {
        let plans = plans.borrow();
        let cached = lookup(&plans, at.key, at.cell, at.epoch, at.session)?;
        let outcome = match &cached.outcome {
            CachedOutcome::Fixed(outcome) => outcome.clone(),
            CachedOutcome::Template(t) => {
                let text = std::str::from_utf8(sql).ok()?;
                Rewrite::Replaced(Cow::Owned(t.fill(text, literals)?))
            }
        };
        // Counted in place: a hit allocates nothing but its text.
        cached.tally.record(rules);
        Some(outcome)
    })
}

/// Caches a new plan. One plan per way of resolving names (sessions with
/// other search paths), the newest few kept; taken out and put back, so
/// that the cache weighs it anew.
fn remember(key: &[u8], entry: Cached) {
    PLANS.with(|plans| {
        let mut plans = plans.borrow_mut();
        let mut plans_for_text = plans.remove(key).map(|(_, v)| v).unwrap_or_default();
        plans_for_text.retain(|c| {
            c.cell == entry.cell && c.epoch == entry.epoch && c.session != entry.session
        });
        if plans_for_text.len() >= PLANS_PER_TEXT {
            plans_for_text.remove(0);
        }
        plans_for_text.push(entry);
        plans.insert(key.into(), plans_for_text);
    });
}

/// The plan cached for `key` under these rules and session, if any.
fn lookup<'p>(
    plans: &'p PlanCache,
    key: &[u8],
    cell: u64,
    epoch: u64,
    session: u64,
) -> Option<&'p Cached> {
    plans
        .get(key)?
        .iter()
        .find(|c| c.cell == cell && c.epoch == epoch && c.session == session)
}

/// A statement's result shape: which migrations' `*` it spells out (with
/// both migrating columns); 0 when none.
fn result_key(stars: &[usize], rules: &Rules) -> u64 {
    use std::hash::{Hash, Hasher};
    if stars.is_empty() {
        return 0;
    }
    // An added column joins `*` (at expand for a session marked new, at
    // the switch for an unmarked one), a dropped one leaves it: the
    // result changes there.
    let mut ids: Vec<(&str, bool)> = stars
        .iter()
        .filter_map(|&i| rules.migrations.get(i))
        // A kept name's new shape is the table as it is once the migration
        // is done: it adds nothing to the key, which then does not change
        // at the contract. Its old shape does.
        .filter(|m| !(m.spec.keep_name && super::marker::sees_new(m)))
        .map(|m| (m.spec.id.as_str(), super::marker::star_has_column(m)))
        .collect();
    if ids.is_empty() {
        return 0;
    }
    // Only kept names' old shapes: the types the table had before the
    // migration (what a statement prepared then was answered with).
    let as_before = stars
        .iter()
        .filter_map(|&i| rules.migrations.get(i))
        .all(|m| m.spec.keep_name);
    ids.sort_unstable();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ids.hash(&mut h);
    table_columns(stars, rules).hash(&mut h);
    // Never 0 nor the unknown result (all ones); bit 1 says `as_before`.
    ((h.finish() >> 3) << 2) | (u64::from(as_before) << 1) | 1
}

/// The columns of the tables of `stars`' migrations in the catalog
/// snapshot, but those the migrations themselves manage (told by their
/// ids and shapes): a column added or dropped by other DDL changes what a
/// `*` over the table answers, as it does on Postgres.
fn table_columns<'r>(stars: &[usize], rules: &'r Rules) -> Vec<&'r str> {
    let migrations: Vec<_> = stars
        .iter()
        .filter_map(|&i| rules.migrations.get(i))
        .collect();
    let managed = |c: &str| {
        rules
            .migrations
            .iter()
            .any(|m| m.spec.from == c || m.spec.to == c)
    };
    let mut columns: Vec<&str> = Vec::new();
    let mut seen: Vec<&crate::names::TableName> = Vec::new();
    for m in migrations {
        let table = &m.spec.table;
        if seen.contains(&table) {
            continue;
        }
        seen.push(table);
        if let Some(def) = rules.catalog.table(Some(&table.schema), &table.name) {
            columns.extend(
                def.columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .filter(|c| !managed(c)),
            );
        }
    }
    columns
}

/// Whether a statement prepared when its result key was `prepared` may
/// run unchanged for its client under rules that give it `now`: the same
/// key, or a key that answers with the types the table had before any
/// migration (a kept name's old shape) for a statement prepared then.
pub fn same_result(prepared: u64, now: u64) -> bool {
    prepared == now || (prepared == 0 && now & 2 != 0 && now != u64::MAX)
}

/// Plans `sql` for this use and for the cache: with its literals replaced
/// by sentinels when it has any, so the plan serves every statement that
/// differs only in them. A refusal is planned again on the real text (its
/// message may quote it) and is cached only for literal-free statements.
fn plan_for_cache(
    sql: &str,
    literals: &[(usize, usize, Kind)],
    rules: &Rules,
) -> (Rewrite<'static>, Option<CachedOutcome>, Tally, u64) {
    if !literals.is_empty() {
        if let Some(sentinel_text) = with_sentinels(sql, literals) {
            let (outcome, tally, result) = check(&sentinel_text, rules);
            match outcome {
                Rewrite::Unchanged => {
                    return (
                        Rewrite::Unchanged,
                        Some(CachedOutcome::Fixed(Rewrite::Unchanged)),
                        tally,
                        result,
                    )
                }
                Rewrite::Replaced(planned) => {
                    let template = Template::new(&planned, literals);
                    if let Some(text) = template.fill(sql, literals) {
                        return (
                            Rewrite::Replaced(Cow::Owned(text)),
                            Some(CachedOutcome::Template(template)),
                            tally,
                            result,
                        );
                    }
                }
                Rewrite::Refused(_) | Rewrite::Done(_) => {}
            }
        }
        let (outcome, tally, result) = check(sql, rules);
        return (outcome, None, tally, result);
    }
    let (outcome, tally, result) = check(sql, rules);
    (
        outcome.clone(),
        Some(CachedOutcome::Fixed(outcome)),
        tally,
        result,
    )
}

/// Plans a statement that mentions a migrating table: the rewriter's
/// answer, what it counts as, and its result shape's key.
fn check<'a>(sql: &str, rules: &Rules) -> (Rewrite<'a>, Tally, u64) {
    let mut notes = Notes::default();
    let (outcome, mut tally) = outcome(plan_noting(sql, rules, &mut notes), rules);
    // A statement naming a migration's old column is old-shape use.
    tally.old_shape = notes.old_shape;
    (outcome, tally, result_key(&notes.stars, rules))
}

/// A plan as the rewriter's answer and what it counts as.
fn outcome<'a>(plan: Plan<'_>, rules: &Rules) -> (Rewrite<'a>, Tally) {
    match plan {
        Plan::Unchanged => (Rewrite::Unchanged, Tally::default()),
        Plan::Replaced { text, by } => (
            Rewrite::Replaced(Cow::Owned(text)),
            Tally {
                rewritten: by,
                refused: None,
                old_shape: Vec::new(),
            },
        ),
        Plan::Refused {
            migration: Some(m),
            reason,
        } => (
            Rewrite::Refused(refusal(m, &reason)),
            Tally {
                rewritten: Vec::new(),
                refused: rules.migrations.iter().position(|x| std::ptr::eq(x, m)),
                old_shape: Vec::new(),
            },
        ),
        Plan::Error {
            migration,
            code,
            message,
        } => (
            Rewrite::Refused(Refusal {
                code,
                message,
                detail: None,
                hint: migration.map(|m| {
                    format!(
                        "pgshift answered as Postgres would on a database in this statement's shape (migration \"{}\" is {})",
                        m.spec.id, m.phase
                    )
                }),
                routine: None,
            }),
            Tally {
                rewritten: Vec::new(),
                refused: migration.and_then(|m| rules.migrations.iter().position(|x| std::ptr::eq(x, m))),
                old_shape: Vec::new(),
            },
        ),
        Plan::Refused {
            migration: None, ..
        } => (Rewrite::Unchanged, Tally::default()),
    }
}

fn refusal(m: &ActiveMigration, reason: &str) -> Refusal {
    let spec = &m.spec;
    Refusal {
        code: FEATURE_NOT_SUPPORTED,
        message: format!(
            "pgshift refused a statement on table {} during migration \"{}\" ({} -> {}, phase {}): it {}",
            spec.table,
            spec.id,
            quote_ident(&spec.from),
            quote_ident(&spec.to),
            m.phase,
            reason
        ),
        detail: None,
        hint: Some(
            "pgshift refuses what it cannot rewrite safely, so nothing is half-written; statements that do not touch the migrating columns pass unchanged."
                .into(),
        ),
        routine: None,
    }
}

fn refuse_all<'a>(rules: &Rules, reason: &str) -> (Rewrite<'a>, Tally) {
    match rules.migrations.first() {
        Some(m) => (
            Rewrite::Refused(refusal(m, reason)),
            Tally {
                rewritten: Vec::new(),
                refused: Some(0),
                old_shape: Vec::new(),
            },
        ),
        None => (Rewrite::Unchanged, Tally::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::catalog::{Catalog, ColumnDef, TableDef};
    use crate::rewrite::migration::{MigrationSpec, Phase};

    /// The rename abalance -> balance of pgbench_accounts in `phase`.
    fn accounts(phase: Phase) -> ActiveMigration {
        let mut rename = crate::scenario::migrations().swap_remove(0);
        rename.phase = phase;
        rename
    }

    fn rename(phase: Phase) -> MigrationRewriter {
        MigrationRewriter::new(Arc::new(RulesCell::new(&[accounts(phase)])))
    }

    /// DDL through one proxy's rewriter marks that proxy's catalog as
    /// stale and no other's: two proxies in one process (the test suite)
    /// must not take each other's prompt to look at the catalog.
    #[test]
    fn ddl_marks_only_its_own_proxys_catalog_stale() {
        let (a, b) = (rename(Phase::Expanded), rename(Phase::Expanded));
        let sql = b"alter table t add column c int";
        assert!(!a.rules.take_catalog_stale());
        let _ = a.rewrite(StatementKind::SimpleQuery, sql);
        assert!(!b.rules.take_catalog_stale());
        assert!(a.rules.take_catalog_stale());
        assert!(!a.rules.take_catalog_stale(), "taken once");
    }

    #[test]
    fn a_statement_past_the_planning_budget_is_refused_whole() {
        let r = rename(Phase::Expanded);
        let rows = vec!["(1, 2, 3, 'x')"; MAX_PLANNED_BYTES / 14 + 1].join(", ");
        let sql =
            format!("insert into pgbench_accounts (aid, bid, abalance, filler) values {rows}");
        match r.rewrite(StatementKind::SimpleQuery, sql.as_bytes()) {
            Rewrite::Refused(refusal) => {
                assert_eq!(refusal.code, TOO_LARGE);
                assert!(
                    refusal.message.contains("at most 1048576 bytes"),
                    "{}",
                    refusal.message
                );
            }
            other => panic!("{other:?}"),
        }
        // Other tables are not planned at all: any size passes.
        let other = sql.replace("pgbench_accounts", "pgbench_history");
        assert!(matches!(
            r.rewrite(StatementKind::SimpleQuery, other.as_bytes()),
            Rewrite::Unchanged
        ));
        // Just under the budget, it is planned as usual.
        let rows = vec!["(1, 2, 3, 'x')"; 1000].join(", ");
        let sql =
            format!("insert into pgbench_accounts (aid, bid, abalance, filler) values {rows}");
        assert!(matches!(
            r.rewrite(StatementKind::SimpleQuery, sql.as_bytes()),
            Rewrite::Replaced(_)
        ));
    }

    /// A statement sent again and again keeps its plan while a stream of
    /// statements seen once (more than the cache holds) passes through,
    /// and the cache stays within its bytes.
    #[test]
    fn the_plan_cache_keeps_hot_plans_through_a_scan_within_its_bytes() {
        let r = rename(Phase::Expanded);
        let hot = "update pgbench_accounts set abalance = abalance + 1 where aid = 7";
        for _ in 0..5 {
            assert!(matches!(
                r.rewrite(StatementKind::SimpleQuery, hot.as_bytes()),
                Rewrite::Replaced(_)
            ));
        }
        let normalized = normalize(hot.as_bytes());
        let key = cache_key(hot.as_bytes(), &normalized).to_vec();
        for i in 0..5000 {
            let once =
                format!("select abalance as seen_once_{i} from pgbench_accounts where aid = 1");
            let _ = r.rewrite(StatementKind::SimpleQuery, once.as_bytes());
        }
        PLANS.with(|plans| {
            let plans = plans.borrow();
            assert!(plans.weight() <= CACHE_BYTES as u64, "{}", plans.weight());
            assert!(plans.len() < 5000, "evicted: {}", plans.len());
            assert!(plans.contains_key(&key[..]), "the hot plan was evicted");
        });
    }

    /// orders.amount (integer cents) → amount_dec numeric(12,2).
    fn orders(phase: Phase) -> ActiveMigration {
        ActiveMigration {
            spec: MigrationSpec::new(
                "orders_amount",
                "orders",
                "amount",
                "amount_dec",
                Some("numeric(12,2)"),
                Some("amount::numeric / 100"),
                Some("(amount_dec * 100)::integer"),
            )
            .unwrap(),
            phase,
        }
    }

    fn retype(phase: Phase) -> MigrationRewriter {
        MigrationRewriter::new(Arc::new(RulesCell::new(&[orders(phase)])))
    }

    /// The rewritten text, "=" when unchanged, "refused: …" when refused.
    fn out(r: &MigrationRewriter, sql: &str) -> String {
        match r.rewrite(StatementKind::SimpleQuery, sql.as_bytes()) {
            Rewrite::Unchanged => "=".into(),
            Rewrite::Replaced(text) => text.into_owned(),
            Rewrite::Refused(x) => format!("refused: {}", x.message),
            Rewrite::Done(tag) => format!("done: {tag}"),
        }
    }

    #[test]
    fn statements_that_cannot_touch_the_columns_pass() {
        let r = rename(Phase::Expanded);
        for sql in [
            "select 1",
            "select * from pgbench_branches",
            "select aid, bid from pgbench_accounts where aid = $1",
            "update pgbench_accounts set filler = 'x' where aid = 1",
            "delete from pgbench_accounts where aid = 3",
            "insert into pgbench_history (tid, bid, aid, delta) values (1, 2, 3, 4)",
            "select count(*) from pgbench_accounts",
            "select aid * 2 from pgbench_accounts",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            // Reads of the read source mean the same physically: forwarded as
            // they are (planned once per cache key, never changed).
            "select abalance from pgbench_accounts join pgbench_branches using (bid)",
            "select abalance from pgbench_accounts where aid in (select aid from x where abalance > 0)",
            // Another table's column of the same name is no write of the migrating one.
            "update pgbench_branches set abalance = 1 from pgbench_accounts a where a.bid = pgbench_branches.bid",
        ] {
            assert_eq!(out(&r, sql), "=", "{sql}");
        }
    }

    #[test]
    fn renames_follow_the_phase_table() {
        let cases: &[(Phase, &str, &str)] = &[
            (Phase::Expanded, "select balance from pgbench_accounts where aid = $1",
             "select abalance AS balance from pgbench_accounts where aid = $1"),
            (Phase::Switched, "select abalance from pgbench_accounts where aid = $1",
             "select balance AS abalance from pgbench_accounts where aid = $1"),
            (Phase::Switched, "select a.abalance + 1 as x from pgbench_accounts a /* c */ where a.abalance > 0 order by abalance",
             "select a.balance + 1 as x from pgbench_accounts a /* c */ where a.balance > 0 order by balance"),
            (Phase::Expanded, "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
             "UPDATE pgbench_accounts SET abalance = abalance + $1, balance = abalance + $1 WHERE aid = $2"),
            (Phase::Switched, "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
             "UPDATE pgbench_accounts SET abalance = balance + $1, balance = balance + $1 WHERE aid = $2"),
            (Phase::Contracted, "update pgbench_accounts set abalance = abalance - 1 where aid = 1 returning abalance",
             "update pgbench_accounts set balance = balance - 1 where aid = 1 returning balance AS abalance"),
            (Phase::Planned, "update pgbench_accounts set balance = 5 where aid = 1",
             "update pgbench_accounts set abalance = 5 where aid = 1"),
            (Phase::Expanded, "insert into pgbench_accounts (aid, bid, abalance, filler) values (1, 1, 0, 'x'), ($1, $2, $3, '')",
             "insert into pgbench_accounts (aid, bid, abalance, balance, filler) values (1, 1, 0, 0, 'x'), ($1, $2, $3, $3, '')"),
            (Phase::Contracted, "insert into pgbench_accounts (aid, balance) values (1, 7) returning balance",
             "insert into pgbench_accounts (aid, balance) values (1, 7) returning balance"),
            (Phase::Planned, "delete from pgbench_accounts where balance < 0 returning aid, balance",
             "delete from pgbench_accounts where abalance < 0 returning aid, abalance AS balance"),
            (
                Phase::Switched,
                "select abalance::text, (a.abalance)::numeric(10,2), x from pgbench_accounts a",
                "select balance::text AS abalance, (a.balance)::numeric(10,2) AS abalance, x from pgbench_accounts a",
            ),
            (Phase::Switched, "select 1; select abalance from pgbench_accounts",
             "select 1; select balance AS abalance from pgbench_accounts"),
            (Phase::Expanded, "select balance from pgbench_accounts union select 1",
             "select abalance AS balance from pgbench_accounts union select 1"),
            (Phase::Switched, "select b.bbalance, a.abalance from pgbench_branches b join pgbench_accounts a on a.bid = b.bid",
             "select b.bbalance, a.balance AS abalance from pgbench_branches b join pgbench_accounts a on a.bid = b.bid"),
        ];
        for (phase, sql, expected) in cases {
            assert_eq!(out(&rename(*phase), sql), *expected, "{phase}: {sql}");
        }
    }

    #[test]
    fn type_changes_convert_with_up_and_down() {
        let cases: &[(Phase, &str, &str)] = &[
            (Phase::Expanded, "select amount_dec from orders where id = 1",
             "select ((amount)::numeric / 100)::numeric(12,2) AS amount_dec from orders where id = 1"),
            (Phase::Switched, "select o.amount from orders o",
             "select (((o.amount_dec) * 100)::integer) AS amount from orders o"),
            (Phase::Expanded, "update orders set amount = 250 where id = 1",
             "update orders set amount = 250, amount_dec = ((250)::numeric / 100)::numeric(12,2) where id = 1"),
            (Phase::Expanded, "insert into orders (id, amount_dec) values (2, 1.5)",
             "insert into orders (id, amount, amount_dec) values (2, (((1.5) * 100)::integer), 1.5)"),
        ];
        for (phase, sql, expected) in cases {
            assert_eq!(out(&retype(*phase), sql), *expected, "{phase}: {sql}");
        }
        // Without a catalog, a's type is the one `down` casts to.
        assert_eq!(
            out(&retype(Phase::Expanded), "update orders set amount = $1 where id = 1"),
            "update orders set amount = $1::INTEGER, amount_dec = (($1::INTEGER)::numeric / 100)::numeric(12,2) where id = 1"
        );
    }

    #[test]
    fn a_widened_integer_key_is_looked_up_on_the_physical_column() {
        let widen = |phase| {
            let spec = MigrationSpec::new(
                "accounts_id_big",
                "accounts",
                "id",
                "id_big",
                Some("bigint"),
                Some("id::bigint"),
                Some("id_big::integer"),
            )
            .unwrap();
            MigrationRewriter::new(Arc::new(RulesCell::new(&[ActiveMigration { spec, phase }])))
        };
        let cases: &[(Phase, &str, &str)] = &[
            // Reads on the new column: the old shape's lookups use it as
            // it is, placeholders keep the type the client's column had.
            (Phase::Switched, "select name from accounts where id = $1",
             "select name from accounts where id_big = $1::INTEGER"),
            (Phase::Switched, "delete from accounts a where 7 = a.id and x = 1",
             "delete from accounts a where 7 = a.id_big and x = 1"),
            (Phase::Contracted, "select id from accounts where id >= '10' order by id",
             "select ((id_big)::integer) AS id from accounts where id_big >= '10' order by id_big"),
            // Keyset pagination: the index serves the filter and the order.
            (Phase::Switched, "select name from accounts a where a.id > $1 order by name, a.id desc nulls last limit 100",
             "select name from accounts a where a.id_big > $1::INTEGER order by name, a.id_big desc nulls last limit 100"),
            (Phase::Switched, "select name from accounts a where a.id > $1 order by a.id limit 100 for update",
             "select name from accounts a where a.id_big > $1::INTEGER order by a.id_big limit 100 for update"),
            // Not where ORDER BY must repeat a DISTINCT, GROUP BY or set
            // operation's expression, nor inside a window or an aggregate.
            // A bare ORDER BY name is the output column.
            (Phase::Switched, "select distinct id from accounts order by id",
             "select distinct ((id_big)::integer) AS id from accounts order by id"),
            (Phase::Switched, "select id, count(*) from accounts group by id order by id",
             "select ((id_big)::integer) AS id, count(*) from accounts group by ((id_big)::integer) order by id"),
            (Phase::Switched, "select rank() over (order by id) from accounts",
             "select rank() over (order by ((id_big)::integer)) from accounts"),
            (Phase::Switched, "select name from accounts order by id + 1",
             "select name from accounts order by ((id_big)::integer) + 1"),
            // Before the switch, the new shape's lookups use the old column.
            (Phase::Expanded, "select name from accounts where id_big = $1",
             "select name from accounts where id = $1::bigint"),
            // Anything more than a plain comparison goes through the conversion.
            (Phase::Switched, "select name from accounts where id + 1 = $1",
             "select name from accounts where ((id_big)::integer) + 1 = $1"),
            (Phase::Switched, "select name from accounts where id = $1 + 1",
             "select name from accounts where ((id_big)::integer) = $1 + 1"),
            (Phase::Switched, "select name from accounts where id = 7::int",
             "select name from accounts where ((id_big)::integer) = 7::int"),
            // The column read where it is the source is left alone.
            (Phase::Expanded, "select name from accounts where id = $1", "="),
            // Only in filters: where grouping, DISTINCT or ORDER BY name the
            // converted expression, the comparison must read it too.
            (Phase::Switched, "select id from accounts group by id having id = 7",
             "select ((id_big)::integer) AS id from accounts group by ((id_big)::integer) having ((id_big)::integer) = 7"),
            (Phase::Switched, "select id = 7 from accounts group by id",
             "select ((id_big)::integer) = 7 from accounts group by ((id_big)::integer)"),
            (Phase::Switched, "select count(*) from accounts a join notes n on n.id = 1 and a.id = 7 where (x = 1 or a.id <= $1)",
             "select count(*) from accounts a join notes n on n.id = 1 and a.id_big = 7 where (x = 1 or a.id_big <= $1::INTEGER)"),
        ];
        for (phase, sql, expected) in cases {
            assert_eq!(out(&widen(*phase), sql), *expected, "{phase}: {sql}");
        }
        // Only plain integer widening casts qualify.
        assert!(orders(Phase::Switched).spec.integer_widening().is_none());
    }

    #[test]
    fn what_cannot_be_rewritten_safely_is_refused() {
        let r = rename(Phase::Expanded);
        for (sql, says) in [
            // Without a catalog snapshot, implied columns cannot be expanded.
            ("select * from pgbench_accounts", "catalog snapshot"),
            ("select a.* from pgbench_accounts a", "catalog snapshot"),
            ("table pgbench_accounts", "TABLE"),
            (
                "insert into pgbench_accounts values (1, 1, 0, '')",
                "catalog snapshot",
            ),
            (
                "insert into public.pgbench_accounts (aid, bid) values (1, 1)",
                "catalog snapshot",
            ),
            ("copy pgbench_accounts from stdin", "COPY FROM is not rewritten"),
            (
                "copy pgbench_accounts (aid, abalance) from stdin",
                "both migrating columns are written",
            ),

            (
                "select aid from pgbench_accounts where aid in (select aid from x where balance > 0)",
                "another relation in reach may have",
            ),

            (
                "insert into pgbench_accounts (aid, abalance) select 1, 2 union select 3, 4",
                "set operation",
            ),
            (
                "select balance from pgbench_accounts join pgbench_branches using (bid)",
                "qualify it",
            ),
            (
                "update pgbench_accounts set abalance = random() where aid = 1",
                "random(…)",
            ),
            (
                "insert into pgbench_accounts (aid, abalance, balance) values (1, 1, 1)",
                "both",
            ),
            ("alter table pgbench_accounts drop column abalance", "DDL"),
            (
                "insert into pgbench_accounts (aid, abalance) values (1, default)",
                "DEFAULT",
            ),

            (
                "insert into pgbench_accounts (aid, abalance) values (1, 2) on conflict (aid) do update set (bid, balance) = (1, 3)",
                "tuple",
            ),
        ] {
            let got = out(&r, sql);
            assert!(got.starts_with("refused: "), "{sql}: {got}");
            assert!(got.contains(says), "{sql}: {got}");
            assert!(got.contains("migration \"accounts_balance\""), "{got}");
            assert!(got.contains("phase expanded"), "{got}");
        }
    }

    fn column(name: &str, type_name: &str, default: Option<&str>) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            type_name: type_name.into(),
            not_null: false,
            default: default.map(str::to_string),
        }
    }

    /// The physical tables of the phase: pgbench_accounts (abalance →
    /// balance), pgbench_branches, orders (amount → amount_dec).
    fn catalog(phase: Phase) -> Catalog {
        let mut c = Catalog::empty();
        let mut accounts = vec![
            column("aid", "integer", None),
            column("bid", "integer", None),
        ];
        let mut orders = vec![column("id", "integer", None)];
        if phase.has_old() {
            accounts.push(column("abalance", "integer", Some("0")));
            orders.push(column("amount", "integer", Some("nextval('s'::regclass)")));
        }
        accounts.push(column("filler", "character(84)", None));
        orders.push(column("note", "text", None));
        if phase.has_new() {
            accounts.push(column("balance", "integer", None));
            orders.push(column("amount_dec", "numeric(12,2)", None));
        }
        c.insert("public", "pgbench_accounts", TableDef { columns: accounts });
        c.insert("public", "orders", TableDef { columns: orders });
        c.insert(
            "public",
            "pgbench_branches",
            TableDef {
                columns: vec![
                    column("bid", "integer", None),
                    column("bbalance", "integer", None),
                ],
            },
        );
        c
    }

    fn with_catalog(m: ActiveMigration) -> MigrationRewriter {
        let phase = m.phase;
        MigrationRewriter::new(Arc::new(RulesCell::with_catalog(&[m], catalog(phase))))
    }

    /// A column added by other DDL changes what a prepared `*` over the
    /// migrating table answers: its result key changes (the use fails
    /// once, as on Postgres), while the migration's own columns are told
    /// by its phase.
    #[test]
    fn a_column_added_under_a_star_changes_its_result_key() {
        let m = accounts(Phase::Expanded);
        let cell = Arc::new(RulesCell::with_catalog(&[m], catalog(Phase::Expanded)));
        let r = MigrationRewriter::new(Arc::clone(&cell));
        let star = b"select * from pgbench_accounts";
        let before = r.result_key(star);
        assert_ne!(before, 0);
        let explicit = r.result_key(b"select aid from pgbench_accounts");
        let mut wider = catalog(Phase::Expanded);
        let mut table = wider
            .table(Some("public"), "pgbench_accounts")
            .unwrap()
            .clone();
        table.columns.push(column("extra", "integer", None));
        wider.insert("public", "pgbench_accounts", table);
        cell.publish_catalog(wider);
        assert_ne!(r.result_key(star), before);
        assert_eq!(r.result_key(b"select aid from pgbench_accounts"), explicit);
    }

    #[test]
    fn after_contract_the_old_column_keeps_its_recorded_place() {
        let mut m = accounts(Phase::Contracted);
        m.spec.old_after = Some("bid".into());
        let r = with_catalog(m);
        assert_eq!(
            out(&r, "select * from pgbench_accounts"),
            "select pgbench_accounts.aid, pgbench_accounts.bid, pgbench_accounts.balance AS abalance, pgbench_accounts.filler, pgbench_accounts.balance from pgbench_accounts"
        );
        // With the place known, a positional INSERT is no longer refused.
        assert_eq!(
            out(&r, "insert into pgbench_accounts values (1, 2, 3, 'x')"),
            "insert into pgbench_accounts (aid, bid, balance, filler) values (1, 2, 3, 'x')"
        );
    }

    #[test]
    fn the_catalog_expands_stars_implied_columns_and_join_columns() {
        let cases: &[(Phase, &str, &str)] = &[
            (Phase::Expanded, "select * from pgbench_accounts where aid = 1",
             "select pgbench_accounts.aid, pgbench_accounts.bid, pgbench_accounts.abalance, pgbench_accounts.filler, pgbench_accounts.abalance AS balance from pgbench_accounts where aid = 1"),
            // Before b exists, * still yields it, last.
            (Phase::Planned, "select a.* from pgbench_accounts a",
             "select a.aid, a.bid, a.abalance, a.filler, a.abalance AS balance from pgbench_accounts a"),
            // After a is dropped, a comes just before b.
            (Phase::Contracted, "select * from pgbench_accounts",
             "select pgbench_accounts.aid, pgbench_accounts.bid, pgbench_accounts.filler, pgbench_accounts.balance AS abalance, pgbench_accounts.balance from pgbench_accounts"),
            (Phase::Switched, "select *, 1 from pgbench_accounts a join pgbench_branches b on a.bid = b.bid",
             "select a.aid, a.bid, a.balance AS abalance, a.filler, a.balance, b.*, 1 from pgbench_accounts a join pgbench_branches b on a.bid = b.bid"),
            (Phase::Expanded, "select b.* from pgbench_accounts a join pgbench_branches b on a.bid = b.bid",
             "="),
            (Phase::Expanded, "delete from pgbench_accounts where aid = 1 returning *",
             "delete from pgbench_accounts where aid = 1 returning pgbench_accounts.aid, pgbench_accounts.bid, pgbench_accounts.abalance, pgbench_accounts.filler, pgbench_accounts.abalance AS balance"),
            // A positional INSERT takes the old shape's columns.
            (Phase::Expanded, "insert into pgbench_accounts values (1, 2, 3, 'x')",
             "insert into pgbench_accounts (aid, bid, abalance, balance, filler) values (1, 2, 3, 3, 'x')"),
            // Fewer values: the old column is filled with its default, in both.
            (Phase::Expanded, "insert into pgbench_accounts values (1, 2)",
             "insert into pgbench_accounts (aid, bid, abalance, balance) values (1, 2, 0, 0)"),
            (Phase::Expanded, "insert into pgbench_accounts (aid, bid) values (1, 2), (3, 4)",
             "insert into pgbench_accounts (aid, bid, abalance, balance) values (1, 2, 0, 0), (3, 4, 0, 0)"),
            (Phase::Expanded, "insert into pgbench_accounts default values",
             "insert into pgbench_accounts (abalance, balance) VALUES (0, 0)"),
            (Phase::Planned, "insert into pgbench_accounts values (1, 2, 3, 'x')", "="),
            // An unqualified column in a join, when the other table has no such column.
            (Phase::Switched, "select abalance from pgbench_accounts join pgbench_branches using (bid)",
             "select balance AS abalance from pgbench_accounts join pgbench_branches using (bid)"),
        ];
        for (phase, sql, expected) in cases {
            assert_eq!(
                out(&with_catalog(accounts(*phase)), sql),
                *expected,
                "{phase}: {sql}"
            );
        }
        let retyped = |phase| with_catalog(orders(phase));
        let cases: &[(&str, &str)] = &[
            // A parameter written twice is cast to the written column's type.
            ("update orders set amount = $1 where id = $2",
             "update orders set amount = $1::integer, amount_dec = (($1::integer)::numeric / 100)::numeric(12,2) where id = $2"),
            ("insert into orders (id, amount_dec) values ($1, $2)",
             "insert into orders (id, amount, amount_dec) values ($1, ((($2::numeric(12,2)) * 100)::integer), $2::numeric(12,2))"),
            // Inside an expression both copies keep the parameter's context.
            ("update orders set amount = amount + $1 where id = $2",
             "update orders set amount = amount + $1, amount_dec = ((amount + $1)::numeric / 100)::numeric(12,2) where id = $2"),
        ];
        for (sql, expected) in cases {
            assert_eq!(out(&retyped(Phase::Expanded), sql), *expected, "{sql}");
        }
        // * over a join USING a column: the merged column once, first.
        assert_eq!(
            out(&with_catalog(accounts(Phase::Expanded)), "select * from pgbench_accounts join pgbench_branches using (bid)"),
            "select bid, pgbench_accounts.aid, pgbench_accounts.abalance, pgbench_accounts.filler, pgbench_accounts.abalance AS balance, pgbench_branches.bbalance from pgbench_accounts join pgbench_branches using (bid)"
        );
        // * in a subquery, a CTE, a set operation: spelled out where it is.
        for (sql, expected) in [
            ("select s.abalance from (select * from pgbench_accounts) s",
             "select s.abalance from (select pgbench_accounts.aid, pgbench_accounts.bid, pgbench_accounts.abalance, pgbench_accounts.filler, pgbench_accounts.abalance AS balance from pgbench_accounts) s"),
            ("with c as (select * from pgbench_accounts where aid < 3) select balance from c",
             "with c as (select pgbench_accounts.aid, pgbench_accounts.bid, pgbench_accounts.abalance, pgbench_accounts.filler, pgbench_accounts.abalance AS balance from pgbench_accounts where aid < 3) select balance from c"),
        ] {
            assert_eq!(out(&with_catalog(accounts(Phase::Expanded)), sql), expected, "{sql}");
        }
        // Once the old column is dropped, its place is unknown.
        let got = out(
            &with_catalog(accounts(Phase::Contracted)),
            "insert into pgbench_accounts values (1, 2, 3, 'x')",
        );
        assert!(got.contains("no longer known"), "{got}");
        // A volatile default cannot be written twice.
        let got = out(
            &retyped(Phase::Expanded),
            "insert into orders (id) values (1)",
        );
        assert!(got.contains("nextval"), "{got}");
    }

    #[test]
    fn on_conflict_do_update_writes_both_columns() {
        let cases: &[(Phase, &str, &str)] = &[
            (Phase::Expanded,
             "insert into pgbench_accounts (aid, abalance) values (1, 2) on conflict (aid) do update set abalance = excluded.abalance",
             "insert into pgbench_accounts (aid, abalance, balance) values (1, 2, 2) on conflict (aid) do update set abalance = excluded.abalance, balance = excluded.abalance"),
            (Phase::Switched,
             "insert into pgbench_accounts as t (aid, balance) values (1, 2) on conflict (aid) do update set balance = t.balance + excluded.balance where t.abalance < 100",
             "insert into pgbench_accounts as t (aid, abalance, balance) values (1, 2, 2) on conflict (aid) do update set abalance = t.balance + excluded.balance, balance = t.balance + excluded.balance where t.balance < 100"),
            (Phase::Expanded,
             "insert into pgbench_accounts (aid, abalance) values (1, 2) on conflict (aid) do update set bid = 1, balance = 3",
             "insert into pgbench_accounts (aid, abalance, balance) values (1, 2, 2) on conflict (aid) do update set bid = 1, abalance = 3, balance = 3"),
            // A rename's conflict target follows the read source (its unique index exists on both).
            (Phase::Switched,
             "insert into pgbench_accounts (aid, abalance) values (1, 2) on conflict (abalance) do nothing",
             "insert into pgbench_accounts (aid, abalance, balance) values (1, 2, 2) on conflict (balance) do nothing"),
        ];
        for (phase, sql, expected) in cases {
            assert_eq!(out(&rename(*phase), sql), *expected, "{phase}: {sql}");
        }
        let got = out(
            &retype(Phase::Expanded),
            "insert into orders (id, amount) values (1, 2) on conflict (amount) do nothing",
        );
        assert!(got.contains("ON CONFLICT ON CONSTRAINT"), "{got}");
    }

    #[test]
    fn copy_to_reads_through_a_query_and_copy_from_needs_one_column() {
        let cases: &[(Phase, &str, &str)] = &[
            (Phase::Expanded, "copy pgbench_accounts (aid, balance) to stdout",
             "copy (SELECT aid, abalance AS balance FROM pgbench_accounts) to stdout"),
            (Phase::Switched, "COPY (select aid, abalance from pgbench_accounts where aid < 5) TO STDOUT WITH (FORMAT csv)",
             "COPY (select aid, balance AS abalance from pgbench_accounts where aid < 5) TO STDOUT WITH (FORMAT csv)"),
            (Phase::Planned, "copy pgbench_accounts (aid, abalance) from stdin", "="),
            (Phase::Planned, "copy pgbench_accounts from stdin", "="),
            (Phase::Contracted, "copy pgbench_accounts (aid, balance) from stdin", "="),
        ];
        for (phase, sql, expected) in cases {
            assert_eq!(out(&rename(*phase), sql), *expected, "{phase}: {sql}");
        }
        assert_eq!(
            out(&with_catalog(accounts(Phase::Expanded)), "copy public.pgbench_accounts to stdout"),
            "copy (SELECT pgbench_accounts.aid, pgbench_accounts.bid, pgbench_accounts.abalance, pgbench_accounts.filler, pgbench_accounts.abalance AS balance FROM public.pgbench_accounts) to stdout"
        );
        for (phase, sql) in [
            (
                Phase::Planned,
                "copy pgbench_accounts (aid, balance) from stdin",
            ),
            (Phase::Contracted, "copy pgbench_accounts from stdin"),
        ] {
            let got = out(&rename(phase), sql);
            assert!(got.contains("does not exist"), "{phase}: {got}");
        }
    }

    #[test]
    fn insert_select_writes_both_columns() {
        let cases: &[(Phase, &str, &str)] = &[
            (Phase::Expanded,
             "insert into pgbench_accounts (aid, abalance) select aid + 1000, abalance * 2 from pgbench_accounts where aid < 10",
             "insert into pgbench_accounts (aid, abalance, balance) select aid + 1000, abalance * 2, abalance * 2 from pgbench_accounts where aid < 10"),
            (Phase::Switched,
             "insert into pgbench_accounts (aid, abalance) select aid + 1000, abalance from pgbench_accounts where abalance > 0 on conflict do nothing",
             "insert into pgbench_accounts (aid, abalance, balance) select aid + 1000, balance, balance from pgbench_accounts where balance > 0 on conflict do nothing"),
        ];
        for (phase, sql, expected) in cases {
            assert_eq!(out(&rename(*phase), sql), *expected, "{phase}: {sql}");
        }
        // An item's alias stays with one copy.
        assert_eq!(
            out(&rename(Phase::Expanded), "insert into pgbench_accounts (aid, abalance) select aid, abalance as v from x"),
            "insert into pgbench_accounts (aid, abalance, balance) select aid, abalance, abalance as v from x"
        );
    }

    #[test]
    fn subqueries_and_ctes_resolve_block_by_block() {
        let cases: &[(Phase, &str, &str)] = &[
            (Phase::Expanded,
             "select aid from pgbench_accounts where balance > (select avg(balance) from pgbench_accounts)",
             "select aid from pgbench_accounts where abalance > (select avg(abalance) from pgbench_accounts)"),
            (Phase::Switched,
             "with c as (select aid, abalance from pgbench_accounts) select c.abalance from c",
             "with c as (select aid, balance AS abalance from pgbench_accounts) select c.abalance from c"),
            (Phase::Switched,
             "select x.abalance from (select abalance from pgbench_accounts) x",
             "select x.abalance from (select balance AS abalance from pgbench_accounts) x"),
            // Correlated, qualified.
            (Phase::Expanded,
             "select bid from pgbench_branches b where exists (select 1 from pgbench_accounts a where a.bid = b.bid and a.balance > 0)",
             "select bid from pgbench_branches b where exists (select 1 from pgbench_accounts a where a.bid = b.bid and a.abalance > 0)"),
            (Phase::Expanded,
             "update pgbench_accounts set abalance = 0 where aid in (select aid from pgbench_accounts where balance < 0)",
             "update pgbench_accounts set abalance = 0, balance = 0 where aid in (select aid from pgbench_accounts where abalance < 0)"),
            // Another table's column of the same name, in a subquery.
            (Phase::Switched,
             "select abalance from pgbench_accounts a where a.bid in (select t.bid from x t where t.abalance > 0)",
             "select balance AS abalance from pgbench_accounts a where a.bid in (select t.bid from x t where t.abalance > 0)"),
        ];
        for (phase, sql, expected) in cases {
            assert_eq!(out(&rename(*phase), sql), *expected, "{phase}: {sql}");
        }
        // With the catalog, an unqualified column in a subquery over a
        // table without it is the outer migrating table's (correlated).
        assert_eq!(
            out(
                &with_catalog(accounts(Phase::Switched)),
                "select aid from pgbench_accounts where exists (select 1 from pgbench_branches where bbalance < abalance)"
            ),
            "select aid from pgbench_accounts where exists (select 1 from pgbench_branches where bbalance < balance)"
        );
    }

    /// Mutated statements (bytes dropped, duplicated, swapped for SQL
    /// punctuation, quotes and non-ASCII) must never panic the rewriter:
    /// whatever comes off the network gets an answer.
    #[test]
    fn mangled_statements_never_panic() {
        let seeds = [
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
            "select a.balance, 'é' from pgbench_accounts a join x on a.aid = x.aid order by 1",
            "insert into pgbench_accounts (aid, abalance) values (1, 2), ($1, -3) returning balance",
            "delete from pgbench_accounts where balance in (select 1) returning *",
            "update orders set amount = amount + 1 where id = 1; select o.amount_dec from orders o",
            "insert into orders (id, amount_dec) values (1, 2.5)",
        ];
        let junk: [&[u8]; 12] = [
            b"(",
            b")",
            b",",
            b"'",
            b"\"",
            b";",
            b"$",
            b"\xc3\xa9",
            b"--",
            b"/*",
            b" AS ",
            b".",
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for phase in [
            Phase::Planned,
            Phase::Expanded,
            Phase::Switched,
            Phase::Contracted,
        ] {
            for r in [rename(phase), retype(phase)] {
                for _ in 0..400 {
                    let mut sql = seeds[(next() % seeds.len() as u64) as usize]
                        .as_bytes()
                        .to_vec();
                    for _ in 0..(next() % 4 + 1) {
                        let at = (next() % (sql.len() as u64 + 1)) as usize;
                        match next() % 3 {
                            0 if at < sql.len() => {
                                sql.remove(at);
                            }
                            1 => {
                                let piece = junk[(next() % junk.len() as u64) as usize];
                                sql.splice(at..at, piece.iter().copied());
                            }
                            _ => sql.insert(at, (next() % 256) as u8),
                        }
                    }
                    let _ = r.rewrite(StatementKind::SimpleQuery, &sql);
                }
            }
        }
    }

    #[test]
    fn rewrites_and_refusals_are_counted_per_migration() {
        let cell = Arc::new(RulesCell::new(&[accounts(Phase::Switched)]));
        let r = MigrationRewriter::new(Arc::clone(&cell));
        for _ in 0..3 {
            // The second and third come from the plan cache and count too.
            let _ = r.rewrite(
                StatementKind::Parse,
                b"select abalance from pgbench_accounts",
            );
        }
        let _ = r.rewrite(StatementKind::Parse, b"select * from pgbench_accounts");
        let _ = r.rewrite(StatementKind::Parse, b"select 1");
        assert_eq!(
            cell.counters(),
            vec![("accounts_balance".to_string(), 3, 1)]
        );
        cell.publish(&[accounts(Phase::Contracted)]);
        let _ = r.rewrite(
            StatementKind::Parse,
            b"select abalance from pgbench_accounts",
        );
        assert_eq!(
            cell.counters(),
            vec![("accounts_balance".to_string(), 4, 1)],
            "kept across epochs"
        );
    }

    #[test]
    fn the_phase_matters_where_it_should() {
        let planned = rename(Phase::Planned);
        let sql = "insert into pgbench_accounts (aid, bid) values (1, 1)";
        assert_eq!(out(&planned, sql), "=", "no new column yet");
        let done = rename(Phase::Complete);
        assert_eq!(out(&done, "select abalance from pgbench_accounts"), "=");
    }

    /// users(id, org_id, name → full_name) and orgs(id, name) in `phase`.
    fn users_and_orgs(phase: Phase) -> MigrationRewriter {
        let spec = MigrationSpec::new(
            "users_full_name",
            "users",
            "name",
            "full_name",
            None,
            None,
            None,
        )
        .unwrap();
        let mut c = Catalog::empty();
        let mut users = vec![
            column("id", "integer", None),
            column("org_id", "integer", None),
        ];
        if phase.has_old() {
            users.push(column("name", "text", None));
        }
        if phase.has_new() {
            users.push(column("full_name", "text", None));
        }
        c.insert("public", "users", TableDef { columns: users });
        c.insert(
            "public",
            "orgs",
            TableDef {
                columns: vec![column("id", "integer", None), column("name", "text", None)],
            },
        );
        MigrationRewriter::new(Arc::new(RulesCell::with_catalog(
            &[ActiveMigration { spec, phase }],
            c,
        )))
    }

    #[test]
    fn a_name_only_the_client_s_shape_makes_unambiguous_resolves_as_postgres_would() {
        let cases: &[(Phase, &str, &str)] = &[
            // New shape: users has no `name`, so `name` is orgs'; qualified
            // so that it stays so where users physically has `name`.
            (Phase::Expanded,
             "select u.id, full_name, name from users u join orgs o on o.id = u.org_id",
             "select u.id, u.name AS full_name, o.name from users u join orgs o on o.id = u.org_id"),
            (Phase::Planned,
             "select full_name, name from users join orgs on orgs.id = users.org_id where name like 'a%'",
             "select users.name AS full_name, orgs.name from users join orgs on orgs.id = users.org_id where orgs.name like 'a%'"),
            (Phase::Switched,
             "select u.id, full_name, name from users u join orgs o on o.id = u.org_id",
             "select u.id, full_name, o.name from users u join orgs o on o.id = u.org_id"),
            // Once users physically lacks `name`, the statement means on
            // the physical tables what it means in the new shape.
            (Phase::Contracted,
             "select u.id, full_name, name from users u join orgs o on o.id = u.org_id",
             "="),
            // Correlated: a new-shape statement's `name` in the subquery is
            // the outer orgs'.
            (Phase::Expanded,
             "select o.id from orgs o where exists (select 1 from users u where u.org_id = o.id and full_name = name)",
             "select o.id from orgs o where exists (select 1 from users u where u.org_id = o.id and name = o.name)"),
            // Ambiguous in the old shape (as Postgres says), valid in the
            // new one: read in the new one.
            (Phase::Switched,
             "select u.id, o.name as org, name from users u join orgs o on o.id = u.org_id",
             "select u.id, o.name as org, o.name from users u join orgs o on o.id = u.org_id"),
            // Ambiguous in both: Postgres' own error.
            (Phase::Switched,
             "select name from users u join orgs o on o.id = u.org_id join orgs p on p.id = o.id",
             "refused: column reference \"name\" is ambiguous"),
        ];
        for (phase, sql, expected) in cases {
            assert_eq!(
                out(&users_and_orgs(*phase), sql),
                *expected,
                "{phase}: {sql}"
            );
        }
    }

    #[test]
    fn only_the_old_column_itself_counts_as_old_shape_use() {
        let r = users_and_orgs(Phase::Switched);
        let old_shape = || r.rules.old_shape_usage()[0].1.statements;
        for sql in [
            "select u.full_name, o.name from users u join orgs o on o.id = u.org_id",
            "select full_name, name from users join orgs on orgs.id = users.org_id",
            "update orgs set name = 'x' where id = 1",
        ] {
            let _ = r.rewrite(StatementKind::Parse, sql.as_bytes());
        }
        assert_eq!(
            old_shape(),
            0,
            "another table's `name` is not the old shape"
        );
        for _ in 0..2 {
            let _ = r.rewrite(StatementKind::Parse, b"select name from users where id = 1");
        }
        let _ = r.rewrite(
            StatementKind::Parse,
            b"update users set name = 'n' where id = 2",
        );
        assert_eq!(old_shape(), 3, "cached plans count too");
    }

    #[test]
    fn orm_casts_are_types_not_calls() {
        let cases: &[(&str, &str)] = &[
            ("insert into orders (id, amount_dec, note) values ($1::INTEGER, $2::NUMERIC(12, 2), $3::VARCHAR(40))",
             "insert into orders (id, amount, amount_dec, note) values ($1::INTEGER, ((($2::NUMERIC(12, 2)) * 100)::integer), $2::NUMERIC(12, 2), $3::VARCHAR(40))"),
            ("update orders set amount_dec = CAST($1 AS numeric(12,2)), note = $2::varchar(40)[] where id = $3",
             "update orders set amount = (((CAST($1 AS numeric(12,2))) * 100)::integer), amount_dec = CAST($1 AS numeric(12,2)), note = $2::varchar(40)[] where id = $3"),
            // A quoted literal (Sequelize inlines them) takes the type it
            // is written as.
            ("insert into orders (id, amount_dec) values (DEFAULT, '875.21')",
             "insert into orders (id, amount, amount_dec) values (DEFAULT, ((('875.21'::numeric(12,2)) * 100)::integer), '875.21'::numeric(12,2))"),
            ("update orders set amount = $1::INTEGER, note = to_char($2::timestamp(3), 'YYYY') where id = 1",
             "update orders set amount = $1::INTEGER, amount_dec = (($1::INTEGER)::numeric / 100)::numeric(12,2), note = to_char($2::timestamp(3), 'YYYY') where id = 1"),
        ];
        for (sql, expected) in cases {
            assert_eq!(
                out(&with_catalog(orders(Phase::Expanded)), sql),
                *expected,
                "{sql}"
            );
        }
    }

    #[test]
    fn ctes_over_the_migrating_table_are_rewritten_where_they_read_it() {
        let cases: &[(Phase, &str, &str)] = &[
            (Phase::Switched,
             "WITH x AS (SELECT aid, abalance FROM pgbench_accounts WHERE aid < $1) SELECT abalance, aid FROM x",
             "WITH x AS (SELECT aid, balance AS abalance FROM pgbench_accounts WHERE aid < $1) SELECT abalance, aid FROM x"),
            (Phase::Expanded,
             "with recursive r(n, total) as (select 1, balance from pgbench_accounts where aid = 1 union all select n + 1, total + 1 from r where n < 3) select * from r",
             "with recursive r(n, total) as (select 1, abalance AS balance from pgbench_accounts where aid = 1 union all select n + 1, total + 1 from r where n < 3) select * from r"),
            (Phase::Expanded,
             "with moved as (update pgbench_accounts set balance = balance + 1 where aid = 1 returning aid, balance) select * from moved",
             "with moved as (update pgbench_accounts set abalance = abalance + 1, balance = abalance + 1 where aid = 1 returning aid, abalance AS balance) select * from moved"),
        ];
        for (phase, sql, expected) in cases {
            assert_eq!(
                out(&with_catalog(accounts(*phase)), sql),
                *expected,
                "{phase}: {sql}"
            );
        }
    }
}
