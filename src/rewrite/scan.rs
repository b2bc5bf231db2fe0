//! The fast path: a cheap byte scan that tells whether a statement can touch
//! a migrating table at all. Only statements that mention one of the
//! migrating tables' names (case-insensitively, as a whole word) go on to be
//! tokenized and looked at; everything else is forwarded byte for byte.
//!
//! The scan may say "maybe" for a statement that does not touch the table
//! (the name inside a string literal, a column of the same name); it never
//! says "no" for one that names the table.

/// True when `sql` contains one of `names` (lower case) as a whole word,
/// ignoring ASCII case.
pub fn mentions_any(sql: &[u8], names: &[String]) -> bool {
    names.iter().any(|name| mentions(sql, name.as_bytes()))
}

/// Boyer–Moore–Horspool over ASCII-lowercased bytes: for a name of length
/// `m`, most positions are skipped `m` bytes at a time.
pub fn mentions(sql: &[u8], name: &[u8]) -> bool {
    let m = name.len();
    if m == 0 || sql.len() < m {
        return false;
    }
    // Skips fit a byte: names are at most 63 bytes (NAMEDATALEN).
    let full = m.min(255) as u8;
    let mut shift = [full; 256];
    for (k, &b) in name[..m - 1].iter().enumerate() {
        let skip = (m - 1 - k).min(255) as u8;
        shift[b.to_ascii_lowercase() as usize] = skip;
        shift[b.to_ascii_uppercase() as usize] = skip;
    }
    let mut i = 0;
    while i + m <= sql.len() {
        let last = sql[i + m - 1];
        if last.eq_ignore_ascii_case(&name[m - 1])
            && sql[i..i + m].eq_ignore_ascii_case(name)
            && (i == 0 || !is_ident_byte(sql[i - 1]))
            && sql.get(i + m).is_none_or(|b| !is_ident_byte(*b))
        {
            return true;
        }
        i += usize::from(shift[last as usize]);
    }
    false
}

/// Bytes that continue an unquoted identifier (non-ASCII counts: Postgres
/// allows letters beyond ASCII in identifiers).
fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["pgbench_accounts".into(), "users".into()]
    }

    #[test]
    fn finds_the_table_however_it_is_written() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "select * from PUBLIC.PGBENCH_ACCOUNTS",
            "update \"pgbench_accounts\" set abalance = 1",
            "insert into users(name) values ('x')",
            "users",
            "delete from users;",
            "select 1 from x, pgbench_accounts",
            "select 1 from pgbench_accountspgbench_accounts, Pgbench_Accounts",
        ] {
            assert!(mentions_any(sql.as_bytes(), &names()), "{sql}");
        }
    }

    #[test]
    fn other_statements_take_the_fast_path() {
        for sql in [
            "SELECT 1",
            "select * from pgbench_accounts_archive",
            "select * from old_users",
            "select users_count from stats",
            "BEGIN",
            "",
        ] {
            assert!(!mentions_any(sql.as_bytes(), &names()), "{sql}");
        }
    }
}
