//! Positions and splices in the client's SQL text. The rewriter never
//! reprints a statement: it finds byte ranges with the tokenizer (and the
//! parser's identifier spans) and splices replacement text into the original,
//! so comments, literals and everything it did not mean to change stay byte
//! for byte as the client sent them.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer, Word};

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
    /// The whole text is ASCII: a column is a byte offset.
    ascii: bool,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex {
            text,
            line_starts,
            ascii: text.is_ascii(),
        }
    }

    /// Byte offset of a 1-based (line, column-in-characters) location, in
    /// time bounded by the line's length (constant for ASCII text).
    pub fn offset(&self, loc: Location) -> Option<usize> {
        let line_no = (loc.line as usize).checked_sub(1)?;
        let line_start = *self.line_starts.get(line_no)?;
        let column = (loc.column as usize).checked_sub(1)?;
        if self.ascii {
            return (line_start + column <= self.text.len()).then_some(line_start + column);
        }
        let line_end = self
            .line_starts
            .get(line_no + 1)
            .copied()
            .unwrap_or(self.text.len());
        let line = &self.text[line_start..line_end];
        match line.char_indices().nth(column) {
            Some((i, _)) => Some(line_start + i),
            None => Some(line_end),
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
    tokenize_for_parser(sql).map(|(toks, _)| toks)
}

/// [`tokenize`], and the tokenizer's own output for the parser (so a
/// statement that is parsed is tokenized once).
pub fn tokenize_for_parser(sql: &str) -> Result<(Vec<Tok>, Vec<TokenWithSpan>), String> {
    let index = LineIndex::new(sql);
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(tokens.len());
    for t in &tokens {
        if matches!(t.token, Token::Whitespace(_) | Token::EOF) {
            continue;
        }
        let (Some(start), Some(end)) = (index.offset(t.span.start), index.offset(t.span.end))
        else {
            return Err("token position out of range".into());
        };
        out.push(Tok {
            token: t.token.clone(),
            start,
            end,
        });
    }
    Ok((out, tokens))
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

fn is_keyword(token: &Token, keyword: Keyword) -> bool {
    matches!(token, Token::Word(w) if w.keyword == keyword && w.quote_style.is_none())
}

/// Token ranges of the statements of a text, split at top-level `;`.
pub fn split_statements(tokens: &[Tok]) -> Vec<std::ops::Range<usize>> {
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

/// The index of the token starting at byte `start` (tokens are in order:
/// a binary search, so a walk over many items stays linear).
pub fn token_index(tokens: &[Tok], start: usize) -> Option<usize> {
    tokens.binary_search_by_key(&start, |t| t.start).ok()
}

/// Byte ranges of the comma-separated items of the parenthesized list
/// whose `(` is at byte `open`.
pub fn list_items(tokens: &[Tok], open: usize) -> Option<Vec<(usize, usize)>> {
    let first = token_index(tokens, open).filter(|&i| tokens[i].token == Token::LParen)?;
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut item: Option<(usize, usize)> = None;
    for t in &tokens[first + 1..] {
        match t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket if depth > 0 => depth -= 1,
            Token::RParen => {
                items.push(item?);
                return Some(items);
            }
            Token::Comma if depth == 0 => {
                items.push(item.take()?);
                continue;
            }
            _ => {}
        }
        item = Some((item.map_or(t.start, |r| r.0), t.end));
    }
    None
}

/// Byte ranges of the items of the select list of the SELECT at byte
/// `select` (aliases included), up to the clause that follows it.
pub fn select_items(tokens: &[Tok], select: usize) -> Option<Vec<(usize, usize)>> {
    let mut i = token_index(tokens, select)? + 1;
    if tokens
        .get(i)
        .is_some_and(|t| is_keyword(&t.token, Keyword::ALL))
    {
        i += 1;
    }
    if tokens
        .get(i)
        .is_some_and(|t| is_keyword(&t.token, Keyword::DISTINCT))
    {
        i += 1;
        if tokens
            .get(i)
            .is_some_and(|t| is_keyword(&t.token, Keyword::ON))
        {
            // DISTINCT ON ( … )
            let mut depth = 0usize;
            for (j, t) in tokens.iter().enumerate().skip(i + 1) {
                match t.token {
                    Token::LParen => depth += 1,
                    Token::RParen => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            i = j + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut item: Option<(usize, usize)> = None;
    for t in &tokens[i.min(tokens.len())..] {
        match &t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket if depth == 0 => break,
            Token::RParen | Token::RBracket => depth -= 1,
            Token::Comma if depth == 0 => {
                items.push(item.take()?);
                continue;
            }
            Token::SemiColon if depth == 0 => break,
            Token::Word(w) if depth == 0 && (ends_items(w) || ends_join(w)) => break,
            _ => {}
        }
        item = Some((item.map_or(t.start, |r| r.0), t.end));
    }
    items.push(item?);
    Some(items)
}

/// Whether `w` is a clause keyword that ends a list of projection items.
fn ends_items(w: &Word) -> bool {
    const CLAUSES: &[Keyword] = &[
        Keyword::FROM,
        Keyword::WHERE,
        Keyword::INTO,
        Keyword::GROUP,
        Keyword::HAVING,
        Keyword::ORDER,
        Keyword::LIMIT,
        Keyword::OFFSET,
        Keyword::FETCH,
        Keyword::WINDOW,
        Keyword::UNION,
        Keyword::INTERSECT,
        Keyword::EXCEPT,
        Keyword::FOR,
        Keyword::RETURNING,
    ];
    w.quote_style.is_none() && CLAUSES.contains(&w.keyword)
}

/// Whether `w` is an unquoted `ON` (a join's condition follows).
fn ends_join(w: &Word) -> bool {
    w.quote_style.is_none() && w.keyword == Keyword::ON
}

/// Byte offset just after the projection item that holds the token at
/// `at` (the item ends at a top-level comma or the clause that follows).
pub fn item_end(tokens: &[Tok], at: usize) -> usize {
    // Closing the parentheses that wrap the reference leaves depth at 0:
    // only parentheses opened after it (a type's `(10,2)`) nest.
    let mut depth = 0usize;
    let Some(first) = tokens.get(at) else {
        return 0;
    };
    let mut end = first.end;
    for t in &tokens[at + 1..] {
        match &t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket if depth == 0 => {}
            Token::RParen | Token::RBracket => depth -= 1,
            Token::Comma | Token::SemiColon if depth == 0 => break,
            Token::Word(w) if depth == 0 && ends_items(w) => break,
            _ => {}
        }
        end = t.end;
    }
    end
}

/// Byte range of the value assigned to the SET target at token `target`.
pub fn assignment_value(tokens: &[Tok], target: usize) -> Option<(usize, usize)> {
    if tokens.get(target + 1).map(|t| &t.token) != Some(&Token::Eq) {
        return None;
    }
    let mut depth = 0usize;
    let mut range: Option<(usize, usize)> = None;
    for t in &tokens[target + 2..] {
        match &t.token {
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket if depth == 0 => break,
            Token::RParen | Token::RBracket => depth -= 1,
            Token::Comma | Token::SemiColon if depth == 0 => break,
            Token::Word(w)
                if depth == 0
                    && w.quote_style.is_none()
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
    range
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

/// The index of the table's name in `COPY [schema.]table …`, when the
/// COPY names a table called `table` there.
pub fn copy_table(tokens: &[Tok], table: &str) -> Option<usize> {
    let mut j = 1;
    while j + 1 < tokens.len() && tokens[j + 1].token == Token::Period {
        j += 2;
    }
    tokens
        .get(j)
        .is_some_and(|t| names(&t.token, table))
        .then_some(j)
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
