//! The `#[pyclass]` / `#[pyfunction]` surface of `rustserve._rustserve` (see _rustserve.pyi). Every call that
//! blocks releases the GIL first, and every error leaves as one of the module's exception types.

use super::executor::PyExecutor;
use super::{ServableStartError, ServerStartError, spec};
use crate::error::ServeError;
use crate::runtime::ServerRuntime;
use crate::servable::loader;
use crate::service::{DEFAULT_MAX_ENQUEUED_REQUESTS, Service};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const MB: usize = 1024 * 1024;

/// The native server: servables, executors and the gRPC / REST listeners, on a private tokio runtime.
#[pyclass(frozen, name = "Server", module = "rustserve._rustserve")]
pub struct PyServer {
    runtime: ServerRuntime,
    executor: Arc<PyExecutor>,
    service: Arc<Service>,
    stopped: AtomicBool,
}

fn start_error(err: ServeError) -> PyErr {
    ServerStartError::new_err(err.message().to_string())
}

#[pymethods]
impl PyServer {
    #[new]
    #[pyo3(signature = (worker_threads = 0))]
    fn new(worker_threads: usize) -> PyResult<Self> {
        let runtime = ServerRuntime::new(worker_threads).map_err(|e| ServerStartError::new_err(e.to_string()))?;
        let executor = Arc::new(PyExecutor::start().map_err(|e| ServerStartError::new_err(e.to_string()))?);
        let service = Arc::new(Service::new(executor.clone(), DEFAULT_MAX_ENQUEUED_REQUESTS));
        Ok(PyServer {
            runtime,
            executor,
            service,
            stopped: AtomicBool::new(false),
        })
    }

    /// Loads and validates servable versions described by spec dicts (see rustserve.server._spec); all or none.
    fn add_servables(&self, py: Python<'_>, specs: Vec<Bound<'_, PyDict>>) -> PyResult<()> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(ServableStartError::new_err("the server has been stopped"));
        }
        let specs = specs
            .iter()
            .map(|d| spec::servable(d, &self.executor))
            .collect::<PyResult<Vec<_>>>()?;
        for s in &specs {
            if self.service.registry.contains(&s.name, s.version) {
                return Err(ServableStartError::new_err(format!(
                    "servable '{}' version {} is already loaded",
                    s.name, s.version
                )));
            }
        }
        let loaded = py
            .detach(move || specs.into_iter().map(loader::load).collect::<Result<Vec<_>, _>>())
            .map_err(|e| ServableStartError::new_err(e.message().to_string()))?;
        for servable in loaded {
            tracing::info!(
                "servable '{}' version {} ready, methods: {}",
                servable.name,
                servable.version,
                servable.method_names().join(", ")
            );
            self.service.registry.insert(servable);
        }
        Ok(())
    }

    /// Starts the MindSpore gRPC service on `address` (ip:port); returns the bound port.
    fn start_grpc(&self, py: Python<'_>, address: &str, max_msg_mb_size: usize) -> PyResult<u16> {
        let service = self.service.clone();
        py.detach(|| self.runtime.start_grpc(service, address, max_msg_mb_size * MB))
            .map_err(start_error)
    }

    /// Starts the REST server on `address` (ip:port); returns the bound port.
    fn start_rest(&self, py: Python<'_>, address: &str, max_msg_mb_size: usize) -> PyResult<u16> {
        let service = self.service.clone();
        py.detach(|| self.runtime.start_rest(service, address, max_msg_mb_size * MB))
            .map_err(start_error)
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

    /// Stops the listeners (draining requests in flight), the Python executor and the models; idempotent.
    fn stop(&self, py: Python<'_>) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        py.detach(|| {
            self.runtime.stop();
            self.executor.shutdown();
            self.service.registry.clear();
        });
    }

    fn is_running(&self) -> bool {
        !self.stopped.load(Ordering::Acquire)
    }
}

/// Loads ONNX Runtime from `library_path` (the libonnxruntime inside the installed wheel); idempotent.
#[pyfunction]
pub fn init_onnxruntime(py: Python<'_>, library_path: &str) -> PyResult<()> {
    let path = std::path::PathBuf::from(library_path);
    py.detach(move || crate::model::init_onnxruntime(&path))
        .map_err(|e| ServableStartError::new_err(e.message().to_string()))
}

/// Reads a model's inputs and outputs: {"inputs": [{"name", "dtype", "shape"}], "outputs": [...]}.
#[pyfunction]
pub fn onnx_signature<'py>(py: Python<'py>, model_path: &str) -> PyResult<Bound<'py, PyDict>> {
    let path = std::path::PathBuf::from(model_path);
    let signature = py
        .detach(move || crate::model::read_signature(&path))
        .map_err(|e| ServableStartError::new_err(e.message().to_string()))?;
    let describe = |infos: &[crate::model::IoInfo]| -> PyResult<Vec<Bound<'py, PyDict>>> {
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

/// Routes rustserve's (and ONNX Runtime's) log lines to stderr; `level` is a `RUST_LOG`-style filter, which
/// the `RUST_LOG` environment variable overrides. Only the first call has an effect.
#[pyfunction]
#[pyo3(signature = (level = "info"))]
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
