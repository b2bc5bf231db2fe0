//! What a catalog operation costs the load: `create_index` and
//! `add_constraint` (a foreign key) through pgshift's lifecycle, against the
//! same operation done by hand the classic way (the seed articles' SQL:
//! `CREATE INDEX CONCURRENTLY`; `ADD CONSTRAINT … NOT VALID` then
//! `VALIDATE CONSTRAINT`), against the naive statement (`CREATE INDEX`;
//! `ADD CONSTRAINT` validating at once), and against no operation at all.
//!
//! Each round: a fresh database (`pgbench -i`, scale `PGSHIFT_BENCH_SCALE`,
//! default 10: 1 M accounts), pgshift in front of it, and the stock
//! tpcb-like load through pgshift (`-c 4 -M prepared`, per-transaction
//! logs). Over that load, for each operation, each method gets a window of
//! `WINDOW` seconds (longer if the operation takes longer) starting with the
//! operation; what it made is dropped between windows, outside them. The
//! methods' order turns each round. Measured per window: how long the
//! operation took, and the load's TPS, p99 latency and longest transaction
//! (a lock that holds writes back shows in the last).
//!
//! The operations: an index on `pgbench_accounts (bid, abalance)`; a
//! foreign key `pgbench_accounts (bid) → pgbench_branches (bid)` (its
//! `NOT VALID` step locks both tables briefly, and the tpcb-like script
//! updates both); and `acode text NOT NULL` added to `pgbench_accounts`
//! with every row given `'a' || aid` — classic: `ADD COLUMN`, an `UPDATE`
//! per 1,000 keys, a `NOT VALID` check, `VALIDATE`, `SET NOT NULL`, the
//! check dropped; naive: `ADD COLUMN`, one `UPDATE` of every row, `SET NOT
//! NULL`; pgshift: `add_column` with `up`, through expand, backfill,
//! validate, switch-reads, contract, complete.
//!
//! Run: `cargo bench --bench catalog_ops` (`PGSHIFT_BENCH_ROUNDS`, default
//! 3).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use pgshift::cluster::{Cluster, ClusterOptions, SUPERUSER};
use serde_json::json;

mod common;
use common::{
    admin, connect, env_num, finish_pgbench, logged_tpcb_args, median, pgbench_init, spawn_pgbench,
    start_pgshift_driving, stats, transactions, unix_secs,
};

/// Seconds each method's window lasts at least.
const WINDOW: f64 = 5.0;
/// Seconds between windows (the cleanup runs there).
const GAP: f64 = 2.0;

const METHODS: [&str; 4] = ["none", "classic", "pgshift", "naive"];
const OPERATIONS: [&str; 3] = ["create_index", "foreign_key", "add_column"];

/// Keys per batch of the classic fill by hand (pgshift's default batch).
const FILL_BATCH: i32 = 1000;
/// Seconds the load is given per `add_column` method beyond the window
/// (its fill walks every row of `pgbench_accounts`).
const FILL_ROOM: f64 = 90.0;

/// One window: the operation's seconds, the load's TPS and p99 (ms).
#[derive(Clone, Copy)]
struct Window {
    op_s: f64,
    tps: f64,
    p99_ms: f64,
    /// The longest transaction that ended in the window: a stall that a
    /// lock held for all of it causes shows here, and not in the p99
    /// (one transaction per client).
    max_ms: f64,
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("catalog_ops: run with `cargo bench --bench catalog_ops`");
        return Ok(());
    }
    let rounds = env_num("PGSHIFT_BENCH_ROUNDS", 3);
    let scale = env_num("PGSHIFT_BENCH_SCALE", 10);
    let cluster = Cluster::start(&ClusterOptions::default())?;
    let rt = tokio::runtime::Runtime::new()?;
    // [operation][method] → one window per round.
    let mut windows = vec![vec![Vec::<Window>::new(); METHODS.len()]; OPERATIONS.len()];
    for round in 0..rounds as usize {
        let db = format!("c{round}");
        pgbench_init(&cluster, &db, scale)?;
        cluster.psql(&db, "vacuum analyze")?;
        let found = run_round(&cluster, &rt, &db, round)?;
        for (o, m, w) in found {
            eprintln!(
                "round {round} {} {}: op {:.2} s, {:.0} tps, p99 {:.1} ms, max {:.0} ms",
                OPERATIONS[o], METHODS[m], w.op_s, w.tps, w.p99_ms, w.max_ms
            );
            windows[o][m].push(w);
        }
    }
    report(&windows, rounds, scale);
    Ok(())
}

