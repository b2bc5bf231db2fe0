//! Planning the rewrite of one statement text under the rules in force.
//!
//! A text that names a migrating table (per the fast path) is tokenized
//! (byte positions) and parsed (sqlparser's AST); each statement is walked
//! by [`super::resolve`], which resolves every column reference through
//! the scopes of its query blocks — tables, CTEs, derived tables, joins,
//! subqueries, set operations — in the client's shape, and reports what
//! concerns a migration. Two passes: `*` and an INSERT's implied columns
//! are spelled out first (the result is planned again), then
//! [`super::edits`] applies the phase table to every read and write, and
//! the edits are spliced into the original text, which otherwise stays
//! byte for byte.
//!
//! The shape: a statement is first read with both columns of a migrating
//! table in sight. When its own names settle the shape (it names only `b`,
//! say), or an unqualified name is ambiguous only because both columns are
//! in sight, it is read again in the shape that makes it valid — so in
//! `SELECT full_name, name FROM users JOIN orgs …` a new-shape client's
//! `name` is `orgs.name`, and is qualified so that it stays so on the
//! physical tables.
//!
//! What pgshift cannot rewrite safely is refused (SQLSTATE 0A000) with the
//! reason and what to send instead; an error Postgres itself would raise on
//! the client's shape (an ambiguous column) is raised as Postgres would.
//! COPY is planned from its tokens: `COPY … TO` as the query it reads, a
//! `COPY … FROM` only when it writes the one column that exists.

use sqlparser::ast::{CopySource, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use super::catalog::Catalog;
use super::migration::MigrationSpec;
use super::resolve::{self, Context, Sites, Target};
use super::rules::{ActiveMigration, Rules};
use super::scope::{Shape, Which};
use super::search_path::Resolved;
use super::text::{
    copy_table, folded, names, splice, split_statements, tokenize, tokenize_for_parser, LineIndex,
    Tok,
};
use super::{added, dropped, edits};

/// What to do with a statement text.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan<'r> {
    Unchanged,
    /// The new text, and the indices (in `Rules::migrations`) of the
    /// migrations whose rules changed it.
    Replaced {
        text: String,
        by: Vec<usize>,
    },
    /// Refused because of `migration`, for `reason` (completes "it …").
    Refused {
        migration: Option<&'r ActiveMigration>,
        reason: String,
    },
    /// The error Postgres itself would raise on the client's shape.
    Error {
        migration: Option<&'r ActiveMigration>,
        code: &'static str,
        message: String,
    },
}

fn refuse<'r>(m: &'r ActiveMigration, reason: impl Into<String>) -> Plan<'r> {
    Plan::Refused {
        migration: Some(m),
        reason: reason.into(),
    }
}

/// Whether a statement's mentions of a migrating table's name are that
/// table, given the session's search path.
enum Reference {
    /// Not the migrating table (or not named at all).
    None,
    Target,
    /// pgshift cannot tell, or the statement names both it and another
    /// table of the same name: refused.
    Ambiguous(String),
}

/// Classifies every mention of `spec`'s table name in `tokens`: `s.t` is
/// the migrating table when `s` is its schema; an unqualified `t` when the
/// session's search path resolves it there (always, while the catalog has
/// not been read or does not know the name); `t.col` is a qualifier and
/// says nothing.
fn references(tokens: &[Tok], spec: &MigrationSpec, catalog: &Catalog) -> Reference {
    let name = &spec.table.name;
    let (mut target, mut other) = (false, None);
    let mut unqualified = None;
    for (k, t) in tokens.iter().enumerate() {
        if !names(&t.token, name) {
            continue;
        }
        let prev = k.checked_sub(1).map(|j| &tokens[j].token);
        let next = tokens.get(k + 1).map(|t| &t.token);
        if prev == Some(&Token::Period) {
            match k.checked_sub(2).map(|j| &tokens[j].token) {
                Some(Token::Word(w)) => {
                    let schema = folded(w);
                    if schema == spec.table.schema {
                        target = true;
                    } else {
                        other = Some(schema);
                    }
                }
                _ => target = true,
            }
            continue;
        }
        if next == Some(&Token::Period) {
            continue;
        }
        let resolved = unqualified.get_or_insert_with(|| {
            if catalog.is_empty() || !catalog.holds(name) {
                return Some(spec.table.schema.clone());
            }
            match catalog.resolve(name) {
                Resolved::In(schema) => Some(schema.to_string()),
                Resolved::Missing => Some(String::new()),
                Resolved::Ambiguous => None,
            }
        });
        match resolved {
            Some(schema) if *schema == spec.table.schema => target = true,
            Some(schema) => other = Some(schema.clone()),
            None => return Reference::Ambiguous(format!(
                "names table {name} without a schema, several schemas hold a table of that name, and this session set its search_path in a way pgshift cannot follow (set_config with a computed value); schema-qualify the table"
            )),
        }
    }
    match (target, other) {
        (true, None) => Reference::Target,
        (false, _) => Reference::None,
        (true, Some(other)) => {
            let other = if other.is_empty() {
                format!("{name} (which no schema on this session's search_path holds)")
            } else {
                format!("{other}.{name}")
            };
            Reference::Ambiguous(format!(
                "names both the migrating table {}.{name} and {other}; pgshift cannot rewrite one without the other — schema-qualify both or split the statement",
                spec.table.schema
            ))
        }
    }
}

