//! Which shape a session is in for a migration whose statements cannot
//! tell (an added or a dropped column: the old shape's `*` has one column
//! list, the new shape's another; a type change that keeps the column's
//! name: both shapes name it, each with its own type). A session is
//! *marked* at startup:
//!
//! - by the migration's `new_shape`: an `application_name` LIKE pattern
//!   or a role (the session's user) — the new shape;
//! - else by the startup setting `pgshift.shape` (`new` or `old`), sent as
//!   `options=-c pgshift.shape=new` (Postgres accepts the dotted custom
//!   setting too, so the session behaves the same direct).
//!
//! An unmarked session follows the read switch.

use serde::{Deserialize, Serialize};

use super::rules::ActiveMigration;

/// The shape a session asked for at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Marked {
    Old,
    New,
}

impl Marked {
    /// The mark a startup packet asks for: `pgshift.shape` as a parameter
    /// of its own, else in `options` (`-c pgshift.shape=new`).
    pub fn from_startup(shape: Option<&str>, options: Option<&str>) -> Option<Marked> {
        match shape {
            Some(value) => Marked::parse(value),
            None => Marked::parse(&super::search_path::option_value(
                options?,
                "pgshift.shape",
            )?),
        }
    }

    /// `pgshift.shape`'s value (`new` or `old`, any case); `None` for
    /// anything else.
    pub fn parse(value: &str) -> Option<Marked> {
        match value.trim().to_ascii_lowercase().as_str() {
            "new" => Some(Marked::New),
            "old" => Some(Marked::Old),
            _ => None,
        }
    }
}

/// Which sessions a migration serves in the new shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapeMarker {
    /// A LIKE pattern over `application_name` (`%` any run, `_` one
    /// character, `\` escapes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
    /// The session's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Sessions that connected at or after this time (Unix ms): what the
    /// DDL gate marks its migrations with, as a deployment starts the new
    /// version once its migrations have run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected_after_ms: Option<i64>,
}

impl ShapeMarker {
    /// At least one key, and nothing longer than Postgres' names allow
    /// (an application name is cut at 63 bytes).
    pub fn check(&self) -> Result<(), String> {
        if self.application_name.is_none()
            && self.role.is_none()
            && self.connected_after_ms.is_none()
        {
            return Err("new_shape needs \"application_name\" (a LIKE pattern), \"role\" or \"connected_after_ms\"".into());
        }
        for (key, value) in [
            ("application_name", &self.application_name),
            ("role", &self.role),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > 256) {
                return Err(format!("new_shape.{key} is longer than 256 bytes"));
            }
        }
        Ok(())
    }

    /// Whether a session of `application` and `user` is marked new.
    pub fn matches(&self, application: Option<&str>, user: &str) -> bool {
        let by_app = match (&self.application_name, application) {
            (Some(pattern), Some(app)) => like(app.as_bytes(), pattern.as_bytes()),
            _ => false,
        };
        by_app || self.role.as_deref() == Some(user)
    }

    /// Whether the session is marked new.
    pub fn matches_session(&self, s: &super::SessionContext) -> bool {
        let connected_after = self
            .connected_after_ms
            .is_some_and(|at| s.connected_ms >= at);
        connected_after || self.matches(s.application.as_deref(), &s.user)
    }
}

/// SQL `LIKE` (case-sensitive), iterative with one backtrack point: time
/// linear in the product of the lengths at worst, no recursion.
fn like(text: &[u8], pattern: &[u8]) -> bool {
    let (mut t, mut p) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'%') => {
                star = Some((p, t));
                p += 1;
            }
            Some(b'\\') if pattern.get(p + 1) == Some(&text[t]) => {
                p += 2;
                t += 1;
            }
            Some(&c) if c != b'\\' && (c == b'_' || c == text[t]) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'%')
}

/// The shape the session being rewritten is marked with for `m`, if any.
pub fn marked(m: &ActiveMigration) -> Option<Marked> {
    super::with_current_session(|s| {
        let s = s?;
        let by_spec = m
            .spec
            .new_shape
            .as_ref()
            .is_some_and(|k| k.matches_session(s));
        // A session that connected before a time marker's time is the
        // old shape (not unmarked, following the read switch).
        let by_time = m
            .spec
            .new_shape
            .as_ref()
            .is_some_and(|k| k.connected_after_ms.is_some());
        match (by_spec, s.marked) {
            (true, _) => Some(Marked::New),
            (false, Some(mark)) => Some(mark),
            (false, None) if by_time => Some(Marked::Old),
            (false, None) => None,
        }
    })
}

