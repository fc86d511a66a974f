//! MindSpore gRPC proto codec: `MSService.Predict` messages <-> wire-neutral request and reply.
//! Decoding runs MindSpore's request tensor checks (`CheckRequestTensor`) so everything behind the ingress holds
//! valid tensors, and keeps the message's `Bytes` payloads without copying. Encoding applies the reply-collapse rule.

use crate::error::ServeError;
use crate::proto::ms;
use crate::request::{MethodRef, PredictReply, PredictRequest, ReplyShape};
use crate::tensor::{DType, NamedInstance, Tensor, TensorData, element_count};
use bytes::Bytes;

/// Decodes a gRPC `PredictRequest`, checking every tensor of every instance.
///
/// A missing `servable_spec` addresses servable "" (routing then answers it); zero instances are left to the
/// pipeline. Every failure is a whole-request `ServeError::InvalidInput` with MindSpore's text.
pub fn decode_request(req: ms::PredictRequest) -> Result<PredictRequest, ServeError> {
    let spec = req.servable_spec.unwrap_or_default();
    let target = MethodRef {
        servable: spec.name,
        method: spec.method_name,
        version: spec.version_number,
    };
    let instances = req
        .instances
        .into_iter()
        .map(decode_instance)
        .collect::<Result<_, _>>()?;
    Ok(PredictRequest { target, instances })
}

/// Encodes a reply after MindSpore's collapse rule; `spec` is the request's spec, echoed unchanged.
pub fn encode_reply(spec: ms::ServableSpec, reply: &PredictReply) -> ms::PredictReply {
    let mut out = ms::PredictReply {
        servable_spec: Some(spec),
        ..ms::PredictReply::default()
    };
    match reply.shape() {
        ReplyShape::AllOk { output_names, outputs } => {
            out.instances = outputs
                .iter()
                .map(|tensors| encode_instance(output_names, tensors))
                .collect();
        }
        ReplyShape::OneError(err) => out.error_msg.push(error_msg(err)),
        ReplyShape::Mixed { output_names, results } => {
            for result in results {
                // Good instances get code 0 and an empty text; failed ones an instance with no items.
                let (error, instance) = match result {
                    Ok(tensors) => (ms::ErrorMsg::default(), encode_instance(output_names, tensors)),
                    Err(err) => (error_msg(err), ms::Instance::default()),
                };
                out.error_msg.push(error);
                out.instances.push(instance);
            }
        }
    }
    out
}

/// `"Instances input <name> check failed, detail: <detail>"`: MindSpore's wrapping of a tensor check failure.
pub(crate) fn tensor_check_error(name: &str, detail: &str) -> ServeError {
    ServeError::InvalidInput(format!("Instances input {name} check failed, detail: {detail}"))
}

/// MindSpore's shape rule for request string/bytes tensors: `[]` or `[1]`; `Err` holds the check detail.
pub(crate) fn check_items_shape(shape: &[i64]) -> Result<(), String> {
    if shape.is_empty() || shape == [1] {
        return Ok(());
    }
    Err(format!(
        "Instance tensor check failed: bytes or string type input  shape can only be (1,) or empty, but given shape \
         is {}",
        shape_text(shape)
    ))
}

/// A shape as MindSpore's log stream prints a vector: `[1, 2, 3]`.
fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(", "))
}

fn decode_instance(instance: ms::Instance) -> Result<NamedInstance, ServeError> {
    // NOTE: rustserve has no shared-memory support; silently answering in `data` instead would leave the
    // client reading a segment nobody wrote.
    if let Some(name) = instance.output_buffers.keys().min() {
        return Err(ServeError::InvalidInput(format!(
            "Instance output buffers (shared memory) are not supported by rustserve, output name: {name}"
        )));
    }
    let mut items: Vec<(String, ms::Tensor)> = instance.items.into_iter().collect();
    // Map order is random; sorting makes the reported input the same on every run when several are bad.
    items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    items
        .into_iter()
        .map(|(name, tensor)| match decode_tensor(tensor) {
            Ok(tensor) => Ok((name, tensor)),
            Err(detail) => Err(tensor_check_error(&name, &detail)),
        })
        .collect()
}

