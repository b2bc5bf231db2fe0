//! The relay of one session once startup is done: two pumps, client→server
//! and server→client, polled by the session's one task, until either side
//! ends, the session idles out, or the proxy shuts down.
//!
//! Each pump reads what is available, keeps reading while more is ready
//! (without waiting), hands the bytes to its stream visitor through the
//! frame splitter (which copies nothing unless a frame is replaced), and
//! writes everything it gathered at once: writes are coalesced per drained
//! read, not per message. The pumps run concurrently so a server blocked on
//! a slow client never blocks the other direction.
//!
//! What the pumps know about each other — requests in flight, the last
//! transaction status, the last time a byte moved, refusals and prepared
//! statements — lives in [`SessionState`]; with it the session knows when it
//! is idle outside a transaction and can be closed safely.
//!
//! A pump may also stop before a frame its visitor holds (the rename
//! barrier) and ask again shortly, reading nothing more meanwhile. When the
//! session ends, the client is told why only when the reason is pgshift's
//! (a timeout, shutdown, an invalid frame); an upstream that closes is
//! relayed as it is: what the server sent, to the end, then the close.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use std::future::Future;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::framing::{FrameError, FrameSplitter, FrameVisitor, HEADER_LEN};
use super::outqueue::OutQueue;
use super::session::{BackendVisitor, FrontendVisitor, SessionState};
use super::stream::Stream;
use super::wakes::Wakes;
use super::wire::{sqlstate, ErrorResponse};
use super::{Shared, Stage};
use crate::rewrite::StatementRewriter;

/// Read buffers grow in steps of this size.
const READ_CHUNK: usize = 8 * 1024;
/// Stop gathering more input for one write past this many buffered bytes.
const COALESCE_LIMIT: usize = 256 * 1024;
/// A read buffer larger than this is released when the session goes quiet,
/// so one big result does not pin memory for the rest of a session.
const KEEP_BUFFER: usize = 64 * 1024;
/// How often a statement held by the rename barrier asks again whether it
/// may go: the barrier lasts tens of milliseconds when nothing blocks it.
const HOLD_POLL: Duration = Duration::from_millis(2);
/// Time allowed to hand the client its last bytes and a closing error.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a session ended.
#[derive(Debug)]
enum End {
    /// The client closed its socket (after Terminate or not).
    ClientClosed,
    ClientIo(io::Error),
    ClientProtocol(String),
    /// The upstream closed its socket.
    ServerClosed,
    ServerIo(io::Error),
    ServerProtocol(FrameError),
    IdleTimeout(Duration),
    IdleInTransaction(Duration),
    /// Shutdown: the session reached a point where closing loses nothing.
    Drained,
    /// Shutdown: the grace period is over.
    ShutdownForced,
}

/// One direction's buffers.
struct Pump {
    inbuf: BytesMut,
    splitter: FrameSplitter,
    out: OutQueue,
    /// Bytes the next inspected frame needs in total.
    wanted: usize,
}

impl Pump {
    fn new(max_message_size: usize) -> Self {
        Pump {
            inbuf: BytesMut::new(),
            splitter: FrameSplitter::new(max_message_size),
            out: OutQueue::default(),
            wanted: HEADER_LEN,
        }
    }

    /// Reads at least one byte (waiting), then whatever else is ready without
    /// waiting. Returns `Ok(true)` at end of stream.
    async fn fill<R: AsyncRead + Unpin>(&mut self, src: &mut R) -> io::Result<bool> {
        self.reserve();
        let mut spare = self.spare();
        let mut read = src.read_buf(&mut self.inbuf).await?;
        if read == 0 {
            return Ok(true);
        }
        // A read that did not fill the buffer took all there was: only a
        // full one is followed by another (TLS may hold back more; it is
        // read on the pump's next turn, without waiting for the socket).
        while read == spare && self.inbuf.len() < COALESCE_LIMIT {
            self.reserve();
            spare = self.spare();
            read = match poll_once(src.read_buf(&mut self.inbuf)).await {
                Some(Ok(0)) => return Ok(true),
                Some(Ok(read)) => read,
                None => break,
                Some(Err(e)) => return Err(e),
            };
        }
        Ok(false)
    }

