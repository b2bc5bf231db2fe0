//! Positions and splices in the client's SQL text. The rewriter never
//! reprints a statement: it finds byte ranges with the tokenizer (and the
//! parser's identifier spans) and splices replacement text into the original,
//! so comments, literals and everything it did not mean to change stay byte
//! for byte as the client sent them.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::tokenizer::{Location, Token, Tokenizer};

/// A significant token (no whitespace or comments) and its byte range.
#[derive(Debug, Clone, PartialEq)]
pub struct Tok {
    pub token: Token,
    pub start: usize,
    pub end: usize,
}

/// Maps the tokenizer's (line, column) locations to byte offsets.
pub struct LineIndex<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, line_starts }
    }

    /// Byte offset of a 1-based (line, column-in-characters) location.
    pub fn offset(&self, loc: Location) -> Option<usize> {
        let line_start = *self.line_starts.get((loc.line as usize).checked_sub(1)?)?;
        let column = (loc.column as usize).checked_sub(1)?;
        let line = &self.text[line_start..];
        if line.is_ascii() || line.len() < column {
            return (line_start + column <= self.text.len()).then_some(line_start + column);
        }
        match line.char_indices().nth(column) {
            Some((i, _)) => Some(line_start + i),
            None => Some(self.text.len()),
        }
    }
}

/// A word token's name as Postgres stores it: quoted verbatim, unquoted
/// folded to lower case.
pub fn folded(word: &sqlparser::tokenizer::Word) -> String {
    if word.quote_style.is_some() {
        word.value.clone()
    } else {
        word.value.to_lowercase()
    }
}

/// Tokenizes `sql` (PostgreSQL dialect) into significant tokens with byte
/// ranges; comments and whitespace are dropped.
pub fn tokenize(sql: &str) -> Result<Vec<Tok>, String> {
    let index = LineIndex::new(sql);
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(tokens.len());
    for t in tokens {
        if matches!(t.token, Token::Whitespace(_) | Token::EOF) {
            continue;
        }
        let (Some(start), Some(end)) = (index.offset(t.span.start), index.offset(t.span.end))
        else {
            return Err("token position out of range".into());
        };
        out.push(Tok {
            token: t.token,
            start,
            end,
        });
    }
    Ok(out)
}

/// One replacement of a byte range (an insertion when the range is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub start: usize,
    pub end: usize,
    pub text: String,
}

/// Applies `edits` to `text`; `None` if two edits overlap.
pub fn splice(text: &str, edits: &mut [Edit]) -> Option<String> {
    edits.sort_by_key(|e| (e.start, e.end));
    let mut out = String::with_capacity(text.len() + 32);
    let mut at = 0;
    for e in edits.iter() {
        if e.start < at || e.end > text.len() || e.start > e.end {
            return None;
        }
        out.push_str(&text[at..e.start]);
        out.push_str(&e.text);
        at = e.end;
    }
    out.push_str(&text[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ranges_are_byte_ranges() {
        let sql = "select 'é', \"Ünï\" -- comment\nfrom t";
        let toks = tokenize(sql).unwrap();
        let texts: Vec<&str> = toks.iter().map(|t| &sql[t.start..t.end]).collect();
        assert_eq!(texts, vec!["select", "'é'", ",", "\"Ünï\"", "from", "t"]);
    }

    #[test]
    fn splices_keep_everything_else() {
        let sql = "select a /* keep */ from t where a = 1";
        let second = sql.rfind('a').unwrap();
        let mut edits = vec![
            Edit {
                start: second,
                end: second + 1,
                text: "b".into(),
            },
            Edit {
                start: 7,
                end: 8,
                text: "b AS a".into(),
            },
        ];
        assert_eq!(
            splice(sql, &mut edits).unwrap(),
            "select b AS a /* keep */ from t where b = 1"
        );
        let mut overlapping = vec![
            Edit {
                start: 0,
                end: 5,
                text: String::new(),
            },
            Edit {
                start: 3,
                end: 4,
                text: String::new(),
            },
        ];
        assert_eq!(splice(sql, &mut overlapping), None);
    }
}
