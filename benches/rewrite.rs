//! Micro-benchmarks of the migration rewriter on pgbench's statements, with
//! the pass-through seam (no migrations) as the baseline in the same run:
//! the fast path (a 200-byte statement that cannot touch the migrating
//! table), a repeated statement (plan cache hit), the same statement with
//! new literals (`-M simple`: a template fill), and new statements (parse +
//! plan + splice: pgbench's UPDATE, an ORM-style SELECT); and planning time
//! against statement length (`scaling`: 1,000 vs 8,000 items).

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
        Rewrite::Refused(_) => 1,
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

criterion_group!(benches, rewrite, scaling);
criterion_main!(benches);
