//! The autopilot: a migration carried through its lifecycle without an
//! operator at each step. `to-switch` expands, backfills, validates and
//! switches reads once the parity check finds no mismatch; `full` also
//! contracts once no client has named the old shape for
//! `contract_after_secs` (the contract's own guard, over every proxy), then
//! completes. One proxy of the database drives it (the one whose poller
//! holds the autopilot's advisory lock); each step is an ordinary action,
//! recorded as an event by `autopilot`. The first anomaly (a step that
//! fails, mismatches found) stops it, the migration left where it is and
//! the reason on `/status`; an operator's action works at any time, and
//! `{"mode": "off"}` turns it off.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::store::Record;
use super::{ActionError, Lifecycle};
use crate::api::{self, Action, AutopilotMode, ReadSource};
use crate::rewrite::migration::Phase;

/// How long the full autopilot waits before trying a contract again that
/// old-shape clients held back.
const CONTRACT_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// The advisory lock whose holder drives every autopilot of the database.
const AUTOPILOT_LOCK: i64 = 0x7067_7368_6966_7401; // "pgshift" + 1

/// What an autopilot does next with a migration in its phase: an action,
/// or nothing yet (a backfill running, or the mode's last step done).
fn next_action(r: &Record) -> Option<Action> {
    let spec = &r.spec;
    let full = r.autopilot.mode == AutopilotMode::Full;
    let copies = !(spec.in_place || spec.renamed_to.is_some() || spec.dropped);
    match r.phase {
        Phase::Planned => Some(Action::Expand),
        Phase::Expanded if copies => Some(Action::Backfill(Default::default())),
        Phase::Expanded => Some(switch()),
        Phase::Backfilled => Some(Action::Validate(Default::default())),
        Phase::Validated => Some(switch()),
        Phase::Switched if full => Some(Action::Contract(api::Contract {
            window_secs: Some(r.autopilot.contract_after_secs),
            ..Default::default()
        })),
        Phase::Contracted if full => Some(Action::Complete),
        _ => None,
    }
}

fn switch() -> Action {
    Action::SwitchReads(api::SwitchReads {
        to: ReadSource::New,
    })
}

impl Lifecycle {
    /// `POST /migrations/{id}/autopilot`.
    pub async fn set_autopilot(
        &self,
        id: &str,
        settings: api::Autopilot,
    ) -> Result<api::MigrationStatus, ActionError> {
        let _one_at_a_time = self.action.lock().await;
        let mut record = self.record(id)?;
        if record.spec.catalog.is_some() {
            return Err(ActionError::Conflict(format!(
                "migration {id:?} is a catalog operation: the autopilot carries column and table migrations"
            )));
        }
        record.autopilot = api::Autopilot {
            stopped: None,
            ..settings
        };
        let client = self.connect().await?;
        let detail = serde_json::to_string(&record.autopilot).unwrap_or_default();
        self.commit(&client, record, "autopilot", &detail, false)
            .await?;
        drop(_one_at_a_time);
        self.status_of(id)
    }

    /// One look, from the poller: when this proxy drives the autopilots
    /// and none of their steps is under way, starts the next step of the
    /// first migration that has one.
    pub(super) async fn autopilot_step(
        self: &Arc<Self>,
        client: &tokio_postgres::Client,
    ) -> Result<(), ActionError> {
        let on =
            |r: &Record| r.autopilot.mode != AutopilotMode::Off && r.autopilot.stopped.is_none();
        let records: Vec<Record> = self.records().into_iter().filter(on).collect();
        // A backfill that stopped on an error is an anomaly too.
        if let Some(r) = records.iter().find(|r| {
            r.phase == Phase::Backfilling && !r.backfill.running && r.backfill.error.is_some()
        }) {
            let error = r.backfill.error.clone().unwrap_or_default();
            return self
                .stop_autopilot(&r.spec.id, &format!("the backfill stopped: {error}"))
                .await;
        }
        let Some((id, action)) = records
            .into_iter()
            .find_map(|r| next_action(&r).map(|a| (r.spec.id, a)))
        else {
            return Ok(());
        };
        if self.autopilot_busy.swap(true, Ordering::AcqRel) {
            return Ok(()); // a step is under way
        }
        let drives: bool = client
            .query_one("select pg_try_advisory_lock($1)", &[&AUTOPILOT_LOCK])
            .await?
            .get(0);
        if !drives {
            self.autopilot_busy.store(false, Ordering::Release);
            return Ok(());
        }
        let this = Arc::clone(self);
        tokio::spawn(super::ACTOR.scope("autopilot", async move {
            if this.autopilot_run(&id, action).await {
                // Old clients remain: look again in a while, not at every
                // poll (each attempt opens a connection and asks every proxy).
                tokio::time::sleep(CONTRACT_RETRY).await;
            }
            this.autopilot_busy.store(false, Ordering::Release);
        }));
        Ok(())
    }

    /// Runs one step; an anomaly stops the autopilot. True when the step
    /// waits for old-shape clients to go (the contract's guard).
    async fn autopilot_run(self: &Arc<Self>, id: &str, action: Action) -> bool {
        let name = action.name();
        tracing::info!(migration = %id, action = name, "autopilot: next step");
        let stopped = match self.act(id, action).await {
            Ok(status) => match status.validation {
                Some(v) if name == "validate" && v.mismatches != 0 => Some(format!(
                    "validation found {} mismatches: look into them, then validate again and turn the autopilot on",
                    v.mismatches
                )),
                _ => None,
            },
            // The old shape is still in use: the contract waits, as it
            // would for an operator.
            Err(ActionError::Conflict(m)) if name == "contract" && m.contains("old-shape") => {
                tracing::info!(migration = %id, "autopilot: old-shape clients remain; the contract waits");
                return true;
            }
            Err(e) => Some(format!("{name} failed: {e}")),
        };
        if let Some(reason) = stopped {
            tracing::warn!(migration = %id, reason = %reason, "autopilot stopped");
            if let Err(e) = self.stop_autopilot(id, &reason).await {
                tracing::warn!(migration = %id, error = %e, "cannot record why the autopilot stopped");
            }
        }
        false
    }

    async fn stop_autopilot(&self, id: &str, reason: &str) -> Result<(), ActionError> {
        let _one_at_a_time = self.action.lock().await;
        let mut record = self.record(id)?;
        record.autopilot.stopped = Some(reason.to_string());
        let client = self.connect().await?;
        let detail = format!("autopilot stopped: {reason}");
        self.commit(&client, record, "autopilot", &detail, false)
            .await
    }
}
