//! The load: a window of four pgbench groups against one method's database,
//! and what each phase measured from pgbench's per-transaction logs
//! (transactions, seconds, latencies, the old shape's share).

use std::path::PathBuf;
use std::process::Child;

use anyhow::Result;
use pgshift::cluster::SUPERUSER;

use crate::common::{finish_pgbench, spawn_pgbench, unix_secs};

/// One phase of one method: transactions, seconds of load, latencies.
#[derive(Default)]
pub struct PhaseLoad {
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
    pub fn add(&mut self, other: PhaseLoad) {
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
    pub fn per_slice(&self, slices_per_second: f64) -> Vec<u64> {
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

    pub fn tps(&self) -> f64 {
        self.transactions as f64 / self.seconds.max(1e-9)
    }

    /// The old-shape groups' share of the transactions of the windows in
    /// which both shapes ran with the same client count (0.5: the shape
    /// pgshift rewrites went as fast as the one it does not).
    pub fn old_shape_share(&self) -> f64 {
        if self.mixed == 0 {
            return f64::NAN;
        }
        self.old_shape as f64 / self.mixed as f64
    }

    pub fn longest_ms(&self) -> f64 {
        self.latencies_us
            .iter()
            .max()
            .map_or(f64::NAN, |&us| us as f64 / 1000.0)
    }

    pub fn p99_ms(&mut self) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        self.latencies_us.sort_unstable();
        let k = (self.latencies_us.len() * 99 / 100).min(self.latencies_us.len() - 1);
        self.latencies_us[k] as f64 / 1000.0
    }
}

/// What one method measured.
pub struct Outcome {
    pub phases: Vec<PhaseLoad>,
    /// Seconds the migration's own work took (the steps and the backfill).
    pub work_secs: f64,
    pub backfill_secs: f64,
}

/// Where the load goes and with what scripts.
pub struct Load {
    pub pgbench: PathBuf,
    pub port: u16,
    pub database: String,
    pub clients: u32,
    pub secs: u32,
    /// The tables' scale, for the new-shape script's `:scale` (pgbench
    /// reads it from the tables only for its built-in scripts).
    pub scale: String,
    pub dir: PathBuf,
    pub new_shape: PathBuf,
}

impl Load {
    /// Starts one load window: four pgbench processes of `clients` each,
    /// two in `-M prepared` and two in `-M simple`, one of each per shape
    /// when both shapes run and both of the one shape otherwise — every
    /// window of every method has the same client count and the same
    /// processes (on two cores, the same clients split over four pgbench
    /// processes instead of two go ≈ 8 % slower, which once made a method
    /// running both shapes look slower than one running one).
    pub fn start(&self, old: bool, new: bool, secs: u32, tag: &str) -> Result<Window> {
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
    pub fn finish(&self, window: Window, into: &mut PhaseLoad) -> Result<()> {
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

    pub fn backfill_window(&self) -> u32 {
        (self.secs / 2).max(2)
    }
}

/// A load window under way: its pgbench groups, the tag of their logs
/// and its length.
pub struct Window {
    /// When it started (UNIX seconds).
    pub started_s: f64,
    children: Vec<Child>,
    tag: String,
    secs: u32,
    /// Both shapes ran, each with the same client count.
    mixed: bool,
}