/// One request tensor, checked in MindSpore's order; `Err` holds the check detail.
fn decode_tensor(tensor: ms::Tensor) -> Result<Tensor, String> {
    let shape = tensor.shape.map(|s| s.dims).unwrap_or_default();
    match DType::from_ms_proto(tensor.dtype) {
        Some(dtype) if dtype.is_variable() => decode_items(dtype, shape, tensor.bytes_val),
        dtype => decode_raw(dtype, shape, tensor.tensor_data),
    }
}

fn decode_items(dtype: DType, shape: Vec<i64>, items: Vec<Bytes>) -> Result<Tensor, String> {
    if items.len() != 1 {
        return Err("Instance tensor check failed: bytes or string type shape batch size can only be 1".into());
    }
    check_items_shape(&shape)?;
    // `DType::String` promises UTF-8 to the stages; MindSpore would hand Python undecodable bytes.
    if dtype == DType::String && items.iter().any(|item| std::str::from_utf8(item).is_err()) {
        return Err("Instance tensor check failed: string type input is not valid UTF-8".into());
    }
    Ok(Tensor {
        dtype,
        shape,
        data: TensorData::Items(items),
    })
}

fn decode_raw(dtype: Option<DType>, shape: Vec<i64>, data: Option<ms::tensor::TensorData>) -> Result<Tensor, String> {
    let mut zero_dim = false;
    for &dim in &shape {
        if dim < 0 || zero_dim {
            return Err(format!(
                "Tensor check failed: input  shape {} invalid",
                shape_text(&shape)
            ));
        }
        zero_dim |= dim == 0;
    }
    // MindSpore prints every type it has no item size for as MS_UNKNOWN, out-of-range values included.
    let dtype = dtype.ok_or("Tensor check failed: input data type proto::MS_UNKNOWN invalid")?;
    let raw = match data {
        Some(ms::tensor::TensorData::Data(raw)) => raw,
        Some(ms::tensor::TensorData::ShmData(_)) => {
            return Err("Tensor check failed: shared-memory tensors (shm_data) are not supported by rustserve".into());
        }
        None => Bytes::new(),
    };
    let expected = element_count(&shape).and_then(|count| count.checked_mul(dtype.item_size()));
    if expected != Some(raw.len()) {
        return Err(format!("Tensor check failed: input data size {} invalid", raw.len()));
    }
    Ok(Tensor {
        dtype,
        shape,
        data: TensorData::Raw(raw),
    })
}

fn encode_instance(output_names: &[String], tensors: &[Tensor]) -> ms::Instance {
    let items = output_names
        .iter()
        .zip(tensors)
        .map(|(name, tensor)| (name.clone(), encode_tensor(tensor)));
    ms::Instance {
        items: items.collect(),
        ..ms::Instance::default()
    }
}

/// Numeric tensors travel in `data`, string/bytes in `bytes_val`; cloning `Bytes` only bumps a refcount.
fn encode_tensor(tensor: &Tensor) -> ms::Tensor {
    let mut out = ms::Tensor {
        shape: Some(ms::TensorShape {
            dims: tensor.shape.clone(),
        }),
        dtype: tensor.dtype.to_ms_proto(),
        ..ms::Tensor::default()
    };
    match &tensor.data {
        TensorData::Raw(raw) => out.tensor_data = Some(ms::tensor::TensorData::Data(raw.clone())),
        TensorData::Items(items) => out.bytes_val.clone_from(items),
    }
    out
}