/// One round on database `db`: every operation by every method, under one
/// pgbench run through pgshift.
fn run_round(
    cluster: &Cluster,
    rt: &tokio::runtime::Runtime,
    db: &str,
    round: usize,
) -> Result<Vec<(usize, usize, Window)>> {
    let dir = cluster.root().join(format!("catalog-{db}"));
    std::fs::create_dir_all(&dir)?;
    let (_pgshift, port, addr) = start_pgshift_driving(cluster, rt, &dir, db)?;
    let slots = OPERATIONS.len() * METHODS.len();
    // Room for operations longer than their window.
    let secs =
        (3.0 + slots as f64 * (WINDOW + GAP) * 2.0 + METHODS.len() as f64 * FILL_ROOM) as u32;
    let pgbench = cluster.binaries().tool("pgbench");
    let prefix = dir.join("tx").display().to_string();
    let args = logged_tpcb_args(secs, &prefix);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = unix_secs();
    let load = spawn_pgbench(&pgbench, SUPERUSER, port, db, &args)?;
    std::thread::sleep(Duration::from_secs(3));
    let mut spans = Vec::new();
    for (o, operation) in OPERATIONS.iter().enumerate() {
        for k in 0..METHODS.len() {
            let m = (k + round) % METHODS.len();
            let id = format!("{operation}_{}", METHODS[m]);
            let (start, op_s) = rt
                .block_on(operate(&addr, cluster.port(), db, o, m, &id))
                .map_err(|e| anyhow::anyhow!("{id}: {e:?}"))?;
            let end = start + op_s.max(WINDOW);
            let rest = end - unix_secs();
            if rest > 0.0 {
                std::thread::sleep(Duration::from_secs_f64(rest));
            }
            spans.push((o, m, start, end, op_s));
            rt.block_on(undo(cluster.port(), db, o))?;
            std::thread::sleep(Duration::from_secs_f64(GAP));
        }
    }
    let last = spans.last().map_or(started, |s| s.3);
    if last > started + f64::from(secs) {
        bail!(
            "the operations outlasted the load ({:.0} s)",
            last - started
        );
    }
    finish_pgbench(load, "catalog_ops load")?;
    let ends = transactions(&dir)?;
    Ok(spans
        .into_iter()
        .map(|(o, m, start, end, op_s)| {
            let (tps, p99_ms) = stats(&ends, (start, end));
            let max_ms = ends
                .iter()
                .filter(|(at, _)| *at >= start && *at < end)
                .map(|(_, ms)| *ms)
                .fold(0.0, f64::max);
            (
                o,
                m,
                Window {
                    op_s,
                    tps,
                    p99_ms,
                    max_ms,
                },
            )
        })
        .collect())
}

/// Operation `o` by method `m`: (when it started, UNIX s; how long it
/// took, s).
async fn operate(
    addr: &str,
    pg_port: u16,
    db: &str,
    o: usize,
    m: usize,
    id: &str,
) -> Result<(f64, f64)> {
    let direct = connect(pg_port, db).await?;
    let start = unix_secs();
    let timer = Instant::now();
    match (OPERATIONS[o], METHODS[m]) {
        (_, "none") => {}
        ("create_index", "classic") => {
            direct
                .batch_execute("create index concurrently accounts_bid_balance_idx on pgbench_accounts (bid, abalance)")
                .await?
        }
        ("create_index", "naive") => {
            direct
                .batch_execute("create index accounts_bid_balance_idx on pgbench_accounts (bid, abalance)")
                .await?
        }
        ("foreign_key", "classic") => {
            // Two transactions, as the articles run them: the NOT VALID
            // step's lock is not held through the scan.
            direct.batch_execute("set lock_timeout = '1s'").await?;
            direct
                .batch_execute("alter table pgbench_accounts add constraint accounts_bid_fk foreign key (bid) references pgbench_branches (bid) not valid")
                .await?;
            direct
                .batch_execute("alter table pgbench_accounts validate constraint accounts_bid_fk")
                .await?
        }
        ("foreign_key", "naive") => {
            direct
                .batch_execute(
                    "alter table pgbench_accounts add constraint accounts_bid_fk foreign key (bid) references pgbench_branches (bid)",
                )
                .await?
        }
        ("add_column", "classic") => add_column_classic(&direct).await?,
        ("add_column", "naive") => {
            direct
                .batch_execute(
                    "alter table pgbench_accounts add column acode text;
                     update pgbench_accounts set acode = 'a' || aid;
                     alter table pgbench_accounts alter column acode set not null",
                )
                .await?
        }
        (op, _) => through_pgshift(addr, op, id).await?,
    }
    Ok((start, timer.elapsed().as_secs_f64()))
}

/// `sql` under a 1 s lock timeout, tried again (up to 30 times) while it
/// times out — the articles' lock discipline, by hand.
async fn with_retries(direct: &tokio_postgres::Client, sql: &str) -> Result<()> {
    direct.batch_execute("set lock_timeout = '1s'").await?;
    for _ in 0..30 {
        match direct.batch_execute(sql).await {
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other.map_err(|e| anyhow::anyhow!("{sql}: {e:?}")),
        }
    }
    bail!("{sql}: no lock in 30 attempts")
}

