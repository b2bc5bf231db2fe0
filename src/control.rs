//! pgshift's own connection to the upstream (the control connection): who
//! it connects as, and what it reads there — today the catalog snapshot the
//! rewriter resolves `*`, positional INSERTs and join columns with.
//!
//! Client sessions never share this connection; it is opened when pgshift
//! needs the catalog (at start, on SIGHUP, and until a first read succeeds).
//! The lifecycle reads the catalog with [`read_catalog`] over the
//! connection it made a change on, so a rules epoch costs no new backend.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use crate::config::Config;
use crate::rewrite::catalog::{Catalog, ColumnDef, DefaultPaths, TableDef};
use crate::rewrite::rules::RulesCell;
use crate::rewrite::search_path::SearchPath;

/// What failed on the control connection.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "cannot connect to {upstream} as {user:?} (database {database:?}): {}",
        crate::pgerror::describe(source)
    )]
    Connect {
        upstream: String,
        user: String,
        database: String,
        source: tokio_postgres::Error,
    },
    #[error("TLS toward the upstream: {0}")]
    Tls(String),
    #[error("connecting to {upstream} timed out after {ms} ms")]
    Timeout { upstream: String, ms: u128 },
    #[error("reading the catalog failed: {}", crate::pgerror::describe(.0))]
    Query(#[from] tokio_postgres::Error),
}

/// Opens the control connection of `config`; its driver task runs on the
/// current runtime and ends with the returned client.
pub async fn connect(config: &Config) -> Result<Client, ControlError> {
    let control = &config.control;
    let upstream = &config.upstream;
    let mut pg = tokio_postgres::Config::new();
    pg.host(&upstream.host)
        .port(upstream.port)
        .user(&control.user)
        .dbname(&control.database)
        .application_name("pgshift-control")
        .connect_timeout(config.limits.connect_timeout);
    if let Some(password) = &control.password {
        pg.password(password);
    }
    let timeout = config.limits.connect_timeout + Duration::from_secs(5);
    let timed_out = || ControlError::Timeout {
        upstream: upstream.to_string(),
        ms: timeout.as_millis(),
    };
    let failed = |source| ControlError::Connect {
        upstream: upstream.to_string(),
        user: control.user.clone(),
        database: control.database.clone(),
        source,
    };
    // TLS as upstream_tls says, as for client sessions.
    let setup = config.upstream_tls.setup().map_err(ControlError::Tls)?;
    let (tls, mode) = setup.make_tls_connect();
    // Never TLS over a unix socket, as libpq.
    let (tls, mode) = match upstream.socket_path() {
        Some(_) => (None, tokio_postgres::config::SslMode::Disable),
        None => (tls, mode),
    };
    pg.ssl_mode(mode);
    let client = match tls {
        None => {
            let (client, connection) = tokio::time::timeout(timeout, pg.connect(NoTls))
                .await
                .map_err(|_| timed_out())?
                .map_err(failed)?;
            drive(connection);
            client
        }
        Some(tls) => {
            let (client, connection) = tokio::time::timeout(timeout, pg.connect(tls))
                .await
                .map_err(|_| timed_out())?
                .map_err(failed)?;
            drive(connection);
            client
        }
    };
    Ok(client)
}

/// Runs a connection's driver task until it ends.
fn drive<F>(connection: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "control connection ended");
        }
    });
}

/// The column rows of every user table, view and foreign table, what the
/// catalog snapshot is read from (`a`, `c`, `n`, `d`: the attribute, its
/// relation, namespace and default).
const CATALOG_ROWS: &str = "from pg_attribute a
               join pg_class c on c.oid = a.attrelid
               join pg_namespace n on n.oid = c.relnamespace
               left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
              where c.relkind in ('r', 'p', 'v', 'm', 'f')
                and a.attnum > 0 and not a.attisdropped
                and n.nspname not in ('pg_catalog', 'information_schema')
                and n.nspname not like 'pg\\_toast%'";

/// A number that changes when a table's columns do (what the catalog
/// snapshot holds): the newest transaction that wrote the rows behind the
/// snapshot, and their count (other sessions' temporary tables left out).
/// One row, read in about the time of the snapshot itself.
pub async fn catalog_signature(client: &Client) -> Result<i64, ControlError> {
    let sql = format!(
        "select count(*)::int8 * 1000003
                + coalesce(max(greatest(a.xmin::text::int8, c.xmin::text::int8, coalesce(d.xmin::text::int8, 0))), 0)
           {CATALOG_ROWS}
            and n.nspname not like 'pg\\_temp%'"
    );
    let row = client.query_typed_one(&sql, &[]).await?;
    Ok(row.try_get(0)?)
}

