//! Open Inference Protocol (KServe v2) core shared by the JSON and protobuf codecs: datatype names, a decoded
//! inference request as plain data, BYTES element framing, and the batch split / join between v2 tensors (batch
//! dimension first) and MindSpore instances.
//!
//! BYTES tensors become `DType::Bytes` (Python stages get them as MindSpore passes bytes); with the tensor parameter
//! `content_type: "str"` (MLServer's convention) they become `DType::String` (Python stages get `str`). String
//! outputs travel as BYTES with that parameter set.

use crate::tensor::{DType, NamedInstance, Tensor, TensorData, element_count};
use bytes::Bytes;

/// The v2 datatype name of a dtype (`String` and `Bytes` are both BYTES).
pub fn datatype(dtype: DType) -> &'static str {
    match dtype {
        DType::Bool => "BOOL",
        DType::Int8 => "INT8",
        DType::UInt8 => "UINT8",
        DType::Int16 => "INT16",
        DType::UInt16 => "UINT16",
        DType::Int32 => "INT32",
        DType::UInt32 => "UINT32",
        DType::Int64 => "INT64",
        DType::UInt64 => "UINT64",
        DType::Float16 => "FP16",
        DType::Float32 => "FP32",
        DType::Float64 => "FP64",
        DType::String | DType::Bytes => "BYTES",
    }
}

/// Parses a v2 datatype name; BYTES gives `Bytes`, or `String` when `text` (content_type "str").
pub fn parse_datatype(name: &str, text: bool) -> Result<DType, String> {
    Ok(match name {
        "BOOL" => DType::Bool,
        "INT8" => DType::Int8,
        "UINT8" => DType::UInt8,
        "INT16" => DType::Int16,
        "UINT16" => DType::UInt16,
        "INT32" => DType::Int32,
        "UINT32" => DType::UInt32,
        "INT64" => DType::Int64,
        "UINT64" => DType::UInt64,
        "FP16" => DType::Float16,
        "FP32" => DType::Float32,
        "FP64" => DType::Float64,
        "BYTES" if text => DType::String,
        "BYTES" => DType::Bytes,
        "BF16" => return Err("datatype BF16 is not supported by rustserve".into()),
        other => {
            return Err(format!(
                "unknown datatype '{other}' (expected BOOL, INT8..INT64, UINT8..UINT64, FP16, FP32, FP64 or BYTES)"
            ));
        }
    })
}

/// The model-configuration enum name (`TYPE_FP32`); `None` (an input without a declared type) is `TYPE_STRING`.
pub fn config_type(dtype: Option<DType>) -> &'static str {
    match dtype {
        Some(DType::Bool) => "TYPE_BOOL",
        Some(DType::UInt8) => "TYPE_UINT8",
        Some(DType::UInt16) => "TYPE_UINT16",
        Some(DType::UInt32) => "TYPE_UINT32",
        Some(DType::UInt64) => "TYPE_UINT64",
        Some(DType::Int8) => "TYPE_INT8",
        Some(DType::Int16) => "TYPE_INT16",
        Some(DType::Int32) => "TYPE_INT32",
        Some(DType::Int64) => "TYPE_INT64",
        Some(DType::Float16) => "TYPE_FP16",
        Some(DType::Float32) => "TYPE_FP32",
        Some(DType::Float64) => "TYPE_FP64",
        Some(DType::String | DType::Bytes) | None => "TYPE_STRING",
    }
}

/// The model-configuration enum value of `config_type` (Triton's `inference.DataType` numbering).
pub fn config_type_number(dtype: Option<DType>) -> i32 {
    match dtype {
        Some(DType::Bool) => 1,
        Some(DType::UInt8) => 2,
        Some(DType::UInt16) => 3,
        Some(DType::UInt32) => 4,
        Some(DType::UInt64) => 5,
        Some(DType::Int8) => 6,
        Some(DType::Int16) => 7,
        Some(DType::Int32) => 8,
        Some(DType::Int64) => 9,
        Some(DType::Float16) => 10,
        Some(DType::Float32) => 11,
        Some(DType::Float64) => 12,
        Some(DType::String | DType::Bytes) | None => 13,
    }
}

/// One named input tensor of a request.
#[derive(Clone, Debug, PartialEq)]
pub struct InferInput {
    pub name: String,
    pub tensor: Tensor,
}

