//! Planning the rewrite of one statement text under the rules in force: the
//! phase table of DESIGN.md applied to every reference to a migrating column.
//!
//! The parser (sqlparser's AST) tells what kind of statement this is, which
//! tables are in scope under which qualifiers, which references are bare
//! projection items, and which are INSERT columns or UPDATE targets; the
//! token stream gives exact byte positions. Every occurrence of a migrating
//! column's name must be accounted for — rewritten, or known to be something
//! else (another table's column, a function name, an alias) — or the whole
//! statement is refused: what pgshift does not understand, it does not pass.
//!
//! Supported today: SELECT (one query level; joins with qualified
//! references), INSERT … VALUES with a column list, UPDATE … SET, DELETE,
//! RETURNING, WHERE / ORDER BY / GROUP BY / HAVING / JOIN ON, several
//! statements in one Query — for renames and for type changes with
//! `up`/`down`. Refused for now: subqueries, CTEs and set operations that
//! use a migrating column, unqualified columns in joins, `*`, INSERT … SELECT
//! or without a column list, duplicated values that are not plain (function
//! calls), and type-change writes of parameters.

use sqlparser::ast::{
    Assignment, AssignmentTarget, ConflictTarget, CopySource, Expr, FromTable, Ident, ObjectName,
    ObjectNamePart, OnConflictAction, OnInsert, SelectItem, SetExpr, Statement, TableFactor,
    TableObject, TableWithJoins, UpdateTableFromKind,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use super::blocks;
use super::catalog::Catalog;
use super::expand;
use super::migration::{quote_ident, MigrationSpec};
use super::rules::{ActiveMigration, Rules};
use super::search_path::Resolved;
use super::text::{folded, splice, tokenize, Edit, LineIndex, Tok};

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
            matches!(
                references(&tokens, &rules.migrations[i].spec, &rules.catalog),
                Reference::Target
            )
        })
        .collect()
}

/// Plans `sql` (which mentions a migrating table, per the fast path).
pub fn plan<'r>(sql: &str, rules: &'r Rules) -> Plan<'r> {
    plan_text(sql, rules, true)
}

fn plan_text<'r>(sql: &str, rules: &'r Rules, expand_first: bool) -> Plan<'r> {
    let tokens = match tokenize(sql) {
        Ok(tokens) => tokens,
        Err(e) => {
            return Plan::Refused {
                migration: rules.migrations.first(),
                reason: format!("cannot be tokenized ({e})"),
            }
        }
    };
    let mut relevant_indices = Vec::new();
    for (i, m) in rules.migrations.iter().enumerate() {
        match references(&tokens, &m.spec, &rules.catalog) {
            Reference::None => {}
            Reference::Target => relevant_indices.push(i),
            Reference::Ambiguous(reason) => return refuse(m, reason),
        }
    }
    let relevant: Vec<&ActiveMigration> = relevant_indices
        .iter()
        .map(|&i| &rules.migrations[i])
        .collect();
    if relevant.is_empty() {
        return Plan::Unchanged;
    }
    if expand_first
        && tokens
            .first()
            .is_some_and(|t| is_keyword(&t.token, Keyword::PREPARE))
    {
        return plan_prepare(sql, &tokens, rules, &relevant_indices);
    }
    if expand_first
        && tokens
            .first()
            .is_some_and(|t| is_keyword(&t.token, Keyword::COPY))
    {
        if let Some(plan) = plan_copy_to(sql, &tokens, rules, &relevant) {
            return plan;
        }
    }
    if expand_first && expand::may_need_expansion(&tokens) {
        if let Some(reason) = expand::table_command(&tokens) {
            return refuse(relevant[0], reason);
        }
        let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
            Ok(statements) => statements,
            Err(e) => {
                return refuse(
                    relevant[0],
                    format!("selects * or inserts into a migrating table but cannot be parsed by pgshift's SQL parser ({e})"),
                )
            }
        };
        match expand::expand(sql, &tokens, &statements, &relevant, &rules.catalog) {
            Err((k, reason)) => return refuse(relevant[k], reason),
            Ok(None) => {}
            Ok(Some(expanded)) => {
                return match plan_text(&expanded, rules, false) {
                    Plan::Unchanged => Plan::Replaced {
                        text: expanded,
                        by: relevant_indices,
                    },
                    Plan::Replaced { text, mut by } => {
                        for i in relevant_indices {
                            if !by.contains(&i) {
                                by.push(i);
                            }
                        }
                        Plan::Replaced { text, by }
                    }
                    refused => refused,
                };
            }
        }
    }
    for m in &relevant {
        if let Some(reason) = structural_refusal(&tokens, m) {
            return refuse(m, reason);
        }
    }
    let uses_columns = relevant.iter().any(|m| {
        tokens
            .iter()
            .any(|t| names(&t.token, &m.spec.from) || names(&t.token, &m.spec.to))
    });
    if !uses_columns || reads_only_the_source(&tokens, &relevant) {
        return Plan::Unchanged;
    }
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(statements) => statements,
        Err(e) => {
            return refuse(
                relevant[0],
                format!(
                    "uses a migrating column but cannot be parsed by pgshift's SQL parser ({e})"
                ),
            )
        }
    };
    let segments = split_statements(&tokens);
    if segments.len() != statements.len() {
        return refuse(relevant[0], "could not be split into its statements");
    }
    let index = LineIndex::new(sql);
    let mut edits = Vec::new();
    let mut by = Vec::new();
    for (statement, range) in statements.iter().zip(segments) {
        let toks = &tokens[range];
        for (m, &i) in relevant.iter().zip(&relevant_indices) {
            let before = edits.len();
            if let Err(reason) =
                plan_statement(sql, &index, statement, toks, m, &rules.catalog, &mut edits)
            {
                return refuse(m, reason);
            }
            if edits.len() > before && !by.contains(&i) {
                by.push(i);
            }
        }
    }
    if edits.is_empty() {
        return Plan::Unchanged;
    }
    match splice(sql, &mut edits) {
        Some(text) => Plan::Replaced { text, by },
        None => refuse(relevant[0], "needs overlapping rewrites"),
    }
}

