//! What the catalog snapshot makes possible, against a real Postgres: `*`
//! and `RETURNING *` over a migrating table yield both columns from the read
//! source, positional INSERTs and INSERTs that leave the column out keep
//! both columns equal, unqualified columns resolve in joins, parameters
//! written through a type change keep the types the client's shape gives
//! them — and sessions to other databases are not rewritten at all.

use std::sync::Arc;
use std::time::Duration;

use pgshift::rewrite::engine::MigrationRewriter;
use pgshift::rewrite::migration::{MigrationSpec, Phase};
use pgshift::rewrite::rules::{ActiveMigration, RulesCell};
use tokio_postgres::types::Type;

use crate::harness::*;

/// A proxy with one migration in `phase` and the test database's catalog.
async fn proxy_with_catalog(spec: MigrationSpec, phase: Phase) -> TestProxy {
    let rules = Arc::new(RulesCell::with_catalog(
        &[ActiveMigration { spec, phase }],
        catalog().await,
    ));
    TestProxy::with_rewriter(Arc::new(MigrationRewriter::new(rules)), |_| {}).await
}

fn names(columns: &[tokio_postgres::Column]) -> Vec<&str> {
    columns.iter().map(|c| c.name()).collect()
}

#[tokio::test]
async fn stars_positional_inserts_and_join_columns_resolve_from_the_catalog() {
    let direct = db().direct().await;
    for phase in [
        Phase::Planned,
        Phase::Expanded,
        Phase::Switched,
        Phase::Contracted,
    ] {
        let table = unique("cat");
        let other = unique("catother");
        let ddl = match (phase.has_old(), phase.has_new()) {
            (true, false) => format!("create table {table} (id int primary key, bal int not null default 7, note text); insert into {table} values (1, 100, 'one')"),
            (true, true) => format!("create table {table} (id int primary key, bal int not null default 7, note text); alter table {table} add column balance int default 7; insert into {table} values (1, 100, 'one', 100)"),
            _ => format!("create table {table} (id int primary key, note text, balance int not null default 7); insert into {table} values (1, 'one', 100)"),
        };
        direct
            .batch_execute(&format!(
                "{ddl}; create table {other} (id int, label text); insert into {other} values (1, 'first')"
            ))
            .await
            .unwrap();
        let spec =
            MigrationSpec::new("bal_rename", &table, "bal", "balance", None, None, None).unwrap();
        let proxy = proxy_with_catalog(spec, phase).await;
        let app = proxy.connect().await;

        // SELECT *: both columns, equal, named as the client expects.
        let star_names = if phase.has_old() {
            vec!["id", "bal", "note", "balance"]
        } else {
            vec!["id", "note", "bal", "balance"]
        };
        let row = app
            .query_one(&format!("select * from {table} where id = $1"), &[&1i32])
            .await
            .unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        assert_eq!(names(row.columns()), star_names, "{phase}");
        let bal = star_names.iter().position(|c| *c == "bal").unwrap();
        assert_eq!(row.get::<_, i32>(bal), 100, "{phase}");
        assert_eq!(row.get::<_, i32>(3), 100, "{phase}");
        assert_eq!(row.columns()[3].type_(), &Type::INT4, "{phase}");

        // Positional INSERT in the old shape; INSERT leaving the column out.
        // (Once bal is dropped its place is unknown: pgshift refuses then.)
        let positional = format!("insert into {table} values (2, 20, 'two')");
        let inserted = app.batch_execute(&positional).await;
        if phase.has_old() {
            inserted.unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        } else {
            let err = refused(inserted, &positional);
            assert_eq!(sqlstate(&err).as_deref(), Some("0A000"));
            app.batch_execute(&format!(
                "insert into {table} (id, bal, note) values (2, 20, 'two')"
            ))
            .await
            .unwrap();
        }
        app.execute(
            &format!("insert into {table} (id, note) values ($1, 'three')"),
            &[&3i32],
        )
        .await
        .unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        let physical: Vec<i32> = if phase.has_old() && phase.has_new() {
            direct
                .query(
                    &format!("select id, bal, balance from {table} where id > 1 order by id"),
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    assert_eq!(
                        r.get::<_, i32>(1),
                        r.get::<_, Option<i32>>(2).unwrap_or(-1),
                        "{phase}: both columns written"
                    );
                    r.get(1)
                })
                .collect()
        } else {
            let column = if phase.has_old() { "bal" } else { "balance" };
            direct
                .query(
                    &format!("select {column} from {table} where id > 1 order by id"),
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        assert_eq!(physical, vec![20, 7], "{phase}");

        // An unqualified column in a join resolves to the migrating table.
        let row = app
            .query_one(
                &format!("select bal, label from {table} join {other} using (id)"),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        assert_eq!(names(row.columns()), vec!["bal", "label"], "{phase}");
        assert_eq!(row.get::<_, i32>(0), 100, "{phase}");

        // RETURNING * has the shape of SELECT *.
        let rows = app
            .simple_query(&format!("delete from {table} where id = 3 returning *"))
            .await
            .unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        let returned = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| {
                            (
                                r.columns()[i].name().to_string(),
                                r.get(i).map(str::to_string),
                            )
                        })
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{phase}: no row returned"));
        let bal_value = returned
            .iter()
            .find(|(n, _)| n == "bal")
            .map(|(_, v)| v.clone());
        let balance_value = returned
            .iter()
            .find(|(n, _)| n == "balance")
            .map(|(_, v)| v.clone());
        assert_eq!(returned.len(), 4, "{phase}: {returned:?}");
        assert_eq!(bal_value, Some(Some("7".to_string())), "{phase}");
        assert_eq!(balance_value, Some(Some("7".to_string())), "{phase}");
    }
}

#[tokio::test]
async fn parameters_written_through_a_type_change_keep_their_types() {
    let direct = db().direct().await;
    let table = unique("cents");
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, amount int not null default 0, amount_dec numeric(12,2));
             insert into {table} values (1, 100, 1.00)"
        ))
        .await
        .unwrap();
    let spec = cents_to_decimal("cents", &table);
    let proxy = proxy_with_catalog(spec, Phase::Expanded).await;
    let app = proxy.connect().await;

    // Old shape: $1 is an integer, as on a database where amount is one.
    let update = app
        .prepare(&format!("update {table} set amount = $1 where id = $2"))
        .await
        .unwrap();
    assert_eq!(update.params(), &[Type::INT4, Type::INT4]);
    app.execute(&update, &[&250i32, &1i32]).await.unwrap();
    let insert = app
        .prepare(&format!("insert into {table} (id, amount) values ($1, $2)"))
        .await
        .unwrap();
    assert_eq!(insert.params(), &[Type::INT4, Type::INT4]);
    app.execute(&insert, &[&2i32, &1999i32]).await.unwrap();
    // New shape: $1 is a numeric.
    let update_new = app
        .prepare(&format!("update {table} set amount_dec = $1 where id = $2"))
        .await
        .unwrap();
    assert_eq!(update_new.params(), &[Type::NUMERIC, Type::INT4]);

    let rows = direct
        .query(
            &format!("select amount, amount_dec::text from {table} order by id"),
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![(250, "2.50".to_string()), (1999, "19.99".to_string())]
    );

    // SELECT *: the new column has its declared type.
    let row = app
        .query_one(&format!("select * from {table} where id = 2"), &[])
        .await
        .unwrap();
    assert_eq!(names(row.columns()), vec!["id", "amount", "amount_dec"]);
    assert_eq!(row.columns()[2].type_(), &Type::NUMERIC);
}

