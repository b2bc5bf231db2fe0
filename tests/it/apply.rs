//! `pgshift apply`: migration files carried out through a running pgshift
//! whose configured gate only warns: its session asks for `migrate`, the
//! files are recorded with their checksums, nothing is applied twice, a
//! changed file is an error, and a statement with no safe form stops the
//! run before anything is sent.

use std::path::Path;

use pgshift::apply::{apply, Apply, Outcome};
use pgshift::sql_plan::gate::DdlMode;

use crate::harness::*;

fn run_apply(dir: &Path, d: &Driven, dbname: &str) -> Apply {
    let test_db = db();
    let url = format!(
        "postgres://{}@{}:{}/{dbname}",
        test_db.user,
        d.proxy.addr.ip(),
        d.proxy.addr.port()
    );
    Apply {
        path: dir.to_path_buf(),
        database_url: url,
        target: pgshift::admin_client::Target {
            admin: d.admin.clone(),
            ca: None,
            token: None,
            json: false,
        },
    }
}

async fn applied(admin: &str) -> Vec<pgshift::api::AppliedFile> {
    let (code, body) = pgshift::admin::request(admin, "GET", "/applied-files", None, None)
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_value(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_carries_files_out_once_and_refuses_a_changed_one() {
    let (dbname, direct) = db().fresh_database("apply").await;
    let t = unique("accounts");
    direct
        .batch_execute(&format!(
            "create table {t} (id int primary key, username text not null, balance integer not null, email text);
             insert into {t} select g, 'u' || g, g, 'e' || g from generate_series(1, 500) g;"
        ))
        .await
        .unwrap();
    let autopilot = pgshift::api::Autopilot {
        mode: pgshift::api::AutopilotMode::Full,
        contract_after_secs: 1,
        stopped: None,
    };
    // The proxy's gate only warns; `apply`'s session asks for migrate.
    let d = driven_gate(&dbname, autopilot, DdlMode::Warn).await;
    let dir = std::env::temp_dir().join(unique("apply-files"));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
    write("V1__notes.sql", "CREATE TABLE notes (id int primary key, body text);\nINSERT INTO notes VALUES (1, 'hello');\n".into());
    write(
        "V2__reshape.sql",
        format!(
            "-- a rename, a widening and an index, as a tool writes them\nALTER TABLE {t} RENAME COLUMN username TO login;\nALTER TABLE {t} ALTER COLUMN balance TYPE bigint;\nCREATE INDEX {t}_email_idx ON {t} (email);\n"
        ),
    );
    let a = run_apply(&dir, &d, &dbname);
    assert_eq!(apply(&a).await.unwrap(), Outcome::Applied);
    let files = applied(&d.admin).await;
    let names: Vec<&str> = files.iter().map(|f| f.file.as_str()).collect();
    assert_eq!(names, ["V1__notes.sql", "V2__reshape.sql"]);
    assert!(files[0].migrations.is_empty());
    assert_eq!(files[1].migrations.len(), 3, "{:?}", files[1]);
    assert_eq!(files[1].statements, 3);
    // Both names are served at once; the autopilot completes the rest.
    let client = d.proxy.connect_to(&dbname).await;
    client
        .query_one(
            &format!("select username, login from {t} where id = 1"),
            &[],
        )
        .await
        .unwrap();
    all_complete(&d.admin, 3, 60).await;
    let (kind, index): (String, Option<String>) = {
        let row = direct
            .query_one(
                &format!("select format_type(atttypid, atttypmod), to_regclass('{t}_email_idx')::text from pg_attribute where attrelid = '{t}'::regclass and attname = 'balance'"),
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(kind, "bigint");
    assert!(index.is_some());

    // Again: nothing applied twice.
    assert_eq!(apply(&a).await.unwrap(), Outcome::Applied);
    assert_eq!(applied(&d.admin).await, files);
    // An applied file that changed is an error; nothing runs.
    write(
        "V2__reshape.sql",
        format!("ALTER TABLE {t} RENAME COLUMN login TO handle;\n"),
    );
    let e = apply(&a).await.unwrap_err().to_string();
    assert!(
        e.contains("V2__reshape.sql") && e.contains("changed"),
        "{e}"
    );
    // A statement with no safe form: the run stops before anything is sent.
    std::fs::remove_file(dir.join("V2__reshape.sql")).unwrap();
    write(
        "V3__cleanup.sql",
        "INSERT INTO notes VALUES (2, 'x');\nDROP TABLE notes;\n".into(),
    );
    assert_eq!(apply(&a).await.unwrap(), Outcome::Refused);
    let notes: i64 = direct
        .query_one("select count(*) from notes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(notes, 1, "nothing of the refused file ran");
    assert_eq!(applied(&d.admin).await.len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}
