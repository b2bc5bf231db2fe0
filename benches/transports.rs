//! Loopback TCP vs unix-domain sockets, for pgshift and PgBouncer alike:
//! each proxy once with TCP both ways and once with unix sockets both ways
//! (clients on its socket, its upstream Postgres' socket), beside direct
//! Postgres over each, in interleaved rounds on one throwaway cluster. For
//! the proxies it reads their own CPU time (user + system) around each run
//! and divides it by the transactions, as `pgbench_compare` does.
//!
//! Run: `cargo bench --bench transports`. Knobs: `PGSHIFT_BENCH_SECS`
//! (per pgbench run, default 5), `PGSHIFT_BENCH_ROUNDS` (default 3),
//! `PGSHIFT_BENCH_SCALE` (default 10), `PGSHIFT_BENCH_CLIENTS` (default 8).

use anyhow::Result;

mod common;
use common::proxies::{cpu_us, start_pgbouncer, Bouncer};
use common::{
    env_num, finish_pgbench, median, pgbench_init, spawn_pgbench_at, start_pgshift,
    start_pgshift_with,
};
use pgshift::cluster::{free_port, Cluster, ClusterOptions, SUPERUSER};

/// One way of reaching Postgres: a name, the host and port pgbench is
/// given, and the process whose CPU is counted.
struct Target {
    name: &'static str,
    host: String,
    port: u16,
    pid: Option<u32>,
}

/// (TPS, proxy CPU µs per transaction) of every round.
type Samples = (Vec<f64>, Vec<f64>);

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("transports: run with `cargo bench --bench transports`");
        return Ok(());
    }
    let secs = env_num("PGSHIFT_BENCH_SECS", 5);
    let rounds = env_num("PGSHIFT_BENCH_ROUNDS", 3);
    let scale = env_num("PGSHIFT_BENCH_SCALE", 10);
    let clients = env_num("PGSHIFT_BENCH_CLIENTS", 8);
    let cluster = Cluster::start(&ClusterOptions {
        max_connections: 300,
        ..ClusterOptions::default()
    })?;
    pgbench_init(&cluster, "postgres", scale)?;
    let dir = cluster.root().display().to_string();
    let tcp = "127.0.0.1".to_string();
    let ports = [free_port()?, free_port()?, free_port()?, free_port()?];
    let shift_tcp = start_pgshift(cluster.port(), ports[0], 100, None)?;
    let upstream_socket = format!("{dir}:{}", cluster.port());
    let unix_args = ["--listen-unix", dir.as_str()];
    let shift_unix = start_pgshift_with(&upstream_socket, ports[1], 100, None, &unix_args)?;
    let bouncer_tcp = start_pgbouncer(&cluster, ports[2], 100, Bouncer::Tcp)?;
    let bouncer_unix = start_pgbouncer(&cluster, ports[3], 100, Bouncer::Unix)?;
    let target = |name, host: &String, port, pid| Target {
        name,
        host: host.clone(),
        port,
        pid,
    };
    let targets = [
        target("direct TCP", &tcp, cluster.port(), None),
        target("direct unix", &dir, cluster.port(), None),
        target("pgshift TCP", &tcp, ports[0], Some(shift_tcp.0.id())),
        target("pgshift unix", &dir, ports[1], Some(shift_unix.0.id())),
        target("PgBouncer TCP", &tcp, ports[2], Some(bouncer_tcp.pid()?)),
        target("PgBouncer unix", &dir, ports[3], Some(bouncer_unix.pid()?)),
    ];
    let workloads: [(&str, &[&str]); 3] = [
        ("-S -M simple", &["-S", "-M", "simple"]),
        ("-S -M prepared", &["-S", "-M", "prepared"]),
        ("tpcb-like", &[]),
    ];
    let mut results = Vec::new();
    for (name, workload) in workloads {
        let samples = rounds_of(&cluster, &targets, workload, clients, secs, rounds)?;
        results.push((name, samples));
    }
    print_table(&targets, &results, clients, secs, rounds, scale);
    Ok(())
}

/// Interleaved rounds of one workload over every target.
fn rounds_of(
    cluster: &Cluster,
    targets: &[Target],
    workload: &[&str],
    clients: u32,
    secs: u32,
    rounds: u32,
) -> Result<Vec<Samples>> {
    let (clients_s, secs_s) = (clients.to_string(), secs.to_string());
    let pgbench = cluster.binaries().tool("pgbench");
    let mut samples: Vec<Samples> = targets.iter().map(|_| Default::default()).collect();
    for round in 0..rounds {
        for (t, target) in targets.iter().enumerate() {
            let mut args = workload.to_vec();
            args.extend(["-c", &clients_s, "-j", "2", "-T", &secs_s]);
            let before = target.pid.map(cpu_us).transpose()?;
            let child = spawn_pgbench_at(
                &pgbench,
                &target.host,
                SUPERUSER,
                target.port,
                "postgres",
                &args,
            )?;
            let run = finish_pgbench(child, target.name)?;
            if let (Some(pid), Some(before)) = (target.pid, before) {
                let transactions = (run.tps * f64::from(secs)).max(1.0);
                samples[t].1.push((cpu_us(pid)? - before) / transactions);
            }
            eprintln!(
                "{workload:?} round {round} {}: {:.0} tps",
                target.name, run.tps
            );
            samples[t].0.push(run.tps);
        }
    }
    Ok(samples)
}

/// Median (min–max).
fn spread(v: &[f64], digits: usize) -> String {
    if v.is_empty() {
        return "—".into();
    }
    let lo = v.iter().copied().fold(f64::MAX, f64::min);
    let hi = v.iter().copied().fold(f64::MIN, f64::max);
    format!(
        "{:.digits$} ({lo:.digits$}–{hi:.digits$})",
        median(v.to_vec())
    )
}

fn print_table(
    targets: &[Target],
    results: &[(&str, Vec<Samples>)],
    clients: u32,
    secs: u32,
    rounds: u32,
    scale: u32,
) {
    println!();
    println!("pgbench -c {clients} -j 2, {secs} s, scale {scale}; median (min–max) of {rounds} interleaved rounds; the proxy's own CPU (user + system) per transaction:");
    println!();
    println!("| workload | target | TPS | proxy CPU µs/tx |");
    println!("|---|---|---|---|");
    for (workload, samples) in results {
        for (target, (tps, cpu)) in targets.iter().zip(samples) {
            println!(
                "| {workload} | {} | {} | {} |",
                target.name,
                spread(tps, 0),
                spread(cpu, 1)
            );
        }
    }
}