    /// Room left in the read buffer without growing it.
    fn spare(&self) -> usize {
        self.inbuf.capacity() - self.inbuf.len()
    }

    fn reserve(&mut self) {
        let need = self.wanted.saturating_sub(self.inbuf.len()).max(READ_CHUNK);
        if self.inbuf.capacity() - self.inbuf.len() < READ_CHUNK / 2 || self.inbuf.capacity() < need
        {
            self.inbuf.reserve(need);
        }
    }

    /// Writes everything queued: a plain `write` for the usual single chunk,
    /// a vectored write when there are several. Cancel-safe: the queue only
    /// advances by what was written, so a session that ends mid-write still
    /// knows exactly what is left to send.
    async fn flush<W: AsyncWrite + Unpin>(&mut self, dst: &mut W) -> io::Result<()> {
        while !self.out.is_empty() {
            let written = if self.out.chunk_count() == 1 {
                dst.write(self.out.chunk()).await?
            } else {
                let mut slices = [io::IoSlice::new(&[]); 64];
                let n = self.out.chunks_vectored(&mut slices);
                dst.write_vectored(&slices[..n]).await?
            };
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.out.advance(written);
        }
        // A TLS stream may have taken the plaintext but kept part of its
        // ciphertext (the socket was full): it leaves only on a flush. A
        // no-op on plain sockets.
        dst.flush().await
    }

    /// Drops an oversized, empty read buffer.
    fn shrink_if_idle(&mut self) {
        if self.inbuf.is_empty() && self.inbuf.capacity() > KEEP_BUFFER {
            self.inbuf = BytesMut::new();
        }
    }
}

/// Polls `future` once: its output if it is ready now, `None` if it would
/// wait (a read of what is already there, without waiting for more).
async fn poll_once<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        Poll::Ready(match future.as_mut().poll(cx) {
            Poll::Ready(output) => Some(output),
            Poll::Pending => None,
        })
    })
    .await
}

/// Which way a pump moves bytes: what its failures and its end are.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Client → server: the rewrite seam for Query/Parse, request
    /// accounting.
    Up,
    /// Server → client: pass-through, ReadyForQuery noted; the way a
    /// draining session ends.
    Down,
}

impl Way {
    fn read_failed(self, e: io::Error) -> End {
        match self {
            Way::Up => End::ClientIo(e),
            Way::Down => End::ServerIo(e),
        }
    }

    fn write_failed(self, e: io::Error) -> End {
        match self {
            Way::Up => End::ServerIo(e),
            Way::Down => End::ClientIo(e),
        }
    }

    fn bad_frame(self, e: FrameError) -> End {
        match self {
            Way::Up => End::ClientProtocol(e.to_string()),
            Way::Down => End::ServerProtocol(e),
        }
    }

    fn closed(self) -> End {
        match self {
            Way::Up => End::ClientClosed,
            Way::Down => End::ServerClosed,
        }
    }
}

/// One pump: reads what `src` has, hands it to `visitor` through the
/// frame splitter, writes what comes out to `dst`, until either side ends.
async fn pump(
    src: &mut (impl AsyncRead + Unpin),
    dst: &mut (impl AsyncWrite + Unpin),
    pump: &mut Pump,
    state: &SessionState,
    visitor: &mut impl FrameVisitor,
    way: Way,
) -> End {
    loop {
        let eof = if pump.splitter.held() {
            // A statement held by the rename barrier: ask again shortly,
            // reading nothing more meanwhile.
            tokio::time::sleep(HOLD_POLL).await;
            false
        } else {
            match pump.fill(src).await {
                Ok(eof) => eof,
                Err(e) => return way.read_failed(e),
            }
        };
        state.touch();
        pump.wanted = match pump.splitter.split(&mut pump.inbuf, visitor, &mut pump.out) {
            Ok(wanted) => wanted,
            Err(e) => return way.bad_frame(e),
        };
        if let Err(e) = pump.flush(dst).await {
            return way.write_failed(e);
        }
        if eof {
            return way.closed();
        }
        if way == Way::Down && state.drained() {
            return End::Drained;
        }
        pump.shrink_if_idle();
    }
}

