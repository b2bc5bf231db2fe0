//! pgshift's configuration: the TOML file, the command-line flags and their
//! `PGSHIFT_*` environment variables, merged into one validated [`Config`].
//!
//! Precedence, highest first: flag, environment variable, file, default.
//! `config/pgshift.example.toml` documents every key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::proxy::tls::{ClientTls, TlsFiles};
use crate::proxy::upstream::{UpstreamTls, UpstreamTlsConfig};
use crate::rewrite::migration::Phase;
use crate::rewrite::rules::ActiveMigration;

/// Default client listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6432";
/// Default upstream Postgres.
pub const DEFAULT_UPSTREAM: &str = "127.0.0.1:5432";

/// The resolved configuration the proxy runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// A directory where pgshift also listens on a unix socket,
    /// `.s.PGSQL.{listen port}` as libpq names it (`None`: TCP only).
    pub listen_unix: Option<PathBuf>,
    /// The Postgres server every session is relayed to.
    pub upstream: Upstream,
    /// Default `tracing` filter when `RUST_LOG` is not set.
    pub log_level: String,
    /// What the DDL gate does with DDL sent through pgshift (`ddl`:
    /// `pass`, `warn`, `guard`, `migrate`; default `warn`).
    pub ddl: crate::sql_plan::gate::DdlMode,
    /// The autopilot of the migrations `ddl = migrate` makes
    /// (`ddl_autopilot`: `off`, `to-switch`, `full` (default);
    /// `ddl_contract_after_secs`, default 600).
    pub ddl_autopilot: crate::api::Autopilot,
    /// The gate's mode per role (`[ddl_roles]`, `role = "mode"`), in
    /// place of `ddl` for that role's sessions.
    pub ddl_roles: std::collections::BTreeMap<String, crate::sql_plan::gate::DdlMode>,
    /// Session worker threads (one event loop each).
    pub workers: usize,
    pub limits: Limits,
    /// pgshift's own connection to the upstream.
    pub control: Control,
    /// The configured migrations and their phases.
    pub migrations: Vec<ActiveMigration>,
    /// Ids of the migrations whose `phase` the file sets explicitly: an
    /// operator override of the stored phase.
    pub phase_overrides: Vec<String>,
    /// Where the admin HTTP port listens (`None`: no admin port).
    pub admin: Option<SocketAddr>,
    /// Bearer token the admin port requires (mandatory off loopback): it
    /// may act.
    pub admin_token: Option<String>,
    /// A second token that may only read (GET).
    pub admin_read_token: Option<String>,
    /// The certificate and key pgshift presents to clients.
    pub tls: Option<TlsFiles>,
    /// What pgshift asks of clients: `allow` TLS by default with a
    /// certificate, `disable` without one.
    pub client_tls: ClientTls,
    /// TLS toward the upstream (sessions, cancels, control connections).
    pub upstream_tls: UpstreamTlsConfig,
    /// The admin port speaks HTTPS (with `tls`'s files): the default when
    /// a certificate is configured.
    pub admin_tls: bool,
}

/// The database the migrations are in, and the role pgshift connects as to
/// read its catalog. Client sessions to other databases are relayed without
/// rewriting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    pub database: String,
    pub user: String,
    pub password: Option<String>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            database: "postgres".into(),
            user: "postgres".into(),
            password: None,
        }
    }
}

/// `host:port` of the upstream Postgres. A host that starts with `/` is a
/// directory holding the server's unix socket, as libpq's `host=/path`:
/// the socket is `{host}/.s.PGSQL.{port}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub host: String,
    pub port: u16,
}

impl Upstream {
    /// The unix socket file to connect to, when the host is a directory.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.host
            .starts_with('/')
            .then(|| socket_file(Path::new(&self.host), self.port))
    }
}

/// libpq's name of the socket for `port` in `dir`: `.s.PGSQL.{port}`.
pub fn socket_file(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') && !self.host.starts_with('/') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for Upstream {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = || ConfigError::Invalid {
            key: "upstream",
            value: s.to_string(),
            reason: "expected HOST:PORT, or a socket directory /PATH[:PORT]".into(),
        };
        if s.starts_with('/') {
            return Ok(socket_directory(s));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        let port = port.parse().map_err(|_| bad())?;
        Ok(Upstream {
            host: host.to_string(),
            port,
        })
    }
}

