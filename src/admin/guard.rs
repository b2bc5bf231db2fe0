//! Who may do what on the admin port, checked before any handler runs:
//!
//! - **Host**: on a loopback address, only the names of that address
//!   (`127.0.0.1:PORT`, `localhost:PORT`, `[::1]:PORT`) are served, so a
//!   page whose domain is re-pointed at 127.0.0.1 (DNS rebinding) is
//!   refused (403). Off loopback a token is mandatory, which no browser
//!   sends cross-site.
//! - **Origin**: a request a browser marks as coming from another origin
//!   (an `Origin` that is not this port's own, `Sec-Fetch-Site:
//!   cross-site`) is refused (403).
//! - **Content type**: a POST must say `Content-Type: application/json`
//!   (else 415): the only forms a cross-site page can send without a
//!   preflight (text/plain, form-encoded, multipart) cannot act.
//! - **Tokens**: with an operator token, every request but the status
//!   page's HTML needs `Authorization: Bearer <token>`; a read-only token
//!   may GET, never POST (403). Tokens are compared by keyed hash (no
//!   timing tells their bytes or length) and never taken from a URL.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AdminState;

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// May act (POST) and read.
    Operator,
    /// May read (GET) only.
    Reader,
}

/// Who sent a request, as the lifecycle's events record it.
#[derive(Debug, Clone, Copy)]
pub struct Actor(pub &'static str);

/// The admin port's tokens.
#[derive(Clone, Default)]
pub struct Tokens {
    operator: Option<u64>,
    read: Option<u64>,
    keys: Arc<RandomState>,
}

impl Tokens {
    /// `operator` may act; `read` may only read. Empty tokens are refused
    /// by the configuration before they get here.
    pub fn new(operator: Option<&str>, read: Option<&str>) -> Tokens {
        let keys = Arc::new(RandomState::new());
        let hash = |t: &str| keys.hash_one(t.as_bytes());
        Tokens {
            operator: operator.map(hash),
            read: read.map(hash),
            keys,
        }
    }

    /// The role a request with this `Authorization` header value has, if
    /// any. Without an operator token (loopback only) everyone operates.
    fn role(&self, authorization: Option<&str>) -> Option<Role> {
        let Some(operator) = self.operator else {
            return Some(Role::Operator);
        };
        let given = authorization.and_then(bearer)?;
        let given = self.keys.hash_one(given.as_bytes());
        if given == operator {
            Some(Role::Operator)
        } else if Some(given) == self.read {
            Some(Role::Reader)
        } else {
            None
        }
    }
}

/// The token of a `Bearer` credential (the scheme is case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The `Host` values a port bound at `addr` answers to; `None`: any (off
/// loopback, where a token guards the port).
pub fn allowed_hosts(addr: SocketAddr) -> Option<Vec<String>> {
    if !addr.ip().is_loopback() {
        return None;
    }
    let port = addr.port();
    Some(vec![
        addr.to_string(),
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ])
}

/// The guard, as middleware in front of every route.
pub async fn check(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST).unwrap_or("");
    if let Some(hosts) = &state.hosts {
        if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return refuse(
                StatusCode::FORBIDDEN,
                format!(
                    "this admin port does not answer to Host {host:?}; use one of {}",
                    hosts.join(", ")
                ),
            );
        }
    }
    if let Some(origin) = text(header::ORIGIN) {
        let own = origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host));
        if !own {
            return refuse(StatusCode::FORBIDDEN, format!("a request from origin {origin:?} is cross-site: the admin port serves its own page only"));
        }
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return refuse(
            StatusCode::FORBIDDEN,
            "a cross-site request cannot use the admin port".into(),
        );
    }
    let method = request.method().clone();
    if method == Method::POST && !is_json(text(header::CONTENT_TYPE)) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a POST to the admin port must be sent with Content-Type: application/json".into(),
        );
    }
    let path = request.uri().path().to_string();
    let page = method == Method::GET && path == "/";
    let role = state.tokens.role(text(header::AUTHORIZATION));
    match role {
        None if !page => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token: send Authorization: Bearer <token>".into(),
            )
        }
        Some(Role::Reader) if method != Method::GET => {
            return refuse(
                StatusCode::FORBIDDEN,
                "the read-only token may not act: use the operator token".into(),
            )
        }
        _ => {}
    }
    let actor = match (role, state.tokens.operator.is_some()) {
        (Some(Role::Operator), true) => "admin (operator token)",
        (Some(Role::Reader), _) => "admin (read-only token)",
        _ => "admin (no token: loopback)",
    };
    tracing::info!(%method, %path, actor, "admin request");
    let mut request = request;
    request.extensions_mut().insert(Actor(actor));
    next.run(request).await
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|c| c.split(';').next())
        .is_some_and(|c| c.trim().eq_ignore_ascii_case("application/json"))
}

/// An error answer, `{"error": "…"}`.
pub fn refuse(status: StatusCode, error: String) -> Response {
    let body = serde_json::json!({ "error": error }).to_string();
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(body),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_give_roles() {
        let t = Tokens::new(Some("op-secret"), Some("read-secret"));
        assert_eq!(t.role(Some("Bearer op-secret")), Some(Role::Operator));
        assert_eq!(t.role(Some("bearer op-secret")), Some(Role::Operator));
        assert_eq!(t.role(Some("Bearer read-secret")), Some(Role::Reader));
        assert_eq!(t.role(Some("Bearer op-secre")), None);
        assert_eq!(t.role(Some("Bearer ")), None);
        assert_eq!(t.role(Some("Basic op-secret")), None);
        assert_eq!(t.role(None), None);
        assert_eq!(Tokens::default().role(None), Some(Role::Operator));
    }

    #[test]
    fn loopback_ports_answer_to_their_own_names_only() {
        let hosts = allowed_hosts("127.0.0.1:9432".parse().unwrap()).unwrap();
        assert!(hosts.contains(&"localhost:9432".to_string()));
        assert!(!hosts.contains(&"evil.example:9432".to_string()));
        assert!(allowed_hosts("0.0.0.0:9432".parse().unwrap()).is_none());
    }

    #[test]
    fn json_content_types() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("Application/JSON; charset=utf-8")));
        assert!(!is_json(Some("text/plain")));
        assert!(!is_json(Some("application/x-www-form-urlencoded")));
        assert!(!is_json(None));
    }
}
