//! The Python bridge: the only place (with lib.rs) that touches pyo3. The native server and module functions
//! Python sees (`server`), the GIL thread that runs stages in the server process (`gil_thread`), the loop of a
//! worker process (`worker_loop`), stage calling conventions (`stages`), value conversion (`convert`) and spec
//! dicts -> Rust spec (`spec`). The worker supervisor and its wire are plain Rust in `workers/`; the dispatcher
//! that shares stage calls among the GIL thread and the workers is `dispatch`.

pub mod convert;
pub mod distributed;
pub mod gil_thread;
pub mod logging;
pub mod server;
pub mod spec;
pub mod stages;
pub mod worker_loop;

use crate::error::ServeError;
use pyo3::create_exception;
use pyo3::marker::Ungil;
use pyo3::prelude::*;

// NOTE: a RuntimeError subclass, because MindSpore Serving scripts catch RuntimeError around the start calls.
create_exception!(
    _rustserve,
    RustServeError,
    pyo3::exceptions::PyRuntimeError,
    "Base class of every rustserve error."
);
create_exception!(
    _rustserve,
    ServableStartError,
    RustServeError,
    "A servable failed to load or validate."
);
create_exception!(
    _rustserve,
    ServerStartError,
    RustServeError,
    "A gRPC or REST listener could not start."
);
create_exception!(
    _rustserve,
    ModelCallError,
    RustServeError,
    "Model.call from a Python stage failed."
);

/// Every native error leaves for Python through here, its class picked by its cause: a servable or a setting refused
/// at start-up (`Config`) raises `ServableStartError`; everything else raises `RustServeError`. Each is a
/// `RuntimeError`, as MindSpore Serving scripts expect. Boundaries whose callers expect one class whatever the cause
/// wrap the error first (`ServerStart`).
impl From<ServeError> for PyErr {
    fn from(err: ServeError) -> PyErr {
        match err {
            ServeError::Config(text) => ServableStartError::new_err(text),
            other => RustServeError::new_err(other.to_string()),
        }
    }
}

/// An error of creating the server or starting one of its listeners: raises `ServerStartError` whatever the cause (a
/// bad address and a certificate that does not load are `Config`, like a servable that fails to load).
pub struct ServerStart(pub ServeError);

impl From<ServerStart> for PyErr {
    fn from(err: ServerStart) -> PyErr {
        ServerStartError::new_err(err.0.to_string())
    }
}

impl From<std::io::Error> for ServerStart {
    fn from(err: std::io::Error) -> ServerStart {
        ServerStart(ServeError::Internal(err.to_string()))
    }
}

/// Runs `f` with the GIL released and raises its error as the exception its type maps to: the one way out of a
/// blocking native call (see polars' `enter_polars`). A panic in `f` becomes `RustServeError` (a RuntimeError, which
/// MindSpore scripts catch), not pyo3's `PanicException`, a BaseException that would pass their `except`.
pub fn detached<T, E>(py: Python<'_>, f: impl FnOnce() -> Result<T, E> + Ungil + Send) -> PyResult<T>
where
    T: Ungil + Send,
    E: Ungil + Send,
    PyErr: From<E>,
{
    match py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))) {
        Ok(result) => result.map_err(PyErr::from),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(RustServeError::new_err(format!("internal error in rustserve: {what}")))
        }
    }
}
