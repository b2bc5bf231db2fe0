//! The phase table against a real Postgres: old-shape and new-shape clients
//! side by side, through pgshift's migration rewriter, in each phase, on both
//! protocols — checking the rows, column names and types they get back and
//! the physical contents of both columns afterwards.

use std::sync::Arc;

use pgshift::rewrite::engine::MigrationRewriter;
use pgshift::rewrite::migration::{MigrationSpec, Phase};
use pgshift::rewrite::rules::{ActiveMigration, RulesCell};
use tokio_postgres::types::Type;
use tokio_postgres::SimpleQueryMessage;

use crate::harness::*;

/// A proxy whose rules hold one migration of `table` in `phase`.
async fn proxy_for(spec: MigrationSpec, phase: Phase) -> TestProxy {
    proxy_with_rules(spec, phase).await.1
}

/// A table in the expanded phase of the rename bal → balance, behind a
/// proxy: (direct client, table, spec, rules cell, proxy).
async fn expanded_rename(
    prefix: &str,
) -> (
    tokio_postgres::Client,
    String,
    MigrationSpec,
    Arc<RulesCell>,
    TestProxy,
) {
    let direct = db().direct().await;
    let table = unique(prefix);
    direct
        .batch_execute(&rename_table_ddl(&table, Phase::Expanded))
        .await
        .unwrap();
    let spec =
        MigrationSpec::new("bal_rename", &table, "bal", "balance", None, None, None).unwrap();
    let (rules, proxy) = proxy_with_rules(spec.clone(), Phase::Expanded).await;
    (direct, table, spec, rules, proxy)
}

/// [`proxy_for`], and the rules cell to publish phase changes into.
async fn proxy_with_rules(spec: MigrationSpec, phase: Phase) -> (Arc<RulesCell>, TestProxy) {
    let rules = Arc::new(RulesCell::new(&[ActiveMigration { spec, phase }]));
    let proxy =
        TestProxy::with_rewriter(Arc::new(MigrationRewriter::new(Arc::clone(&rules))), |_| {})
            .await;
    (rules, proxy)
}

/// The physical columns of a table in a phase, for a rename bal → balance.
fn rename_table_ddl(table: &str, phase: Phase) -> String {
    match (phase.has_old(), phase.has_new()) {
        (true, false) => format!("create table {table} (id int primary key, bal int not null, note text); insert into {table} values (1, 100, 'one')"),
        (true, true) => format!("create table {table} (id int primary key, bal int not null, note text, balance int); insert into {table} values (1, 100, 'one', 100)"),
        _ => format!("create table {table} (id int primary key, note text, balance int not null); insert into {table} values (1, 'one', 100)"),
    }
}

