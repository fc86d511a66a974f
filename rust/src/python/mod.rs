//! The Python bridge: the only place (with lib.rs) that touches pyo3. The GIL thread (`executor`), worker
//! processes (`workers`, over `ipc`), the dispatcher that shares Python stage calls among them (`dispatch`), value
//! conversion (`convert`), stage calling conventions (`stages`), spec dicts -> Rust spec (`spec`) and the
//! `#[pyclass]` types Python sees (`classes`).

pub mod classes;
pub mod convert;
pub mod dispatch;
pub mod executor;
pub mod ipc;
pub mod spec;
pub mod stages;
pub mod workers;

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
