//! The DDL gate in `migrate`: an application's own migration, sent through
//! pgshift as its migration tool sends it (a transaction, one DDL statement
//! at a time, the tool's own bookkeeping), becomes pgshift migrations while
//! the previous version of the application keeps serving through pgshift;
//! the autopilot carries each to complete once the old version is gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;

/// One application version's statements over the table.
struct Version {
    label: &'static str,
    /// Reads row `$1`.
    read: String,
    /// Sets the name of row `$2` to `$1`.
    write: String,
    /// Inserts a row named `$1`.
    insert: String,
    /// What it checks of a row read.
    check: fn(&tokio_postgres::Row),
}

/// The previous application version: reads and writes `name`, `amount`
/// (an integer: connected before the migration, it keeps its type) and
/// `legacy`.
fn old_version(table: &str) -> Version {
    Version {
        label: "old",
        read: format!("select name, amount, legacy from {table} where id = $1"),
        write: format!("update {table} set name = $1, amount = amount + 1 where id = $2"),
        insert: format!(
            "insert into {table} (name, amount, legacy) values ($1, 7, 'x') returning id, name"
        ),
        check: |row| {
            let (_, _): (String, i32) = (row.get(0), row.get(1));
        },
    }
}

/// The new application version: `full_name`, no `legacy`, the amount read
/// as text (an integer before the read switch, a bigint after). Until the
/// contract it writes amounts the old column holds too: the old version
/// reads every row.
fn new_version(table: &str) -> Version {
    Version {
        label: "new",
        read: format!("select full_name, amount::text from {table} where id = $1"),
        write: format!("update {table} set full_name = $1 where id = $2"),
        insert: format!("insert into {table} (full_name, amount) values ($1, 123) returning id"),
        check: |row| {
            let _: String = row.get(0);
        },
    }
}

