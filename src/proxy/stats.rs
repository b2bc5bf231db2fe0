//! Process-wide connection counters for the metrics endpoint: one atomic
//! update per session start and end, nothing per message.

use std::sync::atomic::{AtomicU64, Ordering};

static ACCEPTED: AtomicU64 = AtomicU64::new(0);
static ACTIVE: AtomicU64 = AtomicU64::new(0);
static REJECTED: AtomicU64 = AtomicU64::new(0);

/// Counts a session for as long as it lives.
pub(crate) struct SessionGuard;

impl SessionGuard {
    pub(crate) fn new() -> SessionGuard {
        ACCEPTED.fetch_add(1, Ordering::Relaxed);
        ACTIVE.fetch_add(1, Ordering::Relaxed);
        SessionGuard
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection refused at the session limit.
pub(crate) fn rejected() {
    REJECTED.fetch_add(1, Ordering::Relaxed);
}

/// (sessions relayed since start, sessions now, connections refused at the limit)
pub fn sessions() -> (u64, u64, u64) {
    (
        ACCEPTED.load(Ordering::Relaxed),
        ACTIVE.load(Ordering::Relaxed),
        REJECTED.load(Ordering::Relaxed),
    )
}
