//! The phase table of DESIGN.md as text edits: what each [`Sites`] entry of
//! a statement becomes in the current phase — a read served from the read
//! source (converted by `up`/`down`, aliased so the client sees its own
//! column's name), a write to every physical column of the phase, a `*`
//! spelled out with both migrating columns, an INSERT given the columns it
//! left implied; for a NOT NULL being set with a fill, the old shape's
//! NULLs given the fill. The rest of the text is kept byte for byte.

use super::catalog::{is_constant_expression, Catalog};
use super::migration::{quote_ident, MigrationSpec};
use super::resolve::{
    ColumnUse, ConflictColumn, Implied, ImpliedSource, Sites, Star, StarPart, Target, Use, Value,
    Write,
};
use super::rules::ActiveMigration;
use super::scope::{shaped, Shape, Which};
use super::text::{splice, Edit};

pub use super::resolve::Refusal;

fn column_name(spec: &MigrationSpec, which: Which) -> &str {
    match which {
        Which::From => &spec.from,
        Which::To => &spec.to,
    }
}

/// The column reads come from in the phase.
fn source(m: &ActiveMigration) -> &str {
    if let Some(column) = m.spec.one_sided() {
        return column; // read as it is while it exists
    }
    if m.spec.fill().is_some() {
        return &m.spec.from; // one column, read as it is
    }
    if m.reads_new() {
        &m.spec.to
    } else {
        &m.spec.from
    }
}

// ---- expansion: `*` and implied INSERT columns ----------------------------

