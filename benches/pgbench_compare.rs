//! The pgbench comparison: direct Postgres vs pgshift vs pgshift with a
//! migration in its dual-write phase (the rename `pgbench_accounts.abalance
//! -> balance`, expanded: every UPDATE of the old column is rewritten) vs
//! PgBouncer (session mode), measured in one run on one throwaway cluster, in
//! interleaved rounds so drift on the machine hits every target alike. Then
//! the memory pgshift needs for 1,000 idle client connections.
//!
//! For the two proxies it also reads their own CPU time (user + system,
//! `/proc/PID/stat`) around each run and divides it by the transactions:
//! on two shared cores a proxy's TPS mostly says how much CPU it takes from
//! Postgres, and TPS moves ±10–25 % between runs; CPU per transaction moves
//! little.
//!
//! Run: `cargo bench --bench pgbench_compare`. Knobs (environment):
//! `PGSHIFT_BENCH_SECS` (per pgbench run, default 5), `PGSHIFT_BENCH_ROUNDS`
//! (default 3), `PGSHIFT_BENCH_SCALE` (default 10), `PGSHIFT_BENCH_IDLE`
//! (idle connections for the memory figure, and the most clients of the
//! mostly-idle rows, default 1000), `PGSHIFT_BENCH_ONLY=many` (only the
//! mostly-idle rows: `-S -M simple -R 2000` over 200 and 1,000 clients).
//! PgBouncer is installed with apt-get when it is missing and we are root.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};

mod common;
use common::proxies::{cpu_us, start_pgbouncer, Bouncer};
use common::{env_num, finish_pgbench, median, spawn_pgbench, start_pgshift, Run};
use pgshift::cluster::{free_port, Cluster, ClusterOptions, SUPERUSER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn pgbench(cluster: &Cluster, port: u16, args: &[&str]) -> Result<Run> {
    let child = spawn_pgbench(
        &cluster.binaries().tool("pgbench"),
        SUPERUSER,
        port,
        "postgres",
        args,
    )?;
    finish_pgbench(child, &format!("{args:?} on port {port}"))
}

/// The rate of the many-client rows, over all clients (tx/s).
const MANY_RATE: u32 = 2000;

/// Mostly idle clients: `pgbench -S -M simple -R MANY_RATE` with 200 and
/// 1,000 clients (each doing 10 or 2 transactions a second), through
/// pgshift and through PgBouncer, interleaved; each proxy's CPU per
/// transaction (connection set-up included). Rows: (clients, pgshift
/// µs/tx per round, PgBouncer's).
fn many_clients(
    cluster: &Cluster,
    pids: [Option<u32>; 2],
    ports: [u16; 2],
    idle: u32,
    secs: u32,
    rounds: u32,
) -> Result<Vec<(u32, [Vec<f64>; 2])>> {
    let secs = secs.max(10);
    let (secs_s, rate_s) = (secs.to_string(), MANY_RATE.to_string());
    let mut rows = Vec::new();
    for clients in [200u32, 1000].into_iter().filter(|c| *c <= idle) {
        let clients_s = clients.to_string();
        let mut cpu: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for (i, port) in ports.iter().enumerate() {
                let Some(pid) = pids[i] else { continue };
                let args = [
                    "-S", "-M", "simple", "-R", &rate_s, "-c", &clients_s, "-j", "2", "-T", &secs_s,
                ];
                let before = cpu_us(pid)?;
                let run = pgbench(cluster, *port, &args)?;
                let per_tx = (cpu_us(pid)? - before) / (run.tps * f64::from(secs)).max(1.0);
                eprintln!(
                    "many -c {clients} round {round} port {port}: {:.0} tps, {per_tx:.1} µs/tx",
                    run.tps
                );
                cpu[i].push(per_tx);
            }
        }
        rows.push((clients, cpu));
    }
    Ok(rows)
}

fn print_many(rows: &[(u32, [Vec<f64>; 2])], rounds: u32) {
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::MAX, f64::min);
        let hi = v.iter().copied().fold(f64::MIN, f64::max);
        (median(v.to_vec()), lo, hi)
    };
    println!();
    println!("mostly idle clients (`-S -M simple -R {MANY_RATE}` over all of them), the proxy's CPU per transaction, µs, connection set-up included, median (min–max) of {rounds} rounds:");
    println!();
    println!("| clients | pgshift | PgBouncer (session) | pgshift ÷ PgBouncer |");
    println!("|---|---|---|---|");
    for (clients, [shift, bouncer]) in rows {
        let (s, b) = (spread(shift), spread(bouncer));
        println!(
            "| {clients} | {:.1} ({:.1}–{:.1}) | {:.1} ({:.1}–{:.1}) | {:.2}× |",
            s.0,
            s.1,
            s.2,
            b.0,
            b.1,
            b.2,
            s.0 / b.0
        );
    }
}

