//! A column renamed in place (`"op": "rename_column"`): both names served
//! from the one column under load, in every phase, on both protocols and
//! through prepared statements; the rename behind the barrier fails no
//! statement; nothing is copied (same relfilenode, attnum, indexes, keys);
//! switching back and rolling back rename it back.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgshift::rewrite::migration::MigrationSpec;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::harness::*;

async fn post(admin: &str, path: &str, body: Value) -> (u16, Value) {
    pgshift::admin::request(admin, "POST", path, Some(&body), None)
        .await
        .unwrap()
}

/// How many times migration `id`'s barrier was lowered after a failed
/// attempt.
async fn lowered(direct: &tokio_postgres::Client, id: &str) -> i64 {
    direct
        .query_one(
            "select count(*) from pgshift.events where migration_id = $1 and detail = 'barrier lowered'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

/// Posts `action` for migration `id` and checks the phase it answers.
async fn step(admin: &str, id: &str, action: &str, body: Value, phase: &str) {
    let (code, answer) = post(admin, &format!("/migrations/{id}/{action}"), body).await;
    assert_eq!(
        (code, answer["phase"].as_str()),
        (200, Some(phase)),
        "{action}: {answer}"
    );
}

/// What physically backs the table: its relfilenode, and its columns by
/// position (name, attnum) — a rename in place changes only a name.
async fn physical(direct: &tokio_postgres::Client, table: &str) -> (u32, Vec<(String, i16)>) {
    let node: u32 = direct
        .query_one(
            "select relfilenode::oid from pg_class where oid = $1::text::regclass",
            &[&table],
        )
        .await
        .unwrap()
        .get(0);
    let columns = direct
        .query(
            "select attname::text, attnum from pg_attribute where attrelid = $1::text::regclass and attnum > 0 and not attisdropped order by attnum",
            &[&table],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    (node, columns)
}

/// Writers and readers in both shapes until stopped: each adds 1 to a row
/// through `bal` (old shape) or `balance` (new shape), by Query, by a
/// statement parsed each time, or by one prepared once; each read checks a
/// value comes back. Returns the errors each saw.
struct Load {
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicI64>,
    tasks: Vec<JoinHandle<Vec<String>>>,
}

impl Load {
    async fn start(proxy: &TestProxy, dbname: &str, table: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicI64::new(0));
        let mut tasks = Vec::new();
        for (k, (column, app)) in [("bal", "old-app"), ("balance", "new-app")]
            .into_iter()
            .cycle()
            .take(8)
            .enumerate()
        {
            let mut config = proxy.config();
            config.dbname(dbname).application_name(app);
            let mut client = connect(&config).await.unwrap();
            let update = format!("update {table} set {column} = {column} + 1 where id = $1");
            let read = format!("select {column} from {table} where id = $1");
            let (stop, committed) = (Arc::clone(&stop), Arc::clone(&committed));
            let table = table.to_string();
            tasks.push(tokio::spawn(async move {
                let prepared = client.prepare(&update).await.unwrap();
                let mut errors = Vec::new();
                let mut n = 0i32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let row = (n * 7919 + k as i32 * 131) % 2000 + 1;
                    let wrote = match k / 2 {
                        0 => client
                            .simple_query(&format!(
                                "update {table} set {column} = {column} + 1 where id = {row}"
                            ))
                            .await
                            .map(|_| 1),
                        1 => client.execute(&update, &[&row]).await.map(|_| 1),
                        2 => client.execute(&prepared, &[&row]).await.map(|_| 1),
                        // A transaction that writes the table, then reads
                        // it: its read must not wait for a rename that
                        // waits for its lock.
                        _ => in_transaction(&mut client, &update, &read, row).await,
                    };
                    match wrote {
                        Ok(_) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.push(format!("{column} write: {e:?}")),
                    }
                    if let Err(e) = client.query_one(&read, &[&row]).await {
                        errors.push(format!("{column} read: {e:?}"));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                errors
            }));
        }
        Load {
            stop,
            committed,
            tasks,
        }
    }

    /// Stops the load: the updates committed, and every error seen.
    async fn finish(self) -> (i64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for task in self.tasks {
            errors.extend(task.await.unwrap());
        }
        (self.committed.load(Ordering::Relaxed), errors)
    }
}

/// `update` then `read` of `row` in one transaction, a little apart.
async fn in_transaction(
    client: &mut tokio_postgres::Client,
    update: &str,
    read: &str,
    row: i32,
) -> Result<i32, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute(update, &[&row]).await?;
    tokio::time::sleep(Duration::from_millis(2)).await;
    tx.query_one(read, &[&row]).await?;
    tx.commit().await?;
    Ok(1)
}

/// A table of 2,000 rows with an index, a unique constraint, a foreign key
/// and a view on `bal`, and pgshift driving its rename in place to
/// `balance`.
async fn renamed_in_place() -> (String, tokio_postgres::Client, String, String, Driven) {
    let (dbname, direct) = db().fresh_database("inplacedb").await;
    let table = unique("inplace");
    let id = unique("inplace_rename");
    direct
        .batch_execute(&format!(
            "create table {table}_parent (bal int primary key);
             insert into {table}_parent select g from generate_series(-10, 100000) g;
             create table {table} (id int primary key, bal int not null default 0
                 references {table}_parent (bal), note text);
             insert into {table} select g, 0, 'row ' || g from generate_series(1, 2000) g;
             create index {table}_bal on {table} (bal);
             create view {table}_v as select id, bal from {table}"
        ))
        .await
        .unwrap();
    let spec = MigrationSpec::new(&id, &table, "bal", "balance", None, None, None)
        .and_then(MigrationSpec::renamed_in_place)
        .unwrap();
    let d = driven_all(vec![spec], &dbname).await;
    (dbname, direct, table, id, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_in_place_serves_both_names_under_load_and_copies_nothing() {
    let (dbname, direct, table, id, d) = renamed_in_place().await;
    let admin = d.admin.as_str();
    let before = physical(&direct, &table).await;
    let load = Load::start(&d.proxy, &dbname, &table).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (code, body) = post(admin, &format!("/migrations/{id}/expand"), json!({})).await;
    assert_eq!(
        (code, body["phase"].as_str()),
        (200, Some("expanded")),
        "{body}"
    );
    assert_eq!(body["op"], "rename_column", "{body}");
    assert_eq!(
        physical(&direct, &table).await,
        before,
        "expand adds nothing"
    );
    let (code, body) = post(admin, &format!("/migrations/{id}/backfill"), json!({})).await;
    assert_eq!(code, 409, "nothing to backfill: {body}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The switch renames the column in place, behind the barrier, twice
    // over (forth, back, forth) while both shapes keep writing.
    for (to, name) in [("new", "balance"), ("old", "bal"), ("new", "balance")] {
        let (code, body) = post(
            admin,
            &format!("/migrations/{id}/switch-reads"),
            json!({ "to": to }),
        )
        .await;
        assert_eq!(code, 200, "switch-reads to {to}: {body}");
        let (node, columns) = physical(&direct, &table).await;
        assert_eq!(node, before.0, "the table is not rewritten");
        assert_eq!(columns[1], (name.to_string(), 2), "renamed where it stands");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (committed, errors) = load.finish().await;
    assert!(
        errors.is_empty(),
        "{} errors, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(committed > 100, "the load ran ({committed} updates)");

    // Indexes, keys and the view follow the column: nothing to carry.
    let defs = strings(
        &direct,
        "select pg_get_indexdef(indexrelid) from pg_index where indrelid = $1::text::regclass order by 1",
        &[&table],
    )
    .await;
    assert!(defs.iter().any(|d| d.contains("(balance)")), "{defs:?}");
    let sum: i64 = direct
        // (A view keeps its own column names: it still says bal.)
        .query_one(&format!("select sum(bal)::int8 from {table}_v"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, committed, "every committed update is in the table");

    step(admin, &id, "contract", json!({"force": true}), "contracted").await;
    step(admin, &id, "complete", json!({}), "complete").await;
    let events = strings(
        &direct,
        "select detail from pgshift.events where migration_id = $1 and detail like 'alter table%' order by id",
        &[&id],
    )
    .await;
    assert_eq!(events.len(), 3, "three renames, each recorded: {events:?}");
    assert!(events[0].contains("statements held"), "{events:?}");
    // Transactions that had used the table went on through the barrier,
    // so no rename waited in vain for their locks.
    assert_eq!(
        lowered(&direct, &id).await,
        0,
        "every rename took its lock at the first attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_in_place_rolls_back_from_every_phase() {
    let (dbname, direct, table, id, d) = renamed_in_place().await;
    let admin = d.admin.as_str();
    let load = Load::start(&d.proxy, &dbname, &table).await;
    for step in ["expand", "switch-reads"] {
        let body = match step {
            "switch-reads" => json!({"to": "new"}),
            _ => json!({}),
        };
        let (code, answer) = post(admin, &format!("/migrations/{id}/{step}"), body).await;
        assert_eq!(code, 200, "{step}: {answer}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(physical(&direct, &table).await.1[1].0, "balance");
    let (code, body) = post(admin, &format!("/migrations/{id}/rollback"), json!({})).await;
    assert_eq!(
        (code, body["phase"].as_str()),
        (200, Some("rolled_back")),
        "{body}"
    );
    assert_eq!(
        physical(&direct, &table).await.1[1].0,
        "bal",
        "renamed back"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Rolled back, the rules are off: the new name is gone, as direct.
    let (committed, errors) = load.finish().await;
    let unexpected: Vec<&String> = errors
        .iter()
        .filter(|e| !e.starts_with("balance"))
        .collect();
    assert!(unexpected.is_empty(), "old-shape errors: {unexpected:?}");
    assert!(committed > 50, "the load ran ({committed} updates)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_holding_the_table_delays_the_rename_without_failing_anyone() {
    let (dbname, direct, table, id, d) = renamed_in_place().await;
    let admin = d.admin.as_str();
    let (code, _) = post(admin, &format!("/migrations/{id}/expand"), json!({})).await;
    assert_eq!(code, 200);
    // A client through pgshift holds a lock on the table for 2.5 s and then
    // writes again in the same transaction: the barrier must let it finish.
    let mut config = d.proxy.config();
    config.dbname(&dbname);
    let mut holder = connect(&config).await.unwrap();
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        &format!("update {table} set bal = bal + 1 where id = 1"),
        &[],
    )
    .await
    .unwrap();
    let switch = {
        let admin = admin.to_string();
        let id = id.clone();
        tokio::spawn(async move {
            post(
                &admin,
                &format!("/migrations/{id}/switch-reads"),
                json!({"to": "new"}),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(2500)).await;
    tx.execute(&format!("update {table} set bal = bal + 1 where id = 1"), &[])
        .await
        .expect("a statement of a transaction that holds the table is not stuck behind the barrier for good");
    tx.commit().await.unwrap();
    let (code, body) = switch.await.unwrap();
    assert_eq!(code, 200, "{body}");
    let v: i32 = direct
        .query_one(&format!("select balance from {table} where id = 1"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_hold_and_release_together_around_the_rename() {
    let (dbname, direct, table, id, a) = renamed_in_place().await;
    let spec = MigrationSpec::new(&id, &table, "bal", "balance", None, None, None)
        .and_then(MigrationSpec::renamed_in_place)
        .unwrap();
    let b = driven_with(vec![spec], &dbname, Default::default(), |c| {
        c.listen = "127.0.0.1:16111".parse().unwrap();
    })
    .await;
    let loads = [
        Load::start(&a.proxy, &dbname, &table).await,
        Load::start(&b.proxy, &dbname, &table).await,
    ];
    let (code, body) = post(&a.admin, &format!("/migrations/{id}/expand"), json!({})).await;
    assert_eq!(code, 200, "{body}");
    // Forth through one proxy, back through the other, forth again.
    for (admin, to, name) in [
        (&a.admin, "new", "balance"),
        (&b.admin, "old", "bal"),
        (&a.admin, "new", "balance"),
    ] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (code, body) = post(
            admin,
            &format!("/migrations/{id}/switch-reads"),
            json!({ "to": to }),
        )
        .await;
        assert_eq!(code, 200, "switch-reads to {to}: {body}");
        assert_eq!(physical(&direct, &table).await.1[1].0, name);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut total = 0;
    for load in loads {
        let (committed, errors) = load.finish().await;
        assert!(
            errors.is_empty(),
            "{} errors, e.g. {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        total += committed;
    }
    let sum: i64 = direct
        .query_one(&format!("select sum(balance)::int8 from {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        sum, total,
        "every committed update through either proxy is in the table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_prepared_before_the_migration_do_not_stall_its_rename() {
    let (dbname, direct) = db().fresh_database("inplacedb").await;
    let table = unique("inplace");
    let id = unique("inplace_rename");
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, bal int not null default 0);
             insert into {table} select g, 0 from generate_series(1, 2000) g"
        ))
        .await
        .unwrap();
    let d = driven_all(vec![], &dbname).await;
    // pgbench -M prepared's shape: statements prepared once, before any
    // migration, then run in transactions that write the table and read it.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for k in 0..4 {
        let mut config = d.proxy.config();
        config.dbname(&dbname);
        let mut client = connect(&config).await.unwrap();
        let update = client
            .prepare(&format!("update {table} set bal = bal + 1 where id = $1"))
            .await
            .unwrap();
        let read = client
            .prepare(&format!("select bal from {table} where id = $1"))
            .await
            .unwrap();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut n = 0i32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let row = (n * 7919 + k * 131) % 2000 + 1;
                let tx = client.transaction().await.unwrap();
                let done = async {
                    tx.execute(&update, &[&row]).await?;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    tx.query_one(&read, &[&row]).await?;
                    tx.commit().await
                };
                if let Err(e) = done.await {
                    errors.push(format!("{e:?}"));
                }
            }
            errors
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spec =
        json!({"id": id, "op": "rename_column", "table": table, "from": "bal", "to": "balance"});
    let (code, body) = post(&d.admin, "/migrations", spec).await;
    assert_eq!(
        (code, body["op"].as_str()),
        (201, Some("rename_column")),
        "{body}"
    );
    for (step, body) in [
        ("expand", json!({})),
        ("switch-reads", json!({"to": "new"})),
    ] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (code, answer) = post(&d.admin, &format!("/migrations/{id}/{step}"), body).await;
        assert_eq!(code, 200, "{step}: {answer}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let errors = task.await.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
    }
    assert_eq!(
        lowered(&direct, &id).await,
        0,
        "the rename took its lock at the first attempt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barrier_left_by_a_proxy_that_died_holds_nothing() {
    let (dbname, direct, table, id, d) = renamed_in_place().await;
    let (code, _) = post(&d.admin, &format!("/migrations/{id}/expand"), json!({})).await;
    assert_eq!(code, 200);
    // As a proxy that raised the barrier a minute ago and died would leave it.
    direct
        .batch_execute(&format!(
            "update pgshift.migrations set barrier_ms = (extract(epoch from now()) * 1000)::bigint - 60000 where id = '{id}';
             update pgshift.state set version = version + 1"
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut config = d.proxy.config();
    config.dbname(&dbname);
    let client = connect(&config).await.unwrap();
    let sql = format!("select balance from {table} where id = 1");
    let read = client.query_one(&sql, &[]);
    let row = tokio::time::timeout(Duration::from_secs(3), read)
        .await
        .expect("a statement on the table is not held by a stale barrier")
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 0);
    // The next switch raises its own barrier and renames.
    let (code, body) = post(
        &d.admin,
        &format!("/migrations/{id}/switch-reads"),
        json!({"to": "new"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(physical(&direct, &table).await.1[1].0, "balance");
}

/// A proxy of `dbname` following the rename in place `bal → balance` of
/// `table` (no admin port), listening (for its id) on `listen`.
async fn in_place_peer(
    dbname: &str,
    table: &str,
    id: &str,
    listen: &str,
) -> Arc<pgshift::lifecycle::Lifecycle> {
    use pgshift::rewrite::migration::Phase;
    use pgshift::rewrite::rules::{ActiveMigration, RulesCell};
    let spec = MigrationSpec::new(id, table, "bal", "balance", None, None, None)
        .and_then(MigrationSpec::renamed_in_place)
        .unwrap();
    let migrations = vec![ActiveMigration {
        spec,
        phase: Phase::Planned,
    }];
    let mut config = control_config_for(dbname);
    config.listen = listen.parse().unwrap();
    config.migrations = migrations.clone();
    let options = pgshift::lifecycle::peers::Options {
        ack_timeout: Duration::from_secs(2),
        proxy_timeout: Duration::from_secs(30),
        poll: Duration::from_millis(50),
    };
    let rules = Arc::new(RulesCell::new(&migrations));
    pgshift::lifecycle::Lifecycle::start_with(config, rules, options)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_does_not_hold_stops_the_rename_before_anything_is_renamed() {
    use pgshift::api::{Action, ReadSource, SwitchReads};
    let (dbname, direct) = db().fresh_database("inplacedb").await;
    let table = unique("inplace");
    let id = unique("inplace_rename");
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, bal int); insert into {table} values (1, 1)"
        ))
        .await
        .unwrap();
    let a = in_place_peer(&dbname, &table, &id, "127.0.0.1:16121").await;
    let b = in_place_peer(&dbname, &table, &id, "127.0.0.1:16122").await;
    a.act(&id, Action::Expand).await.unwrap();
    // B stops following (hung, partitioned): it cannot hold.
    b.stop();
    let switch = Action::SwitchReads(SwitchReads {
        to: ReadSource::New,
    });
    let err = a.act(&id, switch).await.unwrap_err().to_string();
    assert!(
        err.contains("barrier")
            && err.contains("127.0.0.1:16122")
            && err.contains("nothing was renamed"),
        "{err}"
    );
    assert_eq!(physical(&direct, &table).await.1[1].0, "bal");
    let row = direct
        .query_one(
            "select phase, barrier_ms from pgshift.migrations where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "expanded");
    assert_eq!(
        row.get::<_, Option<i64>>(1),
        None,
        "the barrier is down again"
    );
}
