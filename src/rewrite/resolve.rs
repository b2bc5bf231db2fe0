//! The walk over one statement's syntax tree (sqlparser's AST): every query
//! block — the statement's own, set operations' sides, CTEs (recursive
//! too), derived tables, subqueries in expressions, data-modifying CTEs —
//! gets its [`Scope`], every column reference is resolved through it as
//! Postgres resolves it, and what concerns a migration is reported as
//! [`Sites`]: reads and writes of a migrating column with their byte
//! ranges, `*` over a migrating table, INSERTs that leave its columns
//! implied, references to other tables' columns that must be qualified.
//! Turning sites into text is the planner's ([`super::plan`]).
//!
//! Positions come from identifiers' spans (reliable in sqlparser) mapped
//! onto the tokenizer's byte ranges; where a node's own span is not
//! reliable (casts, VALUES items), the token stream delimits it.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Assignment, AssignmentTarget, BinaryOperator, ConflictTarget, Cte, Delete, Distinct, Expr,
    FromTable, GroupByExpr, Ident, Insert, JoinConstraint, JoinOperator, ObjectName,
    ObjectNamePart, OnConflictAction, OnInsert, OrderByKind, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor, TableObject, TableWithJoins,
    Update, UpdateTableFromKind, Visit, Visitor,
};
use sqlparser::tokenizer::Token;

use super::catalog::Catalog;
use super::rules::ActiveMigration;
use super::scope::{shaped, Columns, Found, Relation, Scope, Shape, Which};
use super::search_path::Resolved;
use super::text::{list_items, LineIndex, Tok};

/// Query blocks nested deeper than this are refused (planning stays
/// bounded whatever the statement).
const MAX_DEPTH: usize = 64;

/// One migration relevant to the statement, as the walk sees its table.
pub struct Target<'r> {
    pub m: &'r ActiveMigration,
    /// The catalog snapshot (defaults and types of the table's columns).
    pub catalog: &'r Catalog,
    /// Its physical columns in this phase (catalog order), when the catalog
    /// snapshot knows the table.
    pub physical: Option<Vec<String>>,
    /// Where the old column stands once dropped (its index among them).
    pub old_at: usize,
    /// For a type change that keeps the column's name: whether the
    /// session is served the new shape (its `from` is then `to`).
    pub kept_name_new: Option<bool>,
    /// For a `set_not_null` with `up`, in a session of the old shape: the
    /// value its writes of NULL to the column are given.
    pub fill: Option<&'r str>,
}

/// A refusal: the target it is about, and why.
pub type Refusal = (usize, String);

impl Target<'_> {
    /// Target `k`'s refusal for want of its table's columns.
    pub fn no_catalog(&self, k: usize) -> Refusal {
        (
            k,
            format!(
                "needs the column list of {} (for *, or an INSERT's implied columns), which is not in pgshift's catalog snapshot (not read yet, or the table is new: it is read within seconds, or at once on SIGHUP)",
                self.m.spec.table
            ),
        )
    }

    fn shaped(&self, shape: Shape) -> Columns {
        let spec = &self.m.spec;
        if self.kept_name_new.is_some() {
            // Both shapes name the one column, where it always stood.
            return match &self.physical {
                Some(p) => Columns::Known(p.iter().filter(|c| **c != spec.to).cloned().collect()),
                None => Columns::Unknown(vec![spec.from.clone()]),
            };
        }
        match &self.physical {
            Some(p) => Columns::Known(shaped(
                p,
                (&spec.from, &spec.to),
                self.old_at,
                spec.in_place,
                shape,
            )),
            None => Columns::Unknown(
                match shape {
                    Shape::Union => vec![spec.from.clone(), spec.to.clone()],
                    Shape::Old => vec![spec.from.clone()],
                    Shape::New => vec![spec.to.clone()],
                }
                .into_iter()
                .filter(|c| !c.is_empty())
                .collect(),
            ),
        }
    }

    /// The column `name` is, if it is one of the two.
    fn which(&self, name: &str) -> Option<Which> {
        let spec = &self.m.spec;
        if let Some(new) = self.kept_name_new {
            return (name == spec.from).then_some(if new { Which::To } else { Which::From });
        }
        if name == spec.from {
            Some(Which::From)
        } else if name == spec.to {
            Some(Which::To)
        } else {
            None
        }
    }

    fn physical_names(&self) -> Vec<String> {
        let spec = &self.m.spec;
        let mut names = self.physical.clone().unwrap_or_default();
        for (column, exists) in [(&spec.from, self.m.has_old()), (&spec.to, self.m.has_new())] {
            if exists && !names.contains(column) {
                names.push(column.clone());
            }
        }
        names
    }
}

/// What the walk is given.
pub struct Context<'a> {
    pub tokens: &'a [Tok],
    pub index: &'a LineIndex<'a>,
    pub targets: &'a [Target<'a>],
    pub catalog: &'a Catalog,
    /// How the statement sees each target's table.
    pub shapes: Vec<Shape>,
}

/// How a read of a migrating column is placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Use {
    /// Inside an expression.
    Read,
    /// A whole projection or RETURNING item, whose output name is the
    /// column's; `wrapped` in casts or parentheses, the item ending at
    /// `item_end` (where an alias goes).
    Item { wrapped: bool, item_end: usize },
    /// One side of a plain comparison in a filter (WHERE, JOIN … ON) whose
    /// other side is the literal or placeholder at `other`.
    Compared {
        other: (usize, usize),
        placeholder: bool,
    },
    /// A whole ORDER BY key of a block that neither groups, nor is
    /// DISTINCT, nor a set operation.
    SortKey,
}

/// A reference to a migrating column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnUse {
    pub target: usize,
    pub which: Which,
    /// The whole reference, qualifier included.
    pub start: usize,
    pub end: usize,
    /// Where the column name itself starts (`start..ident` is the qualifier).
    pub ident: usize,
    /// An unqualified reference whose physical column another relation of
    /// its block also has: qualify it with this name.
    pub qualify_with: Option<String>,
    pub usage: Use,
}

/// One part of what a `*` stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StarPart {
    /// A migrating table's columns (both migrating ones among them), but
    /// those merged by USING (`except`).
    Target {
        target: usize,
        qualifier: String,
        except: Vec<String>,
    },
    /// Another relation's columns, as `q.*`.
    Other { qualifier: String },
    /// Another relation's columns listed (over a USING join, where `q.*`
    /// would repeat the merged ones).
    Listed {
        qualifier: String,
        columns: Vec<String>,
    },
    /// A column merged by USING (unqualified).
    Merged(String),
}

/// `*` (or `q.*`) over a migrating table, at `start..end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Star {
    pub start: usize,
    pub end: usize,
    pub parts: Vec<StarPart>,
}

/// A write of a migrating column: an INSERT column list entry (the
/// values: one per VALUES row, or the SELECT list's item) or a SET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub target: usize,
    pub which: Which,
    /// The column name in the list, or the SET target.
    pub column: (usize, usize),
    pub assign: bool,
    pub values: Vec<Value>,
}

/// One written value: where it is, and what matters for writing it twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub range: (usize, usize),
    /// A function that may give another result when evaluated again.
    pub volatile: Option<String>,
    /// `DEFAULT`.
    pub default: bool,
    /// A placeholder or a quoted literal alone: its type is inferred from
    /// where it is written.
    pub untyped: bool,
}

