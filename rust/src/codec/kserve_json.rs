//! Open Inference Protocol (KServe v2) REST JSON codec, with the binary tensor extension: request bodies
//! (`Inference-Header-Content-Length` splits the JSON header from the binary part; inputs with
//! `parameters.binary_data_size` take their bytes from it in order), inference replies (outputs in JSON `data` or,
//! with `binary_data` / `binary_data_output`, appended raw after the JSON), and the metadata, configuration,
//! statistics and repository-index documents.

use super::json_text::{FloatText, write_dims, write_element, write_str};
use super::kserve::{
    EXTENSIONS, IndexEntry, InferInput, InferRequest, InferResponse, ModelDescription, ModelStatsEntry, PLATFORM,
    RequestedOutput, SERVER_NAME, config_type, count_of, datatype, parse_datatype, raw_contents, tensor_from_raw,
};
use super::kserve_json_doc::{self, Data, Entry, Inputs, Leaves, Root};
use crate::tensor::{DType, Tensor, TensorData};
use bytes::Bytes;
use serde_json::{Map, Value, json};

/// Decodes an inference request body. `header_len` is `Inference-Header-Content-Length` (None: all JSON).
pub fn decode_request(body: &Bytes, header_len: Option<usize>) -> Result<InferRequest, String> {
    let split = header_len.unwrap_or(body.len());
    if split > body.len() {
        return Err(format!(
            "Inference-Header-Content-Length is {split} but the body has only {} bytes",
            body.len()
        ));
    }
    let document = kserve_json_doc::read(&body[..split]).map_err(|e| format!("the request is not valid JSON: {e}"))?;
    let Root::Object { fields: root, inputs } = document else {
        return Err("the request must be a JSON object".into());
    };
    let root = &root;
    let binary = body.slice(split..);
    let id = match root.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) => Some(id.clone()),
        Some(other) => return Err(format!("'id' must be a string, got {other}")),
    };
    let parameters = object_field(root, "parameters", "the request")?;
    let binary_output = bool_param(parameters, "binary_data_output", "the request")?.unwrap_or(false);
    let inputs = match inputs {
        None => return Err("the request has no 'inputs'".into()),
        Some(Inputs::NotList) => return Err("'inputs' must be a list".into()),
        Some(Inputs::List(inputs)) => inputs,
    };
    let mut offset = 0;
    let mut decoded: Vec<InferInput> = Vec::with_capacity(inputs.len());
    let mut names = std::collections::HashSet::with_capacity(inputs.len());
    for input in inputs {
        let input = decode_input(input, &binary, &mut offset)?;
        if !names.insert(input.name.clone()) {
            return Err(format!("input '{}' is given twice", input.name));
        }
        decoded.push(input);
    }
    if offset != binary.len() {
        return Err(format!(
            "{} bytes of binary data follow the JSON header but the inputs' binary_data_size add up to {offset}",
            binary.len()
        ));
    }
    let mut outputs = Vec::new();
    if let Some(list) = root.get("outputs") {
        for output in list.as_array().ok_or("'outputs' must be a list")? {
            let output = output.as_object().ok_or("every entry of 'outputs' must be an object")?;
            let name = string_field(output, "name", "an entry of 'outputs'")?;
            let what = format!("output '{name}'");
            let parameters = object_field(output, "parameters", &what)?;
            if parameters.is_some_and(|p| p.contains_key("classification")) {
                return Err(format!(
                    "{what}: the classification extension is not supported by rustserve"
                ));
            }
            if parameters.is_some_and(|p| p.contains_key("shared_memory_region")) {
                return Err(format!(
                    "{what}: shared-memory tensors are not supported by rustserve yet"
                ));
            }
            outputs.push(RequestedOutput {
                binary: bool_param(parameters, "binary_data", &what)?,
                name,
            });
        }
    }
    Ok(InferRequest {
        id,
        inputs: decoded,
        outputs,
        binary_output,
    })
}