/// `PREPARE name [(types)] AS statement`: the statement is planned like
/// any other and spliced back behind its `AS`.
fn plan_prepare<'r>(
    sql: &str,
    tokens: &[Tok],
    rules: &'r Rules,
    relevant_indices: &[usize],
) -> Plan<'r> {
    let mut depth = 0usize;
    let inner = tokens.iter().enumerate().skip(1).find_map(|(i, t)| {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            _ if depth == 0 && is_keyword(&t.token, Keyword::AS) => return Some(i + 1),
            _ => {}
        }
        None
    });
    let Some(start) = inner.and_then(|i| tokens.get(i)).map(|t| t.start) else {
        return Plan::Refused {
            migration: relevant_indices.first().map(|&i| &rules.migrations[i]),
            reason: "is a PREPARE pgshift cannot read".into(),
        };
    };
    // The prepared statement ends at the first top-level `;`; what follows
    // is planned on its own.
    let end = tokens
        .iter()
        .find(|t| t.start > start && t.token == Token::SemiColon)
        .map_or(sql.len(), |t| t.start);
    let inner = plan_text(&sql[start..end], rules, true);
    let rest = if end < sql.len() {
        plan_text(&sql[end + 1..], rules, true)
    } else {
        Plan::Unchanged
    };
    let text_of = |plan: &Plan<'_>, original: &str| match plan {
        Plan::Replaced { text, .. } => text.clone(),
        _ => original.to_string(),
    };
    match (&inner, &rest) {
        (Plan::Refused { .. }, _) => inner,
        (_, Plan::Refused { .. }) => rest,
        (Plan::Unchanged, Plan::Unchanged) => Plan::Unchanged,
        _ => {
            let mut by: Vec<usize> = Vec::new();
            for plan in [&inner, &rest] {
                if let Plan::Replaced { by: b, .. } = plan {
                    for i in b {
                        if !by.contains(i) {
                            by.push(*i);
                        }
                    }
                }
            }
            let mut text = format!("{}{}", &sql[..start], text_of(&inner, &sql[start..end]));
            if end < sql.len() {
                text.push(';');
                text.push_str(&text_of(&rest, &sql[end + 1..]));
            }
            Plan::Replaced { text, by }
        }
    }
}

/// `COPY t [(cols)] TO …` and `COPY (query) TO …` read the table: planned
/// as the query `SELECT cols FROM t` (or the query itself), which is put in
/// the COPY's place: `COPY (SELECT …) TO …`. `None` for anything else
/// (COPY FROM is left to [`structural_refusal`]).
fn plan_copy_to<'r>(
    sql: &str,
    tokens: &[Tok],
    rules: &'r Rules,
    relevant: &[&'r ActiveMigration],
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
    let planned = match plan_text(&query, rules, true) {
        Plan::Unchanged if matches!(source, CopySource::Query(_)) => return Some(Plan::Unchanged),
        Plan::Unchanged => query,
        Plan::Replaced { text, .. } => text,
        refused @ Plan::Refused { .. } => return Some(refused),
    };
    let by = (0..rules.migrations.len())
        .filter(|&i| {
            relevant
                .iter()
                .any(|m| std::ptr::eq(*m, &rules.migrations[i]))
        })
        .collect();
    Some(Plan::Replaced {
        text: format!("{}({planned}){}", &sql[..start], &sql[end..]),
        by,
    })
}

/// A single plain SELECT whose only migrating-column references name the
/// column reads are served from in this phase: it means the same on the
/// physical table, so it passes without being parsed (the common case for
/// old-shape reads before the switch and new-shape reads after it).
fn reads_only_the_source(tokens: &[Tok], relevant: &[&ActiveMigration]) -> bool {
    let single_select = tokens
        .first()
        .is_some_and(|t| is_keyword(&t.token, Keyword::SELECT))
        && tokens
            .iter()
            .position(|t| t.token == Token::SemiColon)
            .is_none_or(|i| i == tokens.len() - 1);
    if !single_select {
        return false;
    }
    let writes = tokens.iter().any(|t| {
        matches!(&t.token, Token::Word(w) if matches!(
            w.keyword,
            Keyword::INSERT | Keyword::UPDATE | Keyword::DELETE | Keyword::MERGE | Keyword::INTO | Keyword::COPY
        ))
    });
    !writes
        && relevant.iter().all(|m| {
            let other = if m.phase.reads_new() {
                &m.spec.from
            } else {
                &m.spec.to
            };
            !tokens.iter().any(|t| names(&t.token, other))
        })
}

/// Token ranges of the statements of a text, split at top-level `;`.
pub(super) fn split_statements(tokens: &[Tok]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        if t.token == Token::SemiColon {
            if i > start {
                out.push(start..i);
            }
            start = i + 1;
        }
    }
    if start < tokens.len() {
        out.push(start..tokens.len());
    }
    out
}

/// Writes whose columns are implied: COPY without the migrating column
/// handled, and (a safety net behind [`expand`], which gives INSERTs their
/// columns) an INSERT that would leave the new column unset.
fn structural_refusal(tokens: &[Tok], m: &ActiveMigration) -> Option<String> {
    let spec = &m.spec;
    for (i, t) in tokens.iter().enumerate() {
        let Token::Word(w) = &t.token else { continue };
        let writes = match w.keyword {
            Keyword::INTO => i > 0 && is_keyword(&tokens[i - 1].token, Keyword::INSERT),
            Keyword::COPY => true,
            _ => false,
        };
        if !writes {
            continue;
        }
        let mut j = i + 1;
        while j + 1 < tokens.len() && tokens[j + 1].token == Token::Period {
            j += 2;
        }
        if !tokens
            .get(j)
            .is_some_and(|t| names(&t.token, &spec.table.name))
        {
            continue;
        }
        let mut next = j + 1;
        if tokens
            .get(next)
            .is_some_and(|t| is_keyword(&t.token, Keyword::AS))
        {
            next += 2;
        }
        let has_column_list = tokens.get(next).map(|t| &t.token) == Some(&Token::LParen)
            && !tokens.get(next + 1).is_some_and(|t| {
                is_keyword(&t.token, Keyword::SELECT)
                    || is_keyword(&t.token, Keyword::VALUES)
                    || is_keyword(&t.token, Keyword::WITH)
            });
        let dual = m.phase.has_old() && m.phase.has_new();
        if w.keyword == Keyword::COPY {
            let lists = |c: &str| {
                tokens[next..]
                    .iter()
                    .take_while(|t| t.token != Token::RParen)
                    .any(|t| names(&t.token, c))
            };
            // Only one column exists: COPY FROM may name it (or, before
            // expand, imply it); everything else needs a dual write.
            let fine = if dual {
                false
            } else if m.phase.has_old() {
                !has_column_list || !lists(&spec.to)
            } else {
                has_column_list && !lists(&spec.from)
            };
            if fine {
                continue;
            }
            return Some(format!(
                "copies into the table while {} — COPY FROM is not rewritten; use INSERT, or name only the column that exists",
                if dual { "both migrating columns are written" } else { "the migrating column it implies does not exist" }
            ));
        }
        if !has_column_list && m.phase.has_new() {
            return Some(
                "writes the table without a column list, which needs the columns expanded".into(),
            );
        }
        let names_a_column = tokens[next..]
            .iter()
            .take_while(|t| t.token != Token::RParen)
            .any(|t| names(&t.token, &spec.from) || names(&t.token, &spec.to));
        if w.keyword == Keyword::INTO && m.phase.has_new() && m.phase.has_old() && !names_a_column {
            return Some(format!(
                "inserts without naming {} or {}, which leaves the new column unset while the migration keeps both in step",
                quote_ident(&spec.from),
                quote_ident(&spec.to)
            ));
        }
    }
    None
}

