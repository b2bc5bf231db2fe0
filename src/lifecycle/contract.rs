//! `contract` and `complete`: the checks before the point of no return
//! (no old-shape client in the window, exclusion constraints carried),
//! dependents redefined onto the new column, keys handed over, the old
//! column dropped (a kept name: and the new column renamed to it, behind
//! the barrier); `complete` ends the migration's rules.

use std::time::Duration;

use std::sync::atomic::Ordering;

use super::store::Record;
use super::{ddl, dependents, foreign_keys, handover, indexes, not_null, peers, store};
use super::{ActionError, Lifecycle};
use crate::api;
use crate::rewrite::migration::{quote_ident, MigrationSpec, Phase};

impl Lifecycle {
    pub(super) async fn contract(
        &self,
        mut record: Record,
        options: &api::Contract,
    ) -> Result<(), ActionError> {
        let client = self.connect().await?;
        let spec = record.spec.clone();
        let table = spec.table.to_string();
        match record.phase {
            Phase::Switched => {
                self.check_no_old_shape(&client, &record, options).await?;
                let drop_exclusions = options.drop_exclusion_constraints.unwrap_or(false);
                Self::check_exclusion_constraints(&client, &spec, drop_exclusions).await?;
                self.prepare_contract(&client, &mut record).await?;
                if spec.keep_name {
                    return self.contract_keeping_name(&client, record).await;
                }
                // Stop writing a before dropping it: once these rules are
                // out, nothing reads or writes a any more.
                record.phase = Phase::Contracted;
                self.commit(&client, record.clone(), "contract", "rules: b only", true)
                    .await?;
                tokio::time::sleep(self.settle).await;
            }
            // A contract whose DROP failed is finished by running it again.
            // (A kept name's contract is one transaction: nothing left.)
            Phase::Contracted
                if !spec.keep_name
                    && ddl::column_info(&client, &table, &spec.from)
                        .await?
                        .is_some() =>
            {
                handover::move_referencing_keys(&client, &spec, self.lock).await?;
            }
            _ => {
                return Err(Self::illegal(
                    &record,
                    "contract",
                    "reads switched to new (phase switched)",
                ))
            }
        }
        // One transaction: the keys referencing a, a itself, the primary
        // key taken over by b's index, the copies renamed as the originals.
        let last = handover::final_transaction(&client, &spec).await?;
        let attempts = ddl::run_with_lock_timeout(&client, &last.join("; "), self.lock).await?;
        self.commit(
            &client,
            record,
            "contract",
            &format!(
                "dropped {} (lock attempts: {attempts})",
                quote_ident(&spec.from)
            ),
            true,
        )
        .await?;
        Ok(())
    }

    /// A type change that keeps the column's name: `a` dropped and `b`
    /// renamed to `a`'s name in one transaction behind the barrier (every
    /// proxy holds the table's statements meanwhile), and the rules end
    /// with it: from then on the name is the new column's, for everyone.
    async fn contract_keeping_name(
        &self,
        client: &tokio_postgres::Client,
        record: Record,
    ) -> Result<(), ActionError> {
        let spec = &record.spec;
        let mut last = handover::final_transaction(client, spec).await?;
        last.push(format!(
            "alter table {} rename column {} to {}",
            spec.table,
            quote_ident(&spec.to),
            quote_ident(&spec.from)
        ));
        self.behind_barrier(record, last.join("; "), Phase::Contracted, "contract")
            .await
    }

