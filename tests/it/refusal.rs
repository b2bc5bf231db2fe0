//! A statement the rewrite seam refuses: the client gets pgshift's error
//! with its SQLSTATE, and the session behaves exactly as if the statement
//! had failed on the server — transaction aborted, the rest of the pipeline
//! skipped up to Sync, nothing half-written.

use std::sync::Arc;

use pgshift::rewrite::{Refusal, Rewrite, StatementKind, StatementRewriter};

use crate::harness::*;

/// Refuses every statement that mentions `forbidden_col`.
struct RefuseForbidden;

impl StatementRewriter for RefuseForbidden {
    fn rewrite<'a>(&self, _kind: StatementKind, sql: &'a [u8]) -> Rewrite<'a> {
        if sql.windows(13).any(|w| w == b"forbidden_col") {
            Rewrite::Refused(Refusal {
                code: "0A000",
                message: "pgshift refused the statement: migration \"m1\" cannot rewrite forbidden_col here".into(),
                detail: Some("test detail".into()),
                hint: Some("test hint".into()),
                routine: None,
            })
        } else {
            Rewrite::Unchanged
        }
    }
}

async fn proxy() -> TestProxy {
    TestProxy::with_rewriter(Arc::new(RefuseForbidden), |_| {}).await
}

fn assert_refused(err: &tokio_postgres::Error) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    assert_eq!(db.code().code(), "0A000", "{db:?}");
    assert!(db.message().contains("migration \"m1\""), "{db:?}");
    assert_eq!(db.detail(), Some("test detail"));
    assert_eq!(db.hint(), Some("test hint"));
}

#[tokio::test]
async fn refused_simple_query_aborts_the_transaction() {
    let proxy = proxy().await;
    let client = proxy.connect().await;
    let table = unique("refuse_simple");
    client
        .batch_execute(&format!("create table {table} (v int, forbidden_ok int)"))
        .await
        .unwrap();
    // Outside a transaction: nothing of the multi-statement query runs.
    let err = client
        .batch_execute(&format!(
            "insert into {table} values (1); select forbidden_col from {table}"
        ))
        .await
        .unwrap_err();
    assert_refused(&err);
    // Inside one: the transaction is aborted, as after a server error.
    client.batch_execute("begin").await.unwrap();
    client
        .batch_execute(&format!("insert into {table} values (2)"))
        .await
        .unwrap();
    let err = client
        .batch_execute("select forbidden_col")
        .await
        .unwrap_err();
    assert_refused(&err);
    let err = client.batch_execute("select 1").await.unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("25P02"), "{err:?}");
    client.batch_execute("commit").await.unwrap();
    let n: i64 = client
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing half-written");
    let v: i32 = client.query_one("select 5", &[]).await.unwrap().get(0);
    assert_eq!(v, 5, "the session goes on");
}

#[tokio::test]
async fn refused_parse_fails_at_prepare_and_pipelines_stay_in_order() {
    let proxy = proxy().await;
    let client = proxy.connect().await;
    let err = client
        .prepare("select 1 as forbidden_col")
        .await
        .unwrap_err();
    assert_refused(&err);
    let err = client
        .query("select $1::int as forbidden_col", &[&1i32])
        .await
        .unwrap_err();
    assert_refused(&err);
    // Pipelined: each query has its own Sync; only the refused one fails.
    let ok1 = client.query_one("select 1::int4", &[]);
    let bad = client.query_one("select 2::int4 as forbidden_col", &[]);
    let ok2 = client.query_one("select 3::int4", &[]);
    let (ok1, bad, ok2) = tokio::join!(ok1, bad, ok2);
    assert_eq!(ok1.unwrap().get::<_, i32>(0), 1);
    assert_refused(&bad.unwrap_err());
    assert_eq!(ok2.unwrap().get::<_, i32>(0), 3);
}