/// An INSERT into a migrating table that leaves its columns implied (no
/// column list, or one naming neither migrating column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Implied {
    pub target: usize,
    /// Where a column list goes: the token after the table name and alias.
    pub after_target: usize,
    /// The column list as written (folded); empty without one.
    pub columns: Vec<String>,
    /// The byte offset of the column list's `)`.
    pub list_close: Option<usize>,
    pub source: ImpliedSource,
    /// Only for a column added with `up` (given over the row's values):
    /// each row's values (the VALUES rows, or the select list as one row),
    /// and where a value appended to each row goes.
    pub rows: Vec<Vec<Value>>,
    pub row_ends: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImpliedSource {
    /// VALUES rows: their width and the byte offset of each row's `)`.
    Values { width: usize, closes: Vec<usize> },
    /// `DEFAULT VALUES`, at this byte range.
    DefaultValues(usize, usize),
    /// A query.
    Query,
}

/// `ON CONFLICT (… a …)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictColumn {
    pub target: usize,
    pub which: Which,
    pub start: usize,
    pub end: usize,
}

/// An error Postgres itself would raise on the client's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub code: &'static str,
    pub message: String,
}

/// What one statement holds that concerns the migrations.
#[derive(Debug, Default)]
pub struct Sites {
    pub uses: Vec<ColumnUse>,
    pub stars: Vec<Star>,
    pub writes: Vec<Write>,
    pub implied: Vec<Implied>,
    pub conflicts: Vec<ConflictColumn>,
    /// (byte offset, qualifier): another relation's column to qualify.
    pub qualify: Vec<(usize, String)>,
    /// (target, reason): what cannot be rewritten.
    pub refusals: Vec<(usize, String)>,
    pub errors: Vec<PgError>,
    /// Per target: references that settle the shape — [old, new].
    pub evidence: Vec<[u32; 2]>,
    /// Per target: an unqualified name was ambiguous because the table
    /// showed both of its columns.
    pub clashed: Vec<bool>,
    /// Per target: references to its columns that did not resolve.
    pub unresolved: Vec<u32>,
    /// A migrating table is read or written at all.
    pub touches: bool,
}

/// A CTE in reach: its name and output columns.
struct CteDef {
    name: String,
    columns: Columns,
}

/// Walks `statement` under `cx`.
pub fn walk(cx: &Context<'_>, statement: &Statement) -> Sites {
    let n = cx.targets.len();
    let mut w = Walker {
        cx,
        values_select: false,
        sites: Sites {
            evidence: vec![[0, 0]; n],
            clashed: vec![false; n],
            unresolved: vec![0; n],
            ..Sites::default()
        },
        ctes: Vec::new(),
        skip: HashSet::new(),
        depth: 0,
    };
    w.statement(statement, None);
    w.sites
}

struct Walker<'c, 'a> {
    cx: &'c Context<'a>,
    /// The next SELECT walked is an INSERT's source: its items are values.
    values_select: bool,
    sites: Sites,
    /// CTE frames in reach, innermost last.
    ctes: Vec<Vec<CteDef>>,
    /// Identifier starts that are not column references (field names of
    /// a composite access).
    skip: HashSet<usize>,
    depth: usize,
}

impl Walker<'_, '_> {
    fn refuse(&mut self, target: usize, reason: impl Into<String>) {
        self.sites.refusals.push((target, reason.into()));
    }

    fn statement(&mut self, statement: &Statement, outer: Option<&Scope<'_>>) -> Columns {
        match statement {
            Statement::Query(q) => self.query(q, outer),
            Statement::Insert(i) => self.insert(i, outer),
            Statement::Update(u) => self.update(u, outer),
            Statement::Delete(d) => self.delete(d, outer),
            Statement::Explain { statement, .. } | Statement::Prepare { statement, .. } => {
                self.statement(statement, outer)
            }
            Statement::Declare { stmts } => {
                for d in stmts {
                    if let Some(q) = &d.for_query {
                        self.query(q, outer);
                    }
                }
                Columns::Known(Vec::new())
            }
            _ => Columns::Known(Vec::new()),
        }
    }

    // ---- queries -------------------------------------------------------

