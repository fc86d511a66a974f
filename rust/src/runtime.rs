//! The server's tokio runtime and listeners: binds gRPC and REST, runs them until `stop`, then drains.
//! Owned by a `Server`, never global; the Python side calls `stop` from signal handlers and `atexit`.

use crate::codec::kserve_proto::pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::error::ServeError;
use crate::ingress;
use crate::ingress::grpc::MsGrpc;
use crate::ingress::kserve_grpc::KserveGrpc;
use crate::ingress::listen;
use crate::proto::ms::ms_service_server::MsServiceServer;
use crate::service::Service;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic_health::ServingStatus;

/// Environment variable that sets the number of tokio I/O threads.
pub const IO_THREADS_ENV: &str = "RUSTSERVE_IO_THREADS";

/// How often the gRPC health service re-checks whether every servable is loaded.
const HEALTH_RECHECK: Duration = Duration::from_secs(1);

/// Concurrent HTTP/2 streams (gRPC calls) per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;

/// How long `stop` waits for requests in flight before dropping them, unless `set_drain_timeout` changed it.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Which listener, for error texts and bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Grpc,
    Rest,
}

/// A running tokio runtime plus the listener tasks on it.
pub struct ServerRuntime {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<(Listener, JoinHandle<()>)>>,
    drain_timeout: Mutex<Duration>,
    connection_limits: Mutex<listen::Limits>,
    /// The OTLP trace exporter, when `--trace-otlp-endpoint` is set; flushed by `stop` before the runtime ends.
    traces: Mutex<Option<crate::trace::Exporter>>,
}

/// How long `stop` waits for the spans still queued to be exported (the collector may be gone).
const TRACE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves gRPC on `incoming` until `stop`.
async fn serve_grpc<S>(
    router: tonic::transport::server::Router<
        tower::layer::util::Stack<ingress::budget::GrpcGuardLayer, tower::layer::util::Identity>,
    >,
    incoming: listen::Incoming<S>,
    stop: impl Future<Output = ()>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
{
    if let Err(err) = router.serve_with_incoming_shutdown(incoming, stop).await {
        tracing::error!("gRPC server failed: {err}");
    }
}

/// Serves REST on `incoming` until `stop`.
async fn serve_rest<S>(
    app: axum::Router,
    incoming: listen::Incoming<S>,
    stop: impl Future<Output = ()> + Send + 'static,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if let Err(err) = axum::serve(incoming, app).with_graceful_shutdown(stop).await {
        tracing::error!("REST server failed: {err}");
    }
}

/// `RUSTSERVE_IO_THREADS`, when set to a positive number.
fn io_threads_from_env() -> Option<usize> {
    std::env::var(IO_THREADS_ENV)
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&n| n > 0)
}

/// Half the cores, 1 to 4.
// NOTE: the I/O threads only move bytes and run codecs; model runs (ONNX Runtime's own threads) and Python stages
// need the other cores. Measured on 2 cores with the load generator on the same machine (benches/README.md): one
// I/O thread served tensor_add at 45k req/s on 1.0 core, two at 32k req/s on 1.36 cores (cross-thread wake-ups).
fn default_io_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    (cores / 2).clamp(1, 4)
}

impl ServerRuntime {
    /// Starts the runtime; `worker_threads` 0 means `RUSTSERVE_IO_THREADS` or else half the cores, 1 to 4 (I/O and
    /// codecs only: models and Python run on their own threads).
    pub fn new(worker_threads: usize) -> std::io::Result<ServerRuntime> {
        let threads = if worker_threads == 0 {
            io_threads_from_env().unwrap_or_else(default_io_threads)
        } else {
            worker_threads
        };
        tracing::info!("{threads} I/O thread(s)");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("rustserve-io")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(ServerRuntime {
            runtime: Mutex::new(Some(runtime)),
            handle,
            stop: watch::channel(false).0,
            tasks: Mutex::default(),
            drain_timeout: Mutex::new(DRAIN_TIMEOUT),
            connection_limits: Mutex::new(listen::Limits::default()),
            traces: Mutex::default(),
        })
    }

