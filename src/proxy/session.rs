//! What one session's two directions know about each other, and how each
//! direction's stream is looked at (its [`FrameVisitor`]).
//!
//! The client side counts the requests that end in a ReadyForQuery, passes
//! Query and Parse through the rewrite seam, turns a refusal into a marker
//! statement (see [`super::refusal`]), and re-prepares statements prepared
//! under older rules before their next use (see [`super::statements`]); the
//! server side counts ReadyForQuery, notes the transaction status, swaps a
//! marker's syntax error for pgshift's refusal, and swallows the answers to
//! the messages pgshift injected. Both directions run in the session's one
//! task, so the atomics and the mutex are never contended; they only make
//! the sharing `Send`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::framing::{FrameVisitor, Handling, Verdict, HEADER_LEN};
use super::refusal::PendingRefusal;
use super::search_path::PathTracker;
use super::sql_prepared::SqlPrepared;
use super::statement::{rewrite_frame, Outcome};
use super::statements::{self, Deallocation, Statements};
use super::wire::{backend, frontend};
use crate::metrics::{self, Kind};
use crate::rewrite::rules::ANY_TABLE;
use crate::rewrite::search_path;
use crate::rewrite::{Refusal, SessionContext, StatementRewriter};
use crate::sql_plan::gate::DdlMode;

/// `rollback` as a word, looked for in a transaction that used tables.
static ROLLBACK: crate::rewrite::scan::Word = crate::rewrite::scan::Word::new(b"rollback");

/// The shared state of one session.
pub struct SessionState {
    /// The session's span (peer, user, database): entered only where the
    /// relay logs, not on every wake-up.
    pub(super) span: tracing::Span,
    started: Instant,
    /// Whether `last_activity_ms` is kept (only with an idle timeout).
    track_activity: bool,
    /// Milliseconds since `started` when a byte last moved.
    last_activity_ms: AtomicU64,
    /// Requests sent that each end in a ReadyForQuery: the startup message,
    /// then every Query, Sync and FunctionCall.
    requests_sent: AtomicU64,
    /// ReadyForQuery messages seen.
    ready_seen: AtomicU64,
    /// The client sent extended-protocol messages not yet closed by a Sync.
    unsynced: AtomicBool,
    /// Transaction status of the last ReadyForQuery (`I`, `T` or `E`).
    txn_status: AtomicU8,
    /// The client sent Terminate.
    terminated: AtomicBool,
    /// The proxy is shutting down: end the session at the next idle point.
    draining: AtomicBool,
    /// Refusals in flight and prepared statements.
    book: Mutex<Book>,
    /// The book's oldest statement epoch (`u64::MAX`: none) and whether a
    /// migration rewrote one of its statements, mirrored after every use
    /// of the book: a Bind reads them without the lock.
    statements_oldest: AtomicU64,
    statements_classified: AtomicBool,
    /// The request of the statements parsed last (the book's `fresh`).
    statements_fresh: AtomicU64,
    refusal_seq: AtomicU64,
    /// A search-path change waits for its transaction's outcome: the
    /// server side reads command tags.
    path_watch: AtomicBool,
    /// A statement pgshift carried out waits for its `DO`'s tag to be
    /// replaced: the server side reads command tags.
    answering: AtomicBool,
    /// The book's `txn_tables` is not empty (read without its lock).
    txn_used_tables: AtomicBool,
    /// The book's `context_version`, mirrored like the statements' state.
    context_version: AtomicU64,
}

/// What the session keeps about statements.
struct Book {
    /// Refusals whose marker error has not come back yet, oldest first.
    refusals: VecDeque<PendingRefusal>,
    /// Statements pgshift carried out, sent as a no-op `DO`: (request,
    /// the CommandComplete to answer its `DO` with, and whether it ends
    /// with its request — a Query's does; a Parse's waits for the first
    /// Execute of it, which may come in a later request), oldest first.
    answers: VecDeque<(u64, Bytes, bool)>,
    /// Prepared statements and the rules epoch of each.
    statements: Statements,
    /// SQL-level prepared statements (PREPARE / EXECUTE).
    sql_prepared: SqlPrepared,
    /// The session's search path.
    path: PathTracker,
    /// What the rewriter is told about the session (application, user,
    /// search path), rebuilt when the path changes.
    context: Arc<SessionContext>,
    /// Counts the replacements of `context` (a visitor keeps a copy).
    context_version: u64,
    /// Requests sent whose ReadyForQuery has not come back, oldest first.
    timings: VecDeque<Timing>,
    /// Migrating tables (lower-cased) the open transaction has used, so
    /// holds a lock on: the rename barrier lets its statements on them
    /// through. Cleared when the transaction ends or rolls back to a
    /// savepoint.
    txn_tables: Vec<String>,
}

/// A Query's or Parse's statement, as the bookkeeping after its rewrite
/// reads it.
struct Statement<'f, 's> {
    request: u64,
    epoch: u64,
    parse: Option<&'f statements::ParseFields<'f>>,
    sql: &'s [u8],
    sql_command: Option<(&'static str, &'s str)>,
}

/// A request on its way (for the latency metrics, and the rename
/// barrier's count of requests touching a migrating table).
struct Timing {
    request: u64,
    started: Instant,
    kind: Kind,
    migration: Option<Arc<str>>,
    /// The migrating tables it names (`*`: some, not known which).
    touching: Vec<String>,
}

