//! Literal-insensitive plan caching: statements that differ only in their
//! constants (`-M simple` clients, ORMs that inline values) share one plan.
//!
//! [`normalize`] finds the numeric and plain string literals of a statement
//! with a byte scan and gives a key with each literal replaced by a marker.
//! The planner never looks at a literal's value, only at its kind, so a
//! statement is planned once with *sentinel* literals in place of the
//! client's; in the planned text each sentinel marks where a literal flows
//! (possibly twice, for a dual write), which makes a [`Template`]. Every
//! later statement with the same key is rewritten by filling the template
//! with its own literals: no tokenizer, no parser.
//!
//! Anything the scanner is not sure about (escape-string or dollar-quoted
//! literals, a sentinel already present in the text) yields `None`, and the
//! statement is planned as it is.

/// A statement's literals, and its text with them replaced by markers.
#[derive(Debug, PartialEq, Eq)]
pub struct Normalized {
    /// The text with each literal replaced by `\0` + its kind (`n`, `s`);
    /// empty when there are no literals.
    pub key: Vec<u8>,
    /// Byte ranges of the literals in the original text.
    pub literals: Vec<(usize, usize, Kind)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Number,
    String,
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// Scans `sql` for literals; `None` when it holds something the scan does
/// not handle. Without literals the key is empty (the text is its own key).
pub fn normalize(sql: &[u8]) -> Option<Normalized> {
    let mut literals = Vec::new();
    let mut i = 0;
    let n = sql.len();
    while i < n {
        let b = sql[i];
        i = match b {
            b'\'' => {
                // E'…', B'…', X'…', U&'…' have other escaping rules.
                if i > 0 && (is_ident_byte(sql[i - 1]) || sql[i - 1] == b'&') {
                    return None;
                }
                let end = string_end(sql, i)?;
                literals.push((i, end, Kind::String));
                end
            }
            b'"' => quoted_ident_end(sql, i),
            b'-' if sql.get(i + 1) == Some(&b'-') => line_comment_end(sql, i),
            b'/' if sql.get(i + 1) == Some(&b'*') => block_comment_end(sql, i),
            b'$' if sql.get(i + 1).is_some_and(|c| !c.is_ascii_digit()) => {
                return None; // dollar quoting
            }
            b'0'..=b'9' | b'.'
                if (b != b'.' || sql.get(i + 1).is_some_and(u8::is_ascii_digit))
                    && !(i > 0 && (is_ident_byte(sql[i - 1]) || sql[i - 1] == b'.')) =>
            {
                let end = number_end(sql, i)?;
                literals.push((i, end, Kind::Number));
                end
            }
            _ if is_ident_byte(b) => ident_end(sql, i),
            _ => i + 1,
        };
    }
    let key = template_key(sql, &literals);
    Some(Normalized { key, literals })
}

/// The end of the string literal opening at `start` (just past its closing
/// quote; `''` is a quote inside it); `None` when it is not closed.
fn string_end(sql: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match sql.get(i) {
            None => return None,
            Some(b'\'') if sql.get(i + 1) == Some(&b'\'') => i += 2,
            Some(b'\'') => return Some(i + 1),
            Some(_) => i += 1,
        }
    }
}

/// Just past the quoted identifier opening at `start` (or the end).
fn quoted_ident_end(sql: &[u8], start: usize) -> usize {
    let close = sql[start + 1..].iter().position(|&c| c == b'"');
    close.map_or(sql.len(), |k| start + 1 + k + 1)
}

/// The newline ending the `--` comment at `start` (or the end).
fn line_comment_end(sql: &[u8], start: usize) -> usize {
    let newline = sql[start..].iter().position(|&c| c == b'\n');
    newline.map_or(sql.len(), |k| start + k)
}

/// Just past the `*/` closing the comment at `start` (or the end).
fn block_comment_end(sql: &[u8], start: usize) -> usize {
    let close = sql[start + 2..].windows(2).position(|w| w == b"*/");
    close.map_or(sql.len(), |k| start + 2 + k + 2)
}

/// Just past the identifier or keyword at `start`.
fn ident_end(sql: &[u8], start: usize) -> usize {
    let len = sql[start..]
        .iter()
        .take_while(|&&c| is_ident_byte(c))
        .count();
    start + len
}

/// Just past the digits from `i`.
fn digits_end(sql: &[u8], i: usize) -> usize {
    i + sql[i..].iter().take_while(|c| c.is_ascii_digit()).count()
}

/// The end of the number at `start` (digits, a fraction, an exponent);
/// `None` when letters follow it (`12abc`: not a number the scan
/// understands).
fn number_end(sql: &[u8], start: usize) -> Option<usize> {
    let n = sql.len();
    let mut i = digits_end(sql, start);
    if i < n && sql[i] == b'.' && sql.get(i + 1) != Some(&b'.') {
        i = digits_end(sql, i + 1);
    }
    if i < n && (sql[i] == b'e' || sql[i] == b'E') {
        let mut j = i + 1;
        if j < n && (sql[j] == b'+' || sql[j] == b'-') {
            j += 1;
        }
        if j < n && sql[j].is_ascii_digit() {
            i = digits_end(sql, j);
        }
    }
    if i < n && is_ident_byte(sql[i]) {
        return None;
    }
    Some(i)
}

/// `sql` with each literal replaced by its kind's mark (`\0n`, `\0s`);
/// empty when there is none (the text is its own key).
fn template_key(sql: &[u8], literals: &[(usize, usize, Kind)]) -> Vec<u8> {
    let mut key = Vec::new();
    if literals.is_empty() {
        return key;
    }
    key.reserve(sql.len());
    let mut at = 0;
    for &(start, end, kind) in literals {
        key.extend_from_slice(&sql[at..start]);
        key.extend_from_slice(match kind {
            Kind::Number => b"\0n",
            Kind::String => b"\0s",
        });
        at = end;
    }
    key.extend_from_slice(&sql[at..]);
    key
}