/// How an occurrence of a migrating column's name is used.
enum Use {
    /// Not a reference to the migrating table's column.
    Other,
    /// A read of the column; `qualifier` is the byte range of its qualifier
    /// chain (`t.` / `s.t.`) if any.
    Read { qualifier: Option<usize> },
}

/// Adds the edits for one statement and one migration.
fn plan_statement(
    sql: &str,
    index: &LineIndex<'_>,
    statement: &Statement,
    toks: &[Tok],
    m: &ActiveMigration,
    catalog: &Catalog,
    edits: &mut Vec<Edit>,
) -> Result<(), String> {
    let spec = &m.spec;
    let column_tokens: Vec<usize> = (0..toks.len())
        .filter(|&i| names(&toks[i].token, &spec.from) || names(&toks[i].token, &spec.to))
        .collect();
    if column_tokens.is_empty() {
        return Ok(());
    }
    let top = match statement {
        Statement::Query(_) => blocks::Top::Query,
        Statement::Insert(insert)
            if insert
                .source
                .as_ref()
                .is_some_and(|q| matches!(q.body.as_ref(), SetExpr::Select(_))) =>
        {
            blocks::Top::InsertSelect
        }
        _ => blocks::Top::Other,
    };
    let blocks = blocks::nested_blocks(toks, top).map_err(|what| {
        format!(
            "uses column {} in {what}, which is not rewritten yet",
            quote_ident(&spec.from)
        )
    })?;
    // Each nested block parsed on its own, for its FROM list and projection.
    let mut sub_statements: Vec<(usize, Statement)> = Vec::new();
    for &(start, end) in &blocks {
        let base = toks[start].start;
        let text = &sql[base..toks[end - 1].end];
        let parsed = Parser::parse_sql(&PostgreSqlDialect {}, text)
            .ok()
            .and_then(|mut v| (v.len() == 1).then(|| v.remove(0)))
            .ok_or("has a subquery pgshift cannot parse on its own")?;
        sub_statements.push((base, parsed));
    }
    let mut scopes = vec![Scope::of(statement, spec, catalog)?];
    for (_, sub) in &sub_statements {
        scopes.push(Scope::of(sub, spec, catalog)?);
    }
    if scopes.iter().all(|s| s.target_qualifiers.is_empty()) {
        // The table is only mentioned (say, as another table's column name).
        return Ok(());
    }
    let ranges: Vec<blocks::Block> = std::iter::once((0, toks.len()))
        .chain(blocks.iter().copied())
        .collect();
    let scope = &scopes[0];
    let tok_at = |offset: usize| toks.iter().position(|t| t.start == offset);
    let ident_tok = |ident: &Ident| index.offset(ident.span.start).and_then(tok_at);

    // Bare projection items (output names to keep), in every block.
    // Projection items whose output name Postgres takes from the column:
    // a bare reference, or one only wrapped in casts and parentheses
    // (`a::text` is still named `a`). (token, wrapped)
    let mut bare: Vec<(usize, bool)> = Vec::new();
    for (k, block_scope) in scopes.iter().enumerate() {
        if k == 1 && top == blocks::Top::InsertSelect {
            continue; // its select list is values, not output names
        }
        let sub_index = match k {
            0 => None,
            _ => {
                let (base, _) = &sub_statements[k - 1];
                let (start, end) = ranges[k];
                Some((
                    *base,
                    LineIndex::new(&sql[toks[start].start..toks[end - 1].end]),
                ))
            }
        };
        let locate = |ident: &Ident| match &sub_index {
            None => ident_tok(ident),
            Some((base, sub)) => sub
                .offset(ident.span.start)
                .and_then(|rel| tok_at(base + rel)),
        };
        for item in block_scope
            .projection
            .iter()
            .chain(block_scope.returning.iter())
        {
            if let Some((ident, wrapped)) = bare_reference(item) {
                if let Some(i) = locate(ident) {
                    bare.push((i, wrapped));
                }
            }
        }
    }
    // (column token, value slot, written as `col = value` rather than in a column list)
    let mut writes: Vec<(usize, usize, bool)> = Vec::new();
    let mut value_ranges: Vec<Vec<(usize, usize)>> = Vec::new(); // per slot: byte ranges
    match statement {
        Statement::Insert(insert) if scope.writes_target => {
            let Some(source) = &insert.source else {
                return Err("inserts without VALUES, which is not rewritten yet".into());
            };
            let rows: Vec<Vec<(usize, usize)>> = match source.body.as_ref() {
                SetExpr::Values(values) => {
                    let mut rows = Vec::new();
                    for row in &values.rows {
                        let open = index
                            .offset(row.opening_token.0.span.start)
                            .ok_or("has a VALUES row without position")?;
                        rows.push(row_items(toks, open)?);
                    }
                    rows
                }
                SetExpr::Select(select) if source.with.is_none() => {
                    // INSERT … SELECT: the select list is the one row of values.
                    let (start, end) = blocks
                        .first()
                        .copied()
                        .ok_or("has an INSERT … SELECT pgshift cannot delimit")?;
                    let items = select_items(&toks[start..end])?;
                    if items.len() != select.projection.len() {
                        return Err(
                            "has an INSERT … SELECT whose select list pgshift cannot split".into(),
                        );
                    }
                    vec![items]
                }
                _ => {
                    return Err(
                        "inserts from a set operation or CTE, which is not rewritten yet".into(),
                    )
                }
            };
            for (k, column) in insert.columns.iter().enumerate() {
                let Some(ident) = last_ident(column) else {
                    continue;
                };
                if !(ident_is(ident, &spec.from) || ident_is(ident, &spec.to)) {
                    continue;
                }
                let i = ident_tok(ident).ok_or("has a column whose position is unknown")?;
                let mut ranges = Vec::new();
                for items in &rows {
                    if items.len() != insert.columns.len() {
                        return Err(
                            "has VALUES rows (or a select list) whose length differs from the column list".into()
                        );
                    }
                    ranges.push(items[k]);
                }
                writes.push((i, value_ranges.len(), false));
                value_ranges.push(ranges);
            }
            if let Some(OnInsert::OnConflict(on_conflict)) = &insert.on {
                if let Some(ConflictTarget::Columns(columns)) = &on_conflict.conflict_target {
                    let names_column = columns
                        .iter()
                        .any(|c| ident_is(c, &spec.from) || ident_is(c, &spec.to));
                    if names_column && !spec.is_rename() {
                        return Err("uses a migrating column as the ON CONFLICT target during a type change; name the unique constraint (ON CONFLICT ON CONSTRAINT …)".into());
                    }
                }
                if let OnConflictAction::DoUpdate(update) = &on_conflict.action {
                    assignment_writes(
                        &update.assignments,
                        spec,
                        toks,
                        &ident_tok,
                        &mut writes,
                        &mut value_ranges,
                    )?;
                }
            }
        }
        Statement::Update(update) if scope.writes_target => {
            assignment_writes(
                &update.assignments,
                spec,
                toks,
                &ident_tok,
                &mut writes,
                &mut value_ranges,
            )?;
        }
        _ => {}
    }
    let insert_targets: Vec<usize> = writes.iter().map(|(i, _, _)| *i).collect();
    if writes.iter().filter(|(_, _, assign)| !assign).count() > 1 {
        return Err(format!(
            "inserts into both {} and {}, which pgshift cannot reconcile",
            quote_ident(&spec.from),
            quote_ident(&spec.to)
        ));
    }

    // Classify every occurrence; rewrite the reads.
    let mut read_edits: Vec<Edit> = Vec::new();
    let widening = spec.integer_widening();
    for &i in &column_tokens {
        if insert_targets.contains(&i) {
            continue;
        }
        let chain: Vec<&Scope<'_>> = blocks::chain(&ranges, i)
            .into_iter()
            .map(|k| &scopes[k])
            .collect();
        match classify(toks, i, &chain)? {
            Use::Other => {}
            Use::Read { qualifier } => {
                let column = column_of(&toks[i].token, spec);
                let start = qualifier.unwrap_or(toks[i].start);
                let qualifier_text = &sql[start..toks[i].start];
                // A widened integer compared with a literal or a placeholder
                // reads the physical column as it is (its index serves the
                // lookup); a placeholder keeps the client's type.
                let source = if m.phase.reads_new() {
                    &spec.to
                } else {
                    &spec.from
                };
                let widened =
                    widening
                        .filter(|_| column != source.as_str())
                        .and_then(|(old, new)| {
                            let first = toks[..i]
                                .iter()
                                .rposition(|t| t.start < start)
                                .map_or(0, |k| k + 1);
                            let operand = if in_filter(toks, first) {
                                Some(plain_comparison(toks, first, i)?)
                            } else if sort_key(toks, first, i) {
                                None
                            } else {
                                return None;
                            };
                            let client_type = if column == spec.from { old } else { new };
                            Some((
                                format!("{qualifier_text}{}", quote_ident(source)),
                                operand,
                                client_type,
                            ))
                        });
                let read = match widened {
                    Some((text, operand, client_type)) => {
                        if let Some(operand) =
                            operand.filter(|&k| matches!(toks[k].token, Token::Placeholder(_)))
                        {
                            read_edits.push(Edit {
                                start: toks[operand].end,
                                end: toks[operand].end,
                                text: format!("::{client_type}"),
                            });
                        }
                        Some(text)
                    }
                    None => read_expr(m, column, qualifier_text),
                };
                if let Some(mut text) = read {
                    let alias = format!(" AS {}", quote_ident(column));
                    match bare.iter().find(|(t, _)| *t == i) {
                        Some((_, false)) => text.push_str(&alias),
                        Some((_, true)) => {
                            let end = item_end(toks, i);
                            read_edits.push(Edit {
                                start: end,
                                end,
                                text: alias,
                            });
                        }
                        None => {}
                    }
                    read_edits.push(Edit {
                        start,
                        end: toks[i].end,
                        text,
                    });
                }
            }
        }
    }

    // Writes: each written value, with its own reads rewritten, goes to the
    // physical column(s) of the phase.
    for (i, slot, assign) in writes {
        let column = column_of(&toks[i].token, spec);
        let targets = write_targets(m, column);
        let mut value_texts: Vec<Vec<String>> = Vec::new();
        for &(start, end) in &value_ranges[slot] {
            let mut inner: Vec<Edit> = Vec::new();
            read_edits.retain(|e| {
                if e.start >= start && e.end <= end {
                    inner.push(Edit {
                        start: e.start - start,
                        end: e.end - start,
                        text: e.text.clone(),
                    });
                    false
                } else {
                    true
                }
            });
            let mut value =
                splice(&sql[start..end], &mut inner).ok_or("needs overlapping rewrites")?;
            let value_toks = toks_in(toks, start, end);
            check_value(&value_toks, targets.len(), m)?;
            if !spec.is_rename() && is_lone_placeholder(&value_toks) {
                // A parameter written alone through a conversion appears
                // twice in different contexts (`a = $1`, `up($1)`): cast it
                // to the written column's type, as Postgres infers it on
                // the client's shape. Inside an expression (`a + $1`) both
                // copies keep the same context, so the same type.
                let Some(ty) = declared_type(m, column, catalog) else {
                    return Err(format!(
                        "writes a parameter to {} whose type pgshift does not know (not in its catalog snapshot)",
                        quote_ident(column)
                    ));
                };
                value = format!("{value}::{ty}");
            }
            value_texts.push(
                targets
                    .iter()
                    .map(|(_, convert)| convert.apply(spec, &value))
                    .collect(),
            );
        }
        let names: Vec<String> = targets.iter().map(|(c, _)| quote_ident(c)).collect();
        match assign {
            false => {
                edits.push(Edit {
                    start: toks[i].start,
                    end: toks[i].end,
                    text: names.join(", "),
                });
                for (&(start, end), texts) in value_ranges[slot].iter().zip(&value_texts) {
                    edits.push(Edit {
                        start,
                        end,
                        text: texts.join(", "),
                    });
                }
            }
            _ => {
                let (_, end) = value_ranges[slot][0];
                let text = names
                    .iter()
                    .zip(&value_texts[0])
                    .map(|(n, v)| format!("{n} = {v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                edits.push(Edit {
                    start: toks[i].start,
                    end,
                    text,
                });
            }
        }
    }
    edits.extend(read_edits);
    Ok(())
}

