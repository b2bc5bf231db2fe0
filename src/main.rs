//! The `pgshift` command line: `serve` runs the proxy, `demo` runs it in
//! front of a throwaway local Postgres.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use pgshift::config::{Config, Overrides};
use pgshift::control;
use pgshift::demo::{self, DemoOptions};
use pgshift::lifecycle::Lifecycle;
use pgshift::proxy::Proxy;
use pgshift::rewrite::engine::MigrationRewriter;
use pgshift::rewrite::rules::{ActiveMigration, RulesCell};
use pgshift::rewrite::StatementRewriter;
use pgshift::telemetry;
use pgshift::{admin, admin_client};

#[derive(Debug, Parser)]
#[command(
    name = "pgshift",
    version,
    about = "Zero-downtime column renames and type changes for PostgreSQL, as a wire-protocol proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Serve(Box<ServeArgs>),
    /// Start a throwaway local Postgres with pgshift in front of it, and run a
    /// rename, two type changes (one keeping its name) and an added NOT NULL column under pgbench load
    /// through it, checking everything.
    Demo(DemoArgs),
    /// Show every migration's phase and progress (a client of the admin port).
    Status(AdminArgs),
    /// Run a lifecycle step: expand, backfill, pause, resume, validate,
    /// switch-reads, contract, complete, rollback.
    Migrate(MigrateArgs),
    /// Read plain SQL migration files and print what pgshift would do with
    /// each statement: pass, make safe, migrate, or refuse (exit code 2
    /// when a statement is refused).
    Plan(PlanArgs),
    /// Carry plain SQL migration files out through a running pgshift: each
    /// statement sent with the DDL gate in migrate, each file recorded
    /// (skipped once applied; an applied file that changed is an error).
    /// Exit code 2 when a statement has no safe form (nothing is sent).
    Apply(ApplyArgs),
}

#[derive(Debug, Args)]
struct ApplyArgs {
    /// A .sql file, or a directory of them (applied in version order).
    path: std::path::PathBuf,
    /// pgshift's listener as a libpq URL (postgres://user@host:6432/db) or
    /// key=value string; not the database's own address.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
    #[command(flatten)]
    target: AdminArgs,
}

#[derive(Debug, Args)]
struct PlanArgs {
    /// A .sql file, or a directory of them (read in version order).
    path: std::path::PathBuf,
    /// text, or json (for CI).
    #[arg(long, default_value = "text")]
    format: String,
    /// Complete the plan from this database (a libpq URL: the database's
    /// own, or pgshift's): a type change's exact down from the column's
    /// type, each table's size. Nothing is written.
    #[arg(long)]
    database_url: Option<String>,
}