/// The edits that make explicit what `*` and an INSERT's implied columns
/// stand for (the result is planned again as any other statement).
pub fn expansion(sql: &str, sites: &Sites, targets: &[Target<'_>]) -> Result<Vec<Edit>, Refusal> {
    let mut edits = Vec::new();
    for star in &sites.stars {
        edits.push(star_edit(star, targets)?);
    }
    for implied in &sites.implied {
        let t = &targets[implied.target];
        if let Some(fill) = t.fill {
            fill_implied(implied, t, fill, &mut edits)?;
            continue;
        }
        match (&t.m.spec.added, t.m.spec.dropped) {
            (Some(added), _) => super::added::implied_edits(sql, implied, t, added, &mut edits)?,
            (None, true) => super::dropped::implied_edits(implied, t, &mut edits)?,
            (None, false) => implied_edits(implied, t, &mut edits)?,
        }
    }
    Ok(edits)
}

fn star_edit(star: &Star, targets: &[Target<'_>]) -> Result<Edit, Refusal> {
    let mut parts = Vec::new();
    for part in &star.parts {
        parts.push(match part {
            StarPart::Target {
                target,
                qualifier,
                except,
            } => columns_of(&targets[*target], *target, qualifier, except)?,
            StarPart::Other { qualifier } => format!("{}.*", quote_ident(qualifier)),
            StarPart::Listed { qualifier, columns } => {
                let q = quote_ident(qualifier);
                columns
                    .iter()
                    .map(|c| format!("{q}.{}", quote_ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
            StarPart::Merged(c) => quote_ident(c),
        });
    }
    Ok(Edit {
        start: star.start,
        end: star.end,
        text: parts.join(", "),
    })
}

/// `q.c1, q.a, …, q.b`: every column the client sees under `*` (but
/// those in `except`).
fn columns_of(
    t: &Target<'_>,
    k: usize,
    qualifier: &str,
    except: &[String],
) -> Result<String, Refusal> {
    let spec = &t.m.spec;
    let physical = t.physical.as_ref().ok_or_else(|| t.no_catalog(k))?;
    let q = quote_ident(qualifier);
    // An added or a dropped column: the table as it is, without the
    // column when the session's shape does not have it. A type change
    // that keeps the name: the one name, where it stands (its physical
    // new column is the working name no client sees).
    let hidden = match t.kept_name_new {
        Some(_) => Some(spec.to.as_str()),
        None => super::marker::hidden(t.m),
    };
    let columns = match hidden {
        Some(hidden) => physical.iter().filter(|c| **c != hidden).cloned().collect(),
        None => shaped(
            physical,
            (&spec.from, &spec.to),
            t.old_at,
            spec.in_place,
            Shape::Union,
        ),
    };
    Ok(columns
        .iter()
        .filter(|c| !except.contains(c))
        .map(|c| format!("{q}.{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", "))
}

/// The value an INSERT that leaves both migrating columns out writes to
/// `a` (and so, dual-written, to `b`): `a`'s default, when evaluating it
/// twice gives the same value; empty once `a` is gone (`b`'s default, set
/// at expand, applies).
fn fill(t: &Target<'_>, k: usize, catalog: &Catalog) -> Result<String, Refusal> {
    let spec = &t.m.spec;
    if !t.m.has_old() {
        return Ok(String::new());
    }
    // A kept name appended for a new-shape session is read as `b`: its
    // value is `a`'s default converted.
    let converted = |d: String| match t.kept_name_new {
        Some(true) if d != "NULL" => spec.up_of(&d),
        _ => d,
    };
    let def = catalog
        .table(Some(&spec.table.schema), &spec.table.name)
        .ok_or_else(|| t.no_catalog(k))?;
    let default = def.column(&spec.from).and_then(|c| c.default.clone());
    match default {
        None => Ok("NULL".into()),
        Some(d) if is_constant_expression(&d) => Ok(converted(d)),
        Some(d) => Err((k, format!(
            "inserts without naming {} or {}, and its default {d} may give a different value each time it is evaluated; write the column's value explicitly",
            quote_ident(&spec.from),
            quote_ident(&spec.to)
        ))),
    }
}

fn implied_edits(i: &Implied, t: &Target<'_>, edits: &mut Vec<Edit>) -> Result<(), Refusal> {
    // A new-shape session's positional value for a kept name is in the
    // new type: listed, it is written through `down`.
    let kept_new_positional = t.kept_name_new == Some(true)
        && i.columns.is_empty()
        && matches!(i.source, ImpliedSource::Values { .. });
    if !t.m.has_new() && !kept_new_positional {
        return Ok(()); // one migrating column: the physical table is the old shape
    }
    let k = i.target;
    let spec = &t.m.spec;
    let catalog = t.catalog;
    let appended = match &i.source {
        ImpliedSource::Query => {
            return Err((k, format!(
                "inserts from a query without naming {} or {}; list the columns, including the migrating one",
                quote_ident(&spec.from),
                quote_ident(&spec.to)
            )))
        }
        ImpliedSource::DefaultValues(start, end) => {
            let value = fill(t, k, catalog)?;
            if !value.is_empty() {
                edits.push(Edit {
                    start: *start,
                    end: *end,
                    text: format!("({}) VALUES ({value})", quote_ident(&spec.from)),
                });
            }
            return Ok(());
        }
        ImpliedSource::Values { width, .. } if i.columns.is_empty() => {
            positional_list(i, t, *width, edits)?
        }
        ImpliedSource::Values { .. } => {
            let value = fill(t, k, catalog)?;
            if value.is_empty() {
                return Ok(());
            }
            let close = i.list_close.ok_or_else(|| (k, "has an INSERT column list pgshift cannot place".to_string()))?;
            edits.push(Edit {
                start: close,
                end: close,
                text: format!(", {}", quote_ident(&spec.from)),
            });
            Some(value)
        }
    };
    if let (Some(value), ImpliedSource::Values { closes, .. }) = (appended, &i.source) {
        for &close in closes {
            edits.push(Edit {
                start: close,
                end: close,
                text: format!(", {value}"),
            });
        }
    }
    Ok(())
}

/// A positional INSERT gets the old shape's column list (its first
/// `width` columns, plus `a` when left out); answers the value appended
/// for `a`, if any.
fn positional_list(
    i: &Implied,
    t: &Target<'_>,
    width: usize,
    edits: &mut Vec<Edit>,
) -> Result<Option<String>, Refusal> {
    let k = i.target;
    let spec = &t.m.spec;
    let physical = t.physical.as_ref().ok_or_else(|| t.no_catalog(k))?;
    // Renamed in place, the column stands where it always stood.
    let position_known = spec.in_place
        || match spec.old_after.as_deref() {
            Some(after) => after.is_empty() || physical.iter().any(|c| c == after),
            None => false,
        };
    if !physical.contains(&spec.from) && !position_known {
        return Err((k, format!(
            "inserts without a column list after {} was dropped, when its place among the columns is no longer known; list the columns",
            quote_ident(&spec.from)
        )));
    }
    let columns = shaped(
        physical,
        (&spec.from, &spec.to),
        t.old_at,
        spec.in_place,
        Shape::Old,
    );
    if width > columns.len() {
        return Err((k, format!(
            "inserts {width} values without a column list into a table whose columns (in the old shape) are {}; list the columns",
            columns.len()
        )));
    }
    let mut list: Vec<String> = columns[..width].iter().map(|c| quote_ident(c)).collect();
    let mut appended = None;
    if !columns[..width].contains(&spec.from) && t.m.has_old() {
        list.push(quote_ident(&spec.from));
        appended = Some(fill(t, k, t.catalog)?);
    }
    edits.push(Edit {
        start: i.after_target,
        end: i.after_target,
        text: format!("({}) ", list.join(", ")),
    });
    Ok(appended)
}

// ---- the phase table: reads and writes ------------------------------------

/// The edits of a statement whose `*` and implied columns are explicit.
pub fn rewrite(sql: &str, sites: &Sites, targets: &[Target<'_>]) -> Result<Vec<Edit>, Refusal> {
    let mut reads: Vec<Edit> = Vec::new();
    for u in &sites.uses {
        read_edits(sql, u, &targets[u.target], &mut reads);
    }
    for &(at, ref qualifier) in &sites.qualify {
        reads.push(Edit {
            start: at,
            end: at,
            text: format!("{}.", quote_ident(qualifier)),
        });
    }
    let mut edits = Vec::new();
    // An added or a dropped column is written and matched on as it is; a
    // column whose NOT NULL is being set is given its fill for NULL.
    let as_written =
        |k: usize| targets[k].m.spec.one_sided().is_some() || targets[k].m.spec.fill().is_some();
    for w in sites.writes.iter() {
        if let Some(fill) = targets[w.target].fill {
            fill_edits(sql, w, &targets[w.target], fill, &mut reads)?;
        }
    }
    for c in sites.conflicts.iter().filter(|c| !as_written(c.target)) {
        edits.push(conflict_edit(c, &targets[c.target])?);
    }
    let mut inserted: Vec<usize> = Vec::new();
    for w in sites.writes.iter().filter(|w| !as_written(w.target)) {
        if !w.assign {
            if inserted.contains(&w.target) {
                let spec = &targets[w.target].m.spec;
                return Err((
                    w.target,
                    format!(
                        "inserts into both {} and {}, which pgshift cannot reconcile",
                        quote_ident(&spec.from),
                        quote_ident(&spec.to)
                    ),
                ));
            }
            inserted.push(w.target);
        }
        write_edits(sql, w, &targets[w.target], &mut reads, &mut edits)?;
    }
    edits.extend(reads);
    Ok(edits)
}

/// A read of `u`'s column: from the read source, converted, under the
/// client's name.
fn read_edits(sql: &str, u: &ColumnUse, t: &Target<'_>, out: &mut Vec<Edit>) {
    let m = t.m;
    let spec = &m.spec;
    let column = column_name(spec, u.which);
    let source = source(m);
    let mut qualifier = sql[u.start..u.ident].to_string();
    if qualifier.is_empty() {
        if let Some(q) = &u.qualify_with {
            qualifier = format!("{}.", quote_ident(q));
        }
    }
    // A widened integer compared with a literal or a placeholder, or
    // sorted on, reads the physical column as it is (its index serves
    // the lookup); a placeholder keeps the client's type.
    let widened = spec.integer_widening().filter(|_| column != source);
    if let (Some((old, new)), Use::Compared { .. } | Use::SortKey) = (widened, &u.usage) {
        if let Use::Compared {
            other,
            placeholder: true,
        } = u.usage
        {
            let client_type = if column == spec.from { old } else { new };
            out.push(Edit {
                start: other.1,
                end: other.1,
                text: format!("::{client_type}"),
            });
        }
        out.push(Edit {
            start: u.start,
            end: u.end,
            text: format!("{qualifier}{}", quote_ident(source)),
        });
        return;
    }
    // The name the client wrote: `column`'s own, but where a type change
    // keeps the name (then the physical column may be named otherwise).
    let client = spec.client_name(u.which);
    let text = if column == source {
        if client != column {
            format!("{qualifier}{}", quote_ident(source))
        } else if qualifier == sql[u.start..u.ident] {
            return; // read as it is
        } else {
            format!("{qualifier}{}", &sql[u.ident..u.end])
        }
    } else {
        let from = format!("{qualifier}{}", quote_ident(source));
        if column == spec.to {
            spec.up_of(&from)
        } else {
            spec.down_of(&from)
        }
    };
    let renamed = column != source || client != column;
    match u.usage {
        Use::Item { wrapped: false, .. } if renamed => out.push(Edit {
            start: u.start,
            end: u.end,
            text: format!("{text} AS {}", quote_ident(client)),
        }),
        Use::Item {
            wrapped: true,
            item_end,
        } if renamed => {
            out.push(Edit {
                start: item_end,
                end: item_end,
                text: format!(" AS {}", quote_ident(client)),
            });
            out.push(Edit {
                start: u.start,
                end: u.end,
                text,
            });
        }
        _ => out.push(Edit {
            start: u.start,
            end: u.end,
            text,
        }),
    }
}

/// `ON CONFLICT (a)`: a rename's conflict target follows the read source
/// (its unique index exists on both columns).
fn conflict_edit(c: &ConflictColumn, t: &Target<'_>) -> Result<Edit, Refusal> {
    let spec = &t.m.spec;
    if !spec.is_rename() {
        return Err((c.target, "uses a migrating column as the ON CONFLICT target during a type change; name the unique constraint (ON CONFLICT ON CONSTRAINT …)".into()));
    }
    let physical = if t.m.has_old() && t.m.has_new() {
        source(t.m)
    } else if t.m.has_old() {
        &spec.from
    } else {
        &spec.to
    };
    Ok(Edit {
        start: c.start,
        end: c.end,
        text: quote_ident(physical),
    })
}

// ---- a NOT NULL being set: NULL writes given the fill -------------------

/// Whether an INSERT leaving the column out is given the fill: in a session
/// that fills, when the column has no default, and the INSERT has VALUES
/// or DEFAULT VALUES with a column list (or none) pgshift can extend.
pub fn fills_implied(i: &Implied, t: &Target<'_>) -> bool {
    let spec = &t.m.spec;
    let no_default = t
        .catalog
        .table(Some(&spec.table.schema), &spec.table.name)
        .and_then(|d| d.column(&spec.from))
        .is_some_and(|c| c.default.is_none());
    let extendable = match &i.source {
        ImpliedSource::Values { .. } => !i.columns.is_empty() && i.list_close.is_some(),
        ImpliedSource::DefaultValues(..) => true,
        ImpliedSource::Query => false,
    };
    t.fill.is_some() && no_default && extendable
}

/// The fill typed as the column (so an untyped value beside it in
/// `coalesce` takes the column's type).
fn typed_fill(t: &Target<'_>, fill: &str) -> String {
    match declared_type(t, Which::From) {
        Some(ty) => format!("({fill})::{ty}"),
        None => fill.to_string(),
    }
}

/// An INSERT that leaves the column out gets it, with the fill.
fn fill_implied(
    i: &Implied,
    t: &Target<'_>,
    fill: &str,
    edits: &mut Vec<Edit>,
) -> Result<(), Refusal> {
    let column = quote_ident(&t.m.spec.from);
    let value = typed_fill(t, fill);
    match &i.source {
        ImpliedSource::DefaultValues(start, end) => edits.push(Edit {
            start: *start,
            end: *end,
            text: format!("({column}) VALUES ({value})"),
        }),
        ImpliedSource::Values { closes, .. } => {
            let close = i.list_close.ok_or_else(|| {
                (
                    i.target,
                    "has an INSERT column list pgshift cannot place".to_string(),
                )
            })?;
            edits.push(Edit {
                start: close,
                end: close,
                text: format!(", {column}"),
            });
            for &row in closes {
                edits.push(Edit {
                    start: row,
                    end: row,
                    text: format!(", {value}"),
                });
            }
        }
        ImpliedSource::Query => {}
    }
    Ok(())
}

/// A write of the column: each value (but DEFAULT) as `coalesce(value,
/// fill)`, its own reads rewritten (taken out of `reads`).
fn fill_edits(
    sql: &str,
    w: &Write,
    t: &Target<'_>,
    fill: &str,
    reads: &mut Vec<Edit>,
) -> Result<(), Refusal> {
    let value = typed_fill(t, fill);
    for v in w.values.iter().filter(|v| !v.default) {
        let text = value_text(sql, v, reads)
            .ok_or_else(|| (w.target, "needs overlapping rewrites".to_string()))?;
        // A constant other than NULL (the fill itself, once spelled out)
        // needs nothing.
        let null = text.to_ascii_lowercase().contains("null");
        if is_constant_expression(&text) && !null {
            if text != sql[v.range.0..v.range.1] {
                reads.push(Edit {
                    start: v.range.0,
                    end: v.range.1,
                    text,
                });
            }
            continue;
        }
        reads.push(Edit {
            start: v.range.0,
            end: v.range.1,
            text: format!("coalesce({text}, {value})"),
        });
    }
    Ok(())
}

/// A written value's text with the rewrites of its own reads (taken out
/// of `reads`).
fn value_text(sql: &str, v: &Value, reads: &mut Vec<Edit>) -> Option<String> {
    let (start, end) = v.range;
    let mut inner: Vec<Edit> = Vec::new();
    reads.retain(|e| {
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
    splice(&sql[start..end], &mut inner)
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
fn write_targets(m: &ActiveMigration, which: Which) -> Vec<(&str, Convert)> {
    let spec = &m.spec;
    let writes_old = which == Which::From;
    let mut out = Vec::new();
    if m.has_old() {
        out.push((
            spec.from.as_str(),
            if writes_old {
                Convert::Same
            } else {
                Convert::Down
            },
        ));
    }
    if m.has_new() {
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

/// A written value may be duplicated or converted only when that keeps
/// its meaning: no function that may answer differently when evaluated
/// again, no DEFAULT.
fn check_value(v: &Value, targets: usize, m: &ActiveMigration) -> Result<(), String> {
    if targets < 2 && m.spec.is_rename() {
        return Ok(());
    }
    if v.default {
        return Err("writes DEFAULT to a migrating column, which needs the catalog's default; leave the column out of the statement instead".into());
    }
    if let Some(f) = &v.volatile {
        return Err(format!(
            "writes the result of {f}(…) to a migrating column, and evaluating it twice could change its value; compute it in the application, or write it in a statement of its own"
        ));
    }
    Ok(())
}

/// The declared type of a migrating column in the client's shape: `b`'s
/// from the migration, `a`'s from the catalog snapshot (or, once `a` is
/// dropped, the type `down` casts to).
fn declared_type(t: &Target<'_>, which: Which) -> Option<String> {
    let spec = &t.m.spec;
    if which == Which::To {
        if let Some(ty) = &spec.new_type {
            return Some(ty.clone());
        }
    }
    t.catalog
        .table(Some(&spec.table.schema), &spec.table.name)
        .and_then(|def| def.column(&spec.from))
        .map(|c| c.type_name.clone())
        .or_else(|| spec.down_type.clone())
}

/// A write: each value (with its own reads rewritten, taken out of
/// `reads`) goes to the physical column(s) of the phase.
fn write_edits(
    sql: &str,
    w: &Write,
    t: &Target<'_>,
    reads: &mut Vec<Edit>,
    edits: &mut Vec<Edit>,
) -> Result<(), Refusal> {
    let m = t.m;
    let spec = &m.spec;
    let k = w.target;
    let targets = write_targets(m, w.which);
    let mut value_texts: Vec<Vec<String>> = Vec::new();
    for v in &w.values {
        let mut value = value_text(sql, v, reads)
            .ok_or_else(|| (k, "needs overlapping rewrites".to_string()))?;
        check_value(v, targets.len(), m).map_err(|r| (k, r))?;
        if !spec.is_rename() && v.untyped {
            // A parameter or quoted literal written alone through a
            // conversion appears twice in different contexts (`a = $1`,
            // `up($1)`): cast it to the written column's type, as Postgres
            // infers it on the client's shape ('875.21' would otherwise be
            // read as the other column's integer). Inside an expression
            // both copies keep one context.
            let Some(ty) = declared_type(t, w.which) else {
                return Err((k, format!(
                    "writes a parameter to {} whose type pgshift does not know (not in its catalog snapshot)",
                    quote_ident(column_name(spec, w.which))
                )));
            };
            value = format!("{value}::{ty}");
        }
        value_texts.push(targets.iter().map(|(_, c)| c.apply(spec, &value)).collect());
    }
    let names: Vec<String> = targets.iter().map(|(c, _)| quote_ident(c)).collect();
    if w.assign {
        let Some(((_, end), texts)) = w.values.first().map(|v| v.range).zip(value_texts.first())
        else {
            return Ok(());
        };
        let text = names
            .iter()
            .zip(texts)
            .map(|(n, v)| format!("{n} = {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        edits.push(Edit {
            start: w.column.0,
            end,
            text,
        });
        return Ok(());
    }
    edits.push(Edit {
        start: w.column.0,
        end: w.column.1,
        text: names.join(", "),
    });
    for (v, texts) in w.values.iter().zip(&value_texts) {
        edits.push(Edit {
            start: v.range.0,
            end: v.range.1,
            text: texts.join(", "),
        });
    }
    Ok(())
}

#[cfg(test)]
/// A NOT NULL being set with a fill (`set_not_null` with `up`).
mod filled {
    use super::super::marker::Marked;
    use super::super::migration::{MigrationSpec, Phase};
    use super::super::rules::ActiveMigration;

    fn planned(sql: &str, mark: Option<Marked>) -> String {
        let keys = crate::ops::CatalogKeys {
            column: Some("phone".into()),
            up: Some("'unknown'".into()),
            ..Default::default()
        };
        let spec = MigrationSpec::catalog("m", "users", crate::ops::Op::SetNotNull, keys).unwrap();
        let m = ActiveMigration {
            spec,
            phase: Phase::Expanded,
        };
        let users =
            super::super::testing::table(&[("id", "text"), ("name", "text"), ("phone", "text")]);
        super::super::testing::planned(sql, &[m], vec![("public", "users", users)], mark)
    }

    #[test]
    fn the_old_shapes_nulls_are_given_the_fill() {
        let fill = "('unknown')::text";
        assert_eq!(
            planned(
                "insert into users (id, name, phone) values (1, 'a', $1)",
                None
            ),
            format!("insert into users (id, name, phone) values (1, 'a', coalesce($1, {fill}))")
        );
        assert_eq!(
            planned(
                "update users set phone = null, name = 'x' where id = 1",
                None
            ),
            format!("update users set phone = coalesce(null, {fill}), name = 'x' where id = 1")
        );
        assert_eq!(
            planned(
                "insert into users (id, name) values (1, 'a'), (2, 'b')",
                None
            ),
            format!(
                "insert into users (id, name, phone) values (1, 'a', {fill}), (2, 'b', {fill})"
            )
        );
        for unchanged in [
            "select * from users where phone is null",
            "insert into users (id, phone) values (1, default)",
        ] {
            assert_eq!(planned(unchanged, None), unchanged);
        }
        // The new shape's NULL meets the check, as once NOT NULL.
        let new = "insert into users (id, name, phone) values (1, 'a', null)";
        assert_eq!(planned(new, Some(Marked::New)), new);
    }
}