/// The writes of `SET col = value, …` (UPDATE, ON CONFLICT … DO UPDATE)
/// to a migrating column: the target token and the value's byte range.
fn assignment_writes(
    assignments: &[Assignment],
    spec: &MigrationSpec,
    toks: &[Tok],
    ident_tok: &dyn Fn(&Ident) -> Option<usize>,
    writes: &mut Vec<(usize, usize, bool)>,
    value_ranges: &mut Vec<Vec<(usize, usize)>>,
) -> Result<(), String> {
    for assignment in assignments {
        match &assignment.target {
            AssignmentTarget::ColumnName(name) => {
                let Some(ident) = last_ident(name) else {
                    continue;
                };
                if !(ident_is(ident, &spec.from) || ident_is(ident, &spec.to)) {
                    continue;
                }
                let i = ident_tok(ident).ok_or("has a SET target whose position is unknown")?;
                let value = assignment_value(toks, i)?;
                writes.push((i, value_ranges.len(), true));
                value_ranges.push(vec![value]);
            }
            AssignmentTarget::Tuple(names) => {
                if names
                    .iter()
                    .filter_map(last_ident)
                    .any(|id| ident_is(id, &spec.from) || ident_is(id, &spec.to))
                {
                    return Err("assigns a migrating column in a SET (…) = (…) tuple, which is not rewritten yet".into());
                }
            }
        }
    }
    Ok(())
}

