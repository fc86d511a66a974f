//! rustserve's native core (temporary minimal module list while the batcher lands).

pub mod batching;
pub mod codec;
pub mod error;
pub mod model;
pub mod proto;
pub mod request;
pub mod tensor;
