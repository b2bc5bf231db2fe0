//! The demo's migration scenario, measured against the classic method in
//! the same run: the rename `pgbench_accounts.abalance → balance` and the
//! type change `pgbench_tellers.tbalance` integer → bigint (`tbalance_big`)
//! while pgbench writes, three ways, each on a fresh `pgbench -i` database:
//!
//! - **pgshift**: four pgbench groups through pgshift — stock tpcb (old
//!   shape) and the new-shape script, each in `-M prepared` and `-M
//!   simple` — the whole time; pgshift runs expand → backfill → validate →
//!   switch-reads → contract from its admin port.
//! - **classic, through pgshift** (no migration configured) and **classic,
//!   direct** to Postgres: the method of the articles — `ADD COLUMN` under
//!   `lock_timeout` with retries, a sync trigger in both directions, a
//!   batched backfill (keys per batch as pgshift's, one transaction each), a
//!   parity count, then the application switches itself to the new columns
//!   (the old-shape groups are replaced by new-shape ones), then the
//!   trigger and the old columns are dropped. Same client count.
//!
//! Each phase is a load window of `PGSHIFT_BENCH_SECS` (default 10) with
//! the step run at its start (the backfill: windows until it is done);
//! TPS and p99 come from pgbench's per-transaction logs. The baseline is
//! the classic run through pgshift before its migration starts: pgshift
//! with no migration. Every window must end with zero failed transactions
//! and every method with the tpcb invariant exact on the final columns.
//! Run: `cargo bench --bench scenario_compare` (`PGSHIFT_BENCH_SCALE`,
//! default 10; `PGSHIFT_BENCH_CLIENTS` per group, default 2;
//! `PGSHIFT_BENCH_BATCH` keys per backfill batch for both methods, default
//! 5000; `PGSHIFT_BENCH_PAUSE_MS` between batches for both methods, and
//! between pgshift's parity-check ranges, default 150; `PGSHIFT_BENCH_TARGET_MS`:
//! pgshift's time-targeted batches).

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgshift::cluster::{free_port, Cluster, ClusterOptions, SUPERUSER};
use serde_json::{json, Value};
use tokio::runtime::Runtime;

mod common;
use common::{env_num, finish_pgbench, pgbench_init, spawn_pgbench, start_pgshift, Server};

/// The phases every method goes through, in order.
const PHASES: [&str; 7] = [
    "no migration yet",
    "expand",
    "backfill",
    "validate",
    "reads on new",
    "contract",
    "contracted",
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Pgshift,
    ClassicViaPgshift,
    ClassicDirect,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Pgshift => "pgshift",
            Method::ClassicViaPgshift => "classic via pgshift",
            Method::ClassicDirect => "classic direct",
        }
    }

    fn database(self) -> &'static str {
        match self {
            Method::Pgshift => "shift",
            Method::ClassicViaPgshift => "classic_proxy",
            Method::ClassicDirect => "classic_direct",
        }
    }
}

/// One phase of one method: transactions, seconds of load, latencies.
#[derive(Default)]
struct PhaseLoad {
    transactions: u64,
    seconds: f64,
    latencies_us: Vec<u64>,
}

impl PhaseLoad {
    /// Pools another round's measurements into this one.
    fn add(&mut self, other: PhaseLoad) {
        self.transactions += other.transactions;
        self.seconds += other.seconds;
        self.latencies_us.extend(other.latencies_us);
    }

    fn tps(&self) -> f64 {
        self.transactions as f64 / self.seconds.max(1e-9)
    }

    fn p99_ms(&mut self) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let k = (self.latencies_us.len() * 99 / 100).min(self.latencies_us.len() - 1);
        self.latencies_us[k] as f64 / 1000.0
    }
}

/// What one method measured.
struct Outcome {
    phases: Vec<PhaseLoad>,
    /// pgshift with no migration on the same database, just before
    /// (measured for the pgshift method only).
    baseline: PhaseLoad,
    /// Seconds the migration's own work took (the steps and the backfill).
    work_secs: f64,
    backfill_secs: f64,
}

/// Where the load goes and with what scripts.
struct Load<'a> {
    pgbench: PathBuf,
    port: u16,
    database: &'a str,
    clients: u32,
    secs: u32,
    /// The tables' scale, for the new-shape script's `:scale` (pgbench
    /// reads it from the tables only for its built-in scripts).
    scale: String,
    dir: PathBuf,
    new_shape: PathBuf,
}

