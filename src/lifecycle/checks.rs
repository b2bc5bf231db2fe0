//! Carrying the CHECK constraints on the old column over to the new one.
//!
//! At `expand` each CHECK constraint of the table that uses `a` is added
//! again with `b` in `a`'s place (from `pg_get_constraintdef`, the column
//! replaced token by token) as `NOT VALID`: enforced for every new write at
//! once — the dual writes satisfy it because `a` does, and `b IS NULL` on
//! rows not yet backfilled passes any check — without scanning the table
//! under a lock. At `contract` the copy is validated with the foreign keys
//! (`VALIDATE CONSTRAINT` lets reads and writes go on) and takes the
//! original's name when `a` is dropped. A check `b`'s new type cannot carry
//! (`length(a) > 0` after a change to `bigint`) is reported as an event
//! and skipped, as a foreign key is.

use tokio_postgres::Client;

use super::ddl::{self, Constraint};
use super::handover::replace_column_with;
use crate::rewrite::migration::{quote_ident, MigrationSpec};

/// The CHECK constraints of `table` that use `column` (pgshift's own
/// constraints left out).
pub async fn checks_on(
    client: &Client,
    table: &str,
    column: &str,
) -> Result<Vec<Constraint>, tokio_postgres::Error> {
    ddl::constraints_using(client, table, column, "c").await
}

/// `ALTER TABLE table ADD CONSTRAINT new_name <definition with a → down(b)>
/// NOT VALID` (`b` itself for a rename: a type change keeps the check's
/// meaning, `amount < 100000` in cents stays that in `amount_dec`'s
/// terms); `None` when the definition never names `a`.
pub fn copy_statement(
    table: &str,
    definition: &str,
    new_name: &str,
    spec: &MigrationSpec,
) -> Option<String> {
    let b = quote_ident(&spec.to);
    let copied = replace_column_with(definition, &spec.from, &spec.down_of(&b))?;
    if copied == definition || !copied.starts_with("CHECK") {
        return None;
    }
    Some(ddl::add_not_valid(table, new_name, &copied))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_column_is_replaced_and_nothing_else() {
        let rename = MigrationSpec::new("m", "t", "a", "b", None, None, None).unwrap();
        assert_eq!(
            copy_statement(
                "public.t",
                "CHECK (((a > 0) AND (a < lower_a)))",
                "t_a_check_pgshift_b",
                &rename,
            )
            .as_deref(),
            Some("alter table public.t add constraint t_a_check_pgshift_b CHECK (((b > 0) AND (b < lower_a))) NOT VALID")
        );
        assert_eq!(
            copy_statement("t", "CHECK ((a <> ''::text)) NOT VALID", "n", &rename).as_deref(),
            Some("alter table t add constraint n CHECK ((b <> ''::text)) NOT VALID")
        );
        assert_eq!(copy_statement("t", "CHECK ((x > 0))", "n", &rename), None);
    }

    #[test]
    fn a_type_change_keeps_the_check_in_the_old_column_s_terms() {
        let cents = MigrationSpec::new(
            "m",
            "t",
            "amount",
            "amount_dec",
            Some("numeric(12,2)"),
            Some("amount::numeric / 100"),
            Some("(amount_dec * 100)::integer"),
        )
        .unwrap();
        assert_eq!(
            copy_statement("t", "CHECK ((amount < 100000))", "n", &cents).as_deref(),
            Some("alter table t add constraint n CHECK (((((amount_dec) * 100)::integer) < 100000)) NOT VALID")
        );
    }
}
