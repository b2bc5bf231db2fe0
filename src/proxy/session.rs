//! What one session's two directions know about each other, and how each
//! direction's stream is looked at (its [`FrameVisitor`]).
//!
//! The client side counts the requests that end in a ReadyForQuery, passes
//! Query and Parse through the rewrite seam, and turns a refusal into a
//! marker statement (see [`super::refusal`]); the server side counts
//! ReadyForQuery, notes the transaction status, and swaps a marker's syntax
//! error for pgshift's refusal. Both directions run in the session's one
//! task, so the atomics and the mutex are never contended; they only make
//! the sharing `Send`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::framing::{FrameVisitor, Handling, Verdict, HEADER_LEN};
use super::refusal::PendingRefusal;
use super::statement::{rewrite_frame, Outcome};
use super::wire::{backend, frontend};
use crate::rewrite::StatementRewriter;

/// The shared state of one session.
pub struct SessionState {
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
    /// Refusals whose marker error has not come back yet, oldest first.
    refusals: Mutex<VecDeque<PendingRefusal>>,
    refusal_seq: AtomicU64,
}

impl SessionState {
    /// Fresh state of a session that has just sent its startup message;
    /// `track_activity` keeps the last-activity clock (for an idle timeout).
    pub fn new(track_activity: bool) -> Self {
        SessionState {
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
            refusals: Mutex::new(VecDeque::new()),
            refusal_seq: AtomicU64::new(0),
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

    /// The client sent Terminate.
    pub fn terminated(&self) -> bool {
        self.terminated.load(Ordering::Relaxed)
    }

    /// Asks the session to end at its next idle point.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Draining and idle: time to close.
    pub fn drained(&self) -> bool {
        self.draining.load(Ordering::Relaxed) && self.is_idle()
    }

    fn with_refusals<R>(&self, f: impl FnOnce(&mut VecDeque<PendingRefusal>) -> R) -> R {
        // A poisoned lock can only follow a panic in this very session.
        let mut queue = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut queue)
    }
}

/// The client stream as the relay sees it.
pub struct FrontendVisitor<'a> {
    state: &'a SessionState,
    rewriter: &'a dyn StatementRewriter,
}

impl<'a> FrontendVisitor<'a> {
    pub fn new(state: &'a SessionState, rewriter: &'a dyn StatementRewriter) -> Self {
        FrontendVisitor { state, rewriter }
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
            _ => Handling::Forward,
        }
    }

    fn visit(&mut self, tag: u8, frame: Option<&[u8]>) -> Result<Verdict, String> {
        let state = self.state;
        // The request this message belongs to: a Query is its own request;
        // anything else belongs to the next Sync.
        let request = state.requests_sent.load(Ordering::Relaxed) + 1;
        match tag {
            frontend::QUERY | frontend::SYNC | frontend::FUNCTION_CALL => {
                state.requests_sent.store(request, Ordering::Relaxed);
                state.unsynced.store(false, Ordering::Relaxed);
            }
            frontend::TERMINATE => state.terminated.store(true, Ordering::Relaxed),
            _ => state.unsynced.store(true, Ordering::Relaxed),
        }
        let (frontend::QUERY | frontend::PARSE, Some(frame)) = (tag, frame) else {
            return Ok(Verdict::Keep);
        };
        match rewrite_frame(self.rewriter, tag, frame).map_err(|e| e.to_string())? {
            Outcome::Keep => Ok(Verdict::Keep),
            Outcome::Replace(bytes) => Ok(Verdict::Replace(bytes)),
            Outcome::Refuse(refusal) => {
                let seq = state.refusal_seq.fetch_add(1, Ordering::Relaxed);
                let pending = PendingRefusal::new(request, seq, &refusal);
                let marker = pending.marker_frame(tag, frame);
                tracing::info!(code = refusal.code, message = %refusal.message, "refused a statement");
                state.with_refusals(|q| q.push_back(pending));
                Ok(Verdict::Replace(marker))
            }
        }
    }
}

/// The server stream as the relay sees it.
pub struct BackendVisitor<'a> {
    state: &'a SessionState,
}

impl<'a> BackendVisitor<'a> {
    pub fn new(state: &'a SessionState) -> Self {
        BackendVisitor { state }
    }
}

impl FrameVisitor for BackendVisitor<'_> {
    fn handling(&self, tag: u8) -> Handling {
        match tag {
            backend::READY_FOR_QUERY | backend::ERROR_RESPONSE => Handling::Whole,
            _ => Handling::Forward,
        }
    }

    fn visit(&mut self, tag: u8, frame: Option<&[u8]>) -> Result<Verdict, String> {
        let state = self.state;
        let Some(frame) = frame else {
            return Ok(Verdict::Keep);
        };
        let current = state.ready_seen.load(Ordering::Relaxed) + 1;
        match tag {
            backend::ERROR_RESPONSE => Ok(state.with_refusals(|q| match q.front() {
                Some(p) if p.request == current && p.matches(frame) => {
                    let error = p.error.clone();
                    q.pop_front();
                    Verdict::Replace(error)
                }
                _ => Verdict::Keep,
            })),
            _ => {
                if let Some(&status) = frame.get(HEADER_LEN) {
                    state.txn_status.store(status, Ordering::Relaxed);
                }
                state.ready_seen.store(current, Ordering::Relaxed);
                // Markers the server skipped (an earlier error in the same
                // pipeline) are done with.
                state.with_refusals(|q| {
                    while q.front().is_some_and(|p| p.request <= current) {
                        q.pop_front();
                    }
                });
                Ok(Verdict::Keep)
            }
        }
    }
}