impl Load<'_> {
    /// Starts one load window: the old-shape and/or new-shape groups, each
    /// in `-M prepared` and `-M simple`, `clients` each (doubled when only
    /// one shape runs, so every window has the same client count).
    fn start(&self, old: bool, new: bool, secs: u32, tag: &str) -> Result<Window> {
        let clients = if old && new {
            self.clients
        } else {
            self.clients * 2
        };
        let (clients, secs_arg) = (clients.to_string(), secs.to_string());
        let new_shape = self.new_shape.display().to_string();
        let mut children = Vec::new();
        for (shape, script) in [(old, None), (new, Some(new_shape.as_str()))] {
            if !shape {
                continue;
            }
            for mode in ["prepared", "simple"] {
                let prefix = self
                    .dir
                    .join(format!("{tag}-{}-{mode}", script.map_or("old", |_| "new")))
                    .display()
                    .to_string();
                let mut args = vec![
                    "-n",
                    "-c",
                    &clients,
                    "-j",
                    "1",
                    "-T",
                    &secs_arg,
                    "-M",
                    mode,
                    "-l",
                    "--log-prefix",
                    &prefix,
                ];
                if let Some(script) = script {
                    args.extend(["-f", script, "-s", &self.scale]);
                }
                children.push(spawn_pgbench(
                    &self.pgbench,
                    SUPERUSER,
                    self.port,
                    self.database,
                    &args,
                )?);
            }
        }
        Ok(Window {
            children,
            tag: tag.to_string(),
            secs,
        })
    }

    /// Waits for a window's groups (failed transactions are an error) and
    /// adds their transactions to `into`.
    fn finish(&self, window: Window, into: &mut PhaseLoad) -> Result<()> {
        let Window {
            children,
            tag,
            secs,
        } = window;
        for child in children {
            finish_pgbench(child, &tag)?;
        }
        into.seconds += f64::from(secs);
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.starts_with(&format!("{tag}-")) {
                continue;
            }
            for line in std::fs::read_to_string(&path)?.lines() {
                if let Some(us) = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                    into.transactions += 1;
                    into.latencies_us.push(us);
                }
            }
            std::fs::remove_file(&path)?;
        }
        Ok(())
    }

    fn backfill_window(&self) -> u32 {
        (self.secs / 2).max(2)
    }
}

/// A load window under way: its pgbench groups, the tag of their logs
/// and its length.
struct Window {
    children: Vec<Child>,
    tag: String,
    secs: u32,
}

/// The steps of a migration, one implementation per method.
trait Steps {
    fn expand(&mut self, rt: &Runtime) -> Result<()>;
    fn start_backfill(&mut self, rt: &Runtime) -> Result<()>;
    /// Runs (part of) the backfill; true when it is done.
    fn backfill_done(&mut self, rt: &Runtime) -> Result<bool>;
    fn validate(&mut self, rt: &Runtime) -> Result<()>;
    fn switch_reads(&mut self, rt: &Runtime) -> Result<()>;
    fn contract(&mut self, rt: &Runtime) -> Result<()>;
    /// Whether the old-shape groups go on after the read switch.
    fn old_shape_after_switch(&self) -> bool;
    /// Whether the new-shape groups run before the read switch.
    fn new_shape_before_switch(&self) -> bool;
    /// After the load: whatever ends the migration (not measured).
    fn complete(&mut self, _rt: &Runtime) -> Result<()> {
        Ok(())
    }
}

/// pgshift's lifecycle, driven from its admin port.
struct PgshiftSteps {
    admin: String,
    batch: u32,
    pause_ms: u32,
    target_ms: u32,
}

const IDS: [&str; 2] = ["accounts_balance", "tellers_bigint"];

impl PgshiftSteps {
    fn act(&self, rt: &Runtime, action: &str, body: Value) -> Result<()> {
        for id in IDS {
            let path = format!("/migrations/{id}/{action}");
            let (code, answer) = rt
                .block_on(pgshift::admin::request(
                    &self.admin,
                    "POST",
                    &path,
                    Some(&body),
                    None,
                ))
                .map_err(anyhow::Error::msg)?;
            if !(200..300).contains(&code) {
                bail!("POST {path}: HTTP {code}: {answer}");
            }
        }
        Ok(())
    }

