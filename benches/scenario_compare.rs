//! The demo's migration scenario, measured against the classic method in
//! the same run: the rename `pgbench_accounts.abalance → balance` and the
//! type change `pgbench_tellers.tbalance` integer → bigint (`tbalance_big`)
//! while pgbench writes, three ways, each on a fresh `pgbench -i` database
//! in the same cluster, against a fourth with no migration at all:
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
//!   trigger and the old columns are dropped. Same client count and the
//!   same four pgbench processes in every window.
//! - **no migration** (the baseline): old-shape groups through a plain
//!   pgshift, nothing else.
//!
//! Each phase is a load window of `PGSHIFT_BENCH_SECS` (default 10) with
//! the step run one second in, on a running load (the backfill: windows
//! from their start until it is done);
//! TPS, p99 and the longest transaction come from pgbench's
//! per-transaction logs. The methods run interleaved, phase by phase: the
//! window of a phase for each method, then the next phase (pgshift's
//! backfill is paused between its windows), so the machine's drift falls
//! on all of them alike. Every window must end with zero failed
//! transactions and every method with the tpcb invariant exact on the
//! final columns. Every database starts vacuumed and checkpointed, and
//! each round starts each phase with another method, so none always runs
//! first or last. pgshift's old-shape groups' share of
//! its transactions tells, within the same windows, whether the clients
//! whose statements it rewrites go slower than the others.
//! Run: `cargo bench --bench scenario_compare` (`PGSHIFT_BENCH_ROUNDS`,
//! default 1; `PGSHIFT_BENCH_METHODS`, e.g. `classic_proxy,pgshift`;
//! `PGSHIFT_BENCH_SCALE`,
//! default 10; `PGSHIFT_BENCH_CLIENTS` per group, default 2;
//! `PGSHIFT_BENCH_BATCH` keys per backfill batch for both methods, default
//! 5000; `PGSHIFT_BENCH_PAUSE_MS` between batches for both methods, and
//! between pgshift's parity-check ranges, default 150; `PGSHIFT_BENCH_TARGET_MS`:
//! pgshift's time-targeted batches; `PGSHIFT_BENCH_CONTRACTED_WINDOWS`,
//! default 1: windows of the contracted phase per method — it is steady
//! state, so it can be sampled as long as needed; with more than one, the
//! ratio of every pair of windows is printed too, and each method's
//! accounts table state — size, dead tuples, HOT share — around them;
//! `PGSHIFT_BENCH_CONTRACTED_REPACK` set: every accounts table is rewritten
//! by `VACUUM FULL` before the contracted windows, to tell a gap that comes
//! from the table's state from one that comes from the proxy). The
//! contract window is printed second by second and its first 3 s by tenths
//! of a second, with its Unix start time, for each method (where a
//! transition's cost sits; `PGSHIFT_BENCH_RUST_LOG=pgshift=info` puts
//! pgshift's timestamped steps and lock retries beside it).

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgshift::cluster::{free_port, Cluster, ClusterOptions, SUPERUSER};
use serde_json::{json, Value};
use tokio::runtime::Runtime;

mod common;
use common::{env_num, finish_pgbench, pgbench_init, spawn_pgbench, start_pgshift, Server};

/// The index in [`PHASES`] of the first phase with reads switched.
const SWITCHED: usize = 4;

/// How far into its window a phase's step starts: after pgbench's
/// connections are up and running.
const STEP_LEAD: Duration = Duration::from_secs(1);

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
    NoMigration,
    Pgshift,
    ClassicViaPgshift,
    ClassicDirect,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::NoMigration => "no migration",
            Method::Pgshift => "pgshift",
            Method::ClassicViaPgshift => "classic via pgshift",
            Method::ClassicDirect => "classic direct",
        }
    }

    fn database(self) -> &'static str {
        match self {
            Method::NoMigration => "plain",
            Method::Pgshift => "pgshift",
            Method::ClassicViaPgshift => "classic_proxy",
            Method::ClassicDirect => "classic_direct",
        }
    }
}

