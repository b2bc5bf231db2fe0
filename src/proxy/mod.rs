//! The client-facing side of pgshift: the listeners (TCP, and a unix
//! socket when `listen_unix` is set: [`unix_listener`]), the limit on
//! concurrent sessions, and graceful shutdown. Each accepted connection is handed to a
//! worker thread (half the cores by default, [`workers`]) where it becomes one tokio task
//! ([`connection`]) that negotiates startup, opens its own upstream
//! connection (session mode) and relays both directions ([`relay`]).
//!
//! The proxy calls the rewrite seam ([`crate::rewrite`]) for every Query and
//! Parse and knows nothing else about migrations.

pub mod auth;
pub mod cancel;
pub mod connection;
pub mod framing;
pub mod limits;
pub mod negotiate;
pub mod outqueue;
pub mod refusal;
pub mod relay;
pub mod scram;
pub mod search_path;
pub mod session;
pub mod sql_prepared;
pub mod statement;
pub mod statements;
pub mod stats;
pub mod stream;
pub mod tls;
mod unix_listener;
pub mod upstream;
mod wakes;
pub mod wire;
mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{error, info};

use self::unix_listener::UnixSocket;
use self::workers::{Accepted, Workers};

use crate::config::Config;
use crate::rewrite::StatementRewriter;

/// Where the proxy is in its life; sessions watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Accepting and serving.
    Running,
    /// No longer accepting; sessions close as soon as they are idle outside
    /// a transaction.
    Draining,
    /// The grace period is over: every session closes now.
    Closing,
}

/// What every connection task shares.
pub(crate) struct Shared {
    pub config: Config,
    pub rewriter: Arc<dyn StatementRewriter>,
    /// One permit per client session; its size is `max_client_connections`.
    pub sessions: Arc<Semaphore>,
    pub stage: watch::Receiver<Stage>,
    /// The certificate offered to clients, and the policy.
    pub tls: tls::ClientTlsState,
    /// TLS toward the upstream.
    pub upstream_tls: upstream::UpstreamTlsSetup,
    /// Sessions per user and per database.
    pub counts: Arc<limits::Counts>,
    /// SCRAM verifiers read lately (see [`scram`]).
    pub verifiers: scram::Verifiers,
}

/// A bound, not yet running proxy.
pub struct Proxy {
    listener: TcpListener,
    unix: Option<UnixSocket>,
    shared: Arc<Shared>,
    stage_tx: watch::Sender<Stage>,
}

impl Proxy {
    /// Binds the client listener of `config`.
    pub async fn bind(
        config: Config,
        rewriter: Arc<dyn StatementRewriter>,
    ) -> std::io::Result<Proxy> {
        let tls = tls::ClientTlsState::load(config.tls.clone(), config.client_tls)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let upstream_tls = config
            .upstream_tls
            .setup()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(config.listen).await?;
        let unix = match &config.listen_unix {
            Some(dir) => Some(UnixSocket::bind(dir, listener.local_addr()?.port())?),
            None => None,
        };
        let (stage_tx, stage) = watch::channel(Stage::Running);
        let shared = Arc::new(Shared {
            tls,
            upstream_tls,
            counts: Arc::default(),
            verifiers: scram::Verifiers::default(),
            sessions: Arc::new(Semaphore::new(config.limits.max_client_connections)),
            config,
            rewriter,
            stage,
        });
        Ok(Proxy {
            listener,
            unix,
            shared,
            stage_tx,
        })
    }

    /// The address clients connect to (useful when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes, then stops accepting, lets sessions
    /// finish for up to the configured grace period, closes the rest, and
    /// returns once every connection task has ended.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Proxy {
            listener,
            unix,
            shared,
            stage_tx,
        } = self;
        // Each connection task holds a clone; `recv` returns `None` once all
        // of them have ended (the pattern from tokio's mini-redis).
        let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
        info!(
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            unix = %unix.as_ref().map(|u| u.path().display().to_string()).unwrap_or_default(),
            upstream = %shared.config.upstream,
            "pgshift is accepting connections"
        );
        let mut workers = match Workers::start(shared.config.workers, &shared) {
            Ok(workers) => workers,
            Err(e) => {
                error!(error = %e, "cannot start the worker threads");
                return;
            }
        };
        tokio::spawn(reload_certificate_on_sighup(Arc::clone(&shared)));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((socket, peer)) => {
                        let span = session_span(&peer);
                        workers.dispatch(Accepted::tcp(socket), span, alive_tx.clone());
                    }
                    Err(e) => accept_failed(e).await,
                },
                accepted = UnixSocket::accept(unix.as_ref()) => match accepted {
                    Ok(socket) => {
                        let span = session_span(&"unix");
                        workers.dispatch(Accepted::unix(socket), span, alive_tx.clone());
                    }
                    Err(e) => accept_failed(e).await,
                },
                _ = &mut shutdown => break,
            }
        }
        drop(listener);
        drop(unix);
        drop(workers);
        drop(alive_tx);
        let limits = &shared.config.limits;
        let open = limits.max_client_connections - shared.sessions.available_permits();
        info!(
            open_sessions = open,
            grace_secs = limits.shutdown_grace.as_secs_f64(),
            "shutting down: no longer accepting; closing sessions as they become idle"
        );
        let _ = stage_tx.send(Stage::Draining);
        if tokio::time::timeout(limits.shutdown_grace, alive_rx.recv())
            .await
            .is_err()
        {
            let open = limits.max_client_connections - shared.sessions.available_permits();
            info!(
                open_sessions = open,
                "grace period over: closing the remaining sessions"
            );
            let _ = stage_tx.send(Stage::Closing);
            let _ = tokio::time::timeout(Duration::from_secs(5), alive_rx.recv()).await;
        }
        info!("pgshift stopped");
    }
}

/// The span of one client session, from its peer address.
fn session_span(peer: &dyn std::fmt::Display) -> tracing::Span {
    tracing::info_span!(
        "session",
        peer = %peer,
        user = tracing::field::Empty,
        database = tracing::field::Empty,
    )
}

/// Out of file descriptors and the like: back off instead of spinning,
/// keep serving existing sessions.
async fn accept_failed(e: std::io::Error) {
    error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Re-reads the client certificate on every SIGHUP: new sessions get the
/// new one, open sessions keep theirs; a bad file changes nothing.
async fn reload_certificate_on_sighup(shared: Arc<Shared>) {
    use tokio::signal::unix::{signal, SignalKind};
    if shared.config.tls.is_none() {
        return;
    }
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangups.recv().await.is_some() {
        match shared.tls.reload() {
            Ok(()) => info!("SIGHUP: TLS certificate re-read"),
            Err(e) => {
                error!(error = %e, "SIGHUP: cannot re-read the TLS certificate; the current one stays")
            }
        }
    }
}
