//! The `pgshift` binary: flags, environment and config file; graceful
//! shutdown on SIGTERM; the demo.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_pgshift");

/// A `pgshift serve` child process, killed on drop.
struct Serve {
    child: Child,
    port: u16,
}

impl Serve {
    fn spawn(configure: impl FnOnce(&mut Command, u16)) -> Serve {
        Serve::spawn_on(pgshift::cluster::free_port().unwrap(), configure)
    }

    fn spawn_on(port: u16, configure: impl FnOnce(&mut Command, u16)) -> Serve {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").stdout(Stdio::null());
        if std::env::var_os("PGSHIFT_TEST_SERVE_LOG").is_none() {
            cmd.stderr(Stdio::null());
        }
        configure(&mut cmd, port);
        let child = cmd.spawn().expect("pgshift serve starts");
        Serve { child, port }
    }

    /// `pgshift serve --listen <free port> --upstream <test db>` plus `args`.
    fn with_args(args: &[&std::ffi::OsStr]) -> Serve {
        Serve::with_args_on(pgshift::cluster::free_port().unwrap(), args)
    }

    /// [`Serve::with_args`] listening on `port` (a restart in place).
    fn with_args_on(port: u16, args: &[&std::ffi::OsStr]) -> Serve {
        Serve::spawn_on(port, |cmd, port| {
            cmd.args(args).args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--upstream",
                &Serve::upstream(),
            ]);
        })
    }

    fn upstream() -> String {
        let db = db();
        format!("{}:{}", db.host, db.port)
    }

    fn config(&self) -> tokio_postgres::Config {
        let db = db();
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(&db.user)
            .dbname(&db.dbname);
        if let Some(p) = &db.password {
            config.password(p);
        }
        config
    }

    /// Waits until the proxy accepts and serves a query.
    async fn ready(&self) -> tokio_postgres::Client {
        self.ready_on(&db().dbname).await
    }

    /// Waits until the proxy serves a session to database `dbname`.
    async fn ready_on(&self, dbname: &str) -> tokio_postgres::Client {
        let mut config = self.config();
        config.dbname(dbname);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match connect(&config).await {
                Ok(client) => return client,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("pgshift serve never became ready: {e}"),
            }
        }
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    async fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "pgshift did not exit within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a config file holding one rename migration in `phase`, of a
/// table in `database` of the test cluster.
fn write_migration(
    file: &std::path::Path,
    database: &str,
    id: &str,
    table: &str,
    from: &str,
    to: &str,
    phase: &str,
) {
    let user = &db().user;
    let password = match &db().password {
        Some(p) => format!("password = \"{p}\"\n"),
        None => String::new(),
    };
    let admin = pgshift::cluster::free_port().unwrap();
    let text = format!(
        "admin = \"127.0.0.1:{admin}\"\n[control]\ndatabase = \"{database}\"\nuser = \"{user}\"\n{password}\n[[migrations]]\nid = \"{id}\"\ntable = \"{table}\"\nfrom = \"{from}\"\nto = \"{to}\"\nphase = \"{phase}\"\n"
    );
    std::fs::write(file, text).unwrap();
}

#[tokio::test]
async fn serve_with_flags_only() {
    let serve = Serve::with_args(&[]);
    let client = serve.ready().await;
    let v: i32 = client.query_one("select 40 + 2", &[]).await.unwrap().get(0);
    assert_eq!(v, 42);
}

/// `pgshift serve --upstream …` with no config file serves the admin port,
/// and a migration added there at run time is driven like any other.
#[tokio::test]
async fn serve_without_a_config_file_takes_migrations_through_the_admin_port() {
    let (dbname, direct) = db().fresh_database("noconfig").await;
    let table = unique("runtime");
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, v int not null, note text);
             insert into {table} select g, g from generate_series(1, 50) g"
        ))
        .await
        .unwrap();
    let admin = format!("127.0.0.1:{}", pgshift::cluster::free_port().unwrap());
    let serve = Serve::spawn(|cmd, port| {
        cmd.args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &Serve::upstream(),
            "--admin",
            &admin,
            "--database",
            &dbname,
            "--control-user",
            &db().user,
        ]);
        if let Some(p) = &db().password {
            cmd.env("PGSHIFT_CONTROL_PASSWORD", p);
        }
    });
    let client = serve.ready_on(&dbname).await;
    let id = unique("runtime_m");
    let (code, body) = admin_call(
        &admin,
        "POST",
        "/migrations",
        Some(serde_json::json!({"id": id, "table": table, "from": "v", "to": "w"})),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = admin_call(&admin, "POST", &format!("/migrations/{id}/expand"), None).await;
    assert_eq!(
        (code, body["phase"].as_str()),
        (200, Some("expanded")),
        "{body}"
    );
    client
        .batch_execute(&format!("update {table} set v = v + 100 where id = 7"))
        .await
        .unwrap();
    let row = client
        .query_one(&format!("select w from {table} where id = 7"), &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 107, "the new shape is served");
    let row = direct
        .query_one(&format!("select v, w from {table} where id = 7"), &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, Option<i32>>(1)),
        (107, Some(107)),
        "dual-written"
    );
}

