//! `pgshift plan --database-url`: the plan of migration files completed
//! from the database's catalog. A type change without a `down` gets the
//! exact one where the column's type now allows it (what the DDL gate
//! would derive), or says which change it is that has none; each
//! migration or safe form names its table's size (the planner's estimate
//! of rows, and bytes on disk), which is what its backfill or index build
//! will walk. Nothing is written.

use crate::sql_plan::{downs, Step, Verdict};

/// Completes `steps` from the database at `url`.
pub async fn complete(url: &str, steps: &mut [Step]) -> anyhow::Result<()> {
    let client = crate::apply::connect(url, None).await?;
    for step in steps.iter_mut() {
        let Some(m) = step.decision.migration.clone() else {
            continue;
        };
        if step.decision.rule == "change-type-needs-down" {
            derive_down(&client, step, m.clone()).await?;
        }
        if step.decision.verdict != Verdict::Refuse {
            if let Some(size) = size_of(&client, &m.table).await? {
                step.decision
                    .detail
                    .push_str(&format!(" (table {}: {size})", m.table));
            }
        }
    }
    Ok(())
}

/// A type change's exact `down` from the column's type now, or why there
/// is none.
async fn derive_down(
    client: &tokio_postgres::Client,
    step: &mut Step,
    mut m: crate::api::NewMigration,
) -> anyhow::Result<()> {
    let (Some(from), Some(new_type)) = (m.from.clone(), m.new_type.clone()) else {
        return Ok(());
    };
    let column = crate::rewrite::migration::parse_ident(&from).map_err(anyhow::Error::msg)?;
    let old: Option<String> = client
        .query_opt(
            "select format_type(atttypid, atttypmod) from pg_attribute
              where attrelid = to_regclass($1) and attname = $2 and attnum > 0 and not attisdropped",
            &[&m.table, &column],
        )
        .await?
        .map(|r| r.get(0));
    let Some(old) = old else {
        step.decision.detail = format!("table {} has no column {from} in this database", m.table);
        return Ok(());
    };
    match downs::derived_down(&from, &old, &new_type) {
        Some(down) => {
            m.down = Some(down.clone());
            step.decision.verdict = Verdict::Migrate;
            step.decision.rule = "change-type";
            step.decision.detail = format!(
                "a type change rewrites the table under an exclusive lock and breaks clients of the old type: both types served under the one name, the new column renamed at contract; down derived from the column's type ({old}): {down}"
            );
            step.decision.migration = Some(m);
        }
        None => step.decision.detail.push_str(&format!(
            " (the column is {old} now: {old} to {new_type} has no exact down pgshift knows)"
        )),
    }
    Ok(())
}

/// "N rows, M MB" of `table`, from the planner's statistics.
async fn size_of(client: &tokio_postgres::Client, table: &str) -> anyhow::Result<Option<String>> {
    let row = client
        .query_opt(
            "select greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid)
               from pg_class c where c.oid = to_regclass($1)",
            &[&table],
        )
        .await?;
    Ok(row.map(|r| {
        let (rows, bytes): (i64, i64) = (r.get(0), r.get(1));
        format!("~{rows} rows, {:.1} MB", bytes as f64 / 1_048_576.0)
    }))
}
