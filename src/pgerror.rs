//! How pgshift reports an error that Postgres (or the connection to it)
//! raised on its own connections: SQLSTATE, message, detail and hint, so an
//! operator reads what Postgres said instead of tokio-postgres' bare
//! `db error`.

use std::fmt;

/// A `tokio_postgres::Error` displayed with everything Postgres said.
pub struct Described<'e>(pub &'e tokio_postgres::Error);

impl fmt::Display for Described<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(db) = self.0.as_db_error() else {
            // Not a server error: the connection's own (closed, I/O, …),
            // with its cause when there is one.
            write!(f, "{}", self.0)?;
            if let Some(cause) = std::error::Error::source(self.0) {
                write!(f, ": {cause}")?;
            }
            return Ok(());
        };
        write!(f, "{} (SQLSTATE {})", db.message(), db.code().code())?;
        if let Some(detail) = db.detail() {
            write!(f, "; DETAIL: {detail}")?;
        }
        if let Some(hint) = db.hint() {
            write!(f, "; HINT: {hint}")?;
        }
        Ok(())
    }
}

/// `error` as text with Postgres' message, SQLSTATE, detail and hint.
pub fn describe(error: &tokio_postgres::Error) -> String {
    Described(error).to_string()
}

/// Whether `error` may heal by itself, so that retrying the work makes
/// sense: anything but an error Postgres raised about the statement itself
/// (a lost or refused connection, a deadlock or serialization failure, a
/// lock not granted in time, a cancellation, the server short of resources
/// or shutting down).
pub fn may_heal(error: &tokio_postgres::Error) -> bool {
    let Some(db) = error.as_db_error() else {
        return true;
    };
    let code = db.code().code();
    ["08", "40", "53", "57", "58"]
        .iter()
        .any(|class| code.starts_with(class))
        || code == "55P03"
}
