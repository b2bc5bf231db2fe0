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

use search_path::SearchPath;

pub mod added;
pub mod catalog;
pub mod conversion;
pub mod dropped;
pub mod edits;
pub mod engine;
pub mod literals;
pub mod marker;
pub mod migration;
pub mod plan;
pub mod renamed_table;
pub mod resolve;
pub mod rules;
pub mod scan;
pub mod scope;
pub mod search_path;
#[cfg(test)]
mod testing;
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
    /// Do not run the statement: pgshift carried it out (the DDL gate's
    /// `migrate` mode); the client is answered with this command tag.
    Done(&'static str),
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
    /// The server routine Postgres names for this error, where drivers
    /// read it: pgjdbc prepares a statement again after 0A000 "cached plan
    /// must not change result type" only when it comes from
    /// `RevalidateCachedQuery`.
    pub routine: Option<&'static str>,
}

/// Decides what SQL reaches the server. Called on the per-connection hot path
/// for every Query and Parse, so it must be cheap when it has nothing to do.
pub trait StatementRewriter: Send + Sync + 'static {
    /// `sql` is the statement text as the client sent it (in the session's
    /// client encoding, so not necessarily UTF-8).
    fn rewrite<'a>(&self, kind: StatementKind, sql: &'a [u8]) -> Rewrite<'a>;

    /// [`StatementRewriter::rewrite`], with what it logs about a DDL
    /// statement (the gate's warning, the carrier's steps) in `span`, the
    /// session's: the relay enters its span only where it logs, and only
    /// the rewriter knows which statements are DDL.
    fn rewrite_logged<'a>(
        &self,
        kind: StatementKind,
        sql: &'a [u8],
        _span: &tracing::Span,
    ) -> Rewrite<'a> {
        self.rewrite(kind, sql)
    }

    /// The rewriter's answer for `sql` when it is known without the
    /// session or a plan: `true` when [`StatementRewriter::rewrite`] would
    /// leave it unchanged, naming no migrating table, and has noted so as
    /// `rewrite` would (the caller forwards the statement as it is, without
    /// setting up the session for the rewriter). `false`: ask `rewrite`.
    fn passes_unread(&self, _sql: &[u8]) -> bool {
        false
    }

    /// The epoch of the rules in force, for rewriters whose rules change
    /// while sessions run; statements prepared under an older epoch are
    /// re-prepared before their next use. `None`: rules never change.
    fn epoch(&self) -> Option<u64> {
        None
    }

    /// An identity of `sql`'s result shape (its columns) under the rules
    /// in force: a statement prepared under rules that gave it another key
    /// has changed its result type since (a `*` that spells out a
    /// migration's columns, or no longer does), as a table altered under a
    /// prepared `SELECT *` does on Postgres. 0 when the rules do not shape
    /// the result.
    fn result_key(&self, _sql: &[u8]) -> u64 {
        0
    }

    /// The migration the statement this thread last rewrote or refused
    /// was rewritten or refused for (for the latency metrics); asked
    /// right after [`StatementRewriter::rewrite`].
    fn attribution(&self) -> Option<Arc<str>> {
        None
    }

    /// Whether a statement with this text must wait before it goes
    /// upstream: it names a table whose column is being renamed in place
    /// (the rename barrier). The session holds it and asks again shortly;
    /// the answer turns false when the rules flip or the barrier lapses.
    /// `locked`: the tables the session's open transaction has used.
    fn holds(&self, _sql: &[u8], _locked: &[String]) -> bool {
        false
    }

    /// The migrations whose old shape (old column) the statement last
    /// passed to [`StatementRewriter::rewrite`] on this thread names;
    /// asked right after it, for a prepared statement's later executions.
    fn old_shape_named(&self) -> Vec<Arc<str>> {
        Vec::new()
    }

    /// A prepared statement naming `migrations`' old shape runs again (its
    /// Bind), for a session of `application`: counted as old-shape use, as
    /// its Parse was, so that a contract waits for it.
    fn saw_old_shape(&self, _migrations: &[Arc<str>], _application: Option<&str>) {}

    /// Whether a statement must wait while pgshift carries it out (the
    /// DDL gate's `migrate` mode; with `catalog_only`, `guard`'s: only the
    /// safe forms of catalog changes): asked before each DDL Query or Parse
    /// (`sql_plan::gate::is_ddl`) of the session served by server process
    /// `backend_pid`; the session holds it and asks again shortly.
    fn pending(&self, _sql: &[u8], _backend_pid: i32, _catalog_only: bool) -> bool {
        false
    }

    /// The migrating tables (lower-cased) whose names `sql` contains.
    fn tables_named(&self, _sql: &[u8]) -> Vec<String> {
        Vec::new()
    }

    /// Whether any table is under the rename barrier now (a cheap check
    /// before looking up what a Bind or EXECUTE would run).
    fn holding(&self) -> bool {
        false
    }

    /// Whether the statement last passed to [`StatementRewriter::rewrite`]
    /// on this thread names a migrating table (rewritten or not).
    fn touched(&self) -> bool {
        false
    }

    /// Requests in flight that touch the migrating `tables` (lower-cased;
    /// [`rules::ANY_TABLE`]: some, not known which): `delta` more (sent) or
    /// fewer (answered, or their session ended). The rename barrier is
    /// acknowledged only once those sent before it that touch its table
    /// are answered.
    fn in_flight(&self, _tables: &[String], _delta: i64) {}
}