fn error_msg(err: &ServeError) -> ms::ErrorMsg {
    ms::ErrorMsg {
        error_code: err.code(),
        error_msg: Bytes::copy_from_slice(err.message().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;

    fn spec() -> ms::ServableSpec {
        ms::ServableSpec {
            name: "add".into(),
            method_name: "add_common".into(),
            version_number: 2,
        }
    }

    fn raw_tensor(dtype: i32, dims: Vec<i64>, data: Vec<u8>) -> ms::Tensor {
        ms::Tensor {
            shape: Some(ms::TensorShape { dims }),
            dtype,
            tensor_data: Some(ms::tensor::TensorData::Data(Bytes::from(data))),
            ..ms::Tensor::default()
        }
    }

    fn items_tensor(dtype: i32, dims: Vec<i64>, items: &[&[u8]]) -> ms::Tensor {
        ms::Tensor {
            shape: Some(ms::TensorShape { dims }),
            dtype,
            bytes_val: items.iter().map(|i| Bytes::copy_from_slice(i)).collect(),
            ..ms::Tensor::default()
        }
    }

    fn request(instances: Vec<Vec<(&str, ms::Tensor)>>) -> ms::PredictRequest {
        let instances = instances
            .into_iter()
            .map(|items| ms::Instance {
                items: items.into_iter().map(|(n, t)| (n.to_string(), t)).collect(),
                ..ms::Instance::default()
            })
            .collect();
        ms::PredictRequest {
            servable_spec: Some(spec()),
            instances,
        }
    }

    fn decode_one(tensor: ms::Tensor) -> Result<Tensor, String> {
        match decode_request(request(vec![vec![("x", tensor)]])) {
            Ok(mut req) => Ok(req.instances.remove(0).remove("x").unwrap()),
            Err(err) => Err(err.message().to_string()),
        }
    }

    fn check_failed(detail: &str) -> String {
        format!("Instances input x check failed, detail: {detail}")
    }

    #[test]
    fn decodes_spec_and_instances() {
        let req = request(vec![
            vec![
                ("x", raw_tensor(11, vec![2], vec![0; 8])),
                ("y", items_tensor(13, vec![], &[b"hi"])),
            ],
            vec![
                ("x", raw_tensor(11, vec![], vec![0; 4])),
                ("y", items_tensor(14, vec![1], &[b"\xff"])),
            ],
        ]);
        let decoded = decode_request(req).unwrap();
        assert_eq!(
            decoded.target,
            MethodRef {
                servable: "add".into(),
                method: "add_common".into(),
                version: 2
            }
        );
        assert_eq!(decoded.instances.len(), 2);
        assert_eq!(decoded.instances[0]["x"].shape, vec![2]);
        assert_eq!(decoded.instances[0]["y"], Tensor::scalar_string("hi"));
        assert_eq!(decoded.instances[1]["y"].dtype, DType::Bytes);
        assert_eq!(decoded.instances[1]["y"].shape, vec![1]);
    }

    #[test]
    fn missing_spec_and_zero_instances_decode() {
        let decoded = decode_request(ms::PredictRequest::default()).unwrap();
        assert_eq!(decoded.target, MethodRef::default());
        assert!(decoded.instances.is_empty());
    }

    #[test]
    fn payload_is_not_copied() {
        let data = Bytes::from(vec![1u8; 16]);
        let tensor = ms::Tensor {
            shape: Some(ms::TensorShape { dims: vec![4] }),
            dtype: 6,
            tensor_data: Some(ms::tensor::TensorData::Data(data.clone())),
            ..ms::Tensor::default()
        };
        let decoded = decode_one(tensor).unwrap();
        assert_eq!(decoded.raw().unwrap().as_ptr(), data.as_ptr());
    }

    #[test]
    fn every_dtype_round_trips() {
        for dtype in DType::ALL {
            let wire = if dtype.is_variable() {
                items_tensor(dtype.to_ms_proto(), vec![1], &[b"abc"])
            } else {
                let data = (0..dtype.item_size() * 6).map(|i| i as u8 % 2).collect();
                raw_tensor(dtype.to_ms_proto(), vec![2, 3], data)
            };
            let tensor = decode_one(wire.clone()).unwrap();
            assert_eq!(tensor.dtype, dtype);
            let reply = PredictReply::Instances {
                output_names: Arc::from(vec!["x".to_string()]),
                results: vec![Ok(vec![tensor])],
            };
            let encoded = encode_reply(spec(), &reply);
            assert!(encoded.error_msg.is_empty());
            assert_eq!(encoded.instances[0].items["x"], wire, "{dtype}");
        }
    }

    #[test]
    fn data_size_check() {
        let err = decode_one(raw_tensor(11, vec![2, 2], vec![0; 12])).unwrap_err();
        assert_eq!(err, check_failed("Tensor check failed: input data size 12 invalid"));
        let no_data = ms::Tensor {
            dtype: 11,
            ..ms::Tensor::default()
        };
        let err = decode_one(no_data).unwrap_err();
        assert_eq!(err, check_failed("Tensor check failed: input data size 0 invalid"));
        let huge = raw_tensor(12, vec![i64::MAX, i64::MAX], vec![]);
        assert_eq!(
            decode_one(huge).unwrap_err(),
            check_failed("Tensor check failed: input data size 0 invalid")
        );
    }

    #[test]
    fn data_type_check() {
        for dtype in [0, 15, -1] {
            let err = decode_one(raw_tensor(dtype, vec![1], vec![0; 4])).unwrap_err();
            assert_eq!(
                err,
                check_failed("Tensor check failed: input data type proto::MS_UNKNOWN invalid")
            );
        }
    }

    #[test]
    fn shape_check() {
        let err = decode_one(raw_tensor(11, vec![0, 3], vec![])).unwrap_err();
        assert_eq!(err, check_failed("Tensor check failed: input  shape [0, 3] invalid"));
        let err = decode_one(raw_tensor(11, vec![2, -1], vec![])).unwrap_err();
        assert_eq!(err, check_failed("Tensor check failed: input  shape [2, -1] invalid"));
        // The shape check runs before the dtype check, as in MindSpore.
        let err = decode_one(raw_tensor(0, vec![-1], vec![])).unwrap_err();
        assert_eq!(err, check_failed("Tensor check failed: input  shape [-1] invalid"));
        assert_eq!(
            decode_one(raw_tensor(11, vec![3, 0], vec![])).unwrap().shape,
            vec![3, 0]
        );
        assert_eq!(
            decode_one(raw_tensor(11, vec![1, 0], vec![])).unwrap().shape,
            vec![1, 0]
        );
    }

    #[test]
    fn string_and_bytes_checks() {
        let batch = check_failed("Instance tensor check failed: bytes or string type shape batch size can only be 1");
        assert_eq!(decode_one(items_tensor(13, vec![], &[])).unwrap_err(), batch);
        assert_eq!(decode_one(items_tensor(14, vec![2], &[b"a", b"b"])).unwrap_err(), batch);
        let err = decode_one(items_tensor(13, vec![1, 1], &[b"a"])).unwrap_err();
        assert_eq!(
            err,
            check_failed(
                "Instance tensor check failed: bytes or string type input  shape can only be (1,) or empty, but \
                 given shape is [1, 1]"
            )
        );
        assert!(
            decode_one(items_tensor(14, vec![2], &[b"a"]))
                .unwrap_err()
                .contains("given shape is [2]")
        );
        let err = decode_one(items_tensor(13, vec![], &[b"\xff\xfe"])).unwrap_err();
        assert_eq!(
            err,
            check_failed("Instance tensor check failed: string type input is not valid UTF-8")
        );
    }

    #[test]
    fn shared_memory_is_refused() {
        let shm = ms::Tensor {
            shape: Some(ms::TensorShape { dims: vec![1] }),
            dtype: 11,
            tensor_data: Some(ms::tensor::TensorData::ShmData(ms::ShmTensorData::default())),
            ..ms::Tensor::default()
        };
        let err = decode_one(shm).unwrap_err();
        assert!(
            err.starts_with("Instances input x check failed, detail: ") && err.contains("not supported"),
            "{err}"
        );
        let mut req = request(vec![vec![("x", raw_tensor(11, vec![], vec![0; 4]))]]);
        req.instances[0]
            .output_buffers
            .insert("y".into(), ms::ShmTensorData::default());
        let err = decode_request(req).unwrap_err();
        assert!(err.message().contains("not supported") && err.message().ends_with("output name: y"));
    }

    #[test]
    fn first_bad_input_is_deterministic_and_errors_are_code_2() {
        let req = request(vec![
            vec![("a", raw_tensor(11, vec![], vec![0; 4]))],
            vec![
                ("c", raw_tensor(11, vec![1], vec![])),
                ("b", raw_tensor(0, vec![], vec![])),
            ],
        ]);
        let err = decode_request(req).unwrap_err();
        assert_eq!(err.code(), 2);
        assert!(
            err.message().starts_with("Instances input b check failed"),
            "{}",
            err.message()
        );
    }

    fn names() -> Arc<[String]> {
        Arc::from(vec!["y".to_string(), "z".to_string()])
    }

    fn outputs(v: f32) -> Vec<Tensor> {
        vec![
            Tensor::from_values(vec![1], &[v]).unwrap(),
            Tensor::scalar_bytes(&b"ok"[..]),
        ]
    }

    #[test]
    fn all_ok_reply() {
        let reply = PredictReply::Instances {
            output_names: names(),
            results: vec![Ok(outputs(1.0)), Ok(outputs(2.0))],
        };
        let out = encode_reply(spec(), &reply);
        assert_eq!(out.servable_spec, Some(spec()));
        assert!(out.error_msg.is_empty());
        assert_eq!(out.instances.len(), 2);
        let y = &out.instances[1].items["y"];
        assert_eq!(
            y.tensor_data,
            Some(ms::tensor::TensorData::Data(Bytes::from(2.0f32.to_le_bytes().to_vec())))
        );
        assert_eq!(out.instances[1].items["z"].bytes_val, vec![Bytes::from_static(b"ok")]);
        assert_eq!(
            out.instances[1].items["z"].shape,
            Some(ms::TensorShape { dims: vec![] })
        );
    }

    #[test]
    fn one_error_reply() {
        let failed = PredictReply::Failed(ServeError::InvalidInput("Request servable(a) method(b) , bad".into()));
        let out = encode_reply(spec(), &failed);
        assert!(out.instances.is_empty());
        assert_eq!(
            out.error_msg,
            vec![ms::ErrorMsg {
                error_code: 2,
                error_msg: Bytes::from("Request servable(a) method(b) , bad")
            }]
        );
        let err = Err(ServeError::Stage("ValueError: x".into()));
        let same = PredictReply::Instances {
            output_names: names(),
            results: vec![err.clone(), err],
        };
        let out = encode_reply(spec(), &same);
        assert!(out.instances.is_empty());
        assert_eq!(
            out.error_msg,
            vec![ms::ErrorMsg {
                error_code: 3,
                error_msg: Bytes::from("ValueError: x")
            }]
        );
    }

    #[test]
    fn mixed_reply() {
        let results = vec![
            Ok(outputs(1.0)),
            Err(ServeError::Stage("boom".into())),
            Err(ServeError::Model("m".into())),
        ];
        let out = encode_reply(
            spec(),
            &PredictReply::Instances {
                output_names: names(),
                results,
            },
        );
        let codes: Vec<(i64, Bytes)> = out
            .error_msg
            .iter()
            .map(|e| (e.error_code, e.error_msg.clone()))
            .collect();
        assert_eq!(
            codes,
            vec![(0, Bytes::new()), (3, Bytes::from("boom")), (1, Bytes::from("m"))]
        );
        assert_eq!(out.instances.len(), 3);
        assert_eq!(out.instances[0].items.len(), 2);
        assert_eq!(out.instances[1].items, HashMap::new());
        assert_eq!(out.instances[2].items, HashMap::new());
    }
}