/// The migrations whose table `sql` names (as the session resolves it).
pub fn migrations_named(sql: &str, rules: &Rules) -> Vec<usize> {
    let Ok(tokens) = tokenize(sql) else {
        return Vec::new();
    };
    (0..rules.migrations.len())
        .filter(|&i| {
            rules.migrations[i].spec.renamed_to.is_none()
                && matches!(
                    references(&tokens, &rules.migrations[i].spec, &rules.catalog),
                    Reference::Target
                )
        })
        .collect()
}

/// What planning learned about a statement besides its plan, for the
/// engine's counters and the session's prepared statements.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Notes {
    /// Migrations (indices in `Rules::migrations`) whose old column the
    /// statement names: old-shape use, which holds a contract back.
    pub old_shape: Vec<usize>,
    /// Migrations that shape the statement's result: whose table's `*`
    /// the plan spelled out, or whose kept-name column it reads (the
    /// column's type is the session's shape's).
    pub stars: Vec<usize>,
}

/// Plans `sql` (which mentions a migrating table, per the fast path).
pub fn plan<'r>(sql: &str, rules: &'r Rules) -> Plan<'r> {
    plan_noting(sql, rules, &mut Notes::default())
}

/// [`plan`], noting what the statement names in `notes`.
pub fn plan_noting<'r>(sql: &str, rules: &'r Rules, notes: &mut Notes) -> Plan<'r> {
    plan_text(sql, rules, Some(notes))
}

/// Plans a text; `notes` is `Some` for the client's own text (not for the
/// text with `*` spelled out, planned in a second pass).
fn plan_text<'r>(sql: &str, rules: &'r Rules, mut notes: Option<&mut Notes>) -> Plan<'r> {
    let (tokens, raw) = match tokenize_for_parser(sql) {
        Ok(tokens) => tokens,
        Err(e) => return untokenizable(rules, e),
    };
    if rules.migrations.iter().any(|m| m.spec.renamed_to.is_some()) {
        if let Some(plan) = plan_renamed(sql, &tokens, rules, notes.as_deref_mut()) {
            return plan;
        }
    }
    let first = plan_layer(sql, tokens, raw, rules, notes.as_deref_mut(), 0);
    let layers = layers(rules);
    if layers == 1 {
        return first;
    }
    // Each further migration on a table planned over the text the ones
    // before it made (they move distinct columns).
    let (mut text, mut by) = match first {
        Plan::Unchanged => (None, Vec::new()),
        Plan::Replaced { text, by } => (Some(text), by),
        other => return other,
    };
    for layer in 1..layers {
        let current = text.as_deref().unwrap_or(sql);
        match plan_in_layer(current, rules, notes.as_deref_mut(), layer) {
            Plan::Unchanged => {}
            Plan::Replaced { text: t, by: more } => {
                text = Some(t);
                by.extend(
                    more.into_iter()
                        .filter(|i| !by.contains(i))
                        .collect::<Vec<_>>(),
                );
            }
            other => return other,
        }
    }
    match text {
        Some(text) => Plan::Replaced { text, by },
        None => Plan::Unchanged,
    }
}