impl SessionState {
    /// Fresh state of a session that has just sent its startup message;
    /// `track_activity` keeps the last-activity clock (for an idle timeout).
    pub fn new(track_activity: bool, context: SessionContext) -> Self {
        Self::in_span(track_activity, context, tracing::Span::none())
    }

    /// [`SessionState::new`], logging in `span`.
    pub fn in_span(track_activity: bool, context: SessionContext, span: tracing::Span) -> Self {
        let book = Book {
            refusals: VecDeque::new(),
            answers: VecDeque::new(),
            statements: Statements::default(),
            sql_prepared: SqlPrepared::default(),
            path: PathTracker::new(context.search_path.clone()),
            context: Arc::new(context),
            context_version: 0,
            timings: VecDeque::new(),
            txn_tables: Vec::new(),
        };
        SessionState {
            span,
            started: Instant::now(),
            track_activity,
            last_activity_ms: AtomicU64::new(0),
            // The startup message itself ends in a ReadyForQuery.
            requests_sent: AtomicU64::new(1),
            ready_seen: AtomicU64::new(0),
            unsynced: AtomicBool::new(false),
            txn_status: AtomicU8::new(b'I'),
            terminated: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            book: Mutex::new(book),
            statements_oldest: AtomicU64::new(u64::MAX),
            statements_classified: AtomicBool::new(false),
            statements_fresh: AtomicU64::new(0),
            refusal_seq: AtomicU64::new(0),
            path_watch: AtomicBool::new(false),
            answering: AtomicBool::new(false),
            txn_used_tables: AtomicBool::new(false),
            context_version: AtomicU64::new(0),
        }
    }

    /// Notes that a byte moved (only kept when an idle timeout is set).
    pub fn touch(&self) {
        if !self.track_activity {
            return;
        }
        let now = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.store(now, Ordering::Relaxed);
    }

    /// How long no byte has moved.
    pub fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Idle outside a transaction with nothing in flight: closing the
    /// session now cannot cut a statement or a transaction in half.
    pub fn is_idle(&self) -> bool {
        self.requests_sent.load(Ordering::Relaxed) == self.ready_seen.load(Ordering::Relaxed)
            && !self.unsynced.load(Ordering::Relaxed)
            && self.txn_status.load(Ordering::Relaxed) == b'I'
    }

    /// Inside a transaction with nothing in flight: the client holds the
    /// transaction open between statements.
    pub fn is_idle_in_transaction(&self) -> bool {
        self.requests_sent.load(Ordering::Relaxed) == self.ready_seen.load(Ordering::Relaxed)
            && !self.unsynced.load(Ordering::Relaxed)
            && self.txn_status.load(Ordering::Relaxed) != b'I'
    }

    /// The client sent Terminate.
    pub fn terminated(&self) -> bool {
        self.terminated.load(Ordering::Relaxed)
    }

    /// The session ended: its requests still in flight that touch a
    /// migrating table no longer count.
    pub fn abandon_in_flight(&self, rewriter: &dyn StatementRewriter) {
        self.with_book(|b| {
            for t in b.timings.iter().filter(|t| !t.touching.is_empty()) {
                rewriter.in_flight(&t.touching, -1);
            }
        });
    }

    /// Asks the session to end at its next idle point.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Draining and idle: time to close.
    pub fn drained(&self) -> bool {
        self.draining.load(Ordering::Relaxed) && self.is_idle()
    }

    fn with_book<R>(&self, f: impl FnOnce(&mut Book) -> R) -> R {
        // A poisoned lock can only follow a panic in this very session.
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        let result = f(&mut book);
        let statements = &book.statements;
        let oldest = statements.oldest_epoch().unwrap_or(u64::MAX);
        self.statements_oldest.store(oldest, Ordering::Relaxed);
        let classified = statements.any_classified();
        self.statements_classified
            .store(classified, Ordering::Relaxed);
        let fresh = statements.fresh_request();
        self.statements_fresh.store(fresh, Ordering::Relaxed);
        self.context_version
            .store(book.context_version, Ordering::Relaxed);
        result
    }

    /// Whether a Describe in request `request` must be looked at whole:
    /// a statement may be stale under rules of `epoch`, or one parsed in
    /// the same request may be shown (read without the book's lock).
    fn describe_looked_at(&self, epoch: u64, request: u64) -> bool {
        self.statements_oldest.load(Ordering::Relaxed) < epoch
            || self.statements_fresh.load(Ordering::Relaxed) == request
    }

    /// Whether a Bind must be looked at whole for its statement: one
    /// may be stale under rules of `epoch`, or was rewritten by a
    /// migration (read without the book's lock).
    fn bind_looked_at(&self, epoch: u64) -> bool {
        self.statements_oldest.load(Ordering::Relaxed) < epoch
            || self.statements_classified.load(Ordering::Relaxed)
    }

    /// Follows the search-path changes a statement the client sent makes.
    fn path_changes(&self, sql: &[u8]) {
        if !search_path::may_change(sql) {
            return;
        }
        let Ok(text) = std::str::from_utf8(sql) else {
            return;
        };
        let changes = search_path::changes(text);
        if changes.is_empty() {
            return;
        }
        self.with_book(|b| {
            for change in changes {
                b.path.apply(change);
            }
            b.refresh_context();
            self.path_watch.store(b.path.watching(), Ordering::Relaxed);
        });
    }