/// `listen_unix`: an absolute directory, or `off`/empty for none.
fn listen_unix(value: Option<String>) -> Result<Option<PathBuf>, ConfigError> {
    match value.as_deref() {
        None | Some("" | "off") => Ok(None),
        Some(dir) if dir.starts_with('/') => Ok(Some(PathBuf::from(dir))),
        Some(other) => Err(ConfigError::Invalid {
            key: "listen_unix",
            value: other.to_string(),
            reason: "expected an absolute directory such as /var/run/pgshift, or off".into(),
        }),
    }
}

/// `/dir` or `/dir:PORT` (port 5432 when absent, as libpq).
fn socket_directory(s: &str) -> Upstream {
    let (host, port) = match s.rsplit_once(':') {
        Some((dir, port)) => match port.parse() {
            Ok(port) => (dir, port),
            Err(_) => (s, 5432),
        },
        None => (s, 5432),
    };
    let host = match host.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    };
    Upstream {
        host: host.to_string(),
        port,
    }
}

/// Resource limits and timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Client sessions served at once; more are refused with SQLSTATE 53300.
    pub max_client_connections: usize,
    /// Of `max_client_connections`, the last this many are kept for
    /// `reserved_roles` (an operator can get in while applications, or
    /// clients that never authenticate, hold every other slot).
    pub reserved_connections: usize,
    /// The roles that may take a reserved connection (by the user name a
    /// client gives at startup; one that lies holds the slot only until
    /// its authentication fails). Empty: the control role.
    pub reserved_roles: Vec<String>,
    /// Sessions per user (0: no limit beyond the total), counted once
    /// authenticated.
    pub max_user_connections: usize,
    /// Sessions per database (0: no limit beyond the total).
    pub max_db_connections: usize,
    /// Largest protocol message accepted from either side, in bytes.
    pub max_message_size: usize,
    /// Time allowed to open the TCP connection to the upstream.
    pub connect_timeout: Duration,
    /// Time a new client has to send its startup packet.
    pub startup_timeout: Duration,
    /// A session in which no byte moved either way for this long is closed
    /// (SQLSTATE 57P05). `None`: never.
    pub idle_timeout: Option<Duration>,
    /// A session idle inside a transaction (nothing in flight, the last
    /// ReadyForQuery said `T` or `E`) for this long is closed (SQLSTATE
    /// 25P03): its locks and snapshot go with it. `None`: never.
    pub idle_in_transaction_timeout: Option<Duration>,
    /// On SIGINT/SIGTERM, how long sessions get to finish their transaction.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_client_connections: 1000,
            max_user_connections: 0,
            max_db_connections: 0,
            reserved_connections: 0,
            reserved_roles: Vec::new(),
            max_message_size: 64 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            startup_timeout: Duration::from_secs(10),
            idle_timeout: None,
            idle_in_transaction_timeout: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            listen_unix: None,
            upstream: Upstream {
                host: "127.0.0.1".into(),
                port: 5432,
            },
            log_level: "info".into(),
            ddl: Default::default(),
            ddl_autopilot: default_ddl_autopilot(),
            ddl_roles: Default::default(),
            workers: default_workers(),
            limits: Limits::default(),
            control: Control::default(),
            migrations: Vec::new(),
            phase_overrides: Vec::new(),
            admin: Some(SocketAddr::from(([127, 0, 0, 1], 9432))),
            admin_token: None,
            admin_read_token: None,
            tls: None,
            client_tls: ClientTls::Disable,
            upstream_tls: UpstreamTlsConfig::default(),
            admin_tls: false,
        }
    }
}

