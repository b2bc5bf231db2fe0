//! The test harness: one throwaway Postgres for the whole test run (started
//! with the same code as `pgshift demo`), or the server named by
//! `PGSHIFT_TEST_DATABASE_URL`; pgshift instances started in-process in front
//! of it; and a raw protocol client for what drivers do not expose.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use pgshift::cluster::{Cluster, ClusterOptions, SUPERUSER};
use pgshift::config::{Config, Control, Upstream};
use pgshift::proxy::Proxy;
use pgshift::rewrite::catalog::Catalog;
use pgshift::rewrite::{PassThrough, StatementRewriter};
use postgres_protocol::message::frontend as fe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

/// Password roles created in the harness's own cluster.
pub const SCRAM_USER: (&str, &str) = ("pgshift_scram", "scram-secret");
pub const MD5_USER: (&str, &str) = ("pgshift_md5", "md5-secret");
pub const CLEARTEXT_USER: (&str, &str) = ("pgshift_cleartext", "clear-secret");

/// The database every test talks to, through pgshift.
pub struct TestDb {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    /// Present when the harness started the cluster itself.
    pub cluster: Option<Cluster>,
}

impl TestDb {
    pub fn upstream(&self) -> Upstream {
        Upstream {
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// True when the harness owns the cluster (and so its pg_hba.conf and
    /// roles); tests of password methods need that.
    pub fn owns_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// A client connected directly to Postgres, bypassing pgshift.
    pub async fn direct(&self) -> Client {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname);
        if let Some(p) = &self.password {
            config.password(p);
        }
        connect(&config)
            .await
            .expect("direct connection to the test database")
    }
}

impl TestDb {
    /// A client config for database `dbname` of the test server, direct.
    pub fn config_for(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(dbname);
        if let Some(p) = &self.password {
            config.password(p);
        }
        config
    }

    /// A new database of the test's own — its own `pgshift` schema, so
    /// proxies and migration state of concurrent tests do not meet — and a
    /// direct client to it.
    pub async fn fresh_database(&self, prefix: &str) -> (String, Client) {
        let name = unique(prefix);
        self.direct()
            .await
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("creating a database");
        let client = connect(&self.config_for(&name))
            .await
            .expect("connecting to the new database");
        (name, client)
    }
}

static DB: OnceLock<TestDb> = OnceLock::new();

/// The test run's database, started on first use.
pub fn db() -> &'static TestDb {
    DB.get_or_init(|| match std::env::var("PGSHIFT_TEST_DATABASE_URL") {
        Ok(url) => external(&url),
        Err(_) => local(),
    })
}

fn external(url: &str) -> TestDb {
    let config: tokio_postgres::Config = url
        .parse()
        .expect("PGSHIFT_TEST_DATABASE_URL is a postgres URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_string(),
    };
    TestDb {
        host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        user: config.get_user().unwrap_or("postgres").to_string(),
        password: config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned()),
        dbname: config.get_dbname().unwrap_or("postgres").to_string(),
        cluster: None,
    }
}

fn local() -> TestDb {
    let options = ClusterOptions {
        max_connections: 400,
        hba_lines: vec![
            format!("host all {} 127.0.0.1/32 scram-sha-256", SCRAM_USER.0),
            format!("host all {} 127.0.0.1/32 md5", MD5_USER.0),
            format!("host all {} 127.0.0.1/32 password", CLEARTEXT_USER.0),
        ],
        settings: vec![],
    };
    let cluster = Cluster::start(&options).expect("starting the test cluster");
    let roles = format!(
        "SET password_encryption = 'scram-sha-256'; CREATE ROLE {s} LOGIN PASSWORD '{sp}'; \
         CREATE ROLE {c} LOGIN PASSWORD '{cp}'; \
         SET password_encryption = 'md5'; CREATE ROLE {m} LOGIN PASSWORD '{mp}';",
        s = SCRAM_USER.0,
        sp = SCRAM_USER.1,
        c = CLEARTEXT_USER.0,
        cp = CLEARTEXT_USER.1,
        m = MD5_USER.0,
        mp = MD5_USER.1
    );
    cluster
        .psql("postgres", &roles)
        .expect("creating the password roles");
    TestDb {
        host: "127.0.0.1".into(),
        port: cluster.port(),
        user: SUPERUSER.into(),
        password: None,
        dbname: "postgres".into(),
        cluster: Some(cluster),
    }
}

