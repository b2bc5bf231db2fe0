//! Refusing a statement without breaking the protocol.
//!
//! A refused Query or Parse is not dropped: it is replaced by a statement
//! made of one unique marker token, which Postgres rejects at parse time
//! with a syntax error (SQLSTATE 42601) that names the marker. The server
//! therefore does exactly what it would have done had the refused statement
//! itself failed — aborts the transaction, skips the rest of the pipeline up
//! to Sync, reports the transaction status in ReadyForQuery — and the relay
//! swaps that one error for pgshift's own `ErrorResponse` on the way back.
//! If an earlier message of the same pipeline failed first, the server skips
//! the marker and the client sees only that earlier error, as it would from
//! Postgres.

use bytes::Bytes;

use super::framing::HEADER_LEN;
use super::wire::{encode_frame, frontend, split_cstr, ErrorResponse, Severity};
use crate::rewrite::Refusal;

/// SQLSTATE of the syntax error the marker statement raises.
const SYNTAX_ERROR: &[u8] = b"42601";

/// A refusal waiting for the server's error to replace.
#[derive(Debug)]
pub struct PendingRefusal {
    /// Number of the request (Query or Sync) whose ReadyForQuery ends it.
    pub request: u64,
    /// The marker token the server's error names.
    pub marker: String,
    /// pgshift's ErrorResponse for the client.
    pub error: Bytes,
}

impl PendingRefusal {
    /// Prepares refusal number `seq` of a session for request `request`.
    pub fn new(request: u64, seq: u64, refusal: &Refusal) -> PendingRefusal {
        let error = ErrorResponse {
            severity: Severity::Error,
            code: refusal.code,
            message: refusal.message.clone(),
            detail: refusal.detail.clone(),
            hint: refusal.hint.clone(),
            routine: refusal.routine,
        }
        .encode();
        PendingRefusal {
            request,
            marker: format!("pgshift_refused_{seq}"),
            error,
        }
    }

    /// The frame sent to the server instead of the refused `frame` (a whole
    /// Query or Parse): the same message kind, with the marker as its SQL.
    /// A Parse keeps its statement name, so the name ends up undefined, as
    /// after any failed Parse.
    pub fn marker_frame(&self, tag: u8, frame: &[u8]) -> Bytes {
        let name = match tag {
            frontend::PARSE => frame
                .get(HEADER_LEN..)
                .and_then(split_cstr)
                .map(|(name, _)| name)
                .unwrap_or_default(),
            _ => &[],
        };
        let marker = self.marker.as_bytes();
        if tag == frontend::PARSE {
            // No parameter types: the marker takes none.
            encode_frame(tag, &[name, b"\0", marker, b"\0", &[0, 0]])
        } else {
            encode_frame(tag, &[marker, b"\0"])
        }
    }

    /// True when `frame` (a whole ErrorResponse from the server) is the
    /// syntax error raised by this refusal's marker.
    pub fn matches(&self, frame: &[u8]) -> bool {
        let mut code_matches = false;
        let mut names_marker = false;
        let mut fields = frame.get(HEADER_LEN..).unwrap_or_default();
        while let Some((&kind, rest)) = fields.split_first() {
            if kind == 0 {
                break;
            }
            let Some((value, rest)) = split_cstr(rest) else {
                break;
            };
            match kind {
                b'C' => code_matches = value == SYNTAX_ERROR,
                b'M' => {
                    names_marker = value
                        .windows(self.marker.len())
                        .any(|w| w == self.marker.as_bytes())
                }
                _ => {}
            }
            fields = rest;
        }
        code_matches && names_marker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal() -> Refusal {
        Refusal {
            code: "0A000",
            message: "no".into(),
            detail: None,
            hint: Some("h".into()),
            routine: None,
        }
    }

    #[test]
    fn marker_frames_keep_the_message_kind_and_statement_name() {
        let pending = PendingRefusal::new(3, 7, &refusal());
        let q = pending.marker_frame(b'Q', b"Q\0\0\0\x0dselect 1\0");
        assert_eq!(&q[..], b"Q\0\0\0\x16pgshift_refused_7\0");
        let parse = pending.marker_frame(b'P', b"P\0\0\0\x12s1\0select $1\0\0\x01\0\0\0\x17");
        assert_eq!(&parse[..], b"P\0\0\0\x1bs1\0pgshift_refused_7\0\0\0");
    }

    #[test]
    fn only_the_markers_own_syntax_error_matches() {
        let pending = PendingRefusal::new(1, 7, &refusal());
        let server_error = |code: &str, message: &str| {
            let mut body = Vec::new();
            for (kind, value) in [(b'S', "ERROR"), (b'C', code), (b'M', message)] {
                body.push(kind);
                body.extend_from_slice(value.as_bytes());
                body.push(0);
            }
            body.push(0);
            let mut frame = vec![b'E'];
            frame.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            frame.extend_from_slice(&body);
            frame
        };
        assert!(pending.matches(&server_error(
            "42601",
            "syntax error at or near \"pgshift_refused_7\""
        )));
        assert!(!pending.matches(&server_error(
            "42601",
            "syntax error at or near \"pgshift_refused_8\""
        )));
        assert!(!pending.matches(&server_error("22012", "pgshift_refused_7")));
        assert!(!pending.matches(b"E\0\0\0\x04"));
    }
}
