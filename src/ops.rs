//! What a migration does ([`Op`]), and the operations among them that
//! change only the catalog — an index, a constraint, a column's default —
//! and that no client statement needs rewritten for:
//! what each accepts, checked, and the SQL it runs, rebuilt from the
//! parsed statement (never the text as given) so that what reaches the
//! control role is exactly one statement of the kind the operation names,
//! on the migration's table, in its non-blocking form.
//!
//! The lifecycle steps that run them are in `lifecycle::catalog_steps`.

use serde::{Deserialize, Serialize};
use sqlparser::ast::{
    AlterTableOperation, CreateIndex, Expr, Ident, ObjectName, ObjectNamePart, Statement,
    TableConstraint,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::names::{quote_ident, TableName};

/// The longest definition or expression accepted.
const MAX_TEXT: usize = 16 * 1024;
/// How deep a parsed definition may nest.
const MAX_DEPTH: usize = 64;

/// What a migration does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// A new column `to` added beside `from`, backfilled (through `up`
    /// for a type change), validated, switched to, and `from` dropped.
    #[default]
    CopyColumn,
    /// `from` renamed `to` in place at the switch, behind a barrier; both
    /// names served throughout; nothing copied.
    RenameColumn,
    /// A type change: [`Op::CopyColumn`] with `type`, `up` and `down`
    /// required.
    ChangeType,
    /// `definition`: a `CREATE INDEX`, built `CONCURRENTLY` at expand.
    CreateIndex,
    /// `name`: dropped `CONCURRENTLY` at contract.
    DropIndex,
    /// `name` and `definition`: added `NOT VALID` (or its unique index
    /// built) at expand, validated (or attached) at validate.
    AddConstraint,
    /// `name`: dropped at contract.
    DropConstraint,
    /// `column` and `default` (left out: the default is dropped).
    SetDefault,
    /// `column`: `NOT NULL` the scan-free way (a `NOT VALID` check,
    /// validated, then `SET NOT NULL`).
    SetNotNull,
    /// `column`: its `NOT NULL` dropped at contract.
    DropNotNull,
    /// `column`, `type`, optional `default`, `not_null` and `up`: added
    /// nullable at expand, filled by the backfill, NOT NULL by the check
    /// path; hidden from an unmarked client's `*` until reads switch.
    AddColumn,
    /// `column`: hidden from the new shape at the switch (an unmarked
    /// client's `*` and positional INSERTs), dropped at contract once no
    /// client has named it.
    DropColumn,
    /// `to`: the table renamed in place at the switch, behind a barrier;
    /// both names served throughout.
    RenameTable,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::CopyColumn => "copy_column",
            Op::RenameColumn => "rename_column",
            Op::ChangeType => "change_type",
            Op::CreateIndex => "create_index",
            Op::DropIndex => "drop_index",
            Op::AddConstraint => "add_constraint",
            Op::DropConstraint => "drop_constraint",
            Op::SetDefault => "set_default",
            Op::SetNotNull => "set_not_null",
            Op::DropNotNull => "drop_not_null",
            Op::AddColumn => "add_column",
            Op::DropColumn => "drop_column",
            Op::RenameTable => "rename_table",
        }
    }

    /// An operation on the catalog only: no column moves, nothing to
    /// rewrite.
    pub fn is_catalog(self) -> bool {
        !matches!(
            self,
            Op::CopyColumn
                | Op::RenameColumn
                | Op::ChangeType
                | Op::AddColumn
                | Op::DropColumn
                | Op::RenameTable
        )
    }

    /// The operation named `text` (as stored).
    pub fn parse(text: &str) -> Option<Op> {
        serde_json::from_value(serde_json::Value::String(text.to_string())).ok()
    }
}

/// The keys of a catalog operation as given (and stored: they are checked
/// again each time they are read back).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogKeys {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// `set_not_null`: the value old-shape writes of NULL are given (a
    /// constant expression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<String>,
    /// `set_not_null` with `up`: the sessions served in the new shape
    /// (their NULLs are refused, as once the column is NOT NULL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_shape: Option<crate::rewrite::marker::ShapeMarker>,
}

