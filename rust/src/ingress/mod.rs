//! Protocol front doors. Each only decodes the wire into core types, calls `Service::predict`, and encodes
//! the answer; no routing or scheduling lives here.

pub mod body;
pub mod budget;
pub mod grpc;
pub mod grpc_deadline;
pub mod http;
pub mod kserve;
pub mod kserve_grpc;
pub mod kserve_http;
pub mod listen;
pub mod tls;
