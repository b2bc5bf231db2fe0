//! Carrying out the migration a DDL statement became (the DDL gate's
//! `migrate` mode, `pgshift apply`): added — or found, when the same
//! migration is in flight already — then stepped. A catalog operation (an
//! index, a constraint, a default, NOT NULL) is carried to `complete`, so
//! that the statement's effect is there when its client is answered; a
//! column or table migration is expanded (both shapes served from then on)
//! and left to the autopilot it is given.

use std::sync::Arc;

use super::store::Record;
use super::{ddl, ActionError, Lifecycle};
use crate::api::{self, Action, MigrationStatus, NewMigration, Op};
use crate::ops::CatalogOp;
use crate::rewrite::migration::{parse_ident, Phase};
use crate::sql_plan::migrate::Carried;

impl Lifecycle {
    /// Adds `m` (a type change without `down` gets the exact one where
    /// there is one) and steps it as the module says; the autopilot
    /// `autopilot` takes a column or table migration on from `expanded`.
    pub async fn carry(
        self: &Arc<Self>,
        m: &NewMigration,
        autopilot: api::Autopilot,
    ) -> Result<MigrationStatus, ActionError> {
        let mut m = m.clone();
        if m.op == Some(Op::ChangeType) && m.down.is_none() {
            m.down = Some(self.derived_down(&m).await?);
        }
        // A deployment runs its migrations, then starts the new version:
        // sessions that connect from now on are the new shape.
        let shaped = matches!(m.op, Some(Op::AddColumn | Op::DropColumn))
            || (m.op == Some(Op::ChangeType) && m.to.is_none());
        if shaped && m.new_shape.is_none() {
            m.new_shape = Some(crate::rewrite::marker::ShapeMarker {
                connected_after_ms: Some(now_ms()),
                ..Default::default()
            });
        }
        if let Some(id) = self.default_dropped_of_added(&m).await? {
            return self.status_of(&id);
        }
        let id = self.added_or_found(&mut m).await?;
        let record = self.record(&id)?;
        if record.spec.catalog.is_some() {
            while let Some(action) = catalog_next(&self.record(&id)?) {
                self.act(&id, action).await?;
            }
        } else {
            if record.phase == Phase::Planned {
                self.act(&id, Action::Expand).await?;
            }
            if autopilot.mode != api::AutopilotMode::Off {
                self.set_autopilot(&id, autopilot).await?;
            }
        }
        self.status_of(&id)
    }

    /// The id of `m` once stored: the same migration in flight is taken
    /// as it is (the statement sent again); a finished one, or another
    /// under the id, leaves the id to it and `m` gets `id_2`, `id_3`….
    async fn added_or_found(&self, m: &mut NewMigration) -> Result<String, ActionError> {
        let spec = m
            .spec()
            .map_err(|e| ActionError::BadRequest(e.to_string()))?;
        let records = self.records();
        let taken = |id: &str| records.iter().find(|r| r.spec.id == id);
        if let Some(r) = taken(&m.id) {
            let finished = matches!(r.phase, Phase::Complete | Phase::RolledBack);
            // (The same statement again: its marker's time aside.)
            let same = crate::rewrite::migration::MigrationSpec {
                new_shape: r.spec.new_shape.clone(),
                ..spec
            } == r.spec;
            if same && !finished {
                return Ok(r.spec.id.clone());
            }
            let base = m.id.clone();
            m.id = (2..)
                .map(|n| format!("{base}_{n}"))
                .find(|id| taken(id).is_none())
                .unwrap_or(base);
        }
        Ok(self.add(m).await?.id)
    }

    /// `DROP DEFAULT` of a column an `add_column` in flight is adding
    /// (Django adds a column with its default, then drops the default):
    /// run at once under the lock discipline and recorded as an event of
    /// that migration, whose `up` still gives old-shape INSERTs the value.
    /// The migration's id; `None` for any other statement.
    async fn default_dropped_of_added(
        &self,
        m: &NewMigration,
    ) -> Result<Option<String>, ActionError> {
        let (Some(Op::SetDefault), Some(column), None) = (m.op, &m.column, &m.default) else {
            return Ok(None);
        };
        let spec = m
            .spec()
            .map_err(|e| ActionError::BadRequest(e.to_string()))?;
        let column = parse_ident(column).map_err(ActionError::BadRequest)?;
        let adding = self.records().into_iter().find(|r| {
            !matches!(r.phase, Phase::Complete | Phase::RolledBack)
                && r.spec.table == spec.table
                && r.spec
                    .added
                    .as_ref()
                    .is_some_and(|a| a.column == column && a.up.is_some())
        });
        let Some(record) = adding else {
            return Ok(None);
        };
        let sql = format!(
            "alter table {} alter column {} drop default",
            spec.table,
            crate::names::quote_ident(&column)
        );
        let id = record.spec.id.clone();
        let _one_at_a_time = self.action.lock().await;
        let client = self.connect().await?;
        ddl::run_with_lock_timeout(&client, &sql, self.lock).await?;
        let record = self.record(&id)?;
        self.commit(&client, record, "default", &sql, false).await?;
        Ok(Some(id))
    }

