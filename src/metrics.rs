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
//!
//! Every request is observed, so the histogram is [`Latency`]'s own: a
//! fixed set of atomic counters (no lock, no float search for the bucket),
//! read into the OpenMetrics form only when scraped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder,
};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
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

/// Upper bounds: 100 µs to 3.3 s, doubling, then +Inf.
const FIRST_BOUND_NS: u64 = 100_000;
const BOUNDS: usize = 16;

/// A latency histogram of atomic counters: observing is a few relaxed
/// atomic adds. Clones share the counters.
#[derive(Debug, Clone, Default)]
pub struct Histogram(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    /// Per bucket, not cumulative (the last one is +Inf).
    buckets: [AtomicU64; BOUNDS + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let c = &self.0;
        c.buckets[bucket(ns)].fetch_add(1, Ordering::Relaxed);
        c.count.fetch_add(1, Ordering::Relaxed);
        c.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// The bucket of a latency: the first whose upper bound (100 µs × 2^i)
/// is at least `ns`.
fn bucket(ns: u64) -> usize {
    // (ns - 1) / 100 µs is 0 up to the first bound, 1 up to the second,
    // 2–3 up to the third…: its bit length is the bucket.
    let steps = ns.saturating_sub(1) / FIRST_BOUND_NS;
    ((u64::BITS - steps.leading_zeros()) as usize).min(BOUNDS)
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.0;
        let buckets: Vec<(f64, u64)> = c
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let bound = match i {
                    BOUNDS => f64::INFINITY,
                    i => (FIRST_BOUND_NS << i) as f64 / 1e9,
                };
                (bound, n.load(Ordering::Relaxed))
            })
            .collect();
        let sum = c.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let count = c.count.load(Ordering::Relaxed);
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn histogram() -> Histogram {
    Histogram::default()
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
        self.handles[kind as usize].observe(took);
        if let Some(migration) = migration {
            let labels = MigrationLabels {
                migration: migration.to_string(),
                kind,
            };
            self.by_migration.get_or_create(&labels).observe(took);
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

    #[test]
    fn a_latency_counts_in_the_first_bucket_whose_bound_holds_it() {
        let us = |n: u64| bucket(n * 1_000);
        assert_eq!(bucket(0), 0);
        assert_eq!(us(100), 0);
        assert_eq!(bucket(100_001), 1);
        assert_eq!(us(200), 1);
        assert_eq!(us(201), 2);
        assert_eq!(us(400), 2);
        assert_eq!(us(401), 3);
        assert_eq!(us(3_276_800), 15);
        assert_eq!(us(3_276_801), 16);
        assert_eq!(bucket(u64::MAX), 16);
    }

    #[test]
    fn the_scrape_shows_cumulative_buckets_sum_and_count() {
        let h = Histogram::default();
        for us in [50, 150, 150, 5_000_000] {
            h.observe(Duration::from_micros(us));
        }
        let mut registry = Registry::default();
        registry.register("t", "test", h);
        let text = encode(&registry);
        for line in [
            "t_bucket{le=\"0.0001\"} 1",
            "t_bucket{le=\"0.0002\"} 3",
            "t_bucket{le=\"3.2768\"} 3",
            "t_bucket{le=\"+Inf\"} 4",
            "t_count 4",
            "t_sum 5.00035",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in {text}");
        }
    }
}
