//! PostgreSQL v3 wire-protocol vocabulary: startup packet codes, message tags
//! named per direction, the startup packet parser, and the `ErrorResponse`
//! frames pgshift writes itself.
//!
//! Tags collide between directions (`D` is Describe from a client and DataRow
//! from a server), so every name lookup takes a [`Direction`].

use bytes::{BufMut, Bytes, BytesMut};

/// `SSLRequest` startup code.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;
/// `GSSENCRequest` startup code.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// `CancelRequest` startup code.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;
/// Protocol major version pgshift speaks (any minor is passed on; the server
/// negotiates it with `NegotiateProtocolVersion`).
pub const PROTOCOL_MAJOR: u32 = 3;
/// Postgres' own limit on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// A CancelRequest carries at least a 4-byte pid and a 4-byte key; protocol
/// 3.2 allows keys of up to 256 bytes.
pub const MAX_CANCEL_PACKET: usize = 8 + 4 + 256;

/// Frontend tags pgshift acts on.
pub mod frontend {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const SYNC: u8 = b'S';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const CLOSE: u8 = b'C';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const TERMINATE: u8 = b'X';
}

/// Backend tags pgshift acts on.
pub mod backend {
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const BACKEND_KEY_DATA: u8 = b'K';
}

/// Which peer sent a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server.
    Frontend,
    /// Server to client.
    Backend,
}

/// The protocol name of a message, for logs and errors.
pub fn message_name(direction: Direction, tag: u8) -> &'static str {
    match direction {
        Direction::Frontend => match tag {
            b'Q' => "Query",
            b'P' => "Parse",
            b'B' => "Bind",
            b'D' => "Describe",
            b'E' => "Execute",
            b'C' => "Close",
            b'S' => "Sync",
            b'H' => "Flush",
            b'F' => "FunctionCall",
            b'd' => "CopyData",
            b'c' => "CopyDone",
            b'f' => "CopyFail",
            b'p' => "PasswordMessage",
            b'X' => "Terminate",
            _ => "unknown frontend message",
        },
        Direction::Backend => match tag {
            b'R' => "Authentication",
            b'K' => "BackendKeyData",
            b'S' => "ParameterStatus",
            b'Z' => "ReadyForQuery",
            b'T' => "RowDescription",
            b'D' => "DataRow",
            b'C' => "CommandComplete",
            b'E' => "ErrorResponse",
            b'N' => "NoticeResponse",
            b'A' => "NotificationResponse",
            b'1' => "ParseComplete",
            b'2' => "BindComplete",
            b'3' => "CloseComplete",
            b'n' => "NoData",
            b's' => "PortalSuspended",
            b't' => "ParameterDescription",
            b'I' => "EmptyQueryResponse",
            b'G' => "CopyInResponse",
            b'H' => "CopyOutResponse",
            b'W' => "CopyBothResponse",
            b'd' => "CopyData",
            b'c' => "CopyDone",
            b'V' => "FunctionCallResponse",
            b'v' => "NegotiateProtocolVersion",
            _ => "unknown backend message",
        },
    }
}

/// SQLSTATE codes pgshift answers with.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const CANNOT_CONNECT: &str = "08001";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
}

/// Severity of an error pgshift reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// An `ErrorResponse` written by pgshift itself, in the server's format, so
/// every driver shows it the way it shows Postgres' own errors.
#[derive(Debug, Clone)]
pub struct ErrorResponse {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// The `R` field: the server routine (see `Refusal::routine`).
    pub routine: Option<&'static str>,
}

impl ErrorResponse {
    /// A FATAL error: the connection is closed after it.
    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        ErrorResponse {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
            routine: None,
        }
    }

    /// Adds a HINT field.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a DETAIL field.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The wire frame (`E`, length, fields, terminator).
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64 + self.message.len());
        out.put_u8(backend::ERROR_RESPONSE);
        out.put_u32(0); // patched below
        let severity = self.severity.as_str();
        put_field(&mut out, b'S', severity);
        put_field(&mut out, b'V', severity);
        put_field(&mut out, b'C', self.code);
        put_field(&mut out, b'M', &self.message);
        if let Some(detail) = &self.detail {
            put_field(&mut out, b'D', detail);
        }
        if let Some(hint) = &self.hint {
            put_field(&mut out, b'H', hint);
        }
        if let Some(routine) = self.routine {
            put_field(&mut out, b'R', routine);
        }
        out.put_u8(0);
        let len = (out.len() - 1) as u32;
        out[1..5].copy_from_slice(&len.to_be_bytes());
        out.freeze()
    }
}

