//! Accepting connections, for every listener (gRPC and REST, plaintext and TLS): an accept that fails (no file
//! descriptors left, say) backs off and is logged instead of spinning; at most `max_connections` are open at once
//! (more wait in the kernel's backlog); a connection that sends nothing within the idle timeout of being accepted
//! (no HTTP/2 preface, no request) is closed. Finished connections go to axum (`Listener`) or tonic (`Stream`).

use super::tls;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;

/// How many connections a listener keeps open, and how long one may stay silent after it was accepted (after its TLS
/// handshake) before it is closed.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// First and longest pause after a failed accept.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A failing listener logs at most once per this.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// One accepted connection: holds its place under the connection limit until dropped, and fails its first read
/// once the idle timeout passes without a byte.
pub struct Conn<S> {
    inner: S,
    _place: OwnedSemaphorePermit,
    idle_timeout: Duration,
    first_byte_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Conn<S> {
    fn new(inner: S, place: OwnedSemaphorePermit, idle_timeout: Duration) -> Conn<S> {
        Conn {
            inner,
            _place: place,
            idle_timeout,
            first_byte_deadline: Some(Box::pin(tokio::time::sleep(idle_timeout))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(deadline) = this.first_byte_deadline.as_mut() {
            match &polled {
                Poll::Ready(Ok(())) if buf.filled().len() > before => this.first_byte_deadline = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the client sent nothing within {:.1} s",
                            this.idle_timeout.as_secs_f64()
                        ),
                    )));
                }
                _ => {}
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S> tonic::transport::server::Connected for Conn<S> {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// What the accept task produces: plaintext TCP, or TLS after a finished handshake.
pub type PlainConn = Conn<TcpStream>;
pub type TlsConn = Conn<TlsStream<TcpStream>>;

/// The connections of one listener, accepted by a task of their own until the stop signal.
pub struct Incoming<S> {
    rx: mpsc::Receiver<(S, SocketAddr)>,
    local: SocketAddr,
}

/// The accept loop's shared part: the connection limit, back-off and rate-limited logging.
struct Acceptor {
    listener: TcpListener,
    places: Arc<Semaphore>,
    name: &'static str,
    backoff: Duration,
    last_log: Option<Instant>,
    failures: u64,
}

impl Acceptor {
    /// The next TCP connection and its place under the limit; waits for a place first, so a full server leaves new
    /// connections in the backlog instead of accepting and dropping them.
    async fn next(&mut self) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
        loop {
            let Ok(place) = self.places.clone().acquire_owned().await else {
                return std::future::pending().await; // never: the semaphore is never closed
            };
            match self.listener.accept().await {
                Ok((tcp, peer)) => {
                    self.backoff = BACKOFF_MIN;
                    let _ = tcp.set_nodelay(true);
                    return (tcp, peer, place);
                }
                Err(err) => {
                    drop(place);
                    self.failures += 1;
                    if self.last_log.is_none_or(|at| at.elapsed() >= LOG_EVERY) {
                        tracing::warn!(
                            "{} listener: accept failed ({} time(s) so far): {err}; retrying in {} ms",
                            self.name,
                            self.failures,
                            self.backoff.as_millis()
                        );
                        self.last_log = Some(Instant::now());
                    }
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// Starts accepting plaintext connections on `listener` until `stop` resolves (the port then closes; connections
/// already accepted live on). Needs a tokio runtime context.
pub fn plain(
    listener: TcpListener,
    name: &'static str,
    limits: Limits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<Incoming<PlainConn>> {
    spawn(
        listener,
        name,
        limits.max_connections,
        stop,
        move |(tcp, peer), place, tx| async move {
            let _ = tx.send((Conn::new(tcp, place, limits.idle_timeout), peer)).await;
        },
    )
}

/// As `plain`, with a TLS handshake per connection in its own task (bounded by `tls::HANDSHAKE_TIMEOUT`), so a slow
/// or plaintext client never blocks `accept`.
pub fn tls(
    listener: TcpListener,
    name: &'static str,
    limits: Limits,
    config: Arc<ServerConfig>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<Incoming<TlsConn>> {
    let acceptor = TlsAcceptor::from(config);
    spawn(
        listener,
        name,
        limits.max_connections,
        stop,
        move |(tcp, peer), place, tx| {
            let acceptor = acceptor.clone();
            async move {
                if let Some(stream) = tls::handshake(&acceptor, tcp, peer).await {
                    let _ = tx.send((Conn::new(stream, place, limits.idle_timeout), peer)).await;
                }
            }
        },
    )
}

fn spawn<S, F, Fut>(
    listener: TcpListener,
    name: &'static str,
    max_connections: usize,
    stop: impl Future<Output = ()> + Send + 'static,
    finish: F,
) -> io::Result<Incoming<S>>
where
    S: Send + 'static,
    F: Fn((TcpStream, SocketAddr), OwnedSemaphorePermit, mpsc::Sender<(S, SocketAddr)>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    let mut acceptor = Acceptor {
        listener,
        places: Arc::new(Semaphore::new(max_connections.max(1))),
        name,
        backoff: BACKOFF_MIN,
        last_log: None,
        failures: 0,
    };
    tokio::spawn(async move {
        tokio::pin!(stop);
        loop {
            let (tcp, peer, place) = tokio::select! {
                () = &mut stop => break,
                next = acceptor.next() => next,
            };
            // Each connection is finished (handshake, hand-over) in its own task, so `accept` never waits on it.
            tokio::spawn(finish((tcp, peer), place, tx.clone()));
        }
    });
    Ok(Incoming { rx, local })
}

impl<S> axum::serve::Listener for Incoming<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = S;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(pair) => pair,
            // The acceptor stopped: axum's graceful shutdown is under way, so nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl<S> futures::Stream for Incoming<S> {
    type Item = io::Result<S>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some((conn, _))) => Poll::Ready(Some(Ok(conn))),
            // Never end the stream: tonic stops on its shutdown signal, which also stopped the acceptor.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}
