//! A type change that keeps the column's name (`"op": "change_type"`
//! without `"to"`) under load: `amount integer` (cents) becomes `amount
//! numeric(12,2)`. Sessions marked old (`pgshift.shape=old`) read and write
//! integers, sessions the migration's `new_shape` names read and write
//! decimals, unmarked ones follow the read switch; every read is checked
//! against what that session wrote. The contract drops the old column and
//! renames the new one to `amount` behind the barrier; the index on it
//! keeps its name.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinHandle;
use tokio_postgres::types::Type;

use crate::harness::*;

/// `orders (id, amount integer NOT NULL, note)` with 500 rows (amount
/// `7 * id` cents) and an index on `amount`; the migration registered
/// through the admin port.
async fn changing() -> (String, tokio_postgres::Client, String, String, Driven) {
    let (dbname, direct) = db().fresh_database("keptnamedb").await;
    let table = unique("orders");
    let id = unique("amount_decimal");
    direct
        .batch_execute(&format!(
            "create table {table} (id serial primary key, amount integer not null, note text);
             create index {table}_amount_idx on {table} (amount);
             insert into {table} (amount, note) select 7 * g, 'n' || g from generate_series(1, 500) g;"
        ))
        .await
        .unwrap();
    let d = driven_all(Vec::new(), &dbname).await;
    let (code, answer) = admin_post(
        &d.admin,
        "/migrations",
        json!({"id": id, "op": "change_type", "table": table, "from": "amount",
               "type": "numeric(12,2)", "up": "amount::numeric / 100",
               "down": "(amount * 100)::integer",
               "new_shape": {"application_name": "billing-v2%"}}),
    )
    .await;
    assert_eq!(code, 201, "{answer}");
    (dbname, direct, table, id, d)
}

async fn session(d: &Driven, dbname: &str, app: &str, options: &str) -> tokio_postgres::Client {
    let mut config = d.proxy.config();
    config.dbname(dbname).application_name(app);
    if !options.is_empty() {
        config.options(options);
    }
    connect(&config).await.unwrap()
}

struct Load {
    stop: Arc<AtomicBool>,
    old_stop: Arc<AtomicBool>,
    switched: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<(u64, Vec<String>)>>,
}