    fn query(&mut self, q: &Query, outer: Option<&Scope<'_>>) -> Columns {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            self.refuse(0, format!("nests queries more than {MAX_DEPTH} deep"));
            self.depth -= 1;
            return Columns::Unknown(Vec::new());
        }
        let framed = q.with.is_some();
        if let Some(with) = &q.with {
            self.ctes.push(Vec::new());
            for cte in &with.cte_tables {
                self.cte(cte, with.recursive, outer);
            }
        }
        let columns = match q.body.as_ref() {
            SetExpr::Select(select) => self.select_block(select, Some(q), outer),
            body => {
                let columns = self.set_expr(body, outer);
                // ORDER BY of a set operation names its output columns.
                if let Some(order) = &q.order_by {
                    if let OrderByKind::Expressions(items) = &order.kind {
                        let scope = Scope::new(vec![Relation::other(None, columns.clone())], outer);
                        for item in items {
                            self.expr(&item.expr, &scope);
                        }
                    }
                }
                columns
            }
        };
        let scope = Scope::new(Vec::new(), outer);
        if let Some(limit) = &q.limit_clause {
            self.visit(limit, &scope);
        }
        if framed {
            self.ctes.pop();
        }
        self.depth -= 1;
        columns
    }

    fn cte(&mut self, cte: &Cte, recursive: bool, outer: Option<&Scope<'_>>) {
        let name = fold(&cte.alias.name);
        let aliases: Vec<String> = cte.alias.columns.iter().map(|c| fold(&c.name)).collect();
        if recursive {
            // Its own name is in reach within its body: with the alias list,
            // or the first term's output names.
            let first = first_term_names(&cte.query);
            let columns = rename(first, &aliases);
            self.define_cte(name.clone(), columns);
        }
        let body = self.query(&cte.query, outer);
        self.define_cte(name, rename(body, &aliases));
    }

    fn define_cte(&mut self, name: String, columns: Columns) {
        if let Some(frame) = self.ctes.last_mut() {
            frame.retain(|d| d.name != name);
            frame.push(CteDef { name, columns });
        }
    }

    fn find_cte(&self, name: &str) -> Option<Columns> {
        self.ctes
            .iter()
            .rev()
            .flat_map(|frame| frame.iter())
            .find(|d| d.name == name)
            .map(|d| d.columns.clone())
    }

    fn set_expr(&mut self, body: &SetExpr, outer: Option<&Scope<'_>>) -> Columns {
        match body {
            SetExpr::Select(select) => self.select_block(select, None, outer),
            SetExpr::Query(q) => self.query(q, outer),
            SetExpr::SetOperation { left, right, .. } => {
                let columns = self.set_expr(left, outer);
                self.set_expr(right, outer);
                columns
            }
            SetExpr::Values(values) => {
                let scope = Scope::new(Vec::new(), outer);
                let width = values.rows.first().map_or(0, |r| r.content.len());
                for row in &values.rows {
                    for e in &row.content {
                        self.expr(e, &scope);
                    }
                }
                Columns::Known((1..=width).map(|i| format!("column{i}")).collect())
            }
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) => {
                self.statement(s, outer)
            }
            SetExpr::Table(t) => {
                let name = t.table_name.as_deref().unwrap_or_default().to_lowercase();
                let schema = t.schema_name.as_deref().map(str::to_lowercase);
                let relation = self.table_relation(schema.as_deref(), &name, None);
                if let Some(k) = relation.migration {
                    self.refuse(
                        k,
                        "reads every column with TABLE; send SELECT * FROM instead",
                    );
                }
                relation.columns
            }
            SetExpr::Merge(_) => {
                self.refuse(0, "is a MERGE, which pgshift does not rewrite");
                Columns::Unknown(Vec::new())
            }
        }
    }

    fn select_block(
        &mut self,
        select: &Select,
        q: Option<&Query>,
        outer: Option<&Scope<'_>>,
    ) -> Columns {
        let values = std::mem::take(&mut self.values_select);
        let mut scope = Scope::new(Vec::new(), outer);
        for twj in &select.from {
            self.walk_from_item(twj, &mut scope, outer);
        }
        if select.into.is_some() {
            if let Some(k) = scope.relations.iter().find_map(|r| r.migration) {
                self.refuse(
                    k,
                    "selects INTO a new table (DDL), which pgshift does not rewrite",
                );
            }
        }
        let outputs = if values {
            for item in &select.projection {
                match item {
                    SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                        self.expr(e, &scope)
                    }
                    SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                        if let Some(k) = scope.relations.iter().find_map(|r| r.migration) {
                            self.refuse(k, "inserts from SELECT * over a migrating table, whose * yields both of its migrating columns during the migration; list the columns");
                        }
                    }
                    other => self.visit(other, &scope),
                }
            }
            vec![None; select.projection.len()]
        } else {
            self.projection(&select.projection, &scope)
        };
        if let Some(Distinct::On(exprs)) = &select.distinct {
            for e in exprs {
                self.order_key(e, &scope, &outputs, false);
            }
        }
        if let Some(e) = &select.selection {
            self.filter(e, &scope);
        }
        match &select.group_by {
            GroupByExpr::Expressions(exprs, _) => {
                for e in exprs {
                    self.expr(e, &scope);
                }
            }
            GroupByExpr::All(_) => {}
        }
        if let Some(e) = &select.having {
            self.expr(e, &scope);
        }
        for w in &select.named_window {
            self.visit(w, &scope);
        }
        if let Some(q) = q {
            if let Some(order) = &q.order_by {
                if let OrderByKind::Expressions(items) = &order.kind {
                    let keys_ok = select.distinct.is_none() && !groups(select);
                    for item in items {
                        self.order_key(&item.expr, &scope, &outputs, keys_ok);
                    }
                }
            }
        }
        output_columns(&select.projection, &scope, &outputs)
    }

    // ---- FROM ----------------------------------------------------------

    fn walk_from_item(
        &mut self,
        twj: &TableWithJoins,
        scope: &mut Scope<'_>,
        outer: Option<&Scope<'_>>,
    ) {
        self.factor(&twj.relation, scope, outer);
        for join in &twj.joins {
            self.factor(&join.relation, scope, outer);
            let constraint = match &join.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::StraightJoin(c) => Some(c),
                _ => None,
            };
            match constraint {
                Some(JoinConstraint::On(e)) => self.filter(e, scope),
                Some(JoinConstraint::Using(names)) => {
                    for name in names {
                        let Some(column) = last_ident(name) else {
                            continue;
                        };
                        let column = fold(column);
                        if let Some(k) = self.migrating_name(scope, &column) {
                            self.refuse(k, "joins USING a migrating column; join ON it instead (a.col = b.col)");
                        }
                        scope.merged.push(column);
                    }
                }
                Some(JoinConstraint::Natural) => {
                    if let Some(k) = scope.relations.iter().find_map(|r| r.migration) {
                        self.refuse(k, "is a NATURAL join of a migrating table, whose columns change during the migration; join ON the columns instead");
                    }
                }
                _ => {}
            }
        }
    }

    /// The relevant target a relation of `scope` is whose migrating
    /// columns include `column`.
    fn migrating_name(&self, scope: &Scope<'_>, column: &str) -> Option<usize> {
        scope.relations.iter().find_map(|r| {
            let k = r.migration?;
            self.cx.targets[k].which(column).map(|_| k)
        })
    }

    fn factor(&mut self, factor: &TableFactor, scope: &mut Scope<'_>, outer: Option<&Scope<'_>>) {
        let relation = match factor {
            TableFactor::Table {
                name, alias, args, ..
            } => self.named_table(name, alias.as_ref(), args.is_some()),
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => {
                // A subquery in FROM sees the blocks around this one, and
                // with LATERAL the FROM items before it.
                let columns = if *lateral {
                    self.query(subquery, Some(&view_from(scope, outer)))
                } else {
                    self.query(subquery, outer)
                };
                let aliases: Vec<String> = alias
                    .as_ref()
                    .map(|a| a.columns.iter().map(|c| fold(&c.name)).collect())
                    .unwrap_or_default();
                Relation::other(
                    alias.as_ref().map(|a| fold(&a.name)),
                    rename(columns, &aliases),
                )
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let mut inner = Scope::new(Vec::new(), outer);
                self.walk_from_item(table_with_joins, &mut inner, outer);
                match alias {
                    Some(a) => {
                        let columns = all_columns(&inner);
                        Relation::other(Some(fold(&a.name)), columns)
                    }
                    None => {
                        scope.relations.extend(inner.relations);
                        scope.merged.extend(inner.merged);
                        return;
                    }
                }
            }
            TableFactor::Function {
                name, args, alias, ..
            } => {
                let view = view_from(scope, outer);
                for a in args {
                    self.visit(a, &view);
                }
                function_relation(alias.as_ref(), last_ident(name).map(fold))
            }
            TableFactor::TableFunction { expr, alias } => {
                let view = view_from(scope, outer);
                self.expr(expr, &view);
                function_relation(alias.as_ref(), None)
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                let view = view_from(scope, outer);
                for e in array_exprs {
                    self.expr(e, &view);
                }
                function_relation(alias.as_ref(), Some("unnest".into()))
            }
            other => {
                let view = view_from(scope, outer);
                self.visit(other, &view);
                Relation::other(None, Columns::Unknown(Vec::new()))
            }
        };
        if relation.migration.is_some() {
            self.sites.touches = true;
        }
        scope.relations.push(relation);
    }

    /// A table (or a CTE) named in FROM, with its alias and column
    /// aliases; a table function call (`has_args`) is opaque.
    fn named_table(
        &mut self,
        name: &ObjectName,
        alias: Option<&sqlparser::ast::TableAlias>,
        has_args: bool,
    ) -> Relation {
        let parts = ident_parts(name);
        let alias_name = alias.map(|a| fold(&a.name));
        let aliases: Vec<String> = alias
            .map(|a| a.columns.iter().map(|c| fold(&c.name)).collect())
            .unwrap_or_default();
        let mut relation = match (parts.as_slice(), has_args) {
            (_, true) => Relation::other(
                alias_name.clone().or(parts.last().cloned()),
                Columns::Unknown(Vec::new()),
            ),
            ([table], false) => match self.find_cte(table) {
                Some(columns) => Relation::other(Some(table.clone()), columns),
                None => self.table_relation(None, table, alias_name.clone()),
            },
            ([schema, table], false) => {
                self.table_relation(Some(schema), table, alias_name.clone())
            }
            _ => Relation::other(
                alias_name.clone().or(parts.last().cloned()),
                Columns::Unknown(Vec::new()),
            ),
        };
        if let Some(a) = alias_name {
            relation.name = Some(a);
            relation.schema = None;
        }
        if !aliases.is_empty() {
            if let Some(k) = relation.migration {
                self.refuse(k, "renames a migrating table's columns with a column alias list; alias the columns in the select list instead");
            }
            relation.columns = rename(relation.columns, &aliases);
        }
        relation
    }

    /// The relation a table name (as the session resolves it) stands for.
    fn table_relation(&self, schema: Option<&str>, table: &str, alias: Option<String>) -> Relation {
        let catalog = self.cx.catalog;
        let resolved_schema: Option<String> = match schema {
            Some(s) => Some(s.to_string()),
            None => match catalog.resolve(table) {
                Resolved::In(s) => Some(s.to_string()),
                Resolved::Missing | Resolved::Ambiguous => None,
            },
        };
        let target = self.cx.targets.iter().position(|t| {
            let spec = &t.m.spec;
            spec.table.name == table
                && match &resolved_schema {
                    Some(s) => *s == spec.table.schema,
                    // Not in the snapshot: the migrating table it names.
                    None => schema.is_none() && !catalog.holds(table),
                }
        });
        let name = Some(alias.unwrap_or_else(|| table.to_string()));
        let schema = resolved_schema.filter(|_| schema.is_some());
        if let Some(k) = target {
            let t = &self.cx.targets[k];
            return Relation {
                name,
                schema,
                columns: t.shaped(self.cx.shapes[k]),
                migration: Some(k),
                physical: t.physical_names(),
            };
        }
        let columns = catalog
            .table(schema.as_deref().or(None), table)
            .map(|def| Columns::Known(def.columns.iter().map(|c| c.name.clone()).collect()))
            .unwrap_or(Columns::Unknown(Vec::new()));
        Relation {
            name,
            schema,
            columns,
            migration: None,
            physical: Vec::new(),
        }
    }

    // ---- projection and clauses ------------------------------------------

    /// Walks a SELECT or RETURNING list; answers each item's output name.
    fn projection(&mut self, items: &[SelectItem], scope: &Scope<'_>) -> Vec<Option<String>> {
        let mut names = Vec::new();
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    match bare(e) {
                        Some((idents, wrapped)) => {
                            let item_end = self.item_end(e, idents);
                            self.column(idents, scope, Use::Item { wrapped, item_end });
                        }
                        None => self.expr(e, scope),
                    }
                    names.push(Some(figure_name(e)));
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    self.expr(expr, scope);
                    names.push(Some(fold(alias)));
                }
                SelectItem::Wildcard(options) => {
                    self.star(options.wildcard_token.0.span.start, None, scope);
                    names.push(None);
                }
                SelectItem::QualifiedWildcard(kind, options) => {
                    if let SelectItemQualifiedWildcardKind::ObjectName(name) = kind {
                        self.star(options.wildcard_token.0.span.start, Some(name), scope);
                    }
                    names.push(None);
                }
                other => {
                    self.visit(other, scope);
                    names.push(None);
                }
            }
        }
        names
    }

    /// `*` or `q.*`: reported when it covers a migrating table.
    fn star(
        &mut self,
        at: sqlparser::tokenizer::Location,
        qualifier: Option<&ObjectName>,
        scope: &Scope<'_>,
    ) {
        let Some(star) = self.cx.index.offset(at) else {
            return;
        };
        let (start, relations): (usize, Vec<usize>) = match qualifier {
            None => (star, (0..scope.relations.len()).collect()),
            Some(name) => {
                let q = last_ident(name).map(fold).unwrap_or_default();
                let start = name
                    .0
                    .first()
                    .and_then(|p| match p {
                        ObjectNamePart::Identifier(id) => self.cx.index.offset(id.span.start),
                        _ => None,
                    })
                    .unwrap_or(star);
                let found = scope
                    .relations
                    .iter()
                    .position(|r| r.name.as_deref() == Some(q.as_str()));
                (start, found.into_iter().collect())
            }
        };
        let Some(k) = relations.iter().find_map(|&i| scope.relations[i].migration) else {
            return;
        };
        let mut parts = Vec::new();
        if qualifier.is_none() && !scope.merged.is_empty() {
            parts.extend(scope.merged.iter().cloned().map(StarPart::Merged));
        }
        for &i in &relations {
            let r = &scope.relations[i];
            let Some(q) = r.name.clone() else {
                self.refuse(k, "selects * over a subquery without an alias, which pgshift does not expand; list the columns");
                return;
            };
            let part = match (r.migration, scope.merged.is_empty() || qualifier.is_some()) {
                (Some(target), _) => StarPart::Target {
                    target,
                    qualifier: q,
                    except: if qualifier.is_none() {
                        scope.merged.clone()
                    } else {
                        Vec::new()
                    },
                },
                (None, true) => StarPart::Other { qualifier: q },
                (None, false) => match r.columns.known() {
                    Some(columns) => StarPart::Listed {
                        qualifier: q,
                        columns: columns
                            .iter()
                            .filter(|c| !scope.merged.contains(c))
                            .cloned()
                            .collect(),
                    },
                    None => {
                        self.refuse(k, "selects * over a join USING columns of a relation whose columns pgshift does not know; list the columns");
                        return;
                    }
                },
            };
            parts.push(part);
        }
        self.sites.touches = true;
        self.sites.stars.push(Star {
            start,
            end: star + 1,
            parts,
        });
    }

    /// A WHERE or JOIN … ON condition: its plain comparisons are marked.
    fn filter(&mut self, e: &Expr, scope: &Scope<'_>) {
        match e {
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And | BinaryOperator::Or,
                right,
            } => {
                self.filter(left, scope);
                self.filter(right, scope);
            }
            Expr::Nested(inner) | Expr::UnaryOp { expr: inner, .. } => self.filter(inner, scope),
            Expr::BinaryOp { left, op, right } if is_comparison(op) => {
                for (column, other) in [(left, right), (right, left)] {
                    if let (Some(idents), Some((range, placeholder))) =
                        (plain_column(column), self.single(other))
                    {
                        self.column(
                            idents,
                            scope,
                            Use::Compared {
                                other: range,
                                placeholder,
                            },
                        );
                        self.expr(other, scope);
                        return;
                    }
                }
                self.expr(e, scope);
            }
            _ => self.expr(e, scope),
        }
    }

    /// A literal or placeholder standing alone: its byte range.
    fn single(&self, e: &Expr) -> Option<((usize, usize), bool)> {
        let Expr::Value(v) = e else { return None };
        use sqlparser::ast::Value;
        let placeholder = match &v.value {
            Value::Placeholder(_) => true,
            Value::Number(..) | Value::SingleQuotedString(_) => false,
            _ => return None,
        };
        let start = self.cx.index.offset(v.span.start)?;
        let tok = &self.cx.tokens[self.token_at(start)?];
        Some(((tok.start, tok.end), placeholder))
    }

    /// An ORDER BY (or DISTINCT ON) key: a bare name of an output column
    /// is that column; a bare migrating column is a sort key where `keys`.
    fn order_key(&mut self, e: &Expr, scope: &Scope<'_>, outputs: &[Option<String>], keys: bool) {
        if let Expr::Identifier(id) = e {
            let name = fold(id);
            let is_output = outputs.iter().any(|o| o.as_deref() == Some(name.as_str()));
            let sorts_a_target = keys
                && matches!(scope.resolve(&name), Found::Column { level: 0, relation, .. }
                    if scope.relations[relation].migration.is_some());
            if is_output && !sorts_a_target {
                return;
            }
        }
        match plain_column(e) {
            Some(idents) if keys => self.column(idents, scope, Use::SortKey),
            _ => self.expr(e, scope),
        }
    }

    // ---- expressions ---------------------------------------------------

    /// Every column reference and subquery in `e`.
    fn expr(&mut self, e: &Expr, scope: &Scope<'_>) {
        self.visit(e, scope);
    }

    /// Walks any node: column references resolve in `scope`, subqueries get
    /// a block of their own nested in it.
    fn visit<V: Visit>(&mut self, node: &V, scope: &Scope<'_>) {
        let mut v = ExprVisitor {
            walker: self,
            scope,
            nested: 0,
        };
        let _ = node.visit(&mut v);
    }

    /// A column reference (`idents`: its qualifier chain and name).
    fn column(&mut self, idents: &[Ident], scope: &Scope<'_>, usage: Use) {
        let Some((last, qualifier)) = idents.split_last() else {
            return;
        };
        let column = fold(last);
        let found = match qualifier {
            [] => scope.resolve(&column),
            [table] => scope.resolve_qualified(None, &fold(table), &column),
            [.., schema, table] => {
                scope.resolve_qualified(Some(&fold(schema)), &fold(table), &column)
            }
        };
        let (Some(start), Some(ident)) = (
            self.offset(idents[0].span.start),
            self.offset(last.span.start),
        ) else {
            return;
        };
        let end = self.token_end(ident);
        match found {
            Found::Column {
                level,
                relation,
                column,
            } => {
                let Some(r) = scope.relation(level, relation) else {
                    return;
                };
                if r.migration.is_some() {
                    self.sites.touches = true;
                }
                // Another column of a migrating table is any relation's
                // column: qualified when the physical tables make it clash.
                let migrating = r
                    .migration
                    .filter(|&k| self.cx.targets[k].which(&column).is_some());
                match migrating {
                    Some(k) => self.migrating_column(k, r, &column, qualifier.is_empty(), scope, level, relation, start, ident, end, usage),
                    None if qualifier.is_empty() && scope.clashes(level, relation, &column) => {
                        match &r.name {
                            Some(q) => self.sites.qualify.push((start, q.clone())),
                            None => self.refuse(0, format!("names column {column} of a subquery without an alias while a migrating table has a column of that name; alias the subquery")),
                        }
                    }
                    None => {}
                }
            }
            Found::Ambiguous { level } => {
                // Postgres raises 42702 on the client's shape; when a
                // migrating table's two columns caused it, another shape
                // may read the statement validly.
                for k in self.migrating_in(scope, level, level) {
                    if self.cx.targets[k].which(&column).is_some() {
                        self.sites.clashed[k] = true;
                        self.sites.errors.push(PgError {
                            code: "42702",
                            message: format!("column reference \"{column}\" is ambiguous"),
                        });
                    }
                }
            }
            Found::Uncertain { level } => {
                // A relation of unknown columns may have it: it may also be
                // a migrating table's there or further out.
                for k in self.migrating_in(scope, level, usize::MAX) {
                    if self.cx.targets[k].which(&column).is_some()
                        && !self.reads_as_it_is(k, &column)
                    {
                        self.refuse(k, format!(
                            "names column {column} without a table qualifier while another relation in reach may have (per pgshift's catalog snapshot) a column of that name; qualify it (t.column)"
                        ));
                    }
                }
            }
            Found::Merged { .. } | Found::Nowhere => {
                for (k, t) in self.cx.targets.iter().enumerate() {
                    if t.which(&column).is_some() {
                        self.sites.unresolved[k] += 1;
                    }
                }
            }
        }
    }

    /// The targets whose tables are relations of the blocks `from..=to`
    /// steps out.
    fn migrating_in(&self, scope: &Scope<'_>, from: usize, to: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut level = from;
        while let Some(s) = scope.at(level) {
            out.extend(s.relations.iter().filter_map(|r| r.migration));
            if level == to {
                break;
            }
            level += 1;
        }
        out
    }

    /// Whether target `k`'s column `column` is read as it is in this phase
    /// (it is the read source): a reference to it that may belong to
    /// another relation then means on the physical tables what it means
    /// on the client's, and passes as it is.
    fn reads_as_it_is(&self, k: usize, column: &str) -> bool {
        let m = self.cx.targets[k].m;
        let source = if m.reads_new() {
            &m.spec.to
        } else {
            &m.spec.from
        };
        column == source
    }

    #[allow(clippy::too_many_arguments)]
    fn migrating_column(
        &mut self,
        k: usize,
        r: &Relation,
        column: &str,
        unqualified: bool,
        scope: &Scope<'_>,
        level: usize,
        relation: usize,
        start: usize,
        ident: usize,
        end: usize,
        usage: Use,
    ) {
        self.sites.touches = true;
        let t = &self.cx.targets[k];
        let Some(which) = t.which(column) else {
            return; // another column of the migrating table
        };
        // Evidence of the client's shape: a name only that shape has (no
        // other relation in reach could be meant).
        let alone = !unqualified || !scope.others_may_have(level, relation, column);
        if alone {
            self.sites.evidence[k][usize::from(which == Which::To)] += 1;
        }
        let spec = &t.m.spec;
        let source = if t.m.reads_new() {
            &spec.to
        } else {
            &spec.from
        };
        let qualify_with = (unqualified && scope.clashes(level, relation, source))
            .then(|| r.name.clone())
            .flatten();
        self.sites.uses.push(ColumnUse {
            target: k,
            which,
            start,
            end,
            ident,
            qualify_with,
            usage,
        });
    }

    // ---- writes --------------------------------------------------------

    fn insert(&mut self, insert: &Insert, outer: Option<&Scope<'_>>) -> Columns {
        let TableObject::TableName(name) = &insert.table else {
            return Columns::Known(Vec::new());
        };
        let parts = ident_parts(name);
        let (schema, table) = match parts.as_slice() {
            [t] => (None, t.clone()),
            [s, t] => (Some(s.clone()), t.clone()),
            _ => return Columns::Known(Vec::new()),
        };
        let alias = insert.table_alias.as_ref().map(|a| fold(&a.alias));
        let target = self.table_relation(schema.as_deref(), &table, alias);
        let k = target.migration;
        // The source (VALUES or a query) is a block of its own; its select
        // list's items are values, not output names.
        if let Some(source) = &insert.source {
            self.values_select = true;
            self.query(source, outer);
            self.values_select = false;
        }
        if let Some(k) = k {
            self.sites.touches = true;
            self.insert_writes(insert, k);
        }
        let scope = Scope::new(vec![target.clone()], outer);
        if let Some(OnInsert::OnConflict(c)) = &insert.on {
            if let (Some(k), Some(ConflictTarget::Columns(columns))) = (k, &c.conflict_target) {
                for id in columns {
                    if let Some(which) = self.cx.targets[k].which(&fold(id)) {
                        if let Some(start) = self.offset(id.span.start) {
                            let end = self.token_end(start);
                            self.sites.conflicts.push(ConflictColumn {
                                target: k,
                                which,
                                start,
                                end,
                            });
                        }
                    }
                }
            }
            if let OnConflictAction::DoUpdate(update) = &c.action {
                let mut excluded = target.clone();
                excluded.name = Some("excluded".into());
                excluded.schema = None;
                let with_excluded = Scope::new(vec![target, excluded], outer);
                self.assignments(&update.assignments, k, &with_excluded);
                if let Some(e) = &update.selection {
                    self.expr(e, &with_excluded);
                }
            }
        }
        match &insert.returning {
            Some(items) => {
                let names = self.projection(items, &scope);
                output_columns(items, &scope, &names)
            }
            None => Columns::Known(Vec::new()),
        }
    }

    /// The writes of an INSERT into migrating table `k`: one per migrating
    /// column its list names, or what it leaves implied.
    fn insert_writes(&mut self, insert: &Insert, k: usize) {
        let named: Vec<(usize, Which, &Ident)> = insert
            .columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let id = last_ident(c)?;
                self.cx.targets[k].which(&fold(id)).map(|w| (i, w, id))
            })
            .collect();
        if named.is_empty() {
            if let Some(implied) = self.implied(insert, k) {
                self.sites.implied.push(implied);
            }
            return;
        }
        // An added or a dropped column is written as it is: its values are
        // not needed (and may come from any query), only that it is named.
        let as_written = self.cx.targets[k].m.spec.one_sided().is_some();
        let rows = match as_written {
            true => Vec::new(),
            false => match self.source_rows(insert, k) {
                Some(rows) => rows,
                None => return,
            },
        };
        for (i, which, id) in named {
            self.sites.evidence[k][usize::from(which == Which::To)] += 1;
            let Some(start) = self.offset(id.span.start) else {
                self.refuse(k, "has a column whose position is unknown");
                return;
            };
            let mut values = Vec::new();
            for row in &rows {
                match row.get(i) {
                    Some(v) => values.push(v.clone()),
                    None => {
                        self.refuse(k, "has VALUES rows (or a select list) whose length differs from the column list");
                        return;
                    }
                }
            }
            let end = self.token_end(start);
            self.sites.writes.push(Write {
                target: k,
                which,
                column: (start, end),
                assign: false,
                values,
            });
        }
    }

    /// An INSERT's rows of values: its VALUES rows, or its SELECT list as
    /// one row; `None` (refused) for anything else.
    fn source_rows(&mut self, insert: &Insert, k: usize) -> Option<Vec<Vec<Value>>> {
        let Some(source) = insert.source.as_deref() else {
            self.refuse(k, "inserts DEFAULT VALUES while naming a migrating column");
            return None;
        };
        match source.body.as_ref() {
            SetExpr::Values(values) => {
                let mut rows = Vec::new();
                for row in &values.rows {
                    let items = self
                        .offset(row.opening_token.0.span.start)
                        .and_then(|open| list_items(self.cx.tokens, open))
                        .filter(|items| items.len() == row.content.len());
                    let Some(items) = items else {
                        self.refuse(k, "has a VALUES row pgshift cannot split into its items");
                        return None;
                    };
                    rows.push(
                        items
                            .into_iter()
                            .zip(&row.content)
                            .map(|(range, e)| value(range, e))
                            .collect(),
                    );
                }
                Some(rows)
            }
            SetExpr::Select(select) => self.select_row(select, k).map(|row| vec![row]),
            _ => {
                self.refuse(k, "inserts from a set operation into a migrating column; insert from each query on its own, or from a plain SELECT or VALUES");
                None
            }
        }
    }

    /// INSERT … SELECT: the select list's items as the one row of values
    /// (an item's alias is not part of its value).
    fn select_row(&mut self, select: &Select, k: usize) -> Option<Vec<Value>> {
        let items = self
            .offset(select.select_token.0.span.start)
            .and_then(|open| super::text::select_items(self.cx.tokens, open))
            .filter(|items| items.len() == select.projection.len());
        let Some(items) = items else {
            self.refuse(
                k,
                "has an INSERT … SELECT whose select list pgshift cannot split",
            );
            return None;
        };
        let mut row = Vec::new();
        for ((start, end), item) in items.into_iter().zip(&select.projection) {
            match item {
                SelectItem::UnnamedExpr(e) => row.push(value((start, end), e)),
                SelectItem::ExprWithAlias { expr, alias } => {
                    let alias_at = self.offset(alias.span.start)?;
                    let tokens = self.cx.tokens;
                    let before = tokens[..tokens.partition_point(|t| t.start < alias_at)]
                        .iter()
                        .rev()
                        .find(|t| t.end <= alias_at && !is_word(&t.token, "as"))?;
                    row.push(value((start, before.end.max(start)), expr));
                }
                _ => {
                    self.refuse(
                        k,
                        "inserts from SELECT * into a migrating table; list the columns",
                    );
                    return None;
                }
            }
        }
        Some(row)
    }

    /// What an INSERT that leaves `k`'s columns implied looks like, for the
    /// planner to complete.
    fn implied(&mut self, insert: &Insert, k: usize) -> Option<Implied> {
        let TableObject::TableName(name) = &insert.table else {
            return None;
        };
        // After the table name and its alias.
        let last = match &insert.table_alias {
            Some(a) => &a.alias,
            None => last_ident(name)?,
        };
        let at = self.offset(last.span.start)?;
        let i = self.token_at(at)?;
        let Some(after) = self.cx.tokens.get(i + 1) else {
            self.refuse(k, "has an INSERT pgshift cannot read");
            return None;
        };
        let list_close = insert
            .columns
            .last()
            .and_then(last_ident)
            .and_then(|id| self.offset(id.span.start))
            .and_then(|start| {
                let j = self.token_at(start)?;
                let close = self.cx.tokens.get(j + 1)?;
                (close.token == Token::RParen).then_some(close.start)
            });
        if !insert.columns.is_empty() && list_close.is_none() {
            self.refuse(k, "has an INSERT column list pgshift cannot place");
            return None;
        }
        let source = match insert.source.as_deref().map(|q| q.body.as_ref()) {
            None => {
                let next = self.cx.tokens.get(i + 2);
                match next {
                    Some(v) if is_word(&after.token, "default") && is_word(&v.token, "values") => {
                        ImpliedSource::DefaultValues(after.start, v.end)
                    }
                    _ => {
                        self.refuse(k, "has an INSERT pgshift cannot read");
                        return None;
                    }
                }
            }
            Some(SetExpr::Values(values)) => {
                let closes: Option<Vec<usize>> = values
                    .rows
                    .iter()
                    .map(|row| {
                        self.offset(row.closing_token.0.span.start).filter(|&at| {
                            self.cx
                                .tokens
                                .iter()
                                .any(|t| t.start == at && t.token == Token::RParen)
                        })
                    })
                    .collect();
                let Some(closes) = closes else {
                    self.refuse(k, "has a VALUES row pgshift cannot place");
                    return None;
                };
                ImpliedSource::Values {
                    width: values.rows.first().map_or(0, |r| r.content.len()),
                    closes,
                }
            }
            Some(_) => ImpliedSource::Query,
        };
        let (rows, row_ends) = match self.cx.targets[k].m.spec.added.as_ref() {
            Some(a) if a.up.is_some() => self.rows_and_ends(insert, k, &source)?,
            _ => (Vec::new(), Vec::new()),
        };
        Some(Implied {
            target: k,
            after_target: after.start,
            columns: insert
                .columns
                .iter()
                .filter_map(last_ident)
                .map(fold)
                .collect(),
            list_close,
            source,
            rows,
            row_ends,
        })
    }

    /// An INSERT's rows of values and where a value appended to each goes
    /// (before a VALUES row's `)`, after the select list's last item).
    fn rows_and_ends(
        &mut self,
        insert: &Insert,
        k: usize,
        source: &ImpliedSource,
    ) -> Option<(Vec<Vec<Value>>, Vec<usize>)> {
        match source {
            ImpliedSource::DefaultValues(..) => Some((Vec::new(), Vec::new())),
            ImpliedSource::Values { closes, .. } => {
                let rows = self.source_rows(insert, k)?;
                Some((rows, closes.clone()))
            }
            ImpliedSource::Query => {
                let select = match insert.source.as_deref().map(|q| q.body.as_ref()) {
                    Some(SetExpr::Select(select)) => select,
                    _ => {
                        self.refuse(k, "inserts from a set operation into a table whose new column is given by up over the row; insert from each query on its own");
                        return None;
                    }
                };
                let end = self
                    .offset(select.select_token.0.span.start)
                    .and_then(|open| super::text::select_items(self.cx.tokens, open))
                    .and_then(|items| items.last().map(|&(_, end)| end));
                let row = self.select_row(select, k)?;
                let Some(end) = end else {
                    self.refuse(
                        k,
                        "has an INSERT … SELECT whose select list pgshift cannot split",
                    );
                    return None;
                };
                Some((vec![row], vec![end]))
            }
        }
    }

    fn update(&mut self, update: &Update, outer: Option<&Scope<'_>>) -> Columns {
        let mut scope = Scope::new(Vec::new(), outer);
        self.walk_from_item(&update.table, &mut scope, outer);
        let target = scope.relations.first().and_then(|r| r.migration);
        if let Some(UpdateTableFromKind::BeforeSet(from) | UpdateTableFromKind::AfterSet(from)) =
            &update.from
        {
            for twj in from {
                self.walk_from_item(twj, &mut scope, outer);
            }
        }
        self.assignments(&update.assignments, target, &scope);
        if let Some(e) = &update.selection {
            self.filter(e, &scope);
        }
        match &update.returning {
            Some(items) => {
                let names = self.projection(items, &scope);
                output_columns(items, &scope, &names)
            }
            None => Columns::Known(Vec::new()),
        }
    }

    /// `SET col = value, …` of an UPDATE or ON CONFLICT … DO UPDATE whose
    /// target is `target` (when migrating).
    fn assignments(
        &mut self,
        assignments: &[Assignment],
        target: Option<usize>,
        scope: &Scope<'_>,
    ) {
        for a in assignments {
            self.expr(&a.value, scope);
            let Some(k) = target else { continue };
            match &a.target {
                AssignmentTarget::ColumnName(name) => {
                    let Some(id) = last_ident(name) else { continue };
                    let Some(which) = self.cx.targets[k].which(&fold(id)) else {
                        continue;
                    };
                    let Some(start) = self.offset(id.span.start) else {
                        self.refuse(k, "has a SET target whose position is unknown");
                        continue;
                    };
                    let Some(t) = self.token_at(start) else {
                        continue;
                    };
                    match super::text::assignment_value(self.cx.tokens, t) {
                        Some(range) => {
                            self.sites.evidence[k][usize::from(which == Which::To)] += 1;
                            self.sites.writes.push(Write {
                                target: k,
                                which,
                                column: (start, self.cx.tokens[t].end),
                                assign: true,
                                values: vec![value(range, &a.value)],
                            });
                        }
                        None => self.refuse(k, "has a SET value pgshift cannot delimit"),
                    }
                }
                AssignmentTarget::Tuple(names) => {
                    let names_column = names
                        .iter()
                        .filter_map(last_ident)
                        .any(|id| self.cx.targets[k].which(&fold(id)).is_some());
                    if names_column {
                        self.refuse(k, "assigns a migrating column in a SET (…) = (…) tuple, which is not rewritten yet; assign the columns one by one");
                    }
                }
            }
        }
    }

    fn delete(&mut self, delete: &Delete, outer: Option<&Scope<'_>>) -> Columns {
        let mut scope = Scope::new(Vec::new(), outer);
        let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
        for twj in from.iter().chain(delete.using.iter().flatten()) {
            self.walk_from_item(twj, &mut scope, outer);
        }
        if let Some(e) = &delete.selection {
            self.filter(e, &scope);
        }
        match &delete.returning {
            Some(items) => {
                let names = self.projection(items, &scope);
                output_columns(items, &scope, &names)
            }
            None => Columns::Known(Vec::new()),
        }
    }

    // ---- positions -----------------------------------------------------

    fn offset(&self, at: sqlparser::tokenizer::Location) -> Option<usize> {
        self.cx.index.offset(at)
    }

    /// The end of the token starting at byte `start`.
    fn token_end(&self, start: usize) -> usize {
        self.token_at(start)
            .map_or(start, |i| self.cx.tokens[i].end)
    }

    /// The index of the token starting at byte `start` (tokens are in
    /// order: a binary search).
    fn token_at(&self, start: usize) -> Option<usize> {
        super::text::token_index(self.cx.tokens, start)
    }

    /// Where a projection item that holds the reference `idents` (within
    /// `e`) ends: the reference itself, or the whole wrapped item.
    fn item_end(&self, e: &Expr, idents: &[Ident]) -> usize {
        let last = idents.last().and_then(|id| self.offset(id.span.start));
        let Some(last) = last else { return 0 };
        match e {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => self.token_end(last),
            _ => {
                let at = self.token_at(last).unwrap_or(0);
                super::text::item_end(self.cx.tokens, at)
            }
        }
    }
}

