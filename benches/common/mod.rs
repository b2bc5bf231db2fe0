//! What the pgbench benchmarks share: knobs from the environment, child
//! servers killed on drop, starting pgshift, running pgbench and reading
//! its summary and its per-transaction logs, pgshift's admin port, a
//! direct connection, the wall clock.

#![allow(dead_code)] // each bench uses a different subset

pub mod proxies;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::runtime::Runtime;

pub const PGSHIFT: &str = env!("CARGO_BIN_EXE_pgshift");

pub fn env_num(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A child server, killed on drop.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_for_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `pgshift serve` (release build) on `port` in front of `upstream`.
pub fn start_pgshift(
    upstream: u16,
    port: u16,
    max_clients: u32,
    config: Option<&Path>,
) -> Result<Server> {
    let upstream = format!("127.0.0.1:{upstream}");
    start_pgshift_with(&upstream, port, max_clients, config, &[])
}

/// `pgshift serve` on `port` in front of `upstream` (`HOST:PORT` or a
/// socket directory `/DIR:PORT`), with `extra` arguments.
pub fn start_pgshift_with(
    upstream: &str,
    port: u16,
    max_clients: u32,
    config: Option<&Path>,
    extra: &[&str],
) -> Result<Server> {
    let mut cmd = Command::new(PGSHIFT);
    cmd.arg("serve");
    match config {
        Some(config) => cmd.arg("--config").arg(config),
        // No admin port unless a config names one: two benches' proxies
        // would both want the default.
        None if !extra.contains(&"--admin") => cmd.args(["--admin", "off"]),
        None => &mut cmd,
    };
    let child = cmd
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", upstream])
        .args(extra)
        .args(["--max-client-connections", &max_clients.to_string()])
        // PGSHIFT_BENCH_RUST_LOG: pgshift's log filter during a bench
        // (its log goes to the bench's stderr).
        .env(
            "RUST_LOG",
            std::env::var("PGSHIFT_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .spawn()
        .context("starting pgshift")?;
    wait_for_port(port)?;
    Ok(Server(child))
}

/// pgshift in front of `cluster`'s database `db` with its lifecycle (as
/// the superuser) and an admin port, its files in `dir`: (the server, its
/// port, the admin address), the admin port answering.
pub fn start_pgshift_driving(
    cluster: &pgshift::cluster::Cluster,
    rt: &Runtime,
    dir: &Path,
    db: &str,
) -> Result<(Server, u16, String)> {
    let admin_port = pgshift::cluster::free_port()?;
    let config = dir.join("pgshift.toml");
    let user = pgshift::cluster::SUPERUSER;
    std::fs::write(
        &config,
        format!(
            "admin = \"127.0.0.1:{admin_port}\"\n\n[control]\ndatabase = \"{db}\"\nuser = \"{user}\"\n"
        ),
    )?;
    let port = pgshift::cluster::free_port()?;
    let server = start_pgshift(cluster.port(), port, 100, Some(&config))?;
    let addr = format!("127.0.0.1:{admin_port}");
    wait_for_admin(rt, &addr)?;
    Ok((server, port, addr))
}

/// The pgbench arguments of a tpcb-like load (`-c 4 -j 2 -M prepared`)
/// for `secs`, logging each transaction under `prefix`.
pub fn logged_tpcb_args(secs: u32, prefix: &str) -> Vec<String> {
    let secs = secs.to_string();
    [
        "-n",
        "-M",
        "prepared",
        "-c",
        "4",
        "-j",
        "2",
        "-T",
        &secs,
        "-l",
        "--log-prefix",
        prefix,
    ]
    .map(str::to_string)
    .to_vec()
}

/// The summary of one pgbench run.
pub struct Run {
    pub tps: f64,
    pub latency_ms: f64,
}

/// Starts pgbench (`args` then the database name) against `port`.
pub fn spawn_pgbench(
    pgbench: &Path,
    user: &str,
    port: u16,
    database: &str,
    args: &[&str],
) -> Result<Child> {
    spawn_pgbench_at(pgbench, "127.0.0.1", user, port, database, args)
}

/// [`spawn_pgbench`] against `host`: an address, or a socket directory.
pub fn spawn_pgbench_at(
    pgbench: &Path,
    host: &str,
    user: &str,
    port: u16,
    database: &str,
    args: &[&str],
) -> Result<Child> {
    Command::new(pgbench)
        .args(["-h", host, "-p", &port.to_string(), "-U", user])
        .args(args)
        .arg(database)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running pgbench")
}

/// Waits for a pgbench started by [`spawn_pgbench`] and reads its summary;
/// failed transactions are an error.
pub fn finish_pgbench(child: Child, what: &str) -> Result<Run> {
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench {what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |prefix: &str| -> Result<f64> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no {prefix:?} in pgbench output: {stdout}"))
    };
    let failed = field("number of failed transactions: ")?;
    if failed != 0.0 {
        bail!("pgbench {what}: {failed} failed transactions");
    }
    Ok(Run {
        tps: field("tps = ")?,
        latency_ms: field("latency average = ")?,
    })
}

/// `pgbench -i -q -s scale` into a new database `db` of `cluster`.
pub fn pgbench_init(cluster: &pgshift::cluster::Cluster, db: &str, scale: u32) -> Result<()> {
    eprintln!("{db}: pgbench -i -s {scale}…");
    if db != "postgres" {
        cluster.psql("postgres", &format!("create database {db}"))?;
    }
    let init = Command::new(cluster.binaries().tool("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &cluster.port().to_string()])
        .args(["-U", pgshift::cluster::SUPERUSER])
        .args(["-i", "-q", "-s", &scale.to_string(), db])
        .output()
        .context("running pgbench -i")?;
    if !init.status.success() {
        bail!(
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
    }
    Ok(())
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One request to pgshift's admin port at `addr`: (HTTP status, answer).
pub async fn admin_request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    pgshift::admin::request(addr, method, path, body, None)
        .await
        .map_err(anyhow::Error::msg)
}

/// One request to pgshift's admin port at `addr`; an answer other than
/// 2xx is an error.
pub async fn admin(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
    let (code, answer) = admin_request(addr, method, path, body).await?;
    if !(200..300).contains(&code) {
        bail!("{method} {path}: HTTP {code}: {answer}");
    }
    Ok(answer)
}

/// Waits (20 s at most) for pgshift's admin port at `addr` to answer
/// `/status`.
pub fn wait_for_admin(rt: &Runtime, addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = rt.block_on(admin_request(addr, "GET", "/status", None));
        if matches!(answer, Ok((200, _))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the admin port {addr} never answered");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A connection as the superuser to `db` on `port`, its connection task
/// spawned on the current runtime.
pub async fn connect(port: u16, db: &str) -> Result<tokio_postgres::Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(pgshift::cluster::SUPERUSER)
        .dbname(db);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Seconds since the epoch.
pub fn unix_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Microseconds since the epoch.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Every transaction of the pgbench logs in `dir`: (end, UNIX seconds;
/// latency, ms).
pub fn transactions(dir: &Path) -> Result<Vec<(f64, f64)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.starts_with("tx.") {
            continue;
        }
        let text = std::fs::read_to_string(&path).context("reading a pgbench log")?;
        for line in text.lines() {
            // client, transaction, latency µs, script, end s, end µs
            let f: Vec<f64> = line
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            if let [_, _, us, _, s, end_us, ..] = f[..] {
                out.push((s + end_us / 1e6, us / 1e3));
            }
        }
    }
    Ok(out)
}

/// TPS and p99 latency (ms) of the transactions that ended in `window`.
pub fn stats(ends: &[(f64, f64)], window: (f64, f64)) -> (f64, f64) {
    let mut lat: Vec<f64> = ends
        .iter()
        .filter(|(end, _)| *end >= window.0 && *end < window.1)
        .map(|(_, ms)| *ms)
        .collect();
    if lat.is_empty() {
        return (0.0, 0.0);
    }
    lat.sort_by(f64::total_cmp);
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
    (lat.len() as f64 / (window.1 - window.0).max(1e-3), p99)
}
