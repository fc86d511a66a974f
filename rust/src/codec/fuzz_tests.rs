//! Property tests ("fuzzing" without a nightly toolchain) of every wire decoder: MindSpore proto -> instances,
//! MindSpore JSON, v2 JSON, v2 binary framing and v2 proto. Each target feeds random bytes, mutations of a valid
//! message and structured-but-wrong messages (odd dtypes, negative / huge dims, short data) and asserts that the
//! decoder returns `Ok` or an error with a text, and never panics.
//!
//! `cargo test --lib codec::fuzz_tests` runs 256 cases per target. `RUSTSERVE_FUZZ_SECONDS=N` makes each target run
//! for N seconds instead (rounds of 4096 cases with fresh seeds) and print its execution count; `scripts/fuzz.sh`
//! does that for every target.

use super::kserve::split_batch;
use super::kserve_proto::pb;
use super::{kserve_json, kserve_proto, ms_json, ms_proto};
use crate::proto::ms;
use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use serde_json::{Value, json};
use std::fmt::Debug;
use std::time::{Duration, Instant};

/// Runs `check` over `strategy`: 256 cases, or rounds until `RUSTSERVE_FUZZ_SECONDS` have passed. Panics (with the
/// shrunk input) when a case panics.
fn fuzz<S>(name: &str, strategy: &S, check: impl Fn(S::Value))
where
    S: Strategy,
    S::Value: Debug,
{
    let seconds = std::env::var("RUSTSERVE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0);
    let per_round: u32 = if seconds.is_some() { 4096 } else { 256 };
    let deadline = Instant::now() + Duration::from_secs_f64(seconds.unwrap_or(0.0));
    let mut executions = 0u64;
    loop {
        let mut config = Config::with_cases(per_round);
        config.failure_persistence = None;
        // A fresh randomly seeded runner per round, so a long run keeps exploring.
        let mut runner = TestRunner::new(config);
        let result = runner.run(strategy, |value| {
            check(value);
            Ok(())
        });
        executions += u64::from(per_round);
        if let Err(err) = result {
            eprintln!("fuzz {name}: {executions} executions, 1 finding: {err}");
            panic!("fuzz target {name} found a panic: {err}");
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    eprintln!("fuzz {name}: {executions} executions, 0 findings");
}

/// Overwrites, truncates and extends a valid message's bytes.
fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = seed.len();
    (
        prop::collection::vec((0..len.max(1), any::<u8>()), 0..8),
        0..=len,
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(move |(edits, keep, tail)| {
            let mut bytes = seed.clone();
            for (at, byte) in edits {
                if let Some(slot) = bytes.get_mut(at) {
                    *slot = byte;
                }
            }
            bytes.truncate(keep.max(1));
            bytes.extend(tail);
            bytes
        })
}

/// Raw bytes, mutations of `seed`, in equal parts.
fn bytes_or_mutations(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![prop::collection::vec(any::<u8>(), 0..256), mutated(seed)]
}

/// Dims a client could send: small, zero, negative, huge.
fn dims() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(
        prop_oneof![0..4i64, -3..0i64, Just(i64::MAX), Just(1i64 << 62), any::<i64>()],
        0..4,
    )
}

/// JSON values built from the words the decoders look for, nested a few levels.
fn json_value(keys: &'static [&'static str], words: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-3i64..5).prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(words).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(keys), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
        ]
    })
}

const MS_KEYS: &[&str] = &["instances", "x1", "x2", "b64", "type", "shape", "s"];
const MS_WORDS: &[&str] = &[
    "int8", "uint8", "int32", "int64", "fp16", "fp32", "float32", "fp64", "bool", "str", "bytes", "AAAAAA==", "!!",
];
const V2_KEYS: &[&str] = &[
    "inputs",
    "outputs",
    "name",
    "datatype",
    "shape",
    "data",
    "parameters",
    "binary_data_size",
    "binary_data",
    "binary_data_output",
    "content_type",
    "id",
];
const V2_WORDS: &[&str] = &[
    "x1", "x2", "FP32", "FP16", "BF16", "INT8", "INT64", "UINT64", "BOOL", "BYTES", "str", "bytes", "y",
];

