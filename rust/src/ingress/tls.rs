//! TLS and mutual TLS for both listeners. One rustls `ServerConfig` (ring provider) is built from PEM files at start,
//! so a bad certificate or key pair fails `start_grpc` / `start_restful_server` instead of the first handshake;
//! `handshake` runs one connection's handshake (`listen` gives each its own task).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

/// A handshake that takes longer than this is dropped (a stalled client must not hold a task forever).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's TLS settings as given by `SSLConfig`: PEM file paths.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub certificate: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: String,
    /// PEM root certificates that client certificates must chain to; used only when `verify_client`.
    pub custom_ca: Option<String>,
    /// Whether clients must present a certificate signed by `custom_ca` (mutual TLS).
    pub verify_client: bool,
}

/// Why a TLS configuration could not be built; `file` names the PEM file at fault.
#[derive(Debug)]
pub struct TlsError {
    /// Which setting: "certificate", "private_key" or "custom_ca".
    pub what: &'static str,
    /// The file path.
    pub file: String,
    /// The cause, readable.
    pub cause: String,
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "load {} from {} failed: {}", self.what, self.file, self.cause)
    }
}

fn read_pem(what: &'static str, file: &str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|e| TlsError {
        what,
        file: file.to_string(),
        cause: e.to_string(),
    })
}

fn certificates(what: &'static str, file: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(what, file)?;
    let err = |cause: String| TlsError {
        what,
        file: file.to_string(),
        cause,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found in the file".into()));
    }
    Ok(certs)
}

/// Builds the rustls server configuration; `alpn` lists the protocols offered (`h2` for gRPC, plus `http/1.1`
/// for REST).
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates("certificate", &files.certificate)?;
    let key_pem = read_pem("private_key", &files.private_key)?;
    let key_err = |cause: String| TlsError {
        what: "private_key",
        file: files.private_key.clone(),
        cause,
    };
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| key_err(format!("not a PEM private key: {e}")))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| key_err(e.to_string()))?;
    let builder = if files.verify_client {
        let ca_file = files.custom_ca.clone().unwrap_or_default();
        let mut roots = RootCertStore::empty();
        for cert in certificates("custom_ca", &ca_file)? {
            roots.add(cert).map_err(|e| TlsError {
                what: "custom_ca",
                file: ca_file.clone(),
                cause: e.to_string(),
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| TlsError {
                what: "custom_ca",
                file: ca_file.clone(),
                cause: e.to_string(),
            })?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    // with_single_cert checks that the key belongs to the leaf certificate (rustls' InconsistentKeys).
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| key_err(format!("{e} (does the key match the certificate?)")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Runs the TLS handshake of one accepted connection, bounded by `HANDSHAKE_TIMEOUT`; `None` (logged) when it fails.
pub async fn handshake(acceptor: &TlsAcceptor, tcp: TcpStream, peer: SocketAddr) -> Option<TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(err)) => {
            tracing::info!("TLS handshake with {peer} failed: {err}");
            None
        }
        Err(_) => {
            tracing::info!("TLS handshake with {peer} timed out");
            None
        }
    }
}
