//! The application battery (`tests/battery`, `docs/battery.md`): six real
//! ORMs and drivers — SQLAlchemy 2 on psycopg 3 and on asyncpg, Django,
//! Sequelize and Knex on node-postgres, JDBC on pgjdbc — each run in the
//! old and the new shape at once, through pgshift, while it drives a rename
//! (`app.users.name → full_name`, NOT NULL) and a type change
//! (`app.orders.amount` integer cents → `amount_decimal numeric(12,2)`, NOT
//! NULL, CHECKed, partially indexed) and an added column (`app.orgs.slug
//! text NOT NULL`, `up = lower(name)`, which no app names: every org they
//! insert is given it) through their whole lifecycle from the admin port,
//! and again through a rollback. Each app checks every read
//! against a model of what it wrote; the run passes with zero errors (but
//! the documented ones), zero wrong reads, every model equal to the
//! database read in the app's shape, both physical columns equal on every
//! row, every lifecycle step accepted, and no new-shape app counted as an
//! old-shape client.
//!
//! The apps' pinned packages come from `tests/battery/setup.sh` (`.ci/run`
//! runs it first; here it is run again, which is instant once done).
//! `BATTERY_PHASE_SECS` sets the traffic per phase (default here 1.5 s).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use pgshift::rewrite::migration::MigrationSpec;

use crate::harness::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The apps' environment (venv, node_modules, compiled JDBC app).
pub(crate) fn environment() -> PathBuf {
    let dir = repo().join("target").join("battery");
    let status = std::process::Command::new("bash")
        .arg(repo().join("tests/battery/setup.sh"))
        .arg(&dir)
        .stdout(Stdio::null())
        .status()
        .expect("running tests/battery/setup.sh");
    assert!(
        status.success(),
        "tests/battery/setup.sh failed: the battery needs Python 3 with venv, Node.js with npm, a JDK and Debian's libpostgresql-jdbc-java, and the PyPI and npm registries (see docs/battery.md)"
    );
    dir
}

fn migrations() -> Vec<MigrationSpec> {
    vec![
        MigrationSpec::new(
            "users_full_name",
            "app.users",
            "name",
            "full_name",
            None,
            None,
            None,
        )
        .unwrap(),
        MigrationSpec::new(
            "orders_amount_decimal",
            "app.orders",
            "amount",
            "amount_decimal",
            Some("numeric(12,2)"),
            Some("amount::numeric / 100"),
            Some("(amount_decimal * 100)::integer"),
        )
        .unwrap(),
        // No app names it: every org an app inserts is given lower(name).
        MigrationSpec::add_column(
            "orgs_slug",
            "app.orgs",
            &pgshift::add_column::AddColumnKeys {
                column: "slug".into(),
                type_name: "text".into(),
                not_null: true,
                // For the INSERTs of apps that never learn of it, once
                // pgshift no longer gives them `up` (after complete).
                default: Some("''".into()),
                up: Some("lower(name)".into()),
                ..Default::default()
            },
        )
        .unwrap(),
        // Beside the rename, on the same table: both shapes name
        // login_count; new-shape apps are marked by their application_name
        // (`sqla_sync-new-…`), old ones pin themselves with pgshift.shape.
        MigrationSpec::change_type_keeping_name(
            "users_login_count_bigint",
            "app.users",
            "login_count",
            "bigint",
            "login_count::bigint",
            "login_count::integer",
            Some(pgshift::rewrite::marker::ShapeMarker {
                application_name: Some("%-new-%".into()),
                role: None,
                ..Default::default()
            }),
        )
        .unwrap(),
    ]
}

/// One battery run (`rollback`: ending in a rollback); panics with the
/// battery's report unless it passed.
async fn run(env: &Path, rollback: bool) {
    let (dbname, direct) = db().fresh_database("battery").await;
    let schema = std::fs::read_to_string(repo().join("tests/battery/schema.sql")).unwrap();
    direct.batch_execute(&schema).await.unwrap();
    let d = driven_all(migrations(), &dbname).await;
    let work = std::env::temp_dir().join(unique("battery-run"));
    std::fs::create_dir_all(&work).unwrap();
    let report = work.join("report.json");
    let phase_secs = std::env::var("BATTERY_PHASE_SECS").unwrap_or_else(|_| "1.5".into());
    let test_db = db();
    let mut cmd = tokio::process::Command::new(env.join("venv/bin/python"));
    cmd.arg(repo().join("tests/battery/run.py"))
        .args(["--schema-exists", "--db", &dbname, "--user", &test_db.user])
        .args(["--pg", &format!("{}:{}", test_db.host, test_db.port)])
        .args(["--proxy", &d.proxy.addr.to_string()])
        .args(["--admin", &format!("http://{}", d.admin)])
        .arg("--env-dir")
        .arg(env)
        .arg("--work-dir")
        .arg(work.join("apps"))
        .arg("--report")
        .arg(&report)
        .args(["--phase-secs", &phase_secs]);
    if rollback {
        cmd.arg("--rollback");
    }
    if let Some(log) = test_db.cluster.as_ref().map(|c| c.log_file()) {
        cmd.arg("--pg-log").arg(log);
    }
    if let Some(p) = &test_db.password {
        cmd.env("BATTERY_PASSWORD", p);
    }
    let out = cmd.output().await.expect("running tests/battery/run.py");
    let printed = String::from_utf8_lossy(&out.stdout);
    let text = std::fs::read_to_string(&report).unwrap_or_else(|_| {
        panic!(
            "the battery wrote no report: {printed}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["pass"], true, "{printed}");
    println!("{printed}");
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_applications_see_no_error_and_no_wrong_read_through_both_migrations_and_a_rollback() {
    let env = environment();
    run(&env, false).await;
    run(&env, true).await;
}