/// Connects with tokio-postgres and drives the connection in a task.
pub async fn connect(config: &tokio_postgres::Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A configuration whose upstream and control connection are the test
/// database (the catalog is read from it).
pub fn control_config() -> Config {
    let db = db();
    Config {
        upstream: db.upstream(),
        control: Control {
            database: db.dbname.clone(),
            user: db.user.clone(),
            password: db.password.clone(),
        },
        ..Config::default()
    }
}

/// [`control_config`] for database `dbname`.
pub fn control_config_for(dbname: &str) -> Config {
    let mut config = control_config();
    config.control.database = dbname.to_string();
    config
}

/// The test database's catalog snapshot, as `pgshift serve` reads it.
pub async fn catalog() -> Catalog {
    pgshift::control::load_catalog(&control_config())
        .await
        .expect("reading the catalog of the test database")
}

/// Integer cents `amount` → `amount_dec numeric(12,2)`.
pub fn cents_to_decimal(id: &str, table: &str) -> pgshift::rewrite::migration::MigrationSpec {
    pgshift::rewrite::migration::MigrationSpec::new(
        id,
        table,
        "amount",
        "amount_dec",
        Some("numeric(12,2)"),
        Some("amount::numeric / 100"),
        Some("(amount_dec * 100)::integer"),
    )
    .unwrap()
}

/// A pgshift running in-process on a free port.
pub struct TestProxy {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestProxy {
    /// pgshift in front of the test database with default limits.
    pub async fn start() -> TestProxy {
        Self::with(|_| {}).await
    }

    /// pgshift with a configuration adjusted by `adjust`.
    pub async fn with(adjust: impl FnOnce(&mut Config)) -> TestProxy {
        Self::with_rewriter(Arc::new(PassThrough), adjust).await
    }

    /// pgshift with its own statement rewriter.
    pub async fn with_rewriter(
        rewriter: Arc<dyn StatementRewriter>,
        adjust: impl FnOnce(&mut Config),
    ) -> TestProxy {
        let mut config = control_config();
        config.listen = "127.0.0.1:0".parse().unwrap();
        adjust(&mut config);
        let proxy = Proxy::bind(config, rewriter)
            .await
            .expect("binding pgshift");
        let addr = proxy.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(proxy.run(async {
            let _ = rx.await;
        }));
        TestProxy {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    /// A client of this proxy connected to database `dbname`.
    pub async fn connect_to(&self, dbname: &str) -> Client {
        let mut config = self.config();
        config.dbname(dbname);
        connect(&config).await.expect("connecting through pgshift")
    }

    /// A tokio-postgres config pointing at this proxy as the test user.
    pub fn config(&self) -> tokio_postgres::Config {
        let db = db();
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.addr.port())
            .user(&db.user)
            .dbname(&db.dbname)
            .connect_timeout(Duration::from_secs(10));
        if let Some(p) = &db.password {
            config.password(p);
        }
        config
    }

    /// A client connected through this proxy.
    pub async fn connect(&self) -> Client {
        connect(&self.config())
            .await
            .expect("connecting through pgshift")
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A unique name for a table or object of one test.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The server's (or pgshift's) message of a tokio-postgres error.
pub fn message_of(err: &tokio_postgres::Error) -> String {
    err.as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_else(|| err.to_string())
}

/// The error of a result that must have failed.
pub fn refused<T>(result: Result<T, tokio_postgres::Error>, what: &str) -> tokio_postgres::Error {
    match result {
        Ok(_) => panic!("expected a failure: {what}"),
        Err(e) => e,
    }
}

/// The SQLSTATE of a tokio-postgres error, if it carries one.
pub fn sqlstate(err: &tokio_postgres::Error) -> Option<String> {
    err.code().map(|c| c.code().to_string())
}

/// A protocol message read by [`RawConn`].
#[derive(Debug, Clone)]
pub struct Message {
    pub tag: u8,
    pub body: Bytes,
}

impl Message {
    /// A field of an ErrorResponse/NoticeResponse (`b'C'`: SQLSTATE).
    pub fn field(&self, kind: u8) -> Option<String> {
        let mut body = &self.body[..];
        while let Some((&k, rest)) = body.split_first() {
            if k == 0 {
                break;
            }
            let end = rest.iter().position(|b| *b == 0)?;
            if k == kind {
                return Some(String::from_utf8_lossy(&rest[..end]).into_owned());
            }
            body = &rest[end + 1..];
        }
        None
    }
}

/// A bare protocol client over a TCP socket.
pub struct RawConn {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        RawConn {
            stream: TcpStream::connect(addr).await.expect("tcp connect"),
            buf: BytesMut::new(),
        }
    }

    /// Connects and completes a trust-auth startup as the test user; returns
    /// the BackendKeyData (pid, key) the client was given.
    pub async fn startup(addr: SocketAddr) -> (RawConn, i32, i32) {
        RawConn::startup_to(addr, &db().dbname).await
    }

    /// [`RawConn::startup`] to database `dbname`.
    pub async fn startup_to(addr: SocketAddr, dbname: &str) -> (RawConn, i32, i32) {
        let mut conn = RawConn::connect(addr).await;
        let db = db();
        conn.send(&startup_message(&[
            ("user", &db.user),
            ("database", dbname),
        ]))
        .await;
        let mut key = (0, 0);
        loop {
            let msg = conn.read().await.expect("startup reply");
            match msg.tag {
                b'K' => {
                    let mut b = msg.body.clone();
                    key = (b.get_i32(), b.get_i32());
                }
                b'Z' => break,
                b'E' => panic!("startup failed: {:?}", msg.field(b'M')),
                _ => {}
            }
        }
        (conn, key.0, key.1)
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("raw write");
    }

    /// Reads one message; `None` when the server closed the connection.
    pub async fn read(&mut self) -> Option<Message> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let frame = self.buf.split_to(len + 1);
                    return Some(Message {
                        tag: frame[0],
                        body: Bytes::copy_from_slice(&frame[5..]),
                    });
                }
            }
            let n =
                tokio::time::timeout(Duration::from_secs(20), self.stream.read_buf(&mut self.buf))
                    .await
                    .expect("raw read timed out")
                    .unwrap_or(0);
            if n == 0 {
                return None;
            }
        }
    }

    /// Reads messages up to and including the next ReadyForQuery.
    pub async fn until_ready(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        loop {
            let msg = self
                .read()
                .await
                .expect("connection closed before ReadyForQuery");
            let done = msg.tag == b'Z';
            out.push(msg);
            if done {
                return out;
            }
        }
    }

    /// Reads until the connection closes; returns everything read.
    pub async fn until_closed(&mut self) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(msg) = self.read().await {
            out.push(msg);
        }
        out
    }
}