    /// Exports a span tree per predict request to the OTLP/gRPC collector at `endpoint` from now on. The exporter's
    /// gRPC channel runs on this runtime; its batch span processor has its own thread, so requests never wait for it.
    pub fn enable_traces(&self, endpoint: &str) -> Result<(), ServeError> {
        let mut traces = self.traces.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if traces.is_some() {
            return Err(ServeError::Config("this server exports traces already".into()));
        }
        let _entered = self.handle.enter();
        *traces = Some(crate::trace::Exporter::install(endpoint)?);
        Ok(())
    }

    /// Sets how long `stop` lets requests in flight finish.
    pub fn set_drain_timeout(&self, timeout: Duration) {
        *self
            .drain_timeout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = timeout;
    }

    /// The runtime's handle (model batchers and `Model.call` use it).
    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    fn is_running(&self, which: Listener) -> bool {
        let tasks = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        tasks.iter().any(|(l, task)| *l == which && !task.is_finished())
    }

    fn stop_signal(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }

    /// Refuses a second listener of a kind, binds `address`, and returns the listener with its bound port.
    fn open(&self, address: &str, which: Listener) -> Result<(tokio::net::TcpListener, u16), ServeError> {
        if self.is_running(which) {
            return Err(ServeError::Config(
                match which {
                    Listener::Grpc => "Serving Error: Serving gRPC server is already running",
                    Listener::Rest => "Serving Error: RESTful server is already running",
                }
                .into(),
            ));
        }
        let listener = self.bind(address, which)?;
        let port = listener
            .local_addr()
            .map_err(|e| ServeError::Internal(e.to_string()))?
            .port();
        Ok((listener, port))
    }

    fn track(&self, which: Listener, task: JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((which, task));
    }

    fn bind(&self, address: &str, which: Listener) -> Result<tokio::net::TcpListener, ServeError> {
        let addr: SocketAddr = address.parse().map_err(|_| {
            ServeError::Config(match which {
                Listener::Grpc => {
                    format!("Serving Error: The format of the Serving gRPC address '{address}' is illegal")
                }
                Listener::Rest => format!("Serving Error: RESTful server address '{address}' is illegal"),
            })
        })?;
        let listener = self.handle.block_on(tokio::net::TcpListener::bind(addr)).map_err(|e| {
            ServeError::Config(match which {
                Listener::Grpc => format!(
                    "Serving Error: Serving gRPC server start failed, create server failed, address {address}: {e}"
                ),
                Listener::Rest => format!(
                    "Serving Error: RESTful server start failed, bind to the socket address {address} failed: {e}"
                ),
            })
        })?;
        if addr.ip().is_unspecified() {
            tracing::warn!("{which:?} server bound to all interfaces ({address}): reachable from other hosts");
        }
        Ok(listener)
    }

