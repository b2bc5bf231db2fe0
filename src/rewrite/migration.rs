//! The migration model the rewriter works from: which column of which table
//! becomes which, how values convert, and the phase the migration is in —
//! with the phase table of DESIGN.md as methods on [`Phase`].
//!
//! Names are kept folded the way Postgres folds them: unquoted identifiers
//! in lower case, quoted ones as written.

use std::fmt;

pub use crate::names::{quote_ident, TableName};

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

/// A migration as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationSpec {
    pub id: String,
    pub table: TableName,
    /// The old column `a`.
    pub from: String,
    /// The new column `b`.
    pub to: String,
    /// `b`'s declared type when it differs from `a`'s (a type change).
    pub new_type: Option<String>,
    /// `up(a) -> b`, an expression over `from`; `None` for a rename.
    pub up: Option<String>,
    /// `down(b) -> a`, an expression over `to`; `None` for a rename.
    pub down: Option<String>,
    /// The type `down` casts to last (`(b * 100)::integer` → `integer`):
    /// `a`'s type, known even after `a` is dropped.
    pub down_type: Option<String>,
    /// Where `a` stood once it is dropped: the column just before it (`""`
    /// when it came first), recorded at `contract`, so `*` keeps the old
    /// shape's column order; `None` when not known (then `a` comes just
    /// before `b`).
    pub old_after: Option<String>,
    /// A rename done in place (`"op": "rename_column"`): the one physical
    /// column keeps its name until the switch renames it, and both names
    /// are served by rewriting throughout; nothing is copied.
    pub in_place: bool,
    /// An operation that changes only the catalog (an index, a constraint,
    /// a default): no rewrite rules, `from` and `to` empty.
    pub catalog: Option<Box<CatalogSpec>>,
    /// A column added (`"op": "add_column"`): `to` is the column, `from`
    /// is empty (there is no old column).
    pub added: Option<Box<crate::add_column::AddedColumn>>,
    /// A column dropped (`"op": "drop_column"`): `from` is the column,
    /// `to` is empty (the new shape has no such column).
    pub dropped: bool,
    /// Which sessions are served in the new shape whatever the read
    /// switch says (an added or a dropped column's `*`; a type change
    /// that keeps the column's name).
    pub new_shape: Option<super::marker::ShapeMarker>,
    /// A type change that keeps the column's name (`"op": "change_type"`
    /// without `"to"`): clients of both shapes name `from`; `to` is the
    /// physical new column's working name ([`working_name`]), which no
    /// client names, renamed to `from` at contract. Which column a
    /// session's `from` is follows its shape ([`super::marker`]).
    pub keep_name: bool,
    /// A table renamed (`"op": "rename_table"`): its new name, in the same
    /// schema (`table` is the old one). No column moves; statements are
    /// rewritten to name the physical table ([`super::renamed_table`]).
    pub renamed_to: Option<String>,
}

/// The working name of the new column of a type change that keeps
/// `column`'s name: `column` (cut to fit Postgres' 63 bytes) and a suffix.
pub fn working_name(column: &str) -> String {
    const SUFFIX: &str = "_pgshift_new";
    let mut cut = 63 - SUFFIX.len();
    while !column.is_char_boundary(cut.min(column.len())) {
        cut -= 1;
    }
    format!("{}{SUFFIX}", &column[..cut.min(column.len())])
}

/// A catalog operation and the keys it was given (stored as given, and
/// checked again whenever they are read back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogSpec {
    pub op: crate::ops::CatalogOp,
    pub keys: crate::ops::CatalogKeys,
}

/// Where a migration is in its lifecycle (DESIGN.md's phase table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Planned,
    Expanded,
    Backfilling,
    Backfilled,
    Validated,
    Switched,
    Contracted,
    Complete,
    RolledBack,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Planned,
        Phase::Expanded,
        Phase::Backfilling,
        Phase::Backfilled,
        Phase::Validated,
        Phase::Switched,
        Phase::Contracted,
        Phase::Complete,
        Phase::RolledBack,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Planned => "planned",
            Phase::Expanded => "expanded",
            Phase::Backfilling => "backfilling",
            Phase::Backfilled => "backfilled",
            Phase::Validated => "validated",
            Phase::Switched => "switched",
            Phase::Contracted => "contracted",
            Phase::Complete => "complete",
            Phase::RolledBack => "rolled_back",
        }
    }

    pub fn parse(text: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == text)
    }

    /// The migration's rewrite rules apply (every phase but the two ends).
    pub fn rules_active(self) -> bool {
        !matches!(self, Phase::Complete | Phase::RolledBack)
    }

    /// The old column `a` physically exists.
    pub fn has_old(self) -> bool {
        !matches!(self, Phase::Contracted | Phase::Complete)
    }

    /// The new column `b` physically exists.
    pub fn has_new(self) -> bool {
        !matches!(self, Phase::Planned | Phase::RolledBack)
    }

    /// Reads are answered from `b` (the read switch is on `new`).
    pub fn reads_new(self) -> bool {
        matches!(self, Phase::Switched | Phase::Contracted | Phase::Complete)
    }
}

