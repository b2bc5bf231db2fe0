//! Bad input and broken peers: pgshift answers with a proper SQLSTATE,
//! never panics, and keeps serving everyone else.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// Asserts that the proxy still serves a fresh client normally.
async fn still_serving(proxy: &TestProxy) {
    let client = proxy.connect().await;
    let v: i32 = client.query_one("select 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
}

async fn fatal_code(conn: &mut RawConn) -> Option<String> {
    let messages = conn.until_closed().await;
    let err = messages.iter().find(|m| m.tag == b'E')?;
    assert_eq!(err.field(b'S').as_deref(), Some("FATAL"));
    err.field(b'C')
}

#[tokio::test]
async fn garbage_instead_of_a_startup_packet() {
    let proxy = TestProxy::start().await;
    let bystander = proxy.connect().await;

    // A length word no packet can have: closed with nothing said, as
    // Postgres does (it logs it and closes).
    let mut http = RawConn::connect(proxy.addr).await;
    http.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(fatal_code(&mut http).await, None);

    let mut tiny = RawConn::connect(proxy.addr).await;
    tiny.send(&[0, 0, 0, 2, 1, 2, 3, 4]).await;
    assert_eq!(fatal_code(&mut tiny).await, None);

    let mut unknown = RawConn::connect(proxy.addr).await;
    unknown.send(&[0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78]).await;
    assert_eq!(fatal_code(&mut unknown).await.as_deref(), Some("08P01"));

    let mut v2 = RawConn::connect(proxy.addr).await;
    v2.send(&[0, 0, 0, 9, 0, 2, 0, 0, 0]).await;
    assert_eq!(fatal_code(&mut v2).await.as_deref(), Some("08P01"));

    // Random bytes from a fixed seed, many connections.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..50 {
        let mut junk = vec![0u8; 64];
        for b in junk.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *b = seed as u8;
        }
        let mut conn = RawConn::connect(proxy.addr).await;
        let _ = conn.stream.write_all(&junk).await;
        let _ = conn.until_closed().await;
    }

    let v: i32 = bystander.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 1, "an open session is untouched");
    still_serving(&proxy).await;
}

#[tokio::test]
async fn ssl_and_gssenc_requests_are_declined() {
    let proxy = TestProxy::start().await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await; // SSLRequest
    let mut answer = [0u8; 1];
    tokio::io::AsyncReadExt::read_exact(&mut conn.stream, &mut answer)
        .await
        .unwrap();
    assert_eq!(&answer, b"N");
    conn.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await; // GSSENCRequest
    tokio::io::AsyncReadExt::read_exact(&mut conn.stream, &mut answer)
        .await
        .unwrap();
    assert_eq!(&answer, b"N");
    let db = db();
    conn.send(&startup_message(&[
        ("user", &db.user),
        ("database", &db.dbname),
    ]))
    .await;
    let reply = conn.until_ready().await;
    assert!(reply.iter().any(|m| m.tag == b'R'));
}

#[tokio::test]
async fn malformed_messages_after_startup_end_only_that_session() {
    let proxy = TestProxy::start().await;
    let bystander = proxy.connect().await;

    let (mut conn, _, _) = RawConn::startup(proxy.addr).await;
    conn.send(&[b'Q', 0, 0, 0, 2]).await;
    assert_eq!(fatal_code(&mut conn).await.as_deref(), Some("08P01"));

    let (mut conn, _, _) = RawConn::startup(proxy.addr).await;
    conn.send(&message(b'Q', b"select 1 without terminator"))
        .await;
    assert_eq!(fatal_code(&mut conn).await.as_deref(), Some("08P01"));

    let v: i32 = bystander.query_one("select 2", &[]).await.unwrap().get(0);
    assert_eq!(v, 2);
    still_serving(&proxy).await;
}

#[tokio::test]
async fn messages_over_max_message_size_are_refused() {
    let proxy = TestProxy::with(|c| c.limits.max_message_size = 1024 * 1024).await;
    let client = proxy.connect().await;
    let small: String = "x".repeat(500 * 1024);
    let n: i32 = client
        .query_one("select length($1::text)", &[&small])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 500 * 1024);
    let big: String = "x".repeat(2 * 1024 * 1024);
    let err = client
        .query_one("select length($1::text)", &[&big])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("08P01"), "{err}");
    assert!(message_of(&err).contains("max_message_size"), "{err:?}");
    still_serving(&proxy).await;
}

#[tokio::test]
async fn upstream_down_at_connect_time() {
    let closed_port = pgshift::cluster::free_port().unwrap();
    let proxy = TestProxy::with(|c| c.upstream.port = closed_port).await;
    let err = refused(connect(&proxy.config()).await, "connecting must fail");
    assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{err}");
    let text = message_of(&err);
    assert!(
        text.contains(&format!("127.0.0.1:{closed_port}")),
        "names the upstream: {text}"
    );
}