fn untokenizable<'r>(rules: &'r Rules, e: impl std::fmt::Display) -> Plan<'r> {
    Plan::Refused {
        migration: rules.migrations.first(),
        reason: format!("cannot be tokenized ({e})"),
    }
}

/// How many migrations move columns of one table at most: the layers a
/// text is planned in, one migration of each table per layer.
fn layers(rules: &Rules) -> usize {
    (0..rules.migrations.len())
        .map(|i| layer_of(rules, i) + 1)
        .max()
        .unwrap_or(1)
}

/// Migration `i`'s layer: how many migrations before it (in the rules'
/// order) move columns of its table.
fn layer_of(rules: &Rules, i: usize) -> usize {
    let table = &rules.migrations[i].spec.table;
    rules.migrations[..i]
        .iter()
        .filter(|m| m.spec.renamed_to.is_none() && m.spec.table == *table)
        .count()
}

/// [`plan_layer`] of a text not tokenized yet.
fn plan_in_layer<'r>(
    sql: &str,
    rules: &'r Rules,
    notes: Option<&mut Notes>,
    layer: usize,
) -> Plan<'r> {
    match tokenize_for_parser(sql) {
        Ok((tokens, raw)) => plan_layer(sql, tokens, raw, rules, notes, layer),
        Err(e) => untokenizable(rules, e),
    }
}

/// Plans a text for the migrations of one layer (the first migration of
/// each table is layer 0, the second layer 1, …).
fn plan_layer<'r>(
    sql: &str,
    tokens: Vec<Tok>,
    raw: Vec<sqlparser::tokenizer::TokenWithSpan>,
    rules: &'r Rules,
    notes: Option<&mut Notes>,
    layer: usize,
) -> Plan<'r> {
    let mut relevant: Vec<usize> = Vec::new();
    for (i, m) in rules.migrations.iter().enumerate() {
        if m.spec.renamed_to.is_some() || layer_of(rules, i) != layer {
            continue; // renamed above, or planned in another layer
        }
        match references(&tokens, &m.spec, &rules.catalog) {
            Reference::None => {}
            Reference::Target => relevant.push(i),
            Reference::Ambiguous(reason) => return refuse(m, reason),
        }
    }
    let Some(&first) = relevant.first() else {
        return Plan::Unchanged;
    };
    let first = &rules.migrations[first];
    if !may_concern(&tokens, &relevant, rules) {
        return Plan::Unchanged;
    }
    let leading = |k: Keyword| tokens.first().is_some_and(|t| is_keyword(&t.token, k));
    if leading(Keyword::TABLE) {
        return refuse(
            first,
            "reads every column (TABLE); send SELECT * FROM instead",
        );
    }
    if leading(Keyword::COPY) {
        return plan_copy(sql, &tokens, rules, &relevant, notes, layer);
    }
    let statements = match Parser::new(&PostgreSqlDialect {})
        .with_tokens_with_locations(raw)
        .parse_statements()
    {
        Ok(statements) => statements,
        Err(e) => {
            return refuse(
                first,
                format!(
                    "uses a migrating column but cannot be parsed by pgshift's SQL parser ({e})"
                ),
            )
        }
    };
    let text = Text {
        sql,
        tokens: &tokens,
        rules,
        relevant: &relevant,
        layer,
    };
    text.plan(&statements, notes)
}

/// A text that names a renamed table: renamed to the physical tables,
/// then planned again for the other migrations; `None` when it names no
/// renamed table by the name it does not have.
fn plan_renamed<'r>(
    sql: &str,
    tokens: &[Tok],
    rules: &'r Rules,
    mut notes: Option<&mut Notes>,
) -> Option<Plan<'r>> {
    let renamed = match super::renamed_table::rename(sql, tokens, rules) {
        Ok(renamed) => renamed,
        Err((i, reason)) => return Some(refuse(&rules.migrations[i], reason)),
    };
    if let Some(notes) = notes.as_deref_mut() {
        for i in renamed.old_shape {
            if !notes.old_shape.contains(&i) {
                notes.old_shape.push(i);
            }
        }
    }
    let text = renamed.text?;
    let mut by = renamed.by;
    // The renamed text names the physical table, whichever name the
    // client used: its old-shape use was noted above.
    let mut more_notes = Notes::default();
    let planned = plan_text(&text, rules, Some(&mut more_notes));
    if let Some(notes) = notes {
        let renamed_table = |i: &usize| rules.migrations[*i].spec.renamed_to.is_some();
        for i in more_notes
            .old_shape
            .into_iter()
            .filter(|i| !renamed_table(i))
        {
            if !notes.old_shape.contains(&i) {
                notes.old_shape.push(i);
            }
        }
        for i in more_notes.stars {
            if !notes.stars.contains(&i) {
                notes.stars.push(i);
            }
        }
    }
    Some(match planned {
        Plan::Unchanged => Plan::Replaced { text, by },
        Plan::Replaced { text, by: more } => {
            by.extend(
                more.into_iter()
                    .filter(|i| !by.contains(i))
                    .collect::<Vec<_>>(),
            );
            Plan::Replaced { text, by }
        }
        other => other,
    })
}

