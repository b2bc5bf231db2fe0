//! `"op": "add_column"`: what it accepts, checked, and the SQL pieces its
//! lifecycle runs. The column is added nullable (with its default when
//! that default is a constant: a catalog change, no table rewrite), filled
//! by the backfill where `up` (or a default that is not a constant) gives
//! existing rows a value, and made NOT NULL the scan-free way (a `NOT
//! VALID` check, validated, then `SET NOT NULL`). Until reads are switched,
//! an unmarked client's `*` does not yield it; an old-shape INSERT that
//! leaves it out is given `up` over the row's other values.
//!
//! The lifecycle steps are in `lifecycle::add_column`; the rewriting in
//! `rewrite::edits`.

use serde::{Deserialize, Serialize};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

use crate::names::quote_ident;
use crate::rewrite::catalog::is_constant_expression;

/// The longest type, default or `up` accepted.
const MAX_TEXT: usize = 16 * 1024;

/// The keys of an `add_column` as given (stored as given, checked again
/// whenever read back).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddColumnKeys {
    pub column: String,
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_null: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<String>,
    /// Which sessions see the column in `*` before the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_shape: Option<crate::rewrite::marker::ShapeMarker>,
}

/// A checked `add_column`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedColumn {
    /// The column, folded as Postgres folds it.
    pub column: String,
    /// Its type, as parsed and printed again.
    pub type_name: String,
    /// Its default, as parsed and printed again.
    pub default: Option<String>,
    pub not_null: bool,
    /// `up`, as parsed and printed again: a value over the row's other
    /// columns for the rows that exist and for old-shape INSERTs.
    pub up: Option<String>,
    /// The columns `up` reads (folded).
    pub reads: Vec<String>,
    /// The keys as given.
    pub keys: AddColumnKeys,
}

impl AddedColumn {
    /// Checks `keys`: one column name, a type, one expression each for the
    /// default and `up` (`up` within the conversions' allow-list, reading
    /// other columns only), and a value for the rows that exist when the
    /// column is NOT NULL.
    pub fn parse(keys: &AddColumnKeys) -> Result<AddedColumn, String> {
        let column = crate::ops::column_name(&keys.column).map_err(|e| format!("column: {e}"))?;
        let type_name = data_type(&keys.type_name).map_err(|e| format!("type: {e}"))?;
        let default = keys
            .default
            .as_deref()
            .map(crate::ops::default_expr)
            .transpose()?;
        let (up, reads) = match keys.up.as_deref() {
            Some(text) => {
                let (printed, reads) = crate::rewrite::conversion::check_over_row(text)
                    .map_err(|e| format!("up {text:?}: {e}"))?;
                if reads.contains(&column) {
                    return Err(format!(
                        "up {text:?} reads {}, the column it gives a value to",
                        quote_ident(&column)
                    ));
                }
                (Some(printed), reads)
            }
            None => (None, Vec::new()),
        };
        if let Some(marker) = &keys.new_shape {
            marker.check()?;
        }
        if keys.not_null && default.is_none() && up.is_none() {
            return Err(format!(
                "a NOT NULL column needs a value for the rows that exist and for INSERTs that leave it out: give \"default\" or \"up\" (or both) for {}",
                quote_ident(&column)
            ));
        }
        Ok(AddedColumn {
            column,
            type_name,
            default,
            not_null: keys.not_null,
            up,
            reads,
            keys: keys.clone(),
        })
    }

    /// The default is a constant: `ADD COLUMN … DEFAULT` stores it in the
    /// catalog, and every existing row reads it without being written.
    pub fn default_is_constant(&self) -> bool {
        self.default.as_deref().is_some_and(is_constant_expression)
    }

    /// The default goes into the `ADD COLUMN` itself: a constant, and no
    /// `up` to give the existing rows instead.
    pub fn default_at_add(&self) -> Option<&str> {
        match self.up {
            None if self.default_is_constant() => self.default.as_deref(),
            _ => None,
        }
    }

    /// `ALTER TABLE … ADD COLUMN` as expand runs it (nullable).
    pub fn add_statement(&self, table: &str) -> String {
        let mut sql = format!(
            "alter table {table} add column if not exists {} {}",
            quote_ident(&self.column),
            self.type_name
        );
        if let Some(d) = self.default_at_add() {
            sql.push_str(&format!(" default {d}"));
        }
        sql
    }

