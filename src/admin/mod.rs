//! The admin port: HTTP/1.1 on hyper and axum, JSON in and out, that drives
//! the lifecycle and reports status. [`guard`] decides who may do what
//! (Host, Origin, content type, tokens), [`routes`] holds the endpoints
//! (their request bodies are typed in [`crate::api`]), [`client`] the
//! command line's side.
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
//!   for an illegal transition, 400 for a bad body (an unknown key named),
//!   500 when the step failed — always `{"error": "…"}` saying why.
//!
//! At most [`MAX_CONNECTIONS`] connections are served at once (more are
//! closed at accept), and a request's headers must arrive within
//! [`HEADER_TIMEOUT`]: idle or slow sockets cannot starve operators.
//!
//! With a certificate configured the port speaks HTTPS only (the client
//! certificate's files, ALPN `http/1.1`, re-read on SIGHUP); a plain HTTP
//! request gets a 400 saying to use `https://`.

mod client;
pub mod guard;
mod routes;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::lifecycle::Lifecycle;
use crate::proxy::tls::Reloadable;

pub use client::{request, set_ca};
pub use guard::Tokens;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Time allowed for a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request's handling shares.
pub struct AdminState {
    lifecycle: Arc<OnceLock<Arc<Lifecycle>>>,
    tokens: Tokens,
    /// The `Host` values served (`None`: any).
    hosts: Option<Vec<String>>,
}

/// Serves the admin port until the task is dropped.
pub async fn serve(listener: TcpListener, lifecycle: Arc<Lifecycle>, tokens: Tokens) {
    let slot = Arc::new(OnceLock::new());
    let _ = slot.set(lifecycle);
    serve_when_ready(listener, slot, tokens, None).await
}

/// Serves the admin port from the moment it is bound: until the lifecycle
/// driver has started (it waits for the upstream), every request but the
/// status page is answered 503 saying so.
pub async fn serve_when_ready(
    listener: TcpListener,
    lifecycle: Arc<OnceLock<Arc<Lifecycle>>>,
    tokens: Tokens,
    tls: Option<Arc<Reloadable>>,
) {
    if let Some(tls) = &tls {
        tokio::spawn(reload_on_sighup(Arc::clone(tls)));
    }
    let hosts = listener.local_addr().ok().and_then(guard::allowed_hosts);
    let state = Arc::new(AdminState {
        lifecycle,
        tokens,
        hosts,
    });
    let router = routes::router(state);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::warn!(%peer, max = MAX_CONNECTIONS, "admin port: too many connections; closed one at accept");
            continue;
        };
        let router = router.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, router, peer).await,
                Some(tls) => {
                    if let Some(stream) = handshake(stream, &tls, peer).await {
                        serve_connection(stream, router, peer).await;
                    }
                }
            }
            drop(slot);
        });
    }
}

/// HTTP/1.1 over one accepted connection.
async fn serve_connection<S>(stream: S, router: axum::Router, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "admin connection failed");
    }
}

/// The TLS handshake of an HTTPS admin port, within [`HEADER_TIMEOUT`]; a
/// client speaking plain HTTP is told to use `https://` and closed.
async fn handshake(
    mut stream: TcpStream,
    tls: &Reloadable,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(HEADER_TIMEOUT, stream.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) {
        return None;
    }
    // A TLS record starts with 22 (handshake); anything else is plaintext.
    if first[0] != 22 {
        let body = r#"{"error":"this admin port speaks HTTPS only: use https://"}"#;
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ =
            tokio::time::timeout(Duration::from_secs(1), stream.write_all(answer.as_bytes())).await;
        return None;
    }
    match tokio::time::timeout(HEADER_TIMEOUT, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "admin port: TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// Re-reads the admin port's certificate on every SIGHUP.
async fn reload_on_sighup(tls: Arc<Reloadable>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangups.recv().await.is_some() {
        match tls.reload() {
            Ok(()) => tracing::info!("SIGHUP: the admin port's TLS certificate re-read"),
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: cannot re-read the admin port's certificate; the current one stays")
            }
        }
    }
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
