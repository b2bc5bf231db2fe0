//! The backfill's rate and its cost to a running application, in one run:
//!
//! - idle: pgshift's backfill of `pgbench_accounts` (scale
//!   `PGSHIFT_BENCH_SCALE`, default 10: 1M rows) against one plain
//!   `UPDATE … SET balance = abalance` of the whole table (the physical
//!   limit, which locks every row for its whole duration);
//! - under load: pgbench tpcb-like `-c 8` through pgshift for
//!   `PGSHIFT_BENCH_SECS` (default 20) without a backfill, then again with
//!   the backfill running from its start: TPS, p99 latency, and the rows/s
//!   the backfill reached meanwhile.
//!
//! Two databases (`idle`, `load`), each with the new column `balance` added
//! (the migration in its `expanded` phase), each behind its own pgshift.
//! Run: `cargo bench --bench backfill` (`PGSHIFT_BENCH_BATCH`: rows per
//! batch, default 1000; `PGSHIFT_BENCH_TARGET_MS`: time-targeted batches).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgshift::cluster::{free_port, Cluster, ClusterOptions, SUPERUSER};
use serde_json::{json, Value};

mod common;
use common::{env_num, finish_pgbench, pgbench_init, spawn_pgbench, start_pgshift};

async fn admin(addr: &str, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let (code, answer) = pgshift::admin::request(addr, method, path, body.as_ref(), None)
        .await
        .map_err(anyhow::Error::msg)?;
    if !(200..300).contains(&code) {
        bail!("{method} {path}: HTTP {code}: {answer}");
    }
    Ok(answer)
}

async fn migration(addr: &str) -> Result<Value> {
    let status = admin(addr, "GET", "/status", None).await?;
    Ok(status["migrations"][0].clone())
}

/// p99 of the latencies (µs, third column) in pgbench's `-l` logs.
fn p99_ms(dir: &std::path::Path, prefix: &str) -> Result<f64> {
    let mut latencies: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.starts_with(prefix) {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                latencies.push(us);
            }
        }
        std::fs::remove_file(&path)?;
    }
    if latencies.is_empty() {
        bail!("no pgbench log lines for {prefix}");
    }
    latencies.sort_unstable();
    Ok(latencies[latencies.len() * 99 / 100] as f64 / 1000.0)
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
    let cluster = Cluster::start(&ClusterOptions::default())?;
    let pgbench = cluster.binaries().tool("pgbench");
    let rows = f64::from(scale) * 100_000.0;
    for db in ["idle", "load"] {
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
    for db in ["idle", "load"] {
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
    let wait_admin = |addr: &str| {
        runtime.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(20);
            while migration(addr).await.is_err() {
                if Instant::now() > deadline {
                    bail!("the admin port {addr} never answered");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(())
        })
    };

    // Idle: pgshift's backfill.
    let (_, idle_admin) = &addrs[0];
    wait_admin(idle_admin)?;
    let started = Instant::now();
    runtime.block_on(async {
        admin(
            idle_admin,
            "POST",
            "/migrations/accounts_balance/backfill",
            Some(json!({ "batch_size": batch, "batch_target_ms": target_ms })),
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

    // Under load: pgbench through pgshift, without then with the backfill.
    let (load_port, load_admin) = &addrs[1];
    wait_admin(load_admin)?;
    let secs_s = secs.to_string();
    let run = |prefix: &str| -> Result<(f64, f64)> {
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
        let child = spawn_pgbench(&pgbench, SUPERUSER, *load_port, "load", &args)?;
        let result = finish_pgbench(child, prefix)?;
        Ok((result.tps, p99_ms(&dir, prefix)?))
    };
    let (base_tps, base_p99) = run("base")?;
    eprintln!("load without backfill: {base_tps:.0} tps, p99 {base_p99:.2} ms");
    let started = Instant::now();
    runtime.block_on(admin(
        load_admin,
        "POST",
        "/migrations/accounts_balance/backfill",
        Some(json!({ "batch_size": batch, "batch_target_ms": target_ms })),
    ))?;
    let (tps, p99) = run("during")?;
    let elapsed = started.elapsed().as_secs_f64();
    let m = runtime.block_on(migration(load_admin))?;
    let done = m["backfill"]["rows_done"].as_f64().context("rows_done")?;
    let load_rate = match m["backfill"]["finished_ms"].as_f64() {
        Some(finished) => {
            let begun = m["backfill"]["started_ms"].as_f64().context("started_ms")?;
            done / ((finished - begun) / 1000.0)
        }
        None => done / elapsed,
    };
    eprintln!("load with backfill: {tps:.0} tps, p99 {p99:.2} ms; backfill {load_rate:.0} rows/s");
    drop(servers);

    println!();
    println!("backfill of pgbench_accounts ({rows:.0} rows, batches of {batch}, target {target_ms} ms per batch (0: fixed)); pgbench tpcb-like -c 8 through pgshift, {secs} s per run:");
    println!();
    println!("| measure | value | ratio |");
    println!("|---|---|---|");
    println!("| single UPDATE of the whole table, idle | {single:.0} rows/s | 1.00 |");
    println!(
        "| pgshift backfill, idle | {idle_rate:.0} rows/s | {:.2}× the single UPDATE |",
        idle_rate / single
    );
    println!(
        "| pgshift backfill under load | {load_rate:.0} rows/s | {:.2}× idle |",
        load_rate / idle_rate
    );
    println!(
        "| pgbench TPS without / with the backfill | {base_tps:.0} / {tps:.0} | {:.2}× |",
        tps / base_tps
    );
    println!("| pgbench p99 latency without / with the backfill | {base_p99:.2} / {p99:.2} ms | {:.2}× |", p99 / base_p99);
    Ok(())
}
