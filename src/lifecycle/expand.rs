//! `expand`: the new column added (with its default; foreign keys and
//! checks copied as NOT VALID, indexes built concurrently — a NOT NULL
//! reaches the new column later, at validate), then the dual-write rules
//! published — each ALTER under the lock discipline of [`super::ddl`].

use super::store::Record;
use super::{checks, ddl, foreign_keys, indexes, store, ActionError, Lifecycle};
use crate::rewrite::migration::{quote_ident, MigrationSpec, Phase};

impl Lifecycle {
    pub(super) async fn expand(&self, mut record: Record) -> Result<(), ActionError> {
        if record.phase != Phase::Planned {
            return Err(Self::illegal(&record, "expand", "phase planned"));
        }
        let client = self.connect().await?;
        let spec = record.spec.clone();
        let table = spec.table.to_string();
        let old = Self::existing_column(&client, &table, &spec.from).await?;
        let new_type = spec
            .new_type
            .clone()
            .unwrap_or_else(|| old.type_name.clone());
        let (a, b) = (quote_ident(&spec.from), quote_ident(&spec.to));
        let attempts = ddl::run_with_lock_timeout(
            &client,
            &format!("alter table {table} add column if not exists {b} {new_type}"),
            self.lock,
        )
        .await?;
        // a's default becomes b's (converted): once a is gone, an INSERT
        // that leaves the column out gets what it got before. Only future
        // rows take it (no table rewrite); until contract every INSERT
        // writes b explicitly.
        if let Some(default) = &old.default {
            ddl::run_with_lock_timeout(
                &client,
                &format!(
                    "alter table {table} alter column {b} set default {}",
                    spec.up_of(&format!("({default})"))
                ),
                self.lock,
            )
            .await?;
        }
        copy_indexes(&client, &spec).await?;
        self.copy_constraints(&client, &spec).await?;
        // a's NOT NULL reaches b at validate, once the backfill has filled
        // b (see `not_null`): a NOT VALID check added now would fail every
        // UPDATE of a row the backfill has not reached yet.
        record.phase = Phase::Expanded;
        record.write_path_changed_ms = store::now_ms(&client).await?;
        self.commit(
            &client,
            record,
            "expand",
            &format!("added {b} {new_type} (lock attempts: {attempts}); {a} dual-written"),
            true,
        )
        .await?;
        Ok(())
    }

    /// `a`'s foreign keys and CHECK constraints, added on `b` as NOT VALID
    /// (enforced for new writes at once, validated at contract).
    async fn copy_constraints(
        &self,
        client: &tokio_postgres::Client,
        spec: &MigrationSpec,
    ) -> Result<(), ActionError> {
        let table = spec.table.to_string();
        // Foreign keys a takes part in: added on b as NOT VALID (enforced
        // for new writes at once), validated at contract.
        for fk in foreign_keys::foreign_keys_of(client, &table, &spec.from).await? {
            let name = foreign_keys::copy_name(&fk.name, &spec.to);
            if let Some(copy) = foreign_keys::copy_statement(
                foreign_keys::Side::Own,
                &table,
                &fk.definition,
                &name,
                (&spec.from, &spec.to),
            ) {
                self.copy_constraint(client, spec, "foreign key", &fk.name, &name, &copy)
                    .await?;
            }
        }
        // CHECK constraints on a: added on b as NOT VALID too.
        for check in checks::checks_on(client, &table, &spec.from).await? {
            let name = indexes::copy_name(&check.name, &spec.to);
            if let Some(copy) = checks::copy_statement(&table, &check.definition, &name, spec) {
                self.copy_constraint(client, spec, "check constraint", &check.name, &name, &copy)
                    .await?;
            }
        }
        Ok(())
    }

    /// Adds the `NOT VALID` copy `copy` (named `name`) of constraint
    /// `original` on `b`, replacing a leftover of the same name. One that
    /// `b`'s type cannot carry (a type change) is reported as an event, not
    /// fatal: the migration goes on without it.
    pub(super) async fn copy_constraint(
        &self,
        client: &tokio_postgres::Client,
        spec: &MigrationSpec,
        kind: &str,
        original: &str,
        name: &str,
        copy: &str,
    ) -> Result<(), ActionError> {
        let sql = format!(
            "alter table {} drop constraint if exists {}; {copy}",
            spec.table,
            quote_ident(name)
        );
        if let Err(e) = ddl::run_with_lock_timeout(client, &sql, self.lock).await {
            tracing::warn!(constraint = %original, error = %e, "{kind} not copied");
            store::event(
                client,
                &spec.id,
                "expand",
                &format!("{kind} not copied"),
                &format!("{original}: {e}"),
            )
            .await?;
        }
        Ok(())
    }
}

/// Indexes using `a` (keys, expressions, predicates), copied onto `b`
/// without blocking writes (an invalid leftover of an earlier attempt
/// dropped first).
async fn copy_indexes(
    client: &tokio_postgres::Client,
    spec: &MigrationSpec,
) -> Result<(), ActionError> {
    let table = spec.table.to_string();
    for index in indexes::indexes_using(client, &table, &spec.from).await? {
        let name = indexes::copy_name(&index.name, &spec.to);
        if ddl::invalid_index(client, &spec.table.schema, &name).await? == Some(true) {
            ddl::run(
                client,
                &format!(
                    "drop index concurrently if exists {}.{}",
                    quote_ident(&spec.table.schema),
                    quote_ident(&name)
                ),
            )
            .await?;
        }
        let Some(copy) = indexes::copy_statement(&index.definition, &name, &spec.from, &spec.to)
        else {
            tracing::warn!(index = %index.name, definition = %index.definition, "index not copied: its definition could not be read");
            continue;
        };
        ddl::run(client, &copy).await?;
    }
    Ok(())
}