fn ms_tensor() -> impl Strategy<Value = ms::Tensor> {
    (
        dims(),
        -2..20i32,
        prop::collection::vec(any::<u8>(), 0..48),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..3),
    )
        .prop_map(|(dims, dtype, data, bytes_val)| ms::Tensor {
            shape: Some(ms::TensorShape { dims }),
            dtype,
            bytes_val: bytes_val.into_iter().map(Bytes::from).collect(),
            tensor_data: Some(ms::tensor::TensorData::Data(Bytes::from(data))),
        })
}

fn ms_request() -> impl Strategy<Value = ms::PredictRequest> {
    let instance = prop::collection::hash_map(prop::sample::select(MS_KEYS).prop_map(str::to_owned), ms_tensor(), 0..3)
        .prop_map(|items| ms::Instance {
            items,
            ..ms::Instance::default()
        });
    (prop::collection::vec(instance, 0..4), any::<u64>()).prop_map(|(instances, version)| ms::PredictRequest {
        servable_spec: Some(ms::ServableSpec {
            name: "add".into(),
            method_name: "add_common".into(),
            version_number: version % 3,
        }),
        instances,
    })
}

fn valid_ms_request() -> Vec<u8> {
    let tensor = ms::Tensor {
        shape: Some(ms::TensorShape { dims: vec![2, 2] }),
        dtype: 11,
        bytes_val: Vec::new(),
        tensor_data: Some(ms::tensor::TensorData::Data(Bytes::from(vec![0u8; 16]))),
    };
    let mut instance = ms::Instance::default();
    instance.items.insert("x1".into(), tensor.clone());
    instance.items.insert("x2".into(), tensor);
    ms::PredictRequest {
        servable_spec: Some(ms::ServableSpec {
            name: "add".into(),
            method_name: "add_common".into(),
            version_number: 0,
        }),
        instances: vec![instance],
    }
    .encode_to_vec()
}

fn check_ms_proto(request: ms::PredictRequest) {
    if let Err(err) = ms_proto::decode_request(request) {
        assert!(!err.message().is_empty());
    }
}

#[test]
fn ms_proto_bytes() {
    fuzz("ms_proto_bytes", &bytes_or_mutations(valid_ms_request()), |bytes| {
        if let Ok(request) = ms::PredictRequest::decode(bytes.as_slice()) {
            check_ms_proto(request);
        }
    });
}

#[test]
fn ms_proto_structured() {
    fuzz("ms_proto_structured", &ms_request(), check_ms_proto);
}

fn check_ms_json(body: &[u8]) {
    if let Err(err) = ms_json::decode_body(body, 1 << 20) {
        assert!(!err.message().is_empty());
    }
}

#[test]
fn ms_json_bytes() {
    let seed = br#"{"instances":[{"x1":[[1.0,2.0],[3.0,4.0]],"x2":{"b64":"AAAAAAAAAAA=","type":"fp32","shape":[2]}}]}"#;
    fuzz("ms_json_bytes", &bytes_or_mutations(seed.to_vec()), |bytes| {
        check_ms_json(&bytes);
    });
}

#[test]
fn ms_json_structured() {
    let strategy = json_value(MS_KEYS, MS_WORDS).prop_map(|v| json!({ "instances": [v] }));
    fuzz("ms_json_structured", &strategy, |value| {
        check_ms_json(value.to_string().as_bytes());
    });
}

fn check_v2_json(body: &Bytes, header_len: Option<usize>) {
    if let Ok(request) = kserve_json::decode_request(body, header_len) {
        // The batch split runs next on the request path: it must hold up too.
        let _ = split_batch(request.inputs);
    }
}

#[test]
fn v2_json_bytes() {
    let seed = br#"{"inputs":[{"name":"x1","datatype":"FP32","shape":[1,2],"data":[1.0,2.0]}]}"#;
    fuzz("v2_json_bytes", &bytes_or_mutations(seed.to_vec()), |bytes| {
        check_v2_json(&Bytes::from(bytes), None);
    });
}

#[test]
fn v2_json_structured() {
    let input = json_value(V2_KEYS, V2_WORDS);
    let strategy = prop::collection::vec(input, 0..3).prop_map(|inputs| json!({ "inputs": inputs }));
    fuzz("v2_json_structured", &strategy, |value| {
        check_v2_json(&Bytes::from(value.to_string()), None);
    });
}

