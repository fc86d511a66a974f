//! Wire formats <-> core types, one file per format. No routing or scheduling here.

pub mod ms_json;
pub mod ms_proto;
