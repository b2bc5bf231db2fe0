//! The lifecycle of an added column ([`crate::add_column`]):
//!
//! | phase | physically | unmarked clients see |
//! |---|---|---|
//! | expand | `ADD COLUMN` nullable (a constant default with it); rules published; then a default that is not part of the add (expand again finishes it, should it fail) | `*` without it; old-shape INSERTs given `up` |
//! | backfill | `c := up` (or the default that is not a constant) where `c` is NULL, in batches | as above |
//! | validate | NOT NULL columns: no row holds NULL, proven by a valid `CHECK (c IS NOT NULL)` | as above |
//! | switch-reads | — | `*` with it |
//! | contract | refused while clients' INSERTs were given `up` within the window (old-shape use; `force`); `SET NOT NULL` (proven by the check, no scan), check dropped | as above |
//! | complete | — | rules off |
//! | rollback (any phase before complete) | rules off, then `DROP COLUMN` | the table as it was |
//!
//! Backfill, validate and switch-reads are the column migrations' own
//! steps (`walk` knows an added column's fill and parity).

use super::store::{self, Record};
use super::{ddl, not_null, ActionError, Lifecycle};
use crate::add_column::AddedColumn;
use crate::api::Action;
use crate::rewrite::migration::{quote_ident, MigrationSpec, Phase};

/// The added column of a record (every caller checked it has one).
fn added_of(record: &Record) -> Result<&AddedColumn, ActionError> {
    record
        .spec
        .added
        .as_deref()
        .ok_or_else(|| ActionError::Conflict(format!("{:?} adds no column", record.spec.id)))
}

impl Lifecycle {
    /// An action on an added column.
    pub(super) async fn act_added(
        self: &std::sync::Arc<Self>,
        record: Record,
        action: Action,
    ) -> Result<(), ActionError> {
        match action {
            Action::Expand => self.expand_added(record).await,
            Action::Backfill(settings) => self.backfill(record, &settings).await,
            Action::Pause => self.pause(record).await,
            Action::Resume => self.resume(record).await,
            Action::Validate(options) => self.validate(record, &options).await,
            Action::SwitchReads(to) => self.switch_reads(record, to.to).await,
            Action::Contract(options) => self.contract_added(record, &options).await,
            Action::Complete => self.complete(record).await,
            Action::Rollback => self.rollback_added(record).await,
        }
    }

    /// At `POST /migrations`: the column is not there yet, and `up` reads
    /// columns the table has.
    pub(super) async fn check_added_add(
        &self,
        client: &tokio_postgres::Client,
        spec: &MigrationSpec,
        added: &AddedColumn,
    ) -> Result<(), ActionError> {
        let table = spec.table.to_string();
        if ddl::column_info(client, &table, &added.column)
            .await?
            .is_some()
        {
            return Err(ActionError::Conflict(format!(
                "table {table} already has a column {}",
                quote_ident(&added.column)
            )));
        }
        for name in &added.reads {
            Self::existing_column(client, &table, name)
                .await
                .map_err(|e| ActionError::Conflict(format!("up reads a column: {e}")))?;
        }
        Ok(())
    }

    /// `expand`: the column added nullable, the rules published (from then
    /// on old-shape INSERTs are given `up`), then a default that was not
    /// part of the add (new rows only).
    async fn expand_added(&self, mut record: Record) -> Result<(), ActionError> {
        let added = added_of(&record)?.clone();
        if record.phase == Phase::Expanded {
            // An expand whose SET DEFAULT failed is finished by running it
            // again.
            let client = self.connect().await?;
            return self.default_after_add(&client, &record, &added).await;
        }
        if record.phase != Phase::Planned {
            return Err(Self::illegal(&record, "expand", "phase planned"));
        }
        let client = self.connect().await?;
        let table = record.spec.table.to_string();
        let attempts =
            ddl::run_with_lock_timeout(&client, &added.add_statement(&table), self.lock).await?;
        record.phase = Phase::Expanded;
        record.write_path_changed_ms = store::now_ms(&client).await?;
        let c = quote_ident(&added.column);
        self.commit(
            &client,
            record.clone(),
            "expand",
            &format!("added {c} {} (lock attempts: {attempts})", added.type_name),
            true,
        )
        .await?;
        self.default_after_add(&client, &record, &added).await
    }

