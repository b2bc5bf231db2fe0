//! The v3 protocol through pgshift, as real drivers use it: simple and
//! extended queries, statements, portals, COPY, notifications, cancel,
//! errors, transactions, large values, many clients, authentication.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, NoTls, SimpleQueryMessage};

use crate::harness::*;

#[tokio::test]
async fn simple_query_with_several_statements() {
    let proxy = TestProxy::start().await;
    let client = proxy.connect().await;
    let messages = client
        .simple_query("select 1 as one; select 'two' as two, null as nothing")
        .await
        .unwrap();
    let rows: Vec<_> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get("one"), Some("1"));
    assert_eq!(rows[1].get("two"), Some("two"));
    assert_eq!(rows[1].get("nothing"), None);
    assert_eq!(rows[1].columns()[0].name(), "two");
}

#[tokio::test]
async fn extended_query_with_binary_parameters_and_results() {
    let proxy = TestProxy::start().await;
    let client = proxy.connect().await;
    let bytes: Vec<u8> = (0u8..=255).collect();
    let row = client
        .query_one(
            "select $1::int4 + 1, $2::text || '!', $3::bytea, $4::float8 * 2, $5::bool, now() is not null",
            &[&41i32, &"héllo", &bytes, &1.25f64, &true],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(row.get::<_, String>(1), "héllo!");
    assert_eq!(row.get::<_, Vec<u8>>(2), bytes);
    assert_eq!(row.get::<_, f64>(3), 2.5);
    assert!(row.get::<_, bool>(4));
    assert!(row.get::<_, bool>(5));
    assert_eq!(row.columns()[0].type_(), &Type::INT4);
}

#[tokio::test]
async fn named_and_unnamed_statements() {
    let proxy = TestProxy::start().await;
    let client = proxy.connect().await;
    // Named: prepared once, executed many times.
    let double = client.prepare("select $1::int8 * 2").await.unwrap();
    let triple = client.prepare("select $1::int8 * 3").await.unwrap();
    for i in 0..20i64 {
        let d: i64 = client.query_one(&double, &[&i]).await.unwrap().get(0);
        let t: i64 = client.query_one(&triple, &[&i]).await.unwrap().get(0);
        assert_eq!((d, t), (i * 2, i * 3));
    }
    assert_eq!(double.params(), &[Type::INT8]);
    // Unnamed: query_typed uses the unnamed statement and portal.
    for i in 0..20i32 {
        let row = client
            .query_typed_one("select $1 + 100", &[(&i, Type::INT4)])
            .await
            .unwrap();
        assert_eq!(row.get::<_, i32>(0), i + 100);
    }
    // Close of a named statement: dropping it sends Close; the name is gone.
    drop(double);
    let still: i64 = client.query_one(&triple, &[&5i64]).await.unwrap().get(0);
    assert_eq!(still, 15);
}

#[tokio::test]
async fn pipelined_queries_on_one_connection() {
    let proxy = TestProxy::start().await;
    let client = proxy.connect().await;
    let statement = client
        .prepare("select $1::int4, pg_backend_pid()")
        .await
        .unwrap();
    let futures = (0..200i32).map(|i| {
        let client = &client;
        let statement = &statement;
        async move {
            client
                .query_one(statement, &[&i])
                .await
                .map(|r| r.get::<_, i32>(0))
        }
    });
    let results = futures_util::future::join_all(futures).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r.unwrap(), i as i32, "replies stay in order");
    }
}

#[tokio::test]
async fn portal_row_limits() {
    let proxy = TestProxy::start().await;
    let mut client = proxy.connect().await;
    let tx = client.transaction().await.unwrap();
    let portal = tx.bind("select generate_series(1, 25)", &[]).await.unwrap();
    let mut sizes = Vec::new();
    let mut all = Vec::new();
    loop {
        let rows = tx.query_portal(&portal, 10).await.unwrap();
        if rows.is_empty() {
            break;
        }
        sizes.push(rows.len());
        all.extend(rows.iter().map(|r| r.get::<_, i32>(0)));
    }
    tx.commit().await.unwrap();
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(all, (1..=25).collect::<Vec<_>>());
}

