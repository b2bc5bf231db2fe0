//! The admin port: a small HTTP/1.1 server (one request per connection,
//! JSON in and out) that drives the lifecycle and reports status.
//!
//! - `GET /` — a self-contained status page (no external assets) that
//!   polls `/status` every second: phase, read source, backfill progress
//!   bar and rate, validation, statement counts, old-shape applications.
//! - `GET /status` — every migration: phase, read source, backfill
//!   progress, last validation, statements rewritten/refused/old-shape.
//! - `GET /metrics` — the same numbers and the session counts, in the
//!   Prometheus text format.
//! - `POST /migrations` — add a migration at run time (the keys of a
//!   `[[migrations]]` entry: `id`, `table`, `from`, `to`, optional `type`,
//!   `up`, `down`); 201 with its status.
//! - `POST /migrations/{id}/{action}` — `expand`, `backfill` (202: it runs
//!   in the background), `pause`, `resume`, `validate`, `switch-reads`
//!   (`{"to": "new"|"old"}`), `contract`, `complete`, `rollback`. 200 with
//!   the migration's status when done; 404 for an unknown id or action, 409
//!   for an illegal transition, 400 for a bad body, 500 when the step
//!   failed — always `{"error": "…"}` saying why.
//!
//! With a token configured, every request needs `Authorization: Bearer
//! <token>` (compared in constant time); pgshift refuses to bind off
//! loopback without one.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::lifecycle::{ActionError, Lifecycle};

/// The status page, compiled in.
const PAGE: &str = include_str!("admin_page.html");

/// Largest request accepted (headers and body).
const MAX_REQUEST: usize = 64 * 1024;

/// A parsed request.
struct Request {
    method: String,
    path: String,
    authorization: Option<String>,
    /// `?token=…` in the URL: how the status page is opened in a browser
    /// when a token is required.
    query_token: Option<String>,
    body: Vec<u8>,
}

/// Serves the admin port until the task is dropped.
pub async fn serve(listener: TcpListener, lifecycle: Arc<Lifecycle>, token: Option<String>) {
    let slot = Arc::new(OnceLock::new());
    let _ = slot.set(lifecycle);
    serve_when_ready(listener, slot, token).await
}

/// Serves the admin port from the moment it is bound: until the lifecycle
/// driver has started (it waits for the upstream), every request but the
/// status page is answered 503 saying so.
pub async fn serve_when_ready(
    listener: TcpListener,
    lifecycle: Arc<OnceLock<Arc<Lifecycle>>>,
    token: Option<String>,
) {
    let token = token.map(Arc::new);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let lifecycle = Arc::clone(&lifecycle);
        let token = token.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(
                stream,
                peer,
                &lifecycle,
                token.as_deref().map(String::as_str),
            )
            .await
            {
                tracing::debug!(%peer, error = %e, "admin connection failed");
            }
        });
    }
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    lifecycle: &OnceLock<Arc<Lifecycle>>,
    token: Option<&str>,
) -> std::io::Result<()> {
    let request = match tokio::time::timeout(Duration::from_secs(10), read_request(&mut stream))
        .await
    {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return Ok(()),
        Ok(Err(reason)) => return respond(&mut stream, 400, &json!({ "error": reason })).await,
        Err(_) => return respond(&mut stream, 408, &json!({ "error": "request timed out" })).await,
    };
    if let Some(token) = token {
        let given = request
            .authorization
            .as_deref()
            .and_then(|h| h.strip_prefix("Bearer "))
            .or(request.query_token.as_deref())
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return respond(
                &mut stream,
                401,
                &json!({ "error": "missing or wrong bearer token" }),
            )
            .await;
        }
    }
    tracing::info!(%peer, method = %request.method, path = %request.path, "admin request");
    if request.method == "GET" && request.path == "/" {
        return respond_raw(&mut stream, 200, "text/html; charset=utf-8", PAGE).await;
    }
    let Some(lifecycle) = lifecycle.get() else {
        return respond(
            &mut stream,
            503,
            &json!({ "error": "the migration lifecycle has not started yet: pgshift is waiting for its control connection to the upstream (see its log); retry in a few seconds" }),
        )
        .await;
    };
    let (status, body) = route(&request, lifecycle).await;
    match body {
        // The metrics are text, not JSON.
        Value::String(text) if status == 200 => {
            respond_raw(&mut stream, 200, "text/plain; version=0.0.4", &text).await
        }
        body => respond(&mut stream, status, &body).await,
    }
}

