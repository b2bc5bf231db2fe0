//! The lifecycle of a catalog operation ([`crate::catalog_op`]): an index,
//! a constraint or a default, which no client statement needs rewritten
//! for. Each phase does the non-blocking part of the classic method:
//!
//! | op | expand | validate | contract | rollback |
//! |---|---|---|---|---|
//! | create_index | `CREATE INDEX CONCURRENTLY` (an invalid leftover dropped first) | checks it is valid | — | `DROP INDEX CONCURRENTLY` |
//! | add_constraint FK/CHECK | `ADD … NOT VALID` | `VALIDATE CONSTRAINT` | — (needs validated) | `DROP CONSTRAINT` |
//! | add_constraint UNIQUE/PK | unique index `CONCURRENTLY` | `ADD … USING INDEX` | — (needs validated) | constraint and index dropped |
//! | drop_index | checks it exists | — | `DROP INDEX CONCURRENTLY` | nothing to undo |
//! | drop_constraint | checks it exists | — | `DROP CONSTRAINT` | nothing to undo |
//! | set_default | `SET DEFAULT` (the old one recorded first) | — | — | the old default back |
//! | set_not_null | `CHECK (c IS NOT NULL) NOT VALID` | `VALIDATE` | `SET NOT NULL`, check dropped | check (and NOT NULL) dropped |
//! | drop_not_null | checks it | — | `DROP NOT NULL` | nothing to undo |
//!
//! The NOT NULL steps are in [`super::not_null_steps`].
//!
//! Every ALTER runs under the lock discipline; the concurrent index
//! statements take no lock that queues the application. Backfill and the
//! read switch do not apply (409).

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Client;

use super::store::Record;
use super::{ddl, ActionError, Lifecycle};
use crate::api::{Action, IndexBuild};
use crate::ops::{CatalogOp, ConstraintKind};
use crate::rewrite::migration::{quote_ident, MigrationSpec, Phase, TableName};

/// How often an index build's progress is read for `/status`.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// The catalog operation of a record (every caller checked it has one).
fn op_of(record: &Record) -> Result<&CatalogOp, ActionError> {
    record.spec.catalog.as_ref().map(|c| &c.op).ok_or_else(|| {
        ActionError::Conflict(format!("{:?} is not a catalog operation", record.spec.id))
    })
}

/// An index build's progress being read into `/status`; dropped (the
/// build over, or the action ended any other way), it stops and the
/// progress is taken off.
struct BuildWatch {
    task: tokio::task::JoinHandle<()>,
    builds: Arc<std::sync::Mutex<std::collections::BTreeMap<String, IndexBuild>>>,
    id: String,
}

