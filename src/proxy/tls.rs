//! TLS toward clients: the certificate and key pgshift presents, loaded
//! with rustls (no OpenSSL), re-read on demand (SIGHUP) so that new
//! sessions get a rotated certificate while open ones keep theirs, and the
//! `client_tls` policy (`disable`, `allow`, `require`).
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

/// The client-side TLS of a running proxy.
pub struct ClientTlsState {
    files: Option<TlsFiles>,
    mode: ClientTls,
    acceptor: RwLock<Option<TlsAcceptor>>,
}

impl ClientTlsState {
    /// Loads the certificate (if any); `Err` says what is wrong with it.
    pub fn load(files: Option<TlsFiles>, mode: ClientTls) -> Result<ClientTlsState, String> {
        let acceptor = match &files {
            Some(files) if mode != ClientTls::Disable => Some(acceptor(files)?),
            _ => None,
        };
        Ok(ClientTlsState {
            files,
            mode,
            acceptor: RwLock::new(acceptor),
        })
    }

    /// Re-reads the certificate and key; on failure the current ones stay.
    pub fn reload(&self) -> Result<(), String> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        if self.mode == ClientTls::Disable {
            return Ok(());
        }
        let fresh = acceptor(files)?;
        if let Ok(mut current) = self.acceptor.write() {
            *current = Some(fresh);
        }
        Ok(())
    }

    /// The acceptor for a new session, when TLS is offered.
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.acceptor.read().ok().and_then(|a| a.clone())
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

/// A rustls acceptor for these files.
fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
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
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
