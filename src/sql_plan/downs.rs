//! The `down` of a type change where it is exact: every value of the old
//! type becomes a value of the new one and converts back unchanged
//! (integers widened, `varchar(n)` grown or turned to `text`, `text` and
//! `varchar` without a length either way). A new value that does not fit
//! the old type fails the write that makes it, as it would on the old
//! column. Any other change needs its `down` written by hand.

/// The old type cast back from the new one (`column` quoted), or `None`
/// when pgshift does not know the change to be exact. Types as Postgres'
/// `format_type` or a DDL statement spells them.
pub fn derived_down(column: &str, old: &str, new: &str) -> Option<String> {
    let (old_t, new_t) = (Type::of(old)?, Type::of(new)?);
    let exact = match (old_t, new_t) {
        (Type::Int(a), Type::Int(b)) => a < b,
        (Type::Varchar(Some(a)), Type::Varchar(Some(b))) => a <= b,
        (Type::Varchar(_), Type::Varchar(None) | Type::Text) => true,
        (Type::Text, Type::Varchar(None)) => true,
        _ => false,
    };
    exact.then(|| format!("{column}::{}", old_t.spelled()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    /// An integer type of this many bytes.
    Int(u8),
    Varchar(Option<u32>),
    Text,
}

impl Type {
    fn of(spelled: &str) -> Option<Type> {
        let t = spelled.trim().to_ascii_lowercase();
        let t = t.strip_prefix("pg_catalog.").unwrap_or(&t);
        Some(match t {
            "smallint" | "int2" => Type::Int(2),
            "integer" | "int" | "int4" => Type::Int(4),
            "bigint" | "int8" => Type::Int(8),
            "text" => Type::Text,
            "varchar" | "character varying" => Type::Varchar(None),
            _ => {
                let (name, rest) = t.split_once('(')?;
                let n = rest.strip_suffix(')')?.trim().parse().ok()?;
                match name.trim() {
                    "varchar" | "character varying" => Type::Varchar(Some(n)),
                    _ => return None,
                }
            }
        })
    }

    fn spelled(self) -> String {
        match self {
            Type::Int(2) => "smallint".into(),
            Type::Int(4) => "integer".into(),
            Type::Int(_) => "bigint".into(),
            Type::Varchar(Some(n)) => format!("varchar({n})"),
            Type::Varchar(None) => "varchar".into(),
            Type::Text => "text".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::derived_down;

    #[test]
    fn exact_changes_get_their_down_and_others_none() {
        let d = |old, new| derived_down("\"amount\"", old, new);
        assert_eq!(
            d("integer", "BIGINT").as_deref(),
            Some("\"amount\"::integer")
        );
        assert_eq!(
            d("smallint", "int4").as_deref(),
            Some("\"amount\"::smallint")
        );
        assert_eq!(
            d("character varying(50)", "varchar(100)").as_deref(),
            Some("\"amount\"::varchar(50)")
        );
        assert_eq!(
            d("character varying(50)", "TEXT").as_deref(),
            Some("\"amount\"::varchar(50)")
        );
        assert_eq!(
            d("text", "character varying").as_deref(),
            Some("\"amount\"::text")
        );
        for (old, new) in [
            ("bigint", "integer"),
            ("integer", "integer"),
            ("character varying(100)", "varchar(50)"),
            ("text", "varchar(20)"),
            ("integer", "numeric(12,2)"),
            ("timestamp without time zone", "timestamptz"),
        ] {
            assert_eq!(d(old, new), None, "{old} -> {new}");
        }
    }
}
