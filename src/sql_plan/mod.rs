//! `pgshift plan`: plain SQL migration files in, what pgshift would do
//! with each statement out. Files are read in version order (Flyway's
//! `V2__…` before `V10__…`, golang-migrate's `0002_….up.sql`; `.down.sql`
//! files are left out), each is split into its statements (comments and
//! dollar-quoted bodies kept whole), and each statement is parsed and given
//! a [`rules::Decision`]. Nothing here touches a database: unqualified
//! tables are taken as `public`'s.

pub mod downs;
pub mod gate;
pub mod migrate;
pub mod rules;

use std::path::{Path, PathBuf};

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::rewrite::text::{split_statements, tokenize};
pub use rules::{Decision, Verdict};

/// One statement of a file and its plan.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    pub file: String,
    pub line: usize,
    pub statement: String,
    #[serde(flatten)]
    pub decision: Decision,
}

/// The `.sql` files of `path` in version order (or `path` itself).
pub fn files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.ends_with(".sql") && !name.ends_with(".down.sql")
        })
        .collect();
    found.sort_by_key(|p| version_key(p.file_name().and_then(|n| n.to_str()).unwrap_or("")));
    Ok(found)
}

/// Sorts `V10__x.sql` after `V2__x.sql`: runs of digits compare as numbers.
fn version_key(name: &str) -> Vec<(u8, u128, String)> {
    let mut key = Vec::new();
    let mut rest = name;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0 {
            key.push((
                0,
                rest[..digits].parse().unwrap_or(u128::MAX),
                String::new(),
            ));
            rest = &rest[digits..];
        } else {
            let text = rest.len() - rest.trim_start_matches(|c: char| !c.is_ascii_digit()).len();
            key.push((1, 0, rest[..text].to_string()));
            rest = &rest[text..];
        }
    }
    key
}

/// The plan of every statement of `sql` (the text of `file`).
pub fn plan_text(file: &str, sql: &str) -> Vec<Step> {
    let step = |line: usize, statement: &str, decision: Decision| Step {
        file: file.to_string(),
        line,
        statement: statement.to_string(),
        decision,
    };
    let tokens = match tokenize(sql) {
        Ok(tokens) => tokens,
        Err(e) => {
            let d = unread(format!("the file cannot be tokenized ({e})"));
            return vec![step(1, sql.trim(), d)];
        }
    };
    let mut out = Vec::new();
    let mut previous_end = 0;
    for range in split_statements(&tokens) {
        let Some((first, last)) = tokens[range.clone()].first().zip(tokens[range].last()) else {
            continue;
        };
        let text = &sql[first.start..last.end];
        let line = sql[..first.start].matches('\n').count() + 1;
        let down = annotation(&sql[previous_end..first.start], "down");
        previous_end = last.end;
        let decision = match Parser::parse_sql(&PostgreSqlDialect {}, text) {
            Ok(parsed) => match parsed.as_slice() {
                [statement] => rules::decide(statement, text, down),
                _ => unread("not one statement".into()),
            },
            Err(e) => unread(format!("pgshift's SQL parser cannot read it ({e})")),
        };
        out.push(step(line, text.trim_end_matches(';').trim(), decision));
    }
    out
}

/// The value of a `-- pgshift: KEY = VALUE` comment line in `between` (the
/// text before a statement, after the one before it).
fn annotation<'s>(between: &'s str, key: &str) -> Option<&'s str> {
    between.lines().find_map(|line| {
        let rest = line
            .trim()
            .strip_prefix("--")?
            .trim()
            .strip_prefix("pgshift:")?;
        let (k, v) = rest.split_once('=')?;
        (k.trim() == key).then(|| v.trim())
    })
}

fn unread(why: String) -> Decision {
    Decision {
        verdict: Verdict::Refuse,
        rule: "unread",
        detail: format!("{why}; review it by hand"),
        safe: None,
        migration: None,
    }
}

/// The plan as text, one block per statement.
pub fn render(steps: &[Step]) -> String {
    let mut out = String::new();
    for s in steps {
        let verdict = match s.decision.verdict {
            Verdict::Pass => "pass",
            Verdict::MakeSafe => "make safe",
            Verdict::Migrate => "migrate",
            Verdict::Refuse => "REFUSE",
        };
        let first_line = s.statement.lines().next().unwrap_or("");
        out.push_str(&format!("{}:{}  {first_line}\n", s.file, s.line));
        out.push_str(&format!(
            "  {verdict} [{}]: {}\n",
            s.decision.rule, s.decision.detail
        ));
        if let Some(safe) = &s.decision.safe {
            out.push_str(&format!("    run instead: {safe}\n"));
        }
        if let Some(m) = &s.decision.migration {
            let body = serde_json::to_string(m).unwrap_or_default();
            out.push_str(&format!("    POST /migrations {body}\n"));
        }
    }
    out
}