impl serde::Serialize for Phase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Phase {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Phase, D::Error> {
        let text = String::deserialize(d)?;
        Phase::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown phase {text:?}")))
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A migration definition that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("migration {id:?}: {reason}")]
pub struct SpecError {
    pub id: String,
    pub reason: String,
}

impl MigrationSpec {
    /// Builds and checks a spec from its configured text.
    pub fn new(
        id: &str,
        table: &str,
        from: &str,
        to: &str,
        new_type: Option<&str>,
        up: Option<&str>,
        down: Option<&str>,
    ) -> Result<MigrationSpec, SpecError> {
        let err = |reason: String| SpecError {
            id: id.to_string(),
            reason,
        };
        let table = id_and_table(id, table)?;
        let from = parse_ident(from).map_err(|e| err(format!("from {from:?}: {e}")))?;
        let to = parse_ident(to).map_err(|e| err(format!("to {to:?}: {e}")))?;
        if from == to {
            return Err(err(format!("from and to are the same column {from:?}")));
        }
        if let Some(t) = new_type {
            check_type(t).map_err(|e| err(format!("type {t:?}: {e}")))?;
        }
        match (new_type, up, down) {
            (None, None, None) => {}
            (_, Some(up), Some(down)) => {
                check_expression(up, &from).map_err(|e| err(format!("up {up:?}: {e}")))?;
                check_expression(down, &to).map_err(|e| err(format!("down {down:?}: {e}")))?;
            }
            (Some(_), _, _) => {
                return Err(err(
                    "a type change needs both up and down expressions".into()
                ));
            }
            (None, _, _) => {
                return Err(err(
                    "up and down come together (and with a type for a type change)".into(),
                ));
            }
        }
        Ok(MigrationSpec {
            from,
            to,
            new_type: new_type.map(str::to_string),
            up: up.map(str::to_string),
            down_type: down.and_then(outer_cast_type),
            down: down.map(str::to_string),
            ..MigrationSpec::bare(id, table)
        })
    }

    /// A spec of `id` on `table` that moves no column yet (the fields
    /// every constructor sets the same).
    fn bare(id: &str, table: TableName) -> MigrationSpec {
        MigrationSpec {
            id: id.to_string(),
            table,
            from: String::new(),
            to: String::new(),
            new_type: None,
            up: None,
            down: None,
            down_type: None,
            old_after: None,
            in_place: false,
            catalog: None,
            added: None,
            dropped: false,
            new_shape: None,
            keep_name: false,
            renamed_to: None,
        }
    }

    /// A `rename_table` of `table` to `to` (a name in the same schema).
    pub fn rename_table(id: &str, table: &str, to: &str) -> Result<MigrationSpec, SpecError> {
        let table = id_and_table(id, table)?;
        let to = parse_ident(to).map_err(|e| SpecError {
            id: id.to_string(),
            reason: format!("rename_table: to {to:?}: {e} (a table name, in the table's schema)"),
        })?;
        if to == table.name {
            return Err(SpecError {
                id: id.to_string(),
                reason: format!("rename_table: the table is already named {to:?}"),
            });
        }
        Ok(MigrationSpec {
            renamed_to: Some(to),
            ..MigrationSpec::bare(id, table)
        })
    }