    /// The server side saw `tag` while a path change is pending.
    fn path_outcome(&self, tag: u8, frame: &[u8]) {
        self.with_book(|b| {
            match tag {
                backend::ERROR_RESPONSE => b.path.on_error(),
                backend::COMMAND_COMPLETE => {
                    b.path
                        .on_command_complete(frame.get(HEADER_LEN..).unwrap_or_default());
                }
                _ => {
                    b.path
                        .on_ready(frame.get(HEADER_LEN).copied().unwrap_or(b'I'));
                }
            }
            b.refresh_context();
            self.path_watch.store(b.path.watching(), Ordering::Relaxed);
        });
    }
}

impl Book {
    /// A new context when the effective path changed.
    fn refresh_context(&mut self) {
        let path = self.path.effective();
        if self.context.search_path.as_ref() != path {
            let c = &self.context;
            let mut next = SessionContext::new(
                c.application.clone(),
                c.user.clone(),
                path.cloned(),
                c.marked,
            );
            next.connected_ms = c.connected_ms;
            next.backend_pid = c.backend_pid;
            self.context = Arc::new(next);
            self.context_version += 1;
        }
    }
}

/// The client stream as the relay sees it.
pub struct FrontendVisitor<'a> {
    state: &'a SessionState,
    rewriter: &'a dyn StatementRewriter,
    /// The rewriter has rules epochs, so prepared statements are tracked.
    tracking: bool,
    /// What was done to the statements of the extended-protocol batch the
    /// next Sync ends, and the migration that did it (latency metrics).
    batch: (Kind, Option<Arc<str>>),
    /// The migrating tables the batch (or Query) names, itself or through
    /// a prepared statement it runs.
    touching: Vec<String>,
    /// A statement this session prepared (by Parse or PREPARE) names a
    /// migrating table: a Bind or EXECUTE may run it.
    prepared_touching: bool,
    /// Whether the session's DDL may be held while pgshift carries it out,
    /// and then only catalog changes' safe forms (`guard`: `Some(true)`)
    /// or every migration too (`migrate`: `Some(false)`).
    carries_ddl: Option<bool>,
    /// The book's session context as of `context_version`, kept so a
    /// statement is rewritten without taking the book's lock.
    context: std::cell::Cell<Option<Arc<SessionContext>>>,
    context_version: std::cell::Cell<u64>,
}

impl<'a> FrontendVisitor<'a> {
    /// Passes a Query or Parse frame through the rewriter, attributed to
    /// the session's application while rules are in force (the old-shape
    /// report); without rules, straight through. `read`: the statement's
    /// SQL when the caller has already split the frame (a Parse).
    fn rewrite(
        &self,
        tag: u8,
        frame: &[u8],
        read: Option<&[u8]>,
    ) -> Result<Outcome, super::statement::MalformedStatement> {
        // (What the DDL gate and carrier log goes in the session's span.)
        let span = &self.state.span;
        if self.tracking {
            let unread = match read {
                Some(sql) => self.rewriter.passes_unread(sql),
                None => super::statement::passes_unread(self.rewriter, tag, frame)?,
            };
            if unread {
                return Ok(Outcome::Keep);
            }
            let context = self.session_context();
            let (outcome, context) = crate::rewrite::with_session_kept(context, || {
                rewrite_frame(self.rewriter, tag, frame, span)
            });
            self.context.set(context);
            outcome
        } else {
            rewrite_frame(self.rewriter, tag, frame, span)
        }
    }

    /// The session's context: the visitor's copy, unless the book's
    /// changed since it was taken.
    fn session_context(&self) -> Arc<SessionContext> {
        let version = self.state.context_version.load(Ordering::Relaxed);
        match self.context.take() {
            Some(context) if self.context_version.get() == version => context,
            _ => {
                let (context, version) = self
                    .state
                    .with_book(|b| (b.context.clone(), b.context_version));
                self.context_version.set(version);
                context
            }
        }
    }

    /// `sql`'s result key under the rules in force, for the session.
    fn result_key(&self, sql: &[u8]) -> u64 {
        let context = self.state.with_book(|b| b.context.clone());
        crate::rewrite::with_session(Some(&context), || self.rewriter.result_key(sql))
    }

    pub fn new(state: &'a SessionState, rewriter: &'a dyn StatementRewriter) -> Self {
        FrontendVisitor {
            state,
            rewriter,
            tracking: rewriter.epoch().is_some(),
            batch: (Kind::Passed, None),
            touching: Vec::new(),
            prepared_touching: false,
            carries_ddl: match state.with_book(|b| b.context.ddl) {
                Some(DdlMode::Guard) => Some(true),
                Some(DdlMode::Migrate) => Some(false),
                _ => None,
            },
            context: std::cell::Cell::new(None),
            context_version: std::cell::Cell::new(0),
        }
    }

    /// Notes what was done to a Query's or Parse's statement (for its
    /// request's latency).
    fn note(&mut self, outcome: &Outcome) {
        let kind = match outcome {
            Outcome::Keep => return,
            Outcome::Replace(_) => Kind::Rewritten,
            Outcome::Refuse(_) => Kind::Refused,
            Outcome::Answer(..) => Kind::Rewritten,
        };
        self.batch.0 = self.batch.0.max(kind);
        if self.batch.1.is_none() {
            self.batch.1 = self.rewriter.attribution();
        }
    }

