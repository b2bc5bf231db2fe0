//! Unit-test helpers: statements planned under made-up migrations and a
//! made-up catalog, in a session of a given mark, as text (`refused: …`
//! and `error: …` for the other outcomes).

use std::sync::Arc;

use super::catalog::{Catalog, ColumnDef, TableDef};
use super::marker::Marked;
use super::plan::{plan_noting, Notes, Plan};
use super::rules::{ActiveMigration, RulesCell};
use super::{with_session, SessionContext};

/// A table of `(name, type)` columns, nullable, without defaults.
pub fn table(columns: &[(&str, &str)]) -> TableDef {
    TableDef {
        columns: columns
            .iter()
            .map(|(name, ty)| ColumnDef {
                name: name.to_string(),
                type_name: ty.to_string(),
                not_null: false,
                default: None,
            })
            .collect(),
    }
}

/// `sql` planned under `migrations`, with `tables` (`schema`, `name`,
/// definition) in the catalog, for a session marked `mark`.
pub fn planned(
    sql: &str,
    migrations: &[ActiveMigration],
    tables: Vec<(&str, &str, TableDef)>,
    mark: Option<Marked>,
) -> String {
    planned_noting(sql, migrations, tables, mark).0
}

/// [`planned`], with what planning noted.
pub fn planned_noting(
    sql: &str,
    migrations: &[ActiveMigration],
    tables: Vec<(&str, &str, TableDef)>,
    mark: Option<Marked>,
) -> (String, Notes) {
    let mut catalog = Catalog::empty();
    for (schema, name, def) in tables {
        catalog.insert(schema, name, def);
    }
    let cell = RulesCell::with_catalog(migrations, catalog);
    let context = Arc::new(SessionContext::new(None, Arc::from("app"), None, mark));
    with_session(Some(&context), || {
        cell.with(|rules| {
            let mut notes = Notes::default();
            let text = match plan_noting(sql, rules, &mut notes) {
                Plan::Unchanged => sql.to_string(),
                Plan::Replaced { text, .. } => text,
                Plan::Refused { reason, .. } => format!("refused: {reason}"),
                Plan::Error { message, .. } => format!("error: {message}"),
            };
            (text, notes)
        })
    })
}