/// One worker per available core.
pub fn default_workers() -> usize {
    // Half the cores: pgshift shares the machine with its clients and
    // often with Postgres, and a relay's cost is mostly the kernel's
    // network path; on two cores one worker spends 16–20 % less CPU per
    // transaction than two at the same TPS (docs/benchmarks.md).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).max(1)
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("invalid {key} {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// The file's shape; every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    listen_unix: Option<String>,
    upstream: Option<String>,
    log_level: Option<String>,
    ddl: Option<String>,
    ddl_autopilot: Option<String>,
    ddl_contract_after_secs: Option<u64>,
    #[serde(default)]
    ddl_roles: std::collections::BTreeMap<String, String>,
    workers: Option<usize>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    control: FileControl,
    #[serde(default)]
    tls: FileTls,
    admin: Option<String>,
    admin_token: Option<String>,
    admin_token_file: Option<String>,
    admin_read_token: Option<String>,
    admin_read_token_file: Option<String>,
    #[serde(default)]
    migrations: Vec<FileMigration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: Option<String>,
    key: Option<String>,
    client_tls: Option<String>,
    upstream_tls: Option<String>,
    upstream_ca: Option<String>,
    admin: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileControl {
    database: Option<String>,
    user: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
}

/// One `[[migrations]]` entry: the keys of `POST /migrations`, and
/// `phase`, an operator override of the stored phase (the physical state
/// must then match it; a new migration starts `planned`).
#[derive(Debug, Deserialize)]
#[serde(try_from = "toml::Table")]
struct FileMigration {
    migration: crate::api::NewMigration,
    phase: Option<String>,
}

impl TryFrom<toml::Table> for FileMigration {
    type Error = String;

    fn try_from(mut table: toml::Table) -> Result<Self, String> {
        let phase = match table.remove("phase") {
            None => None,
            Some(toml::Value::String(p)) => Some(p),
            Some(other) => {
                return Err(format!(
                    "phase: expected a string, found {}",
                    other.type_str()
                ))
            }
        };
        let migration = crate::api::NewMigration::deserialize(toml::Value::Table(table))
            .map_err(|e| e.to_string())?;
        Ok(FileMigration { migration, phase })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_client_connections: Option<usize>,
    max_user_connections: Option<usize>,
    max_db_connections: Option<usize>,
    reserved_connections: Option<usize>,
    reserved_roles: Option<Vec<String>>,
    max_message_size: Option<usize>,
    connect_timeout_ms: Option<u64>,
    startup_timeout_ms: Option<u64>,
    idle_timeout_secs: Option<u64>,
    idle_in_transaction_timeout_secs: Option<u64>,
    shutdown_grace_secs: Option<u64>,
}

/// Values given on the command line or in the environment; each one that is
/// set wins over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub listen_unix: Option<String>,
    pub upstream: Option<String>,
    pub log_level: Option<String>,
    pub ddl: Option<String>,
    pub ddl_autopilot: Option<String>,
    pub ddl_contract_after_secs: Option<u64>,
    pub workers: Option<usize>,
    pub max_client_connections: Option<usize>,
    pub max_message_size: Option<usize>,
    pub connect_timeout_ms: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub idle_in_transaction_timeout_secs: Option<u64>,
    pub max_user_connections: Option<usize>,
    pub max_db_connections: Option<usize>,
    pub reserved_connections: Option<usize>,
    pub reserved_roles: Option<Vec<String>>,
    pub shutdown_grace_secs: Option<u64>,
    pub database: Option<String>,
    pub control_user: Option<String>,
    pub control_password: Option<String>,
    pub control_password_file: Option<String>,
    pub admin: Option<String>,
    pub admin_token: Option<String>,
    pub admin_token_file: Option<String>,
    pub admin_read_token: Option<String>,
    pub admin_read_token_file: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub client_tls: Option<String>,
    pub upstream_tls: Option<String>,
    pub admin_tls: Option<bool>,
    pub upstream_ca: Option<String>,
}

/// The DDL gate's mode as configured (`warn` when not given).
fn ddl_mode(text: Option<String>) -> Result<crate::sql_plan::gate::DdlMode, ConfigError> {
    let Some(text) = text else {
        return Ok(Default::default());
    };
    crate::sql_plan::gate::DdlMode::parse(&text).ok_or_else(|| ConfigError::Invalid {
        key: "ddl",
        value: text,
        reason: "expected pass, warn, guard or migrate".into(),
    })
}

/// `[ddl_roles]`: each role's mode, checked.
fn ddl_roles(
    file: &std::collections::BTreeMap<String, String>,
) -> Result<std::collections::BTreeMap<String, crate::sql_plan::gate::DdlMode>, ConfigError> {
    file.iter()
        .map(|(role, mode)| {
            let parsed = ddl_mode(Some(mode.clone()))?;
            Ok((role.clone(), parsed))
        })
        .collect()
}

fn default_ddl_autopilot() -> crate::api::Autopilot {
    crate::api::Autopilot {
        mode: crate::api::AutopilotMode::Full,
        ..Default::default()
    }
}

/// The autopilot of migrations made by `ddl = migrate`.
fn ddl_autopilot(
    mode: Option<String>,
    contract_after_secs: Option<u64>,
) -> Result<crate::api::Autopilot, ConfigError> {
    let mut autopilot = default_ddl_autopilot();
    if let Some(text) = mode {
        autopilot.mode =
            serde_json::from_value(serde_json::Value::String(text.clone())).map_err(|_| {
                ConfigError::Invalid {
                    key: "ddl_autopilot",
                    value: text,
                    reason: "expected off, to-switch or full".into(),
                }
            })?;
    }
    if let Some(secs) = contract_after_secs {
        autopilot.contract_after_secs = secs;
    }
    Ok(autopilot)
}

/// A secret (a token, a password) given as itself or as a file holding it
/// (its trailing newline dropped); never both, never empty.
fn token(
    key: &'static str,
    value: Option<String>,
    file: Option<String>,
) -> Result<Option<String>, ConfigError> {
    let invalid = |value: &str, reason: &str| ConfigError::Invalid {
        key,
        value: value.to_string(),
        reason: reason.to_string(),
    };
    let token = match (value, file) {
        (Some(_), Some(path)) => {
            return Err(invalid(
                &path,
                "give the token or a file holding it, not both",
            ))
        }
        (Some(value), None) => value,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|e| invalid(&path, &format!("cannot read the token file: {e}")))?
            .trim_end_matches(['\r', '\n'])
            .to_string(),
        (None, None) => return Ok(None),
    };
    if token.trim().is_empty() {
        let reason = if key.starts_with("admin") {
            "the token is empty: an empty token would let requests without one in; set a long random one, or leave it unset (loopback only)"
        } else {
            "it is empty"
        };
        return Err(invalid("", reason));
    }
    Ok(Some(token))
}

/// `upstream_tls` (libpq's sslmode words; default `prefer`) and its CA.
fn upstream_tls(o: &Overrides, file: &FileTls) -> Result<UpstreamTlsConfig, ConfigError> {
    let mode = match o.upstream_tls.clone().or(file.upstream_tls.clone()) {
        None => UpstreamTls::Prefer,
        Some(text) => UpstreamTls::parse(&text).ok_or_else(|| ConfigError::Invalid {
            key: "upstream_tls",
            value: text.clone(),
            reason: "expected disable, prefer, require, verify-ca or verify-full".into(),
        })?,
    };
    let ca = o
        .upstream_ca
        .clone()
        .or(file.upstream_ca.clone())
        .map(Into::into);
    let config = UpstreamTlsConfig { mode, ca };
    // A CA file that cannot be read is an error now, not at the first session.
    if matches!(mode, UpstreamTls::VerifyCa | UpstreamTls::VerifyFull) || config.ca.is_some() {
        config.setup().map_err(|reason| ConfigError::Invalid {
            key: "upstream_ca",
            value: config
                .ca
                .as_ref()
                .map(|p: &std::path::PathBuf| p.display().to_string())
                .unwrap_or_default(),
            reason,
        })?;
    }
    Ok(config)
}

/// The client-side TLS settings: both files or neither; `client_tls`
/// defaults to `allow` with a certificate and needs one unless `disable`.
fn client_tls(o: &Overrides, file: FileTls) -> Result<(Option<TlsFiles>, ClientTls), ConfigError> {
    let cert = o.tls_cert.clone().or(file.cert);
    let key = o.tls_key.clone().or(file.key);
    let files = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.into(),
            key: key.into(),
        }),
        (None, None) => None,
        (Some(one), None) | (None, Some(one)) => {
            return Err(ConfigError::Invalid {
                key: "tls",
                value: one,
                reason: "TLS needs both a certificate (tls.cert, --tls-cert) and its key (tls.key, --tls-key)".into(),
            })
        }
    };
    let mode = match o.client_tls.clone().or(file.client_tls) {
        None if files.is_some() => ClientTls::Allow,
        None => ClientTls::Disable,
        Some(text) => ClientTls::parse(&text).ok_or_else(|| ConfigError::Invalid {
            key: "client_tls",
            value: text.clone(),
            reason: "expected disable, allow or require".into(),
        })?,
    };
    if mode != ClientTls::Disable && files.is_none() {
        return Err(ConfigError::Invalid {
            key: "client_tls",
            value: format!("{mode:?}").to_lowercase(),
            reason: "offering TLS needs a certificate and key (tls.cert and tls.key, --tls-cert and --tls-key)".into(),
        });
    }
    Ok((files, mode))
}