#[tokio::test]
async fn refusal_inside_an_extended_pipeline_skips_to_sync() {
    let proxy = proxy().await;
    let table = unique("refuse_pipe");
    let direct = db().direct().await;
    direct
        .batch_execute(&format!("create table {table} (v int)"))
        .await
        .unwrap();
    let (mut conn, _, _) = RawConn::startup(proxy.addr).await;
    let insert = format!("insert into {table} values (7)\0");
    // Parse/Bind/Execute an insert, then a refused Parse, a Bind and an
    // Execute of it, then Sync.
    let mut parse_insert = b"\0".to_vec();
    parse_insert.extend_from_slice(insert.as_bytes());
    parse_insert.extend_from_slice(&[0, 0]);
    conn.send(&message(b'P', &parse_insert)).await;
    conn.send(&bind("")).await;
    conn.send(&execute()).await;
    conn.send(&parse("named", "select forbidden_col")).await;
    conn.send(&bind("named")).await;
    conn.send(&execute()).await;
    conn.send(&sync()).await;
    let reply = conn.until_ready().await;
    let tags: Vec<u8> = reply.iter().map(|m| m.tag).collect();
    assert_eq!(
        tags,
        b"12CEZ".to_vec(),
        "insert runs, the refusal errors, the rest is skipped"
    );
    let err = &reply[3];
    assert_eq!(err.field(b'C').as_deref(), Some("0A000"));
    assert_eq!(err.field(b'S').as_deref(), Some("ERROR"));
    assert_eq!(reply[4].body[0], b'I');
    // The implicit transaction was rolled back with the error.
    let n: i64 = direct
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the pipeline's insert was rolled back");
    // The refused statement name does not exist, as after a failed Parse.
    conn.send(&bind("named")).await;
    conn.send(&sync()).await;
    let reply = conn.until_ready().await;
    assert_eq!(reply[0].field(b'C').as_deref(), Some("26000"));
    // An earlier server error wins: the marker is skipped, one error only.
    conn.send(&query("select 1/0; select forbidden_col")).await;
    let reply = conn.until_ready().await;
    let errors: Vec<_> = reply.iter().filter(|m| m.tag == b'E').collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].field(b'C').as_deref(),
        Some("0A000"),
        "the whole query is refused before it runs"
    );
    conn.send(&parse("", "select 1/0")).await;
    conn.send(&bind("")).await;
    conn.send(&execute()).await;
    conn.send(&parse("", "select forbidden_col")).await;
    conn.send(&sync()).await;
    let reply = conn.until_ready().await;
    let errors: Vec<_> = reply.iter().filter(|m| m.tag == b'E').collect();
    assert_eq!(errors.len(), 1, "{reply:?}");
    assert_eq!(errors[0].field(b'C').as_deref(), Some("22012"));
    // And the next refusal still works.
    conn.send(&query("select forbidden_col")).await;
    let reply = conn.until_ready().await;
    assert_eq!(reply[0].field(b'C').as_deref(), Some("0A000"));
}

/// The DDL gate in `guard`: a DDL statement that is not safe on a live
/// table as written is refused with 0A000, the rule and what to send
/// instead; its safe form passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ddl_gate_guards_what_is_not_safe_as_written() {
    use pgshift::rewrite::engine::MigrationRewriter;
    use pgshift::rewrite::rules::RulesCell;
    let (dbname, direct) = db().fresh_database("ddlgate").await;
    direct
        .batch_execute("create table users (id int primary key, name text)")
        .await
        .unwrap();
    let rewriter = MigrationRewriter::new(Arc::new(RulesCell::new(&[])))
        .with_ddl(pgshift::sql_plan::gate::DdlMode::Guard);
    // (A database without migrations: the gate's mode from the config.)
    let proxy = TestProxy::with_rewriter(Arc::new(rewriter), |c| {
        c.ddl = pgshift::sql_plan::gate::DdlMode::Guard;
    })
    .await;
    let client = proxy.connect_to(&dbname).await;
    let e = client
        .batch_execute("alter table users rename column name to full_name")
        .await
        .unwrap_err();
    let db_error = e.as_db_error().unwrap();
    assert_eq!(db_error.code().code(), "0A000");
    assert!(
        db_error.message().contains("rename-column"),
        "{}",
        db_error.message()
    );
    assert!(db_error.hint().unwrap_or("").contains("POST /migrations"));
    let e = client
        .batch_execute("create index users_name_idx on users (name)")
        .await
        .unwrap_err();
    assert!(e
        .as_db_error()
        .unwrap()
        .hint()
        .unwrap_or("")
        .contains("create_index"));
    // The safe forms, and everything else, pass.
    client
        .batch_execute("create index concurrently users_name_idx on users (name)")
        .await
        .unwrap();
    client
        .batch_execute("alter table users add column phone text; select 1")
        .await
        .unwrap();
    let n: i64 = client
        .query_one("select count(*) from users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}