/// The plan cache's key for the session being rewritten: its context's
/// key, with the migrations whose `new_shape` marks it folded in. Its
/// application matters only there, so sessions of many applications
/// share plans unless a marker tells them apart.
pub fn session_key(migrations: &[ActiveMigration]) -> u64 {
    super::with_current_session(|s| {
        let Some(s) = s else { return 0 };
        migrations
            .iter()
            .enumerate()
            .filter(|(_, m)| {
                m.spec
                    .new_shape
                    .as_ref()
                    .is_some_and(|k| k.matches_session(s))
            })
            .fold(s.key, |key, (i, _)| {
                key.rotate_left(7) ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            })
    })
}

/// Whether the session's `*` over `m`'s table is the new shape's: an
/// added column in it, a dropped one out of it.
pub fn sees_new(m: &ActiveMigration) -> bool {
    match marked(m) {
        Some(Marked::New) => true,
        Some(Marked::Old) => false,
        None => m.reads_new(),
    }
}

/// For an added or a dropped column: the column the session's `*` over
/// the table leaves out (the empty name when it leaves out none); `None`
/// for other migrations.
pub fn hidden(m: &ActiveMigration) -> Option<&str> {
    let column = m.spec.one_sided()?;
    // The new shape has an added column, the old one a dropped column.
    let in_shape = sees_new(m) == m.spec.added.is_some();
    Some(if in_shape { "" } else { column })
}

/// Whether the session's `*` over an added or dropped column's table has
/// that column (what its result key tells apart); false for others.
pub fn star_has_column(m: &ActiveMigration) -> bool {
    let exists = m.has_new() || m.has_old();
    hidden(m).is_some_and(|h| h.is_empty()) && exists
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::SessionContext;
    use std::sync::Arc;

    #[test]
    fn like_as_postgres_reads_it() {
        for (text, pattern, want) in [
            ("billing-v2", "billing-v2%", true),
            ("billing-v2.3", "billing-v2%", true),
            ("billing-v1", "billing-v2%", false),
            ("api", "a_i", true),
            ("aXi", "a_i", true),
            ("ai", "a_i", false),
            ("50%", "50\\%", true),
            ("500", "50\\%", false),
            ("anything", "%", true),
            ("", "%", true),
            ("", "", true),
            ("a", "", false),
            ("Billing", "billing%", false),
            ("abcabc", "%bc%c", true),
        ] {
            assert_eq!(
                like(text.as_bytes(), pattern.as_bytes()),
                want,
                "{text} LIKE {pattern}"
            );
        }
        // No blow-up on the classic pathological pattern.
        let text = "a".repeat(5000);
        let pattern = format!("{}b", "%a".repeat(100));
        assert!(!like(text.as_bytes(), pattern.as_bytes()));
    }

    #[test]
    fn a_marker_names_an_application_pattern_or_a_role() {
        let m = ShapeMarker {
            application_name: Some("web-v2%".into()),
            role: Some("app_v2".into()),
            ..Default::default()
        };
        assert!(m.matches(Some("web-v2-7f9c"), "app"));
        assert!(m.matches(None, "app_v2"));
        assert!(!m.matches(Some("web-v1"), "app"));
        assert!(ShapeMarker::default().check().is_err());
        let since = ShapeMarker {
            connected_after_ms: Some(1_000),
            ..Default::default()
        };
        let session = |at| SessionContext {
            connected_ms: at,
            ..SessionContext::new(None, Arc::from("app"), None, None)
        };
        assert!(since.matches_session(&session(1_000)));
        assert!(!since.matches_session(&session(999)));
        assert!(since.check().is_ok());
        assert_eq!(Marked::parse(" NEW "), Some(Marked::New));
        assert_eq!(
            Marked::from_startup(None, Some("-c search_path=a -c pgshift.shape=old")),
            Some(Marked::Old)
        );
        assert_eq!(
            Marked::from_startup(Some("new"), Some("--pgshift.shape=old")),
            Some(Marked::New)
        );
        assert_eq!(Marked::parse("v2"), None);
    }
}

#[cfg(test)]
/// A type change that keeps the column's name: the session's shape says
/// which physical column its `amount` is.
mod kept_name {
    use super::super::migration::{MigrationSpec, Phase};
    use super::super::rules::ActiveMigration;
    use super::Marked;

    /// `orders (id, amount integer, note)`, `amount` becoming
    /// `numeric(12,2)`, planned in `phase` for a session marked `mark`.
    fn planned(sql: &str, phase: Phase, mark: Option<Marked>) -> String {
        planned_with(sql, phase, mark, None)
    }

