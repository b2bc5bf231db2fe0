//! The DDL gate's `migrate` mode: a DDL statement that has a pgshift
//! migration for it (a rename, a type change, a NOT NULL column, a dropped
//! column, an index, a constraint, NOT NULL) is not sent to Postgres: the
//! migration is carried out instead ([`Carrier`], the lifecycle), while the
//! session holds the statement, and the client is answered with the command
//! tag the statement would have had. A statement carried out is a *job*,
//! found again by its text each time the session asks; finished jobs are
//! answered once and forgotten.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::api::{NewMigration, Op};
use crate::rewrite::Refusal;

use super::{plan_text, Verdict};

/// A finished job no session came back for is forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// What carrying a statement's migration out came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Carried {
    /// Carried out: the migration's id.
    Done(String),
    /// Not pgshift's to carry out: the statement goes to Postgres as
    /// written, for this reason (its table is not there for other
    /// sessions: created in the client's open transaction, or missing).
    AsWritten(String),
}

/// What carries a migration out: added and stepped until the statement's
/// effect is there (the lifecycle), for the session served by server
/// process `backend_pid` (0: not known). `Err` is the reason, for the
/// client.
pub trait Carrier: Send + Sync + 'static {
    fn carry(
        &self,
        m: NewMigration,
        backend_pid: i32,
    ) -> Pin<Box<dyn Future<Output = Result<Carried, String>> + Send>>;
}

/// The answer to a statement whose job has finished.
#[derive(Debug)]
pub enum Answer {
    /// Carried out: the client gets this command tag.
    Tag(&'static str),
    /// Failed: the client gets this error.
    Refuse(Refusal),
    /// Sent to Postgres as written.
    AsWritten,
}

/// The lifecycle, once it has started (it may start after the proxy).
pub type CarrierSlot = Arc<OnceLock<Arc<dyn Carrier>>>;

enum Job {
    Running,
    Done(&'static str, Instant),
    AsWritten(Instant),
    Failed(String, Instant),
}

type Jobs = Arc<Mutex<HashMap<u64, Job>>>;

/// The jobs of the gate's `migrate` mode.
#[derive(Default)]
pub struct Migrating {
    carrier: CarrierSlot,
    jobs: Jobs,
}

impl std::fmt::Debug for Migrating {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrating").finish_non_exhaustive()
    }
}

/// The migration a statement becomes in `migrate` mode, and the command
/// tag its client expects; `None` for statements Postgres runs.
pub fn migration_of(sql: &str) -> Option<(NewMigration, &'static str)> {
    let steps = plan_text("", sql);
    let [step] = steps.as_slice() else {
        return None;
    };
    let d = &step.decision;
    let carried = matches!(d.verdict, Verdict::Migrate | Verdict::MakeSafe)
        || d.rule == "change-type-needs-down";
    let m = d.migration.clone().filter(|_| carried)?;
    let tag = match m.op {
        Some(Op::CreateIndex) => "CREATE INDEX",
        Some(Op::DropIndex) => "DROP INDEX",
        _ => "ALTER TABLE",
    };
    Some((m, tag))
}

/// A job is its session's (its server process) and its statement's: a
/// session is answered only for what it sent.
fn key(sql: &[u8], backend_pid: i32) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    sql.hash(&mut h);
    backend_pid.hash(&mut h);
    h.finish()
}

fn lock(jobs: &Jobs) -> std::sync::MutexGuard<'_, HashMap<u64, Job>> {
    jobs.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records `job` for `k`, forgetting finished jobs nobody came back for.
fn record(jobs: &Jobs, k: u64, job: Job) {
    let mut jobs = lock(jobs);
    jobs.retain(|_, j| match j {
        Job::Running => true,
        Job::Done(_, at) | Job::AsWritten(at) | Job::Failed(_, at) => at.elapsed() < FORGET_AFTER,
    });
    jobs.insert(k, job);
}

impl Migrating {
    pub fn new(carrier: CarrierSlot) -> Migrating {
        Migrating {
            carrier,
            jobs: Jobs::default(),
        }
    }

    /// Whether the session must hold `sql` (a DDL statement): its
    /// migration is being carried out. The first time a statement that
    /// becomes a migration is asked about, its job starts.
    pub fn pending(&self, sql: &[u8], backend_pid: i32, catalog_only: bool) -> bool {
        let k = key(sql, backend_pid);
        if let Some(job) = lock(&self.jobs).get(&k) {
            return matches!(job, Job::Running);
        }
        let carried = std::str::from_utf8(sql).ok().and_then(migration_of);
        let Some((m, tag)) =
            carried.filter(|(m, _)| !catalog_only || m.op.is_some_and(|op| op.is_catalog()))
        else {
            return false;
        };
        let (Some(carrier), Ok(runtime)) = (
            self.carrier.get().cloned(),
            tokio::runtime::Handle::try_current(),
        ) else {
            let why = "pgshift's migration lifecycle has not started yet (it retries connecting to the database as its control role); try again shortly".to_string();
            record(&self.jobs, k, Job::Failed(why, Instant::now()));
            return false;
        };
        record(&self.jobs, k, Job::Running);
        tracing::info!(migration = %m.id, table = %m.table, "DDL gate: carrying a statement out as a migration");
        let jobs = Arc::clone(&self.jobs);
        // Carried in a task of its own: should it fail outright (a panic),
        // the session is refused, not held for ever.
        let run = runtime.spawn(carrier.carry(m, backend_pid));
        runtime.spawn(async move {
            let carried = run.await.unwrap_or_else(|e| {
                Err(format!(
                    "pgshift's lifecycle stopped while carrying it out ({e})"
                ))
            });
            let job = match carried {
                Ok(Carried::Done(id)) => {
                    tracing::info!(migration = %id, "DDL gate: the statement's migration is carried out; answering its client");
                    Job::Done(tag, Instant::now())
                }
                Ok(Carried::AsWritten(why)) => {
                    tracing::info!(reason = %why, "DDL gate: the statement goes to Postgres as written");
                    Job::AsWritten(Instant::now())
                }
                Err(why) => {
                    tracing::warn!(reason = %why, "DDL gate: the statement's migration failed; refusing it");
                    Job::Failed(why, Instant::now())
                }
            };
            record(&jobs, k, job);
        });
        true
    }

    /// The answer to a statement of the session served by `backend_pid`
    /// whose job has finished: its command tag, or why it failed. The job
    /// is forgotten.
    pub fn answer(&self, sql: &[u8], backend_pid: i32) -> Option<Answer> {
        let k = key(sql, backend_pid);
        let mut jobs = lock(&self.jobs);
        if matches!(jobs.get(&k)?, Job::Running) {
            return None;
        }
        match jobs.remove(&k)? {
            Job::Done(tag, _) => Some(Answer::Tag(tag)),
            Job::AsWritten(_) => Some(Answer::AsWritten),
            Job::Failed(why, _) => Some(Answer::Refuse(failed(why))),
            Job::Running => None,
        }
    }
}

fn failed(why: String) -> Refusal {
    Refusal {
        code: "0A000",
        message: format!("pgshift could not carry this DDL statement out as a zero-downtime migration: {why}"),
        detail: None,
        hint: Some("See pgshift's /status and log for the migration; fix what the message names and send the statement again.".into()),
        routine: None,
    }
}
