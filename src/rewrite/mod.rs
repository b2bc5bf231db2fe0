//! The statement rewrite seam: SQL text in, SQL text (or the same text) out.
//!
//! The relay decodes exactly two kinds of message into SQL — simple `Query`
//! and extended `Parse` — and asks a [`StatementRewriter`] what to send
//! instead. This module is pure: no sockets, no database.
//!
//! - [`PassThrough`]: no migrations configured; every statement as it is.
//! - [`engine::MigrationRewriter`]: driven by the published [`rules`]
//!   (migrations of [`migration`] and their phases), with the [`scan`] fast
//!   path in front.

use std::borrow::Cow;
use std::cell::RefCell;
use std::sync::Arc;

mod blocks;
pub mod catalog;
pub mod engine;
mod expand;
pub mod literals;
pub mod migration;
pub mod plan;
pub mod rules;
pub mod scan;
pub mod text;

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
    /// Do not run the statement: the client gets this error, and the
    /// session behaves as if the statement had failed on the server
    /// (transaction aborted, rest of the pipeline skipped up to Sync).
    Refused(Refusal),
}

/// Why a statement was refused, as the client will read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// SQLSTATE (`0A000` for a statement pgshift cannot rewrite safely).
    pub code: &'static str,
    /// What was refused and why: names the migration, the column and the reason.
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// Decides what SQL reaches the server. Called on the per-connection hot path
/// for every Query and Parse, so it must be cheap when it has nothing to do.
pub trait StatementRewriter: Send + Sync + 'static {
    /// `sql` is the statement text as the client sent it (in the session's
    /// client encoding, so not necessarily UTF-8).
    fn rewrite<'a>(&self, kind: StatementKind, sql: &'a [u8]) -> Rewrite<'a>;

    /// The epoch of the rules in force, for rewriters whose rules change
    /// while sessions run; statements prepared under an older epoch are
    /// re-prepared before their next use. `None`: rules never change.
    fn epoch(&self) -> Option<u64> {
        None
    }
}

thread_local! {
    static APPLICATION: RefCell<Option<Arc<str>>> = const { RefCell::new(None) };
}

/// Runs `f` (a call of [`StatementRewriter::rewrite`]) with `application`
/// as the `application_name` its statement is attributed to, for the
/// old-shape usage report. Rewriting is synchronous, so the attribution
/// cannot leak into another session's statement.
pub fn with_application<R>(application: Option<&Arc<str>>, f: impl FnOnce() -> R) -> R {
    APPLICATION.with(|a| *a.borrow_mut() = application.cloned());
    let out = f();
    APPLICATION.with(|a| *a.borrow_mut() = None);
    out
}

/// The application the statement being rewritten comes from.
pub(crate) fn current_application() -> Option<Arc<str>> {
    APPLICATION.with(|a| a.borrow().clone())
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