#[tokio::test]
async fn sessions_to_other_databases_are_not_rewritten() {
    let direct = db().direct().await;
    let other_db = unique("otherdb");
    direct
        .batch_execute(&format!("create database {other_db}"))
        .await
        .unwrap();
    let table = unique("scoped");
    direct
        .batch_execute(&format!(
            "create table {table} (id int, bal int, balance int); insert into {table} values (1, 1, 2)"
        ))
        .await
        .unwrap();
    let spec = MigrationSpec::new("scoped", &table, "bal", "balance", None, None, None).unwrap();
    let proxy = proxy_with_catalog(spec, Phase::Switched).await;

    // The migration's database: reads of bal come from balance.
    let app = proxy.connect().await;
    let row = app
        .query_one(&format!("select bal from {table}"), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 2);

    // Another database with a table of the same name and no balance column.
    let mut other = proxy.config();
    other.dbname(&other_db);
    let other = connect(&other).await.unwrap();
    other
        .batch_execute(&format!(
            "create table {table} (id int, bal int); insert into {table} values (1, 1)"
        ))
        .await
        .unwrap();
    let row = other
        .query_one(&format!("select bal from {table}"), &[])
        .await
        .expect("a session to another database is relayed as it is");
    assert_eq!(row.get::<_, i32>(0), 1);
    drop(other);
}

