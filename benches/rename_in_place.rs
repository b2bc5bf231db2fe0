//! A column rename done in place (`"op": "rename_column"`) against today's
//! copying rename (`copy_column`), on pgbench_accounts under load.
//!
//! Each round, for each method in turn: a fresh database (`pgbench -i`,
//! scale `PGSHIFT_BENCH_SCALE`, default 10: 1 M accounts), pgshift in front
//! of it with its admin port, and the stock tpcb-like load through pgshift
//! (`-c 4`, `-T PGSHIFT_BENCH_SECS`, default 60, per-transaction logs).
//! After a quiet start the migration `abalance → balance` runs to
//! `contract`: for the copy, expand, backfill (batches of 10,000), validate,
//! switch reads, contract; in place, expand, switch reads (the rename
//! behind the barrier), contract. Measured: the time from expand to the end
//! of contract, the time of the switch itself, the WAL written meanwhile
//! (`pg_current_wal_lsn`), and the load's TPS and p99 latency over that
//! window and over the quiet start before it.
//!
//! Run: `cargo bench --bench rename_in_place` (`PGSHIFT_BENCH_ROUNDS`,
//! default 2).

use std::time::Instant;

use anyhow::{bail, Result};
use pgshift::cluster::{Cluster, ClusterOptions, SUPERUSER};
use serde_json::{json, Value};

mod common;
use common::{
    admin, connect, env_num, finish_pgbench, logged_tpcb_args, median, pgbench_init, spawn_pgbench,
    start_pgshift_driving, stats, transactions, unix_secs,
};

/// Seconds of load before the migration starts.
const QUIET_SECS: f64 = 5.0;

/// What one migration cost.
struct Outcome {
    total_s: f64,
    switch_ms: f64,
    wal_mb: f64,
    tps: f64,
    p99_ms: f64,
    quiet_tps: f64,
    quiet_p99_ms: f64,
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("rename_in_place: run with `cargo bench --bench rename_in_place`");
        return Ok(());
    }
    let rounds = env_num("PGSHIFT_BENCH_ROUNDS", 2);
    let scale = env_num("PGSHIFT_BENCH_SCALE", 10);
    let secs = env_num("PGSHIFT_BENCH_SECS", 60);
    let cluster = Cluster::start(&ClusterOptions::default())?;
    let rt = tokio::runtime::Runtime::new()?;
    let methods = ["copy_column", "rename_column"];
    let mut outcomes: Vec<Vec<Outcome>> = vec![Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (m, op) in methods.iter().enumerate() {
            let db = format!("r{round}_{m}");
            pgbench_init(&cluster, &db, scale)?;
            cluster.psql(&db, "vacuum analyze pgbench_accounts")?;
            let outcome = run(&cluster, &rt, &db, op, secs)?;
            eprintln!(
                "round {round} {op}: {:.1} s to contract, switch {:.0} ms, {:.0} MB WAL, {:.0} tps (quiet {:.0}), p99 {:.1} ms (quiet {:.1})",
                outcome.total_s, outcome.switch_ms, outcome.wal_mb, outcome.tps, outcome.quiet_tps, outcome.p99_ms, outcome.quiet_p99_ms
            );
            outcomes[m].push(outcome);
        }
    }
    report(&outcomes, rounds, scale);
    Ok(())
}

/// One migration under load on database `db`.
fn run(
    cluster: &Cluster,
    rt: &tokio::runtime::Runtime,
    db: &str,
    op: &str,
    secs: u32,
) -> Result<Outcome> {
    let dir = cluster.root().join(format!("rename-{db}"));
    std::fs::create_dir_all(&dir)?;
    let (_pgshift, port, addr) = start_pgshift_driving(cluster, rt, &dir, db)?;
    let pgbench = cluster.binaries().tool("pgbench");
    let prefix = dir.join("tx").display().to_string();
    let args = logged_tpcb_args(secs, &prefix);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started_s = unix_secs();
    let load = spawn_pgbench(&pgbench, SUPERUSER, port, db, &args)?;
    std::thread::sleep(std::time::Duration::from_secs_f64(QUIET_SECS));
    let (window, switch_ms, wal_bytes) = rt.block_on(migrate(&addr, cluster.port(), db, op))?;
    finish_pgbench(load, &format!("{op} load"))?;
    if window.1 > started_s + f64::from(secs) {
        bail!(
            "{op}: the migration outlasted the load ({:.0} s); raise PGSHIFT_BENCH_SECS",
            window.1 - window.0
        );
    }
    let ends = transactions(&dir)?;
    let (tps, p99_ms) = stats(&ends, window);
    let (quiet_tps, quiet_p99_ms) = stats(&ends, (started_s + 1.0, window.0));
    Ok(Outcome {
        total_s: window.1 - window.0,
        switch_ms,
        wal_mb: wal_bytes / 1e6,
        tps,
        p99_ms,
        quiet_tps,
        quiet_p99_ms,
    })
}

