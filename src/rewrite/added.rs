//! An INSERT that leaves out a column being added with `up` (an
//! expression over the row's other columns): pgshift gives each row the
//! value `up` has over that row's own values, as the rewritten statement's
//! extra column — no trigger. A column left out of the INSERT as well is
//! read as its default (a constant, or NULL when it has none).
//!
//! `INSERT INTO users (first, last) VALUES ($1, $2)` with
//! `up = first || ' ' || last` becomes
//! `INSERT INTO users (first, last, full_name) VALUES ($1, $2,
//! ((($1)::text) || ' ' || (($2)::text))::text)`.

use sqlparser::tokenizer::Token;

use super::catalog::{is_constant_expression, Catalog, TableDef};
use super::migration::{quote_ident, substitute_all};
use super::resolve::{Implied, ImpliedSource, Refusal, Target, Value};
use super::rules::ActiveMigration;
use super::text::{copy_table, Edit, Tok};
use crate::add_column::AddedColumn;

/// The edits giving `added`'s column its value in INSERT `i`, which
/// leaves it out; none when the column has no `up` (its default applies).
pub fn implied_edits(
    sql: &str,
    i: &Implied,
    t: &Target<'_>,
    added: &AddedColumn,
    edits: &mut Vec<Edit>,
) -> Result<(), Refusal> {
    let Some(up) = &added.up else {
        return Ok(());
    };
    if !t.m.has_new() {
        return Ok(()); // not added yet
    }
    let k = i.target;
    let spec = &t.m.spec;
    let def = t
        .catalog
        .table(Some(&spec.table.schema), &spec.table.name)
        .ok_or_else(|| t.no_catalog(k))?;
    let Some(listed) = listed_columns(i, def, added) else {
        return Ok(()); // positional values that reach the added column too
    };
    let c = quote_ident(&added.column);
    if let ImpliedSource::DefaultValues(start, end) = i.source {
        let value = value_over(sql, up, added, def, &[], &[]).map_err(|r| (k, r))?;
        edits.push(Edit {
            start,
            end,
            text: format!("({c}) VALUES ({value})"),
        });
        return Ok(());
    }
    match i.list_close {
        Some(close) if !i.columns.is_empty() => edits.push(Edit {
            start: close,
            end: close,
            text: format!(", {c}"),
        }),
        _ => {
            let mut names: Vec<String> = listed.iter().map(|n| quote_ident(n)).collect();
            names.push(c);
            edits.push(Edit {
                start: i.after_target,
                end: i.after_target,
                text: format!("({}) ", names.join(", ")),
            });
        }
    }
    for (row, &end) in i.rows.iter().zip(&i.row_ends) {
        let value = value_over(sql, up, added, def, &listed, row).map_err(|r| (k, r))?;
        edits.push(Edit {
            start: end,
            end,
            text: format!(", {value}"),
        });
    }
    Ok(())
}

/// `COPY t FROM …` (no column list) once the column is added: given the
/// old shape's column list, so its rows keep their width and the column
/// its default. `Ok(None)`: as written (a column list, or not added yet).
/// Refused when the column is given by `up`: COPY rows are not rewritten.
pub fn copy_from(
    sql: &str,
    tokens: &[Tok],
    m: &ActiveMigration,
    catalog: &Catalog,
) -> Result<Option<String>, String> {
    let (Some(added), Some(j)) = (&m.spec.added, copy_table(tokens, &m.spec.table.name)) else {
        return Ok(None);
    };
    let has_list = tokens.get(j + 1).is_some_and(|t| t.token == Token::LParen);
    if has_list || !m.has_new() {
        return Ok(None);
    }
    let c = quote_ident(&added.column);
    if added.up.is_some() {
        return Err(format!(
            "copies rows into the table without a column list while {c} is being added and given by up over each row, which COPY rows cannot be; list the columns, {c} included, or use INSERT"
        ));
    }
    let spec = &m.spec;
    let def = catalog
        .table(Some(&spec.table.schema), &spec.table.name)
        .ok_or_else(|| {
            format!(
                "copies into {} without a column list, which is not in pgshift's catalog snapshot",
                spec.table
            )
        })?;
    let list: Vec<String> = def
        .columns
        .iter()
        .filter(|col| col.name != added.column)
        .map(|col| quote_ident(&col.name))
        .collect();
    let at = tokens[j].end;
    Ok(Some(format!(
        "{} ({}){}",
        &sql[..at],
        list.join(", "),
        &sql[at..]
    )))
}