/// One phase of one method: transactions, seconds of load, latencies.
#[derive(Default)]
struct PhaseLoad {
    transactions: u64,
    /// Transactions of the windows in which both shapes ran, and of them
    /// those of the old-shape groups.
    mixed: u64,
    old_shape: u64,
    seconds: f64,
    latencies_us: Vec<u64>,
    /// When each transaction ended, in seconds from its window's start
    /// (one window's only: not pooled by [`PhaseLoad::add`]).
    ends_s: Vec<f64>,
}

impl PhaseLoad {
    /// Pools another round's measurements into this one.
    fn add(&mut self, other: PhaseLoad) {
        self.transactions += other.transactions;
        self.mixed += other.mixed;
        self.old_shape += other.old_shape;
        self.seconds += other.seconds;
        self.latencies_us.extend(other.latencies_us);
        // `ends_s` counts from one window's start: pooled, it means
        // nothing, so it is not kept.
    }

    /// Transactions ended in each `1 / slices_per_second` of a second of
    /// the window, from its start.
    fn per_slice(&self, slices_per_second: f64) -> Vec<u64> {
        let mut counts = Vec::new();
        for &t in &self.ends_s {
            let slice = (t.max(0.0) * slices_per_second) as usize;
            if counts.len() <= slice {
                counts.resize(slice + 1, 0);
            }
            counts[slice] += 1;
        }
        counts
    }

    fn tps(&self) -> f64 {
        self.transactions as f64 / self.seconds.max(1e-9)
    }

    /// The old-shape groups' share of the transactions of the windows in
    /// which both shapes ran with the same client count (0.5: the shape
    /// pgshift rewrites went as fast as the one it does not).
    fn old_shape_share(&self) -> f64 {
        if self.mixed == 0 {
            return f64::NAN;
        }
        self.old_shape as f64 / self.mixed as f64
    }

