//! The lifecycle of a dropped column (`"op": "drop_column"`):
//!
//! | phase | physically | unmarked clients see |
//! |---|---|---|
//! | expand | a NOT NULL without a default relaxed (`DROP NOT NULL`), so new-shape INSERTs that leave the column out succeed | the table as it is |
//! | switch-reads | — | `*` without the column; a positional INSERT of the new width gets the new list; a client that names it still reads and writes it |
//! | contract | `DROP COLUMN`, once no client has named it for the window (or forced) | rules off: the table as it is |
//! | rollback (before contract) | the relaxed NOT NULL put back the scan-free way | the table as it was |
//!
//! Backfill and validate do not apply (409).

use super::store::Record;
use super::{ddl, not_null, ActionError, Lifecycle};
use crate::api::{self, Action};
use crate::rewrite::migration::{quote_ident, MigrationSpec, Phase};

/// What `catalog_undo` holds once expand relaxed the column's NOT NULL.
const RELAXED: &str = "not_null";

impl Lifecycle {
    /// An action on a dropped column.
    pub(super) async fn act_dropped(
        &self,
        record: Record,
        action: Action,
    ) -> Result<(), ActionError> {
        match action {
            Action::Expand => self.expand_dropped(record).await,
            Action::SwitchReads(to) => self.switch_dropped(record, to.to).await,
            Action::Contract(options) => self.contract_dropped(record, &options).await,
            Action::Complete => self.complete(record).await,
            Action::Rollback => self.rollback_dropped(record).await,
            Action::Backfill(_) | Action::Pause | Action::Resume | Action::Validate(_) => {
                Err(ActionError::Conflict(format!(
                    "migration {:?} drops column {}: there is nothing to backfill or validate; after expand, switch-reads hides it from the new shape",
                    record.spec.id,
                    quote_ident(&record.spec.from)
                )))
            }
        }
    }

    /// At `POST /migrations`: the column exists, and dropping it takes
    /// nothing else with it (a primary key, a foreign key that references
    /// it, a view).
    pub(super) async fn check_dropped_add(
        &self,
        client: &tokio_postgres::Client,
        spec: &MigrationSpec,
    ) -> Result<(), ActionError> {
        let table = spec.table.to_string();
        Self::existing_column(client, &table, &spec.from).await?;
        let row = client
            .query_one(
                "select
                   exists (select 1 from pg_constraint k where k.conrelid = a.attrelid and k.contype = 'p' and a.attnum = any(k.conkey)),
                   exists (select 1 from pg_constraint k where k.confrelid = a.attrelid and k.contype = 'f' and a.attnum = any(k.confkey)),
                   exists (select 1 from pg_depend d where d.refobjid = a.attrelid and d.refobjsubid = a.attnum
                             and d.classid = 'pg_rewrite'::regclass)
                 from pg_attribute a where a.attrelid = $1::text::regclass and a.attname = $2",
                &[&table, &spec.from],
            )
            .await?;
        let c = quote_ident(&spec.from);
        let (in_key, referenced, in_view): (bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2));
        let why = if in_key {
            "is in the table's primary key"
        } else if referenced {
            "is referenced by a foreign key (drop that constraint first: op drop_constraint)"
        } else if in_view {
            "is read by a view (redefine the view without it first)"
        } else {
            return Ok(());
        };
        Err(ActionError::Conflict(format!(
            "column {c} of {table} {why}; dropping it would take that with it"
        )))
    }

    /// `expand`: a NOT NULL with no default relaxed, so that the new
    /// shape's INSERTs, which leave the column out, succeed.
    async fn expand_dropped(&self, mut record: Record) -> Result<(), ActionError> {
        if record.phase != Phase::Planned {
            return Err(Self::illegal(&record, "expand", "phase planned"));
        }
        let client = self.connect().await?;
        let table = record.spec.table.to_string();
        let c = quote_ident(&record.spec.from);
        let info = Self::existing_column(&client, &table, &record.spec.from).await?;
        let detail = if info.not_null && info.default.is_none() {
            let sql = format!("alter table {table} alter column {c} drop not null");
            ddl::run_with_lock_timeout(&client, &sql, self.lock).await?;
            record.catalog_undo = Some(RELAXED.into());
            format!("{c} DROP NOT NULL: INSERTs that leave it out succeed")
        } else {
            format!("{c} needs nothing: INSERTs that leave it out get its default")
        };
        record.phase = Phase::Expanded;
        self.commit(&client, record, "expand", &detail, true).await
    }

    /// `switch-reads`: `new` hides the column from the unmarked shape,
    /// `old` shows it again.
    async fn switch_dropped(
        &self,
        mut record: Record,
        to: api::ReadSource,
    ) -> Result<(), ActionError> {
        let (from, next, detail) = match to {
            api::ReadSource::New => (Phase::Expanded, Phase::Switched, "new"),
            api::ReadSource::Old => (Phase::Switched, Phase::Expanded, "old"),
        };
        if record.phase == next {
            return Ok(());
        }
        if record.phase != from {
            return Err(Self::illegal(
                &record,
                &format!("switch-reads to {detail}"),
                &format!("phase {from}"),
            ));
        }
        let client = self.connect().await?;
        record.phase = next;
        self.commit(&client, record, "switch-reads", detail, true)
            .await
    }

    /// `contract`: the column dropped, once no client has named it in the
    /// window (the old-shape guard of every contract).
    async fn contract_dropped(
        &self,
        mut record: Record,
        options: &api::Contract,
    ) -> Result<(), ActionError> {
        let client = self.switched_and_quiet(&record, options).await?;
        let table = record.spec.table.to_string();
        let c = quote_ident(&record.spec.from);
        let sql = format!("alter table {table} drop column if exists {c}");
        let attempts = ddl::run_with_lock_timeout(&client, &sql, self.lock).await?;
        record.phase = Phase::Contracted;
        record.catalog_undo = None;
        let detail = format!("dropped {c} (lock attempts: {attempts})");
        self.commit(&client, record, "contract", &detail, true)
            .await
    }

    /// `rollback` before contract: a relaxed NOT NULL put back (a valid
    /// check, then `SET NOT NULL` with no scan), the rules off.
    async fn rollback_dropped(&self, mut record: Record) -> Result<(), ActionError> {
        if !matches!(
            record.phase,
            Phase::Planned | Phase::Expanded | Phase::Switched
        ) {
            return Err(Self::illegal(
                &record,
                "rollback",
                "a phase before contracted",
            ));
        }
        let client = self.connect().await?;
        let table = record.spec.table.to_string();
        let column = record.spec.from.clone();
        let mut detail = "rules off".to_string();
        if record.catalog_undo.as_deref() == Some(RELAXED) {
            let check = not_null::add_valid_check(&client, &table, &column, self.lock)
                .await
                .map_err(|e| {
                    ActionError::Conflict(format!(
                        "{} cannot be NOT NULL again: {e}; rows written meanwhile hold NULL in it — fill them, then roll back again",
                        quote_ident(&column)
                    ))
                })?;
            not_null::set_proven(&client, &table, &column, &check, self.lock).await?;
            record.catalog_undo = None;
            detail = format!("{} NOT NULL again; rules off", quote_ident(&column));
        }
        record.phase = Phase::RolledBack;
        self.commit(&client, record, "rollback", &detail, true)
            .await
    }
}
