//! The methods compared, which of them run, and one method's migration
//! under way: its windows phase by phase, each with its step on the load.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::runtime::Runtime;

use crate::common::Server;
use crate::load::{Load, Outcome, PhaseLoad};
use crate::steps::Steps;
use crate::{PHASES, SWITCHED};

/// How far into its window a phase's step starts: after pgbench's
/// connections are up and running.
const STEP_LEAD: Duration = Duration::from_secs(1);

/// A way through the scenario, each on a database of its own.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Method {
    NoMigration,
    Pgshift,
    ClassicViaPgshift,
    ClassicDirect,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::NoMigration => "no migration",
            Method::Pgshift => "pgshift",
            Method::ClassicViaPgshift => "classic via pgshift",
            Method::ClassicDirect => "classic direct",
        }
    }

    pub fn database(self) -> &'static str {
        match self {
            Method::NoMigration => "plain",
            Method::Pgshift => "pgshift",
            Method::ClassicViaPgshift => "classic_proxy",
            Method::ClassicDirect => "classic_direct",
        }
    }
}

/// The methods to run (`PGSHIFT_BENCH_METHODS`, comma-separated among
/// `plain`, `classic_proxy`, `classic_direct`, `pgshift`; default all).
pub fn chosen_methods() -> Result<Vec<Method>> {
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

/// One method's migration under way on its own database: its load, its
/// steps, its server and what its windows have measured.
pub struct MethodRun {
    pub method: Method,
    pub db: String,
    load: Load,
    pub steps: Box<dyn Steps>,
    pub _server: Option<Server>,
    phases: Vec<PhaseLoad>,
    /// Time the steps took, and the backfill within its windows.
    work: Duration,
    backfill: Duration,
    backfill_windows: u32,
    pub backfill_done: bool,
    /// The TPS of each window of the contracted phase, in order.
    pub contracted_tps: Vec<f64>,
}

impl MethodRun {
    /// `method`'s run on `db`, with its load, steps and server, before its
    /// first window.
    pub fn new(
        method: Method,
        db: String,
        load: Load,
        steps: Box<dyn Steps>,
        server: Option<Server>,
    ) -> MethodRun {
        MethodRun {
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
        }
    }

    /// Which groups run in phase `k`: (old shape, new shape).
    fn shapes(&self, k: usize) -> (bool, bool) {
        self.steps.shapes(k >= SWITCHED)
    }

    /// A window of phase `k` with the phase's step run one second in; its
    /// TPS.
    pub fn window(&mut self, rt: &Runtime, k: usize) -> Result<f64> {
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
    pub fn backfill_window(&mut self, rt: &Runtime) -> Result<()> {
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
    pub fn outcome(&mut self) -> Outcome {
        Outcome {
            phases: std::mem::take(&mut self.phases),
            work_secs: (self.work + self.backfill).as_secs_f64(),
            backfill_secs: self.backfill.as_secs_f64(),
        }
    }
}
