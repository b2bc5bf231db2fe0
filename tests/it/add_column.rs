//! A column added NOT NULL with `up` (`"op": "add_column"`) under load:
//! old-shape clients (which never name it) keep inserting, reading `*`
//! and updating on both protocols through every phase, and are given
//! `up` over their own row; new-shape clients write and read it. Nothing
//! fails, every row ends with its value, the column ends NOT NULL with no
//! check left over, and a rollback from any phase drops it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgshift::add_column::AddColumnKeys;
use pgshift::rewrite::migration::MigrationSpec;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::harness::*;

/// A users table of 3,000 rows (a serial key, NOT NULL names, a nullable
/// email) and pgshift driving `full_name text NOT NULL DEFAULT ''` with
/// `up = first || ' ' || last`.
async fn adding() -> (String, tokio_postgres::Client, String, String, Driven) {
    let (dbname, direct) = db().fresh_database("addcoldb").await;
    let table = unique("users");
    let id = unique("add_full_name");
    direct
        .batch_execute(&format!(
            "create table {table} (id serial primary key, first text not null, last text not null, email text);
             insert into {table} (first, last) select 'f' || g, 'l' || g from generate_series(1, 3000) g;"
        ))
        .await
        .unwrap();
    let keys = AddColumnKeys {
        column: "full_name".into(),
        type_name: "text".into(),
        default: Some("''".into()),
        not_null: true,
        up: Some("first || ' ' || last".into()),
        new_shape: None,
    };
    let spec = MigrationSpec::add_column(&id, &table, &keys).unwrap();
    let d = driven_all(vec![spec], &dbname).await;
    (dbname, direct, table, id, d)
}