#[tokio::test]
async fn too_many_clients_get_53300() {
    let proxy = TestProxy::with(|c| c.limits.max_client_connections = 3).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(proxy.connect().await);
    }
    let err = refused(connect(&proxy.config()).await, "the fourth is refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err}");
    assert!(
        message_of(&err).contains("max_client_connections = 3"),
        "{err:?}"
    );
    drop(clients.pop());
    // The slot frees once the session has ended.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match connect(&proxy.config()).await {
            Ok(c) => {
                let v: i32 = c.query_one("select 3", &[]).await.unwrap().get(0);
                assert_eq!(v, 3);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(sqlstate(&e).as_deref(), Some("53300"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("slot never freed: {e}"),
        }
    }
}

#[tokio::test]
async fn idle_sessions_are_closed_with_57p05() {
    let proxy = TestProxy::with(|c| c.limits.idle_timeout = Some(Duration::from_secs(1))).await;
    let (mut conn, _, _) = RawConn::startup(proxy.addr).await;
    conn.send(&query("select 1")).await;
    conn.until_ready().await;
    let started = Instant::now();
    assert_eq!(fatal_code(&mut conn).await.as_deref(), Some("57P05"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_session_idle_inside_a_transaction_is_closed_with_25p03_and_its_locks_freed() {
    let proxy =
        TestProxy::with(|c| c.limits.idle_in_transaction_timeout = Some(Duration::from_secs(1)))
            .await;
    let table = unique("idletx");
    let direct = db().direct().await;
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, v int); insert into {table} values (1, 0)"
        ))
        .await
        .unwrap();
    // Idle outside a transaction for longer than the limit: left alone.
    let (mut quiet, _, _) = RawConn::startup(proxy.addr).await;
    let (mut holder, _, _) = RawConn::startup(proxy.addr).await;
    holder
        .send(&query(&format!(
            "begin; update {table} set v = 1 where id = 1"
        )))
        .await;
    holder.until_ready().await;
    let started = Instant::now();
    assert_eq!(fatal_code(&mut holder).await.as_deref(), Some("25P03"));
    assert!(started.elapsed() < Duration::from_secs(5));
    // The transaction was rolled back and its row lock is free.
    direct
        .batch_execute("set lock_timeout = '2s'")
        .await
        .unwrap();
    let v: i32 = direct
        .query_one(
            &format!("select v from {table} where id = 1 for update"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 0);
    quiet.send(&query("select 1")).await;
    quiet.until_ready().await;
    // A statement that runs longer than the limit inside a transaction is
    // not idle.
    quiet
        .send(&query("begin; select pg_sleep(1.5); commit"))
        .await;
    quiet.until_ready().await;
}

#[tokio::test]
async fn client_vanishing_mid_transaction_releases_its_locks() {
    let proxy = TestProxy::start().await;
    let table = unique("vanish");
    let direct = db().direct().await;
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, v int); insert into {table} values (1, 0)"
        ))
        .await
        .unwrap();

    let (client, connection) = proxy.config().connect(tokio_postgres::NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "begin; update {table} set v = 99 where id = 1; insert into {table} values (2, 2)"
        ))
        .await
        .unwrap();
    // The row is locked now.
    direct
        .batch_execute("set lock_timeout = '100ms'")
        .await
        .unwrap();
    let err = direct
        .batch_execute(&format!("select * from {table} where id = 1 for update"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("55P03"));

    // The client's process dies: its socket closes without Terminate.
    driver.abort();
    drop(client);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match direct
            .query(
                &format!("select v from {table} where id = 1 for update"),
                &[],
            )
            .await
        {
            Ok(rows) => {
                assert_eq!(rows[0].get::<_, i32>(0), 0, "the update was rolled back");
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(sqlstate(&e).as_deref(), Some("55P03"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("lock never released: {e}"),
        }
    }
    let count: i64 = direct
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "the insert was rolled back");
}

/// A TCP forwarder between pgshift and Postgres whose connections the test
/// can cut, to make the upstream die under a live session.
struct Cuttable {
    addr: SocketAddr,
    live: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Cuttable {
    async fn start(target: String) -> Cuttable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let live: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let registry = Arc::clone(&live);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                let handle = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                registry.lock().unwrap().push(handle);
            }
        });
        Cuttable { addr, live }
    }

    fn cut_all(&self) {
        for handle in self.live.lock().unwrap().drain(..) {
            handle.abort();
        }
    }
}

