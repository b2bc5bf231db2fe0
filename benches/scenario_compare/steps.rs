//! The steps of a migration, one implementation per method: pgshift's
//! lifecycle from its admin port, the classic method's DDL, trigger and
//! batched backfill over a direct connection, and none at all.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::runtime::Runtime;

use crate::common::{admin, admin_request};

/// The steps of a migration, one implementation per method; a step a
/// method does not have is a no-op (and a backfill it does not have is
/// done at once).
pub trait Steps {
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
pub struct PgshiftSteps {
    pub admin: String,
    pub batch: u32,
    pub pause_ms: u32,
    pub target_ms: u32,
}

const IDS: [&str; 2] = ["accounts_balance", "tellers_bigint"];

impl PgshiftSteps {
    fn act(&self, rt: &Runtime, action: &str, body: Value) -> Result<()> {
        for id in IDS {
            let path = format!("/migrations/{id}/{action}");
            rt.block_on(admin(&self.admin, "POST", &path, Some(&body)))?;
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
            let (code, answer) = rt.block_on(admin_request(&self.admin, "POST", &path, None))?;
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
        let (_, status) = rt.block_on(admin_request(&self.admin, "GET", "/status", None))?;
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
pub struct ClassicSteps {
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
    /// Over `client`, backfilling `batch` keys at a time with `pause_ms`
    /// between batches.
    pub fn new(client: tokio_postgres::Client, batch: u32, pause_ms: u32) -> ClassicSteps {
        ClassicSteps {
            client,
            batch: i64::from(batch),
            pause: Duration::from_millis(u64::from(pause_ms)),
            next_aid: 0,
            max_aid: 0,
        }
    }

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
pub struct NoSteps;

impl Steps for NoSteps {
    fn shapes(&self, _switched: bool) -> (bool, bool) {
        (true, false)
    }
    fn final_columns(&self) -> (&'static str, &'static str) {
        ("abalance", "tbalance")
    }
}