/// What kind of constraint an `add_constraint` adds, which decides how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintKind {
    /// FOREIGN KEY: `NOT VALID`, then `VALIDATE`.
    ForeignKey,
    /// CHECK: `NOT VALID`, then `VALIDATE`.
    Check,
    /// UNIQUE: a unique index built concurrently, then `USING INDEX`.
    Unique,
    /// PRIMARY KEY: as UNIQUE (its columns must be NOT NULL already).
    PrimaryKey,
}

/// A checked catalog operation on one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogOp {
    /// `CREATE [UNIQUE] INDEX CONCURRENTLY name ON table …`.
    CreateIndex {
        name: String,
        statement: String,
        columns: Vec<String>,
    },
    DropIndex {
        name: String,
    },
    /// `body` is the constraint without its name (`FOREIGN KEY (…) …`);
    /// for UNIQUE and PRIMARY KEY, `index` builds its index.
    AddConstraint {
        name: String,
        kind: ConstraintKind,
        body: String,
        index: Option<String>,
        columns: Vec<String>,
    },
    DropConstraint {
        name: String,
    },
    /// `default` `None`: the default is dropped.
    SetDefault {
        column: String,
        default: Option<String>,
    },
    SetNotNull {
        column: String,
    },
    DropNotNull {
        column: String,
    },
}

/// The parsed statements' dialect and depth limit.
fn parser<'a>(dialect: &'a PostgreSqlDialect, sql: &str) -> Result<Parser<'a>, String> {
    if sql.len() > MAX_TEXT {
        return Err(format!("longer than {MAX_TEXT} bytes"));
    }
    Parser::new(dialect)
        .with_recursion_limit(MAX_DEPTH)
        .try_with_sql(sql)
        .map_err(|e| e.to_string())
}

/// Exactly one statement.
fn one_statement(sql: &str) -> Result<Statement, String> {
    let dialect = PostgreSqlDialect {};
    let mut statements = parser(&dialect, sql)?
        .parse_statements()
        .map_err(|e| e.to_string())?;
    match statements.len() {
        1 => Ok(statements.remove(0)),
        n => Err(format!("expected one statement, found {n}")),
    }
}

/// An identifier as Postgres folds it.
fn fold(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// One name given on its own (an index, a constraint, a column).
fn name_key(key: &str, value: Option<&String>) -> Result<String, String> {
    let text = value.ok_or_else(|| format!("needs \"{key}\""))?;
    let dialect = PostgreSqlDialect {};
    let mut p = parser(&dialect, text)?;
    let ident = p.parse_identifier().map_err(|e| format!("{key}: {e}"))?;
    if p.peek_token().token != sqlparser::tokenizer::Token::EOF {
        return Err(format!("{key} {text:?}: expected one name"));
    }
    Ok(fold(&ident))
}

/// One column name given on its own, folded.
pub fn column_name(text: &str) -> Result<String, String> {
    name_key("column", Some(&text.to_string()))
}

/// Whether `name` (as written in a statement) is `table`.
fn is_table(name: &ObjectName, table: &TableName) -> bool {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(fold(i)),
            ObjectNamePart::Function(_) => None,
        })
        .collect::<Option<_>>()
        .unwrap_or_default();
    match parts.as_slice() {
        [n] => *n == table.name,
        [s, n] => *s == table.schema && *n == table.name,
        _ => false,
    }
}

/// `table` as an object name, each part quoted.
fn object_name(table: &TableName) -> ObjectName {
    let part = |s: &str| ObjectNamePart::Identifier(Ident::with_quote('"', s));
    ObjectName(vec![part(&table.schema), part(&table.name)])
}

