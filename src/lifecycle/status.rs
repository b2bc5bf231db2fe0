//! What the admin port reports: each migration's status as JSON, the
//! whole proxy's status, and the Prometheus metrics.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;

use super::peers::{HeartbeatUsage, OldShapeByMigration};
use super::store::Record;
use super::{ActionError, Lifecycle};
use crate::api::{
    ApplicationSeen, BackfillStatus, MigrationStatus, OldShapeStatus, ProxyStatus, ReadSource,
    StatementCounts, ValidationStatus,
};
use crate::rewrite::migration::Phase;

impl Lifecycle {
    /// This proxy's old-shape usage, as its heartbeat publishes it.
    pub(super) fn old_shape_json(&self) -> OldShapeByMigration {
        self.rules
            .old_shape_usage()
            .into_iter()
            .map(|(id, usage)| {
                let heard = HeartbeatUsage {
                    statements: usage.statements,
                    last_ms: usage.last_ms,
                    applications: usage.applications.into_iter().collect(),
                };
                (id, heard)
            })
            .collect()
    }

    /// One migration's status, as `/status` lists it.
    pub fn status_of(&self, id: &str) -> Result<MigrationStatus, ActionError> {
        let record = self.record(id)?;
        Ok(self.status_json(&record))
    }

    pub(super) fn status_json(&self, r: &Record) -> MigrationStatus {
        let statements = self
            .rules
            .counters()
            .iter()
            .find(|(id, _, _)| *id == r.spec.id)
            .map(|&(_, rewritten, refused)| StatementCounts { rewritten, refused })
            .unwrap_or_default();
        let old_shape = self
            .rules
            .old_shape_usage()
            .into_iter()
            .find(|(id, _)| *id == r.spec.id)
            .map(|(_, u)| OldShapeStatus {
                statements: u.statements,
                last_ms: u.last_ms,
                applications: u
                    .applications
                    .into_iter()
                    .map(|(name, last_ms)| ApplicationSeen { name, last_ms })
                    .collect(),
            });
        MigrationStatus {
            id: r.spec.id.clone(),
            op: r.spec.op(),
            table: r.spec.table.to_string(),
            from: r.spec.from.clone(),
            to: r.spec.to.clone(),
            new_type: r.spec.new_type.clone(),
            phase: r.phase,
            read_source: if r.phase.reads_new() {
                ReadSource::New
            } else {
                ReadSource::Old
            },
            backfill: self.backfill_status(r),
            validation: r.validation.as_ref().map(|v| ValidationStatus {
                mismatches: v.mismatches,
                samples: v.samples.clone(),
                at_ms: v.at_ms,
            }),
            statements,
            old_shape,
            definition: definition(&r.spec),
            index_build: self
                .builds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&r.spec.id)
                .cloned(),
            autopilot: (r.autopilot.mode != crate::api::AutopilotMode::Off
                || r.autopilot.stopped.is_some())
            .then(|| r.autopilot.clone()),
        }
    }

    fn backfill_status(&self, r: &Record) -> BackfillStatus {
        let b = &r.backfill;
        let throttled = self.throttled.lock().unwrap_or_else(|e| e.into_inner());
        BackfillStatus {
            rows_done: b.rows_done,
            rows_total: b.rows_total,
            workers: b.workers,
            slices: b.slices.clone(),
            running: b.running,
            paused: b.paused,
            batch_size: b.batch_size,
            batch_pause_ms: b.batch_pause_ms,
            batch_timeout_ms: b.batch_timeout_ms,
            batch_target_ms: b.batch_target_ms,
            max_replication_lag_ms: b.max_replication_lag_ms,
            max_lock_waits: b.max_lock_waits,
            throttled: throttled.get(&r.spec.id).cloned(),
            started_ms: b.started_ms,
            finished_ms: b.finished_ms,
            error: b.error.clone(),
        }
    }

    /// The metrics of this proxy and its migrations, in the OpenMetrics
    /// text format: what the session counters and the records say now,
    /// and the statement latency histograms.
    pub fn metrics(&self) -> String {
        let mut registry = Registry::default();
        self.register_proxy(&mut registry);
        self.register_migrations(&mut registry);
        crate::metrics::latency().register(&mut registry);
        crate::metrics::ddl().register(&mut registry);
        crate::metrics::encode(&registry)
    }

    /// The proxy's own gauges and counters: sessions, rules epoch, state.
    fn register_proxy(&self, registry: &mut Registry) {
        let (accepted, active, rejected) = crate::proxy::stats::sessions();
        let epoch = as_i64(self.rules.epoch());
        let applied = self.applied.load(Ordering::Acquire);
        let r = registry;
        r.register(
            "pgshift_sessions",
            "Client sessions relayed now",
            gauge(as_i64(active)),
        );
        r.register(
            "pgshift_sessions_accepted",
            "Client sessions relayed since start",
            counter(accepted),
        );
        r.register(
            "pgshift_sessions_rejected",
            "Connections refused at a connection limit",
            counter(rejected),
        );
        r.register(
            "pgshift_rules_epoch",
            "The rewrite rules epoch in force",
            gauge(epoch),
        );
        r.register(
            "pgshift_state_version",
            "The migration state version applied",
            gauge(applied),
        );
    }

    /// Per-migration families: phase, statements, backfill, validation.
    fn register_migrations(&self, registry: &mut Registry) {
        let f = MigrationFamilies::default();
        for r in self.records() {
            let id = &r.spec.id;
            for p in Phase::ALL {
                let mut labels = of(id);
                labels.push(("phase", p.to_string()));
                f.phases.get_or_create(&labels).set(i64::from(p == r.phase));
            }
            f.rows_done.get_or_create(&of(id)).set(r.backfill.rows_done);
            f.rows_total
                .get_or_create(&of(id))
                .set(r.backfill.rows_total.unwrap_or(0));
            f.running
                .get_or_create(&of(id))
                .set(i64::from(r.backfill.running));
            let found = r.validation.as_ref().map_or(-1, |v| v.mismatches);
            f.mismatches.get_or_create(&of(id)).set(found);
        }
        for (id, rw, rf) in self.rules.counters() {
            f.rewritten.get_or_create(&of(&id)).inc_by(rw);
            f.refused.get_or_create(&of(&id)).inc_by(rf);
        }
        for (id, usage) in self.rules.old_shape_usage() {
            f.old_shape.get_or_create(&of(&id)).inc_by(usage.statements);
        }
        f.register(registry);
    }

    /// Every migration's status.
    pub fn status(&self) -> ProxyStatus {
        ProxyStatus {
            rules_epoch: self.rules.epoch(),
            database: self.config.control.database.clone(),
            upstream: self.config.upstream.to_string(),
            migrations: self.records().iter().map(|r| self.status_json(r)).collect(),
        }
    }
}