#[tokio::test]
async fn upstream_dying_mid_session_ends_only_that_session() {
    let db = db();
    let cuttable = Cuttable::start(format!("{}:{}", db.host, db.port)).await;
    let port = cuttable.addr.port();
    let proxy = TestProxy::with(|c| c.upstream.port = port).await;
    let healthy_proxy = TestProxy::start().await;
    let bystander = healthy_proxy.connect().await;

    let victim = proxy.connect().await;
    let v: i32 = victim.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 1);
    let pending = tokio::spawn(async move { victim.simple_query("select pg_sleep(5)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cuttable.cut_all();
    let err = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .expect("the client hears about it promptly")
        .unwrap()
        .unwrap_err();
    // As when Postgres' own connection drops: closed, nothing added.
    assert!(err.is_closed(), "{err:?}");
    assert_eq!(sqlstate(&err), None, "{err:?}");

    let v: i32 = bystander.query_one("select 2", &[]).await.unwrap().get(0);
    assert_eq!(v, 2);
    // The proxy itself is fine: a new session through the same path works.
    still_serving(&proxy).await;
}

#[tokio::test]
async fn server_side_termination_reaches_the_client() {
    let proxy = TestProxy::start().await;
    let victim = proxy.connect().await;
    let pid: i32 = victim
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let pending = tokio::spawn(async move { victim.simple_query("select pg_sleep(10)").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let admin = db().direct().await;
    admin
        .query("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err}");

    // On the wire: the server's FATAL and nothing of pgshift's after it.
    let (mut raw, pid, _) = RawConn::startup(proxy.addr).await;
    raw.send(&query("select pg_sleep(10)")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    admin
        .query("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let errors: Vec<Option<String>> = raw
        .until_closed()
        .await
        .iter()
        .filter(|m| m.tag == b'E')
        .map(|m| m.field(b'C'))
        .collect();
    assert_eq!(errors, [Some("57P01".to_string())]);
    still_serving(&proxy).await;
}

/// One application (or one tenant's database) cannot take every slot:
/// `max_user_connections` and `max_db_connections` refuse with 53300
/// naming the limit, while other users still get in.
#[tokio::test]
async fn limits_per_user_and_per_database_name_themselves() {
    let proxy = TestProxy::with(|c| {
        c.limits.max_user_connections = 2;
        c.limits.max_db_connections = 3;
    })
    .await;
    let user = db().user.clone();
    let first = proxy.connect().await;
    let _second = proxy.connect().await;
    let err = refused(connect(&proxy.config()).await, "the user's third session");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err}");
    assert!(
        message_of(&err).contains(&format!("role \"{user}\" (max_user_connections = 2)")),
        "{err:?}"
    );
    // Another database of the same server still has room, until its own
    // limit: the user's slot is the one in the way here.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while connect(&proxy.config()).await.is_err() {
        assert!(Instant::now() < deadline, "the slot came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clients that start as a role and never authenticate hold only total
/// slots, never that role's own (counted once authenticated, as Postgres
/// does), and the last `reserved_connections` slots are kept for the
/// reserved roles.
#[tokio::test]
async fn unauthenticated_clients_use_no_role_slots_and_the_reserve_keeps_operators_in() {
    if !db().owns_cluster() {
        eprintln!("skipped: needs the harness's own cluster (pg_hba.conf and roles)");
        return;
    }
    let operator = db().user.clone();
    let proxy = TestProxy::with(|c| {
        c.limits.max_client_connections = 5;
        c.limits.reserved_connections = 1;
        c.limits.reserved_roles = vec![operator.clone()];
        c.limits.max_user_connections = 2;
    })
    .await;
    // Two clients claim the SCRAM role and stall in its challenge.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut conn = RawConn::connect(proxy.addr).await;
        conn.send(&startup_message(&[
            ("user", SCRAM_USER.0),
            ("database", "postgres"),
        ]))
        .await;
        let challenge = conn.read().await.expect("a challenge");
        assert_eq!(challenge.tag, b'R');
        stalled.push(conn);
    }
    let mut config = proxy.config();
    config
        .user(SCRAM_USER.0)
        .password(SCRAM_USER.1)
        .dbname("postgres");
    let _a = connect(&config).await.expect("the role's first session");
    let _b = connect(&config).await.expect("the role's second session");
    // Four of five slots are taken: the last is reserved.
    let mut md5 = proxy.config();
    md5.user(MD5_USER.0).password(MD5_USER.1).dbname("postgres");
    let err = refused(connect(&md5).await, "a session in the reserve");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"), "{err}");
    assert!(message_of(&err).contains("reserved"), "{err:?}");
    let admin = proxy.connect().await;
    admin.query_one("select 1", &[]).await.unwrap();
}

#[tokio::test]
async fn a_terminate_before_the_startup_packet_is_closed_quietly_as_direct() {
    // node-postgres' `client.connect(); client.end()` writes its Terminate
    // before the startup packet: Postgres reads an impossible length, logs
    // it and closes without a word; so does pgshift. A Terminate right
    // after the startup packet ends the session as quietly.
    let proxy = TestProxy::start().await;
    let d = db();
    let startup = startup_message(&[("user", &d.user), ("database", &d.dbname)]);
    let terminate = message(b'X', &[]);
    for bytes in [
        [terminate.clone(), startup.clone()].concat(),
        [startup.clone(), terminate.clone()].concat(),
    ] {
        let mut conn = RawConn::connect(proxy.addr).await;
        conn.send(&bytes).await;
        let messages = conn.until_closed().await;
        let errors: Vec<Option<String>> = messages
            .iter()
            .filter(|m| m.tag == b'E')
            .map(|m| m.field(b'M'))
            .collect();
        assert!(errors.is_empty(), "as direct, no error: {errors:?}");
    }
    still_serving(&proxy).await;
}
