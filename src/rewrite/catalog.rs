//! The catalog snapshot the rewriter resolves names with: the columns of the
//! database's tables (name, declared type, position, nullability, default),
//! as Postgres would list them for `*`, for a positional INSERT, and for an
//! unqualified column in a join.
//!
//! It is plain data, read from the upstream by [`crate::control`] and
//! published with the rules (a new snapshot is a new rules epoch). Names are
//! stored folded (as Postgres stores them). An unqualified table name
//! resolves along the session's `search_path` ([`super::search_path`]),
//! or the database's default path for a session that set none (also read
//! into the snapshot); a table the snapshot does not know is treated as
//! unknown, and the statements that would need it stay refused.

use std::collections::HashMap;
use std::sync::Arc;

use sqlparser::tokenizer::Token;

use super::search_path::{Resolved, SearchPath};
use super::text::tokenize;

/// One column, as `pg_attribute` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, e.g. `integer`, `numeric(12,2)`.
    pub type_name: String,
    pub not_null: bool,
    /// `pg_get_expr` of the default, if any.
    pub default: Option<String>,
}

/// A table's columns in position order (dropped columns left out).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableDef {
    pub columns: Vec<ColumnDef>,
}

impl TableDef {
    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.columns.iter().find(|c| c.name == name)
    }

    pub fn has_column(&self, name: &str) -> bool {
        self.column(name).is_some()
    }
}

/// Every table of the database pgshift knows about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    tables: HashMap<(String, String), Arc<TableDef>>,
    /// The schemas holding a table of each name.
    schemas_of: HashMap<String, Vec<String>>,
    /// Default search paths of sessions that set none.
    pub defaults: DefaultPaths,
}

/// The search path a session starts with when it sets none, from the
/// most specific setting down: `ALTER ROLE r IN DATABASE d SET`, `ALTER
/// ROLE r SET`, `ALTER DATABASE d SET`, the server's own setting.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DefaultPaths {
    pub role_in_database: HashMap<String, SearchPath>,
    pub role: HashMap<String, SearchPath>,
    pub database: Option<SearchPath>,
    /// The server's setting; `None`: the built-in `"$user", public`.
    pub server: Option<SearchPath>,
}

impl DefaultPaths {
    /// The path a session of `user` that set none uses.
    pub fn for_user(&self, user: &str) -> Option<&SearchPath> {
        self.role_in_database
            .get(user)
            .or_else(|| self.role.get(user))
            .or(self.database.as_ref())
            .or(self.server.as_ref())
    }
}

impl Catalog {
    /// An empty snapshot: nothing resolves (the rewriter then refuses what
    /// needs the catalog, as it does before the first snapshot is read).
    pub fn empty() -> Catalog {
        Catalog::default()
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    pub fn len(&self) -> usize {
        self.tables.len()
    }

    /// Adds (or replaces) a table.
    pub fn insert(&mut self, schema: &str, name: &str, table: TableDef) {
        let replaced = self
            .tables
            .insert((schema.to_string(), name.to_string()), Arc::new(table));
        if replaced.is_none() {
            self.schemas_of
                .entry(name.to_string())
                .or_default()
                .push(schema.to_string());
        }
    }

    /// The table `schema.name`, or `name` as the current session's search
    /// path resolves it.
    pub fn table(&self, schema: Option<&str>, name: &str) -> Option<&TableDef> {
        let schema = match schema {
            Some(schema) => schema,
            None => match self.resolve(name) {
                Resolved::In(schema) => schema,
                Resolved::Missing | Resolved::Ambiguous => return None,
            },
        };
        self.tables
            .get(&(schema.to_string(), name.to_string()))
            .map(Arc::as_ref)
    }

    /// Whether some schema holds a table `name`.
    pub fn holds(&self, name: &str) -> bool {
        self.schemas_of.contains_key(name)
    }

    /// Whether more than one schema holds a table `name`.
    pub fn held_by_several(&self, name: &str) -> bool {
        self.schemas_of.get(name).is_some_and(|s| s.len() > 1)
    }

    /// Where an unqualified table `name` leads in the session being
    /// rewritten for (see [`super::with_session`]).
    pub fn resolve(&self, name: &str) -> Resolved<'_> {
        let holders: Vec<&str> = match self.schemas_of.get(name) {
            Some(schemas) => schemas.iter().map(String::as_str).collect(),
            None => return Resolved::Missing,
        };
        super::with_current_session(|session| {
            let user = session.map_or("", |s| &s.user);
            let builtin;
            let path = match session.and_then(|s| s.search_path.as_ref()) {
                Some(path) => path,
                None => match self.defaults.for_user(user) {
                    Some(path) => path,
                    None => {
                        builtin = SearchPath::builtin();
                        &builtin
                    }
                },
            };
            path.resolve(&holders, user)
        })
    }
}

/// A default that evaluates to the same value every time it is evaluated
/// (literals, casts, signs and parentheses only): it can be written to both
/// columns. `nextval(…)`, `now()` and other calls are not.
pub fn is_constant_expression(expression: &str) -> bool {
    let Ok(tokens) = tokenize(expression) else {
        return false;
    };
    let mut after_cast = false;
    for t in &tokens {
        let ok = match &t.token {
            Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::LParen
            | Token::RParen
            | Token::Minus
            | Token::Plus
            | Token::Comma
            | Token::DoubleColon => true,
            // Type names after `::` (and their modifiers), NULL, TRUE, FALSE.
            Token::Word(w) => {
                after_cast
                    || matches!(
                        w.value.to_ascii_lowercase().as_str(),
                        "null" | "true" | "false"
                    )
            }
            _ => false,
        };
        if !ok {
            return false;
        }
        after_cast = match &t.token {
            Token::DoubleColon => true,
            Token::Word(_) | Token::LParen | Token::Number(..) | Token::Comma => after_cast,
            _ => false,
        };
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unqualified_names_resolve_along_the_path() {
        let mut catalog = Catalog::empty();
        catalog.insert(
            "public",
            "t",
            TableDef {
                columns: vec![ColumnDef {
                    name: "id".into(),
                    type_name: "integer".into(),
                    not_null: true,
                    default: None,
                }],
            },
        );
        assert!(catalog.table(None, "t").is_some_and(|t| t.has_column("id")));
        assert!(catalog.table(Some("public"), "t").is_some());
        assert!(catalog.table(Some("other"), "t").is_none());
        assert!(catalog.table(None, "u").is_none());
    }

    #[test]
    fn constant_defaults_are_told_from_volatile_ones() {
        for constant in [
            "0",
            "'-1'::integer",
            "'none'::text",
            "(-5)",
            "'0'::numeric(12,2)",
            "NULL::integer",
            "true",
        ] {
            assert!(is_constant_expression(constant), "{constant}");
        }
        for volatile in [
            "nextval('t_id_seq'::regclass)",
            "now()",
            "CURRENT_TIMESTAMP",
            "random()",
            "gen_random_uuid()",
        ] {
            assert!(!is_constant_expression(volatile), "{volatile}");
        }
    }
}