    /// [`planned`], `amount` having the default `default`.
    fn planned_with(
        sql: &str,
        phase: Phase,
        mark: Option<Marked>,
        default: Option<&str>,
    ) -> String {
        let spec = MigrationSpec::change_type_keeping_name(
            "m",
            "orders",
            "amount",
            "numeric(12,2)",
            "amount::numeric / 100",
            "(amount * 100)::integer",
            None,
        )
        .unwrap();
        let m = ActiveMigration { spec, phase };
        let mut columns = vec![("id", "integer"), ("amount", "integer"), ("note", "text")];
        if m.has_new() {
            columns.push(("amount_pgshift_new", "numeric(12,2)"));
        }
        let mut orders = super::super::testing::table(&columns);
        orders.columns[1].default = default.map(str::to_string);
        super::super::testing::planned(sql, &[m], vec![("public", "orders", orders)], mark)
    }

    #[test]
    fn each_shape_names_its_own_column() {
        use Phase::{Expanded, Switched};
        let new = Some(Marked::New);
        let old = Some(Marked::Old);
        let read = "select amount from orders where id = $1";
        // Before the switch an unmarked session is the old shape, after
        // it the new one; a marked one keeps its shape throughout.
        assert_eq!(planned(read, Expanded, None), read);
        assert_eq!(
            planned(read, Expanded, new),
            "select ((amount)::numeric / 100)::numeric(12,2) AS amount from orders where id = $1"
        );
        assert_eq!(
            planned(read, Switched, None),
            "select amount_pgshift_new AS amount from orders where id = $1"
        );
        assert_eq!(
            planned(read, Switched, old),
            "select ((((amount_pgshift_new)) * 100)::integer) AS amount from orders where id = $1"
        );
        // `*` has the one name where it always stood, never the working name.
        assert_eq!(
            planned("select * from orders where amount > 5", Switched, None),
            "select orders.id, orders.amount_pgshift_new AS amount, orders.note from orders where amount_pgshift_new > 5"
        );
        assert_eq!(
            planned("select * from orders", Expanded, old),
            "select orders.id, orders.amount, orders.note from orders"
        );
        // The working name is the physical column, as it is.
        let working = "select amount_pgshift_new from orders";
        assert_eq!(planned(working, Switched, None), working);
        // A cast keeps the column's output name.
        assert_eq!(
            planned("select amount::text from orders", Switched, None),
            "select amount_pgshift_new::text AS amount from orders"
        );
    }

    #[test]
    fn writes_reach_both_columns_from_either_shape() {
        assert_eq!(
            planned("update orders set amount = $1 where id = 2", Phase::Expanded, Some(Marked::New)),
            "update orders set amount = (((($1::numeric(12,2))) * 100)::integer), amount_pgshift_new = $1::numeric(12,2) where id = 2"
        );
        assert_eq!(
            planned("update orders set amount = $1 where id = 2", Phase::Switched, Some(Marked::Old)),
            "update orders set amount = $1::integer, amount_pgshift_new = (($1::integer)::numeric / 100)::numeric(12,2) where id = 2"
        );
        // A positional INSERT keeps the table's order, in either shape.
        assert_eq!(
            planned("insert into orders values (1, 250, 'x')", Phase::Expanded, None),
            "insert into orders (id, amount, amount_pgshift_new, note) values (1, 250, ((250)::numeric / 100)::numeric(12,2), 'x')"
        );
        // Planned, only the old column exists: still through `down`.
        assert_eq!(
            planned(
                "insert into orders values (1, 2.5, 'x')",
                Phase::Planned,
                Some(Marked::New)
            ),
            "insert into orders (id, amount, note) values (1, ((((2.5)) * 100)::integer), 'x')"
        );
        // Leaving the column to the table (nothing to spell out while
        // only the old column exists), its RETURNING is still the shape's.
        assert_eq!(
            planned("insert into orders (id) values (1) returning amount", Phase::Planned, Some(Marked::New)),
            "insert into orders (id) values (1) returning ((amount)::numeric / 100)::numeric(12,2) AS amount"
        );
        // Left out, the old column's default is the new shape's value
        // converted (as the backfill would give it).
        assert_eq!(
            planned_with("insert into orders (id) values (1)", Phase::Expanded, Some(Marked::New), Some("500")),
            "insert into orders (id, amount, amount_pgshift_new) values (1, ((((((500)::numeric / 100)::numeric(12,2))) * 100)::integer), ((500)::numeric / 100)::numeric(12,2))"
        );
        assert_eq!(
            planned("insert into orders values (1, 2.5, 'x')", Phase::Switched, None),
            "insert into orders (id, amount, amount_pgshift_new, note) values (1, ((((2.5)) * 100)::integer), 2.5, 'x')"
        );
    }
}

#[cfg(test)]
/// Two migrations on one table (a rename and a kept name's type change):
/// each is planned over the text the other made.
mod beside_a_rename {
    use super::super::migration::{MigrationSpec, Phase};
    use super::super::rules::ActiveMigration;
    use super::Marked;

