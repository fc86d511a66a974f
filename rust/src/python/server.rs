//! The `#[pyclass]` / `#[pyfunction]` surface of `rustserve._rustserve` (see _rustserve.pyi). Every call that
//! blocks releases the GIL first, and every error leaves as one of the module's exception types.

use super::gil_thread::GilThread;
use super::spec::WorkerSettings;
use super::{ServerStart, detached, spec};
use crate::dispatch::Dispatcher;
use crate::error::ServeError;
use crate::ingress::tls::TlsFiles;
use crate::runtime::ServerRuntime;
use crate::servable::{ServableVersion, loader};
use crate::service::{
    DEFAULT_MAX_ENQUEUED_REQUESTS, DEFAULT_MAX_QUEUED_INSTANCES, DEFAULT_REQUEST_TIMEOUT, Repository, Service,
};
use crate::spec::{FunctionId, ServableSpec, StageKind};
use crate::workers::ipc::FunctionEntry;
use crate::workers::supervisor::{WorkerConfig, WorkerHandle};
use futures::future::BoxFuture;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

const MB: usize = 1024 * 1024;

/// Where `rustserve start` listens unless told otherwise.
pub const DEFAULT_GRPC_ADDRESS: &str = "127.0.0.1:5500";
pub const DEFAULT_REST_ADDRESS: &str = "127.0.0.1:1500";
/// MindSpore Serving's largest message, in MB (`start_grpc_server(max_msg_mb_size=100)`).
pub const DEFAULT_MAX_MSG_MB_SIZE: usize = 100;

/// `rustserve._rustserve.DEFAULTS`: the server's defaults (the constants of the modules that apply them), so Python's
/// signatures and the CLI read them instead of repeating them.
pub fn defaults(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let limits = crate::ingress::listen::Limits::default();
    let defaults = PyDict::new(py);
    defaults.set_item("grpc_address", DEFAULT_GRPC_ADDRESS)?;
    defaults.set_item("rest_address", DEFAULT_REST_ADDRESS)?;
    defaults.set_item("max_msg_mb_size", DEFAULT_MAX_MSG_MB_SIZE)?;
    defaults.set_item("request_timeout_s", DEFAULT_REQUEST_TIMEOUT.as_secs_f64())?;
    defaults.set_item("drain_timeout_s", crate::runtime::DRAIN_TIMEOUT.as_secs_f64())?;
    defaults.set_item("max_enqueued_requests", DEFAULT_MAX_ENQUEUED_REQUESTS)?;
    defaults.set_item("max_queued_instances", DEFAULT_MAX_QUEUED_INSTANCES)?;
    defaults.set_item("max_queued_python_calls", crate::dispatch::DEFAULT_MAX_WAITING)?;
    defaults.set_item("max_in_flight_mb", crate::ingress::budget::DEFAULT_BYTES / MB)?;
    defaults.set_item("max_connections", limits.max_connections)?;
    defaults.set_item("connection_idle_timeout_s", limits.idle_timeout.as_secs_f64())?;
    Ok(defaults)
}

/// The native server: servables, executors and the gRPC / REST listeners, on a private tokio runtime.
#[pyclass(frozen, name = "Server", module = "rustserve._rustserve")]
pub struct PyServer {
    runtime: ServerRuntime,
    executor: Arc<GilThread>,
    dispatcher: Arc<Dispatcher>,
    workers: Mutex<Vec<Arc<WorkerHandle>>>,
    service: Arc<Service>,
    stopped: AtomicBool,
}

/// `(certificate, private_key, custom_ca, verify_client)`, as `rustserve.server.SSLConfig` holds them.
type TlsArg = (String, String, Option<String>, bool);

fn tls_files((certificate, private_key, custom_ca, verify_client): TlsArg) -> TlsFiles {
    TlsFiles {
        certificate,
        private_key,
        custom_ca,
        verify_client,
    }
}

fn positive_duration(what: &str, seconds: f64) -> PyResult<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| pyo3::exceptions::PyValueError::new_err(format!("{what} must be > 0 seconds, got {seconds}")))
}

