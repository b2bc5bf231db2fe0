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

#[path = "../common/mod.rs"]
mod common;
mod load;
mod method;
mod report;
mod setup;
mod steps;

use anyhow::Result;

use method::{chosen_methods, Method, MethodRun};
use report::{print_server_log, Results};
use setup::{check_invariant, discard, prepare_round, Bench, Settings, TableState};

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

/// The index in [`PHASES`] of the first phase with reads switched.
const SWITCHED: usize = 4;

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("scenario_compare: run with `cargo bench --bench scenario_compare`");
        return Ok(());
    }
    let bench = Bench::start(Settings::from_env())?;
    let methods = chosen_methods()?;
    let mut results = Results::default();
    for round in 0..bench.settings.rounds {
        let mut runs = prepare_round(&bench, &methods, round)?;
        eprintln!(
            "running the scenario, phase by phase, for {} method(s)…",
            runs.len()
        );
        run_interleaved(&mut runs, &bench)?;
        for mut run in runs {
            run.steps.complete(&bench.rt)?;
            check_invariant(&bench.cluster, &run.db, run.steps.final_columns())?;
            results.record(round, &mut run);
            discard(&bench.cluster, run)?;
        }
    }
    results.print(&bench.settings);
    if bench.report_server_log {
        print_server_log(&bench.cluster);
    }
    Ok(())
}

/// Runs every method's migration, phase by phase, the methods' windows of
/// each phase one after the other (in the order given): a method's phase
/// is measured within a minute of the others', not minutes apart, so the
/// machine's drift falls on all of them alike.
fn run_interleaved(runs: &mut [MethodRun], bench: &Bench) -> Result<()> {
    let rt = &bench.rt;
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
            "contracted" => run_contracted(runs, bench, k)?,
            _ => {
                for run in runs.iter_mut() {
                    run.window(rt, k)?;
                }
            }
        }
    }
    Ok(())
}

/// The contracted phase (`k`) is steady state: it gets
/// `contracted_windows` windows per method, each time starting with the
/// next method, and the accounts table's state is reported around them.
fn run_contracted(runs: &mut [MethodRun], bench: &Bench, k: usize) -> Result<()> {
    let cluster = &bench.cluster;
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
    for w in 0..bench.settings.contracted_windows as usize {
        for i in 0..n {
            let run = &mut runs[(i + w) % n];
            let tps = run.window(&bench.rt, k)?;
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
    Ok(())
}
