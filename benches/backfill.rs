//! The backfill's rate and its cost to a running application, in one run:
//!
//! - idle: pgshift's backfill of `pgbench_accounts` (scale
//!   `PGSHIFT_BENCH_SCALE`, default 10: 1M rows) against one plain
//!   `UPDATE … SET balance = abalance` of the whole table (the physical
//!   limit, which locks every row for its whole duration);
//! - under load: pgbench tpcb-like `-c 8` through pgshift for
//!   `PGSHIFT_BENCH_SECS` (default 20) without a backfill, then again with
//!   the backfill running from its start: the rows/s the backfill reached,
//!   and TPS and p99 latency of the transactions that ended while it ran
//!   (from pgbench's per-transaction log) against the whole run without it.
//!
//! In the same run, under the same load on a database of its own, a
//! hand-written loop (the classic method's backfill) as the reference.
//!
//! Three databases (`idle`, `load`, `hand`), each with the new column
//! `balance` added (the migration in its `expanded` phase), each behind its
//! own pgshift.
//! Run: `cargo bench --bench backfill` (`PGSHIFT_BENCH_BATCH`: rows per
//! batch, default 1000; `PGSHIFT_BENCH_TARGET_MS`: time-targeted batches;
//! `PGSHIFT_BENCH_WORKERS`: sessions walking the table at once, default 1).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgshift::cluster::{free_port, Cluster, ClusterOptions, SUPERUSER};
use serde_json::{json, Value};

mod common;
use common::{
    admin, connect, env_num, finish_pgbench, now_us, pgbench_init, spawn_pgbench, start_pgshift,
    wait_for_admin,
};

async fn migration(addr: &str) -> Result<Value> {
    let status = admin(addr, "GET", "/status", None).await?;
    Ok(status["migrations"][0].clone())
}

/// Every transaction in pgbench's `-l` logs under `prefix` (which are
/// removed): (when it ended, µs since the epoch; its latency, µs).
fn pgbench_log(dir: &std::path::Path, prefix: &str) -> Result<Vec<(u64, u64)>> {
    let mut transactions = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.starts_with(prefix) {
            continue;
        }
        // client_id transaction_no latency_us script_no epoch_s epoch_us
        for line in std::fs::read_to_string(&path)?.lines() {
            let fields: Vec<u64> = line
                .split_whitespace()
                .take(6)
                .filter_map(|v| v.parse().ok())
                .collect();
            if let [_, _, latency, _, secs, micros] = fields[..] {
                transactions.push((secs * 1_000_000 + micros, latency));
            }
        }
        std::fs::remove_file(&path)?;
    }
    if transactions.is_empty() {
        bail!("no pgbench log lines for {prefix}");
    }
    Ok(transactions)
}

