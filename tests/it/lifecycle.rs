//! The lifecycle driven through the admin port against a real Postgres:
//! expand → backfill → validate → switch reads → contract → complete with
//! old- and new-shape writers running through the proxy the whole time
//! (every committed increment must be in the final column), the illegal
//! transitions (409) and unknown ids (404), and rollback.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgshift::api::{self, Action};
use pgshift::lifecycle::Lifecycle;
use pgshift::rewrite::engine::MigrationRewriter;
use pgshift::rewrite::migration::{MigrationSpec, Phase};
use pgshift::rewrite::rules::{ActiveMigration, RulesCell};
use serde_json::{json, Value};

use crate::harness::*;

async fn driven(spec: MigrationSpec, dbname: &str) -> Driven {
    driven_all(vec![spec], dbname).await
}

/// A database of its own with a table `(id int primary key, v int)` of
/// `rows` rows, and pgshift driving the rename `v → w` of it:
/// (database, direct client, table, migration id, the proxy).
async fn renamed_v_to_w(
    prefix: &str,
    rows: i32,
) -> (String, tokio_postgres::Client, String, String, Driven) {
    let (dbname, direct) = db().fresh_database(prefix).await;
    let table = unique("t");
    let id = unique("rename_v");
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, v int); insert into {table} select g, g from generate_series(1, {rows}) g"
        ))
        .await
        .unwrap();
    let spec = MigrationSpec::new(&id, &table, "v", "w", None, None, None).unwrap();
    let d = driven(spec, &dbname).await;
    (dbname, direct, table, id, d)
}

