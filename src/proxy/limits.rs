//! Sessions per user and per database, beside the total
//! (`max_client_connections`): so one application or one tenant cannot
//! take every slot. Counted at session start and end only, never per
//! message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Live sessions by user and by database.
#[derive(Debug, Default)]
pub struct Counts {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<String, usize>,
    databases: HashMap<String, usize>,
}

/// One session counted; uncounted when dropped.
#[derive(Debug)]
pub struct Held {
    counts: Arc<Counts>,
    user: String,
    database: String,
}

impl Counts {
    /// Counts a session of `user` on `database`, unless that would pass
    /// `max_user` or `max_db` (0: no limit); `Err` names the limit.
    pub fn acquire(
        self: &Arc<Self>,
        user: &str,
        database: &str,
        max_user: usize,
        max_db: usize,
    ) -> Result<Held, String> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let by_user = inner.users.get(user).copied().unwrap_or(0);
        if max_user > 0 && by_user >= max_user {
            return Err(format!(
                "too many connections for role \"{user}\" (max_user_connections = {max_user})"
            ));
        }
        let by_db = inner.databases.get(database).copied().unwrap_or(0);
        if max_db > 0 && by_db >= max_db {
            return Err(format!(
                "too many connections for database \"{database}\" (max_db_connections = {max_db})"
            ));
        }
        *inner.users.entry(user.to_string()).or_default() += 1;
        *inner.databases.entry(database.to_string()).or_default() += 1;
        Ok(Held {
            counts: Arc::clone(self),
            user: user.to_string(),
            database: database.to_string(),
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut guard = self.counts.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        for (map, key) in [
            (&mut inner.users, &self.user),
            (&mut inner.databases, &self.database),
        ] {
            if let Some(n) = map.get_mut(key.as_str()) {
                *n -= 1;
                if *n == 0 {
                    map.remove(key.as_str());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_user_and_database_name_themselves() {
        let counts = Arc::new(Counts::default());
        let a = counts.acquire("app", "db", 2, 3).unwrap();
        let _b = counts.acquire("app", "db", 2, 3).unwrap();
        let err = counts.acquire("app", "db", 2, 3).unwrap_err();
        assert!(err.contains("max_user_connections = 2"), "{err}");
        let _c = counts.acquire("other", "db", 2, 3).unwrap();
        let err = counts.acquire("third", "db", 2, 3).unwrap_err();
        assert!(err.contains("max_db_connections = 3"), "{err}");
        drop(a);
        assert!(
            counts.acquire("app", "other_db", 2, 3).is_ok(),
            "a slot came back"
        );
        assert!(counts.acquire("x", "y", 0, 0).is_ok(), "0: no limit");
    }
}