/// `acode text NOT NULL` the articles' way, each step its own statement,
/// each ALTER under the lock discipline.
async fn add_column_classic(direct: &tokio_postgres::Client) -> Result<()> {
    with_retries(direct, "alter table pgbench_accounts add column acode text").await?;
    let max: i32 = direct
        .query_one("select max(aid) from pgbench_accounts", &[])
        .await?
        .get(0);
    let mut lo = 0;
    while lo < max {
        direct
            .execute(
                "update pgbench_accounts set acode = 'a' || aid where aid > $1 and aid <= $2 and acode is null",
                &[&lo, &(lo + FILL_BATCH)],
            )
            .await?;
        lo += FILL_BATCH;
    }
    for sql in [
        "alter table pgbench_accounts add constraint acode_nn check (acode is not null) not valid",
        "alter table pgbench_accounts validate constraint acode_nn",
        "alter table pgbench_accounts alter column acode set not null;
         alter table pgbench_accounts drop constraint acode_nn",
    ] {
        with_retries(direct, sql).await?;
    }
    Ok(())
}

/// `acode` through pgshift: every step, the backfill waited for.
async fn add_column_pgshift(addr: &str, id: &str) -> Result<()> {
    let spec = json!({"id": id, "op": "add_column", "table": "pgbench_accounts",
        "column": "acode", "type": "text", "not_null": true, "up": "'a' || aid"});
    admin(addr, "POST", "/migrations", Some(&spec)).await?;
    let step = |action: &'static str, body: serde_json::Value| {
        let path = format!("/migrations/{id}/{action}");
        async move { admin(addr, "POST", &path, Some(&body)).await }
    };
    step("expand", json!({})).await?;
    step("backfill", json!({})).await?;
    loop {
        let status = admin(addr, "GET", &format!("/migrations/{id}"), None).await?;
        if status["phase"] == "backfilled" {
            break;
        }
        if let Some(e) = status["backfill"]["error"].as_str() {
            bail!("backfill of {id}: {e}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    step("validate", json!({})).await?;
    step("switch-reads", json!({"to": "new"})).await?;
    step("contract", json!({"force": true})).await?;
    step("complete", json!({})).await?;
    Ok(())
}

/// The operation through pgshift's admin port, added to complete.
async fn through_pgshift(addr: &str, op: &str, id: &str) -> Result<()> {
    if op == "add_column" {
        return add_column_pgshift(addr, id).await;
    }
    let spec = match op {
        "create_index" => json!({"id": id, "op": "create_index", "table": "pgbench_accounts",
            "definition": "create index accounts_bid_balance_idx on pgbench_accounts (bid, abalance)"}),
        _ => json!({"id": id, "op": "add_constraint", "table": "pgbench_accounts",
            "name": "accounts_bid_fk", "definition": "foreign key (bid) references pgbench_branches (bid)"}),
    };
    admin(addr, "POST", "/migrations", Some(&spec)).await?;
    for action in ["expand", "validate", "contract", "complete"] {
        let path = format!("/migrations/{id}/{action}");
        admin(addr, "POST", &path, Some(&json!({}))).await?;
    }
    Ok(())
}

/// Takes away what operation `o` made (between windows).
async fn undo(pg_port: u16, db: &str, o: usize) -> Result<()> {
    let direct = connect(pg_port, db).await?;
    let sql = match OPERATIONS[o] {
        "create_index" => "drop index concurrently if exists accounts_bid_balance_idx",
        "add_column" => {
            direct
                .batch_execute("alter table pgbench_accounts drop column if exists acode")
                .await?;
            // The next method starts from a table without the dead rows
            // (VACUUM runs outside a transaction block: its own Query).
            "vacuum pgbench_accounts"
        }
        _ => "alter table pgbench_accounts drop constraint if exists accounts_bid_fk",
    };
    direct.batch_execute(sql).await?;
    Ok(())
}

fn report(windows: &[Vec<Vec<Window>>], rounds: u32, scale: u32) {
    let cell = |v: &[Window], f: fn(&Window) -> f64| {
        let x: Vec<f64> = v.iter().map(f).collect();
        let (lo, hi) = x
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(*y), b.max(*y)));
        format!("{:.1} ({lo:.1}–{hi:.1})", median(x))
    };
    println!();
    println!("catalog operations on pgbench_accounts (scale {scale}) under tpcb-like -c 4 -M prepared through pgshift; each method's window ≥ {WINDOW} s from the operation's start; median (min–max) of {rounds} rounds, methods' order turned each round:");
    println!();
    println!("| operation | method | operation, s | TPS in the window | p99 in the window, ms | longest transaction, ms |");
    println!("|---|---|---|---|---|---|");
    for (o, op) in OPERATIONS.iter().enumerate() {
        for (m, method) in METHODS.iter().enumerate() {
            let v = &windows[o][m];
            println!(
                "| {op} | {method} | {} | {} | {} | {} |",
                cell(v, |w| w.op_s),
                cell(v, |w| w.tps),
                cell(v, |w| w.p99_ms),
                cell(v, |w| w.max_ms)
            );
        }
    }
}
