//! The query blocks of one statement: the statement itself, and every
//! `(SELECT …)` nested in it — subqueries in WHERE / SELECT lists, derived
//! tables, CTE bodies — each with the token range it spans. A column
//! reference belongs to the innermost block around it; its name resolves in
//! that block's FROM list first, then outwards (a correlated reference), as
//! Postgres resolves it.
//!
//! What this cannot delimit is refused by the planner: set operations
//! (UNION / INTERSECT / EXCEPT) around a migrating column, a SELECT that
//! does not open a parenthesis, and a query at the top of a statement that
//! is not itself a query (INSERT … SELECT).

use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::Token;

use super::text::Tok;

/// A token range `[start, end)` of the statement's tokens.
pub(super) type Block = (usize, usize);

/// What kind of statement the tokens are, for the top-level SELECTs it may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Top {
    /// A query: its own SELECT is the statement's block.
    Query,
    /// INSERT … SELECT: the SELECT (up to ON CONFLICT / RETURNING) is a block.
    InsertSelect,
    /// Anything else: no SELECT outside parentheses.
    Other,
}

/// The nested `(SELECT …)` blocks of `toks` (and the SELECT of an
/// INSERT … SELECT), ordered by start. `Err` names what cannot be delimited.
pub(super) fn nested_blocks(toks: &[Tok], top: Top) -> Result<Vec<Block>, String> {
    let is_query = top == Top::Query;
    let mut open: Vec<usize> = Vec::new();
    // Blocks whose SELECT opened at the paren at stack depth d: (depth, start).
    let mut pending: Vec<(usize, usize)> = Vec::new();
    let mut blocks: Vec<Block> = Vec::new();
    let mut top_level_selects = 0;
    for (i, t) in toks.iter().enumerate() {
        match &t.token {
            Token::LParen => open.push(i),
            Token::RParen => {
                let depth = open.len();
                open.pop();
                if let Some(&(d, start)) = pending.last() {
                    if d == depth {
                        pending.pop();
                        blocks.push((start, i));
                    }
                }
            }
            Token::Word(w)
                if matches!(
                    w.keyword,
                    Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT
                ) =>
            {
                return Err("set operations (UNION, INTERSECT, EXCEPT)".into());
            }
            Token::Word(w) if w.keyword == Keyword::SELECT => {
                if open.is_empty() {
                    top_level_selects += 1;
                    if top == Top::InsertSelect {
                        blocks.push((i, insert_select_end(toks, i)));
                    }
                    continue;
                }
                let after_paren = i > 0 && toks[i - 1].token == Token::LParen;
                if !after_paren {
                    return Err("a query pgshift cannot delimit".into());
                }
                pending.push((open.len(), i));
            }
            _ => {}
        }
    }
    if !pending.is_empty() {
        return Err("an unterminated subquery".into());
    }
    let expected = usize::from(top != Top::Other);
    if top_level_selects != expected {
        return Err(if is_query {
            "a query pgshift cannot delimit".into()
        } else {
            "a query that feeds the statement (such as INSERT … SELECT)".into()
        });
    }
    blocks.sort_by_key(|b| b.0);
    Ok(blocks)
}

/// The end (exclusive) of an INSERT's SELECT starting at token `start`:
/// the first top-level ON (CONFLICT) or RETURNING, or the end.
fn insert_select_end(toks: &[Tok], start: usize) -> usize {
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate().skip(start) {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::Word(w)
                if depth == 0 && matches!(w.keyword, Keyword::ON | Keyword::RETURNING) =>
            {
                return i;
            }
            _ => {}
        }
    }
    toks.len()
}

/// Indices (into `ranges`) of the blocks containing token `i`, innermost
/// first. `ranges[0]` is the whole statement.
pub(super) fn chain(ranges: &[Block], i: usize) -> Vec<usize> {
    let mut out: Vec<usize> = (0..ranges.len())
        .filter(|&k| ranges[k].0 <= i && i < ranges[k].1)
        .collect();
    out.sort_by_key(|&k| std::cmp::Reverse(ranges[k].0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::text::tokenize;

    fn blocks_of(sql: &str, is_query: bool) -> Result<Vec<String>, String> {
        let toks = tokenize(sql).unwrap();
        let top = if is_query { Top::Query } else { Top::Other };
        Ok(nested_blocks(&toks, top)?
            .into_iter()
            .map(|(s, e)| sql[toks[s].start..toks[e - 1].end].to_string())
            .collect())
    }

    #[test]
    fn subqueries_are_delimited_by_their_parentheses() {
        assert_eq!(
            blocks_of(
                "select a from t where id in (select id from u where x = (select 1)) and f(2) > 0",
                true
            )
            .unwrap(),
            vec!["select id from u where x = (select 1)", "select 1"]
        );
        assert_eq!(
            blocks_of("with c as (select a from t) select c.a from c", true).unwrap(),
            vec!["select a from t"]
        );
        assert_eq!(
            blocks_of("update t set a = 1 where exists (select 1 from u)", false).unwrap(),
            vec!["select 1 from u"]
        );
        assert!(blocks_of("select a from t union select b from u", true).is_err());
        assert!(blocks_of("insert into t (a) select a from u", false).is_err());
        let sql = "insert into t (a) select a from u where x in (select 1) on conflict do nothing";
        let toks = tokenize(sql).unwrap();
        let got: Vec<&str> = nested_blocks(&toks, Top::InsertSelect)
            .unwrap()
            .into_iter()
            .map(|(s, e)| &sql[toks[s].start..toks[e - 1].end])
            .collect();
        assert_eq!(got, ["select a from u where x in (select 1)", "select 1"]);
        let toks = tokenize("select (select 1) from t").unwrap();
        let ranges = [(0, toks.len()), (2, 4)];
        assert_eq!(chain(&ranges, 2), vec![1, 0]);
        assert_eq!(chain(&ranges, 6), vec![0]);
    }
}
