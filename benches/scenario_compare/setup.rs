//! Setting up and clearing away: the knobs, the cluster, each round's fresh
//! databases with their servers and steps; and the checks on them — the
//! accounts table's state and the tpcb invariant.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use pgshift::cluster::{free_port, Cluster, ClusterOptions, SUPERUSER};
use tokio::runtime::Runtime;

use crate::common::{connect, env_num, pgbench_init, start_pgshift, wait_for_admin, Server};
use crate::load::Load;
use crate::method::{Method, MethodRun};
use crate::steps::{ClassicSteps, NoSteps, PgshiftSteps, Steps};

/// The knobs of a run.
pub struct Settings {
    pub scale: u32,
    pub clients: u32,
    pub secs: u32,
    pub batch: u32,
    pub pause_ms: u32,
    pub target_ms: u32,
    pub rounds: u32,
    /// Windows of the contracted phase per method.
    pub contracted_windows: u32,
}

impl Settings {
    /// The knobs from their `PGSHIFT_BENCH_*` variables (the bench's
    /// module doc lists them).
    pub fn from_env() -> Settings {
        Settings {
            scale: env_num("PGSHIFT_BENCH_SCALE", 10),
            secs: env_num("PGSHIFT_BENCH_SECS", 10),
            clients: env_num("PGSHIFT_BENCH_CLIENTS", 2),
            batch: env_num("PGSHIFT_BENCH_BATCH", 5000),
            pause_ms: env_num("PGSHIFT_BENCH_PAUSE_MS", 150),
            target_ms: env_num("PGSHIFT_BENCH_TARGET_MS", 0),
            rounds: env_num("PGSHIFT_BENCH_ROUNDS", 1).max(1),
            contracted_windows: env_num("PGSHIFT_BENCH_CONTRACTED_WINDOWS", 1).max(1),
        }
    }
}

/// What every round shares: the runtime the steps run on, the cluster,
/// the directory of pgbench's logs with the new-shape script, the knobs.
pub struct Bench {
    /// Before the cluster: dropped first (its tasks hold the classic
    /// method's connections to the cluster).
    pub rt: Runtime,
    pub cluster: Cluster,
    pub dir: PathBuf,
    pub new_shape: PathBuf,
    pub settings: Settings,
    /// Extra server settings were given: the server log's lock waits and
    /// slow statements are printed at the end.
    pub report_server_log: bool,
}

impl Bench {
    /// Starts the cluster and writes the new-shape script.
    pub fn start(settings: Settings) -> Result<Bench> {
        // PGSHIFT_BENCH_PG_SETTINGS: extra postgresql.conf settings for the
        // bench's cluster, `name=value,…` (e.g. `log_lock_waits=on`); with
        // any, the server log's lock waits and slow statements are printed at
        // the end.
        let pg_settings: Vec<(String, String)> = std::env::var("PGSHIFT_BENCH_PG_SETTINGS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let report_server_log = !pg_settings.is_empty();
        let cluster = Cluster::start(&ClusterOptions {
            settings: pg_settings,
            ..ClusterOptions::default()
        })?;
        let dir = cluster.root().join("scenario-bench");
        std::fs::create_dir_all(&dir)?;
        let new_shape = dir.join("new_shape.sql");
        std::fs::write(&new_shape, pgshift::scenario::NEW_SHAPE)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Bench {
            rt,
            cluster,
            dir,
            new_shape,
            settings,
            report_server_log,
        })
    }
}

/// Round `round`'s runs, in its order of the methods, each on a fresh
/// database, checkpointed.
pub fn prepare_round(bench: &Bench, methods: &[Method], round: u32) -> Result<Vec<MethodRun>> {
    // Each round starts each phase with another method, so none always
    // goes first (or last).
    let mut order = methods.to_vec();
    order.rotate_left(round as usize % methods.len());
    eprintln!("round {round}:");
    let mut runs = Vec::new();
    for &method in &order {
        let db = format!("{}_{round}", method.database());
        runs.push(prepare(bench, method, db)?);
    }
    // Every database starts vacuumed (at prepare) and with no dirty
    // pages of the set-up left to the checkpointer.
    bench.cluster.psql("postgres", "checkpoint")?;
    Ok(runs)
}

/// A fresh database `db` for `method` (`pgbench -i`, vacuumed), its
/// server (pgshift with the migrations, or a plain one, or none) and its
/// steps, ready for its first window.
fn prepare(bench: &Bench, method: Method, db: String) -> Result<MethodRun> {
    let (cluster, settings) = (&bench.cluster, &bench.settings);
    pgbench_init(cluster, &db, settings.scale)?;
    cluster.psql(&db, "vacuum analyze")?;
    let (port, server, steps) = serve(bench, method, &db)?;
    let load = Load {
        pgbench: cluster.binaries().tool("pgbench"),
        port,
        database: db.clone(),
        clients: settings.clients,
        secs: settings.secs,
        scale: settings.scale.to_string(),
        dir: bench.dir.clone(),
        new_shape: bench.new_shape.clone(),
    };
    Ok(MethodRun::new(method, db, load, steps, server))
}

