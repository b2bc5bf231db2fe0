//! A table renamed (`"op": "rename_table"`): until the switch the physical
//! table has the old name, from the switch the new one (renamed in place,
//! behind the barrier). A statement that names the other name is rewritten
//! to name the physical table; nothing else changes.
//!
//! Every relation a statement names is found on the syntax tree — FROM and
//! JOIN items, the targets of INSERT, UPDATE, DELETE and MERGE, COPY,
//! TRUNCATE, LOCK, ALTER TABLE, `CREATE INDEX … ON`, a foreign key's
//! `REFERENCES` in CREATE TABLE and ALTER TABLE — and resolved as the
//! session resolves it (`schema.name`, or the search path). One written
//! without an alias keeps the client's name as its alias (`FROM clients AS
//! customers`), so `customers.id` and the output names stay as written. A
//! CTE named like the table's other name shadows it: refused, as pgshift
//! could not tell the two apart everywhere.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    AlterTableOperation, ColumnOption, CopySource, Ident, ObjectName, ObjectNamePart, Query,
    Statement, TableConstraint, TableFactor, TableObject, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::migration::quote_ident;
use super::rules::{ActiveMigration, Rules};
use super::search_path::Resolved;
use super::text::{names, splice, token_index, tokenize_for_parser, Edit, LineIndex, Tok};

/// The name the physical table has in `m`'s phase.
pub fn physical(m: &ActiveMigration) -> &str {
    let new = m.spec.renamed_to.as_deref().unwrap_or_default();
    match m.reads_new() {
        true => new,
        false => &m.spec.table.name,
    }
}

/// The name a client may use that the physical table does not have.
fn other(m: &ActiveMigration) -> &str {
    let new = m.spec.renamed_to.as_deref().unwrap_or_default();
    match m.reads_new() {
        true => &m.spec.table.name,
        false => new,
    }
}

/// What renaming found in one text.
#[derive(Debug, Default)]
pub struct Renamed {
    /// The text naming the physical tables (`None`: nothing to change).
    pub text: Option<String>,
    /// The migrations (indices in `Rules::migrations`) whose names it
    /// rewrote.
    pub by: Vec<usize>,
    /// The migrations whose old name it used (old-shape use).
    pub old_shape: Vec<usize>,
}

/// Renames, in `sql`, every relation that is a renamed table under the
/// name it does not have in the phase. `Err((migration, reason))` for a
/// statement pgshift cannot rename safely.
pub fn rename(sql: &str, tokens: &[Tok], rules: &Rules) -> Result<Renamed, (usize, String)> {
    let mut out = Renamed::default();
    let mentioned: Vec<usize> = (0..rules.migrations.len())
        .filter(|&i| {
            let m = &rules.migrations[i];
            m.spec.renamed_to.is_some()
                && tokens
                    .iter()
                    .any(|t| names(&t.token, other(m)) || names(&t.token, &m.spec.table.name))
        })
        .collect();
    let Some(&first) = mentioned.first() else {
        return Ok(out);
    };
    let (_, raw) =
        tokenize_for_parser(sql).map_err(|e| (first, format!("cannot be tokenized ({e})")))?;
    let statements = match Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(raw)
        .parse_statements()
    {
        Ok(statements) => statements,
        // Naming the physical table only: nothing to rename.
        Err(_) if !mentions_other(tokens, rules, &mentioned) => return Ok(out),
        Err(e) => {
            return Err((
                first,
                format!(
                "names a table being renamed but cannot be parsed by pgshift's SQL parser ({e})"
            ),
            ))
        }
    };
    let mut found = Relations::default();
    for statement in &statements {
        let _ = statement.visit(&mut found);
    }
    let index = LineIndex::new(sql);
    let bare: HashSet<usize> = found.bare.iter().filter_map(|l| index.offset(*l)).collect();
    let mut edits = Vec::new();
    for &i in &mentioned {
        let m = &rules.migrations[i];
        if found.ctes.iter().any(|c| c == other(m)) {
            return Err((
                i,
                format!(
                    "has a CTE named {}, the other name of the table being renamed; rename the CTE",
                    quote_ident(other(m))
                ),
            ));
        }
        for name in &found.relations {
            match is_table(name, m, rules) {
                Some(n) if n == m.spec.table.name => push(&mut out.old_shape, i),
                _ => {}
            }
            if is_table(name, m, rules) != Some(other(m)) {
                continue;
            }
            let Some(last) = last_ident(name) else {
                continue;
            };
            let (start, end) = ident_range(last, &index, tokens).ok_or_else(|| {
                (
                    i,
                    "names the table where pgshift cannot place its new name".to_string(),
                )
            })?;
            let first_start = first_ident(name).and_then(|f| index.offset(f.span.start));
            let alias = match first_start.is_some_and(|s| bare.contains(&s)) {
                true => format!(" AS {}", quote_ident(other(m))),
                false => String::new(),
            };
            if edits.iter().any(|e: &Edit| e.start == start) {
                continue; // (a relation visited twice)
            }
            edits.push(Edit {
                start,
                end,
                text: format!("{}{alias}", quote_ident(physical(m))),
            });
            push(&mut out.by, i);
        }
    }
    if edits.is_empty() {
        return Ok(out);
    }
    let text = splice(sql, &mut edits).ok_or((first, "needs overlapping rewrites".to_string()))?;
    out.text = Some(text);
    Ok(out)
}