    /// What a contract does while both columns exist and the rules still
    /// write both, so that a failure leaves the migration switched and
    /// fully working: b takes over the keys referencing a, a's NOT NULL,
    /// unique constraints and foreign keys; a's NOT NULL goes last. Each
    /// change is stored as it is made (a rollback puts back what needs it).
    pub(super) async fn prepare_contract(
        &self,
        client: &tokio_postgres::Client,
        record: &mut Record,
    ) -> Result<(), ActionError> {
        let spec = record.spec.clone();
        let table = spec.table.to_string();
        // Whatever else depends on a (created since the migration was
        // registered, too) must be carried, or nothing changes.
        let found = dependents::find(client, &spec, &self.rules.load().catalog).await?;
        dependents::refuse_uncarried(&spec, &found)?;
        // Foreign keys referencing a are moved onto b first: one that
        // cannot move stops the contract before any other change.
        handover::move_referencing_keys(client, &spec, self.lock).await?;
        // Where a stands, so `*` keeps the old shape's order once it is gone.
        record.spec.old_after = ddl::column_before(client, &table, &spec.from, &spec.to).await?;
        if record.not_null_check.is_some() {
            let check = not_null::add_valid_check(client, &table, &spec.to, self.lock).await?;
            not_null::set_proven(client, &table, &spec.to, &check, self.lock).await?;
            record.not_null_check = None;
            self.save_step(client, record, "b set not null").await?;
        }
        self.carry_constraints(client, &spec).await?;
        self.carry_dependents(client, record, found).await?;
        // The keys: referencing keys and the primary key move onto b.
        let keys = handover::key_transaction(client, &spec).await?;
        if !keys.is_empty() {
            ddl::run_with_lock_timeout(client, &keys.join("; "), self.lock).await?;
            record.carried.keys_handed_over = true;
            self.save_step(client, record, "keys handed over to b")
                .await?;
        }
        // Last: once the rules stop writing a, an INSERT must not fail on
        // a's NOT NULL in the moment before a is dropped.
        let old_not_null = ddl::column_info(client, &table, &spec.from)
            .await?
            .is_some_and(|c| c.not_null);
        if old_not_null {
            not_null::drop(
                client,
                &table,
                &spec.from,
                not_null::AndCheck::Keep,
                self.lock,
            )
            .await?;
            record.carried.old_not_null_dropped = true;
            self.save_step(client, record, "a drop not null").await?;
        }
        Ok(())
    }

    /// `a`'s unique constraints become `b`'s (their index copies taken
    /// over, not rebuilt), and the foreign keys and checks copied at expand
    /// are validated before `a` goes (SHARE UPDATE EXCLUSIVE: reads and
    /// writes go on meanwhile).
    async fn carry_constraints(
        &self,
        client: &tokio_postgres::Client,
        spec: &MigrationSpec,
    ) -> Result<(), ActionError> {
        let table = spec.table.to_string();
        let constraints = handover::constraint_names(client, &table).await?;
        for (constraint, index) in
            indexes::unique_constraints_to_carry(client, &table, &spec.from, &spec.to).await?
        {
            let copy = indexes::copy_name(&constraint, &spec.to);
            if constraints.contains(&copy) {
                continue; // carried by an earlier attempt
            }
            ddl::run_with_lock_timeout(
                client,
                &format!(
                    "alter table {table} add constraint {} unique using index {}",
                    quote_ident(&copy),
                    quote_ident(&index)
                ),
                self.lock,
            )
            .await?;
        }
        for name in foreign_keys::unvalidated_copies(client, &table, &spec.to).await? {
            ddl::run_with_lock_timeout(
                client,
                &format!(
                    "alter table {table} validate constraint {}",
                    quote_ident(&name)
                ),
                self.lock,
            )
            .await?;
        }
        Ok(())
    }