    /// A Bind of a statement a migration rewrote: its batch counts as
    /// rewritten for that migration.
    fn executes(&mut self, bind: &[u8]) {
        if !self.tracking {
            return;
        }
        let Some(name) = statements::statement_used(frontend::BIND, bind) else {
            return;
        };
        let (class, old_shape, context) = self.state.with_book(|b| {
            // (Neither is kept until a migration rewrote a statement.)
            if !b.statements.any_classified() {
                return (None, None, None);
            }
            let old_shape = b.statements.old_shape(name);
            let context = old_shape.as_ref().map(|_| b.context.clone());
            (b.statements.class(name), old_shape, context)
        });
        if let Some((kind, migration)) = class {
            self.batch.0 = self.batch.0.max(kind);
            self.batch.1.get_or_insert(migration);
        }
        if let (Some(ids), Some(context)) = (old_shape, context) {
            self.rewriter
                .saw_old_shape(&ids, context.application.as_deref());
        }
    }

    /// The book kept after a Query or Parse was rewritten (with rules
    /// epochs): a Parse's statement, its result shape and what went
    /// upstream; a Query's DEALLOCATE and PREPARE.
    fn book_after_rewrite(&self, tag: u8, statement: &Statement<'_, '_>, outcome: &Outcome) {
        let state = self.state;
        match tag {
            frontend::PARSE if !matches!(outcome, Outcome::Refuse(_)) => {
                if let Some(fields) = statement.parse {
                    // Its result shape under the rules it was rewritten
                    // under (the plan cache answers); were they to
                    // change meanwhile, which shape the client was
                    // given is not known, and its next use fails as a
                    // changed result type (the driver prepares again).
                    // (Only a statement naming a migrating table has a
                    // result key other than 0.)
                    let mut result = match self.rewriter.touched() {
                        true => self.result_key(fields.sql),
                        false => 0,
                    };
                    // (Only a `*` can give a statement another shape.)
                    if self.rewriter.epoch() != Some(statement.epoch) && fields.sql.contains(&b'*')
                    {
                        result = statements::UNKNOWN_RESULT;
                    }
                    let sent = match outcome {
                        Outcome::Keep => statements::AS_WRITTEN,
                        _ => sent_fingerprint(outcome, fields.sql)
                            .unwrap_or(statements::NOTHING_SENT),
                    };
                    let class = match (outcome, self.rewriter.attribution()) {
                        (Outcome::Replace(_), Some(m)) => Some((Kind::Rewritten, m)),
                        _ => None,
                    };
                    // A statement pgshift carried out is a no-op `DO` on the
                    // server under any rules: never re-prepared (planned
                    // again, its DDL would be carried out or refused anew).
                    let epoch = match outcome {
                        Outcome::Answer(..) => u64::MAX,
                        _ => statement.epoch,
                    };
                    let parsed = statements::Parsed {
                        epoch,
                        result,
                        sent,
                        class,
                        old_shape: self.rewriter.old_shape_named(),
                    };
                    state.with_book(|b| b.statements.parsed(statement.request, fields, parsed));
                }
            }
            frontend::QUERY => {
                match statements::deallocation(statement.sql) {
                    Some(Deallocation::All) => state.with_book(|b| {
                        b.statements.clear();
                        b.sql_prepared.clear();
                    }),
                    Some(Deallocation::One(name)) => state.with_book(|b| {
                        b.statements.closed(&name);
                        b.sql_prepared.deallocated(&String::from_utf8_lossy(&name));
                    }),
                    None => {}
                }
                if let Some(("prepare", sql)) = statement.sql_command {
                    if !matches!(outcome, Outcome::Refuse(_)) {
                        state.with_book(|b| b.sql_prepared.prepared(sql, statement.epoch));
                    }
                }
            }
            _ => {}
        }
    }

    /// A whole message that uses or closes a prepared statement: Close
    /// forgets it; Bind and Describe re-prepare it first when it is stale
    /// (and a Bind counts toward its batch's latency kind).
    fn statement_use(&mut self, tag: u8, frame: &[u8], request: u64) -> Verdict {
        match tag {
            frontend::CLOSE => {
                if let Some(name) = statements::statement_closed(frame) {
                    self.state.with_book(|b| b.statements.closed(name));
                }
                Verdict::Keep
            }
            frontend::BIND | frontend::DESCRIBE => {
                if tag == frontend::BIND {
                    self.executes(frame);
                } else {
                    self.state.with_book(|b| b.statements.described(request));
                }
                let epoch = self.rewriter.epoch().unwrap_or(0);
                self.reprepare(request, tag, frame, epoch)
            }
            _ => Verdict::Keep,
        }
    }