#[tokio::test]
async fn copy_in_and_out_of_100k_rows() {
    let proxy = TestProxy::start().await;
    let client = proxy.connect().await;
    let table = unique("copy");
    client
        .batch_execute(&format!(
            "create table {table} (id int primary key, label text)"
        ))
        .await
        .unwrap();
    let sink = client
        .copy_in::<_, bytes::Bytes>(&format!("copy {table} from stdin"))
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    let mut chunk = String::new();
    for i in 1..=100_000 {
        chunk.push_str(&format!("{i}\tlabel {i}\n"));
        if i % 10_000 == 0 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut chunk)))
                .await
                .unwrap();
        }
    }
    let copied = sink.finish().await.unwrap();
    assert_eq!(copied, 100_000);

    let stream = client
        .copy_out(&format!(
            "copy (select * from {table} order by id) to stdout"
        ))
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
    let text: Vec<u8> = chunks.concat();
    let text = String::from_utf8(text).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 100_000);
    assert_eq!(lines[0], "1\tlabel 1");
    assert_eq!(lines[99_999], "100000\tlabel 100000");
    let direct = db().direct().await;
    let sum: i64 = direct
        .query_one(&format!("select sum(id)::int8 from {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 100_000 * 100_001 / 2);
}

#[tokio::test]
async fn listen_notify_across_two_clients() {
    let proxy = TestProxy::start().await;
    let (listener, mut connection) = proxy.config().connect(NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    let channel = unique("chan");
    listener
        .batch_execute(&format!("listen {channel}"))
        .await
        .unwrap();
    let notifier = proxy.connect().await;
    notifier
        .batch_execute(&format!("notify {channel}, 'hello through pgshift'"))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("notification arrives")
        .unwrap();
    assert_eq!(got, (channel.clone(), "hello through pgshift".to_string()));
    // Notifications also arrive while the listener is idle, between queries.
    notifier
        .query("select pg_notify($1, 'second')", &[&channel])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.1, "second");
}

#[tokio::test]
async fn cancel_a_running_query() {
    let proxy = TestProxy::start().await;
    let client = proxy.connect().await;
    let token = client.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(NoTls).await
    });
    let err = client
        .simple_query("select pg_sleep(30)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    canceller.await.unwrap().unwrap();
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1, "the connection is usable after the cancel");
}

#[tokio::test]
async fn errors_carry_their_sqlstate_and_the_session_goes_on() {
    let proxy = TestProxy::start().await;
    let client = proxy.connect().await;
    let cases = [
        ("select 1/0", "22012"),
        ("select * from no_such_table_anywhere", "42P01"),
        ("selec 1", "42601"),
        ("select 'x'::int", "22P02"),
    ];
    for (sql, code) in cases {
        let err = client.simple_query(sql).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some(code), "{sql}");
        let err = client.query(sql, &[]).await.unwrap_err();
        assert_eq!(sqlstate(&err).as_deref(), Some(code), "{sql} (extended)");
    }
    let row = client
        .query_one("select 'still here'::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "still here");
}

