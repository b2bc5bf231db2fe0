//! The authentication exchange, relayed before the session's relay starts:
//! nothing a client sends is decoded as SQL until the server has said
//! `AuthenticationOk`.
//!
//! The server's messages are read one frame at a time (never past
//! `AuthenticationOk`, so what follows it — ParameterStatus, BackendKeyData,
//! ReadyForQuery — reaches the relay whole) and passed on. Only when the
//! server asks for a response (a password, a SASL or GSS step) is one
//! client message read: it must be a `PasswordMessage`-family message of at
//! most Postgres' own limit on an authentication token, or a Terminate;
//! anything else ends the session with Postgres' own answer to it (`08P01`
//! `expected password response`), without being looked at further. Client
//! bytes sent ahead of `AuthenticationOk` (a pipelining client on trust
//! authentication) stay unread in the socket for the relay.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use tracing::warn;

use super::framing::HEADER_LEN;
use super::scram::{self, Bridge, BridgeError, ClientFirst, NoVerifier, Verifier, Verifiers};
use super::wire::{encode_frame, split_cstr, sqlstate, ErrorResponse};

/// Postgres' `PG_MAX_AUTH_TOKEN_LENGTH`: the largest authentication
/// message body it reads.
pub const MAX_AUTH_MESSAGE: usize = 65_535;
/// The largest server message accepted before `AuthenticationOk`.
const MAX_SERVER_MESSAGE: usize = 1 << 20;

/// How the exchange ended other than with `AuthenticationOk`.
#[derive(Debug)]
pub enum AuthEnd {
    /// pgshift refused: this error is for the client.
    Refused(ErrorResponse),
    /// The server refused (its ErrorResponse was passed on) or closed.
    ServerClosed,
    /// The client hung up or gave up (Terminate).
    ClientClosed,
    /// The client broke the protocol: this error is for it.
    ClientProtocol(ErrorResponse),
    /// The server broke the protocol.
    ServerProtocol(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for AuthEnd {
    fn from(e: std::io::Error) -> Self {
        AuthEnd::Io(e)
    }
}

/// Relays the exchange until the server says `AuthenticationOk`.
/// SCRAM-SHA-256-PLUS is always taken off the mechanisms the client is
/// offered: its channel binding names the client's own connection — to
/// pgshift, in plain TCP or TLS pgshift terminates — never the server's,
/// so the server could not match it (Postgres itself offers it to none but
/// its own TLS clients; node-postgres picks it whenever it is offered).
///
/// With `across` (the upstream session is TLS), a SCRAM exchange whose
/// client could bind a channel is carried across by [`super::scram`].
pub async fn exchange<C, S>(
    client: &mut C,
    server: &mut S,
    across: Option<&Across<'_>>,
) -> Result<(), AuthEnd>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let frame = match read_frame(server, MAX_SERVER_MESSAGE).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err(AuthEnd::ServerClosed),
            Err(FrameTooLong(len)) => {
                return Err(AuthEnd::ServerProtocol(format!(
                    "a {len}-byte message before authentication completed"
                )))
            }
        };
        let frame = match (frame[0], auth_code(&frame)) {
            (b'R', Some(SASL)) if offers_channel_binding(&frame) => without_channel_binding(&frame),
            _ => frame,
        };
        client.write_all(&frame).await?;
        match frame[0] {
            b'R' => match auth_code(&frame) {
                Some(0) => return Ok(()),
                Some(SASL) => sasl(client, server, across).await?,
                Some(code) if needs_response(code) => {
                    let response = read_response(client).await?;
                    server.write_all(&response).await?;
                }
                Some(_) => {}
                None => {
                    return Err(AuthEnd::ServerProtocol(
                        "a short Authentication message".into(),
                    ))
                }
            },
            b'E' => return Err(AuthEnd::ServerClosed),
            // NegotiateProtocolVersion, notices.
            _ => {}
        }
    }
}

