//! `pgshift status` and `pgshift migrate ACTION ID`: the command line as a
//! client of the admin port, printing a readable summary (with a progress
//! bar for a running backfill) or, with `--json`, the port's own answer.

use serde_json::{json, Value};

use crate::admin;
use crate::api::{Action, MigrationStatus, ProxyStatus, ReadSource};

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
    pub(crate) fn use_ca(&self) {
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
    print_answer(target, code, &body, |status: ProxyStatus| {
        let mut out = format!(
            "rules epoch {}, database {}, upstream {}\n",
            status.rules_epoch, status.database, status.upstream
        );
        if status.migrations.is_empty() {
            out.push_str("no migrations\n");
        }
        for m in &status.migrations {
            out.push_str(&describe(m));
        }
        out
    })?;
    if !target.json {
        print!("{}", applied_files(target).await);
    }
    Ok(())
}

/// The files `pgshift apply` carried out, a line each (nothing when none,
/// or when the admin port predates them).
async fn applied_files(target: &Target) -> String {
    let answer = admin::request(
        &target.admin,
        "GET",
        "/applied-files",
        None,
        target.token.as_deref(),
    )
    .await;
    let files: Vec<crate::api::AppliedFile> = match answer {
        Ok((200, body)) => serde_json::from_value(body).unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut out = String::new();
    if !files.is_empty() {
        out.push_str("applied files:\n");
    }
    for f in files {
        let made = match f.migrations.is_empty() {
            true => String::new(),
            false => format!(", migrations {}", f.migrations.join(", ")),
        };
        out.push_str(&format!(
            "  {}  {}  {} statements{made}  sha256 {}\n",
            f.file,
            f.applied_at.unwrap_or_default(),
            f.statements,
            f.checksum.chars().take(12).collect::<String>(),
        ));
    }
    out
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
    print_answer(target, code, &answer, |m: MigrationStatus| describe(&m))
}

/// `pgshift migrate autopilot ID --mode …`: the autopilot's settings.
pub async fn autopilot(
    target: &Target,
    id: &str,
    settings: &crate::api::Autopilot,
) -> anyhow::Result<()> {
    target.use_ca();
    let body = serde_json::to_value(settings)?;
    let path = format!("/migrations/{id}/autopilot");
    let (code, answer) = admin::request(
        &target.admin,
        "POST",
        &path,
        Some(&body),
        target.token.as_deref(),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    print_answer(target, code, &answer, |m: MigrationStatus| describe(&m))
}

/// Prints an answer: as received with `--json`, else read as a `T` and
/// told by `human`. A non-2xx answer is an error carrying its message.
fn print_answer<T: serde::de::DeserializeOwned>(
    target: &Target,
    code: u16,
    body: &Value,
    human: impl Fn(T) -> String,
) -> anyhow::Result<()> {
    if !(200..300).contains(&code) {
        if target.json {
            println!("{body}");
        }
        anyhow::bail!(
            "{} (HTTP {code})",
            body["error"].as_str().unwrap_or("request failed")
        )
    }
    if target.json {
        println!("{body}");
    } else {
        let answer = T::deserialize(body).map_err(|e| {
            anyhow::anyhow!("the admin port answered in a shape this pgshift does not know ({e}); is it another version?")
        })?;
        print!("{}", human(answer));
    }
    Ok(())
}

/// One migration, a few lines.
fn describe(m: &MigrationStatus) -> String {
    if let Some(definition) = m.definition.as_ref().filter(|_| m.op.is_catalog()) {
        let mut out = format!(
            "{id}: {op} on {table}  phase {phase}\n  {definition}\n",
            id = m.id,
            op = m.op.as_str(),
            table = m.table,
            phase = m.phase,
        );
        if let Some(b) = &m.index_build {
            out.push_str(&format!(
                "  index build: {}, blocks {}, tuples {}\n",
                b.phase,
                progress(b.blocks_done, Some(b.blocks_total)),
                progress(b.tuples_done, Some(b.tuples_total))
            ));
        }
        return out;
    }
    let b = &m.backfill;
    let mut out = format!(
        "{id}: {op} {table}{from} -> {to}{ty}  phase {phase}, reads from {source}\n",
        id = m.id,
        op = m.op.as_str(),
        table = m.table,
        from = match m.from.as_str() {
            "" => String::new(),
            from => format!(".{from}"),
        },
        to = match m.to.as_str() {
            "" => "(dropped)",
            to => to,
        },
        ty = m
            .new_type
            .as_ref()
            .map(|t| format!(" ({t})"))
            .unwrap_or_default(),
        phase = m.phase,
        source = match m.read_source {
            ReadSource::New => "new",
            ReadSource::Old => "old",
        },
    );
    if let Some(definition) = &m.definition {
        out.push_str(&format!("  {definition}\n"));
    }
    if let Some(a) = &m.autopilot {
        let mode = serde_json::to_value(a.mode).unwrap_or_default();
        let mode = mode.as_str().unwrap_or("?");
        match &a.stopped {
            Some(why) => out.push_str(&format!("  autopilot {mode}: STOPPED: {why}\n")),
            None => out.push_str(&format!("  autopilot {mode}\n")),
        }
    }
    if b.rows_done > 0 || b.running {
        let state = if b.running {
            "running"
        } else if b.paused {
            "paused"
        } else {
            "done"
        };
        let split = match b.slices.len() {
            n if n > 1 => format!(" ({n} workers)"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  backfill {state}{split}: {}\n",
            progress(b.rows_done, b.rows_total)
        ));
    }
    if let Some(v) = &m.validation {
        out.push_str(&format!(
            "  last validation: {} mismatches{}\n",
            v.mismatches,
            match v.samples.is_empty() {
                false => format!(" (e.g. {})", json!(v.samples)),
                true => String::new(),
            }
        ));
    }
    out.push_str(&format!(
        "  statements rewritten {}, refused {}\n",
        m.statements.rewritten, m.statements.refused
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
