//! Frameworks' own migrations through pgshift with `ddl = migrate`
//! (`tests/frameworks/`): the tool runs its migration as it always does,
//! through pgshift, while the previous version of the application serves
//! through pgshift; both versions see no error and read what they wrote,
//! the autopilot carries every migration to complete, and the schema and
//! the tool's history table end as a direct run leaves them.
//!
//! The Python packages are the battery's (`tests/battery/setup.sh`).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::harness::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `python tests/frameworks/SCRIPT ARGS` against `addr` / database
/// `dbname`, the application in `version`.
fn app(
    env: &Path,
    script: &str,
    addr: (&str, u16),
    dbname: &str,
    version: u8,
    args: &[&str],
) -> tokio::process::Command {
    let test_db = db();
    let mut cmd = tokio::process::Command::new(env.join("venv/bin/python"));
    cmd.arg(repo().join("tests/frameworks").join(script))
        .args(args)
        .env("PGHOST", addr.0)
        .env("PGPORT", addr.1.to_string())
        .env("PGDATABASE", dbname)
        .env("PGUSER", &test_db.user)
        .env("PGAPPNAME", format!("app-v{version}"))
        .env("APP_VERSION", version.to_string())
        .kill_on_drop(true);
    if let Some(p) = &test_db.password {
        cmd.env("PGPASSWORD", p);
    }
    cmd
}

/// The last line of a run's output as JSON; panics with the output unless
/// it succeeded.
fn last_json(what: &str, out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or("null");
    serde_json::from_str(line).unwrap_or(serde_json::Value::Null)
}

async fn run(what: &str, mut cmd: tokio::process::Command) -> serde_json::Value {
    last_json(what, &cmd.output().await.expect(what))
}

/// One framework's run: its migration `first` directly (the expected
/// end) and through pgshift, version 1 serving, migration `second` run
/// by the tool through pgshift, version 2 starting; `migrations`: how
/// many pgshift migrations the second becomes.
async fn framework_run(script: &str, migrate: &str, first: &str, second: &str, migrations: usize) {
    let env = crate::battery::environment();
    let test_db = db();
    let pg = (test_db.host.as_str(), test_db.port);
    let cmd =
        |addr, dbname: &str, version, args: &[&str]| app(&env, script, addr, dbname, version, args);
    // The same migrations run directly, for what they should leave.
    let (direct_db, _) = db().fresh_database("fwdirect").await;
    run("direct migrate", cmd(pg, &direct_db, 2, &[migrate, second])).await;
    let expected = run("direct report", cmd(pg, &direct_db, 2, &["report"])).await;

    let (dbname, direct) = db().fresh_database("framework").await;
    let autopilot = pgshift::api::Autopilot {
        mode: pgshift::api::AutopilotMode::Full,
        contract_after_secs: 2,
        stopped: None,
    };
    let d = driven_migrating(&dbname, autopilot).await;
    let ip = d.proxy.addr.ip().to_string();
    let proxy = (ip.as_str(), d.proxy.addr.port());
    run("first migration", cmd(proxy, &dbname, 1, &[migrate, first])).await;
    // Version 1 serves; version 2's migration runs; version 2 starts.
    let old = tokio::spawn(cmd(proxy, &dbname, 1, &["serve", "10"]).output());
    tokio::time::sleep(Duration::from_secs(2)).await;
    run(
        "second migration",
        cmd(proxy, &dbname, 2, &[migrate, second]),
    )
    .await;
    let new = tokio::spawn(cmd(proxy, &dbname, 2, &["serve", "22"]).output());
    let old = last_json("version 1", &old.await.unwrap().unwrap());
    // Version 1 gone, the autopilot contracts after 2 s and completes.
    all_complete(&d.admin, migrations, 60).await;
    let new = last_json("version 2", &new.await.unwrap().unwrap());
    let events = strings(&direct, "select extract(epoch from at)::float8::text || ' ' || migration_id || ' ' || action || ' ' || actor from pgshift.events order by id", &[]).await;
    for (version, answer) in [("1", &old), ("2", &new)] {
        assert_eq!(
            answer["error_count"], 0,
            "version {version}: {answer}\n{events:#?}"
        );
        assert!(
            answer["ops"].as_u64().unwrap_or(0) > 50,
            "version {version}: {answer}"
        );
    }
    let got = run("report", cmd(proxy, &dbname, 2, &["report"])).await;
    assert_eq!(
        got, expected,
        "the schema and the tool's history as a direct run leaves them"
    );
}

/// Django: RenameField, AlterField to BigIntegerField, RemoveField,
/// AddField NOT NULL with a default (which Django adds, then drops the
/// database default of), AddIndex, by `manage.py migrate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_django_migration_runs_zero_downtime_through_the_gate() {
    framework_run("django/shop_run.py", "migrate", "0001", "0002", 5).await;
}

/// Alembic: a column renamed and one widened (`alter_column`), a NOT NULL
/// column with a server default, an index, a dropped column, by `alembic
/// upgrade` (every revision in one transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alembic_migration_runs_zero_downtime_through_the_gate() {
    framework_run("alembic/accounts_run.py", "upgrade", "0001", "0002", 5).await;
}