#[tokio::test]
async fn environment_overrides_the_file_and_flags_override_both() {
    let dir = std::env::temp_dir().join(unique("pgshift-config"));
    std::fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join("pgshift.toml");
    // The file names an upstream nobody listens on and a tiny session limit.
    let dead = pgshift::cluster::free_port().unwrap();
    std::fs::write(
        &file,
        format!("listen = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:{dead}\"\n[limits]\nmax_client_connections = 1\n"),
    )
    .unwrap();
    let serve = Serve::spawn(|cmd, port| {
        cmd.arg("--config")
            .arg(&file)
            .env("PGSHIFT_LISTEN", format!("127.0.0.1:{port}"))
            .env("PGSHIFT_UPSTREAM", "127.0.0.1:9") // overridden by the flag below
            .args(["--upstream", &Serve::upstream()]);
    });
    let first = serve.ready().await;
    let v: i32 = first.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 1, "env listen + flag upstream are in effect");
    let err = refused(
        connect(&serve.config()).await,
        "the file's limit of 1 holds",
    );
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_bad_config_file_is_reported() {
    let dir = std::env::temp_dir().join(unique("pgshift-badconfig"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "listen = 5\n").unwrap();
    let out = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml") && stderr.contains("listen"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn sigterm_lets_transactions_finish_and_closes_idle_sessions() {
    let mut serve = Serve::with_args(&["--shutdown-grace-secs".as_ref(), "20".as_ref()]);
    let busy = serve.ready().await;
    let (idle, idle_connection) = serve.config().connect(tokio_postgres::NoTls).await.unwrap();
    let idle_driver = tokio::spawn(idle_connection);
    let table = unique("drain");
    busy.batch_execute(&format!("create table {table} (v int)"))
        .await
        .unwrap();
    busy.batch_execute(&format!("begin; insert into {table} values (1)"))
        .await
        .unwrap();

    serve.signal(libc::SIGTERM);
    // The idle session is closed promptly with 57P01.
    let closed = tokio::time::timeout(Duration::from_secs(5), idle_driver)
        .await
        .expect("the idle session is closed quickly")
        .unwrap();
    let err = closed.expect_err("closed with an error");
    assert_eq!(sqlstate(&err).as_deref(), Some("57P01"), "{err}");
    drop(idle);
    // New connections are refused.
    assert!(connect(&serve.config()).await.is_err());
    // The open transaction goes on and commits.
    busy.batch_execute(&format!("insert into {table} values (2); commit"))
        .await
        .unwrap();
    let status = serve.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    let direct = db().direct().await;
    let n: i64 = direct
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "the transaction committed in full");
}