/// A text being planned: its tokens and the migrations whose tables it names.
struct Text<'t, 'r> {
    sql: &'t str,
    tokens: &'t [Tok],
    rules: &'r Rules,
    /// Indices in `rules.migrations`.
    relevant: &'t [usize],
    /// The layer they are of.
    layer: usize,
}

/// One statement's outcome: its edits and the migrations they are for, or
/// the plan of the whole text (a refusal).
type Planned<'r> = Result<(Vec<super::text::Edit>, Vec<usize>), Plan<'r>>;

impl<'r> Text<'_, 'r> {
    fn plan(&self, statements: &[Statement], mut notes: Option<&mut Notes>) -> Plan<'r> {
        let rules = self.rules;
        let first = &rules.migrations[self.relevant[0]];
        let segments = split_statements(self.tokens);
        if segments.len() != statements.len() {
            return refuse(first, "could not be split into its statements");
        }
        let targets: Vec<Target<'r>> = self.relevant.iter().map(|&i| target(rules, i)).collect();
        let index = LineIndex::new(self.sql);
        let expand = notes.is_some();
        let (mut all_edits, mut by, mut expanded) = (Vec::new(), Vec::new(), false);
        for (statement, range) in statements.iter().zip(segments) {
            let planned = self.statement(
                statement,
                &self.tokens[range],
                &index,
                &targets,
                expand,
                &mut expanded,
                notes.as_deref_mut(),
            );
            let (edits, for_targets) = match planned {
                Ok(done) => done,
                Err(plan) => return plan,
            };
            for i in for_targets {
                if !by.contains(&i) {
                    by.push(i);
                }
            }
            all_edits.extend(edits);
        }
        if all_edits.is_empty() {
            return Plan::Unchanged;
        }
        let Some(text) = splice(self.sql, &mut all_edits) else {
            return refuse(first, "needs overlapping rewrites");
        };
        if !expanded {
            return Plan::Replaced { text, by };
        }
        // `*` and implied columns spelled out: plan the result.
        match plan_in_layer(&text, rules, None, self.layer) {
            Plan::Unchanged => Plan::Replaced { text, by },
            Plan::Replaced { text, by: more } => {
                for i in more {
                    if !by.contains(&i) {
                        by.push(i);
                    }
                }
                Plan::Replaced { text, by }
            }
            other => other,
        }
    }

    /// Plans one statement (`toks`: its tokens).
    #[allow(clippy::too_many_arguments)]
    fn statement(
        &self,
        statement: &Statement,
        toks: &[Tok],
        index: &LineIndex<'_>,
        targets: &[Target<'r>],
        expand: bool,
        expanded: &mut bool,
        notes: Option<&mut Notes>,
    ) -> Planned<'r> {
        if !walks(statement) {
            if let Some(k) = other_statement(toks, targets) {
                return Err(refuse(targets[k].m, "is a kind of statement that pgshift does not rewrite (DDL or utility) while the migration is active; run it when no migration of the table is in flight"));
            }
            return Ok((Vec::new(), Vec::new()));
        }
        let mut sites = walk_in_shape(self.tokens, index, targets, &self.rules.catalog, statement);
        // An INSERT that leaves an added column to its default, or a dropped
        // one as the table has it, needs nothing.
        sites.implied.retain(|i| {
            let t = &targets[i.target];
            match (&t.m.spec.added, t.m.spec.dropped) {
                _ if t.m.spec.fill().is_some() => edits::fills_implied(i, t),
                (Some(a), _) => added::gives_value(i, t, a),
                (None, true) => dropped::new_shape_list(i, t).is_some(),
                (None, false) => true,
            }
        });
        // A `*` over a table whose NOT NULL is being set is the table.
        let filled = |k: usize| targets[k].m.spec.fill().is_some();
        sites.stars.retain(|s| {
            s.parts
                .iter()
                .any(|p| matches!(p, resolve::StarPart::Target { target, .. } if !filled(*target)))
        });
        if let Some(notes) = notes {
            self.note(&sites, notes, returns_rows(statement));
        }
        if let Some((k, reason)) = sites.refusals.first() {
            return Err(refuse(targets[*k].m, reason.clone()));
        }
        if let Some(e) = sites.errors.first() {
            return Err(Plan::Error {
                migration: Some(targets[0].m),
                code: e.code,
                message: e.message.clone(),
            });
        }
        let spells_out = !sites.stars.is_empty() || !sites.implied.is_empty();
        let edits = match (spells_out, expand) {
            (true, true) => match edits::expansion(self.sql, &sites, targets) {
                // Nothing to spell out in this phase (an INSERT leaving the
                // columns to the table while only one exists): the reads
                // and writes are rewritten as they are.
                Ok(none) if none.is_empty() => edits::rewrite(self.sql, &sites, targets),
                Ok(spelled) => {
                    *expanded = true;
                    Ok(spelled)
                }
                Err(e) => Err(e),
            },
            (true, false) => Err((
                0,
                "selects * or leaves columns implied in a way pgshift could not spell out".into(),
            )),
            (false, _) => edits::rewrite(self.sql, &sites, targets),
        };
        match edits {
            Ok(edits) if edits.is_empty() => Ok((edits, Vec::new())),
            Ok(edits) => {
                let for_targets = sites_targets(&sites, targets)
                    .into_iter()
                    .map(|k| self.relevant[k])
                    .collect();
                Ok((edits, for_targets))
            }
            Err((k, reason)) => Err(refuse(targets[k].m, reason)),
        }
    }

    /// Notes the old shape's use and the `*` spelled out.
    fn note(&self, sites: &Sites, notes: &mut Notes, returns_rows: bool) {
        let filled = |k: &usize| {
            self.rules.migrations[self.relevant[*k]]
                .spec
                .fill()
                .is_some()
        };
        let old = sites
            .uses
            .iter()
            .filter(|u| u.which == Which::From)
            .map(|u| u.target)
            .chain(
                sites
                    .writes
                    .iter()
                    .filter(|w| w.which == Which::From)
                    .map(|w| w.target),
            )
            .chain(
                sites
                    .conflicts
                    .iter()
                    .filter(|c| c.which == Which::From)
                    .map(|c| c.target),
            )
            // An INSERT that leaves an added column to pgshift's `up` is
            // the old shape's: once the rules are gone it gets no value.
            .chain(
                sites
                    .implied
                    .iter()
                    .map(|i| i.target)
                    .filter(|&k| self.rules.migrations[self.relevant[k]].spec.added.is_some()),
            );
        let rules = self.rules;
        let kept_name = |k: usize| rules.migrations[self.relevant[k]].spec.keep_name;
        // A `*` spelled out here shows what the table's other migrations
        // let the session see too: their shape changes its result as well.
        let stars = sites.stars.iter().flat_map(|s| {
            s.parts.iter().filter_map(|p| match p {
                resolve::StarPart::Target { target, .. } => Some(*target),
                _ => None,
            })
        });
        let starred = stars.flat_map(|k| same_table(rules, self.relevant[k]));
        // A kept name's type in the result is the session's shape's (any
        // read of it in a statement that returns rows: it may be in an
        // expression of the result).
        let kept = sites
            .uses
            .iter()
            .map(|u| u.target)
            .filter(|&k| returns_rows && kept_name(k))
            .map(|k| self.relevant[k]);
        for i in starred.chain(kept).collect::<Vec<_>>() {
            if !notes.stars.contains(&i) {
                notes.stars.push(i);
            }
        }
        // (A column whose NOT NULL is being set has one name: no shape.)
        let old: Vec<usize> = old.filter(|k| !filled(k)).collect();
        for (list, found) in [(&mut notes.old_shape, old)] {
            for k in found {
                let i = self.relevant[k];
                if !list.contains(&i) {
                    list.push(i);
                }
            }
        }
    }
}