    /// A type change of `from` that keeps its name: `up` over `from` (the
    /// old value), `down` over `from` too (as the new shape names it),
    /// stored over the working name of the new column.
    #[allow(clippy::too_many_arguments)]
    pub fn change_type_keeping_name(
        id: &str,
        table: &str,
        from: &str,
        new_type: &str,
        up: &str,
        down: &str,
        new_shape: Option<super::marker::ShapeMarker>,
    ) -> Result<MigrationSpec, SpecError> {
        let err = |reason: String| SpecError {
            id: id.to_string(),
            reason: format!("change_type: {reason}"),
        };
        let column = parse_ident(from).map_err(|e| err(format!("from {from:?}: {e}")))?;
        check_expression(down, &column).map_err(|e| err(format!("down {down:?}: {e}")))?;
        let to = working_name(&column);
        let down = substitute(down, &column, &quote_ident(&to));
        if let Some(marker) = &new_shape {
            marker.check().map_err(err)?;
        }
        let spec = MigrationSpec::new(
            id,
            table,
            &quote_ident(&column),
            &quote_ident(&to),
            Some(new_type),
            Some(up),
            Some(&down),
        )?;
        Ok(MigrationSpec {
            keep_name: true,
            new_shape,
            ..spec
        })
    }

    /// The name clients give the column `which` stands for: its own, but
    /// for a type change that keeps the name (both shapes name `from`).
    pub fn client_name(&self, which: super::scope::Which) -> &str {
        match (which, self.keep_name) {
            (super::scope::Which::From, _) | (_, true) => &self.from,
            (super::scope::Which::To, false) => &self.to,
        }
    }

    /// A catalog operation `op` on `table` with `keys`, checked.
    pub fn catalog(
        id: &str,
        table: &str,
        op: crate::ops::Op,
        keys: crate::ops::CatalogKeys,
    ) -> Result<MigrationSpec, SpecError> {
        let table = id_and_table(id, table)?;
        let err = |reason: String| SpecError {
            id: id.to_string(),
            reason,
        };
        let parsed = crate::ops::CatalogOp::parse(op, &table, &keys)
            .map_err(|e| err(format!("{}: {e}", op.as_str())))?;
        let filled = op == crate::ops::Op::SetNotNull;
        match (&keys.up, &keys.new_shape) {
            (None, Some(_)) if filled => {
                return Err(err("set_not_null takes new_shape only with up".into()))
            }
            (Some(_), _) | (_, Some(_)) if !filled => {
                return Err(err(format!("{} takes no up or new_shape", op.as_str())))
            }
            _ => {}
        }
        if let Some(up) = &keys.up {
            let checked = crate::ops::default_expr(up)
                .map_err(|e| err(format!("set_not_null: up {up:?}: {e}")))?;
            if !super::catalog::is_constant_expression(&checked) {
                return Err(err(format!(
                    "set_not_null: up {up:?} must be a constant (the value old-shape writes of NULL are given)"
                )));
            }
        }
        if let Some(marker) = &keys.new_shape {
            marker.check().map_err(err)?;
        }
        Ok(MigrationSpec {
            new_shape: keys.new_shape.clone(),
            catalog: Some(Box::new(CatalogSpec { op: parsed, keys })),
            ..MigrationSpec::bare(id, table)
        })
    }

    /// A `drop_column` of `column` on `table`, checked.
    pub fn drop_column(
        id: &str,
        table: &str,
        column: &str,
        new_shape: Option<super::marker::ShapeMarker>,
    ) -> Result<MigrationSpec, SpecError> {
        let table = id_and_table(id, table)?;
        let err = |reason: String| SpecError {
            id: id.to_string(),
            reason: format!("drop_column: {reason}"),
        };
        let from = crate::ops::column_name(column).map_err(err)?;
        if let Some(marker) = &new_shape {
            marker.check().map_err(err)?;
        }
        Ok(MigrationSpec {
            from,
            dropped: true,
            new_shape,
            ..MigrationSpec::bare(id, table)
        })
    }

    /// An `add_column` on `table` with `keys`, checked.
    pub fn add_column(
        id: &str,
        table: &str,
        keys: &crate::add_column::AddColumnKeys,
    ) -> Result<MigrationSpec, SpecError> {
        let table = id_and_table(id, table)?;
        let added = crate::add_column::AddedColumn::parse(keys).map_err(|reason| SpecError {
            id: id.to_string(),
            reason: format!("add_column: {reason}"),
        })?;
        Ok(MigrationSpec {
            to: added.column.clone(),
            new_shape: keys.new_shape.clone(),
            added: Some(Box::new(added)),
            ..MigrationSpec::bare(id, table)
        })
    }