impl Load {
    async fn start(d: &Driven, dbname: &str, table: &str) -> Load {
        let flags = [(); 3].map(|_| Arc::new(AtomicBool::new(false)));
        let mut tasks = Vec::new();
        for (k, (app, options)) in [
            ("billing-v1", "-c pgshift.shape=old"),
            ("billing-v2.1", ""),
            ("cron", ""),
        ]
        .into_iter()
        .enumerate()
        {
            let client = session(d, dbname, app, options).await;
            let [stop, old_stop, switched] = flags.clone();
            let table = table.to_string();
            tasks.push(tokio::spawn(async move {
                let (mut done, mut errors) = (0u64, Vec::new());
                let mut n = 0i32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let result = match k {
                        0 if old_stop.load(Ordering::Relaxed) => Ok(()),
                        0 => old_shape(&client, &table, n).await,
                        1 => new_shape(&client, &table, n).await,
                        _ => unmarked(&client, &table, n, &switched).await,
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
        joined(self.tasks).await
    }
}

/// Integers in, integers out (extended and simple protocol).
async fn old_shape(client: &tokio_postgres::Client, table: &str, n: i32) -> Result<(), String> {
    let cents = 100 * n + 37;
    let id: i32 = client
        .query_one(
            &format!("insert into {table} (amount, note) values ($1, 'old') returning id"),
            &[&cents],
        )
        .await
        .map_err(|e| format!("old insert: {e:?}"))?
        .get(0);
    let got: i32 = client
        .query_one(&format!("select amount from {table} where id = $1"), &[&id])
        .await
        .map_err(|e| format!("old read: {e:?}"))?
        .try_get(0)
        .map_err(|e| format!("old read type: {e:?}"))?;
    if got != cents {
        return Err(format!("old read {got}, wrote {cents}"));
    }
    client
        .simple_query(&format!(
            "update {table} set amount = amount + 1 where id = {id}"
        ))
        .await
        .map_err(|e| format!("old update: {e:?}"))?;
    let text = first_text(
        client,
        &format!("select amount from {table} where id = {id}"),
    )
    .await?;
    match text == (cents + 1).to_string() {
        true => Ok(()),
        false => Err(format!("old read {text:?} after the update of {cents}")),
    }
}

/// Decimals in, decimals out.
async fn new_shape(client: &tokio_postgres::Client, table: &str, n: i32) -> Result<(), String> {
    let id = first_text(
        client,
        &format!("insert into {table} (amount, note) values ({n}.25, 'new') returning id"),
    )
    .await?;
    let id: i32 = id.parse().map_err(|e| format!("{e}"))?;
    let row = client
        .query_one(
            &format!("select amount, amount::text from {table} where id = $1"),
            &[&id],
        )
        .await
        .map_err(|e| format!("new read: {e:?}"))?;
    if row.columns()[0].type_() != &Type::NUMERIC || row.get::<_, String>(1) != format!("{n}.25") {
        return Err(format!(
            "new read {:?} of type {}, wrote {n}.25",
            row.get::<_, String>(1),
            row.columns()[0].type_()
        ));
    }
    client
        .execute(
            &format!("update {table} set amount = amount + 0.5 where id = $1"),
            &[&id],
        )
        .await
        .map_err(|e| format!("new update: {e:?}"))?;
    let text = first_text(
        client,
        &format!("select amount from {table} where id = {id}"),
    )
    .await?;
    match text == format!("{n}.75") {
        true => Ok(()),
        false => Err(format!("new read {text:?} after the update of {n}.25")),
    }
}

/// A seeded row (never written): cents before the switch, decimals after.
async fn unmarked(
    client: &tokio_postgres::Client,
    table: &str,
    n: i32,
    switched: &AtomicBool,
) -> Result<(), String> {
    let id = n % 500 + 1;
    let was_switched = switched.load(Ordering::Relaxed);
    let text = first_text(
        client,
        &format!("select amount from {table} where id = {id}"),
    )
    .await?;
    let (cents, decimal) = (
        (7 * id).to_string(),
        format!("{:.2}", 7.0 * id as f64 / 100.0),
    );
    match (was_switched, text == cents, text == decimal) {
        (false, true, _) | (_, _, true) => Ok(()),
        _ => Err(format!(
            "unmarked read {text:?} of row {id} ({cents} cents), switched: {was_switched}"
        )),
    }
}

async fn first_text(client: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| format!("{sql}: {e:?}"))?;
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .ok_or_else(|| format!("{sql}: no row"))
}

async fn wait_for_phase(admin: &str, id: &str, phase: &str) {
    for _ in 0..300 {
        let (_, s) =
            pgshift::admin::request(admin, "GET", &format!("/migrations/{id}"), None, None)
                .await
                .unwrap();
        if s["phase"] == phase {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{id} never reached {phase}");
}

async fn columns(direct: &tokio_postgres::Client, table: &str) -> Vec<(String, String)> {
    direct
        .query(
            "select attname::text, format_type(atttypid, atttypmod) from pg_attribute
              where attrelid = $1::text::regclass and attnum > 0 and not attisdropped order by attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_change_keeping_the_name_serves_each_shape_its_own_type() {
    let (dbname, direct, table, id, d) = changing().await;
    let admin = d.admin.as_str();
    let load = Load::start(&d, &dbname, &table).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    step_to(admin, &id, "expand", json!({}), "expanded").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    step_to(
        admin,
        &id,
        "backfill",
        json!({"batch_size": 200}),
        "backfilling",
    )
    .await;
    wait_for_phase(admin, &id, "backfilled").await;
    step_to(admin, &id, "validate", json!({}), "validated").await;
    step_to(admin, &id, "switch-reads", json!({"to": "new"}), "switched").await;
    load.switched.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The old shape still names the column: the contract waits for it.
    contract_once_quiet(admin, &id, &load.old_stop, "amount").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (done, errors) = load.finish().await;
    // A statement prepared before the switch and run after it: Postgres'
    // own answer when a column's type changes under a prepared statement.
    assert_clean(done, errors, 100, true);
    step_to(admin, &id, "complete", json!({}), "complete").await;
    // One column named amount, of the new type, its index kept by name.
    let cols = columns(&direct, &table).await;
    assert_eq!(
        cols.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["id", "note", "amount"]
    );
    assert_eq!(cols[2].1, "numeric(12,2)");
    let indexed: String = direct
        .query_one(
            "select pg_get_indexdef(($1 || '_amount_idx')::regclass)",
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    assert!(indexed.contains("(amount)"), "{indexed}");
    let row = direct
        .query_one(
            &format!(
                "select (select amount::text from {table} where id = 3),
                        (select count(*) from {table} where note = 'old' and amount - trunc(amount) <> 0.38),
                        (select count(*) from {table} where amount is null)"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "0.21", "7 * 3 cents");
    assert_eq!(
        row.get::<_, i64>(1),
        0,
        "old-shape cents became x.38 dollars"
    );
    assert_eq!(row.get::<_, i64>(2), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_change_keeping_the_name_rolls_back_from_the_switch() {
    let (dbname, direct, table, id, d) = changing().await;
    let admin = d.admin.as_str();
    step_to(admin, &id, "expand", json!({}), "expanded").await;
    step_to(admin, &id, "backfill", json!({}), "backfilling").await;
    wait_for_phase(admin, &id, "backfilled").await;
    step_to(admin, &id, "validate", json!({}), "validated").await;
    step_to(admin, &id, "switch-reads", json!({"to": "new"}), "switched").await;
    let client = session(&d, &dbname, "billing-v2", "").await;
    client
        .simple_query(&format!("update {table} set amount = 99.5 where id = 1"))
        .await
        .unwrap();
    step_to(admin, &id, "rollback", json!({}), "rolled_back").await;
    let cols = columns(&direct, &table).await;
    assert_eq!(
        cols,
        [
            ("id".to_string(), "integer".to_string()),
            ("amount".into(), "integer".into()),
            ("note".into(), "text".into())
        ]
    );
    let amount: i32 = direct
        .query_one(&format!("select amount from {table} where id = 1"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(amount, 9950, "the new shape's write reached the old column");
    // Rolled back, every session reads the integer again.
    let text = first_text(&client, &format!("select amount from {table} where id = 1"))
        .await
        .unwrap();
    assert_eq!(text, "9950");
}

/// Two migrations on one table at once: `name → full_name` (copied) and
/// `login_count` to bigint keeping its name, each with its own phase, both
/// shapes reading and writing throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_migrations_on_one_table_each_serve_their_own_column() {
    let (dbname, direct) = db().fresh_database("twoontable").await;
    let table = unique("users");
    direct
        .batch_execute(&format!(
            "create table {table} (id serial primary key, name text not null, login_count integer not null default 0, email text);
             create index {table}_both on {table} (email, login_count);
             insert into {table} (name) select 'u' || g from generate_series(1, 300) g;"
        ))
        .await
        .unwrap();
    let d = driven_all(Vec::new(), &dbname).await;
    let admin = d.admin.as_str();
    let post =
        |body: serde_json::Value| async move { admin_post(admin, "/migrations", body).await };
    let (code, answer) =
        post(json!({"id": "rename", "table": table, "from": "name", "to": "full_name"})).await;
    assert_eq!(code, 201, "{answer}");
    let widen = json!({"id": "widen", "op": "change_type", "table": table, "from": "login_count",
                       "type": "bigint", "up": "login_count::bigint", "down": "login_count::integer",
                       "new_shape": {"application_name": "v2-%"}});
    // An index over login_count and a column no migration moves is
    // carried (`_both`); one spanning both migrations' columns is refused.
    direct
        .batch_execute(&format!(
            "create index {table}_span on {table} (name, login_count)"
        ))
        .await
        .unwrap();
    let (code, answer) = post(widen.clone()).await;
    assert!(
        code == 409 && answer.to_string().contains("spans"),
        "{code} {answer}"
    );
    direct
        .batch_execute(&format!("drop index {table}_span"))
        .await
        .unwrap();
    let (code, answer) = post(widen).await;
    assert_eq!(code, 201, "{answer}");

    let old = session(&d, &dbname, "v1-api", "-c pgshift.shape=old").await;
    let new = session(&d, &dbname, "v2-api", "").await;
    let mut errors = Vec::new();
    let round = |step: &'static str| {
        let (old, new, table) = (&old, &new, table.clone());
        async move {
            let mut errs = Vec::new();
            for n in 0..20i32 {
                let id: i32 = match old
                    .query_one(
                        &format!(
                            "insert into {table} (name, login_count) values ($1, $2) returning id"
                        ),
                        &[&format!("o{n}"), &n],
                    )
                    .await
                {
                    Ok(r) => r.get(0),
                    Err(e) => {
                        errs.push(format!("{step}: old insert: {e:?}"));
                        continue;
                    }
                };
                let r = new
                    .execute(
                        &format!("update {table} set login_count = login_count + $1, full_name = full_name || '!' where id = $2"),
                        &[&10i64, &id],
                    )
                    .await;
                if let Err(e) = r {
                    errs.push(format!("{step}: new update: {e:?}"));
                }
                match old
                    .query_one(
                        &format!("select name, login_count from {table} where id = $1"),
                        &[&id],
                    )
                    .await
                {
                    Ok(row)
                        if row.get::<_, String>(0) == format!("o{n}!")
                            && row.get::<_, i32>(1) == n + 10 => {}
                    Ok(row) => errs.push(format!("{step}: old read {row:?}")),
                    Err(e) => errs.push(format!("{step}: old read: {e:?}")),
                }
                match new
                    .query_one(
                        &format!("select full_name, login_count from {table} where id = $1"),
                        &[&id],
                    )
                    .await
                {
                    Ok(row)
                        if row.get::<_, String>(0) == format!("o{n}!")
                            && row.get::<_, i64>(1) == i64::from(n) + 10 => {}
                    Ok(row) => errs.push(format!("{step}: new read {row:?}")),
                    Err(e) => errs.push(format!("{step}: new read: {e:?}")),
                }
            }
            errs
        }
    };
    errors.extend(round("planned").await);
    for (action, body, phase) in [
        ("expand", json!({}), "expanded"),
        ("backfill", json!({}), "backfilling"),
    ] {
        for id in ["rename", "widen"] {
            step_to(admin, id, action, body.clone(), phase).await;
        }
        errors.extend(round(action).await);
    }
    for id in ["rename", "widen"] {
        wait_for_phase(admin, id, "backfilled").await;
        step_to(admin, id, "validate", json!({}), "validated").await;
    }
    // Each its own phase: one switched, the other not yet.
    step_to(
        admin,
        "widen",
        "switch-reads",
        json!({"to": "new"}),
        "switched",
    )
    .await;
    errors.extend(round("widen switched").await);
    step_to(
        admin,
        "rename",
        "switch-reads",
        json!({"to": "new"}),
        "switched",
    )
    .await;
    errors.extend(round("both switched").await);
    for id in ["widen", "rename"] {
        step_to(admin, id, "contract", json!({"force": true}), "contracted").await;
    }
    drop(old);
    let errors_new: Vec<String> = {
        let mut errs = Vec::new();
        let row = new
            .query_one(
                &format!("select full_name, login_count from {table} where id = 1"),
                &[],
            )
            .await;
        match row {
            Ok(row) if row.get::<_, String>(0) == "u1" && row.get::<_, i64>(1) == 0 => {}
            other => errs.push(format!("contracted: new read {other:?}")),
        }
        errs
    };
    errors.extend(errors_new);
    assert!(
        errors.is_empty(),
        "{} errors, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    for id in ["widen", "rename"] {
        step_to(admin, id, "complete", json!({}), "complete").await;
    }
    let cols = columns(&direct, &table).await;
    assert_eq!(
        cols.iter()
            .map(|(n, t)| format!("{n} {t}"))
            .collect::<Vec<_>>(),
        [
            "id integer",
            "email text",
            "full_name text",
            "login_count bigint"
        ]
    );
}

/// A statement prepared by a new-shape session before the contract runs
/// after it as before: its result (the new type) does not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_shape_statement_prepared_before_the_contract_runs_after_it() {
    let (dbname, _direct, table, id, d) = changing().await;
    let admin = d.admin.as_str();
    step_to(admin, &id, "expand", json!({}), "expanded").await;
    step_to(admin, &id, "backfill", json!({}), "backfilling").await;
    wait_for_phase(admin, &id, "backfilled").await;
    step_to(admin, &id, "validate", json!({}), "validated").await;
    let new = session(&d, &dbname, "billing-v2", "").await;
    let before = new
        .prepare(&format!("select id, amount from {table} where id = $1"))
        .await
        .unwrap();
    step_to(admin, &id, "switch-reads", json!({"to": "new"}), "switched").await;
    let switched = new
        .prepare(&format!("select amount, note from {table} where id = $1"))
        .await
        .unwrap();
    for s in [&before, &switched] {
        new.query_one(s, &[&3i32]).await.unwrap();
    }
    step_to(admin, &id, "contract", json!({"force": true}), "contracted").await;
    for s in [&before, &switched] {
        let row = new.query_one(s, &[&3i32]).await.unwrap();
        assert_eq!(row.columns().len(), 2);
    }
}

/// A rollback from every phase before contract leaves the column as it
/// was, with every value, the working column gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_change_keeping_the_name_rolls_back_from_every_phase() {
    let steps: [(&str, serde_json::Value, &str); 5] = [
        ("expand", json!({}), "expanded"),
        ("backfill", json!({}), "backfilling"),
        ("validate", json!({}), "validated"),
        ("switch-reads", json!({"to": "new"}), "switched"),
        ("switch-reads", json!({"to": "old"}), "validated"),
    ];
    for taken in 0..=steps.len() {
        let (dbname, direct, table, id, d) = changing().await;
        for (action, body, phase) in &steps[..taken] {
            step_to(&d.admin, &id, action, body.clone(), phase).await;
            if *action == "backfill" {
                wait_for_phase(&d.admin, &id, "backfilled").await;
            }
        }
        step_to(&d.admin, &id, "rollback", json!({}), "rolled_back").await;
        let cols = columns(&direct, &table).await;
        assert_eq!(
            cols[1],
            ("amount".to_string(), "integer".to_string()),
            "after {taken} steps"
        );
        assert_eq!(cols.len(), 3, "after {taken} steps: {cols:?}");
        let client = session(&d, &dbname, "billing-v2", "").await;
        let sum: i64 = client
            .query_one(&format!("select sum(amount)::int8 from {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(sum, 7 * 500 * 501 / 2, "after {taken} steps");
    }
}