#[derive(Debug, Args)]
struct AdminArgs {
    /// The admin port of a running pgshift: HOST:PORT, or
    /// https://HOST:PORT when it serves HTTPS.
    #[arg(long, env = "PGSHIFT_ADMIN", default_value = "127.0.0.1:9432")]
    admin: String,
    /// PEM CA certificates to verify an HTTPS admin port with [default:
    /// the system's].
    #[arg(long, env = "PGSHIFT_ADMIN_CA")]
    admin_ca: Option<std::path::PathBuf>,
    /// Bearer token, when the admin port requires one.
    #[arg(long, env = "PGSHIFT_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the admin port's JSON answer.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct MigrateArgs {
    /// expand | backfill | pause | resume | validate | switch-reads | contract | complete | rollback | autopilot
    action: String,
    /// The migration id.
    id: String,
    /// switch-reads: new or old.
    #[arg(long)]
    to: Option<String>,
    /// autopilot: off, to-switch or full.
    #[arg(long)]
    mode: Option<String>,
    /// autopilot: how long no client may have named the old shape before
    /// the full autopilot contracts, in seconds [default: 600].
    #[arg(long)]
    contract_after_secs: Option<u64>,
    /// backfill: rows per batch.
    #[arg(long)]
    batch_size: Option<u32>,
    /// backfill: pause between batches, in milliseconds.
    #[arg(long)]
    batch_pause_ms: Option<u32>,
    /// backfill: statement_timeout per batch, in milliseconds.
    #[arg(long)]
    batch_timeout_ms: Option<u32>,
    /// backfill: sessions walking the table at once, each over its own
    /// slice of the key (applies when the walk starts) [default: 1].
    #[arg(long)]
    workers: Option<u32>,
    /// validate: fix the mismatches found (catch-up pass).
    #[arg(long)]
    fix: bool,
    /// validate: time budget of the one-statement check of a table of at
    /// most 1 GiB, in milliseconds; past it the table is walked range by
    /// range (0: always walk) [default: 5000].
    #[arg(long)]
    one_pass_ms: Option<u32>,
    /// validate: keys per range of the parity check (walks the table)
    /// [default: 10000].
    #[arg(long)]
    range_rows: Option<u32>,
    /// validate: pause between ranges, in milliseconds (walks the table)
    /// [default: the backfill's batch pause].
    #[arg(long)]
    pause_ms: Option<u32>,
    /// contract: go ahead although old-shape statements were seen.
    #[arg(long)]
    force: bool,
    /// contract: how far back old-shape statements hold it, in seconds
    /// [default: 600].
    #[arg(long)]
    window_secs: Option<u32>,
    /// contract: drop exclusion constraints on the old column that have
    /// no equivalent on the new one.
    #[arg(long)]
    drop_exclusion_constraints: bool,
    #[command(flatten)]
    target: AdminArgs,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file (see config/pgshift.example.toml).
    #[arg(long, env = "PGSHIFT_CONFIG")]
    config: Option<PathBuf>,
    /// Address clients connect to [default: 127.0.0.1:6432].
    #[arg(long, env = "PGSHIFT_LISTEN")]
    listen: Option<String>,
    /// Also listen on a unix socket in this directory (.s.PGSQL.PORT, the
    /// port of --listen), as `psql -h DIR -p PORT` expects [default: off].
    #[arg(long, env = "PGSHIFT_LISTEN_UNIX")]
    listen_unix: Option<String>,
    /// Postgres server to relay to, HOST:PORT, or the directory of its unix
    /// socket, /DIR[:PORT] [default: 127.0.0.1:5432].
    #[arg(long, env = "PGSHIFT_UPSTREAM")]
    upstream: Option<String>,
    /// Log filter when RUST_LOG is unset [default: info].
    #[arg(long, env = "PGSHIFT_LOG_LEVEL")]
    log_level: Option<String>,
    /// What to do with DDL sent through pgshift: pass, warn (log and count
    /// the rules it breaks), guard (refuse what is not safe as written),
    /// migrate (carry renames, type changes, indexes… out as pgshift
    /// migrations, both shapes served) [default: warn].
    #[arg(long, env = "PGSHIFT_DDL")]
    ddl: Option<String>,
    /// The autopilot of migrations made by --ddl migrate: off, to-switch,
    /// full [default: full].
    #[arg(long, env = "PGSHIFT_DDL_AUTOPILOT")]
    ddl_autopilot: Option<String>,
    /// Seconds without old-shape clients before the full autopilot of a
    /// migration made by --ddl migrate contracts it [default: 600].
    #[arg(long, env = "PGSHIFT_DDL_CONTRACT_AFTER_SECS")]
    ddl_contract_after_secs: Option<u64>,
    /// Session worker threads; 0 = half the CPU cores, at least one [default: 0].
    #[arg(long, env = "PGSHIFT_WORKERS")]
    workers: Option<usize>,
    /// Client sessions served at once [default: 1000].
    #[arg(long, env = "PGSHIFT_MAX_CLIENT_CONNECTIONS")]
    max_client_connections: Option<usize>,
    /// Of those, the last N are kept for the reserved roles [default: 0].
    #[arg(long, env = "PGSHIFT_RESERVED_CONNECTIONS")]
    reserved_connections: Option<usize>,
    /// Roles that may take the reserved connections, comma-separated
    /// [default: the control role].
    #[arg(long, env = "PGSHIFT_RESERVED_ROLES", value_delimiter = ',')]
    reserved_roles: Option<Vec<String>>,
    /// Sessions per user; 0 = no limit beyond the total [default: 0].
    #[arg(long, env = "PGSHIFT_MAX_USER_CONNECTIONS")]
    max_user_connections: Option<usize>,
    /// Sessions per database; 0 = no limit beyond the total [default: 0].
    #[arg(long, env = "PGSHIFT_MAX_DB_CONNECTIONS")]
    max_db_connections: Option<usize>,
    /// Largest protocol message accepted, in bytes [default: 67108864].
    #[arg(long, env = "PGSHIFT_MAX_MESSAGE_SIZE")]
    max_message_size: Option<usize>,
    /// Upstream connect timeout in milliseconds [default: 5000].
    #[arg(long, env = "PGSHIFT_CONNECT_TIMEOUT_MS")]
    connect_timeout_ms: Option<u64>,
    /// Close sessions without traffic for this many seconds; 0 = never [default: 0].
    #[arg(long, env = "PGSHIFT_IDLE_TIMEOUT_SECS")]
    idle_timeout_secs: Option<u64>,
    /// Close sessions idle inside a transaction (holding its locks and
    /// snapshot) for this many seconds; 0 = never [default: 0].
    #[arg(long, env = "PGSHIFT_IDLE_IN_TRANSACTION_TIMEOUT_SECS")]
    idle_in_transaction_timeout_secs: Option<u64>,
    /// Seconds sessions get to finish on SIGINT/SIGTERM [default: 30].
    #[arg(long, env = "PGSHIFT_SHUTDOWN_GRACE_SECS")]
    shutdown_grace_secs: Option<u64>,
    /// The database the migrations are in; sessions to other databases are
    /// relayed without rewriting [default: postgres].
    #[arg(long, env = "PGSHIFT_DATABASE")]
    database: Option<String>,
    /// Role pgshift connects as to read the catalog [default: postgres].
    #[arg(long, env = "PGSHIFT_CONTROL_USER")]
    control_user: Option<String>,
    /// Password of the control role (prefer the environment variable).
    #[arg(long, env = "PGSHIFT_CONTROL_PASSWORD", hide_env_values = true)]
    control_password: Option<String>,
    /// A file holding the control role's password (a flag shows in ps).
    #[arg(long, env = "PGSHIFT_CONTROL_PASSWORD_FILE")]
    control_password_file: Option<String>,
    /// Admin HTTP port, IP:PORT or "off" [default: 127.0.0.1:9432].
    #[arg(long, env = "PGSHIFT_ADMIN")]
    admin: Option<String>,
    /// Bearer token the admin port requires (required off loopback); prefer
    /// the environment variable or --admin-token-file (a flag shows in ps).
    #[arg(long, env = "PGSHIFT_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// A file holding the admin token.
    #[arg(long, env = "PGSHIFT_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<String>,
    /// A second token that may only read the admin port (GET).
    #[arg(long, env = "PGSHIFT_ADMIN_READ_TOKEN", hide_env_values = true)]
    admin_read_token: Option<String>,
    /// A file holding the read-only token.
    #[arg(long, env = "PGSHIFT_ADMIN_READ_TOKEN_FILE")]
    admin_read_token_file: Option<String>,
    /// PEM certificate chain pgshift presents to clients (TLS).
    #[arg(long, env = "PGSHIFT_TLS_CERT")]
    tls_cert: Option<String>,
    /// PEM private key of that certificate.
    #[arg(long, env = "PGSHIFT_TLS_KEY")]
    tls_key: Option<String>,
    /// HTTPS on the admin port, with the certificate above [default: true
    /// with a certificate].
    #[arg(long, env = "PGSHIFT_ADMIN_TLS")]
    admin_tls: Option<bool>,
    /// disable | allow | require [default: allow with a certificate].
    #[arg(long, env = "PGSHIFT_CLIENT_TLS")]
    client_tls: Option<String>,
    /// TLS to the upstream: disable | prefer | require | verify-ca |
    /// verify-full (libpq's sslmode) [default: prefer].
    #[arg(long, env = "PGSHIFT_UPSTREAM_TLS")]
    upstream_tls: Option<String>,
    /// PEM CA certificates to verify the upstream with [default: the
    /// system's].
    #[arg(long, env = "PGSHIFT_UPSTREAM_CA")]
    upstream_ca: Option<String>,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Where pgshift listens (a free port is taken if this one is in use).
    #[arg(long, default_value = "127.0.0.1:6432")]
    listen: SocketAddr,
    /// pgbench scale factor.
    #[arg(long, default_value_t = 10)]
    scale: u32,
    /// pgbench clients per load group (old/new shape × prepared/simple).
    #[arg(long, default_value_t = 2)]
    clients: u32,
    /// Seconds of load while the migrations run.
    #[arg(long, default_value_t = 110)]
    duration: u32,
    /// Stop after pgbench instead of serving until Ctrl-C.
    #[arg(long, conflicts_with = "keep")]
    no_wait: bool,
    /// Keep the proxy and the cluster running until Ctrl-C even when a check
    /// failed, to look into it (after a clean run that is the default).
    #[arg(long)]
    keep: bool,
    /// Inject faults while migrating: a transaction holding a lock on the
    /// table across expand and contract, a client killed mid-transaction
    /// during the backfill.
    #[arg(long)]
    faults: bool,
}

