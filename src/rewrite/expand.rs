//! Making explicit what Postgres would resolve from the catalog, before a
//! statement on a migrating table is planned: `*` and `t.*` in a SELECT list
//! or RETURNING become the table's columns (both migrating columns among
//! them, as DESIGN.md's invariant 3 asks), an INSERT without a column list
//! gets the old shape's column list, and an INSERT that names neither
//! migrating column gets the old column with its default, so that both
//! columns receive the same value. The result is ordinary SQL that the
//! planner then rewrites like any other statement.
//!
//! Column order of an expanded `*`: the table's columns in position order;
//! the new column, while it does not exist yet, comes last (where
//! `ADD COLUMN` will put it); the old column, once dropped, comes where it
//! stood (recorded at `contract`), or just before the new one when that is
//! not known.
//!
//! What cannot be expanded exactly — a `*` inside a subquery, CTE or set
//! operation, over a join with USING or NATURAL, over a table the catalog
//! snapshot does not know — is refused.

use sqlparser::ast::{
    FromTable, JoinConstraint, JoinOperator, ObjectName, ObjectNamePart, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor, TableObject, TableWithJoins,
    UpdateTableFromKind,
};
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::Token;

use super::catalog::{is_constant_expression, Catalog, TableDef};
use super::migration::{quote_ident, MigrationSpec};
use super::plan::{fold, is_keyword, is_wildcard_context, names, split_statements};
use super::rules::ActiveMigration;
use super::text::{splice, Edit, LineIndex, Tok};

/// A refusal: the index (in the relevant migrations) and the reason.
pub(super) type Refusal = (usize, String);

/// Whether `expand` has anything to look at (cheap token test).
pub(super) fn may_need_expansion(tokens: &[Tok]) -> bool {
    tokens.iter().enumerate().any(|(i, t)| {
        (t.token == Token::Mul && i > 0 && is_wildcard_context(&tokens[i - 1].token))
            || is_keyword(&t.token, Keyword::INSERT)
            || (i == 0 && is_keyword(&t.token, Keyword::TABLE))
    })
}

/// `TABLE t` (which pgshift's parser does not read) is refused: it means
/// `SELECT * FROM t`, which the client can send instead.
pub(super) fn table_command(tokens: &[Tok]) -> Option<String> {
    let first = tokens.first()?;
    is_keyword(&first.token, Keyword::TABLE)
        .then(|| "reads every column (TABLE); send SELECT * FROM instead".to_string())
}

/// The statement text with wildcards and implied INSERT columns over the
/// `relevant` migrations' tables made explicit; `None` when there is
/// nothing to expand.
pub(super) fn expand(
    sql: &str,
    tokens: &[Tok],
    statements: &[Statement],
    relevant: &[&ActiveMigration],
    catalog: &Catalog,
) -> Result<Option<String>, Refusal> {
    let segments = split_statements(tokens);
    if segments.len() != statements.len() {
        return Err((0, "could not be split into its statements".into()));
    }
    let index = LineIndex::new(sql);
    let mut edits = Vec::new();
    for (statement, range) in statements.iter().zip(segments) {
        let toks = &tokens[range];
        let mentioned: Vec<usize> = (0..relevant.len())
            .filter(|&k| {
                toks.iter()
                    .any(|t| names(&t.token, &relevant[k].spec.table.name))
            })
            .collect();
        if mentioned.is_empty() {
            continue;
        }
        let mut x = Expander {
            sql,
            index: &index,
            toks,
            relevant,
            catalog,
            edits: &mut edits,
            handled: Vec::new(),
        };
        x.statement(statement, &mentioned)?;
        let wildcards = (1..toks.len())
            .filter(|&i| toks[i].token == Token::Mul && is_wildcard_context(&toks[i - 1].token));
        for i in wildcards {
            if !x.handled.contains(&toks[i].start) {
                return Err((
                    mentioned[0],
                    "selects * (all columns) in a subquery, CTE, set operation or statement that pgshift does not expand; list the columns".into(),
                ));
            }
        }
    }
    if edits.is_empty() {
        return Ok(None);
    }
    match splice(sql, &mut edits) {
        Some(text) => Ok(Some(text)),
        None => Err((0, "needs overlapping rewrites".into())),
    }
}