/// The column a projection item names, if the item is a bare reference
/// (possibly wrapped in casts and parentheses: `wrapped`).
fn bare_reference(item: &SelectItem) -> Option<(&Ident, bool)> {
    let SelectItem::UnnamedExpr(expr) = item else {
        return None;
    };
    let mut core = expr;
    let mut wrapped = false;
    while let Expr::Cast { expr, .. } | Expr::Nested(expr) = core {
        core = expr;
        wrapped = true;
    }
    let ident = match core {
        Expr::Identifier(ident) => Some(ident),
        Expr::CompoundIdentifier(idents) => idents.last(),
        _ => None,
    }?;
    Some((ident, wrapped))
}

/// Which tables a statement reads, under which names.
struct Scope<'s> {
    /// Names (folded) that qualify the migrating table in this statement.
    target_qualifiers: Vec<String>,
    /// Names (folded) that qualify the other tables in scope.
    other_qualifiers: Vec<String>,
    /// `EXCLUDED` (the row proposed for insertion) is in scope: it has the
    /// migrating table's columns, both of them once rewritten.
    excluded: bool,
    /// How many other tables in scope may have a column named like a
    /// migrating one (unknown to the catalog, or known to have one).
    other_tables: usize,
    /// The statement's INSERT or UPDATE target is the migrating table.
    writes_target: bool,
    projection: &'s [SelectItem],
    returning: &'s [SelectItem],
}

impl<'s> Scope<'s> {
    fn of(
        statement: &'s Statement,
        spec: &MigrationSpec,
        catalog: &Catalog,
    ) -> Result<Scope<'s>, String> {
        let mut scope = Scope {
            target_qualifiers: Vec::new(),
            other_qualifiers: Vec::new(),
            excluded: false,
            other_tables: 0,
            writes_target: false,
            projection: &[],
            returning: &[],
        };
        match statement {
            Statement::Query(query) => {
                if let SetExpr::Select(select) = query.body.as_ref() {
                    scope.projection = &select.projection;
                    for twj in &select.from {
                        scope.add_joined(twj, spec, catalog);
                    }
                }
            }
            Statement::Insert(insert) => {
                if let TableObject::TableName(name) = &insert.table {
                    let alias = insert.table_alias.as_ref().map(|a| &a.alias);
                    scope.add(name, alias, spec, catalog);
                    scope.writes_target = !scope.target_qualifiers.is_empty();
                    scope.excluded = scope.writes_target
                        && matches!(
                            &insert.on,
                            Some(OnInsert::OnConflict(c)) if matches!(c.action, OnConflictAction::DoUpdate(_))
                        );
                }
                scope.returning = insert.returning.as_deref().unwrap_or_default();
            }
            Statement::Update(update) => {
                scope.add_joined(&update.table, spec, catalog);
                scope.writes_target = !scope.target_qualifiers.is_empty();
                if let Some(UpdateTableFromKind::BeforeSet(from) | UpdateTableFromKind::AfterSet(from)) = &update.from {
                    for twj in from {
                        scope.add_joined(twj, spec, catalog);
                    }
                }
                scope.returning = update.returning.as_deref().unwrap_or_default();
            }
            Statement::Delete(delete) => {
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
                for twj in from.iter().chain(delete.using.iter().flatten()) {
                    scope.add_joined(twj, spec, catalog);
                }
                scope.returning = delete.returning.as_deref().unwrap_or_default();
            }
            // COPY FROM that passed `structural_refusal` names only the
            // column that exists: nothing to rewrite.
            Statement::Copy { to: false, .. } => {}
            _ => return Err("is a kind of statement that pgshift does not rewrite (DDL or utility) while the migration is active".into()),
        }
        Ok(scope)
    }

    fn add_joined(&mut self, twj: &TableWithJoins, spec: &MigrationSpec, catalog: &Catalog) {
        for factor in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
            match factor {
                TableFactor::Table { name, alias, .. } => {
                    self.add(name, alias.as_ref().map(|a| &a.name), spec, catalog)
                }
                TableFactor::Derived { alias, .. }
                | TableFactor::Function { alias, .. }
                | TableFactor::TableFunction { alias, .. }
                | TableFactor::UNNEST { alias, .. } => {
                    self.other_qualifiers
                        .extend(alias.as_ref().map(|a| fold(&a.name)));
                    self.other_tables += 1;
                }
                _ => self.other_tables += 1,
            }
        }
    }

    fn add(
        &mut self,
        name: &ObjectName,
        alias: Option<&Ident>,
        spec: &MigrationSpec,
        catalog: &Catalog,
    ) {
        let parts: Vec<&Ident> = name
            .0
            .iter()
            .filter_map(|p| match p {
                ObjectNamePart::Identifier(id) => Some(id),
                _ => None,
            })
            .collect();
        let is_target = match parts.as_slice() {
            [table] => ident_is(table, &spec.table.name),
            [schema, table] => {
                ident_is(schema, &spec.table.schema) && ident_is(table, &spec.table.name)
            }
            _ => false,
        };
        if is_target {
            let qualifier = alias.or(parts.last().copied()).map(fold);
            self.target_qualifiers.extend(qualifier);
            return;
        }
        self.other_qualifiers
            .extend(alias.or(parts.last().copied()).map(fold));
        // Another table: it cannot take an unqualified reference away from
        // the migrating table when the catalog says it has no such column.
        let table = match parts.as_slice() {
            [table] => catalog.table(None, &fold(table)),
            [schema, table] => catalog.table(Some(&fold(schema)), &fold(table)),
            _ => None,
        };
        let clear = table.is_some_and(|t| !t.has_column(&spec.from) && !t.has_column(&spec.to));
        if !clear {
            self.other_tables += 1;
        }
    }
}