/// The columns an expression names (bare identifiers, and the last part of
/// qualified ones).
fn columns_in(exprs: &[&Expr]) -> Vec<String> {
    use std::ops::ControlFlow;
    let mut out: Vec<String> = Vec::new();
    for e in exprs {
        let _ = sqlparser::ast::visit_expressions(*e, |e| {
            match e {
                Expr::Identifier(i) => out.push(fold(i)),
                Expr::CompoundIdentifier(parts) => out.extend(parts.last().map(fold)),
                _ => {}
            }
            ControlFlow::<()>::Continue(())
        });
    }
    out.sort();
    out.dedup();
    out
}

impl CatalogOp {
    /// The operation `op` on `table` with `keys`, checked.
    pub fn parse(op: Op, table: &TableName, keys: &CatalogKeys) -> Result<CatalogOp, String> {
        match op {
            Op::CreateIndex => create_index(table, keys),
            Op::DropIndex => Ok(CatalogOp::DropIndex {
                name: name_key("name", keys.name.as_ref())?,
            }),
            Op::AddConstraint => add_constraint(table, keys),
            Op::DropConstraint => Ok(CatalogOp::DropConstraint {
                name: name_key("name", keys.name.as_ref())?,
            }),
            Op::SetDefault => Ok(CatalogOp::SetDefault {
                column: name_key("column", keys.column.as_ref())?,
                default: keys.default.as_deref().map(default_expr).transpose()?,
            }),
            Op::SetNotNull => Ok(CatalogOp::SetNotNull {
                column: name_key("column", keys.column.as_ref())?,
            }),
            Op::DropNotNull => Ok(CatalogOp::DropNotNull {
                column: name_key("column", keys.column.as_ref())?,
            }),
            other => Err(format!("{} is not a catalog operation", other.as_str())),
        }
    }

    /// The operation's kind.
    pub fn op(&self) -> Op {
        match self {
            CatalogOp::CreateIndex { .. } => Op::CreateIndex,
            CatalogOp::DropIndex { .. } => Op::DropIndex,
            CatalogOp::AddConstraint { .. } => Op::AddConstraint,
            CatalogOp::DropConstraint { .. } => Op::DropConstraint,
            CatalogOp::SetDefault { .. } => Op::SetDefault,
            CatalogOp::SetNotNull { .. } => Op::SetNotNull,
            CatalogOp::DropNotNull { .. } => Op::DropNotNull,
        }
    }

    /// The index or constraint it makes or drops (`None` for a default).
    pub fn object(&self) -> Option<&str> {
        match self {
            CatalogOp::CreateIndex { name, .. }
            | CatalogOp::DropIndex { name }
            | CatalogOp::AddConstraint { name, .. }
            | CatalogOp::DropConstraint { name } => Some(name),
            CatalogOp::SetDefault { .. }
            | CatalogOp::SetNotNull { .. }
            | CatalogOp::DropNotNull { .. } => None,
        }
    }

    /// The table's columns it names.
    pub fn columns(&self) -> Vec<String> {
        match self {
            CatalogOp::CreateIndex { columns, .. } | CatalogOp::AddConstraint { columns, .. } => {
                columns.clone()
            }
            CatalogOp::SetDefault { column, .. }
            | CatalogOp::SetNotNull { column }
            | CatalogOp::DropNotNull { column } => vec![column.clone()],
            CatalogOp::DropIndex { .. } | CatalogOp::DropConstraint { .. } => Vec::new(),
        }
    }

    /// What it does, in one line of SQL-like text (for `/status`).
    pub fn describe(&self, table: &TableName) -> String {
        match self {
            CatalogOp::CreateIndex { statement, .. } => statement.clone(),
            CatalogOp::DropIndex { name } => format!(
                "DROP INDEX CONCURRENTLY {}.{}",
                quote_ident(&table.schema),
                quote_ident(name)
            ),
            CatalogOp::AddConstraint { name, body, .. } => {
                format!(
                    "ALTER TABLE {table} ADD CONSTRAINT {} {body}",
                    quote_ident(name)
                )
            }
            CatalogOp::DropConstraint { name } => {
                format!("ALTER TABLE {table} DROP CONSTRAINT {}", quote_ident(name))
            }
            CatalogOp::SetNotNull { column } => format!(
                "ALTER TABLE {table} ALTER COLUMN {} SET NOT NULL",
                quote_ident(column)
            ),
            CatalogOp::DropNotNull { column } => format!(
                "ALTER TABLE {table} ALTER COLUMN {} DROP NOT NULL",
                quote_ident(column)
            ),
            CatalogOp::SetDefault { column, default } => match default {
                Some(d) => format!(
                    "ALTER TABLE {table} ALTER COLUMN {} SET DEFAULT {d}",
                    quote_ident(column)
                ),
                None => format!(
                    "ALTER TABLE {table} ALTER COLUMN {} DROP DEFAULT",
                    quote_ident(column)
                ),
            },
        }
    }
}

