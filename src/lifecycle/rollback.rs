//! `rollback`: reads and writes back on the old column, what the contract
//! carried put back, the new column dropped — from any phase before the
//! keys were handed over.

use super::foreign_keys::{self, MadeBy};
use super::store::Record;
use super::{ddl, not_null, store, ActionError, Lifecycle};
use crate::rewrite::migration::{quote_ident, Phase};

impl Lifecycle {
    pub(super) async fn rollback(&self, mut record: Record) -> Result<(), ActionError> {
        let spec = record.spec.clone();
        let table = spec.table.to_string();
        if record.phase == Phase::RolledBack {
            // A rollback whose DROP failed is finished by running it again.
            let client = self.connect().await?;
            if ddl::column_info(&client, &table, &spec.to).await?.is_none() {
                return Err(Self::illegal(
                    &record,
                    "rollback",
                    "a phase before contracted",
                ));
            }
            self.put_back_carried(&client, &mut record).await?;
            return self.drop_new_column(&client, &record).await;
        }
        if matches!(record.phase, Phase::Contracted | Phase::Complete) {
            return Err(Self::illegal(
                &record,
                "rollback",
                "a phase before contracted",
            ));
        }
        if record.carried.keys_handed_over {
            return Err(ActionError::Conflict(format!(
                "migration {:?}: a contract already handed the keys of {} (primary key, foreign keys referencing it) over to {}; finish it with contract",
                record.spec.id,
                quote_ident(&spec.from),
                quote_ident(&spec.to)
            )));
        }
        if record.backfill.running {
            self.stop_backfill(&record).await?;
            record = self.record(&record.spec.id)?;
        }
        let client = self.connect().await?;
        // What a contract that stopped short changed goes back while both
        // columns are still written; then reads go back on a and dual
        // writes off; then b goes.
        self.put_back_carried(&client, &mut record).await?;
        record.phase = Phase::RolledBack;
        record.backfill.running = false;
        self.commit(&client, record.clone(), "rollback", "rules off", true)
            .await?;
        tokio::time::sleep(self.settle).await;
        self.drop_new_column(&client, &record).await
    }

    /// Puts back what a contract that stopped short changed beyond the two
    /// columns — the objects it redefined onto `b` (last first), `a`'s NOT
    /// NULL — and takes `b`'s NOT NULL off, before a rollback stops writing
    /// `b`. Each is stored as it is done.
    pub(super) async fn put_back_carried(
        &self,
        client: &tokio_postgres::Client,
        record: &mut Record,
    ) -> Result<(), ActionError> {
        let spec = record.spec.clone();
        while let Some(object) = record.carried.redefined.last().cloned() {
            ddl::run_with_lock_timeout(client, &object.restore, self.lock).await?;
            record.carried.redefined.pop();
            self.save_step(client, record, &format!("put back {}", object.object))
                .await?;
        }
        if record.carried.old_not_null_dropped {
            not_null::restore(client, &spec.table.to_string(), &spec.from, self.lock).await?;
            record.carried.old_not_null_dropped = false;
            self.save_step(client, record, "a set not null again")
                .await?;
        }
        // b's NOT NULL (its check, or the real one a contract set) goes
        // while writes still reach b: once they stop, an INSERT would fail
        // on it in the moment before b is dropped.
        let b_not_null = ddl::column_info(client, &spec.table.to_string(), &spec.to)
            .await?
            .is_some_and(|c| c.not_null);
        if record.not_null_check.is_some() || b_not_null {
            not_null::drop(
                client,
                &spec.table.to_string(),
                &spec.to,
                not_null::AndCheck::Drop,
                self.lock,
            )
            .await?;
            record.not_null_check = None;
            self.save_step(client, record, "b drop not null").await?;
        }
        Ok(())
    }

    pub(super) async fn drop_new_column(
        &self,
        client: &tokio_postgres::Client,
        record: &Record,
    ) -> Result<(), ActionError> {
        let spec = &record.spec;
        // Foreign keys moved onto b by a contract that stopped short go
        // first (they depend on b's unique index).
        let mut sql: Vec<String> =
            foreign_keys::referencing(client, &spec.table.to_string(), &spec.to, MadeBy::Pgshift)
                .await?
                .iter()
                .map(foreign_keys::ReferencingKey::drop_statement)
                .collect();
        sql.push(format!(
            "alter table {} drop column if exists {}",
            spec.table,
            quote_ident(&spec.to)
        ));
        ddl::run_with_lock_timeout(client, &sql.join("; "), self.lock).await?;
        store::event(
            client,
            &spec.id,
            "admin",
            "rollback",
            &format!("dropped {}", quote_ident(&spec.to)),
        )
        .await?;
        // A new catalog snapshot (b is gone), under the same rules.
        let _synced = self.sync.lock().await;
        self.publish(client).await;
        Ok(())
    }
}
