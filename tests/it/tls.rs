//! TLS between clients and pgshift, with real clients: psql with each
//! `sslmode`, SCRAM with and without channel binding, a plaintext client
//! against `client_tls = require`, PostgreSQL 17's direct TLS, and a
//! certificate rotated by reloading.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use pgshift::proxy::tls::{ClientTls, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::tools::tool;

/// A test CA and a server certificate for 127.0.0.1 and localhost, written
/// as PEM into a fresh folder.
struct Pki {
    dir: PathBuf,
    ca_pem: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(unique("pgshift-pki"));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "pgshift test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        Pki {
            ca_pem: ca_cert.pem(),
            dir,
        }
    }

    fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.dir.join("server.pem"),
            key: self.dir.join("server.key"),
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

async fn tls_proxy(pki: &Pki, mode: ClientTls) -> TestProxy {
    let files = pki.files();
    TestProxy::with(move |c| {
        c.tls = Some(files);
        c.client_tls = mode;
    })
    .await
}

/// psql with these connection settings: (success, stdout, stderr).
async fn psql(
    proxy: &TestProxy,
    user: &str,
    password: Option<&str>,
    settings: &str,
    sql: &str,
) -> (bool, String, String) {
    let conninfo = format!(
        "host=127.0.0.1 port={} user={user} dbname=postgres {settings}",
        proxy.addr.port()
    );
    let sql = sql.to_string();
    let password = password.map(str::to_string);
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(tool("psql"));
        cmd.args(["-X", "-A", "-t", "-d", &conninfo, "-c", &sql]);
        if let Some(p) = password {
            cmd.env("PGPASSWORD", p);
        }
        cmd.env("PGCONNECT_TIMEOUT", "10").output().unwrap()
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

const SSL_IN_USE: &str = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connect_with_each_sslmode() {
    let pki = Pki::new();
    let proxy = tls_proxy(&pki, ClientTls::Allow).await;
    let user = db().user.clone();
    let password = db().password.clone();
    let ca = pki.ca().display().to_string();
    for settings in [
        "sslmode=require".to_string(),
        format!("sslmode=verify-ca sslrootcert={ca}"),
        format!("sslmode=verify-full sslrootcert={ca}"),
        "sslmode=prefer".to_string(),
        "sslmode=disable".to_string(),
    ] {
        let (ok, out, err) = psql(
            &proxy,
            &user,
            password.as_deref(),
            &settings,
            "select 'through ' || current_user",
        )
        .await;
        assert!(ok, "{settings}: {err}");
        assert_eq!(out, format!("through {user}"), "{settings}");
    }
    // The client's TLS ends at pgshift (the upstream here is plain TCP).
    let (ok, out, err) = psql(
        &proxy,
        &user,
        password.as_deref(),
        "sslmode=require",
        SSL_IN_USE,
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "f", "the upstream leg is not encrypted in this test");
    // A CA that did not sign pgshift's certificate is refused (libpq's
    // OpenSSL words it as a certificate or an EVP failure).
    let other = Pki::new();
    let settings = format!("sslmode=verify-full sslrootcert={}", other.ca().display());
    let (ok, _, err) = psql(&proxy, &user, password.as_deref(), &settings, "select 1").await;
    assert!(!ok);
    assert!(err.contains("SSL error"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_is_refused_when_tls_is_required() {
    let pki = Pki::new();
    let proxy = tls_proxy(&pki, ClientTls::Require).await;
    let user = db().user.clone();
    let password = db().password.clone();
    let (ok, _, err) = psql(
        &proxy,
        &user,
        password.as_deref(),
        "sslmode=disable",
        "select 1",
    )
    .await;
    assert!(!ok);
    assert!(err.contains("pgshift requires TLS"), "{err}");
    let (ok, out, err) = psql(
        &proxy,
        &user,
        password.as_deref(),
        "sslmode=require",
        "select 1",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_over_terminated_tls_offers_no_channel_binding() {
    if !db().owns_cluster() {
        eprintln!("skipped: needs the harness's own cluster (pg_hba.conf and roles)");
        return;
    }
    let pki = Pki::new();
    let proxy = tls_proxy(&pki, ClientTls::Allow).await;
    let (user, password) = SCRAM_USER;
    let (ok, out, err) = psql(
        &proxy,
        user,
        Some(password),
        "sslmode=require channel_binding=prefer",
        "select current_user",
    )
    .await;
    assert!(ok, "channel_binding=prefer: {err}");
    assert_eq!(out, user);
    binding_required_is_refused(&proxy, user, password).await;
}

/// channel_binding=require cannot be had through a proxy that ends TLS:
/// the client refuses, saying why.
async fn binding_required_is_refused(proxy: &TestProxy, user: &str, password: &str) {
    let (ok, _, err) = psql(
        proxy,
        user,
        Some(password),
        "sslmode=require channel_binding=require",
        "select 1",
    )
    .await;
    assert!(!ok);
    assert!(err.contains("channel binding"), "a clear error: {err}");
}

/// SCRAM to a server reached over TLS. The server offers
/// SCRAM-SHA-256-PLUS there, which binds to its certificate; no client of
/// pgshift can bind to that, so pgshift offers no PLUS (node-postgres
/// picks PLUS whenever it is offered, then fails: "requires a
/// certificate"). A client that could bind then says so (GS2 `y`: libpq
/// over TLS with its default channel_binding=prefer), which the server
/// refuses as a downgrade unless pgshift carries the exchange across.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_to_a_tls_upstream_works_for_clients_that_could_bind() {
    let pki = Pki::new();
    let cluster = tls_cluster_with(
        &pki,
        vec!["hostssl all scram_plain 127.0.0.1/32 scram-sha-256".into()],
    );
    let proxy = proxy_to(&cluster, "require", None).await;
    let mut config = proxy.config();
    config.user(pgshift::cluster::SUPERUSER).dbname("postgres");
    connect(&config)
        .await
        .expect("the superuser through pgshift")
        .batch_execute(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE scram_plain LOGIN PASSWORD 'plain4scram'",
        )
        .await
        .expect("a SCRAM role");
    let mut raw = RawConn::connect(proxy.addr).await;
    raw.send(&startup_message(&[
        ("user", "scram_plain"),
        ("database", "postgres"),
    ]))
    .await;
    let offer = raw.read().await.expect("an authentication request");
    assert_eq!(offer.tag, b'R');
    assert_eq!(&offer.body[..4], &10u32.to_be_bytes(), "AuthenticationSASL");
    let mechanisms: Vec<_> = offer.body[4..]
        .split(|b| *b == 0)
        .filter(|m| !m.is_empty())
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    assert_eq!(mechanisms, ["SCRAM-SHA-256"]);
    // And the exchange itself goes through.
    let mut config = proxy.config();
    config
        .user("scram_plain")
        .password("plain4scram")
        .dbname("postgres");
    let client = connect(&config).await.expect("SCRAM through pgshift");
    let row = client
        .query_one("select current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "scram_plain");
    // libpq over TLS to pgshift, channel_binding=prefer (its default).
    let proxy = tls_both_ways(&pki, &cluster).await;
    for settings in ["sslmode=require", "sslmode=disable"] {
        let (ok, out, err) = psql(
            &proxy,
            "scram_plain",
            Some("plain4scram"),
            settings,
            "select current_user",
        )
        .await;
        assert!(ok, "{settings}: {err}");
        assert_eq!(out, "scram_plain");
    }
    // A wrong password gets Postgres' own answer, bound or not.
    for settings in ["sslmode=require", "sslmode=disable"] {
        let (ok, _, err) = psql(&proxy, "scram_plain", Some("wrong"), settings, "select 1").await;
        assert!(!ok);
        assert!(
            err.contains("password authentication failed for user \"scram_plain\""),
            "{settings}: {err}"
        );
    }
    binding_required_is_refused(&proxy, "scram_plain", "plain4scram").await;
}

/// Bulk data both ways with TLS on both sides of pgshift. A TLS write may
/// take the plaintext and keep part of its ciphertext when the socket is
/// full; unless it is flushed, that part waits for the next write, which
/// a client that has sent everything (a COPY's last rows) never causes:
/// both ends would then wait for each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_copies_over_tls_both_ways_never_stall() {
    use futures_util::{SinkExt, TryStreamExt};
    let pki = Pki::new();
    let cluster = tls_cluster(&pki);
    let proxy = tls_both_ways(&pki, &cluster).await;
    let tls = tls_connector(&pki);
    let mut config = proxy.config();
    config
        .user(pgshift::cluster::SUPERUSER)
        .dbname("postgres")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, connection) = config.connect(tls).await.expect("TLS to pgshift");
    tokio::spawn(connection);
    client
        .batch_execute("create table bulk (id int, label text)")
        .await
        .unwrap();
    let rounds = async {
        for round in 0..20 {
            let sink = client
                .copy_in::<_, bytes::Bytes>("copy bulk from stdin")
                .await
                .unwrap();
            futures_util::pin_mut!(sink);
            let mut chunk = String::new();
            for i in 0..20_000 {
                chunk.push_str(&format!("{i}\tround {round} row {i} {}\n", "x".repeat(40)));
            }
            sink.send(bytes::Bytes::from(chunk)).await.unwrap();
            assert_eq!(sink.finish().await.unwrap(), 20_000);
            let out: Vec<bytes::Bytes> = client
                .copy_out("copy (select * from bulk where id < 5000) to stdout")
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            assert_eq!(
                out.concat().iter().filter(|b| **b == b'\n').count(),
                5000 * (round + 1)
            );
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), rounds)
        .await
        .expect("every COPY completes");
}

/// A tokio-postgres TLS connector trusting `pki`'s CA.
fn tls_connector(pki: &Pki) -> tokio_postgres_rustls::MakeRustlsConnect {
    tokio_postgres_rustls::MakeRustlsConnect::new(client_config(pki))
}

/// A rustls client configuration trusting `pki`'s CA.
fn client_config(pki: &Pki) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&pki.ca_pem) {
        roots.add(cert).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(pgshift::proxy::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// PostgreSQL 17's direct TLS: a ClientHello first, ALPN `postgresql`.
#[tokio::test]
async fn direct_tls_is_accepted() {
    let pki = Pki::new();
    let proxy = tls_proxy(&pki, ClientTls::Require).await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(&pki.ca_pem) {
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(pgshift::proxy::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("the handshake");
    let db = db();
    tls.write_all(&startup_message(&[
        ("user", &db.user),
        ("database", &db.dbname),
    ]))
    .await
    .unwrap();
    let mut first = [0u8; 1];
    tls.read_exact(&mut first).await.unwrap();
    assert_eq!(first[0], b'R', "the server's authentication, over TLS");
}

/// A CancelRequest sent over TLS (libpq 17's PQcancelBlocking) is
/// forwarded, and its connection closed as Postgres closes it: with TLS's
/// close_notify (a bare close is "SSL error: unexpected eof" to libpq).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_over_tls_is_forwarded_and_closed_cleanly() {
    let pki = Pki::new();
    let proxy = tls_proxy(&pki, ClientTls::Allow).await;
    let (mut sleeper, pid, key) = RawConn::startup(proxy.addr).await;
    sleeper.send(&query("select pg_sleep(30)")).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(&pki)));
    let mut tcp = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tcp.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).await.unwrap(); // SSLRequest
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'S');
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("the handshake");
    let mut cancel = vec![0, 0, 0, 16, 4, 210, 22, 46];
    cancel.extend_from_slice(&pid.to_be_bytes());
    cancel.extend_from_slice(&key.to_be_bytes());
    tls.write_all(&cancel).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tls.read_to_end(&mut rest),
    )
    .await
    .expect("closed");
    assert!(closed.is_ok(), "a clean TLS close: {closed:?}");
    assert!(rest.is_empty(), "no answer to a cancel");
    let replies = sleeper.until_ready().await;
    let error = replies.iter().find(|m| m.tag == b'E').expect("an error");
    assert_eq!(error.field(b'C').as_deref(), Some("57014"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_rotated_by_sighup_serves_new_sessions() {
    let first = Pki::new();
    let second = Pki::new();
    let files = first.files();
    let proxy = tls_proxy(&first, ClientTls::Allow).await;
    let user = db().user.clone();
    let password = db().password.clone();
    let trusting = |pki: &Pki| format!("sslmode=verify-full sslrootcert={}", pki.ca().display());
    let (ok, _, err) = psql(
        &proxy,
        &user,
        password.as_deref(),
        &trusting(&first),
        "select 1",
    )
    .await;
    assert!(ok, "{err}");
    // A bad file is refused on reload; the current certificate stays.
    std::fs::write(&files.key, "not a key").unwrap();
    sighup();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (ok, _, err) = psql(
        &proxy,
        &user,
        password.as_deref(),
        &trusting(&first),
        "select 1",
    )
    .await;
    assert!(ok, "{err}");
    // The files are replaced and the proxy told: new sessions get the new one.
    copy(&second.dir.join("server.pem"), &files.cert);
    copy(&second.dir.join("server.key"), &files.key);
    sighup();
    let mut rotated = false;
    for _ in 0..50 {
        let (ok, _, _) = psql(
            &proxy,
            &user,
            password.as_deref(),
            &trusting(&second),
            "select 1",
        )
        .await;
        if ok {
            rotated = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(rotated, "the second certificate is served after SIGHUP");
}

/// SIGHUP to this process (pgshift's handler is installed: it does not
/// end the process).
fn sighup() {
    // SAFETY: kill(2) on our own pid with a signal that has a handler.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGHUP);
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

fn rustls_pemfile_certs(pem: &str) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

/// A throwaway Postgres with `ssl = on` that refuses plaintext from
/// 127.0.0.1 (`hostnossl … reject`), its certificate signed by `pki`.
fn tls_cluster(pki: &Pki) -> pgshift::cluster::Cluster {
    tls_cluster_with(pki, Vec::new())
}

/// [`tls_cluster`] with `hba` lines before its own.
fn tls_cluster_with(pki: &Pki, hba: Vec<String>) -> pgshift::cluster::Cluster {
    use std::os::unix::fs::PermissionsExt;
    let dir = pki.dir.join("server");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    copy(&pki.dir.join("server.pem"), &cert);
    copy(&pki.dir.join("server.key"), &key);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // SAFETY: geteuid cannot fail; getpwnam reads the passwd database.
    if unsafe { libc::geteuid() } == 0 {
        let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
        assert!(!pw.is_null(), "a postgres user");
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        for path in [&dir, &cert, &key] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
        std::fs::set_permissions(&pki.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let options = pgshift::cluster::ClusterOptions {
        hba_lines: [
            vec!["hostnossl all all 127.0.0.1/32 reject".to_string()],
            hba,
            vec!["hostssl all all 127.0.0.1/32 trust".to_string()],
        ]
        .concat(),
        settings: vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), format!("'{}'", cert.display())),
            ("ssl_key_file".into(), format!("'{}'", key.display())),
        ],
        ..Default::default()
    };
    pgshift::cluster::Cluster::start(&options).expect("a cluster with ssl = on")
}

/// pgshift serving TLS to clients (`client_tls = allow`) in front of
/// `cluster`, reached over TLS.
async fn tls_both_ways(pki: &Pki, cluster: &pgshift::cluster::Cluster) -> TestProxy {
    let files = pki.files();
    let port = cluster.port();
    TestProxy::with(move |c| {
        c.tls = Some(files);
        c.client_tls = ClientTls::Allow;
        c.upstream = pgshift::config::Upstream {
            host: "127.0.0.1".into(),
            port,
        };
        c.upstream_tls = pgshift::proxy::upstream::UpstreamTlsConfig {
            mode: pgshift::proxy::upstream::UpstreamTls::Require,
            ca: None,
        };
    })
    .await
}

/// pgshift in front of `cluster` with `upstream_tls`.
async fn proxy_to(
    cluster: &pgshift::cluster::Cluster,
    mode: &str,
    ca: Option<PathBuf>,
) -> TestProxy {
    let port = cluster.port();
    let mode = pgshift::proxy::upstream::UpstreamTls::parse(mode).unwrap();
    TestProxy::with(move |c| {
        c.upstream = pgshift::config::Upstream {
            host: "127.0.0.1".into(),
            port,
        };
        c.upstream_tls = pgshift::proxy::upstream::UpstreamTlsConfig { mode, ca };
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_reach_a_server_that_requires_tls() {
    let pki = Pki::new();
    let cluster = tls_cluster(&pki);
    let superuser = pgshift::cluster::SUPERUSER;
    for (mode, ca) in [
        ("prefer", None),
        ("require", None),
        ("verify-ca", Some(pki.ca())),
        ("verify-full", Some(pki.ca())),
    ] {
        let proxy = proxy_to(&cluster, mode, ca).await;
        let (ok, out, err) = psql(&proxy, superuser, None, "sslmode=disable", SSL_IN_USE).await;
        assert!(ok, "{mode}: {err}");
        assert_eq!(
            out, "t",
            "{mode}: pg_stat_ssl shows the upstream session encrypted"
        );
    }
    // Plaintext is what the server refuses.
    let proxy = proxy_to(&cluster, "disable", None).await;
    let (ok, _, err) = psql(&proxy, superuser, None, "sslmode=disable", "select 1").await;
    assert!(!ok);
    assert!(
        err.contains("no encryption") || err.contains("pg_hba.conf"),
        "{err}"
    );
    // A CA that did not sign the server's certificate: the session fails,
    // naming the certificate problem.
    let other = Pki::new();
    let proxy = proxy_to(&cluster, "verify-full", Some(other.ca())).await;
    let (ok, _, err) = psql(&proxy, superuser, None, "sslmode=disable", "select 1").await;
    assert!(!ok);
    assert!(err.contains("certificate"), "{err}");
    // A cancel request is forwarded over TLS too.
    let proxy = proxy_to(&cluster, "verify-full", Some(pki.ca())).await;
    let mut config = proxy.config();
    config.user(superuser).dbname("postgres");
    let client = connect(&config)
        .await
        .expect("through pgshift, TLS upstream");
    let cancel = client.cancel_token();
    let sleeping = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    cancel.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeping.await.unwrap().expect_err("cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    // The control connection speaks TLS too.
    let mut config = pgshift::config::Config::default();
    config.upstream = pgshift::config::Upstream {
        host: "127.0.0.1".into(),
        port: cluster.port(),
    };
    config.control.user = superuser.into();
    config.upstream_tls = pgshift::proxy::upstream::UpstreamTlsConfig {
        mode: pgshift::proxy::upstream::UpstreamTls::VerifyFull,
        ca: Some(pki.ca()),
    };
    let client = pgshift::control::connect(&config)
        .await
        .expect("control over TLS");
    let ssl: bool = client.query_one(SSL_IN_USE, &[]).await.unwrap().get(0);
    assert!(ssl);
}

#[tokio::test]
async fn the_admin_port_serves_https_only_with_the_certificate() {
    use pgshift::proxy::tls::{Reloadable, ALPN_HTTP1};
    let pki = Pki::new();
    let stranger = Pki::new();
    let mut ports = Vec::new();
    let mut servers = Vec::new();
    for files in [pki.files(), stranger.files()] {
        let tls = Arc::new(Reloadable::load(files, ALPN_HTTP1).unwrap());
        let listener = pgshift::admin::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        ports.push(listener.local_addr().unwrap().port());
        servers.push(tokio::spawn(pgshift::admin::serve_when_ready(
            listener,
            Arc::new(std::sync::OnceLock::new()),
            pgshift::admin::Tokens::default(),
            Some(tls),
        )));
    }
    pgshift::admin::set_ca(pki.ca());
    // HTTPS, the certificate checked against the CA and the name.
    let https = format!("https://localhost:{}", ports[0]);
    let (code, page) = pgshift::admin::request(&https, "GET", "/", None, None)
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(page.as_str().unwrap_or("").contains("pgshift"), "{page}");
    // Plain HTTP is told to use https, and acts on nothing.
    let plain = format!("127.0.0.1:{}", ports[0]);
    let (code, answer) =
        pgshift::admin::request(&plain, "POST", "/migrations/x/expand", None, None)
            .await
            .unwrap();
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("https://"),
        "{answer}"
    );
    // A certificate the CA did not sign fails, naming the problem.
    let https = format!("https://localhost:{}", ports[1]);
    let err = pgshift::admin::request(&https, "GET", "/", None, None)
        .await
        .unwrap_err();
    assert!(err.contains("certificate"), "{err}");
    for server in servers {
        server.abort();
    }
}

/// The certificate rotated by SIGHUP while pgbench opens a TLS connection
/// per transaction (and keeps others open): no transaction fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_rotated_under_pgbench_load_fails_no_transaction() {
    let first = Pki::new();
    let second = Pki::new();
    let files = first.files();
    let proxy = tls_proxy(&first, ClientTls::Require).await;
    let dbname = unique("rotate");
    db().direct()
        .await
        .batch_execute(&format!("create database {dbname}"))
        .await
        .unwrap();
    let db = db();
    let args: Vec<String> = vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        proxy.addr.port().to_string(),
        "-U".into(),
        db.user.clone(),
    ];
    let run = |extra: Vec<&'static str>| {
        let (args, dbname, password) = (args.clone(), dbname.clone(), db.password.clone());
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(tool("pgbench"));
            cmd.args(&args).args(&extra).arg(&dbname);
            cmd.env("PGSSLMODE", "require");
            if let Some(p) = password {
                cmd.env("PGPASSWORD", p);
            }
            cmd.output().unwrap()
        })
    };
    let init = run(vec!["-i", "-q", "-s", "1"]).await.unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let per_transaction = run(vec!["-S", "-C", "-c", "2", "-j", "2", "-T", "4"]);
    let sessions = run(vec!["-c", "4", "-j", "2", "-T", "4"]);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    copy(&second.dir.join("server.pem"), &files.cert);
    copy(&second.dir.join("server.key"), &files.key);
    sighup();
    for (what, out) in [
        (
            "a connection per transaction",
            per_transaction.await.unwrap(),
        ),
        ("open sessions", sessions.await.unwrap()),
    ] {
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what}: {stderr}\n{stdout}");
        assert!(
            stdout.contains("number of failed transactions: 0 "),
            "{what}: {stdout}"
        );
        assert!(!stdout.contains("processed: 0/"), "{what}: {stdout}");
    }
    // New sessions get the new certificate.
    let (ok, _, err) = psql(
        &proxy,
        &db.user,
        db.password.as_deref(),
        &format!("sslmode=verify-full sslrootcert={}", second.ca().display()),
        "select 1",
    )
    .await;
    assert!(ok, "{err}");
}

/// psycopg 3 (libpq underneath) with `sslmode=require` and `verify-full`
/// against pgshift's certificate; a wrong CA is refused naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_connects_with_require_and_verify_full() {
    let pki = Pki::new();
    let stranger = Pki::new();
    let proxy = tls_proxy(&pki, ClientTls::Require).await;
    let env = tokio::task::spawn_blocking(crate::battery::environment)
        .await
        .unwrap();
    let db = db();
    let base = format!(
        "host=localhost port={} user={} dbname=postgres connect_timeout=10",
        proxy.addr.port(),
        db.user
    );
    let script = r#"
import sys, psycopg
base, ca, wrong = sys.argv[1:4]
for settings in ["sslmode=require", f"sslmode=verify-full sslrootcert={ca}"]:
    with psycopg.connect(f"{base} {settings}") as conn:
        assert conn.pgconn.ssl_in_use, settings
        assert conn.execute("select 41 + 1").fetchone()[0] == 42
        print("ok", settings)
try:
    psycopg.connect(f"{base} sslmode=verify-full sslrootcert={wrong}")
    print("wrong CA accepted")
except psycopg.OperationalError as e:
    print("refused:", e)
"#;
    let mut cmd = Command::new(env.join("venv/bin/python"));
    cmd.args(["-c", script, &base])
        .arg(pki.ca())
        .arg(stranger.ca());
    if let Some(p) = &db.password {
        cmd.env("PGPASSWORD", p);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    assert_eq!(stdout.matches("ok sslmode").count(), 2, "{stdout}");
    assert!(
        // (OpenSSL 3 words it "provider signature failure": the stranger
        // CA bears the same name as the real one.)
        stdout.contains("refused:") && stdout.contains("SSL error"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_client_needs_no_tls_when_tls_is_required() {
    // As Postgres: TLS is for the network; a local socket is neither
    // offered TLS nor asked for it.
    let pki = Pki::new();
    let files = pki.files();
    let dir = PathBuf::from(format!("/tmp/{}", unique("pgs_tls_unix")));
    std::fs::create_dir_all(&dir).unwrap();
    let listen_dir = dir.clone();
    let proxy = TestProxy::with(move |c| {
        c.tls = Some(files);
        c.client_tls = ClientTls::Require;
        c.listen_unix = Some(listen_dir);
    })
    .await;
    let mut config = proxy.config();
    config.host_path(&dir);
    let client = connect(&config).await.expect("a local client gets in");
    let row = client.query_one("select 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    let (ok, _, err) = psql(
        &proxy,
        &db().user,
        db().password.as_deref(),
        "sslmode=disable",
        "select 1",
    )
    .await;
    assert!(!ok, "a TCP client without TLS is still refused");
    assert!(err.contains("pgshift requires TLS"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
