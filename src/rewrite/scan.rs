//! The fast path: a cheap byte scan that tells whether a statement can touch
//! a migrating table at all. Only statements that mention one of the
//! migrating tables' names (case-insensitively, as a whole word) go on to be
//! tokenized and looked at; everything else is forwarded byte for byte.
//!
//! The scan may say "maybe" for a statement that does not touch the table
//! (the name inside a string literal, a column of the same name); it never
//! says "no" for one that names the table.
//!
//! Two searchers: [`Needle`] for any name (the migrating tables'), anchored
//! on its rarest byte; [`Word`] for the fixed words read in every statement
//! (`search_path`, `rollback`), with a skip table built at compile time.

/// True when `sql` contains one of `names` (lower case) as a whole word,
/// ignoring ASCII case.
pub fn mentions_any(sql: &[u8], names: &[String]) -> bool {
    names.iter().any(|name| mentions(sql, name.as_bytes()))
}

/// True when `sql` contains `name` as a whole word, ignoring ASCII case.
pub fn mentions(sql: &[u8], name: &[u8]) -> bool {
    Needle::new(name).found_in(sql)
}

/// A name to look for as a whole word, ignoring ASCII case. The scan jumps
/// with `memchr` between occurrences of the name's rarest byte in SQL text
/// (its anchor: `_` before the rare letters, before the common ones) and
/// compares the name around each; `const`, so a fixed name is prepared at
/// compile time. At most 63 bytes are compared per anchor found (names are
/// at most 63 bytes, NAMEDATALEN): linear in the statement's length.
pub struct Needle<'a> {
    name: &'a [u8],
    /// Where the anchor byte is in `name`.
    anchor: usize,
}

/// A fixed word to look for as a whole word, ignoring ASCII case, with a
/// skip table built at compile time (Horspool): the scan looks at the byte
/// under the word's last position and jumps by how far that byte is from
/// the word's end, so most bytes of a statement are never read. For the
/// words pgshift checks in every statement (`search_path`, `rollback`),
/// where [`Needle`]'s anchor byte is common in SQL text (`_`, `l`).
pub struct Word {
    name: &'static [u8],
    /// How far the scan may move when the byte under the word's last
    /// position is this one.
    skip: [u8; 256],
}

impl Word {
    /// `name`: ASCII, 1 to 255 bytes.
    pub const fn new(name: &'static [u8]) -> Word {
        assert!(!name.is_empty() && name.len() < 256);
        let m = name.len();
        let mut skip = [m as u8; 256];
        let mut i = 0;
        while i + 1 < m {
            let shift = (m - 1 - i) as u8;
            skip[name[i].to_ascii_lowercase() as usize] = shift;
            skip[name[i].to_ascii_uppercase() as usize] = shift;
            i += 1;
        }
        Word { name, skip }
    }

    /// True when `sql` holds the word as a whole word.
    pub fn found_in(&self, sql: &[u8]) -> bool {
        let (name, m) = (self.name, self.name.len());
        let last = name[m - 1].to_ascii_lowercase();
        let mut at = 0;
        while let Some(window) = sql.get(at..at + m) {
            if window[m - 1].to_ascii_lowercase() == last
                && window.eq_ignore_ascii_case(name)
                && (at == 0 || !is_ident_byte(sql[at - 1]))
                && sql.get(at + m).is_none_or(|b| !is_ident_byte(*b))
            {
                return true;
            }
            at += usize::from(self.skip[usize::from(window[m - 1])]);
        }
        false
    }
}

/// Letters from the rarest in SQL text to the most common (anything else
/// but `_` ranks with the rarest letters).
const LETTERS_BY_FREQUENCY: &[u8; 26] = b"qzjxkvbywgpfmuhcdlrsniotae";

impl<'a> Needle<'a> {
    pub const fn new(name: &'a [u8]) -> Self {
        let (mut anchor, mut best, mut k) = (0, usize::MAX, 0);
        while k < name.len() {
            let rank = rank(name[k]);
            if rank < best {
                (anchor, best) = (k, rank);
            }
            k += 1;
        }
        Needle { name, anchor }
    }