/// Label sets of the per-migration metrics.
type Labels = Vec<(&'static str, String)>;

/// The labels of one migration's series.
fn of(id: &str) -> Labels {
    vec![("migration", id.to_string())]
}

fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A gauge holding `v`.
fn gauge(v: i64) -> Gauge {
    let g: Gauge = Gauge::default();
    g.set(v);
    g
}

/// A counter holding `v`.
fn counter(v: u64) -> Counter {
    let c: Counter = Counter::default();
    c.inc_by(v);
    c
}

/// The per-migration metric families, filled then registered.
#[derive(Default)]
struct MigrationFamilies {
    phases: Family<Labels, Gauge>,
    rewritten: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    old_shape: Family<Labels, Counter>,
    rows_done: Family<Labels, Gauge>,
    rows_total: Family<Labels, Gauge>,
    running: Family<Labels, Gauge>,
    mismatches: Family<Labels, Gauge>,
}

impl MigrationFamilies {
    fn register(self, registry: &mut Registry) {
        registry.register(
            "pgshift_migration_phase",
            "1 for each migration's current phase",
            self.phases,
        );
        registry.register(
            "pgshift_statements_rewritten",
            "Statements rewritten for a migration",
            self.rewritten,
        );
        registry.register(
            "pgshift_statements_refused",
            "Statements refused for a migration",
            self.refused,
        );
        registry.register(
            "pgshift_statements_old_shape",
            "Statements naming a migration's old column",
            self.old_shape,
        );
        registry.register(
            "pgshift_backfill_rows_done",
            "Rows the backfill has walked",
            self.rows_done,
        );
        registry.register(
            "pgshift_backfill_rows_total",
            "Rows the backfill expects to walk (an estimate until it ends)",
            self.rows_total,
        );
        registry.register(
            "pgshift_backfill_running",
            "1 while the backfill runs",
            self.running,
        );
        registry.register(
            "pgshift_validation_mismatches",
            "Mismatches the last validation found (-1: none yet)",
            self.mismatches,
        );
    }
}

/// What a migration does in one line, where `from → to` does not say it
/// (a catalog operation, an added or a dropped column), with the sessions
/// it serves in the new shape.
fn definition(spec: &crate::rewrite::migration::MigrationSpec) -> Option<String> {
    let mut text = match (&spec.catalog, &spec.added) {
        (Some(c), _) => c.op.describe(&spec.table),
        (None, Some(a)) => a.describe(&spec.table.to_string()),
        (None, None) if spec.renamed_to.is_some() => format!(
            "ALTER TABLE {} RENAME TO {}",
            spec.table,
            crate::names::quote_ident(spec.renamed_to.as_deref().unwrap_or_default())
        ),
        (None, None) if spec.dropped => format!(
            "ALTER TABLE {} DROP COLUMN {}",
            spec.table,
            crate::names::quote_ident(&spec.from)
        ),
        (None, None) => return None,
    };
    if let Some(m) = &spec.new_shape {
        let mut who = Vec::new();
        if let Some(app) = &m.application_name {
            who.push(format!("application_name LIKE {app:?}"));
        }
        if let Some(role) = &m.role {
            who.push(format!("role {role:?}"));
        }
        text.push_str(&format!("; new shape: {}", who.join(" or ")));
    }
    Some(text)
}
