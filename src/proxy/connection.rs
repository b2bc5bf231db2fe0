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
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::{debug, info, warn, Instrument};

use crate::rewrite::search_path;
use crate::rewrite::{SessionContext, StatementRewriter};
use crate::sql_plan::gate::DdlMode;

use super::auth::{self, AuthEnd};
use super::negotiate::{negotiate, Negotiated, Refusal};
use super::stream::Stream;
use super::tls::ClientTls;
use super::upstream::connect_upstream;
use super::wire::{sqlstate, ErrorResponse, StartupPacket, StartupParams};
use super::{cancel, relay, stats, Shared};

/// Serves one accepted client connection until it ends: the startup
/// packet, admission, the upstream connection, authentication, the
/// session's own limits, then the relay.
///
/// Everything up to the relay runs in `span`; the relay enters it only
/// where it logs (entering a span on each of a session's wake-ups cost
/// 7 % of pgshift's instructions per `pgbench -S` transaction).
pub(crate) async fn serve(
    shared: Arc<Shared>,
    client: Stream,
    _alive: mpsc::Sender<()>,
    span: tracing::Span,
) {
    let Some(opened) = open(&shared, client).instrument(span.clone()).await else {
        return;
    };
    // Migrations belong to one database: sessions to any other are relayed
    // without rewriting, but for the DDL gate.
    let ddl_only = crate::sql_plan::gate::DdlOnly(shared.config.ddl);
    let rewriter: &dyn StatementRewriter = match opened.migrating_database {
        true => &*shared.rewriter,
        false => &ddl_only,
    };
    let (client, server) = (opened.client, opened.server);
    relay::run(&shared, rewriter, opened.context, client, server, span).await;
}

/// A session ready for the relay, with what it holds while it lasts.
struct Opened {
    client: Stream,
    server: Stream,
    context: SessionContext,
    /// The session is to the database migrations belong to.
    migrating_database: bool,
    _held: (
        OwnedSemaphorePermit,
        stats::SessionGuard,
        super::limits::Held,
    ),
}

/// The startup packet, admission, the upstream connection,
/// authentication and the session's own limits: the session, or `None`
/// when it ended (the client was told why).
async fn open(shared: &Arc<Shared>, client: Stream) -> Option<Opened> {
    let (mut client, raw, params) = startup(shared, client).await?;
    let limits = &shared.config.limits;
    let user = params.user.as_deref().unwrap_or("");
    let database = params
        .database
        .as_deref()
        .or(params.user.as_deref())
        .unwrap_or("");
    let span = tracing::Span::current();
    span.record("user", user);
    span.record("database", database);
    let permit = match admit(shared, user) {
        Ok(permit) => permit,
        Err(err) => {
            reject(&mut client, err).await;
            return None;
        }
    };
    let counted = stats::SessionGuard::new();
    let mut server = match open_upstream(shared, &raw).await {
        Ok(server) => server,
        Err(err) => {
            reject(&mut client, err).await;
            return None;
        }
    };
    let across = auth::Across {
        role: user,
        verifiers: &shared.verifiers,
        config: &shared.config,
    };
    let across = server.is_tls().then_some(&across);
    if !authenticate(&mut client, &mut server, limits.startup_timeout, across).await {
        return None;
    }
    // Counted once authenticated, as Postgres counts a role's connection
    // limit: a client that cannot authenticate as a role cannot use up
    // that role's sessions.
    let held = match shared.counts.acquire(
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
            return None;
        }
    };
    debug!(
        application_name = params.application_name.as_deref().unwrap_or(""),
        "session started"
    );
    let marked = crate::rewrite::marker::Marked::from_startup(
        params.shape.as_deref(),
        params.options.as_deref(),
    );
    let mut context = SessionContext::new(
        params.application_name.as_deref().map(Arc::from),
        Arc::from(user),
        search_path::from_startup(params.search_path.as_deref(), params.options.as_deref()),
        marked,
    );
    context.ddl = Some(ddl_mode(&shared.config, user, &params));
    Some(Opened {
        client,
        server,
        context,
        migrating_database: database == shared.config.control.database,
        _held: (permit, counted, held),
    })
}

/// The DDL gate's mode for a session of `user` that sent `params`.
fn ddl_mode(config: &crate::config::Config, user: &str, params: &StartupParams) -> DdlMode {
    let asked = match (&params.ddl, &params.options) {
        (Some(value), _) => Some(value.clone()),
        (None, Some(options)) => search_path::option_value(options, "pgshift.ddl"),
        _ => None,
    };
    let asked = asked.and_then(|v| DdlMode::parse(v.trim()));
    DdlMode::for_session(config.ddl, config.ddl_roles.get(user).copied(), asked)
}