fn decode_input(input: Entry<'_>, binary: &Bytes, offset: &mut usize) -> Result<InferInput, String> {
    let Entry::Input { fields: input, data } = input else {
        return Err("every entry of 'inputs' must be an object".into());
    };
    let input = &input;
    let name = string_field(input, "name", "an entry of 'inputs'")?;
    let what = format!("input '{name}'");
    let parameters = object_field(input, "parameters", &what)?;
    if parameters.is_some_and(|p| p.contains_key("shared_memory_region")) {
        return Err(format!(
            "{what}: shared-memory tensors are not supported by rustserve yet"
        ));
    }
    let text = match parameters.and_then(|p| p.get("content_type")) {
        None => false,
        Some(Value::String(kind)) if kind == "str" => true,
        Some(Value::String(kind)) if kind == "bytes" || kind == "base64" => false,
        Some(other) => return Err(format!("{what}: content_type {other} is not supported (use \"str\")")),
    };
    let dtype = parse_datatype(&string_field(input, "datatype", &what)?, text).map_err(|e| format!("{what}: {e}"))?;
    let shape = input
        .get("shape")
        .ok_or_else(|| format!("{what} has no 'shape'"))?
        .as_array()
        .ok_or_else(|| format!("{what}: 'shape' must be a list of integers"))?
        .iter()
        .map(|d| d.as_i64().filter(|&d| d >= 0))
        .collect::<Option<Vec<i64>>>()
        .ok_or_else(|| format!("{what}: 'shape' must be a list of integers >= 0"))?;
    let binary_size = match parameters.and_then(|p| p.get("binary_data_size")) {
        None => None,
        Some(size) => Some(
            size.as_u64()
                .ok_or_else(|| format!("{what}: binary_data_size must be an integer >= 0"))? as usize,
        ),
    };
    let tensor =
        if let Some(size) = binary_size {
            let end = offset.checked_add(size).filter(|&end| end <= binary.len()).ok_or_else(|| {
            format!(
                "{what}: binary_data_size {size} goes past the end of the binary data ({} bytes, {} used before)",
                binary.len(),
                offset
            )
        })?;
            let raw = binary.slice(*offset..end);
            *offset = end;
            tensor_from_raw(&what, dtype, shape, raw)?
        } else {
            let data = data.ok_or_else(|| format!("{what} has neither 'data' nor a binary_data_size parameter"))?;
            tensor_from_json(&what, dtype, shape, data)?
        };
    Ok(InferInput { name, tensor })
}

/// Builds a tensor from JSON `data`: a flat list in row-major order, or nested lists (any nesting is flattened).
/// The element count is checked before the values, whatever order the keys came in.
fn tensor_from_json(what: &str, dtype: DType, shape: Vec<i64>, data: Data<'_>) -> Result<Tensor, String> {
    let count = count_of(what, &shape)?;
    let leaves = match data {
        Data::Read(leaves) if leaves.dtype == dtype && leaves.count == count => leaves,
        // Only a repeated key can make the fields disagree with what `data` was read for.
        Data::Read(_) => return Err(format!("{what}: 'datatype' or 'shape' is given twice")),
        Data::Raw(raw) => {
            Leaves::read(dtype, count, raw).map_err(|e| format!("{what}: 'data' is not valid JSON: {e}"))?
        }
    };
    if leaves.seen != count {
        return Err(format!(
            "{what}: 'data' has {} elements but shape {shape:?} needs {count}",
            leaves.seen
        ));
    }
    if let Some((i, value)) = leaves.first_bad {
        return Err(format!(
            "{what}: element {i} is {value}, which is not a valid {}",
            datatype(dtype)
        ));
    }
    let data = if dtype.is_variable() {
        TensorData::Items(leaves.items)
    } else {
        TensorData::Raw(Bytes::from(leaves.raw))
    };
    Tensor::new(dtype, shape, data).map_err(|e| format!("{what}: {e}"))
}

fn string_field(object: &Map<String, Value>, key: &str, what: &str) -> Result<String, String> {
    match object.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!("{what}: '{key}' must be a string, got {other}")),
        None => Err(format!("{what} has no '{key}'")),
    }
}