    fn phases(&self, rt: &Runtime) -> Result<Vec<String>> {
        let (_, status) = rt
            .block_on(pgshift::admin::request(
                &self.admin,
                "GET",
                "/status",
                None,
                None,
            ))
            .map_err(anyhow::Error::msg)?;
        Ok(status["migrations"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| m["phase"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Steps for PgshiftSteps {
    fn expand(&mut self, rt: &Runtime) -> Result<()> {
        self.act(rt, "expand", Value::Null)
    }
    fn start_backfill(&mut self, rt: &Runtime) -> Result<()> {
        let body = json!({
            "batch_size": self.batch,
            "batch_pause_ms": self.pause_ms,
            "batch_target_ms": self.target_ms,
        });
        self.act(rt, "backfill", body)
    }
    fn backfill_done(&mut self, rt: &Runtime) -> Result<bool> {
        // pgshift backfills on its own: look every 200 ms (as the demo
        // does), not in a busy loop that would take CPU from the load.
        std::thread::sleep(Duration::from_millis(200));
        Ok(self.phases(rt)?.iter().all(|p| p == "backfilled"))
    }
    fn validate(&mut self, rt: &Runtime) -> Result<()> {
        self.act(rt, "validate", Value::Null)
    }
    fn switch_reads(&mut self, rt: &Runtime) -> Result<()> {
        self.act(rt, "switch-reads", json!({ "to": "new" }))
    }
    fn contract(&mut self, rt: &Runtime) -> Result<()> {
        // Old-shape clients still run: pgshift serves them from the new
        // columns, so the contract goes ahead (forced).
        self.act(rt, "contract", json!({ "force": true }))
    }
    fn old_shape_after_switch(&self) -> bool {
        true
    }
    fn new_shape_before_switch(&self) -> bool {
        true
    }
    fn complete(&mut self, rt: &Runtime) -> Result<()> {
        self.act(rt, "complete", Value::Null)
    }
}

/// The classic method, over a direct connection.
struct ClassicSteps {
    client: tokio_postgres::Client,
    batch: i64,
    pause: Duration,
    next_aid: i64,
    max_aid: i64,
}

const CLASSIC_EXPAND: [&str; 4] = [
    "ALTER TABLE pgbench_accounts ADD COLUMN balance integer",
    "ALTER TABLE pgbench_tellers ADD COLUMN tbalance_big bigint",
    "CREATE TRIGGER classic_sync BEFORE INSERT OR UPDATE ON pgbench_accounts
       FOR EACH ROW EXECUTE FUNCTION classic_sync_accounts()",
    "CREATE TRIGGER classic_sync BEFORE INSERT OR UPDATE ON pgbench_tellers
       FOR EACH ROW EXECUTE FUNCTION classic_sync_tellers()",
];

/// The sync triggers: a write to the new column (the switched
/// application) is copied back to the old one, any other write forward.
const CLASSIC_FUNCTIONS: &str = "
CREATE FUNCTION classic_sync_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND NEW.balance IS DISTINCT FROM OLD.balance
     AND NEW.abalance IS NOT DISTINCT FROM OLD.abalance THEN
    NEW.abalance := NEW.balance;
  ELSE
    NEW.balance := NEW.abalance;
  END IF;
  RETURN NEW;
END $$;
CREATE FUNCTION classic_sync_tellers() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND NEW.tbalance_big IS DISTINCT FROM OLD.tbalance_big
     AND NEW.tbalance IS NOT DISTINCT FROM OLD.tbalance THEN
    NEW.tbalance := NEW.tbalance_big::integer;
  ELSE
    NEW.tbalance_big := NEW.tbalance::bigint;
  END IF;
  RETURN NEW;
END $$;";

const CLASSIC_CONTRACT: [&str; 4] = [
    "DROP TRIGGER classic_sync ON pgbench_accounts",
    "DROP TRIGGER classic_sync ON pgbench_tellers",
    "ALTER TABLE pgbench_accounts DROP COLUMN abalance",
    "ALTER TABLE pgbench_tellers DROP COLUMN tbalance",
];

impl ClassicSteps {
    /// DDL under a 1 s lock_timeout, retried (as the articles advise) so a
    /// waiting ALTER never queues the application for long.
    async fn ddl(&self, sql: &str) -> Result<()> {
        for attempt in 0..60 {
            match self.client.batch_execute(sql).await {
                Ok(()) => return Ok(()),
                Err(e) if e.code().is_some_and(|c| c.code() == "55P03") => {
                    tokio::time::sleep(Duration::from_millis(100 + 50 * attempt)).await
                }
                Err(e) => return Err(e).with_context(|| sql.to_string()),
            }
        }
        bail!("{sql}: lock not obtained in 60 attempts")
    }
}

impl Steps for ClassicSteps {
    fn expand(&mut self, rt: &Runtime) -> Result<()> {
        rt.block_on(async {
            self.client.batch_execute("SET lock_timeout = '1s'").await?;
            self.client.batch_execute(CLASSIC_FUNCTIONS).await?;
            for sql in CLASSIC_EXPAND {
                self.ddl(sql).await?;
            }
            Ok(())
        })
    }
    fn start_backfill(&mut self, rt: &Runtime) -> Result<()> {
        let row = rt.block_on(
            self.client
                .query_one("SELECT max(aid)::int8 FROM pgbench_accounts", &[]),
        )?;
        self.max_aid = row.get(0);
        self.next_aid = 0;
        rt.block_on(self.client.batch_execute(
            "UPDATE pgbench_tellers SET tbalance_big = tbalance WHERE tbalance_big IS DISTINCT FROM tbalance",
        ))?;
        Ok(())
    }
    fn backfill_done(&mut self, rt: &Runtime) -> Result<bool> {
        // Batches for about a quarter of a second, then back to the caller.
        let until = Instant::now() + Duration::from_millis(250);
        rt.block_on(async {
            while self.next_aid < self.max_aid && Instant::now() < until {
                let to = self.next_aid + self.batch;
                self.client
                    .execute(
                        "UPDATE pgbench_accounts SET balance = abalance
                          WHERE aid > $1 AND aid <= $2 AND balance IS DISTINCT FROM abalance",
                        &[&(self.next_aid as i32), &(to as i32)],
                    )
                    .await?;
                self.next_aid = to;
                tokio::time::sleep(self.pause).await;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        Ok(self.next_aid >= self.max_aid)
    }
    fn validate(&mut self, rt: &Runtime) -> Result<()> {
        let row = rt.block_on(self.client.query_one(
            "SELECT (SELECT count(*) FROM pgbench_accounts WHERE balance IS DISTINCT FROM abalance)
                  + (SELECT count(*) FROM pgbench_tellers WHERE tbalance_big IS DISTINCT FROM tbalance)",
            &[],
        ))?;
        let mismatches: i64 = row.get(0);
        if mismatches != 0 {
            bail!("classic parity check: {mismatches} mismatches");
        }
        Ok(())
    }
    fn switch_reads(&mut self, _rt: &Runtime) -> Result<()> {
        // The application is redeployed on the new columns: the load
        // windows from here on run the new-shape groups only.
        Ok(())
    }
    fn contract(&mut self, rt: &Runtime) -> Result<()> {
        rt.block_on(async {
            for sql in CLASSIC_CONTRACT {
                self.ddl(sql).await?;
            }
            Ok(())
        })
    }
    fn old_shape_after_switch(&self) -> bool {
        false
    }
    fn new_shape_before_switch(&self) -> bool {
        false
    }
}

/// Runs the phases of one method under load.
fn run_method(load: &Load, steps: &mut dyn Steps, rt: &Runtime) -> Result<Outcome> {
    let mut phases: Vec<PhaseLoad> = PHASES.iter().map(|_| PhaseLoad::default()).collect();
    let mut work = Duration::ZERO;
    let before_switch = (true, steps.new_shape_before_switch());
    let after_switch = (steps.old_shape_after_switch(), true);
    // A window of `phase` with `step` run at its start.
    let mut window = |k: usize,
                      shapes: (bool, bool),
                      step: &mut dyn FnMut() -> Result<()>,
                      phases: &mut Vec<PhaseLoad>|
     -> Result<()> {
        let tag = PHASES[k].replace(' ', "_");
        let running = load.start(shapes.0, shapes.1, load.secs, &tag)?;
        let t = Instant::now();
        step()?;
        work += t.elapsed();
        load.finish(running, &mut phases[k])
    };
    window(0, before_switch, &mut || Ok(()), &mut phases)?;
    window(1, before_switch, &mut || steps.expand(rt), &mut phases)?;
    // The backfill: short windows until it is done.
    let started = Instant::now();
    steps.start_backfill(rt)?;
    let mut round = 0;
    loop {
        let tag = format!("backfill{round}");
        let running = load.start(
            before_switch.0,
            before_switch.1,
            load.backfill_window(),
            &tag,
        )?;
        let window_end = Instant::now() + Duration::from_secs(u64::from(load.backfill_window()));
        let mut done = false;
        while Instant::now() < window_end {
            if !done {
                done = steps.backfill_done(rt)?;
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
            if done && round > 0 {
                break;
            }
        }
        load.finish(running, &mut phases[2])?;
        round += 1;
        if done {
            break;
        }
    }
    let backfill_secs = started.elapsed().as_secs_f64();
    window(3, before_switch, &mut || steps.validate(rt), &mut phases)?;
    window(4, after_switch, &mut || steps.switch_reads(rt), &mut phases)?;
    window(5, after_switch, &mut || steps.contract(rt), &mut phases)?;
    window(6, after_switch, &mut || Ok(()), &mut phases)?;
    Ok(Outcome {
        phases,
        baseline: PhaseLoad::default(),
        work_secs: work.as_secs_f64() + backfill_secs,
        backfill_secs,
    })
}

/// The tpcb invariant on the final columns: every committed write landed.
fn check_invariant(cluster: &Cluster, db: &str) -> Result<()> {
    let sums = cluster.psql(
        db,
        "select (select sum(delta) from pgbench_history)::int8, (select sum(bbalance) from pgbench_branches)::int8,
                (select sum(tbalance_big) from pgbench_tellers)::int8, (select sum(balance) from pgbench_accounts)::int8",
    )?;
    let values: Vec<&str> = sums.trim().split('|').collect();
    if values.len() != 4 || values.iter().any(|v| *v != values[0]) {
        bail!("{db}: the tpcb invariant is broken: {sums}");
    }
    eprintln!("{db}: invariant holds ({})", values.join(" = "));
    Ok(())
}

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("scenario_compare: run with `cargo bench --bench scenario_compare`");
        return Ok(());
    }
    let scale = env_num("PGSHIFT_BENCH_SCALE", 10);
    let secs = env_num("PGSHIFT_BENCH_SECS", 10);
    let clients = env_num("PGSHIFT_BENCH_CLIENTS", 2);
    let batch = env_num("PGSHIFT_BENCH_BATCH", 5000);
    let pause_ms = env_num("PGSHIFT_BENCH_PAUSE_MS", 150);
    let target_ms = env_num("PGSHIFT_BENCH_TARGET_MS", 0);
    let settings = Settings {
        scale,
        clients,
        secs,
        batch,
        pause_ms,
        target_ms,
    };
    let cluster = Cluster::start(&ClusterOptions::default())?;
    let dir = cluster.root().join("scenario-bench");
    std::fs::create_dir_all(&dir)?;
    let new_shape = dir.join("new_shape.sql");
    std::fs::write(&new_shape, pgshift::scenario::NEW_SHAPE)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rounds = env_num("PGSHIFT_BENCH_ROUNDS", 1).max(1);
    let mut outcomes: Vec<(Method, Outcome)> = Vec::new();
    for round in 0..rounds {
        for method in [
            Method::ClassicViaPgshift,
            Method::ClassicDirect,
            Method::Pgshift,
        ] {
            let db = format!("{}_{round}", method.database());
            eprintln!("round {round}:");
            let outcome = measure(&cluster, &rt, method, &db, &dir, &new_shape, &settings)?;
            match outcomes.iter_mut().find(|(m, _)| *m == method) {
                Some((_, pooled)) => {
                    for (p, o) in pooled.phases.iter_mut().zip(outcome.phases) {
                        p.add(o);
                    }
                    pooled.baseline.add(outcome.baseline);
                    pooled.work_secs += outcome.work_secs;
                    pooled.backfill_secs += outcome.backfill_secs;
                }
                None => outcomes.push((method, outcome)),
            }
            cluster.psql("postgres", &format!("drop database {db} with (force)"))?;
        }
    }
    for (_, o) in outcomes.iter_mut() {
        o.work_secs /= f64::from(rounds);
        o.backfill_secs /= f64::from(rounds);
    }
    print_table(&settings, rounds, &mut outcomes);
    Ok(())
}

/// The knobs of a run.
struct Settings {
    scale: u32,
    clients: u32,
    secs: u32,
    batch: u32,
    pause_ms: u32,
    target_ms: u32,
}

/// One method on a fresh database `db`: its phases under load, and for
/// pgshift a no-migration window through a plain pgshift just before.
fn measure(
    cluster: &Cluster,
    rt: &Runtime,
    method: Method,
    db: &str,
    dir: &std::path::Path,
    new_shape: &std::path::Path,
    settings: &Settings,
) -> Result<Outcome> {
    pgbench_init(cluster, db, settings.scale)?;
    cluster.psql(db, "vacuum analyze")?;
    let load_on = |port: u16| Load {
        pgbench: cluster.binaries().tool("pgbench"),
        port,
        database: db,
        clients: settings.clients,
        secs: settings.secs,
        scale: settings.scale.to_string(),
        dir: dir.to_path_buf(),
        new_shape: new_shape.to_path_buf(),
    };
    let mut baseline = PhaseLoad::default();
    let (port, _server, mut steps): (u16, Option<Server>, Box<dyn Steps>) = match method {
        Method::Pgshift => {
            // The baseline, adjacent in time: the same database through a
            // pgshift with no migration, the same client count.
            let plain_port = free_port()?;
            let plain = start_pgshift(cluster.port(), plain_port, 200, None)?;
            let load = load_on(plain_port);
            let running = load.start(true, false, settings.secs, "baseline")?;
            load.finish(running, &mut baseline)?;
            drop(plain);
            let admin_port = free_port()?;
            let config = dir.join("pgshift.toml");
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
        Method::ClassicViaPgshift | Method::ClassicDirect => {
            let client = rt.block_on(connect(cluster, db))?;
            let steps = Box::new(ClassicSteps {
                client,
                batch: i64::from(settings.batch),
                pause: Duration::from_millis(u64::from(settings.pause_ms)),
                next_aid: 0,
                max_aid: 0,
            });
            if method == Method::ClassicDirect {
                (cluster.port(), None, steps)
            } else {
                let port = free_port()?;
                let server = start_pgshift(cluster.port(), port, 200, None)?;
                (port, Some(server), steps)
            }
        }
    };
    eprintln!("{}: running the scenario…", method.name());
    let mut outcome = run_method(&load_on(port), steps.as_mut(), rt)?;
    outcome.baseline = baseline;
    steps.complete(rt)?;
    check_invariant(cluster, db)?;
    Ok(outcome)
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

fn wait_for_admin(rt: &Runtime, admin: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = rt.block_on(pgshift::admin::request(admin, "GET", "/status", None, None));
        if matches!(answer, Ok((200, _))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the admin port {admin} never answered");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn connect(cluster: &Cluster, db: &str) -> Result<tokio_postgres::Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(cluster.port())
        .user(SUPERUSER)
        .dbname(db);
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn print_table(settings: &Settings, rounds: u32, outcomes: &mut [(Method, Outcome)]) {
    let Settings {
        scale,
        clients,
        secs,
        batch,
        pause_ms,
        target_ms,
    } = *settings;
    let baseline = outcomes
        .iter()
        .find(|(m, _)| *m == Method::Pgshift)
        .map_or(f64::NAN, |(_, o)| o.baseline.tps());
    println!();
    println!(
        "migration scenario at scale {scale}, {} clients in 4 groups, {secs} s per phase window, {rounds} round(s) pooled, backfill batches of {batch} keys with {pause_ms} ms pauses (pgshift's target {target_ms} ms, 0: fixed); baseline: pgshift with no migration on the same database just before = {baseline:.0} TPS",
        clients * 4
    );
    println!();
    let mut header = "| phase |".to_string();
    let mut rule = "|---|".to_string();
    for (m, _) in outcomes.iter() {
        header += &format!(" {} TPS | p99 ms |", m.name());
        rule += "---|---|";
    }
    header += " pgshift × no migration | pgshift × classic via pgshift |";
    rule += "---|---|";
    println!("{header}");
    println!("{rule}");
    for (k, phase) in PHASES.iter().enumerate() {
        let mut row = format!("| {phase} |");
        let mut tps_of = |method: Method| {
            outcomes
                .iter_mut()
                .find(|(m, _)| *m == method)
                .map_or(f64::NAN, |(_, o)| o.phases[k].tps())
        };
        let shift = tps_of(Method::Pgshift);
        let classic = tps_of(Method::ClassicViaPgshift);
        for (_, o) in outcomes.iter_mut() {
            let p = &mut o.phases[k];
            row += &format!(" {:.0} | {:.1} |", p.tps(), p.p99_ms());
        }
        row += &format!(" {:.2}× | {:.2}× |", shift / baseline, shift / classic);
        println!("{row}");
    }
    let mut row = "| migration work (s): backfill / all steps |".to_string();
    for (_, o) in outcomes.iter() {
        row += &format!(" {:.1} / {:.1} | |", o.backfill_secs, o.work_secs);
    }
    println!("{row} | |");
}
