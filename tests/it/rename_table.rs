//! A table renamed (`"op": "rename_table"`) under load: the old
//! application names `customers`, the new one `clients`, in every statement
//! form (aliases, `schema.table`, joins, INSERT … RETURNING, UPDATE,
//! DELETE, COPY); the table is renamed in place at the switch behind the
//! barrier, the contract waits for the old name to go quiet, and a foreign
//! key referencing it is untouched. A rollback renames it back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinHandle;

use crate::harness::*;

/// `customers (id, name NOT NULL)` with 200 rows, `orders` referencing it,
/// and the rename registered through the admin port. Returns the old and
/// the new name.
async fn renaming() -> (
    String,
    tokio_postgres::Client,
    (String, String),
    String,
    Driven,
) {
    let (dbname, direct) = db().fresh_database("renametabledb").await;
    let old = unique("customers");
    let new = format!("{old}_v2");
    let id = unique("rename_customers");
    direct
        .batch_execute(&format!(
            "create table {old} (id serial primary key, name text not null);
             create table {old}_orders (id serial primary key, cid int not null references {old} (id), total int);
             insert into {old} (name) select 'c' || g from generate_series(1, 200) g;
             insert into {old}_orders (cid, total) select g, g * 10 from generate_series(1, 200) g;"
        ))
        .await
        .unwrap();
    let d = driven_all(Vec::new(), &dbname).await;
    let (code, answer) = admin_post(
        &d.admin,
        "/migrations",
        json!({"id": id, "op": "rename_table", "table": old, "to": new}),
    )
    .await;
    assert_eq!(code, 201, "{answer}");
    (dbname, direct, (old, new), id, d)
}