    /// The exact `down` of a type change, from the column's type now.
    async fn derived_down(&self, m: &NewMigration) -> Result<String, ActionError> {
        let (Some(from), Some(new_type)) = (&m.from, &m.new_type) else {
            return Err(ActionError::BadRequest(
                "change_type needs from and type".into(),
            ));
        };
        let column = parse_ident(from).map_err(ActionError::BadRequest)?;
        let client = self.connect().await?;
        let Some(info) = ddl::column_info(&client, &m.table, &column).await? else {
            return Err(ActionError::Conflict(format!(
                "table {} has no column {from}",
                m.table
            )));
        };
        crate::sql_plan::downs::derived_down(from, &info.type_name, new_type).ok_or_else(|| {
            ActionError::BadRequest(format!(
                "pgshift does not know how to turn {new_type} back into {} exactly, so it cannot serve clients of the old type: run the change as a migration with \"down\" given (POST /migrations, or a -- pgshift: down = … comment for pgshift plan/apply)",
                info.type_name
            ))
        })
    }
}

/// The lifecycle as the DDL gate's carrier: each migration given the
/// configured autopilot, its events recorded as by `ddl-gate`.
pub struct GateCarrier {
    pub lifecycle: Arc<Lifecycle>,
    pub autopilot: api::Autopilot,
}

impl crate::sql_plan::migrate::Carrier for GateCarrier {
    fn carry(
        &self,
        m: NewMigration,
        backend_pid: i32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Carried, String>> + Send>> {
        let (lifecycle, autopilot) = (Arc::clone(&self.lifecycle), self.autopilot.clone());
        Box::pin(super::ACTOR.scope("ddl-gate", async move {
            let carried = async {
                if let Some(why) = lifecycle.as_written(&m, backend_pid).await? {
                    return Ok(Carried::AsWritten(why));
                }
                let status = lifecycle.carry(&m, autopilot).await?;
                Ok(Carried::Done(status.id))
            };
            carried.await.map_err(|e: ActionError| e.to_string())
        }))
    }
}

impl Lifecycle {
    /// Why the statement of `m`, sent by the session of server process
    /// `backend_pid`, goes to Postgres as written rather than carried
    /// out (`None`: carried out). Its table is not there for other
    /// sessions (created in the client's open transaction): nobody else
    /// uses it. The client's transaction holds a lock on it (it changed or
    /// read the table before): the lifecycle's DDL would wait for that
    /// transaction while it waits for the lifecycle; an index or a
    /// constraint goes as written, a change of the table's shape is
    /// refused (sent as written, it would break the clients of the old
    /// shape).
    async fn as_written(
        &self,
        m: &NewMigration,
        backend_pid: i32,
    ) -> Result<Option<String>, ActionError> {
        let client = self.connect().await?;
        let row = client
            .query_one(
                "select to_regclass($1) is not null,
                        exists (select 1 from pg_locks
                                 where pid = $2 and granted and relation = to_regclass($1)),
                        (select pg_has_role(a.usesysid, c.relowner, 'USAGE')
                           from pg_stat_activity a, pg_class c
                          where a.pid = $2 and c.oid = to_regclass($1))",
                &[&m.table, &backend_pid],
            )
            .await?;
        let (exists, locked): (bool, bool) = (row.get(0), row.get(1));
        if !exists {
            return Ok(Some(format!(
                "table {} is not there for other sessions (created in the open transaction, or missing)",
                m.table
            )));
        }
        // pgshift changes the table as its control role: only for a client
        // that could change it itself (its owner, or a member of the
        // owning role, as ALTER TABLE and CREATE INDEX require).
        if row.get::<_, Option<bool>>(2) != Some(true) {
            return Ok(Some(format!(
                "the session's role does not own table {}: Postgres answers it (pgshift carries DDL out only for a client that could run it itself)",
                m.table
            )));
        }
        if !locked {
            return Ok(None);
        }
        if m.op.is_some_and(|op| op.is_catalog()) {
            return Ok(Some(format!(
                "the transaction sending it holds a lock on {} already: built from outside, it would wait for that transaction",
                m.table
            )));
        }
        Err(ActionError::Conflict(format!(
            "the transaction sending it holds a lock on {} already (it changed or read the table earlier), and pgshift cannot change the table from outside that transaction without waiting for it: send the statement in a transaction of its own (Django: a migration of its own, or atomic = False; Rails: disable_ddl_transaction!; Alembic: transaction_per_migration = True)",
            m.table
        )))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The next step of a catalog operation on its way to `complete`.
fn catalog_next(r: &Record) -> Option<Action> {
    let validates = matches!(
        r.spec.catalog.as_ref().map(|c| &c.op),
        Some(
            CatalogOp::CreateIndex { .. }
                | CatalogOp::AddConstraint { .. }
                | CatalogOp::SetNotNull { .. }
        )
    );
    match r.phase {
        Phase::Planned => Some(Action::Expand),
        Phase::Expanded if validates => Some(Action::Validate(Default::default())),
        Phase::Expanded | Phase::Validated => Some(Action::Contract(Default::default())),
        Phase::Contracted => Some(Action::Complete),
        _ => None,
    }
}