/// Reads the client's one response. Its tag is checked before its body is
/// read.
async fn read_response<C>(client: &mut C) -> Result<BytesMut, AuthEnd>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = [0u8; HEADER_LEN];
    if client.read_exact(&mut head).await.is_err() {
        return Err(AuthEnd::ClientClosed);
    }
    match head[0] {
        b'p' => {}
        b'X' => return Err(AuthEnd::ClientClosed),
        tag => {
            return Err(AuthEnd::ClientProtocol(ErrorResponse::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "expected password response, got message type {tag}: pgshift relays nothing but the authentication exchange until the server has accepted the client; send the password (or SASL) message the server asked for"
                ),
            )))
        }
    }
    let frame = match read_body(client, head, MAX_AUTH_MESSAGE).await {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err(AuthEnd::ClientClosed),
        Err(FrameTooLong(len)) => {
            return Err(AuthEnd::ClientProtocol(ErrorResponse::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!("invalid message length: a {len}-byte authentication message (pgshift accepts at most {MAX_AUTH_MESSAGE} bytes, as Postgres does)"),
            )))
        }
    };
    Ok(frame)
}

/// What carrying a SCRAM exchange across needs: the role, the verifiers
/// read lately, and the configuration to read one with.
pub struct Across<'a> {
    pub role: &'a str,
    pub verifiers: &'a Verifiers,
    pub config: &'a crate::config::Config,
}

impl Across<'_> {
    /// The role's verifier: a recent one, unless `fresh`; `None` when the
    /// role has no SCRAM secret.
    async fn verifier(&self, fresh: bool) -> Result<Option<Verifier>, AuthEnd> {
        if let Some(v) = self.verifiers.cached(self.role).filter(|_| !fresh) {
            return Ok(Some(v));
        }
        match scram::fetch(self.config, self.role).await {
            Ok(v) => {
                self.verifiers.keep(self.role, &v);
                Ok(Some(v))
            }
            Err(NoVerifier::NotScram) => Ok(None),
            Err(NoVerifier::Unreadable(reason)) => {
                warn!(role = self.role, %reason, "cannot read a SCRAM verifier");
                Err(AuthEnd::Refused(ErrorResponse::fatal(
                    sqlstate::INVALID_AUTHORIZATION,
                    format!("pgshift cannot complete SCRAM authentication for a client that supports channel binding: the upstream session is TLS, so Postgres refuses the client's \"could bind\" flag, and pgshift could not read the role's SCRAM verifier to carry the exchange across ({reason})"),
                ).with_hint("Let pgshift's control role read pg_catalog.pg_authid (a superuser), or connect with channel_binding=disable, or to pgshift without TLS.")))
            }
        }
    }

    /// Postgres' own answer to a wrong password.
    fn wrong_password(&self) -> AuthEnd {
        self.verifiers.forget(self.role);
        AuthEnd::Refused(ErrorResponse::fatal(
            sqlstate::INVALID_PASSWORD,
            format!("password authentication failed for user \"{}\"", self.role),
        ))
    }
}

/// The SASL exchange: relayed as it is, unless the client said it could
/// bind a channel (GS2 `y`) to a server reached over TLS.
async fn sasl<C, S>(
    client: &mut C,
    server: &mut S,
    across: Option<&Across<'_>>,
) -> Result<(), AuthEnd>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let response = read_response(client).await?;
    let Some(across) = across else {
        return Ok(server.write_all(&response).await?);
    };
    let first = initial_response(&response[HEADER_LEN..])
        .filter(|(mechanism, _)| *mechanism == b"SCRAM-SHA-256")
        .and_then(|(_, data)| ClientFirst::parse(data))
        .filter(ClientFirst::binds_if_offered);
    let verifier = match first {
        Some(_) => across.verifier(false).await?,
        None => None,
    };
    match (first, verifier) {
        (Some(first), Some(verifier)) => {
            carry_across(client, server, across, &first, verifier).await
        }
        // No SCRAM secret (no such role, or another kind of password):
        // the server answers as it answers anyone, with nothing told by
        // pgshift about whether the role exists.
        _ => Ok(server.write_all(&response).await?),
    }
}

/// SASLInitialResponse's mechanism and data.
fn initial_response(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (mechanism, rest) = split_cstr(body)?;
    let (len, data) = rest.split_first_chunk::<4>()?;
    (usize::try_from(i32::from_be_bytes(*len)).ok() == Some(data.len()))
        .then_some((mechanism, data))
}

