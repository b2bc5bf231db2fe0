//! Unix-domain sockets both ways: pgshift listening on `listen_unix` beside
//! its TCP port, and reaching the upstream through its socket directory
//! (`upstream = "/dir:PORT"`), as a pooler beside Postgres is deployed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pgshift::config::Upstream;
use tokio_postgres::NoTls;

use crate::harness::*;

/// The cluster's socket directory, when the suite started the cluster.
fn server_socket_dir() -> Option<PathBuf> {
    db().cluster.as_ref().map(|c| c.root().to_path_buf())
}

/// A fresh directory for pgshift's socket (short: sun_path holds 108 bytes).
fn socket_dir() -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/{}", unique("pgs_unix")));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// pgshift listening on `dir` too, relaying to the server's unix socket.
async fn unix_proxy(server_dir: &Path, dir: &Path) -> TestProxy {
    let (server_dir, dir) = (server_dir.to_path_buf(), dir.to_path_buf());
    TestProxy::with(move |c| {
        c.upstream = Upstream {
            host: server_dir.display().to_string(),
            port: db().port,
        };
        c.listen_unix = Some(dir);
    })
    .await
}

/// A client of `proxy` over its unix socket in `dir`.
fn unix_config(proxy: &TestProxy, dir: &Path) -> tokio_postgres::Config {
    let mut config = proxy.config();
    config.host_path(dir);
    config
}

/// Whether the server sees this session on a unix socket, asked with a
/// prepared statement (the extended protocol).
async fn server_side_is_unix(client: &tokio_postgres::Client) -> bool {
    let row = client
        .query_one(
            "select inet_server_addr() is null and inet_client_addr() is null and $1::int = 1",
            &[&1i32],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_either_listener_reach_the_server_over_its_unix_socket() {
    let Some(server_dir) = server_socket_dir() else {
        return;
    };
    let dir = socket_dir();
    let proxy = unix_proxy(&server_dir, &dir).await;
    let socket = dir.join(format!(".s.PGSQL.{}", proxy.addr.port()));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o777, "the socket is open to local users");

    let over_unix = connect(&unix_config(&proxy, &dir)).await.unwrap();
    assert!(server_side_is_unix(&over_unix).await);
    let over_tcp = proxy.connect().await;
    assert!(server_side_is_unix(&over_tcp).await);

    // psql finds pgshift the way it finds Postgres: -h DIR -p PORT.
    let out = Command::new(pgshift::cluster::PgBinaries::locate().unwrap().tool("psql"))
        .args(["-X", "-A", "-t", "-h"])
        .arg(&dir)
        .args(["-p", &proxy.addr.port().to_string(), "-U", &db().user])
        .args(["-d", &db().dbname, "-c", "select 6 * 7"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    drop(proxy);
    let deadline = Instant::now() + Duration::from_secs(5);
    while socket.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!socket.exists(), "the socket file is removed on shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_over_the_unix_socket_reaches_the_server() {
    let Some(server_dir) = server_socket_dir() else {
        return;
    };
    let dir = socket_dir();
    let proxy = unix_proxy(&server_dir, &dir).await;
    let client = connect(&unix_config(&proxy, &dir)).await.unwrap();
    let token = client.cancel_token();
    let sleeping = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    token.cancel_query(NoTls).await.unwrap();
    let err = sleeping.await.unwrap().unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_file_is_replaced_and_a_live_one_is_refused() {
    let dir = socket_dir();
    let port = pgshift::cluster::free_port().unwrap();
    let path = dir.join(format!(".s.PGSQL.{port}"));
    let bind = |dir: PathBuf| async move {
        let mut config = control_config();
        config.listen = format!("127.0.0.1:{port}").parse().unwrap();
        config.listen_unix = Some(dir);
        pgshift::proxy::Proxy::bind(config, std::sync::Arc::new(pgshift::rewrite::PassThrough))
            .await
    };
    // A server that died without removing its socket file.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let proxy = bind(dir.clone()).await.expect("a stale file is replaced");
    std::os::unix::net::UnixStream::connect(&path).expect("pgshift listens there now");
    drop(proxy);
    assert!(!path.exists());

    let other = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let err = match bind(dir.clone()).await {
        Ok(_) => panic!("bound over a live socket"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    drop(other);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_connection_uses_the_unix_socket() {
    let Some(server_dir) = server_socket_dir() else {
        return;
    };
    let mut config = control_config();
    config.upstream = Upstream {
        host: server_dir.display().to_string(),
        port: db().port,
    };
    // Over a unix socket libpq never uses TLS, whatever sslmode says.
    config.upstream_tls = pgshift::proxy::upstream::UpstreamTlsConfig {
        mode: pgshift::proxy::upstream::UpstreamTls::Require,
        ca: None,
    };
    let client = pgshift::control::connect(&config).await.unwrap();
    assert!(server_side_is_unix(&client).await);
}
