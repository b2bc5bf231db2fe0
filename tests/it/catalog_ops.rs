//! Catalog operations (`create_index`, `drop_index`, `add_constraint`,
//! `drop_constraint`, `set_default`): each carried through its lifecycle
//! while clients write the table on both protocols, with no statement
//! failing; each rolled back from every phase before its drop; the
//! constraint the rows break refused at validate with nothing half-done;
//! and what is not one statement of the named kind on the migration's
//! table refused before anything reaches Postgres.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::harness::*;

async fn post(admin: &str, path: &str, body: Value) -> (u16, Value) {
    pgshift::admin::request(admin, "POST", path, Some(&body), None)
        .await
        .unwrap()
}

/// Posts `action` for migration `id` and checks the phase it answers.
async fn step(admin: &str, id: &str, action: &str, phase: &str) {
    let (code, answer) = post(admin, &format!("/migrations/{id}/{action}"), json!({})).await;
    assert_eq!(
        (code, answer["phase"].as_str()),
        (200, Some(phase)),
        "{id} {action}: {answer}"
    );
}

/// Adds a migration and checks it is planned.
async fn add(admin: &str, body: Value) {
    let (code, answer) = post(admin, "/migrations", body.clone()).await;
    assert_eq!(
        (code, answer["phase"].as_str()),
        (201, Some("planned")),
        "{body}: {answer}"
    );
}

/// A team table and a users table that references nothing yet.
async fn schema(direct: &tokio_postgres::Client) {
    direct
        .batch_execute(
            "create table teams (id int primary key, name text not null);
             insert into teams select g, 'team ' || g from generate_series(1, 10) g;
             create table users (
                 id int primary key,
                 email text not null,
                 team_id int not null,
                 status text not null default 'new',
                 logins int not null default 0
             );
             create index users_logins_idx on users (logins);
             insert into users (id, email, team_id)
                 select g, 'user' || g || '@example.com', g % 10 + 1 from generate_series(1, 20000) g;",
        )
        .await
        .unwrap();
}

/// Clients inserting and updating `users` until stopped, on the simple
/// and the extended protocol.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicI64>,
    tasks: Vec<JoinHandle<Vec<String>>>,
}

impl Load {
    async fn start(proxy: &TestProxy, dbname: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicI64::new(0));
        let mut tasks = Vec::new();
        for k in 0..4i32 {
            let client = proxy.connect_to(dbname).await;
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            tasks.push(tokio::spawn(async move {
                let mut errors = Vec::new();
                let mut n = 0i32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = 100_000 + k * 1_000_000 + n;
                    let team = n % 10 + 1;
                    let row = (n * 7919 + k * 131) % 20000 + 1;
                    let result = if k % 2 == 0 {
                        client
                            .simple_query(&format!(
                                "insert into users (id, email, team_id) values ({id}, 'n{id}@example.com', {team});
                                 update users set logins = logins + 1 where id = {row}"
                            ))
                            .await
                            .map(|_| ())
                    } else {
                        let email = format!("n{id}@example.com");
                        match client
                            .execute(
                                "insert into users (id, email, team_id) values ($1, $2, $3)",
                                &[&id, &email, &team],
                            )
                            .await
                        {
                            Ok(_) => client
                                .execute("update users set logins = logins + 1 where id = $1", &[&row])
                                .await
                                .map(|_| ()),
                            Err(e) => Err(e),
                        }
                    };
                    match result {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => errors.push(format!("{e:?}")),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                errors
            }));
        }
        Load { stop, done, tasks }
    }

    async fn finish(self) -> (i64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for task in self.tasks {
            errors.extend(task.await.unwrap());
        }
        (self.done.load(Ordering::Relaxed), errors)
    }
}

/// A session through pgshift in a transaction that has written `users`
/// and stays open: DDL waits for its lock, a concurrent build for its end.
async fn holding(proxy: &TestProxy, dbname: &str) -> tokio_postgres::Client {
    let holder = proxy.connect_to(dbname).await;
    holder
        .batch_execute("begin; update users set logins = logins + 1 where id = 1")
        .await
        .unwrap();
    holder
}

async fn one_bool(direct: &tokio_postgres::Client, sql: &str) -> bool {
    direct.query_one(sql, &[]).await.unwrap().get(0)
}

