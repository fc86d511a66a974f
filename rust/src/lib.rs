//! rustserve's native core: a MindSpore-Serving-compatible model server on tokio, tonic, axum and ONNX Runtime.
//! This file only wires modules together and defines the Python module `rustserve._rustserve`.

pub mod batching;
pub mod codec;
pub mod dispatch;
pub mod distributed;
pub mod error;
pub mod ingress;
pub mod log_text;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod proto;
pub mod python;
pub mod request;
pub mod runtime;
pub mod servable;
pub mod service;
pub mod spec;
pub mod tensor;
pub mod trace;
pub mod workers;

use pyo3::prelude::*;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[pymodule]
fn _rustserve(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULTS", python::server::defaults(py)?)?;
    m.add_class::<python::server::PyServer>()?;
    m.add_function(wrap_pyfunction!(python::server::init_onnxruntime, m)?)?;
    m.add_function(wrap_pyfunction!(python::server::onnx_signature, m)?)?;
    m.add_function(wrap_pyfunction!(python::logging::init_logging, m)?)?;
    m.add_function(wrap_pyfunction!(python::logging::log_format, m)?)?;
    m.add_function(wrap_pyfunction!(python::logging::log, m)?)?;
    m.add_function(wrap_pyfunction!(python::stages::model_call, m)?)?;
    m.add_function(wrap_pyfunction!(python::worker_loop::run_worker, m)?)?;
    m.add_function(wrap_pyfunction!(python::distributed::start_agent_hub, m)?)?;
    m.add_function(wrap_pyfunction!(python::distributed::stop_agent_hub, m)?)?;
    m.add_function(wrap_pyfunction!(python::distributed::stop_agent_hubs, m)?)?;
    m.add_function(wrap_pyfunction!(python::distributed::agents_ready, m)?)?;
    m.add_function(wrap_pyfunction!(python::distributed::agent_ranks, m)?)?;
    m.add_function(wrap_pyfunction!(python::distributed::run_agent, m)?)?;
    m.add("RustServeError", py.get_type::<python::RustServeError>())?;
    m.add("ServableStartError", py.get_type::<python::ServableStartError>())?;
    m.add("ServerStartError", py.get_type::<python::ServerStartError>())?;
    m.add("ModelCallError", py.get_type::<python::ModelCallError>())?;
    Ok(())
}
