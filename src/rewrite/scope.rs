//! Name resolution, as Postgres does it (`parse_relation.c`): the relations
//! a query block can see — its FROM items (tables, CTEs, derived tables,
//! functions, joins with their USING / NATURAL columns) and, outwards, the
//! blocks it is nested in — and which of them an unqualified or qualified
//! column reference names.
//!
//! A migrating table's columns are seen in the *client's shape*: the old
//! shape has `a` and not `b`, the new shape `b` and not `a`, whatever is
//! physically in the table in the current phase. A statement whose shape
//! its names do not settle is first read in the union of both (a client may
//! name both columns of one table). Like sqlglot's `optimizer/scope.py`,
//! this module only answers questions; the walk over the syntax tree that
//! asks them is [`super::resolve`].

/// How a statement sees a migration's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Both `a` and `b` (the shape is not settled, or the client names both).
    Union,
    /// The old shape: `a`, no `b`.
    Old,
    /// The new shape: `b`, no `a`.
    New,
}

/// Which of a migration's two columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    From,
    To,
}

/// The columns of a relation, as far as they are known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Columns {
    Known(Vec<String>),
    /// Not known (a function, a table the catalog snapshot lacks): it may
    /// have any column; it has these for sure.
    Unknown(Vec<String>),
}

impl Columns {
    fn has(&self, name: &str) -> bool {
        match self {
            Columns::Known(c) | Columns::Unknown(c) => c.iter().any(|c| c == name),
        }
    }

    fn may_have(&self, name: &str) -> bool {
        matches!(self, Columns::Unknown(_)) || self.has(name)
    }

    /// The list, when it is known.
    pub fn known(&self) -> Option<&[String]> {
        match self {
            Columns::Known(c) => Some(c),
            Columns::Unknown(_) => None,
        }
    }
}

/// One FROM item (or the target of an INSERT / UPDATE / DELETE).
#[derive(Debug, Clone)]
pub struct Relation {
    /// The name its columns are qualified with: its alias, else the
    /// table's (or function's) own name; `None` for an unaliased subquery.
    pub name: Option<String>,
    /// For an unaliased table, its schema: `schema.table.column` reaches it.
    pub schema: Option<String>,
    /// Its columns in the client's shape.
    pub columns: Columns,
    /// The migrating table of relevant migration `k`.
    pub migration: Option<usize>,
    /// Its physical columns when it is a migrating table (what Postgres
    /// sees in the phase): a reference to another relation named like one
    /// of them must be qualified.
    pub physical: Vec<String>,
}

impl Relation {
    pub fn other(name: Option<String>, columns: Columns) -> Relation {
        Relation {
            name,
            schema: None,
            columns,
            migration: None,
            physical: Vec::new(),
        }
    }
}

/// The relations one query block sees, and the block around it.
#[derive(Debug, Default)]
pub struct Scope<'p> {
    pub relations: Vec<Relation>,
    /// Columns merged by `JOIN … USING` / `NATURAL JOIN`: an unqualified
    /// reference to one is not ambiguous.
    pub merged: Vec<String>,
    pub parent: Option<&'p Scope<'p>>,
}

/// Where a column reference leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Column `column` of relation `relation` of the block `level` steps out.
    Column {
        level: usize,
        relation: usize,
        column: String,
    },
    /// A column merged by USING / NATURAL (of the block `level` out).
    Merged { level: usize },
    /// Several relations of one block have it (Postgres: 42702).
    Ambiguous { level: usize },
    /// One relation has it for sure and another, of unknown columns, may.
    Uncertain { level: usize },
    /// No relation in reach has it (not a column, or 42703 in Postgres).
    Nowhere,
}