/// Encodes a regular message.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Messages a client sends, encoded by `postgres-protocol` (the encoder
/// tokio-postgres uses); `message` stays for the malformed ones.
fn encoded(write: impl FnOnce(&mut BytesMut) -> std::io::Result<()>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    write(&mut buf).expect("encodable");
    buf.to_vec()
}

/// A simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    encoded(|b| fe::query(sql, b))
}

/// A protocol-3.0 StartupMessage.
pub fn startup_message(params: &[(&str, &str)]) -> Vec<u8> {
    encoded(|b| fe::startup_message(params.iter().copied(), b))
}

/// Parse of statement `name` (no parameter types).
pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    encoded(|b| fe::parse(name, sql, std::iter::empty(), b))
}

/// Bind of statement `statement` to the unnamed portal, no parameters,
/// text results.
pub fn bind(statement: &str) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let none: [Option<&[u8]>; 0] = [];
    let bound = fe::bind(
        "",
        statement,
        std::iter::empty::<i16>(),
        none,
        |_,
         _: &mut BytesMut|
         -> Result<postgres_protocol::IsNull, Box<dyn std::error::Error + Sync + Send>> {
            Ok(postgres_protocol::IsNull::Yes)
        },
        std::iter::empty::<i16>(),
        &mut buf,
    );
    assert!(bound.is_ok(), "bind encodes");
    buf.to_vec()
}

/// Execute of the unnamed portal, all rows.
pub fn execute() -> Vec<u8> {
    encoded(|b| fe::execute("", 0, b))
}

/// Describe of statement `name`.
pub fn describe_statement(name: &str) -> Vec<u8> {
    encoded(|b| fe::describe(b'S', name, b))
}

/// Close of statement `name`.
pub fn close_statement(name: &str) -> Vec<u8> {
    encoded(|b| fe::close(b'S', name, b))
}