/// A limit (a count) of at least 1; `ValueError` "<what> must be >= 1" otherwise.
fn positive_limit(what: &str, limit: usize) -> PyResult<usize> {
    if limit == 0 {
        return Err(pyo3::exceptions::PyValueError::new_err(format!("{what} must be >= 1")));
    }
    Ok(limit)
}

impl PyServer {
    /// A start call on a stopped server (its runtime is gone) fails instead of binding a listener nobody serves.
    fn refuse_when_stopped(&self) -> PyResult<()> {
        if self.stopped.load(Ordering::Acquire) {
            let stopped = ServeError::Unavailable("Serving Error: the server has been stopped".into());
            return Err(ServerStart(stopped).into());
        }
        Ok(())
    }
}

#[pymethods]
impl PyServer {
    #[new]
    #[pyo3(signature = (worker_threads = 0))]
    fn new(worker_threads: usize) -> PyResult<Self> {
        let runtime = ServerRuntime::new(worker_threads).map_err(ServerStart::from)?;
        let executor = Arc::new(GilThread::spawn().map_err(ServerStart::from)?);
        let dispatcher = Arc::new(Dispatcher::new(executor.clone()));
        let service = Arc::new(Service::new(dispatcher.clone(), DEFAULT_MAX_ENQUEUED_REQUESTS));
        Ok(PyServer {
            runtime,
            executor,
            dispatcher,
            workers: Mutex::default(),
            service,
            stopped: AtomicBool::new(false),
        })
    }

