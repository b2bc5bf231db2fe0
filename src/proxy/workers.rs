//! Session workers (half the cores by default). Each worker thread runs its own
//! single-threaded tokio runtime; the acceptor hands every new connection to
//! the next worker in turn, and the session stays on that thread for its
//! whole life. The relay's wake-ups (client readable → write to server →
//! server readable → write to client) therefore never cross threads: no
//! work-stealing, no futex hand-offs, just one epoll loop per core, the way
//! PgBouncer runs one per process.

use std::sync::Arc;

use tokio::net::{TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{error, Span};

use super::stream::Stream;
use super::{connection, Shared};

/// An accepted client connection, detached from the acceptor's runtime.
pub(crate) enum Accepted {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Accepted {
    /// Detaches a TCP connection from the runtime that accepted it.
    pub fn tcp(socket: TcpStream) -> std::io::Result<Accepted> {
        socket.into_std().map(Accepted::Tcp)
    }

    /// Detaches a unix-socket connection.
    pub fn unix(socket: UnixStream) -> std::io::Result<Accepted> {
        socket.into_std().map(Accepted::Unix)
    }

    /// Registers the connection with the current (worker) runtime.
    fn register(self) -> std::io::Result<Stream> {
        match self {
            Accepted::Tcp(socket) => {
                let socket = TcpStream::from_std(socket)?;
                let _ = socket.set_nodelay(true);
                Ok(Stream::Plain(socket))
            }
            Accepted::Unix(socket) => UnixStream::from_std(socket).map(Stream::Unix),
        }
    }
}

/// A connection on its way to a worker.
struct Job {
    socket: Accepted,
    span: Span,
    alive: mpsc::Sender<()>,
}

/// The worker threads and the round-robin hand-off to them.
pub(crate) struct Workers {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    next: usize,
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub fn start(count: usize, shared: &Arc<Shared>) -> std::io::Result<Workers> {
        let mut senders = Vec::new();
        for index in 0..count.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            // I/O and timers only: signals and child processes are the
            // main runtime's business, and their drivers cost a little on
            // every park.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()?;
            let shared = Arc::clone(shared);
            std::thread::Builder::new()
                .name(format!("pgshift-worker-{index}"))
                .spawn(move || runtime.block_on(serve_jobs(rx, shared)))?;
            senders.push(tx);
        }
        Ok(Workers { senders, next: 0 })
    }

    /// Hands an accepted connection to the next worker.
    pub fn dispatch(
        &mut self,
        socket: std::io::Result<Accepted>,
        span: Span,
        alive: mpsc::Sender<()>,
    ) {
        let socket = match socket {
            Ok(socket) => socket,
            Err(e) => {
                error!(error = %e, "cannot hand a connection to a worker");
                return;
            }
        };
        let worker = self.next % self.senders.len();
        self.next = self.next.wrapping_add(1);
        if self.senders[worker]
            .send(Job {
                socket,
                span,
                alive,
            })
            .is_err()
        {
            error!(worker, "a worker thread is gone; connection dropped");
        }
    }
}

/// A worker's loop: serve each job's connection until the acceptor is gone
/// and every session of this worker has ended.
async fn serve_jobs(mut jobs: mpsc::UnboundedReceiver<Job>, shared: Arc<Shared>) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(Job { socket, span, alive }) = job else { break };
                match socket.register() {
                    Ok(socket) => {
                        // (The session enters its span itself: on each
                        // wake-up only while it starts.)
                        sessions.spawn(connection::serve(Arc::clone(&shared), socket, alive, span));
                    }
                    Err(e) => error!(error = %e, "cannot register a connection with the worker"),
                }
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    while sessions.join_next().await.is_some() {}
}