    /// A `set_not_null` with `up`: the column, and the value old-shape
    /// writes of NULL to it are given.
    pub fn fill(&self) -> Option<(&str, &str)> {
        let c = self.catalog.as_ref()?;
        match &c.op {
            crate::ops::CatalogOp::SetNotNull { column } => Some((column, c.keys.up.as_deref()?)),
            _ => None,
        }
    }

    /// What the migration does.
    pub fn op(&self) -> crate::ops::Op {
        use crate::ops::Op;
        if self.added.is_some() {
            return Op::AddColumn;
        }
        if self.dropped {
            return Op::DropColumn;
        }
        if self.renamed_to.is_some() {
            return Op::RenameTable;
        }
        match (&self.catalog, self.in_place, &self.new_type) {
            (Some(c), _, _) => c.op.op(),
            (None, true, _) => Op::RenameColumn,
            (None, false, Some(_)) => Op::ChangeType,
            (None, false, None) => Op::CopyColumn,
        }
    }

    /// An added or a dropped column: the one column there is (the other
    /// name is empty), read and written as it is while it exists.
    pub fn one_sided(&self) -> Option<&str> {
        match (&self.added, self.dropped) {
            (Some(_), _) => Some(&self.to),
            (None, true) => Some(&self.from),
            (None, false) => None,
        }
    }

    /// The table's columns this migration moves or names.
    pub fn columns(&self) -> Vec<String> {
        if self.renamed_to.is_some() {
            return Vec::new();
        }
        match (&self.catalog, &self.added) {
            (Some(c), _) => c.op.columns(),
            (None, Some(a)) => vec![a.column.clone()],
            (None, None) if self.dropped => vec![self.from.clone()],
            (None, None) => vec![self.from.clone(), self.to.clone()],
        }
    }

    /// Whether two migrations may not be in flight together: the same id;
    /// or on the same table a column one of them moves (adds, drops) and
    /// the other names, an index or constraint both make or drop, or a
    /// table rename beside anything. (Migrations moving distinct columns of
    /// one table may: each is planned over the text the other made.
    /// Catalog operations that name the same column move nothing: they
    /// may.)
    pub fn clashes_with(&self, other: &MigrationSpec) -> bool {
        if self.id == other.id {
            return true;
        }
        // A renamed table is the other one's under either name.
        let names = |s: &MigrationSpec| {
            let mut n = vec![s.table.clone()];
            if let Some(to) = &s.renamed_to {
                n.push(TableName {
                    schema: s.table.schema.clone(),
                    name: to.clone(),
                });
            }
            n
        };
        let (mine, theirs) = (names(self), names(other));
        if !mine.iter().any(|t| theirs.contains(t)) {
            return false;
        }
        if self.renamed_to.is_some() || other.renamed_to.is_some() {
            return true; // nothing else on a table being renamed
        }
        let moves = |s: &MigrationSpec| match s.catalog {
            None => s.columns(),
            Some(_) => Vec::new(),
        };
        let (mine, theirs) = (self.columns(), other.columns());
        let object = |s: &MigrationSpec| {
            s.catalog
                .as_ref()
                .and_then(|c| c.op.object().map(str::to_string))
        };
        moves(self).iter().any(|c| theirs.contains(c))
            || moves(other).iter().any(|c| mine.contains(c))
            || object(self).is_some_and(|o| object(other) == Some(o))
    }

    /// This spec as a rename done in place: only for a rename (no type, no
    /// `up` or `down`).
    pub fn renamed_in_place(mut self) -> Result<MigrationSpec, SpecError> {
        if self.new_type.is_some() || self.up.is_some() || self.down.is_some() {
            return Err(SpecError {
                id: self.id,
                reason: "rename_column renames a column in place and takes no type, up or down (a type change copies the column: op change_type)".into(),
            });
        }
        self.in_place = true;
        Ok(self)
    }

