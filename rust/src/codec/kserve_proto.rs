//! Open Inference Protocol (KServe v2) gRPC codec: `inference.ModelInferRequest` (inputs from `raw_input_contents` or
//! typed `contents`) into `InferRequest`, answers into `ModelInferResponse` (outputs always in `raw_output_contents`),
//! and the metadata, configuration, statistics and index messages.

use super::kserve::{
    EXTENSIONS, IndexEntry, InferInput, InferRequest, InferResponse, ModelDescription, ModelStatsEntry, PLATFORM,
    RequestedOutput, SERVER_NAME, config_type_number, count_of, datatype, parse_datatype, raw_contents,
    tensor_from_raw,
};
use crate::tensor::{DType, Element, Tensor, TensorData};
use bytes::Bytes;
use std::collections::HashMap;

/// Generated messages and the tonic service of proto/kserve (package `inference`).
#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("inference");
}

use pb::infer_parameter::ParameterChoice;

fn string_param(parameters: &HashMap<String, pb::InferParameter>, key: &str) -> Option<String> {
    match parameters.get(key)?.parameter_choice.as_ref()? {
        ParameterChoice::StringParam(s) => Some(s.clone()),
        _ => None,
    }
}

fn str_param(value: &str) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(ParameterChoice::StringParam(value.to_owned())),
    }
}

/// Decodes a `ModelInferRequest` (model name and version are read by the caller).
pub fn decode_request(request: pb::ModelInferRequest) -> Result<InferRequest, String> {
    let raw = request.raw_input_contents;
    if !raw.is_empty() && raw.len() != request.inputs.len() {
        return Err(format!(
            "the request has {} raw_input_contents for {} inputs: give every input raw, or none",
            raw.len(),
            request.inputs.len()
        ));
    }
    let mut raw = raw.into_iter();
    let mut inputs: Vec<InferInput> = Vec::with_capacity(request.inputs.len());
    let mut names = std::collections::HashSet::with_capacity(request.inputs.len());
    for input in request.inputs {
        let what = format!("input '{}'", input.name);
        if input.parameters.contains_key("shared_memory_region") {
            return Err(format!(
                "{what}: shared-memory tensors are not supported by rustserve yet"
            ));
        }
        let text = match string_param(&input.parameters, "content_type").as_deref() {
            None | Some("bytes" | "base64") => false,
            Some("str") => true,
            Some(other) => return Err(format!("{what}: content_type '{other}' is not supported (use \"str\")")),
        };
        let dtype = parse_datatype(&input.datatype, text).map_err(|e| format!("{what}: {e}"))?;
        if input.shape.iter().any(|&d| d < 0) {
            return Err(format!("{what}: invalid shape {:?} (dims must be >= 0)", input.shape));
        }
        let tensor = if let Some(bytes) = raw.next() {
            if input.contents.is_some() {
                return Err(format!("{what} has both raw_input_contents and contents"));
            }
            tensor_from_raw(&what, dtype, input.shape, bytes)?
        } else {
            let contents = input.contents.unwrap_or_default();
            tensor_from_contents(&what, dtype, input.shape, contents)?
        };
        if !names.insert(input.name.clone()) {
            return Err(format!("{what} is given twice"));
        }
        inputs.push(InferInput {
            name: input.name,
            tensor,
        });
    }
    let mut outputs = Vec::with_capacity(request.outputs.len());
    for output in request.outputs {
        if output.parameters.contains_key("shared_memory_region") {
            return Err(format!(
                "output '{}': shared-memory tensors are not supported by rustserve yet",
                output.name
            ));
        }
        if output.parameters.contains_key("classification") {
            return Err(format!(
                "output '{}': the classification extension is not supported by rustserve",
                output.name
            ));
        }
        outputs.push(RequestedOutput {
            name: output.name,
            binary: None,
        });
    }
    Ok(InferRequest {
        id: (!request.id.is_empty()).then_some(request.id),
        inputs,
        outputs,
        binary_output: false,
    })
}

