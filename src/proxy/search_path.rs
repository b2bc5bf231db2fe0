//! Follows one session's `search_path` through its statements and their
//! outcomes, so the rewriter resolves unqualified table names as Postgres
//! will for that session.
//!
//! A change is taken as soon as the client sends it (a statement later in
//! the same Query or pipeline already sees it), then kept or undone by how
//! its transaction ends, as Postgres does: a session-level `SET` lasts if
//! the transaction commits (an error or a `ROLLBACK` undoes it), a `SET
//! LOCAL` ends with the transaction. Only while a change is pending does
//! the server side look at command tags and errors. Not followed: a
//! `ROLLBACK TO SAVEPOINT` undoing only part of a transaction's changes
//! (the whole transaction's outcome decides), and paths set inside
//! functions.

use crate::rewrite::search_path::{Change, SearchPath};

/// One session's path, as far as pgshift can tell.
#[derive(Debug, Default)]
pub struct PathTracker {
    /// What the session started with (`None`: the database's default);
    /// what `RESET` goes back to.
    startup: Option<SearchPath>,
    /// The session-level value outside transactions.
    session: Option<SearchPath>,
    /// A session-level value set in the current transaction.
    pending: Option<Option<SearchPath>>,
    /// A `SET LOCAL` value, until the transaction ends.
    local: Option<Option<SearchPath>>,
    /// An error came back since the transaction began.
    failed: bool,
}

impl PathTracker {
    pub fn new(startup: Option<SearchPath>) -> Self {
        PathTracker {
            session: startup.clone(),
            startup,
            ..PathTracker::default()
        }
    }

    /// The path statements resolve with now (`None`: the default).
    pub fn effective(&self) -> Option<&SearchPath> {
        match (&self.local, &self.pending) {
            (Some(local), _) => local.as_ref(),
            (None, Some(pending)) => pending.as_ref(),
            (None, None) => self.session.as_ref(),
        }
    }

    /// A change is waiting for its transaction's outcome.
    pub fn watching(&self) -> bool {
        self.pending.is_some() || self.local.is_some()
    }

    /// A statement that makes `change` was sent.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Set { path, local: false } => {
                self.pending = Some(Some(path));
                self.local = None;
            }
            Change::Set { path, local: true } => self.local = Some(Some(path)),
            Change::Reset { local: false } => {
                self.pending = Some(self.startup.clone());
                self.local = None;
            }
            Change::Reset { local: true } => self.local = Some(self.startup.clone()),
        }
    }

    /// The server reported an error.
    pub fn on_error(&mut self) {
        self.failed = true;
    }

    /// The server completed a command with this tag: a `COMMIT` or a
    /// `ROLLBACK` settles the transaction's changes at once (more
    /// statements may follow in the same Query).
    pub fn on_command_complete(&mut self, tag: &[u8]) {
        if tag.starts_with(b"COMMIT") {
            self.settle(true);
        } else if tag.starts_with(b"ROLLBACK") {
            self.settle(false);
        }
    }

    /// ReadyForQuery with transaction status `status`: outside a
    /// transaction, what it set is kept (or undone after an error).
    pub fn on_ready(&mut self, status: u8) {
        if status == b'I' {
            self.settle(true);
        }
    }

    /// A transaction ended, committed (unless an error came back) or not.
    fn settle(&mut self, committed: bool) {
        if let Some(pending) = self.pending.take() {
            if committed && !self.failed {
                self.session = pending;
            }
        }
        self.local = None;
        self.failed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, local: bool) -> Change {
        Change::Set {
            path: SearchPath::parse_list(name),
            local,
        }
    }

    fn effective(t: &PathTracker) -> Option<String> {
        t.effective().map(|p| format!("{:?}", p.entries))
    }

    #[test]
    fn a_set_lasts_when_its_transaction_commits() {
        let mut t = PathTracker::new(None);
        t.apply(set("tenant", false));
        assert!(t.watching());
        t.on_command_complete(b"SET");
        t.on_ready(b'I');
        assert!(!t.watching());
        assert_eq!(effective(&t), Some(r#"[Schema("tenant")]"#.into()));
        t.apply(Change::Reset { local: false });
        t.on_ready(b'I');
        assert_eq!(effective(&t), None);
    }

    #[test]
    fn errors_and_rollbacks_undo_a_set() {
        let mut t = PathTracker::new(Some(SearchPath::parse_list("app")));
        t.apply(set("tenant", false));
        t.on_error();
        t.on_ready(b'I');
        assert_eq!(effective(&t), Some(r#"[Schema("app")]"#.into()));

        t.apply(set("tenant", false));
        t.on_ready(b'T');
        assert_eq!(effective(&t), Some(r#"[Schema("tenant")]"#.into()));
        t.on_command_complete(b"ROLLBACK");
        t.on_ready(b'I');
        assert_eq!(effective(&t), Some(r#"[Schema("app")]"#.into()));
    }

    #[test]
    fn a_rollback_settles_before_the_statements_after_it() {
        // BEGIN; SET search_path TO tenant; ROLLBACK; SELECT 1 — one Query.
        let mut t = PathTracker::new(None);
        t.apply(set("tenant", false));
        t.on_command_complete(b"BEGIN");
        t.on_command_complete(b"SET");
        t.on_command_complete(b"ROLLBACK");
        t.on_command_complete(b"SELECT 1");
        t.on_ready(b'I');
        assert_eq!(effective(&t), None);
    }

    #[test]
    fn set_local_ends_with_the_transaction() {
        let mut t = PathTracker::new(None);
        t.apply(set("tenant", true));
        t.on_ready(b'T');
        assert_eq!(effective(&t), Some(r#"[Schema("tenant")]"#.into()));
        t.on_command_complete(b"COMMIT");
        t.on_ready(b'I');
        assert_eq!(effective(&t), None);
    }
}