pub fn sync() -> Vec<u8> {
    let mut b = BytesMut::new();
    fe::sync(&mut b);
    b.to_vec()
}

pub fn flush() -> Vec<u8> {
    let mut b = BytesMut::new();
    fe::flush(&mut b);
    b.to_vec()
}

pub fn terminate() -> Vec<u8> {
    let mut b = BytesMut::new();
    fe::terminate(&mut b);
    b.to_vec()
}

/// The first column of the first DataRow among `messages`, as text.
pub fn first_value(messages: &[Message]) -> Option<String> {
    let row = messages.iter().find(|m| m.tag == b'D')?;
    let mut b = row.body.clone();
    let _columns = b.get_i16();
    let len = b.get_i32();
    if len < 0 {
        return None;
    }
    Some(String::from_utf8_lossy(&b[..len as usize]).into_owned())
}

/// A proxy with the lifecycle driver and its admin port, in-process.
pub struct Driven {
    pub proxy: TestProxy,
    /// The admin port's `host:port`.
    pub admin: String,
    server: JoinHandle<()>,
}

impl Drop for Driven {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// pgshift in front of database `dbname` with `specs` registered
/// (planned), its lifecycle driver and admin port running.
pub async fn driven_all(
    specs: Vec<pgshift::rewrite::migration::MigrationSpec>,
    dbname: &str,
) -> Driven {
    driven_with_tokens(specs, dbname, Default::default()).await
}

/// [`driven_all`] with an admin port that needs these tokens.
pub async fn driven_with_tokens(
    specs: Vec<pgshift::rewrite::migration::MigrationSpec>,
    dbname: &str,
    tokens: pgshift::admin::Tokens,
) -> Driven {
    driven_with(specs, dbname, tokens, |_| {}).await
}

/// [`driven_with`] whose proxy runs the DDL gate in `migrate`: a DDL
/// statement with a migration for it is carried out by the lifecycle,
/// given `autopilot`.
pub async fn driven_migrating(dbname: &str, autopilot: pgshift::api::Autopilot) -> Driven {
    driven_gate(dbname, autopilot, pgshift::sql_plan::gate::DdlMode::Migrate).await
}

/// [`driven_migrating`] with the proxy's configured gate in `mode` (a
/// session may still ask for `migrate`).
pub async fn driven_gate(
    dbname: &str,
    autopilot: pgshift::api::Autopilot,
    mode: pgshift::sql_plan::gate::DdlMode,
) -> Driven {
    let config = control_config_for(dbname);
    let (rules, lifecycle, listener, admin) = lifecycle_and_admin(&config).await;
    let carrier: pgshift::sql_plan::migrate::CarrierSlot = Arc::default();
    let _ = carrier.set(Arc::new(pgshift::lifecycle::carry::GateCarrier {
        lifecycle: Arc::clone(&lifecycle),
        autopilot,
    }));
    let rewriter = pgshift::rewrite::engine::MigrationRewriter::new(rules)
        .with_ddl(mode)
        .with_carrier(carrier);
    let server = tokio::spawn(pgshift::admin::serve(
        listener,
        lifecycle,
        Default::default(),
    ));
    let control = config.control.clone();
    let proxy = TestProxy::with_rewriter(Arc::new(rewriter), move |c| {
        c.control = control;
        c.ddl = mode;
    })
    .await;
    Driven {
        proxy,
        admin,
        server,
    }
}

/// The rules, the lifecycle started over `config`, and an admin port's
/// listener on a free loopback port with its `host:port`.
async fn lifecycle_and_admin(
    config: &Config,
) -> (
    Arc<pgshift::rewrite::rules::RulesCell>,
    Arc<pgshift::lifecycle::Lifecycle>,
    tokio::net::TcpListener,
    String,
) {
    let rules = Arc::new(pgshift::rewrite::rules::RulesCell::new(&config.migrations));
    let lifecycle = pgshift::lifecycle::Lifecycle::start(config.clone(), Arc::clone(&rules))
        .await
        .expect("the lifecycle starts");
    let listener = pgshift::admin::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let admin = listener.local_addr().unwrap().to_string();
    (rules, lifecycle, listener, admin)
}

/// [`driven_with_tokens`] with the control settings adjusted (its role).
pub async fn driven_with(
    specs: Vec<pgshift::rewrite::migration::MigrationSpec>,
    dbname: &str,
    tokens: pgshift::admin::Tokens,
    adjust: impl FnOnce(&mut Config),
) -> Driven {
    use pgshift::rewrite::migration::Phase;
    use pgshift::rewrite::rules::ActiveMigration;
    let mut config = control_config_for(dbname);
    adjust(&mut config);
    config.migrations = specs
        .into_iter()
        .map(|spec| ActiveMigration {
            spec,
            phase: Phase::Planned,
        })
        .collect();
    let (rules, lifecycle, listener, admin) = lifecycle_and_admin(&config).await;
    let server = tokio::spawn(pgshift::admin::serve(listener, lifecycle, tokens));
    let control = config.control.clone();
    let rewriter = pgshift::rewrite::engine::MigrationRewriter::new(rules);
    let proxy = TestProxy::with_rewriter(Arc::new(rewriter), move |c| c.control = control).await;
    Driven {
        proxy,
        admin,
        server,
    }
}

/// `POST path` with `body` on the admin port at `admin`: (status, answer).
pub async fn admin_post(
    admin: &str,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    pgshift::admin::request(admin, "POST", path, Some(&body), None)
        .await
        .unwrap()
}

/// Every migration's (id, phase) on the admin port at `admin`.
pub async fn phases(admin: &str) -> Vec<(String, String)> {
    let (_, status) = pgshift::admin::request(admin, "GET", "/status", None, None)
        .await
        .unwrap();
    status["migrations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let s = |k: &str| m[k].as_str().unwrap_or("").to_string();
            (s("id"), s("phase"))
        })
        .collect()
}

