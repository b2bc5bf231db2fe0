//! psql and pgbench through pgshift, as users run them.

use std::process::Command;

use crate::harness::*;

pub(crate) fn tool(name: &str) -> std::path::PathBuf {
    pgshift::cluster::PgBinaries::locate()
        .map(|b| b.tool(name))
        .unwrap_or_else(|_| name.into())
}

fn conn_args(proxy: &TestProxy) -> Vec<String> {
    let db = db();
    vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        proxy.addr.port().to_string(),
        "-U".into(),
        db.user.clone(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_through_pgshift() {
    let proxy = TestProxy::start().await;
    let table = unique("psql");
    let script = format!(
        "create table {table} (id int, name text);\n\
         \\copy {table} from stdin\n1\talice\n2\tbob\n\\.\n\
         select count(*) from {table};\n\
         \\d {table}\n\
         select name from {table} where id = 2;\n"
    );
    let args = conn_args(&proxy);
    let db = db().dbname.clone();
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = Command::new(tool("psql"))
            .args(&args)
            .args([
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &db,
                "-f",
                "-",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("psql runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.contains(&"2"), "{stdout}");
    assert!(lines.contains(&"bob"), "{stdout}");
    assert!(stdout.contains("name|text"), "\\d output: {stdout}");
}

/// Runs pgbench through the proxy and returns (processed, failed).
pub(crate) fn pgbench(proxy_args: &[String], db: &str, extra: &[&str]) -> (u64, u64, String) {
    let out = Command::new(tool("pgbench"))
        .args(proxy_args)
        .args(extra)
        .arg(db)
        .output()
        .expect("pgbench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "pgbench {extra:?} failed: {stderr}\n{stdout}"
    );
    let number = |prefix: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.split('/').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in pgbench output:\n{stdout}"))
    };
    (
        number("number of transactions actually processed: "),
        number("number of failed transactions: "),
        stdout,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_in_every_protocol_mode() {
    let proxy = TestProxy::start().await;
    let dbname = unique("bench");
    db().direct()
        .await
        .batch_execute(&format!("create database {dbname}"))
        .await
        .unwrap();
    let args = conn_args(&proxy);
    let bench_db = dbname.clone();
    tokio::task::spawn_blocking(move || {
        let dbname = bench_db;
        let out = Command::new(tool("pgbench"))
            .args(&args)
            .args(["-i", "-q", "-s", "1", &dbname])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for mode in ["simple", "extended", "prepared"] {
            let (processed, failed, out) = pgbench(
                &args,
                &dbname,
                &["-S", "-M", mode, "-c", "4", "-j", "2", "-T", "2"],
            );
            assert!(processed > 100, "-S -M {mode}: {out}");
            assert_eq!(failed, 0, "-S -M {mode}: {out}");
        }
        let (processed, failed, out) = pgbench(&args, &dbname, &["-c", "4", "-j", "2", "-T", "2"]);
        assert!(processed > 50, "tpcb-like: {out}");
        assert_eq!(failed, 0, "tpcb-like: {out}");
    })
    .await
    .unwrap();
    // The tpcb-like invariant: every committed transaction landed in full.
    let mut config = tokio_postgres::Config::new();
    let db = db();
    config
        .host(&db.host)
        .port(db.port)
        .user(&db.user)
        .dbname(&dbname);
    if let Some(p) = &db.password {
        config.password(p);
    }
    let direct = connect(&config).await.unwrap();
    let row = direct
        .query_one(
            "select (select sum(abalance) from pgbench_accounts)::int8, (select sum(tbalance) from pgbench_tellers)::int8, \
             (select sum(bbalance) from pgbench_branches)::int8, (select coalesce(sum(delta), 0) from pgbench_history)::int8",
            &[],
        )
        .await
        .unwrap();
    let sums: Vec<i64> = (0..4).map(|i| row.get(i)).collect();
    assert!(
        sums.iter().all(|s| *s == sums[3]),
        "balances and history agree: {sums:?}"
    );
}
