//! A column being dropped (`"op": "drop_column"`): the new shape (an
//! unmarked client's once reads are switched, a marked one's throughout:
//! `super::marker`) no longer has it, so a positional INSERT of the new
//! shape's width is given the new shape's column list — its values would
//! otherwise land one column off. Reads, writes and `*` of the column are
//! `super::edits`' (it is read and written as it is while it exists).

use super::migration::quote_ident;
use super::resolve::{Implied, ImpliedSource, Refusal, Target};
use super::text::Edit;

/// The new shape's columns a positional INSERT `i` writes, when they are
/// not the table's own first columns (the dropped one stands among them);
/// `None` when the INSERT needs nothing.
pub fn new_shape_list(i: &Implied, t: &Target<'_>) -> Option<Vec<String>> {
    let spec = &t.m.spec;
    if !spec.dropped || !super::marker::sees_new(t.m) || !i.columns.is_empty() {
        return None;
    }
    let width = match &i.source {
        ImpliedSource::Values { width, .. } => *width,
        _ => return None, // INSERT … SELECT: see `rows` (not split here)
    };
    let physical = t.physical.as_ref()?;
    if width >= physical.len() {
        return None; // the old shape's width: it writes the column too
    }
    let new: Vec<String> = physical
        .iter()
        .filter(|c| **c != spec.from)
        .cloned()
        .collect();
    let list = new.get(..width)?.to_vec();
    (list[..] != physical[..width]).then_some(list)
}

/// The new shape's column list given to positional INSERT `i`, when it
/// needs one.
pub fn implied_edits(i: &Implied, t: &Target<'_>, edits: &mut Vec<Edit>) -> Result<(), Refusal> {
    if t.physical.is_none() {
        return Err(t.no_catalog(i.target));
    }
    if let Some(list) = new_shape_list(i, t) {
        let names: Vec<String> = list.iter().map(|c| quote_ident(c)).collect();
        edits.push(Edit {
            start: i.after_target,
            end: i.after_target,
            text: format!("({}) ", names.join(", ")),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::migration::{MigrationSpec, Phase};
    use super::super::rules::ActiveMigration;
    use super::super::testing;

    /// `users (id, legacy, name)` dropping `legacy` in `phase`.
    fn planned(sql: &str, phase: Phase) -> String {
        let spec = MigrationSpec::drop_column("m", "users", "legacy", None).unwrap();
        let m = ActiveMigration { spec, phase };
        let mut columns = vec![("id", "text"), ("legacy", "text"), ("name", "text")];
        if !m.has_old() {
            columns.retain(|c| c.0 != "legacy");
        }
        let users = testing::table(&columns);
        testing::planned(sql, &[m], vec![("public", "users", users)], None)
    }

    #[test]
    fn the_column_leaves_the_unmarked_star_at_the_switch() {
        assert_eq!(
            planned("select * from users", Phase::Expanded),
            "select users.id, users.legacy, users.name from users"
        );
        assert_eq!(
            planned("select * from users", Phase::Switched),
            "select users.id, users.name from users"
        );
        // Gone, it is Postgres' to answer: no rules.
        assert_eq!(
            planned("select * from users", Phase::Contracted),
            "select * from users"
        );
    }

    #[test]
    fn the_old_shape_reads_and_writes_it_as_it_is_until_it_is_gone() {
        for phase in [Phase::Expanded, Phase::Switched] {
            for sql in [
                "select legacy from users where id = $1",
                "update users set legacy = $1 where id = $2",
                "insert into users (id, legacy, name) values ($1, $2, $3)",
                "insert into users (id, legacy) select '1', 'l' union all select '2', 'm'",
            ] {
                assert_eq!(planned(sql, phase), sql, "{phase}");
            }
        }
    }

    #[test]
    fn a_positional_insert_of_the_new_width_gets_the_new_list_after_the_switch() {
        assert_eq!(
            planned("insert into users values ('1', 'n')", Phase::Switched),
            "insert into users (id, name) values ('1', 'n')"
        );
        let old_width = "insert into users values ('1', 'l', 'n')";
        assert_eq!(planned(old_width, Phase::Switched), old_width);
        let before = "insert into users values ('1', 'l')";
        assert_eq!(planned(before, Phase::Expanded), before);
    }
}