impl<'p> Scope<'p> {
    pub fn new(relations: Vec<Relation>, parent: Option<&'p Scope<'p>>) -> Scope<'p> {
        Scope {
            relations,
            merged: Vec::new(),
            parent,
        }
    }

    /// The block `level` steps out (0: this one).
    pub fn at(&self, level: usize) -> Option<&Scope<'p>> {
        let mut scope = self;
        for _ in 0..level {
            scope = scope.parent?;
        }
        Some(scope)
    }

    /// Resolves an unqualified column name: the innermost block with a
    /// relation that has (or may have) it decides.
    pub fn resolve(&self, column: &str) -> Found {
        let mut scope = Some(self);
        let mut level = 0;
        while let Some(s) = scope {
            if s.merged.iter().any(|m| m == column) {
                return Found::Merged { level };
            }
            let sure: Vec<usize> = (0..s.relations.len())
                .filter(|&i| s.relations[i].columns.has(column))
                .collect();
            let maybe = s
                .relations
                .iter()
                .any(|r| !r.columns.has(column) && r.columns.may_have(column));
            match (sure.as_slice(), maybe) {
                ([one], false) => {
                    return Found::Column {
                        level,
                        relation: *one,
                        column: column.to_string(),
                    }
                }
                ([_], true) | ([], true) => return Found::Uncertain { level },
                ([], false) => {}
                _ => return Found::Ambiguous { level },
            }
            scope = s.parent;
            level += 1;
        }
        Found::Nowhere
    }

    /// Resolves `qualifier.column` (`qualifier` = `[schema.]name`): the
    /// innermost block with a relation of that name decides.
    pub fn resolve_qualified(&self, schema: Option<&str>, name: &str, column: &str) -> Found {
        let mut scope = Some(self);
        let mut level = 0;
        while let Some(s) = scope {
            let found = s.relations.iter().position(|r| {
                r.name.as_deref() == Some(name)
                    && schema.is_none_or(|schema| r.schema.as_deref() == Some(schema))
            });
            if let Some(relation) = found {
                return if s.relations[relation].columns.may_have(column) {
                    Found::Column {
                        level,
                        relation,
                        column: column.to_string(),
                    }
                } else {
                    Found::Nowhere
                };
            }
            scope = s.parent;
            level += 1;
        }
        Found::Nowhere
    }

    /// Whether a relation in reach (this block and those around it) other
    /// than relation `relation` of block `level` has or may have `column`.
    pub fn others_may_have(&self, level: usize, relation: usize, column: &str) -> bool {
        let mut scope = Some(self);
        let mut at = 0;
        while let Some(s) = scope {
            let other = s
                .relations
                .iter()
                .enumerate()
                .any(|(i, r)| !(at == level && i == relation) && r.columns.may_have(column));
            if other {
                return true;
            }
            scope = s.parent;
            at += 1;
        }
        false
    }

    /// The relation a [`Found::Column`] names.
    pub fn relation(&self, level: usize, relation: usize) -> Option<&Relation> {
        self.at(level)?.relations.get(relation)
    }

    /// Whether a relation physically has (or may have) `column` that would
    /// capture an unqualified reference to it before relation `except` of
    /// block `level` does — another of that block's, or one of a block
    /// nested between: such a reference must be qualified to mean on the
    /// physical tables what it means in the client's shape.
    pub fn clashes(&self, level: usize, except: usize, column: &str) -> bool {
        (0..=level).any(|at| {
            self.at(at).is_some_and(|s| {
                s.relations.iter().enumerate().any(|(i, r)| {
                    !(at == level && i == except)
                        && match r.migration {
                            Some(_) => r.physical.iter().any(|c| c == column),
                            None => r.columns.may_have(column),
                        }
                })
            })
        })
    }
}

