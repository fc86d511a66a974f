//! TLS and mutual TLS for both listeners. One rustls `ServerConfig` (ring provider) is built from PEM files at start,
//! so a bad certificate or key pair fails `start_grpc` / `start_restful_server` instead of the first handshake. The
//! acceptor runs each handshake in its own task, so a slow or plaintext client never blocks `accept`, and hands
//! finished TLS streams to axum (`Listener`) or tonic (`Stream` of connections).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
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

/// Finished TLS connections from a TCP listener; handshakes run in their own tasks. Implements axum's `Listener`
/// and is a `Stream` of connections for tonic.
pub struct TlsIncoming {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsIncoming {
    /// Takes over `listener` until `stop` resolves (then the port closes; connections already accepted live on).
    pub fn spawn(
        listener: TcpListener,
        config: Arc<ServerConfig>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<TlsIncoming> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                let (tcp, peer) = tokio::select! {
                    () = &mut stop => break,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(err) => {
                            // EMFILE and friends: back off briefly instead of spinning.
                            tracing::warn!("TLS listener accept failed: {err}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(err)) => tracing::info!("TLS handshake with {peer} failed: {err}"),
                        Err(_) => tracing::info!("TLS handshake with {peer} timed out"),
                    }
                });
            }
        });
        Ok(TlsIncoming { rx, local })
    }
}

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(pair) => pair,
            // The acceptor stopped: axum's graceful shutdown is under way, so nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl futures::Stream for TlsIncoming {
    type Item = std::io::Result<TlsStream<TcpStream>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((tls, _))) => Poll::Ready(Some(Ok(tls))),
            // Never end the stream: tonic stops on its shutdown signal, which also stopped the acceptor.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}