struct Load {
    stop: Arc<AtomicBool>,
    old_stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    async fn start(d: &Driven, dbname: &str, names: &(String, String)) -> Load {
        let flags = [(); 2].map(|_| Arc::new(AtomicBool::new(false)));
        let mut tasks = Vec::new();
        for k in 0..4usize {
            let client = d.proxy.connect_to(dbname).await;
            let [stop, old_stop] = flags.clone();
            // Even tasks are the old application, odd ones the new.
            let (table, orders) = match k % 2 {
                0 => (names.0.clone(), format!("{}_orders", names.0)),
                _ => (names.1.clone(), format!("{}_orders", names.0)),
            };
            tasks.push(tokio::spawn(async move {
                let (mut done, mut errors) = (0u64, Vec::new());
                let mut n = 0i32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if k % 2 == 0 && old_stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    match round(&client, &table, &orders, k, n).await {
                        Ok(()) => done += 1,
                        Err(e) => errors.push(e),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                (done, errors)
            }));
        }
        let [stop, old_stop] = flags;
        Load {
            stop,
            old_stop,
            tasks,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        joined(self.tasks).await
    }
}

/// One application round on `table` (the name this application uses):
/// every read checked against what it wrote.
async fn round(
    client: &tokio_postgres::Client,
    table: &str,
    orders: &str,
    k: usize,
    n: i32,
) -> Result<(), String> {
    let name = format!("k{k}n{n}");
    let err = |what: &str| {
        let what = what.to_string();
        move |e: tokio_postgres::Error| format!("{what} on {table}: {e:?}")
    };
    let id: i32 = client
        .query_one(
            &format!("insert into {table} (name) values ($1) returning {table}.id"),
            &[&name],
        )
        .await
        .map_err(err("insert"))?
        .get(0);
    client
        .execute(
            &format!("insert into {orders} (cid, total) values ($1, $2)"),
            &[&id, &n],
        )
        .await
        .map_err(err("insert order"))?;
    let row = client
        .query_one(
            &format!(
                "select c.name, sum(o.total)::int from public.{table} c join {orders} o on o.cid = c.id where c.id = $1 group by c.name"
            ),
            &[&id],
        )
        .await
        .map_err(err("join"))?;
    if row.get::<_, String>(0) != name || row.get::<_, i32>(1) != n {
        return Err(format!("read {:?} back for {name}", row));
    }
    client
        .simple_query(&format!(
            "update {table} set name = {table}.name || '!' where id = {id}"
        ))
        .await
        .map_err(err("update"))?;
    let got: String = client
        .query_one(&format!("select name from {table} where id = $1"), &[&id])
        .await
        .map_err(err("read"))?
        .get(0);
    if got != format!("{name}!") {
        return Err(format!("read {got:?} after the update of {name}"));
    }
    let left = client
        .execute(
            &format!("delete from {table} t where t.id = $1 and not exists (select 1 from {orders} where cid = t.id)"),
            &[&id],
        )
        .await
        .map_err(err("delete"))?;
    match left {
        0 => Ok(()),
        _ => Err(format!("deleted {name}, which has an order")),
    }
}

async fn table_exists(direct: &tokio_postgres::Client, name: &str) -> bool {
    direct
        .query_one("select to_regclass($1) is not null", &[&name])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_table_serves_both_names_until_the_old_one_goes_quiet() {
    let (dbname, direct, names, id, d) = renaming().await;
    let admin = d.admin.as_str();
    let load = Load::start(&d, &dbname, &names).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    step_to(admin, &id, "expand", json!({}), "expanded").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    step_to(admin, &id, "switch-reads", json!({"to": "new"}), "switched").await;
    assert!(
        table_exists(&direct, &names.1).await,
        "renamed at the switch"
    );
    assert!(!table_exists(&direct, &names.0).await);
    tokio::time::sleep(Duration::from_millis(400)).await;
    contract_once_quiet(admin, &id, &load.old_stop, &names.0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (done, errors) = load.finish().await;
    assert_clean(done, errors, 100, false);
    step_to(admin, &id, "complete", json!({}), "complete").await;
    // The foreign key followed the table; both applications' rows are there.
    let row = direct
        .query_one(
            &format!(
                "select (select confrelid::regclass::text from pg_constraint where conrelid = '{0}_orders'::regclass and contype = 'f'),
                        (select count(*) from {1} where name like 'k0%'), (select count(*) from {1} where name like 'k1%')",
                names.0, names.1
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), names.1);
    assert!(row.get::<_, i64>(1) > 0 && row.get::<_, i64>(2) > 0);
    // Complete: the old name is gone, as direct.
    let client = d.proxy.connect_to(&dbname).await;
    let e = client
        .query(&format!("select * from {}", names.0), &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42P01"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_table_rolls_back_to_its_old_name() {
    let (dbname, direct, names, id, d) = renaming().await;
    let admin = d.admin.as_str();
    step_to(admin, &id, "expand", json!({}), "expanded").await;
    let (code, _) = admin_post(admin, &format!("/migrations/{id}/backfill"), json!({})).await;
    assert_eq!(code, 409, "nothing to backfill");
    step_to(admin, &id, "switch-reads", json!({"to": "new"}), "switched").await;
    let client = d.proxy.connect_to(&dbname).await;
    client
        .execute(
            &format!("insert into {} (name) values ('after')", names.1),
            &[],
        )
        .await
        .unwrap();
    step_to(admin, &id, "rollback", json!({}), "rolled_back").await;
    assert!(table_exists(&direct, &names.0).await);
    assert!(!table_exists(&direct, &names.1).await);
    let n: i64 = client
        .query_one(
            &format!("select count(*) from {} where name = 'after'", names.0),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// A rollback from every phase before complete leaves the table under its
/// old name, with every row, serving its old name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_table_rolls_back_from_every_phase() {
    for (steps, phase) in [
        (&[][..], "planned"),
        (&[("expand", "expanded")][..], "expanded"),
        (
            &[("expand", "expanded"), ("switch-reads", "switched")][..],
            "switched",
        ),
        (
            &[
                ("expand", "expanded"),
                ("switch-reads", "switched"),
                ("contract", "contracted"),
            ][..],
            "contracted",
        ),
    ] {
        let (dbname, direct, names, id, d) = renaming().await;
        for (action, to) in steps {
            let body = match *action {
                "switch-reads" => json!({"to": "new"}),
                "contract" => json!({"force": true}),
                _ => json!({}),
            };
            step_to(&d.admin, &id, action, body, to).await;
        }
        step_to(&d.admin, &id, "rollback", json!({}), "rolled_back").await;
        assert!(table_exists(&direct, &names.0).await, "from {phase}");
        assert!(!table_exists(&direct, &names.1).await, "from {phase}");
        let client = d.proxy.connect_to(&dbname).await;
        let n: i64 = client
            .query_one(&format!("select count(*) from {}", names.0), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 200, "from {phase}");
    }
}

/// A transaction holding the table across the switch: the rename waits
/// and retries under the lock discipline; a reader through pgshift never
/// waits on it much longer than one attempt's lock timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_holding_the_table_queues_no_reader_behind_the_rename() {
    let (dbname, direct, names, id, d) = renaming().await;
    let admin = d.admin.clone();
    step_to(&admin, &id, "expand", json!({}), "expanded").await;
    let mut holder = d.proxy.connect_to(&dbname).await;
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        &format!("update {} set name = name where id = 1", names.0),
        &[],
    )
    .await
    .unwrap();
    let switch = {
        let (admin, id) = (admin.clone(), id.clone());
        tokio::spawn(async move {
            admin_post(
                &admin,
                &format!("/migrations/{id}/switch-reads"),
                json!({"to": "new"}),
            )
            .await
        })
    };
    let reader = d.proxy.connect_to(&dbname).await;
    let started = std::time::Instant::now();
    let mut longest = Duration::ZERO;
    while started.elapsed() < Duration::from_millis(2000) {
        let t = std::time::Instant::now();
        reader
            .query_one(
                &format!("select count(*) from {} where id < 10", names.1),
                &[],
            )
            .await
            .unwrap();
        longest = longest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.commit().await.unwrap();
    let (code, body) = switch.await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(table_exists(&direct, &names.1).await);
    // One attempt holds readers for its lock timeout (200 ms) at most,
    // plus the barrier's round trips.
    assert!(
        longest < Duration::from_millis(1000),
        "a reader waited {longest:?}"
    );
}