fn push(list: &mut Vec<usize>, i: usize) {
    if !list.contains(&i) {
        list.push(i);
    }
}

fn mentions_other(tokens: &[Tok], rules: &Rules, mentioned: &[usize]) -> bool {
    mentioned.iter().any(|&i| {
        tokens
            .iter()
            .any(|t| names(&t.token, other(&rules.migrations[i])))
    })
}

/// The folded name, if `name` is `m`'s table under either of its names
/// (schema-qualified with its schema, or unqualified and found there by
/// the session's search path).
fn is_table<'m>(name: &ObjectName, m: &'m ActiveMigration, rules: &Rules) -> Option<&'m str> {
    let idents: Vec<&Ident> = name
        .0
        .iter()
        .filter_map(|p| match p {
            ObjectNamePart::Identifier(id) => Some(id),
            _ => None,
        })
        .collect();
    let (schema, table) = match idents.as_slice() {
        [table] => (None, fold(table)),
        [schema, table] => (Some(fold(schema)), fold(table)),
        _ => return None,
    };
    let spec = &m.spec;
    let which = [spec.table.name.as_str(), spec.renamed_to.as_deref()?]
        .into_iter()
        .find(|n| *n == table)?;
    let here = match schema {
        Some(s) => s == spec.table.schema,
        None => {
            // The physical name is the one the catalog knows.
            let catalog = &rules.catalog;
            catalog.is_empty()
                || !catalog.holds(physical(m))
                || matches!(catalog.resolve(physical(m)), Resolved::In(s) if s == spec.table.schema)
        }
    };
    here.then_some(which)
}

fn fold(id: &Ident) -> String {
    match id.quote_style {
        Some(_) => id.value.clone(),
        None => id.value.to_lowercase(),
    }
}

fn first_ident(name: &ObjectName) -> Option<&Ident> {
    match name.0.first()? {
        ObjectNamePart::Identifier(id) => Some(id),
        _ => None,
    }
}

fn last_ident(name: &ObjectName) -> Option<&Ident> {
    match name.0.last()? {
        ObjectNamePart::Identifier(id) => Some(id),
        _ => None,
    }
}

/// The byte range of an identifier (quotes included), from its token.
fn ident_range(id: &Ident, index: &LineIndex<'_>, tokens: &[Tok]) -> Option<(usize, usize)> {
    let start = index.offset(id.span.start)?;
    let t = &tokens[token_index(tokens, start)?];
    Some((t.start, t.end))
}

/// Every relation a statement names, the ones written without an alias
/// (by the byte offset of their first identifier), and the CTE names.
#[derive(Default)]
struct Relations {
    relations: Vec<ObjectName>,
    /// Where the first identifier of each one without an alias starts.
    bare: Vec<sqlparser::tokenizer::Location>,
    ctes: Vec<String>,
}

impl Relations {
    fn bare(&mut self, name: &ObjectName) {
        if let Some(id) = first_ident(name) {
            self.bare.push(id.span.start);
        }
    }
}