    /// A default that was not part of the add, set once the rules are out
    /// (new rows only), unless it is there already.
    async fn default_after_add(
        &self,
        client: &tokio_postgres::Client,
        record: &Record,
        added: &AddedColumn,
    ) -> Result<(), ActionError> {
        let Some(default) = added.default_after_add() else {
            return Ok(());
        };
        let table = record.spec.table.to_string();
        let info = Self::existing_column(client, &table, &added.column).await?;
        if info.default.is_some() {
            return Ok(());
        }
        let c = quote_ident(&added.column);
        let sql = format!("alter table {table} alter column {c} set default {default}");
        ddl::run_with_lock_timeout(client, &sql, self.lock).await?;
        let detail = format!("{c} DEFAULT {default} (new rows)");
        store::event(client, &record.spec.id, "admin", "expand", &detail).await?;
        Ok(())
    }

    /// `contract`: a NOT NULL column is made so (proven by the valid check
    /// from validate, no scan) and the check dropped.
    async fn contract_added(
        &self,
        mut record: Record,
        options: &crate::api::Contract,
    ) -> Result<(), ActionError> {
        let added = added_of(&record)?.clone();
        // Clients whose INSERTs are still given `up` get no value once the
        // rules are gone: the old-shape guard of every contract.
        let client = self.switched_and_quiet(&record, options).await?;
        let table = record.spec.table.to_string();
        let c = quote_ident(&added.column);
        let detail = match (&record.not_null_check, added.not_null) {
            (Some(check), true) => {
                not_null::set_proven(&client, &table, &added.column, check, self.lock).await?;
                format!("{c} SET NOT NULL (proven by the valid check, which is dropped)")
            }
            (None, true) => {
                return Err(ActionError::Conflict(format!(
                    "{c} is to be NOT NULL, and no valid check proves it; validate again"
                )))
            }
            (_, false) => format!("{c} stays nullable"),
        };
        record.not_null_check = None;
        record.phase = Phase::Contracted;
        self.commit(&client, record, "contract", &detail, true)
            .await
    }

    /// Before an added or dropped column's contract: reads switched, and
    /// no old-shape client in the window (unless forced). The connection.
    pub(super) async fn switched_and_quiet(
        &self,
        record: &Record,
        options: &crate::api::Contract,
    ) -> Result<tokio_postgres::Client, ActionError> {
        if record.phase != Phase::Switched {
            return Err(Self::illegal(
                record,
                "contract",
                "reads switched to new (phase switched)",
            ));
        }
        let client = self.connect().await?;
        self.check_no_old_shape(&client, record, options).await?;
        Ok(client)
    }

    /// `rollback`: the rules off first (no INSERT names the column any
    /// more), then the column dropped.
    async fn rollback_added(&self, mut record: Record) -> Result<(), ActionError> {
        if record.phase == Phase::Complete {
            return Err(Self::illegal(
                &record,
                "rollback",
                "a phase before complete",
            ));
        }
        if record.backfill.running {
            self.stop_backfill(&record).await?;
            record = self.record(&record.spec.id)?;
        }
        let client = self.connect().await?;
        if record.phase != Phase::RolledBack {
            record.phase = Phase::RolledBack;
            record.backfill.running = false;
            record.not_null_check = None;
            self.commit(&client, record.clone(), "rollback", "rules off", true)
                .await?;
            tokio::time::sleep(self.settle).await;
        }
        self.drop_new_column(&client, &record).await
    }
}
