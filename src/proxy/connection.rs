//! One client connection from accept to close: the startup negotiation
//! (TLS by [`super::negotiate`], CancelRequest forwarded), the session
//! limits (total, reserved, per user and database), the upstream
//! connection, the authentication exchange (relayed by [`auth`], nothing
//! else decoded), then the relay.
//!
//! Everything a client can get wrong here ends in a FATAL `ErrorResponse`
//! with a SQLSTATE and a sentence saying what pgshift refused.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::rewrite::search_path;
use crate::rewrite::{PassThrough, SessionContext, StatementRewriter};

use super::auth::{self, AuthEnd};
use super::negotiate::{negotiate, Negotiated, Refusal};
use super::stream::Stream;
use super::tls::ClientTls;
use super::upstream::connect_upstream;
use super::wire::{sqlstate, ErrorResponse, StartupPacket};
use super::{cancel, relay, stats, Shared};

/// Serves one accepted client connection until it ends.
pub(crate) async fn serve(shared: Arc<Shared>, client: TcpStream, _alive: mpsc::Sender<()>) {
    let _ = client.set_nodelay(true);
    let limits = &shared.config.limits;
    let deadline = tokio::time::Instant::now() + limits.startup_timeout;
    let (mut client, startup) = match negotiate(&shared.tls, client, deadline).await {
        Negotiated::Packet(stream, packet) => (stream, packet),
        Negotiated::Closed => {
            debug!("client closed the connection before its startup message");
            return;
        }
        Negotiated::Refused(mut stream, Refusal::Timeout) => {
            info!(
                timeout_ms = limits.startup_timeout.as_millis() as u64,
                "client sent no startup message in time"
            );
            let err = ErrorResponse::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "pgshift closed the connection: no startup message within startup_timeout_ms",
            );
            reject(&mut stream, err).await;
            return;
        }
        Negotiated::Refused(mut stream, Refusal::Protocol(e)) => {
            warn!(error = %e, "refused a malformed startup packet");
            let err = ErrorResponse::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("pgshift refused the connection: {e}"),
            );
            reject(&mut stream, err).await;
            return;
        }
    };
    if shared.tls.mode() == ClientTls::Require
        && !client.is_tls()
        && matches!(startup, StartupPacket::Startup { .. })
    {
        info!("refused a client without TLS (client_tls = require)");
        let err = ErrorResponse::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "pgshift requires TLS for client connections (client_tls = require): connect with sslmode=require or stronger",
        );
        reject(&mut client, err).await;
        return;
    }

    let (raw, params) = match startup {
        StartupPacket::CancelRequest(packet) => {
            cancel::forward(&shared, packet).await;
            return;
        }
        StartupPacket::Startup { raw, params } => (raw, params),
        StartupPacket::SslRequest | StartupPacket::GssEncRequest => return,
    };
    let client_tls = client.is_tls();
    let span = tracing::Span::current();
    let database = params
        .database
        .as_deref()
        .or(params.user.as_deref())
        .unwrap_or("");
    span.record("user", params.user.as_deref().unwrap_or(""));
    span.record("database", database);
    // Migrations belong to one database: sessions to any other are relayed
    // without rewriting.
    let rewriter: &dyn StatementRewriter = if database == shared.config.control.database {
        &*shared.rewriter
    } else {
        &PassThrough
    };

    let user = params.user.as_deref().unwrap_or("");
    let reserved_role = match limits.reserved_roles.as_slice() {
        [] => user == shared.config.control.user,
        roles => roles.iter().any(|r| r == user),
    };
    if shared.sessions.available_permits() <= limits.reserved_connections && !reserved_role {
        stats::rejected();
        warn!(
            reserved = limits.reserved_connections,
            "refused a client: the remaining connections are reserved"
        );
        let err = ErrorResponse::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "pgshift refused the connection: the remaining {} connection slots are reserved (reserved_connections) for the roles {}",
                limits.reserved_connections,
                match limits.reserved_roles.as_slice() {
                    [] => shared.config.control.user.clone(),
                    roles => roles.join(", "),
                }
            ),
        );
        reject(&mut client, err).await;
        return;
    }
    let Ok(_permit) = Arc::clone(&shared.sessions).try_acquire_owned() else {
        stats::rejected();
        warn!(
            max = limits.max_client_connections,
            "refused a client: too many connections"
        );
        let err = ErrorResponse::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "pgshift refused the connection: too many client connections (max_client_connections = {})",
                limits.max_client_connections
            ),
        );
        reject(&mut client, err).await;
        return;
    };

    let _counted = stats::SessionGuard::new();
    let upstream = &shared.config.upstream;
    let mut server = match connect_upstream(&shared).await {
        Ok(server) => server,
        Err(reason) => {
            warn!(%upstream, %reason, "cannot reach the upstream");
            let err = ErrorResponse::fatal(
                sqlstate::CANNOT_CONNECT,
                format!("pgshift could not connect to the upstream server {upstream}: {reason}"),
            )
            .with_hint(
                "Check that Postgres is running and that pgshift's upstream setting points at it.",
            );
            reject(&mut client, err).await;
            return;
        }
    };
    if let Err(e) = server.write_all(&raw).await {
        let err = ErrorResponse::fatal(
            sqlstate::CANNOT_CONNECT,
            format!(
                "pgshift could not send the startup message to the upstream server {upstream}: {e}"
            ),
        );
        reject(&mut client, err).await;
        return;
    }
    if !authenticate(&mut client, &mut server, limits.startup_timeout, client_tls).await {
        return;
    }
    // Counted once authenticated, as Postgres counts a role's connection
    // limit: a client that cannot authenticate as a role cannot use up
    // that role's sessions.
    let _held = match shared.counts.acquire(
        user,
        database,
        limits.max_user_connections,
        limits.max_db_connections,
    ) {
        Ok(held) => held,
        Err(which) => {
            stats::rejected();
            warn!(%which, "refused a client: too many connections");
            let err = ErrorResponse::fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                format!("pgshift refused the connection: {which}"),
            );
            reject(&mut client, err).await;
            return;
        }
    };
    debug!(
        application_name = params.application_name.as_deref().unwrap_or(""),
        "session started"
    );
    let context = SessionContext::new(
        params.application_name.as_deref().map(Arc::from),
        Arc::from(params.user.as_deref().unwrap_or("")),
        search_path::from_startup(params.search_path.as_deref(), params.options.as_deref()),
    );
    relay::run(&shared, rewriter, context, client, server).await;
}

