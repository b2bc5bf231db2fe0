//! The autopilot (`POST /migrations/{id}/autopilot`): a migration carried
//! from planned to complete with no operator step while clients of the new
//! shape write through pgshift, and stopped at its first anomaly with the
//! migration left where it was and the reason on `/status`.

use std::time::Duration;

use pgshift::rewrite::migration::MigrationSpec;
use serde_json::json;

use crate::harness::*;

/// A fresh database with `accounts (id, bal NOT NULL)` holding `rows`
/// rows (`bal` = `id`).
async fn accounts(prefix: &str, rows: i32) -> (String, tokio_postgres::Client, String) {
    let (dbname, direct) = db().fresh_database(prefix).await;
    let table = unique("accounts");
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, bal int not null);
             insert into {table} select g, g from generate_series(1, {rows}) g;"
        ))
        .await
        .unwrap();
    (dbname, direct, table)
}

async fn migration_of(admin: &str, id: &str) -> serde_json::Value {
    pgshift::admin::request(admin, "GET", &format!("/migrations/{id}"), None, None)
        .await
        .unwrap()
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_autopilot_carries_a_rename_to_complete() {
    let (dbname, direct, table) = accounts("autopilot", 3000).await;
    let id = unique("auto");
    let spec = MigrationSpec::new(&id, &table, "bal", "balance", None, None, None).unwrap();
    let d = driven_all(vec![spec], &dbname).await;
    let (code, answer) = admin_post(
        &d.admin,
        &format!("/migrations/{id}/autopilot"),
        json!({"mode": "full", "contract_after_secs": 2}),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    // The new application writes meanwhile (never the old name).
    let client = d.proxy.connect_to(&dbname).await;
    let started = std::time::Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        client
            .execute(
                &format!("update {table} set balance = balance + 1 where id = $1"),
                &[&(n % 3000 + 1)],
            )
            .await
            .unwrap();
        let m = migration_of(&d.admin, &id).await;
        if m["phase"] == "complete" {
            assert!(m["autopilot"]["stopped"].is_null(), "{m}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the autopilot stopped short: {m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sum: i64 = direct
        .query_one(&format!("select sum(balance)::int8 from {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sum, 3000 * 3001 / 2 + n as i64, "every write landed");
    let by: i64 = direct
        .query_one(
            "select count(*) from pgshift.events where migration_id = $1 and actor = 'autopilot'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(by >= 6, "each step an event by the autopilot ({by})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autopilot_stops_at_its_first_anomaly_and_says_why() {
    let (dbname, _, table) = accounts("autopilotstop", 1).await;
    let id = unique("auto_stop");
    // An `up` that fails on the row holding 1 (division by zero): the
    // backfill stops on it.
    let spec = MigrationSpec::new(
        &id,
        &table,
        "bal",
        "balance",
        Some("bigint"),
        Some("(bal / (bal - 1))::bigint"),
        Some("balance::integer"),
    )
    .unwrap();
    let d = driven_all(vec![spec], &dbname).await;
    let (code, answer) = admin_post(
        &d.admin,
        &format!("/migrations/{id}/autopilot"),
        json!({"mode": "to-switch"}),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    let started = std::time::Instant::now();
    let m = loop {
        let m = migration_of(&d.admin, &id).await;
        if !m["autopilot"]["stopped"].is_null() {
            break m;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never stopped: {m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(m["phase"], "backfilling", "{m}");
    let why = m["autopilot"]["stopped"].as_str().unwrap();
    assert!(
        why.contains("the backfill stopped") && why.contains("division by zero"),
        "{why}"
    );
    // The command line shows why; off clears it; a bad mode is a 400.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args(["status", "--admin", &d.admin])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        shown.contains("autopilot to-switch: STOPPED: the backfill stopped"),
        "{shown}"
    );
    let off = std::process::Command::new(env!("CARGO_BIN_EXE_pgshift"))
        .args([
            "migrate",
            "autopilot",
            &id,
            "--mode",
            "off",
            "--admin",
            &d.admin,
        ])
        .output()
        .unwrap();
    assert!(
        off.status.success(),
        "{}",
        String::from_utf8_lossy(&off.stderr)
    );
    let m = migration_of(&d.admin, &id).await;
    assert!(m.get("autopilot").is_none(), "{m}");
    let (code, _) = admin_post(
        &d.admin,
        &format!("/migrations/{id}/autopilot"),
        json!({"mode": "always"}),
    )
    .await;
    assert_eq!(code, 400);
}

/// The full autopilot waits at the contract while an old-shape client
/// still names the old column (not an anomaly), and contracts once it has
/// been quiet for `contract_after_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_autopilot_waits_for_old_clients_before_the_contract() {
    let (dbname, _, table) = accounts("autopilotwait", 1).await;
    let id = unique("auto_wait");
    let spec = MigrationSpec::new(&id, &table, "bal", "balance", None, None, None).unwrap();
    let d = driven_all(vec![spec], &dbname).await;
    let old = d.proxy.connect_to(&dbname).await;
    let (code, answer) = admin_post(
        &d.admin,
        &format!("/migrations/{id}/autopilot"),
        json!({"mode": "full", "contract_after_secs": 2}),
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    // The old application keeps reading its column through the switch.
    let started = std::time::Instant::now();
    let mut switched_at = None;
    while started.elapsed() < Duration::from_secs(30) {
        old.query_one(&format!("select bal from {table} where id = 1"), &[])
            .await
            .unwrap();
        let m = migration_of(&d.admin, &id).await;
        assert!(m["autopilot"]["stopped"].is_null(), "{m}");
        assert_ne!(
            m["phase"], "contracted",
            "contracted while the old shape ran"
        );
        if m["phase"] == "switched" {
            let at = *switched_at.get_or_insert_with(std::time::Instant::now);
            if at.elapsed() > Duration::from_secs(4) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(switched_at.is_some(), "never reached switched");
    drop(old);
    let quiet = std::time::Instant::now();
    loop {
        let m = migration_of(&d.admin, &id).await;
        if m["phase"] == "complete" {
            break;
        }
        assert!(
            quiet.elapsed() < Duration::from_secs(30),
            "never completed: {m}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