/// TPS and p99 latency (ms) of the transactions that ended within
/// `[from, to]` (µs since the epoch).
fn window(transactions: &[(u64, u64)], from: u64, to: u64) -> Result<(f64, f64)> {
    let mut latencies: Vec<u64> = transactions
        .iter()
        .filter(|(end, _)| (from..=to).contains(end))
        .map(|(_, latency)| *latency)
        .collect();
    if latencies.is_empty() || to <= from {
        bail!("no transactions between {from} and {to}");
    }
    latencies.sort_unstable();
    let tps = latencies.len() as f64 / ((to - from) as f64 / 1e6);
    Ok((tps, latencies[latencies.len() * 99 / 100] as f64 / 1000.0))
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("backfill: run with `cargo bench --bench backfill`");
        return Ok(());
    }
    let scale = env_num("PGSHIFT_BENCH_SCALE", 10);
    let secs = env_num("PGSHIFT_BENCH_SECS", 20);
    let batch = env_num("PGSHIFT_BENCH_BATCH", 1000);
    let target_ms = env_num("PGSHIFT_BENCH_TARGET_MS", 0);
    let workers = env_num("PGSHIFT_BENCH_WORKERS", 1);
    let cluster = Cluster::start(&ClusterOptions::default())?;
    let pgbench = cluster.binaries().tool("pgbench");
    let rows = f64::from(scale) * 100_000.0;
    for db in ["idle", "load", "hand"] {
        pgbench_init(&cluster, db, scale)?;
        cluster.psql(db, "alter table pgbench_accounts add column balance int")?;
        cluster.psql(db, "vacuum analyze pgbench_accounts")?;
    }

    // Idle: the physical limit, one UPDATE of every row.
    let started = Instant::now();
    cluster.psql("idle", "update pgbench_accounts set balance = abalance")?;
    let single = rows / started.elapsed().as_secs_f64();
    cluster.psql("idle", "update pgbench_accounts set balance = null")?;
    cluster.psql("idle", "vacuum analyze pgbench_accounts")?;
    eprintln!("single UPDATE: {single:.0} rows/s");

    let dir = cluster.root().join("backfill-bench");
    std::fs::create_dir_all(&dir)?;
    let mut servers = Vec::new();
    let mut addrs = Vec::new();
    for db in ["idle", "load", "hand"] {
        let admin_port = free_port()?;
        let config = dir.join(format!("{db}.toml"));
        std::fs::write(
            &config,
            format!(
                "admin = \"127.0.0.1:{admin_port}\"\n[control]\ndatabase = \"{db}\"\nuser = \"{SUPERUSER}\"\n\n[[migrations]]\nid = \"accounts_balance\"\ntable = \"pgbench_accounts\"\nfrom = \"abalance\"\nto = \"balance\"\nphase = \"expanded\"\n"
            ),
        )?;
        let port = free_port()?;
        servers.push(start_pgshift(cluster.port(), port, 100, Some(&config))?);
        addrs.push((port, format!("127.0.0.1:{admin_port}")));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    // Idle: pgshift's backfill.
    let (_, idle_admin) = &addrs[0];
    wait_for_admin(&runtime, idle_admin)?;
    let started = Instant::now();
    runtime.block_on(async {
        admin(
            idle_admin,
            "POST",
            "/migrations/accounts_balance/backfill",
            Some(&json!({ "batch_size": batch, "batch_target_ms": target_ms, "workers": workers })),
        )
        .await?;
        loop {
            if migration(idle_admin).await?["phase"] == "backfilled" {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })?;
    let idle_rate = rows / started.elapsed().as_secs_f64();
    eprintln!("pgshift backfill, idle: {idle_rate:.0} rows/s");
    // The million dead rows left behind are vacuumed now, not by an
    // autovacuum worker during the load runs.
    cluster.psql("idle", "vacuum analyze pgbench_accounts")?;
    cluster.psql("idle", "checkpoint")?;

    // Under load: pgbench through pgshift, on two databases in the same
    // state (`load` and `hand`, each behind its own pgshift with the
    // migration expanded): each without a backfill first, then `hand` with
    // a hand-written loop (the classic method's backfill: `batch`-row key
    // ranges, one autocommit UPDATE each, direct to Postgres) and `load`
    // with pgshift's backfill. Each run's transactions are kept; what counts
    // is the whole run without a backfill and, with one, the transactions
    // that ended while it ran.
    let (load_port, load_admin) = &addrs[1];
    let (hand_port, _) = &addrs[2];
    wait_for_admin(&runtime, load_admin)?;
    let secs_s = secs.to_string();
    let run = |port: u16, db: &str, prefix: &str| -> Result<Vec<(u64, u64)>> {
        let log_prefix = dir.join(prefix).display().to_string();
        let args = [
            "-n",
            "-c",
            "8",
            "-j",
            "2",
            "-T",
            &secs_s,
            "-l",
            "--log-prefix",
            &log_prefix,
        ];
        let child = spawn_pgbench(&pgbench, SUPERUSER, port, db, &args)?;
        finish_pgbench(child, prefix)?;
        pgbench_log(&dir, prefix)
    };
    // The first and last second of a run are pgbench starting and stopping.
    let whole = |log: &[(u64, u64)]| {
        let first = log.iter().map(|t| t.0).min().unwrap_or(0);
        let last = log.iter().map(|t| t.0).max().unwrap_or(0);
        window(log, first + 1_000_000, last.saturating_sub(1_000_000))
    };
    let (hand_base_tps, hand_base_p99) = whole(&run(*hand_port, "hand", "base-hand")?)?;
    let (base_tps, base_p99) = whole(&run(*load_port, "load", "base-load")?)?;
    eprintln!(
        "load without backfill: {base_tps:.0} tps, p99 {base_p99:.2} ms (hand: {hand_base_tps:.0} tps, p99 {hand_base_p99:.2} ms)"
    );

    let cluster_port = cluster.port();
    let hand_batch = i32::try_from(batch.max(1)).context("batch")?;
    let hand_rows = scale as i32 * 100_000;
    let hand = std::thread::spawn(move || -> Result<(u64, u64)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let client = connect(cluster_port, "hand").await?;
            let update = client
                .prepare(
                    "update pgbench_accounts set balance = abalance where aid between $1 and $2",
                )
                .await?;
            let started = now_us();
            let mut low = 1;
            while low <= hand_rows {
                client
                    .execute(&update, &[&low, &(low + hand_batch - 1)])
                    .await?;
                low += hand_batch;
            }
            Ok((started, now_us()))
        })
    });
    let hand_log = run(*hand_port, "hand", "hand")?;
    let (hand_begun, hand_ended) = hand
        .join()
        .map_err(|_| anyhow::anyhow!("the hand-written loop panicked"))??;
    let hand_rate = rows / ((hand_ended - hand_begun) as f64 / 1e6);
    let (hand_tps, hand_p99) = window(&hand_log, hand_begun, hand_ended)?;
    eprintln!(
        "load with the hand-written loop ({:.1} s of it): {hand_tps:.0} tps, p99 {hand_p99:.2} ms; {hand_rate:.0} rows/s",
        (hand_ended - hand_begun) as f64 / 1e6
    );
    // Likewise the loop's dead rows, before pgshift's run.
    cluster.psql("hand", "vacuum analyze pgbench_accounts")?;
    cluster.psql("hand", "checkpoint")?;

    runtime.block_on(admin(
        load_admin,
        "POST",
        "/migrations/accounts_balance/backfill",
        Some(&json!({ "batch_size": batch, "batch_target_ms": target_ms, "workers": workers })),
    ))?;
    let during = run(*load_port, "load", "during")?;
    let m = runtime.block_on(migration(load_admin))?;
    let done = m["backfill"]["rows_done"].as_f64().context("rows_done")?;
    let begun = m["backfill"]["started_ms"].as_u64().context("started_ms")? * 1000;
    let ended = match m["backfill"]["finished_ms"].as_u64() {
        Some(finished) => finished * 1000,
        None => during.iter().map(|t| t.0).max().unwrap_or(0).min(now_us()),
    };
    let load_rate = done / ((ended - begun) as f64 / 1e6);
    let (tps, p99) = window(&during, begun, ended)?;
    eprintln!(
        "load with backfill ({:.1} s of it): {tps:.0} tps, p99 {p99:.2} ms; backfill {load_rate:.0} rows/s",
        (ended - begun) as f64 / 1e6
    );
    drop(servers);

    println!();
    println!("backfill of pgbench_accounts ({rows:.0} rows, {workers} worker(s), batches of {batch}, target {target_ms} ms per batch (0: fixed)); pgbench tpcb-like -c 8 through pgshift, {secs} s per run; TPS and p99 with the backfill counted only while it ran ({:.1} s):", (ended - begun) as f64 / 1e6);
    println!();
    println!("| measure | value | ratio |");
    println!("|---|---|---|");
    println!("| single UPDATE of the whole table, idle | {single:.0} rows/s | 1.00 |");
    println!(
        "| pgshift backfill, idle | {idle_rate:.0} rows/s | {:.2}× the single UPDATE |",
        idle_rate / single
    );
    println!(
        "| hand-written loop under load (direct, autocommit) | {hand_rate:.0} rows/s | {:.2}× the single UPDATE |",
        hand_rate / single
    );
    println!(
        "| pgshift backfill under load | {load_rate:.0} rows/s | {:.2}× the hand-written loop |",
        load_rate / hand_rate
    );
    println!(
        "| pgbench TPS without / with the hand-written loop | {hand_base_tps:.0} / {hand_tps:.0} | {:.2}× |",
        hand_tps / hand_base_tps
    );
    println!(
        "| pgbench TPS without / with pgshift's backfill | {base_tps:.0} / {tps:.0} | {:.2}× |",
        tps / base_tps
    );
    println!("| pgbench p99 without / with the hand-written loop | {hand_base_p99:.2} / {hand_p99:.2} ms | {:.2}× |", hand_p99 / hand_base_p99);
    println!(
        "| pgbench p99 without / with pgshift's backfill | {base_p99:.2} / {p99:.2} ms | {:.2}× |",
        p99 / base_p99
    );
    Ok(())
}
