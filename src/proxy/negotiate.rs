//! The startup negotiation of one client connection, before anything is
//! relayed: encryption requests (SSLRequest answered `S` with a TLS
//! handshake when a certificate is configured, `N` otherwise;
//! GSSENCRequest `N`), PostgreSQL 17's direct TLS (a ClientHello first,
//! ALPN `postgresql` required; TCP only), then the StartupMessage or
//! CancelRequest.
//! Only startup packets are decoded here, within one deadline.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::stream::Stream;
use super::tls::{ClientTlsState, ALPN};
use super::wire::{self, StartupError, StartupPacket};

/// How many SSLRequest/GSSENCRequest a client may send before its startup
/// message (libpq sends at most one of each).
const MAX_ENCRYPTION_REQUESTS: usize = 2;
/// The first byte of a TLS handshake record (a direct-TLS ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// How a negotiation ended.
pub enum Negotiated {
    /// A StartupMessage or CancelRequest, on this (possibly TLS) stream.
    Packet(Stream, StartupPacket),
    /// The client went away, or its TLS handshake failed (nothing more
    /// can be said to it).
    Closed,
    /// Something to tell the client before closing.
    Refused(Stream, Refusal),
}

/// Why a negotiation was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Protocol(#[from] StartupError),
    #[error("no startup message within startup_timeout_ms")]
    Timeout,
}

/// Reads startup packets from `client` until a StartupMessage or
/// CancelRequest arrives, by `deadline`. A unix-socket client is never
/// offered TLS (SSLRequest answered `N`), as Postgres.
pub async fn negotiate(tls: &ClientTlsState, client: Stream, deadline: Instant) -> Negotiated {
    let mut stream = match client {
        Stream::Plain(tcp) => match direct_tls(tls, tcp, deadline).await {
            Some(stream) => stream,
            None => return Negotiated::Closed,
        },
        other => other,
    };
    let mut encryption_requests = 0;
    loop {
        let packet = match tokio::time::timeout_at(deadline, read_packet(&mut stream)).await {
            Ok(Ok(Some(packet))) => packet,
            Ok(Ok(None)) => return Negotiated::Closed,
            Ok(Err(ReadError::Io(e))) => {
                debug!(error = %e, "client connection failed during startup");
                return Negotiated::Closed;
            }
            // As Postgres does (a COMMERROR: logged, not sent): a length
            // word that cannot start a packet is not the protocol at all —
            // node-postgres' `connect(); end()` sends its Terminate first.
            Ok(Err(ReadError::Protocol(e @ StartupError::BadLength(_)))) => {
                warn!(error = %e, "closed a connection whose startup packet has an invalid length");
                return Negotiated::Closed;
            }
            Ok(Err(ReadError::Protocol(e))) => return Negotiated::Refused(stream, e.into()),
            Err(_) => return Negotiated::Refused(stream, Refusal::Timeout),
        };
        let request = match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest => packet,
            other => return Negotiated::Packet(stream, other),
        };
        encryption_requests += 1;
        if encryption_requests > MAX_ENCRYPTION_REQUESTS || stream.is_tls() {
            let e = StartupError::Malformed("too many encryption requests");
            return Negotiated::Refused(stream, e.into());
        }
        let acceptor = match request {
            StartupPacket::SslRequest => tls.acceptor(),
            _ => None,
        };
        stream = match (acceptor, stream) {
            (Some(acceptor), Stream::Plain(mut tcp)) => {
                if tcp.write_all(b"S").await.is_err() {
                    return Negotiated::Closed;
                }
                match handshake(&acceptor, tcp, deadline, false).await {
                    Some(tls) => tls,
                    None => return Negotiated::Closed,
                }
            }
            (_, mut plain) => {
                if plain.write_all(wire::NO_ENCRYPTION).await.is_err() {
                    return Negotiated::Closed;
                }
                plain
            }
        };
    }
}

/// A client that starts with a TLS ClientHello (PostgreSQL 17's direct
/// TLS) gets its handshake here; any other stays plain. `None`: closed.
async fn direct_tls(tls: &ClientTlsState, tcp: TcpStream, deadline: Instant) -> Option<Stream> {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout_at(deadline, tcp.peek(&mut first)).await;
    if !matches!(peeked, Ok(Ok(1))) || first[0] != TLS_HANDSHAKE {
        // (A timeout or an error is met again by the first read.)
        return Some(Stream::Plain(tcp));
    }
    let Some(acceptor) = tls.acceptor() else {
        debug!("a client began with TLS, and pgshift has no certificate: closed");
        return None;
    };
    handshake(&acceptor, tcp, deadline, true).await
}

/// The TLS handshake; `direct` ones must have agreed on ALPN `postgresql`.
async fn handshake(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    deadline: Instant,
    direct: bool,
) -> Option<Stream> {
    let tls = match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(error = %e, "a client's TLS handshake failed");
            return None;
        }
        Err(_) => return None,
    };
    if direct && tls.get_ref().1.alpn_protocol() != Some(ALPN) {
        debug!("a direct-TLS client did not agree on ALPN postgresql: closed");
        return None;
    }
    Some(Stream::ClientTls(Box::new(tls)))
}

enum ReadError {
    Io(std::io::Error),
    Protocol(StartupError),
}

/// Reads one startup packet; `None` when the client hung up first.
async fn read_packet(stream: &mut Stream) -> Result<Option<StartupPacket>, ReadError> {
    let mut head = [0u8; 4];
    match stream.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(ReadError::Io(e)),
    }
    let len = wire::startup_packet_len(head).map_err(ReadError::Protocol)?;
    let mut packet = BytesMut::with_capacity(len);
    packet.extend_from_slice(&head);
    packet.resize(len, 0);
    stream
        .read_exact(&mut packet[4..])
        .await
        .map_err(ReadError::Io)?;
    wire::parse_startup_packet(packet.freeze())
        .map(Some)
        .map_err(ReadError::Protocol)
}