    /// A Query for an `EXECUTE` of a statement `PREPARE`d under older
    /// rules: the statement itself, rewritten under the current ones.
    fn stale_execute(
        &self,
        epoch: Option<u64>,
        sql_command: Option<(&'static str, &str)>,
    ) -> Option<Bytes> {
        let (Some(epoch), Some(("execute", sql))) = (epoch, sql_command) else {
            return None;
        };
        let statement = self
            .state
            .with_book(|b| b.sql_prepared.stale_execute(sql, epoch))?;
        Some(crate::proxy::wire::encode_frame(
            frontend::QUERY,
            &[statement.as_bytes(), b"\0"],
        ))
    }

    /// After a Query's or Parse's rewrite: whether it touches a migrating
    /// table (itself, or an EXECUTE of a statement that may), and whether
    /// the session now holds a prepared statement that does.
    fn note_touching(&mut self, tag: u8, sql: &[u8], sql_command: Option<(&'static str, &str)>) {
        let touched = self.rewriter.touched();
        let executes = matches!(sql_command, Some(("execute", _))) && self.prepared_touching;
        if executes {
            self.touching.push(ANY_TABLE.to_string());
        }
        if touched && (tag == frontend::PARSE || matches!(sql_command, Some(("prepare", _)))) {
            self.prepared_touching = true;
        }
        self.forget_tables_on_rollback(sql);
        if touched {
            let tables = self.rewriter.tables_named(sql);
            self.touching.extend(tables.iter().cloned());
            self.note_tables_used(tables);
        }
    }

    /// A rollback (to a savepoint, or of the transaction) may release the
    /// locks of the tables the transaction used: they are all forgotten.
    fn forget_tables_on_rollback(&self, sql: &[u8]) {
        let state = self.state;
        if state.txn_used_tables.load(Ordering::Relaxed) && ROLLBACK.found_in(sql) {
            state.with_book(|b| b.txn_tables.clear());
            state.txn_used_tables.store(false, Ordering::Relaxed);
        }
    }

    /// The migrating tables a statement sent in the open transaction uses
    /// (a Parse takes its locks too).
    fn note_tables_used(&self, tables: Vec<String>) {
        if tables.is_empty() {
            return;
        }
        self.state.with_book(|b| {
            for t in tables {
                if !b.txn_tables.contains(&t) {
                    b.txn_tables.push(t);
                }
            }
        });
        self.state.txn_used_tables.store(true, Ordering::Relaxed);
    }

    /// A Bind: the migrating tables the statement it runs names (they are
    /// then used by the open transaction).
    fn note_bind(&self, frame: &[u8]) -> Vec<String> {
        let sql = statements::statement_used(frontend::BIND, frame)
            .and_then(|name| self.state.with_book(|b| b.statements.sql(name)));
        let Some(sql) = sql else {
            return Vec::new();
        };
        self.forget_tables_on_rollback(&sql);
        let tables = self.rewriter.tables_named(&sql);
        self.note_tables_used(tables.clone());
        tables
    }

    /// Whether this message must wait for the rename barrier: a Query or
    /// Parse naming a table under it, an EXECUTE of a statement that does,
    /// or a Bind of a prepared statement that does.
    fn must_hold(&self, tag: u8, frame: Option<&[u8]>) -> bool {
        // (Only a statement's own frames are held: a Sync, a Describe or
        // an Execute follows its Bind.)
        let Some(frame) =
            frame.filter(|_| matches!(tag, frontend::QUERY | frontend::PARSE | frontend::BIND))
        else {
            return false;
        };
        // A DDL statement pgshift is carrying out (the gate's guard and
        // migrate modes).
        if let Some(catalog_only) = self.carries_ddl {
            let sql = match tag {
                frontend::QUERY => frame
                    .get(HEADER_LEN..)
                    .map(|s| s.strip_suffix(&[0]).unwrap_or(s)),
                frontend::PARSE => statements::parse_fields(frame).map(|f| f.sql),
                _ => None,
            };
            // (The server process, for the job's key, read only for DDL.)
            let pid = || self.state.with_book(|b| b.context.backend_pid);
            let carried = |sql: &[u8]| {
                crate::sql_plan::gate::is_ddl(sql)
                    && self.rewriter.pending(sql, pid(), catalog_only)
            };
            if sql.is_some_and(carried) {
                return true;
            }
        }
        if !self.tracking || !self.rewriter.holding() {
            return false;
        }
        // A transaction that used a table holds its lock: the rename waits
        // for it anyway, so its statements on that table go on.
        let in_transaction = self.state.txn_status.load(Ordering::Relaxed) != b'I';
        let locked = match in_transaction {
            true => self.state.with_book(|b| b.txn_tables.clone()),
            false => Vec::new(),
        };
        let holds = |sql: &[u8]| self.rewriter.holds(sql, &locked);
        match tag {
            frontend::QUERY => {
                let sql = frame.get(HEADER_LEN..).unwrap_or_default();
                holds(sql)
                    || self
                        .stale_execute(self.rewriter.epoch(), sql_prepared_command(frame))
                        .is_some_and(|statement| holds(&statement))
            }
            frontend::PARSE => statements::parse_fields(frame).is_some_and(|f| holds(f.sql)),
            frontend::BIND => statements::statement_used(tag, frame)
                .and_then(|name| self.state.with_book(|b| b.statements.sql(name)))
                .is_some_and(|sql| holds(&sql)),
            _ => false,
        }
    }

    /// Starts the clock of request `request` (a Query, or the Sync ending
    /// a batch), with what was done to its statements.
    fn time(&mut self, request: u64) {
        let (kind, migration) = std::mem::replace(&mut self.batch, (Kind::Passed, None));
        let touching = std::mem::take(&mut self.touching);
        if !touching.is_empty() {
            self.rewriter.in_flight(&touching, 1);
        }
        let timing = Timing {
            request,
            started: Instant::now(),
            kind,
            migration,
            touching,
        };
        self.state.with_book(|b| b.timings.push_back(timing));
    }

    /// A statement (a Query's, or a Parse's: `in_request`) of request
    /// `request` went as a no-op `DO`: its CommandComplete is to say `tag`.
    fn answer_with(&self, request: u64, tag: &'static str, in_request: bool) {
        let complete =
            super::wire::encode_frame(backend::COMMAND_COMPLETE, &[tag.as_bytes(), b"\0"]);
        self.state
            .with_book(|b| b.answers.push_back((request, complete, in_request)));
        self.state.answering.store(true, Ordering::Relaxed);
    }

    /// Records a refusal and returns the marker frame to send instead.
    fn refuse(&self, request: u64, tag: u8, frame: &[u8], refusal: &Refusal) -> Bytes {
        let seq = self.state.refusal_seq.fetch_add(1, Ordering::Relaxed);
        let pending = PendingRefusal::new(request, seq, refusal);
        let marker = pending.marker_frame(tag, frame);
        self.state.span.in_scope(|| {
            tracing::info!(code = refusal.code, message = %refusal.message, "refused a statement")
        });
        self.state.with_book(|b| b.refusals.push_back(pending));
        marker
    }

    /// A Bind or Describe of a statement prepared under older rules:
    /// re-prepare it first (Close + Parse injected, their answers swallowed).
    fn reprepare(&self, request: u64, tag: u8, frame: &[u8], epoch: u64) -> Verdict {
        // (No statement older than the rules: nothing to look up.)
        if self.state.statements_oldest.load(Ordering::Relaxed) >= epoch {
            return Verdict::Keep;
        }
        let Some(name) = statements::statement_used(tag, frame) else {
            return Verdict::Keep;
        };
        let Some(stale) = self
            .state
            .with_book(|b| b.statements.take_stale(name, epoch, request))
        else {
            return Verdict::Keep;
        };
        let parse = statements::parse_frame(name, &stale.sql, &stale.param_types);
        let rewritten = self.rewrite(frontend::PARSE, &parse, None);
        let old_shape = self.rewriter.old_shape_named();
        self.state
            .with_book(|b| b.statements.set_old_shape(name, old_shape));
        if let (Some(sent), Ok(outcome)) = (stale.sent, &rewritten) {
            if sent_fingerprint(outcome, &stale.sql) == Some(sent) {
                // The new rules rewrite it to the text the server holds:
                // nothing to re-prepare (Postgres revalidates its own plan,
                // and answers for any change of the table itself, as direct).
                self.state
                    .with_book(|b| b.statements.unchanged(name, epoch));
                return Verdict::Keep;
            }
        }
        let now = self.result_key(&stale.sql);
        let same = crate::rewrite::engine::same_result(stale.result, now);
        let outcome = if same || stale.unseen {
            if now != stale.result {
                self.state.with_book(|b| b.statements.set_result(name, now));
            }
            rewritten
        } else {
            // Its columns changed (a `*` that now spells out a migration's
            // columns, or no longer does): the client gets what Postgres
            // answers when a table changes under a prepared statement,
            // and a driver prepares it again.
            self.state.with_book(|b| b.statements.set_result(name, now));
            Ok(Outcome::Refuse(result_type_changed()))
        };
        let (parse, refused) = match outcome {
            Ok(Outcome::Keep) => (parse, false),
            Ok(Outcome::Replace(rewritten) | Outcome::Answer(rewritten, _)) => (rewritten, false),
            Ok(Outcome::Refuse(refusal)) => (
                self.refuse(request, frontend::PARSE, &parse, &refusal),
                true,
            ),
            Err(_) => return Verdict::Keep,
        };
        self.state.span.in_scope(|| {
            tracing::debug!(statement = %String::from_utf8_lossy(name), epoch, "re-preparing a statement under new rules")
        });
        // A refusal leaves it stale: refused again at every use, as
        // Postgres would fail it.
        let sent = (!refused)
            .then(|| statements::parse_fields(&parse).map(|f| statements::fingerprint(f.sql)))
            .flatten();
        self.state
            .with_book(|b| b.statements.expect_injected(request, name, sent));
        let close = statements::close_frame(name);
        let mut out = BytesMut::with_capacity(close.len() + parse.len() + frame.len());
        out.extend_from_slice(&close);
        out.extend_from_slice(&parse);
        out.extend_from_slice(frame);
        Verdict::Replace(out.freeze())
    }
}

impl FrameVisitor for FrontendVisitor<'_> {
    fn handling(&self, tag: u8) -> Handling {
        match tag {
            frontend::QUERY
            | frontend::PARSE
            | frontend::SYNC
            | frontend::FUNCTION_CALL
            | frontend::TERMINATE => Handling::Whole,
            frontend::CLOSE if self.tracking => Handling::Whole,
            // (A Describe is looked at for what it may show the client,
            // and may need its statement re-prepared.)
            frontend::DESCRIBE if self.tracking => {
                let epoch = self.rewriter.epoch().unwrap_or(0);
                let request = self.state.requests_sent.load(Ordering::Relaxed) + 1;
                match self.state.describe_looked_at(epoch, request) {
                    true => Handling::Whole,
                    false => Handling::Forward,
                }
            }
            frontend::BIND if self.tracking => {
                let epoch = self.rewriter.epoch().unwrap_or(0);
                // Whole when it may need re-preparing, or may execute a
                // statement a migration rewrote (its latency counts there).
                // (and when it may run a statement on a migrating table:
                // the tables its transaction uses are noted).
                if self.prepared_touching || self.state.bind_looked_at(epoch) {
                    Handling::Whole
                } else {
                    Handling::Forward
                }
            }
            _ => Handling::Forward,
        }
    }

    fn visit(&mut self, tag: u8, frame: Option<&[u8]>) -> Result<Verdict, String> {
        // Held before anything is counted: the frame is visited again.
        if self.must_hold(tag, frame) {
            return Ok(Verdict::Hold);
        }
        let state = self.state;
        // The request this message belongs to: a Query is its own request;
        // anything else belongs to the next Sync.
        let request = state.requests_sent.load(Ordering::Relaxed) + 1;
        match tag {
            frontend::QUERY | frontend::SYNC | frontend::FUNCTION_CALL => {
                state.requests_sent.store(request, Ordering::Relaxed);
                state.unsynced.store(false, Ordering::Relaxed);
                if tag != frontend::QUERY {
                    self.time(request);
                }
            }
            frontend::TERMINATE => state.terminated.store(true, Ordering::Relaxed),
            _ => state.unsynced.store(true, Ordering::Relaxed),
        }
        if tag == frontend::BIND {
            // A Bind seen whole tells whether its statement names a
            // migrating table under the rules now (it may have been
            // prepared before the migration began); from then on the
            // session's Binds are all seen whole.
            let tables = match frame {
                Some(frame) if self.tracking => self.note_bind(frame),
                _ if self.prepared_touching => vec![ANY_TABLE.to_string()],
                _ => Vec::new(),
            };
            self.prepared_touching |= !tables.is_empty();
            self.touching.extend(tables);
        }
        let Some(frame) = frame else {
            return Ok(Verdict::Keep);
        };
        if !matches!(tag, frontend::QUERY | frontend::PARSE) {
            return Ok(self.statement_use(tag, frame, request));
        }
        // Read the epoch before rewriting: a statement is never recorded as
        // newer than the rules it was rewritten under.
        let epoch = self.rewriter.epoch();
        // An EXECUTE of a statement PREPAREd under older rules runs the
        // statement itself, rewritten under the current ones.
        // Only EXECUTE and PREPARE are read as text here (and only while
        // rules can change): every other Query goes straight to the rewriter.
        let sql_command = match (self.tracking, tag) {
            (true, frontend::QUERY) => sql_prepared_command(frame),
            _ => None,
        };
        let replacement = self.stale_execute(epoch, sql_command);
        let frame_now: &[u8] = replacement.as_deref().unwrap_or(frame);
        // The statement's SQL (and a Parse's fields), read once.
        let parse = match (self.tracking, tag) {
            (true, frontend::PARSE) => statements::parse_fields(frame),
            _ => None,
        };
        let sql: &[u8] = match (&parse, tag) {
            (Some(fields), _) => fields.sql,
            (None, frontend::QUERY) => {
                let sql = frame.get(HEADER_LEN..).unwrap_or_default();
                sql.strip_suffix(&[0]).unwrap_or(sql)
            }
            _ => &[],
        };
        if self.tracking {
            self.state.path_changes(sql);
        }
        // (A Parse's fields, split above, are the frame's as sent.)
        let read = parse.as_ref().map(|fields| fields.sql);
        let outcome = self
            .rewrite(tag, frame_now, read)
            .map_err(|e| e.to_string())?;
        self.note_touching(tag, sql, sql_command);
        let outcome = match (outcome, replacement) {
            (Outcome::Keep, Some(bytes)) => Outcome::Replace(bytes),
            (outcome, _) => outcome,
        };
        self.note(&outcome);
        if tag == frontend::QUERY {
            self.time(request);
        }
        if let (true, Some(epoch)) = (self.tracking, epoch) {
            let statement = Statement {
                request,
                epoch,
                parse: parse.as_ref(),
                sql,
                sql_command,
            };
            self.book_after_rewrite(tag, &statement, &outcome);
        }
        Ok(match outcome {
            Outcome::Keep => Verdict::Keep,
            Outcome::Replace(bytes) => Verdict::Replace(bytes),
            Outcome::Answer(bytes, command) => {
                self.answer_with(request, command, tag == frontend::QUERY);
                Verdict::Replace(bytes)
            }
            Outcome::Refuse(refusal) => {
                Verdict::Replace(self.refuse(request, tag, frame, &refusal))
            }
        })
    }
}

/// The fingerprint of the SQL a Parse goes upstream with: the client's
/// `sql` kept, or the rewritten frame's; `None` when refused.
fn sent_fingerprint(outcome: &Outcome, sql: &[u8]) -> Option<u64> {
    match outcome {
        Outcome::Keep => Some(statements::fingerprint(sql)),
        Outcome::Replace(frame) | Outcome::Answer(frame, _) => {
            statements::parse_fields(frame).map(|f| statements::fingerprint(f.sql))
        }
        Outcome::Refuse(_) => None,
    }
}

/// The server stream as the relay sees it.
pub struct BackendVisitor<'a> {
    state: &'a SessionState,
    rewriter: &'a dyn StatementRewriter,
    tracking: bool,
}