/// One table in scope of a `*`: the qualifier it is known by and, for a
/// migrating table, which migration.
struct InScope {
    qualifier: String,
    target: Option<usize>,
}

struct Expander<'a> {
    sql: &'a str,
    index: &'a LineIndex<'a>,
    toks: &'a [Tok],
    relevant: &'a [&'a ActiveMigration],
    catalog: &'a Catalog,
    edits: &'a mut Vec<Edit>,
    /// Byte offsets of the wildcard tokens accounted for.
    handled: Vec<usize>,
}

impl Expander<'_> {
    fn statement(&mut self, statement: &Statement, mentioned: &[usize]) -> Result<(), Refusal> {
        let refuse_any = mentioned[0];
        match statement {
            Statement::Query(query) => {
                if query.with.is_some() {
                    return Ok(()); // wildcards in it stay unhandled: refused
                }
                if let SetExpr::Select(select) = query.body.as_ref() {
                    let scope = self.scope_of(&select.from, refuse_any)?;
                    self.projection(&select.projection, &scope, has_using(&select.from))?;
                }
            }
            Statement::Insert(insert) => {
                let TableObject::TableName(name) = &insert.table else {
                    return Ok(());
                };
                let target = self.target_of(name);
                let qualifier = insert
                    .table_alias
                    .as_ref()
                    .map(|a| fold(&a.alias))
                    .or_else(|| last_part(name))
                    .unwrap_or_default();
                if let Some(k) = target {
                    self.insert_columns(insert, name, k)?;
                }
                let scope = vec![InScope { qualifier, target }];
                self.projection(
                    insert.returning.as_deref().unwrap_or_default(),
                    &scope,
                    false,
                )?;
            }
            Statement::Update(update) => {
                let mut from = vec![update.table.clone()];
                if let Some(
                    UpdateTableFromKind::BeforeSet(more) | UpdateTableFromKind::AfterSet(more),
                ) = &update.from
                {
                    from.extend(more.iter().cloned());
                }
                let scope = self.scope_of(&from, refuse_any)?;
                self.projection(
                    update.returning.as_deref().unwrap_or_default(),
                    &scope,
                    has_using(&from),
                )?;
            }
            Statement::Delete(delete) => {
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) =
                    &delete.from;
                let mut all = from.clone();
                all.extend(delete.using.iter().flatten().cloned());
                let scope = self.scope_of(&all, refuse_any)?;
                self.projection(
                    delete.returning.as_deref().unwrap_or_default(),
                    &scope,
                    has_using(&all),
                )?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Which relevant migration's table `name` is, if any.
    fn target_of(&self, name: &ObjectName) -> Option<usize> {
        let parts = ident_parts(name);
        self.relevant.iter().position(|m| match parts.as_slice() {
            [table] => *table == m.spec.table.name,
            [schema, table] => *schema == m.spec.table.schema && *table == m.spec.table.name,
            _ => false,
        })
    }

    fn scope_of(
        &self,
        from: &[TableWithJoins],
        refuse_any: usize,
    ) -> Result<Vec<InScope>, Refusal> {
        let mut out = Vec::new();
        for twj in from {
            for factor in
                std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation))
            {
                let entry = match factor {
                    TableFactor::Table { name, alias, .. } => InScope {
                        qualifier: alias
                            .as_ref()
                            .map(|a| fold(&a.name))
                            .or_else(|| last_part(name))
                            .unwrap_or_default(),
                        target: self.target_of(name),
                    },
                    TableFactor::Derived { alias: Some(a), .. }
                    | TableFactor::Function { alias: Some(a), .. }
                    | TableFactor::UNNEST { alias: Some(a), .. }
                    | TableFactor::TableFunction { alias: Some(a), .. } => InScope {
                        qualifier: fold(&a.name),
                        target: None,
                    },
                    TableFactor::NestedJoin { .. } => {
                        return Err((refuse_any, "selects * over a parenthesized join, which pgshift does not expand; list the columns".into()))
                    }
                    _ => InScope {
                        qualifier: String::new(),
                        target: None,
                    },
                };
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Expands the wildcards of a SELECT list or RETURNING list.
    fn projection(
        &mut self,
        items: &[SelectItem],
        scope: &[InScope],
        using: bool,
    ) -> Result<(), Refusal> {
        for item in items {
            match item {
                SelectItem::Wildcard(options) => {
                    let Some(star) = self.index.offset(options.wildcard_token.0.span.start) else {
                        continue;
                    };
                    self.handled.push(star);
                    let Some(k) = scope.iter().find_map(|s| s.target) else {
                        continue; // no migrating table under this *
                    };
                    if using {
                        return Err((k, "selects * over a join with USING or NATURAL, which pgshift does not expand; list the columns".into()));
                    }
                    let mut parts = Vec::new();
                    for s in scope {
                        if s.qualifier.is_empty() {
                            return Err((k, "selects * over a table expression without an alias, which pgshift does not expand; list the columns".into()));
                        }
                        parts.push(match s.target {
                            Some(k) => self.columns_of(k, &s.qualifier)?,
                            None => format!("{}.*", quote_ident(&s.qualifier)),
                        });
                    }
                    self.edits.push(Edit {
                        start: star,
                        end: star + 1,
                        text: parts.join(", "),
                    });
                }
                SelectItem::QualifiedWildcard(kind, options) => {
                    let Some(star) = self.index.offset(options.wildcard_token.0.span.start) else {
                        continue;
                    };
                    self.handled.push(star);
                    let SelectItemQualifiedWildcardKind::ObjectName(name) = kind else {
                        continue;
                    };
                    let Some(qualifier) = last_part(name) else {
                        continue;
                    };
                    let Some(k) = scope
                        .iter()
                        .find(|s| s.qualifier == qualifier)
                        .and_then(|s| s.target)
                    else {
                        continue;
                    };
                    let start = match name.0.first() {
                        Some(ObjectNamePart::Identifier(id)) => self.index.offset(id.span.start),
                        _ => None,
                    };
                    let Some(start) = start else {
                        return Err((
                            k,
                            "selects t.* with a qualifier pgshift cannot place".into(),
                        ));
                    };
                    let text = self.columns_of(k, &qualifier)?;
                    self.edits.push(Edit {
                        start,
                        end: star + 1,
                        text,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn table_def(&self, k: usize) -> Result<&TableDef, Refusal> {
        let spec = &self.relevant[k].spec;
        self.catalog
            .table(Some(&spec.table.schema), &spec.table.name)
            .ok_or_else(|| {
                (
                    k,
                    format!(
                        "needs the column list of {} (for *, or an INSERT's implied columns), which is not in pgshift's catalog snapshot (not read yet, or the table is new: send SIGHUP)",
                        spec.table
                    ),
                )
            })
    }

    /// `q.c1, q.a, …, q.b`: every column the client sees under `*`.
    fn columns_of(&self, k: usize, qualifier: &str) -> Result<String, Refusal> {
        let spec = &self.relevant[k].spec;
        let def = self.table_def(k)?;
        let has_old = def.has_column(&spec.from);
        let has_new = def.has_column(&spec.to);
        let mut names: Vec<&str> = def.columns.iter().map(|c| c.name.as_str()).collect();
        if !has_old {
            names.insert(old_position(spec, def), &spec.from);
        }
        if !has_new {
            names.push(&spec.to);
        }
        let q = quote_ident(qualifier);
        Ok(names
            .iter()
            .map(|c| format!("{q}.{}", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", "))
    }

    /// The old shape's columns in order: the table's, without the new
    /// column, with the old one where it is (or where the new one is, once
    /// the old one is dropped).
    fn old_shape_columns(&self, k: usize) -> Result<Vec<String>, Refusal> {
        let spec = &self.relevant[k].spec;
        let def = self.table_def(k)?;
        let mut names: Vec<String> = def.columns.iter().map(|c| c.name.clone()).collect();
        if !def.has_column(&spec.from) {
            names.insert(old_position(spec, def), spec.from.clone());
        }
        Ok(names.into_iter().filter(|c| *c != spec.to).collect())
    }

    /// Column list for an INSERT without one, and the old column with its
    /// default for an INSERT that names neither migrating column.
    fn insert_columns(
        &mut self,
        insert: &sqlparser::ast::Insert,
        name: &ObjectName,
        k: usize,
    ) -> Result<(), Refusal> {
        let m = self.relevant[k];
        let spec = &m.spec;
        if !m.phase.has_new() {
            return Ok(()); // only `a` exists: Postgres resolves it alone
        }
        let names_column = insert
            .columns
            .iter()
            .any(|c| last_part(c).is_some_and(|n| n == spec.from || n == spec.to));
        if names_column {
            return Ok(());
        }
        let rows = match insert.source.as_deref().map(|q| q.body.as_ref()) {
            Some(SetExpr::Values(values)) => Some(&values.rows),
            Some(_) => {
                return Err((k, format!(
                    "inserts from a query without naming {} or {}; list the columns, including the migrating one",
                    quote_ident(&spec.from),
                    quote_ident(&spec.to)
                )))
            }
            None => None, // DEFAULT VALUES
        };
        // The old column's default, written to both columns through the
        // planner when the insert leaves both out.
        let fill = |this: &Self| -> Result<String, Refusal> {
            if !m.phase.has_old() {
                return Ok(String::new());
            }
            let def = this.table_def(k)?;
            match def.column(&spec.from).and_then(|c| c.default.as_deref()) {
                None => Ok("NULL".into()),
                Some(d) if is_constant_expression(d) => Ok(d.to_string()),
                Some(d) => Err((k, format!(
                    "inserts without naming {} or {}, and its default {d} may give a different value each time it is evaluated; write the column's value explicitly",
                    quote_ident(&spec.from),
                    quote_ident(&spec.to)
                ))),
            }
        };
        let Some(name_end) = name_end_token(self.toks, self.index, name) else {
            return Err((k, "has an INSERT target pgshift cannot place".into()));
        };
        let Some(rows) = rows else {
            // INSERT INTO t DEFAULT VALUES
            let value = fill(self)?;
            if value.is_empty() {
                return Ok(());
            }
            let at = after_alias(self.toks, name_end);
            let (Some(d), Some(v)) = (self.toks.get(at), self.toks.get(at + 1)) else {
                return Err((k, "has an INSERT pgshift cannot read".into()));
            };
            if !(is_keyword(&d.token, Keyword::DEFAULT) && is_keyword(&v.token, Keyword::VALUES)) {
                return Err((k, "has an INSERT pgshift cannot read".into()));
            }
            self.edits.push(Edit {
                start: d.start,
                end: v.end,
                text: format!("({}) VALUES ({value})", quote_ident(&spec.from)),
            });
            return Ok(());
        };
        let width = rows.first().map_or(0, |r| r.content.len());
        if rows.iter().any(|r| r.content.len() != width) {
            return Ok(()); // Postgres rejects it itself
        }
        let mut appended_value = None;
        if insert.columns.is_empty() {
            let def = self.table_def(k)?;
            let position_known = match spec.old_after.as_deref() {
                Some(after) => after.is_empty() || def.has_column(after),
                None => false,
            };
            if !def.has_column(&spec.from) && !position_known {
                return Err((k, format!(
                    "inserts without a column list after {} was dropped, when its place among the columns is no longer known; list the columns",
                    quote_ident(&spec.from)
                )));
            }
            let columns = self.old_shape_columns(k)?;
            if width > columns.len() {
                return Err((k, format!(
                    "inserts {width} values without a column list into a table whose columns (in the old shape) are {}; list the columns",
                    columns.len()
                )));
            }
            let mut list: Vec<String> = columns[..width].iter().map(|c| quote_ident(c)).collect();
            if !columns[..width].contains(&spec.from) && m.phase.has_old() {
                list.push(quote_ident(&spec.from));
                appended_value = Some(fill(self)?);
            }
            let at = after_alias(self.toks, name_end);
            let Some(source) = self.toks.get(at) else {
                return Err((k, "has an INSERT pgshift cannot read".into()));
            };
            self.edits.push(Edit {
                start: source.start,
                end: source.start,
                text: format!("({}) ", list.join(", ")),
            });
        } else {
            let value = fill(self)?;
            if value.is_empty() {
                return Ok(());
            }
            // Before the `)` that closes the column list.
            let last = insert.columns.last().and_then(|c| match c.0.last() {
                Some(ObjectNamePart::Identifier(id)) => self.index.offset(id.span.start),
                _ => None,
            });
            let close = last.and_then(|start| {
                let i = self.toks.iter().position(|t| t.start == start)?;
                let close = self.toks.get(i + 1)?;
                (close.token == Token::RParen).then_some(close.start)
            });
            let Some(close) = close else {
                return Err((k, "has an INSERT column list pgshift cannot place".into()));
            };
            self.edits.push(Edit {
                start: close,
                end: close,
                text: format!(", {}", quote_ident(&spec.from)),
            });
            appended_value = Some(value);
        }
        if let Some(value) = appended_value {
            for row in rows {
                let close = self
                    .index
                    .offset(row.closing_token.0.span.start)
                    .filter(|&at| self.sql.as_bytes().get(at) == Some(&b')'))
                    .ok_or_else(|| (k, "has a VALUES row pgshift cannot place".to_string()))?;
                self.edits.push(Edit {
                    start: close,
                    end: close,
                    text: format!(", {value}"),
                });
            }
        }
        Ok(())
    }
}

/// Index of the last token of a table name in `toks`.
fn name_end_token(toks: &[Tok], index: &LineIndex<'_>, name: &ObjectName) -> Option<usize> {
    let Some(ObjectNamePart::Identifier(id)) = name.0.last() else {
        return None;
    };
    let start = index.offset(id.span.start)?;
    toks.iter().position(|t| t.start == start)
}

/// The token after a table name and its optional `[AS] alias`.
fn after_alias(toks: &[Tok], name_end: usize) -> usize {
    let mut at = name_end + 1;
    if toks
        .get(at)
        .is_some_and(|t| is_keyword(&t.token, Keyword::AS))
    {
        at += 2;
    } else if toks
        .get(at)
        .is_some_and(|t| matches!(&t.token, Token::Word(w) if w.keyword == Keyword::NoKeyword))
    {
        at += 1;
    }
    at
}

fn has_using(from: &[TableWithJoins]) -> bool {
    from.iter().flat_map(|t| &t.joins).any(|j| {
        let constraint = match &j.join_operator {
            JoinOperator::Join(c)
            | JoinOperator::Inner(c)
            | JoinOperator::Left(c)
            | JoinOperator::LeftOuter(c)
            | JoinOperator::Right(c)
            | JoinOperator::RightOuter(c)
            | JoinOperator::FullOuter(c) => Some(c),
            _ => None,
        };
        matches!(
            constraint,
            Some(JoinConstraint::Using(_) | JoinConstraint::Natural)
        )
    })
}

/// Where the dropped old column goes among `def`'s columns: where it
/// stood (after the column recorded at contract, if that is still there),
/// else just before the new column.
fn old_position(spec: &MigrationSpec, def: &TableDef) -> usize {
    let before_new = def
        .columns
        .iter()
        .position(|c| c.name == spec.to)
        .unwrap_or(def.columns.len());
    match spec.old_after.as_deref() {
        Some("") => 0,
        Some(after) => def
            .columns
            .iter()
            .position(|c| c.name == after)
            .map_or(before_new, |i| i + 1),
        None => before_new,
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

fn last_part(name: &ObjectName) -> Option<String> {
    match name.0.last()? {
        ObjectNamePart::Identifier(id) => Some(fold(id)),
        _ => None,
    }
}
