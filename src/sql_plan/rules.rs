//! The rules `pgshift plan` applies to one parsed statement of a
//! migration file: what the statement does to a live table, and what
//! pgshift would do instead — pass it, run its safe form, or make it a
//! migration — or why it has no safe form. Each rule has a name (shown,
//! and documented in the operator's guide beside its squawk and
//! strong_migrations counterparts).

use sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnOption, Expr, Ident, ObjectName,
    ObjectNamePart, ObjectType, RenameTableNameKind, Statement, TableConstraint,
};

use crate::api::{NewMigration, Op};
use crate::names::quote_ident;

/// What pgshift would do with a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Safe as written.
    Pass,
    /// Safe in another form, given as `safe` (or a pgshift catalog
    /// operation, given as `migration`).
    MakeSafe,
    /// A pgshift migration, given as `migration`: both shapes served.
    Migrate,
    /// No safe form: `detail` says what to do.
    Refuse,
}

/// One statement's plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub rule: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<NewMigration>,
}

fn decision(verdict: Verdict, rule: &'static str, detail: impl Into<String>) -> Decision {
    Decision {
        verdict,
        rule,
        detail: detail.into(),
        safe: None,
        migration: None,
    }
}

/// A migration of `table`: checked as the admin port would check it (a
/// body it would refuse is a refusal here, with its reason).
fn migrate(verdict: Verdict, rule: &'static str, detail: &str, m: NewMigration) -> Decision {
    match m.spec() {
        Ok(_) => Decision {
            migration: Some(m),
            ..decision(verdict, rule, detail)
        },
        Err(e) => decision(Verdict::Refuse, rule, format!("{detail}, but {}", e.reason)),
    }
}

/// `schema.table` of a name (schema `public` when unqualified).
fn table_of(name: &ObjectName) -> String {
    let parts: Vec<String> = name
        .0
        .iter()
        .filter_map(|p| match p {
            ObjectNamePart::Identifier(id) => Some(folded(id)),
            _ => None,
        })
        .collect();
    match parts.as_slice() {
        [table] => format!("public.{}", quote_ident(table)),
        [.., schema, table] => format!("{}.{}", quote_ident(schema), quote_ident(table)),
        [] => name.to_string(),
    }
}

/// The last part of a name, folded (`"Users"` → `Users`, `Users` →
/// `users`).
fn last_folded(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(id)) => folded(id),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

fn folded(id: &Ident) -> String {
    match id.quote_style {
        Some(_) => id.value.clone(),
        None => id.value.to_lowercase(),
    }
}