/// Whether a statement answers rows (a query, or a write with RETURNING).
fn returns_rows(statement: &Statement) -> bool {
    match statement {
        Statement::Query(_) => true,
        Statement::Insert(i) => i.returning.is_some(),
        Statement::Update(u) => u.returning.is_some(),
        Statement::Delete(d) => d.returning.is_some(),
        _ => false,
    }
}

/// The migrations on migration `i`'s table (`i` among them).
fn same_table(rules: &Rules, i: usize) -> Vec<usize> {
    let table = &rules.migrations[i].spec.table;
    (0..rules.migrations.len())
        .filter(|&j| rules.migrations[j].spec.table == *table)
        .collect()
}

/// The migrations (indices into the targets) a statement's edits are for.
fn sites_targets(sites: &Sites, targets: &[Target<'_>]) -> Vec<usize> {
    let mut out: Vec<usize> = sites
        .uses
        .iter()
        .map(|u| u.target)
        .chain(sites.writes.iter().map(|w| w.target))
        .chain(sites.implied.iter().map(|i| i.target))
        .chain(sites.conflicts.iter().map(|c| c.target))
        .chain(sites.stars.iter().flat_map(|s| {
            s.parts.iter().filter_map(|p| match p {
                resolve::StarPart::Target { target, .. } => Some(*target),
                _ => None,
            })
        }))
        .collect();
    if out.is_empty() && !sites.qualify.is_empty() {
        out.extend(0..targets.len());
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether the text can concern a migration at all: it names a migrating
/// column, selects `*`, inserts, or copies (cheap token tests).
fn may_concern(tokens: &[Tok], relevant: &[usize], rules: &Rules) -> bool {
    tokens.iter().enumerate().any(|(i, t)| {
        relevant.iter().any(|&k| {
            let spec = &rules.migrations[k].spec;
            names(&t.token, &spec.from) || names(&t.token, &spec.to)
        }) || (t.token == Token::Mul
            && i > 0
            && matches!(
                &tokens[i - 1].token,
                Token::Comma | Token::Period | Token::Word(_)
            ))
            || is_keyword(&t.token, Keyword::INSERT)
            || is_keyword(&t.token, Keyword::COPY)
            || is_keyword(&t.token, Keyword::TABLE)
    })
}

fn is_keyword(token: &Token, keyword: Keyword) -> bool {
    matches!(token, Token::Word(w) if w.keyword == keyword && w.quote_style.is_none())
}

/// The statements the walk reads (queries and DML, and what wraps them).
fn walks(statement: &Statement) -> bool {
    match statement {
        Statement::Query(_)
        | Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_) => true,
        Statement::Explain { statement, .. } | Statement::Prepare { statement, .. } => {
            walks(statement)
        }
        Statement::Declare { stmts } => stmts.iter().any(|d| d.for_query.is_some()),
        _ => false,
    }
}

/// Any other statement (DDL, utility) that names a relevant migration's
/// column: which target.
fn other_statement(toks: &[Tok], targets: &[Target<'_>]) -> Option<usize> {
    targets.iter().position(|t| {
        let spec = &t.m.spec;
        toks.iter().any(|x| names(&x.token, &spec.table.name))
            && toks
                .iter()
                .any(|x| names(&x.token, &spec.from) || names(&x.token, &spec.to))
    })
}

/// How the walk sees migration `i`'s table: its columns from the catalog
/// snapshot as the other migrations on the table show them to the client
/// (their working and hidden columns left out, a dropped old column put
/// back where it stood), and where its own old column stands once dropped.
fn target<'r>(rules: &'r Rules, i: usize) -> Target<'r> {
    let m = &rules.migrations[i];
    let catalog = &rules.catalog;
    let physical = physical_columns(m, catalog).map(|mut columns| {
        for (j, o) in rules.migrations.iter().enumerate() {
            if j != i && o.spec.renamed_to.is_none() && o.spec.table == m.spec.table {
                columns = seen_through(o, catalog, &columns);
            }
        }
        columns
    });
    let old_at = physical.as_ref().map_or(0, |p| old_at(&m.spec, p));
    Target {
        m,
        catalog,
        physical,
        old_at,
        kept_name_new: m.spec.keep_name.then(|| super::marker::sees_new(m)),
        // (Unmarked sessions are the old shape until the migration ends:
        // a NOT NULL has no read switch.)
        fill: m
            .spec
            .fill()
            .filter(|_| super::marker::marked(m) != Some(super::marker::Marked::New))
            .map(|(_, fill)| fill),
    }
}

/// `m`'s table's columns in the catalog snapshot, if it knows the table.
fn physical_columns(m: &ActiveMigration, catalog: &Catalog) -> Option<Vec<String>> {
    let spec = &m.spec;
    let def = catalog.table(Some(&spec.table.schema), &spec.table.name)?;
    Some(def.columns.iter().map(|c| c.name.clone()).collect())
}

/// Where `spec`'s old column stands among `columns` once it is dropped.
fn old_at(spec: &MigrationSpec, columns: &[String]) -> usize {
    let before_new = columns
        .iter()
        .position(|c| *c == spec.to)
        .unwrap_or(columns.len());
    match spec.old_after.as_deref() {
        Some("") => 0,
        Some(after) => columns
            .iter()
            .position(|c| c == after)
            .map_or(before_new, |i| i + 1),
        None => before_new,
    }
}

/// `columns` as migration `o` (another on the same table) shows them to
/// the session: what its `*` would list.
fn seen_through(o: &ActiveMigration, catalog: &Catalog, columns: &[String]) -> Vec<String> {
    let spec = &o.spec;
    let hidden = match spec.keep_name {
        true => Some(spec.to.as_str()),
        false => super::marker::hidden(o),
    };
    if let Some(hidden) = hidden {
        return columns.iter().filter(|c| **c != hidden).cloned().collect();
    }
    let at = physical_columns(o, catalog).map_or(columns.len(), |p| old_at(spec, &p));
    super::scope::shaped(
        columns,
        (&spec.from, &spec.to),
        at,
        spec.in_place,
        Shape::Union,
    )
}

/// Walks `statement` in the union of both shapes, then — when its names
/// settle a migration's shape, or a name was ambiguous only because both
/// columns were in sight — again in the shape that reads it validly.
fn walk_in_shape(
    tokens: &[Tok],
    index: &LineIndex<'_>,
    targets: &[Target<'_>],
    catalog: &Catalog,
    statement: &Statement,
) -> Sites {
    let cx = |shapes: Vec<Shape>| Context {
        tokens,
        index,
        targets,
        catalog,
        shapes,
    };
    let union = vec![Shape::Union; targets.len()];
    let sites = resolve::walk(&cx(union.clone()), statement);
    let mut shapes = union.clone();
    let score = |s: &Sites, k: usize| s.errors.len() + s.unresolved[k] as usize + s.refusals.len();
    // Whether the union read some reference as target k's `which` column
    // (a read another shape may give another meaning).
    let read_as =
        |k: usize, which: Which| sites.uses.iter().any(|u| u.target == k && u.which == which);
    for (k, [old, new]) in sites.evidence.iter().copied().enumerate() {
        let clashed = sites.clashed[k];
        // The shape its names settle, if it reads the statement as validly
        // as the union does; else, when a name clashed, whichever shape
        // reads it with fewer errors (the old one on a tie).
        let candidates: &[Shape] = match (old > 0, new > 0) {
            (false, true) if clashed || read_as(k, Which::From) => &[Shape::New],
            (true, false) if clashed || read_as(k, Which::To) => &[Shape::Old],
            _ if clashed => &[Shape::Old, Shape::New],
            _ => &[],
        };
        let mut best = (score(&sites, k) + usize::from(clashed), Shape::Union);
        for &shape in candidates {
            let mut trial = shapes.clone();
            trial[k] = shape;
            let s = score(&resolve::walk(&cx(trial), statement), k);
            if s < best.0 || (s == best.0 && best.1 == Shape::Union) {
                best = (s, shape);
            }
        }
        shapes[k] = best.1;
    }
    if shapes == union {
        return sites;
    }
    resolve::walk(&cx(shapes), statement)
}

// ---- COPY -------------------------------------------------------------------

fn plan_copy<'r>(
    sql: &str,
    tokens: &[Tok],
    rules: &'r Rules,
    relevant: &[usize],
    notes: Option<&mut Notes>,
    layer: usize,
) -> Plan<'r> {
    let migrations: Vec<&ActiveMigration> =
        relevant.iter().map(|&i| &rules.migrations[i]).collect();
    if let Some(notes) = notes {
        for &i in relevant {
            let spec = &rules.migrations[i].spec;
            if tokens.iter().any(|t| names(&t.token, &spec.from)) {
                notes.old_shape.push(i);
            }
        }
    }
    if let Some(plan) = plan_copy_to(sql, tokens, rules, relevant, layer) {
        return plan;
    }
    for m in &migrations {
        if m.spec.added.is_some() {
            return match added::copy_from(sql, tokens, m, &rules.catalog) {
                Ok(None) => Plan::Unchanged,
                Ok(Some(text)) => Plan::Replaced {
                    text,
                    by: relevant.to_vec(),
                },
                Err(reason) => refuse(m, reason),
            };
        }
        if m.spec.fill().is_some() {
            continue; // COPY writes as given (a NULL meets the check)
        }
        if let Some(reason) = copy_from_refusal(tokens, m) {
            return refuse(m, reason);
        }
    }
    Plan::Unchanged
}