/// The rest of a SCRAM exchange, carried across (see [`super::scram`]).
async fn carry_across<C, S>(
    client: &mut C,
    server: &mut S,
    across: &Across<'_>,
    first: &ClientFirst<'_>,
    mut verifier: Verifier,
) -> Result<(), AuthEnd>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let unbound = format!("{}{}", first.unbound_gs2(), first.bare);
    let len = (unbound.len() as i32).to_be_bytes();
    let initial = encode_frame(b'p', &[b"SCRAM-SHA-256\0", &len, unbound.as_bytes()]);
    server.write_all(&initial).await?;
    let challenge = sasl_step(client, server, SASL_CONTINUE).await?;
    let server_first = std::str::from_utf8(&challenge[HEADER_LEN + 4..])
        .map_err(|_| AuthEnd::ServerProtocol("a SCRAM challenge that is not UTF-8".into()))?;
    // A password changed since the verifier was read: read it again.
    if scram::salt_and_iterations(server_first) != Some((&verifier.salt, verifier.iterations)) {
        verifier = across
            .verifier(true)
            .await?
            .ok_or_else(|| across.wrong_password())?;
    }
    client.write_all(&challenge).await?;
    let response = read_response(client).await?;
    let bridge = Bridge {
        verifier: &verifier,
        client_first: first,
        server_first,
    };
    let done = match bridge.rebind(&response[HEADER_LEN..]) {
        Ok(done) => done,
        Err(BridgeError::WrongProof) => return Err(across.wrong_password()),
        Err(BridgeError::Malformed) => {
            return Err(AuthEnd::ClientProtocol(ErrorResponse::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "malformed SCRAM message: pgshift expected the client's final SCRAM-SHA-256 message (c=, r=, p=) for the header it sent first",
            )))
        }
    };
    server
        .write_all(&encode_frame(b'p', &[done.to_server.as_bytes()]))
        .await?;
    let outcome = sasl_step(client, server, SASL_FINAL).await?;
    if &outcome[HEADER_LEN + 4..] != done.server_says.as_bytes() {
        return Err(AuthEnd::ServerProtocol(
            "the server's SCRAM signature does not match the role's verifier".into(),
        ));
    }
    let code = SASL_FINAL.to_be_bytes();
    let signature = encode_frame(b'R', &[&code, done.to_client.as_bytes()]);
    client.write_all(&signature).await?;
    Ok(())
}

/// The server's next SASL message, which must be Authentication `code`;
/// an ErrorResponse is passed to the client and ends the exchange.
async fn sasl_step<C, S>(client: &mut C, server: &mut S, code: u32) -> Result<BytesMut, AuthEnd>
where
    C: AsyncWrite + Unpin,
    S: AsyncRead + Unpin,
{
    match read_frame(server, MAX_SERVER_MESSAGE).await {
        Ok(Some(frame)) if frame[0] == b'R' && auth_code(&frame) == Some(code) => Ok(frame),
        Ok(Some(frame)) if frame[0] == b'E' => {
            client.write_all(&frame).await?;
            Err(AuthEnd::ServerClosed)
        }
        Ok(None) => Err(AuthEnd::ServerClosed),
        Ok(Some(frame)) => Err(AuthEnd::ServerProtocol(format!(
            "message type {} in the middle of a SCRAM exchange",
            frame[0]
        ))),
        Err(FrameTooLong(len)) => Err(AuthEnd::ServerProtocol(format!(
            "a {len}-byte message in the middle of a SCRAM exchange"
        ))),
    }
}

/// AuthenticationSASL: the server lists its SASL mechanisms.
const SASL: u32 = 10;
/// AuthenticationSASLContinue: the server's challenge.
const SASL_CONTINUE: u32 = 11;
/// AuthenticationSASLFinal: the server's signature.
const SASL_FINAL: u32 = 12;
/// The mechanism with channel binding.
const SCRAM_PLUS: &[u8] = b"SCRAM-SHA-256-PLUS";

/// An AuthenticationSASL frame lists SCRAM-SHA-256-PLUS.
fn offers_channel_binding(frame: &[u8]) -> bool {
    let list = frame.get(HEADER_LEN + 4..).unwrap_or_default();
    list.split(|b| *b == 0).any(|n| n == SCRAM_PLUS)
}