fn simple_rows(messages: &[SimpleQueryMessage]) -> Vec<(String, Option<String>)> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.columns()[0].name().to_string(),
                r.get(0).map(str::to_string),
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_rename_serves_both_shapes_in_every_phase() {
    let direct = db().direct().await;
    for phase in [
        Phase::Planned,
        Phase::Expanded,
        Phase::Backfilled,
        Phase::Switched,
        Phase::Contracted,
    ] {
        let table = unique("rename");
        direct
            .batch_execute(&rename_table_ddl(&table, phase))
            .await
            .unwrap();
        let spec =
            MigrationSpec::new("bal_rename", &table, "bal", "balance", None, None, None).unwrap();
        let proxy = proxy_for(spec, phase).await;
        let old_app = proxy.connect().await;
        let new_app = proxy.connect().await;

        // Reads, extended protocol: names and types as each shape expects.
        let row = old_app
            .query_one(&format!("select bal from {table} where id = $1"), &[&1i32])
            .await
            .unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        assert_eq!(row.columns()[0].name(), "bal", "{phase}");
        assert_eq!(row.columns()[0].type_(), &Type::INT4, "{phase}");
        assert_eq!(row.get::<_, i32>(0), 100, "{phase}");
        let row = new_app
            .query_one(
                &format!("select t.balance, note from {table} t where t.balance = $1"),
                &[&100i32],
            )
            .await
            .unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        assert_eq!(row.columns()[0].name(), "balance", "{phase}");
        assert_eq!(row.get::<_, i32>(0), 100, "{phase}");

        // Writes from both shapes, both protocols.
        old_app
            .execute(
                &format!("update {table} set bal = bal + $1 where id = 1"),
                &[&5i32],
            )
            .await
            .unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        new_app
            .batch_execute(&format!(
                "update {table} set balance = balance + 1 where id = 1"
            ))
            .await
            .unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        old_app
            .execute(
                &format!("insert into {table} (id, bal, note) values ($1, $2, 'two')"),
                &[&2i32, &20i32],
            )
            .await
            .unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        let inserted = new_app
            .simple_query(&format!(
                "insert into {table} (id, note, balance) values (3, 'three', 30) returning balance"
            ))
            .await
            .unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        assert_eq!(
            simple_rows(&inserted),
            vec![("balance".to_string(), Some("30".to_string()))],
            "{phase}"
        );

        // Simple protocol read of every row, old shape, with ORDER BY on the column.
        let rows = old_app
            .simple_query(&format!("select bal from {table} order by bal"))
            .await
            .unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        let values: Vec<_> = simple_rows(&rows);
        assert_eq!(
            values,
            vec![
                ("bal".to_string(), Some("20".to_string())),
                ("bal".to_string(), Some("30".to_string())),
                ("bal".to_string(), Some("106".to_string())),
            ],
            "{phase}"
        );
        let deleted = new_app
            .query(
                &format!("delete from {table} where balance = $1 returning id, balance"),
                &[&20i32],
            )
            .await
            .unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        assert_eq!(deleted.len(), 1);
        assert_eq!(deleted[0].columns()[1].name(), "balance");

        // Physically: every existing column holds the same values.
        let physical: Vec<&str> = [
            phase.has_old().then_some("bal"),
            phase.has_new().then_some("balance"),
        ]
        .into_iter()
        .flatten()
        .collect();
        for column in &physical {
            let rows = direct
                .query(
                    &format!("select id, {column} from {table} order by id"),
                    &[],
                )
                .await
                .unwrap();
            let got: Vec<(i32, Option<i32>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            assert_eq!(
                got,
                vec![(1, Some(106)), (3, Some(30))],
                "{phase}: physical column {column}"
            );
        }
    }
}

#[tokio::test]
async fn a_type_change_converts_both_ways_with_the_declared_type() {
    let direct = db().direct().await;
    for phase in [Phase::Expanded, Phase::Switched] {
        let table = unique("retype");
        direct
            .batch_execute(&format!(
                "create table {table} (id int primary key, amount int, amount_dec numeric(12,2));
                 insert into {table} values (1, 250, 2.50)"
            ))
            .await
            .unwrap();
        let spec = cents_to_decimal("amount_decimal", &table);
        let proxy = proxy_for(spec, phase).await;
        let client = proxy.connect().await;
        let row = client
            .query_one(
                &format!("select amount, amount_dec::text from {table} where id = 1"),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        assert_eq!(row.columns()[0].name(), "amount");
        assert_eq!(row.columns()[0].type_(), &Type::INT4, "{phase}");
        assert_eq!(row.get::<_, i32>(0), 250);
        assert_eq!(row.get::<_, String>(1), "2.50");
        client
            .batch_execute(&format!("update {table} set amount = 1999 where id = 1"))
            .await
            .unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        client
            .batch_execute(&format!(
                "insert into {table} (id, amount_dec) values (2, 7.25)"
            ))
            .await
            .unwrap_or_else(|e| panic!("{phase}: {e:?}"));
        let rows = direct
            .query(
                &format!("select id, amount, amount_dec::text from {table} order by id"),
                &[],
            )
            .await
            .unwrap();
        let got: Vec<(i32, i32, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(
            got,
            vec![(1, 1999, "19.99".into()), (2, 725, "7.25".into())],
            "{phase}"
        );

        // The new-shape read comes back as numeric(12,2): check the type
        // modifier in the RowDescription itself.
        let (mut raw, _, _) = RawConn::startup(proxy.addr).await;
        raw.send(&query(&format!(
            "select amount_dec from {table} where id = 2"
        )))
        .await;
        let reply = raw.until_ready().await;
        let description = reply
            .iter()
            .find(|m| m.tag == b'T')
            .expect("RowDescription");
        let body = &description.body[..];
        let name_end = 2 + body[2..].iter().position(|b| *b == 0).unwrap();
        assert_eq!(&body[2..name_end], b"amount_dec");
        let fields = &body[name_end + 1..];
        let type_oid = u32::from_be_bytes(fields[6..10].try_into().unwrap());
        let typmod = i32::from_be_bytes(fields[12..16].try_into().unwrap());
        assert_eq!(type_oid, 1700, "numeric");
        assert_eq!(typmod, ((12 << 16) | 2) + 4, "numeric(12,2)");
        assert_eq!(first_value(&reply).as_deref(), Some("7.25"));
    }
}

#[tokio::test]
async fn refused_statements_leave_the_table_untouched() {
    let direct = db().direct().await;
    let table = unique("refused");
    direct
        .batch_execute(&rename_table_ddl(&table, Phase::Expanded))
        .await
        .unwrap();
    let spec =
        MigrationSpec::new("bal_rename", &table, "bal", "balance", None, None, None).unwrap();
    let proxy = proxy_for(spec, Phase::Expanded).await;
    let client = proxy.connect().await;
    for sql in [
        format!("update {table} set (bal, note) = (7, 'x') where id = 1"),
        format!("insert into {table} (id, bal) values (9, 9), (10, random()::int)"),
        format!("insert into {table} values (11, 11, 'x', 11)"),
        format!("select * from {table}"),
        format!("alter table {table} rename column bal to b2"),
    ] {
        let err = refused(client.batch_execute(&sql).await, &sql);
        assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{sql}: {err:?}");
    }
    let rows = direct
        .query(&format!("select id, bal, balance from {table}"), &[])
        .await
        .unwrap();
    let got: Vec<(i32, i32, Option<i32>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(got, vec![(1, 100, Some(100))]);
}

#[tokio::test]
async fn statements_prepared_before_a_phase_change_follow_it() {
    let (direct, table, spec, rules, proxy) = expanded_rename("reprep").await;
    let client = proxy.connect().await;
    let read = client
        .prepare(&format!("select bal from {table} where id = $1"))
        .await
        .unwrap();
    let add = client
        .prepare(&format!("update {table} set bal = bal + $1 where id = $2"))
        .await
        .unwrap();
    assert_eq!(
        client
            .query_one(&read, &[&1i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        100
    );

    // Make the physical columns differ, so the read source shows.
    direct
        .batch_execute(&format!("update {table} set balance = 555 where id = 1"))
        .await
        .unwrap();
    rules.publish(&[ActiveMigration {
        spec: spec.clone(),
        phase: Phase::Switched,
    }]);
    let row = client.query_one(&read, &[&1i32]).await.unwrap();
    assert_eq!(row.columns()[0].name(), "bal");
    assert_eq!(
        row.get::<_, i32>(0),
        555,
        "reads now come from the new column"
    );
    client.execute(&add, &[&5i32, &1i32]).await.unwrap();
    let row = direct
        .query_one(
            &format!("select bal, balance from {table} where id = 1"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, i32>(1)),
        (560, 560),
        "dual write from the new source"
    );
    // Executing again needs no second re-prepare and still works.
    assert_eq!(
        client
            .query_one(&read, &[&1i32])
            .await
            .unwrap()
            .get::<_, i32>(0),
        560
    );

    // On the wire: the client sees exactly what Postgres would send.
    let (mut conn, _, _) = RawConn::startup(proxy.addr).await;
    conn.send(&message(
        b'P',
        format!("named\0select bal from {table} where id = 1\0\0\0").as_bytes(),
    ))
    .await;
    conn.send(&parse("broken", "selec 1")).await;
    conn.send(&sync()).await;
    let reply = conn.until_ready().await;
    let tags: Vec<u8> = reply.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"1EZ".to_vec());
    rules.publish(&[ActiveMigration {
        spec: spec.clone(),
        phase: Phase::Expanded,
    }]);
    conn.send(&bind("named")).await;
    conn.send(&execute()).await;
    conn.send(&sync()).await;
    let reply = conn.until_ready().await;
    let tags: Vec<u8> = reply.iter().map(|m| m.tag).collect();
    assert_eq!(
        tags,
        b"2DCZ".to_vec(),
        "the injected Close/Parse answers are swallowed"
    );
    assert_eq!(first_value(&reply).as_deref(), Some("560"));
    // A statement whose Parse failed is not resurrected by a re-prepare.
    conn.send(&bind("broken")).await;
    conn.send(&sync()).await;
    let reply = conn.until_ready().await;
    assert_eq!(reply[0].field(b'C').as_deref(), Some("26000"));
    // DEALLOCATE keeps the registry true: the name is gone.
    conn.send(&query("deallocate named")).await;
    conn.until_ready().await;
    rules.publish(&[ActiveMigration {
        spec,
        phase: Phase::Switched,
    }]);
    conn.send(&bind("named")).await;
    conn.send(&sync()).await;
    let reply = conn.until_ready().await;
    assert_eq!(reply[0].field(b'C').as_deref(), Some("26000"));
}

#[tokio::test]
async fn sql_level_prepared_statements_follow_a_phase_change() {
    let (direct, table, spec, rules, proxy) = expanded_rename("sqlprep").await;
    let client = proxy.connect().await;
    client
        .batch_execute(&format!(
            "PREPARE bump (int, int) AS UPDATE {table} SET bal = bal + $1 WHERE id = $2;
             PREPARE peek AS SELECT bal FROM {table} WHERE id = $1"
        ))
        .await
        .unwrap();
    client.batch_execute("EXECUTE bump(5, 1)").await.unwrap();
    let sql = format!("select bal, balance from {table} where id = 1");
    let both = || async {
        let row = direct.query_one(&sql, &[]).await.unwrap();
        (row.get::<_, i32>(0), row.get::<_, i32>(1))
    };
    assert_eq!(both().await, (105, 105), "dual write through EXECUTE");

    // The read switch: statements prepared before it follow it.
    direct
        .batch_execute(&format!("update {table} set balance = 555 where id = 1"))
        .await
        .unwrap();
    rules.publish(&[ActiveMigration {
        spec,
        phase: Phase::Switched,
    }]);
    let rows = client.simple_query("EXECUTE peek(1)").await.unwrap();
    assert_eq!(
        simple_rows(&rows),
        vec![("bal".to_string(), Some("555".to_string()))]
    );
    client.batch_execute("EXECUTE bump(1, 1)").await.unwrap();
    assert_eq!(both().await, (556, 556), "written from the new source");
    client.batch_execute("DEALLOCATE bump").await.unwrap();
    let err = refused(client.batch_execute("EXECUTE bump(1, 1)").await, "execute");
    assert_eq!(sqlstate(&err).as_deref(), Some("26000"));
}

/// After `complete` an old-shape prepared statement fails as it would on
/// Postgres directly — with Postgres' own 42703 at every execution — and
/// its name stays usable (Describe fails the same way, Close succeeds).
#[tokio::test]
async fn a_prepared_statement_the_new_rules_cannot_serve_fails_as_postgres_would() {
    let direct = db().direct().await;
    let table = unique("gone");
    direct
        .batch_execute(&rename_table_ddl(&table, Phase::Contracted))
        .await
        .unwrap();
    let spec = MigrationSpec::new("gone_bal", &table, "bal", "balance", None, None, None).unwrap();
    let spec_again = spec.clone();
    let (rules, proxy) = proxy_with_rules(spec.clone(), Phase::Contracted).await;
    let client = proxy.connect().await;
    let read = client
        .prepare(&format!("select bal from {table} where id = $1"))
        .await
        .unwrap();
    let row = client.query_one(&read, &[&1i32]).await.unwrap();
    assert_eq!(
        row.get::<_, i32>(0),
        100,
        "served from balance while contracted"
    );
    rules.publish(&[ActiveMigration {
        spec,
        phase: Phase::Complete,
    }]);
    for attempt in 0..3 {
        let err = refused(
            client.query_one(&read, &[&1i32]).await,
            "old shape after complete",
        );
        assert_eq!(
            (sqlstate(&err).as_deref(), message_of(&err)),
            (Some("42703"), "column \"bal\" does not exist".to_string()),
            "execution {attempt}"
        );
    }
    // On the wire: a Describe of a stale statement fails the same way
    // (twice), and Close of the name succeeds as on Postgres.
    let (mut conn, _, _) = RawConn::startup(proxy.addr).await;
    rules.publish(&[ActiveMigration {
        spec: spec_again.clone(),
        phase: Phase::Contracted,
    }]);
    conn.send(&message(
        b'P',
        format!("old\0select bal from {table}\0\0\0").as_bytes(),
    ))
    .await;
    conn.send(&sync()).await;
    let tags: Vec<u8> = conn.until_ready().await.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"1Z".to_vec(), "prepared while contracted");
    rules.publish(&[ActiveMigration {
        spec: spec_again,
        phase: Phase::Complete,
    }]);
    // Two requests in one write: the second reaches pgshift before the
    // first's failure comes back, and is re-prepared (and fails) too.
    let mut both = describe_statement("old");
    both.extend(sync());
    both.extend(describe_statement("old"));
    both.extend(sync());
    conn.send(&both).await;
    for request in 0..2 {
        let reply = conn.until_ready().await;
        assert_eq!(
            reply[0].field(b'C').as_deref(),
            Some("42703"),
            "request {request}: {reply:?}"
        );
    }
    conn.send(&close_statement("old")).await;
    conn.send(&sync()).await;
    let tags: Vec<u8> = conn.until_ready().await.iter().map(|m| m.tag).collect();
    assert_eq!(tags, b"3Z".to_vec(), "Close of the name succeeds");
}

/// A prepared `SELECT *` whose columns a phase change alters — `*` spells
/// out both migrating columns while the migration runs, the table's own
/// once it is complete — fails once with what Postgres answers when a
/// table changes under a prepared statement (0A000 "cached plan must not
/// change result type"), so the driver prepares it again, instead of
/// returning rows of another shape than the client described.
#[tokio::test]
async fn a_prepared_star_whose_columns_change_fails_as_postgres_would() {
    let direct = db().direct().await;
    let table = unique("starchange");
    direct
        .batch_execute(&rename_table_ddl(&table, Phase::Contracted))
        .await
        .unwrap();
    let spec = MigrationSpec::new("star_bal", &table, "bal", "balance", None, None, None).unwrap();
    let rules = Arc::new(RulesCell::with_catalog(
        &[ActiveMigration {
            spec: spec.clone(),
            phase: Phase::Contracted,
        }],
        catalog().await,
    ));
    let proxy =
        TestProxy::with_rewriter(Arc::new(MigrationRewriter::new(Arc::clone(&rules))), |_| {})
            .await;
    let client = proxy.connect().await;
    let star = client
        .prepare(&format!("select * from {table} where id = $1"))
        .await
        .unwrap();
    let names: Vec<&str> = star.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["id", "note", "bal", "balance"]);
    let other = client
        .prepare(&format!("select note from {table} where id = $1"))
        .await
        .unwrap();
    rules.publish(&[ActiveMigration {
        spec,
        phase: Phase::Complete,
    }]);
    let err = refused(client.query(&star, &[&1i32]).await, "columns changed");
    assert_eq!(
        (sqlstate(&err).as_deref(), message_of(&err)),
        (
            Some("0A000"),
            "cached plan must not change result type".to_string()
        )
    );
    // Named as Postgres names it: where pgjdbc looks to prepare again.
    assert_eq!(
        err.as_db_error().and_then(|e| e.routine()),
        Some("RevalidateCachedQuery")
    );
    // A statement whose columns did not change goes on as it was.
    let row = client.query_one(&other, &[&1i32]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "one");
    // Prepared again, the statement has the table's own columns.
    let star = client
        .prepare(&format!("select * from {table} where id = $1"))
        .await
        .unwrap();
    let names: Vec<&str> = star.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["id", "note", "balance"]);
    assert_eq!(client.query(&star, &[&1i32]).await.unwrap().len(), 1);
}

/// A rollback turns the rules off while `b` still exists, then drops `b`:
/// a `*` prepared in between has the table's own columns, `b` among them,
/// and loses one when `b` goes. New rules that rewrite a statement to the
/// text the server holds do not re-prepare it (re-preparing hid the change
/// from the driver: pgjdbc's Bind then failed with 08P01 "bind message has
/// 7 result formats but query has 6 columns" in the battery); Postgres
/// revalidates its own plan and answers as it does direct.
#[tokio::test]
async fn a_statement_the_rules_leave_as_it_is_meets_the_table_change_as_direct() {
    let direct = db().direct().await;
    let table = unique("rolledstar");
    direct
        .batch_execute(&rename_table_ddl(&table, Phase::Backfilled))
        .await
        .unwrap();
    let spec = MigrationSpec::new("rb_bal", &table, "bal", "balance", None, None, None).unwrap();
    let rolled_back = [ActiveMigration {
        spec,
        phase: Phase::RolledBack,
    }];
    let rules = Arc::new(RulesCell::with_catalog(&rolled_back, catalog().await));
    let proxy =
        TestProxy::with_rewriter(Arc::new(MigrationRewriter::new(Arc::clone(&rules))), |_| {})
            .await;
    let client = proxy.connect().await;
    let star = client
        .prepare(&format!("select * from {table} where id = $1"))
        .await
        .unwrap();
    let names: Vec<&str> = star.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["id", "bal", "note", "balance"], "b is still there");
    let other = client
        .prepare(&format!("select note from {table} where id = $1"))
        .await
        .unwrap();
    // The rollback drops b, and the rules are published again.
    direct
        .batch_execute(&format!("alter table {table} drop column balance"))
        .await
        .unwrap();
    rules.publish(&rolled_back);
    let err = refused(client.query(&star, &[&1i32]).await, "b was dropped");
    assert_eq!(
        (sqlstate(&err).as_deref(), message_of(&err)),
        (
            Some("0A000"),
            "cached plan must not change result type".to_string()
        ),
        "Postgres' own answer, as direct"
    );
    let row = client.query_one(&other, &[&1i32]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "one");
    let star = client
        .prepare(&format!("select * from {table} where id = $1"))
        .await
        .unwrap();
    assert_eq!(star.columns().len(), 3);
    assert_eq!(client.query(&star, &[&1i32]).await.unwrap().len(), 1);
}