#[tokio::test]
async fn copy_to_reads_from_the_read_source() {
    use futures_util::TryStreamExt;
    let direct = db().direct().await;
    let table = unique("copyto");
    // Switched: reads come from balance; make the columns differ to see it.
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, bal int, note text, balance int);
             insert into {table} values (1, 10, 'x', 20), (2, 11, 'y', 21)"
        ))
        .await
        .unwrap();
    let spec = MigrationSpec::new("copy", &table, "bal", "balance", None, None, None).unwrap();
    let proxy = proxy_with_catalog(spec, Phase::Switched).await;
    let app = proxy.connect().await;
    let copy = |sql: String| {
        let app = &app;
        async move {
            let chunks: Vec<bytes::Bytes> = app
                .copy_out(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
                .try_collect()
                .await
                .unwrap();
            String::from_utf8(chunks.concat()).unwrap()
        }
    };
    assert_eq!(
        copy(format!("copy {table} (id, bal) to stdout")).await,
        "1\t20\n2\t21\n"
    );
    assert_eq!(
        copy(format!(
            "copy (select bal from {table} order by id) to stdout with (format csv, header)"
        ))
        .await,
        "bal\n20\n21\n"
    );
    // Without a column list: every column, both migrating ones from the source.
    assert_eq!(
        copy(format!("copy {table} to stdout")).await,
        "1\t20\tx\t20\n2\t21\ty\t21\n"
    );
    // COPY FROM while both columns are written is refused, table untouched.
    let err = refused(
        app.batch_execute(&format!("copy {table} (id, bal) from stdin"))
            .await,
        "copy from",
    );
    assert_eq!(sqlstate(&err).as_deref(), Some("0A000"));
}