fn object_field<'a>(
    object: &'a Map<String, Value>,
    key: &str,
    what: &str,
) -> Result<Option<&'a Map<String, Value>>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(format!("{what}: '{key}' must be an object, got {other}")),
    }
}

fn bool_param(parameters: Option<&Map<String, Value>>, key: &str, what: &str) -> Result<Option<bool>, String> {
    match parameters.and_then(|p| p.get(key)) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!("{what}: parameter '{key}' must be true or false, got {other}")),
    }
}

/// Encodes an inference reply: the body and, when some output is binary, the JSON header length for the
/// `Inference-Header-Content-Length` response header.
pub fn encode_response(response: &InferResponse) -> (Vec<u8>, Option<usize>) {
    let mut json = Vec::with_capacity(256);
    json.extend_from_slice(b"{\"model_name\":");
    write_str(&mut json, &response.model_name);
    json.extend_from_slice(b",\"model_version\":");
    write_str(&mut json, &response.model_version);
    if let Some(id) = &response.id {
        json.extend_from_slice(b",\"id\":");
        write_str(&mut json, id);
    }
    json.extend_from_slice(b",\"outputs\":[");
    let mut binaries: Vec<Bytes> = Vec::new();
    for (i, output) in response.outputs.iter().enumerate() {
        if i > 0 {
            json.push(b',');
        }
        let tensor = &output.tensor;
        json.extend_from_slice(b"{\"name\":");
        write_str(&mut json, &output.name);
        json.extend_from_slice(b",\"datatype\":\"");
        json.extend_from_slice(datatype(tensor.dtype).as_bytes());
        json.extend_from_slice(b"\",\"shape\":");
        write_dims(&mut json, &tensor.shape);
        let text = tensor.dtype == DType::String;
        if output.binary {
            let raw = raw_contents(tensor);
            json.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            json.extend_from_slice(raw.len().to_string().as_bytes());
            if text {
                json.extend_from_slice(b",\"content_type\":\"str\"");
            }
            json.push(b'}');
            binaries.push(raw);
        } else {
            if text {
                json.extend_from_slice(b",\"parameters\":{\"content_type\":\"str\"}");
            }
            json.extend_from_slice(b",\"data\":");
            write_data(&mut json, tensor);
        }
        json.push(b'}');
    }
    json.extend_from_slice(b"]}");
    if binaries.is_empty() {
        return (json, None);
    }
    let header = json.len();
    json.reserve(binaries.iter().map(Bytes::len).sum());
    for raw in binaries {
        json.extend_from_slice(&raw);
    }
    (json, Some(header))
}

/// The flat row-major `data` list. Floats use the shortest text that reads back to the same value; NaN and the
/// infinities have no JSON literal and become `null`; text is lossy UTF-8 (BYTES that are not UTF-8 need the binary
/// extension).
fn write_data(out: &mut Vec<u8>, tensor: &Tensor) {
    out.push(b'[');
    match &tensor.data {
        TensorData::Items(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, &String::from_utf8_lossy(item));
            }
        }
        TensorData::Raw(raw) => {
            let size = tensor.dtype.item_size().max(1);
            for (i, chunk) in raw.chunks_exact(size).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_element(out, tensor.dtype, chunk, FloatText::Shortest);
            }
        }
    }
    out.push(b']');
}

/// `{"error": text}`.
pub fn error_body(message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "error": message })).unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec())
}

/// `GET /v2`.
pub fn server_metadata() -> Value {
    json!({
        "name": SERVER_NAME,
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    })
}

fn tensor_metadata(description: &ModelDescription, outputs: bool) -> Value {
    let list = if outputs {
        &description.outputs
    } else {
        &description.inputs
    };
    Value::Array(
        list.iter()
            .map(|t| json!({"name": t.name, "datatype": t.datatype(), "shape": t.shape(description.max_batch_size)}))
            .collect(),
    )
}

