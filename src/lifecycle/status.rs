//! What the admin port reports: each migration's status as JSON, the
//! whole proxy's status, and the Prometheus metrics.

use serde_json::{json, Value};

use std::sync::atomic::Ordering;

use super::store::Record;
use super::{ActionError, Lifecycle};
use crate::rewrite::migration::Phase;

impl Lifecycle {
    /// This proxy's old-shape usage, as its heartbeat publishes it.
    pub(super) fn old_shape_json(&self) -> Value {
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

    /// One migration's status, as `/status` lists it.
    pub fn status_of(&self, id: &str) -> Result<Value, ActionError> {
        let record = self.record(id)?;
        Ok(self.status_json(&record))
    }

    pub(super) fn status_json(&self, r: &Record) -> Value {
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