/// A migration id from its parts (lower case, `_` between).
fn id_of(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| {
            p.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("_")
}

fn new_migration(id: String, op: Op, table: &str) -> NewMigration {
    NewMigration {
        id,
        op: Some(op),
        table: table.to_string(),
        ..NewMigration::default()
    }
}

/// The plan of one statement (`text`: as written; `down`: a `down`
/// given in a `-- pgshift: down = …` comment before it).
pub fn decide(statement: &Statement, text: &str, down: Option<&str>) -> Decision {
    match statement {
        Statement::CreateIndex(index) => create_index(index, text),
        Statement::AlterTable(alter) => match alter.operations.as_slice() {
            [op] => alter_table(&alter.name, op, down),
            ops if ops
                .iter()
                .all(|op| alter_table(&alter.name, op, None).verdict == Verdict::Pass) =>
            {
                decision(Verdict::Pass, "add-column", "each change is safe as written")
            }
            _ => decision(
                Verdict::Refuse,
                "one-change-per-alter",
                "several changes in one ALTER TABLE take their strongest lock together; write one ALTER TABLE per change",
            ),
        },
        Statement::Drop {
            object_type, names, ..
        } => drop(*object_type, names),
        Statement::StartTransaction { .. } | Statement::Commit { .. } => {
            decision(Verdict::Pass, "transaction", "transaction control")
        }
        _ => decision(Verdict::Pass, "no-table-rewrite", "takes no lock that holds a live table's reads or writes for long"),
    }
}

fn create_index(index: &sqlparser::ast::CreateIndex, text: &str) -> Decision {
    if index.concurrently {
        return decision(
            Verdict::Pass,
            "create-index-concurrently",
            "CONCURRENTLY already (it must run outside a transaction block)",
        );
    }
    let table = table_of(&index.table_name);
    let name = index.name.as_ref().map(last_folded).unwrap_or_default();
    let mut m = new_migration(id_of(&["index", &name]), Op::CreateIndex, &table);
    m.definition = Some(text.trim().trim_end_matches(';').to_string());
    migrate(
        Verdict::MakeSafe,
        "create-index-concurrently",
        "CREATE INDEX locks out writes for the whole build: built CONCURRENTLY (outside the transaction), an invalid leftover dropped and retried",
        m,
    )
}

fn alter_table(name: &ObjectName, op: &AlterTableOperation, down: Option<&str>) -> Decision {
    let table = table_of(name);
    let bare = last_folded(name);
    match op {
        AlterTableOperation::RenameColumn {
            old_column_name,
            new_column_name,
        } => {
            let (from, to) = (folded(old_column_name), folded(new_column_name));
            let mut m = new_migration(id_of(&[&bare, &from, "to", &to]), Op::RenameColumn, &table);
            (m.from, m.to) = (Some(quote_ident(&from)), Some(quote_ident(&to)));
            migrate(Verdict::Migrate, "rename-column", "a rename breaks every client that names the old column: both names served, renamed in place at the switch", m)
        }
        AlterTableOperation::RenameTable { table_name } => {
            let new = match table_name {
                RenameTableNameKind::As(n) | RenameTableNameKind::To(n) => n,
            };
            let to = new.0.last().map(|p| p.to_string()).unwrap_or_default();
            let mut m = new_migration(id_of(&[&bare, "to", &to]), Op::RenameTable, &table);
            m.to = Some(to);
            migrate(Verdict::Migrate, "rename-table", "a rename breaks every client that names the old table: both names served, renamed in place at the switch", m)
        }
        AlterTableOperation::AlterColumn { column_name, op } => {
            alter_column(&table, &bare, column_name, op, down)
        }
        AlterTableOperation::AddColumn { column_def, .. } => add_column(&table, &bare, column_def),
        AlterTableOperation::DropColumn { column_names, .. } => match column_names.as_slice() {
            [column] => {
                let mut m = new_migration(
                    id_of(&[&bare, "drop", &folded(column)]),
                    Op::DropColumn,
                    &table,
                );
                m.column = Some(quote_ident(&folded(column)));
                migrate(Verdict::Migrate, "drop-column", "clients that still name the column would fail: hidden from the new shape first, dropped once no client has named it", m)
            }
            _ => decision(
                Verdict::Refuse,
                "one-change-per-alter",
                "drop one column per statement",
            ),
        },
        AlterTableOperation::AddConstraint {
            constraint,
            not_valid,
        } => add_constraint(&table, &bare, constraint, *not_valid),
        AlterTableOperation::DropConstraint { name, .. } => {
            let mut m = new_migration(
                id_of(&[&bare, "drop", &folded(name)]),
                Op::DropConstraint,
                &table,
            );
            m.name = Some(quote_ident(&folded(name)));
            migrate(
                Verdict::MakeSafe,
                "lock-timeout",
                "a short exclusive lock: taken under lock_timeout, retried",
                m,
            )
        }
        _ => {
            let mut d = decision(Verdict::MakeSafe, "lock-timeout", "an exclusive lock on the table: run under a short lock_timeout, retried, so that no client queues behind it");
            d.safe = Some(format!("SET lock_timeout = '2s'; ALTER TABLE {table} {op}"));
            d
        }
    }
}

fn alter_column(
    table: &str,
    bare: &str,
    column: &Ident,
    op: &AlterColumnOperation,
    down: Option<&str>,
) -> Decision {
    let c = folded(column);
    match op {
        AlterColumnOperation::SetNotNull => {
            let mut m = new_migration(id_of(&[bare, &c, "not_null"]), Op::SetNotNull, table);
            m.column = Some(quote_ident(&c));
            migrate(Verdict::MakeSafe, "set-not-null", "SET NOT NULL scans the table under an exclusive lock: a NOT VALID check, validated, then SET NOT NULL with no scan", m)
        }
        AlterColumnOperation::DropNotNull => {
            let mut m = new_migration(id_of(&[bare, &c, "drop_not_null"]), Op::DropNotNull, table);
            m.column = Some(quote_ident(&c));
            migrate(
                Verdict::MakeSafe,
                "lock-timeout",
                "a short exclusive lock: taken under lock_timeout, retried",
                m,
            )
        }
        AlterColumnOperation::SetDefault { value } => {
            let mut m = new_migration(id_of(&[bare, &c, "default"]), Op::SetDefault, table);
            (m.column, m.default) = (Some(quote_ident(&c)), Some(value.to_string()));
            migrate(
                Verdict::MakeSafe,
                "lock-timeout",
                "a short exclusive lock: taken under lock_timeout, retried",
                m,
            )
        }
        AlterColumnOperation::DropDefault => {
            let mut m = new_migration(id_of(&[bare, &c, "drop_default"]), Op::SetDefault, table);
            m.column = Some(quote_ident(&c));
            migrate(
                Verdict::MakeSafe,
                "lock-timeout",
                "a short exclusive lock: taken under lock_timeout, retried",
                m,
            )
        }
        AlterColumnOperation::SetDataType {
            data_type, using, ..
        } => change_type(
            table,
            bare,
            &c,
            &data_type.to_string(),
            using.as_ref(),
            down,
        ),
        _ => decision(
            Verdict::MakeSafe,
            "lock-timeout",
            "an exclusive lock on the table: run it under a short lock_timeout, retried",
        ),
    }
}

/// A type change keeping the column's name: `up` from `USING` or a cast;
/// `down` is not known from the statement alone (the old type is not in
/// it): given in a `-- pgshift: down = …` comment, the statement is a
/// migration; without one, it is refused with the migration to complete.
fn change_type(
    table: &str,
    bare: &str,
    c: &str,
    ty: &str,
    using: Option<&Expr>,
    down: Option<&str>,
) -> Decision {
    let column = quote_ident(c);
    let up = using.map_or_else(|| format!("{column}::{ty}"), |e| e.to_string());
    let mut m = new_migration(id_of(&[bare, c, "type"]), Op::ChangeType, table);
    (m.from, m.new_type, m.up) = (Some(column.clone()), Some(ty.to_string()), Some(up));
    if let Some(down) = down {
        m.down = Some(down.to_string());
        let detail = "a type change rewrites the table under an exclusive lock and breaks clients of the old type: both types served under the one name (by each session's shape), the new column renamed at contract";
        return migrate(Verdict::Migrate, "change-type", detail, m);
    }
    let mut d = decision(
        Verdict::Refuse,
        "change-type-needs-down",
        format!("a type change rewrites the table under an exclusive lock and breaks clients of the old type; pgshift serves both types under the one name, but needs down (the new value converted back, e.g. {column}::<old type>): write it in a comment before the statement (-- pgshift: down = {column}::integer), or add \"down\" to the migration below and POST it"),
    );
    d.migration = Some(m);
    d
}

fn add_column(table: &str, bare: &str, def: &sqlparser::ast::ColumnDef) -> Decision {
    let c = folded(&def.name);
    let not_null = def
        .options
        .iter()
        .any(|o| matches!(o.option, ColumnOption::NotNull));
    let default = def.options.iter().find_map(|o| match &o.option {
        ColumnOption::Default(e) => Some(e.to_string()),
        _ => None,
    });
    let constant = default
        .as_deref()
        .is_none_or(crate::rewrite::catalog::is_constant_expression);
    if !not_null && constant {
        return decision(
            Verdict::Pass,
            "add-column",
            "a nullable column, or one with a constant default, is added without a rewrite",
        );
    }
    let mut m = new_migration(id_of(&[bare, "add", &c]), Op::AddColumn, table);
    m.column = Some(quote_ident(&c));
    m.new_type = Some(def.data_type.to_string());
    // A constant default is also the value of the rows that exist and of
    // old-shape INSERTs: they keep it should the default be dropped next
    // (Django adds a column with its default, then drops the default).
    if not_null && constant {
        m.up = default.clone();
    }
    m.default = default;
    m.not_null = not_null.then_some(true);
    let detail = "a NOT NULL column (or a volatile default) fails or rewrites the table: added nullable, filled, NOT NULL by the check path; old clients' * and INSERTs keep their shape";
    migrate(Verdict::Migrate, "add-column-not-null", detail, m)
}

fn add_constraint(
    table: &str,
    bare: &str,
    constraint: &TableConstraint,
    not_valid: bool,
) -> Decision {
    let (name, kind) = match constraint {
        TableConstraint::ForeignKey(c) => (c.name.as_ref(), "fk"),
        TableConstraint::Check(c) => (c.name.as_ref(), "check"),
        TableConstraint::Unique(c) => (c.name.as_ref(), "unique"),
        TableConstraint::PrimaryKey(c) => (c.name.as_ref(), "pkey"),
        _ => {
            return decision(
                Verdict::MakeSafe,
                "lock-timeout",
                "run under a short lock_timeout, retried",
            )
        }
    };
    if not_valid {
        return decision(
            Verdict::Pass,
            "constraint-not-valid",
            "NOT VALID already: VALIDATE it in a statement of its own",
        );
    }
    let Some(name) = name else {
        return decision(Verdict::Refuse, "constraint-needs-name", "name the constraint (ADD CONSTRAINT name …), so that it can be validated and rolled back by name");
    };
    let name = folded(name);
    let text = constraint.to_string();
    let definition = text
        .split_once(&format!("{} ", quote_ident(&name)))
        .map_or(text.as_str(), |(_, rest)| rest)
        .to_string();
    let mut m = new_migration(id_of(&[bare, &name]), Op::AddConstraint, table);
    (m.name, m.definition) = (Some(quote_ident(&name)), Some(definition));
    let detail = match kind {
        "fk" | "check" => "ADD CONSTRAINT scans the table (and locks the referenced one) while holding its lock: NOT VALID, then VALIDATE",
        _ => "a unique index built under an exclusive lock: built CONCURRENTLY, then attached (USING INDEX)",
    };
    migrate(Verdict::MakeSafe, "add-constraint", detail, m)
}

fn drop(object_type: ObjectType, names: &[ObjectName]) -> Decision {
    match object_type {
        ObjectType::Table => decision(Verdict::Refuse, "drop-table", "clients that still use the table would fail; stop using it first (pgshift's /status shows who still does), then drop it outside the migration"),
        ObjectType::Index => match names {
            [name] => {
                let mut d = decision(Verdict::MakeSafe, "drop-index-concurrently", "DROP INDEX locks out reads and writes: dropped CONCURRENTLY (outside the transaction)");
                d.safe = Some(format!("DROP INDEX CONCURRENTLY {name}"));
                d
            }
            _ => decision(Verdict::Refuse, "one-change-per-alter", "drop one index per statement"),
        },
        _ => decision(Verdict::Pass, "no-table-rewrite", "does not lock a table being used"),
    }
}