/// The columns of every user table, view and foreign table of the
/// database, in position order.
pub async fn read_catalog(client: &Client) -> Result<Catalog, ControlError> {
    let rows = client
        .query(
            &format!(
                "select n.nspname::text, c.relname::text, a.attname::text,
                    format_type(a.atttypid, a.atttypmod), a.attnotnull,
                    pg_get_expr(d.adbin, d.adrelid)
               {CATALOG_ROWS}
              order by 1, 2, a.attnum"
            ),
            &[],
        )
        .await?;
    let mut catalog = Catalog::empty();
    let mut current: Option<(String, String, TableDef)> = None;
    for row in rows {
        let schema: String = row.try_get(0)?;
        let table: String = row.try_get(1)?;
        let column = ColumnDef {
            name: row.try_get(2)?,
            type_name: row.try_get(3)?,
            not_null: row.try_get(4)?,
            default: row.try_get(5)?,
        };
        match &mut current {
            Some((s, t, def)) if *s == schema && *t == table => def.columns.push(column),
            _ => {
                if let Some((s, t, def)) = current.take() {
                    catalog.insert(&s, &t, def);
                }
                current = Some((
                    schema,
                    table,
                    TableDef {
                        columns: vec![column],
                    },
                ));
            }
        }
    }
    if let Some((s, t, def)) = current {
        catalog.insert(&s, &t, def);
    }
    catalog.defaults = read_default_paths(client).await?;
    Ok(catalog)
}

/// The search paths sessions that set none start with: `ALTER ROLE` /
/// `ALTER DATABASE … SET search_path` for this database, and the server's
/// own setting (when it does not come from such a setting of pgshift's
/// own role).
async fn read_default_paths(client: &Client) -> Result<DefaultPaths, ControlError> {
    let mut defaults = DefaultPaths::default();
    let rows = client
        .query(
            "select coalesce(r.rolname::text, ''), s.setdatabase <> 0,
                    substr(cfg, length('search_path=') + 1)
               from pg_db_role_setting s
               left join pg_roles r on r.oid = s.setrole
              cross join lateral unnest(s.setconfig) cfg
              where s.setdatabase in (0, (select oid from pg_database
                                           where datname = current_database()))
                and cfg like 'search\\_path=%'",
            &[],
        )
        .await?;
    for row in rows {
        let role: String = row.try_get(0)?;
        let in_database: bool = row.try_get(1)?;
        let path = SearchPath::parse_list(row.try_get(2)?);
        match (role.is_empty(), in_database) {
            (false, true) => drop(defaults.role_in_database.insert(role, path)),
            (false, false) => drop(defaults.role.insert(role, path)),
            (true, _) => defaults.database = Some(path),
        }
    }
    let row = client
        .query_one(
            "select setting, source in ('default', 'configuration file', 'command line',
                                        'environment variable', 'override'), boot_val
               from pg_settings where name = 'search_path'",
            &[],
        )
        .await?;
    let (setting, from_server, boot): (String, bool, String) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    defaults.server = Some(SearchPath::parse_list(if from_server {
        &setting
    } else {
        &boot
    }));
    Ok(defaults)
}

/// Reads the catalog over a fresh control connection.
pub async fn load_catalog(config: &Config) -> Result<Catalog, ControlError> {
    let client = connect(config).await?;
    read_catalog(&client).await
}

/// Reads the catalog and publishes it into `rules`, retrying every
/// `retry` until a read succeeds (Postgres may still be starting).
pub async fn publish_catalog_until_read(
    config: Config,
    rules: std::sync::Arc<RulesCell>,
    retry: Duration,
) {
    loop {
        match load_catalog(&config).await {
            Ok(catalog) => {
                let tables = catalog.len();
                let epoch = rules.publish_catalog(catalog);
                tracing::info!(epoch, tables, "catalog snapshot read");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_secs = retry.as_secs(), "cannot read the catalog yet; SELECT *, positional INSERTs and unqualified join columns on migrating tables stay refused");
                tokio::time::sleep(retry).await;
            }
        }
    }
}