/// How the occurrence at `i` (not a recognized write target) is used.
fn classify(toks: &[Tok], i: usize, chain: &[&Scope<'_>]) -> Result<Use, String> {
    let prev = i.checked_sub(1).map(|j| &toks[j].token);
    let next = toks.get(i + 1).map(|t| &t.token);
    // `SET a = …` / `, a = …` that is not an UPDATE target pgshift knows
    // (ON CONFLICT … DO UPDATE SET, say) is a write it would miss.
    let assigns = next == Some(&Token::Eq)
        && (prev == Some(&Token::Comma) || prev.is_some_and(|t| is_keyword(t, Keyword::SET)));
    if assigns {
        return Err("assigns a migrating column in a form that is not rewritten yet (such as ON CONFLICT … DO UPDATE)".into());
    }
    if next == Some(&Token::LParen) || matches!(prev, Some(Token::DoubleColon)) {
        return Ok(Use::Other); // a function or type of the same name
    }
    if prev.is_some_and(|t| is_keyword(t, Keyword::AS)) {
        return Ok(Use::Other); // an output alias
    }
    if next == Some(&Token::Period) {
        return Ok(Use::Other); // a qualifier itself (a table named like the column)
    }
    if prev == Some(&Token::Period) {
        let qualifier = i.checked_sub(2).map(|j| &toks[j]);
        let Some(Tok {
            token: Token::Word(w),
            ..
        }) = qualifier
        else {
            return Err("uses a migrating column with a qualifier pgshift cannot read".into());
        };
        let q = folded(w);
        // The innermost block that knows the qualifier decides.
        let names_target =
            |s: &Scope<'_>| s.target_qualifiers.contains(&q) || (s.excluded && q == "excluded");
        let is_target = chain
            .iter()
            .find(|s| names_target(s) || s.other_qualifiers.contains(&q))
            .is_some_and(|s| names_target(s));
        if !is_target {
            return Ok(Use::Other);
        }
        // Include a schema in front: s.t.a
        let mut start = i - 2;
        while start >= 2
            && toks[start - 1].token == Token::Period
            && matches!(toks[start - 2].token, Token::Word(_))
        {
            start -= 2;
        }
        return Ok(Use::Read {
            qualifier: Some(toks[start].start),
        });
    }
    // Unqualified: the innermost block with a table that has (or may have)
    // the column decides; blocks whose tables certainly lack it pass the
    // name outwards (a correlated reference).
    for scope in chain {
        let targets = scope.target_qualifiers.len();
        if targets > 1 || (targets == 1 && scope.other_tables > 0) {
            return Err(
                "uses a migrating column without a table qualifier while another table in scope has (or may have, per pgshift's catalog snapshot) a column of that name; qualify it (t.column)"
                    .into(),
            );
        }
        if targets == 1 {
            return Ok(Use::Read { qualifier: None });
        }
        if scope.other_tables > 0 {
            return Err(
                "uses a migrating column without a table qualifier in a subquery whose tables may have a column of that name; qualify it (t.column)"
                    .into(),
            );
        }
    }
    Ok(Use::Other)
}

/// The folded column (`from` or `to`) a token names.
fn column_of<'s>(token: &Token, spec: &'s MigrationSpec) -> &'s str {
    if names(token, &spec.from) {
        &spec.from
    } else {
        &spec.to
    }
}

/// The expression that reads `column` (with `qualifier` text such as `t.`)
/// in this phase, or `None` when the column is read as it is.
fn read_expr(m: &ActiveMigration, column: &str, qualifier: &str) -> Option<String> {
    let spec = &m.spec;
    let source = if m.phase.reads_new() {
        &spec.to
    } else {
        &spec.from
    };
    if column == source {
        return None;
    }
    let source_ref = format!("{qualifier}{}", quote_ident(source));
    Some(if column == spec.to {
        Convert::Up.apply(spec, &source_ref)
    } else {
        Convert::Down.apply(spec, &source_ref)
    })
}

/// A conversion between the two columns' values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Convert {
    Same,
    Up,
    Down,
}

impl Convert {
    fn apply(self, spec: &MigrationSpec, value: &str) -> String {
        match self {
            Convert::Up => spec.up_of(value),
            Convert::Down => spec.down_of(value),
            Convert::Same => value.to_string(),
        }
    }
}

/// The physical columns a write of `column` goes to in this phase.
fn write_targets<'s>(m: &'s ActiveMigration, column: &str) -> Vec<(&'s str, Convert)> {
    let spec = &m.spec;
    let mut out = Vec::new();
    let writes_old = column == spec.from;
    if m.phase.has_old() {
        out.push((
            spec.from.as_str(),
            if writes_old {
                Convert::Same
            } else {
                Convert::Down
            },
        ));
    }
    if m.phase.has_new() {
        out.push((
            spec.to.as_str(),
            if writes_old {
                Convert::Up
            } else {
                Convert::Same
            },
        ));
    }
    out
}