impl Visitor for Relations {
    type Break = ();

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        self.relations.push(relation.clone());
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Table {
            name, alias: None, ..
        } = factor
        {
            self.bare(name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            self.ctes
                .extend(with.cte_tables.iter().map(|c| fold(&c.alias.name)));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        match statement {
            Statement::Insert(insert) => {
                if let (TableObject::TableName(name), None) = (&insert.table, &insert.table_alias) {
                    self.bare(name);
                }
            }
            Statement::Copy {
                source: CopySource::Table { table_name, .. },
                ..
            } => self.relations.push(table_name.clone()),
            Statement::CreateTable(create) => {
                for column in &create.columns {
                    for option in &column.options {
                        if let ColumnOption::ForeignKey(fk) = &option.option {
                            self.relations.push(fk.foreign_table.clone());
                        }
                    }
                }
                for constraint in &create.constraints {
                    if let TableConstraint::ForeignKey(fk) = constraint {
                        self.relations.push(fk.foreign_table.clone());
                    }
                }
            }
            Statement::AlterTable(alter) => {
                for op in &alter.operations {
                    if let AlterTableOperation::AddConstraint {
                        constraint: TableConstraint::ForeignKey(fk),
                        ..
                    } = op
                    {
                        self.relations.push(fk.foreign_table.clone());
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::migration::{MigrationSpec, Phase};
    use super::super::rules::ActiveMigration;
    use super::super::testing::{planned_noting, table};

    /// `public.customers` renamed `clients`, planned in `phase`: the text
    /// and whether it was old-shape use.
    fn planned(sql: &str, phase: Phase) -> (String, bool) {
        let spec = MigrationSpec::rename_table("m", "customers", "clients").unwrap();
        let m = ActiveMigration { spec, phase };
        let name = if m.reads_new() {
            "clients"
        } else {
            "customers"
        };
        let def = table(&[("id", "text"), ("name", "text")]);
        let (text, notes) = planned_noting(sql, &[m], vec![("public", name, def)], None);
        (text, !notes.old_shape.is_empty())
    }

    fn text(sql: &str, phase: Phase) -> String {
        planned(sql, phase).0
    }

    #[test]
    fn the_name_the_table_does_not_have_is_rewritten_keeping_its_alias() {
        use Phase::{Expanded, Switched};
        let read = "select customers.id, name from customers where id = $1";
        assert_eq!(text(read, Expanded), read);
        assert_eq!(
            text(read, Switched),
            "select customers.id, name from clients AS customers where id = $1"
        );
        assert_eq!(
            text(
                "select c.id from public.clients c join orders o on o.cid = c.id",
                Expanded
            ),
            "select c.id from public.customers c join orders o on o.cid = c.id"
        );
        assert_eq!(
            text(
                "insert into customers (id, name) values (1, 'a') returning customers.id",
                Switched
            ),
            "insert into clients AS customers (id, name) values (1, 'a') returning customers.id"
        );
        assert_eq!(
            text(
                "update customers set name = 'x' where customers.id = 1",
                Switched
            ),
            "update clients AS customers set name = 'x' where customers.id = 1"
        );
        assert_eq!(
            text(
                "delete from \"customers\" where id in (select id from customers c2)",
                Switched
            ),
            "delete from clients AS customers where id in (select id from clients c2)"
        );
        assert_eq!(
            text("COPY customers (id, name) FROM STDIN", Switched),
            "COPY clients (id, name) FROM STDIN"
        );
        assert_eq!(text("truncate customers", Switched), "truncate clients");
        assert_eq!(
            text(
                "create table orders (id int, cid int references customers (id))",
                Switched
            ),
            "create table orders (id int, cid int references clients (id))"
        );
        assert_eq!(
            text("alter table orders add constraint fk foreign key (cid) references public.customers (id)", Switched),
            "alter table orders add constraint fk foreign key (cid) references public.clients (id)"
        );
        // Another schema's table of that name, and a column named like it.
        let elsewhere = "select customers from audit.customers";
        assert_eq!(text(elsewhere, Switched), elsewhere);
    }

    #[test]
    fn the_old_name_is_old_shape_use_and_a_cte_cannot_shadow_it() {
        assert!(planned("select id from customers", Phase::Switched).1);
        assert!(planned("select id from customers", Phase::Expanded).1);
        assert!(!planned("select id from clients", Phase::Expanded).1);
        let r = text(
            "with customers as (select 1 as id) select id from customers",
            Phase::Switched,
        );
        assert!(r.starts_with("refused:") && r.contains("CTE"), "{r}");
    }
}