fn put_field(out: &mut BytesMut, kind: u8, value: &str) {
    out.put_u8(kind);
    // A NUL inside a field would end it early on the client; drop any.
    out.extend(value.bytes().filter(|b| *b != 0));
    out.put_u8(0);
}

/// What a client opened its connection with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// `SSLRequest`: answered `N` (no TLS yet).
    SslRequest,
    /// `GSSENCRequest`: answered `N`.
    GssEncRequest,
    /// `CancelRequest`: forwarded as is to the upstream.
    CancelRequest(Bytes),
    /// `StartupMessage`: forwarded as is to the upstream.
    Startup {
        /// The whole packet, length word included.
        raw: Bytes,
        params: StartupParams,
    },
}

/// The startup parameters pgshift logs; all of them are passed on unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupParams {
    pub user: Option<String>,
    pub database: Option<String>,
    pub application_name: Option<String>,
    /// A `search_path` given as a startup parameter.
    pub search_path: Option<String>,
    /// The `options` parameter (`-c name=value …`).
    pub options: Option<String>,
    /// `pgshift.shape` given as a startup parameter of its own.
    pub shape: Option<String>,
    /// `pgshift.ddl` given as a startup parameter of its own.
    pub ddl: Option<String>,
}

/// Why a startup packet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid startup packet length {0} (must be 8..={MAX_STARTUP_PACKET})")]
    BadLength(u32),
    #[error("unsupported frontend protocol {major}.{minor}: pgshift speaks protocol 3")]
    UnsupportedProtocol { major: u32, minor: u32 },
    #[error("unknown startup request code {0}")]
    UnknownCode(u32),
    #[error("malformed startup packet: {0}")]
    Malformed(&'static str),
}

/// Reads the length word of a startup packet once 4 bytes are available and
/// checks it, so the caller knows how much to wait for.
pub fn startup_packet_len(head: [u8; 4]) -> Result<usize, StartupError> {
    let len = u32::from_be_bytes(head);
    if !(8..=MAX_STARTUP_PACKET as u32).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    Ok(len as usize)
}

/// Parses a complete startup packet (length word included).
pub fn parse_startup_packet(packet: Bytes) -> Result<StartupPacket, StartupError> {
    if packet.len() < 8 {
        return Err(StartupError::BadLength(packet.len() as u32));
    }
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    match code {
        SSL_REQUEST_CODE if packet.len() == 8 => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if packet.len() == 8 => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE if (16..=MAX_CANCEL_PACKET).contains(&packet.len()) => {
            Ok(StartupPacket::CancelRequest(packet))
        }
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => Err(
            StartupError::Malformed("request packet has the wrong length"),
        ),
        _ if code >> 16 == PROTOCOL_MAJOR => {
            let params = parse_params(&packet[8..])?;
            Ok(StartupPacket::Startup {
                raw: packet,
                params,
            })
        }
        _ if (1..=2).contains(&(code >> 16)) => Err(StartupError::UnsupportedProtocol {
            major: code >> 16,
            minor: code & 0xffff,
        }),
        _ => Err(StartupError::UnknownCode(code)),
    }
}

/// Parses `name\0value\0 … \0`.
fn parse_params(mut body: &[u8]) -> Result<StartupParams, StartupError> {
    let mut params = StartupParams::default();
    loop {
        let (name, rest) = split_cstr(body).ok_or(StartupError::Malformed("missing terminator"))?;
        if name.is_empty() {
            if !rest.is_empty() {
                return Err(StartupError::Malformed("data after the final terminator"));
            }
            break;
        }
        let (value, rest) =
            split_cstr(rest).ok_or(StartupError::Malformed("parameter without a value"))?;
        let value = String::from_utf8_lossy(value).into_owned();
        match name {
            b"user" => params.user = Some(value),
            b"database" => params.database = Some(value),
            b"application_name" => params.application_name = Some(value),
            b"search_path" => params.search_path = Some(value),
            b"options" => params.options = Some(value),
            b"pgshift.shape" => params.shape = Some(value),
            b"pgshift.ddl" => params.ddl = Some(value),
            _ => {}
        }
        body = rest;
    }
    if params.user.is_none() {
        return Err(StartupError::Malformed(
            "no user name in the startup packet",
        ));
    }
    Ok(params)
}

