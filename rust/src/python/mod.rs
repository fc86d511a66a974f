//! The Python bridge: the only place (with lib.rs) that touches pyo3. The native server and module functions
//! Python sees (`server`), the GIL thread that runs stages in the server process (`gil_thread`), the loop of a
//! worker process (`worker_loop`), stage calling conventions (`stages`), value conversion (`convert`) and spec
//! dicts -> Rust spec (`spec`). The worker supervisor and its wire are plain Rust in `workers/`; the dispatcher
//! that shares stage calls among the GIL thread and the workers is `dispatch`.

pub mod convert;
pub mod gil_thread;
pub mod server;
pub mod spec;
pub mod stages;
pub mod worker_loop;

use pyo3::create_exception;

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