/// Waits (at most `secs`) until the admin port at `admin` has `count`
/// migrations, all complete (the autopilot's work).
pub async fn all_complete(admin: &str, count: usize, secs: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let now = phases(admin).await;
        if now.len() == count && now.iter().all(|(_, p)| p == "complete") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not complete: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The first column of every row `sql` answers, as text.
pub async fn strings(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Vec<String> {
    let rows = client.query(sql, params).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// Posts `action` for migration `id` and checks it is taken (200, or 202
/// for a backfill) and answers `phase`.
pub async fn step_to(admin: &str, id: &str, action: &str, body: serde_json::Value, phase: &str) {
    let (code, answer) = admin_post(admin, &format!("/migrations/{id}/{action}"), body).await;
    assert!(
        matches!(code, 200 | 202) && answer["phase"].as_str() == Some(phase),
        "{action}: {code} {answer}"
    );
}

/// Waits for load tasks that each answer (operations done, errors seen),
/// and sums what they answered.
pub async fn joined(tasks: Vec<tokio::task::JoinHandle<(u64, Vec<String>)>>) -> (u64, Vec<String>) {
    let (mut done, mut errors) = (0, Vec::new());
    for task in tasks {
        let (d, e) = task.await.unwrap();
        done += d;
        errors.extend(e);
    }
    (done, errors)
}

/// Contracts migration `id` the way an operator would while the old shape
/// still runs: refused (409, answering with `says`) within a 60 s window;
/// then, once `old_stop` is set and the old shape has been quiet for 2.5 s,
/// contracted with a 2 s window.
pub async fn contract_once_quiet(
    admin: &str,
    id: &str,
    old_stop: &std::sync::atomic::AtomicBool,
    says: &str,
) {
    let path = format!("/migrations/{id}/contract");
    let (code, answer) = admin_post(admin, &path, serde_json::json!({"window_secs": 60})).await;
    assert!(
        code == 409 && answer.to_string().contains(says),
        "{code} {answer}"
    );
    old_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let window = serde_json::json!({"window_secs": 2});
    step_to(admin, id, "contract", window, "contracted").await;
}

/// A load ran (at least `min` operations) with no error but Postgres' own
/// answer to a statement prepared before its result changed (`cached plan
/// must not change result type`, which drivers heal) where `tolerated`.
pub fn assert_clean(done: u64, errors: Vec<String>, min: u64, tolerated: bool) {
    let errors: Vec<String> = errors
        .into_iter()
        .filter(|e| !(tolerated && e.contains("cached plan must not change result type")))
        .collect();
    assert!(
        errors.is_empty(),
        "{} errors, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(done >= min, "the load ran ({done} operations)");
}