fn tensor_from_contents(
    what: &str,
    dtype: DType,
    shape: Vec<i64>,
    contents: pb::InferTensorContents,
) -> Result<Tensor, String> {
    let count = count_of(what, &shape)?;
    let check = |found: usize, list: &str| {
        if found == count {
            Ok(())
        } else {
            Err(format!(
                "{what}: {list} has {found} elements but shape {shape:?} needs {count}"
            ))
        }
    };
    let narrow = |list: &str| format!("{what}: a value in {list} does not fit {}", datatype(dtype));
    let raw: Vec<u8> = match dtype {
        DType::Bool => {
            check(contents.bool_contents.len(), "bool_contents")?;
            contents.bool_contents.iter().map(|&b| u8::from(b)).collect()
        }
        DType::Int8 => {
            check(contents.int_contents.len(), "int_contents")?;
            let v: Vec<i8> = convert(&contents.int_contents).ok_or_else(|| narrow("int_contents"))?;
            le(&v)
        }
        DType::Int16 => {
            check(contents.int_contents.len(), "int_contents")?;
            let v: Vec<i16> = convert(&contents.int_contents).ok_or_else(|| narrow("int_contents"))?;
            le(&v)
        }
        DType::Int32 => {
            check(contents.int_contents.len(), "int_contents")?;
            le(&contents.int_contents)
        }
        DType::Int64 => {
            check(contents.int64_contents.len(), "int64_contents")?;
            le(&contents.int64_contents)
        }
        DType::UInt8 => {
            check(contents.uint_contents.len(), "uint_contents")?;
            let v: Vec<u8> = convert(&contents.uint_contents).ok_or_else(|| narrow("uint_contents"))?;
            v
        }
        DType::UInt16 => {
            check(contents.uint_contents.len(), "uint_contents")?;
            let v: Vec<u16> = convert(&contents.uint_contents).ok_or_else(|| narrow("uint_contents"))?;
            le(&v)
        }
        DType::UInt32 => {
            check(contents.uint_contents.len(), "uint_contents")?;
            le(&contents.uint_contents)
        }
        DType::UInt64 => {
            check(contents.uint64_contents.len(), "uint64_contents")?;
            le(&contents.uint64_contents)
        }
        DType::Float16 => {
            return Err(format!(
                "{what}: FP16 has no typed contents in the protocol: send it in raw_input_contents"
            ));
        }
        DType::Float32 => {
            check(contents.fp32_contents.len(), "fp32_contents")?;
            le(&contents.fp32_contents)
        }
        DType::Float64 => {
            check(contents.fp64_contents.len(), "fp64_contents")?;
            le(&contents.fp64_contents)
        }
        DType::String | DType::Bytes => {
            check(contents.bytes_contents.len(), "bytes_contents")?;
            return Ok(Tensor {
                dtype,
                shape,
                data: TensorData::Items(contents.bytes_contents),
            });
        }
    };
    Tensor::from_raw(dtype, shape, raw).map_err(|e| format!("{what}: {e}"))
}

fn convert<A: Copy, B: TryFrom<A>>(values: &[A]) -> Option<Vec<B>> {
    values.iter().map(|&v| B::try_from(v).ok()).collect()
}

fn le<T: Element>(values: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * T::DTYPE.item_size());
    for &v in values {
        v.write_le(&mut out);
    }
    out
}

/// Encodes an answer; every output travels in `raw_output_contents`.
pub fn encode_response(response: InferResponse) -> pb::ModelInferResponse {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw: Vec<Bytes> = Vec::with_capacity(response.outputs.len());
    for output in response.outputs {
        let mut parameters = HashMap::new();
        if output.tensor.dtype == DType::String {
            parameters.insert("content_type".to_owned(), str_param("str"));
        }
        raw.push(raw_contents(&output.tensor));
        outputs.push(pb::model_infer_response::InferOutputTensor {
            name: output.name,
            datatype: datatype(output.tensor.dtype).to_owned(),
            shape: output.tensor.shape,
            parameters,
            contents: None,
        });
    }
    pb::ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id.unwrap_or_default(),
        parameters: HashMap::new(),
        outputs,
        raw_output_contents: raw,
    }
}

/// `ServerMetadata`.
pub fn server_metadata() -> pb::ServerMetadataResponse {
    pb::ServerMetadataResponse {
        name: SERVER_NAME.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        extensions: EXTENSIONS.iter().map(|&e| e.to_owned()).collect(),
    }
}

