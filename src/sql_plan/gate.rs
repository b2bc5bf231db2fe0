//! The DDL gate on live traffic (`ddl = pass | warn | guard`): a DDL
//! statement a client sends through pgshift (`ALTER`, `CREATE`, `DROP`
//! first) is planned as `pgshift plan` plans a file. With `warn` (the
//! default) it passes as sent, and each rule it breaks is logged and
//! counted (`pgshift_ddl_statements_total{rule, verdict}`); with `guard`,
//! a statement that is not safe as written is refused with `0A000`, the
//! rule, and what to send instead; with `migrate`, a statement that has a
//! pgshift migration is carried out as one ([`super::migrate`]) and the
//! rest is treated as `guard` treats it, the short-lock forms passed.
//! Other statements cost one look at their first word and their `;`.

use crate::rewrite::Refusal;

use super::{plan_text, Verdict};

/// What the gate does with DDL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DdlMode {
    /// Passes it, unread.
    Pass,
    /// Passes it, and logs and counts the rules it breaks.
    #[default]
    Warn,
    /// Refuses what is not safe as written.
    Guard,
    /// Carries out as a pgshift migration what has one (one statement per
    /// Query), refuses what has no safe form, passes the rest.
    Migrate,
}

impl DdlMode {
    /// How strictly the mode treats DDL that is not safe as written.
    fn rank(self) -> u8 {
        match self {
            DdlMode::Pass => 0,
            DdlMode::Warn => 1,
            DdlMode::Guard => 2,
            DdlMode::Migrate => 3,
        }
    }

    /// A session's mode: its role's (`ddl_roles`), else `configured`;
    /// then what it asked for at startup (`pgshift.ddl`), if that is
    /// stricter — a client cannot turn the gate down, only up (`migrate`
    /// is `guard` that also carries migrations out).
    pub fn for_session(
        configured: DdlMode,
        role: Option<DdlMode>,
        asked: Option<DdlMode>,
    ) -> DdlMode {
        let base = role.unwrap_or(configured);
        match asked {
            Some(asked) if asked.rank() > base.rank() => asked,
            _ => base,
        }
    }

    pub fn parse(text: &str) -> Option<DdlMode> {
        match text {
            "pass" => Some(DdlMode::Pass),
            "warn" => Some(DdlMode::Warn),
            "guard" => Some(DdlMode::Guard),
            "migrate" => Some(DdlMode::Migrate),
            _ => None,
        }
    }
}

/// Whether a statement of `sql` starts (after white space and comments)
/// with ALTER, CREATE or DROP: the first, or one after a `;` (a `;` in a
/// string or comment only makes the text planned).
pub fn is_ddl(sql: &[u8]) -> bool {
    starts_ddl(sql) || memchr::memchr_iter(b';', sql).any(|at| starts_ddl(&sql[at + 1..]))
}

