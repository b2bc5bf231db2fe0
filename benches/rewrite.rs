//! Micro-benchmarks of the migration rewriter on pgbench's statements, with
//! the pass-through seam (no migrations) as the baseline in the same run:
//! the fast path (a 200-byte statement that cannot touch the migrating
//! table), a repeated statement (plan cache hit), the same statement with
//! new literals (`-M simple`: a template fill), and new statements (parse +
//! plan + splice: pgbench's UPDATE, an ORM-style SELECT); planning time
//! against statement length (`scaling`: 1,000 vs 8,000 items); and the
//! rules snapshot read every statement makes (`snapshot`: the hand-rolled
//! `RwLock<Arc>` + epoch + thread-local cache pgshift had, against
//! `arc_swap::ArcSwap`, on one thread and on two threads at once); and
//! noting old-shape statements from two threads (`old_shape`).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use pgshift::rewrite::engine::MigrationRewriter;
use pgshift::rewrite::migration::{MigrationSpec, Phase};
use pgshift::rewrite::rules::{ActiveMigration, RulesCell};
use pgshift::rewrite::{PassThrough, Rewrite, StatementKind, StatementRewriter};

const UPDATE: &str = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;";
/// 200 bytes, on another table.
const OTHER: &str = "SELECT \"orders\".\"id\", \"orders\".\"customer_id\", \"orders\".\"total_cents\", \"orders\".\"created_at\" FROM \"orders\" WHERE \"orders\".\"customer_id\" = $1 AND \"orders\".\"status\" = $2 ORDER BY \"orders\".\"id\" LIMIT 50";

fn rewriter() -> MigrationRewriter {
    let spec = MigrationSpec::new(
        "accounts",
        "pgbench_accounts",
        "abalance",
        "balance",
        None,
        None,
        None,
    )
    .unwrap();
    MigrationRewriter::new(Arc::new(RulesCell::new(&[ActiveMigration {
        spec,
        phase: Phase::Expanded,
    }])))
}

fn run(r: &dyn StatementRewriter, sql: &str) -> usize {
    match r.rewrite(StatementKind::Parse, sql.as_bytes()) {
        Rewrite::Unchanged => 0,
        Rewrite::Replaced(s) => s.len(),
        Rewrite::Refused(_) | Rewrite::Done(_) => 1,
    }
}

fn rewrite(c: &mut Criterion) {
    let r = rewriter();
    let mut group = c.benchmark_group("rewrite");
    group.bench_function("baseline_passthrough", |b| {
        b.iter(|| std::hint::black_box(run(&PassThrough, UPDATE)))
    });
    group.bench_function("fast_path_other_table", |b| {
        b.iter(|| std::hint::black_box(run(&r, OTHER)))
    });
    // The DDL gate's look at every statement's first word (`ddl = warn`,
    // the default) against none (`pass`), and the rewriter of a database
    // without migrations (the gate alone) against the pass-through seam.
    let no_gate = rewriter().with_ddl(pgshift::sql_plan::gate::DdlMode::Pass);
    group.bench_function("fast_path_other_table_gate_off", |b| {
        b.iter(|| std::hint::black_box(run(&no_gate, OTHER)))
    });
    let gate_only = pgshift::sql_plan::gate::DdlOnly(pgshift::sql_plan::gate::DdlMode::Warn);
    group.bench_function("gate_only_other_table", |b| {
        b.iter(|| std::hint::black_box(run(&gate_only, OTHER)))
    });
    group.bench_function("baseline_passthrough_other_table", |b| {
        b.iter(|| std::hint::black_box(run(&PassThrough, OTHER)))
    });
    group.bench_function("cached_dual_write_update", |b| {
        b.iter(|| std::hint::black_box(run(&r, UPDATE)))
    });
    let mut n = 0u64;
    group.bench_function("new_literals_dual_write_update", |b| {
        b.iter(|| {
            n += 1;
            let sql =
                format!("UPDATE pgbench_accounts SET abalance = abalance + {n} WHERE aid = 7;");
            std::hint::black_box(run(&r, &sql))
        })
    });
    group.bench_function("miss_dual_write_update", |b| {
        b.iter(|| {
            n += 1;
            // A comment is part of the cache key: every statement is new.
            let sql = format!(
                "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2 /* {n} */;"
            );
            std::hint::black_box(run(&r, &sql))
        })
    });
    group.bench_function("miss_orm_select", |b| {
        b.iter(|| {
            n += 1;
            let sql = format!(
                "SELECT \"pgbench_accounts\".\"aid\", \"pgbench_accounts\".\"balance\" FROM \"pgbench_accounts\" WHERE \"pgbench_accounts\".\"aid\" = $1 LIMIT 1 /* {n} */"
            );
            std::hint::black_box(run(&r, &sql))
        })
    });
    group.finish();
}

/// Planning time against statement length: the same shapes at 1,000 and
/// 8,000 items (a linear planner takes 8× as long, a quadratic one 64×).
fn scaling(c: &mut Criterion) {
    let r = rewriter();
    let mut group = c.benchmark_group("scaling");
    group.sample_size(10);
    let mut n = 0u64;
    for items in [1_000usize, 8_000] {
        let or = vec!["aid = 1"; items].join(" or ");
        let rows = vec!["(1, 2, 3, 'x')"; items].join(", ");
        group.bench_function(format!("update_where_or_{items}"), |b| {
            b.iter(|| {
                n += 1;
                let sql = format!("update pgbench_accounts set abalance = 1 where {or} /* {n} */");
                std::hint::black_box(run(&r, &sql))
            })
        });
        group.bench_function(format!("insert_rows_{items}"), |b| {
            b.iter(|| {
                n += 1;
                let sql = format!("insert into pgbench_accounts (aid, bid, abalance, filler) values {rows} /* {n} */");
                std::hint::black_box(run(&r, &sql))
            })
        });
    }
    group.finish();
}