/// The visitor that finds column references and subqueries in a node:
/// references at this block's level resolve in `scope`; a subquery is
/// walked as a block nested in it (its inside is then skipped here).
struct ExprVisitor<'w, 'c, 'a, 's, 'p> {
    walker: &'w mut Walker<'c, 'a>,
    scope: &'s Scope<'p>,
    /// Queries entered below the node walked.
    nested: usize,
}

impl Visitor for ExprVisitor<'_, '_, '_, '_, '_> {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if self.nested == 0 {
            self.walker.query(query, Some(self.scope));
        }
        self.nested += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        self.nested -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if self.nested > 0 {
            return ControlFlow::Continue(());
        }
        match expr {
            Expr::Identifier(id) if !self.skipped(id) => {
                self.walker
                    .column(std::slice::from_ref(id), self.scope, Use::Read);
            }
            Expr::CompoundIdentifier(ids) if !ids.first().is_some_and(|id| self.skipped(id)) => {
                self.walker.column(ids, self.scope, Use::Read);
            }
            Expr::CompoundFieldAccess { access_chain, .. } => {
                for access in access_chain {
                    if let sqlparser::ast::AccessExpr::Dot(Expr::Identifier(id)) = access {
                        if let Some(at) = self.walker.offset(id.span.start) {
                            self.walker.skip.insert(at);
                        }
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

impl ExprVisitor<'_, '_, '_, '_, '_> {
    fn skipped(&self, id: &Ident) -> bool {
        self.walker
            .offset(id.span.start)
            .is_some_and(|at| self.walker.skip.contains(&at))
    }
}

// ---- the syntax tree's pieces ------------------------------------------------

/// An identifier as Postgres stores it: quoted verbatim, unquoted folded.
pub fn fold(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn ident_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .filter_map(|p| match p {
            ObjectNamePart::Identifier(id) => Some(fold(id)),
            _ => None,
        })
        .collect()
}

fn last_ident(name: &ObjectName) -> Option<&Ident> {
    match name.0.last()? {
        ObjectNamePart::Identifier(id) => Some(id),
        _ => None,
    }
}

fn is_word(token: &Token, word: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

/// A column reference alone: its identifiers.
fn plain_column(e: &Expr) -> Option<&[Ident]> {
    match e {
        Expr::Identifier(id) => Some(std::slice::from_ref(id)),
        Expr::CompoundIdentifier(ids) => Some(ids),
        _ => None,
    }
}

/// A projection item that is a column reference, possibly wrapped in casts
/// and parentheses (its output name is still the column's): its
/// identifiers and whether it is wrapped.
fn bare(e: &Expr) -> Option<(&[Ident], bool)> {
    let mut core = e;
    let mut wrapped = false;
    while let Expr::Cast { expr, .. } | Expr::Nested(expr) = core {
        core = expr;
        wrapped = true;
    }
    plain_column(core).map(|ids| (ids, wrapped))
}

fn is_comparison(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Eq
            | BinaryOperator::NotEq
            | BinaryOperator::Lt
            | BinaryOperator::Gt
            | BinaryOperator::LtEq
            | BinaryOperator::GtEq
    )
}

fn groups(select: &Select) -> bool {
    match &select.group_by {
        GroupByExpr::All(_) => true,
        GroupByExpr::Expressions(exprs, _) => !exprs.is_empty(),
    }
}

/// The output name Postgres gives an unaliased expression (FigureColname).
fn figure_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(id) => fold(id),
        Expr::CompoundIdentifier(ids) => ids.last().map(fold).unwrap_or_default(),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => figure_name(expr),
        Expr::Function(f) => last_ident(&f.name).map(fold).unwrap_or_default(),
        Expr::Case { .. } => "case".into(),
        Expr::Exists { .. } => "exists".into(),
        Expr::Array(_) => "array".into(),
        _ => "?column?".into(),
    }
}

/// A block's output columns, from its projection's names (`None`: a `*`).
fn output_columns(items: &[SelectItem], scope: &Scope<'_>, names: &[Option<String>]) -> Columns {
    let mut out = Vec::new();
    let mut known = true;
    for (item, name) in items.iter().zip(names) {
        match (item, name) {
            (_, Some(n)) => out.push(n.clone()),
            (SelectItem::Wildcard(_), None) => match all_columns(scope) {
                Columns::Known(c) => out.extend(c),
                Columns::Unknown(c) => {
                    out.extend(c);
                    known = false;
                }
            },
            (
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(q), _),
                None,
            ) => {
                let q = last_ident(q).map(fold);
                match scope
                    .relations
                    .iter()
                    .find(|r| r.name == q)
                    .map(|r| &r.columns)
                {
                    Some(Columns::Known(c)) => out.extend(c.iter().cloned()),
                    _ => known = false,
                }
            }
            _ => known = false,
        }
    }
    if known {
        Columns::Known(out)
    } else {
        Columns::Unknown(out)
    }
}