/// `ModelMetadata`.
pub fn model_metadata(description: &ModelDescription) -> pb::ModelMetadataResponse {
    let tensors = |list: &[super::kserve::TensorMeta]| {
        list.iter()
            .map(|t| pb::model_metadata_response::TensorMetadata {
                name: t.name.clone(),
                datatype: t.datatype().to_owned(),
                shape: t.shape(description.max_batch_size),
            })
            .collect()
    };
    pb::ModelMetadataResponse {
        name: description.name.clone(),
        versions: description.versions.iter().map(u64::to_string).collect(),
        platform: PLATFORM.into(),
        inputs: tensors(&description.inputs),
        outputs: tensors(&description.outputs),
    }
}

/// `ModelConfig` (the same content as the REST JSON form).
pub fn model_config(description: &ModelDescription) -> pb::ModelConfigResponse {
    let input = description
        .inputs
        .iter()
        .map(|t| pb::ModelInput {
            name: t.name.clone(),
            data_type: config_type_number(t.dtype),
            format: pb::model_input::Format::None as i32,
            dims: t.dims.clone(),
            is_shape_tensor: false,
            allow_ragged_batch: false,
            optional: false,
        })
        .collect();
    let output = description
        .outputs
        .iter()
        .map(|t| pb::ModelOutput {
            name: t.name.clone(),
            data_type: config_type_number(t.dtype),
            dims: t.dims.clone(),
            label_filename: String::new(),
            is_shape_tensor: false,
        })
        .collect();
    let scheduling_choice = description.dynamic_batching.then(|| {
        pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
            preferred_batch_size: Vec::new(),
            max_queue_delay_microseconds: 0,
            preserve_ordering: true,
        })
    });
    pb::ModelConfigResponse {
        config: Some(pb::ModelConfig {
            name: description.name.clone(),
            platform: PLATFORM.into(),
            backend: SERVER_NAME.into(),
            version_policy: Some(pb::ModelVersionPolicy {
                policy_choice: Some(pb::model_version_policy::PolicyChoice::Latest(
                    pb::model_version_policy::Latest { num_versions: 1 },
                )),
            }),
            max_batch_size: i32::try_from(description.max_batch_size).unwrap_or(i32::MAX),
            input,
            output,
            scheduling_choice,
            instance_group: vec![pb::ModelInstanceGroup {
                name: description.name.clone(),
                kind: pb::model_instance_group::Kind::Cpu as i32,
                count: 1,
                gpus: Vec::new(),
            }],
            default_model_filename: description.model_files.first().cloned().unwrap_or_default(),
            parameters: HashMap::new(),
            model_transaction_policy: Some(pb::ModelTransactionPolicy { decoupled: false }),
        }),
    }
}

fn duration(stat: (u64, u64)) -> pb::StatisticDuration {
    pb::StatisticDuration {
        count: stat.0,
        ns: stat.1,
    }
}