    /// For a type change that only widens an integer (`integer` →
    /// `bigint` and the like, `up` and `down` plain casts): (`a`'s type,
    /// `b`'s type). Then a comparison reads the same on either column —
    /// the integer operators compare across widths — so a lookup by the
    /// other shape's name can use the physical column (and its index)
    /// as it is instead of through a conversion.
    pub fn integer_widening(&self) -> Option<(&str, &str)> {
        fn rank(ty: &str) -> Option<u8> {
            match ty.trim().to_ascii_lowercase().as_str() {
                "smallint" | "int2" => Some(1),
                "integer" | "int" | "int4" => Some(2),
                "bigint" | "int8" => Some(3),
                _ => None,
            }
        }
        fn plain_cast(expr: &str, column: &str, ty: &str) -> bool {
            let squeezed: String = expr
                .chars()
                .filter(|c| !c.is_whitespace() && !matches!(c, '(' | ')' | '"'))
                .collect::<String>()
                .to_ascii_lowercase();
            squeezed == format!("{column}::{ty}").to_ascii_lowercase()
        }
        let (new, old) = (self.new_type.as_deref()?, self.down_type.as_deref()?);
        let widens = rank(new)? > rank(old)?;
        let casts = plain_cast(self.up.as_deref()?, &self.from, new)
            && plain_cast(self.down.as_deref()?, &self.to, old);
        (widens && casts).then_some((old, new))
    }

    /// A pure rename: same type, identity conversions.
    pub fn is_rename(&self) -> bool {
        self.up.is_none()
    }

    /// `up(a)` in `b`'s declared type, with `a` read as the expression
    /// `a_value` (the value itself for a rename).
    pub fn up_of(&self, a_value: &str) -> String {
        match &self.up {
            Some(up) => {
                let ty = self.new_type.as_deref().unwrap_or("unknown");
                format!("({})::{ty}", substitute(up, &self.from, a_value))
            }
            None => a_value.to_string(),
        }
    }

    /// `down(b)`, with `b` read as the expression `b_value` (the value
    /// itself for a rename).
    pub fn down_of(&self, b_value: &str) -> String {
        match &self.down {
            Some(down) => format!("({})", substitute(down, &self.to, b_value)),
            None => b_value.to_string(),
        }
    }
}

/// `expression` with every reference to `column` replaced by `(value)`
/// (see [`substitute_all`]).
pub fn substitute(expression: &str, column: &str, value: &str) -> String {
    substitute_all(expression, &[(column, value)])
}

/// `expression` with each reference to a column of `values` replaced by
/// `(value)` (a word called as a function, or a type after `::`, is not a
/// reference).
pub fn substitute_all<C: AsRef<str>, V: AsRef<str>>(expression: &str, values: &[(C, V)]) -> String {
    use super::text::{splice, tokenize, Edit};
    let Ok(toks) = tokenize(expression) else {
        return expression.to_string();
    };
    let mut edits: Vec<Edit> = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        let called = toks.get(i + 1).is_some_and(|n| n.token == Token::LParen);
        let cast = i > 0 && toks[i - 1].token == Token::DoubleColon;
        if called || cast {
            continue;
        }
        if let Some((_, value)) = values
            .iter()
            .find(|(c, _)| super::text::names(&t.token, c.as_ref()))
        {
            edits.push(Edit {
                start: t.start,
                end: t.end,
                text: format!("({})", value.as_ref()),
            });
        }
    }
    splice(expression, &mut edits).unwrap_or_else(|| expression.to_string())
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    Tokenizer::new(&PostgreSqlDialect {}, text)
        .tokenize()
        .map(|t| {
            t.into_iter()
                .filter(|t| !matches!(t, Token::Whitespace(_)))
                .collect()
        })
        .map_err(|e| e.to_string())
}

/// A migration's id (not empty) and its table, checked.
fn id_and_table(id: &str, table: &str) -> Result<TableName, SpecError> {
    let err = |reason: String| SpecError {
        id: id.to_string(),
        reason,
    };
    if id.trim().is_empty() {
        return Err(err("the id is empty".into()));
    }
    parse_table_name(table).map_err(|e| err(format!("table {table:?}: {e}")))
}

/// Folds one identifier: unquoted → lower case, quoted → as written.
pub fn parse_ident(text: &str) -> Result<String, String> {
    match tokens(text)?.as_slice() {
        [Token::Word(w)] if w.quote_style.is_some() => Ok(w.value.clone()),
        [Token::Word(w)] => Ok(w.value.to_lowercase()),
        _ => Err("expected one column name".into()),
    }
}