/// `GET /v2/models/{m}[/versions/{v}]`.
pub fn model_metadata(description: &ModelDescription) -> Value {
    json!({
        "name": description.name,
        "versions": description.versions.iter().map(u64::to_string).collect::<Vec<_>>(),
        "platform": PLATFORM,
        "inputs": tensor_metadata(description, false),
        "outputs": tensor_metadata(description, true),
    })
}

/// `GET /v2/models/{m}[/versions/{v}]/config`: Triton's model configuration in its JSON form.
pub fn model_config(description: &ModelDescription) -> Value {
    let inputs: Vec<Value> = description
        .inputs
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "data_type": config_type(t.dtype),
                "format": "FORMAT_NONE",
                "dims": t.dims,
                "is_shape_tensor": false,
                "allow_ragged_batch": false,
                "optional": false,
            })
        })
        .collect();
    let outputs: Vec<Value> = description
        .outputs
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "data_type": config_type(t.dtype),
                "dims": t.dims,
                "label_filename": "",
                "is_shape_tensor": false,
            })
        })
        .collect();
    let mut config = json!({
        "name": description.name,
        "platform": PLATFORM,
        "backend": SERVER_NAME,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": description.max_batch_size,
        "input": inputs,
        "output": outputs,
        "instance_group": [{"name": description.name, "kind": "KIND_CPU", "count": 1, "gpus": []}],
        "default_model_filename": description.model_files.first().cloned().unwrap_or_default(),
        "parameters": {},
        "model_transaction_policy": {"decoupled": false},
    });
    if description.dynamic_batching {
        config["dynamic_batching"] =
            json!({"preferred_batch_size": [], "max_queue_delay_microseconds": 0, "preserve_ordering": true});
    }
    config
}

fn duration(stat: (u64, u64)) -> Value {
    json!({"count": stat.0, "ns": stat.1})
}

/// `GET /v2/models[/{m}[/versions/{v}]]/stats`.
pub fn model_stats(entries: &[ModelStatsEntry]) -> Value {
    let stats: Vec<Value> = entries
        .iter()
        .map(|e| {
            let s = &e.stats;
            let batches: Vec<Value> = s
                .batches
                .iter()
                .map(|(size, b)| {
                    json!({
                        "batch_size": size,
                        "compute_input": duration((b.count, b.input_ns)),
                        "compute_infer": duration((b.count, b.infer_ns)),
                        "compute_output": duration((b.count, b.output_ns)),
                    })
                })
                .collect();
            json!({
                "name": e.name,
                "version": e.version.to_string(),
                "last_inference": s.last_inference_ms,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": duration(s.success),
                    "fail": duration(s.fail),
                    "queue": duration(s.queue),
                    "compute_input": duration(s.compute_input),
                    "compute_infer": duration(s.compute_infer),
                    "compute_output": duration(s.compute_output),
                    "cache_hit": duration((0, 0)),
                    "cache_miss": duration((0, 0)),
                },
                "batch_stats": batches,
                "memory_usage": [],
            })
        })
        .collect();
    json!({ "model_stats": stats })
}