impl Drop for BuildWatch {
    fn drop(&mut self) {
        self.task.abort();
        self.builds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// `schema.name` of an index in `table`'s schema.
fn index_in(table: &TableName, name: &str) -> String {
    format!("{}.{}", quote_ident(&table.schema), quote_ident(name))
}

impl Lifecycle {
    /// An action on a catalog operation.
    pub(super) async fn act_catalog(
        &self,
        record: Record,
        action: Action,
    ) -> Result<(), ActionError> {
        match action {
            Action::Expand => self.expand_catalog(record).await,
            Action::Validate(_) => self.validate_catalog(record).await,
            Action::Contract(_) => self.contract_catalog(record).await,
            Action::Complete => self.complete(record).await,
            Action::Rollback => self.rollback_catalog(record).await,
            Action::Backfill(_) | Action::Pause | Action::Resume | Action::SwitchReads(_) => {
                Err(ActionError::Conflict(format!(
                    "migration {:?} ({}) changes only the catalog: there is nothing to backfill or switch; its steps are expand, validate, contract, complete",
                    record.spec.id,
                    record.spec.op().as_str()
                )))
            }
        }
    }

    /// `POST /migrations`: what the operation needs to find (or not find)
    /// in the catalog.
    pub(super) async fn check_catalog_add(
        &self,
        client: &Client,
        spec: &MigrationSpec,
        op: &CatalogOp,
    ) -> Result<(), ActionError> {
        let table = spec.table.to_string();
        let conflict = |m: String| Err(ActionError::Conflict(m));
        match op {
            CatalogOp::CreateIndex { name, .. } => {
                if relation_exists(client, &spec.table, name).await? {
                    return conflict(format!(
                        "there is already a relation {}",
                        index_in(&spec.table, name)
                    ));
                }
            }
            CatalogOp::AddConstraint {
                name,
                kind,
                columns,
                ..
            } => {
                if constraint_exists(client, &table, name).await? {
                    return conflict(format!(
                        "table {table} already has a constraint {}",
                        quote_ident(name)
                    ));
                }
                if matches!(kind, ConstraintKind::Unique | ConstraintKind::PrimaryKey)
                    && relation_exists(client, &spec.table, name).await?
                {
                    return conflict(format!(
                        "there is already a relation {}: the constraint's index takes its name",
                        index_in(&spec.table, name)
                    ));
                }
                if *kind == ConstraintKind::PrimaryKey {
                    self.check_primary_key(client, &table, columns).await?;
                }
            }
            CatalogOp::DropIndex { name } => {
                check_droppable_index(client, &spec.table, name).await?
            }
            CatalogOp::DropConstraint { name } => existing_constraint(client, &table, name).await?,
            CatalogOp::SetDefault { column, .. } => {
                Self::existing_column(client, &table, column).await?;
            }
            CatalogOp::SetNotNull { column } => {
                self.check_not_null_op(client, &spec.table, column, true)
                    .await?
            }
            CatalogOp::DropNotNull { column } => {
                self.check_not_null_op(client, &spec.table, column, false)
                    .await?
            }
        }
        Ok(())
    }

    /// A primary key needs the table to have none, and NOT NULL columns
    /// (setting them here would scan the table under an exclusive lock).
    async fn check_primary_key(
        &self,
        client: &Client,
        table: &str,
        columns: &[String],
    ) -> Result<(), ActionError> {
        let has: bool = client
            .query_one(
                "select exists (select 1 from pg_constraint where conrelid = $1::text::regclass and contype = 'p')",
                &[&table],
            )
            .await?
            .get(0);
        if has {
            return Err(ActionError::Conflict(format!(
                "table {table} already has a primary key"
            )));
        }
        for c in columns {
            if !Self::existing_column(client, table, c).await?.not_null {
                return Err(ActionError::Conflict(format!(
                    "column {} of {table} is nullable: a primary key needs NOT NULL, which Postgres would prove by scanning the table under an exclusive lock; make it NOT NULL first without that scan (a migration with op set_not_null), or add a UNIQUE constraint instead",
                    quote_ident(c)
                )));
            }
        }
        Ok(())
    }

    /// `expand`: the non-blocking first half.
    async fn expand_catalog(&self, mut record: Record) -> Result<(), ActionError> {
        if record.phase != Phase::Planned {
            return Err(Self::illegal(&record, "expand", "phase planned"));
        }
        let client = self.connect().await?;
        let table = record.spec.table.clone();
        let op = op_of(&record)?.clone();
        let detail = match &op {
            CatalogOp::CreateIndex {
                name, statement, ..
            } => {
                self.build_index(&client, &record.spec.id, &table, name, statement)
                    .await?;
                format!("index {} built", index_in(&table, name))
            }
            CatalogOp::AddConstraint {
                name, body, index, ..
            } => match index {
                Some(index) => {
                    self.build_index(&client, &record.spec.id, &table, name, index)
                        .await?;
                    format!("unique index {} built", index_in(&table, name))
                }
                None => {
                    if !constraint_exists(&client, &table.to_string(), name).await? {
                        let sql = ddl::add_not_valid(&table.to_string(), name, body);
                        ddl::run_with_lock_timeout(&client, &sql, self.lock).await?;
                    }
                    format!(
                        "constraint {} added NOT VALID: enforced on new writes",
                        quote_ident(name)
                    )
                }
            },
            CatalogOp::DropIndex { name } => {
                check_droppable_index(&client, &table, name).await?;
                "nothing changed: the index is dropped at contract".into()
            }
            CatalogOp::DropConstraint { name } => {
                existing_constraint(&client, &table.to_string(), name).await?;
                "nothing changed: the constraint is dropped at contract".into()
            }
            CatalogOp::SetDefault { column, .. } => {
                self.set_default(&client, &mut record, column, &op).await?
            }
            CatalogOp::SetNotNull { column } => {
                let fill = record.spec.fill().map(|(_, fill)| fill.to_string());
                self.expand_set_not_null(&client, &table, column, fill.as_deref())
                    .await?
            }
            CatalogOp::DropNotNull { column } => {
                self.check_not_null_op(&client, &table, column, false)
                    .await?;
                "nothing changed: the NOT NULL is dropped at contract".into()
            }
        };
        record.phase = Phase::Expanded;
        self.commit(&client, record, "expand", &detail, true).await
    }

    /// `set_default` at expand: the old default recorded (once), then the
    /// new one set.
    async fn set_default(
        &self,
        client: &Client,
        record: &mut Record,
        column: &str,
        op: &CatalogOp,
    ) -> Result<String, ActionError> {
        let table = record.spec.table.to_string();
        let info = Self::existing_column(client, &table, column).await?;
        if record.catalog_undo.is_none() {
            record.catalog_undo = Some(info.default.clone().unwrap_or_default());
            super::store::save(client, record).await?;
        }
        let sql = op.describe(&record.spec.table);
        ddl::run_with_lock_timeout(client, &sql, self.lock).await?;
        Ok(format!(
            "{sql} (was {})",
            info.default.as_deref().unwrap_or("no default")
        ))
    }

    /// Builds an index `CONCURRENTLY` (no lock that holds back writes),
    /// its progress on `/status` meanwhile. An invalid leftover of an
    /// earlier attempt is dropped first; a valid index of that name is
    /// taken as built (by an expand cut short before it was recorded: the
    /// name was free when the migration was added). A build that fails
    /// leaves no invalid index behind.
    async fn build_index(
        &self,
        client: &Client,
        id: &str,
        table: &TableName,
        name: &str,
        statement: &str,
    ) -> Result<(), ActionError> {
        match ddl::invalid_index(client, &table.schema, name).await? {
            Some(false) => return Ok(()),
            Some(true) => {
                drop_index(client, table, name).await?;
            }
            None => {}
        }
        let progress = self.watch_build(id, &table.to_string());
        let built = ddl::run(client, statement).await;
        drop(progress);
        if let Err(e) = built {
            if let Err(cleanup) = drop_index(client, table, name).await {
                let index = index_in(table, name);
                tracing::warn!(%index, error = %cleanup, "the failed build's invalid index is left; the next expand drops it");
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Reads the build's progress on `table` every [`PROGRESS_EVERY`] into
    /// `builds`, until the watch is dropped.
    fn watch_build(&self, id: &str, table: &str) -> BuildWatch {
        let (config, key, table) = (self.config.clone(), id.to_string(), table.to_string());
        let builds = Arc::clone(&self.builds);
        let task = tokio::spawn(async move {
            let Ok(client) = crate::control::connect(&config).await else {
                return;
            };
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                let Ok(Some(row)) = client
                    .query_opt(
                        "select phase, blocks_done, blocks_total, tuples_done, tuples_total
                           from pg_stat_progress_create_index where relid = $1::text::regclass limit 1",
                        &[&table],
                    )
                    .await
                else {
                    continue;
                };
                let count = |i: usize| row.try_get::<_, i64>(i).unwrap_or(0);
                let build = IndexBuild {
                    phase: row.try_get(0).unwrap_or_default(),
                    blocks_done: count(1),
                    blocks_total: count(2),
                    tuples_done: count(3),
                    tuples_total: count(4),
                };
                builds
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone(), build);
            }
        });
        BuildWatch {
            task,
            builds: Arc::clone(&self.builds),
            id: id.to_string(),
        }
    }

    /// `validate`: the constraint proven over the existing rows (or its
    /// index attached); an index checked valid.
    async fn validate_catalog(&self, mut record: Record) -> Result<(), ActionError> {
        if record.phase != Phase::Expanded && record.phase != Phase::Validated {
            return Err(Self::illegal(&record, "validate", "phase expanded"));
        }
        let client = self.connect().await?;
        let table = record.spec.table.clone();
        let detail = match op_of(&record)? {
            CatalogOp::CreateIndex { name, .. } => {
                if ddl::invalid_index(&client, &table.schema, name).await? != Some(false) {
                    return Err(ActionError::Conflict(format!(
                        "index {} is missing or invalid: roll back and expand again",
                        index_in(&table, name)
                    )));
                }
                "the index is valid".to_string()
            }
            CatalogOp::AddConstraint {
                name, body, index, ..
            } => {
                let t = table.to_string();
                let c = quote_ident(name);
                if index.is_some() {
                    if !constraint_exists(&client, &t, name).await? {
                        let sql = format!("alter table {t} add constraint {c} {body}");
                        ddl::run_with_lock_timeout(&client, &sql, self.lock).await?;
                    }
                    format!("constraint {c} attached to its index")
                } else {
                    let sql = format!("alter table {t} validate constraint {c}");
                    ddl::run_with_lock_timeout(&client, &sql, self.lock).await?;
                    format!("constraint {c} validated: every existing row satisfies it")
                }
            }
            CatalogOp::SetNotNull { column } => {
                self.validate_set_not_null(&client, &table, column).await?
            }
            _ => {
                return Err(ActionError::Conflict(format!(
                    "migration {:?} has nothing to validate: contract is next",
                    record.spec.id
                )))
            }
        };
        record.phase = Phase::Validated;
        self.commit(&client, record, "validate", &detail, true)
            .await
    }

    /// `contract`: a drop's one destructive step; nothing for the others.
    async fn contract_catalog(&self, mut record: Record) -> Result<(), ActionError> {
        let op = op_of(&record)?.clone();
        let needs_validated = matches!(
            op,
            CatalogOp::AddConstraint { .. } | CatalogOp::SetNotNull { .. }
        );
        let ready = match needs_validated {
            true => record.phase == Phase::Validated,
            false => matches!(record.phase, Phase::Expanded | Phase::Validated),
        };
        if !ready {
            let needs = if needs_validated {
                "phase validated"
            } else {
                "phase expanded"
            };
            return Err(Self::illegal(&record, "contract", needs));
        }
        let client = self.connect().await?;
        let table = record.spec.table.clone();
        let detail = match &op {
            CatalogOp::DropIndex { name } => drop_index(&client, &table, name).await?,
            CatalogOp::DropConstraint { name } => {
                self.drop_constraint(&client, &table, name).await?
            }
            CatalogOp::SetNotNull { column } => {
                self.contract_not_null(&client, &table, column, true)
                    .await?
            }
            CatalogOp::DropNotNull { column } => {
                self.contract_not_null(&client, &table, column, false)
                    .await?
            }
            _ => "nothing to drop".into(),
        };
        record.phase = Phase::Contracted;
        self.commit(&client, record, "contract", &detail, true)
            .await
    }

    /// `rollback`: what expand and validate made is taken away again; a
    /// drop done at contract cannot be undone.
    async fn rollback_catalog(&self, mut record: Record) -> Result<(), ActionError> {
        let op = op_of(&record)?.clone();
        let is_drop = matches!(
            op,
            CatalogOp::DropIndex { .. }
                | CatalogOp::DropConstraint { .. }
                | CatalogOp::DropNotNull { .. }
        );
        let legal = match record.phase {
            Phase::Planned | Phase::Expanded | Phase::Validated => true,
            Phase::Contracted => !is_drop,
            _ => false,
        };
        if !legal {
            return Err(Self::illegal(
                &record,
                "rollback",
                "a phase before the drop at contract",
            ));
        }
        let client = self.connect().await?;
        let table = record.spec.table.clone();
        let t = table.to_string();
        let detail = match &op {
            CatalogOp::CreateIndex { name, .. } => drop_index(&client, &table, name).await?,
            CatalogOp::AddConstraint { name, index, .. } => {
                let dropped = self.drop_constraint(&client, &table, name).await?;
                if index.is_some() {
                    drop_index(&client, &table, name).await?;
                }
                dropped
            }
            CatalogOp::SetDefault { column, .. } => match record.catalog_undo.clone() {
                Some(undo) => {
                    let c = quote_ident(column);
                    let sql = match undo.as_str() {
                        "" => format!("alter table {t} alter column {c} drop default"),
                        d => format!("alter table {t} alter column {c} set default {d}"),
                    };
                    ddl::run_with_lock_timeout(&client, &sql, self.lock).await?;
                    format!("the default of {c} put back")
                }
                None => "nothing changed yet".into(),
            },
            CatalogOp::SetNotNull { column } => {
                let contracted = record.phase == Phase::Contracted;
                self.rollback_set_not_null(&client, &table, column, contracted)
                    .await?
            }
            CatalogOp::DropIndex { .. }
            | CatalogOp::DropConstraint { .. }
            | CatalogOp::DropNotNull { .. } => "nothing was dropped".into(),
        };
        record.phase = Phase::RolledBack;
        self.commit(&client, record, "rollback", &detail, true)
            .await
    }
}

impl Lifecycle {
    /// Drops constraint `name` of `table` (if it is there) under the lock
    /// discipline; what was done.
    async fn drop_constraint(
        &self,
        client: &Client,
        table: &TableName,
        name: &str,
    ) -> Result<String, ActionError> {
        let c = quote_ident(name);
        let sql = format!("alter table {table} drop constraint if exists {c}");
        ddl::run_with_lock_timeout(client, &sql, self.lock).await?;
        Ok(format!("constraint {c} dropped"))
    }
}

/// Drops index `name` in `table`'s schema (if it is there) without a lock
/// that holds back writes; what was done.
async fn drop_index(client: &Client, table: &TableName, name: &str) -> Result<String, ActionError> {
    let qualified = index_in(table, name);
    ddl::run(
        client,
        &format!("drop index concurrently if exists {qualified}"),
    )
    .await?;
    Ok(format!("index {qualified} dropped"))
}

/// Whether `schema.name` names any relation (an index, a table).
async fn relation_exists(
    client: &Client,
    table: &TableName,
    name: &str,
) -> Result<bool, ActionError> {
    let qualified = index_in(table, name);
    Ok(client
        .query_one("select to_regclass($1) is not null", &[&qualified])
        .await?
        .get(0))
}

async fn constraint_exists(client: &Client, table: &str, name: &str) -> Result<bool, ActionError> {
    Ok(client
        .query_one(
            "select exists (select 1 from pg_constraint where conrelid = $1::text::regclass and conname = $2)",
            &[&table, &name],
        )
        .await?
        .get(0))
}

/// Constraint `name` of `table`, which must exist (else 409).
async fn existing_constraint(client: &Client, table: &str, name: &str) -> Result<(), ActionError> {
    if constraint_exists(client, table, name).await? {
        return Ok(());
    }
    Err(ActionError::Conflict(format!(
        "table {table} has no constraint {}",
        quote_ident(name)
    )))
}

/// An index of `table` that no constraint owns (those go with
/// `drop_constraint`).
async fn check_droppable_index(
    client: &Client,
    table: &TableName,
    name: &str,
) -> Result<(), ActionError> {
    let qualified = index_in(table, name);
    let row = client
        .query_opt(
            "select i.indrelid = $2::text::regclass,
                    (select c.conname::text from pg_constraint c where c.conindid = i.indexrelid limit 1)
               from pg_index i where i.indexrelid = to_regclass($1)",
            &[&qualified, &table.to_string()],
        )
        .await?;
    match row {
        None => Err(ActionError::Conflict(format!(
            "there is no index {qualified}"
        ))),
        Some(r) if !r.get::<_, bool>(0) => Err(ActionError::Conflict(format!(
            "index {qualified} is not on table {table}"
        ))),
        Some(r) => match r.get::<_, Option<String>>(1) {
            Some(constraint) => Err(ActionError::Conflict(format!(
                "index {qualified} belongs to constraint {}: drop it with op drop_constraint",
                quote_ident(&constraint)
            ))),
            None => Ok(()),
        },
    }
}