/// Relays the authentication exchange within `limit`; `false` when the
/// session ends there (the client was told why where it is owed a word).
async fn authenticate(
    client: &mut Stream,
    server: &mut Stream,
    limit: std::time::Duration,
    client_tls: bool,
) -> bool {
    let outcome = tokio::time::timeout(limit, auth::exchange(client, server, client_tls)).await;
    let err = match outcome {
        Ok(Ok(())) => return true,
        Ok(Err(AuthEnd::ClientProtocol(err))) => {
            warn!("refused a client that broke the authentication exchange");
            err
        }
        Ok(Err(AuthEnd::ServerProtocol(reason))) => {
            warn!(%reason, "protocol violation from the upstream during authentication");
            ErrorResponse::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("pgshift received an invalid message from the upstream server during authentication: {reason}"),
            )
        }
        Ok(Err(end)) => {
            debug!(?end, "session ended during authentication");
            return false;
        }
        Err(_) => {
            info!(
                timeout_ms = limit.as_millis() as u64,
                "client did not complete authentication in time"
            );
            ErrorResponse::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "pgshift closed the connection: authentication did not complete within startup_timeout_ms",
            )
        }
    };
    reject(client, err).await;
    false
}

/// Sends a FATAL error and closes, without waiting on a slow client.
async fn reject(client: &mut Stream, err: ErrorResponse) {
    let frame = err.encode();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
        client.write_all(&frame).await?;
        client.shutdown().await
    })
    .await;
}
