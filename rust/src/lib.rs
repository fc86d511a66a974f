//! rustserve's native core: a MindSpore-Serving-compatible model server on tokio, tonic, axum and ONNX Runtime.
//! This file only wires modules together and defines the Python module.

pub mod batching;
pub mod codec;
pub mod error;
pub mod model;
pub mod proto;
pub mod request;
pub mod tensor;
