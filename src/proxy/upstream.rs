//! The connection to the upstream server: TCP within `connect_timeout`,
//! then TLS as `upstream_tls` says — libpq's `sslmode` semantics:
//!
//! | `upstream_tls` | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | if the server accepts it | no |
//! | `require` | always (else the session fails) | no |
//! | `verify-ca` | always | chain to `upstream_ca` (or the system roots) |
//! | `verify-full` | always | chain, and the name: the upstream host |
//!
//! An upstream that is a socket directory (`/var/run/postgresql`) is
//! reached over its unix socket, without TLS whatever the mode, as libpq.
//!
//! The same setting serves client sessions, cancel requests and pgshift's
//! own control and lifecycle connections (tokio-postgres with a rustls
//! connector, [`UpstreamTlsSetup::make_tls_connect`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use super::stream::Stream;
use super::tls::provider;

/// `upstream_tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamTls {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl UpstreamTls {
    pub fn parse(text: &str) -> Option<UpstreamTls> {
        Some(match text {
            "disable" => UpstreamTls::Disable,
            "prefer" => UpstreamTls::Prefer,
            "require" => UpstreamTls::Require,
            "verify-ca" => UpstreamTls::VerifyCa,
            "verify-full" => UpstreamTls::VerifyFull,
            _ => return None,
        })
    }
}

/// The TLS client side toward the upstream, built once.
#[derive(Clone)]
pub struct UpstreamTlsSetup {
    pub mode: UpstreamTls,
    client: Option<Arc<ClientConfig>>,
}

impl UpstreamTlsSetup {
    /// `Err` says what is wrong with the CA file.
    pub fn new(mode: UpstreamTls, ca: Option<&Path>) -> Result<UpstreamTlsSetup, String> {
        let client = match mode {
            UpstreamTls::Disable => None,
            _ => Some(Arc::new(client_config(mode, ca)?)),
        };
        Ok(UpstreamTlsSetup { mode, client })
    }

    /// Starts TLS on a freshly connected `tcp` as the mode says.
    pub async fn negotiate(&self, mut tcp: TcpStream, host: &str) -> Result<Stream, String> {
        let Some(client) = &self.client else {
            return Ok(Stream::Plain(tcp));
        };
        tcp.write_all(&SSL_REQUEST)
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = [0u8; 1];
        tcp.read_exact(&mut answer)
            .await
            .map_err(|e| format!("the server closed the connection after SSLRequest: {e}"))?;
        match answer[0] {
            b'S' => {}
            b'N' if self.mode == UpstreamTls::Prefer => return Ok(Stream::Plain(tcp)),
            b'N' => {
                return Err(format!(
                    "the server does not accept TLS, and upstream_tls is {}",
                    self.name()
                ))
            }
            other => return Err(format!("the server answered SSLRequest with byte {other}")),
        }
        let name = server_name(host)?;
        let tls = TlsConnector::from(Arc::clone(client))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with the server failed: {e}"))?;
        Ok(Stream::ServerTls(Box::new(tls)))
    }

    /// What tokio-postgres connects with, and the sslmode to give it.
    pub fn make_tls_connect(
        &self,
    ) -> (
        Option<tokio_postgres_rustls::MakeRustlsConnect>,
        tokio_postgres::config::SslMode,
    ) {
        use tokio_postgres::config::SslMode;
        let mode = match self.mode {
            UpstreamTls::Disable => SslMode::Disable,
            UpstreamTls::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        };
        let connect = self
            .client
            .as_ref()
            .map(|c| tokio_postgres_rustls::MakeRustlsConnect::new((**c).clone()));
        (connect, mode)
    }

    fn name(&self) -> &'static str {
        match self.mode {
            UpstreamTls::Disable => "disable",
            UpstreamTls::Prefer => "prefer",
            UpstreamTls::Require => "require",
            UpstreamTls::VerifyCa => "verify-ca",
            UpstreamTls::VerifyFull => "verify-full",
        }
    }
}

/// SSLRequest: length 8, code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// The name TLS checks the server's certificate against.
fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} cannot be checked against a certificate: {e}"))
}

fn client_config(mode: UpstreamTls, ca: Option<&Path>) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let config = match mode {
        UpstreamTls::VerifyFull => builder.with_root_certificates(roots(ca, "upstream_ca")?),
        UpstreamTls::VerifyCa => {
            let verifier = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(ca, "upstream_ca")?),
                provider(),
            )
            .build()
            .map_err(|e| e.to_string())?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient(Some(verifier))))
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient(None))),
    };
    Ok(config.with_no_client_auth())
}

/// The CA certificates to trust: `ca`'s (read for the setting named
/// `setting`), or the system's.
pub(crate) fn roots(ca: Option<&Path>, setting: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect())
                .map_err(|e| format!("cannot read {setting} {}: {e}", path.display()))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| format!("{setting} {}: {e}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(format!(
            "no CA certificate to verify the server with: set {setting}"
        ));
    }
    Ok(roots)
}

/// What libpq checks short of `verify-full`: with a chain verifier
/// (`verify-ca`) the chain must lead to a trusted root and the name is not
/// checked; without one (`prefer`, `require`) the connection is encrypted,
/// not authenticated. The handshake's signatures are checked either way.
#[derive(Debug)]
struct Lenient(Option<Arc<WebPkiServerVerifier>>);

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        let Some(chain) = &self.0 else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The settings as configured: mode and CA file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTlsConfig {
    pub mode: UpstreamTls,
    pub ca: Option<PathBuf>,
}

impl Default for UpstreamTlsConfig {
    fn default() -> Self {
        UpstreamTlsConfig {
            mode: UpstreamTls::Prefer,
            ca: None,
        }
    }
}

impl UpstreamTlsConfig {
    /// The setup these settings make.
    pub fn setup(&self) -> Result<UpstreamTlsSetup, String> {
        UpstreamTlsSetup::new(self.mode, self.ca.as_deref())
    }
}

/// Opens the connection to the upstream within `connect_timeout`: its
/// unix socket when the upstream is a directory (never TLS, as libpq), or
/// TCP, then TLS as `upstream_tls` says.
pub(crate) async fn connect_upstream(shared: &super::Shared) -> Result<Stream, String> {
    let config = &shared.config;
    let upstream = &config.upstream;
    let timeout = config.limits.connect_timeout;
    let connect = async {
        if let Some(path) = upstream.socket_path() {
            return UnixStream::connect(&path)
                .await
                .map(Stream::Unix)
                .map_err(|e| format!("{}: {e}", path.display()));
        }
        let tcp = TcpStream::connect((upstream.host.as_str(), upstream.port))
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        shared.upstream_tls.negotiate(tcp, &upstream.host).await
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "timed out after {} ms (connect_timeout_ms)",
            timeout.as_millis()
        )),
    }
}