    /// Views, triggers, policies… read `b` from now on (`a` and `down(b)`
    /// agree while both are written); a rollback puts them back.
    async fn carry_dependents(
        &self,
        client: &tokio_postgres::Client,
        record: &mut Record,
        found: Vec<dependents::Dependent>,
    ) -> Result<(), ActionError> {
        if found.is_empty() {
            return Ok(());
        }
        let carried = dependents::carry(client, &found, self.lock).await;
        let (done, failed) = match carried {
            Ok(done) => (done, None),
            Err((done, e)) => (done, Some(e)),
        };
        let names: Vec<String> = done.iter().map(|d| d.object.clone()).collect();
        record.carried.redefined.extend(done);
        self.save_step(
            client,
            record,
            &format!("carried onto b: {}", names.join(", ")),
        )
        .await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Stores a step of an action that leaves the rules as they are (no
    /// new state version: the other proxies have nothing to apply).
    pub(super) async fn save_step(
        &self,
        client: &tokio_postgres::Client,
        record: &Record,
        detail: &str,
    ) -> Result<(), ActionError> {
        let _synced = self.sync.lock().await;
        store::save(client, record).await?;
        store::event(client, &record.spec.id, "admin", "step", detail).await?;
        self.lock_records()
            .insert(record.spec.id.clone(), record.clone());
        Ok(())
    }

    /// Refuses to contract while an exclusion constraint uses `a` with no
    /// equivalent on `b` (dropping `a` would drop it), unless the body says
    /// `"drop_exclusion_constraints": true`.
    pub(super) async fn check_exclusion_constraints(
        client: &tokio_postgres::Client,
        spec: &MigrationSpec,
        allowed: bool,
    ) -> Result<(), ActionError> {
        let left = handover::exclusion_constraints_left(client, spec).await?;
        if left.is_empty() || allowed {
            return Ok(());
        }
        let list: Vec<String> = left
            .iter()
            .map(|(name, on_b)| {
                format!(
                    "{} (to keep it: alter table {} add constraint <name> {on_b})",
                    quote_ident(name),
                    spec.table
                )
            })
            .collect();
        Err(ActionError::Conflict(format!(
            "dropping {} would drop the exclusion constraint(s) {}; Postgres builds an exclusion constraint only under a lock that blocks writes, so pgshift does not: add it on {} yourself and contract again, or pass {{\"drop_exclusion_constraints\": true}}",
            quote_ident(&spec.from),
            list.join(", "),
            quote_ident(&spec.to)
        )))
    }

    /// Refuses to contract while applications still send old-shape
    /// statements (through any live proxy) within the window, unless forced.
    pub(super) async fn check_no_old_shape(
        &self,
        client: &tokio_postgres::Client,
        record: &Record,
        options: &api::Contract,
    ) -> Result<(), ActionError> {
        if options.force == Some(true) {
            return Ok(());
        }
        let window = Duration::from_secs(options.window_secs.unwrap_or(600));
        // Our own usage first, so it is current in the table.
        self.heartbeat(client, self.applied.load(Ordering::Acquire))
            .await?;
        let users = peers::old_shape_users(client, &record.spec.id, window, self.options).await?;
        if users.is_empty() {
            return Ok(());
        }
        let now = store::now_ms(client).await?;
        let list: Vec<String> = users
            .iter()
            .take(10)
            .map(|(app, proxy, at)| {
                let name = if app.is_empty() {
                    "(no application_name)"
                } else {
                    app.as_str()
                };
                format!("{name} via {proxy}, {} s ago", (now - at).max(0) / 1000)
            })
            .collect();
        let spec = &record.spec;
        let (old, new) = match &spec.renamed_to {
            Some(new) => (spec.table.name.as_str(), new.as_str()),
            None => (spec.from.as_str(), spec.to.as_str()),
        };
        Err(ActionError::Conflict(format!(
            "old-shape statements (naming {}) were seen in the last {} s from: {}; move them to {} first, or contract with {{\"force\": true}}",
            quote_ident(old),
            window.as_secs(),
            list.join("; "),
            quote_ident(new),
        )))
    }

    pub(super) async fn complete(&self, mut record: Record) -> Result<(), ActionError> {
        if record.phase != Phase::Contracted {
            return Err(Self::illegal(&record, "complete", "phase contracted"));
        }
        let client = self.connect().await?;
        record.phase = Phase::Complete;
        self.commit(&client, record, "complete", "rules removed", true)
            .await?;
        Ok(())
    }
}