impl<'a> BackendVisitor<'a> {
    pub fn new(state: &'a SessionState, rewriter: &'a dyn StatementRewriter) -> Self {
        BackendVisitor {
            state,
            rewriter,
            tracking: rewriter.epoch().is_some(),
        }
    }
}

impl FrameVisitor for BackendVisitor<'_> {
    fn handling(&self, tag: u8) -> Handling {
        match tag {
            backend::READY_FOR_QUERY | backend::ERROR_RESPONSE => Handling::Whole,
            backend::BACKEND_KEY_DATA => Handling::Whole,
            backend::PARSE_COMPLETE | backend::CLOSE_COMPLETE if self.tracking => Handling::Whole,
            backend::COMMAND_COMPLETE
                if self.state.path_watch.load(Ordering::Relaxed)
                    || self.state.answering.load(Ordering::Relaxed) =>
            {
                Handling::Whole
            }
            _ => Handling::Forward,
        }
    }

    fn visit(&mut self, tag: u8, frame: Option<&[u8]>) -> Result<Verdict, String> {
        let state = self.state;
        let Some(frame) = frame else {
            return Ok(Verdict::Keep);
        };
        let current = state.ready_seen.load(Ordering::Relaxed) + 1;
        if state.path_watch.load(Ordering::Relaxed) {
            state.path_outcome(tag, frame);
        }
        match tag {
            backend::BACKEND_KEY_DATA => {
                if let Some(pid) = frame.get(HEADER_LEN..HEADER_LEN + 4) {
                    let pid = i32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]]);
                    state.with_book(|b| {
                        let mut context = (*b.context).clone();
                        context.backend_pid = pid;
                        b.context = Arc::new(context);
                        b.context_version += 1;
                    });
                }
                Ok(Verdict::Keep)
            }
            backend::COMMAND_COMPLETE => Ok(state.with_book(|b| match b.answers.front() {
                Some((request, _, _))
                    if *request <= current && frame.get(HEADER_LEN..) == Some(b"DO\0") =>
                {
                    b.answers
                        .pop_front()
                        .map_or(Verdict::Keep, |(_, c, _)| Verdict::Replace(c))
                }
                _ => Verdict::Keep,
            })),
            backend::ERROR_RESPONSE => Ok(state.with_book(|b| match b.refusals.front() {
                Some(p) if p.request == current && p.matches(frame) => {
                    let error = p.error.clone();
                    b.refusals.pop_front();
                    Verdict::Replace(error)
                }
                _ => Verdict::Keep,
            })),
            backend::PARSE_COMPLETE | backend::CLOSE_COMPLETE => {
                let injected = state.with_book(|b| b.statements.on_complete(current, tag));
                Ok(if injected {
                    Verdict::Replace(Bytes::new())
                } else {
                    Verdict::Keep
                })
            }
            _ => {
                // (A plain load first: most sessions never set it.)
                let ended = frame.get(HEADER_LEN) == Some(&b'I')
                    && state.txn_used_tables.load(Ordering::Relaxed)
                    && state.txn_used_tables.swap(false, Ordering::Relaxed);
                if let Some(&status) = frame.get(HEADER_LEN) {
                    state.txn_status.store(status, Ordering::Relaxed);
                }
                state.ready_seen.store(current, Ordering::Relaxed);
                // Markers and injected messages the server skipped (an
                // earlier error in the same pipeline) are done with.
                let done = state.with_book(|b| {
                    if ended {
                        b.txn_tables.clear();
                    }
                    while b.refusals.front().is_some_and(|p| p.request <= current) {
                        b.refusals.pop_front();
                    }
                    if !b.answers.is_empty() {
                        // (A Parse's waits for its Execute, whenever it comes.)
                        b.answers
                            .retain(|(r, _, in_request)| !(*in_request && *r <= current));
                    }
                    if b.answers.is_empty() && state.answering.load(Ordering::Relaxed) {
                        state.answering.store(false, Ordering::Relaxed);
                    }
                    b.statements.on_ready(current);
                    let mut done = None;
                    while b.timings.front().is_some_and(|t| t.request <= current) {
                        let t = b.timings.pop_front();
                        if let Some(t) = t.as_ref().filter(|t| !t.touching.is_empty()) {
                            self.rewriter.in_flight(&t.touching, -1);
                        }
                        done = t.filter(|t| t.request == current);
                    }
                    done
                });
                if let Some(t) = done {
                    metrics::latency().observe(t.kind, t.migration.as_ref(), t.started.elapsed());
                }
                Ok(Verdict::Keep)
            }
        }
    }
}

/// A Query frame holding `EXECUTE …` or `PREPARE …`: (the command in
/// lower case, the SQL text). A byte check first: other queries are not
/// decoded.
fn sql_prepared_command(frame: &[u8]) -> Option<(&'static str, &str)> {
    let sql = frame.get(HEADER_LEN..)?;
    let sql = sql.strip_suffix(&[0]).unwrap_or(sql);
    let start = sql.iter().position(|b| !b.is_ascii_whitespace())?;
    let command = ["execute", "prepare"].into_iter().find(|word| {
        sql.get(start..start + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word.as_bytes()))
            && sql
                .get(start + word.len())
                .is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'_')
    })?;
    Some((command, std::str::from_utf8(sql).ok()?))
}

/// What Postgres answers when a prepared statement's result type changed
/// under it (SQLSTATE 0A000): drivers prepare the statement again.
fn result_type_changed() -> Refusal {
    Refusal {
        code: "0A000",
        message: "cached plan must not change result type".into(),
        detail: None,
        hint: None,
        routine: Some("RevalidateCachedQuery"),
    }
}