/// Rows of a [`renamed_v_to_w`] table whose `w` is not `v`.
async fn rows_where_w_differs(direct: &tokio_postgres::Client, table: &str) -> i64 {
    direct
        .query_one(
            &format!("select count(*) from {table} where w is distinct from v"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// Runs `action` while a transaction that ran `lock_sql` holds its lock
/// for 3 s and a client keeps reading through the proxy; asserts the
/// action ends in `phase` and returns the reader's longest wait.
#[allow(clippy::too_many_arguments)]
async fn behind_a_long_transaction(
    d: &Driven,
    dbname: &str,
    lock_sql: &str,
    table: &str,
    id: &str,
    action: &str,
    body: Value,
    phase: &str,
) -> Duration {
    let blocker = connect(&db().config_for(dbname)).await.unwrap();
    blocker
        .batch_execute(&format!("begin; {lock_sql}"))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reading = longest_read(
        d.proxy.connect_to(dbname).await,
        format!("select v from {table} where id = 2"),
        Arc::clone(&stop),
    );
    let acting = {
        let (admin, path) = (d.admin.clone(), format!("/migrations/{id}/{action}"));
        tokio::spawn(async move { post(&admin, &path, body).await })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    blocker.batch_execute("commit").await.unwrap();
    let (code, answer) = acting.await.unwrap();
    assert_eq!(
        (code, answer["phase"].as_str()),
        (200, Some(phase)),
        "{answer}"
    );
    stop.store(true, Ordering::Relaxed);
    reading.await.unwrap()
}

/// Reads `sql` through `reader` in a loop until `stop`; the task's answer
/// is the longest a read waited (the stall a client saw).
fn longest_read(
    reader: tokio_postgres::Client,
    sql: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Duration> {
    tokio::spawn(async move {
        let mut longest = Duration::ZERO;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            reader.query_one(&sql, &[]).await.unwrap();
            longest = longest.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        longest
    })
}

async fn post(admin: &str, path: &str, body: Value) -> (u16, Value) {
    pgshift::admin::request(admin, "POST", path, Some(&body), None)
        .await
        .unwrap()
}

async fn migration_status(admin: &str, id: &str) -> Value {
    let (code, body) = pgshift::admin::request(admin, "GET", "/status", None, None)
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    body["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} not in {body}"))
}

async fn wait_for_phase(admin: &str, id: &str, phase: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = migration_status(admin, id).await;
        if m["phase"] == phase {
            return m;
        }
        assert!(Instant::now() < deadline, "never reached {phase}: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Expands migration `id`, backfills it with `settings` and waits until it
/// is backfilled: its status then.
async fn expanded_and_backfilled(admin: &str, id: &str, settings: Value) -> Value {
    let (code, body) = post(admin, &format!("/migrations/{id}/expand"), json!({})).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = post(admin, &format!("/migrations/{id}/backfill"), settings).await;
    assert_eq!(code, 202, "{body}");
    wait_for_phase(admin, id, "backfilled").await
}

/// Backfills, validates and switches reads of migration `id` to the new
/// column, asserting each step succeeds.
async fn switch_to_new(admin: &str, id: &str) {
    for (action, body) in [
        ("backfill", json!({})),
        ("validate", json!({})),
        ("switch-reads", json!({"to": "new"})),
    ] {
        let (code, answer) = post(admin, &format!("/migrations/{id}/{action}"), body).await;
        assert!((200..300).contains(&code), "{action}: {answer}");
        if action == "backfill" {
            wait_for_phase(admin, id, "backfilled").await;
        }
    }
}

#[tokio::test]
async fn the_whole_lifecycle_under_old_and_new_shape_writes_loses_nothing() {
    let (dbname, direct) = db().fresh_database("lifedb").await;
    let table = unique("life");
    let id = unique("life_rename");
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, bal int not null, note text);
             insert into {table} select g, g % 100, 'row ' || g from generate_series(1, 20000) g;
             create index {table}_bal on {table} (bal);
             create index {table}_part on {table} (id) where bal > 50;
             create unique index {table}_expr on {table} ((bal * 100000 + id)) include (note)"
        ))
        .await
        .unwrap();
    let before: i64 = direct
        .query_one(&format!("select sum(bal)::int8 from {table}"), &[])
        .await
        .unwrap()
        .get(0);
    let spec = MigrationSpec::new(&id, &table, "bal", "balance", None, None, None).unwrap();
    let d = driven(spec, &dbname).await;
    let admin = d.admin.as_str();

    // Writers in both shapes, on both protocols, all along.
    let stops = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    let committed = Arc::new(AtomicI64::new(0));
    let mut writers = Vec::new();
    for (k, sql) in [
        format!("update {table} set bal = bal + 1 where id = $1"),
        format!("update {table} set balance = balance + 1 where id = $1"),
    ]
    .into_iter()
    .enumerate()
    {
        // The old-shape application says who it is: the contract check names it.
        let mut config = d.proxy.config();
        config
            .dbname(&dbname)
            .application_name(["old-app", "new-app"][k]);
        let client = connect(&config).await.unwrap();
        let (stop, committed) = (Arc::clone(&stops[k]), Arc::clone(&committed));
        writers.push(tokio::spawn(async move {
            let mut n = 0i32;
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let row = (n * 7919 + k as i32 * 13) % 20000 + 1;
                // The new shape has nothing to write to before expand.
                match client.execute(&sql, &[&row]).await {
                    Ok(1) => {
                        committed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => errors.push(format!("{:?}: {}", sqlstate(&e), message_of(&e))),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            errors
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Illegal transitions and unknown ids.
    let (code, body) = post(admin, &format!("/migrations/{id}/contract"), json!({})).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("planned"),
        "{body}"
    );
    let (code, _) = post(admin, "/migrations/nope/expand", json!({})).await;
    assert_eq!(code, 404);

    let (code, body) = post(admin, &format!("/migrations/{id}/expand"), json!({})).await;
    assert_eq!(
        (code, body["phase"].as_str()),
        (200, Some("expanded")),
        "{body}"
    );
    let copies: Vec<String> = direct
        .query(
            "select indexdef from pg_indexes where tablename = $1 and indexname like '%pgshift%' order by indexname",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // (Postgres may print one more level of parentheses for a copy.)
    let unparenthesized = |d: &str| d.replace(['(', ')'], "");
    let copies: Vec<String> = copies.iter().map(|d| unparenthesized(d)).collect();
    let expected: Vec<String> = [
        format!("CREATE INDEX {table}_bal_pgshift_balance ON public.{table} USING btree (balance)"),
        format!("CREATE UNIQUE INDEX {table}_expr_pgshift_balance ON public.{table} USING btree (((balance * 100000) + id)) INCLUDE (note)"),
        format!("CREATE INDEX {table}_part_pgshift_balance ON public.{table} USING btree (id) WHERE (balance > 50)"),
    ]
    .iter()
    .map(|d| unparenthesized(d))
    .collect();
    assert_eq!(
        copies, expected,
        "plain, expression and partial indexes on bal are copied onto balance"
    );

    let (code, body) = post(
        admin,
        &format!("/migrations/{id}/backfill"),
        json!({"batch_size": 1500}),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let m = wait_for_phase(admin, &id, "backfilled").await;
    assert_eq!(m["backfill"]["rows_done"], 20000, "{m}");

    let (code, body) = post(
        admin,
        &format!("/migrations/{id}/switch-reads"),
        json!({"to": "new"}),
    )
    .await;
    assert_eq!(code, 409, "no validation yet: {body}");
    let (code, body) = post(admin, &format!("/migrations/{id}/validate"), json!({})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["validation"]["mismatches"], 0, "{body}");
    assert_eq!(body["phase"], "validated");
    let (code, body) = post(
        admin,
        &format!("/migrations/{id}/switch-reads"),
        json!({"to": "new"}),
    )
    .await;
    assert_eq!(
        (code, body["read_source"].as_str()),
        (200, Some("new")),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The old shape is still in use: contract refuses, naming the application.
    let m = migration_status(admin, &id).await;
    assert!(m["old_shape"]["statements"].as_u64().unwrap() > 0, "{m}");
    let (code, body) = post(admin, &format!("/migrations/{id}/contract"), json!({})).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("old-app"),
        "{body}"
    );
    // Once the old application stopped (here: for a second), it goes ahead.
    stops[0].store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, body) = post(
        admin,
        &format!("/migrations/{id}/contract"),
        json!({"window_secs": 1}),
    )
    .await;
    assert_eq!(
        (code, body["phase"].as_str()),
        (200, Some("contracted")),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // `*` keeps the old shape's column order with `bal` gone from the table.
    let app = d.proxy.connect_to(&dbname).await;
    let star = app
        .prepare(&format!("select * from {table}"))
        .await
        .unwrap();
    let names: Vec<&str> = star.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["id", "bal", "note", "balance"]);

    stops[1].store(true, Ordering::Relaxed);
    for w in writers {
        let errors = w.await.unwrap();
        // Only the new shape's writes before expand may fail (no column yet).
        assert!(
            errors.iter().all(|e| e.contains("balance")),
            "unexpected write errors: {errors:?}"
        );
    }
    let (code, body) = post(admin, &format!("/migrations/{id}/complete"), json!({})).await;
    assert_eq!(
        (code, body["phase"].as_str()),
        (200, Some("complete")),
        "{body}"
    );

    // b holds every committed increment; a is gone; NOT NULL carried over.
    let row = direct
        .query_one(
            &format!(
                "select sum(balance)::int8, (select attnotnull from pg_attribute where attrelid = '{table}'::regclass and attname = 'balance'),
                        (select count(*) from pg_attribute where attrelid = '{table}'::regclass and attname = 'bal' and not attisdropped)
                   from {table}"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(0),
        before + committed.load(Ordering::Relaxed),
        "every committed write landed"
    );
    assert!(row.get::<_, bool>(1), "balance is NOT NULL like bal was");
    assert_eq!(row.get::<_, i64>(2), 0, "bal is dropped");
    // The history names every step.
    let events: Vec<String> = direct
        .query(
            "select action from pgshift.events where migration_id = $1 order by id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for step in [
        "expand",
        "backfill",
        "validate",
        "switch-reads",
        "contract",
        "complete",
    ] {
        assert!(
            events.iter().any(|e| e == step),
            "{step} missing from {events:?}"
        );
    }
}

#[tokio::test]
async fn rollback_puts_reads_back_on_the_old_column_and_drops_the_new_one() {
    let (dbname, direct) = db().fresh_database("rollbackdb").await;
    let table = unique("rollback");
    let id = unique("rollback_m");
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, amount int);
             insert into {table} select g, g from generate_series(1, 500) g"
        ))
        .await
        .unwrap();
    let spec = cents_to_decimal(&id, &table);
    let d = driven(spec, &dbname).await;
    let admin = d.admin.as_str();
    assert_eq!(
        post(admin, &format!("/migrations/{id}/expand"), json!({}))
            .await
            .0,
        200
    );
    assert_eq!(
        post(admin, &format!("/migrations/{id}/backfill"), json!({}))
            .await
            .0,
        202
    );
    wait_for_phase(admin, &id, "backfilled").await;
    let app = d.proxy.connect_to(&dbname).await;
    let v: String = app
        .query_one(
            &format!("select amount_dec::text from {table} where id = 250"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "2.50");
    let (code, body) = post(admin, &format!("/migrations/{id}/rollback"), json!({})).await;
    assert_eq!(
        (code, body["phase"].as_str()),
        (200, Some("rolled_back")),
        "{body}"
    );
    let gone: i64 = direct
        .query_one(
            &format!("select count(*) from pg_attribute where attrelid = '{table}'::regclass and attname = 'amount_dec' and not attisdropped"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, 0);
    // The old shape goes on as before; the migration cannot move on.
    let v: i32 = app
        .query_one(&format!("select amount from {table} where id = 250"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 250);
    assert_eq!(
        post(admin, &format!("/migrations/{id}/expand"), json!({}))
            .await
            .0,
        409
    );
}

/// A proxy's lifecycle (no client port) for database `dbname`, listed in
/// `pgshift.proxies` as `listen`, driving the rename `v → w` of `table`
/// as migration `id`, polling the shared state every 50 ms: (the
/// lifecycle, its rules).
async fn peer(
    dbname: &str,
    table: &str,
    id: &str,
    listen: &str,
    ack_timeout: Duration,
) -> (Arc<Lifecycle>, Arc<RulesCell>) {
    let spec = MigrationSpec::new(id, table, "v", "w", None, None, None).unwrap();
    let migrations = vec![ActiveMigration {
        spec,
        phase: Phase::Planned,
    }];
    let options = pgshift::lifecycle::peers::Options {
        ack_timeout,
        proxy_timeout: Duration::from_secs(30),
        poll: Duration::from_millis(50),
    };
    let mut config = control_config_for(dbname);
    config.listen = listen.parse().unwrap();
    config.migrations = migrations.clone();
    let rules = Arc::new(RulesCell::new(&migrations));
    let lifecycle = Lifecycle::start_with(config, Arc::clone(&rules), options)
        .await
        .unwrap();
    (lifecycle, rules)
}

#[tokio::test]
async fn a_phase_change_reaches_every_proxy_and_a_stuck_one_fails_the_action() {
    let (dbname, direct) = db().fresh_database("twodb").await;
    let table = unique("two");
    let id = unique("two_m");
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, v int); insert into {table} values (1, 1)"
        ))
        .await
        .unwrap();
    let (a, _rules_a) = peer(
        &dbname,
        &table,
        &id,
        "127.0.0.1:16001",
        Duration::from_secs(2),
    )
    .await;
    let (b, rules_b) = peer(
        &dbname,
        &table,
        &id,
        "127.0.0.1:16002",
        Duration::from_secs(2),
    )
    .await;

    // An action through A returns only once B has applied it too.
    a.act(&id, Action::Expand).await.unwrap();
    assert_eq!(rules_b.load().migrations[0].phase, Phase::Expanded);

    // B stops following (hung, partitioned): the next change fails
    // clearly, naming B, within the ack timeout — it does not hang.
    b.stop();
    let started = Instant::now();
    let err = a.act(&id, Action::Rollback).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let message = err.to_string();
    assert!(
        message.contains("127.0.0.1:16002") && message.contains("did not apply"),
        "{message}"
    );
    assert_eq!(rules_b.load().migrations[0].phase, Phase::Expanded);
    // Once B is gone from the table, running the rollback again finishes it.
    b.leave().await;
    a.act(&id, Action::Rollback).await.unwrap();
    let gone: i64 = direct
        .query_one(
            &format!("select count(*) from pg_attribute where attrelid = '{table}'::regclass and attname = 'w' and not attisdropped"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, 0);
}

#[tokio::test]
async fn a_backfill_running_on_one_proxy_is_paused_and_rolled_back_through_another() {
    let (dbname, direct) = db().fresh_database("remotedb").await;
    let table = unique("remote");
    let id = unique("remote_m");
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, v int); insert into {table} select g, g from generate_series(1, 30000) g"
        ))
        .await
        .unwrap();
    let (a, _) = peer(
        &dbname,
        &table,
        &id,
        "127.0.0.1:16011",
        Duration::from_secs(5),
    )
    .await;
    let (b, _) = peer(
        &dbname,
        &table,
        &id,
        "127.0.0.1:16012",
        Duration::from_secs(5),
    )
    .await;
    let stored = || async {
        let row = direct
            .query_one(
                "select rows_done, backfill_running, backfill_paused from pgshift.migrations where id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (
            row.get::<_, i64>(0),
            row.get::<_, bool>(1),
            row.get::<_, bool>(2),
        )
    };
    a.act(&id, Action::Expand).await.unwrap();
    a.act(
        &id,
        Action::Backfill(api::Backfill {
            batch_size: Some(200),
            batch_pause_ms: Some(20),
            ..Default::default()
        }),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored().await.0 < 2000 {
        assert!(Instant::now() < deadline, "the backfill does not move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Paused through B while A runs it: A's workers stop, and B's answer
    // comes once they have.
    tokio::time::timeout(Duration::from_secs(20), b.act(&id, Action::Pause))
        .await
        .expect("the pause through the other proxy returns")
        .unwrap();
    let (at, running, paused) = stored().await;
    assert_eq!((running, paused), (false, true));
    assert!(at < 30_000, "{at}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored().await.0, at, "the walk stopped");
    // Resumed through B, rolled back through A whichever runs it.
    b.act(&id, Action::Resume).await.unwrap();
    while stored().await.0 <= at {
        assert!(
            Instant::now() < deadline,
            "the resumed backfill does not move"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::timeout(Duration::from_secs(20), a.act(&id, Action::Rollback))
        .await
        .expect("the rollback returns")
        .unwrap();
    let gone: i64 = direct
        .query_one(
            &format!("select count(*) from pg_attribute where attrelid = '{table}'::regclass and attname = 'w' and not attisdropped"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, 0);
    a.stop();
    b.stop();
}

#[tokio::test]
async fn expand_waits_for_a_lock_without_stalling_other_clients() {
    let (dbname, direct, table, id, d) = renamed_v_to_w("lockdb", 100).await;

    let longest = behind_a_long_transaction(
        &d,
        &dbname,
        &format!("select * from {table} where id = 1 for update"),
        &table,
        &id,
        "expand",
        json!({}),
        "expanded",
    )
    .await;
    // A plain ALTER would have queued the reader behind it for the whole
    // 3 s; with lock_timeout 1 s the reader waits at most about that long.
    assert!(
        longest < Duration::from_millis(2000),
        "a reader stalled for {longest:?}"
    );
    let detail: String = direct
        .query_one(
            "select detail from pgshift.events where migration_id = $1 and action = 'expand'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !detail.contains("lock attempts: 1)"),
        "it had to retry: {detail}"
    );
    eprintln!("longest stall of a concurrent reader during expand: {longest:?} ({detail})");
}

#[tokio::test]
async fn the_backfill_walks_a_composite_key_and_refuses_a_table_without_one() {
    let (dbname, direct) = db().fresh_database("keydb").await;
    let table = unique("composite");
    let keyless = unique("keyless");
    direct
        .batch_execute(&format!(
            "create table {table} (region text, n int, amount int, primary key (region, n));
             insert into {table} select r, g, g * 10 from unnest(array['eu', 'us', 'ap']) r, generate_series(1, 700) g;
             create table {keyless} (amount int); insert into {keyless} values (1)"
        ))
        .await
        .unwrap();
    let id = unique("composite_m");
    let spec = cents_to_decimal(&id, &table);
    let d = driven(spec, &dbname).await;
    let admin = d.admin.as_str();
    // Time-targeted: 100-row batches take far less than 200 ms, so the
    // size grows batch after batch.
    let m = expanded_and_backfilled(
        admin,
        &id,
        json!({"batch_size": 100, "batch_target_ms": 200}),
    )
    .await;
    assert_eq!(m["backfill"]["rows_done"], 2100, "{m}");
    assert!(m["backfill"]["batch_size"].as_i64().unwrap() > 100, "{m}");
    let (_, body) = post(admin, &format!("/migrations/{id}/validate"), json!({})).await;
    assert_eq!(body["validation"]["mismatches"], 0, "{body}");
    let wrong: i64 = direct
        .query_one(
            &format!("select count(*) from {table} where amount_dec is distinct from amount::numeric / 100"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0);
    // A mismatch made behind pgshift's back is found, and fixed on request.
    direct
        .batch_execute(&format!(
            "update {table} set amount_dec = 0 where region = 'us' and n = 7"
        ))
        .await
        .unwrap();
    let (_, body) = post(admin, &format!("/migrations/{id}/validate"), json!({})).await;
    assert_eq!(body["validation"]["mismatches"], 1, "{body}");
    assert_eq!(body["validation"]["samples"][0], "(us,7)", "{body}");
    let (code, _) = post(
        admin,
        &format!("/migrations/{id}/switch-reads"),
        json!({"to": "new"}),
    )
    .await;
    assert_eq!(code, 409, "mismatches block the switch");
    let (_, body) = post(
        admin,
        &format!("/migrations/{id}/validate"),
        json!({"fix": true}),
    )
    .await;
    assert_eq!(body["validation"]["mismatches"], 0, "{body}");
    assert_eq!(body["phase"], "validated");
    drop(d);

    let keyless_id = unique("keyless_m");
    let spec =
        MigrationSpec::new(&keyless_id, &keyless, "amount", "amount2", None, None, None).unwrap();
    let d = driven(spec, &dbname).await;
    let admin = d.admin.as_str();
    assert_eq!(
        post(
            admin,
            &format!("/migrations/{keyless_id}/expand"),
            json!({})
        )
        .await
        .0,
        200
    );
    let (code, body) = post(
        admin,
        &format!("/migrations/{keyless_id}/backfill"),
        json!({}),
    )
    .await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("primary key"),
        "{body}"
    );
}

#[tokio::test]
async fn a_backfill_split_over_workers_pauses_resumes_and_loses_no_write() {
    let (dbname, direct, table, id, d) = renamed_v_to_w("workersdb", 30_000).await;
    let admin = d.admin.as_str();
    assert_eq!(
        post(admin, &format!("/migrations/{id}/expand"), json!({}))
            .await
            .0,
        200
    );
    // Old-shape writers through the proxy the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let added = Arc::new(AtomicI64::new(0));
    let mut writers = Vec::new();
    for n in 0..2i32 {
        let client = d.proxy.connect_to(&dbname).await;
        let sql = format!("update {table} set v = v + 1 where id = $1");
        let (stop, added) = (Arc::clone(&stop), Arc::clone(&added));
        writers.push(tokio::spawn(async move {
            let mut key = 1 + n * 7919;
            while !stop.load(Ordering::Relaxed) {
                key = (key * 31 + 17) % 30_000 + 1;
                client.execute(&sql, &[&key]).await.unwrap();
                added.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let (code, body) = post(
        admin,
        &format!("/migrations/{id}/backfill"),
        json!({"workers": 3, "batch_size": 500, "batch_pause_ms": 20}),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    // Every slice moves before any is done: three sessions at once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = migration_status(admin, &id).await;
        let moved = m["backfill"]["slices"].as_array().map(|s| {
            s.iter()
                .filter(|s| s["rows_done"].as_i64() > Some(0))
                .count()
        });
        if moved == Some(3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "three slices never all moved: {m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, body) = post(admin, &format!("/migrations/{id}/pause"), json!({})).await;
    assert_eq!(code, 200, "{body}");
    // What is stored: three slices that tile the key, each cursor inside
    // its slice with every row up to it backfilled, counts adding up.
    let row = direct
        .query_one(
            "select rows_done, backfill_slices::text from pgshift.migrations where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let done: i64 = row.get(0);
    let slices: Value = serde_json::from_str(row.get::<_, &str>(1)).unwrap();
    let slices = slices.as_array().unwrap();
    assert_eq!(slices.len(), 3, "{slices:?}");
    assert!(done < 30_000, "paused before the end: {done}");
    let key = |v: &Value| v[0].as_str().map(|k| k.parse::<i32>().unwrap());
    let mut lower = 0;
    let mut counted = 0;
    for slice in slices {
        let cursor = key(&slice["cursor"]).unwrap();
        let walked = slice["rows_done"].as_i64().unwrap();
        assert_eq!(i64::from(cursor - lower), walked, "{slice}");
        let behind: i64 = direct
            .query_one(
                &format!("select count(*) from {table} where id > $1 and id <= $2 and w is distinct from v"),
                &[&lower, &cursor],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            behind, 0,
            "rows behind the cursor of {slice} not backfilled"
        );
        counted += walked;
        lower = key(&slice["upper"]).unwrap_or(30_000);
    }
    assert_eq!(counted, done);
    let (code, body) = post(admin, &format!("/migrations/{id}/resume"), json!({})).await;
    assert_eq!(code, 202, "{body}");
    let m = wait_for_phase(admin, &id, "backfilled").await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // Each row walked exactly once over the three slices, and the split
    // is gone once the walk is done.
    assert_eq!(m["backfill"]["rows_done"], 30_000, "{m}");
    assert_eq!(m["backfill"]["slices"], json!([]), "{m}");
    let (_, body) = post(admin, &format!("/migrations/{id}/validate"), json!({})).await;
    assert_eq!(body["validation"]["mismatches"], 0, "{body}");
    // Every increment landed in both columns.
    let row = direct
        .query_one(
            &format!("select sum(v)::bigint, sum(w)::bigint from {table}"),
            &[],
        )
        .await
        .unwrap();
    let expected = 30_000i64 * 30_001 / 2 + added.load(Ordering::Relaxed);
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (expected, expected)
    );
    let (code, body) = post(
        admin,
        &format!("/migrations/{id}/backfill"),
        json!({"workers": 0}),
    )
    .await;
    assert_eq!(code, 400, "{body}");
}

#[tokio::test]
async fn the_backfill_walks_text_keys_whatever_they_hold() {
    let (dbname, direct) = db().fresh_database("textkeydb").await;
    let table = unique("texty");
    // Keys with quotes, backslashes, commas, braces, JSON and non-ASCII:
    // each batch's bounds travel as SQL literals and JSON.
    direct
        .batch_execute(&format!(
            r#"create table {table} (k text primary key, v int);
               insert into {table} select s || g, g from generate_series(1, 400) g,
                 unnest(array['o''brien', 'a\b', '{{x,y}}', '"q"', 'é ', '[1]', 'null']) s"#
        ))
        .await
        .unwrap();
    let id = unique("texty_m");
    let spec = MigrationSpec::new(&id, &table, "v", "w", None, None, None).unwrap();
    let d = driven(spec, &dbname).await;
    let admin = d.admin.as_str();
    let m = expanded_and_backfilled(admin, &id, json!({"batch_size": 37, "workers": 2})).await;
    assert_eq!(m["backfill"]["rows_done"], 2800, "{m}");
    assert_eq!(rows_where_w_differs(&direct, &table).await, 0);
}

#[tokio::test]
async fn migrations_added_at_run_time_apply_at_once_and_metrics_report_them() {
    let (dbname, direct) = db().fresh_database("adddb").await;
    let configured = unique("configured");
    let table = unique("priced");
    direct
        .batch_execute(&format!(
            "create table {configured} (id int primary key, x int);
             create table {table} (id int primary key, price int); insert into {table} values (1, 250)"
        ))
        .await
        .unwrap();
    let spec = MigrationSpec::new(&unique("cfg"), &configured, "x", "y", None, None, None).unwrap();
    let d = driven(spec, &dbname).await;
    let admin = d.admin.as_str();
    let id = unique("added");
    let body = json!({"id": id, "table": table, "from": "price", "to": "price_cents"});
    let (code, answer) = post(admin, "/migrations", body.clone()).await;
    assert_eq!(
        (code, answer["phase"].as_str()),
        (201, Some("planned")),
        "{answer}"
    );
    // In force at once: the new shape is served from the old column.
    let app = d.proxy.connect_to(&dbname).await;
    let row = app
        .query_one(
            &format!("select price_cents from {table} where id = 1"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 250);
    // Duplicates, unknown tables and incomplete bodies are refused.
    assert_eq!(post(admin, "/migrations", body).await.0, 409);
    let (code, answer) = post(
        admin,
        "/migrations",
        json!({"id": unique("nope"), "table": "no_such_table", "from": "a", "to": "b"}),
    )
    .await;
    assert_eq!(code, 409, "{answer}");
    assert_eq!(post(admin, "/migrations", json!({"id": "x"})).await.0, 400);

    let (code, metrics) = pgshift::admin::request(admin, "GET", "/metrics", None, None)
        .await
        .unwrap();
    assert_eq!(code, 200);
    let text = metrics.as_str().expect("metrics are text");
    assert!(
        text.contains(&format!(
            "pgshift_migration_phase{{migration=\"{id}\",phase=\"planned\"}} 1"
        )),
        "{text}"
    );
    assert!(text.contains("# TYPE pgshift_sessions gauge"), "{text}");
    // The rewritten statement's requests (prepare, then execute) are in
    // the migration's latency histogram, labels escaped by the library.
    assert!(
        text.contains(&format!(
            "pgshift_migration_statement_seconds_count{{migration=\"{id}\",kind=\"rewritten\"}} 2"
        )),
        "{text}"
    );
    assert!(
        text.contains("pgshift_statement_seconds_bucket{le=\"0.0001\",kind=\"rewritten\"}"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains(&format!(
            "pgshift_statements_rewritten_total{{migration=\"{id}\"}} 1"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn the_backfill_waits_while_sessions_queue_for_locks_on_the_table() {
    let (dbname, _direct, table, id, d) = renamed_v_to_w("throttledb", 3000).await;
    let admin = d.admin.as_str();
    assert_eq!(
        post(admin, &format!("/migrations/{id}/expand"), json!({}))
            .await
            .0,
        200
    );

    // One session holds a lock, a second queues behind it.
    let holder = connect(&db().config_for(&dbname)).await.unwrap();
    holder
        .batch_execute(&format!(
            "begin; lock table {table} in share row exclusive mode"
        ))
        .await
        .unwrap();
    let waiter = connect(&db().config_for(&dbname)).await.unwrap();
    let queued = {
        let sql = format!("begin; lock table {table} in share row exclusive mode; commit");
        tokio::spawn(async move { waiter.batch_execute(&sql).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (code, body) = post(
        admin,
        &format!("/migrations/{id}/backfill"),
        json!({"batch_size": 500, "max_lock_waits": 0}),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = migration_status(admin, &id).await;
        if m["backfill"]["throttled"].is_string() {
            break m;
        }
        assert!(Instant::now() < deadline, "never throttled: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        m["backfill"]["throttled"]
            .as_str()
            .unwrap()
            .contains("wait for locks"),
        "{m}"
    );
    assert_eq!(m["backfill"]["rows_done"], 0, "{m}");

    // The queue drains: the backfill goes on by itself and finishes.
    holder.batch_execute("commit").await.unwrap();
    queued.await.unwrap().unwrap();
    let m = wait_for_phase(admin, &id, "backfilled").await;
    assert_eq!(m["backfill"]["rows_done"], 3000, "{m}");
    assert!(m["backfill"]["throttled"].is_null(), "{m}");
}

#[tokio::test]
async fn a_proxy_that_cannot_confirm_the_state_refuses_statements_on_migrating_tables() {
    use pgshift::lifecycle::peers::Options;
    let (dbname, direct) = db().fresh_database("leasedb").await;
    let table = unique("leased");
    let other = unique("unrelated");
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, v int); insert into {table} values (1, 1);
             create table {other} (id int); insert into {other} values (7)"
        ))
        .await
        .unwrap();
    let spec = MigrationSpec::new(&unique("lease_m"), &table, "v", "w", None, None, None).unwrap();
    let mut config = control_config_for(&dbname);
    config.migrations = vec![ActiveMigration {
        spec,
        phase: Phase::Planned,
    }];
    let rules = Arc::new(RulesCell::new(&config.migrations));
    let options = Options {
        ack_timeout: Duration::from_secs(2),
        proxy_timeout: Duration::from_millis(900),
        poll: Duration::from_millis(50),
    };
    let lifecycle = Lifecycle::start_with(config.clone(), Arc::clone(&rules), options)
        .await
        .unwrap();
    let control = config.control.clone();
    let proxy = TestProxy::with_rewriter(Arc::new(MigrationRewriter::new(rules)), move |c| {
        c.control = control
    })
    .await;
    let app = proxy.connect_to(&dbname).await;
    let sql = format!("select w from {table}");
    assert_eq!(app.query_one(&sql, &[]).await.unwrap().get::<_, i32>(0), 1);

    // The proxy loses touch with the stored state (hung poller, lost
    // control connection): after its lease it fails safe…
    lifecycle.stop();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let err = refused(app.query_one(&sql, &[]).await, &sql);
    assert_eq!(sqlstate(&err).as_deref(), Some("55000"));
    assert!(message_of(&err).contains("confirm the migration state"));
    // …for the migrating table only.
    let v: i32 = app
        .query_one(&format!("select id from {other}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_during_the_backfill_is_waited_out() {
    use pgshift::cluster::{Cluster, ClusterOptions, SUPERUSER};
    // Its own cluster: restarting the shared one would disturb other tests.
    let cluster = Arc::new(
        tokio::task::spawn_blocking(|| Cluster::start(&ClusterOptions::default()))
            .await
            .unwrap()
            .expect("a cluster of the test's own"),
    );
    let table = unique("restart");
    let id = unique("restart_m");
    cluster
        .psql(
            "postgres",
            &format!("create table {table} (id int primary key, v int not null); insert into {table} select g, g % 1000 from generate_series(1, 200000) g"),
        )
        .unwrap();
    let mut config = control_config_for("postgres");
    config.upstream = cluster.address().parse().unwrap();
    config.control.user = SUPERUSER.into();
    config.control.password = None;
    config.migrations = vec![ActiveMigration {
        spec: MigrationSpec::new(&id, &table, "v", "w", None, None, None).unwrap(),
        phase: Phase::Planned,
    }];
    let rules = Arc::new(RulesCell::new(&config.migrations));
    let lifecycle = Lifecycle::start(config.clone(), Arc::clone(&rules))
        .await
        .unwrap();
    let upstream = config.upstream.clone();
    let proxy = TestProxy::with_rewriter(Arc::new(MigrationRewriter::new(rules)), move |c| {
        c.upstream = upstream;
        c.control = config.control.clone();
    })
    .await;
    lifecycle.act(&id, Action::Expand).await.unwrap();

    // A writer through the proxy, reconnecting when Postgres goes away.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let mut client_config = proxy.config();
        client_config.user(SUPERUSER).dbname("postgres");
        let sql = format!("update {table} set v = v + 1 where id = $1");
        tokio::spawn(async move {
            let (mut n, mut ok) = (0i32, 0u64);
            let mut client = None;
            while !stop.load(Ordering::Relaxed) {
                if client.is_none() {
                    client = connect(&client_config).await.ok();
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
                n += 1;
                let row = (n * 7919) % 200000 + 1;
                match client.as_ref().unwrap().execute(&sql, &[&row]).await {
                    Ok(_) => ok += 1,
                    Err(_) => client = None,
                }
            }
            ok
        })
    };
    lifecycle
        .act(
            &id,
            Action::Backfill(api::Backfill {
                batch_size: Some(2000),
                batch_pause_ms: Some(5),
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lifecycle.status_of(&id).unwrap().backfill.rows_done < 20000 {
        assert!(Instant::now() < deadline, "the backfill does not move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let restarting = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || restarting.restart())
        .await
        .unwrap()
        .expect("pg_ctl restart");
    // The backfill goes on by itself and ends with every row walked once.
    let deadline = Instant::now() + Duration::from_secs(90);
    let m = loop {
        let m = lifecycle.status_of(&id).unwrap();
        if m.phase == pgshift::rewrite::migration::Phase::Backfilled {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "the backfill never finished: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(m.backfill.rows_done, 200000, "{m:?}");
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    assert!(writes > 0);
    let m = lifecycle
        .act(&id, Action::Validate(Default::default()))
        .await
        .unwrap();
    assert_eq!(m.validation.map(|v| v.mismatches), Some(0));
    lifecycle.leave().await;
    drop(proxy);
}

/// Chromium, when installed (`.ci/run` installs it).
fn chromium() -> Option<std::path::PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| {
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join(name))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .find(|p| p.is_file())
}

#[tokio::test]
async fn the_status_page_renders_a_running_backfill_in_a_browser() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: no chromium on PATH (apt-get install chromium); .ci/run installs it");
        return;
    };
    let (_dbname, _direct, _table, id, d) = renamed_v_to_w("pagedb", 200000).await;
    let admin = d.admin.clone();
    assert_eq!(
        post(&admin, &format!("/migrations/{id}/expand"), json!({}))
            .await
            .0,
        200
    );
    let (code, _) = post(
        &admin,
        &format!("/migrations/{id}/backfill"),
        json!({"batch_size": 500, "batch_pause_ms": 100}),
    )
    .await;
    assert_eq!(code, 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    while migration_status(&admin, &id).await["backfill"]["rows_done"]
        .as_i64()
        .unwrap()
        == 0
    {
        assert!(Instant::now() < deadline, "the backfill does not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("http://{admin}/");
    let screenshot = std::env::var_os("PGSHIFT_STATUS_SCREENSHOT");
    let dom = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(browser);
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1100,520",
            "--virtual-time-budget=4000",
        ]);
        match &screenshot {
            Some(path) => {
                let mut arg = std::ffi::OsString::from("--screenshot=");
                arg.push(path);
                cmd.arg(arg);
            }
            None => {
                cmd.arg("--dump-dom");
            }
        }
        cmd.arg(&url).output().expect("running chromium")
    })
    .await
    .unwrap();
    if std::env::var_os("PGSHIFT_STATUS_SCREENSHOT").is_some() {
        return;
    }
    let html = String::from_utf8_lossy(&dom.stdout);
    assert!(html.contains(&format!("data-id=\"{id}\"")), "{html}");
    assert!(html.contains("data-phase=\"backfilling\""), "{html}");
    assert!(html.contains("backfill running"), "{html}");
    let rows: i64 = html
        .split("data-rows-done=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no progress rendered: {html}"));
    assert!(rows > 0, "{html}");
}

#[tokio::test]
async fn a_client_killed_mid_transaction_during_the_backfill_leaves_both_columns_consistent() {
    let (dbname, direct, table, id, d) = renamed_v_to_w("killdb", 50000).await;
    let admin = d.admin.clone();
    assert_eq!(
        post(&admin, &format!("/migrations/{id}/expand"), json!({}))
            .await
            .0,
        200
    );
    let (code, _) = post(
        &admin,
        &format!("/migrations/{id}/backfill"),
        json!({"batch_size": 1000, "batch_pause_ms": 20}),
    )
    .await;
    assert_eq!(code, 202);
    // Mid-backfill, a client writes both shapes in a transaction and dies
    // before committing: nothing of it may remain, in either column.
    let victim = d.proxy.connect_to(&dbname).await;
    victim
        .batch_execute(&format!(
            "begin; update {table} set v = v + 1000000 where id = 49999;
             update {table} set w = w + 1000000 where id = 50000"
        ))
        .await
        .unwrap();
    drop(victim);
    // Its row locks are released: another client can write the rows now.
    let other = d.proxy.connect_to(&dbname).await;
    tokio::time::timeout(
        Duration::from_secs(10),
        other.execute(
            &format!("update {table} set v = v + 1 where id = 49999"),
            &[],
        ),
    )
    .await
    .expect("the dead client's locks are released")
    .unwrap();
    wait_for_phase(&admin, &id, "backfilled").await;
    let (_, body) = post(&admin, &format!("/migrations/{id}/validate"), json!({})).await;
    assert_eq!(body["validation"]["mismatches"], 0, "{body}");
    let rows: Vec<(i32, i32)> = direct
        .query(
            &format!("select v, w from {table} where id in (49999, 50000) order by id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, vec![(50000, 50000), (50000, 50000)]);
}

#[tokio::test]
async fn contract_waits_for_a_long_transaction_without_stalling_other_clients() {
    let (dbname, _direct, table, id, d) = renamed_v_to_w("contractlockdb", 2000).await;
    let admin = d.admin.clone();
    for (action, body) in [
        ("expand", json!({})),
        ("backfill", json!({"batch_size": 1000})),
    ] {
        post(&admin, &format!("/migrations/{id}/{action}"), body).await;
    }
    wait_for_phase(&admin, &id, "backfilled").await;
    for (action, body) in [
        ("validate", json!({})),
        ("switch-reads", json!({"to": "new"})),
    ] {
        let (code, answer) = post(&admin, &format!("/migrations/{id}/{action}"), body).await;
        assert_eq!(code, 200, "{answer}");
    }
    // A long transaction (a report, say) holds a lock on the table.
    let longest = behind_a_long_transaction(
        &d,
        &dbname,
        &format!("select count(*) from {table}"),
        &table,
        &id,
        "contract",
        json!({"force": true}),
        "contracted",
    )
    .await;
    assert!(
        longest < Duration::from_millis(2000),
        "a reader stalled for {longest:?}"
    );
}

/// A foreign key on the old column is carried to the new one: added NOT
/// VALID at expand (so a write breaking it fails at once), validated at
/// contract, with its actions intact; a unique constraint becomes one on
/// the new column; the column ends constrained as the old one was.
#[tokio::test]
async fn a_foreign_key_on_the_old_column_moves_to_the_new_one() {
    let (dbname, direct) = db().fresh_database("fkdb").await;
    direct
        .batch_execute(
            "create table parent (id int primary key);
             insert into parent select generate_series(1, 10);
             create table child (id int primary key, parent_id int not null
                                 references parent (id) on delete cascade
                                 constraint parent_id_positive check (parent_id > 0),
                                 unique (id, parent_id));
             insert into child select g, g % 10 + 1 from generate_series(1, 500) g;",
        )
        .await
        .unwrap();
    let spec = MigrationSpec::new(
        "child_parent",
        "child",
        "parent_id",
        "parent_ref",
        None,
        None,
        None,
    )
    .unwrap();
    let d = driven(spec, &dbname).await;
    let admin = d.admin.as_str();
    let constraints = |validated_only: bool| {
        let direct = &direct;
        async move {
            direct
                .query(
                    "select pg_get_constraintdef(c.oid) from pg_constraint c
                      where c.conrelid = 'child'::regclass and c.contype = 'f'
                        and (c.convalidated or not $1) order by c.conname",
                    &[&validated_only],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        }
    };

    let (code, body) = post(admin, "/migrations/child_parent/expand", json!({})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        constraints(false).await,
        [
            "FOREIGN KEY (parent_id) REFERENCES parent(id) ON DELETE CASCADE",
            "FOREIGN KEY (parent_ref) REFERENCES parent(id) ON DELETE CASCADE NOT VALID",
        ]
    );
    // Enforced on the new column at once (through the dual write, the old
    // key fails first; written directly to the new column, the copy does).
    let broken = direct
        .execute("update child set parent_ref = 99 where id = 1", &[])
        .await;
    assert_eq!(
        sqlstate(&refused(broken, "a write breaking the copied key")).as_deref(),
        Some("23503")
    );
    // The CHECK on the old column is on the new one too.
    let broken = direct
        .execute("update child set parent_ref = -1 where id = 1", &[])
        .await;
    assert_eq!(
        sqlstate(&refused(broken, "a write breaking the copied check")).as_deref(),
        Some("23514")
    );

    switch_to_new(admin, "child_parent").await;
    let (code, body) = post(
        admin,
        "/migrations/child_parent/contract",
        json!({"force": true}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        constraints(true).await,
        ["FOREIGN KEY (parent_ref) REFERENCES parent(id) ON DELETE CASCADE"],
        "the copy is validated and is the only key left"
    );
    // The unique constraint on the old column is one on the new column.
    let unique: Vec<String> = direct
        .query(
            "select pg_get_constraintdef(oid) from pg_constraint
              where conrelid = 'child'::regclass and contype = 'u'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(unique, ["UNIQUE (id, parent_ref)"]);
    // The check is validated on the new column, under its own name.
    let checks: Vec<String> = direct
        .query(
            "select conname || ': ' || pg_get_constraintdef(oid) || case when convalidated then '' else ' (not validated)' end
               from pg_constraint where conrelid = 'child'::regclass and contype = 'c'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(checks, ["parent_id_positive: CHECK ((parent_ref > 0))"]);
    // Its action works: deleting a parent removes its children.
    direct
        .batch_execute("delete from parent where id = 1")
        .await
        .unwrap();
    let orphans: i64 = direct
        .query_one("select count(*) from child where parent_ref = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0);
}

/// The common real case: an `integer` primary key running out of room
/// becomes `bigint`. The copy of the key's index becomes the primary key,
/// the foreign keys of other tables that reference it move onto the new
/// column (actions intact), and everything ends under the original names.
#[tokio::test]
async fn a_primary_key_and_the_keys_referencing_it_move_to_the_new_column() {
    let (dbname, direct) = db().fresh_database("pkdb").await;
    direct
        .batch_execute(
            "create table accounts (id int primary key, name text not null);
             insert into accounts select g, 'n' || g from generate_series(1, 300) g;
             create table orders (id int primary key,
                                  account_id int not null references accounts (id) on delete cascade);
             insert into orders select g, g % 300 + 1 from generate_series(1, 900) g;
             create table notes (id int primary key, account_id int references accounts);
             insert into notes select g, g from generate_series(1, 50) g;",
        )
        .await
        .unwrap();
    let spec = MigrationSpec::new(
        "accounts_id_big",
        "accounts",
        "id",
        "id_big",
        Some("bigint"),
        Some("id::bigint"),
        Some("id_big::integer"),
    )
    .unwrap();
    let d = driven(spec, &dbname).await;
    let admin = d.admin.as_str();
    let app = d.proxy.connect_to(&dbname).await;
    let definitions = |sql: &'static str| {
        let direct = &direct;
        async move {
            direct
                .query(sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| format!("{}: {}", r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect::<Vec<_>>()
        }
    };
    let keys = "select conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid) || case when convalidated then '' else ' (not validated)' end
                  from pg_constraint where contype in ('p', 'f') and connamespace = 'public'::regnamespace order by 1";
    let indexes = "select indexrelid::regclass::text, pg_get_indexdef(indexrelid) from pg_index
                    where indrelid = 'accounts'::regclass order by 1";

    let (code, body) = post(admin, "/migrations/accounts_id_big/expand", json!({})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        definitions(indexes).await,
        [
            "accounts_pkey: CREATE UNIQUE INDEX accounts_pkey ON public.accounts USING btree (id)",
            "accounts_pkey_pgshift_id_big: CREATE UNIQUE INDEX accounts_pkey_pgshift_id_big ON public.accounts USING btree (id_big)",
        ],
        "the key's index is copied onto the new column at expand"
    );
    // New rows through the proxy, in the old shape, before and after.
    app.execute("insert into accounts (id, name) values (301, 'new')", &[])
        .await
        .unwrap();
    switch_to_new(admin, "accounts_id_big").await;
    let (code, body) = post(
        admin,
        "/migrations/accounts_id_big/contract",
        json!({"force": true}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        definitions(keys).await,
        [
            "accounts.accounts_pkey: PRIMARY KEY (id_big)",
            "notes.notes_account_id_fkey: FOREIGN KEY (account_id) REFERENCES accounts(id_big)",
            "notes.notes_pkey: PRIMARY KEY (id)",
            "orders.orders_account_id_fkey: FOREIGN KEY (account_id) REFERENCES accounts(id_big) ON DELETE CASCADE",
            "orders.orders_pkey: PRIMARY KEY (id)",
        ],
        "the primary key and the keys referencing it are on the new column, validated, under their names"
    );
    assert_eq!(
        definitions(indexes).await,
        ["accounts_pkey: CREATE UNIQUE INDEX accounts_pkey ON public.accounts USING btree (id_big)"]
    );
    // The keys work: a duplicate id and an order for no account are
    // refused, deleting an account removes its orders (through the proxy,
    // in the old shape, still served).
    let duplicate = app
        .execute("insert into accounts (id, name) values (301, 'again')", &[])
        .await;
    assert_eq!(
        sqlstate(&refused(duplicate, "a duplicate primary key")).as_deref(),
        Some("23505")
    );
    let orphan = direct
        .execute("insert into orders values (5000, 9999)", &[])
        .await;
    assert_eq!(
        sqlstate(&refused(orphan, "an order for no account")).as_deref(),
        Some("23503")
    );
    app.execute("delete from notes where account_id = 7", &[])
        .await
        .unwrap();
    app.execute("delete from accounts where id = 7", &[])
        .await
        .unwrap();
    let left: i64 = direct
        .query_one("select count(*) from orders where account_id = 7", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "ON DELETE CASCADE carried over");
    let row = app
        .query_one("select id, name from accounts where id = 301", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (301, "new".to_string())
    );
    // A lookup by the old name with an `int4` parameter (the client's
    // type, kept) is served by the new primary key's index.
    let row = app
        .query_one("select name from accounts where id = $1", &[&42i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "n42");
    // Scans counted by the app's own backend in its open transaction
    // (pg_stat_xact_*: exact, nothing another backend flushes late).
    let scans = || async {
        let row = app
            .query_one(
                "select seq_scan, idx_scan, idx_tup_fetch from pg_stat_xact_user_tables where relname = 'accounts'",
                &[],
            )
            .await
            .unwrap();
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
        )
    };
    app.batch_execute("begin").await.unwrap();
    let lookup = app
        .prepare("select name from accounts where id = $1")
        .await
        .unwrap();
    for id in 10..30i32 {
        app.query_one(&lookup, &[&id]).await.unwrap();
    }
    let after = scans().await;
    assert_eq!(after.0, 0, "no sequential scan for a lookup by key");
    assert!(after.1 >= 20, "{after:?}");
    // Keyset pagination by the old name walks the index in order and stops
    // after the page (no sort of every later row).
    let page: Vec<i32> = app
        .query(
            "select id from accounts where id > $1 order by id limit 5",
            &[&100i32],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(page, [101, 102, 103, 104, 105]);
    let paged = scans().await;
    assert_eq!(paged.0, 0, "no sequential scan for a page");
    assert!(
        paged.2 - after.2 <= 10,
        "a page of 5 fetched {} rows",
        paged.2 - after.2
    );
    app.batch_execute("commit").await.unwrap();
}

/// A key that references the old column but cannot follow it (an `int`
/// column cannot reference `text`) stops the contract before anything is
/// dropped, with a 409 naming it; a rollback is still possible.
#[tokio::test]
async fn a_referencing_key_that_cannot_move_stops_the_contract_cleanly() {
    let (dbname, direct) = db().fresh_database("pkrefuse").await;
    direct
        .batch_execute(
            "create table codes (code int primary key);
             insert into codes select generate_series(1, 20);
             create table uses (id int primary key, code int references codes);
             insert into uses select g, g from generate_series(1, 20) g;",
        )
        .await
        .unwrap();
    let spec = MigrationSpec::new(
        "codes_text",
        "codes",
        "code",
        "code_text",
        Some("text"),
        Some("code::text"),
        Some("code_text::integer"),
    )
    .unwrap();
    let d = driven(spec, &dbname).await;
    let admin = d.admin.as_str();
    let (code, body) = post(admin, "/migrations/codes_text/expand", json!({})).await;
    assert_eq!(code, 200, "{body}");
    switch_to_new(admin, "codes_text").await;
    let (code, body) = post(
        admin,
        "/migrations/codes_text/contract",
        json!({"force": true}),
    )
    .await;
    assert_eq!(code, 409, "{body}");
    let message = body.to_string();
    assert!(
        message.contains("uses_code_fkey") && message.contains("cannot be dropped"),
        "{message}"
    );
    let columns: Vec<String> = direct
        .query(
            "select attname::text from pg_attribute where attrelid = 'codes'::regclass and attnum > 0 and not attisdropped order by attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(columns, ["code", "code_text"], "nothing dropped");
    wait_for_phase(admin, "codes_text", "switched").await;
    let (code, body) = post(admin, "/migrations/codes_text/rollback", json!({})).await;
    assert_eq!(code, 200, "{body}");
    let fks: i64 = direct
        .query_one(
            "select count(*) from pg_constraint where contype = 'f'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(fks, 1, "the original key is untouched");
}

/// An exclusion constraint on the old column cannot be built on the new
/// one without blocking writes: the contract refuses, says what to add,
/// and goes ahead once the operator has added it.
#[tokio::test]
async fn an_exclusion_constraint_on_the_old_column_holds_the_contract_until_carried() {
    let (dbname, direct) = db().fresh_database("exclude").await;
    direct
        .batch_execute(
            "create table slots (id int primary key, room int, exclude using btree (room with =));
             insert into slots select g, g from generate_series(1, 50) g;",
        )
        .await
        .unwrap();
    let spec =
        MigrationSpec::new("slots_room", "slots", "room", "room_no", None, None, None).unwrap();
    let d = driven(spec, &dbname).await;
    let admin = d.admin.as_str();
    let (code, body) = post(admin, "/migrations/slots_room/expand", json!({})).await;
    assert_eq!(code, 200, "{body}");
    switch_to_new(admin, "slots_room").await;
    let (code, body) = post(
        admin,
        "/migrations/slots_room/contract",
        json!({"force": true}),
    )
    .await;
    assert_eq!(code, 409, "{body}");
    let message = body.to_string();
    assert!(
        message.contains("slots_room_excl")
            && message.contains("EXCLUDE USING btree (room_no WITH =)"),
        "{message}"
    );
    direct
        .batch_execute("alter table slots add constraint slots_room_no_excl exclude using btree (room_no with =)")
        .await
        .unwrap();
    let (code, body) = post(
        admin,
        "/migrations/slots_room/contract",
        json!({"force": true}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let app = d.proxy.connect_to(&dbname).await;
    let clash = app
        .execute("insert into slots (id, room) values (100, 7)", &[])
        .await;
    assert_eq!(
        sqlstate(&refused(clash, "a row the exclusion constraint forbids")).as_deref(),
        Some("23P01")
    );
}

/// The parity check over an integer key (one aggregate per range): every
/// mismatch made behind pgshift's back is counted across ranges — the
/// first and last rows included — the first five named in key order,
/// and `fix` repairs them all.
#[tokio::test]
async fn the_parity_check_counts_mismatches_across_ranges_of_an_integer_key() {
    let (_dbname, direct, table, id, d) = renamed_v_to_w("parity", 5000).await;
    let admin = d.admin.as_str();
    expanded_and_backfilled(admin, &id, json!({"batch_size": 1000})).await;
    let broken = [1, 699, 700, 701, 2500, 4999, 5000];
    direct
        .batch_execute(&format!(
            "update {table} set w = -1 where id = any('{{{}}}'::int[])",
            broken.map(|k| k.to_string()).join(",")
        ))
        .await
        .unwrap();
    // A table this small is checked in one statement, then (as asked)
    // range by range: the same count and the same first keys.
    for (request, how) in [
        (json!({}), "one statement over 5000 rows"),
        (
            json!({"range_rows": 700, "pause_ms": 0}),
            "8 ranges of up to 700 keys over 5000 rows",
        ),
    ] {
        let (code, body) = post(admin, &format!("/migrations/{id}/validate"), request).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["validation"]["mismatches"], 7, "{body}");
        assert_eq!(
            body["validation"]["samples"],
            json!(["1", "699", "700", "701", "2500"]),
            "{body}"
        );
        let detail = last_validation(&direct, &id).await;
        assert!(detail.contains(how), "{how}: {detail}");
    }
    let (_, body) = post(
        admin,
        &format!("/migrations/{id}/validate"),
        json!({"range_rows": 700, "pause_ms": 0, "fix": true}),
    )
    .await;
    assert_eq!(body["validation"]["mismatches"], 0, "{body}");
    assert_eq!(body["phase"], "validated");
    assert_eq!(rows_where_w_differs(&direct, &table).await, 0);
}

/// The detail of migration `id`'s last validate event.
async fn last_validation(direct: &tokio_postgres::Client, id: &str) -> String {
    direct
        .query_one(
            "select detail from pgshift.events where migration_id = $1 and action = 'validate' order by id desc limit 1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_parity_check_past_its_one_statement_budget_walks_the_table_instead() {
    let (_dbname, direct, table, id, d) = renamed_v_to_w("one_pass", 50_000).await;
    let admin = d.admin.as_str();
    expanded_and_backfilled(admin, &id, json!({"batch_size": 10_000})).await;
    direct
        .batch_execute(&format!("update {table} set w = -1 where id in (3, 49999)"))
        .await
        .unwrap();
    // No pass over 50,000 rows ends within 1 ms: the statement is
    // cancelled and the walk checks every row.
    let (code, body) = post(
        admin,
        &format!("/migrations/{id}/validate"),
        json!({"one_pass_ms": 1}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["validation"]["mismatches"], 2, "{body}");
    assert_eq!(
        body["validation"]["samples"],
        json!(["3", "49999"]),
        "{body}"
    );
    let detail = last_validation(&direct, &id).await;
    assert!(
        detail.contains("5 ranges of up to 10000 keys over 50000 rows")
            && detail.contains("one statement ran past 1 ms"),
        "{detail}"
    );
    // Within its budget, one statement finds the same.
    let (_, body) = post(admin, &format!("/migrations/{id}/validate"), json!({})).await;
    assert_eq!(
        body["validation"]["samples"],
        json!(["3", "49999"]),
        "{body}"
    );
    assert!(last_validation(&direct, &id)
        .await
        .contains("one statement over 50000 rows"));
    let (code, body) = post(
        admin,
        &format!("/migrations/{id}/validate"),
        json!({"one_pass_ms": 70000}),
    )
    .await;
    assert_eq!(code, 400, "{body}");
}

/// Writes of both shapes that leave a NOT NULL migrating column alone
/// (an UPDATE of another column, an upsert that sets another column) and
/// INSERTs, all the time from before expand to after contract: none may
/// fail. A NOT VALID check on the new column added at expand failed every
/// UPDATE of a row the backfill had not reached; rules that stopped
/// writing the old column before its NOT NULL was gone failed INSERTs
/// during the contract.
#[tokio::test]
async fn a_not_null_column_fails_no_write_in_any_phase() {
    let (direct, table) = writes_against_a_not_null_column(false).await;
    let row = direct
        .query_one(
            &format!(
                "select count(*) filter (where b is null),
                        (select attnotnull from pg_attribute where attrelid = '{table}'::regclass and attname = 'b')
                   from {table}"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    assert!(row.get::<_, bool>(1), "b is NOT NULL like a was");
}

/// The same writers through a rollback after the switch: the old shape's
/// INSERTs must not fail on the new column's NOT NULL check in the moment
/// before it is dropped, and the old column keeps its NOT NULL.
#[tokio::test]
async fn a_not_null_column_fails_no_write_through_a_rollback() {
    let (direct, table) = writes_against_a_not_null_column(true).await;
    let row = direct
        .query_one(
            &format!(
                "select count(*) filter (where a is null),
                        (select attnotnull from pg_attribute where attrelid = '{table}'::regclass and attname = 'a'),
                        (select count(*) from pg_attribute where attrelid = '{table}'::regclass and attname = 'b' and not attisdropped)
                   from {table}"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    assert!(row.get::<_, bool>(1), "a is still NOT NULL");
    assert_eq!(row.get::<_, i64>(2), 0, "b is gone");
}

/// Runs old- and new-shape writers on a NOT NULL column `a` renamed to
/// `b` through expand → backfill → validate → switch, then contract and
/// complete (or, with `rollback`, switch back and roll back); asserts no
/// write failed and every insert landed. Answers the direct client and
/// the table.
async fn writes_against_a_not_null_column(rollback: bool) -> (tokio_postgres::Client, String) {
    let (dbname, direct) = db().fresh_database("nndb").await;
    let table = unique("nn");
    let id = unique("nn_rename");
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, a int not null, c int not null default 0);
             insert into {table} select g, g, 0 from generate_series(1, 3000) g"
        ))
        .await
        .unwrap();
    let spec = MigrationSpec::new(&id, &table, "a", "b", None, None, None).unwrap();
    let d = driven(spec, &dbname).await;
    let admin = d.admin.as_str();
    let stops = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    let next_id = Arc::new(AtomicI64::new(100_000));
    let mut writers = Vec::new();
    for (k, column) in ["a", "b"].into_iter().enumerate() {
        let client = d.proxy.connect_to(&dbname).await;
        let (stop, next_id, table) = (Arc::clone(&stops[k]), Arc::clone(&next_id), table.clone());
        writers.push(tokio::spawn(async move {
            let update = format!("update {table} set c = c + 1 where id = $1");
            let upsert = format!(
                "insert into {table} (id, {column}, c) values ($1, 7, 1) on conflict (id) do update set c = {table}.c + excluded.c"
            );
            let insert = format!("insert into {table} (id, {column}) values ($1, $2)");
            let (mut n, mut errors) = (0i32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let row = (n * 7919 + k as i32 * 101) % 3000 + 1;
                let fresh = next_id.fetch_add(1, Ordering::Relaxed) as i32;
                for result in [
                    client.execute(&update, &[&row]).await,
                    client.execute(&upsert, &[&row]).await,
                    client.execute(&insert, &[&fresh, &fresh]).await,
                ] {
                    if let Err(e) = result {
                        errors.push(format!("{:?}: {}", sqlstate(&e), message_of(&e)));
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (n, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, body) = post(admin, &format!("/migrations/{id}/expand"), json!({})).await;
    assert_eq!(code, 200, "{body}");
    // A slow backfill: most rows wait for it while the writers run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, body) = post(
        admin,
        &format!("/migrations/{id}/backfill"),
        json!({"batch_size": 100, "batch_pause_ms": 40}),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    wait_for_phase(admin, &id, "backfilled").await;
    let steps: &[(&str, Value)] = if rollback {
        &[
            ("validate", json!({})),
            ("switch-reads", json!({"to": "new"})),
            ("switch-reads", json!({"to": "old"})),
        ]
    } else {
        &[
            ("validate", json!({})),
            ("switch-reads", json!({"to": "new"})),
            ("contract", json!({"force": true})),
        ]
    };
    for (action, body) in steps {
        let (code, answer) = post(admin, &format!("/migrations/{id}/{action}"), body.clone()).await;
        assert_eq!(code, 200, "{action}: {answer}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The shape that goes away stops first.
    let (leaving, last) = if rollback {
        (1, "rollback")
    } else {
        (0, "complete")
    };
    stops[leaving].store(true, Ordering::Relaxed);
    let (left_rounds, left_errors) = writers.remove(leaving).await.unwrap();
    let (code, body) = post(admin, &format!("/migrations/{id}/{last}"), json!({})).await;
    assert_eq!(code, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stops[1 - leaving].store(true, Ordering::Relaxed);
    let (stayed_rounds, stayed_errors) = writers.remove(0).await.unwrap();
    assert!(
        left_rounds > 50 && stayed_rounds > 50,
        "{left_rounds} {stayed_rounds}"
    );
    assert_eq!(
        left_errors,
        Vec::<String>::new(),
        "writes of the shape that left"
    );
    assert_eq!(
        stayed_errors,
        Vec::<String>::new(),
        "writes of the shape that stayed"
    );
    let count: i64 = direct
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .unwrap()
        .get(0);
    let inserted = next_id.load(Ordering::Relaxed) - 100_000;
    assert_eq!(count, 3000 + inserted, "every insert landed");
    (direct, table)
}

/// What depends on the old column is found when the migration is
/// registered: what pgshift cannot carry is refused there, naming each
/// object and what to do; views, a trigger's column list, a policy,
/// statistics, an owned sequence and the replica identity are carried
/// onto the new column at contract — the views keep their shape and
/// serve current values — and nothing is left for `DROP COLUMN` to trip on.
#[tokio::test]
async fn what_depends_on_the_old_column_is_carried_or_refused_up_front() {
    let (dbname, direct) = db().fresh_database("depdb").await;
    direct
        .batch_execute(
            "create schema app;
             create table app.orders (id int primary key, amount serial not null, note text not null default '');
             insert into app.orders (id, amount) select g, g * 10 from generate_series(1, 200) g;
             select setval('app.orders_amount_seq', 10000);
             create unique index orders_amount_key on app.orders (amount);
             alter table app.orders replica identity using index orders_amount_key;
             create view app.order_amounts as select id, amount, amount * 2 as doubled from app.orders;
             create view app.every_order with (security_barrier) as select * from app.orders;
             create function app.touch() returns trigger language plpgsql as
               $$ begin new.note := 'touched'; return new; end $$;
             create trigger touch_on_amount before update of amount on app.orders
               for each row when (old.amount is distinct from new.amount) execute function app.touch();
             create policy small_orders on app.orders using (amount < 1000000);
             create statistics app.amount_note on amount, note from app.orders;
             create table app.blocked (id int primary key, v int not null,
                                       twice int generated always as (v * 2) stored);
             create materialized view app.blocked_sums as select sum(v) from app.blocked;",
        )
        .await
        .unwrap();
    let d = driven(
        MigrationSpec::new("never", "app.unused", "w0", "w1", None, None, None).unwrap(),
        &dbname,
    )
    .await;
    let admin = d.admin.as_str();
    let (code, body) = post(
        admin,
        "/migrations",
        json!({"id": "blocked_v", "table": "app.blocked", "from": "v", "to": "v2"}),
    )
    .await;
    let error = body["error"].as_str().unwrap_or_default();
    assert_eq!(code, 409, "{body}");
    for says in [
        "generated column twice",
        "DROP EXPRESSION",
        "materialized view app.blocked_sums",
    ] {
        assert!(error.contains(says), "{says}: {error}");
    }

    let (code, body) = post(
        admin,
        "/migrations",
        json!({"id": "cents", "table": "app.orders", "from": "amount", "to": "amount_dec",
               "type": "numeric(12,2)", "up": "amount::numeric / 100", "down": "(amount_dec * 100)::integer"}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let app = d.proxy.connect_to(&dbname).await;
    let (code, body) = post(admin, "/migrations/cents/expand", json!({})).await;
    assert_eq!(code, 200, "{body}");
    switch_to_new(admin, "cents").await;
    let (code, body) = post(admin, "/migrations/cents/contract", json!({"force": true})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["phase"], "contracted");

    // The views keep their shape and serve what the new column holds.
    app.execute("update app.orders set amount_dec = 99.99 where id = 7", &[])
        .await
        .unwrap();
    let row = direct
        .query_one(
            "select amount, doubled from app.order_amounts where id = 7",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (9999, 19998));
    let columns: Vec<String> = direct
        .query(
            "select attname || ' ' || format_type(atttypid, atttypmod) from pg_attribute
              where attrelid = 'app.every_order'::regclass and attnum > 0 order by attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(columns, ["id integer", "amount integer", "note text"]);
    let options: Vec<String> = direct
        .query_one(
            "select reloptions from pg_class where oid = 'app.every_order'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(options, ["security_barrier=true"]);
    // The trigger fires on the new column; the policy, statistics, the
    // sequence and the replica identity are on it.
    let row = direct
        .query_one("select note from app.orders where id = 7", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "touched");
    let row = direct
        .query_one(
            "select (select pg_get_expr(polqual, polrelid) from pg_policy where polname = 'small_orders'),
                    (select count(*) from pg_statistic_ext where stxname = 'amount_note_pgshift_amount_dec'),
                    (select d.refobjsubid = (select attnum from pg_attribute where attrelid = 'app.orders'::regclass and attname = 'amount_dec')
                       from pg_depend d where d.objid = 'app.orders_amount_seq'::regclass and d.deptype = 'a'),
                    (select indexrelid::regclass::text from pg_index where indrelid = 'app.orders'::regclass and indisreplident)",
            &[],
        )
        .await
        .unwrap();
    assert!(
        row.get::<_, String>(0).contains("amount_dec"),
        "{:?}",
        row.get::<_, String>(0)
    );
    assert_eq!(row.get::<_, i64>(1), 1);
    assert!(
        row.get::<_, bool>(2),
        "the sequence is owned by the new column"
    );
    assert_eq!(
        row.get::<_, String>(3),
        "app.orders_amount_key",
        "replica identity on the copy"
    );
    // An INSERT that leaves the column out gets its default (the sequence).
    let (code, body) = post(admin, "/migrations/cents/complete", json!({})).await;
    assert_eq!(code, 200, "{body}");
    let row = app
        .query_one(
            "insert into app.orders (id) values (1000) returning amount_dec::text",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, String>(0),
        "100.01",
        "nextval 10001 cents, converted"
    );
}

#[tokio::test]
async fn a_failing_up_expression_stops_the_backfill_with_postgres_message() {
    let (dbname, direct) = db().fresh_database("failupdb").await;
    let table = unique("priced");
    let id = unique("widen");
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, amount int not null);
             insert into {table} select g, g from generate_series(1, 2000) g;
             update {table} set amount = 0 where id = 1500"
        ))
        .await
        .unwrap();
    let spec = MigrationSpec::new(
        &id,
        &table,
        "amount",
        "ratio",
        Some("bigint"),
        Some("(1000000 / amount)::bigint"),
        Some("(1000000 / ratio)::integer"),
    )
    .unwrap();
    let d = driven(spec, &dbname).await;
    let admin = d.admin.as_str();
    assert_eq!(
        post(admin, &format!("/migrations/{id}/expand"), json!({}))
            .await
            .0,
        200
    );
    let started = Instant::now();
    let (code, body) = post(
        admin,
        &format!("/migrations/{id}/backfill"),
        json!({"batch_size": 200}),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    // Stopped at once (not retried for minutes), with what Postgres said.
    let m = loop {
        let m = migration_status(admin, &id).await;
        if m["backfill"]["error"].is_string() {
            break m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never stopped: {m}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = m["backfill"]["error"].as_str().unwrap();
    assert!(
        error.contains("division by zero") && error.contains("22012"),
        "{m}"
    );
    assert_eq!(m["backfill"]["running"], false, "{m}");
    assert_eq!(m["backfill"]["paused"], true, "{m}");
    assert_eq!(m["phase"], "backfilling", "{m}");

    // The row put right, a resume finishes the job and clears the error.
    direct
        .execute(
            &format!("update {table} set amount = 7 where id = 1500"),
            &[],
        )
        .await
        .unwrap();
    let (code, body) = post(admin, &format!("/migrations/{id}/resume"), json!({})).await;
    assert_eq!(code, 202, "{body}");
    let m = wait_for_phase(admin, &id, "backfilled").await;
    assert!(m["backfill"]["error"].is_null(), "{m}");
    let wrong: i64 = direct
        .query_one(
            &format!("select count(*) from {table} where ratio is distinct from 1000000 / amount"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0);
}

#[tokio::test]
async fn a_role_outside_pgshift_holding_the_backfill_lock_cannot_stall_it() {
    let (dbname, direct, table, id, d) = renamed_v_to_w("lockstealdb", 3000).await;
    let admin = d.admin.as_str();
    let role = unique("intruder");
    direct
        .batch_execute(&format!("create role {role} login"))
        .await
        .unwrap();
    let mut config = db().config_for(&dbname);
    config.user(&role);
    let intruder = connect(&config).await.unwrap();
    // The key earlier versions derived from the migration id, taken first.
    intruder
        .execute("select pg_advisory_lock(731629845, hashtext($1))", &[&id])
        .await
        .unwrap();
    assert_eq!(
        post(admin, &format!("/migrations/{id}/expand"), json!({}))
            .await
            .0,
        200
    );
    let (code, body) = post(
        admin,
        &format!("/migrations/{id}/backfill"),
        json!({"batch_size": 100, "batch_pause_ms": 100}),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    // The intruder reads the running backfill's key from pg_locks …
    let started = Instant::now();
    let seen: i64 = loop {
        let rows = intruder
            .query(
                "select (classid::bigint << 32) | objid::bigint from pg_locks
                 where locktype = 'advisory' and objsubid = 1 and granted and pid <> pg_backend_pid()
                   and database = (select oid from pg_database where datname = current_database())",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = rows.first() {
            break row.get(0);
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the backfill never took its lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // … takes it while the backfill is paused, and the resumed backfill
    // finishes all the same.
    let (code, body) = post(admin, &format!("/migrations/{id}/pause"), json!({})).await;
    assert_eq!(code, 200, "{body}");
    intruder
        .execute("select pg_advisory_lock($1)", &[&seen])
        .await
        .unwrap();
    let (code, body) = post(admin, &format!("/migrations/{id}/resume"), json!({})).await;
    assert_eq!(code, 202, "{body}");
    let m = wait_for_phase(admin, &id, "backfilled").await;
    assert_eq!(m["backfill"]["rows_done"], 3000, "{m}");
    assert_eq!(rows_where_w_differs(&direct, &table).await, 0);
}

/// pgshift needs no superuser: a control role that owns the table and may
/// create the `pgshift` schema runs the whole lifecycle of a type change.
#[tokio::test]
async fn the_whole_lifecycle_runs_as_a_role_that_only_owns_the_table() {
    let (dbname, direct) = db().fresh_database("ownerdb").await;
    let role = unique("owner");
    let table = unique("invoices");
    let id = unique("to_numeric");
    direct
        .batch_execute(&format!(
            "create role {role} login nosuperuser nocreaterole nocreatedb;
             grant create on database {dbname} to {role};
             create table {table} (id int primary key, cents int not null default 0);
             insert into {table} select g, g * 7 from generate_series(1, 2000) g;
             alter table {table} owner to {role}"
        ))
        .await
        .unwrap();
    let spec = MigrationSpec::new(
        &id,
        &table,
        "cents",
        "amount",
        Some("numeric(12,2)"),
        Some("cents::numeric / 100"),
        Some("(amount * 100)::integer"),
    )
    .unwrap();
    let control_role = role.clone();
    let d = driven_with(vec![spec], &dbname, Default::default(), move |c| {
        c.control.user = control_role;
    })
    .await;
    let admin = d.admin.as_str();
    let (code, body) = post(admin, &format!("/migrations/{id}/expand"), json!({})).await;
    assert_eq!(code, 200, "{body}");
    switch_to_new(admin, &id).await;
    for action in ["contract", "complete"] {
        let (code, body) = post(admin, &format!("/migrations/{id}/{action}"), json!({})).await;
        assert_eq!(code, 200, "{action}: {body}");
    }
    let (sum, owner): (String, String) = {
        let row = direct
            .query_one(
                &format!(
                    "select sum(amount)::text, (select pg_get_userbyid(relowner) from pg_class where oid = '{table}'::regclass)::text from {table}"
                ),
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(sum, "140070.00");
    assert_eq!(owner, role);
    let superuser: bool = direct
        .query_one("select rolsuper from pg_roles where rolname = $1", &[&role])
        .await
        .unwrap()
        .get(0);
    assert!(!superuser);
}

/// An old-shape statement prepared once and executed again and again (as
/// pgjdbc, asyncpg and psycopg's prepared statements run) holds the
/// contract while it runs: each execution is old-shape use, not only its
/// Parse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_old_shape_statement_holds_the_contract_while_it_runs() {
    let (dbname, _direct, table, id, d) = renamed_v_to_w("prepold", 200).await;
    let (code, body) = post(&d.admin, &format!("/migrations/{id}/expand"), json!({})).await;
    assert_eq!(code, 200, "{body}");
    switch_to_new(&d.admin, &id).await;
    // (Once the catalog poll has seen the expanded table: no new rules
    // while the statement runs, so it is not parsed again.)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut config = d.proxy.config();
    config.dbname(&dbname).application_name("old-reporting");
    let client = connect(&config).await.unwrap();
    let statement = client
        .prepare(&format!("select v from {table} where id = $1"))
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let running = std::sync::Arc::clone(&stop);
    let old = tokio::spawn(async move {
        let mut n = 0;
        while !running.load(std::sync::atomic::Ordering::Relaxed) {
            client
                .query_one(&statement, &[&(n % 200 + 1)])
                .await
                .unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n
    });
    // Parsed 4.5 s ago, executed ever since: not quiet for 3 s.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let (code, body) = post(
        &d.admin,
        &format!("/migrations/{id}/contract"),
        json!({"window_secs": 3}),
    )
    .await;
    assert_eq!(code, 409, "{body}");
    assert!(body.to_string().contains("old-reporting"), "{body}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(old.await.unwrap() > 50);
}