/// Every column of a block's relations, as `*` lists them (columns merged
/// by USING first, once).
fn all_columns(scope: &Scope<'_>) -> Columns {
    let mut out: Vec<String> = scope.merged.clone();
    let mut known = true;
    for r in &scope.relations {
        match &r.columns {
            Columns::Known(c) => {
                out.extend(c.iter().filter(|c| !scope.merged.contains(c)).cloned())
            }
            Columns::Unknown(c) => {
                out.extend(c.iter().cloned());
                known = false;
            }
        }
    }
    if known {
        Columns::Known(out)
    } else {
        Columns::Unknown(out)
    }
}

/// `columns` renamed by an alias list (which may be shorter).
fn rename(columns: Columns, aliases: &[String]) -> Columns {
    if aliases.is_empty() {
        return columns;
    }
    let rename = |mut c: Vec<String>| {
        for (i, a) in aliases.iter().enumerate() {
            match c.get_mut(i) {
                Some(slot) => *slot = a.clone(),
                None => c.push(a.clone()),
            }
        }
        c
    };
    match columns {
        Columns::Known(c) => Columns::Known(rename(c)),
        Columns::Unknown(c) => Columns::Unknown(rename(c)),
    }
}

/// The output names of a query's first (non-recursive) term, read from
/// its select list alone.
fn first_term_names(q: &Query) -> Columns {
    let mut body = q.body.as_ref();
    loop {
        match body {
            SetExpr::SetOperation { left, .. } => body = left,
            SetExpr::Query(inner) => body = inner.body.as_ref(),
            SetExpr::Select(select) => {
                let mut names = Vec::new();
                for item in &select.projection {
                    match item {
                        SelectItem::UnnamedExpr(e) => names.push(figure_name(e)),
                        SelectItem::ExprWithAlias { alias, .. } => names.push(fold(alias)),
                        _ => return Columns::Unknown(names),
                    }
                }
                return Columns::Known(names);
            }
            _ => return Columns::Unknown(Vec::new()),
        }
    }
}

