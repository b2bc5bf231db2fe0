//! The Prometheus metrics (prometheus-client, OpenMetrics text): the
//! statement latency histograms the relay records — by kind (passed
//! through, rewritten, refused), and by migration for the statements a
//! migration rewrote or refused — and the exposition of a scrape, to which
//! the lifecycle adds its gauges and counters read at that moment.
//!
//! A statement's latency is the time from the client's request (a Query,
//! or the Sync that ends an extended-protocol batch) leaving pgshift to
//! the server's ReadyForQuery for it coming back: the server's time plus
//! the upstream round trip, as the client sees it minus its own hop.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// What pgshift did with a request's statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Forwarded as sent (no statement could touch a migrating table, or
    /// the rules left it as it was).
    Passed,
    Rewritten,
    Refused,
}

impl EncodeLabelValue for Kind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Kind::Passed => "passed",
            Kind::Rewritten => "rewritten",
            Kind::Refused => "refused",
        })
    }
}

impl Kind {
    /// The stronger of two kinds (a batch with a refusal was refused).
    pub fn max(self, other: Kind) -> Kind {
        std::cmp::max(self, other)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MigrationLabels {
    migration: String,
    kind: Kind,
}

fn histogram() -> Histogram {
    // 100 µs to 3.3 s, doubling.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// The latency histograms, process-wide.
pub struct Latency {
    by_kind: Family<KindLabels, Histogram, fn() -> Histogram>,
    /// The three of `by_kind`, looked up once.
    handles: [Histogram; 3],
    by_migration: Family<MigrationLabels, Histogram, fn() -> Histogram>,
}

impl Latency {
    fn new() -> Latency {
        let by_kind: Family<KindLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(histogram);
        let handles = [Kind::Passed, Kind::Rewritten, Kind::Refused]
            .map(|kind| by_kind.get_or_create_owned(&KindLabels { kind }));
        Latency {
            by_kind,
            handles,
            by_migration: Family::new_with_constructor(histogram),
        }
    }

    /// Records one request's latency.
    pub fn observe(&self, kind: Kind, migration: Option<&Arc<str>>, took: Duration) {
        let seconds = took.as_secs_f64();
        self.handles[kind as usize].observe(seconds);
        if let Some(migration) = migration {
            let labels = MigrationLabels {
                migration: migration.to_string(),
                kind,
            };
            self.by_migration.get_or_create(&labels).observe(seconds);
        }
    }

    /// Adds the histograms to a scrape's registry.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pgshift_statement_seconds",
            "Time from a request leaving pgshift to the server's ReadyForQuery, by what pgshift did with its statements",
            self.by_kind.clone(),
        );
        registry.register(
            "pgshift_migration_statement_seconds",
            "The same, for the requests a migration rewrote or refused",
            self.by_migration.clone(),
        );
    }
}

/// DDL statements the gate found not safe as written, by rule and verdict
/// (`sql_plan::gate`).
#[derive(Debug, Default)]
pub struct DdlRules {
    counts: Family<DdlLabels, prometheus_client::metrics::counter::Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DdlLabels {
    rule: &'static str,
    verdict: &'static str,
}

impl DdlRules {
    pub fn count(&self, rule: &'static str, verdict: crate::sql_plan::Verdict) {
        use crate::sql_plan::Verdict;
        let verdict = match verdict {
            Verdict::Pass => "pass",
            Verdict::MakeSafe => "make_safe",
            Verdict::Migrate => "migrate",
            Verdict::Refuse => "refuse",
        };
        self.counts
            .get_or_create(&DdlLabels { rule, verdict })
            .inc();
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "pgshift_ddl_statements",
            "DDL statements sent through pgshift that are not safe on a live table as written, by the rule they break and what pgshift would do",
            self.counts.clone(),
        );
    }
}

/// The process's DDL gate counts.
pub fn ddl() -> &'static DdlRules {
    static DDL: OnceLock<DdlRules> = OnceLock::new();
    DDL.get_or_init(DdlRules::default)
}

/// The process's latency histograms.
pub fn latency() -> &'static Latency {
    static LATENCY: OnceLock<Latency> = OnceLock::new();
    LATENCY.get_or_init(Latency::new)
}

/// `registry` in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_carry_their_labels_escaped() {
        let latency = Latency::new();
        latency.observe(Kind::Passed, None, Duration::from_micros(150));
        let odd: Arc<str> = Arc::from("m\"1\\\n");
        latency.observe(Kind::Rewritten, Some(&odd), Duration::from_millis(2));
        let mut registry = Registry::default();
        latency.register(&mut registry);
        let text = encode(&registry);
        assert!(
            text.contains("pgshift_statement_seconds_count{kind=\"passed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("pgshift_migration_statement_seconds_count{migration=\"m\\\"1\\\\\\n\",kind=\"rewritten\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
