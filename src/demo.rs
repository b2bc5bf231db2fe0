//! `pgshift demo`: the embedded default. Starts a throwaway local Postgres
//! and pgshift in front of it, shows how to connect, loads the pgbench
//! tables through the proxy, then runs the migration scenario of
//! [`crate::scenario`] (a rename, two type changes — one keeping its name —
//! and an added NOT NULL column under old- and new-shape pgbench load, every check printed),
//! keeps serving until Ctrl-C and removes the cluster. The exit code says whether every check
//! held.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::oneshot;

use crate::cluster::{Cluster, ClusterOptions, SUPERUSER};
use crate::config::{Config, Control};
use crate::lifecycle::Lifecycle;
use crate::proxy::Proxy;
use crate::rewrite::engine::MigrationRewriter;
use crate::rewrite::rules::RulesCell;
use crate::scenario;

/// What `pgshift demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the proxy listens; if taken, a free port is used instead.
    pub listen: SocketAddr,
    /// pgbench scale factor.
    pub scale: u32,
    /// pgbench clients per load group.
    pub clients: u32,
    /// Seconds of load while the migrations run.
    pub duration_secs: u32,
    /// Stop after the pgbench run instead of serving until Ctrl-C.
    pub no_wait: bool,
    /// Serve until Ctrl-C even after a failed check.
    pub keep: bool,
    /// Inject faults while migrating (see [`scenario::Options::faults`]).
    pub faults: bool,
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
        control: Control {
            database: "postgres".into(),
            user: SUPERUSER.into(),
            password: None,
        },
        ..Config::default()
    };
    // No migrations yet: the rules arrive when the lifecycle starts, after
    // the tables exist.
    let rules = Arc::new(RulesCell::new(&[]));
    let rewriter = Arc::new(MigrationRewriter::new(Arc::clone(&rules)));
    let proxy = match Proxy::bind(config.clone(), rewriter.clone()).await {
        Ok(proxy) => proxy,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            println!(
                "  {} is in use; pgshift takes a free port instead",
                options.listen
            );
            config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            Proxy::bind(config.clone(), rewriter).await?
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

    let result = async {
        init_pgbench(&cluster, addr, &options).await?;
        config.migrations = scenario::migrations();
        let lifecycle = Lifecycle::start(config.clone(), Arc::clone(&rules))
            .await
            .context("starting the migration lifecycle")?;
        println!();
        let ok = scenario::run(
            &cluster,
            addr.port(),
            Arc::clone(&lifecycle),
            &scenario::Options {
                scale: options.scale,
                clients: options.clients,
                duration_secs: options.duration_secs,
                faults: options.faults,
            },
        )
        .await?;
        lifecycle.leave().await;
        anyhow::ensure!(ok, "a check of the migration scenario failed");
        Ok(())
    }
    .await;
    if (result.is_ok() || options.keep) && !options.no_wait {
        if let Err(e) = &result {
            println!("pgshift demo: {e:#}");
        }
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

async fn init_pgbench(cluster: &Cluster, addr: SocketAddr, options: &DemoOptions) -> Result<()> {
    let pgbench = cluster.binaries().tool("pgbench");
    let port = addr.port().to_string();
    let host = addr.ip().to_string();
    println!(
        "pgbench -i -s {} through pgshift (COPY, DDL, VACUUM)…",
        options.scale
    );
    let init = tokio::process::Command::new(&pgbench)
        .args(["-h", host.as_str(), "-p", port.as_str(), "-U", SUPERUSER])
        .args(["-i", "-q", "-s", &options.scale.to_string(), "postgres"])
        .output()
        .await
        .with_context(|| format!("running {}", pgbench.display()))?;
    anyhow::ensure!(
        init.status.success(),
        "pgbench -i through pgshift failed: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    // pgbench's balances are nullable; most real columns are not.
    println!("pgbench_accounts.abalance, pgbench_tellers.tbalance and pgbench_branches.bbalance made NOT NULL, pgbench_history given a key…");
    cluster
        .psql(
            "postgres",
            "alter table pgbench_accounts alter column abalance set not null; alter table pgbench_tellers alter column tbalance set not null;
             alter table pgbench_branches alter column bbalance set not null;
             alter table pgbench_history add column hid bigint generated by default as identity primary key",
        )
        .context("making the migrating columns NOT NULL")?;
    Ok(())
}
