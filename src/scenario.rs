//! The migration scenario `pgshift demo` runs: while stock pgbench
//! (old shape) and a pgbench script on the new columns (new shape) write
//! through pgshift in `-M prepared` and `-M simple`, it renames
//! `pgbench_accounts.abalance → balance` and changes
//! `pgbench_tellers.tbalance` from integer to bigint (`tbalance_big`) —
//! both made NOT NULL first, as most real columns are — adds
//! `pgbench_history.kind text NOT NULL`, given by `up` over each row (every
//! pgbench INSERT leaves it out), and changes `pgbench_branches.bbalance`
//! to bigint under its own name (both shapes name it; the new-shape groups
//! are marked by their application_name), driving all four through expand → backfill → validate → switch-reads →
//! contract, then complete once the load has ended — checking after each
//! step the tpcb invariant on every column that holds the truth (the sums
//! of account, teller and branch balances and of the history's deltas are
//! equal, in one snapshot) and, at the end, that no pgbench transaction
//! failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::cluster::{Cluster, SUPERUSER};
use crate::lifecycle::Lifecycle;
use crate::rewrite::migration::{MigrationSpec, Phase};
use crate::rewrite::rules::ActiveMigration;

/// The two migrations of the scenario.
pub fn migrations() -> Vec<ActiveMigration> {
    let rename = MigrationSpec::new(
        "accounts_balance",
        "pgbench_accounts",
        "abalance",
        "balance",
        None,
        None,
        None,
    );
    let retype = MigrationSpec::new(
        "tellers_bigint",
        "pgbench_tellers",
        "tbalance",
        "tbalance_big",
        Some("bigint"),
        Some("tbalance::bigint"),
        Some("tbalance_big::integer"),
    );
    let kind = crate::add_column::AddColumnKeys {
        column: "kind".into(),
        type_name: "text".into(),
        default: None,
        not_null: true,
        up: Some(HISTORY_KIND.into()),
        new_shape: None,
    };
    let added = MigrationSpec::add_column("history_kind", "pgbench_history", &kind);
    // Both shapes name `bbalance`: the new-shape groups are told apart by
    // their application_name.
    let kept = MigrationSpec::change_type_keeping_name(
        "branches_bigint",
        "pgbench_branches",
        "bbalance",
        "bigint",
        "bbalance::bigint",
        "bbalance::integer",
        Some(crate::rewrite::marker::ShapeMarker {
            application_name: Some(format!("{NEW_SHAPE_APP}%")),
            role: None,
            ..Default::default()
        }),
    );
    [rename, retype, added, kept]
        .into_iter()
        .flatten()
        .map(|spec| ActiveMigration {
            spec,
            phase: Phase::Planned,
        })
        .collect()
}

/// The new-shape groups' `application_name` (what `branches_bigint`'s
/// `new_shape` names).
pub const NEW_SHAPE_APP: &str = "pgbench-new-shape";

/// The added `pgbench_history.kind`'s value over the row: every pgbench
/// INSERT (both shapes leave it out) is given it.
pub const HISTORY_KIND: &str = "CASE WHEN delta < 0 THEN 'debit' ELSE 'credit' END";

/// The tpcb-like script on the new columns, and an UPDATE of another
/// column of the renamed table (as most application writes are): with the
/// migrating columns NOT NULL, it must not fail on a row the backfill has
/// not reached yet.
pub const NEW_SHAPE: &str = "\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET balance = balance + :delta WHERE aid = :aid;
UPDATE pgbench_accounts SET filler = filler WHERE aid = :aid;
SELECT balance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance_big = tbalance_big + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
";

/// The backfill's target batch duration, and its pause between batches.
pub const BACKFILL_BATCH_MS: u32 = 100;
pub const BACKFILL_PAUSE_MS: u32 = 200;

/// How the scenario runs.
pub struct Options {
    /// The pgbench tables' scale (the new-shape script's `:scale`).
    pub scale: u32,
    /// pgbench clients per group (four groups: old/new shape × prepared/simple).
    pub clients: u32,
    /// Seconds of load.
    pub duration_secs: u32,
    /// Inject faults while migrating: a transaction holding a lock on the
    /// renamed table across `expand` and across `contract`, and a pgbench
    /// client killed with SIGKILL mid-run during the backfill.
    pub faults: bool,
}

/// One pgbench group's result.
struct Group {
    name: &'static str,
    processed: u64,
    failed: u64,
    tps: f64,
    latency_ms: f64,
}