/// What `method` puts in front of the cluster for `db`: the port its load
/// goes to, its server (pgshift with the migrations, or a plain one, or
/// none) and its steps.
fn serve(bench: &Bench, method: Method, db: &str) -> Result<(u16, Option<Server>, Box<dyn Steps>)> {
    let (cluster, rt, settings) = (&bench.cluster, &bench.rt, &bench.settings);
    let served: (u16, Option<Server>, Box<dyn Steps>) = match method {
        Method::Pgshift => {
            let admin_port = free_port()?;
            let config = bench.dir.join(format!("pgshift-{db}.toml"));
            std::fs::write(&config, pgshift_config(admin_port, db))?;
            let port = free_port()?;
            let server = start_pgshift(cluster.port(), port, 200, Some(&config))?;
            let admin = format!("127.0.0.1:{admin_port}");
            wait_for_admin(rt, &admin)?;
            let steps = PgshiftSteps {
                admin,
                batch: settings.batch,
                pause_ms: settings.pause_ms,
                target_ms: settings.target_ms,
            };
            (port, Some(server), Box::new(steps))
        }
        Method::NoMigration => {
            let port = free_port()?;
            let server = start_pgshift(cluster.port(), port, 200, None)?;
            (port, Some(server), Box::new(NoSteps))
        }
        Method::ClassicViaPgshift | Method::ClassicDirect => {
            let client = rt.block_on(connect(cluster.port(), db))?;
            let steps = Box::new(ClassicSteps::new(client, settings.batch, settings.pause_ms));
            if method == Method::ClassicDirect {
                (cluster.port(), None, steps)
            } else {
                let port = free_port()?;
                let server = start_pgshift(cluster.port(), port, 200, None)?;
                (port, Some(server), steps)
            }
        }
    };
    Ok(served)
}

fn pgshift_config(admin_port: u16, db: &str) -> String {
    format!(
        r#"admin = "127.0.0.1:{admin_port}"

[control]
database = "{db}"
user = "{SUPERUSER}"

[[migrations]]
id = "accounts_balance"
table = "pgbench_accounts"
from = "abalance"
to = "balance"

[[migrations]]
id = "tellers_bigint"
table = "pgbench_tellers"
from = "tbalance"
to = "tbalance_big"
type = "bigint"
up = "tbalance::bigint"
down = "tbalance_big::integer"
"#
    )
}

/// Clears `run` away once measured: its server stopped, then its database
/// dropped.
pub fn discard(cluster: &Cluster, run: MethodRun) -> Result<()> {
    drop(run._server);
    cluster.psql(
        "postgres",
        &format!("drop database {} with (force)", run.db),
    )?;
    Ok(())
}

/// `pgbench_accounts` as the statistics collector sees it: what a gap in
/// the contracted phase could come from besides the proxy (a bigger
/// table, dead tuples, fewer HOT updates, autovacuum at work).
pub struct TableState {
    bytes: i64,
    dead: i64,
    updates: i64,
    hot_updates: i64,
    autovacuums: i64,
}

impl TableState {
    pub fn read(cluster: &Cluster, db: &str) -> Result<TableState> {
        let row = cluster.psql(
            db,
            "select pg_total_relation_size(relid), n_dead_tup, n_tup_upd, n_tup_hot_upd, autovacuum_count
             from pg_stat_user_tables where relname = 'pgbench_accounts'",
        )?;
        let v: Vec<i64> = row
            .trim()
            .split('|')
            .map(|x| x.parse().context("pg_stat_user_tables"))
            .collect::<Result<_>>()?;
        let [bytes, dead, updates, hot_updates, autovacuums] = v[..] else {
            bail!("pg_stat_user_tables: unexpected row {row:?}");
        };
        Ok(TableState {
            bytes,
            dead,
            updates,
            hot_updates,
            autovacuums,
        })
    }

    pub fn describe_since(&self, before: &TableState) -> String {
        let updates = self.updates - before.updates;
        let hot = self.hot_updates - before.hot_updates;
        format!(
            "{:.0} MB (was {:.0} MB), {} dead tuples (were {}), {:.0} % of its {} updates HOT, {} autovacuum run(s)",
            self.bytes as f64 / 1e6,
            before.bytes as f64 / 1e6,
            self.dead,
            before.dead,
            100.0 * hot as f64 / updates.max(1) as f64,
            updates,
            self.autovacuums - before.autovacuums
        )
    }
}

/// The tpcb invariant on the final columns: every committed write landed.
pub fn check_invariant(
    cluster: &Cluster,
    db: &str,
    (accounts, tellers): (&str, &str),
) -> Result<()> {
    let sums = cluster.psql(
        db,
        &format!("select (select sum(delta) from pgbench_history)::int8, (select sum(bbalance) from pgbench_branches)::int8,
                (select sum({tellers}) from pgbench_tellers)::int8, (select sum({accounts}) from pgbench_accounts)::int8"),
    )?;
    let values: Vec<&str> = sums.trim().split('|').collect();
    if values.len() != 4 || values.iter().any(|v| *v != values[0]) {
        bail!("{db}: the tpcb invariant is broken: {sums}");
    }
    eprintln!("{db}: invariant holds ({})", values.join(" = "));
    Ok(())
}
