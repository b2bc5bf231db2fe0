//! A column dropped (`"op": "drop_column"`) under load: the old shape
//! keeps reading and writing it by name until it stops; the new shape's
//! INSERTs leave it out (its NOT NULL relaxed at expand), and from the
//! switch its `*` and positional INSERTs no longer have it. The contract
//! waits for the old shape to go quiet, then drops it; a rollback puts
//! the NOT NULL back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgshift::rewrite::migration::MigrationSpec;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::harness::*;

/// `orders (id, legacy text NOT NULL, note text)` with 500 rows, and
/// pgshift driving the drop of `legacy`.
async fn dropping() -> (String, tokio_postgres::Client, String, String, Driven) {
    let (dbname, direct) = db().fresh_database("dropcoldb").await;
    let table = unique("orders");
    let id = unique("drop_legacy");
    direct
        .batch_execute(&format!(
            "create table {table} (id serial primary key, legacy text not null, note text);
             insert into {table} (legacy, note) select 'l' || g, 'n' || g from generate_series(1, 500) g;"
        ))
        .await
        .unwrap();
    let spec = MigrationSpec::drop_column(&id, &table, "legacy", None).unwrap();
    let d = driven_all(vec![spec], &dbname).await;
    (dbname, direct, table, id, d)
}

/// The old shape (names `legacy`; stops when `old_stop` is set) and the
/// new shape (never names it; its `*` must lack it once `switched`).
struct Load {
    stop: Arc<AtomicBool>,
    old_stop: Arc<AtomicBool>,
    switched: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    async fn start(proxy: &TestProxy, dbname: &str, table: &str) -> Load {
        let flags = [(); 3].map(|_| Arc::new(AtomicBool::new(false)));
        let mut tasks = Vec::new();
        for k in 0..4usize {
            let mut config = proxy.config();
            config.dbname(dbname);
            let client = connect(&config).await.unwrap();
            let [stop, old_stop, switched] = flags.clone();
            let table = table.to_string();
            tasks.push(tokio::spawn(async move {
                let (mut done, mut errors) = (0u64, Vec::new());
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let result = match k % 2 {
                        0 if old_stop.load(Ordering::Relaxed) => Ok(()),
                        0 => old_shape(&client, &table, n).await,
                        _ => new_shape(&client, &table, k, n, &switched).await,
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
        let [stop, old_stop, switched] = flags;
        Load {
            stop,
            old_stop,
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

async fn old_shape(client: &tokio_postgres::Client, table: &str, n: u32) -> Result<(), String> {
    let legacy = format!("old{n}");
    let id: i32 = client
        .query_one(
            &format!("insert into {table} (legacy, note) values ($1, 'o') returning id"),
            &[&legacy],
        )
        .await
        .map_err(|e| format!("old insert: {e:?}"))?
        .get(0);
    let got: String = client
        .query_one(&format!("select legacy from {table} where id = $1"), &[&id])
        .await
        .map_err(|e| format!("old read: {e:?}"))?
        .get(0);
    if got != legacy {
        return Err(format!("old read {got:?}"));
    }
    client
        .execute(
            &format!("update {table} set legacy = legacy || '!' where id = $1"),
            &[&id],
        )
        .await
        .map_err(|e| format!("old update: {e:?}"))?;
    Ok(())
}

async fn new_shape(
    client: &tokio_postgres::Client,
    table: &str,
    k: usize,
    n: u32,
    switched: &AtomicBool,
) -> Result<(), String> {
    let was_switched = switched.load(Ordering::Relaxed);
    let row = client
        .query_one(
            &format!("insert into {table} (note) values ($1) returning *"),
            &[&format!("new{k}_{n}")],
        )
        .await
        .map_err(|e| format!("new insert: {e:?}"))?;
    if was_switched && row.len() != 2 {
        return Err(format!(
            "new-shape * had {} columns after the switch",
            row.len()
        ));
    }
    if was_switched {
        client
            .simple_query(&format!(
                "insert into {table} values ({}, 'positional')",
                1_000_000 + k as u32 * 100_000 + n
            ))
            .await
            .map_err(|e| format!("new positional insert: {e:?}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_column_serves_both_shapes_until_the_old_one_goes_quiet() {
    let (dbname, direct, table, id, d) = dropping().await;
    let admin = d.admin.as_str();
    step_to(admin, &id, "expand", json!({}), "expanded").await;
    let load = Load::start(&d.proxy, &dbname, &table).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (code, _) = admin_post(admin, &format!("/migrations/{id}/backfill"), json!({})).await;
    assert_eq!(code, 409, "nothing to backfill");
    step_to(admin, &id, "switch-reads", json!({"to": "new"}), "switched").await;
    // Every statement begun from now on is served after the switch.
    load.switched.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The old shape still names the column: the contract waits.
    contract_once_quiet(admin, &id, &load.old_stop, "legacy").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (done, errors) = load.finish().await;
    // A `*` prepared before the switch and run after it: Postgres' own
    // answer when a table changes under a prepared statement.
    assert_clean(done, errors, 50, true);
    let columns: Vec<String> = direct
        .query(
            "select attname::text from pg_attribute where attrelid = $1::text::regclass and attnum > 0 and not attisdropped order by attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(columns, ["id", "note"]);
    let positional: i64 = direct
        .query_one(
            &format!("select count(*) from {table} where note = 'positional'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(positional > 0, "new-shape positional INSERTs landed");
    step_to(admin, &id, "complete", json!({}), "complete").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_column_rolls_back_with_its_not_null() {
    let (dbname, direct, table, id, d) = dropping().await;
    let admin = d.admin.as_str();
    step_to(admin, &id, "expand", json!({}), "expanded").await;
    step_to(admin, &id, "switch-reads", json!({"to": "new"}), "switched").await;
    let client = d.proxy.connect_to(&dbname).await;
    // A new-shape row leaves legacy NULL: the NOT NULL cannot come back.
    client
        .execute(&format!("insert into {table} (note) values ('x')"), &[])
        .await
        .unwrap();
    let (code, answer) = admin_post(admin, &format!("/migrations/{id}/rollback"), json!({})).await;
    assert!(
        code == 409 && answer.to_string().contains("fill them"),
        "{code} {answer}"
    );
    direct
        .execute(
            &format!("update {table} set legacy = '' where legacy is null"),
            &[],
        )
        .await
        .unwrap();
    step_to(admin, &id, "rollback", json!({}), "rolled_back").await;
    let row = direct
        .query_one(
            "select attnotnull, (select count(*) from pg_constraint where conrelid = a.attrelid and contype = 'c')
               from pg_attribute a where attrelid = $1::text::regclass and attname = 'legacy'",
            &[&table],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, bool>(0), row.get::<_, i64>(1)),
        (true, 0),
        "NOT NULL again, no check left"
    );
    let row = client
        .query_one(&format!("select * from {table} limit 1"), &[])
        .await
        .unwrap();
    assert_eq!(row.len(), 3, "rolled back, * is the table again");
}