#[test]
fn v2_binary_framing() {
    // A JSON header (sometimes with binary_data_size fields), random binary data and a header length that is
    // right, off by a little, or random.
    let sized = (
        prop::sample::select(V2_WORDS),
        dims(),
        prop_oneof![0..64i64, any::<i64>()],
    )
        .prop_map(|(datatype, shape, size)| {
            json!({"name": "x1", "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": size}})
        });
    let header = prop_oneof![
        prop::collection::vec(sized, 0..3).prop_map(|inputs| json!({ "inputs": inputs })),
        json_value(V2_KEYS, V2_WORDS),
    ];
    let strategy = (
        header,
        prop::collection::vec(any::<u8>(), 0..96),
        prop_oneof![Just(0i64), -3..3i64, any::<i64>()],
    );
    fuzz("v2_binary_framing", &strategy, |(header, binary, skew)| {
        let mut body = header.to_string().into_bytes();
        let exact = body.len();
        body.extend(binary);
        let length = if skew.unsigned_abs() < 8 {
            exact.saturating_add_signed(isize::try_from(skew).unwrap_or(0))
        } else {
            usize::try_from(skew.unsigned_abs()).unwrap_or(usize::MAX)
        };
        check_v2_json(&Bytes::from(body), Some(length));
    });
}

fn v2_request() -> impl Strategy<Value = pb::ModelInferRequest> {
    let contents = prop_oneof![
        Just(None),
        prop::collection::vec(any::<f32>(), 0..8).prop_map(|fp32_contents| Some(pb::InferTensorContents {
            fp32_contents,
            ..pb::InferTensorContents::default()
        })),
        prop::collection::vec(any::<i64>(), 0..8).prop_map(|int64_contents| Some(pb::InferTensorContents {
            int64_contents,
            ..pb::InferTensorContents::default()
        })),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), 0..4).prop_map(|items| Some(
            pb::InferTensorContents {
                bytes_contents: items.into_iter().map(Bytes::from).collect(),
                ..pb::InferTensorContents::default()
            }
        )),
    ];
    let input = (
        prop::sample::select(V2_WORDS),
        prop::sample::select(V2_WORDS),
        dims(),
        contents,
    )
        .prop_map(
            |(name, datatype, shape, contents)| pb::model_infer_request::InferInputTensor {
                name: name.into(),
                datatype: datatype.into(),
                shape,
                contents,
                ..Default::default()
            },
        );
    (
        prop::collection::vec(input, 0..3),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..3),
    )
        .prop_map(|(inputs, raw)| pb::ModelInferRequest {
            model_name: "add.add_common".into(),
            inputs,
            raw_input_contents: raw.into_iter().map(Bytes::from).collect(),
            ..Default::default()
        })
}

fn check_v2_proto(request: pb::ModelInferRequest) {
    if let Ok(request) = kserve_proto::decode_request(request) {
        let _ = split_batch(request.inputs);
    }
}

#[test]
fn v2_proto_bytes() {
    let seed = pb::ModelInferRequest {
        model_name: "add.add_common".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: "x1".into(),
            datatype: "FP32".into(),
            shape: vec![1, 2],
            ..Default::default()
        }],
        raw_input_contents: vec![Bytes::from(vec![0u8; 8])],
        ..Default::default()
    }
    .encode_to_vec();
    fuzz("v2_proto_bytes", &bytes_or_mutations(seed), |bytes| {
        if let Ok(request) = pb::ModelInferRequest::decode(bytes.as_slice()) {
            check_v2_proto(request);
        }
    });
}

#[test]
fn v2_proto_structured() {
    fuzz("v2_proto_structured", &v2_request(), check_v2_proto);
}

// Regression tests of the findings.

#[test]
fn huge_shape_with_no_data_is_refused_not_wrapped() {
    // [2^62] FP32 is 2^64 bytes: the unchecked product wrapped to 0 in release builds and let an empty payload in.
    let err = super::kserve::tensor_from_raw("input 'x'", crate::tensor::DType::Float32, vec![1 << 62], Bytes::new())
        .unwrap_err();
    assert_eq!(
        err,
        "input 'x': invalid shape [4611686018427387904] (the data size overflows)"
    );
}

#[test]
fn absurd_batch_of_empty_rows_is_refused() {
    // [2^62, 0] holds no data, so only the cap stops split_batch from allocating 2^62 instances.
    let tensor =
        super::kserve::tensor_from_raw("x", crate::tensor::DType::Float32, vec![1 << 62, 0], Bytes::new()).unwrap();
    let input = super::kserve::InferInput {
        name: "x".into(),
        tensor,
    };
    let err = split_batch(vec![input]).unwrap_err();
    assert!(err.contains("more than the limit of 1048576 instances"), "{err}");
}