    /// Loads and validates servable versions described by spec dicts (see rustserve.server._spec); all or none.
    fn add_servables(&self, py: Python<'_>, specs: Vec<Bound<'_, PyDict>>) -> PyResult<()> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(ServeError::Config("the server has been stopped".into()).into());
        }
        let (specs, plans) = specs_and_worker_plans(py, &specs, &self.executor)?;
        for s in &specs {
            if self.service.registry.contains(&s.name, s.version) {
                let loaded = format!("servable '{}' version {} is already loaded", s.name, s.version);
                return Err(ServeError::Config(loaded).into());
            }
        }
        let executor = self.executor.clone();
        let loaded = detached(py, move || load_versions(specs, &executor))?;
        // Each worker joins the server's list as soon as it is spawned, so a stop that comes while it starts stops it
        // at once (its start then fails) instead of waiting for it to come up.
        // NOTE: `stop` sets `stopped` before it takes the workers, so checking under the lock leaves no gap.
        let track = |worker: &Arc<WorkerHandle>| {
            let mut running = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
            if self.stopped.load(Ordering::Acquire) {
                return false;
            }
            running.push(worker.clone());
            true
        };
        if let Err(err) = py.detach(|| start_workers(&self.dispatcher, plans, &track)) {
            // They are stopped already; forget them.
            let mut running = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
            running.retain(|worker| !worker.is_stopping());
            return Err(err.into());
        }
        for servable in loaded {
            tracing::info!(
                "servable '{}' version {} ready, methods: {}",
                servable.name,
                servable.version,
                servable.method_names().join(", ")
            );
            self.service.observe_batches(&servable);
            self.service.registry.insert(servable);
        }
        Ok(())
    }

    /// Starts the MindSpore gRPC service on `address` (ip:port); returns the bound port. `tls` is
    /// `(certificate, private_key, custom_ca, verify_client)` with PEM file paths, or None for plaintext.
    #[pyo3(signature = (address, max_msg_mb_size, tls = None))]
    fn start_grpc(&self, py: Python<'_>, address: &str, max_msg_mb_size: usize, tls: Option<TlsArg>) -> PyResult<u16> {
        self.refuse_when_stopped()?;
        let service = self.service.clone();
        let tls = tls.map(tls_files);
        detached(py, || {
            self.runtime
                .start_grpc(service, address, max_msg_mb_size * MB, tls.as_ref())
                .map_err(ServerStart)
        })
    }

    /// Starts the REST server on `address` (ip:port); returns the bound port. `tls` as for `start_grpc`.
    #[pyo3(signature = (address, max_msg_mb_size, tls = None))]
    fn start_rest(&self, py: Python<'_>, address: &str, max_msg_mb_size: usize, tls: Option<TlsArg>) -> PyResult<u16> {
        self.refuse_when_stopped()?;
        let service = self.service.clone();
        let tls = tls.map(tls_files);
        detached(py, || {
            self.runtime
                .start_rest(service, address, max_msg_mb_size * MB, tls.as_ref())
                .map_err(ServerStart)
        })
    }

    /// Records that servable `name` failed to load (`rustserve start` keeps the others serving): readiness answers
    /// "not ready" and the repository index lists it as UNAVAILABLE with `reason`, until it loads.
    fn set_load_failure(&self, name: &str, reason: &str) {
        self.service.registry.set_failure(name, reason);
    }

    /// Sets the per-request timeout in seconds (> 0): a request still running then fails, its queued work dropped.
    fn set_request_timeout(&self, seconds: f64) -> PyResult<()> {
        let timeout = positive_duration("request timeout", seconds)?;
        self.service.set_request_timeout(timeout);
        // A Python call running this long has no request left waiting for it: its worker is killed (a call on the
        // GIL thread is reported).
        self.dispatcher.set_call_timeout(timeout);
        Ok(())
    }

    /// Bounds the instances queued per model (subgraph): requests needing a full model queue fail at once.
    fn set_max_queued_instances(&self, limit: usize) -> PyResult<()> {
        self.service
            .set_max_queued_instances(positive_limit("max queued instances", limit)?);
        Ok(())
    }

    /// Bounds the requests in flight (MindSpore's `set_max_enqueued_requests`): further requests fail at once.
    fn set_max_enqueued_requests(&self, limit: usize) -> PyResult<()> {
        self.service
            .set_max_enqueued_requests(positive_limit("max enqueued requests", limit)?);
        Ok(())
    }

    /// Bounds the Python stage calls waiting for an executor: further calls fail at once.
    fn set_max_queued_python_calls(&self, limit: usize) -> PyResult<()> {
        self.dispatcher
            .set_max_waiting(positive_limit("max queued Python calls", limit)?);
        Ok(())
    }

    /// Sets, for listeners started after this, how many connections each keeps open (>= 1; more wait in the
    /// backlog) and after how many seconds (> 0) a connection that has sent nothing is closed.
    fn set_connection_limits(&self, max_connections: usize, idle_timeout_s: f64) -> PyResult<()> {
        self.runtime.set_connection_limits(crate::ingress::listen::Limits {
            max_connections: positive_limit("max connections", max_connections)?,
            idle_timeout: positive_duration("connection idle timeout", idle_timeout_s)?,
        });
        Ok(())
    }

    /// Bounds the bytes of request bodies held at once over every listener (>= 1); a request that would pass it is
    /// refused at once (REST 429, gRPC RESOURCE_EXHAUSTED).
    fn set_max_in_flight_bytes(&self, limit: usize) -> PyResult<()> {
        self.service
            .bytes_in_flight
            .set_limit(positive_limit("max in-flight bytes", limit)?);
        Ok(())
    }

    /// Exports OpenTelemetry traces of every predict request to the OTLP/gRPC collector at `endpoint`
    /// (`http://host:4317`); spans still queued are flushed by `stop` (for at most a second).
    fn set_trace_otlp_endpoint(&self, endpoint: &str) -> PyResult<()> {
        self.refuse_when_stopped()?;
        self.runtime.enable_traces(endpoint).map_err(ServerStart)?;
        Ok(())
    }

    /// Sets how long `stop` lets requests in flight finish, in seconds (>= 0).
    fn set_drain_timeout(&self, seconds: f64) -> PyResult<()> {
        if seconds == 0.0 {
            self.runtime.set_drain_timeout(std::time::Duration::ZERO);
            return Ok(());
        }
        self.runtime
            .set_drain_timeout(positive_duration("drain timeout", seconds)?);
        Ok(())
    }

    /// Installs the model repository that the Open Inference Protocol's repository extension loads servables from:
    /// `loader.names()` lists the servable names it holds, `loader.load(name)` returns the spec dicts of every version
    /// of one servable (importing its servable_config.py). Both are called on a blocking thread, never on a tokio
    /// worker. Load and unload are refused until this is called (`--model-control-mode none`); `api_key` (not empty)
    /// makes them require `authorization: Bearer <api_key>`.
    #[pyo3(signature = (loader, api_key = None))]
    fn set_repository(&self, loader: Py<PyAny>, api_key: Option<String>) -> PyResult<()> {
        if api_key.as_deref().is_some_and(str::is_empty) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "the repository API key must not be empty",
            ));
        }
        let repository = Arc::new(PyRepository {
            loader: Arc::new(loader),
            executor: self.executor.clone(),
            dispatcher: self.dispatcher.clone(),
        });
        self.service.set_repository(repository, api_key);
        Ok(())
    }

    /// (name, version, method names) of every loaded servable version.
    fn servables(&self) -> Vec<(String, u64, Vec<String>)> {
        self.service
            .registry
            .all()
            .iter()
            .map(|s| (s.name.clone(), s.version, s.method_names()))
            .collect()
    }

    /// Stops the listeners (draining requests in flight), the Python executor and the models; idempotent. False
    /// when the drain timeout passed with requests still in flight (they were abandoned).
    fn stop(&self, py: Python<'_>) -> bool {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return true;
        }
        py.detach(|| {
            self.service.set_stopping();
            let drained = self.runtime.stop();
            self.dispatcher.shutdown();
            let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
            for worker in &workers {
                worker.begin_stop();
            }
            self.executor.shutdown();
            stop_workers(&workers);
            self.service.registry.clear();
            drained
        })
    }

    fn is_running(&self) -> bool {
        !self.stopped.load(Ordering::Acquire)
    }

    /// Pids of the running Python worker processes (a restarting worker has none for a moment).
    fn worker_pids(&self) -> Vec<u32> {
        let workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        workers.iter().filter_map(|w| w.pid()).collect()
    }
}