/// `name` or `schema.name`; the schema defaults to `public`.
fn parse_table_name(text: &str) -> Result<TableName, String> {
    let fold = |w: &sqlparser::tokenizer::Word| {
        if w.quote_style.is_some() {
            w.value.clone()
        } else {
            w.value.to_lowercase()
        }
    };
    match tokens(text)?.as_slice() {
        [Token::Word(name)] => Ok(TableName {
            schema: "public".into(),
            name: fold(name),
        }),
        [Token::Word(schema), Token::Period, Token::Word(name)] => Ok(TableName {
            schema: fold(schema),
            name: fold(name),
        }),
        _ => Err("expected TABLE or SCHEMA.TABLE".into()),
    }
}

fn check_type(text: &str) -> Result<(), String> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| e.to_string())?;
    parser.parse_data_type().map_err(|e| e.to_string())?;
    if parser.peek_token().token != Token::EOF {
        return Err("unexpected text after the type".into());
    }
    Ok(())
}

/// The expression parses on its own and names `column`.
/// The type an expression's outermost cast converts to, if it ends in one.
fn outer_cast_type(text: &str) -> Option<String> {
    let dialect = PostgreSqlDialect {};
    let mut expr = Parser::new(&dialect)
        .try_with_sql(text)
        .ok()?
        .parse_expr()
        .ok()?;
    while let sqlparser::ast::Expr::Nested(inner) = expr {
        expr = *inner;
    }
    match expr {
        sqlparser::ast::Expr::Cast { data_type, .. } => Some(data_type.to_string()),
        _ => None,
    }
}

fn check_expression(text: &str, column: &str) -> Result<(), String> {
    super::conversion::check(text, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_folds_names() {
        let m = MigrationSpec::new(
            "m",
            "Public.Users",
            "Name",
            "\"FullName\"",
            None,
            None,
            None,
        )
        .unwrap();
        assert_eq!(m.table.schema, "public");
        assert_eq!(m.table.name, "users");
        assert_eq!(m.from, "name");
        assert_eq!(m.to, "FullName");
        assert!(m.is_rename());
        assert_eq!(quote_ident(&m.to), "\"FullName\"");
        assert_eq!(m.table.to_string(), "public.users");
        let m = MigrationSpec::new("m", "accounts", "a", "b", None, None, None).unwrap();
        assert_eq!(m.table.schema, "public");
    }

    #[test]
    fn a_type_change_checks_its_expressions() {
        let ok = MigrationSpec::new(
            "orders_amount_decimal",
            "public.orders",
            "amount",
            "amount_decimal",
            Some("numeric(12,2)"),
            Some("amount::numeric / 100"),
            Some("(amount_decimal * 100)::integer"),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let err = |up: &str, down: &str| {
            MigrationSpec::new("m", "t", "a", "b", Some("bigint"), Some(up), Some(down))
                .unwrap_err()
                .reason
        };
        assert!(err("x + 1", "b").contains("may read only the column \"a\""));
        assert!(err("1 + 1", "b").contains("does not reference column \"a\""));
        assert!(err("a +", "b").starts_with("up"));
        assert!(err("a", "b b").starts_with("down"));
        let e = MigrationSpec::new("m", "t", "a", "b", Some("bigint"), None, None).unwrap_err();
        assert!(e.reason.contains("needs both up and down"));
        let e = MigrationSpec::new(
            "m",
            "t",
            "a",
            "b",
            Some("not a type ("),
            Some("a"),
            Some("b"),
        )
        .unwrap_err();
        assert!(e.reason.starts_with("type"));
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(MigrationSpec::new("m", "a.b.c", "x", "y", None, None, None).is_err());
        assert!(MigrationSpec::new("m", "t", "x y", "z", None, None, None).is_err());
        assert!(MigrationSpec::new("m", "t", "x", "X", None, None, None).is_err());
        assert!(MigrationSpec::new("", "t", "x", "y", None, None, None).is_err());
    }

    #[test]
    fn the_phase_table() {
        use Phase::*;
        let rows: Vec<(Phase, bool, bool, bool, bool)> = Phase::ALL
            .iter()
            .map(|p| {
                (
                    *p,
                    p.rules_active(),
                    p.has_old(),
                    p.has_new(),
                    p.reads_new(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (Planned, true, true, false, false),
                (Expanded, true, true, true, false),
                (Backfilling, true, true, true, false),
                (Backfilled, true, true, true, false),
                (Validated, true, true, true, false),
                (Switched, true, true, true, true),
                (Contracted, true, false, true, true),
                (Complete, false, false, true, true),
                (RolledBack, false, true, false, false),
            ]
        );
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
        }
    }
}
