//! The command line's client of the admin port: one request per
//! connection, with a connect timeout and a time limit on the answer; over
//! HTTPS when the address says `https://` (the certificate verified against
//! `--admin-ca`, else the system's roots).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::proxy::tls::{provider, ALPN_HTTP1};

/// The CA file the admin port's certificate is verified with.
static ADMIN_CA: OnceLock<PathBuf> = OnceLock::new();

/// Verifies HTTPS admin ports against the CA certificates in `path`
/// instead of the system's (set once, by the command line).
pub fn set_ca(path: PathBuf) {
    let _ = ADMIN_CA.set(path);
}

/// Time allowed to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for the answer (a contract waits for locks with retries).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// Sends one request to `addr` (`HOST:PORT`, `http://HOST:PORT` or
/// `https://HOST:PORT`); returns the status and the JSON body (the
/// metrics, which are text, as a JSON string).
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Result<(u16, Value), String> {
    let (https, host_port) = match addr.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, addr.strip_prefix("http://").unwrap_or(addr)),
    };
    let host_port = host_port.trim_end_matches('/');
    let connect = async {
        let tcp = TcpStream::connect(host_port)
            .await
            .map_err(|e| e.to_string())?;
        if !https {
            return Ok(Conn::Plain(tcp));
        }
        let tls = secure(tcp, host_port).await?;
        Ok::<_, String>(Conn::Tls(Box::new(tls)))
    };
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(format!("cannot reach the admin port {addr}: {e}")),
        Err(_) => {
            return Err(format!(
                "cannot reach the admin port {addr}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        }
    };
    let request = build(method, path, host_port, body, token)?;
    let answer = async {
        match conn {
            Conn::Plain(s) => exchange(s, request).await,
            Conn::Tls(s) => exchange(*s, request).await,
        }
    };
    tokio::time::timeout(ANSWER_TIMEOUT, answer)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the admin port {addr} did not answer within {} s",
                ANSWER_TIMEOUT.as_secs()
            ))
        })
}

/// The connection to the admin port.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The TLS handshake with an HTTPS admin port, its certificate checked
/// for the host name of `host_port`.
async fn secure(
    tcp: TcpStream,
    host_port: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let host = match host_port.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => host_port,
    };
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))?;
    let ca = ADMIN_CA.get().map(PathBuf::as_path);
    let roots = crate::proxy::upstream::roots(ca, "--admin-ca")?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))
}

/// The request, with the headers the admin port asks for.
fn build(
    method: &str,
    path: &str,
    host_port: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Result<hyper::Request<Full<Bytes>>, String> {
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host_port)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let text = body.map(Value::to_string).unwrap_or_default();
    builder
        .body(Full::new(Bytes::from(text)))
        .map_err(|e| e.to_string())
}

/// Sends `request` over `stream` and reads the answer.
async fn exchange<S>(
    stream: S,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(u16, Value), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    let value = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned()));
    Ok((status, value))
}