fn log_rules(migrations: &[ActiveMigration], epoch: u64) {
    if migrations.is_empty() {
        tracing::info!(epoch, "no migrations configured");
    }
    for m in migrations {
        tracing::info!(
            epoch,
            migration = %m.spec.id,
            table = %m.spec.table,
            from = %m.spec.from,
            to = %m.spec.to,
            phase = %m.phase,
            "migration rules in force"
        );
    }
}

/// Re-reads the migrations of the config file on every SIGHUP and publishes
/// them as a new rules epoch; a file that does not validate changes nothing.
async fn reload_on_sighup(
    path: PathBuf,
    overrides: Overrides,
    rules: Arc<RulesCell>,
    lifecycle: Arc<OnceLock<Arc<Lifecycle>>>,
    reloaded: tokio::sync::watch::Sender<Option<Config>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot listen for SIGHUP; migrations will not be reloaded");
        return;
    };
    while hangups.recv().await.is_some() {
        match Config::load(Some(&path), &overrides) {
            Ok(config) => {
                for (migration, rewritten, refused) in rules.counters() {
                    tracing::info!(%migration, rewritten, refused, "statements so far");
                }
                // The lifecycle applies every file it is handed, once it
                // runs (the store is the truth: new migrations are added to
                // it, explicit phases override it) — also one read before
                // it started, which its start did not see.
                let running = lifecycle.get().is_some();
                reloaded.send_replace(Some(config.clone()));
                if running {
                    continue;
                }
                // The catalog is re-read with the migrations, so that one
                // epoch carries both; if it cannot be read, the last
                // snapshot stays in force.
                let epoch = match control::load_catalog(&config).await {
                    Ok(catalog) => {
                        let tables = catalog.len();
                        let epoch = rules.publish_with_catalog(&config.migrations, catalog);
                        tracing::info!(epoch, tables, "catalog snapshot read");
                        epoch
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "SIGHUP: cannot read the catalog; the last snapshot stays");
                        rules.publish(&config.migrations)
                    }
                };
                tracing::info!(epoch, file = %path.display(), "SIGHUP: migrations reloaded (other settings need a restart)");
                log_rules(&config.migrations, epoch);
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the config file is not valid; the rules in force stay")
            }
        }
    }
}