/// Runs the scenario through the proxy at `port`; `Ok(true)` when every
/// check held.
pub async fn run(
    cluster: &Cluster,
    port: u16,
    lifecycle: Arc<Lifecycle>,
    options: &Options,
) -> Result<bool> {
    let dir = cluster.root().join("scenario");
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("new_shape.sql");
    std::fs::write(&script, NEW_SHAPE)?;
    let pgbench = cluster.binaries().tool("pgbench");
    let port_s = port.to_string();
    let clients = options.clients.max(1).to_string();
    let secs = options.duration_secs.max(1).to_string();
    let script_s = script.display().to_string();
    // pgbench sets `:scale` from the tables only for its built-in scripts;
    // a custom script gets 1 unless told (every new-shape client would hit
    // branch 1 and the first 100,000 accounts).
    let scale_s = options.scale.max(1).to_string();
    let groups: [(&'static str, Vec<&str>); 4] = [
        ("old shape, -M prepared", vec!["-M", "prepared"]),
        ("old shape, -M simple", vec!["-M", "simple"]),
        (
            "new shape, -M prepared",
            vec!["-M", "prepared", "-f", &script_s, "-s", &scale_s],
        ),
        (
            "new shape, -M simple",
            vec!["-M", "simple", "-f", &script_s, "-s", &scale_s],
        ),
    ];
    let started = Instant::now();
    let mut phases = Timeline::start();
    let mut running = Vec::new();
    for (k, (name, extra)) in groups.iter().enumerate() {
        // Per-transaction logs, for TPS, p99 and stalls per phase.
        let log_prefix = dir.join(format!("group{k}")).display().to_string();
        let child = tokio::process::Command::new(&pgbench)
            .args(["-h", "127.0.0.1", "-p", &port_s, "-U", SUPERUSER])
            .args(["-n", "-c", &clients, "-j", "1", "-T", &secs])
            .args(["-l", "--log-prefix", &log_prefix])
            .args(extra)
            .arg("postgres")
            .env("PGAPPNAME", if k < 2 { "pgbench" } else { NEW_SHAPE_APP })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("running {}", pgbench.display()))?;
        running.push((*name, child));
    }
    println!(
        "load: 4 pgbench groups ({} client(s) each, {} s) through pgshift — old and new shape, prepared and simple",
        options.clients, options.duration_secs
    );
    // The fault run's extra client, killed during the backfill.
    let mut victim = if options.faults {
        Some(
            tokio::process::Command::new(&pgbench)
                .args(["-h", "127.0.0.1", "-p", &port_s, "-U", SUPERUSER])
                .args(["-n", "-c", "1", "-j", "1", "-T", &secs, "-M", "prepared"])
                .arg("postgres")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("running {}", pgbench.display()))?,
        )
    } else {
        None
    };
    let check = Checker::connect(cluster).await?;
    let mut ok = phases
        .unmeasured(check.invariant("before the migrations", &[]))
        .await?;
    // A stretch of load with no migration first: the baseline the phases
    // are compared with.
    let warm_up =
        Duration::from_secs_f64((f64::from(options.duration_secs) * 0.15).clamp(0.5, 10.0));
    tokio::time::sleep(warm_up).await;

    let ids = [
        "accounts_balance",
        "tellers_bigint",
        "history_kind",
        "branches_bigint",
    ];
    let step = |action: &'static str, body: Value| {
        let lifecycle = Arc::clone(&lifecycle);
        async move {
            let parsed = crate::api::Action::parse(action, &body)?;
            for id in ids {
                let t = Instant::now();
                let status = lifecycle
                    .act(id, parsed.clone())
                    .await
                    .with_context(|| format!("{action} {id}"))?;
                println!(
                    "  {:>6.1} s  {id}: {action} → phase {} ({} ms)",
                    started.elapsed().as_secs_f64(),
                    status.phase,
                    t.elapsed().as_millis()
                );
            }
            Ok::<_, anyhow::Error>(())
        }
    };
    println!("migrating while the load runs:");
    phases.enter("expand");
    let hold = if options.faults {
        Some(hold_lock(cluster, "expand").await?)
    } else {
        None
    };
    step("expand", Value::Null).await?;
    if let Some(hold) = hold {
        hold.await??;
    }
    ok &= phases.unmeasured(check.invariant("expanded", &[])).await?;
    phases.enter("backfill");
    // Batches of about 100 ms with 200 ms pauses: on a machine where the
    // database has no spare core, a backfill at full speed takes a whole
    // core from the application; at a third of the time, a third of one.
    step(
        "backfill",
        json!({"batch_target_ms": BACKFILL_BATCH_MS, "batch_pause_ms": BACKFILL_PAUSE_MS}),
    )
    .await?;
    if let Some(mut victim) = victim.take() {
        // Give it a moment to be inside a transaction, then kill it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        victim.start_kill()?;
        let _ = victim.wait().await;
        println!("             fault: an extra pgbench client killed with SIGKILL in the middle of its transactions");
    }
    let mut last_printed = -1i64;
    loop {
        let statuses: Vec<_> = ids
            .iter()
            .map(|id| lifecycle.status_of(id))
            .collect::<Result<_, _>>()?;
        let done: i64 = statuses.iter().map(|s| s.backfill.rows_done).sum();
        let total: i64 = statuses
            .iter()
            .map(|s| s.backfill.rows_total.unwrap_or(0))
            .sum();
        let tenth = if total > 0 { done * 10 / total } else { 0 };
        if tenth != last_printed {
            last_printed = tenth;
            let filled = tenth.clamp(0, 10) as usize;
            println!(
                "  {:>6.1} s  backfill [{}{}] {done}/{total} rows",
                started.elapsed().as_secs_f64(),
                "#".repeat(filled),
                "-".repeat(10 - filled)
            );
        }
        if statuses.iter().all(|s| s.phase == Phase::Backfilled) {
            println!(
                "  {:>6.1} s  every backfill done → phase backfilled",
                started.elapsed().as_secs_f64()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ok &= phases
        .unmeasured(check.invariant("backfilled", NEW_COLUMNS))
        .await?;
    phases.enter("validate");
    // pgshift's default check: one statement for tables this size.
    step("validate", json!({})).await?;
    for id in ids {
        let m = lifecycle.status_of(id)?;
        let mismatches = m.validation.map_or(-1, |v| v.mismatches);
        println!("             {id}: validation found {mismatches} mismatches");
        ok &= mismatches == 0;
    }
    phases.enter("switch reads");
    step("switch-reads", json!({"to": "new"})).await?;
    phases.enter("reads on new");
    ok &= phases
        .unmeasured(check.invariant("reads switched", NEW_COLUMNS))
        .await?;
    // The old-shape clients are still running: they are served from the
    // new columns after the contract, so it goes ahead (forced).
    println!("             (old-shape clients still run: contract is forced; they are served from the new columns)");
    phases.enter("contract");
    let hold = if options.faults {
        Some(hold_lock(cluster, "contract").await?)
    } else {
        None
    };
    step("contract", json!({"force": true})).await?;
    if let Some(hold) = hold {
        hold.await??;
    }
    phases.enter("contracted");
    ok &= phases
        .unmeasured(check.invariant("contracted", NEW_COLUMNS))
        .await?;

    let mut results = Vec::new();
    for (name, child) in running {
        let out = child.wait_with_output().await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let field = |prefix: &str| -> f64 {
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(-1.0)
        };
        if !out.status.success() {
            println!(
                "pgbench ({name}) failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            ok = false;
        }
        results.push(Group {
            name,
            processed: field("number of transactions actually processed: ").max(0.0) as u64,
            failed: field("number of failed transactions: ").max(0.0) as u64,
            tps: field("tps = "),
            latency_ms: field("latency average = "),
        });
    }
    println!(
        "load finished after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let per_phase = phases.report(&dir)?;
    step("complete", Value::Null).await?;
    ok &= check.invariant("complete", NEW_COLUMNS).await?;
    ok &= check.not_null_carried().await?;
    ok &= check.kind_given().await?;

    println!();
    println!("| client group | transactions | failed | TPS | mean latency ms |");
    println!("|---|---|---|---|---|");
    for g in &results {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} |",
            g.name, g.processed, g.failed, g.tps, g.latency_ms
        );
        ok &= g.failed == 0 && g.processed > 0;
    }
    println!();
    println!("| phase | seconds | TPS (all groups) | × before | p99 latency ms | longest transaction ms |");
    println!("|---|---|---|---|---|---|");
    for row in &per_phase {
        println!("{row}");
    }
    println!();
    if ok {
        println!("every check held: no failed transaction, zero mismatches, the tpcb invariant exact after every step");
    } else {
        println!("SOME CHECK FAILED (see above)");
    }
    Ok(ok)
}

/// The new columns the invariant includes once they are backfilled.
const NEW_COLUMNS: &[&str] = &["balance", "tbalance_big", "bbalance_pgshift_new"];

/// How long the fault run's transaction holds its lock.
const HOLD: Duration = Duration::from_secs(3);

/// Opens a transaction that holds ACCESS SHARE on `pgbench_accounts` for
/// [`HOLD`] (so the ALTER TABLE of `step` must wait for it) and returns
/// once the lock is held; the task ends when the transaction does.
async fn hold_lock(
    cluster: &Cluster,
    step: &'static str,
) -> Result<tokio::task::JoinHandle<Result<()>>> {
    let holder = Checker::connect(cluster).await?.client;
    holder
        .batch_execute("begin; lock table pgbench_accounts in access share mode")
        .await?;
    println!(
        "             fault: a transaction holds a lock on pgbench_accounts for {} s across {step}",
        HOLD.as_secs()
    );
    Ok(tokio::spawn(async move {
        tokio::time::sleep(HOLD).await;
        holder.batch_execute("commit").await?;
        Ok(())
    }))
}

/// Checks the tpcb invariant on a direct connection.
struct Checker {
    client: tokio_postgres::Client,
}

impl Checker {
    async fn connect(cluster: &Cluster) -> Result<Checker> {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(cluster.port())
            .user(SUPERUSER)
            .dbname("postgres");
        let (client, connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .context("connecting to check the invariant")?;
        tokio::spawn(connection);
        Ok(Checker { client })
    }

    /// The sums of every balance column that exists (the old ones always,
    /// the new ones in `new_columns` once they are backfilled) equal the
    /// sum of the history's deltas, in one snapshot.
    async fn invariant(&self, when: &str, new_columns: &[&str]) -> Result<bool> {
        let existing: Vec<(String, String)> = self
            .client
            .query(
                "select table_name::text, column_name::text from information_schema.columns
                  where table_schema = 'public'
                    and (table_name, column_name) in (('pgbench_accounts', 'abalance'), ('pgbench_accounts', 'balance'),
                                                      ('pgbench_tellers', 'tbalance'), ('pgbench_tellers', 'tbalance_big'),
                                                      ('pgbench_branches', 'bbalance'), ('pgbench_branches', 'bbalance_pgshift_new'))",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let columns: Vec<&(String, String)> = existing
            .iter()
            .filter(|(_, c)| {
                ["abalance", "tbalance", "bbalance"].contains(&c.as_str())
                    || new_columns.contains(&c.as_str())
            })
            .collect();
        let mut select =
            vec!["(select coalesce(sum(delta), 0) from pgbench_history)::int8".to_string()];
        let mut names = vec!["history.delta".to_string()];
        for (table, column) in &columns {
            select.push(format!("(select sum({column}) from {table})::int8"));
            names.push(column.clone());
        }
        let row = self
            .client
            .query_one(&format!("select {}", select.join(", ")), &[])
            .await?;
        let sums: Vec<i64> = (0..select.len()).map(|i| row.get(i)).collect();
        let holds = sums.iter().all(|s| *s == sums[0]);
        let listed: Vec<String> = names
            .iter()
            .zip(&sums)
            .map(|(n, s)| format!("{n} {s}"))
            .collect();
        println!(
            "             invariant {when}: {} ({})",
            if holds { "holds" } else { "BROKEN" },
            listed.join(", ")
        );
        Ok(holds)
    }

    /// The new columns ended NOT NULL, as the old ones were, with their
    /// types (`bbalance` is bigint under its own name).
    async fn not_null_carried(&self) -> Result<bool> {
        let row = self
            .client
            .query_one(
                "select count(*) filter (where attnotnull), count(*) from pg_attribute
                  where (attrelid, attname, atttypid) in (('pgbench_accounts'::regclass, 'balance', 'int4'::regtype),
                                                          ('pgbench_tellers'::regclass, 'tbalance_big', 'int8'::regtype),
                                                          ('pgbench_branches'::regclass, 'bbalance', 'int8'::regtype))",
                &[],
            )
            .await?;
        let (not_null, found): (i64, i64) = (row.get(0), row.get(1));
        let holds = not_null == 3 && found == 3;
        println!(
            "             balance, tbalance_big and bbalance (now bigint) NOT NULL as abalance, tbalance and bbalance were: {}",
            if holds { "yes" } else { "NO" }
        );
        Ok(holds)
    }
}

impl Checker {
    /// Every history row has the kind its delta gives (the rows inserted
    /// before expand through the backfill, the others through their own
    /// INSERT), and the column ended NOT NULL.
    async fn kind_given(&self) -> Result<bool> {
        let row = self
            .client
            .query_one(
                &format!(
                    "select count(*), count(*) filter (where kind is distinct from ({HISTORY_KIND})),
                            (select attnotnull from pg_attribute where attrelid = 'pgbench_history'::regclass and attname = 'kind')
                       from pgbench_history"
                ),
                &[],
            )
            .await?;
        let (rows, wrong, not_null): (i64, i64, bool) = (row.get(0), row.get(1), row.get(2));
        let holds = wrong == 0 && not_null && rows > 0;
        println!(
            "             pgbench_history.kind: {rows} rows, {wrong} without the kind up gives, NOT NULL: {}",
            if not_null { "yes" } else { "NO" }
        );
        Ok(holds)
    }
}

/// When each phase of the scenario began (Unix µs), to cut the pgbench
/// transaction logs by phase.
struct Timeline {
    phases: Vec<(&'static str, i64)>,
}

fn unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Timeline {
    fn start() -> Timeline {
        Timeline {
            phases: vec![("before", unix_us())],
        }
    }

    fn enter(&mut self, phase: &'static str) {
        self.phases.push((phase, unix_us()));
    }

    /// Leaves the measured windows while the scenario checks the invariant
    /// (sums over every row, which would weigh on the phase), then goes
    /// back to the phase it was in.
    async fn unmeasured<T>(&mut self, f: impl std::future::Future<Output = T>) -> T {
        let current = self.phases.last().map_or("before", |p| p.0);
        self.phases.push(("", unix_us()));
        let out = f.await;
        self.phases.push((current, unix_us()));
        out
    }

    /// Markdown rows: per phase, its length, the TPS of all groups, the
    /// p99 and the longest transaction latency (read from the `-l` logs
    /// `group*` under `dir`: client, transaction, latency µs, script,
    /// epoch s, µs).
    fn report(&self, dir: &std::path::Path) -> Result<Vec<String>> {
        let mut done: Vec<(i64, i64)> = Vec::new(); // (completed at µs, latency µs)
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let is_log = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("group"));
            if !is_log {
                continue;
            }
            for line in std::fs::read_to_string(&path)?.lines() {
                let f: Vec<i64> = line
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect();
                if f.len() >= 6 {
                    done.push((f[4] * 1_000_000 + f[5], f[2]));
                }
            }
        }
        let end = done.iter().map(|d| d.0).max().unwrap_or_else(unix_us);
        // Each phase's windows (a phase is left for the invariant checks
        // and entered again after them), in order of first appearance.
        let mut windows: Vec<(&'static str, Vec<(i64, i64)>)> = Vec::new();
        for (k, (name, from)) in self.phases.iter().enumerate() {
            if name.is_empty() {
                continue;
            }
            let to = self.phases.get(k + 1).map_or(end, |p| p.1);
            match windows.iter_mut().find(|(n, _)| n == name) {
                Some((_, w)) => w.push((*from, to)),
                None => windows.push((name, vec![(*from, to)])),
            }
        }
        let mut rows = Vec::new();
        // TPS of the first phase (before any migration step): the baseline.
        let mut baseline: Option<f64> = None;
        for (name, spans) in windows {
            let mut latencies: Vec<i64> = done
                .iter()
                .filter(|(at, _)| spans.iter().any(|(from, to)| at >= from && at < to))
                .map(|(_, l)| *l)
                .collect();
            let seconds = spans.iter().map(|(from, to)| to - from).sum::<i64>() as f64 / 1e6;
            if latencies.is_empty() || seconds <= 0.0 {
                rows.push(format!("| {name} | {seconds:.1} | – | – | – | – |"));
                continue;
            }
            latencies.sort_unstable();
            let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
            let max = latencies[latencies.len() - 1];
            let tps = latencies.len() as f64 / seconds;
            let base = *baseline.get_or_insert(tps);
            rows.push(format!(
                "| {name} | {seconds:.1} | {tps:.0} | {:.2}× | {:.1} | {:.1} |",
                tps / base,
                p99 as f64 / 1000.0,
                max as f64 / 1000.0
            ));
        }
        Ok(rows)
    }
}