/// `POST /v2/repository/index`.
pub fn repository_index(entries: &[IndexEntry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let mut entry = json!({"name": e.name, "state": e.state});
                if !e.version.is_empty() {
                    entry["version"] = json!(e.version);
                }
                if !e.reason.is_empty() {
                    entry["reason"] = json!(e.reason);
                }
                entry
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::kserve::{InferOutput, TensorMeta};
    use super::*;

    fn body(text: &str) -> Bytes {
        Bytes::from(text.to_owned())
    }

    #[test]
    fn json_inputs_nested_and_flat() {
        let request = decode_request(
            &body(
                r#"{"id": "7", "inputs": [
                    {"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2.5], [3, 4]]},
                    {"name": "b", "datatype": "INT64", "shape": [3], "data": [1, -2, 9007199254740993]},
                    {"name": "c", "datatype": "BOOL", "shape": [2], "data": [true, false]},
                    {"name": "d", "datatype": "BYTES", "shape": [1], "data": ["hé"]},
                    {"name": "e", "datatype": "BYTES", "shape": [], "data": "t", "parameters": {"content_type": "str"}},
                    {"name": "f", "datatype": "FP16", "shape": [1], "data": [0.5]}],
                  "outputs": [{"name": "y", "parameters": {"binary_data": true}}]}"#,
            ),
            None,
        )
        .unwrap();
        assert_eq!(request.id.as_deref(), Some("7"));
        let t = |i: usize| &request.inputs[i].tensor;
        assert_eq!(t(0).to_values::<f32>().unwrap(), vec![1., 2.5, 3., 4.]);
        assert_eq!(t(1).to_values::<i64>().unwrap(), vec![1, -2, 9_007_199_254_740_993]);
        assert_eq!(t(2).to_values::<bool>().unwrap(), vec![true, false]);
        assert_eq!(t(3).dtype, DType::Bytes);
        assert_eq!(t(3).items().unwrap()[0], Bytes::from("hé"));
        assert_eq!(t(4).dtype, DType::String);
        assert_eq!(t(5).to_values::<half::f16>().unwrap(), vec![half::f16::from_f32(0.5)]);
        assert_eq!(
            request.outputs,
            vec![RequestedOutput {
                name: "y".into(),
                binary: Some(true)
            }]
        );
        assert!(!request.binary_output);
    }

    #[test]
    fn binary_inputs_follow_the_header() {
        let header = r#"{"inputs": [
            {"name": "a", "datatype": "INT32", "shape": [2], "parameters": {"binary_data_size": 8}},
            {"name": "s", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 11}}],
          "parameters": {"binary_data_output": true}}"#;
        let mut raw = header.as_bytes().to_vec();
        raw.extend_from_slice(&5i32.to_le_bytes());
        raw.extend_from_slice(&(-6i32).to_le_bytes());
        raw.extend_from_slice(&2u32.to_le_bytes());
        raw.extend_from_slice(b"ab");
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.extend_from_slice(b"c");
        let request = decode_request(&Bytes::from(raw.clone()), Some(header.len())).unwrap();
        assert!(request.binary_output);
        assert_eq!(request.inputs[0].tensor.to_values::<i32>().unwrap(), vec![5, -6]);
        assert_eq!(
            request.inputs[1].tensor.items().unwrap(),
            &[Bytes::from("ab"), Bytes::from("c")]
        );
        raw.push(0);
        let err = decode_request(&Bytes::from(raw), Some(header.len())).unwrap_err();
        assert!(err.contains("20 bytes of binary data"), "{err}");
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let cases = [
            ("{", "not valid JSON"),
            ("[]", "must be a JSON object"),
            ("{}", "no 'inputs'"),
            (
                r#"{"inputs": [{"name": "a", "datatype": "FP32", "shape": [2], "data": [1]}]}"#,
                "input 'a': 'data' has 1 elements but shape [2] needs 2",
            ),
            (
                r#"{"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": [300]}]}"#,
                "input 'a': element 0 is 300, which is not a valid INT8",
            ),
            (
                r#"{"inputs": [{"name": "a", "datatype": "INT32", "shape": [1], "data": [1.5]}]}"#,
                "element 0 is 1.5",
            ),
            (
                r#"{"inputs": [{"name": "a", "datatype": "FP64", "shape": [1], "data": ["x"]}]}"#,
                "element 0 is \"x\"",
            ),
            (
                r#"{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [{"b": 1}]}]}"#,
                r#"element 0 is {"b":1}, which is not a valid FP32"#,
            ),
            (
                r#"{"inputs": [{"name": "a", "datatype": "BOOL", "shape": [2], "data": [[true], null]}]}"#,
                "element 1 is null, which is not a valid BOOL",
            ),
            // A shape far larger than the data reserves nothing on its word.
            (
                r#"{"inputs": [{"name": "a", "datatype": "FP64", "shape": [100000000000], "data": [1, "x"]}]}"#,
                "'data' has 2 elements but shape [100000000000] needs 100000000000",
            ),
            (
                r#"{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1, 2"#,
                "not valid JSON",
            ),
            (
                r#"{"inputs": [{"name": "a", "datatype": "XX", "shape": [1], "data": [1]}]}"#,
                "input 'a': unknown datatype 'XX'",
            ),
            (
                r#"{"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1], "data": [1]}]}"#,
                "'shape' must be a list of integers >= 0",
            ),
            (
                r#"{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1]}]}"#,
                "input 'a' has neither 'data' nor",
            ),
            (
                r#"{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}]}"#,
                "goes past the end",
            ),
            (
                r#"{"inputs": [{"name": "a", "datatype": "FP32", "shape": [], "data": 1}, {"name": "a", "datatype": "FP32", "shape": [], "data": 1}]}"#,
                "input 'a' is given twice",
            ),
            (
                r#"{"inputs": [], "outputs": [{"name": "y", "parameters": {"classification": 2}}]}"#,
                "classification",
            ),
            (r#"{"inputs": [], "id": 5}"#, "'id' must be a string"),
            (
                r#"{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "parameters": {"shared_memory_region": "r"}}]}"#,
                "input 'a': shared-memory tensors are not supported",
            ),
        ];
        for (text, expected) in cases {
            let err = decode_request(&body(text), None).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        let err = decode_request(&body("{}"), Some(10)).unwrap_err();
        assert!(err.contains("Inference-Header-Content-Length is 10"), "{err}");
    }

    #[test]
    fn responses_in_json_and_binary() {
        let y = Tensor::from_values(vec![2], &[0.1f32, f32::NAN]).unwrap();
        let s = Tensor::new(DType::String, vec![1], TensorData::Items(vec![Bytes::from("ok")])).unwrap();
        let mut response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: Some("x".into()),
            outputs: vec![
                InferOutput {
                    name: "y".into(),
                    tensor: y,
                    binary: false,
                },
                InferOutput {
                    name: "s".into(),
                    tensor: s,
                    binary: false,
                },
            ],
        };
        let (body, header) = encode_response(&response);
        assert_eq!(header, None);
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            value,
            json!({"model_name": "m", "model_version": "1", "id": "x", "outputs": [
                {"name": "y", "datatype": "FP32", "shape": [2], "data": [0.1, null]},
                {"name": "s", "datatype": "BYTES", "shape": [1], "parameters": {"content_type": "str"}, "data": ["ok"]}]})
        );
        response.outputs[1].binary = true;
        let (body, header) = encode_response(&response);
        let header = header.unwrap();
        let value: Value = serde_json::from_slice(&body[..header]).unwrap();
        assert_eq!(value["outputs"][1]["parameters"]["binary_data_size"], json!(6));
        assert_eq!(&body[header..], b"\x02\x00\x00\x00ok");
    }

    #[test]
    fn metadata_and_config_carry_the_batch_dimension() {
        let description = ModelDescription {
            name: "s.m".into(),
            version: 2,
            versions: vec![1, 2],
            max_batch_size: 4,
            dynamic_batching: true,
            inputs: vec![TensorMeta {
                name: "x".into(),
                dtype: Some(DType::Float32),
                dims: vec![3],
            }],
            outputs: vec![TensorMeta {
                name: "y".into(),
                dtype: None,
                dims: vec![-1],
            }],
            model_files: vec!["a.onnx".into()],
        };
        let meta = model_metadata(&description);
        assert_eq!(meta["versions"], json!(["1", "2"]));
        assert_eq!(
            meta["inputs"][0],
            json!({"name": "x", "datatype": "FP32", "shape": [-1, 3]})
        );
        assert_eq!(
            meta["outputs"][0],
            json!({"name": "y", "datatype": "BYTES", "shape": [-1, -1]})
        );
        let config = model_config(&description);
        assert_eq!(config["max_batch_size"], json!(4));
        assert_eq!(config["input"][0]["dims"], json!([3]));
        assert_eq!(config["input"][0]["data_type"], json!("TYPE_FP32"));
        assert_eq!(config["output"][0]["data_type"], json!("TYPE_STRING"));
        assert!(config.get("dynamic_batching").is_some());
    }
}
