//! `pgshift apply`: plain SQL migration files carried out through a
//! running pgshift. Files already applied (by name, in
//! `pgshift.applied_files`, through the admin port) are skipped, and one
//! whose text changed since is an error; the others are planned first (a
//! statement with no safe form stops the run before anything is sent),
//! then sent statement by statement, as the file has them, over a session
//! to pgshift that asks for `pgshift.ddl=migrate`: the DDL gate carries each
//! rename, type change, index… out as a migration (§7.2 of the operator's
//! guide). Each file is recorded once all of its statements have run, with
//! the migrations it made.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::admin;
use crate::admin_client::Target;
use crate::api::AppliedFile;
use crate::sql_plan::{self, Verdict};

/// What `pgshift apply` is given.
pub struct Apply {
    /// A `.sql` file, or a directory of them.
    pub path: PathBuf,
    /// A libpq URL of pgshift's listener (not the database's own).
    pub database_url: String,
    pub target: Target,
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every file applied (or applied before).
    Applied,
    /// A statement has no safe form: nothing was sent.
    Refused,
}

/// A file to apply: its name (the key), text and checksum.
struct Pending {
    name: String,
    text: String,
    checksum: String,
}

/// `pgshift apply`.
pub async fn apply(a: &Apply) -> anyhow::Result<Outcome> {
    a.target.use_ca();
    let applied: Vec<AppliedFile> = get(&a.target, "/applied-files").await?;
    let pending = pending(&a.path, &applied)?;
    if pending.is_empty() {
        println!("nothing to apply");
        return Ok(Outcome::Applied);
    }
    let refused: Vec<sql_plan::Step> = pending
        .iter()
        .flat_map(|p| sql_plan::plan_text(&p.name, &p.text))
        .filter(|s| s.decision.verdict == Verdict::Refuse)
        // (The DDL gate derives an exact down, or refuses the statement.)
        .filter(|s| s.decision.rule != "change-type-needs-down")
        .collect();
    if !refused.is_empty() {
        print!("{}", sql_plan::render(&refused));
        println!("nothing applied: these statements have no safe form");
        return Ok(Outcome::Refused);
    }
    let client = connect(&a.database_url, Some("-c pgshift.ddl=migrate")).await?;
    for p in &pending {
        run_file(a, &client, p).await?;
    }
    Ok(Outcome::Applied)
}

/// The files of `path` not applied yet; an applied file whose text
/// changed is an error.
fn pending(path: &Path, applied: &[AppliedFile]) -> anyhow::Result<Vec<Pending>> {
    let mut out = Vec::new();
    for file in sql_plan::files(path).with_context(|| format!("cannot read {}", path.display()))? {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let checksum = checksum(&text);
        match applied.iter().find(|f| f.file == name) {
            Some(f) if f.checksum == checksum => {
                let at = f.applied_at.as_deref().unwrap_or("");
                println!("{name}: applied {at}, skipped");
            }
            Some(f) => bail!(
                "{name} was applied with checksum {} and has changed since ({checksum}): an applied migration file is not edited; write a new one",
                f.checksum
            ),
            None => out.push(Pending {
                name,
                text,
                checksum,
            }),
        }
    }
    Ok(out)
}

/// SHA-256 of a file's text, in hex.
fn checksum(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends `p`'s statements, then records it with the migrations it made.
async fn run_file(a: &Apply, client: &tokio_postgres::Client, p: &Pending) -> anyhow::Result<()> {
    let before = migration_ids(&a.target).await?;
    let steps = sql_plan::plan_text(&p.name, &p.text);
    for step in &steps {
        client.batch_execute(&step.statement).await.map_err(|e| {
            let detail = e
                .as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_string());
            anyhow::anyhow!(
                "{}:{}: {detail} (the file is not recorded; statements before this one ran)",
                p.name,
                step.line
            )
        })?;
    }
    let made: Vec<String> = migration_ids(&a.target)
        .await?
        .difference(&before)
        .cloned()
        .collect();
    let file = AppliedFile {
        file: p.name.clone(),
        checksum: p.checksum.clone(),
        statements: steps.len() as i32,
        migrations: made.clone(),
        applied_at: None,
    };
    let (code, body) = admin::request(
        &a.target.admin,
        "POST",
        "/applied-files",
        Some(&serde_json::to_value(&file)?),
        a.target.token.as_deref(),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    if code != 201 {
        bail!("{}: the admin port answered {code}: {body}", p.name);
    }
    let made = match made.is_empty() {
        true => String::new(),
        false => format!(
            "; migrations (carried on by the autopilot): {}",
            made.join(", ")
        ),
    };
    println!("{}: applied, {} statements{made}", p.name, steps.len());
    Ok(())
}

/// The ids of the migrations pgshift knows now.
async fn migration_ids(target: &Target) -> anyhow::Result<BTreeSet<String>> {
    let status: crate::api::ProxyStatus = get(target, "/status").await?;
    Ok(status.migrations.into_iter().map(|m| m.id).collect())
}

async fn get<T: serde::de::DeserializeOwned>(target: &Target, path: &str) -> anyhow::Result<T> {
    let (code, body) = admin::request(&target.admin, "GET", path, None, target.token.as_deref())
        .await
        .map_err(anyhow::Error::msg)?;
    if code != 200 {
        bail!("GET {path}: the admin port answered {code}: {body}");
    }
    serde_json::from_value(body)
        .with_context(|| format!("GET {path}: an answer pgshift did not expect"))
}

/// A session to `url` (with `options` added to its startup options), with
/// TLS as the URL's `sslmode` says.
pub(crate) async fn connect(
    url: &str,
    options: Option<&str>,
) -> anyhow::Result<tokio_postgres::Client> {
    use crate::proxy::upstream::{UpstreamTls, UpstreamTlsSetup};
    use tokio_postgres::config::SslMode;
    let mut config: tokio_postgres::Config = url
        .parse()
        .with_context(|| "--database-url: not a libpq URL or key=value string".to_string())?;
    if let Some(more) = options {
        let given = config.get_options().unwrap_or("").to_string();
        config.options(format!("{given} {more}").trim());
    }
    if config.get_application_name().is_none() {
        config.application_name("pgshift");
    }
    let mode = match config.get_ssl_mode() {
        SslMode::Disable => UpstreamTls::Disable,
        SslMode::Require => UpstreamTls::Require,
        _ => UpstreamTls::Prefer,
    };
    let (tls, mode) = UpstreamTlsSetup::new(mode, None)
        .map_err(anyhow::Error::msg)?
        .make_tls_connect();
    config.ssl_mode(mode);
    let failed = || format!("cannot connect to {url}");
    let client = match tls {
        None => {
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .with_context(failed)?;
            tokio::spawn(connection);
            client
        }
        Some(tls) => {
            let (client, connection) = config.connect(tls).await.with_context(failed)?;
            tokio::spawn(connection);
            client
        }
    };
    Ok(client)
}
