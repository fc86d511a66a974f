//! Wire formats <-> core types, one file per format. No routing or scheduling here.

pub mod json_text;
pub mod kserve;
pub mod kserve_json;
pub mod kserve_json_doc;
pub mod kserve_proto;
pub mod ms_json;
pub mod ms_proto;

#[cfg(test)]
mod fuzz_tests;
