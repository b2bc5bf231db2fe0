//! What a migration in its dual-write phase costs, against the classic
//! method, with old-shape and new-shape applications running at once.
//!
//! One throwaway cluster, three copies of the pgbench tables (scale
//! `PGSHIFT_BENCH_SCALE`, default 10), each with the new column `balance`
//! next to `abalance`:
//! - `base`: no migration, no trigger — pgshift with nothing to rewrite
//!   (the baseline: each application writes only its own column);
//! - `shift`: pgshift runs the rename `abalance → balance` in its
//!   `expanded` phase (every write dual-written by rewriting);
//! - `classic`: the classic method — a BEFORE INSERT OR UPDATE trigger
//!   copying whichever column changed to the other — reached through
//!   pgshift with no migration.
//!
//! Each round runs the stock tpcb-like script (old shape) and the same
//! script on `balance` (new shape) concurrently, `-c 4` each, in `-M simple`
//! and `-M prepared`, interleaving the three targets; the table shows the
//! median of the summed TPS. Afterwards both columns must agree on every
//! row of `shift` and `classic`.
//!
//! Run: `cargo bench --bench pgbench_migration` (`PGSHIFT_BENCH_SECS`,
//! default 10; `PGSHIFT_BENCH_ROUNDS`, default 3).

use anyhow::{bail, Context, Result};
use pgshift::cluster::{free_port, Cluster, ClusterOptions, SUPERUSER};

mod common;
use common::{env_num, finish_pgbench, median, pgbench_init, spawn_pgbench, start_pgshift};

const OLD_SHAPE: &str = "\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
";

const TRIGGER: &str = "create function sync_balance() returns trigger language plpgsql as $$
begin
  if tg_op = 'INSERT' then
    if new.balance is null then new.balance := new.abalance;
    elsif new.abalance is null then new.abalance := new.balance; end if;
  elsif new.abalance is distinct from old.abalance then new.balance := new.abalance;
  elsif new.balance is distinct from old.balance then new.abalance := new.balance;
  end if;
  return new;
end $$;
create trigger sync_balance before insert or update on pgbench_accounts
  for each row execute function sync_balance();";

fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("pgbench_migration: run with `cargo bench --bench pgbench_migration`");
        return Ok(());
    }
    let secs = env_num("PGSHIFT_BENCH_SECS", 10);
    let rounds = env_num("PGSHIFT_BENCH_ROUNDS", 3);
    let scale = env_num("PGSHIFT_BENCH_SCALE", 10);

    let cluster = Cluster::start(&ClusterOptions::default())?;
    let pgbench = cluster.binaries().tool("pgbench");
    for db in ["base", "shift", "classic"] {
        pgbench_init(&cluster, db, scale)?;
        cluster.psql(
            db,
            "alter table pgbench_accounts add column balance int; update pgbench_accounts set balance = abalance",
        )?;
        cluster.psql(db, "vacuum analyze pgbench_accounts")?;
    }
    cluster.psql("classic", TRIGGER)?;

    let dir = cluster.root().join("bench-scripts");
    std::fs::create_dir_all(&dir)?;
    let old_script = dir.join("old_shape.sql");
    let new_script = dir.join("new_shape.sql");
    std::fs::write(&old_script, OLD_SHAPE)?;
    std::fs::write(&new_script, OLD_SHAPE.replace("abalance", "balance"))?;
    let config = dir.join("pgshift.toml");
    std::fs::write(
        &config,
        format!(
            "[control]\ndatabase = \"shift\"\nuser = \"{SUPERUSER}\"\n\n[[migrations]]\nid = \"accounts_balance\"\ntable = \"pgbench_accounts\"\nfrom = \"abalance\"\nto = \"balance\"\nphase = \"expanded\"\n"
        ),
    )?;
    let plain_port = free_port()?;
    let migrating_port = free_port()?;
    let _plain = start_pgshift(cluster.port(), plain_port, 200, None)?;
    let _migrating = start_pgshift(cluster.port(), migrating_port, 200, Some(&config))?;
    let targets = [
        ("pgshift, no migration", plain_port, "base"),
        ("pgshift, rename in dual write", migrating_port, "shift"),
        ("classic trigger, via pgshift", plain_port, "classic"),
    ];

    let secs_s = secs.to_string();
    // Custom scripts get `:scale` 1 unless told.
    let scale_s = scale.to_string();
    let mut rows = Vec::new();
    for mode in ["simple", "prepared"] {
        let mut tps: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
        let mut lat: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
        for round in 0..rounds {
            for (i, (name, port, db)) in targets.iter().enumerate() {
                let mut runs = Vec::new();
                for script in [&old_script, &new_script] {
                    let script = script.display().to_string();
                    let args = [
                        "-n", "-M", mode, "-c", "4", "-j", "1", "-T", &secs_s, "-f", &script, "-s",
                        &scale_s,
                    ];
                    runs.push(spawn_pgbench(&pgbench, SUPERUSER, *port, db, &args)?);
                }
                let mut sum = 0.0;
                let mut latency = Vec::new();
                for child in runs {
                    let run = finish_pgbench(child, &format!("{name} -M {mode}"))?;
                    sum += run.tps;
                    latency.push(run.latency_ms);
                }
                eprintln!("-M {mode} round {round} {name}: {sum:.0} tps");
                tps[i].push(sum);
                lat[i].push(latency.iter().sum::<f64>() / latency.len() as f64);
            }
        }
        let tps: Vec<f64> = tps.into_iter().map(median).collect();
        let lat: Vec<f64> = lat.into_iter().map(median).collect();
        rows.push(format!(
            "| -M {mode} | {:.0} | {:.0} ({:.2}×) | {:.0} ({:.2}×) | {:.2} / {:.2} / {:.2} |",
            tps[0],
            tps[1],
            tps[1] / tps[0],
            tps[2],
            tps[2] / tps[0],
            lat[0],
            lat[1],
            lat[2]
        ));
    }

    // Every write reached both columns.
    for db in ["shift", "classic"] {
        let out = cluster
            .psql(
                db,
                "select count(*) from pgbench_accounts where balance is distinct from abalance",
            )
            .context("checking the columns")?;
        if out.trim() != "0" {
            bail!("{db}: {} rows where the two columns differ", out.trim());
        }
    }

    println!();
    println!("old-shape and new-shape tpcb-like at once (-c 4 each), median summed TPS of {rounds} interleaved rounds of {secs} s, scale {scale}:");
    println!();
    println!("| protocol | pgshift, no migration | pgshift, rename in dual write (× no migration) | classic trigger via pgshift (× no migration) | mean latency ms none / dual write / trigger |");
    println!("|---|---|---|---|---|");
    for row in &rows {
        println!("{row}");
    }
    println!();
    println!("both columns agree on every row of the dual-write and trigger databases");
    Ok(())
}
