//! `pgshift status` and `pgshift migrate ACTION ID`: the command line as a
//! client of the admin port, printing a readable summary (with a progress
//! bar for a running backfill) or, with `--json`, the port's own answer.

use serde_json::{json, Value};

use crate::admin;
use crate::api::Action;

/// Where the admin port is and how to talk to it.
pub struct Target {
    pub admin: String,
    /// The CA an HTTPS admin port's certificate is verified with.
    pub ca: Option<std::path::PathBuf>,
    pub token: Option<String>,
    pub json: bool,
}

impl Target {
    /// Verifies an HTTPS admin port with `ca` from now on, when given.
    fn use_ca(&self) {
        if let Some(ca) = &self.ca {
            admin::set_ca(ca.clone());
        }
    }
}

/// `pgshift status`.
pub async fn status(target: &Target) -> anyhow::Result<()> {
    target.use_ca();
    let (code, body) = admin::request(
        &target.admin,
        "GET",
        "/status",
        None,
        target.token.as_deref(),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    print_answer(target, code, &body, |body| {
        let mut out = format!(
            "rules epoch {}, database {}, upstream {}\n",
            body["rules_epoch"],
            body["database"].as_str().unwrap_or("?"),
            body["upstream"].as_str().unwrap_or("?")
        );
        match body["migrations"].as_array() {
            Some(list) if !list.is_empty() => {
                for m in list {
                    out.push_str(&describe(m));
                }
            }
            _ => out.push_str("no migrations\n"),
        }
        out
    })
}

/// `pgshift migrate ACTION ID`.
pub async fn migrate(target: &Target, action: &Action, id: &str) -> anyhow::Result<()> {
    target.use_ca();
    let path = format!("/migrations/{id}/{}", action.name());
    let body = action.body();
    let body = match body.as_object() {
        Some(o) if o.is_empty() => None,
        _ => Some(body),
    };
    let (code, answer) = admin::request(
        &target.admin,
        "POST",
        &path,
        body.as_ref(),
        target.token.as_deref(),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    print_answer(target, code, &answer, describe)
}

fn print_answer(
    target: &Target,
    code: u16,
    body: &Value,
    human: impl Fn(&Value) -> String,
) -> anyhow::Result<()> {
    if target.json {
        println!("{body}");
    } else if (200..300).contains(&code) {
        print!("{}", human(body));
    }
    if (200..300).contains(&code) {
        Ok(())
    } else {
        anyhow::bail!(
            "{} (HTTP {code})",
            body["error"].as_str().unwrap_or("request failed")
        )
    }
}

/// One migration, a few lines.
fn describe(m: &Value) -> String {
    let b = &m["backfill"];
    let done = b["rows_done"].as_i64().unwrap_or(0);
    let total = b["rows_total"].as_i64();
    let mut out = format!(
        "{id}: {table}.{from} -> {to}{ty}  phase {phase}, reads from {source}\n",
        id = m["id"].as_str().unwrap_or("?"),
        table = m["table"].as_str().unwrap_or("?"),
        from = m["from"].as_str().unwrap_or("?"),
        to = m["to"].as_str().unwrap_or("?"),
        ty = m["type"]
            .as_str()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default(),
        phase = m["phase"].as_str().unwrap_or("?"),
        source = m["read_source"].as_str().unwrap_or("?"),
    );
    if done > 0 || b["running"].as_bool() == Some(true) {
        let state = if b["running"].as_bool() == Some(true) {
            "running"
        } else if b["paused"].as_bool() == Some(true) {
            "paused"
        } else {
            "done"
        };
        let split = match b["slices"].as_array().map(Vec::len) {
            Some(n) if n > 1 => format!(" ({n} workers)"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  backfill {state}{split}: {}\n",
            progress(done, total)
        ));
    }
    if let Some(v) = m["validation"].as_object() {
        out.push_str(&format!(
            "  last validation: {} mismatches{}\n",
            v["mismatches"],
            match v["samples"].as_array() {
                Some(s) if !s.is_empty() => format!(" (e.g. {})", json!(s)),
                _ => String::new(),
            }
        ));
    }
    out.push_str(&format!(
        "  statements rewritten {}, refused {}\n",
        m["statements"]["rewritten"], m["statements"]["refused"]
    ));
    out
}

/// `[#########-----------] 45% 450000/1000000 rows`
fn progress(done: i64, total: Option<i64>) -> String {
    match total {
        Some(total) if total > 0 => {
            let fraction = (done as f64 / total as f64).clamp(0.0, 1.0);
            let filled = (fraction * 30.0).round() as usize;
            format!(
                "[{}{}] {:>3.0}% {done}/{total} rows",
                "#".repeat(filled),
                "-".repeat(30 - filled),
                fraction * 100.0
            )
        }
        _ => format!("{done} rows"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_progress_bar_shows_the_fraction_done() {
        assert_eq!(
            progress(450, Some(1000)),
            "[##############----------------]  45% 450/1000 rows"
        );
        assert_eq!(progress(7, None), "7 rows");
    }
}