async fn route(request: &Request, lifecycle: &Arc<Lifecycle>) -> (u16, Value) {
    let parts: Vec<&str> = request.path.trim_matches('/').split('/').collect();
    match (request.method.as_str(), parts.as_slice()) {
        ("GET", ["status"]) => (200, lifecycle.status()),
        ("GET", ["metrics"]) => (200, Value::String(lifecycle.metrics())),
        ("GET", ["migrations", id]) => answer(lifecycle.status_of(id), 200),
        ("POST", ["migrations"]) => {
            let body: Value = match serde_json::from_slice(&request.body) {
                Ok(v) => v,
                Err(e) => {
                    return (
                        400,
                        json!({ "error": format!("the body is not JSON: {e}") }),
                    )
                }
            };
            answer(lifecycle.add(&body).await, 201)
        }
        ("POST", ["migrations", id, action]) => {
            let body: Value = if request.body.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                match serde_json::from_slice(&request.body) {
                    Ok(v) => v,
                    Err(e) => {
                        return (
                            400,
                            json!({ "error": format!("the body is not JSON: {e}") }),
                        )
                    }
                }
            };
            let accepted = if *action == "backfill" || *action == "resume" {
                202
            } else {
                200
            };
            answer(lifecycle.act(id, action, &body).await, accepted)
        }
        (_, ["status"]) | (_, ["migrations", ..]) => (
            405,
            json!({ "error": format!("{} is not allowed on {}", request.method, request.path) }),
        ),
        _ => (
            404,
            json!({ "error": format!("no such endpoint: {}", request.path) }),
        ),
    }
}

fn answer(result: Result<Value, ActionError>, ok: u16) -> (u16, Value) {
    match result {
        Ok(v) => (ok, v),
        Err(e) => {
            let status = match e {
                ActionError::NotFound(_) => 404,
                ActionError::Conflict(_) => 409,
                ActionError::BadRequest(_) => 400,
                ActionError::Failed(_) => 500,
            };
            (status, json!({ "error": e.to_string() }))
        }
    }
}

/// Reads one request; `Err` says what is wrong with it.
async fn read_request(stream: &mut TcpStream) -> Result<Option<Request>, String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_REQUEST {
            return Err("request headers too large".into());
        }
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err("incomplete request".into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| "headers are not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (Some(method), Some(path)) = (first.next(), first.next()) else {
        return Err("malformed request line".into());
    };
    let mut length = 0usize;
    let mut authorization = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .parse()
                .map_err(|_| "bad Content-Length".to_string())?;
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.to_string());
        }
    }
    if length > MAX_REQUEST {
        return Err("request body too large".into());
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("incomplete body".into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let query_token = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("token="))
        .map(str::to_string);
    Ok(Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        authorization,
        query_token,
        body,
    }))
}

async fn respond(stream: &mut TcpStream, status: u16, body: &Value) -> std::io::Result<()> {
    respond_raw(stream, status, "application/json", &body.to_string()).await
}

async fn respond_raw(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    text: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A minimal HTTP client for the CLI: sends one request, returns the
/// status and the JSON body.
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Result<(u16, Value), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot reach the admin port {addr}: {e}"))?;
    let body_text = body.map(Value::to_string).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body_text}",
        body_text.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .await
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed response")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("malformed status line")?;
    // JSON, except the metrics (text).
    let value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string()));
    Ok((status, value))
}