/// A written value may be duplicated or converted only when that keeps its
/// meaning: no function calls or subqueries (volatile: evaluated twice),
/// no DEFAULT, and no parameters under a type conversion (their type would
/// be inferred twice).
fn check_value(value: &[&Tok], targets: usize, m: &ActiveMigration) -> Result<(), String> {
    let converts = !m.spec.is_rename();
    if targets < 2 && !converts {
        return Ok(());
    }
    for (k, t) in value.iter().enumerate() {
        match &t.token {
            Token::Word(w) if w.keyword == Keyword::DEFAULT => {
                return Err("writes DEFAULT to a migrating column, which needs the catalog's default".into())
            }
            Token::Word(w)
                if value.get(k + 1).is_some_and(|n| n.token == Token::LParen)
                    && !matches!(w.keyword, Keyword::CAST)
                    && !is_deterministic_function(&w.value) =>
            {
                return Err(format!(
                    "writes the result of {}(…) to a migrating column, and evaluating it twice could change its value",
                    w.value
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Built-in functions (and aggregates) that give the same result for the
/// same arguments within a statement, so a value using them can be written
/// to both columns.
fn is_deterministic_function(name: &str) -> bool {
    const DETERMINISTIC: &[&str] = &[
        "abs",
        "avg",
        "ceil",
        "ceiling",
        "coalesce",
        "concat",
        "count",
        "floor",
        "greatest",
        "least",
        "left",
        "length",
        "lower",
        "max",
        "min",
        "mod",
        "nullif",
        "power",
        "replace",
        "right",
        "round",
        "sign",
        "sqrt",
        "substr",
        "substring",
        "sum",
        "trim",
        "trunc",
        "upper",
    ];
    DETERMINISTIC.contains(&name.to_ascii_lowercase().as_str())
}

/// Whether the token at `first` is in a WHERE or JOIN … ON condition (of
/// its own SELECT block): a filter, evaluated row by row before any
/// grouping, where reading the physical column cannot clash with a GROUP
/// BY, DISTINCT or ORDER BY that names the converted expression.
fn in_filter(toks: &[Tok], first: usize) -> bool {
    let mut depth = 0usize;
    for t in toks[..first].iter().rev() {
        match &t.token {
            Token::RParen => depth += 1,
            // Stepping out of parentheses that hold the condition.
            Token::LParen => depth = depth.saturating_sub(1),
            Token::Word(w) if depth == 0 => match w.keyword {
                Keyword::WHERE | Keyword::ON => return true,
                Keyword::SELECT
                | Keyword::HAVING
                | Keyword::ORDER
                | Keyword::GROUP
                | Keyword::BY
                | Keyword::RETURNING
                | Keyword::SET
                | Keyword::VALUES
                | Keyword::WINDOW
                | Keyword::LIMIT
                | Keyword::OFFSET => return false,
                _ => {}
            },
            _ => {}
        }
    }
    false
}

/// Whether the column reference `toks[first..=last]` is a whole item of a
/// SELECT's ORDER BY, in a block that neither groups, nor is DISTINCT, nor
/// is a set operation (those name the converted expression, which ORDER BY
/// must then repeat): ordering by the physical column orders the rows as
/// the converted expression would, and an index can serve it.
fn sort_key(toks: &[Tok], first: usize, last: usize) -> bool {
    let keyword =
        |k: usize, kw: Keyword| matches!(&toks[k].token, Token::Word(w) if w.keyword == kw);
    let item_ends = match toks.get(last + 1).map(|t| &t.token) {
        None | Some(Token::Comma | Token::RParen | Token::SemiColon) => true,
        Some(Token::Word(w)) => matches!(
            w.keyword,
            Keyword::ASC
                | Keyword::DESC
                | Keyword::NULLS
                | Keyword::LIMIT
                | Keyword::OFFSET
                | Keyword::FETCH
                | Keyword::FOR
        ),
        _ => false,
    };
    let Some(before) = first.checked_sub(1) else {
        return false;
    };
    if !item_ends || !(toks[before].token == Token::Comma || keyword(before, Keyword::BY)) {
        return false;
    }
    // Back to the list's ORDER BY, at this level (not a window's or an
    // aggregate's ORDER BY inside parentheses, not GROUP BY).
    let mut depth = 0usize;
    let mut order = None;
    for k in (0..first).rev() {
        match &toks[k].token {
            Token::RParen => depth += 1,
            Token::LParen if depth == 0 => return false,
            Token::LParen => depth -= 1,
            Token::Word(w) if depth == 0 && w.keyword == Keyword::BY => {
                if k > 0 && keyword(k - 1, Keyword::ORDER) {
                    order = Some(k - 1);
                }
                break;
            }
            Token::Word(w) if depth == 0 && w.keyword != Keyword::NoKeyword => {
                if matches!(w.keyword, Keyword::SELECT | Keyword::FROM | Keyword::WHERE) {
                    return false;
                }
            }
            _ => {}
        }
    }
    let Some(order) = order else {
        return false;
    };
    // The block before it: nothing that makes ORDER BY name the output
    // (and a block of its own: a window's `OVER (ORDER BY …)` is not).
    let mut depth = 0usize;
    for k in (0..order).rev() {
        match &toks[k].token {
            Token::RParen => depth += 1,
            Token::LParen if depth == 0 => return keyword(k + 1, Keyword::SELECT),
            Token::LParen => depth -= 1,
            Token::Word(w) if depth == 0 => {
                if matches!(
                    w.keyword,
                    Keyword::GROUP
                        | Keyword::DISTINCT
                        | Keyword::HAVING
                        | Keyword::UNION
                        | Keyword::INTERSECT
                        | Keyword::EXCEPT
                ) {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

/// When the column reference `toks[first..=last]` is one side of a plain
/// comparison (`=`, `<>`, `<`, `>`, `<=`, `>=`) whose other side is one
/// literal or placeholder, with nothing binding tighter around either:
/// the index of that other side.
fn plain_comparison(toks: &[Tok], first: usize, last: usize) -> Option<usize> {
    let comparison = |k: usize| {
        matches!(
            toks.get(k).map(|t| &t.token),
            Some(Token::Eq | Token::Neq | Token::Lt | Token::Gt | Token::LtEq | Token::GtEq)
        )
    };
    let single = |k: usize| {
        matches!(
            toks.get(k).map(|t| &t.token),
            Some(Token::Number(..) | Token::SingleQuotedString(_) | Token::Placeholder(_))
        )
    };
    // Nothing there, or a token that ends an operand at a lower precedence.
    let boundary = |k: Option<usize>| match k.and_then(|k| toks.get(k)).map(|t| &t.token) {
        None => true,
        Some(Token::LParen | Token::RParen | Token::Comma | Token::SemiColon) => true,
        Some(Token::Word(w)) => matches!(
            w.keyword,
            Keyword::WHERE
                | Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::ON
                | Keyword::WHEN
                | Keyword::THEN
                | Keyword::ELSE
                | Keyword::END
                | Keyword::HAVING
                | Keyword::ORDER
                | Keyword::GROUP
                | Keyword::LIMIT
                | Keyword::OFFSET
                | Keyword::RETURNING
                | Keyword::FOR
        ),
        _ => false,
    };
    // column OP operand
    if comparison(last + 1)
        && single(last + 2)
        && boundary(Some(last + 3))
        && boundary(first.checked_sub(1))
    {
        return Some(last + 2);
    }
    // operand OP column
    let op = first.checked_sub(1)?;
    let operand = op.checked_sub(1)?;
    (comparison(op)
        && single(operand)
        && boundary(operand.checked_sub(1))
        && boundary(Some(last + 1)))
    .then_some(operand)
}

fn is_lone_placeholder(value: &[&Tok]) -> bool {
    let mut core = value
        .iter()
        .filter(|t| !matches!(t.token, Token::LParen | Token::RParen));
    matches!(core.next().map(|t| &t.token), Some(Token::Placeholder(_))) && core.next().is_none()
}

/// The declared type of a migrating column as the client's shape has it:
/// `b`'s from the migration, `a`'s from the catalog snapshot (or, once `a`
/// is dropped, the type `down` casts to).
fn declared_type(m: &ActiveMigration, column: &str, catalog: &Catalog) -> Option<String> {
    let spec = &m.spec;
    if column == spec.to {
        if let Some(ty) = &spec.new_type {
            return Some(ty.clone());
        }
    }
    catalog
        .table(Some(&spec.table.schema), &spec.table.name)
        .and_then(|t| t.column(&spec.from))
        .map(|c| c.type_name.clone())
        .or_else(|| spec.down_type.clone())
}

fn toks_in(toks: &[Tok], start: usize, end: usize) -> Vec<&Tok> {
    toks.iter()
        .filter(|t| t.start >= start && t.end <= end)
        .collect()
}

/// Byte ranges of the comma-separated items of the parenthesized list that
/// opens at byte `open`.
fn row_items(toks: &[Tok], open: usize) -> Result<Vec<(usize, usize)>, String> {
    let first = toks
        .iter()
        .position(|t| t.start == open && t.token == Token::LParen)
        .ok_or("has a VALUES row pgshift cannot find")?;
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut item_start: Option<usize> = None;
    let mut item_end = 0;
    for t in &toks[first + 1..] {
        match t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket if depth > 0 => depth -= 1,
            Token::RParen => {
                items.push((item_start.ok_or("has an empty VALUES item")?, item_end));
                return Ok(items);
            }
            Token::Comma if depth == 0 => {
                items.push((
                    item_start.take().ok_or("has an empty VALUES item")?,
                    item_end,
                ));
                continue;
            }
            _ => {}
        }
        item_start.get_or_insert(t.start);
        item_end = t.end;
    }
    Err("has an unterminated VALUES row".into())
}

/// Byte ranges of the items of a SELECT's select list (`toks` starts at the
/// SELECT). Items with an output alias are refused: the value would be
/// written twice under one name.
fn select_items(toks: &[Tok]) -> Result<Vec<(usize, usize)>, String> {
    let mut i = 1;
    if toks
        .get(i)
        .is_some_and(|t| is_keyword(&t.token, Keyword::ALL))
    {
        i += 1;
    }
    if toks
        .get(i)
        .is_some_and(|t| is_keyword(&t.token, Keyword::DISTINCT))
    {
        return Err("inserts from SELECT DISTINCT, which is not rewritten yet".into());
    }
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut item: Option<(usize, usize)> = None;
    for t in &toks[i..] {
        match &t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            Token::Comma if depth == 0 => {
                items.push(item.take().ok_or("has an empty select item")?);
                continue;
            }
            Token::Word(w) if depth == 0 && w.keyword == Keyword::AS => {
                return Err(
                    "inserts from a select list with aliases, which is not rewritten yet".into(),
                );
            }
            Token::Word(w)
                if depth == 0
                    && matches!(
                        w.keyword,
                        Keyword::FROM
                            | Keyword::WHERE
                            | Keyword::GROUP
                            | Keyword::HAVING
                            | Keyword::ORDER
                            | Keyword::LIMIT
                            | Keyword::OFFSET
                            | Keyword::WINDOW
                    ) =>
            {
                break
            }
            _ => {}
        }
        item = Some((item.map_or(t.start, |r| r.0), t.end));
    }
    items.push(item.ok_or("has an empty select list")?);
    Ok(items)
}

/// Byte offset just after the projection item that holds the column
/// reference at token `at` (the item ends at a top-level comma or the
/// clause keyword that follows the list).
fn item_end(toks: &[Tok], at: usize) -> usize {
    // Closing the parentheses that wrap the reference leaves depth at 0:
    // only parentheses opened after it (a type's `(10,2)`) nest.
    let mut depth = 0usize;
    let mut end = toks[at].end;
    for t in &toks[at + 1..] {
        match &t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            Token::Comma | Token::SemiColon if depth == 0 => break,
            Token::Word(w)
                if depth == 0
                    && matches!(
                        w.keyword,
                        Keyword::FROM
                            | Keyword::WHERE
                            | Keyword::INTO
                            | Keyword::GROUP
                            | Keyword::ORDER
                            | Keyword::LIMIT
                    ) =>
            {
                break
            }
            _ => {}
        }
        end = t.end;
    }
    end
}

/// Byte range of the value assigned to the SET target at token `target`.
fn assignment_value(toks: &[Tok], target: usize) -> Result<(usize, usize), String> {
    if toks.get(target + 1).map(|t| &t.token) != Some(&Token::Eq) {
        return Err("has a SET target pgshift cannot read".into());
    }
    let mut depth = 0usize;
    let mut range: Option<(usize, usize)> = None;
    for t in &toks[target + 2..] {
        match &t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth = depth.saturating_sub(1),
            Token::Comma if depth == 0 => break,
            Token::Word(w)
                if depth == 0
                    && matches!(
                        w.keyword,
                        Keyword::FROM | Keyword::WHERE | Keyword::RETURNING
                    ) =>
            {
                break
            }
            _ => {}
        }
        range = Some((range.map_or(t.start, |r| r.0), t.end));
    }
    range.ok_or_else(|| "has an empty SET value".into())
}

fn last_ident(name: &ObjectName) -> Option<&Ident> {
    match name.0.last()? {
        ObjectNamePart::Identifier(id) => Some(id),
        _ => None,
    }
}

pub(super) fn fold(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn ident_is(ident: &Ident, folded: &str) -> bool {
    fold(ident) == folded
}

pub(super) fn is_wildcard_context(prev: &Token) -> bool {
    match prev {
        Token::Comma | Token::Period => true,
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::SELECT | Keyword::DISTINCT | Keyword::ALL | Keyword::RETURNING
        ),
        _ => false,
    }
}

pub(super) fn is_keyword(token: &Token, keyword: Keyword) -> bool {
    matches!(token, Token::Word(w) if w.keyword == keyword)
}

/// The word token names `folded` (unquoted in any case, quoted exactly).
pub fn names(token: &Token, folded: &str) -> bool {
    match token {
        Token::Word(w) => match w.quote_style {
            Some(_) => w.value == folded,
            None => w.value.eq_ignore_ascii_case(folded),
        },
        _ => false,
    }
}