    /// Binds `address` and serves gRPC on it (MindSpore's `MSService`, the Open Inference Protocol's
    /// `GRPCInferenceService` and `grpc.health.v1.Health`), with `max_bytes` as the message limit; returns the port.
    pub fn start_grpc(
        &self,
        service: std::sync::Arc<Service>,
        address: &str,
        max_bytes: usize,
        tls: Option<&ingress::tls::TlsFiles>,
    ) -> Result<u16, ServeError> {
        let (listener, port) = self.open(address, Listener::Grpc)?;
        // Built before anything is spawned, so a bad certificate or key pair fails the start call.
        let tls_config = match tls {
            Some(files) => Some(ingress::tls::server_config(files, &[b"h2"]).map_err(|e| {
                ServeError::Config(format!(
                    "Serving Error: Serving gRPC server start failed, create server failed, address {address}: {e}"
                ))
            })?),
            None => None,
        };
        // grpc.health.v1 follows v2 ServerReady: "" and both services are SERVING unless a servable failed to load or
        // was unloaded (a repository call can change that at run time, hence the re-check) and NOT_SERVING once
        // `stop` begins.
        let (reporter, health) = tonic_health::server::health_reporter();
        let names = [
            "",
            <MsServiceServer<MsGrpc> as NamedService>::NAME,
            <GrpcInferenceServiceServer<KserveGrpc> as NamedService>::NAME,
        ];
        let ready = {
            let service = service.clone();
            move || service.readiness().is_ok()
        };
        let set_all = move |reporter: tonic_health::server::HealthReporter, status: ServingStatus| async move {
            for name in names {
                reporter.set_service_status(name, status).await;
            }
        };
        let serving = |ready: bool| {
            if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        let mut last = ready();
        self.handle.block_on(set_all(reporter.clone(), serving(last)));
        let mut stopping = Box::pin(self.stop_signal());
        self.handle.spawn(async move {
            loop {
                tokio::select! {
                    () = &mut stopping => break,
                    () = tokio::time::sleep(HEALTH_RECHECK) => {}
                }
                let now = ready();
                if now != last {
                    set_all(reporter.clone(), serving(now)).await;
                    last = now;
                }
            }
            set_all(reporter, ServingStatus::NotServing).await;
        });
        let guard = ingress::budget::GrpcGuardLayer {
            budget: service.bytes_in_flight.clone(),
            max_message_bytes: max_bytes,
        };
        let router = tonic::transport::Server::builder()
            // A client may not open streams without bound on one connection (each may declare a large message).
            .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS))
            .layer(guard)
            .add_service(health)
            .add_service(ingress::grpc::ms_service(service.clone(), max_bytes))
            .add_service(ingress::kserve_grpc::kserve_service(service, max_bytes));
        let stop = self.stop_signal();
        let limit = self.connection_limits();
        let _guard = self.handle.enter();
        let spawned = match tls_config {
            Some(config) => listen::tls(listener, "gRPC", limit, config, self.stop_signal())
                .map(|incoming| self.handle.spawn(serve_grpc(router, incoming, stop))),
            None => listen::plain(listener, "gRPC", limit, self.stop_signal())
                .map(|incoming| self.handle.spawn(serve_grpc(router, incoming, stop))),
        };
        let task = spawned.map_err(|e| ServeError::Internal(e.to_string()))?;
        self.track(Listener::Grpc, task);
        Ok(port)
    }

    /// Binds `address` and serves REST on it (MindSpore's URLs, the Open Inference Protocol's `/v2` and `/metrics`);
    /// returns the bound port.
    pub fn start_rest(
        &self,
        service: std::sync::Arc<Service>,
        address: &str,
        max_bytes: usize,
        tls: Option<&ingress::tls::TlsFiles>,
    ) -> Result<u16, ServeError> {
        let (listener, port) = self.open(address, Listener::Rest)?;
        let tls_config = match tls {
            Some(files) => Some(
                ingress::tls::server_config(files, &[b"h2", b"http/1.1"])
                    .map_err(|e| ServeError::Config(format!("Serving Error: {e}")))?,
            ),
            None => None,
        };
        let app = ingress::http::router(service, max_bytes);
        let stop = self.stop_signal();
        let limit = self.connection_limits();
        let _guard = self.handle.enter();
        let spawned = match tls_config {
            Some(config) => listen::tls(listener, "REST", limit, config, self.stop_signal())
                .map(|incoming| self.handle.spawn(serve_rest(app, incoming, stop))),
            None => listen::plain(listener, "REST", limit, self.stop_signal())
                .map(|incoming| self.handle.spawn(serve_rest(app, incoming, stop))),
        };
        let task = spawned.map_err(|e| ServeError::Internal(e.to_string()))?;
        self.track(Listener::Rest, task);
        Ok(port)
    }

    /// Sets the connection limits of the listeners started after this.
    pub fn set_connection_limits(&self, limits: listen::Limits) {
        *self
            .connection_limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
    }

    fn connection_limits(&self) -> listen::Limits {
        *self
            .connection_limits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stops accepting, waits up to the drain timeout for requests in flight, then shuts the runtime down.
    /// Blocking; idempotent. False when the drain timeout passed with requests still in flight.
    pub fn stop(&self) -> bool {
        let _ = self.stop.send(true);
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
            .collect();
        let Some(runtime) = self
            .runtime
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        else {
            return true;
        };
        let drain = *self
            .drain_timeout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let drained = runtime.block_on(async {
            let all = futures::future::join_all(tasks.into_iter().map(|(_, t)| t));
            let drained = tokio::time::timeout(drain, all).await.is_ok();
            if !drained {
                tracing::warn!("requests still in flight after the drain timeout ({drain:?}); stopping anyway");
            }
            drained
        });
        // After the drain (the last requests' spans are queued), before the runtime that carries the export ends.
        let traces = self
            .traces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(traces) = traces {
            traces.shutdown(TRACE_FLUSH_TIMEOUT);
        }
        runtime.shutdown_timeout(Duration::from_secs(1));
        drained
    }
}
