//! What the rounds measured, pooled per method, and its printing: the
//! phase tables, pgshift's ratios per round and per contracted window, and
//! the server log's lock waits.

use pgshift::cluster::Cluster;

use crate::load::{Outcome, PhaseLoad};
use crate::method::{Method, MethodRun};
use crate::setup::Settings;
use crate::PHASES;

/// What the rounds measured.
#[derive(Default)]
pub struct Results {
    /// Each method's phases and work, pooled over the rounds.
    outcomes: Vec<(Method, Outcome)>,
    /// Each round's TPS per phase of each method, for the per-round ratios.
    per_round: Vec<(u32, Method, Vec<f64>)>,
    /// Each contracted window's TPS per round and method.
    contracted: Vec<(u32, Method, Vec<f64>)>,
}

impl Results {
    /// Adds what `run` measured in round `round`.
    pub fn record(&mut self, round: u32, run: &mut MethodRun) {
        let method = run.method;
        self.contracted
            .push((round, method, std::mem::take(&mut run.contracted_tps)));
        let outcome = run.outcome();
        self.per_round.push((
            round,
            method,
            outcome.phases.iter().map(PhaseLoad::tps).collect(),
        ));
        match self.outcomes.iter_mut().find(|(m, _)| *m == method) {
            Some((_, pooled)) => {
                for (p, o) in pooled.phases.iter_mut().zip(outcome.phases) {
                    p.add(o);
                }
                pooled.work_secs += outcome.work_secs;
                pooled.backfill_secs += outcome.backfill_secs;
            }
            None => self.outcomes.push((method, outcome)),
        }
    }

    /// Prints the phase tables (the migration's work averaged over the
    /// rounds), pgshift's ratios per round and, with more than one
    /// contracted window, per window pair.
    pub fn print(mut self, settings: &Settings) {
        let rounds = settings.rounds;
        for (_, o) in self.outcomes.iter_mut() {
            o.work_secs /= f64::from(rounds);
            o.backfill_secs /= f64::from(rounds);
        }
        print_table(settings, &mut self.outcomes);
        print_gaps(&self.outcomes);
        print_round_ratios(rounds, &self.per_round, Method::ClassicViaPgshift);
        print_round_ratios(rounds, &self.per_round, Method::NoMigration);
        if settings.contracted_windows > 1 {
            print_window_ratios(&self.contracted, Method::ClassicViaPgshift);
            print_window_ratios(&self.contracted, Method::NoMigration);
        }
    }
}

/// The server log's lock waits and slow statements (with
/// `PGSHIFT_BENCH_PG_SETTINGS`).
pub fn print_server_log(cluster: &Cluster) {
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

/// The phase table: each method's TPS and p99, pgshift's ratios, the
/// migration's work.
fn print_table(settings: &Settings, outcomes: &mut [(Method, Outcome)]) {
    let Settings {
        scale,
        clients,
        secs,
        batch,
        pause_ms,
        target_ms,
        rounds,
        ..
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
}

/// Where a gap comes from: the longest transaction of each phase, and how
/// pgshift's clients shared its transactions between the shape it
/// rewrites and the shape it does not (0.50: equally fast).
fn print_gaps(outcomes: &[(Method, Outcome)]) {
    println!();
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