/// `COPY t [(cols)] TO …` and `COPY (query) TO …` read the table: planned
/// as the query `SELECT cols FROM t` (or the query itself), which is put in
/// the COPY's place: `COPY (SELECT …) TO …`. `None` for anything else.
fn plan_copy_to<'r>(
    sql: &str,
    tokens: &[Tok],
    rules: &'r Rules,
    relevant: &[usize],
    layer: usize,
) -> Option<Plan<'r>> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Copy {
        source, to: true, ..
    }] = statements.as_slice()
    else {
        return None;
    };
    // The source spans the tokens between COPY and the top-level TO.
    let mut depth = 0usize;
    let to = tokens.iter().enumerate().skip(1).find_map(|(i, t)| {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Word(w) if depth == 0 && w.keyword == Keyword::TO => return Some(i),
            _ => {}
        }
        None
    })?;
    if to < 2 {
        return None;
    }
    let (start, end) = (tokens[1].start, tokens[to - 1].end);
    let source_text = &sql[start..end];
    let query = match source {
        CopySource::Query(_) => source_text
            .strip_prefix('(')
            .and_then(|q| q.strip_suffix(')'))?
            .to_string(),
        CopySource::Table { columns, .. } => {
            let (table, list) = match source_text.find('(') {
                Some(open) if !columns.is_empty() => (
                    &source_text[..open],
                    source_text[open + 1..].strip_suffix(')')?,
                ),
                _ => (source_text, "*"),
            };
            format!("SELECT {list} FROM {}", table.trim_end())
        }
    };
    let planned = match plan_in_layer(&query, rules, Some(&mut Notes::default()), layer) {
        Plan::Unchanged if matches!(source, CopySource::Query(_)) => return Some(Plan::Unchanged),
        Plan::Unchanged => query,
        Plan::Replaced { text, .. } => text,
        other => return Some(other),
    };
    Some(Plan::Replaced {
        text: format!("{}({planned}){}", &sql[..start], &sql[end..]),
        by: relevant.to_vec(),
    })
}

/// `COPY t [(cols)] FROM …` writes without a dual write: fine only while
/// one migrating column exists and the COPY writes (or implies) just it.
fn copy_from_refusal(tokens: &[Tok], m: &ActiveMigration) -> Option<String> {
    let spec = &m.spec;
    let j = copy_table(tokens, &spec.table.name)?;
    let next = j + 1;
    let has_column_list = tokens.get(next).map(|t| &t.token) == Some(&Token::LParen);
    let lists = |c: &str| {
        tokens[next..]
            .iter()
            .take_while(|t| t.token != Token::RParen)
            .any(|t| names(&t.token, c))
    };
    let dual = m.has_old() && m.has_new();
    let fine = if dual {
        false
    } else if m.has_old() {
        !has_column_list || !lists(&spec.to)
    } else {
        has_column_list && !lists(&spec.from)
    };
    (!fine).then(|| format!(
        "copies into the table while {} — COPY FROM is not rewritten; use INSERT, or name only the column that exists",
        if dual { "both migrating columns are written" } else { "the migrating column it implies does not exist" }
    ))
}
