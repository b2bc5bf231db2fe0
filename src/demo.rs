//! `pgshift demo`: the embedded default. Starts a throwaway local Postgres,
//! pgshift in front of it, shows how to connect, runs a short pgbench through
//! the proxy, then keeps serving until Ctrl-C and removes the cluster.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::oneshot;

use crate::cluster::{Cluster, ClusterOptions, SUPERUSER};
use crate::config::Config;
use crate::proxy::Proxy;
use crate::rewrite::PassThrough;

/// What `pgshift demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the proxy listens; if taken, a free port is used instead.
    pub listen: SocketAddr,
    /// pgbench scale factor.
    pub scale: u32,
    /// pgbench clients.
    pub clients: u32,
    /// Seconds of pgbench.
    pub duration_secs: u32,
    /// Stop after the pgbench run instead of serving until Ctrl-C.
    pub no_wait: bool,
}

/// Runs the demo; an error says what went wrong and what to do about it.
pub async fn run(options: DemoOptions) -> Result<()> {
    println!("pgshift demo: starting a throwaway PostgreSQL cluster…");
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(&ClusterOptions::default()))
        .await
        .context("cluster start-up task")??;
    println!(
        "  PostgreSQL from {} is running on {} (data in {})",
        cluster.binaries().bindir.display(),
        cluster.address(),
        cluster.root().display()
    );

    let mut config = Config {
        upstream: cluster.address().parse()?,
        listen: options.listen,
        ..Config::default()
    };
    let proxy = match Proxy::bind(config.clone(), Arc::new(PassThrough)).await {
        Ok(proxy) => proxy,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            println!(
                "  {} is in use; pgshift takes a free port instead",
                options.listen
            );
            config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            Proxy::bind(config, Arc::new(PassThrough)).await?
        }
        Err(e) => return Err(e).context(format!("binding {}", options.listen)),
    };
    let addr = proxy.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(proxy.run(async {
        let _ = stop_rx.await;
    }));

    println!(
        "  pgshift is listening on {addr}, in front of {}",
        cluster.address()
    );
    println!();
    println!("Connect through pgshift with:");
    println!(
        "  psql \"postgresql://{SUPERUSER}@{}:{}/postgres\"",
        addr.ip(),
        addr.port()
    );
    println!();

    let result = run_pgbench(&cluster, addr, &options).await;
    if result.is_ok() && !options.no_wait {
        println!();
        println!("pgshift keeps serving on {addr}; press Ctrl-C to stop and remove the cluster.");
        crate::telemetry::shutdown_signal().await;
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    drop(cluster);
    println!("pgshift demo: cluster removed.");
    result
}

async fn run_pgbench(cluster: &Cluster, addr: SocketAddr, options: &DemoOptions) -> Result<()> {
    let pgbench = cluster.binaries().tool("pgbench");
    let port = addr.port().to_string();
    let host = addr.ip().to_string();
    let common = ["-h", host.as_str(), "-p", port.as_str(), "-U", SUPERUSER];
    println!(
        "pgbench -i -s {} through pgshift (COPY, DDL, VACUUM)…",
        options.scale
    );
    let init = tokio::process::Command::new(&pgbench)
        .args(common)
        .args(["-i", "-q", "-s", &options.scale.to_string(), "postgres"])
        .output()
        .await
        .with_context(|| format!("running {}", pgbench.display()))?;
    anyhow::ensure!(
        init.status.success(),
        "pgbench -i through pgshift failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    println!(
        "pgbench -c {} -T {} (tpcb-like) through pgshift…",
        options.clients, options.duration_secs
    );
    let bench = tokio::process::Command::new(&pgbench)
        .args(common)
        .args([
            "-c",
            &options.clients.to_string(),
            "-j",
            "2",
            "-T",
            &options.duration_secs.to_string(),
            "postgres",
        ])
        .output()
        .await
        .with_context(|| format!("running {}", pgbench.display()))?;
    let stdout = String::from_utf8_lossy(&bench.stdout);
    for line in stdout.lines().filter(|l| {
        l.starts_with("number of transactions actually processed")
            || l.starts_with("number of failed transactions")
            || l.starts_with("latency average")
            || l.starts_with("tps")
    }) {
        println!("  {line}");
    }
    anyhow::ensure!(
        bench.status.success(),
        "pgbench through pgshift failed: {}",
        String::from_utf8_lossy(&bench.stderr)
    );
    Ok(())
}