/// An AuthenticationSASL frame without SCRAM-SHA-256-PLUS.
fn without_channel_binding(frame: &[u8]) -> BytesMut {
    let list = frame.get(HEADER_LEN + 4..).unwrap_or_default();
    let mut names = Vec::with_capacity(list.len());
    for name in list
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty() && *n != SCRAM_PLUS)
    {
        names.extend_from_slice(name);
        names.push(0);
    }
    names.push(0);
    let frame = encode_frame(b'R', &[&SASL.to_be_bytes(), &names]);
    BytesMut::from(&frame[..])
}

/// The code of an Authentication message.
fn auth_code(frame: &[u8]) -> Option<u32> {
    let bytes = frame.get(HEADER_LEN..HEADER_LEN + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// Authentication requests the client must answer: cleartext (3), MD5 (5),
/// GSS (7), GSS continue (8), SSPI (9), SASL (10), SASL continue (11).
fn needs_response(code: u32) -> bool {
    matches!(code, 3 | 5 | 7 | 8 | 9 | 10 | 11)
}

/// A frame's declared length is over the limit.
struct FrameTooLong(usize);

/// Reads exactly one frame (tag, length, body); `None` at end of stream.
async fn read_frame<R: AsyncRead + Unpin>(
    src: &mut R,
    limit: usize,
) -> Result<Option<BytesMut>, FrameTooLong> {
    let mut head = [0u8; HEADER_LEN];
    if src.read_exact(&mut head).await.is_err() {
        return Ok(None);
    }
    read_body(src, head, limit).await
}

/// Reads the body of the frame whose header is `head`.
async fn read_body<R: AsyncRead + Unpin>(
    src: &mut R,
    head: [u8; HEADER_LEN],
    limit: usize,
) -> Result<Option<BytesMut>, FrameTooLong> {
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len < 4 || len - 4 > limit {
        return Err(FrameTooLong(len));
    }
    let mut frame = BytesMut::with_capacity(1 + len);
    frame.extend_from_slice(&head);
    frame.resize(1 + len, 0);
    if src.read_exact(&mut frame[HEADER_LEN..]).await.is_err() {
        return Ok(None);
    }
    Ok(Some(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    async fn run(server_says: Vec<u8>, client_says: Vec<u8>) -> (Result<(), AuthEnd>, Vec<u8>) {
        let (mut client, mut client_peer) = tokio::io::duplex(1 << 20);
        let (mut server, mut server_peer) = tokio::io::duplex(1 << 20);
        client_peer.write_all(&client_says).await.unwrap();
        server_peer.write_all(&server_says).await.unwrap();
        let result = exchange(&mut client, &mut server, None).await;
        drop((client, server_peer));
        let mut to_client = Vec::new();
        client_peer.read_to_end(&mut to_client).await.unwrap();
        (result, to_client)
    }

    #[tokio::test]
    async fn a_query_instead_of_a_password_is_refused_unread() {
        let ask = frame(b'R', &10u32.to_be_bytes());
        let query = frame(b'Q', &[b'x'; 200_000]);
        let (result, seen) = run(ask.clone(), query).await;
        assert_eq!(seen, ask, "the client saw the SASL request");
        match result {
            Err(AuthEnd::ClientProtocol(e)) => {
                let text = String::from_utf8_lossy(&e.encode()).into_owned();
                assert!(text.contains("08P01"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_exchange_ends_at_authentication_ok_and_reads_no_further() {
        // MD5 with its salt, then Ok, then what the relay must see.
        let says = {
            let mut s = frame(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]);
            s.extend(frame(b'R', &0u32.to_be_bytes()));
            s.extend(frame(b'Z', b"I"));
            s
        };
        let password = frame(b'p', b"md5abc\0");
        let (result, seen) = run(says.clone(), password).await;
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(
            seen,
            says[..says.len() - 6],
            "ReadyForQuery is left for the relay"
        );
    }

    #[test]
    fn channel_binding_is_taken_off_the_mechanisms() {
        let offer = frame(b'R', b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0");
        let kept = without_channel_binding(&offer);
        assert_eq!(&kept[..], &frame(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0")[..]);
    }

    #[tokio::test]
    async fn an_oversized_authentication_message_is_refused() {
        let ask = frame(b'R', &3u32.to_be_bytes());
        let mut huge = vec![b'p'];
        huge.extend_from_slice(&(64u32 << 20).to_be_bytes());
        let (result, _) = run(ask, huge).await;
        assert!(
            matches!(result, Err(AuthEnd::ClientProtocol(_))),
            "{result:?}"
        );
    }
}