/// A migrating table's columns in `shape`, from its physical columns
/// (`physical`, in position order): the new column, while it does not exist
/// yet, comes last (where `ADD COLUMN` puts it) — or, for a rename in place
/// (`in_place`), just after the old one, where the rename leaves it; the
/// old one, once dropped or renamed, comes `old_at` (where it stood).
pub fn shaped(
    physical: &[String],
    (from, to): (&str, &str),
    old_at: usize,
    in_place: bool,
    shape: Shape,
) -> Vec<String> {
    let mut columns: Vec<String> = physical.to_vec();
    // An added column has no old one (`from` empty).
    if !from.is_empty() && !columns.iter().any(|c| c == from) {
        columns.insert(old_at.min(columns.len()), from.to_string());
    }
    // A dropped column has no new one (`to` empty).
    if !to.is_empty() && !columns.iter().any(|c| c == to) {
        let at = match in_place {
            true => columns
                .iter()
                .position(|c| c == from)
                .map_or(columns.len(), |i| i + 1),
            false => columns.len(),
        };
        columns.insert(at, to.to_string());
    }
    match shape {
        Shape::Union => columns,
        Shape::Old => columns.into_iter().filter(|c| c != to).collect(),
        Shape::New => columns.into_iter().filter(|c| c != from).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(name: &str, columns: &[&str]) -> Relation {
        Relation::other(
            Some(name.into()),
            Columns::Known(columns.iter().map(|c| c.to_string()).collect()),
        )
    }

    #[test]
    fn an_unqualified_name_resolves_in_the_innermost_block_that_has_it() {
        let outer = Scope::new(vec![known("o", &["id", "name"])], None);
        let inner = Scope::new(vec![known("u", &["id", "org_id"])], Some(&outer));
        assert_eq!(
            inner.resolve("org_id"),
            Found::Column {
                level: 0,
                relation: 0,
                column: "org_id".into()
            }
        );
        assert_eq!(
            inner.resolve("name"),
            Found::Column {
                level: 1,
                relation: 0,
                column: "name".into()
            },
            "correlated"
        );
        assert_eq!(inner.resolve("nope"), Found::Nowhere);
        let both = Scope::new(vec![known("u", &["id"]), known("o", &["id"])], None);
        assert_eq!(both.resolve("id"), Found::Ambiguous { level: 0 });
        let mut joined = Scope::new(vec![known("u", &["id"]), known("o", &["id"])], None);
        joined.merged.push("id".into());
        assert_eq!(joined.resolve("id"), Found::Merged { level: 0 });
        let unknown = Scope::new(
            vec![
                known("u", &["id"]),
                Relation::other(Some("f".into()), Columns::Unknown(vec![])),
            ],
            None,
        );
        assert_eq!(unknown.resolve("id"), Found::Uncertain { level: 0 });
    }

    #[test]
    fn a_qualified_name_finds_its_relation_by_name() {
        let outer = Scope::new(vec![known("o", &["id", "name"])], None);
        let inner = Scope::new(vec![known("u", &["id"])], Some(&outer));
        assert_eq!(
            inner.resolve_qualified(None, "o", "name"),
            Found::Column {
                level: 1,
                relation: 0,
                column: "name".into()
            }
        );
        assert_eq!(inner.resolve_qualified(None, "u", "name"), Found::Nowhere);
    }

    #[test]
    fn shapes_show_one_column_or_both() {
        let physical: Vec<String> = ["id", "a", "x"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            shaped(&physical, ("a", "b"), 1, false, Shape::Union),
            ["id", "a", "x", "b"]
        );
        assert_eq!(
            shaped(&physical, ("a", "b"), 1, false, Shape::Old),
            ["id", "a", "x"]
        );
        assert_eq!(
            shaped(&physical, ("a", "b"), 1, false, Shape::New),
            ["id", "x", "b"]
        );
        let contracted: Vec<String> = ["id", "x", "b"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            shaped(&contracted, ("a", "b"), 1, false, Shape::Old),
            ["id", "a", "x"]
        );
        // A rename in place: `b` stands where `a` does, before the rename
        // and (as `a` does) after it.
        assert_eq!(
            shaped(&physical, ("a", "b"), 1, true, Shape::New),
            ["id", "b", "x"]
        );
        assert_eq!(
            shaped(&physical, ("a", "b"), 1, true, Shape::Union),
            ["id", "a", "b", "x"]
        );
        let renamed: Vec<String> = ["id", "b", "x"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            shaped(&renamed, ("a", "b"), 1, true, Shape::Old),
            ["id", "a", "x"]
        );
        assert_eq!(
            shaped(&renamed, ("a", "b"), 1, true, Shape::Union),
            ["id", "a", "b", "x"]
        );
    }
}