/// `ModelStatistics`.
pub fn model_stats(entries: &[ModelStatsEntry]) -> pb::ModelStatisticsResponse {
    pb::ModelStatisticsResponse {
        model_stats: entries
            .iter()
            .map(|e| {
                let s = &e.stats;
                pb::ModelStatistics {
                    name: e.name.clone(),
                    version: e.version.to_string(),
                    last_inference: s.last_inference_ms,
                    inference_count: s.inference_count,
                    execution_count: s.execution_count,
                    inference_stats: Some(pb::InferStatistics {
                        success: Some(duration(s.success)),
                        fail: Some(duration(s.fail)),
                        queue: Some(duration(s.queue)),
                        compute_input: Some(duration(s.compute_input)),
                        compute_infer: Some(duration(s.compute_infer)),
                        compute_output: Some(duration(s.compute_output)),
                        cache_hit: Some(duration((0, 0))),
                        cache_miss: Some(duration((0, 0))),
                    }),
                    batch_stats: s
                        .batches
                        .iter()
                        .map(|(size, b)| pb::InferBatchStatistics {
                            batch_size: *size,
                            compute_input: Some(duration((b.count, b.input_ns))),
                            compute_infer: Some(duration((b.count, b.infer_ns))),
                            compute_output: Some(duration((b.count, b.output_ns))),
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}

/// `RepositoryIndex`.
pub fn repository_index(entries: &[IndexEntry]) -> pb::RepositoryIndexResponse {
    pb::RepositoryIndexResponse {
        models: entries
            .iter()
            .map(|e| pb::repository_index_response::ModelIndex {
                name: e.name.clone(),
                version: e.version.clone(),
                state: e.state.to_owned(),
                reason: e.reason.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::kserve::InferOutput;
    use super::*;

    fn input(
        name: &str,
        datatype: &str,
        shape: Vec<i64>,
        contents: Option<pb::InferTensorContents>,
    ) -> pb::model_infer_request::InferInputTensor {
        pb::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape,
            parameters: HashMap::new(),
            contents,
        }
    }

    #[test]
    fn typed_and_raw_contents() {
        let typed = pb::ModelInferRequest {
            id: "9".into(),
            inputs: vec![
                input(
                    "a",
                    "INT16",
                    vec![2],
                    Some(pb::InferTensorContents {
                        int_contents: vec![-3, 4],
                        ..Default::default()
                    }),
                ),
                input(
                    "b",
                    "BYTES",
                    vec![1],
                    Some(pb::InferTensorContents {
                        bytes_contents: vec![Bytes::from("x")],
                        ..Default::default()
                    }),
                ),
                input(
                    "c",
                    "FP32",
                    vec![],
                    Some(pb::InferTensorContents {
                        fp32_contents: vec![1.5],
                        ..Default::default()
                    }),
                ),
            ],
            ..Default::default()
        };
        let request = decode_request(typed).unwrap();
        assert_eq!(request.id.as_deref(), Some("9"));
        assert_eq!(request.inputs[0].tensor.to_values::<i16>().unwrap(), vec![-3, 4]);
        assert_eq!(request.inputs[1].tensor.items().unwrap(), &[Bytes::from("x")]);
        assert_eq!(request.inputs[2].tensor.to_values::<f32>().unwrap(), vec![1.5]);

        let raw = pb::ModelInferRequest {
            inputs: vec![input("h", "FP16", vec![1], None)],
            raw_input_contents: vec![Bytes::from(half::f16::from_f32(2.0).to_le_bytes().to_vec())],
            ..Default::default()
        };
        let request = decode_request(raw).unwrap();
        assert_eq!(
            request.inputs[0].tensor.to_values::<half::f16>().unwrap(),
            vec![half::f16::from_f32(2.0)]
        );
        assert_eq!(request.id, None);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases = [
            (
                pb::ModelInferRequest {
                    inputs: vec![input(
                        "a",
                        "INT8",
                        vec![1],
                        Some(pb::InferTensorContents {
                            int_contents: vec![999],
                            ..Default::default()
                        }),
                    )],
                    ..Default::default()
                },
                "input 'a': a value in int_contents does not fit INT8",
            ),
            (
                pb::ModelInferRequest {
                    inputs: vec![input(
                        "a",
                        "FP32",
                        vec![2],
                        Some(pb::InferTensorContents {
                            fp32_contents: vec![1.0],
                            ..Default::default()
                        }),
                    )],
                    ..Default::default()
                },
                "input 'a': fp32_contents has 1 elements but shape [2] needs 2",
            ),
            (
                pb::ModelInferRequest {
                    inputs: vec![input("a", "FP16", vec![1], None)],
                    ..Default::default()
                },
                "FP16 has no typed contents",
            ),
            (
                pb::ModelInferRequest {
                    inputs: vec![input("a", "FP32", vec![1], None), input("b", "FP32", vec![1], None)],
                    raw_input_contents: vec![Bytes::from(vec![0u8; 4])],
                    ..Default::default()
                },
                "1 raw_input_contents for 2 inputs",
            ),
            (
                pb::ModelInferRequest {
                    inputs: vec![input("a", "FP32", vec![2], None)],
                    raw_input_contents: vec![Bytes::from(vec![0u8; 4])],
                    ..Default::default()
                },
                "input 'a': 4 bytes of FP32 data do not match shape [2]",
            ),
        ];
        for (request, expected) in cases {
            let err = decode_request(request).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn outputs_are_raw() {
        let response = encode_response(InferResponse {
            model_name: "m".into(),
            model_version: "2".into(),
            id: None,
            outputs: vec![InferOutput {
                name: "s".into(),
                tensor: Tensor::new(DType::String, vec![1], TensorData::Items(vec![Bytes::from("ab")])).unwrap(),
                binary: false,
            }],
        });
        assert_eq!(response.outputs[0].datatype, "BYTES");
        assert_eq!(
            response.raw_output_contents[0],
            Bytes::from_static(b"\x02\x00\x00\x00ab")
        );
        assert!(response.outputs[0].parameters.contains_key("content_type"));
    }
}