/// An output the client asked for; `binary` is the HTTP binary-extension choice for it (`None`: the request's
/// default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    pub binary: Option<bool>,
}

/// A decoded v2 inference request (either wire format).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<InferInput>,
    /// Empty: every output of the model.
    pub outputs: Vec<RequestedOutput>,
    /// HTTP `parameters.binary_data_output`: outputs travel in the binary extension unless they say otherwise.
    pub binary_output: bool,
}

/// One output of an answered request, ready to encode.
#[derive(Clone, Debug, PartialEq)]
pub struct InferOutput {
    pub name: String,
    pub tensor: Tensor,
    /// HTTP only: send it in the binary extension.
    pub binary: bool,
}

/// An answered inference request, ready to encode.
#[derive(Clone, Debug, PartialEq)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: Option<String>,
    pub outputs: Vec<InferOutput>,
}

/// An input or output of a v2 model: `dtype` `None` when nothing declares it (a method input that only Python
/// stages read: reported as BYTES, any datatype accepted); `dims` per instance, -1 for a dimension of any size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMeta {
    pub name: String,
    pub dtype: Option<DType>,
    pub dims: Vec<i64>,
}

impl TensorMeta {
    /// The metadata shape: the batch dimension (-1) first when the model batches.
    pub fn shape(&self, max_batch_size: usize) -> Vec<i64> {
        let mut shape = Vec::with_capacity(self.dims.len() + 1);
        if max_batch_size > 0 {
            shape.push(-1);
        }
        shape.extend_from_slice(&self.dims);
        shape
    }

    /// The v2 datatype name (BYTES when undeclared).
    pub fn datatype(&self) -> &'static str {
        self.dtype.map_or("BYTES", datatype)
    }
}

/// Everything the metadata and configuration endpoints report about one v2 model (a servable method).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDescription {
    pub name: String,
    /// The version described.
    pub version: u64,
    /// Every loaded version that has this method, ascending.
    pub versions: Vec<u64>,
    /// 0: requests carry one instance with the shapes as given; N > 0: dim 0 of every input is the batch.
    pub max_batch_size: usize,
    /// Requests' instances are batched together in the model queues.
    pub dynamic_batching: bool,
    pub inputs: Vec<TensorMeta>,
    pub outputs: Vec<TensorMeta>,
    /// Model files, for `default_model_filename` and the `parameters` of the configuration.
    pub model_files: Vec<String>,
}

/// One model of the statistics extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelStatsEntry {
    pub name: String,
    pub version: u64,
    pub stats: crate::metrics::MethodSnapshot,
}

/// One entry of the repository index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub name: String,
    /// Empty for a servable that is not loaded.
    pub version: String,
    /// READY or UNAVAILABLE.
    pub state: &'static str,
    pub reason: String,
}

/// The server-metadata answer: name, version and the extensions rustserve implements.
pub const SERVER_NAME: &str = "rustserve";
/// Open Inference Protocol extensions rustserve serves (Triton's names).
pub const EXTENSIONS: [&str; 4] = [
    "binary_tensor_data",
    "model_configuration",
    "statistics",
    "model_repository",
];
/// `platform` of every model.
pub const PLATFORM: &str = "rustserve_servable";

/// Builds a tensor from raw little-endian bytes (BYTES elements framed as 4-byte length + bytes), checking the size
/// against `shape` and, for BOOL, that every byte is 0 or 1. `what` names the tensor in errors.
pub fn tensor_from_raw(what: &str, dtype: DType, shape: Vec<i64>, raw: Bytes) -> Result<Tensor, String> {
    let count = count_of(what, &shape)?;
    if dtype.is_variable() {
        let items = decode_bytes_elements(what, &raw)?;
        if items.len() != count {
            return Err(format!(
                "{what}: {} BYTES elements do not match shape {shape:?} ({count} expected)",
                items.len()
            ));
        }
        return Ok(Tensor {
            dtype,
            shape,
            data: TensorData::Items(items),
        });
    }
    // NOTE: checked, not `*`: a shape like [2^62] of FP32 wraps to 0 bytes in release builds, and would let an empty
    // payload through with an absurd shape (found by codec::fuzz_tests).
    let Some(expected) = count.checked_mul(dtype.item_size()) else {
        return Err(format!("{what}: invalid shape {shape:?} (the data size overflows)"));
    };
    if raw.len() != expected {
        return Err(format!(
            "{what}: {} bytes of {} data do not match shape {shape:?} ({expected} bytes expected)",
            raw.len(),
            datatype(dtype)
        ));
    }
    if dtype == DType::Bool
        && let Some(bad) = raw.iter().position(|&b| b > 1)
    {
        return Err(format!(
            "{what}: BOOL element {bad} is the byte {}, expected 0 or 1",
            raw[bad]
        ));
    }
    Ok(Tensor {
        dtype,
        shape,
        data: TensorData::Raw(raw),
    })
}

