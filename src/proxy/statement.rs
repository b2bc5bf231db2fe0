//! Decoding the SQL text out of `Query` and `Parse` frames, handing it to the
//! rewrite seam, and re-encoding a frame when the seam replaced the text.
//!
//! An unchanged statement is forwarded as the very bytes it arrived in.

use bytes::Bytes;

use crate::proxy::framing::HEADER_LEN;
use crate::proxy::wire::{encode_frame, frontend, split_cstr};
use crate::rewrite::{Refusal, Rewrite, StatementKind, StatementRewriter};

/// What to do with a Query or Parse frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Forward it as it arrived.
    Keep,
    /// Forward this frame instead.
    Replace(Bytes),
    /// Refuse it.
    Refuse(Refusal),
    /// pgshift carried it out: send this no-op frame instead (a `DO` block
    /// of the same message kind) and answer its `DO` with the tag.
    Answer(Bytes, &'static str),
}

/// The statement sent in place of one pgshift carried out: it runs
/// nothing, takes no lock, and leaves the transaction as it was.
const NO_OP: &[u8] = b"DO $pgshift_done$ BEGIN END $pgshift_done$";

/// A Query or Parse frame whose body does not follow the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed {0} message: {1}")]
pub struct MalformedStatement(pub &'static str, pub &'static str);

/// A whole `Query` or `Parse` frame's statement name, SQL and parameter
/// types (a Query has neither name nor types), checked as
/// [`rewrite_frame`] checks them; `None` for other frames.
fn split_statement(tag: u8, frame: &[u8]) -> Result<Option<Split<'_>>, MalformedStatement> {
    let body = frame.get(HEADER_LEN..).unwrap_or_default();
    match tag {
        frontend::QUERY => {
            let (sql, rest) =
                split_cstr(body).ok_or(MalformedStatement("Query", "unterminated query string"))?;
            if !rest.is_empty() {
                return Err(MalformedStatement("Query", "data after the query string"));
            }
            Ok(Some((&[], sql, &[])))
        }
        frontend::PARSE => {
            let (name, rest) = split_cstr(body)
                .ok_or(MalformedStatement("Parse", "unterminated statement name"))?;
            let (sql, params) =
                split_cstr(rest).ok_or(MalformedStatement("Parse", "unterminated query string"))?;
            Ok(Some((name, sql, params)))
        }
        _ => Ok(None),
    }
}

/// A statement frame's name, SQL and parameter types.
type Split<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// The frame's statement when `rewriter` lets it pass without reading it
/// ([`StatementRewriter::passes_unread`]): `Ok(true)` to forward it as it
/// is; `Ok(false)` to call [`rewrite_frame`].
pub fn passes_unread(
    rewriter: &dyn StatementRewriter,
    tag: u8,
    frame: &[u8],
) -> Result<bool, MalformedStatement> {
    Ok(split_statement(tag, frame)?.is_some_and(|(_, sql, _)| rewriter.passes_unread(sql)))
}

/// Passes the SQL of a whole `Query` or `Parse` frame through `rewriter`:
/// keep the frame, or replace it with a re-encoded one. What the rewriter
/// logs about a DDL statement goes in `span` (the session's).
pub fn rewrite_frame(
    rewriter: &dyn StatementRewriter,
    tag: u8,
    frame: &[u8],
    span: &tracing::Span,
) -> Result<Outcome, MalformedStatement> {
    let Some((name, sql, params)) = split_statement(tag, frame)? else {
        return Ok(Outcome::Keep);
    };
    let query = tag == frontend::QUERY;
    let kind = match query {
        true => StatementKind::SimpleQuery,
        false => StatementKind::Parse,
    };
    Ok(match rewriter.rewrite_logged(kind, sql, span) {
        Rewrite::Unchanged => Outcome::Keep,
        Rewrite::Replaced(new_sql) if query => {
            Outcome::Replace(encode_frame(tag, &[new_sql.as_bytes(), b"\0"]))
        }
        Rewrite::Replaced(new_sql) => Outcome::Replace(encode_frame(
            tag,
            &[name, b"\0", new_sql.as_bytes(), b"\0", params],
        )),
        Rewrite::Refused(refusal) => Outcome::Refuse(refusal),
        Rewrite::Done(command) if query => {
            Outcome::Answer(encode_frame(tag, &[NO_OP, b"\0"]), command)
        }
        // (No parameter types: the no-op takes none.)
        Rewrite::Done(command) => Outcome::Answer(
            encode_frame(tag, &[name, b"\0", NO_OP, b"\0", &[0, 0]]),
            command,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::PassThrough;
    use std::borrow::Cow;

    /// No session span (nothing here logs).
    fn none() -> tracing::Span {
        tracing::Span::none()
    }

    struct Upper;
    impl StatementRewriter for Upper {
        fn rewrite<'a>(&self, _kind: StatementKind, sql: &'a [u8]) -> Rewrite<'a> {
            Rewrite::Replaced(Cow::Owned(String::from_utf8_lossy(sql).to_uppercase()))
        }
    }

    fn query(sql: &str) -> Bytes {
        encode_frame(b'Q', &[sql.as_bytes(), b"\0"])
    }

    #[test]
    fn unchanged_statements_are_kept() {
        assert_eq!(
            rewrite_frame(&PassThrough, b'Q', &query("select 1"), &none()),
            Ok(Outcome::Keep)
        );
    }

    #[test]
    fn replaced_parse_keeps_name_and_parameter_types() {
        let parse = encode_frame(b'P', &[b"stmt\0select $1\0", &[0, 1, 0, 0, 0, 23]]);
        let out = rewrite_frame(&Upper, b'P', &parse, &none()).unwrap();
        let expected = encode_frame(b'P', &[b"stmt\0SELECT $1\0", &[0, 1, 0, 0, 0, 23]]);
        assert_eq!(out, Outcome::Replace(expected));
        let q = rewrite_frame(&Upper, b'Q', &query("select 2"), &none()).unwrap();
        assert_eq!(q, Outcome::Replace(query("SELECT 2")));
    }

    #[test]
    fn malformed_frames_are_reported() {
        let bad = encode_frame(b'Q', &[b"no terminator"]);
        assert!(rewrite_frame(&PassThrough, b'Q', &bad, &none()).is_err());
        let bad = encode_frame(b'P', &[b"name\0sql"]);
        assert!(rewrite_frame(&PassThrough, b'P', &bad, &none()).is_err());
        assert!(rewrite_frame(&PassThrough, b'Q', b"Q", &none()).is_err());
    }
}
