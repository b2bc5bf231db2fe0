//! The admin port as an attacker meets it: the cross-site forms of a POST
//! (a browser's "simple" requests, a foreign Origin, a re-pointed Host)
//! are refused and change nothing; tokens give roles; bodies are typed.

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::*;

/// Sends raw HTTP; returns the status and the body.
async fn raw(admin: &str, request: String) -> (u16, String) {
    let mut stream = TcpStream::connect(admin).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stream.read_to_end(&mut out),
    )
    .await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn post(admin: &str, path: &str, headers: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {admin}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn migration_ids(admin: &str) -> Vec<String> {
    let (code, status) = pgshift::admin::request(admin, "GET", "/status", None, None)
        .await
        .unwrap();
    assert_eq!(code, 200, "{status}");
    status["migrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn cross_site_requests_cannot_act() {
    let (dbname, direct) = db().fresh_database("admindb").await;
    direct
        .batch_execute("create table t (id int primary key, a int not null)")
        .await
        .unwrap();
    let d = driven_all(Vec::new(), &dbname).await;
    let admin = d.admin.as_str();
    let body = json!({"id": "evil", "table": "public.t", "from": "a", "to": "b"}).to_string();
    let origin = "Origin: http://evil.example\r\n";
    for (what, request, expected) in [
        (
            "text/plain",
            post(admin, "/migrations", "Content-Type: text/plain\r\n", &body),
            415,
        ),
        (
            "form",
            post(
                admin,
                "/migrations",
                "Content-Type: application/x-www-form-urlencoded\r\n",
                &body,
            ),
            415,
        ),
        (
            "no content type",
            post(admin, "/migrations", "", &body),
            415,
        ),
        (
            "foreign origin",
            post(
                admin,
                "/migrations",
                &format!("{origin}Content-Type: application/json\r\n"),
                &body,
            ),
            403,
        ),
        (
            "null origin",
            post(
                admin,
                "/migrations",
                "Origin: null\r\nContent-Type: application/json\r\n",
                &body,
            ),
            403,
        ),
        (
            "cross-site fetch",
            post(
                admin,
                "/migrations",
                "Sec-Fetch-Site: cross-site\r\nContent-Type: application/json\r\n",
                &body,
            ),
            403,
        ),
        (
            "DNS rebinding",
            post(
                admin,
                "/migrations",
                "Content-Type: application/json\r\n",
                &body,
            )
            .replace(&format!("Host: {admin}"), "Host: evil.example:9432"),
            403,
        ),
    ] {
        let (code, answer) = raw(admin, request).await;
        assert_eq!(code, expected, "{what}: {answer}");
        assert!(answer.contains("\"error\""), "{what}: {answer}");
    }
    assert!(
        migration_ids(admin).await.is_empty(),
        "nothing was registered"
    );
    // The port's own page may still read, and the CLI's requests act.
    let (code, _) = raw(admin, format!("GET /status HTTP/1.1\r\nHost: {admin}\r\nOrigin: http://{admin}\r\nConnection: close\r\n\r\n")).await;
    assert_eq!(code, 200);
    let (code, answer) = pgshift::admin::request(
        admin,
        "POST",
        "/migrations",
        Some(&json!({"id": "ok", "table": "public.t", "from": "a", "to": "b"})),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 201, "{answer}");
}

#[tokio::test]
async fn bodies_are_typed_and_an_unknown_key_is_named() {
    let (dbname, direct) = db().fresh_database("admintyped").await;
    direct
        .batch_execute("create table t (id int primary key, a int not null)")
        .await
        .unwrap();
    let d = driven_all(Vec::new(), &dbname).await;
    let admin = d.admin.as_str();
    let (code, answer) = pgshift::admin::request(
        admin,
        "POST",
        "/migrations",
        Some(&json!({"id": "m", "table": "public.t", "from": "a", "to": "b", "tpye": "bigint"})),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or("")
            .contains("unknown field `tpye`"),
        "{answer}"
    );
    assert!(migration_ids(admin).await.is_empty());
    let (code, _) = pgshift::admin::request(
        admin,
        "POST",
        "/migrations",
        Some(&json!({"id": "m", "table": "public.t", "from": "a", "to": "b"})),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 201);
    let (code, answer) = pgshift::admin::request(
        admin,
        "POST",
        "/migrations/m/backfill",
        Some(&json!({"batch_sise": 5})),
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap_or("")
            .contains("batch_sise"),
        "{answer}"
    );
    let (code, answer) =
        pgshift::admin::request(admin, "POST", "/migrations/m/explode", None, None)
            .await
            .unwrap();
    assert_eq!(code, 404, "{answer}");
}

#[tokio::test]
async fn tokens_give_roles_and_never_come_from_the_url() {
    let (dbname, direct) = db().fresh_database("admintokens").await;
    direct
        .batch_execute("create table t (id int primary key, a int not null)")
        .await
        .unwrap();
    let tokens = pgshift::admin::Tokens::new(Some("operator-secret"), Some("reader-secret"));
    let d = driven_with_tokens(Vec::new(), &dbname, tokens).await;
    let admin = d.admin.as_str();
    let add = json!({"id": "m", "table": "public.t", "from": "a", "to": "b"});
    let status = |token: Option<&'static str>| {
        let admin = admin.to_string();
        async move {
            pgshift::admin::request(&admin, "GET", "/status", None, token)
                .await
                .unwrap()
                .0
        }
    };
    assert_eq!(status(None).await, 401);
    assert_eq!(status(Some("wrong")).await, 401);
    assert_eq!(status(Some("reader-secret")).await, 200);
    assert_eq!(status(Some("operator-secret")).await, 200);
    let (code, _) = raw(admin, format!("GET /status?token=operator-secret HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n")).await;
    assert_eq!(code, 401, "a token in the URL is not taken");
    let (code, _) = raw(admin, format!("GET /status HTTP/1.1\r\nHost: {admin}\r\nAuthorization: bearer operator-secret\r\nConnection: close\r\n\r\n")).await;
    assert_eq!(code, 200, "the scheme is case-insensitive");
    let (code, answer) = pgshift::admin::request(
        admin,
        "POST",
        "/migrations",
        Some(&add),
        Some("reader-secret"),
    )
    .await
    .unwrap();
    assert_eq!(code, 403, "{answer}");
    let (code, answer): (u16, Value) = pgshift::admin::request(
        admin,
        "POST",
        "/migrations",
        Some(&add),
        Some("operator-secret"),
    )
    .await
    .unwrap();
    assert_eq!(code, 201, "{answer}");
    let actor: String = direct
        .query_one(
            "select actor from pgshift.events where migration_id = 'm' and action = 'add'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        actor, "admin (operator token)",
        "the event names the token that drove it"
    );
    // The page itself holds no data: it loads without a token.
    let (code, page) = raw(
        admin,
        format!("GET / HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(code, 200);
    assert!(page.contains("<h1>pgshift</h1>"));
}

/// `up` and `down` run as the control role: anything but one expression
/// over the column (the attack that read /etc/passwd at backfill) is
/// refused when the migration is registered, naming what it tried.
#[tokio::test]
async fn a_conversion_that_reaches_beyond_its_column_is_refused() {
    let (dbname, direct) = db().fresh_database("adminconv").await;
    direct
        .batch_execute("create table t (id int primary key, amount int not null, other int)")
        .await
        .unwrap();
    let d = driven_all(Vec::new(), &dbname).await;
    let admin = d.admin.as_str();
    for (up, says) in [
        (
            "(amount + 1000000*length(pg_read_file('/etc/passwd')))::bigint",
            "pg_read_file",
        ),
        ("amount + (select count(*) from pg_authid)", "subquery"),
        ("(amount + other)::bigint", "\"other\""),
    ] {
        let body = json!({"id": "m", "table": "public.t", "from": "amount", "to": "amount_big",
                          "type": "bigint", "up": up, "down": "amount_big::integer"});
        let (code, answer) =
            pgshift::admin::request(admin, "POST", "/migrations", Some(&body), None)
                .await
                .unwrap();
        assert_eq!(code, 400, "{up}: {answer}");
        assert!(
            answer["error"].as_str().unwrap_or("").contains(says),
            "{up}: {answer}"
        );
    }
    assert!(migration_ids(admin).await.is_empty());
}