/// The migration through the admin port: (window in UNIX seconds, the
/// switch's milliseconds, WAL bytes written over the window).
async fn migrate(addr: &str, pg_port: u16, db: &str, op: &str) -> Result<((f64, f64), f64, f64)> {
    let direct = connect(pg_port, db).await?;
    let lsn = || async {
        let row = direct
            .query_one("select pg_current_wal_lsn()::text", &[])
            .await?;
        Ok::<String, anyhow::Error>(row.get(0))
    };
    let spec = json!({"id": "accounts_balance", "op": op, "table": "pgbench_accounts",
                      "from": "abalance", "to": "balance"});
    admin(addr, "POST", "/migrations", Some(&spec)).await?;
    let before = lsn().await?;
    let start = unix_secs();
    let step = |action: &'static str, body: Value| async move {
        admin(
            addr,
            "POST",
            &format!("/migrations/accounts_balance/{action}"),
            Some(&body),
        )
        .await
    };
    step("expand", json!({})).await?;
    if op == "copy_column" {
        step("backfill", json!({"batch_size": 10000})).await?;
        wait_for(addr, "backfilled").await?;
        step("validate", json!({})).await?;
    }
    let switch = Instant::now();
    step("switch-reads", json!({"to": "new"})).await?;
    let switch_ms = switch.elapsed().as_secs_f64() * 1e3;
    step("contract", json!({"force": true})).await?;
    let end = unix_secs();
    let after = lsn().await?;
    let wal: f64 = direct
        .query_one(
            "select pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)::float8",
            &[&after, &before],
        )
        .await?
        .get(0);
    Ok(((start, end), switch_ms, wal))
}

/// Waits for the migration to reach `phase`.
async fn wait_for(addr: &str, phase: &str) -> Result<()> {
    loop {
        let status = admin(addr, "GET", "/status", None).await?;
        if status["migrations"][0]["phase"] == phase {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A row of the report: its name and the figure it reads.
type Row = (&'static str, fn(&Outcome) -> f64);

fn report(outcomes: &[Vec<Outcome>], rounds: u32, scale: u32) {
    let col = |m: usize, f: fn(&Outcome) -> f64| {
        let v: Vec<f64> = outcomes[m].iter().map(f).collect();
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        (median(v), lo, hi)
    };
    println!();
    println!("rename abalance → balance on pgbench_accounts (scale {scale}) under tpcb-like -c 4 -M prepared through pgshift; median (min–max) of {rounds} interleaved rounds:");
    println!();
    println!("| | copy_column (today's) | rename_column (in place) |");
    println!("|---|---|---|");
    let rows: [Row; 7] = [
        ("expand → contract done, s", |o| o.total_s),
        ("switch-reads call, ms", |o| o.switch_ms),
        ("WAL written, MB", |o| o.wal_mb),
        ("TPS during the migration", |o| o.tps),
        ("TPS before it", |o| o.quiet_tps),
        ("p99 latency during, ms", |o| o.p99_ms),
        ("p99 latency before, ms", |o| o.quiet_p99_ms),
    ];
    for (name, f) in rows {
        let cells: Vec<String> = (0..2)
            .map(|m| {
                let (mid, lo, hi) = col(m, f);
                format!("{mid:.1} ({lo:.1}–{hi:.1})")
            })
            .collect();
        println!("| {name} | {} | {} |", cells[0], cells[1]);
    }
}