    /// The default set after the add (it applies to new rows only), when it
    /// was not part of the add.
    pub fn default_after_add(&self) -> Option<&str> {
        match self.default_at_add() {
            Some(_) => None,
            None => self.default.as_deref(),
        }
    }

    /// The value the backfill gives a row whose column is NULL, over the
    /// row's own columns: `up`, else a default that is not a constant;
    /// `None` when the rows that exist need nothing.
    pub fn fill(&self) -> Option<String> {
        match (&self.up, &self.default) {
            (Some(up), _) => Some(format!("({up})::{}", self.type_name)),
            (None, Some(d)) if !self.default_is_constant() => {
                Some(format!("({d})::{}", self.type_name))
            }
            _ => None,
        }
    }

    /// What it does, in one line (for `/status`).
    pub fn describe(&self, table: &str) -> String {
        let mut s = format!(
            "ALTER TABLE {table} ADD COLUMN {} {}",
            quote_ident(&self.column),
            self.type_name
        );
        if let Some(d) = &self.default {
            s.push_str(&format!(" DEFAULT {d}"));
        }
        if self.not_null {
            s.push_str(" NOT NULL");
        }
        if let Some(up) = &self.up {
            s.push_str(&format!(" (existing rows and old-shape INSERTs: {up})"));
        }
        s
    }
}

/// One data type, printed as parsed.
fn data_type(text: &str) -> Result<String, String> {
    if text.len() > MAX_TEXT {
        return Err(format!("longer than {MAX_TEXT} bytes"));
    }
    let dialect = PostgreSqlDialect {};
    let mut p = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| e.to_string())?;
    let ty = p.parse_data_type().map_err(|e| e.to_string())?;
    if p.peek_token().token != Token::EOF {
        return Err(format!("{text:?}: unexpected text after the type"));
    }
    Ok(ty.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(column: &str, ty: &str) -> AddColumnKeys {
        AddColumnKeys {
            column: column.into(),
            type_name: ty.into(),
            ..AddColumnKeys::default()
        }
    }

    #[test]
    fn a_constant_default_goes_into_the_add_and_needs_no_backfill() {
        let mut k = keys("Phone", "text");
        k.default = Some("'none'".into());
        k.not_null = true;
        let a = AddedColumn::parse(&k).unwrap();
        assert_eq!(a.column, "phone");
        assert_eq!(
            a.add_statement("public.users"),
            "alter table public.users add column if not exists phone TEXT default 'none'"
        );
        assert_eq!(a.fill(), None);
        assert_eq!(a.default_after_add(), None);
    }

    #[test]
    fn up_fills_the_rows_and_the_default_waits_until_after_the_add() {
        let mut k = keys("full_name", "varchar(200)");
        k.default = Some("''".into());
        k.up = Some("first || ' ' || last".into());
        let a = AddedColumn::parse(&k).unwrap();
        assert_eq!(a.reads, vec!["first".to_string(), "last".to_string()]);
        assert!(!a.add_statement("t").contains("default"));
        assert_eq!(a.default_after_add(), Some("''"));
        assert_eq!(
            a.fill().as_deref(),
            Some("(first || ' ' || last)::VARCHAR(200)")
        );
    }

    #[test]
    fn a_volatile_default_is_set_after_the_add_and_backfilled() {
        let mut k = keys("token", "uuid");
        k.default = Some("gen_random_uuid()".into());
        let a = AddedColumn::parse(&k).unwrap();
        assert!(!a.add_statement("t").contains("default"));
        assert_eq!(a.fill().as_deref(), Some("(gen_random_uuid())::UUID"));
    }

    #[test]
    fn what_is_refused() {
        let mut k = keys("c", "integer");
        k.not_null = true;
        assert!(AddedColumn::parse(&k)
            .unwrap_err()
            .contains("needs a value"));
        let mut k = keys("c", "integer; drop table t");
        assert!(AddedColumn::parse(&k).is_err());
        k = keys("c", "integer");
        k.up = Some("c + 1".into());
        assert!(AddedColumn::parse(&k).unwrap_err().contains("reads c"));
        k.up = Some("(select max(x) from t)".into());
        assert!(AddedColumn::parse(&k).is_err());
        k.up = Some("pg_read_file('/etc/passwd')".into());
        assert!(AddedColumn::parse(&k).is_err());
        k = keys("a b", "integer");
        assert!(AddedColumn::parse(&k).is_err());
    }
}