#[tokio::test]
async fn transactions_and_savepoints() {
    let proxy = TestProxy::start().await;
    let mut client = proxy.connect().await;
    let table = unique("txn");
    client
        .batch_execute(&format!("create table {table} (v int)"))
        .await
        .unwrap();
    {
        let mut tx = client.transaction().await.unwrap();
        tx.execute(&format!("insert into {table} values (1)"), &[])
            .await
            .unwrap();
        {
            let sp = tx.savepoint("sp1").await.unwrap();
            sp.execute(&format!("insert into {table} values (2)"), &[])
                .await
                .unwrap();
            sp.rollback().await.unwrap();
        }
        {
            let sp = tx.savepoint("sp2").await.unwrap();
            sp.execute(&format!("insert into {table} values (3)"), &[])
                .await
                .unwrap();
            sp.commit().await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    {
        let tx = client.transaction().await.unwrap();
        tx.execute(&format!("insert into {table} values (4)"), &[])
            .await
            .unwrap();
        tx.rollback().await.unwrap();
    }
    // An error aborts the transaction until it ends.
    client.batch_execute("begin").await.unwrap();
    assert!(client.batch_execute("select 1/0").await.is_err());
    let err = client.batch_execute("select 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25P02"));
    client.batch_execute("rollback").await.unwrap();

    let rows = client
        .query(&format!("select v from {table} order by v"), &[])
        .await
        .unwrap();
    let values: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(values, vec![1, 3]);
}

#[tokio::test]
async fn a_10_mb_value_both_ways() {
    let proxy = TestProxy::start().await;
    let client = proxy.connect().await;
    let big: String = (0..10 * 1024 * 1024)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let row = client
        .query_one("select length($1::text), md5($1::text), $1::text", &[&big])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), big.len() as i32);
    assert_eq!(row.get::<_, String>(2), big);
    let generated = client
        .simple_query("select repeat('z', 10485760) as z")
        .await
        .unwrap();
    let value = generated
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::len),
            _ => None,
        })
        .unwrap();
    assert_eq!(value, 10 * 1024 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients() {
    let proxy = TestProxy::start().await;
    let config = proxy.config();
    let mut tasks = Vec::new();
    for n in 0..200i32 {
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(&config).await?;
            let mut pids = std::collections::HashSet::new();
            for i in 0..10i32 {
                let row = client
                    .query_one(
                        "select $1::int4 * 1000 + $2::int4, pg_backend_pid()",
                        &[&n, &i],
                    )
                    .await?;
                assert_eq!(row.get::<_, i32>(0), n * 1000 + i);
                pids.insert(row.get::<_, i32>(1));
            }
            assert_eq!(
                pids.len(),
                1,
                "one upstream connection per client (session mode)"
            );
            Ok::<_, tokio_postgres::Error>(pids.into_iter().next().unwrap())
        }));
    }
    let mut pids = std::collections::HashSet::new();
    for task in tasks {
        pids.insert(task.await.unwrap().unwrap());
    }
    assert_eq!(pids.len(), 200, "each client has its own backend");
}

#[tokio::test]
async fn password_authentication_methods_are_relayed() {
    if !db().owns_cluster() {
        eprintln!("skipped: needs the harness's own cluster (pg_hba.conf and roles)");
        return;
    }
    let proxy = TestProxy::start().await;
    for (user, password, method) in [
        (SCRAM_USER.0, SCRAM_USER.1, "scram-sha-256"),
        (MD5_USER.0, MD5_USER.1, "md5"),
        (CLEARTEXT_USER.0, CLEARTEXT_USER.1, "password"),
    ] {
        let mut config = proxy.config();
        config.user(user).password(password).dbname("postgres");
        let client = connect(&config)
            .await
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        let who: String = client
            .query_one("select current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user, "{method}");
        let method_seen: String = client
            .query_one(
                "select coalesce((select auth_method from pg_hba_file_rules where $1 = any(user_name) limit 1), '')",
                &[&user],
            )
            .await
            .map(|r| r.get(0))
            .unwrap_or_default();
        if !method_seen.is_empty() {
            assert_eq!(method_seen, method);
        }
        config.password("wrong password");
        let err = refused(connect(&config).await, "a wrong password is refused");
        assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{method}: {err}");
    }
}

#[tokio::test]
async fn backend_key_data_is_the_servers_own() {
    let proxy = TestProxy::start().await;
    let (mut conn, pid, _key) = RawConn::startup(proxy.addr).await;
    conn.send(&query("select pg_backend_pid()")).await;
    let reply = conn.until_ready().await;
    assert_eq!(first_value(&reply), Some(pid.to_string()));
}

#[tokio::test]
async fn startup_parameters_reach_the_server() {
    let proxy = TestProxy::start().await;
    let mut config = proxy.config();
    let app = unique("app");
    config
        .application_name(&app)
        .options("-c statement_timeout=4321");
    let client = connect(&config).await.unwrap();
    let row = client
        .query_one(
            "select current_setting('application_name'), current_setting('statement_timeout'), \
             (select application_name from pg_stat_activity where pid = pg_backend_pid())",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), app);
    assert_eq!(row.get::<_, String>(1), "4321ms");
    assert_eq!(row.get::<_, String>(2), app);
    // ParameterStatus after SET reaches the client (tokio-postgres tracks it).
    client
        .batch_execute("set application_name = 'renamed'")
        .await
        .unwrap();
}