/// `v`'s traffic over `client` until `stop`: (operations done, errors).
fn app(
    client: tokio_postgres::Client,
    v: Version,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, Vec<String>)> {
    tokio::spawn(async move {
        let (mut done, mut errors) = (0u64, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            let id = (done % 500 + 1) as i32;
            let steps = async {
                let row = client.query_one(&v.read, &[&id]).await?;
                (v.check)(&row);
                let name = format!("{} {done}", v.label);
                client.execute(&v.write, &[&name, &id]).await?;
                client.query_one(&v.insert, &[&v.label]).await?;
                Ok::<_, tokio_postgres::Error>(())
            };
            match steps.await {
                Ok(()) => done += 1,
                Err(e) => errors.push(format!("{}: {e:?}", v.label)),
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (done, errors)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applications_own_ddl_becomes_zero_downtime_migrations() {
    let (dbname, direct) = db().fresh_database("ddlmigrate").await;
    let t = unique("people");
    direct
        .batch_execute(&format!(
            "create table {t} (id serial primary key, name text not null, amount integer not null, email text, legacy text);
             insert into {t} (name, amount, email, legacy) select 'n' || g, g, 'e' || g, 'l' from generate_series(1, 2000) g;
             create table tool_history (version text primary key);"
        ))
        .await
        .unwrap();
    let autopilot = pgshift::api::Autopilot {
        mode: pgshift::api::AutopilotMode::Full,
        contract_after_secs: 2,
        stopped: None,
    };
    let d = driven_migrating(&dbname, autopilot).await;
    let (old_stop, new_stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut old = Vec::new();
    for _ in 0..2 {
        let client = d.proxy.connect_to(&dbname).await;
        old.push(app(client, old_version(&t), Arc::clone(&old_stop)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The migration tool: one transaction, one statement at a time (both
    // protocols), its own bookkeeping in the same transaction.
    let tool = d.proxy.connect_to(&dbname).await;
    tool.batch_execute("begin").await.unwrap();
    tool.execute(
        &format!("alter table {t} rename column name to full_name"),
        &[],
    )
    .await
    .unwrap();
    tool.batch_execute(&format!(
        "alter table {t} alter column amount type bigint using amount::bigint"
    ))
    .await
    .unwrap();
    tool.execute(&format!("alter table {t} drop column legacy"), &[])
        .await
        .unwrap();
    tool.execute("insert into tool_history values ('0002')", &[])
        .await
        .unwrap();
    tool.batch_execute("commit").await.unwrap();
    // An index, answered with its own command tag once it is built.
    let (mut raw, _, _) = RawConn::startup_to(d.proxy.addr, &dbname).await;
    raw.send(&query(&format!(
        "create index {t}_email_idx on {t} (email)"
    )))
    .await;
    let reply = raw.until_ready().await;
    let complete = reply
        .iter()
        .find(|m| m.tag == b'C')
        .expect("a CommandComplete");
    assert_eq!(&complete.body[..], b"CREATE INDEX\0", "{reply:?}");

    // The new version starts beside the old one.
    let client = d.proxy.connect_to(&dbname).await;
    let new = vec![app(client, new_version(&t), Arc::clone(&new_stop))];
    tokio::time::sleep(Duration::from_secs(3)).await;
    old_stop.store(true, Ordering::Relaxed);
    let (old_done, old_errors) = joined(old).await;
    // The autopilot carries every migration to complete once the old
    // version has been gone for 2 s.
    all_complete(&d.admin, 4, 90).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    new_stop.store(true, Ordering::Relaxed);
    let (new_done, new_errors) = joined(new).await;
    // Complete, the column takes what only a bigint holds.
    let client = d.proxy.connect_to(&dbname).await;
    client
        .execute(
            &format!("insert into {t} (full_name, amount) values ('big', 5000000000)"),
            &[],
        )
        .await
        .unwrap();
    // (Connected before the migrations were made, the old version keeps
    // its shape: the amount stays an integer under its prepared
    // statements.)
    assert_clean(old_done, old_errors, 50, false);
    assert_clean(new_done, new_errors, 50, true);

    // The table as the DDL says, the tool's bookkeeping as it wrote it.
    let columns: Vec<(String, String)> = direct
        .query(
            "select column_name::text, data_type::text from information_schema.columns where table_name = $1 order by ordinal_position",
            &[&t],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"full_name") && !names.contains(&"name") && !names.contains(&"legacy"),
        "{columns:?}"
    );
    assert!(
        columns.contains(&("amount".into(), "bigint".into())),
        "{columns:?}"
    );
    let index: Option<String> = direct
        .query_one("select to_regclass($1)::text", &[&format!("{t}_email_idx")])
        .await
        .unwrap()
        .get(0);
    assert!(index.is_some());
    let history = strings(&direct, "select version from tool_history", &[]).await;
    assert_eq!(history, vec!["0002".to_string()]);
    let big: i64 = direct
        .query_one(
            &format!("select count(*) from {t} where amount = 5000000000"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(big > 0, "the new version's bigint values are kept");
}

/// What `migrate` cannot carry out is refused with what to send instead,
/// and nothing is half-done: a type change with no exact way back, and a
/// migration inside a multi-statement string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_migrate_cannot_carry_out_is_refused_whole() {
    let (dbname, direct) = db().fresh_database("ddlrefuse").await;
    let t = unique("things");
    direct
        .batch_execute(&format!(
            "create table {t} (id int primary key, price numeric(10,2), label text)"
        ))
        .await
        .unwrap();
    let d = driven_migrating(&dbname, Default::default()).await;
    let client = d.proxy.connect_to(&dbname).await;
    let e = client
        .batch_execute(&format!("alter table {t} alter column price type integer"))
        .await
        .unwrap_err();
    let e = e.as_db_error().unwrap();
    assert_eq!(e.code().code(), "0A000");
    assert!(e.message().contains("down"), "{}", e.message());
    let e = client
        .batch_execute(&format!(
            "begin; alter table {t} rename column label to title; commit"
        ))
        .await
        .unwrap_err();
    let e = e.as_db_error().unwrap();
    assert!(
        e.hint().unwrap_or("").contains("statement of its own"),
        "{e:?}"
    );
    assert!(phases(&d.admin).await.is_empty(), "no migration was made");
    // Everything else passes as written.
    client
        .batch_execute(&format!(
            "alter table {t} add column note text; create table {t}_more (id int)"
        ))
        .await
        .unwrap();
}

/// A table the tool's transaction created is nobody else's yet: its DDL
/// goes to Postgres as written. A table the transaction has already
/// locked cannot be changed from outside it: an index goes as written, a
/// rename is refused with what to do instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_on_a_transactions_own_tables_goes_as_written() {
    let (dbname, direct) = db().fresh_database("ddlown").await;
    let t = unique("kept");
    direct
        .batch_execute(&format!(
            "create table {t} (id int primary key, label text)"
        ))
        .await
        .unwrap();
    let d = driven_migrating(&dbname, Default::default()).await;
    let tool = d.proxy.connect_to(&dbname).await;
    let fresh = unique("fresh");
    tool.batch_execute("begin").await.unwrap();
    tool.batch_execute(&format!(
        "create table {fresh} (id int primary key, name text not null)"
    ))
    .await
    .unwrap();
    tool.batch_execute(&format!("create index {fresh}_name on {fresh} (name)"))
        .await
        .unwrap();
    tool.batch_execute(&format!("alter table {fresh} rename column name to title"))
        .await
        .unwrap();
    tool.batch_execute("commit").await.unwrap();
    let columns: Vec<String> = direct
        .query(
            "select column_name::text from information_schema.columns where table_name = $1 order by ordinal_position",
            &[&fresh],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(columns, ["id", "title"]);

    tool.batch_execute("begin").await.unwrap();
    tool.query(&format!("select * from {t}"), &[])
        .await
        .unwrap();
    tool.batch_execute(&format!("create index {t}_label on {t} (label)"))
        .await
        .unwrap();
    let e = tool
        .batch_execute(&format!("alter table {t} rename column label to title"))
        .await
        .unwrap_err();
    let e = e.as_db_error().unwrap();
    assert_eq!(e.code().code(), "0A000");
    assert!(
        e.message().contains("transaction of its own"),
        "{}",
        e.message()
    );
    tool.batch_execute("rollback").await.unwrap();
    assert!(phases(&d.admin).await.is_empty(), "no migration was made");
}

/// pgshift carries DDL out as its control role only for a client that
/// could run it itself: a role that does not own the table gets Postgres'
/// own answer, and no migration is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_does_not_own_the_table_gets_postgres_answer() {
    let (dbname, direct) = db().fresh_database("ddlstranger").await;
    let t = unique("owned");
    let stranger = unique("stranger");
    direct
        .batch_execute(&format!(
            "create table {t} (id int primary key, label text);
             create role {stranger} login;
             grant select, insert, update on {t} to {stranger};"
        ))
        .await
        .unwrap();
    let d = driven_migrating(&dbname, Default::default()).await;
    let mut config = d.proxy.config();
    config.dbname(&dbname).user(&stranger);
    let client = connect(&config).await.unwrap();
    client
        .execute(&format!("insert into {t} values (1, 'x')"), &[])
        .await
        .unwrap();
    for ddl in [
        format!("alter table {t} rename column label to title"),
        format!("create index {t}_label on {t} (label)"),
    ] {
        let e = client.batch_execute(&ddl).await.unwrap_err();
        let e = e.as_db_error().unwrap();
        assert_eq!(e.code().code(), "42501", "{ddl}: {e:?}");
        assert!(e.message().contains("must be owner"), "{}", e.message());
    }
    assert!(phases(&d.admin).await.is_empty(), "no migration was made");
}

/// `guard` carries out the safe forms of catalog changes itself (an index
/// built CONCURRENTLY, a foreign key NOT VALID then validated, NOT NULL
/// by the check path), answering with the statement's own tag, and
/// refuses what needs a migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_applies_the_safe_forms_itself() {
    let (dbname, direct) = db().fresh_database("ddlguard").await;
    let (parent, child) = (unique("parents"), unique("children"));
    direct
        .batch_execute(&format!(
            "create table {parent} (id int primary key);
             create table {child} (id int primary key, parent_id int, label text);
             insert into {parent} select generate_series(1, 100);
             insert into {child} select g, g, 'l' from generate_series(1, 100) g;"
        ))
        .await
        .unwrap();
    let d = driven_gate(
        &dbname,
        Default::default(),
        pgshift::sql_plan::gate::DdlMode::Guard,
    )
    .await;
    let (mut raw, _, _) = RawConn::startup_to(d.proxy.addr, &dbname).await;
    for (sql, tag) in [
        (format!("create index {child}_label on {child} (label)"), "CREATE INDEX"),
        (
            format!("alter table {child} add constraint {child}_fk foreign key (parent_id) references {parent} (id)"),
            "ALTER TABLE",
        ),
        (format!("alter table {child} alter column label set not null"), "ALTER TABLE"),
    ] {
        raw.send(&query(&sql)).await;
        let reply = raw.until_ready().await;
        let complete = reply.iter().find(|m| m.tag == b'C');
        assert_eq!(
            complete.map(|m| &m.body[..]),
            Some(format!("{tag}\0").as_bytes()),
            "{sql}: {reply:?}"
        );
    }
    // A statement prepared in one request and executed in the next (as
    // drivers with named statements do): its Execute says its own tag.
    raw.send(
        &[
            parse(
                "s1",
                &format!("alter table {child} alter column label set default 'x'"),
            ),
            sync(),
        ]
        .concat(),
    )
    .await;
    raw.until_ready().await;
    raw.send(&[bind("s1"), execute(), sync()].concat()).await;
    let reply = raw.until_ready().await;
    let complete = reply.iter().find(|m| m.tag == b'C').map(|m| m.body.clone());
    assert_eq!(
        complete.as_deref(),
        Some(&b"ALTER TABLE\0"[..]),
        "{reply:?}"
    );
    let row = direct
        .query_one(
            &format!(
                "select (select indisvalid from pg_index where indexrelid = '{child}_label'::regclass),
                        (select convalidated from pg_constraint where conname = '{child}_fk'),
                        (select attnotnull from pg_attribute where attrelid = '{child}'::regclass and attname = 'label')"
            ),
            &[],
        )
        .await
        .unwrap();
    let (valid, validated, not_null): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    assert!(valid && validated && not_null);
    let client = d.proxy.connect_to(&dbname).await;
    let e = client
        .batch_execute(&format!("alter table {child} rename column label to title"))
        .await
        .unwrap_err();
    assert_eq!(e.as_db_error().unwrap().code().code(), "0A000");
    assert!(phases(&d.admin).await.iter().all(|(_, p)| p == "complete"));
    // New rules between its Parse and its Execute (another migration
    // added): the statement carried out is not planned again.
    raw.send(
        &[
            parse(
                "s2",
                &format!("create index {child}_id on {child} (id, label)"),
            ),
            sync(),
        ]
        .concat(),
    )
    .await;
    raw.until_ready().await;
    let body = serde_json::json!({"id": "later", "table": parent, "op": "rename_column", "from": "id", "to": "pid"});
    let (code, answer) = admin_post(&d.admin, "/migrations", body).await;
    assert_eq!(code, 201, "{answer}");
    raw.send(&[bind("s2"), execute(), sync()].concat()).await;
    let reply = raw.until_ready().await;
    let complete = reply.iter().find(|m| m.tag == b'C').map(|m| m.body.clone());
    assert_eq!(
        complete.as_deref(),
        Some(&b"CREATE INDEX\0"[..]),
        "{reply:?}"
    );
}