/// The startup exchange within `startup_timeout` (TLS included): the
/// client's stream, its startup packet and parameters — or `None` when
/// the connection ends here (refused, a cancel request forwarded).
async fn startup(shared: &Shared, client: Stream) -> Option<(Stream, bytes::Bytes, StartupParams)> {
    let limits = &shared.config.limits;
    let deadline = tokio::time::Instant::now() + limits.startup_timeout;
    let (mut client, startup) = match negotiate(&shared.tls, client, deadline).await {
        Negotiated::Packet(stream, packet) => (stream, packet),
        Negotiated::Closed => {
            debug!("client closed the connection before its startup message");
            return None;
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
            return None;
        }
        Negotiated::Refused(mut stream, Refusal::Protocol(e)) => {
            warn!(error = %e, "refused a malformed startup packet");
            let err = ErrorResponse::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("pgshift refused the connection: {e}"),
            );
            reject(&mut stream, err).await;
            return None;
        }
    };
    match startup {
        // A unix-socket client is local: TLS is neither offered nor asked.
        StartupPacket::Startup { .. }
            if shared.tls.mode() == ClientTls::Require && !client.is_tls() && !client.is_unix() =>
        {
            info!("refused a client without TLS (client_tls = require)");
            let err = ErrorResponse::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                "pgshift requires TLS for client connections (client_tls = require): connect with sslmode=require or stronger",
            );
            reject(&mut client, err).await;
            None
        }
        StartupPacket::Startup { raw, params } => Some((client, raw, params)),
        StartupPacket::CancelRequest(packet) => {
            cancel::forward(shared, packet).await;
            // Closed as Postgres closes it once the cancel is handled:
            // cleanly, with TLS's close_notify when the request came
            // encrypted (libpq 17's PQcancelBlocking reports a bare close
            // as "SSL error: unexpected eof").
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), client.shutdown()).await;
            None
        }
        StartupPacket::SslRequest | StartupPacket::GssEncRequest => None,
    }
}

/// A session slot for `user`: refused when the remaining slots are
/// reserved for other roles, or when none is left.
fn admit(shared: &Arc<Shared>, user: &str) -> Result<OwnedSemaphorePermit, ErrorResponse> {
    let limits = &shared.config.limits;
    let reserved_for = match limits.reserved_roles.as_slice() {
        [] => std::slice::from_ref(&shared.config.control.user),
        roles => roles,
    };
    if shared.sessions.available_permits() <= limits.reserved_connections
        && !reserved_for.iter().any(|r| r == user)
    {
        stats::rejected();
        warn!(
            reserved = limits.reserved_connections,
            "refused a client: the remaining connections are reserved"
        );
        return Err(ErrorResponse::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "pgshift refused the connection: the remaining {} connection slots are reserved (reserved_connections) for the roles {}",
                limits.reserved_connections,
                reserved_for.join(", ")
            ),
        ));
    }
    Arc::clone(&shared.sessions).try_acquire_owned().map_err(|_| {
        stats::rejected();
        warn!(
            max = limits.max_client_connections,
            "refused a client: too many connections"
        );
        ErrorResponse::fatal(
            sqlstate::TOO_MANY_CONNECTIONS,
            format!(
                "pgshift refused the connection: too many client connections (max_client_connections = {})",
                limits.max_client_connections
            ),
        )
    })
}

/// The upstream connection, with the client's startup packet sent on it.
async fn open_upstream(shared: &Shared, startup: &[u8]) -> Result<Stream, ErrorResponse> {
    let upstream = &shared.config.upstream;
    let mut server = connect_upstream(shared).await.map_err(|reason| {
        warn!(%upstream, %reason, "cannot reach the upstream");
        ErrorResponse::fatal(
            sqlstate::CANNOT_CONNECT,
            format!("pgshift could not connect to the upstream server {upstream}: {reason}"),
        )
        .with_hint(
            "Check that Postgres is running and that pgshift's upstream setting points at it.",
        )
    })?;
    server.write_all(startup).await.map_err(|e| {
        ErrorResponse::fatal(
            sqlstate::CANNOT_CONNECT,
            format!(
                "pgshift could not send the startup message to the upstream server {upstream}: {e}"
            ),
        )
    })?;
    Ok(server)
}

/// Relays the authentication exchange within `limit`; `false` when the
/// session ends there (the client was told why where it is owed a word).
async fn authenticate(
    client: &mut Stream,
    server: &mut Stream,
    limit: std::time::Duration,
    across: Option<&auth::Across<'_>>,
) -> bool {
    let outcome = tokio::time::timeout(limit, auth::exchange(client, server, across)).await;
    let err = match outcome {
        Ok(Ok(())) => return true,
        Ok(Err(AuthEnd::Refused(err))) => {
            info!(message = %err.message, "refused a client during authentication");
            err
        }
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