/// Who a statement being rewritten comes from: what name resolution and
/// the old-shape report need to know about its session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionContext {
    /// The client's `application_name`, for the old-shape usage report.
    pub application: Option<Arc<str>>,
    /// The session's user (what `$user` in a search path names).
    pub user: Arc<str>,
    /// The session's own `search_path`; `None`: the database's default.
    pub search_path: Option<SearchPath>,
    /// The shape the session asked for at startup (`pgshift.shape`).
    pub marked: Option<marker::Marked>,
    /// Tells sessions that resolve names or shapes differently apart in
    /// the plan cache (a hash of the user, the path and the mark; the
    /// application counts only where a migration's marker names it:
    /// `marker::session_key`).
    pub key: u64,
    /// When the session connected (Unix ms): a marker may count sessions
    /// that connected after a time as the new shape.
    pub connected_ms: i64,
    /// The server process serving the session (0 until its BackendKeyData).
    pub backend_pid: i32,
    /// The DDL gate's mode for the session (its role's, or what it asked
    /// for at startup, [`crate::sql_plan::gate::DdlMode::for_session`]);
    /// `None`: the rewriter's own.
    pub ddl: Option<crate::sql_plan::gate::DdlMode>,
}

impl SessionContext {
    pub fn new(
        application: Option<Arc<str>>,
        user: Arc<str>,
        search_path: Option<SearchPath>,
        marked: Option<marker::Marked>,
    ) -> SessionContext {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut h);
        search_path.hash(&mut h);
        marked.hash(&mut h);
        SessionContext {
            application,
            user,
            search_path,
            marked,
            key: h.finish(),
            backend_pid: 0,
            ddl: None,
            connected_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        }
    }
}

thread_local! {
    static SESSION: RefCell<Option<Arc<SessionContext>>> = const { RefCell::new(None) };
}

/// Runs `f` (a call of [`StatementRewriter::rewrite`]) on behalf of the
/// session `context`: names resolve along its search path, and its
/// statement is attributed to its application in the old-shape report.
/// Rewriting is synchronous, so the context cannot leak into another
/// session's statement.
pub fn with_session<R>(context: Option<&Arc<SessionContext>>, f: impl FnOnce() -> R) -> R {
    SESSION.with(|s| *s.borrow_mut() = context.cloned());
    let out = f();
    SESSION.with(|s| *s.borrow_mut() = None);
    out
}

/// [`with_session`] for a caller that keeps the context: it is moved in
/// and handed back (`None` if `f` ran a nested [`with_session`]), without
/// touching its reference count.
pub fn with_session_kept<R>(
    context: Arc<SessionContext>,
    f: impl FnOnce() -> R,
) -> (R, Option<Arc<SessionContext>>) {
    SESSION.with(|s| *s.borrow_mut() = Some(context));
    let out = f();
    (out, SESSION.with(|s| s.borrow_mut().take()))
}

/// Reads the context of the statement being rewritten (`None` outside
/// [`with_session`]: tests and benchmarks, resolved as a session that set
/// nothing).
pub(crate) fn with_current_session<R>(f: impl FnOnce(Option<&SessionContext>) -> R) -> R {
    SESSION.with(|s| f(s.borrow().as_deref()))
}

/// `query` as pgshift serves it to an old-shape client once `spec`'s old
/// column is gone (phase contracted): how a view over the old column is
/// redefined so it keeps its shape. `Err` says why it cannot be.
pub fn contracted_form(
    spec: &migration::MigrationSpec,
    catalog: &catalog::Catalog,
    query: &str,
) -> Result<String, String> {
    let contracted = rules::ActiveMigration {
        spec: spec.clone(),
        phase: migration::Phase::Contracted,
    };
    let cell = rules::RulesCell::with_catalog(&[contracted], catalog.clone());
    cell.with(|rules| match plan::plan(query, rules) {
        plan::Plan::Unchanged => Ok(query.to_string()),
        plan::Plan::Replaced { text, .. } => Ok(text),
        plan::Plan::Error { message, .. } => {
            Err(format!("Postgres would refuse its query: {message}"))
        }
        plan::Plan::Refused { reason, .. } => {
            Err(format!("pgshift cannot rewrite its query: it {reason}"))
        }
    })
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