/// The sentinel standing for literal number `k` of a statement.
pub fn sentinel(k: usize, kind: Kind) -> String {
    match kind {
        Kind::Number => format!("7316298450{k:06}"),
        Kind::String => format!("'pgshift-literal-{k:06}'"),
    }
}

/// `sql` with its literals replaced by sentinels; `None` if a sentinel's
/// text is already in it (the template could not tell them apart).
pub fn with_sentinels(sql: &str, literals: &[(usize, usize, Kind)]) -> Option<String> {
    if sql.contains("7316298450") || sql.contains("pgshift-literal-") {
        return None;
    }
    let mut out = String::with_capacity(sql.len() + literals.len() * 16);
    let mut at = 0;
    for (k, &(start, end, kind)) in literals.iter().enumerate() {
        out.push_str(sql.get(at..start)?);
        out.push_str(&sentinel(k, kind));
        at = end;
    }
    out.push_str(sql.get(at..)?);
    Some(out)
}

/// Where `text` holds the sentinels of `literals`, in order: (start, end,
/// literal).
fn sentinels_in(text: &str, literals: &[(usize, usize, Kind)]) -> Vec<(usize, usize, usize)> {
    const NUMBER: &[u8] = b"7316298450";
    const STRING: &[u8] = b"'pgshift-literal-";
    let bytes = text.as_bytes();
    let mut marks = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let (kind, prefix) = if rest.starts_with(NUMBER) {
            (Kind::Number, NUMBER.len())
        } else if rest.starts_with(STRING) {
            (Kind::String, STRING.len())
        } else {
            i += 1;
            continue;
        };
        let digits = rest[prefix..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let mut end = i + prefix + digits;
        let closed = kind == Kind::Number || bytes.get(end) == Some(&b'\'');
        if kind == Kind::String {
            end += 1;
        }
        let k = text[i + prefix..i + prefix + digits].parse::<usize>().ok();
        match k {
            Some(k) if closed && literals.get(k).is_some_and(|l| l.2 == kind) => {
                marks.push((i, end, k));
                i = end;
            }
            _ => i += 1,
        }
    }
    marks
}

/// A planned text with holes where the client's literals go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    fixed_len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Literal(usize),
}

impl Template {
    /// Cuts `planned` (planned from the sentinel text of a statement with
    /// `literals`) at its sentinels.
    pub fn new(planned: &str, literals: &[(usize, usize, Kind)]) -> Template {
        // One pass over the text (a search per literal was quadratic in a
        // statement's length: `… or aid = 1` ×8,000 took 0.8 s).
        let marks = sentinels_in(planned, literals);
        let mut pieces = Vec::new();
        let mut at = 0;
        let mut fixed_len = 0;
        for (start, end, k) in marks {
            if start > at {
                fixed_len += start - at;
                pieces.push(Piece::Text(planned[at..start].to_string()));
            }
            pieces.push(Piece::Literal(k));
            at = end;
        }
        if at < planned.len() {
            fixed_len += planned.len() - at;
            pieces.push(Piece::Text(planned[at..].to_string()));
        }
        Template { pieces, fixed_len }
    }

    /// The planned text for a statement `sql` with these `literals`.
    pub fn fill(&self, sql: &str, literals: &[(usize, usize, Kind)]) -> Option<String> {
        let mut out = String::with_capacity(self.fixed_len + sql.len());
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Literal(k) => {
                    let &(start, end, _) = literals.get(*k)?;
                    out.push_str(sql.get(start..end)?);
                }
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(sql: &str) -> Option<String> {
        normalize(sql.as_bytes()).map(|n| match n.key.is_empty() {
            true => sql.to_string(),
            false => String::from_utf8_lossy(&n.key).replace('\0', "?"),
        })
    }

    #[test]
    fn literals_are_found_and_only_literals() {
        assert_eq!(
            key("UPDATE t1 SET a = a + -4321 WHERE aid = 12 AND note = 'it''s' AND x = $1")
                .as_deref(),
            Some("UPDATE t1 SET a = a + -?n WHERE aid = ?n AND note = ?s AND x = $1")
        );
        assert_eq!(
            key("select 1.5, .5e3, \"col 9\", x::numeric(12,2) -- 42\n").as_deref(),
            Some("select ?n, ?n, \"col 9\", x::numeric(?n,?n) -- 42\n")
        );
        assert_eq!(key("select E'\\n'"), None);
        assert_eq!(key("select $$x$$"), None);
        assert_eq!(key("select 'unterminated"), None);
        // Same shape, different constants: one key.
        assert_eq!(
            key("select a from t where id = 1"),
            key("select a from t where id = 99999")
        );
    }

    #[test]
    fn a_template_refills_with_new_literals() {
        let sql = "update t set a = a + 5 where id = 7";
        let n = normalize(sql.as_bytes()).unwrap();
        let sentinels = with_sentinels(sql, &n.literals).unwrap();
        // What the planner would make of it: a dual write.
        let planned = sentinels.replace(
            "a = a + 7316298450000000",
            "a = a + 7316298450000000, b = a + 7316298450000000",
        );
        let template = Template::new(&planned, &n.literals);
        let other = "update t set a = a + 12 where id = 300";
        let m = normalize(other.as_bytes()).unwrap();
        assert_eq!(m.key, n.key);
        assert_eq!(
            template.fill(other, &m.literals).unwrap(),
            "update t set a = a + 12, b = a + 12 where id = 300"
        );
    }
}