/// What the snapshot benchmarks read.
type Payload = (u64, Vec<u64>);

/// The snapshot pattern pgshift used before arc-swap: an epoch counter, a
/// lock around the current `Arc`, and a per-thread copy refreshed when the
/// epoch moves (kept here as the baseline).
struct Handrolled {
    epoch: std::sync::atomic::AtomicU64,
    current: std::sync::RwLock<Arc<Payload>>,
}

impl Handrolled {
    fn with<R>(&self, f: impl FnOnce(&Payload) -> R) -> R {
        use std::cell::RefCell;
        thread_local! {
            static CACHE: RefCell<Option<Arc<Payload>>> = const { RefCell::new(None) };
        }
        let epoch = self.epoch.load(std::sync::atomic::Ordering::Acquire);
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if !matches!(&*cache, Some(r) if r.0 == epoch) {
                *cache = Some(Arc::clone(&self.current.read().unwrap()));
            }
            f(cache.as_ref().unwrap())
        })
    }
}

fn snapshot(c: &mut Criterion) {
    let payload = (1u64, vec![1u64, 2, 3]);
    let handrolled = Handrolled {
        epoch: std::sync::atomic::AtomicU64::new(1),
        current: std::sync::RwLock::new(Arc::new(payload.clone())),
    };
    // Two threads reading at once: each reads `iters` times; the time is
    // the wall clock of both.
    let both = |read: &(dyn Fn() -> u64 + Sync), iters: u64| {
        let start = std::time::Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..iters {
                        std::hint::black_box(read());
                    }
                });
            }
        });
        start.elapsed()
    };
    let swapped = Arc::new(arc_swap::ArcSwap::from_pointee(payload));
    // arc-swap's own per-thread cache: one atomic load while nothing changed.
    type Cached = arc_swap::Cache<Arc<arc_swap::ArcSwap<Payload>>, Arc<Payload>>;
    thread_local! {
        static CACHE: std::cell::RefCell<Option<Cached>> = const { std::cell::RefCell::new(None) };
    }
    let cached = |cell: &Arc<arc_swap::ArcSwap<Payload>>| {
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            let cache = c.get_or_insert_with(|| arc_swap::Cache::new(Arc::clone(cell)));
            cache.load().1[1]
        })
    };
    let mut group = c.benchmark_group("snapshot");
    group.bench_function("arc_swap_cache_one_thread", |b| {
        b.iter(|| std::hint::black_box(cached(&swapped)))
    });
    group.bench_function("arc_swap_cache_two_threads", |b| {
        b.iter_custom(|iters| both(&|| cached(&swapped), iters))
    });
    group.bench_function("handrolled_one_thread", |b| {
        b.iter(|| handrolled.with(|r| std::hint::black_box(r.1[1])))
    });
    group.bench_function("arc_swap_one_thread", |b| {
        b.iter(|| std::hint::black_box(swapped.load().1[1]))
    });
    group.bench_function("handrolled_two_threads", |b| {
        b.iter_custom(|iters| both(&|| handrolled.with(|r| r.1[1]), iters))
    });
    group.bench_function("arc_swap_two_threads", |b| {
        b.iter_custom(|iters| both(&|| swapped.load().1[1], iters))
    });
    group.finish();
}

/// Noting an old-shape statement (every worker does, per statement): the
/// per-application map behind a `Mutex<HashMap>` (what pgshift had, kept
/// here as the baseline) against `MigrationCounters::saw_old_shape` (a
/// DashMap), on two threads at once.
fn old_shape(c: &mut Criterion) {
    use pgshift::rewrite::rules::MigrationCounters;
    let mutexed = std::sync::Mutex::new(std::collections::HashMap::<String, u64>::new());
    let note_mutexed = |app: &str| {
        let mut apps = mutexed.lock().unwrap();
        match apps.get_mut(app) {
            Some(last) => *last += 1,
            None => {
                apps.insert(app.to_string(), 1);
            }
        }
    };
    let counters = MigrationCounters::default();
    let two_threads = |note: &(dyn Fn(&str) + Sync), iters: u64| {
        let start = std::time::Instant::now();
        std::thread::scope(|s| {
            for app in ["billing-v1", "reports-v1"] {
                s.spawn(move || {
                    for _ in 0..iters {
                        note(app);
                    }
                });
            }
        });
        start.elapsed()
    };
    let mut group = c.benchmark_group("old_shape");
    group.bench_function("mutex_hashmap_two_threads", |b| {
        b.iter_custom(|iters| two_threads(&note_mutexed, iters))
    });
    group.bench_function("dashmap_two_threads", |b| {
        b.iter_custom(|iters| two_threads(&|app| counters.saw_old_shape(Some(app)), iters))
    });
    group.finish();
}

criterion_group!(benches, rewrite, scaling, snapshot, old_shape);
criterion_main!(benches);
