//! What pgshift's ALTERs do about a session that holds their table: an
//! autovacuum in the way is cancelled after a tenth of a second rather than
//! waited out, and a lock wait that times out names who held the lock.
//! These tests run on a cluster of their own whose autovacuum wakes every
//! second, so an autovacuum can be caught holding a table.

use std::time::{Duration, Instant};

use pgshift::cluster::{Cluster, ClusterOptions, SUPERUSER};
use pgshift::lifecycle::ddl::{self, DdlError, LockDiscipline};
use tokio_postgres::Client;

use crate::harness::connect;

async fn connect_as(cluster: &Cluster, user: &str) -> Client {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(cluster.port())
        .user(user)
        .dbname("postgres");
    connect(&config).await.unwrap()
}

/// Waits until an autovacuum worker holds a lock on `table`; its pid.
async fn autovacuum_on(client: &Client, table: &str) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = client
            .query_opt(
                "select l.pid from pg_locks l join pg_stat_activity a on a.pid = l.pid
                  where a.backend_type = 'autovacuum worker' and l.granted
                    and l.relation = $1::text::regclass",
                &[&table],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "no autovacuum started on {table} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_autovacuum_holding_the_table_is_named_then_cancelled_not_waited_out() {
    let cluster = Cluster::start(&ClusterOptions {
        settings: vec![("autovacuum_naptime".into(), "1".into())],
        ..ClusterOptions::default()
    })
    .unwrap();
    let admin = connect_as(&cluster, SUPERUSER).await;
    // A table whose autovacuum crawls (10 pages a second), owned by a role
    // that may alter it but not set `deadlock_timeout`.
    admin
        .batch_execute(
            "create role migrator login;
             create table crawl (id int primary key, v int)
               with (autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0,
                     autovacuum_vacuum_insert_threshold = 0, autovacuum_vacuum_insert_scale_factor = 0,
                     autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1,
                     autovacuum_analyze_threshold = 2000000000);
             alter table crawl owner to migrator;
             insert into crawl select g, 0 from generate_series(1, 50000) g;
             update crawl set v = 1;",
        )
        .await
        .unwrap();
    let discipline = LockDiscipline {
        lock_timeout: Duration::from_millis(400),
        attempts: 2,
        backoff: Duration::from_millis(50),
    };

    // The table's owner cannot lower deadlock_timeout: Postgres would
    // cancel the autovacuum only after 1 s, the ALTER gives up at 400 ms,
    // and the error names the process that held crawl all along — which
    // one it is, the role sees once it may read other sessions' activity.
    let vacuum = autovacuum_on(&admin, "crawl").await;
    let migrator = connect_as(&cluster, "migrator").await;
    let add = "alter table crawl add column w int";
    let holders = |err: DdlError| match err {
        DdlError::LockNotAvailable { holders, .. } => holders,
        other => panic!("expected a lock timeout, got {other}"),
    };
    let named = holders(
        ddl::run_with_lock_timeout(&migrator, add, discipline)
            .await
            .unwrap_err(),
    );
    assert!(
        named.contains(&format!(
            "pid {vacuum} holding crawl ShareUpdateExclusiveLock"
        )) && named.contains("pg_read_all_stats"),
        "the error names the process holding crawl: {named}"
    );
    admin
        .batch_execute("grant pg_read_all_stats to migrator")
        .await
        .unwrap();
    let named = holders(
        ddl::run_with_lock_timeout(&migrator, add, discipline)
            .await
            .unwrap_err(),
    );
    assert!(
        named.contains(&format!("pid {vacuum} (autovacuum worker)"))
            && named.contains("autovacuum: VACUUM public.crawl"),
        "the error says it is the autovacuum: {named}"
    );
    let v: i32 = admin
        .query_one("select count(*)::int from pg_attribute where attrelid = 'crawl'::regclass and attname = 'w'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 0, "nothing was half-done");

    // A superuser lowers it: the autovacuum is cancelled after 100 ms and
    // the ALTER gets its lock on the first attempt.
    autovacuum_on(&admin, "crawl").await;
    let attempts =
        ddl::run_with_lock_timeout(&admin, "alter table crawl add column w int", discipline)
            .await
            .unwrap();
    // (With the server's deadlock_timeout of 1 s, a 400 ms attempt could
    // not have outlasted the autovacuum.)
    assert_eq!(attempts, 1, "the first attempt got the lock");
    admin
        .query_one("select w from crawl limit 1", &[])
        .await
        .unwrap();
}