/// An unqualified table name resolves as each session's `search_path`
/// says — a same-named table in a tenant schema is not the migrating one —
/// whether the path comes from `SET` (simple or extended), `SET LOCAL`, the
/// startup options or `ALTER ROLE … SET`; a `SET` rolled back is undone; a
/// statement naming both tables, or a path pgshift cannot read, is refused.
#[tokio::test]
async fn unqualified_names_follow_each_sessions_search_path() {
    let direct = db().direct().await;
    let table = unique("sp");
    let tenant = unique("tenant");
    let role = unique("sprole");
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, bal int not null, note text, balance int);
             insert into {table} values (1, 100, 'one', 100);
             create schema {tenant};
             create table {tenant}.{table} (id int primary key, bal int not null, note text);
             create role {role} login password 'pw' superuser;
             alter role {role} set search_path = {tenant}, public;"
        ))
        .await
        .unwrap();
    let spec =
        MigrationSpec::new("bal_rename", &table, "bal", "balance", None, None, None).unwrap();
    let proxy = proxy_with_catalog(spec, Phase::Expanded).await;
    let insert = |id: i32, bal: i32| format!("INSERT INTO {table} (id, bal) VALUES ({id}, {bal})");

    // The default path: public, dual-written.
    let app = proxy.connect().await;
    app.batch_execute(&insert(2, 5)).await.unwrap();
    // A path set over the extended protocol: the tenant's table, untouched
    // (it has no `balance`: a rewritten INSERT would fail).
    app.execute(&format!("SET search_path TO {tenant}, public"), &[])
        .await
        .unwrap();
    app.batch_execute(&insert(3, 6)).await.unwrap();
    let star = app
        .query(&format!("SELECT * FROM {table} ORDER BY id"), &[])
        .await
        .unwrap();
    assert_eq!(names(star[0].columns()), ["id", "bal", "note"]);
    app.execute(
        &format!("INSERT INTO {table} (id, bal) VALUES ($1, $2)"),
        &[&30i32, &60i32],
    )
    .await
    .unwrap();
    // The migrating table, named with its schema, is still rewritten.
    app.batch_execute(&format!(
        "INSERT INTO public.{table} (id, bal) VALUES (4, 7)"
    ))
    .await
    .unwrap();
    let both = app
        .query(
            &format!("SELECT * FROM {table} JOIN public.{table} p USING (id)"),
            &[],
        )
        .await;
    assert_eq!(
        sqlstate(&refused(both, "a statement naming both tables")).as_deref(),
        Some("0A000")
    );

    // A SET rolled back is undone; SET LOCAL lasts for its transaction.
    let app = proxy.connect().await;
    app.batch_execute(&format!("BEGIN; SET search_path TO {tenant}; ROLLBACK"))
        .await
        .unwrap();
    app.batch_execute(&insert(5, 8)).await.unwrap();
    app.batch_execute(&format!(
        "BEGIN; SET LOCAL search_path TO {tenant}; {}; COMMIT",
        insert(6, 9)
    ))
    .await
    .unwrap();
    app.batch_execute(&insert(7, 10)).await.unwrap();
    // A path pgshift cannot read: statements on the name are refused.
    app.query(
        "SELECT set_config('search_path', $1, false)",
        &[&format!("{tenant}, public")],
    )
    .await
    .unwrap();
    let unknown = app.query(&format!("SELECT * FROM {table}"), &[]).await;
    assert_eq!(
        sqlstate(&refused(unknown, "a table name under an unreadable path")).as_deref(),
        Some("0A000")
    );
    app.batch_execute("RESET search_path").await.unwrap();
    app.batch_execute(&insert(9, 12)).await.unwrap();

    // The startup options, and the role's own default.
    let mut options = proxy.config();
    options.options(format!("-c search_path={tenant}"));
    let app = connect(&options).await.unwrap();
    app.batch_execute(&insert(8, 11)).await.unwrap();
    let mut as_role = proxy.config();
    as_role.user(&role).password("pw");
    let app = connect(&as_role).await.unwrap();
    app.batch_execute(&insert(10, 13)).await.unwrap();

    let public: Vec<(i32, i32, Option<i32>)> = direct
        .query(
            &format!("SELECT id, bal, balance FROM public.{table} ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        public,
        [
            (1, 100, Some(100)),
            (2, 5, Some(5)),
            (4, 7, Some(7)),
            (5, 8, Some(8)),
            (7, 10, Some(10)),
            (9, 12, Some(12))
        ]
    );
    let tenant_ids: Vec<i32> = direct
        .query(&format!("SELECT id FROM {tenant}.{table} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tenant_ids, [3, 6, 8, 10, 30]);
    direct
        .batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await
        .unwrap();
}

/// The catalog snapshot follows DDL: a column added directly on Postgres
/// is in a migrating table's `*` within a few seconds, and one added
/// through pgshift at its next poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_snapshot_follows_ddl_run_anywhere() {
    let (dbname, direct) = db().fresh_database("catalogfollows").await;
    let table = unique("accounts");
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, bal int, note text); insert into {table} values (1, 5, 'x')"
        ))
        .await
        .unwrap();
    let spec = MigrationSpec::new("m", &table, "bal", "balance", None, None, None).unwrap();
    let d = driven_all(vec![spec], &dbname).await;
    let client = d.proxy.connect_to(&dbname).await;
    let width = || {
        let (client, table) = (&client, table.clone());
        async move {
            let sql = format!("select * from {table} where id = 1");
            // (Prepared just before a new snapshot, executed just after:
            // the columns changed under it, and it fails once, as on
            // Postgres; prepared again, it answers.)
            match client.query_one(&sql, &[]).await {
                Ok(row) => row.len(),
                Err(e) if sqlstate(&e).as_deref() == Some("0A000") => {
                    client.query_one(&sql, &[]).await.unwrap().len()
                }
                Err(e) => panic!("{e:?}"),
            }
        }
    };
    // planned: the old shape's * (id, bal, note) and the new column.
    let before = width().await;
    let started = std::time::Instant::now();
    direct
        .batch_execute(&format!("alter table {table} add column extra int"))
        .await
        .unwrap();
    while width().await == before {
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "the snapshot never saw the column"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let direct_took = started.elapsed();
    let started = std::time::Instant::now();
    client
        .batch_execute(&format!("alter table {table} add column extra2 int"))
        .await
        .unwrap();
    while width().await == before + 1 {
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "the snapshot never saw the column"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Through pgshift: the next poll (200 ms), not the periodic look (2 s).
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "through pgshift {:?} (directly {direct_took:?})",
        started.elapsed()
    );
}