/// Element count of a v2 shape, with an error naming the tensor for negative dims or overflow.
pub fn count_of(what: &str, shape: &[i64]) -> Result<usize, String> {
    element_count(shape).ok_or_else(|| {
        if shape.iter().any(|&d| d < 0) {
            format!("{what}: invalid shape {shape:?} (dims must be >= 0)")
        } else {
            format!("{what}: invalid shape {shape:?} (the element count overflows)")
        }
    })
}

/// Splits BYTES raw data (each element: 4-byte little-endian length, then the bytes) into elements, zero-copy.
pub fn decode_bytes_elements(what: &str, raw: &Bytes) -> Result<Vec<Bytes>, String> {
    let mut items = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let Some(header) = raw.get(at..at + 4) else {
            return Err(format!(
                "{what}: BYTES data is truncated: {} bytes left where a 4-byte length was expected",
                raw.len() - at
            ));
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let start = at + 4;
        let end = start.checked_add(len).filter(|&end| end <= raw.len()).ok_or_else(|| {
            format!(
                "{what}: BYTES element {} claims {len} bytes but only {} are left",
                items.len(),
                raw.len() - start
            )
        })?;
        items.push(raw.slice(start..end));
        at = end;
    }
    Ok(items)
}

/// Frames BYTES elements as 4-byte little-endian length + bytes each.
pub fn encode_bytes_elements(items: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.iter().map(|b| b.len() + 4).sum());
    for item in items {
        // An element over 4 GiB cannot be framed; such a tensor never fits a message anyway.
        out.extend_from_slice(&u32::try_from(item.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// A tensor's payload in the raw wire form (numeric bytes as they are; BYTES framed).
pub fn raw_contents(tensor: &Tensor) -> Bytes {
    match &tensor.data {
        TensorData::Raw(raw) => raw.clone(),
        TensorData::Items(items) => Bytes::from(encode_bytes_elements(items)),
    }
}

/// The most instances one v2 request may split into (a v2 batch of more rows is refused).
pub const MAX_BATCH: i64 = 1 << 20;

/// Splits batch-first inputs into one instance per row of dim 0 (the batch size of every input must agree).
pub fn split_batch(inputs: Vec<InferInput>) -> Result<Vec<NamedInstance>, String> {
    let Some(first) = inputs.first() else {
        return Err("the request has no inputs".into());
    };
    let batch = *first.tensor.shape.first().ok_or_else(|| {
        format!(
            "input '{}' has shape [] but this model takes a batch dimension first",
            first.name
        )
    })?;
    for input in &inputs {
        match input.tensor.shape.first() {
            None => {
                return Err(format!(
                    "input '{}' has shape [] but this model takes a batch dimension first",
                    input.name
                ));
            }
            Some(&b) if b != batch => {
                return Err(format!(
                    "input '{}' has batch size {b} but input '{}' has {batch}: every input must have the same first \
                     dimension",
                    input.name, first.name
                ));
            }
            Some(_) => {}
        }
    }
    if batch == 0 {
        return Err("the batch size (first dimension of every input) is 0".into());
    }
    // Rows of zero elements carry no data, so the message size does not bound their count: without this cap a shape
    // like [2^62, 0] would allocate 2^62 instances.
    if batch > MAX_BATCH {
        return Err(format!(
            "the batch size (first dimension of every input) is {batch}, more than the limit of {MAX_BATCH} instances \
             per request"
        ));
    }
    let batch = usize::try_from(batch).map_err(|_| format!("the batch size {batch} does not fit in memory"))?;
    let names = inputs.len();
    let mut instances: Vec<Vec<(String, Tensor)>> = (0..batch).map(|_| Vec::with_capacity(names)).collect();
    for input in inputs {
        let row_shape = input.tensor.shape[1..].to_vec();
        let per_row = element_count(&row_shape).unwrap_or(0);
        match input.tensor.data {
            TensorData::Raw(raw) => {
                let row_bytes = per_row * input.tensor.dtype.item_size();
                for (i, instance) in instances.iter_mut().enumerate() {
                    let tensor = Tensor {
                        dtype: input.tensor.dtype,
                        shape: row_shape.clone(),
                        data: TensorData::Raw(raw.slice(i * row_bytes..(i + 1) * row_bytes)),
                    };
                    instance.push((input.name.clone(), tensor));
                }
            }
            TensorData::Items(items) => {
                for (i, instance) in instances.iter_mut().enumerate() {
                    let tensor = Tensor {
                        dtype: input.tensor.dtype,
                        shape: row_shape.clone(),
                        data: TensorData::Items(items[i * per_row..(i + 1) * per_row].to_vec()),
                    };
                    instance.push((input.name.clone(), tensor));
                }
            }
        }
    }
    Ok(instances.into_iter().map(NamedInstance::from_iter).collect())
}

/// Joins per-instance outputs (one `Vec` per instance, outputs in `names` order) into batch-first tensors. Every
/// instance must give an output the same dtype and shape.
pub fn join_batch(names: &[String], results: Vec<Vec<Tensor>>) -> Result<Vec<Tensor>, String> {
    let batch = results.len() as i64;
    let mut columns: Vec<Vec<Tensor>> = names.iter().map(|_| Vec::with_capacity(results.len())).collect();
    for outputs in results {
        for (column, tensor) in columns.iter_mut().zip(outputs) {
            column.push(tensor);
        }
    }
    names
        .iter()
        .zip(columns)
        .map(|(name, column)| {
            let first = column
                .first()
                .ok_or_else(|| format!("output '{name}' is missing from the method's results"))?;
            let (dtype, shape) = (first.dtype, first.shape.clone());
            if let Some((i, other)) = column
                .iter()
                .enumerate()
                .find(|(_, t)| t.dtype != dtype || t.shape != shape)
            {
                return Err(format!(
                    "output '{name}' differs between the instances of the batch (instance 0: {} {shape:?}, instance \
                     {i}: {} {:?}), so it cannot be joined into one tensor: send one instance per request",
                    datatype(dtype),
                    datatype(other.dtype),
                    other.shape
                ));
            }
            let mut joined_shape = Vec::with_capacity(shape.len() + 1);
            joined_shape.push(batch);
            joined_shape.extend_from_slice(&shape);
            let data = if dtype.is_variable() {
                TensorData::Items(
                    column
                        .into_iter()
                        .flat_map(|t| match t.data {
                            TensorData::Items(items) => items,
                            TensorData::Raw(_) => Vec::new(),
                        })
                        .collect(),
                )
            } else {
                let mut raw = Vec::with_capacity(column.iter().map(Tensor::byte_size).sum());
                for t in &column {
                    if let TensorData::Raw(bytes) = &t.data {
                        raw.extend_from_slice(bytes);
                    }
                }
                TensorData::Raw(Bytes::from(raw))
            };
            Tensor::new(dtype, joined_shape, data).map_err(|e| format!("output '{name}': {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, tensor: Tensor) -> InferInput {
        InferInput {
            name: name.into(),
            tensor,
        }
    }

    #[test]
    fn datatypes_round_trip() {
        for d in DType::ALL {
            let text = d == DType::String;
            assert_eq!(parse_datatype(datatype(d), text).unwrap(), d);
        }
        assert!(parse_datatype("BF16", false).unwrap_err().contains("not supported"));
        assert!(
            parse_datatype("FLOAT", false)
                .unwrap_err()
                .contains("unknown datatype 'FLOAT'")
        );
        assert_eq!(config_type(Some(DType::Float32)), "TYPE_FP32");
        assert_eq!(config_type_number(Some(DType::Float32)), 11);
        assert_eq!(config_type(None), "TYPE_STRING");
    }

    #[test]
    fn bytes_framing_round_trips_and_rejects_truncation() {
        let items = vec![Bytes::from_static(b"ab"), Bytes::new(), Bytes::from_static(b"\x00xyz")];
        let raw = Bytes::from(encode_bytes_elements(&items));
        assert_eq!(raw.len(), 4 * 3 + 6);
        assert_eq!(decode_bytes_elements("x", &raw).unwrap(), items);
        let err = decode_bytes_elements("input 'x'", &raw.slice(..raw.len() - 1)).unwrap_err();
        assert!(
            err.contains("input 'x': BYTES element 2 claims 4 bytes but only 3 are left"),
            "{err}"
        );
        let err = decode_bytes_elements("x", &Bytes::from_static(b"\x01\x00")).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn raw_tensors_are_checked() {
        let t = tensor_from_raw("x", DType::Float32, vec![2], Bytes::from(vec![0u8; 8])).unwrap();
        assert_eq!(t.num_elements(), 2);
        let err = tensor_from_raw("input 'x'", DType::Float32, vec![3], Bytes::from(vec![0u8; 8])).unwrap_err();
        assert!(
            err.contains("8 bytes of FP32 data do not match shape [3] (12 bytes expected)"),
            "{err}"
        );
        let err = tensor_from_raw("x", DType::Bool, vec![2], Bytes::from(vec![1u8, 2])).unwrap_err();
        assert!(err.contains("BOOL element 1 is the byte 2"), "{err}");
        let err = tensor_from_raw("x", DType::Int8, vec![-1], Bytes::new()).unwrap_err();
        assert!(err.contains("invalid shape"), "{err}");
        let framed = Bytes::from(encode_bytes_elements(&[Bytes::from_static(b"a")]));
        let err = tensor_from_raw("x", DType::Bytes, vec![2], framed).unwrap_err();
        assert!(err.contains("1 BYTES elements do not match shape [2]"), "{err}");
    }

    #[test]
    fn split_then_join_restores_the_batch() {
        let x = Tensor::from_values(vec![3, 2], &[1f32, 2., 3., 4., 5., 6.]).unwrap();
        let s = Tensor::new(
            DType::Bytes,
            vec![3],
            TensorData::Items(vec![
                Bytes::from_static(b"a"),
                Bytes::from_static(b"b"),
                Bytes::from_static(b"c"),
            ]),
        )
        .unwrap();
        let instances = split_batch(vec![input("x", x.clone()), input("s", s.clone())]).unwrap();
        assert_eq!(instances.len(), 3);
        assert_eq!(instances[1]["x"].to_values::<f32>().unwrap(), vec![3., 4.]);
        assert_eq!(instances[1]["x"].shape, vec![2]);
        assert_eq!(instances[2]["s"].items().unwrap(), &[Bytes::from_static(b"c")]);
        assert_eq!(instances[2]["s"].shape, Vec::<i64>::new());
        let results: Vec<Vec<Tensor>> = instances
            .into_iter()
            .map(|mut i| vec![i.remove("x").unwrap(), i.remove("s").unwrap()])
            .collect();
        let joined = join_batch(&["x".into(), "s".into()], results).unwrap();
        assert_eq!(joined, vec![x, s]);
    }

    #[test]
    fn split_and_join_errors_name_the_tensors() {
        let a = Tensor::from_values(vec![2, 1], &[1i32, 2]).unwrap();
        let b = Tensor::from_values(vec![3], &[1i32, 2, 3]).unwrap();
        let err = split_batch(vec![input("a", a.clone()), input("b", b)]).unwrap_err();
        assert!(err.contains("input 'b' has batch size 3 but input 'a' has 2"), "{err}");
        let scalar = Tensor::from_values(vec![], &[1i32]).unwrap();
        let err = split_batch(vec![input("a", scalar)]).unwrap_err();
        assert!(err.contains("input 'a' has shape []"), "{err}");
        let empty = Tensor::from_values::<i32>(vec![0, 2], &[]).unwrap();
        assert!(split_batch(vec![input("a", empty)]).unwrap_err().contains("is 0"));
        assert!(split_batch(vec![]).unwrap_err().contains("no inputs"));
        let ragged = vec![
            vec![Tensor::from_values(vec![1], &[1i32]).unwrap()],
            vec![Tensor::from_values(vec![2], &[1i32, 2]).unwrap()],
        ];
        let err = join_batch(&["y".into()], ragged).unwrap_err();
        assert!(err.contains("output 'y' differs between the instances"), "{err}");
        assert!(err.contains("instance 1: INT32 [2]"), "{err}");
    }
}