    fn planned(sql: &str, phase: Phase, mark: Option<Marked>) -> String {
        let rename =
            MigrationSpec::new("a", "users", "name", "full_name", None, None, None).unwrap();
        let widen = MigrationSpec::change_type_keeping_name(
            "b",
            "users",
            "login_count",
            "bigint",
            "login_count::bigint",
            "login_count::integer",
            None,
        )
        .unwrap();
        let (rename, widen) = (
            ActiveMigration {
                spec: rename,
                phase,
            },
            ActiveMigration { spec: widen, phase },
        );
        let mut columns = vec!["id", "name", "login_count", "email"];
        if rename.has_new() {
            columns.extend(["full_name", "login_count_pgshift_new"]);
        }
        let columns: Vec<(&str, &str)> = columns.into_iter().map(|c| (c, "text")).collect();
        let users = super::super::testing::table(&columns);
        super::super::testing::planned(
            sql,
            &[rename, widen],
            vec![("public", "users", users)],
            mark,
        )
    }

    #[test]
    fn each_migration_rewrites_its_own_column_of_the_one_table() {
        let new = Some(Marked::New);
        assert_eq!(
            planned("select * from users where id = 1", Phase::Expanded, new),
            "select users.id, users.name, ((users.login_count)::bigint)::bigint AS login_count, users.email, users.name AS full_name from users where id = 1"
        );
        assert_eq!(
            planned("update users set full_name = $1, login_count = login_count + 1 where id = $2", Phase::Expanded, None),
            "update users set name = $1, full_name = $1, login_count = login_count + 1, login_count_pgshift_new = ((login_count + 1)::bigint)::bigint where id = $2"
        );
        // A positional INSERT: the old shape's columns, the working one
        // left out of the list the first migration spells out.
        assert_eq!(
            planned("insert into users values (1, 'a', 2, 'e')", Phase::Switched, Some(Marked::Old)),
            "insert into users (id, name, full_name, login_count, login_count_pgshift_new, email) values (1, 'a', 'a', 2, ((2)::bigint)::bigint, 'e')"
        );
        assert_eq!(
            planned("select full_name, login_count from users where id = $1", Phase::Switched, Some(Marked::Old)),
            "select full_name, (((login_count_pgshift_new))::integer) AS login_count from users where id = $1"
        );
    }
}
#[cfg(test)]
/// The result key of a statement reading a kept name (found by the
/// application battery: asyncpg's prepared reads refused at the contract).
mod result_keys {
    use std::sync::Arc;

    use super::super::catalog::{Catalog, ColumnDef, TableDef};
    use super::super::migration::{MigrationSpec, Phase};
    use super::super::rules::{ActiveMigration, RulesCell};
    use super::super::{with_session, SessionContext, StatementRewriter};
    use super::{Marked, ShapeMarker};

    #[test]
    fn a_kept_names_new_shape_keeps_its_key_through_the_contract() {
        let rename =
            MigrationSpec::new("r", "app.users", "name", "full_name", None, None, None).unwrap();
        let marker = ShapeMarker {
            application_name: Some("%-new-%".into()),
            role: None,
            ..Default::default()
        };
        let widen = MigrationSpec::change_type_keeping_name(
            "w",
            "app.users",
            "login_count",
            "bigint",
            "login_count::bigint",
            "login_count::integer",
            Some(marker),
        )
        .unwrap();
        let columns = ["id", "full_name", "login_count", "login_count_pgshift_new"]
            .iter()
            .map(|n| ColumnDef {
                name: n.to_string(),
                type_name: "text".into(),
                not_null: false,
                default: None,
            })
            .collect();
        let mut catalog = Catalog::empty();
        catalog.insert("app", "users", TableDef { columns });
        let sql = b"SELECT app.users.id, app.users.full_name, app.users.login_count FROM app.users WHERE app.users.email = $1";
        let key = |app: &str, mark: Option<Marked>, contracted: bool| {
            let mut ms = vec![ActiveMigration {
                spec: rename.clone(),
                phase: Phase::Contracted,
            }];
            if !contracted {
                ms.push(ActiveMigration {
                    spec: widen.clone(),
                    phase: Phase::Switched,
                });
            }
            let cell = Arc::new(RulesCell::with_catalog(&ms, catalog.clone()));
            let rewriter = super::super::engine::MigrationRewriter::new(cell);
            let context = Arc::new(SessionContext::new(
                Some(Arc::from(app)),
                Arc::from("app"),
                None,
                mark,
            ));
            with_session(Some(&context), || rewriter.result_key(sql))
        };
        // The new shape's type is the table's once done: no change.
        assert_eq!(key("api-new-1", None, false), key("api-new-1", None, true));
        // The old shape's type changes at the contract.
        let old = Some(Marked::Old);
        assert_ne!(key("api-v1", old, false), key("api-v1", old, true));
    }
}