/// The worker processes one servable version needs.
struct WorkerPlan {
    config: WorkerConfig,
    count: usize,
    functions: Vec<FunctionId>,
}

/// Converts spec dicts (registering their stage functions with `executor`) and plans their worker processes.
fn specs_and_worker_plans(
    py: Python<'_>,
    dicts: &[Bound<'_, PyDict>],
    executor: &GilThread,
) -> PyResult<(Vec<ServableSpec>, Vec<WorkerPlan>)> {
    let specs = dicts
        .iter()
        .map(|d| spec::servable(d, executor))
        .collect::<PyResult<Vec<_>>>()?;
    let settings = dicts.iter().map(spec::worker_settings).collect::<PyResult<Vec<_>>>()?;
    let plans = worker_plans(py, &specs, &settings)?;
    Ok((specs, plans))
}

/// Worker plans for specs with at least one Python stage that run it in worker processes (`num_parallel_workers` >
/// 1, or `python_in_process` false).
fn worker_plans(py: Python<'_>, specs: &[ServableSpec], settings: &[WorkerSettings]) -> PyResult<Vec<WorkerPlan>> {
    let mut plans = Vec::new();
    for (spec, settings) in specs.iter().zip(settings) {
        let count = settings.worker_processes();
        if count == 0 {
            continue;
        }
        let mut entries = Vec::new();
        let mut functions = Vec::new();
        for method in &spec.methods {
            for (k, stage) in method.stages.iter().enumerate() {
                if let StageKind::Function { function, name, .. } = &stage.kind {
                    entries.push(FunctionEntry {
                        id: function.0 as u64,
                        method: method.name.clone(),
                        stage_index: (k + 1) as u32,
                        name: name.clone(),
                    });
                    functions.push(*function);
                }
            }
        }
        if functions.is_empty() {
            tracing::info!(
                "servable '{}' version {}: no Python stage, so it starts no worker process",
                spec.name,
                spec.version
            );
            continue;
        }
        // The same interpreter as the server, so the worker imports the same packages.
        let python: String = py.import("sys")?.getattr("executable")?.extract()?;
        if python.is_empty() {
            let empty = "cannot start Python worker processes: sys.executable is empty in this interpreter";
            return Err(ServeError::Config(empty.into()).into());
        }
        let log_level = tracing::level_filters::LevelFilter::current().to_string();
        let log_format = super::logging::current_format().name();
        plans.push(WorkerPlan {
            config: WorkerConfig {
                python: PathBuf::from(python),
                directory: settings.directory.clone(),
                servable: spec.name.clone(),
                version: spec.version,
                number: 0,
                functions: entries,
                log_level,
                log_format,
            },
            count,
            functions,
        });
    }
    Ok(plans)
}

/// Starts every planned worker process in parallel and waits until all are ready; all or none (a failure is `Config`).
/// `track` sees each worker once spawned; when it answers false (the server is stopping), the start fails.
fn start_workers(
    dispatcher: &Dispatcher,
    plans: Vec<WorkerPlan>,
    track: &dyn Fn(&Arc<WorkerHandle>) -> bool,
) -> Result<Vec<Arc<WorkerHandle>>, ServeError> {
    let mut handles = Vec::new();
    let mut waits = Vec::new();
    let mut error = None;
    for plan in plans {
        let pool = dispatcher.add_pool(&plan.functions);
        for number in 1..=plan.count {
            let config = WorkerConfig {
                number,
                ..plan.config.clone()
            };
            let started = WorkerHandle::new(config).and_then(|handle| {
                let control = dispatcher.add_executor(pool, handle.clone());
                handle.start(control).map(|ready| (handle, ready))
            });
            match started {
                Ok((handle, ready)) => {
                    let tracked = track(&handle);
                    handles.push(handle);
                    waits.push(ready);
                    if !tracked {
                        error = Some("the server is stopping".into());
                        break;
                    }
                }
                Err(e) => {
                    error = Some(format!("cannot start a Python worker process: {e}"));
                    break;
                }
            }
        }
    }
    for ready in waits {
        match ready.recv() {
            Ok(Ok(pid)) => tracing::info!("Python worker process {pid} ready"),
            Ok(Err(e)) => {
                error.get_or_insert(e);
            }
            Err(_) => {
                error.get_or_insert_with(|| "a Python worker supervisor ended unexpectedly".into());
            }
        }
    }
    if let Some(error) = error {
        stop_workers(&handles);
        return Err(ServeError::Config(error));
    }
    Ok(handles)
}

/// Signals every worker first so they stop in parallel, then waits for each.
fn stop_workers(workers: &[Arc<WorkerHandle>]) {
    for worker in workers {
        worker.begin_stop();
    }
    for worker in workers {
        worker.join();
    }
}

/// The model repository behind `Server.set_repository`: Python does the directory work and the imports, Rust loads
/// the models with the GIL released.
struct PyRepository {
    loader: Arc<Py<PyAny>>,
    executor: Arc<GilThread>,
    dispatcher: Arc<Dispatcher>,
}

/// A worker process of a repository-loaded servable version: stops when that version is dropped.
struct VersionWorker(Arc<WorkerHandle>);

impl Drop for VersionWorker {
    fn drop(&mut self) {
        self.0.join();
    }
}

/// The stage functions a servable version registered: released when that version is dropped, so unloads and reloads
/// do not keep old configs' functions (and their modules) alive.
struct VersionFunctions {
    executor: Arc<GilThread>,
    ids: Vec<FunctionId>,
}

impl Drop for VersionFunctions {
    fn drop(&mut self) {
        self.executor.release_functions(&self.ids);
    }
}

/// Loads the models of `specs` and builds their versions, each holding its stage functions until it is dropped; on
/// failure, releases every function the specs registered.
fn load_versions(specs: Vec<ServableSpec>, executor: &Arc<GilThread>) -> Result<Vec<ServableVersion>, ServeError> {
    let functions: Vec<Vec<FunctionId>> = specs.iter().map(function_ids).collect();
    let outcome = specs.into_iter().map(loader::load).collect::<Result<Vec<_>, _>>();
    let mut versions = outcome.inspect_err(|_| {
        for ids in &functions {
            executor.release_functions(ids);
        }
    })?;
    // `loader::load` keeps the order of `specs`.
    for (version, ids) in versions.iter_mut().zip(functions) {
        let release = VersionFunctions {
            executor: executor.clone(),
            ids,
        };
        version.attached.push(Box::new(release));
    }
    Ok(versions)
}

/// The stage functions `spec` uses, each once.
fn function_ids(spec: &ServableSpec) -> Vec<FunctionId> {
    let mut ids: Vec<FunctionId> = spec
        .methods
        .iter()
        .flat_map(|method| &method.stages)
        .filter_map(|stage| match &stage.kind {
            StageKind::Function { function, .. } => Some(*function),
            StageKind::Model { .. } => None,
        })
        .collect();
    ids.sort_by_key(|id| id.0);
    ids.dedup_by_key(|id| id.0);
    ids
}

/// The text of a Python exception (without the traceback).
fn python_text(py: Python<'_>, err: &PyErr) -> String {
    err.value(py).to_string()
}

impl Repository for PyRepository {
    fn names(&self) -> BoxFuture<'static, Result<Vec<String>, ServeError>> {
        let loader = self.loader.clone();
        Box::pin(async move {
            // NOTE: a blocking-pool thread, not a tokio worker: it may wait for the GIL while a stage runs.
            tokio::task::spawn_blocking(move || {
                Python::attach(|py| {
                    loader
                        .bind(py)
                        .call_method0("names")
                        .and_then(|names| names.extract::<Vec<String>>())
                        .map_err(|e| {
                            ServeError::Internal(format!(
                                "listing the model repository failed: {}",
                                python_text(py, &e)
                            ))
                        })
                })
            })
            .await
            .map_err(|e| ServeError::Internal(format!("listing the model repository failed: {e}")))?
        })
    }

    fn load(&self, name: String) -> BoxFuture<'static, Result<Vec<ServableVersion>, ServeError>> {
        let loader = self.loader.clone();
        let executor = self.executor.clone();
        let dispatcher = self.dispatcher.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let (specs, plans) = Python::attach(|py| {
                    let converted = loader
                        .bind(py)
                        .call_method1("load", (name.as_str(),))
                        .and_then(|list| list.extract::<Vec<Bound<'_, PyDict>>>())
                        .and_then(|dicts| specs_and_worker_plans(py, &dicts, &executor));
                    converted.map_err(|e| ServeError::Config(python_text(py, &e)))
                })?;
                // Outside `attach`: ONNX Runtime builds its sessions without holding the GIL.
                let mut versions = load_versions(specs, &executor)?;
                // The workers live as long as their version: a reload or an unload stops them once the replaced
                // version's last request has ended.
                for worker in start_workers(&dispatcher, plans, &|_| true)? {
                    let number = worker.version();
                    let worker = VersionWorker(worker);
                    match versions.iter_mut().find(|v| v.version == number) {
                        Some(version) => version.attached.push(Box::new(worker)),
                        None => drop(worker), // cannot happen: every plan comes from one of these versions
                    }
                }
                Ok(versions)
            })
            .await
            .map_err(|e| ServeError::Internal(format!("loading servable failed: {e}")))?
        })
    }
}