/// Whether INSERT `i`, which leaves `added`'s column out, is given a
/// value for it (else its default applies, and nothing is rewritten).
pub fn gives_value(i: &Implied, t: &Target<'_>, added: &AddedColumn) -> bool {
    if added.up.is_none() || !t.m.has_new() {
        return false;
    }
    let spec = &t.m.spec;
    match t.catalog.table(Some(&spec.table.schema), &spec.table.name) {
        Some(def) => listed_columns(i, def, added).is_some(),
        None => true, // refused for want of the catalog
    }
}

/// The columns the INSERT's values go to: its list, or (positional) the
/// first columns of the table without the added one; `None` when the
/// positional values reach the added column as well (the client writes it).
fn listed_columns(i: &Implied, def: &TableDef, added: &AddedColumn) -> Option<Vec<String>> {
    if !i.columns.is_empty() {
        return Some(i.columns.clone());
    }
    let width = match &i.source {
        ImpliedSource::Values { width, .. } => *width,
        ImpliedSource::Query => i.rows.first().map_or(0, Vec::len),
        ImpliedSource::DefaultValues(..) => 0,
    };
    let old: Vec<String> = def
        .columns
        .iter()
        .map(|c| c.name.clone())
        .filter(|c| *c != added.column)
        .collect();
    (width <= old.len()).then(|| old[..width].to_vec())
}

/// `up` over one row: each column it reads replaced by the row's value for
/// it (cast to the column's type where the value's type comes from where
/// it is written), or by the column's default when the row leaves it out.
fn value_over(
    sql: &str,
    up: &str,
    added: &AddedColumn,
    def: &TableDef,
    listed: &[String],
    row: &[Value],
) -> Result<String, String> {
    let mut values = Vec::new();
    for name in &added.reads {
        let column = def.column(name).ok_or_else(|| {
            format!(
                "inserts into a table whose new column {} is given by up, which reads {}, a column the table does not have",
                quote_ident(&added.column),
                quote_ident(name)
            )
        })?;
        let given = listed
            .iter()
            .position(|c| c == name)
            .and_then(|j| row.get(j));
        let text = match given {
            Some(v) if !v.default => written(sql, v, name, &column.type_name, added)?,
            _ => default_of(name, column.default.as_deref(), &column.type_name, added)?,
        };
        values.push((name.clone(), text));
    }
    Ok(format!(
        "({})::{}",
        substitute_all(up, &values),
        added.type_name
    ))
}

/// A value the row writes to `name`, to be read again by `up`.
fn written(
    sql: &str,
    v: &Value,
    name: &str,
    type_name: &str,
    added: &AddedColumn,
) -> Result<String, String> {
    if let Some(f) = &v.volatile {
        return Err(format!(
            "writes the result of {f}(…) to {}, which up reads to give the new column {} its value, and evaluating it twice could change it; compute the value in the application, or name {} in the INSERT",
            quote_ident(name),
            quote_ident(&added.column),
            quote_ident(&added.column)
        ));
    }
    let text = sql.get(v.range.0..v.range.1).unwrap_or_default();
    Ok(match v.untyped {
        true => format!("({text})::{type_name}"),
        false => text.to_string(),
    })
}