    fn longest_ms(&self) -> f64 {
        self.latencies_us
            .iter()
            .max()
            .map_or(f64::NAN, |&us| us as f64 / 1000.0)
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
    /// Seconds the migration's own work took (the steps and the backfill).
    work_secs: f64,
    backfill_secs: f64,
}

/// Where the load goes and with what scripts.
struct Load {
    pgbench: PathBuf,
    port: u16,
    database: String,
    clients: u32,
    secs: u32,
    /// The tables' scale, for the new-shape script's `:scale` (pgbench
    /// reads it from the tables only for its built-in scripts).
    scale: String,
    dir: PathBuf,
    new_shape: PathBuf,
}

impl Load {
    /// Starts one load window: four pgbench processes of `clients` each,
    /// two in `-M prepared` and two in `-M simple`, one of each per shape
    /// when both shapes run and both of the one shape otherwise — every
    /// window of every method has the same client count and the same
    /// processes (on two cores, the same clients split over four pgbench
    /// processes instead of two go ≈ 8 % slower, which once made a method
    /// running both shapes look slower than one running one).
    fn start(&self, old: bool, new: bool, secs: u32, tag: &str) -> Result<Window> {
        let shapes = match (old, new) {
            (true, true) => [true, false],
            (true, false) => [true, true],
            (false, _) => [false, false],
        };
        let (clients, secs_arg) = (self.clients.to_string(), secs.to_string());
        let new_shape = self.new_shape.display().to_string();
        let mut children = Vec::new();
        for (k, is_old) in shapes.into_iter().enumerate() {
            let script = (!is_old).then_some(new_shape.as_str());
            for mode in ["prepared", "simple"] {
                let prefix = self
                    .dir
                    .join(format!(
                        "{tag}-{}-{mode}{k}",
                        script.map_or("old", |_| "new")
                    ))
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
                    &self.database,
                    &args,
                )?);
            }
        }
        Ok(Window {
            children,
            tag: tag.to_string(),
            secs,
            mixed: old && new,
            started_s: unix_secs(),
        })
    }

    /// Waits for a window's groups (failed transactions are an error) and
    /// adds their transactions to `into`.
    fn finish(&self, window: Window, into: &mut PhaseLoad) -> Result<()> {
        let Window {
            children,
            tag,
            secs,
            mixed,
            started_s,
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
            let old = name.starts_with(&format!("{tag}-old-"));
            for line in std::fs::read_to_string(&path)?.lines() {
                // client, transaction, latency µs, script, end s, end µs
                let fields: Vec<&str> = line.split_whitespace().collect();
                if let (Some(end_s), Some(end_us)) = (
                    fields.get(4).and_then(|v| v.parse::<f64>().ok()),
                    fields.get(5).and_then(|v| v.parse::<f64>().ok()),
                ) {
                    into.ends_s.push(end_s + end_us / 1e6 - started_s);
                }
                if let Some(us) = fields.get(2).and_then(|v| v.parse().ok()) {
                    into.transactions += 1;
                    into.mixed += u64::from(mixed);
                    into.old_shape += u64::from(old && mixed);
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
    /// When it started (UNIX seconds).
    started_s: f64,
    children: Vec<Child>,
    tag: String,
    secs: u32,
    /// Both shapes ran, each with the same client count.
    mixed: bool,
}

/// The steps of a migration, one implementation per method; a step a
/// method does not have is a no-op (and a backfill it does not have is
/// done at once).
trait Steps {
    fn expand(&mut self, _rt: &Runtime) -> Result<()> {
        Ok(())
    }
    fn start_backfill(&mut self, _rt: &Runtime) -> Result<()> {
        Ok(())
    }
    /// Runs (part of) the backfill; true when it is done.
    fn backfill_done(&mut self, _rt: &Runtime) -> Result<bool> {
        Ok(true)
    }
    fn validate(&mut self, _rt: &Runtime) -> Result<()> {
        Ok(())
    }
    fn switch_reads(&mut self, _rt: &Runtime) -> Result<()> {
        Ok(())
    }
    fn contract(&mut self, _rt: &Runtime) -> Result<()> {
        Ok(())
    }
    /// Which groups run (old shape, new shape), before or after the
    /// read switch.
    fn shapes(&self, switched: bool) -> (bool, bool);
    /// The columns that hold the truth once the load has ended: the
    /// accounts' and the tellers' balance.
    fn final_columns(&self) -> (&'static str, &'static str) {
        ("balance", "tbalance_big")
    }
    /// Holds a backfill that runs on its own at the end of its method's
    /// window, so it runs only while its method's load does.
    fn hold_backfill(&mut self, _rt: &Runtime) -> Result<()> {
        Ok(())
    }
    /// Resumes a held backfill at the start of its method's next window.
    fn resume_backfill(&mut self, _rt: &Runtime) -> Result<()> {
        Ok(())
    }
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

    /// The migrations whose backfill has not finished.
    fn backfilling(&self, rt: &Runtime) -> Result<Vec<String>> {
        Ok(self
            .migrations(rt)?
            .into_iter()
            .filter(|(_, phase)| phase == "backfilling")
            .map(|(id, _)| id)
            .collect())
    }

    /// Pauses or resumes the backfills not finished yet; one that finishes
    /// in between answers 409, and is left alone.
    fn pause_or_resume(&self, rt: &Runtime, action: &str) -> Result<()> {
        for id in self.backfilling(rt)? {
            let path = format!("/migrations/{id}/{action}");
            let (code, answer) = rt
                .block_on(pgshift::admin::request(
                    &self.admin,
                    "POST",
                    &path,
                    None,
                    None,
                ))
                .map_err(anyhow::Error::msg)?;
            let finished = || -> Result<bool> { Ok(!self.backfilling(rt)?.contains(&id)) };
            let done = (200..300).contains(&code) || (code == 409 && finished()?);
            if !done {
                bail!("POST {path}: HTTP {code}: {answer}");
            }
        }
        Ok(())
    }

    /// (id, phase) of every migration.
    fn migrations(&self, rt: &Runtime) -> Result<Vec<(String, String)>> {
        let (_, status) = rt
            .block_on(pgshift::admin::request(
                &self.admin,
                "GET",
                "/status",
                None,
                None,
            ))
            .map_err(anyhow::Error::msg)?;
        let field = |m: &Value, name: &str| m[name].as_str().unwrap_or("").to_string();
        Ok(status["migrations"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| (field(m, "id"), field(m, "phase")))
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
        Ok(self
            .migrations(rt)?
            .iter()
            .all(|(_, phase)| phase == "backfilled"))
    }
    fn hold_backfill(&mut self, rt: &Runtime) -> Result<()> {
        self.pause_or_resume(rt, "pause")
    }
    fn resume_backfill(&mut self, rt: &Runtime) -> Result<()> {
        self.pause_or_resume(rt, "resume")
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
    fn shapes(&self, _switched: bool) -> (bool, bool) {
        // Both application versions, the whole time.
        (true, true)
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
    fn contract(&mut self, rt: &Runtime) -> Result<()> {
        rt.block_on(async {
            for sql in CLASSIC_CONTRACT {
                self.ddl(sql).await?;
            }
            Ok(())
        })
    }
    fn shapes(&self, switched: bool) -> (bool, bool) {
        // The application is redeployed onto the new columns at the read
        // switch (its step is nothing more): new-shape groups only from then.
        (!switched, switched)
    }
}

/// No migration at all: the baseline, through a plain pgshift, old-shape
/// groups only, in every phase.
struct NoSteps;

impl Steps for NoSteps {
    fn shapes(&self, _switched: bool) -> (bool, bool) {
        (true, false)
    }
    fn final_columns(&self) -> (&'static str, &'static str) {
        ("abalance", "tbalance")
    }
}

/// One method's migration under way on its own database: its load, its
/// steps, its server and what its windows have measured.
struct MethodRun {
    method: Method,
    db: String,
    load: Load,
    steps: Box<dyn Steps>,
    _server: Option<Server>,
    phases: Vec<PhaseLoad>,
    /// Time the steps took, and the backfill within its windows.
    work: Duration,
    backfill: Duration,
    backfill_windows: u32,
    backfill_done: bool,
    /// The TPS of each window of the contracted phase, in order.
    contracted_tps: Vec<f64>,
}

impl MethodRun {
    /// Which groups run in phase `k`: (old shape, new shape).
    fn shapes(&self, k: usize) -> (bool, bool) {
        self.steps.shapes(k >= SWITCHED)
    }

    /// A window of phase `k` with the phase's step run one second in; its
    /// TPS.
    fn window(&mut self, rt: &Runtime, k: usize) -> Result<f64> {
        let tag = format!("{}.{}", self.db, PHASES[k].replace(' ', "_"));
        let (old, new) = self.shapes(k);
        let running = self.load.start(old, new, self.load.secs, &tag)?;
        let started_unix = running.started_s;
        // The step lands on a running load, not on pgbench's connection
        // start (a transition there costs nothing visible). Windows with no
        // step wait too: their load runs its fixed time all the same.
        std::thread::sleep(STEP_LEAD);
        let t = Instant::now();
        match PHASES[k] {
            "expand" => self.steps.expand(rt)?,
            "validate" => self.steps.validate(rt)?,
            "reads on new" => self.steps.switch_reads(rt)?,
            "contract" => self.steps.contract(rt)?,
            _ => {}
        }
        let step = t.elapsed();
        self.work += step;
        let mut measured = PhaseLoad::default();
        self.load.finish(running, &mut measured)?;
        let tps = measured.tps();
        if PHASES[k] == "contract" {
            // Where in the window a transition costs: second by second.
            let seconds: Vec<String> = measured.per_slice(1.0).iter().map(u64::to_string).collect();
            println!(
                "{}: contract window, transactions per second (the step started at second 1 and took {:.1} s): {}",
                self.method.name(),
                step.as_secs_f64(),
                seconds.join(" ")
            );
            let tenths: Vec<String> = measured
                .per_slice(10.0)
                .iter()
                .take(30)
                .map(u64::to_string)
                .collect();
            println!(
                "{}: contract window (started at Unix {:.3}), its first 3 s by tenths: {}",
                self.method.name(),
                started_unix,
                tenths.join(" ")
            );
        }
        self.phases[k].add(measured);
        Ok(tps)
    }

    /// One backfill window: the backfill started (or resumed) at its
    /// start and held at its end if not done, so it runs only while this
    /// method's load does.
    fn backfill_window(&mut self, rt: &Runtime) -> Result<()> {
        let tag = format!("{}.backfill{}", self.db, self.backfill_windows);
        let (old, new) = self.shapes(2);
        let secs = self.load.backfill_window();
        let running = self.load.start(old, new, secs, &tag)?;
        let window_end = Instant::now() + Duration::from_secs(u64::from(secs));
        let t = Instant::now();
        if self.backfill_windows == 0 {
            self.steps.start_backfill(rt)?;
        } else {
            self.steps.resume_backfill(rt)?;
        }
        while !self.backfill_done && Instant::now() < window_end {
            self.backfill_done = self.steps.backfill_done(rt)?;
        }
        if !self.backfill_done {
            self.steps.hold_backfill(rt)?;
        }
        self.backfill += t.elapsed();
        self.backfill_windows += 1;
        self.load.finish(running, &mut self.phases[2])
    }

    /// The phases measured so far, and the migration's work time.
    fn outcome(&mut self) -> Outcome {
        Outcome {
            phases: std::mem::take(&mut self.phases),
            work_secs: (self.work + self.backfill).as_secs_f64(),
            backfill_secs: self.backfill.as_secs_f64(),
        }
    }
}

/// Runs every method's migration, phase by phase, the methods' windows of
/// each phase one after the other (in the order given): a method's phase
/// is measured within a minute of the others', not minutes apart, so the
/// machine's drift falls on all of them alike.
/// The contracted phase is steady state: it gets `contracted_windows`
/// windows per method, each time starting with the next method, and the
/// accounts table's state is reported around them.
fn run_interleaved(
    runs: &mut [MethodRun],
    rt: &Runtime,
    cluster: &Cluster,
    contracted_windows: u32,
) -> Result<()> {
    for (k, phase) in PHASES.iter().enumerate() {
        match *phase {
            "backfill" => {
                // The baseline takes a window in every round of them, so
                // the backfill's minutes are compared with their own.
                while runs.iter().any(|r| !r.backfill_done) {
                    for run in runs
                        .iter_mut()
                        .filter(|r| !r.backfill_done || r.method == Method::NoMigration)
                    {
                        run.backfill_window(rt)?;
                    }
                }
            }
            "contracted" => {
                if std::env::var_os("PGSHIFT_BENCH_CONTRACTED_REPACK").is_some() {
                    // Diagnosis: the same physical state for every method.
                    for run in runs.iter() {
                        cluster.psql(&run.db, "vacuum full analyze pgbench_accounts")?;
                    }
                    cluster.psql("postgres", "checkpoint")?;
                }
                let before: Vec<TableState> = runs
                    .iter()
                    .map(|r| TableState::read(cluster, &r.db))
                    .collect::<Result<_>>()?;
                let n = runs.len();
                for w in 0..contracted_windows as usize {
                    for i in 0..n {
                        let run = &mut runs[(i + w) % n];
                        let tps = run.window(rt, k)?;
                        run.contracted_tps.push(tps);
                    }
                }
                for (run, before) in runs.iter().zip(before) {
                    let after = TableState::read(cluster, &run.db)?;
                    eprintln!(
                        "{}: pgbench_accounts after the contract: {}",
                        run.method.name(),
                        after.describe_since(&before)
                    );
                }
            }
            _ => {
                for run in runs.iter_mut() {
                    run.window(rt, k)?;
                }
            }
        }
    }
    Ok(())
}

/// `pgbench_accounts` as the statistics collector sees it: what a gap in
/// the contracted phase could come from besides the proxy (a bigger
/// table, dead tuples, fewer HOT updates, autovacuum at work).
struct TableState {
    bytes: i64,
    dead: i64,
    updates: i64,
    hot_updates: i64,
    autovacuums: i64,
}

impl TableState {
    fn read(cluster: &Cluster, db: &str) -> Result<TableState> {
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

    fn describe_since(&self, before: &TableState) -> String {
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
fn check_invariant(cluster: &Cluster, db: &str, (accounts, tellers): (&str, &str)) -> Result<()> {
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

fn unix_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
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
    let contracted_windows = env_num("PGSHIFT_BENCH_CONTRACTED_WINDOWS", 1).max(1);
    let settings = Settings {
        scale,
        clients,
        secs,
        batch,
        pause_ms,
        target_ms,
    };
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
    let rounds = env_num("PGSHIFT_BENCH_ROUNDS", 1).max(1);
    let mut outcomes: Vec<(Method, Outcome)> = Vec::new();
    let methods = chosen_methods()?;
    // Each round's TPS per phase of each method, for the per-round ratios.
    let mut per_round: Vec<(u32, Method, Vec<f64>)> = Vec::new();
    // Each contracted window's TPS per round and method.
    let mut contracted: Vec<(u32, Method, Vec<f64>)> = Vec::new();
    for round in 0..rounds {
        // Each round starts each phase with another method, so none always
        // goes first (or last).
        let mut order = methods.clone();
        order.rotate_left(round as usize % methods.len());
        eprintln!("round {round}:");
        let mut runs = Vec::new();
        for &method in &order {
            let db = format!("{}_{round}", method.database());
            runs.push(prepare(
                &cluster, &rt, method, db, &dir, &new_shape, &settings,
            )?);
        }
        // Every database starts vacuumed (at prepare) and with no dirty
        // pages of the set-up left to the checkpointer.
        cluster.psql("postgres", "checkpoint")?;
        eprintln!(
            "running the scenario, phase by phase, for {} method(s)…",
            runs.len()
        );
        run_interleaved(&mut runs, &rt, &cluster, contracted_windows)?;
        for mut run in runs {
            run.steps.complete(&rt)?;
            check_invariant(&cluster, &run.db, run.steps.final_columns())?;
            let method = run.method;
            contracted.push((round, method, std::mem::take(&mut run.contracted_tps)));
            let outcome = run.outcome();
            per_round.push((
                round,
                method,
                outcome.phases.iter().map(PhaseLoad::tps).collect(),
            ));
            match outcomes.iter_mut().find(|(m, _)| *m == method) {
                Some((_, pooled)) => {
                    for (p, o) in pooled.phases.iter_mut().zip(outcome.phases) {
                        p.add(o);
                    }
                    pooled.work_secs += outcome.work_secs;
                    pooled.backfill_secs += outcome.backfill_secs;
                }
                None => outcomes.push((method, outcome)),
            }
            drop(run._server);
            cluster.psql(
                "postgres",
                &format!("drop database {} with (force)", run.db),
            )?;
        }
    }
    for (_, o) in outcomes.iter_mut() {
        o.work_secs /= f64::from(rounds);
        o.backfill_secs /= f64::from(rounds);
    }
    print_table(&settings, rounds, &mut outcomes);
    print_round_ratios(rounds, &per_round, Method::ClassicViaPgshift);
    print_round_ratios(rounds, &per_round, Method::NoMigration);
    if contracted_windows > 1 {
        print_window_ratios(&contracted, Method::ClassicViaPgshift);
        print_window_ratios(&contracted, Method::NoMigration);
    }
    if report_server_log {
        let log = std::fs::read_to_string(cluster.log_file()).unwrap_or_default();
        eprintln!("server log, lock waits and slow statements:");
        for line in log.lines().filter(|l| {
            l.contains("still waiting")
                || l.contains("acquired")
                || l.contains("duration:")
                || l.contains("canceling statement due to lock timeout")
                || l.contains("DETAIL:  Process")
        }) {
            eprintln!("  {line}");
        }
    }
    Ok(())
}

/// pgshift's TPS over `against`'s in each contracted window (the windows
/// of one round paired in order): their spread, and how many reach 1.
fn print_window_ratios(contracted: &[(u32, Method, Vec<f64>)], against: Method) {
    let mut ratios: Vec<f64> = Vec::new();
    for (round, method, shift) in contracted {
        if *method != Method::Pgshift {
            continue;
        }
        let Some((_, _, other)) = contracted
            .iter()
            .find(|(r, m, _)| r == round && *m == against)
        else {
            continue;
        };
        ratios.extend(shift.iter().zip(other).map(|(s, o)| s / o));
    }
    if ratios.is_empty() {
        return;
    }
    let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len();
    let at = |q: f64| ratios[((n - 1) as f64 * q).round() as usize];
    println!();
    println!(
        "contracted phase, pgshift × {} per window pair ({n}): median {:.2}×, quartiles {:.2}–{:.2}×, range {:.2}–{:.2}×, {} of {n} at 1 or more; in order: {}",
        against.name(),
        at(0.5),
        at(0.25),
        at(0.75),
        ratios[0],
        ratios[n - 1],
        ratios.iter().filter(|&&r| r >= 1.0).count(),
        listed.join(" ")
    );
}

/// A markdown table's head: a phase column, then `columns`.
fn print_head(columns: &[String]) {
    let names: String = columns.iter().map(|c| format!(" {c} |")).collect();
    println!("| phase |{names}");
    println!("|---|{}", "---|".repeat(columns.len()));
}

/// pgshift's TPS over `against`'s, phase by phase, in each round, and
/// their median: how far one round's ratio moves is the bench's noise.
fn print_round_ratios(rounds: u32, per_round: &[(u32, Method, Vec<f64>)], against: Method) {
    let tps = |round: u32, method: Method| {
        per_round
            .iter()
            .find(|(r, m, _)| *r == round && *m == method)
            .map(|(_, _, t)| t.clone())
    };
    let ratios: Vec<Vec<f64>> = (0..rounds)
        .filter_map(|round| {
            let shift = tps(round, Method::Pgshift)?;
            let other = tps(round, against)?;
            Some(shift.iter().zip(&other).map(|(s, o)| s / o).collect())
        })
        .collect();
    if ratios.is_empty() {
        return;
    }
    println!();
    let mut columns: Vec<String> = (0..ratios.len()).map(|r| format!("round {r}")).collect();
    columns.push("median".into());
    println!("pgshift × {}, per round:", against.name());
    print_head(&columns);
    for (k, phase) in PHASES.iter().enumerate() {
        let mut column: Vec<f64> = ratios.iter().map(|r| r[k]).collect();
        let cells: String = column.iter().map(|x| format!(" {x:.2}× |")).collect();
        column.sort_by(f64::total_cmp);
        let n = column.len();
        let median = if n % 2 == 1 {
            column[n / 2]
        } else {
            (column[n / 2 - 1] + column[n / 2]) / 2.0
        };
        println!("| {phase} |{cells} {median:.2}× |");
    }
}

/// The methods to run (`PGSHIFT_BENCH_METHODS`, comma-separated among
/// `plain`, `classic_proxy`, `classic_direct`, `pgshift`; default all).
fn chosen_methods() -> Result<Vec<Method>> {
    let all = [
        Method::NoMigration,
        Method::ClassicViaPgshift,
        Method::ClassicDirect,
        Method::Pgshift,
    ];
    let Ok(list) = std::env::var("PGSHIFT_BENCH_METHODS") else {
        return Ok(all.to_vec());
    };
    list.split(',')
        .map(|name| {
            all.iter()
                .copied()
                .find(|m| m.database() == name.trim())
                .with_context(|| format!("PGSHIFT_BENCH_METHODS: unknown method {name:?}"))
        })
        .collect()
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

/// A fresh database `db` for `method` (`pgbench -i`, vacuumed), its
/// server (pgshift with the migrations, or a plain one, or none) and its
/// steps, ready for its first window.
fn prepare(
    cluster: &Cluster,
    rt: &Runtime,
    method: Method,
    db: String,
    dir: &std::path::Path,
    new_shape: &std::path::Path,
    settings: &Settings,
) -> Result<MethodRun> {
    pgbench_init(cluster, &db, settings.scale)?;
    cluster.psql(&db, "vacuum analyze")?;
    let (port, server, steps): (u16, Option<Server>, Box<dyn Steps>) = match method {
        Method::Pgshift => {
            let admin_port = free_port()?;
            let config = dir.join(format!("pgshift-{db}.toml"));
            std::fs::write(&config, pgshift_config(admin_port, &db))?;
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
            let client = rt.block_on(connect(cluster, &db))?;
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
    let load = Load {
        pgbench: cluster.binaries().tool("pgbench"),
        port,
        database: db.clone(),
        clients: settings.clients,
        secs: settings.secs,
        scale: settings.scale.to_string(),
        dir: dir.to_path_buf(),
        new_shape: new_shape.to_path_buf(),
    };
    Ok(MethodRun {
        method,
        db,
        load,
        steps,
        _server: server,
        phases: PHASES.iter().map(|_| PhaseLoad::default()).collect(),
        work: Duration::ZERO,
        backfill: Duration::ZERO,
        backfill_windows: 0,
        backfill_done: false,
        contracted_tps: Vec::new(),
    })
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
    println!();
    println!(
        "migration scenario at scale {scale}, {} clients in 4 groups, {secs} s per phase window, {rounds} round(s) pooled, backfill batches of {batch} keys with {pause_ms} ms pauses (pgshift's target {target_ms} ms, 0: fixed); methods interleaved phase by phase",
        clients * 4
    );
    println!();
    let mut columns: Vec<String> = outcomes
        .iter()
        .flat_map(|(m, _)| [format!("{} TPS", m.name()), "p99 ms".to_string()])
        .collect();
    columns.push("pgshift × no migration".into());
    columns.push("pgshift × classic via pgshift".into());
    print_head(&columns);
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
        let baseline = tps_of(Method::NoMigration);
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
    println!();
    // Where a gap comes from: the longest transaction of each phase, and
    // how pgshift's clients shared its transactions between the shape it
    // rewrites and the shape it does not (0.50: equally fast).
    let mut columns: Vec<String> = outcomes
        .iter()
        .map(|(m, _)| format!("{} longest ms", m.name()))
        .collect();
    columns.push("pgshift: old-shape share of its transactions".into());
    print_head(&columns);
    for (k, phase) in PHASES.iter().enumerate() {
        let mut row = format!("| {phase} |");
        let mut share = f64::NAN;
        for (m, o) in outcomes.iter() {
            row += &format!(" {:.0} |", o.phases[k].longest_ms());
            if *m == Method::Pgshift {
                share = o.phases[k].old_shape_share();
            }
        }
        println!("{row} {share:.2} |");
    }
}