/// `create_index`: one `CREATE INDEX` on the table, named, rebuilt
/// `CONCURRENTLY` on the table's qualified name.
fn create_index(table: &TableName, keys: &CatalogKeys) -> Result<CatalogOp, String> {
    let text = keys
        .definition
        .as_ref()
        .ok_or("needs \"definition\": the CREATE INDEX statement")?;
    let Statement::CreateIndex(index) = one_statement(text)? else {
        return Err("definition: expected a CREATE INDEX statement".into());
    };
    if !is_table(&index.table_name, table) {
        return Err(format!(
            "definition: the index is on {}, not on the migration's table {table}",
            index.table_name
        ));
    }
    let name = match index.name.as_ref().map(|n| n.0.as_slice()) {
        Some([ObjectNamePart::Identifier(i)]) => fold(i),
        Some(_) => {
            return Err(
                "definition: name the index without a schema (it lives in its table's)".into(),
            )
        }
        None => return Err("definition: the index needs a name".into()),
    };
    if !index.alter_options.is_empty() || index.r#async {
        return Err("definition: options Postgres does not have".into());
    }
    let mut exprs: Vec<&Expr> = index.columns.iter().map(|c| &c.column.expr).collect();
    exprs.extend(index.predicate.as_ref());
    let columns = columns_in(&exprs);
    let rebuilt = CreateIndex {
        name: Some(ObjectName(vec![ObjectNamePart::Identifier(
            Ident::with_quote('"', &name),
        )])),
        table_name: object_name(table),
        concurrently: true,
        if_not_exists: false,
        ..index
    };
    Ok(CatalogOp::CreateIndex {
        name,
        statement: Statement::CreateIndex(rebuilt).to_string(),
        columns,
    })
}

/// `add_constraint`: `name` and a constraint `definition`, parsed as
/// `ALTER TABLE … ADD CONSTRAINT name definition`.
fn add_constraint(table: &TableName, keys: &CatalogKeys) -> Result<CatalogOp, String> {
    let name = name_key("name", keys.name.as_ref())?;
    let text = keys
        .definition
        .as_ref()
        .ok_or("needs \"definition\": FOREIGN KEY (…) REFERENCES …, CHECK (…), UNIQUE (…) or PRIMARY KEY (…)")?;
    let sql = format!("ALTER TABLE t ADD CONSTRAINT {} {text}", quote_ident(&name));
    let Statement::AlterTable(alter) = one_statement(&sql)? else {
        return Err("definition: expected a table constraint".into());
    };
    let [AlterTableOperation::AddConstraint {
        constraint,
        not_valid: false,
    }] = alter.operations.as_slice()
    else {
        return Err("definition: expected one table constraint (without NOT VALID: pgshift adds it NOT VALID and validates it itself)".into());
    };
    match constraint {
        TableConstraint::ForeignKey(fk) => {
            let mut fk = fk.clone();
            fk.name = None;
            let columns = fk.columns.iter().map(fold).collect();
            Ok(constrained(
                name,
                ConstraintKind::ForeignKey,
                fk.to_string(),
                None,
                columns,
            ))
        }
        TableConstraint::Check(check) => {
            let mut check = check.clone();
            check.name = None;
            let columns = columns_in(&[&check.expr]);
            Ok(constrained(
                name,
                ConstraintKind::Check,
                check.to_string(),
                None,
                columns,
            ))
        }
        TableConstraint::Unique(u) => {
            let distinct = u.nulls_distinct.to_string();
            keyed(
                table,
                name,
                ConstraintKind::Unique,
                &u.columns,
                &u.include,
                &distinct,
                (
                    u.index_name.is_some() || u.index_type.is_some() || !u.index_options.is_empty(),
                    u.characteristics.is_some(),
                ),
            )
        }
        TableConstraint::PrimaryKey(pk) => keyed(
            table,
            name,
            ConstraintKind::PrimaryKey,
            &pk.columns,
            &pk.include,
            "",
            (
                pk.index_name.is_some() || pk.index_type.is_some() || !pk.index_options.is_empty(),
                pk.characteristics.is_some(),
            ),
        ),
        _ => Err(
            "definition: pgshift adds FOREIGN KEY, CHECK, UNIQUE and PRIMARY KEY constraints"
                .into(),
        ),
    }
}