/// Binds the admin port (it answers 503 until the lifecycle has started),
/// then starts the lifecycle driver, retrying until the upstream answers.
async fn run_lifecycle(
    config: Config,
    rules: Arc<RulesCell>,
    slot: Arc<OnceLock<Arc<Lifecycle>>>,
    carrier: pgshift::sql_plan::migrate::CarrierSlot,
    reloads: tokio::sync::watch::Receiver<Option<Config>>,
) {
    if let Some(addr) = config.admin {
        match admin::bind(addr).await {
            Ok(listener) => {
                let local = listener.local_addr().map_or(addr, |a| a);
                let tls = match (&config.tls, config.admin_tls) {
                    (Some(files), true) => {
                        match pgshift::proxy::tls::Reloadable::load(
                            files.clone(),
                            pgshift::proxy::tls::ALPN_HTTP1,
                        ) {
                            Ok(tls) => Some(Arc::new(tls)),
                            Err(e) => {
                                tracing::error!(error = %e, "the admin port cannot serve HTTPS; it stays closed");
                                return;
                            }
                        }
                    }
                    _ => None,
                };
                let scheme = if tls.is_some() { "https" } else { "http" };
                tracing::info!(admin = %local, %scheme, "admin port listening");
                tokio::spawn(admin::serve_when_ready(
                    listener,
                    Arc::clone(&slot),
                    admin::Tokens::new(
                        config.admin_token.as_deref(),
                        config.admin_read_token.as_deref(),
                    ),
                    tls,
                ));
            }
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot listen on the admin port (set --admin to another address, or off)")
            }
        }
    }
    let lifecycle = loop {
        // Each attempt with the file SIGHUP read last, if any: a control
        // role or password fixed in the file is used without a restart.
        let latest = reloads.borrow().clone().unwrap_or_else(|| config.clone());
        match Lifecycle::start(latest, Arc::clone(&rules)).await {
            Ok(lifecycle) => break lifecycle,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the migration lifecycle yet (retrying in 5 s); rules from the config file stay in force");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    tracing::info!(database = %config.control.database, "migration lifecycle started");
    let _ = slot.set(Arc::clone(&lifecycle));
    let _ = carrier.set(Arc::new(pgshift::lifecycle::carry::GateCarrier {
        lifecycle: Arc::clone(&lifecycle),
        autopilot: config.ddl_autopilot.clone(),
    }));
    apply_reloads(&lifecycle, &rules, reloads).await;
}

/// Applies each config file SIGHUP read, in order, the one read before the
/// lifecycle started included; until the sender is gone.
async fn apply_reloads(
    lifecycle: &Lifecycle,
    rules: &RulesCell,
    mut reloads: tokio::sync::watch::Receiver<Option<Config>>,
) {
    loop {
        let pending = reloads.borrow_and_update().clone();
        if let Some(config) = pending {
            match lifecycle.reload(&config).await {
                Ok(()) => tracing::info!(epoch = rules.epoch(), "SIGHUP: migrations reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: reloading the migrations failed; the rules in force stay")
                }
            }
        }
        if reloads.changed().await.is_err() {
            return;
        }
    }
}