/// Splits a NUL-terminated string off the front of `buf`.
pub fn split_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = memchr::memchr(0, buf)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// Builds a regular frame (tag, length, body) from body parts.
pub fn encode_frame(tag: u8, parts: &[&[u8]]) -> Bytes {
    let body_len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = BytesMut::with_capacity(5 + body_len);
    out.put_u8(tag);
    out.put_u32((body_len + 4) as u32);
    for part in parts {
        out.put_slice(part);
    }
    out.freeze()
}

/// The one-byte answer to SSLRequest / GSSENCRequest: not supported.
pub const NO_ENCRYPTION: &[u8] = b"N";

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)], version: u32) -> Bytes {
        let mut body = BytesMut::new();
        body.put_u32(version);
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.put_u8(0);
            body.extend_from_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut out = BytesMut::new();
        out.put_u32(body.len() as u32 + 4);
        out.extend_from_slice(&body);
        out.freeze()
    }

    #[test]
    fn parses_a_startup_message_and_keeps_it_whole() {
        let raw = startup(
            &[
                ("user", "alice"),
                ("database", "shop"),
                ("application_name", "api"),
            ],
            196_608,
        );
        match parse_startup_packet(raw.clone()).unwrap() {
            StartupPacket::Startup { raw: kept, params } => {
                assert_eq!(kept, raw);
                assert_eq!(params.user.as_deref(), Some("alice"));
                assert_eq!(params.database.as_deref(), Some("shop"));
                assert_eq!(params.application_name.as_deref(), Some("api"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn accepts_protocol_3_minor_versions_and_refuses_2() {
        assert!(matches!(
            parse_startup_packet(startup(&[("user", "a")], (3 << 16) | 2)),
            Ok(StartupPacket::Startup { .. })
        ));
        assert_eq!(
            parse_startup_packet(startup(&[("user", "a")], 2 << 16)),
            Err(StartupError::UnsupportedProtocol { major: 2, minor: 0 })
        );
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(
            startup_packet_len([0, 0, 0, 3]),
            Err(StartupError::BadLength(3))
        );
        assert_eq!(
            startup_packet_len([0x47, 0x45, 0x54, 0x20]),
            Err(StartupError::BadLength(0x4745_5420))
        );
        let mut p = BytesMut::new();
        p.put_u32(8);
        p.put_u32(12345);
        assert_eq!(
            parse_startup_packet(p.freeze()),
            Err(StartupError::UnknownCode(12345))
        );
        let no_user = startup(&[("database", "x")], 196_608);
        assert!(matches!(
            parse_startup_packet(no_user),
            Err(StartupError::Malformed(_))
        ));
        let mut unterminated = BytesMut::new();
        unterminated.put_u32(13);
        unterminated.put_u32(196_608);
        unterminated.extend_from_slice(b"user\0");
        assert!(matches!(
            parse_startup_packet(unterminated.freeze()),
            Err(StartupError::Malformed(_))
        ));
    }

    #[test]
    fn recognises_requests() {
        let mut p = BytesMut::new();
        p.put_u32(8);
        p.put_u32(SSL_REQUEST_CODE);
        assert_eq!(
            parse_startup_packet(p.freeze()),
            Ok(StartupPacket::SslRequest)
        );
        let mut c = BytesMut::new();
        c.put_u32(16);
        c.put_u32(CANCEL_REQUEST_CODE);
        c.put_u32(42);
        c.put_u32(7);
        let c = c.freeze();
        assert_eq!(
            parse_startup_packet(c.clone()),
            Ok(StartupPacket::CancelRequest(c))
        );
    }

    #[test]
    fn error_response_is_well_formed() {
        let frame = ErrorResponse::fatal(sqlstate::PROTOCOL_VIOLATION, "bad\0thing")
            .with_hint("h")
            .encode();
        assert_eq!(frame[0], b'E');
        let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
        assert_eq!(len + 1, frame.len());
        let body = &frame[5..];
        assert!(body.windows(6).any(|w| w == b"C08P01"));
        assert!(body.windows(9).any(|w| w == b"Mbadthing"));
        assert_eq!(*body.last().unwrap(), 0);
    }
}