/// Old-shape and new-shape clients until stopped. Old shape: INSERT by
/// its column list (extended, RETURNING *) and positionally (simple),
/// `SELECT *` whose width must be `old_width` until `switched`, UPDATE of
/// another column. New shape: INSERT naming full_name, and reading it.
struct Load {
    stop: Arc<AtomicBool>,
    switched: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    async fn start(proxy: &TestProxy, dbname: &str, table: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let switched = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for k in 0..6usize {
            let mut config = proxy.config();
            config.dbname(dbname);
            let client = connect(&config).await.unwrap();
            let (stop, switched, table) =
                (Arc::clone(&stop), Arc::clone(&switched), table.to_string());
            tasks.push(tokio::spawn(async move {
                let (mut done, mut errors) = (0u64, Vec::new());
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let result = match k % 3 {
                        0 => old_shape_extended(&client, &table, k, n, &switched).await,
                        1 => old_shape_simple(&client, &table, k, n).await,
                        _ => new_shape(&client, &table, k, n).await,
                    };
                    match result {
                        Ok(()) => done += 1,
                        Err(e) => errors.push(e),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (done, errors)
            }));
        }
        Load {
            stop,
            switched,
            tasks,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut done, mut errors) = (0, Vec::new());
        for task in self.tasks {
            let (d, e) = task.await.unwrap();
            done += d;
            errors.extend(e);
        }
        (done, errors)
    }
}

async fn old_shape_extended(
    client: &tokio_postgres::Client,
    table: &str,
    k: usize,
    n: u32,
    switched: &AtomicBool,
) -> Result<(), String> {
    let (first, last) = (format!("of{k}_{n}"), format!("ol{k}_{n}"));
    let was_switched = switched.load(Ordering::Relaxed);
    let row = client
        .query_one(
            &format!("insert into {table} (first, last, email) values ($1, $2, $3) returning *"),
            &[&first, &last, &"x@example.com"],
        )
        .await
        .map_err(|e| format!("old insert: {e:?}"))?;
    if !was_switched && row.len() != 4 {
        return Err(format!(
            "old-shape RETURNING * gave {} columns before the switch",
            row.len()
        ));
    }
    let id: i32 = row.get(0);
    let read = client
        .query_one(&format!("select * from {table} where id = $1"), &[&id])
        .await
        .map_err(|e| format!("old read: {e:?}"))?;
    if read.get::<_, String>(1) != first {
        return Err("old read: wrong first".into());
    }
    client
        .execute(
            &format!("update {table} set email = $1 where id = $2"),
            &[&"y@example.com", &id],
        )
        .await
        .map_err(|e| format!("old update: {e:?}"))?;
    Ok(())
}

async fn old_shape_simple(
    client: &tokio_postgres::Client,
    table: &str,
    k: usize,
    n: u32,
) -> Result<(), String> {
    client
        .simple_query(&format!(
            "insert into {table} values (default, 'sf{k}_{n}', 'sl{k}_{n}', null)"
        ))
        .await
        .map_err(|e| format!("old positional insert: {e:?}"))?;
    client
        .simple_query(&format!(
            "insert into {table} (last, first) select 'ql{k}_{n}', 'qf{k}_{n}'"
        ))
        .await
        .map_err(|e| format!("old insert … select: {e:?}"))?;
    Ok(())
}

async fn new_shape(
    client: &tokio_postgres::Client,
    table: &str,
    k: usize,
    n: u32,
) -> Result<(), String> {
    let (first, last) = (format!("nf{k}_{n}"), format!("nl{k}_{n}"));
    let full = format!("{first} {last}");
    let sql =
        format!("insert into {table} (first, last, full_name) values ($1, $2, $3) returning id");
    // Before expand the column does not exist: the new version's writes
    // fail as they would direct; the load starts after expand.
    let id: i32 = client
        .query_one(&sql, &[&first, &last, &full])
        .await
        .map_err(|e| format!("new insert: {e:?}"))?
        .get(0);
    let got: String = client
        .query_one(
            &format!("select full_name from {table} where id = $1"),
            &[&id],
        )
        .await
        .map_err(|e| format!("new read: {e:?}"))?
        .get(0);
    if got != full {
        return Err(format!("new read: {got:?} for {full:?}"));
    }
    Ok(())
}

/// `full_name`'s NOT NULL and the checks on the table.
async fn not_null_and_checks(direct: &tokio_postgres::Client, table: &str) -> (bool, i64) {
    let row = direct
        .query_one(
            "select a.attnotnull, (select count(*) from pg_constraint where conrelid = a.attrelid and contype = 'c')
               from pg_attribute a where a.attrelid = $1::text::regclass and a.attname = 'full_name'",
            &[&table],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_not_null_column_serves_both_shapes_through_every_phase() {
    let (dbname, direct, table, id, d) = adding().await;
    let admin = d.admin.as_str();
    step_to(admin, &id, "expand", json!({}), "expanded").await;
    let load = Load::start(&d.proxy, &dbname, &table).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    step_to(
        admin,
        &id,
        "backfill",
        json!({"batch_size": 500}),
        "backfilling",
    )
    .await;
    for _ in 0..200 {
        let (_, s) =
            pgshift::admin::request(admin, "GET", &format!("/migrations/{id}"), None, None)
                .await
                .unwrap();
        if s["phase"] == "backfilled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    step_to(admin, &id, "validate", json!({}), "validated").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.switched.store(true, Ordering::Relaxed);
    step_to(admin, &id, "switch-reads", json!({"to": "new"}), "switched").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The old shape still inserts without the column: the contract waits
    // (once the rules are gone its INSERTs would get no value), unless forced.
    let (code, answer) = admin_post(admin, &format!("/migrations/{id}/contract"), json!({})).await;
    assert_eq!(code, 409, "{answer}");
    step_to(admin, &id, "contract", json!({"force": true}), "contracted").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (done, errors) = load.finish().await;
    // A `*` prepared before the switch and run after it changes its
    // result's columns: the client gets what Postgres answers when a
    // column is added under a prepared statement (pgjdbc prepares again).
    assert_clean(done, errors, 50, true);

    // Every row has the value up gives its own row (the new shape wrote
    // the same), and the column is NOT NULL with no check left.
    let wrong: i64 = direct
        .query_one(
            &format!("select count(*) from {table} where full_name is distinct from first || ' ' || last"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0, "every row has its full_name");
    assert_eq!(not_null_and_checks(&direct, &table).await, (true, 0));

    // Switched, an unmarked `*` yields the column.
    let client = d.proxy.connect_to(&dbname).await;
    let row = client
        .query_one(&format!("select * from {table} limit 1"), &[])
        .await
        .unwrap();
    assert_eq!(row.len(), 5);
    step_to(admin, &id, "complete", json!({}), "complete").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_column_rolls_back_from_every_phase_before_complete() {
    for stop_at in ["expanded", "validated", "switched", "contracted"] {
        let (dbname, direct, table, id, d) = adding().await;
        let admin = d.admin.as_str();
        step_to(admin, &id, "expand", json!({}), "expanded").await;
        let client = d.proxy.connect_to(&dbname).await;
        if stop_at != "expanded" {
            step_to(admin, &id, "backfill", json!({}), "backfilling").await;
            for _ in 0..100 {
                let (_, s) =
                    pgshift::admin::request(admin, "GET", &format!("/migrations/{id}"), None, None)
                        .await
                        .unwrap();
                if s["phase"] == "backfilled" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            step_to(admin, &id, "validate", json!({}), "validated").await;
        }
        if matches!(stop_at, "switched" | "contracted") {
            step_to(admin, &id, "switch-reads", json!({"to": "new"}), "switched").await;
        }
        if stop_at == "contracted" {
            step_to(admin, &id, "contract", json!({}), "contracted").await;
        }
        client
            .execute(
                &format!("insert into {table} (first, last) values ($1, $2)"),
                &[&"a", &"b"],
            )
            .await
            .unwrap();
        step_to(admin, &id, "rollback", json!({}), "rolled_back").await;
        let columns: i64 = direct
            .query_one(
                "select count(*) from pg_attribute where attrelid = $1::text::regclass and attnum > 0 and not attisdropped",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(columns, 4, "rolled back from {stop_at}: the column is gone");
        // The old shape goes on as it always did.
        let row = client
            .query_one(
                &format!("insert into {table} (first, last) values ($1, $2) returning *"),
                &[&"c", &"d"],
            )
            .await
            .unwrap();
        assert_eq!(row.len(), 4, "rolled back from {stop_at}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_column_is_checked_at_post() {
    let (_dbname, direct, users, _id, d) = adding().await;
    let admin = d.admin.as_str();
    // Another table: one column migration per table at a time.
    let table = format!("{users}_2");
    direct
        .batch_execute(&format!("create table {table} (id int primary key)"))
        .await
        .unwrap();
    for (body, says) in [
        (
            json!({"id": unique("a"), "op": "add_column", "table": table, "column": "id", "type": "int"}),
            "already has a column",
        ),
        (
            json!({"id": unique("a"), "op": "add_column", "table": table, "column": "z", "type": "int", "up": "nope + 1"}),
            "no column",
        ),
        (
            json!({"id": unique("a"), "op": "add_column", "table": table, "column": "z", "type": "int", "not_null": true}),
            "needs a value",
        ),
        (
            json!({"id": unique("a"), "op": "add_column", "table": table, "column": "z", "type": "int", "from": "id"}),
            "takes no from",
        ),
    ] {
        let (code, answer) = admin_post(admin, "/migrations", body.clone()).await;
        assert!(
            (code == 400 || code == 409) && answer.to_string().contains(says),
            "{body}: {code} {answer}"
        );
    }
}

/// The width of `SELECT *` over `table` for a session of `app` with
/// startup `options`.
async fn star_width(d: &Driven, dbname: &str, table: &str, app: &str, options: &str) -> usize {
    let mut config = d.proxy.config();
    config.dbname(dbname).application_name(app);
    if !options.is_empty() {
        config.options(options);
    }
    let client = connect(&config).await.unwrap();
    client
        .query_one(&format!("select * from {table} limit 1"), &[])
        .await
        .unwrap()
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_session_sees_its_own_shape_whatever_the_read_switch_says() {
    let (dbname, direct, table, _, d) = adding().await;
    let admin = d.admin.as_str();
    // A second migration, on its own table, with a marker in its spec.
    let marked_table = format!("{table}_m");
    direct
        .batch_execute(&format!(
            "create table {marked_table} (id int primary key, name text); insert into {marked_table} values (1, 'a')"
        ))
        .await
        .unwrap();
    let id = unique("add_marked");
    let (code, answer) = admin_post(
        admin,
        "/migrations",
        json!({"id": id, "op": "add_column", "table": marked_table, "column": "nick", "type": "text",
               "new_shape": {"application_name": "web-v2%"}}),
    )
    .await;
    assert_eq!(code, 201, "{answer}");
    step_to(admin, &id, "expand", json!({}), "expanded").await;
    let width = |app: &'static str, options: &'static str| {
        let (d, dbname, table) = (&d, dbname.clone(), marked_table.clone());
        async move { star_width(d, &dbname, &table, app, options).await }
    };
    assert_eq!(width("web-v1", "").await, 2, "unmarked, before the switch");
    assert_eq!(width("web-v2.4", "").await, 3, "marked new by the spec");
    assert_eq!(
        width("cron", "-c pgshift.shape=new").await,
        3,
        "marked new at startup"
    );
    for action in ["backfill", "validate"] {
        let (code, _) = admin_post(admin, &format!("/migrations/{id}/{action}"), json!({})).await;
        assert!(code == 200 || code == 202);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    step_to(admin, &id, "switch-reads", json!({"to": "new"}), "switched").await;
    assert_eq!(width("web-v1", "").await, 3, "unmarked, after the switch");
    assert_eq!(
        width("web-v1", "-c pgshift.shape=old").await,
        2,
        "marked old at startup"
    );
    // Direct, Postgres takes the dotted setting as it is.
    let mut config = db().config_for(&dbname);
    config.options("-c pgshift.shape=new");
    let direct_marked = connect(&config).await.unwrap();
    let shown: String = direct_marked
        .query_one("select current_setting('pgshift.shape')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "new");
}
