//! The statement rewrite seam: SQL text in, SQL text (or the same text) out.
//!
//! The relay decodes exactly two kinds of message into SQL — simple `Query`
//! and extended `Parse` — and asks a [`StatementRewriter`] what to send
//! instead. This module is pure: no sockets, no database. Today the only
//! rewriter is [`PassThrough`], which leaves every statement as it is; the
//! migration rules plug in here.

use std::borrow::Cow;

/// Where a statement came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    /// A simple-protocol `Query` (may hold several statements).
    SimpleQuery,
    /// An extended-protocol `Parse`.
    Parse,
}

/// A rewriter's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite<'a> {
    /// Forward the original message byte for byte.
    Unchanged,
    /// Send this SQL text instead.
    Replaced(Cow<'a, str>),
}

/// Decides what SQL reaches the server. Called on the per-connection hot path
/// for every Query and Parse, so it must be cheap when it has nothing to do.
pub trait StatementRewriter: Send + Sync + 'static {
    /// `sql` is the statement text as the client sent it (in the session's
    /// client encoding, so not necessarily UTF-8).
    fn rewrite<'a>(&self, kind: StatementKind, sql: &'a [u8]) -> Rewrite<'a>;
}

/// The rewriter used while no migration is configured: every statement goes
/// through untouched.
#[derive(Debug, Default, Clone, Copy)]
pub struct PassThrough;

impl StatementRewriter for PassThrough {
    #[inline]
    fn rewrite<'a>(&self, _kind: StatementKind, _sql: &'a [u8]) -> Rewrite<'a> {
        Rewrite::Unchanged
    }
}