/// A function in FROM: named by its alias (or its own name); its columns
/// are the alias list's, or one named like the relation (a scalar
/// function), or unknown.
fn function_relation(alias: Option<&sqlparser::ast::TableAlias>, own: Option<String>) -> Relation {
    let name = alias.map(|a| fold(&a.name)).or(own);
    let columns = match alias {
        Some(a) if !a.columns.is_empty() => {
            Columns::Known(a.columns.iter().map(|c| fold(&c.name)).collect())
        }
        _ => Columns::Unknown(name.clone().into_iter().collect()),
    };
    Relation::other(name, columns)
}

/// What matters about a value written to a migrating column.
fn value(range: (usize, usize), e: &Expr) -> Value {
    struct Facts {
        volatile: Option<String>,
    }
    impl Visitor for Facts {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e {
                let name = last_ident(&f.name).map(fold).unwrap_or_default();
                if self.volatile.is_none() && !is_deterministic_function(&name) {
                    self.volatile = Some(f.name.to_string());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let mut facts = Facts { volatile: None };
    let _ = e.visit(&mut facts);
    let mut core = e;
    while let Expr::Nested(inner) = core {
        core = inner;
    }
    Value {
        range,
        volatile: facts.volatile,
        default: matches!(core, Expr::Identifier(id) if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default")),
        untyped: matches!(core, Expr::Value(v) if matches!(
            v.value,
            sqlparser::ast::Value::Placeholder(_) | sqlparser::ast::Value::SingleQuotedString(_)
        )),
    }
}

/// Functions (and aggregates) that give the same result for the same
/// arguments within a statement, so a value using them can be written to
/// both columns.
fn is_deterministic_function(name: &str) -> bool {
    const DETERMINISTIC: &[&str] = &[
        "abs",
        "avg",
        "btrim",
        "ceil",
        "ceiling",
        "char_length",
        "coalesce",
        "concat",
        "concat_ws",
        "count",
        "current_date",
        "current_role",
        "current_schema",
        "current_time",
        "current_timestamp",
        "current_user",
        "date_trunc",
        "extract",
        "floor",
        "format",
        "greatest",
        "initcap",
        "jsonb_build_array",
        "jsonb_build_object",
        "jsonb_set",
        "json_build_array",
        "json_build_object",
        "least",
        "left",
        "length",
        "localtime",
        "localtimestamp",
        "lower",
        "ltrim",
        "make_date",
        "max",
        "md5",
        "min",
        "mod",
        "now",
        "nullif",
        "power",
        "regexp_replace",
        "replace",
        "right",
        "round",
        "rtrim",
        "session_user",
        "sign",
        "split_part",
        "sqrt",
        "statement_timestamp",
        "substr",
        "substring",
        "sum",
        "to_char",
        "to_json",
        "to_jsonb",
        "to_number",
        "to_timestamp",
        "transaction_timestamp",
        "trim",
        "trunc",
        "upper",
        "user",
    ];
    DETERMINISTIC.contains(&name)
}
/// What a LATERAL subquery or a function in FROM sees: the FROM items
/// before it, and the blocks around.
fn view_from<'p>(scope: &Scope<'_>, outer: Option<&'p Scope<'p>>) -> Scope<'p> {
    Scope {
        relations: scope.relations.clone(),
        merged: scope.merged.clone(),
        parent: outer,
    }
}