/// Opens `n` connections through `addr`, completes startup on each, holds
/// them idle, and returns pgshift's resident memory (current, peak) in KiB.
async fn idle_connections_rss(addr: SocketAddr, n: u32, pid: u32) -> Result<(u64, u64, u64)> {
    let before = rss_kib(pid)?.0;
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let mut body = Vec::new();
        body.extend_from_slice(&196_608u32.to_be_bytes());
        body.extend_from_slice(format!("user\0{SUPERUSER}\0database\0postgres\0\0").as_bytes());
        let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        s.write_all(&msg).await?;
        // Read until ReadyForQuery ('Z', len 5, status).
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let k = s.read(&mut buf).await?;
            if k == 0 {
                bail!(
                    "connection closed during startup: {:?}",
                    String::from_utf8_lossy(&seen)
                );
            }
            seen.extend_from_slice(&buf[..k]);
            if seen.len() >= 6 && seen[seen.len() - 6] == b'Z' {
                break;
            }
        }
        held.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss, peak) = rss_kib(pid)?;
    drop(held);
    Ok((before, rss, peak))
}

fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let get = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok((get("VmRSS:"), get("VmHWM:")))
}

fn main() -> Result<()> {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // else: only run for real under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("pgbench_compare: run with `cargo bench --bench pgbench_compare`");
        return Ok(());
    }
    let secs = env_num("PGSHIFT_BENCH_SECS", 5);
    let rounds = env_num("PGSHIFT_BENCH_ROUNDS", 3);
    let scale = env_num("PGSHIFT_BENCH_SCALE", 10);
    let idle = env_num("PGSHIFT_BENCH_IDLE", 1000);

    // Room for PgBouncer's idle server connections of a many-client run
    // (session mode keeps them) beside the next target's.
    let cluster = Cluster::start(&ClusterOptions {
        max_connections: 2 * idle + 100,
        ..ClusterOptions::default()
    })?;
    eprintln!("cluster on port {}; pgbench -i -s {scale}…", cluster.port());
    let init = Command::new(cluster.binaries().tool("pgbench"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port().to_string(),
            "-U",
            SUPERUSER,
        ])
        .args(["-i", "-q", "-s", &scale.to_string(), "postgres"])
        .output()?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    // The rename abalance -> balance, expanded: the new column exists and
    // pgshift dual-writes every UPDATE of the old one.
    cluster.psql(
        "postgres",
        "alter table pgbench_accounts add column balance int; update pgbench_accounts set balance = abalance",
    )?;
    cluster.psql("postgres", "vacuum analyze pgbench_accounts")?;
    let migration_config = cluster.root().join("pgshift-migration.toml");
    std::fs::write(
        &migration_config,
        "admin = \"off\"\n\n[control]\ndatabase = \"postgres\"\n\n[[migrations]]\nid = \"accounts_balance\"\ntable = \"pgbench_accounts\"\nfrom = \"abalance\"\nto = \"balance\"\nphase = \"expanded\"\n",
    )?;
    let shift_port = free_port()?;
    let migrating_port = free_port()?;
    let bouncer_port = free_port()?;
    let pgshift = start_pgshift(cluster.port(), shift_port, idle + 50, None)?;
    let _migrating = start_pgshift(cluster.port(), migrating_port, 200, Some(&migration_config))?;
    // A pool as large as the most clients: in session mode a client beyond
    // the pool waits for ever.
    let bouncer = start_pgbouncer(&cluster, bouncer_port, idle + 50, Bouncer::Tcp)?;
    let bouncer_pid = bouncer.pid()?;
    // Whose CPU is counted, per target.
    let pids = [None, Some(pgshift.0.id()), None, Some(bouncer_pid)];
    let targets = [
        ("direct", cluster.port()),
        ("pgshift", shift_port),
        ("pgshift+migration", migrating_port),
        ("pgbouncer", bouncer_port),
    ];
    let workloads: [(&str, &[&str]); 4] = [
        ("-S -M simple", &["-S", "-M", "simple"]),
        ("-S -M extended", &["-S", "-M", "extended"]),
        ("-S -M prepared", &["-S", "-M", "prepared"]),
        ("tpcb-like", &[]),
    ];
    let secs_s = secs.to_string();
    let mut table = Vec::new();
    let mut cpu_table = Vec::new();
    // PGSHIFT_BENCH_ONLY=many: only the many-client rows.
    let only_many = std::env::var("PGSHIFT_BENCH_ONLY").is_ok_and(|v| v == "many");
    let workloads = if only_many {
        &workloads[..0]
    } else {
        &workloads[..]
    };
    for &(name, workload) in workloads {
        for clients in [8u32, 32] {
            let clients_s = clients.to_string();
            let mut tps: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
            let mut lat: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
            let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
            for round in 0..rounds {
                for (i, (target, port)) in targets.iter().enumerate() {
                    let mut args: Vec<&str> = workload.to_vec();
                    args.extend(["-c", &clients_s, "-j", "2", "-T", &secs_s]);
                    let before = pids[i].map(cpu_us).transpose()?;
                    let run = pgbench(&cluster, *port, &args)?;
                    if let (Some(pid), Some(before)) = (pids[i], before) {
                        let transactions = run.tps * f64::from(secs);
                        cpu[i].push((cpu_us(pid)? - before) / transactions.max(1.0));
                    }
                    eprintln!(
                        "{name} -c {clients} round {round} {target}: {:.0} tps, {:.3} ms",
                        run.tps, run.latency_ms
                    );
                    tps[i].push(run.tps);
                    lat[i].push(run.latency_ms);
                }
            }
            let tps: Vec<f64> = tps.into_iter().map(median).collect();
            let lat: Vec<f64> = lat.into_iter().map(median).collect();
            let spread = |v: &[f64]| {
                let lo = v.iter().copied().fold(f64::MAX, f64::min);
                let hi = v.iter().copied().fold(f64::MIN, f64::max);
                (median(v.to_vec()), lo, hi)
            };
            let (shift_cpu, bouncer_cpu) = (spread(&cpu[1]), spread(&cpu[3]));
            cpu_table.push(format!(
                "| {name} | {clients} | {:.1} ({:.1}–{:.1}) | {:.1} ({:.1}–{:.1}) | {:.2}× |",
                shift_cpu.0,
                shift_cpu.1,
                shift_cpu.2,
                bouncer_cpu.0,
                bouncer_cpu.1,
                bouncer_cpu.2,
                shift_cpu.0 / bouncer_cpu.0
            ));
            table.push(format!(
                "| {name} | {clients} | {:.0} | {:.0} ({:.2}×) | {:.0} ({:.2}× pgshift) | {:.0} ({:.2}×) | {:.3} / {:.3} / {:.3} / {:.3} |",
                tps[0],
                tps[1],
                tps[1] / tps[0],
                tps[2],
                tps[2] / tps[1],
                tps[3],
                tps[3] / tps[0],
                lat[0],
                lat[1],
                lat[2],
                lat[3]
            ));
        }
    }

    let many = many_clients(
        &cluster,
        [pids[1], pids[3]],
        [shift_port, bouncer_port],
        idle,
        secs,
        rounds,
    )?;
    if only_many {
        print_many(&many, rounds);
        return Ok(());
    }
    // Memory on a fresh pgshift process, so its peak is that of the idle
    // connections alone.
    drop(pgshift);
    let idle_port = free_port()?;
    let fresh = start_pgshift(cluster.port(), idle_port, idle + 50, None)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let addr: SocketAddr = ([127, 0, 0, 1], idle_port).into();
    let (before, rss, peak) = runtime.block_on(idle_connections_rss(addr, idle, fresh.0.id()))?;

    println!();
    println!("pgbench through each target, median of {rounds} interleaved rounds of {secs} s, scale {scale}, -j 2:");
    println!();
    println!("| workload | clients | direct TPS | pgshift TPS (× direct) | pgshift with a migration in dual-write TPS (× pgshift) | PgBouncer session TPS (× direct) | median latency ms direct / pgshift / migrating / PgBouncer |");
    println!("|---|---|---|---|---|---|---|");
    for row in &table {
        println!("{row}");
    }
    println!();
    println!("the proxy's own CPU (user + system) per transaction, µs, median (min–max) of the same rounds:");
    println!();
    println!("| workload | clients | pgshift | PgBouncer (session) | pgshift ÷ PgBouncer |");
    println!("|---|---|---|---|---|");
    for row in &cpu_table {
        println!("{row}");
    }
    print_many(&many, rounds);
    println!();
    println!(
        "pgshift memory (VmRSS of a fresh `pgshift serve`): {:.1} MiB before, {:.1} MiB holding {idle} idle client sessions (each with its upstream connection); peak VmHWM {:.1} MiB",
        before as f64 / 1024.0,
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    Ok(())
}