async fn default_of(direct: &tokio_postgres::Client, column: &str) -> Option<String> {
    direct
        .query_one(
            "select pg_get_expr(d.adbin, d.adrelid) from pg_attribute a
               left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
              where a.attrelid = 'users'::regclass and a.attname = $1",
            &[&column],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn every_catalog_operation_runs_to_complete_under_load_failing_no_statement() {
    let (dbname, direct) = db().fresh_database("catalog_ops").await;
    schema(&direct).await;
    let d = driven_all(vec![], &dbname).await;
    let load = Load::start(&d.proxy, &dbname).await;
    let migrations = [
        json!({"id": "email_idx", "op": "create_index", "table": "public.users",
               "definition": "CREATE INDEX users_email_lower_idx ON users (lower(email))"}),
        json!({"id": "team_fk", "op": "add_constraint", "table": "users", "name": "users_team_fk",
               "definition": "FOREIGN KEY (team_id) REFERENCES public.teams (id)"}),
        json!({"id": "logins_check", "op": "add_constraint", "table": "users", "name": "users_logins_check",
               "definition": "CHECK (logins >= 0)"}),
        json!({"id": "email_key", "op": "add_constraint", "table": "users", "name": "users_email_key",
               "definition": "UNIQUE (email)"}),
        json!({"id": "status_default", "op": "set_default", "table": "users", "column": "status",
               "default": "'active'"}),
        json!({"id": "drop_logins_idx", "op": "drop_index", "table": "users", "name": "users_logins_idx"}),
    ];
    for m in &migrations {
        add(&d.admin, m.clone()).await;
    }
    for (id, validates) in [
        ("email_idx", true),
        ("team_fk", true),
        ("logins_check", true),
        ("email_key", true),
        ("status_default", false),
        ("drop_logins_idx", false),
    ] {
        step(&d.admin, id, "expand", "expanded").await;
        if validates {
            step(&d.admin, id, "validate", "validated").await;
        }
        step(&d.admin, id, "contract", "contracted").await;
        step(&d.admin, id, "complete", "complete").await;
    }
    // The load goes on a little under the finished catalog.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (done, errors) = load.finish().await;
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert!(done > 50, "the load ran ({done} transactions)");
    assert!(
        one_bool(
            &direct,
            "select indisvalid from pg_index where indexrelid = 'users_email_lower_idx'::regclass"
        )
        .await,
        "the index is valid"
    );
    let validated: Vec<(String, bool, String)> = direct
        .query(
            "select conname::text, convalidated, contype::text from pg_constraint
              where conrelid = 'users'::regclass and conname in ('users_team_fk', 'users_logins_check', 'users_email_key')
              order by 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        validated,
        [
            ("users_email_key".into(), true, "u".into()),
            ("users_logins_check".into(), true, "c".into()),
            ("users_team_fk".into(), true, "f".into()),
        ]
    );
    assert_eq!(
        default_of(&direct, "status").await.as_deref(),
        Some("'active'::text")
    );
    assert!(
        !one_bool(
            &direct,
            "select to_regclass('users_logins_idx') is not null"
        )
        .await
    );
    // The constraints are in force for every client.
    let client = d.proxy.connect_to(&dbname).await;
    let err = client
        .execute(
            "insert into users (id, email, team_id) values (-1, 'x@example.com', 99)",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("23503"), "{err}");
    // What each step did is in the history.
    let events: i64 = direct
        .query_one("select count(*) from pgshift.events where migration_id = 'team_fk' and action in ('expand', 'validate', 'contract', 'complete')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 4);
}

#[tokio::test]
async fn catalog_operations_roll_back_from_every_phase_before_their_drop() {
    let (dbname, direct) = db().fresh_database("catalog_rollback").await;
    schema(&direct).await;
    let d = driven_all(vec![], &dbname).await;
    let cases: [(&str, Value, &[&str]); 4] = [
        (
            "idx",
            json!({"op": "create_index", "table": "users",
                   "definition": "create index users_team_idx on users (team_id, id)"}),
            &["expand", "validate", "contract"],
        ),
        (
            "key",
            json!({"op": "add_constraint", "table": "users", "name": "users_email_key",
                   "definition": "unique (email)"}),
            &["expand", "validate", "contract"],
        ),
        (
            "fk",
            json!({"op": "add_constraint", "table": "users", "name": "users_team_fk",
                   "definition": "foreign key (team_id) references teams (id)"}),
            &["expand", "validate", "contract"],
        ),
        (
            "def",
            json!({"op": "set_default", "table": "users", "column": "status"}),
            &["expand", "contract"],
        ),
    ];
    let phase_after = |action: &str| match action {
        "expand" => "expanded",
        "validate" => "validated",
        _ => "contracted",
    };
    for (name, body, steps) in cases {
        for upto in 0..=steps.len() {
            let id = format!("{name}_{upto}");
            let mut body = body.clone();
            body["id"] = json!(id);
            add(&d.admin, body).await;
            for action in &steps[..upto] {
                step(&d.admin, &id, action, phase_after(action)).await;
            }
            step(&d.admin, &id, "rollback", "rolled_back").await;
            let left: i64 = direct
                .query_one(
                    "select (select count(*) from pg_class where relname in ('users_team_idx', 'users_email_key'))
                          + (select count(*) from pg_constraint where conname in ('users_email_key', 'users_team_fk'))",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(left, 0, "{id}: nothing of it is left");
            assert_eq!(
                default_of(&direct, "status").await.as_deref(),
                Some("'new'::text"),
                "{id}: the default is the old one"
            );
        }
    }
    // A drop cannot be undone once done.
    add(
        &d.admin,
        json!({"id": "drop", "op": "drop_index", "table": "users", "name": "users_logins_idx"}),
    )
    .await;
    step(&d.admin, "drop", "expand", "expanded").await;
    step(&d.admin, "drop", "contract", "contracted").await;
    let (code, answer) = post(&d.admin, "/migrations/drop/rollback", json!({})).await;
    assert_eq!(code, 409, "{answer}");
}

#[tokio::test]
async fn what_the_rows_break_is_refused_with_nothing_half_done() {
    let (dbname, direct) = db().fresh_database("catalog_refused").await;
    schema(&direct).await;
    direct
        .batch_execute("update users set logins = -1 where id = 7; update users set email = 'user1@example.com' where id = 2")
        .await
        .unwrap();
    let d = driven_all(vec![], &dbname).await;
    // A CHECK the rows break: added NOT VALID (new writes checked), then
    // refused at validate, the migration left expanded.
    add(
        &d.admin,
        json!({"id": "check", "op": "add_constraint", "table": "users",
                         "name": "users_logins_check", "definition": "check (logins >= 0)"}),
    )
    .await;
    step(&d.admin, "check", "expand", "expanded").await;
    let (code, answer) = post(&d.admin, "/migrations/check/validate", json!({})).await;
    assert_eq!(code, 422, "{answer}");
    let text = answer.to_string();
    assert!(
        text.contains("users_logins_check") && text.contains("violated"),
        "{text}"
    );
    let (_, status) = pgshift::admin::request(&d.admin, "GET", "/migrations/check", None, None)
        .await
        .unwrap();
    assert_eq!(status["phase"], "expanded");
    let (code, answer) = post(&d.admin, "/migrations/check/contract", json!({})).await;
    assert_eq!(
        code, 409,
        "contract needs the constraint validated: {answer}"
    );
    // A UNIQUE the rows break: the index build fails, and leaves no
    // invalid index behind.
    add(
        &d.admin,
        json!({"id": "key", "op": "add_constraint", "table": "users",
                         "name": "users_email_key", "definition": "unique (email)"}),
    )
    .await;
    let (code, answer) = post(&d.admin, "/migrations/key/expand", json!({})).await;
    assert_eq!(code, 422, "{answer}");
    assert!(answer.to_string().contains("duplicate"), "{answer}");
    assert!(!one_bool(&direct, "select to_regclass('users_email_key') is not null").await);
    let (_, status) = pgshift::admin::request(&d.admin, "GET", "/migrations/key", None, None)
        .await
        .unwrap();
    assert_eq!(status["phase"], "planned");
}

#[tokio::test]
async fn definitions_that_are_not_what_the_operation_names_are_refused() {
    let (dbname, direct) = db().fresh_database("catalog_bad").await;
    schema(&direct).await;
    let spec = cents_like(&direct).await;
    let d = driven_all(vec![spec], &dbname).await;
    let bad = [
        (
            json!({"id": "a", "op": "create_index", "table": "users",
                "definition": "create index i on users (email); drop table teams"}),
            400,
            "one statement",
        ),
        (
            json!({"id": "b", "op": "create_index", "table": "users",
                "definition": "create index i on teams (name)"}),
            400,
            "not on the migration's table",
        ),
        (
            json!({"id": "c", "op": "create_index", "table": "users",
                "definition": "create index i on users (email)", "from": "email"}),
            400,
            "takes no from",
        ),
        (
            json!({"id": "d", "op": "add_constraint", "table": "users", "name": "c",
                "definition": "check (true) not valid"}),
            400,
            "NOT VALID",
        ),
        (
            json!({"id": "e", "op": "set_default", "table": "users", "column": "status",
                "default": "'x'; drop table teams"}),
            400,
            "unexpected text",
        ),
        (
            json!({"id": "f", "op": "drop_index", "table": "users", "name": "users_pkey"}),
            409,
            "drop_constraint",
        ),
        (
            json!({"id": "g", "op": "add_constraint", "table": "users", "name": "users_pk2",
                "definition": "primary key (email)"}),
            409,
            "already has a primary key",
        ),
        (
            json!({"id": "h", "op": "create_index", "table": "users",
                "definition": "create index i on users (cents)"}),
            409,
            "clashes",
        ),
        (
            json!({"id": "i", "op": "create_index", "table": "users", "definitoin": "x"}),
            400,
            "unknown field",
        ),
        // A second migration of the column the first one moves.
        (
            json!({"id": "j", "op": "rename_column", "table": "users", "from": "cents", "to": "cost"}),
            409,
            "clashes",
        ),
    ];
    for (body, code, says) in bad {
        let (got, answer) = post(&d.admin, "/migrations", body.clone()).await;
        assert_eq!(got, code, "{body}: {answer}");
        assert!(answer.to_string().contains(says), "{body}: {answer}");
    }
    let tables: i64 = direct
        .query_one("select count(*) from pg_class where relname = 'teams'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 1);
    add(
        &d.admin,
        json!({"id": "ok", "op": "create_index", "table": "users",
                         "definition": "create index users_email_idx on users (email)"}),
    )
    .await;
    let (code, answer) = post(&d.admin, "/migrations/ok/backfill", json!({})).await;
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer.to_string().contains("nothing to backfill"),
        "{answer}"
    );
}

/// A column migration in flight on `users` (`cents` → `amount`), so that
/// a catalog operation naming `cents` clashes with it.
async fn cents_like(direct: &tokio_postgres::Client) -> pgshift::rewrite::migration::MigrationSpec {
    direct
        .batch_execute("alter table users add column cents int not null default 0")
        .await
        .unwrap();
    pgshift::rewrite::migration::MigrationSpec::new(
        "move", "users", "cents", "amount", None, None, None,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_holding_the_table_queues_no_client_behind_a_constraint_for_longer_than_the_lock_timeout(
) {
    let (dbname, direct) = db().fresh_database("catalog_locks").await;
    schema(&direct).await;
    let d = driven_all(vec![], &dbname).await;
    add(
        &d.admin,
        json!({"id": "fk", "op": "add_constraint", "table": "users", "name": "users_team_fk",
                         "definition": "foreign key (team_id) references teams (id)"}),
    )
    .await;
    // A transaction that has written the table and stays open 3 s: the
    // ALTER cannot have its lock meanwhile.
    let holder = holding(&d.proxy, &dbname).await;
    let admin = d.admin.clone();
    let expand =
        tokio::spawn(async move { post(&admin, "/migrations/fk/expand", json!({})).await });
    // Meanwhile a reader of the table never waits as long as the holder.
    let reader = d.proxy.connect_to(&dbname).await;
    let started = std::time::Instant::now();
    let mut longest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(3) {
        let t = std::time::Instant::now();
        reader
            .query_one("select count(*) from users where id < 10", &[])
            .await
            .unwrap();
        longest = longest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    holder.batch_execute("commit").await.unwrap();
    let (code, answer) = expand.await.unwrap();
    assert_eq!(
        (code, answer["phase"].as_str()),
        (200, Some("expanded")),
        "{answer}"
    );
    // The lock discipline's timeout is 1 s; the holder held for 3 s.
    assert!(
        longest < Duration::from_millis(1600),
        "a reader waited {longest:?} behind the ALTER"
    );
    let retried: i64 = direct
        .query_one(
            "select count(*) from pgshift.events where migration_id = 'fk' and action = 'expand'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(retried, 1);
}

async fn not_null(direct: &tokio_postgres::Client, column: &str) -> bool {
    direct
        .query_one(
            "select attnotnull from pg_attribute where attrelid = 'users'::regclass and attname = $1",
            &[&column],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn not_null_is_set_the_scan_free_way_and_dropped_at_contract() {
    let (dbname, direct) = db().fresh_database("catalog_not_null").await;
    schema(&direct).await;
    direct
        .batch_execute(
            "alter table users add column nick text, add column nick2 text;
             update users set nick2 = 'n' where id > 0;
             update users set nick = 'n' where id > 10",
        )
        .await
        .unwrap();
    let d = driven_all(vec![], &dbname).await;
    add(
        &d.admin,
        json!({"id": "nick", "op": "set_not_null", "table": "users", "column": "nick"}),
    )
    .await;
    // Rows holding NULL: a NOT VALID check would fail their every UPDATE.
    let (code, answer) = post(&d.admin, "/migrations/nick/expand", json!({})).await;
    assert_eq!(code, 409, "{answer}");
    assert!(answer.to_string().contains("hold NULL"), "{answer}");
    direct
        .batch_execute("update users set nick = 'n' where nick is null")
        .await
        .unwrap();
    step(&d.admin, "nick", "expand", "expanded").await;
    let client = d.proxy.connect_to(&dbname).await;
    let err = client
        .execute(
            "insert into users (id, email, team_id) values (-5, 'x@example.com', 1)",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("23514"),
        "new writes are checked: {err}"
    );
    client
        .execute("update users set logins = logins + 1 where id = 3", &[])
        .await
        .unwrap();
    assert!(!not_null(&direct, "nick").await);
    step(&d.admin, "nick", "validate", "validated").await;
    step(&d.admin, "nick", "contract", "contracted").await;
    step(&d.admin, "nick", "complete", "complete").await;
    assert!(not_null(&direct, "nick").await);
    let checks: i64 = direct
        .query_one(
            "select count(*) from pg_constraint where conrelid = 'users'::regclass and conname like 'pgshift%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(checks, 0, "pgshift's check is gone");
    // Rolled back after contract: nullable again, nothing left.
    add(
        &d.admin,
        json!({"id": "nick2", "op": "set_not_null", "table": "users", "column": "nick2"}),
    )
    .await;
    for (action, phase) in [
        ("expand", "expanded"),
        ("validate", "validated"),
        ("contract", "contracted"),
    ] {
        step(&d.admin, "nick2", action, phase).await;
    }
    assert!(not_null(&direct, "nick2").await);
    step(&d.admin, "nick2", "rollback", "rolled_back").await;
    assert!(!not_null(&direct, "nick2").await);
    // drop_not_null: at contract, never on a primary key column.
    add(
        &d.admin,
        json!({"id": "email", "op": "drop_not_null", "table": "users", "column": "email"}),
    )
    .await;
    step(&d.admin, "email", "expand", "expanded").await;
    assert!(not_null(&direct, "email").await);
    step(&d.admin, "email", "contract", "contracted").await;
    assert!(!not_null(&direct, "email").await);
    let (code, answer) = post(
        &d.admin,
        "/migrations",
        json!({"id": "pk", "op": "drop_not_null", "table": "users", "column": "id"}),
    )
    .await;
    assert_eq!(code, 409, "{answer}");
    assert!(answer.to_string().contains("primary key"), "{answer}");
}

/// A fresh database with the schema, pgshift driving it, and a planned
/// `create_index` "idx" on `users (team_id)`.
async fn index_planned(prefix: &str) -> (String, tokio_postgres::Client, Driven) {
    let (dbname, direct) = db().fresh_database(prefix).await;
    schema(&direct).await;
    let d = driven_all(vec![], &dbname).await;
    add(
        &d.admin,
        json!({"id": "idx", "op": "create_index", "table": "users",
               "definition": "create index users_team_idx on users (team_id)"}),
    )
    .await;
    (dbname, direct, d)
}

/// Migration `id`'s status once `done` holds for it (10 s at most).
async fn status_once(admin: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let path = format!("/migrations/{id}");
        let (_, status) = pgshift::admin::request(admin, "GET", &path, None, None)
            .await
            .unwrap();
        if done(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not reached in 10 s: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_build_waiting_on_an_old_transaction_shows_on_status() {
    let (dbname, _direct, d) = index_planned("catalog_progress").await;
    // A transaction with a write in flight on the table: a concurrent
    // build waits for it before it starts.
    let holder = holding(&d.proxy, &dbname).await;
    let admin = d.admin.clone();
    let expand =
        tokio::spawn(async move { post(&admin, "/migrations/idx/expand", json!({})).await });
    let status = status_once(&d.admin, "idx", |s| !s["index_build"].is_null()).await;
    let build = status["index_build"].clone();
    assert!(
        build["phase"]
            .as_str()
            .is_some_and(|p| p.starts_with("waiting for")),
        "{build}"
    );
    holder.batch_execute("commit").await.unwrap();
    let (code, answer) = expand.await.unwrap();
    assert_eq!(
        (code, answer["phase"].as_str()),
        (200, Some("expanded")),
        "{answer}"
    );
    assert!(
        answer["index_build"].is_null(),
        "the build is over: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expand_goes_on_when_the_client_that_asked_for_it_goes_away() {
    let (dbname, direct, d) = index_planned("catalog_gone").await;
    // The build waits for this transaction, while the client gives up.
    let holder = holding(&d.proxy, &dbname).await;
    let gave_up = tokio::time::timeout(
        Duration::from_millis(500),
        post(&d.admin, "/migrations/idx/expand", json!({})),
    )
    .await;
    assert!(gave_up.is_err(), "the build was to wait for the holder");
    holder.batch_execute("commit").await.unwrap();
    status_once(&d.admin, "idx", |s| s["phase"] == "expanded").await;
    assert!(
        one_bool(
            &direct,
            "select indisvalid from pg_index where indexrelid = 'users_team_idx'::regclass"
        )
        .await,
        "the index is built and valid"
    );
}

/// `set_not_null` with `up`: rows holding NULL are given the fill at
/// expand, and so are the old shape's writes of NULL (unmarked sessions)
/// until the migration ends, while the new shape's NULL meets the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_null_set_with_a_fill_gives_the_old_shapes_nulls_the_fill() {
    let (dbname, direct) = db().fresh_database("notnullfill").await;
    direct
        .batch_execute(
            "create table contacts (id int primary key, name text, phone text);
             insert into contacts select g, 'c' || g, case when g % 3 = 0 then null else 'p' || g end
               from generate_series(1, 2500) g;",
        )
        .await
        .unwrap();
    let d = driven_all(vec![], &dbname).await;
    let (code, answer) = post(
        &d.admin,
        "/migrations",
        json!({"id": "phone", "op": "set_not_null", "table": "contacts", "column": "phone",
               "up": "'unknown'", "new_shape": {"application_name": "v2-%"}}),
    )
    .await;
    assert_eq!(code, 201, "{answer}");
    let old = d.proxy.connect_to(&dbname).await;
    let mut config = d.proxy.config();
    config.dbname(&dbname).application_name("v2-web");
    let new = connect(&config).await.unwrap();
    let write_nulls = |base: i32| {
        let old = &old;
        async move {
            old.execute(
                "insert into contacts (id, name) values ($1, 'left out')",
                &[&base],
            )
            .await
            .unwrap();
            old.execute(
                "insert into contacts (id, name, phone) values ($1, 'null', $2)",
                &[&(base + 1), &None::<String>],
            )
            .await
            .unwrap();
            old.execute("update contacts set phone = null where id = 1", &[])
                .await
                .unwrap();
        }
    };
    write_nulls(10_000).await;
    step_to(&d.admin, "phone", "expand", json!({}), "expanded").await;
    write_nulls(10_010).await;
    let refused = new
        .execute(
            "insert into contacts (id, name, phone) values (20000, 'new', null)",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&refused).as_deref(), Some("23514"));
    step_to(&d.admin, "phone", "validate", json!({}), "validated").await;
    step_to(&d.admin, "phone", "contract", json!({}), "contracted").await;
    write_nulls(10_020).await;
    step_to(&d.admin, "phone", "complete", json!({}), "complete").await;
    let row = direct
        .query_one(
            "select count(*) filter (where phone is null), count(*) filter (where phone = 'unknown'),
                    (select attnotnull from pg_attribute where attrelid = 'contacts'::regclass and attname = 'phone')
               from contacts",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    assert_eq!(
        row.get::<_, i64>(1),
        833 + 7,
        "2500 / 3 seeded NULLs, 7 written"
    );
    assert!(row.get::<_, bool>(2), "NOT NULL");
    // Complete: the rules are gone, a NULL fails as direct.
    let e = old
        .execute("insert into contacts (id, name) values (30000, 'x')", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("23502"));
}