/// Completes when the session has been quiet for `idle`, or quiet inside
/// a transaction for `in_transaction`.
async fn idle_watch(
    state: &SessionState,
    idle: Option<Duration>,
    in_transaction: Option<Duration>,
) -> End {
    if idle.is_none() && in_transaction.is_none() {
        return std::future::pending().await;
    }
    loop {
        let quiet = state.quiet_for();
        if let Some(limit) = idle.filter(|l| quiet >= *l) {
            return End::IdleTimeout(limit);
        }
        if let Some(limit) = in_transaction.filter(|l| quiet >= *l) {
            if state.is_idle_in_transaction() {
                return End::IdleInTransaction(limit);
            }
        }
        // Until the first limit could be reached; a transaction limit
        // already passed outside a transaction counts from the next byte.
        let wait = [idle, in_transaction]
            .into_iter()
            .flatten()
            .map(|l| if quiet < l { l - quiet } else { l })
            .min()
            .unwrap_or(Duration::from_secs(1));
        tokio::time::sleep(wait).await;
    }
}

/// What the client is told as its session ends (logged here), if anything.
fn farewell(
    end: &End,
    state: &SessionState,
    upstream: &impl std::fmt::Display,
) -> Option<ErrorResponse> {
    match end {
        End::ClientClosed if state.terminated() => {
            debug!("session ended: client terminated");
            None
        }
        End::ClientClosed => {
            info!(
                "client closed the connection without Terminate; closing its upstream connection"
            );
            None
        }
        End::ClientIo(e) => {
            info!(error = %e, "client connection failed; closing its upstream connection");
            None
        }
        End::ClientProtocol(reason) => {
            warn!(%reason, "protocol violation from the client; closing the session");
            Some(ErrorResponse::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("pgshift closed the connection: {reason}"),
            ))
        }
        End::ServerClosed if state.terminated() => {
            debug!("session ended: client terminated");
            None
        }
        End::ServerClosed | End::ServerIo(_) | End::ServerProtocol(_) => {
            server_farewell(end, upstream)
        }
        End::IdleTimeout(_) | End::IdleInTransaction(_) => idle_farewell(end),
        End::Drained | End::ShutdownForced => {
            debug!(
                forced = matches!(end, End::ShutdownForced),
                "closing the session: pgshift is shutting down"
            );
            Some(
                ErrorResponse::fatal(sqlstate::ADMIN_SHUTDOWN, "pgshift is shutting down")
                    .with_hint("Reconnect to continue."),
            )
        }
    }
}

/// The farewell of a session whose upstream connection ended or failed.
/// An upstream that closes or fails is relayed as it is: the client gets
/// whatever the server sent (its own FATAL, if it said one) and then its
/// connection closes, adding nothing — as a direct connection would. Only
/// an invalid message, which pgshift itself detected, gets pgshift's error.
fn server_farewell(end: &End, upstream: &impl std::fmt::Display) -> Option<ErrorResponse> {
    match end {
        End::ServerClosed => {
            warn!(%upstream, "the upstream closed the connection; closing the client's");
            None
        }
        End::ServerIo(e) => {
            warn!(%upstream, error = %e, "the upstream connection failed; closing the client's");
            None
        }
        End::ServerProtocol(e) => {
            warn!(%upstream, error = %e, "protocol violation from the upstream; closing the session");
            Some(ErrorResponse::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "pgshift received an invalid message from the upstream server {upstream}: {e}"
                ),
            ))
        }
        _ => None,
    }
}

