//! The `up` and `down` expressions of a type change, checked to be what
//! they claim: one expression over the migrating column and nothing else.
//! They run as pgshift's control role (in the backfill, in every rewritten
//! statement), so what they may do is an allow-list: the column, literals,
//! casts, operators (no user-defined operator), CASE and the SQL
//! expression forms, and calls of immutable built-in functions. Refused:
//! other columns, subqueries, any other function (`pg_read_file`,
//! `now()`, `random()`, anything schema-qualified), aggregates and window
//! functions.

use sqlparser::ast::{
    BinaryOperator, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;

/// Immutable built-in functions `up` and `down` may call.
const FUNCTIONS: &[&str] = &[
    "abs",
    "array_length",
    "ascii",
    "bit_length",
    "btrim",
    "cardinality",
    "cbrt",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "chr",
    "coalesce",
    "concat",
    "concat_ws",
    "div",
    "exp",
    "floor",
    "greatest",
    "initcap",
    "jsonb_build_array",
    "jsonb_build_object",
    "json_build_array",
    "json_build_object",
    "least",
    "left",
    "length",
    "ln",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_time",
    "md5",
    "mod",
    "nullif",
    "octet_length",
    "pow",
    "power",
    "regexp_replace",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "rpad",
    "rtrim",
    "sign",
    "split_part",
    "sqrt",
    "string_to_array",
    "strpos",
    "substr",
    "substring",
    "to_hex",
    "to_json",
    "to_jsonb",
    "translate",
    "trim",
    "trunc",
    "upper",
];

/// Checks `text` as a conversion over `column` (folded as Postgres folds
/// it); `Err` says what is wrong.
pub fn check(text: &str, column: &str) -> Result<(), String> {
    let expr = one_expression(text)?;
    let mut reads = Reads {
        only: Some(column),
        names: Vec::new(),
    };
    walk(&expr, &mut reads, 0)?;
    if reads.names.is_empty() {
        return Err(format!("does not reference column {column:?}"));
    }
    Ok(())
}

/// Checks `text` as a value over a row (an added column's `up`): the
/// same allow-list, any of the row's columns by their bare names. Answers
/// the expression printed again and the columns it reads (folded).
pub fn check_over_row(text: &str) -> Result<(String, Vec<String>), String> {
    let expr = one_expression(text)?;
    let mut reads = Reads {
        only: None,
        names: Vec::new(),
    };
    walk(&expr, &mut reads, 0)?;
    reads.names.sort();
    reads.names.dedup();
    Ok((expr.to_string(), reads.names))
}

fn one_expression(text: &str) -> Result<Expr, String> {
    if text.len() > 16 * 1024 {
        return Err("longer than 16384 bytes".into());
    }
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .with_recursion_limit(MAX_DEPTH)
        .try_with_sql(text)
        .map_err(|e| e.to_string())?;
    let expr = parser.parse_expr().map_err(|e| e.to_string())?;
    if parser.peek_token().token != Token::EOF {
        return Err("unexpected text after the expression".into());
    }
    Ok(expr)
}

/// The columns an expression reads, and the one it may read (`None`: any).
struct Reads<'c> {
    only: Option<&'c str>,
    names: Vec<String>,
}

/// How deep an expression may nest.
const MAX_DEPTH: usize = 64;

fn walk(expr: &Expr, reads: &mut Reads<'_>, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("nests more than {MAX_DEPTH} deep"));
    }
    match expr {
        Expr::Identifier(ident) => {
            let name = match ident.quote_style {
                Some(_) => ident.value.clone(),
                None => ident.value.to_lowercase(),
            };
            if let Some(column) = reads.only.filter(|c| *c != name) {
                return Err(format!(
                    "reads {name:?}: a conversion may read only the column {column:?}"
                ));
            }
            reads.names.push(name);
            Ok(())
        }
        Expr::Function(f) => function(f, reads, depth),
        Expr::BinaryOp { op, .. } if !plain_operator(op) => Err(format!(
            "uses the operator {op}, which a conversion may not (arithmetic, comparison, logic, ||)"
        )),
        _ => children(expr)?
            .into_iter()
            .try_for_each(|e| walk(e, reads, depth + 1)),
    }
}

/// The operators a conversion may use: arithmetic, comparison, logic, `||`.
fn plain_operator(op: &BinaryOperator) -> bool {
    use BinaryOperator as B;
    matches!(
        op,
        B::Plus
            | B::Minus
            | B::Multiply
            | B::Divide
            | B::Modulo
            | B::StringConcat
            | B::Gt
            | B::Lt
            | B::GtEq
            | B::LtEq
            | B::Eq
            | B::NotEq
            | B::And
            | B::Or
            | B::BitwiseAnd
            | B::BitwiseOr
            | B::PGBitwiseXor
            | B::PGBitwiseShiftLeft
            | B::PGBitwiseShiftRight
            | B::PGExp
    )
}