fn constrained(
    name: String,
    kind: ConstraintKind,
    body: String,
    index: Option<String>,
    columns: Vec<String>,
) -> CatalogOp {
    CatalogOp::AddConstraint {
        name,
        kind,
        body,
        index,
        columns,
    }
}

/// A UNIQUE or PRIMARY KEY constraint: the unique index that backs it,
/// built concurrently under the constraint's name, then attached.
fn keyed(
    table: &TableName,
    name: String,
    kind: ConstraintKind,
    columns: &[sqlparser::ast::IndexColumn],
    include: &[Ident],
    nulls_distinct: &str,
    (index_options, characteristics): (bool, bool),
) -> Result<CatalogOp, String> {
    if index_options || characteristics {
        return Err("definition: index names, methods, options and DEFERRABLE are not taken here: list the columns (and INCLUDE)".into());
    }
    let mut names = Vec::new();
    for c in columns {
        match &c.column.expr {
            Expr::Identifier(i) if c.operator_class.is_none() => names.push(fold(i)),
            _ => return Err("definition: a key lists plain columns".into()),
        }
    }
    let list = |v: Vec<String>| {
        v.iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let include = match include {
        [] => String::new(),
        i => format!(" INCLUDE ({})", list(i.iter().map(fold).collect())),
    };
    let index = format!(
        "CREATE UNIQUE INDEX CONCURRENTLY {} ON {table} ({}){include}{}",
        quote_ident(&name),
        list(names.clone()),
        if nulls_distinct.is_empty() {
            String::new()
        } else {
            format!(" {nulls_distinct}")
        },
    );
    let body = match kind {
        ConstraintKind::PrimaryKey => "PRIMARY KEY",
        _ => "UNIQUE",
    };
    let body = format!("{body} USING INDEX {}", quote_ident(&name));
    Ok(constrained(name, kind, body, Some(index), names))
}

/// A default: one expression, nothing after it, as Postgres will read it.
pub fn default_expr(text: &str) -> Result<String, String> {
    let dialect = PostgreSqlDialect {};
    let mut p = parser(&dialect, text)?;
    let expr = p.parse_expr().map_err(|e| format!("default: {e}"))?;
    if p.peek_token().token != sqlparser::tokenizer::Token::EOF {
        return Err(format!(
            "default {text:?}: unexpected text after the expression"
        ));
    }
    Ok(expr.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> TableName {
        TableName {
            schema: "public".into(),
            name: "users".into(),
        }
    }

    fn keys(definition: &str, name: Option<&str>) -> CatalogKeys {
        CatalogKeys {
            definition: Some(definition.into()),
            name: name.map(str::to_string),
            ..CatalogKeys::default()
        }
    }

    #[test]
    fn an_index_is_rebuilt_concurrently_on_the_qualified_table() {
        let op = CatalogOp::parse(
            Op::CreateIndex,
            &users(),
            &keys(
                "create unique index Users_Email_Idx on users using btree (lower(email)) include (id) where deleted_at is null",
                None,
            ),
        )
        .unwrap();
        let CatalogOp::CreateIndex {
            name,
            statement,
            columns,
        } = op
        else {
            panic!("{op:?}")
        };
        assert_eq!(name, "users_email_idx");
        assert_eq!(
            statement,
            "CREATE UNIQUE INDEX CONCURRENTLY \"users_email_idx\" ON \"public\".\"users\" USING BTREE (lower(email)) INCLUDE (id) WHERE deleted_at IS NULL"
        );
        assert_eq!(columns, ["deleted_at", "email"]);
    }

    #[test]
    fn what_is_not_one_index_on_the_table_is_refused() {
        let refused =
            |d: &str| CatalogOp::parse(Op::CreateIndex, &users(), &keys(d, None)).unwrap_err();
        assert!(refused("create index i on users (a); drop table users").contains("one statement"));
        assert!(refused("create index i on orders (a)").contains("not on the migration's table"));
        assert!(refused("create index i on other.users (a)").contains("not on"));
        assert!(refused("create index on users (a)").contains("needs a name"));
        assert!(refused("drop table users").contains("CREATE INDEX"));
        let deep = refused(&format!("create index i on users ({})", "(".repeat(200)));
        assert!(deep.contains("recursion"), "{deep}");
    }

    #[test]
    fn constraints_are_taken_apart_by_kind() {
        let fk = CatalogOp::parse(
            Op::AddConstraint,
            &users(),
            &keys(
                "foreign key (team_id) references public.teams (id) on delete cascade",
                Some("users_team_fk"),
            ),
        )
        .unwrap();
        assert_eq!(
            fk.describe(&users()),
            "ALTER TABLE public.users ADD CONSTRAINT users_team_fk FOREIGN KEY (team_id) REFERENCES public.teams(id) ON DELETE CASCADE"
        );
        assert_eq!(fk.columns(), ["team_id"]);
        let unique = CatalogOp::parse(
            Op::AddConstraint,
            &users(),
            &keys("unique (email)", Some("users_email_key")),
        )
        .unwrap();
        let CatalogOp::AddConstraint {
            index, body, kind, ..
        } = &unique
        else {
            panic!()
        };
        assert_eq!(*kind, ConstraintKind::Unique);
        assert_eq!(
            index.as_deref(),
            Some("CREATE UNIQUE INDEX CONCURRENTLY users_email_key ON public.users (email)")
        );
        assert_eq!(body, "UNIQUE USING INDEX users_email_key");
        let refused = |d: &str| {
            CatalogOp::parse(Op::AddConstraint, &users(), &keys(d, Some("c"))).unwrap_err()
        };
        assert!(refused("check (a > 0) not valid").contains("NOT VALID"));
        assert!(refused("check (a > 0), drop column a").contains("one table constraint"));
        assert!(refused("check (a > 0); drop table users").contains("one statement"));
        let exclude = refused("exclude using gist (a with &&)");
        assert!(exclude.contains("FOREIGN KEY, CHECK"), "{exclude}");
    }

    #[test]
    fn names_and_defaults_are_one_thing_each() {
        let drop = |n: &str| {
            CatalogOp::parse(
                Op::DropIndex,
                &users(),
                &CatalogKeys {
                    name: Some(n.into()),
                    ..CatalogKeys::default()
                },
            )
        };
        assert_eq!(drop("Users_Idx").unwrap().object(), Some("users_idx"));
        assert!(drop("a; drop table users").is_err());
        let default = |d: &str| {
            CatalogOp::parse(
                Op::SetDefault,
                &users(),
                &CatalogKeys {
                    column: Some("status".into()),
                    default: Some(d.into()),
                    ..CatalogKeys::default()
                },
            )
        };
        assert_eq!(
            default("'active'::text").unwrap().describe(&users()),
            "ALTER TABLE public.users ALTER COLUMN status SET DEFAULT 'active'::TEXT"
        );
        assert!(default("1; drop table users").is_err());
        assert!(default("1 -- comment").is_ok());
    }
}