/// The first rules: the configured migrations with the catalog snapshot
/// when it can be read now; otherwise without one, and a background task
/// keeps trying (until then pgshift refuses what needs the catalog).
async fn start_rules(config: &Config) -> Arc<RulesCell> {
    if config.migrations.is_empty() {
        return Arc::new(RulesCell::new(&config.migrations));
    }
    match control::load_catalog(config).await {
        Ok(catalog) => {
            tracing::info!(tables = catalog.len(), "catalog snapshot read");
            Arc::new(RulesCell::with_catalog(&config.migrations, catalog))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the catalog at start; retrying in the background");
            let rules = Arc::new(RulesCell::new(&config.migrations));
            tokio::spawn(control::publish_catalog_until_read(
                config.clone(),
                Arc::clone(&rules),
                Duration::from_secs(5),
            ));
            rules
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The main runtime accepts connections and handles signals; sessions
    // run on the proxy's own worker threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Command::Plan(args) => plan(&args),
        Command::Serve(args) => {
            let args = *args;
            let overrides = Overrides {
                listen: args.listen,
                listen_unix: args.listen_unix,
                upstream: args.upstream,
                log_level: args.log_level,
                ddl: args.ddl,
                ddl_autopilot: args.ddl_autopilot,
                ddl_contract_after_secs: args.ddl_contract_after_secs,
                workers: args.workers,
                max_client_connections: args.max_client_connections,
                max_message_size: args.max_message_size,
                connect_timeout_ms: args.connect_timeout_ms,
                idle_timeout_secs: args.idle_timeout_secs,
                idle_in_transaction_timeout_secs: args.idle_in_transaction_timeout_secs,
                max_user_connections: args.max_user_connections,
                max_db_connections: args.max_db_connections,
                reserved_connections: args.reserved_connections,
                reserved_roles: args.reserved_roles.clone(),
                shutdown_grace_secs: args.shutdown_grace_secs,
                database: args.database,
                control_user: args.control_user,
                control_password: args.control_password,
                control_password_file: args.control_password_file,
                admin: args.admin,
                admin_token: args.admin_token,
                admin_token_file: args.admin_token_file,
                admin_read_token: args.admin_read_token,
                admin_read_token_file: args.admin_read_token_file,
                admin_tls: args.admin_tls,
                tls_cert: args.tls_cert,
                tls_key: args.tls_key,
                client_tls: args.client_tls,
                upstream_tls: args.upstream_tls,
                upstream_ca: args.upstream_ca,
            };
            let config = Config::load(args.config.as_deref(), &overrides)?;
            telemetry::init(&config.log_level);
            runtime.block_on(async move {
                let listen = config.listen;
                // Every proxy follows the migration state in the database
                // (migrations may be added at run time through the admin
                // port); a config file's migrations are re-read on SIGHUP.
                let rules = start_rules(&config).await;
                log_rules(&config.migrations, rules.epoch());
                let lifecycle = Arc::new(OnceLock::new());
                let carrier: pgshift::sql_plan::migrate::CarrierSlot = Arc::default();
                let (reloaded, reloads) = tokio::sync::watch::channel(None);
                tokio::spawn(run_lifecycle(
                    config.clone(),
                    Arc::clone(&rules),
                    Arc::clone(&lifecycle),
                    Arc::clone(&carrier),
                    reloads,
                ));
                if let Some(path) = args.config {
                    tokio::spawn(reload_on_sighup(
                        path,
                        overrides,
                        Arc::clone(&rules),
                        lifecycle,
                        reloaded,
                    ));
                }
                let rewriter: Arc<dyn StatementRewriter> = Arc::new(
                    MigrationRewriter::new(rules)
                        .with_ddl(config.ddl)
                        .with_carrier(carrier),
                );
                let proxy = Proxy::bind(config, rewriter)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                proxy.run(telemetry::shutdown_signal()).await;
                Ok(())
            })
        }
        Command::Apply(args) => {
            let apply = pgshift::apply::Apply {
                path: args.path,
                database_url: args.database_url,
                target: admin_client::Target {
                    ca: args.target.admin_ca,
                    admin: args.target.admin,
                    token: args.target.token,
                    json: args.target.json,
                },
            };
            if runtime.block_on(pgshift::apply::apply(&apply))? == pgshift::apply::Outcome::Refused
            {
                std::process::exit(2);
            }
            Ok(())
        }
        Command::Status(args) => runtime.block_on(admin_client::status(&admin_client::Target {
            ca: args.admin_ca,
            admin: args.admin,
            token: args.token,
            json: args.json,
        })),
        Command::Migrate(args) if args.action == "autopilot" => {
            let target = admin_client::Target {
                ca: args.target.admin_ca,
                admin: args.target.admin,
                token: args.target.token,
                json: args.target.json,
            };
            let mut body = serde_json::json!({ "mode": args.mode.as_deref().unwrap_or("") });
            if let Some(secs) = args.contract_after_secs {
                body["contract_after_secs"] = secs.into();
            }
            // Checked here as the admin port checks it.
            let settings: pgshift::api::Autopilot = serde_json::from_value(body)
                .map_err(|e| anyhow::anyhow!("autopilot: {e} (--mode off, to-switch or full)"))?;
            runtime.block_on(admin_client::autopilot(&target, &args.id, &settings))
        }
        Command::Migrate(args) => {
            let mut body = serde_json::Map::new();
            if let Some(to) = args.to {
                body.insert("to".into(), to.into());
            }
            for (key, value) in [
                ("batch_size", args.batch_size),
                ("batch_pause_ms", args.batch_pause_ms),
                ("batch_timeout_ms", args.batch_timeout_ms),
                ("workers", args.workers),
                ("one_pass_ms", args.one_pass_ms),
                ("range_rows", args.range_rows),
                ("pause_ms", args.pause_ms),
                ("window_secs", args.window_secs),
            ] {
                if let Some(v) = value {
                    body.insert(key.into(), v.into());
                }
            }
            for (key, on) in [
                ("fix", args.fix),
                ("force", args.force),
                (
                    "drop_exclusion_constraints",
                    args.drop_exclusion_constraints,
                ),
            ] {
                if on {
                    body.insert(key.into(), true.into());
                }
            }
            let target = admin_client::Target {
                ca: args.target.admin_ca,
                admin: args.target.admin,
                token: args.target.token,
                json: args.target.json,
            };
            // Checked here as the admin port checks it: a misspelt action or
            // option is named before anything is sent.
            let action =
                pgshift::api::Action::parse(&args.action, &serde_json::Value::Object(body))?;
            runtime.block_on(admin_client::migrate(&target, &action, &args.id))
        }
        Command::Demo(args) => {
            telemetry::init("warn,pgshift=info,pgshift::lifecycle=warn");
            runtime.block_on(demo::run(DemoOptions {
                listen: args.listen,
                scale: args.scale,
                clients: args.clients,
                duration_secs: args.duration,
                no_wait: args.no_wait,
                keep: args.keep,
                faults: args.faults,
            }))
        }
    }
}

/// `pgshift plan`: prints the plan; exits 2 when a statement is refused.
fn plan(args: &PlanArgs) -> Result<()> {
    use pgshift::sql_plan;
    let mut steps = Vec::new();
    let files = sql_plan::files(&args.path)
        .with_context(|| format!("cannot read {}", args.path.display()))?;
    for file in files {
        let sql = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        steps.extend(sql_plan::plan_text(&file.display().to_string(), &sql));
    }
    if let Some(url) = &args.database_url {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(pgshift::plan_db::complete(url, &mut steps))?;
    }
    match args.format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&steps)?),
        "text" => print!("{}", sql_plan::render(&steps)),
        other => anyhow::bail!("--format {other:?}: text or json"),
    }
    if steps
        .iter()
        .any(|s| s.decision.verdict == sql_plan::Verdict::Refuse)
    {
        std::process::exit(2);
    }
    Ok(())
}