    /// True when `sql` holds the name as a whole word.
    pub fn found_in(&self, sql: &[u8]) -> bool {
        let (name, m) = (self.name, self.name.len());
        if m == 0 || sql.len() < m {
            return false;
        }
        let byte = name[self.anchor];
        // The anchor can only be where a whole name fits around it.
        let window = &sql[self.anchor..=sql.len() - (m - self.anchor)];
        // (An anchor found at `i` in the window puts the name's start at
        // `i` in `sql`: the window begins `anchor` bytes in.)
        let at = |i: usize| {
            sql[i..i + m].eq_ignore_ascii_case(name)
                && (i == 0 || !is_ident_byte(sql[i - 1]))
                && sql.get(i + m).is_none_or(|b| !is_ident_byte(*b))
        };
        let (lower, upper) = (byte.to_ascii_lowercase(), byte.to_ascii_uppercase());
        match lower == upper {
            true => memchr::memchr_iter(byte, window).any(at),
            false => memchr::memchr2_iter(lower, upper, window).any(at),
        }
    }
}

/// How common `b` is in SQL text (lower: rarer).
const fn rank(b: u8) -> usize {
    let lower = b.to_ascii_lowercase();
    if lower == b'_' {
        return 0;
    }
    let mut i = 0;
    while i < LETTERS_BY_FREQUENCY.len() {
        if LETTERS_BY_FREQUENCY[i] == lower {
            return 2 + i;
        }
        i += 1;
    }
    1
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

    /// The whole-word, case-blind match, the slow and obvious way.
    fn naive(sql: &[u8], name: &[u8]) -> bool {
        let m = name.len();
        m > 0
            && (0..=sql.len().saturating_sub(m))
                .filter(|&i| i + m <= sql.len())
                .any(|i| {
                    sql[i..i + m].eq_ignore_ascii_case(name)
                        && (i == 0 || !is_ident_byte(sql[i - 1]))
                        && sql.get(i + m).is_none_or(|b| !is_ident_byte(*b))
                })
    }

    proptest::proptest! {
        /// The anchored scan finds exactly what the naive one does, over
        /// statements built from the name's own bytes and separators.
        #[test]
        fn the_anchored_scan_matches_the_naive_one(
            name in "[a-zA-Z_][a-zA-Z0-9_]{0,12}",
            parts in proptest::collection::vec("[a-zA-Z_ .,;()0-9]{0,6}", 0..8),
            picks in proptest::collection::vec(0usize..3, 0..8),
        ) {
            let mut sql = String::new();
            for (part, pick) in parts.iter().zip(picks.iter().chain(std::iter::repeat(&0))) {
                match pick {
                    0 => sql.push_str(part),
                    1 => sql.push_str(&name.to_uppercase()),
                    _ => sql.push_str(&name),
                }
            }
            proptest::prop_assert_eq!(
                mentions(sql.as_bytes(), name.as_bytes()),
                naive(sql.as_bytes(), name.as_bytes()),
                "{:?} in {:?}", name, sql
            );
            // (A `Word` is `'static`: the name is leaked, once per case.)
            let word = Word::new(Box::leak(name.clone().into_boxed_str()).as_bytes());
            proptest::prop_assert_eq!(
                word.found_in(sql.as_bytes()),
                naive(sql.as_bytes(), name.as_bytes()),
                "{:?} in {:?} (skip table)", name, sql
            );
        }
    }

    #[test]
    fn a_fixed_word_is_found_whole_in_any_case() {
        const PATH: Word = Word::new(b"search_path");
        for (sql, found) in [
            ("SET search_path TO x", true),
            ("set SEARCH_PATH = x", true),
            ("select set_config('Search_Path', 'x', false)", true),
            ("search_path", true),
            ("SELECT my_search_path FROM t", false),
            ("SELECT search_paths", false),
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 1", false),
            ("search_pat", false),
            ("", false),
        ] {
            assert_eq!(PATH.found_in(sql.as_bytes()), found, "{sql}");
        }
    }
}