#[tokio::test]
async fn after_the_grace_period_open_transactions_are_cut_and_rolled_back() {
    let mut serve = Serve::with_args(&["--shutdown-grace-secs".as_ref(), "1".as_ref()]);
    let busy = serve.ready().await;
    let table = unique("grace");
    busy.batch_execute(&format!("create table {table} (v int)"))
        .await
        .unwrap();
    busy.batch_execute(&format!("begin; insert into {table} values (1)"))
        .await
        .unwrap();
    let started = Instant::now();
    serve.signal(libc::SIGINT);
    let status = serve.wait_exit(Duration::from_secs(15)).await;
    assert!(status.success());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the grace period was honoured"
    );
    assert!(busy.batch_execute("select 1").await.is_err());
    let direct = db().direct().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n: i64 = direct
            .query_one(&format!("select count(*) from {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "nothing half-committed");
        // Wait for the backend to be gone as well.
        let open: i64 = direct
            .query_one(
                "select count(*) from pg_stat_activity where state like 'idle in transaction%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `pgshift demo --no-wait --scale 1` with `extra` arguments and
/// checks what every demo run must show: each phase reached under load,
/// every check held (exit code 0), no failed transaction in any group, the
/// cluster removed. Returns its output.
async fn demo_holds(extra: &'static [&'static str]) -> String {
    if pgshift::cluster::PgBinaries::locate().is_err() {
        panic!("the demo needs PostgreSQL binaries, which the harness found before");
    }
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args([
                "demo",
                "--no-wait",
                "--scale",
                "1",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("psql \"postgresql://postgres@127.0.0.1:"),
        "{stdout}"
    );
    // The migration scenario ran through every phase under load, and every
    // check held (the exit code says so too).
    for phase in [
        "expanded",
        "backfilled",
        "validated",
        "switched",
        "contracted",
        "complete",
    ] {
        assert!(
            stdout.contains(&format!("phase {phase}")),
            "{phase}: {stdout}"
        );
    }
    assert!(!stdout.contains("BROKEN"), "{stdout}");
    assert!(stdout.contains("every check held"), "{stdout}");
    for group in [
        "old shape, -M prepared",
        "old shape, -M simple",
        "new shape, -M prepared",
        "new shape, -M simple",
    ] {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {group} |")))
            .unwrap_or_else(|| panic!("no row for {group}: {stdout}"));
        assert!(row.contains("| 0 |"), "failed transactions in {row}");
    }
    assert!(stdout.contains("cluster removed"), "{stdout}");
    stdout
}

#[tokio::test]
async fn demo_runs_a_rename_and_a_type_change_under_load_with_every_check_holding() {
    demo_holds(&["--duration", "8"]).await;
}

/// The whole scenario with faults injected: a transaction holding a lock
/// on the renamed table across expand and across contract (the ALTERs wait
/// for it under lock_timeout, the clients go on), and a pgbench client
/// killed mid-transaction during the backfill — still zero failed
/// transactions in the four groups and the tpcb invariant exact after
/// every step.
#[tokio::test]
async fn demo_with_faults_loses_nothing() {
    let stdout = demo_holds(&["--duration", "12", "--faults"]).await;
    for step in ["expand", "contract"] {
        assert!(
            stdout.contains(&format!(
                "holds a lock on pgbench_accounts for 3 s across {step}"
            )),
            "{stdout}"
        );
    }
    assert!(stdout.contains("killed with SIGKILL"), "{stdout}");
}

/// A SIGHUP read while the lifecycle cannot start yet (its control role
/// does not exist) is served from the file at once, and kept when the
/// lifecycle starts: the file it began with does not take the switch back.
#[tokio::test]
async fn a_sighup_before_the_lifecycle_starts_is_kept_once_it_runs() {
    if !db().owns_cluster() {
        return; // It creates a role.
    }
    let table = unique("late");
    let role = unique("late_role");
    let (dbname, direct) = db().fresh_database("latedb").await;
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, old_col int, new_col int);
             insert into {table} values (1, 10, 77)"
        ))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(unique("pgshift-late"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pgshift.toml");
    let write_config = |phase: &str| {
        let text = format!(
            "[control]\ndatabase = \"{dbname}\"\nuser = \"{role}\"\n\n[[migrations]]\nid = \"late\"\ntable = \"{table}\"\nfrom = \"old_col\"\nto = \"new_col\"\nphase = \"{phase}\"\n"
        );
        std::fs::write(&file, text).unwrap();
    };
    write_config("expanded");
    let serve = Serve::with_args(&["--config".as_ref(), file.as_os_str()]);
    let client = serve.ready_on(&dbname).await;
    let read = format!("select old_col from {table} where id = 1");
    let value = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> Option<String> {
        rows.into_iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
    };
    assert_eq!(
        value(client.simple_query(&read).await.unwrap()).as_deref(),
        Some("10")
    );
    write_config("switched");
    serve.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(client.simple_query(&read).await.unwrap()).as_deref() != Some("77") {
        assert!(
            Instant::now() < deadline,
            "the SIGHUP was not served from the file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Now the lifecycle can start (it retries every 5 s).
    direct
        .batch_execute(&format!("create role {role} login superuser"))
        .await
        .unwrap();
    let stored = || async {
        direct
            .query_opt(
                "select phase from pgshift.migrations where id = 'late'",
                &[],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, String>(0))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while stored().await.as_deref() != Some("switched") {
        assert!(
            Instant::now() < deadline,
            "the lifecycle stored {:?}, not the file read last",
            stored().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And what it publishes keeps reads on the new column.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        value(client.simple_query(&read).await.unwrap()).as_deref(),
        Some("77")
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A control role fixed in the file while the lifecycle cannot start is
/// used at its next attempt, without a restart.
#[tokio::test]
async fn a_control_role_fixed_by_sighup_starts_the_lifecycle() {
    let (dbname, _direct) = db().fresh_database("fixdb").await;
    let dir = std::env::temp_dir().join(unique("pgshift-fix"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pgshift.toml");
    let admin = pgshift::cluster::free_port().unwrap();
    let write_config = |user: &str| {
        let password = match &db().password {
            Some(p) => format!("password = \"{p}\"\n"),
            None => String::new(),
        };
        let text = format!(
            "admin = \"127.0.0.1:{admin}\"\n[control]\ndatabase = \"{dbname}\"\nuser = \"{user}\"\n{password}"
        );
        std::fs::write(&file, text).unwrap();
    };
    write_config(&unique("no_such_role"));
    let serve = Serve::with_args(&["--config".as_ref(), file.as_os_str()]);
    serve.ready_on(&dbname).await;
    let addr = format!("127.0.0.1:{admin}");
    let status = || async {
        pgshift::admin::request(&addr, "GET", "/status", None, None)
            .await
            .map(|(code, _)| code)
            .unwrap_or(0)
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status().await,
        503,
        "no lifecycle with a role that does not exist"
    );
    write_config(&db().user);
    serve.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(15);
    while status().await != 200 {
        assert!(
            Instant::now() < deadline,
            "the lifecycle never started with the fixed role"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn configured_migrations_rewrite_refuse_and_reload_on_sighup() {
    let table = unique("mig");
    let (dbname, direct) = db().fresh_database("migdb").await;
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, old_col int, new_col int, note text);
             insert into {table} values (1, 10, 10, 'x')"
        ))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(unique("pgshift-mig"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pgshift.toml");
    let write_config = |phase: &str| {
        write_migration(
            &file,
            &dbname,
            "rename_old_col",
            &table,
            "old_col",
            "new_col",
            phase,
        )
    };
    write_config("expanded");
    let serve = Serve::with_args(&["--config".as_ref(), file.as_os_str()]);
    let client = serve.ready_on(&dbname).await;

    // Expanded: the new shape is served from the old column; writes go to both.
    let row = client
        .query_one(
            &format!("select new_col from {table} where id = $1"),
            &[&1i32],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.columns()[0].name(), row.get::<_, i32>(0)),
        ("new_col", 10)
    );
    client
        .batch_execute(&format!("update {table} set old_col = 11 where id = 1"))
        .await
        .unwrap();
    let row = direct
        .query_one(
            &format!("select old_col, new_col from {table} where id = 1"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, i32>(1)),
        (11, 11),
        "dual write"
    );
    // The catalog was read at start: * yields both columns, a positional
    // INSERT in the old shape writes both.
    let row = client
        .query_one(&format!("select * from {table} where id = 1"), &[])
        .await
        .unwrap();
    let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["id", "old_col", "new_col", "note"]);
    assert_eq!((row.get::<_, i32>(1), row.get::<_, i32>(2)), (11, 11));
    client
        .batch_execute(&format!("insert into {table} values (2, 20, 'z')"))
        .await
        .unwrap();
    let row = direct
        .query_one(
            &format!("select old_col, new_col, note from {table} where id = 2"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            row.get::<_, i32>(0),
            row.get::<_, i32>(1),
            row.get::<_, String>(2)
        ),
        (20, 20, "z".to_string())
    );
    // What cannot be rewritten safely is refused, naming the migration.
    for sql in [
        format!("update {table} set (old_col, id) = (1, 1) where id = 1"),
        format!("update {table} set old_col = random() where id = 1"),
    ] {
        let err = refused(client.batch_execute(&sql).await, &sql);
        assert_eq!(sqlstate(&err).as_deref(), Some("0A000"), "{sql}: {err:?}");
        let msg = message_of(&err);
        assert!(
            msg.contains("migration \"rename_old_col\"") && msg.contains("phase expanded"),
            "{msg}"
        );
    }

    // Switching reads on SIGHUP reaches the session already open.
    direct
        .batch_execute(&format!("update {table} set new_col = 77 where id = 1"))
        .await
        .unwrap();
    write_config("switched");
    serve.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: i32 = client
            .query_one(&format!("select old_col from {table} where id = 1"), &[])
            .await
            .unwrap()
            .get(0);
        if v == 77 {
            break;
        }
        assert_eq!(v, 11);
        assert!(Instant::now() < deadline, "the reload never took effect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_old_and_new_shapes_through_a_read_switch() {
    use crate::tools::{pgbench, tool};
    let dbname = unique("migbench");
    let direct = db().direct().await;
    direct
        .batch_execute(&format!("create database {dbname}"))
        .await
        .unwrap();
    let d = db();
    let direct_args: Vec<String> = vec![
        "-h".into(),
        d.host.clone(),
        "-p".into(),
        d.port.to_string(),
        "-U".into(),
        d.user.clone(),
    ];
    let init = Command::new(tool("pgbench"))
        .args(&direct_args)
        .args(["-i", "-q", "-s", "1", &dbname])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let mut config = tokio_postgres::Config::new();
    config
        .host(&d.host)
        .port(d.port)
        .user(&d.user)
        .dbname(&dbname);
    if let Some(p) = &d.password {
        config.password(p);
    }
    let bench_db = connect(&config).await.unwrap();
    // Expand by hand (the lifecycle driver does this later): b = a everywhere.
    bench_db
        .batch_execute("alter table pgbench_accounts add column balance int; update pgbench_accounts set balance = abalance")
        .await
        .unwrap();

    let dir = std::env::temp_dir().join(unique("pgshift-migbench"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pgshift.toml");
    let write_config = |phase: &str| {
        write_migration(
            &file,
            &dbname,
            "accounts_balance",
            "pgbench_accounts",
            "abalance",
            "balance",
            phase,
        )
    };
    write_config("expanded");
    let serve = Serve::with_args(&["--config".as_ref(), file.as_os_str()]);
    serve.ready().await;
    let script = dir.join("new_shape.sql");
    std::fs::write(
        &script,
        "\\set aid random(1, 100000 * :scale)\n\\set bid random(1, 1 * :scale)\n\\set tid random(1, 10 * :scale)\n\\set delta random(-5000, 5000)\n\
         BEGIN;\nUPDATE pgbench_accounts SET balance = balance + :delta WHERE aid = :aid;\nSELECT balance FROM pgbench_accounts WHERE aid = :aid;\n\
         UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;\nUPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;\n\
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);\nEND;\n",
    )
    .unwrap();
    let proxy_args: Vec<String> = vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        serve.port.to_string(),
        "-U".into(),
        d.user.clone(),
    ];
    // Old shape (stock tpcb-like) and new shape (custom script), simple and
    // prepared, all at once; the read switch flips in the middle.
    let runs: Vec<Vec<String>> = vec![
        vec!["-M".into(), "prepared".into(), "-c".into(), "2".into()],
        vec!["-M".into(), "simple".into(), "-c".into(), "2".into()],
        vec![
            "-M".into(),
            "prepared".into(),
            "-c".into(),
            "2".into(),
            "-f".into(),
            script.display().to_string(),
        ],
        vec![
            "-M".into(),
            "simple".into(),
            "-c".into(),
            "2".into(),
            "-f".into(),
            script.display().to_string(),
        ],
    ];
    let mut handles = Vec::new();
    for run in runs {
        let args = proxy_args.clone();
        let dbname = dbname.clone();
        handles.push(std::thread::spawn(move || {
            let mut extra: Vec<&str> = run.iter().map(String::as_str).collect();
            // -n: without it every pgbench run starts by truncating
            // pgbench_history, under the feet of the runs already going.
            extra.extend(["-n", "-T", "4"]);
            pgbench(&args, &dbname, &extra)
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    write_config("switched");
    serve.signal(libc::SIGHUP);
    for handle in handles {
        let (processed, failed, out) = handle.join().unwrap();
        assert!(processed > 10, "{out}");
        assert_eq!(failed, 0, "{out}");
    }
    // Every committed write landed, in both columns.
    let row = bench_db
        .query_one(
            "select (select sum(abalance) from pgbench_accounts)::int8, (select sum(balance) from pgbench_accounts)::int8, \
             (select sum(tbalance) from pgbench_tellers)::int8, (select sum(bbalance) from pgbench_branches)::int8, \
             (select coalesce(sum(delta), 0) from pgbench_history)::int8, \
             (select count(*) from pgbench_accounts where balance is distinct from abalance)::int8",
            &[],
        )
        .await
        .unwrap();
    let sums: Vec<i64> = (0..5).map(|i| row.get(i)).collect();
    assert!(
        sums.iter().all(|s| *s == sums[4]),
        "a, b, tellers, branches and history agree: {sums:?}"
    );
    assert_eq!(
        row.get::<_, i64>(5),
        0,
        "no row where the two columns differ"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_backfill_killed_with_sigkill_resumes_from_its_cursor() {
    let table = unique("crash");
    let id = unique("crash_m");
    let (dbname, direct) = db().fresh_database("crashdb").await;
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, old_col int not null, note text);
             insert into {table} select g, g, 'x' from generate_series(1, 30000) g"
        ))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(unique("pgshift-crash"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pgshift.toml");
    let admin_port = pgshift::cluster::free_port().unwrap();
    let user = &db().user;
    std::fs::write(
        &file,
        format!(
            "admin = \"127.0.0.1:{admin_port}\"\n[control]\ndatabase = \"{}\"\nuser = \"{user}\"\n{}\n[[migrations]]\nid = \"{id}\"\ntable = \"{table}\"\nfrom = \"old_col\"\nto = \"new_col\"\n",
            dbname,
            db().password.as_ref().map(|p| format!("password = \"{p}\"")).unwrap_or_default()
        ),
    )
    .unwrap();
    let admin = format!("127.0.0.1:{admin_port}");
    let call = |method: &'static str, path: String, body: Option<serde_json::Value>| {
        let admin = admin.clone();
        async move { admin_call(&admin, method, &path, body).await }
    };
    let status = |admin: String, id: String| async move {
        let (_, body) = pgshift::admin::request(&admin, "GET", "/status", None, None)
            .await
            .unwrap();
        body["migrations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id.as_str())
            .cloned()
            .unwrap()
    };

    let mut first = Serve::with_args(&["--config".as_ref(), file.as_os_str()]);
    first.ready().await;
    let (code, body) = call("POST", format!("/migrations/{id}/expand"), None).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = call(
        "POST",
        format!("/migrations/{id}/backfill"),
        // Two workers, each with a slice of the key and a cursor of its own.
        Some(serde_json::json!({"batch_size": 500, "batch_pause_ms": 30, "workers": 2})),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = status(admin.clone(), id.clone()).await;
        if m["backfill"]["rows_done"].as_i64().unwrap_or(0) >= 5000 {
            break;
        }
        assert!(Instant::now() < deadline, "the backfill does not move: {m}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).await;
    let row = direct
        .query_one(
            "select phase, backfill_running, rows_done,
                    (select array_agg((s->>'rows_done')::bigint) from jsonb_array_elements(backfill_slices) s)
               from pgshift.migrations where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let (phase, running, done): (String, bool, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((phase.as_str(), running), ("backfilling", true));
    assert!((5000..30000).contains(&done), "{done}");
    // Both slices had moved, and their counts add up to the migration's.
    let slices: Vec<i64> = row.get(3);
    assert_eq!(slices.len(), 2, "{slices:?}");
    assert!(slices.iter().all(|&n| n > 0), "{slices:?}");
    assert_eq!(slices.iter().sum::<i64>(), done, "{slices:?}");

    // A new process picks the backfill up where the cursor says.
    // Restarted in place (same listen address: it takes the crashed
    // proxy's row in pgshift.proxies).
    let second = Serve::with_args_on(first.port, &["--config".as_ref(), file.as_os_str()]);
    second.ready().await;
    let m = until_backfilled(&admin, &id).await;
    // Each row walked exactly once: the batches in flight at the kill were
    // rolled back with their cursors.
    assert_eq!(m["backfill"]["rows_done"], 30000, "{m}");
    assert_eq!(m["backfill"]["slices"], serde_json::json!([]), "{m}");
    let (code, body) = call("POST", format!("/migrations/{id}/validate"), None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["validation"]["mismatches"], 0, "{body}");
    drop(second);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_second_proxy_leaves_a_running_backfill_alone_and_takes_it_over_when_its_runner_dies() {
    let table = unique("handover");
    let id = unique("handover_m");
    let (dbname, direct) = db().fresh_database("takeoverdb").await;
    direct
        .batch_execute(&format!(
            "create table {table} (id int primary key, old_col int);
             insert into {table} select g, g from generate_series(1, 30000) g"
        ))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(unique("pgshift-takeover"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pgshift.toml");
    let user = &db().user;
    std::fs::write(
        &file,
        format!(
            "[control]\ndatabase = \"{dbname}\"\nuser = \"{user}\"\n{}\n[[migrations]]\nid = \"{id}\"\ntable = \"{table}\"\nfrom = \"old_col\"\nto = \"new_col\"\n",
            db().password.as_ref().map(|p| format!("password = \"{p}\"")).unwrap_or_default()
        ),
    )
    .unwrap();
    let admins: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", pgshift::cluster::free_port().unwrap()))
        .collect();
    let serve = |admin: &str| {
        Serve::with_args(&[
            "--config".as_ref(),
            file.as_os_str(),
            "--admin".as_ref(),
            admin.as_ref(),
        ])
    };
    let mut first = serve(&admins[0]);
    first.ready().await;
    let (code, body) = admin_call(
        &admins[0],
        "POST",
        &format!("/migrations/{id}/expand"),
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = admin_call(
        &admins[0],
        "POST",
        &format!("/migrations/{id}/backfill"),
        Some(serde_json::json!({"batch_size": 300, "batch_pause_ms": 30, "workers": 2})),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    let rows_done = || async {
        direct
            .query_one(
                "select rows_done from pgshift.migrations where id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while rows_done().await < 3000 {
        assert!(Instant::now() < deadline, "the backfill does not move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A second proxy starting now finds the backfill running in the store
    // and leaves it to the first: were both walking, each batch would be
    // counted twice.
    let second = serve(&admins[1]);
    second.ready().await;
    while rows_done().await < 6000 {
        assert!(Instant::now() < deadline, "the backfill does not move");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let holders: i64 = direct
        .query_one(
            "select count(*) from pg_locks l, pgshift.migrations m
             where m.id = $1 and l.locktype = 'advisory' and l.granted and l.objsubid = 1
               and l.classid = ((m.backfill_lock_key >> 32) & 4294967295)::oid
               and l.objid = (m.backfill_lock_key & 4294967295)::oid
               and l.database = (select oid from pg_database where datname = current_database())",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(holders, 1, "exactly one proxy holds the backfill");
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).await;
    let killed_at = rows_done().await;
    assert!(killed_at < 30_000, "{killed_at}");
    // No restart: the second proxy finds the lock free and goes on from the
    // stored cursors.
    let m = until_backfilled(&admins[1], &id).await;
    assert_eq!(
        m["backfill"]["rows_done"], 30000,
        "each row walked once: {m}"
    );
    // (Parity counted directly: an action through the admin port would
    // wait for the killed proxy until its heartbeat is old enough.)
    let behind: i64 = direct
        .query_one(
            &format!("select count(*) from {table} where new_col is distinct from old_col"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(behind, 0);
    drop(second);
    let _ = std::fs::remove_dir_all(dir);
}

/// The admin port's answer to `method path`, asked again for 20 s while
/// the port does not answer or answers 503 (a proxy starting).
async fn admin_call(
    admin: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match pgshift::admin::request(admin, method, path, body.as_ref(), None).await {
            Ok((503, _)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(answer) => return answer,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }
}

/// Migration `id` as `admin`'s /status shows it once backfilled (asked
/// every 50 ms for 60 s at most).
async fn until_backfilled(admin: &str, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = admin_call(admin, "GET", "/status", None).await;
        let m = body["migrations"]
            .as_array()
            .and_then(|all| all.iter().find(|m| m["id"] == id))
            .cloned()
            .unwrap_or_default();
        if m["phase"] == "backfilled" {
            return m;
        }
        assert!(Instant::now() < deadline, "never backfilled: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `pgshift plan`: the JSON a CI job reads, exit code 2 when a statement
/// is refused, 0 when none is; each migration it proposes is one the
/// admin port accepts.
#[tokio::test]
async fn plan_reads_migration_files_and_says_what_it_would_do() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/plan");
    let out = Command::new(BIN)
        .args(["plan", "--format", "json"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "DROP TABLE is refused");
    let steps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let steps = steps.as_array().unwrap();
    let verdict = |needle: &str| {
        steps
            .iter()
            .find(|s| s["statement"].as_str().unwrap_or("").contains(needle))
            .map(|s| s["verdict"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    assert_eq!(verdict("RENAME COLUMN name TO full_name"), "migrate");
    assert_eq!(verdict("DROP TABLE old_audit"), "refuse");
    assert_eq!(verdict("CREATE INDEX users_name_idx"), "make_safe");
    assert_eq!(verdict("ADD COLUMN phone text"), "pass");
    // The proposed migrations pass the admin port's own checks.
    for step in steps.iter().filter(|s| s["verdict"] != "refuse") {
        if let Some(m) = step.get("migration") {
            let m: pgshift::api::NewMigration = serde_json::from_value(m.clone()).unwrap();
            m.spec().unwrap_or_else(|e| panic!("{step}: {e}"));
        }
    }
    let later = Command::new(BIN)
        .arg("plan")
        .arg(dir.join("V10__later.sql"))
        .output()
        .unwrap();
    assert_eq!(later.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&later.stdout).contains("migrate [change-type]"));
}

/// `pgshift plan --database-url`: a type change without a `down` gets the
/// exact one from the column's type in the database, or says why there is
/// none; each migration names its table's size.
#[tokio::test]
async fn plan_with_a_database_derives_downs_and_sizes_tables() {
    let (dbname, direct) = db().fresh_database("plandb").await;
    direct
        .batch_execute(
            "create table users (id int primary key, amount integer, price numeric(10,2), name varchar(40));
             insert into users select g, g, g, 'n' from generate_series(1, 1000) g; analyze users;",
        )
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(unique("plandb"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("V1__types.sql"),
        "ALTER TABLE users ALTER COLUMN amount TYPE bigint;\nALTER TABLE users ALTER COLUMN name TYPE varchar(80);\nALTER TABLE users ALTER COLUMN price TYPE integer;\n",
    )
    .unwrap();
    let test_db = db();
    let url = format!(
        "postgres://{}@{}:{}/{dbname}",
        test_db.user, test_db.host, test_db.port
    );
    let plan = |url: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["plan", "--format", "json"]).arg(&dir);
        if let Some(url) = url {
            cmd.args(["--database-url", url]);
        }
        if let Some(p) = &test_db.password {
            cmd.env("PGPASSWORD", p);
        }
        let out = cmd.output().unwrap();
        let steps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.code(), steps.as_array().unwrap().clone())
    };
    let (code, steps) = plan(None);
    assert_eq!(code, Some(2));
    assert!(steps.iter().all(|s| s["rule"] == "change-type-needs-down"));
    let (code, steps) = plan(Some(&url));
    assert_eq!(code, Some(2), "integer has no exact down: {steps:?}");
    let downs: Vec<&str> = steps
        .iter()
        .map(|s| s["migration"]["down"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(downs, ["amount::integer", "name::varchar(40)", ""]);
    assert!(
        steps[0]["detail"].as_str().unwrap().contains("~1000 rows"),
        "{steps:?}"
    );
    assert!(
        steps[2]["detail"]
            .as_str()
            .unwrap()
            .contains("numeric(10,2) to INTEGER"),
        "{steps:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What a session logs while it runs (the DDL gate's warning, a refusal)
/// carries the session's peer, user and database, as what it logs while
/// it starts does: the relay enters the session's span where it logs.
#[tokio::test]
async fn a_sessions_log_lines_name_its_user_and_database() {
    let mut serve = Serve::spawn(|cmd, port| {
        cmd.stderr(Stdio::piped()).env("RUST_LOG", "info").args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &Serve::upstream(),
            "--ddl",
            "guard",
        ]);
    });
    let client = serve.ready().await;
    let table = unique("logged");
    client
        .batch_execute(&format!(
            "create table {table} (id int primary key, name text)"
        ))
        .await
        .unwrap();
    let refused = client
        .batch_execute(&format!(
            "alter table {table} rename column name to full_name"
        ))
        .await
        .expect_err("guard refuses a rename as written");
    assert!(sqlstate(&refused).is_some(), "{refused}");
    drop(client);
    serve.signal(libc::SIGTERM);
    serve.wait_exit(Duration::from_secs(10)).await;
    let mut log = String::new();
    use std::io::Read;
    serve
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let db = db();
    for what in ["DDL that is not safe", "refused a statement"] {
        let line = log
            .lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line with {what:?} in:\n{log}"));
        for field in [
            "session{peer=".to_string(),
            format!("user=\"{}\"", db.user),
            format!("database=\"{}\"", db.dbname),
        ] {
            assert!(line.contains(&field), "{field:?} not in {line:?}");
        }
    }
}
