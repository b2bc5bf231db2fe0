//! TLS toward clients: the certificate and key pgshift presents, loaded
//! with rustls (no OpenSSL), re-read on demand (SIGHUP) so that new
//! sessions get a rotated certificate while open ones keep theirs, and the
//! `client_tls` policy (`disable`, `allow`, `require`). The admin port
//! serves HTTPS with the same files ([`Reloadable`] with ALPN `http/1.1`).
//!
//! Both ways a client can start TLS are served: the classic `SSLRequest`
//! answered `S`, and PostgreSQL 17's direct TLS (a ClientHello straight
//! away, ALPN `postgresql` required). ALPN `postgresql` is offered either
//! way, as Postgres does.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The ALPN protocol name of the PostgreSQL protocol.
pub const ALPN: &[u8] = b"postgresql";
/// The ALPN protocol name of HTTP/1.1 (the admin port).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// What pgshift asks of clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTls {
    /// SSLRequest is answered `N`.
    Disable,
    /// TLS when the client asks for it (the default with a certificate).
    Allow,
    /// A client that does not use TLS is refused (`28000`).
    Require,
}

impl ClientTls {
    pub fn parse(text: &str) -> Option<ClientTls> {
        match text {
            "disable" => Some(ClientTls::Disable),
            "allow" => Some(ClientTls::Allow),
            "require" => Some(ClientTls::Require),
            _ => None,
        }
    }
}

/// The certificate chain and key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate and key served under one ALPN protocol, re-read on
/// demand: connections accepted after a reload get the new certificate.
pub struct Reloadable {
    files: TlsFiles,
    alpn: &'static [u8],
    current: RwLock<TlsAcceptor>,
}

impl Reloadable {
    /// Loads the files; `Err` says what is wrong with them.
    pub fn load(files: TlsFiles, alpn: &'static [u8]) -> Result<Reloadable, String> {
        let current = RwLock::new(acceptor(&files, alpn)?);
        Ok(Reloadable {
            files,
            alpn,
            current,
        })
    }

    /// Re-reads the certificate and key; on failure the current ones stay.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = acceptor(&self.files, self.alpn)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The client-side TLS of a running proxy.
pub struct ClientTlsState {
    mode: ClientTls,
    /// `None`: no certificate, or `client_tls = disable`.
    served: Option<Reloadable>,
}

impl ClientTlsState {
    /// Loads the certificate (if any); `Err` says what is wrong with it.
    pub fn load(files: Option<TlsFiles>, mode: ClientTls) -> Result<ClientTlsState, String> {
        let served = match files {
            Some(files) if mode != ClientTls::Disable => Some(Reloadable::load(files, ALPN)?),
            _ => None,
        };
        Ok(ClientTlsState { mode, served })
    }

    /// Re-reads the certificate and key; on failure the current ones stay.
    pub fn reload(&self) -> Result<(), String> {
        self.served.as_ref().map_or(Ok(()), Reloadable::reload)
    }

    /// The acceptor for a new session, when TLS is offered.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.served.as_ref().map(Reloadable::acceptor)
    }

    pub fn mode(&self) -> ClientTls {
        self.mode
    }
}

/// The cryptography pgshift's TLS runs on: *ring* (aws-lc-rs, rustls'
/// default, needs cmake and a C toolchain to build; ring's provider offers
/// no post-quantum key exchange, hence the deprecation rustls marks it
/// with).
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls acceptor for these files, offering `alpn`.
fn acceptor(files: &TlsFiles, alpn: &[u8]) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("cannot read the certificate {}: {e}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot read the certificate {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("cannot read the private key {}: {e}", files.key.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "the certificate {} and the key {} do not make a usable pair: {e}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
