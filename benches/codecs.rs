//! Codec hot paths: MindSpore proto decode/encode (wire bytes <-> core types), MindSpore JSON decode/encode and
//! KServe v2 JSON decode.
//! Run with `make bench`; numbers are for comparing revisions on the same machine, not targets.

use _rustserve::codec::{kserve_json, ms_json, ms_proto};
use _rustserve::proto::ms;
use _rustserve::request::PredictReply;
use _rustserve::tensor::Tensor;
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use std::hint::black_box;
use std::sync::Arc;

fn proto_request(instances: usize, floats: usize) -> Bytes {
    let tensor = ms::Tensor {
        shape: Some(ms::TensorShape {
            dims: vec![floats as i64],
        }),
        dtype: ms::DataType::MsFloat32 as i32,
        bytes_val: vec![],
        tensor_data: Some(ms::tensor::TensorData::Data(Bytes::from(vec![0u8; floats * 4]))),
    };
    let instance = ms::Instance {
        items: [("x1".to_string(), tensor.clone()), ("x2".to_string(), tensor)]
            .into_iter()
            .collect(),
        output_buffers: std::collections::HashMap::default(),
    };
    let request = ms::PredictRequest {
        servable_spec: Some(ms::ServableSpec {
            name: "add".into(),
            method_name: "add_common".into(),
            version_number: 0,
        }),
        instances: vec![instance; instances],
    };
    Bytes::from(request.encode_to_vec())
}

fn reply(instances: usize, floats: usize) -> PredictReply {
    let y = Tensor::from_values(vec![floats as i64], &vec![1.5f32; floats]).expect("valid tensor");
    PredictReply::Instances {
        output_names: Arc::from(vec!["y".to_string()]),
        results: vec![Ok(vec![y]); instances],
    }
}

fn bench_proto(c: &mut Criterion) {
    for (instances, floats) in [(1, 4), (8, 3 * 224 * 224)] {
        let wire = proto_request(instances, floats);
        c.bench_function(&format!("ms_proto decode {instances}x{floats}f32"), |b| {
            b.iter(|| {
                let message = ms::PredictRequest::decode(black_box(wire.clone())).expect("valid message");
                ms_proto::decode_request(message).expect("valid request")
            });
        });
        let answer = reply(instances, floats);
        c.bench_function(&format!("ms_proto encode {instances}x{floats}f32"), |b| {
            b.iter(|| ms_proto::encode_reply(ms::ServableSpec::default(), black_box(&answer)).encode_to_vec());
        });
    }
}

fn bench_json(c: &mut Criterion) {
    let body = br#"{"instances": [{"x1": [[1.0, 2.0], [3.0, 4.0]], "x2": [[1.0, 2.0], [3.0, 4.0]]}]}"#;
    c.bench_function("ms_json decode 1x[2,2]f32", |b| {
        b.iter(|| ms_json::decode_body(black_box(body), 1 << 20));
    });
    let answer = reply(1, 4);
    c.bench_function("ms_json encode 1x[4]f32", |b| {
        b.iter(|| ms_json::encode_reply(black_box(&answer)));
    });
    let answer = reply(10_000, 4);
    c.bench_function("ms_json encode 10000x[4]f32", |b| {
        b.iter(|| ms_json::encode_reply(black_box(&answer)));
    });
}

fn v2_body(floats: usize) -> Bytes {
    let data = vec!["1.5"; floats].join(",");
    let input = |name: &str| format!(r#"{{"name":"{name}","datatype":"FP32","shape":[{floats}],"data":[{data}]}}"#);
    Bytes::from(format!(r#"{{"inputs":[{},{}]}}"#, input("x1"), input("x2")))
}

fn bench_kserve_json(c: &mut Criterion) {
    for floats in [4, 100_000] {
        let body = v2_body(floats);
        c.bench_function(&format!("kserve_json decode 2x[{floats}]f32"), |b| {
            b.iter(|| kserve_json::decode_request(black_box(&body), None).expect("valid request"));
        });
    }
}

criterion_group!(benches, bench_proto, bench_json, bench_kserve_json);
criterion_main!(benches);