fn starts_ddl(sql: &[u8]) -> bool {
    let mut rest = sql;
    loop {
        rest = trim_start(rest);
        if let Some(after) = rest.strip_prefix(b"--") {
            rest = after.splitn(2, |&b| b == b'\n').nth(1).unwrap_or(&[]);
        } else if let Some(after) = rest.strip_prefix(b"/*") {
            rest = match after.windows(2).position(|w| w == b"*/") {
                Some(end) => &after[end + 2..],
                None => &[],
            };
        } else {
            break;
        }
    }
    // (Most statements are told apart by their first letter.)
    let word: &[u8] = match rest.first().map(u8::to_ascii_lowercase) {
        Some(b'a' | b'c' | b'd') => {
            let len = rest.iter().take_while(|b| b.is_ascii_alphabetic()).count();
            &rest[..len]
        }
        _ => return false,
    };
    [&b"alter"[..], b"create", b"drop"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

/// Plans a DDL text; counts and logs what it breaks; with `guard`, the
/// refusal of the first statement that is not safe as written.
pub fn check(sql: &[u8], mode: DdlMode) -> Option<Refusal> {
    if mode == DdlMode::Pass {
        return None;
    }
    let text = std::str::from_utf8(sql).ok()?;
    for step in plan_text("", text) {
        let d = &step.decision;
        if d.verdict == Verdict::Pass {
            continue;
        }
        crate::metrics::ddl().count(d.rule, d.verdict);
        let instead = instead(&step.decision);
        tracing::warn!(rule = d.rule, verdict = ?d.verdict, statement = %step.statement, instead = %instead, "DDL that is not safe on a live table: {}", d.detail);
        let refused = match mode {
            DdlMode::Guard => true,
            // (Sent alone, a statement with a migration is carried out
            // before it gets here.)
            DdlMode::Migrate => d.verdict == Verdict::Refuse || d.migration.is_some(),
            DdlMode::Pass | DdlMode::Warn => false,
        };
        if refused {
            let alone = mode == DdlMode::Migrate && d.verdict != Verdict::Refuse;
            let hint = match alone {
                true => "send it as a statement of its own (one statement per Query, outside a multi-statement string): pgshift then carries it out as a migration".to_string(),
                false => instead,
            };
            return Some(Refusal {
                code: "0A000",
                message: format!(
                    "pgshift refused a DDL statement (rule {}): {}",
                    d.rule, d.detail
                ),
                detail: None,
                hint: Some(hint),
                routine: None,
            });
        }
    }
    None
}

/// The rewriter of sessions to a database without migrations: the DDL
/// gate alone.
#[derive(Debug, Clone, Copy)]
pub struct DdlOnly(pub DdlMode);

impl crate::rewrite::StatementRewriter for DdlOnly {
    fn rewrite<'a>(
        &self,
        kind: crate::rewrite::StatementKind,
        sql: &'a [u8],
    ) -> crate::rewrite::Rewrite<'a> {
        self.rewrite_logged(kind, sql, &tracing::Span::none())
    }

    fn rewrite_logged<'a>(
        &self,
        _kind: crate::rewrite::StatementKind,
        sql: &'a [u8],
        span: &tracing::Span,
    ) -> crate::rewrite::Rewrite<'a> {
        // No migrations on this database: what migrate would carry out is
        // refused, as guard refuses it.
        let mode = match self.0 {
            DdlMode::Migrate => DdlMode::Guard,
            mode => mode,
        };
        if mode != DdlMode::Pass && is_ddl(sql) {
            if let Some(refusal) = span.in_scope(|| check(sql, mode)) {
                return crate::rewrite::Rewrite::Refused(refusal);
            }
        }
        crate::rewrite::Rewrite::Unchanged
    }
}

/// What to send instead, in words.
fn instead(d: &super::Decision) -> String {
    match (&d.safe, &d.migration) {
        (Some(safe), _) => format!("send instead: {safe}"),
        (None, Some(m)) => format!(
            "run it as a pgshift migration: POST /migrations {}",
            serde_json::to_string(m).unwrap_or_default()
        ),
        (None, None) => "see pgshift's operator's guide §7.1 for the rule".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_is_told_by_its_first_word() {
        for sql in [
            "ALTER TABLE t ADD COLUMN c int",
            "  -- a comment\n create index i on t (c)",
            "/* x */drop table t",
            "BEGIN; ALTER TABLE t RENAME COLUMN a TO b; COMMIT",
        ] {
            assert!(is_ddl(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "select 1",
            "update t set c = 1",
            "/* alter */ select 1",
            "altered",
            "select 1; update t set c = 2;",
        ] {
            assert!(!is_ddl(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn a_session_turns_the_gate_up_never_down() {
        use DdlMode::*;
        assert_eq!(DdlMode::for_session(Warn, None, Some(Migrate)), Migrate);
        assert_eq!(DdlMode::for_session(Guard, None, Some(Pass)), Guard);
        assert_eq!(DdlMode::for_session(Guard, Some(Warn), None), Warn);
        assert_eq!(DdlMode::for_session(Warn, Some(Pass), Some(Guard)), Guard);
        assert_eq!(DdlMode::for_session(Migrate, None, Some(Warn)), Migrate);
    }

    #[test]
    fn guard_refuses_what_is_not_safe_and_names_the_rule() {
        let r = check(
            b"ALTER TABLE users RENAME COLUMN name TO full_name",
            DdlMode::Guard,
        )
        .unwrap();
        assert_eq!(r.code, "0A000");
        assert!(r.message.contains("rename-column"), "{}", r.message);
        assert!(r.hint.unwrap().contains("\"op\":\"rename_column\""));
        assert!(check(b"CREATE INDEX CONCURRENTLY i ON t (c)", DdlMode::Guard).is_none());
        let in_a_transaction = b"BEGIN; ALTER TABLE users RENAME COLUMN a TO b; COMMIT";
        assert!(check(in_a_transaction, DdlMode::Guard).is_some());
        assert!(check(b"ALTER TABLE users RENAME COLUMN a TO b", DdlMode::Warn).is_none());
    }
}
