//! The floor of a relay's cost: a TCP relay that only moves bytes, nothing
//! of pgshift's (no framing, no visitors, no metrics), built two ways, to
//! measure what the event loop alone costs per round trip beside pgshift
//! and PgBouncer (docs/benchmarks.md, "The event loop's floor"):
//!
//! - `tokio`: one current-thread runtime, a task per direction of each
//!   session (so a wake-up polls only the side that is ready), each a
//!   read-then-write loop over owned halves;
//! - `mio`: one thread, one `mio::Poll`, each readable socket drained into
//!   its peer without blocking (what the peer cannot take yet is kept
//!   until it is writable): an event loop with no tasks, wakers or budget.
//!
//! ```sh
//! cargo run --release --example relay_floor -- tokio 127.0.0.1:6480 127.0.0.1:5432
//! ```
//!
//! A measuring tool, not a product: no TLS, no limits, no timeouts, and the
//! upstream connect blocks the loop.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;

use mio::Token;

const BUF: usize = 16 * 1024;

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = || io::Error::other("usage: relay_floor tokio|mio LISTEN UPSTREAM");
    let [_, mode, listen, upstream] = args.as_slice() else {
        return Err(usage());
    };
    let listen: SocketAddr = listen.parse().map_err(|_| usage())?;
    let upstream: SocketAddr = upstream.parse().map_err(|_| usage())?;
    match mode.as_str() {
        "tokio" => with_tokio(listen, upstream),
        "mio" => with_mio(listen, upstream),
        _ => Err(usage()),
    }
}

fn with_tokio(listen: SocketAddr, upstream: SocketAddr) -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        loop {
            let (client, _) = listener.accept().await?;
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (client_r, client_w) = client.into_split();
            let (server_r, server_w) = server.into_split();
            tokio::spawn(copy(client_r, server_w));
            tokio::spawn(copy(server_r, client_w));
        }
    })
}

async fn copy(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; BUF];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// One socket of a session in the mio loop.
struct Side {
    socket: mio::net::TcpStream,
    peer: Token,
    /// Bytes for this socket that it could not take yet.
    pending: Vec<u8>,
}

fn with_mio(listen: SocketAddr, upstream: SocketAddr) -> io::Result<()> {
    use mio::{Events, Interest, Poll};
    const LISTENER: Token = Token(0);
    let mut poll = Poll::new()?;
    let mut listener = mio::net::TcpListener::bind(listen)?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut sides: HashMap<Token, Side> = HashMap::new();
    let mut next = 1;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; BUF];
    loop {
        poll.poll(&mut events, None)?;
        for event in events.iter() {
            let token = event.token();
            if token == LISTENER {
                while let Ok((client, _)) = listener.accept() {
                    let Ok(server) = std::net::TcpStream::connect(upstream) else {
                        continue;
                    };
                    server.set_nonblocking(true)?;
                    let server = mio::net::TcpStream::from_std(server);
                    let (c, s) = (Token(next), Token(next + 1));
                    next += 2;
                    for (token, peer, mut socket) in [(c, s, client), (s, c, server)] {
                        socket.set_nodelay(true)?;
                        let both = Interest::READABLE | Interest::WRITABLE;
                        poll.registry().register(&mut socket, token, both)?;
                        let pending = Vec::new();
                        sides.insert(
                            token,
                            Side {
                                socket,
                                peer,
                                pending,
                            },
                        );
                    }
                }
                continue;
            }
            let mut open = true;
            if event.is_writable() {
                open &= flush(&mut sides, token);
            }
            if event.is_readable() || event.is_read_closed() {
                open &= pump(&mut sides, token, &mut buf);
            }
            if !open {
                close(&mut sides, &poll, token);
            }
        }
    }
}

/// Reads what `token`'s socket has and hands it to its peer; false when
/// the session is over.
fn pump(sides: &mut HashMap<Token, Side>, token: Token, buf: &mut [u8]) -> bool {
    loop {
        let Some(side) = sides.get_mut(&token) else {
            return false;
        };
        let peer = side.peer;
        let n = match side.socket.read(buf) {
            Ok(0) => return false,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        };
        let Some(to) = sides.get_mut(&peer) else {
            return false;
        };
        to.pending.extend_from_slice(&buf[..n]);
        if !flush(sides, peer) {
            return false;
        }
        // (A short read drained the socket: the next edge says when more
        // comes.)
        if n < buf.len() {
            return true;
        }
    }
}

/// Writes what `token`'s socket has pending; false when it failed.
fn flush(sides: &mut HashMap<Token, Side>, token: Token) -> bool {
    let Some(side) = sides.get_mut(&token) else {
        return false;
    };
    while !side.pending.is_empty() {
        match side.socket.write(&side.pending) {
            Ok(0) => return false,
            Ok(n) => {
                side.pending.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

fn close(sides: &mut HashMap<Token, Side>, poll: &mio::Poll, token: Token) {
    if let Some(mut side) = sides.remove(&token) {
        let _ = poll.registry().deregister(&mut side.socket);
        if let Some(mut peer) = sides.remove(&side.peer) {
            let _ = poll.registry().deregister(&mut peer.socket);
        }
    }
}