/// Loads ONNX Runtime from `library_path` (the libonnxruntime inside the installed wheel); idempotent.
#[pyfunction]
pub fn init_onnxruntime(py: Python<'_>, library_path: &str) -> PyResult<()> {
    let path = std::path::PathBuf::from(library_path);
    detached(py, move || crate::model::init_onnxruntime(&path))
}

/// Reads a model's inputs and outputs: {"inputs": [{"name", "dtype", "shape"}], "outputs": [...]}.
#[pyfunction]
pub fn onnx_signature<'py>(py: Python<'py>, model_path: &str) -> PyResult<Bound<'py, PyDict>> {
    let path = std::path::PathBuf::from(model_path);
    let signature = detached(py, move || crate::model::read_signature(&path))?;
    let describe = |infos: &[crate::batching::IoInfo]| -> PyResult<Vec<Bound<'py, PyDict>>> {
        infos
            .iter()
            .map(|io| {
                let d = PyDict::new(py);
                d.set_item("name", &io.name)?;
                d.set_item("dtype", io.dtype.numpy_name())?;
                d.set_item("shape", io.shape.clone())?;
                Ok(d)
            })
            .collect()
    };
    let out = PyDict::new(py);
    out.set_item("inputs", describe(&signature.inputs)?)?;
    out.set_item("outputs", describe(&signature.outputs)?)?;
    Ok(out)
}