/// The farewell of a session closed for idling, in or out of a transaction.
fn idle_farewell(end: &End) -> Option<ErrorResponse> {
    match end {
        End::IdleTimeout(limit) => {
            info!(idle_secs = limit.as_secs(), "closing an idle session");
            Some(ErrorResponse::fatal(
                sqlstate::IDLE_SESSION_TIMEOUT,
                format!(
                    "pgshift closed the session after {} s without traffic (idle_timeout_secs)",
                    limit.as_secs()
                ),
            ))
        }
        End::IdleInTransaction(limit) => {
            info!(
                idle_secs = limit.as_secs(),
                "closing a session idle in a transaction"
            );
            Some(ErrorResponse::fatal(
                sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                format!(
                    "pgshift closed the session after {} s idle inside a transaction (idle_in_transaction_timeout_secs); the transaction was rolled back",
                    limit.as_secs()
                ),
            ).with_hint("Commit or roll back promptly; do not hold a transaction open between requests."))
        }
        _ => None,
    }
}

/// Relays one authenticated session until it ends, over the halves of
/// [`Stream::into_split`] (owned, without a lock, unless TLS).
pub(crate) async fn run(
    shared: &Shared,
    rewriter: &dyn StatementRewriter,
    context: crate::rewrite::SessionContext,
    client: Stream,
    server: Stream,
    span: tracing::Span,
) {
    let timed = {
        let limits = &shared.config.limits;
        limits.idle_timeout.is_some() || limits.idle_in_transaction_timeout.is_some()
    };
    let state = SessionState::in_span(timed, context, span);
    relay(
        shared,
        rewriter,
        &state,
        client.into_split(),
        server.into_split(),
    )
    .await
}

/// The relay over the two connections' halves.
async fn relay<CR, CW, SR, SW>(
    shared: &Shared,
    rewriter: &dyn StatementRewriter,
    state: &SessionState,
    (mut client_r, mut client_w): (CR, CW),
    (mut server_r, mut server_w): (SR, SW),
) where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    let limits = &shared.config.limits;
    let mut up = Pump::new(limits.max_message_size);
    let mut down = Pump::new(limits.max_message_size);

    let end = {
        let mut frontend = FrontendVisitor::new(state, rewriter);
        let mut backend = BackendVisitor::new(state, rewriter);
        let c2s = pump(
            &mut client_r,
            &mut server_w,
            &mut up,
            state,
            &mut frontend,
            Way::Up,
        );
        let s2c = pump(
            &mut server_r,
            &mut client_w,
            &mut down,
            state,
            &mut backend,
            Way::Down,
        );
        let idle = idle_watch(
            state,
            limits.idle_timeout,
            limits.idle_in_transaction_timeout,
        );
        first_end(shared.stage.clone(), state, c2s, s2c, idle).await
    };
    state.abandon_in_flight(rewriter);

    let farewell = state
        .span
        .in_scope(|| farewell(&end, state, &shared.config.upstream));
    if matches!(end, End::ServerClosed | End::ServerIo(_)) {
        take_the_rest(&mut server_r, &mut down).await;
    }
    if matches!(end, End::ClientClosed) {
        until_the_server_closes(&mut server_r, &mut server_w).await;
    }
    // The upstream goes first: a session cut off mid-transaction is rolled
    // back by Postgres when its connection closes.
    drop((server_r, server_w));
    drop(client_r);
    match farewell {
        Some(err) => say_farewell(&mut down, &mut client_w, Some(&err)).await,
        // What the server sent before it went is the client's, all of it.
        None if matches!(end, End::ServerClosed | End::ServerIo(_)) => {
            say_farewell(&mut down, &mut client_w, None).await
        }
        None => {}
    }
}

