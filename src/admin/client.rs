//! The command line's client of the admin port: one request per
//! connection, with a connect timeout and a time limit on the answer.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

/// Time allowed to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for the answer (a contract waits for locks with retries).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);

/// Sends one request; returns the status and the JSON body (the metrics,
/// which are text, as a JSON string).
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> Result<(u16, Value), String> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(format!("cannot reach the admin port {addr}: {e}")),
        Err(_) => {
            return Err(format!(
                "cannot reach the admin port {addr}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            ))
        }
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let text = body.map(Value::to_string).unwrap_or_default();
    let request = builder
        .body(Full::new(Bytes::from(text)))
        .map_err(|e| e.to_string())?;
    let answer = async {
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
        let value =
            serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned()));
        Ok((status, value))
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