/// The default a row left `name` to, as `up` reads it.
fn default_of(
    name: &str,
    default: Option<&str>,
    type_name: &str,
    added: &AddedColumn,
) -> Result<String, String> {
    match default {
        None => Ok(format!("NULL::{type_name}")),
        Some(d) if is_constant_expression(d) => Ok(format!("({d})::{type_name}")),
        Some(d) => Err(format!(
            "leaves {} to its default {d}, which up reads to give the new column {} its value, and evaluating the default twice could change it; name {} in the INSERT",
            quote_ident(name),
            quote_ident(&added.column),
            quote_ident(name)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::catalog::{Catalog, ColumnDef, TableDef};
    use super::super::migration::{MigrationSpec, Phase};
    use super::super::plan::{plan, Plan};
    use super::super::rules::{ActiveMigration, RulesCell};
    use crate::add_column::AddColumnKeys;

    fn column(name: &str, type_name: &str, default: Option<&str>) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            type_name: type_name.into(),
            not_null: false,
            default: default.map(str::to_string),
        }
    }

    /// `users (id serial, first, last[, full_name])` adding `full_name`
    /// (with `up` when `up` is given) in `phase`.
    fn planned(sql: &str, up: Option<&str>, phase: Phase) -> String {
        let keys = AddColumnKeys {
            column: "full_name".into(),
            type_name: "text".into(),
            default: Some("''".into()),
            not_null: up.is_some(),
            up: up.map(str::to_string),
            new_shape: None,
        };
        let spec = MigrationSpec::add_column("m", "users", &keys).unwrap();
        let m = ActiveMigration { spec, phase };
        let mut columns = vec![
            column("id", "integer", Some("nextval('users_id_seq'::regclass)")),
            column("first", "text", None),
            column("last", "text", Some("'-'::text")),
        ];
        if m.has_new() {
            columns.push(column("full_name", "text", None));
        }
        let mut catalog = Catalog::empty();
        catalog.insert("public", "users", TableDef { columns });
        let cell = RulesCell::with_catalog(&[m], catalog);
        cell.with(|rules| match plan(sql, rules) {
            Plan::Unchanged => sql.to_string(),
            Plan::Replaced { text, .. } => text,
            Plan::Refused { reason, .. } => format!("refused: {reason}"),
            Plan::Error { message, .. } => format!("error: {message}"),
        })
    }

    const UP: Option<&str> = Some("first || ' ' || last");

    /// [`planned`] for a session marked `mark` at startup.
    fn planned_as(sql: &str, phase: Phase, mark: super::super::marker::Marked) -> String {
        use std::sync::Arc;
        let context = Arc::new(super::super::SessionContext::new(
            None,
            Arc::from("u"),
            None,
            Some(mark),
        ));
        super::super::with_session(Some(&context), || planned(sql, None, phase))
    }

    #[test]
    fn a_session_marked_new_sees_the_column_once_it_exists() {
        use super::super::marker::Marked;
        let star = "select * from users where id = 1";
        // Not added yet: the table as it is (no column that does not exist).
        assert_eq!(
            planned_as(star, Phase::Planned, Marked::New),
            "select users.id, users.first, users.last from users where id = 1"
        );
        assert_eq!(
            planned_as(star, Phase::Expanded, Marked::New),
            "select users.id, users.first, users.last, users.full_name from users where id = 1"
        );
        assert_eq!(
            planned_as(star, Phase::Switched, Marked::Old),
            "select users.id, users.first, users.last from users where id = 1"
        );
    }

    #[test]
    fn an_insert_that_leaves_the_column_out_is_given_up_over_its_own_row() {
        assert_eq!(
            planned("INSERT INTO users (first, last) VALUES ($1, $2)", UP, Phase::Expanded),
            "INSERT INTO users (first, last, full_name) VALUES ($1, $2, ((($1)::text) || ' ' || (($2)::text))::TEXT)"
        );
        assert_eq!(
            planned("insert into users (first) values ('a'), ('b')", UP, Phase::Switched),
            "insert into users (first, full_name) values ('a', ((('a')::text) || ' ' || (('-'::text)::text))::TEXT), ('b', ((('b')::text) || ' ' || (('-'::text)::text))::TEXT)"
        );
        assert_eq!(
            planned("insert into users values (default, 'a', 'b')", UP, Phase::Validated),
            "insert into users (id, first, last, full_name) values (default, 'a', 'b', ((('a')::text) || ' ' || (('b')::text))::TEXT)"
        );
        assert_eq!(
            planned("insert into users (last, first) select l, f from src", UP, Phase::Expanded),
            "insert into users (last, first, full_name) select l, f, ((f) || ' ' || (l))::TEXT from src"
        );
    }

    #[test]
    fn what_up_cannot_be_given() {
        let r = planned(
            "insert into users (first, last) values (random()::text, 'b')",
            UP,
            Phase::Expanded,
        );
        assert!(r.starts_with("refused:") && r.contains("random"), "{r}");
    }

    #[test]
    fn the_old_shapes_star_leaves_the_column_out_until_the_switch() {
        let before = planned("select * from users where id = 1", None, Phase::Expanded);
        assert_eq!(
            before,
            "select users.id, users.first, users.last from users where id = 1"
        );
        let after = planned("select * from users where id = 1", None, Phase::Switched);
        assert!(after.contains("users.full_name"), "{after}");
        // RETURNING * with nothing to give the column: only the star.
        assert_eq!(
            planned(
                "insert into users (first) values ('a') returning *",
                None,
                Phase::Expanded
            ),
            "insert into users (first) values ('a') returning users.id, users.first, users.last"
        );
        // A client that names the column is the new shape: unchanged.
        let named = "insert into users (first, last, full_name) values ($1, $2, $3)";
        assert_eq!(planned(named, UP, Phase::Expanded), named);
        assert_eq!(
            planned("select full_name from users", UP, Phase::Expanded),
            "select full_name from users"
        );
    }

    #[test]
    fn copy_keeps_the_old_shape() {
        assert_eq!(
            planned("COPY users FROM STDIN", None, Phase::Expanded),
            "COPY users (id, first, last) FROM STDIN"
        );
        assert_eq!(
            planned("COPY users FROM STDIN", None, Phase::Planned),
            "COPY users FROM STDIN"
        );
        let listed = "COPY users (first, last, full_name) FROM STDIN";
        assert_eq!(planned(listed, UP, Phase::Expanded), listed);
        let r = planned("COPY users FROM STDIN", UP, Phase::Expanded);
        assert!(
            r.starts_with("refused:") && r.contains("list the columns"),
            "{r}"
        );
        assert_eq!(
            planned("COPY users TO STDOUT", None, Phase::Expanded),
            "COPY (SELECT users.id, users.first, users.last FROM users) TO STDOUT"
        );
    }
}

#[cfg(test)]
/// A table with an added column joined with one whose column is renamed:
/// found by the application battery (42702 from Postgres on an unqualified
/// column of the added-to table that the physical renamed table also has).
mod beside_a_rename {
    use super::super::catalog::TableDef;
    use super::super::migration::{MigrationSpec, Phase};
    use super::super::rules::ActiveMigration;
    use super::super::testing;
    use crate::add_column::AddColumnKeys;

    fn table(columns: &[&str]) -> TableDef {
        let typed: Vec<(&str, &str)> = columns.iter().map(|c| (*c, "text")).collect();
        testing::table(&typed)
    }

    #[test]
    fn a_join_of_the_renamed_table_and_the_added_to_one_resolves_as_before() {
        // `name` is the org's in the new shape: qualified while the users
        // table physically has a `name` too (Postgres would find it
        // ambiguous), as it is once that is gone.
        for phase in [Phase::Planned, Phase::Expanded, Phase::Switched] {
            let out = planned_join(phase);
            assert!(out.contains("o.name as org_name"), "{phase}: {out}");
        }
        let out = planned_join(Phase::Contracted);
        assert!(out.contains(", name as org_name"), "{out}");
    }

    fn planned_join(phase: Phase) -> String {
        let rename =
            MigrationSpec::new("r", "app.users", "name", "full_name", None, None, None).unwrap();
        let keys = AddColumnKeys {
            column: "slug".into(),
            type_name: "text".into(),
            ..AddColumnKeys::default()
        };
        let add = MigrationSpec::add_column("a", "app.orgs", &keys).unwrap();
        let rename = ActiveMigration {
            spec: rename,
            phase,
        };
        let add = ActiveMigration { spec: add, phase };
        let mut users = vec!["id", "name", "org_id", "email", "full_name"];
        users.retain(|c| match *c {
            "name" => rename.has_old(),
            "full_name" => rename.has_new(),
            _ => true,
        });
        let mut orgs = vec!["id", "name", "slug"];
        orgs.retain(|c| *c != "slug" || add.has_new());
        let tables = vec![
            ("app", "users", table(&users)),
            ("app", "orgs", table(&orgs)),
        ];
        let sql = "select u.id, full_name, name as org_name from app.users u join app.orgs o on o.id = u.org_id where u.email like $1";
        testing::planned(sql, &[rename, add], tables, None)
    }
}