impl Config {
    /// Reads `path` (if given), applies `overrides`, and validates the result.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Self::parse_file(&text, &path.display().to_string())?
            }
            None => FileConfig::default(),
        };
        Self::resolve(file, overrides)
    }

    /// Parses TOML text; every key not given keeps its default.
    ///
    /// ```
    /// use pgshift::config::{Config, Overrides};
    ///
    /// let text = "upstream = \"db.internal:5433\"\n[limits]\nmax_client_connections = 50\n";
    /// let flags = Overrides { listen: Some("0.0.0.0:7432".into()), ..Overrides::default() };
    /// let config = Config::from_toml(text, &flags).unwrap();
    /// assert_eq!(config.upstream.to_string(), "db.internal:5433");
    /// assert_eq!(config.listen.port(), 7432); // the flag wins over the file
    /// assert_eq!(config.limits.max_client_connections, 50);
    /// ```
    pub fn from_toml(text: &str, overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::resolve(Self::parse_file(text, "<inline>")?, overrides)
    }

    fn parse_file(text: &str, path: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })
    }

    fn resolve(file: FileConfig, o: &Overrides) -> Result<Config, ConfigError> {
        let defaults = Limits::default();
        let listen_text = o
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen_text.parse().map_err(|e| ConfigError::Invalid {
            key: "listen",
            value: listen_text.clone(),
            reason: format!("{e} (expected IP:PORT)"),
        })?;
        let upstream = o
            .upstream
            .clone()
            .or(file.upstream)
            .unwrap_or_else(|| DEFAULT_UPSTREAM.to_string())
            .parse()?;
        let fl = file.limits;
        let limits = Limits {
            max_client_connections: o
                .max_client_connections
                .or(fl.max_client_connections)
                .unwrap_or(defaults.max_client_connections),
            max_user_connections: o
                .max_user_connections
                .or(fl.max_user_connections)
                .unwrap_or(defaults.max_user_connections),
            max_db_connections: o
                .max_db_connections
                .or(fl.max_db_connections)
                .unwrap_or(defaults.max_db_connections),
            reserved_connections: o
                .reserved_connections
                .or(fl.reserved_connections)
                .unwrap_or(defaults.reserved_connections),
            reserved_roles: o
                .reserved_roles
                .clone()
                .or(fl.reserved_roles)
                .unwrap_or_default(),
            max_message_size: o
                .max_message_size
                .or(fl.max_message_size)
                .unwrap_or(defaults.max_message_size),
            connect_timeout: o
                .connect_timeout_ms
                .or(fl.connect_timeout_ms)
                .map(Duration::from_millis)
                .unwrap_or(defaults.connect_timeout),
            startup_timeout: fl
                .startup_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(defaults.startup_timeout),
            idle_timeout: match o.idle_timeout_secs.or(fl.idle_timeout_secs) {
                None | Some(0) => None,
                Some(s) => Some(Duration::from_secs(s)),
            },
            idle_in_transaction_timeout: match o
                .idle_in_transaction_timeout_secs
                .or(fl.idle_in_transaction_timeout_secs)
            {
                None | Some(0) => None,
                Some(s) => Some(Duration::from_secs(s)),
            },
            shutdown_grace: o
                .shutdown_grace_secs
                .or(fl.shutdown_grace_secs)
                .map(Duration::from_secs)
                .unwrap_or(defaults.shutdown_grace),
        };
        if limits.reserved_connections > 0
            && limits.reserved_connections >= limits.max_client_connections
        {
            return Err(ConfigError::Invalid {
                key: "limits.reserved_connections",
                value: limits.reserved_connections.to_string(),
                reason: format!(
                    "must be below max_client_connections ({})",
                    limits.max_client_connections
                ),
            });
        }
        if limits.max_client_connections == 0 {
            return Err(ConfigError::Invalid {
                key: "limits.max_client_connections",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        if limits.max_message_size < 1024 || limits.max_message_size > (i32::MAX as usize) {
            return Err(ConfigError::Invalid {
                key: "limits.max_message_size",
                value: limits.max_message_size.to_string(),
                reason: "must be between 1024 and 2147483647 bytes".into(),
            });
        }
        let phase_overrides: Vec<String> = file
            .migrations
            .iter()
            .filter(|m| m.phase.is_some())
            .map(|m| m.migration.id.clone())
            .collect();
        let migrations = resolve_migrations(file.migrations)?;
        let admin = match o.admin.clone().or(file.admin) {
            // The lifecycle is driven from the admin port: on by default.
            None => Config::default().admin,
            Some(text) if text == "off" => None,
            Some(text) => Some(
                text.parse::<SocketAddr>()
                    .map_err(|e| ConfigError::Invalid {
                        key: "admin",
                        value: text.clone(),
                        reason: format!("{e} (expected IP:PORT, or \"off\")"),
                    })?,
            ),
        };
        let admin_token = token(
            "admin_token",
            o.admin_token.clone().or(file.admin_token),
            o.admin_token_file.clone().or(file.admin_token_file),
        )?;
        let admin_read_token = token(
            "admin_read_token",
            o.admin_read_token.clone().or(file.admin_read_token),
            o.admin_read_token_file
                .clone()
                .or(file.admin_read_token_file),
        )?;
        if admin_read_token.is_some() && admin_token.is_none() {
            return Err(ConfigError::Invalid {
                key: "admin_read_token",
                value: String::new(),
                reason: "a read-only token needs an operator token (admin_token) too: without one, every request may act".into(),
            });
        }
        if let Some(addr) = admin {
            if !addr.ip().is_loopback() && admin_token.is_none() {
                return Err(ConfigError::Invalid {
                    key: "admin",
                    value: addr.to_string(),
                    reason: "an admin port off loopback needs admin_token (or PGSHIFT_ADMIN_TOKEN)"
                        .into(),
                });
            }
        }
        let upstream_tls = upstream_tls(o, &file.tls)?;
        let admin_tls_setting = o.admin_tls.or(file.tls.admin);
        let (tls, client_tls) = client_tls(o, file.tls)?;
        let admin_tls = match admin_tls_setting {
            Some(true) if tls.is_none() => {
                return Err(ConfigError::Invalid {
                    key: "tls.admin",
                    value: "true".into(),
                    reason: "HTTPS on the admin port needs a certificate and key (tls.cert and tls.key, --tls-cert and --tls-key)".into(),
                })
            }
            Some(on) => on,
            None => tls.is_some(),
        };
        let default_control = Control::default();
        let fc = file.control;
        if !migrations.is_empty() && o.database.is_none() && fc.database.is_none() {
            return Err(ConfigError::Invalid {
                key: "control.database",
                value: String::new(),
                reason: "migrations need the name of the database their tables are in: set [control] database (or --database, PGSHIFT_DATABASE); sessions to other databases are relayed without rewriting".into(),
            });
        }
        let control = Control {
            database: o
                .database
                .clone()
                .or(fc.database)
                .unwrap_or(default_control.database),
            user: o
                .control_user
                .clone()
                .or(fc.user)
                .unwrap_or(default_control.user),
            password: token(
                "control.password",
                o.control_password.clone().or(fc.password),
                o.control_password_file.clone().or(fc.password_file),
            )?,
        };
        Ok(Config {
            migrations,
            phase_overrides,
            admin,
            admin_token,
            admin_read_token,
            tls,
            client_tls,
            upstream_tls,
            admin_tls,
            control,
            listen_unix: listen_unix(o.listen_unix.clone().or(file.listen_unix))?,
            listen,
            upstream,
            log_level: o
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            ddl: ddl_mode(o.ddl.clone().or(file.ddl))?,
            ddl_roles: ddl_roles(&file.ddl_roles)?,
            ddl_autopilot: ddl_autopilot(
                o.ddl_autopilot.clone().or(file.ddl_autopilot),
                o.ddl_contract_after_secs.or(file.ddl_contract_after_secs),
            )?,
            workers: match o.workers.or(file.workers) {
                None | Some(0) => default_workers(),
                Some(n) => n,
            },
            limits,
        })
    }
}

fn resolve_migrations(entries: Vec<FileMigration>) -> Result<Vec<ActiveMigration>, ConfigError> {
    let mut out: Vec<ActiveMigration> = Vec::new();
    for e in entries {
        let spec = e.migration.spec().map_err(|err| ConfigError::Invalid {
            key: "migrations",
            value: e.migration.id.clone(),
            reason: err.reason,
        })?;
        let phase_text = e.phase.as_deref().unwrap_or("planned");
        let phase = Phase::parse(phase_text).ok_or_else(|| ConfigError::Invalid {
            key: "migrations.phase",
            value: phase_text.to_string(),
            reason: format!(
                "migration {:?}: expected one of {}",
                e.migration.id,
                Phase::ALL.map(Phase::as_str).join(", ")
            ),
        })?;
        for other in &out {
            if other.spec.clashes_with(&spec) {
                return Err(ConfigError::Invalid {
                    key: "migrations",
                    value: spec.id.clone(),
                    reason: format!(
                        "clashes with migration {:?} (same id; a second column migration on the table; a column it moves; the same index or constraint)",
                        other.spec.id
                    ),
                });
            }
        }
        out.push(ActiveMigration { spec, phase });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:6432");
        assert_eq!(c.upstream.to_string(), "127.0.0.1:5432");
    }

    #[test]
    fn flags_override_the_file() {
        let toml = r#"
            listen = "127.0.0.1:7000"
            upstream = "db.internal:5433"
            [limits]
            max_client_connections = 10
            idle_timeout_secs = 60
        "#;
        let c = Config::from_toml(toml, &Overrides::default()).unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.upstream.host, "db.internal");
        assert_eq!(c.upstream.port, 5433);
        assert_eq!(c.limits.max_client_connections, 10);
        assert_eq!(c.limits.idle_timeout, Some(Duration::from_secs(60)));
        let o = Overrides {
            listen: Some("127.0.0.1:7001".into()),
            upstream: Some("[::1]:5999".into()),
            max_client_connections: Some(20),
            idle_timeout_secs: Some(0),
            ..Default::default()
        };
        let c = Config::from_toml(toml, &o).unwrap();
        assert_eq!(c.listen.port(), 7001);
        assert_eq!(c.upstream.host, "::1");
        assert_eq!(c.upstream.to_string(), "[::1]:5999");
        assert_eq!(c.limits.max_client_connections, 20);
        assert_eq!(c.limits.idle_timeout, None);
    }

    #[test]
    fn unix_sockets_as_libpq_names_them() {
        let up: Upstream = "/var/run/postgresql".parse().unwrap();
        assert_eq!((up.host.as_str(), up.port), ("/var/run/postgresql", 5432));
        let path = up.socket_path().unwrap();
        assert_eq!(path, Path::new("/var/run/postgresql/.s.PGSQL.5432"));
        let up: Upstream = "/tmp/pg dir/:5433".parse().unwrap();
        assert_eq!((up.host.as_str(), up.port), ("/tmp/pg dir", 5433));
        assert_eq!(up.to_string().parse::<Upstream>().unwrap(), up);
        assert_eq!(
            "127.0.0.1:5432".parse::<Upstream>().unwrap().socket_path(),
            None
        );

        let toml = "listen = \"127.0.0.1:7000\"\nlisten_unix = \"/run/pgshift\"\n";
        let c = Config::from_toml(toml, &Overrides::default()).unwrap();
        assert_eq!(c.listen_unix.as_deref(), Some(Path::new("/run/pgshift")));
        let off = Overrides {
            listen_unix: Some("off".into()),
            ..Overrides::default()
        };
        assert_eq!(Config::from_toml(toml, &off).unwrap().listen_unix, None);
        let err = Config::from_toml("listen_unix = \"run\"", &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("listen_unix"), "{err}");
    }

    #[test]
    fn an_empty_admin_token_is_refused_and_tokens_come_from_files() {
        for empty in ["", "  "] {
            let o = Overrides {
                admin: Some("0.0.0.0:9432".into()),
                admin_token: Some(empty.into()),
                ..Overrides::default()
            };
            let err = Config::load(None, &o).unwrap_err().to_string();
            assert!(
                err.contains("admin_token") && err.contains("empty"),
                "{err}"
            );
        }
        let dir = std::env::temp_dir().join(format!("pgshift-token-{}", std::process::id()));
        std::fs::write(&dir, "s3cret-from-a-file\n").unwrap();
        let o = Overrides {
            admin_token_file: Some(dir.display().to_string()),
            admin_read_token: Some("reader".into()),
            ..Overrides::default()
        };
        let c = Config::load(None, &o).unwrap();
        assert_eq!(c.admin_token.as_deref(), Some("s3cret-from-a-file"));
        assert_eq!(c.admin_read_token.as_deref(), Some("reader"));
        let o = Overrides {
            admin_read_token: Some("reader".into()),
            ..Overrides::default()
        };
        assert!(
            Config::load(None, &o).is_err(),
            "a read token alone would leave acting open"
        );
        let _ = std::fs::remove_file(dir);
    }

    #[test]
    fn the_admin_port_speaks_https_with_a_certificate_unless_told_not_to() {
        let with_cert = "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"";
        let c = Config::from_toml(with_cert, &Overrides::default()).unwrap();
        assert!(c.admin_tls);
        let off = format!("{with_cert}\nadmin = false");
        assert!(
            !Config::from_toml(&off, &Overrides::default())
                .unwrap()
                .admin_tls
        );
        let c = Config::from_toml("", &Overrides::default()).unwrap();
        assert!(!c.admin_tls);
        let err = Config::from_toml("[tls]\nadmin = true", &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("tls.admin"), "{err}");
        let o = Overrides {
            reserved_connections: Some(1000),
            ..Overrides::default()
        };
        let err = Config::load(None, &o).unwrap_err();
        assert!(err.to_string().contains("reserved_connections"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = Config::from_toml("listen = \"nowhere\"", &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err = Config::from_toml("upstream = \"host\"", &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("HOST:PORT"), "{err}");
        let err = Config::from_toml("lisen = \"x\"", &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
        let err = Config::from_toml("[limits]\nmax_message_size = 10", &Overrides::default())
            .unwrap_err();
        assert!(err.to_string().contains("max_message_size"), "{err}");
    }

    #[test]
    fn migrations_are_read_and_checked() {
        let toml = r#"
            [control]
            database = "app"

            [[migrations]]
            id = "users_full_name"
            table = "public.users"
            from = "name"
            to = "full_name"
            phase = "expanded"

            [[migrations]]
            id = "orders_amount_decimal"
            table = "orders"
            from = "amount"
            to = "amount_decimal"
            type = "numeric(12,2)"
            up = "amount::numeric / 100"
            down = "(amount_decimal * 100)::integer"
        "#;
        let c = Config::from_toml(toml, &Overrides::default()).unwrap();
        assert_eq!(c.migrations.len(), 2);
        assert_eq!(c.control.database, "app");
        let no_database = toml.replace("database = \"app\"", "");
        let err = Config::from_toml(&no_database, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("control.database"), "{err}");
        assert_eq!(c.migrations[0].phase, Phase::Expanded);
        assert_eq!(c.migrations[1].phase, Phase::Planned);
        assert_eq!(
            c.migrations[1].spec.new_type.as_deref(),
            Some("numeric(12,2)")
        );
        let bad_phase = toml.replace("\"expanded\"", "\"halfway\"");
        let err = Config::from_toml(&bad_phase, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("halfway") && err.contains("switched"), "{err}");
        let bad_up = toml.replace("amount::numeric / 100", "price / 100");
        let err = Config::from_toml(&bad_up, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("orders_amount_decimal") && err.contains("may read only the column"),
            "{err}"
        );
        let twice = format!("{toml}\n[[migrations]]\nid = \"again\"\ntable = \"users\"\nfrom = \"full_name\"\nto = \"display_name\"\n");
        let err = Config::from_toml(&twice, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("clashes with migration \"users_full_name\""),
            "{err}"
        );
    }

    #[test]
    fn catalog_operations_are_read_with_their_own_keys() {
        let toml = r#"
            [control]
            database = "app"
            [[migrations]]
            id = "email_idx"
            op = "create_index"
            table = "users"
            definition = "CREATE INDEX users_email_idx ON users (email)"
            [[migrations]]
            id = "status_default"
            op = "set_default"
            table = "users"
            column = "status"
            default = "'active'"
            phase = "expanded"
        "#;
        let c = Config::from_toml(toml, &Overrides::default()).unwrap();
        assert_eq!(c.migrations.len(), 2);
        assert_eq!(c.migrations[0].spec.op(), crate::ops::Op::CreateIndex);
        assert_eq!(c.migrations[1].phase, Phase::Expanded);
        let wrong_key = toml.replace("column = \"status\"", "from = \"status\"");
        let err = Config::from_toml(&wrong_key, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("set_default takes no from"), "{err}");
        let two = toml.replace("ON users (email)", "ON users (email); DROP TABLE users");
        let err = Config::from_toml(&two, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected one statement"), "{err}");
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../config/pgshift.example.toml");
        let c = Config::from_toml(text, &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
    }
}