/// The expressions inside an accepted form (none for a literal); an error
/// naming the form when a conversion may not use it.
fn children(expr: &Expr) -> Result<Vec<&Expr>, String> {
    Ok(match expr {
        Expr::Value(_) | Expr::TypedString { .. } => vec![],
        Expr::Nested(e)
        | Expr::UnaryOp { expr: e, .. }
        | Expr::Cast { expr: e, .. }
        | Expr::IsNull(e)
        | Expr::IsNotNull(e)
        | Expr::IsTrue(e)
        | Expr::IsFalse(e)
        | Expr::IsNotTrue(e)
        | Expr::IsNotFalse(e)
        | Expr::IsUnknown(e)
        | Expr::IsNotUnknown(e)
        | Expr::Ceil { expr: e, .. }
        | Expr::Floor { expr: e, .. }
        | Expr::Extract { expr: e, .. } => vec![e],
        Expr::Interval(interval) => vec![&interval.value],
        Expr::BinaryOp { left, right, .. } => vec![left, right],
        Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => vec![a, b],
        Expr::AtTimeZone {
            timestamp,
            time_zone,
        } => vec![timestamp, time_zone],
        Expr::Between {
            expr, low, high, ..
        } => vec![expr, low, high],
        Expr::InList { expr, list, .. } => std::iter::once(&**expr).chain(list).collect(),
        Expr::Like { expr, pattern, .. }
        | Expr::ILike { expr, pattern, .. }
        | Expr::SimilarTo { expr, pattern, .. } => vec![expr, pattern],
        Expr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => operand
            .iter()
            .map(|o| &**o)
            .chain(conditions.iter().flat_map(|w| [&w.condition, &w.result]))
            .chain(else_result.as_deref())
            .collect(),
        Expr::Substring {
            expr,
            substring_from,
            substring_for,
            ..
        } => std::iter::once(&**expr)
            .chain(substring_from.as_deref())
            .chain(substring_for.as_deref())
            .collect(),
        Expr::Trim {
            expr, trim_what, ..
        } => std::iter::once(&**expr).chain(trim_what.as_deref()).collect(),
        Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
            return Err("has a subquery, which a conversion may not".into())
        }
        other => return Err(format!(
            "uses {}, which pgshift does not accept in a conversion (the column, literals, casts, operators, CASE and immutable built-in functions)",
            kind(other)
        )),
    })
}

fn function(f: &Function, reads: &mut Reads<'_>, depth: usize) -> Result<(), String> {
    let name = f.name.to_string().to_lowercase();
    if f.name.0.len() != 1 || !FUNCTIONS.contains(&name.as_str()) {
        return Err(format!(
            "calls {name}(), which is not one of the immutable built-in functions a conversion may call ({})",
            FUNCTIONS.join(", ")
        ));
    }
    if f.over.is_some() || f.filter.is_some() || !f.within_group.is_empty() {
        return Err(format!("calls {name}() as an aggregate or window function"));
    }
    let args = match &f.args {
        FunctionArguments::None => return Ok(()),
        FunctionArguments::List(list) if list.clauses.is_empty() => &list.args,
        _ => {
            return Err(format!(
                "calls {name}() with arguments pgshift does not accept"
            ))
        }
    };
    for arg in args {
        let expr = match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => e,
            FunctionArg::Named {
                arg: FunctionArgExpr::Expr(e),
                ..
            } => e,
            _ => {
                return Err(format!(
                    "calls {name}() with arguments pgshift does not accept"
                ))
            }
        };
        walk(expr, reads, depth + 1)?;
    }
    Ok(())
}

/// A short name for an expression's kind, for the refusal.
fn kind(expr: &Expr) -> String {
    let debug = format!("{expr:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("an expression")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_users_write_are_accepted() {
        for ok in [
            "amount::numeric / 100",
            "(amount_decimal * 100)::integer",
            "amount::bigint",
            "round(amount::numeric / 100, 2)",
            "CAST(amount AS numeric(12, 2))",
            "coalesce(amount, 0)::text",
            "case when amount > 0 then 'paid' else 'unpaid' end",
            "amount AT TIME ZONE 'UTC'",
            "lower(trim(amount))",
            "amount IS NOT NULL",
            "\"amount\" + interval '1 day'",
        ] {
            let column = if ok.contains("amount_decimal") {
                "amount_decimal"
            } else {
                "amount"
            };
            assert_eq!(check(ok, column), Ok(()), "{ok}");
        }
    }

    #[test]
    fn anything_more_is_refused_with_its_reason() {
        for (bad, says) in [
            (
                "(amount + 1000000*length(pg_read_file('/etc/passwd')))::bigint",
                "pg_read_file",
            ),
            ("amount + (select count(*) from pg_authid)", "subquery"),
            ("amount + other_column", "other_column"),
            ("amount + t.amount", "CompoundIdentifier"),
            ("amount + random()", "random"),
            ("now() + amount * interval '1 s'", "now"),
            ("pg_catalog.lower(amount)", "pg_catalog.lower"),
            ("amount + max(amount) over ()", "max"),
            ("amount ## 1", "operator"),
            ("exists (select 1) and amount > 0", "subquery"),
        ] {
            let err = check(bad, "amount").expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(check("1 + 1", "amount")
            .unwrap_err()
            .contains("does not reference"));
    }
}
