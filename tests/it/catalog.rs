//! What the catalog snapshot makes possible, against a real Postgres: `*`
//! and `RETURNING *` over a migrating table yield both columns from the read
//! source, positional INSERTs and INSERTs that leave the column out keep
//! both columns equal, unqualified columns resolve in joins, parameters
//! written through a type change keep the types the client's shape gives
//! them — and sessions to other databases are not rewritten at all.

use std::sync::Arc;

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