#[tokio::test]
async fn function_call_and_flush() {
    let proxy = TestProxy::start().await;
    let (mut conn, _, _) = RawConn::startup(proxy.addr).await;
    conn.send(&query("select 'int4pl'::regproc::oid")).await;
    let oid: i32 = first_value(&conn.until_ready().await)
        .unwrap()
        .parse()
        .unwrap();
    // FunctionCall int4pl(2, 3), binary arguments and result.
    let mut body = Vec::new();
    body.extend_from_slice(&oid.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&2i16.to_be_bytes());
    for v in [2i32, 3] {
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(&v.to_be_bytes());
    }
    body.extend_from_slice(&1i16.to_be_bytes());
    conn.send(&message(b'F', &body)).await;
    let reply = conn.until_ready().await;
    let v = reply
        .iter()
        .find(|m| m.tag == b'V')
        .expect("FunctionCallResponse");
    assert_eq!(&v.body[..], &[0, 0, 0, 4, 0, 0, 0, 5]);

    // Parse + Flush: ParseComplete arrives before any Sync.
    conn.send(&parse("flushed", "select 1")).await;
    conn.send(&flush()).await;
    let parsed = conn.read().await.unwrap();
    assert_eq!(parsed.tag, b'1');
    // Bind/Execute the named statement with a row limit, then Sync.
    conn.send(&bind("flushed")).await;
    conn.send(&execute()).await;
    conn.send(&sync()).await;
    let reply = conn.until_ready().await;
    let tags: Vec<u8> = reply.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"2DCZ".to_vec());
    assert_eq!(first_value(&reply).as_deref(), Some("1"));
    conn.send(&terminate()).await;
    assert!(
        conn.read().await.is_none(),
        "Terminate closes the connection"
    );
}

/// Nothing but the authentication exchange is decoded before the server
/// accepts the client: a Query sent instead of the SASL response (here a
/// 160 KB statement, which the rewriter would have planned) is refused by
/// pgshift unread, as Postgres refuses it, and the session ends.
#[tokio::test]
async fn a_statement_before_authentication_is_refused_unread() {
    if !db().owns_cluster() {
        eprintln!("skipped: needs the harness's own cluster (pg_hba.conf and roles)");
        return;
    }
    let proxy = TestProxy::start().await;
    let mut conn = RawConn::connect(proxy.addr).await;
    conn.send(&startup_message(&[
        ("user", SCRAM_USER.0),
        ("database", "postgres"),
    ]))
    .await;
    let ask = conn.read().await.expect("the server's SASL request");
    assert_eq!((ask.tag, &ask.body[..4]), (b'R', &10u32.to_be_bytes()[..]));
    let long = format!(
        "select 1 from pgbench_accounts where {}",
        vec!["aid = 1"; 20_000].join(" or ")
    );
    conn.send(&query(&long)).await;
    let reply = conn.until_closed().await;
    let fatal = reply.iter().find(|m| m.tag == b'E').expect("a FATAL");
    assert_eq!(fatal.field(b'C').as_deref(), Some("08P01"));
    let text = fatal.field(b'M').unwrap_or_default();
    assert!(
        text.starts_with("expected password response") && text.contains("pgshift"),
        "{text}"
    );
}

/// A client that sends Terminate and closes its side while a statement
/// runs sees its connection close when Postgres closes it — once the
/// statement has ended and Postgres has read the Terminate — as directly,
/// not at once (libpq threads polling the socket depend on that timing:
/// psycopg's `test_socket_closed`).
#[tokio::test]
async fn a_client_that_leaves_mid_statement_is_closed_when_the_server_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let proxy = TestProxy::start().await;
    let (mut conn, _, _) = RawConn::startup(proxy.addr).await;
    let sent = Instant::now();
    conn.send(&query("select pg_sleep(0.5)")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    conn.send(&terminate()).await;
    conn.stream.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.stream.read_to_end(&mut rest))
        .await
        .expect("the connection closes");
    assert!(read.is_ok(), "{read:?}");
    assert!(
        sent.elapsed() >= Duration::from_millis(450),
        "closed after {:?}, before the server could have",
        sent.elapsed()
    );
}