/// Runs the pumps and the idle watch until one of them ends the session,
/// or the proxy's shutdown stage does. Each is polled only when its own
/// waker fired ([`Wakes`]), in this order: client→server, server→client,
/// the idle watch, the stage.
async fn first_end(
    stage: tokio::sync::watch::Receiver<Stage>,
    state: &SessionState,
    c2s: impl Future<Output = End>,
    s2c: impl Future<Output = End>,
    idle: impl Future<Output = End>,
) -> End {
    let stage = stage_end(stage, state);
    tokio::pin!(c2s, s2c, idle, stage);
    let wakes = Wakes::new(4);
    std::future::poll_fn(|cx| {
        let woken = wakes.take(cx.waker());
        let parts: [PollPart<'_>; 4] = [
            &mut |cx| c2s.as_mut().poll(cx),
            &mut |cx| s2c.as_mut().poll(cx),
            &mut |cx| idle.as_mut().poll(cx),
            &mut |cx| stage.as_mut().poll(cx),
        ];
        for (i, part) in parts.into_iter().enumerate() {
            if woken & (1 << i) != 0 {
                if let Poll::Ready(end) = part(&mut wakes.context(i)) {
                    return Poll::Ready(end);
                }
            }
        }
        Poll::Pending
    })
    .await
}

/// One part of the relay's future, polled with its own context.
type PollPart<'a> = &'a mut dyn FnMut(&mut std::task::Context<'_>) -> Poll<End>;

/// Completes when the proxy's shutdown stage ends the session: at once
/// when closing, or when draining finds it idle (otherwise the
/// server→client pump ends it at its next idle point).
async fn stage_end(mut stage: tokio::sync::watch::Receiver<Stage>, state: &SessionState) -> End {
    loop {
        let current = *stage.borrow_and_update();
        match current {
            Stage::Running => {}
            Stage::Draining => {
                state.start_draining();
                if state.is_idle() {
                    return End::Drained;
                }
            }
            Stage::Closing => return End::ShutdownForced,
        }
        if stage.changed().await.is_err() {
            return End::ShutdownForced;
        }
    }
}

/// An upstream that went away may have said something first (a FATAL
/// `57P01` from `pg_terminate_backend`) that the server→client pump has not
/// read, when the other pump met the closed socket first: it is read to
/// the end (within [`FAREWELL_TIMEOUT`]) and queued for the client as it
/// is, with anything the pump held back.
async fn take_the_rest(server_r: &mut (impl AsyncRead + Unpin), down: &mut Pump) {
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, async {
        loop {
            down.reserve();
            match server_r.read_buf(&mut down.inbuf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    if !down.inbuf.is_empty() {
        down.out.push(down.inbuf.split().freeze());
    }
}

/// A client that left (after its Terminate, or not): the server is told
/// (its end of the connection closes) and its own close awaited, within
/// [`FAREWELL_TIMEOUT`], before the client's socket closes — as directly,
/// where the client sees its connection close when Postgres closes it,
/// which is only once a running statement ends (Postgres reads the
/// Terminate after it). Closing the client's side at once woke a libpq
/// thread still polling the socket another thread had just closed
/// (psycopg's `test_socket_closed`).
async fn until_the_server_closes(
    server_r: &mut (impl AsyncRead + Unpin),
    server_w: &mut (impl AsyncWrite + Unpin),
) {
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, async {
        let _ = server_w.shutdown().await;
        let mut sink = [0u8; 1024];
        while let Ok(1..) = server_r.read(&mut sink).await {}
    })
    .await;
}

/// Hands the client what is still queued for it and, at a frame boundary,
/// the closing error if there is one, then closes its side; gives up after
/// [`FAREWELL_TIMEOUT`].
async fn say_farewell(
    down: &mut Pump,
    client_w: &mut (impl AsyncWrite + Unpin),
    err: Option<&ErrorResponse>,
) {
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, async {
        down.flush(client_w).await?;
        // Only at a frame boundary can a frame of our own follow.
        let at_boundary = down.out.is_empty() && down.splitter.at_frame_boundary();
        if let Some(err) = err.filter(|_| at_boundary) {
            client_w.write_all(&err.encode()).await?;
        }
        client_w.shutdown().await
    })
    .await;
}
