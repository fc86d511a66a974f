//! MindSpore REST JSON codec: `/model/<servable>[/version/<n>]:<method>` URLs, `{"instances": ...}` bodies and
//! replies. Parsing follows MindSpore Serving 2.0.2 (`restful_request.cc`, `http_process.cc`) rule by rule so
//! clients see the same values and the same error texts; the HTTP ingress only moves bytes and sets headers.

use crate::codec::json_text::{FloatText, write_element, write_str};
use crate::codec::ms_proto::{check_items_shape, tensor_check_error};
use crate::error::ServeError;
use crate::request::{MethodRef, PredictReply, ReplyShape};
use crate::tensor::{DType, NamedInstance, Tensor, TensorData, element_count};
use base64::Engine as _;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// MindSpore's decoder: padding required (it rejects lengths that are not a multiple of 4), but it ignores
/// the unused low bits of the last symbol, so non-canonical encodings are accepted too.
const B64_DECODE: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);

/// Most JSON nodes a reply may hold for zero-element tensors (`[n, 0]` makes n empty lists from no data).
const MAX_EMPTY_LISTS: usize = 1 << 20;

/// The most elements a list's buffer is sized for before its leaves are read.
const PRESIZE_ELEMENTS: usize = 1 << 16;

/// Parses a REST path into the method it addresses, with MindSpore's keyword-based rules.
///
/// The servable is the text after the first `model` plus one separator, up to the next `/` or `:`; when
/// `version` occurs anywhere, the version is read the same way after it (C `stol` rules); the method is
/// everything after the first `:`. Errors carry MindSpore's texts, unprefixed.
pub fn parse_url(path: &str) -> Result<MethodRef, ServeError> {
    let servable = url_query(path, "model");
    if servable.is_empty() {
        return Err(invalid("please check url, the keyword:[model] must contain."));
    }
    let version = if path.contains("version") {
        parse_version(url_query(path, "version"))?
    } else {
        0
    };
    let method = path.split_once(':').map_or("", |(_, method)| method);
    if method.is_empty() {
        return Err(invalid("please check url, the keyword:[service method] must contain."));
    }
    Ok(MethodRef {
        servable: servable.to_string(),
        method: method.to_string(),
        version,
    })
}

/// Decodes a REST body into its instances (always a list, also for the single-object form).
///
/// Body-level errors (empty, too big, not JSON) are unprefixed; every later error starts with
/// `"Parser request failed, "`. String/bytes tensors then get the gRPC tensor check (`[["abc"]]` fails it).
pub fn decode_body(body: &[u8], max_bytes: usize) -> Result<Vec<NamedInstance>, ServeError> {
    if body.is_empty() {
        return Err(invalid("http message invalid"));
    }
    if body.len() > max_bytes {
        return Err(invalid(format!("http message is bigger than {max_bytes}")));
    }
    // serde_json stops at 128 levels of nesting with an error, so deep bodies cannot overflow the stack here
    // or in the recursive walk below.
    let json: &RawValue = serde_json::from_slice(body).map_err(illegal_json)?;
    let instances = parse_instances(json)?;
    check_items_shapes(&instances)?;
    Ok(instances)
}

fn illegal_json(err: serde_json::Error) -> ServeError {
    invalid(format!("Illegal JSON format.{err}"))
}

fn parse_failed(detail: String) -> ServeError {
    invalid(format!("Parser request failed, {detail}"))
}

/// The JSON type of a raw value, from its first character (serde_json has validated it already).
fn raw_kind(raw: &RawValue) -> u8 {
    raw.get().bytes().find(|b| !b.is_ascii_whitespace()).unwrap_or(b'n')
}

/// A raw value as a `Value` tree (this is where nesting deeper than 128 levels is refused).
fn tree(raw: &RawValue) -> Result<Value, ServeError> {
    serde_json::from_str(raw.get()).map_err(illegal_json)
}

/// Encodes a reply (the caller serialises it): `{"instances": [...]}` or `{"error_msg": "..."}`.
///
/// Shape `[]` gives a JSON scalar, other shapes nested lists; float16/32 become JSON numbers (widened to f64,
/// as MindSpore does); NaN and infinities become `null` (JSON has no literal for them, and nlohmann, which
/// MindSpore uses, writes `null` too); strings are lossy UTF-8; bytes are `{"b64": "..."}`.
pub fn encode_reply(reply: &PredictReply) -> Vec<u8> {
    let (output_names, results): (&[String], Vec<Result<&[Tensor], &ServeError>>) = match reply.shape() {
        ReplyShape::OneError(err) => return error_body(err.message()),
        ReplyShape::AllOk { output_names, outputs } => (output_names, outputs.into_iter().map(Ok).collect()),
        ReplyShape::Mixed { output_names, results } => (
            output_names,
            results.iter().map(|r| r.as_ref().map(Vec::as_slice)).collect(),
        ),
    };
    // Checked before writing, so a reply is either whole or one error.
    for tensors in results.iter().filter_map(|r| r.as_ref().ok()) {
        for (name, tensor) in output_names.iter().zip(tensors.iter()) {
            if let Err(detail) = check_encodable(name, tensor) {
                return error_body(&format!("Failed to construct the response: {detail}"));
            }
        }
    }
    let order = key_order(output_names);
    let mut out = Vec::with_capacity(64 + results.len() * 32);
    out.extend_from_slice(b"{\"instances\":[");
    for (i, result) in results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match result {
            Ok(tensors) => write_instance(&mut out, output_names, &order, tensors),
            Err(err) => out.extend_from_slice(&error_body(err.message())),
        }
    }
    out.extend_from_slice(b"]}");
    out
}

/// The REST error body: `{"error_msg": message}`.
pub fn error_body(message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    out.extend_from_slice(b"{\"error_msg\":");
    write_str(&mut out, message);
    out.push(b'}');
    out
}

fn invalid(text: impl Into<String>) -> ServeError {
    ServeError::InvalidInput(text.into())
}

/// MindSpore's `UrlQuery`: text after `key` and one more character, up to the next `/` or `:`.
fn url_query<'a>(url: &'a str, key: &str) -> &'a str {
    let Some(rest) = url.find(key).and_then(|start| url.get(start + key.len() + 1..)) else {
        return "";
    };
    rest.find(['/', ':']).map_or(rest, |end| &rest[..end])
}

/// C++ `std::stol` on the version text (leading spaces, a sign, then digits; trailing text ignored), then
/// MindSpore's range check `0 <= v < UINT32_MAX`.
fn parse_version(text: &str) -> Result<u64, ServeError> {
    let range_error = || {
        invalid(format!(
            "please check url, version number range failed, request version number {text}"
        ))
    };
    let trimmed = text.trim_start_matches([' ', '\t', '\n', '\r', '\x0b', '\x0c']);
    let (negative, unsigned) = match trimmed.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, trimmed.strip_prefix('+').unwrap_or(trimmed)),
    };
    let digits = &unsigned[..unsigned.bytes().take_while(u8::is_ascii_digit).count()];
    if digits.is_empty() {
        return Err(invalid(format!(
            "please check url, the keyword:[version] value invalid, request version number {text}"
        )));
    }
    let value: u64 = digits.parse().map_err(|_| range_error())?;
    if (negative && value != 0) || value >= u64::from(u32::MAX) {
        return Err(range_error());
    }
    Ok(value)
}

/// The `instances` value; `Err` holds the text that follows `"Parser request failed, "`.
/// NOTE: the body stays raw JSON down to one instance at a time: only that instance becomes a `Value` tree, and it
/// is dropped once converted, so a large body never exists as a whole tree (tens of bytes per number) next to its
/// tensors.
fn parse_instances(json: &RawValue) -> Result<Vec<NamedInstance>, ServeError> {
    let instances = match raw_kind(json) {
        // Duplicate keys: the last one counts, as in a `Value` map.
        b'{' => serde_json::from_str::<HashMap<String, &RawValue>>(json.get())
            .map_err(illegal_json)?
            .remove("instances"),
        _ => None,
    };
    let Some(instances) = instances else {
        return Err(parse_failed(
            "key 'instances' expects to exist once, but actually 0 times".into(),
        ));
    };
    match raw_kind(instances) {
        b'{' => match tree(instances)? {
            Value::Object(map) if map.is_empty() => Err(parse_failed("json object, value is empty".into())),
            Value::Object(map) => Ok(vec![parse_instance(&map).map_err(parse_failed)?]),
            _ => Err(parse_failed("instances no key mode is not supported".into())),
        },
        b'[' => {
            let list: Vec<&RawValue> = serde_json::from_str(instances.get()).map_err(illegal_json)?;
            match list.first().map(|first| raw_kind(first)) {
                None => Err(parse_failed("instances value is array type, but no value".into())),
                Some(b'{') => list
                    .iter()
                    .map(|raw| parse_list_instance(&tree(raw)?).map_err(parse_failed))
                    .collect(),
                Some(_) => Err(parse_failed("instances no key mode is not supported".into())),
            }
        }
        _ => Err(parse_failed("instances no key mode is not supported".into())),
    }
}

fn parse_list_instance(value: &Value) -> Result<NamedInstance, String> {
    match value {
        Value::Object(map) if map.is_empty() => Err("json array, instance is object type, but no value".into()),
        Value::Object(map) => parse_instance(map),
        _ => Err("json array, instance is not object type".into()),
    }
}

/// NOTE: serde_json's map (no `preserve_order`) iterates keys sorted, like nlohmann's `std::map`, so the
/// first reported error is the one MindSpore reports.
fn parse_instance(map: &Map<String, Value>) -> Result<NamedInstance, String> {
    map.iter()
        .map(|(name, value)| {
            if name.is_empty() {
                return Err("string key is empty".to_string());
            }
            Ok((name.clone(), parse_value(value)?))
        })
        .collect()
}

fn parse_value(value: &Value) -> Result<Tensor, String> {
    match value {
        Value::Object(obj) => parse_object(obj),
        Value::Array(_) => parse_array(value),
        Value::Null => Err("json value is null, it is not supported".into()),
        scalar => {
            let dtype = leaf_dtype(scalar).ok_or("json value type is unregistered")?;
            let mut leaves = Leaves::new(dtype);
            leaves.push_json(scalar)?;
            leaves.into_tensor(vec![])
        }
    }
}

/// A JSON leaf's dtype: int -> int32, float -> float32, bool, string; `None` for anything else.
fn leaf_dtype(value: &Value) -> Option<DType> {
    match value {
        Value::Number(n) if n.is_f64() => Some(DType::Float32),
        Value::Number(_) => Some(DType::Int32),
        Value::Bool(_) => Some(DType::Bool),
        Value::String(_) => Some(DType::String),
        _ => None,
    }
}

/// MindSpore's dtype names for the `type` key (`fp16` and `float16` are the same type).
fn dtype_from_name(name: &str) -> Option<DType> {
    Some(match name {
        "int8" => DType::Int8,
        "int16" => DType::Int16,
        "int32" => DType::Int32,
        "int64" => DType::Int64,
        "uint8" => DType::UInt8,
        "uint16" => DType::UInt16,
        "uint32" => DType::UInt32,
        "uint64" => DType::UInt64,
        "fp16" | "float16" => DType::Float16,
        "fp32" | "float32" => DType::Float32,
        "fp64" | "float64" => DType::Float64,
        "bool" => DType::Bool,
        "str" => DType::String,
        "bytes" => DType::Bytes,
        _ => return None,
    })
}

/// A `{"b64", "type", "shape"}` object's dtype: bytes when `type` is absent, `None` when it is not a known name.
fn object_dtype(obj: &Map<String, Value>) -> Option<DType> {
    match obj.get("type") {
        None => Some(DType::Bytes),
        Some(ty) => ty.as_str().and_then(dtype_from_name),
    }
}

/// MindSpore's `CheckObj`: the keys and value kinds of a `{"b64", "type", "shape"}` object.
fn check_object(obj: &Map<String, Value>) -> Result<(), String> {
    if obj.is_empty() {
        return Err("json object, value is empty".into());
    }
    if obj.len() > 3 {
        return Err("json object, items size is more than 3, only support specified ['b64', 'type', 'shape']".into());
    }
    for (key, value) in obj {
        match key.as_str() {
            "b64" => {}
            "type" => {
                let name = value
                    .as_str()
                    .ok_or("json object, key is 'type', value should be string type")?;
                if dtype_from_name(name).is_none() {
                    return Err(format!("json object, specified type:'{name}' is illegal"));
                }
            }
            "shape" => check_object_shape(value)?,
            _ => {
                return Err(format!(
                    "json object, key is not ['b64', 'type', 'shape'], fail key:{key}"
                ));
            }
        }
    }
    if !obj.contains_key("b64") {
        return Err("json object, 'b64' should be specified only one time".into());
    }
    Ok(())
}

fn check_object_shape(value: &Value) -> Result<(), String> {
    let dims = value
        .as_array()
        .ok_or("json object, key is 'shape', value should be array type")?;
    let mut zero_before = false;
    for dim in dims {
        if zero_before {
            return Err(format!("json object, key is 'shape', invalid shape value {value}"));
        }
        let dim = dim
            .as_u64()
            .ok_or("json object, key is 'shape', array value should be unsigned integer")?;
        zero_before |= dim == 0;
    }
    Ok(())
}

/// A typed/binary value: `{"b64": "...", "type": "float32", "shape": [2, 2]}`.
fn parse_object(obj: &Map<String, Value>) -> Result<Tensor, String> {
    check_object(obj)?;
    let dtype = object_dtype(obj).ok_or("json object, type is unknown")?;
    // Dims above i64::MAX cannot match any decoded size; clamping keeps the size check's error text.
    let shape: Vec<i64> = obj
        .get("shape")
        .and_then(Value::as_array)
        .map_or_else(Vec::new, |dims| {
            dims.iter()
                .filter_map(Value::as_u64)
                .map(|d| i64::try_from(d).unwrap_or(i64::MAX))
                .collect()
        });
    let count = element_count(&shape);
    if dtype.is_variable() && count != Some(1) {
        return Err(
            "json object, only support scalar when data type is string or bytes, please check 'type' or \
                    'shape'"
                .into(),
        );
    }
    let data = decode_b64(obj.get("b64"))?;
    if dtype.is_variable() {
        let mut leaves = Leaves::new(dtype);
        leaves.push_item(data)?;
        return leaves.into_tensor(shape);
    }
    let item_size = dtype.item_size();
    if count.and_then(|c| c.checked_mul(item_size)) != Some(data.len()) {
        return Err(format!(
            "size is not matched, decode base64 size:{}; Given info: type:{dtype}; type size:{item_size}; element \
             nums:{}",
            data.len(),
            count.unwrap_or(usize::MAX)
        ));
    }
    Tensor::from_raw(dtype, shape, data)
}

fn decode_b64(value: Option<&Value>) -> Result<Vec<u8>, String> {
    let Some(Value::String(text)) = value else {
        return Err("get scalar data failed, type is string, but json is not string type".into());
    };
    B64_DECODE
        .decode(text)
        .map_err(|_| format!("'{text}' is illegal b64 encode string"))
}

/// A nested list: shape from the first element at each depth, dtype from the first leaf.
fn parse_array(value: &Value) -> Result<Tensor, String> {
    let mut shape = Vec::new();
    let mut first = value;
    while let Value::Array(list) = first {
        let Some(head) = list.first() else { break };
        shape.push(list.len() as i64);
        first = head;
    }
    if shape.is_empty() {
        return Err("json array, shape is empty".into());
    }
    // `first` is now a leaf or an empty list (`[[]]`); empty lists and `null` have no dtype.
    let objects = first.is_object();
    let dtype = match first {
        Value::Object(obj) => object_dtype(obj),
        leaf => leaf_dtype(leaf),
    };
    let dtype = dtype.ok_or("json array, data type is unknown")?;
    if dtype.is_variable() && element_count(&shape) != Some(1) {
        return Err("json array, string or bytes type only support one item".into());
    }
    if objects && !dtype.is_variable() {
        return Err("json array, item is object type, object only support string or bytes type".into());
    }
    let mut leaves = Leaves::new(dtype);
    // Sized up front so the tensor's buffer is exact (no spare capacity held per instance); capped, because a
    // malformed list's shape (taken from first elements) can claim far more elements than the body holds.
    let elements = element_count(&shape).unwrap_or(0).min(PRESIZE_ELEMENTS);
    leaves.raw.reserve_exact(elements * dtype.item_size());
    walk_array(value, &shape, 0, objects, &mut leaves)?;
    leaves.into_tensor(shape)
}

/// MindSpore's `RecursiveGetArray` + `GetArrayData`: checks every level against `shape`, collects leaves.
fn walk_array(value: &Value, shape: &[i64], depth: usize, objects: bool, leaves: &mut Leaves) -> Result<(), String> {
    let Some(&dim) = shape.get(depth) else {
        let dims = shape.len();
        return Err(format!(
            "invalid json array: current depth {depth} is more than shape dims {dims}"
        ));
    };
    let list = value.as_array().ok_or("invalid json array: json type is not array")?;
    if list.len() as i64 != dim {
        return Err(format!(
            "invalid json array: json size is {}, the dim {depth} expected to be {dim}",
            list.len()
        ));
    }
    for item in list {
        if depth + 1 < shape.len() {
            walk_array(item, shape, depth + 1, objects, leaves)?;
        } else if objects {
            leaves.push_object(item)?;
        } else {
            if !matches!(item, Value::Number(_) | Value::Bool(_) | Value::String(_)) {
                return Err("json array, data should be number, bool, string or bytes".into());
            }
            if leaf_dtype(item) != Some(leaves.dtype) {
                return Err("json array, elements type is not equal".into());
            }
            leaves.push_json(item)?;
        }
    }
    Ok(())
}

/// Decoded leaves of one tensor, in C order.
struct Leaves {
    dtype: DType,
    raw: Vec<u8>,
    items: Vec<Bytes>,
}

impl Leaves {
    fn new(dtype: DType) -> Leaves {
        Leaves {
            dtype,
            raw: Vec::new(),
            items: Vec::new(),
        }
    }

    /// NOTE: a JSON int that does not fit int32 is an error, not an int64 tensor: the dtype must not depend on
    /// the values sent (a model declared int32 would fail only for large inputs), and MindSpore's silent wrap is
    /// worse. Clients send int64 as `{"b64": ..., "type": "int64"}`. Floats narrow to f32 like MindSpore's cast
    /// (out-of-range values become infinities).
    fn push_json(&mut self, value: &Value) -> Result<(), String> {
        match (self.dtype, value) {
            (DType::Int32, Value::Number(n)) => {
                let int = n.as_i64().and_then(|i| i32::try_from(i).ok());
                let int = int.ok_or_else(|| format!("json integer {n} is out of int32 range"))?;
                self.raw.extend_from_slice(&int.to_le_bytes());
            }
            (DType::Float32, Value::Number(n)) => {
                let float = n.as_f64().unwrap_or(f64::NAN) as f32;
                self.raw.extend_from_slice(&float.to_le_bytes());
            }
            (DType::Bool, Value::Bool(b)) => self.raw.push(u8::from(*b)),
            (DType::String, Value::String(s)) => self.items.push(Bytes::copy_from_slice(s.as_bytes())),
            _ => return Err("json array, elements type is not equal".into()),
        }
        Ok(())
    }

    /// One `{"b64": ...}` element of a list (lists of objects hold a single str/bytes element).
    ///
    /// NOTE: MindSpore skips the object checks here and stores the *undecoded* b64 text for `"type": "str"`;
    /// rustserve checks the object and decodes it, exactly as for a bare object value.
    fn push_object(&mut self, value: &Value) -> Result<(), String> {
        let obj = value
            .as_object()
            .ok_or("json array, object type only support string or bytes type")?;
        check_object(obj)?;
        let dtype = object_dtype(obj).filter(|d| d.is_variable());
        let dtype = dtype.ok_or("json array, object type only support string or bytes type")?;
        if dtype != self.dtype {
            return Err("json array, elements type is not equal".into());
        }
        self.push_item(decode_b64(obj.get("b64"))?)
    }

    fn push_item(&mut self, data: Vec<u8>) -> Result<(), String> {
        if self.dtype == DType::String && std::str::from_utf8(&data).is_err() {
            return Err("json object, decoded 'b64' data of type 'str' is not valid UTF-8".into());
        }
        self.items.push(Bytes::from(data));
        Ok(())
    }

    fn into_tensor(self, shape: Vec<i64>) -> Result<Tensor, String> {
        let data = if self.dtype.is_variable() {
            TensorData::Items(self.items)
        } else {
            TensorData::Raw(Bytes::from(self.raw))
        };
        Tensor::new(self.dtype, shape, data)
    }
}

/// MindSpore checks string/bytes shapes after the whole body parsed; the smallest failing name per instance
/// is the one MindSpore reports.
fn check_items_shapes(instances: &[NamedInstance]) -> Result<(), ServeError> {
    for instance in instances {
        let failed = instance
            .iter()
            .filter(|(_, tensor)| tensor.dtype.is_variable())
            .filter_map(|(name, tensor)| check_items_shape(&tensor.shape).err().map(|detail| (name, detail)))
            .min_by(|a, b| a.0.cmp(b.0));
        if let Some((name, detail)) = failed {
            return Err(tensor_check_error(name, &detail));
        }
    }
    Ok(())
}

/// Output positions in the order their keys are written: sorted by name, like nlohmann's `std::map` that MindSpore
/// writes replies with; a repeated name keeps its last output.
fn key_order(output_names: &[String]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..output_names.len()).collect();
    order.sort_by(|&a, &b| output_names[a].cmp(&output_names[b]).then(b.cmp(&a)));
    order.dedup_by(|later, kept| output_names[*later] == output_names[*kept]);
    order
}

fn write_instance(out: &mut Vec<u8>, output_names: &[String], order: &[usize], tensors: &[Tensor]) {
    out.push(b'{');
    let mut first = true;
    for &i in order {
        let Some(tensor) = tensors.get(i) else { continue };
        if !first {
            out.push(b',');
        }
        first = false;
        write_str(out, &output_names[i]);
        out.push(b':');
        let mut next = 0;
        write_nested(out, &tensor.shape, tensor, &mut next);
    }
    out.push(b'}');
}

fn check_encodable(name: &str, tensor: &Tensor) -> Result<(), String> {
    // Lists are written per element, so only zero-element tensors can ask for more lists than they hold data;
    // `[4294967295, 0]` would otherwise write billions of `[]`.
    let lists = tensor
        .shape
        .iter()
        .take_while(|&&d| d != 0)
        .try_fold(1usize, |acc, &d| {
            usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        });
    if tensor.num_elements() == 0 && lists.is_none_or(|n| n > MAX_EMPTY_LISTS) {
        return Err(format!(
            "output {name} has too many empty lists for shape {:?}",
            tensor.shape
        ));
    }
    Ok(())
}

/// Shape `[]` is a JSON scalar, other shapes nested lists of the elements in C order; `next` is the next element.
fn write_nested(out: &mut Vec<u8>, shape: &[i64], tensor: &Tensor, next: &mut usize) {
    match shape.split_first() {
        None => {
            write_leaf(out, tensor, *next);
            *next += 1;
        }
        Some((&dim, rest)) => {
            out.push(b'[');
            for i in 0..dim.max(0) {
                if i > 0 {
                    out.push(b',');
                }
                write_nested(out, rest, tensor, next);
            }
            out.push(b']');
        }
    }
}

/// Element `index`: float16/32 widened to float64 as MindSpore does, strings as lossy UTF-8, bytes as `{"b64": ...}`.
fn write_leaf(out: &mut Vec<u8>, tensor: &Tensor, index: usize) {
    match &tensor.data {
        TensorData::Items(items) => match items.get(index) {
            None => out.extend_from_slice(b"null"),
            Some(item) if tensor.dtype == DType::Bytes => {
                out.extend_from_slice(b"{\"b64\":");
                write_str(out, &general_purpose::STANDARD.encode(item));
                out.push(b'}');
            }
            Some(item) => write_str(out, &String::from_utf8_lossy(item)),
        },
        TensorData::Raw(raw) => {
            let size = tensor.dtype.item_size().max(1);
            match raw.get(index * size..(index + 1) * size) {
                Some(chunk) if !tensor.dtype.is_variable() => {
                    write_element(out, tensor.dtype, chunk, FloatText::Widened);
                }
                _ => out.extend_from_slice(b"null"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::Arc;

    fn reply_json(reply: &PredictReply) -> Value {
        serde_json::from_slice(&encode_reply(reply)).unwrap()
    }

    fn url_err(path: &str) -> String {
        parse_url(path).unwrap_err().message().to_string()
    }

    fn decode(body: &Value) -> Result<Vec<NamedInstance>, String> {
        decode_body(body.to_string().as_bytes(), 1 << 20).map_err(|e| e.message().to_string())
    }

    /// Decodes `{"instances": {"x": value}}` and returns the tensor.
    fn value(value: Value) -> Result<Tensor, String> {
        decode(&json!({ "instances": { "x": value } })).map(|mut list| list.remove(0).remove("x").unwrap())
    }

    fn value_err(v: Value) -> String {
        let err = value(v).unwrap_err();
        err.strip_prefix("Parser request failed, ")
            .map(str::to_string)
            .unwrap_or(err)
    }

    fn reply_of(tensor: Tensor) -> Value {
        let names: Arc<[String]> = Arc::from(vec!["y".to_string()]);
        reply_json(&PredictReply::Instances {
            output_names: names,
            results: vec![Ok(vec![tensor])],
        })
    }

    #[test]
    fn url_forms() {
        let m = parse_url("/model/add:add_common").unwrap();
        assert_eq!(
            m,
            MethodRef {
                servable: "add".into(),
                method: "add_common".into(),
                version: 0
            }
        );
        assert_eq!(parse_url("/model/add/version/2:add_common").unwrap().version, 2);
        let m = parse_url("/version/3/model/add:add_common").unwrap();
        assert_eq!((m.servable.as_str(), m.version), ("add", 3));
        assert_eq!(parse_url("/model/add/version/0:m").unwrap().version, 0);
        assert_eq!(parse_url("/model/add/version/7abc:m").unwrap().version, 7);
        assert_eq!(parse_url("/model/add:a/b:c").unwrap().method, "a/b:c");
    }

    #[test]
    fn url_errors() {
        let no_model = "please check url, the keyword:[model] must contain.";
        assert_eq!(url_err("/servable/add:m"), no_model);
        assert_eq!(url_err("/model/:m"), no_model);
        assert_eq!(url_err("/model"), no_model);
        assert_eq!(
            url_err("/model/add"),
            "please check url, the keyword:[service method] must contain."
        );
        assert_eq!(
            url_err("/model/add:"),
            "please check url, the keyword:[service method] must contain."
        );
        let range = "please check url, version number range failed, request version number ";
        assert_eq!(url_err("/model/add/version/-1:m"), format!("{range}-1"));
        assert_eq!(url_err("/model/add/version/4294967295:m"), format!("{range}4294967295"));
        assert_eq!(
            url_err("/model/add/version/99999999999999999999:m"),
            format!("{range}99999999999999999999")
        );
        let invalid = "please check url, the keyword:[version] value invalid, request version number ";
        assert_eq!(url_err("/model/add/version/abc:m"), format!("{invalid}abc"));
        // Substring-based like MindSpore: `version` inside a servable name triggers version parsing.
        assert_eq!(url_err("/model/conversion:predict"), format!("{invalid}predict"));
    }

    #[test]
    fn body_level_errors() {
        let err = |body: &[u8], max| decode_body(body, max).unwrap_err().message().to_string();
        assert_eq!(err(b"", 10), "http message invalid");
        assert_eq!(err(b"{\"instances\": {}}", 10), "http message is bigger than 10");
        assert!(err(b"{\"instances\": ", 100).starts_with("Illegal JSON format."));
        assert!(err(b"nope", 100).starts_with("Illegal JSON format."));
        let deep = format!(
            "{{\"instances\": {{\"x\": {}1{}}}}}",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        assert!(err(deep.as_bytes(), 1 << 20).starts_with("Illegal JSON format."));
        let ok = format!("{{\"instances\": {{\"x\": {}1{}}}}}", "[".repeat(100), "]".repeat(100));
        assert_eq!(decode_body(ok.as_bytes(), 1 << 20).unwrap()[0]["x"].shape, vec![1; 100]);
        assert_eq!(decode_body(b"{\"instances\": {\"x\": 1}}", 23).unwrap().len(), 1);
    }

    #[test]
    fn instances_errors() {
        let err = |body: Value| decode(&body).unwrap_err();
        let p = "Parser request failed, ";
        assert_eq!(
            err(json!({"x": 1})),
            format!("{p}key 'instances' expects to exist once, but actually 0 times")
        );
        assert_eq!(
            err(json!([1])),
            format!("{p}key 'instances' expects to exist once, but actually 0 times")
        );
        assert_eq!(
            err(json!({"instances": []})),
            format!("{p}instances value is array type, but no value")
        );
        assert_eq!(
            err(json!({"instances": [1, 2]})),
            format!("{p}instances no key mode is not supported")
        );
        assert_eq!(
            err(json!({"instances": 1})),
            format!("{p}instances no key mode is not supported")
        );
        assert_eq!(
            err(json!({"instances": [{"x": 1}, 2]})),
            format!("{p}json array, instance is not object type")
        );
        assert_eq!(
            err(json!({"instances": [{"x": 1}, {}]})),
            format!("{p}json array, instance is object type, but no value")
        );
        assert_eq!(err(json!({"instances": {}})), format!("{p}json object, value is empty"));
        assert_eq!(err(json!({"instances": [{"": 1}]})), format!("{p}string key is empty"));
    }

    #[test]
    fn instance_list_and_single_object() {
        let list = decode(&json!({"instances": [{"x": 1, "y": 2.5}, {"x": 3, "y": 4.5}], "other": 0})).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1]["x"].to_values::<i32>().unwrap(), vec![3]);
        assert_eq!(list[1]["y"].to_values::<f32>().unwrap(), vec![4.5]);
        assert_eq!(decode(&json!({"instances": {"x": 1}})).unwrap().len(), 1);
    }

    #[test]
    fn scalars() {
        let t = value(json!(-7)).unwrap();
        assert_eq!(
            (t.dtype, t.shape.clone(), t.to_values::<i32>().unwrap()),
            (DType::Int32, vec![], vec![-7])
        );
        let t = value(json!(1.5)).unwrap();
        assert_eq!((t.dtype, t.to_values::<f32>().unwrap()), (DType::Float32, vec![1.5]));
        let t = value(json!(true)).unwrap();
        assert_eq!((t.dtype, t.to_values::<bool>().unwrap()), (DType::Bool, vec![true]));
        assert_eq!(value(json!("héllo")).unwrap(), Tensor::scalar_string("héllo"));
        assert_eq!(value_err(json!(null)), "json value is null, it is not supported");
    }

    #[test]
    fn int_outside_int32_is_an_error() {
        assert_eq!(
            value(json!(2_147_483_647)).unwrap().to_values::<i32>().unwrap(),
            vec![i32::MAX]
        );
        assert_eq!(
            value_err(json!(2_147_483_648_i64)),
            "json integer 2147483648 is out of int32 range"
        );
        assert_eq!(
            value_err(json!([1, -3_000_000_000_i64])),
            "json integer -3000000000 is out of int32 range"
        );
        assert_eq!(
            value_err(json!(u64::MAX)),
            format!("json integer {} is out of int32 range", u64::MAX)
        );
    }

    #[test]
    fn nested_arrays() {
        let t = value(json!([[1, 2, 3], [4, 5, 6]])).unwrap();
        assert_eq!((t.dtype, t.shape.clone()), (DType::Int32, vec![2, 3]));
        assert_eq!(t.to_values::<i32>().unwrap(), vec![1, 2, 3, 4, 5, 6]);
        let t = value(json!([[0.5], [1.0]])).unwrap();
        assert_eq!(
            (t.dtype, t.shape.clone(), t.to_values::<f32>().unwrap()),
            (DType::Float32, vec![2, 1], vec![0.5, 1.0])
        );
        let t = value(json!([true, false])).unwrap();
        assert_eq!(t.to_values::<bool>().unwrap(), vec![true, false]);
        let t = value(json!(["abc"])).unwrap();
        assert_eq!((t.dtype, t.shape.clone()), (DType::String, vec![1]));
    }

    #[test]
    fn array_errors() {
        assert_eq!(value_err(json!([1, 2.5])), "json array, elements type is not equal");
        assert_eq!(value_err(json!([1.5, 2])), "json array, elements type is not equal");
        assert_eq!(
            value_err(json!([[false, true], [1, 1]])),
            "json array, elements type is not equal"
        );
        assert_eq!(value_err(json!([true, "a"])), "json array, elements type is not equal");
        assert_eq!(
            value_err(json!([[1, 2], [3]])),
            "invalid json array: json size is 1, the dim 1 expected to be 2"
        );
        assert_eq!(value_err(json!([[1], 2])), "invalid json array: json type is not array");
        assert_eq!(
            value_err(json!([1, [2]])),
            "json array, data should be number, bool, string or bytes"
        );
        assert_eq!(
            value_err(json!([1, null])),
            "json array, data should be number, bool, string or bytes"
        );
        assert_eq!(
            value_err(json!([1, {"b64": ""}])),
            "json array, data should be number, bool, string or bytes"
        );
        assert_eq!(value_err(json!([])), "json array, shape is empty");
        assert_eq!(value_err(json!([[]])), "json array, data type is unknown");
        assert_eq!(value_err(json!([null])), "json array, data type is unknown");
        assert_eq!(
            value_err(json!(["a", "b"])),
            "json array, string or bytes type only support one item"
        );
        assert_eq!(
            value_err(json!([{"b64": "", "type": "int32"}])),
            "json array, item is object type, object only support string or bytes type"
        );
    }

    #[test]
    fn string_shape_fails_the_tensor_check() {
        let err = value(json!([["abc"]])).unwrap_err();
        assert_eq!(
            err,
            "Instances input x check failed, detail: Instance tensor check failed: bytes or string type input  \
             shape can only be (1,) or empty, but given shape is [1, 1]"
        );
        let err = value(json!({"b64": "YQ==", "type": "str", "shape": [1, 1]})).unwrap_err();
        assert!(err.ends_with("given shape is [1, 1]"), "{err}");
    }

    fn b64(data: &[u8]) -> String {
        general_purpose::STANDARD.encode(data)
    }

    #[test]
    fn typed_b64_every_dtype_round_trips() {
        for dtype in DType::ALL.into_iter().filter(|d| !d.is_variable()) {
            let raw: Vec<u8> = (0..dtype.item_size() * 6)
                .map(|i| if dtype == DType::Bool { i as u8 % 2 } else { i as u8 })
                .collect();
            let t = value(json!({"b64": b64(&raw), "type": dtype.numpy_name(), "shape": [2, 3]})).unwrap();
            assert_eq!(t, Tensor::from_raw(dtype, vec![2, 3], raw.clone()).unwrap(), "{dtype}");
        }
        for (name, dtype) in [
            ("fp16", DType::Float16),
            ("fp32", DType::Float32),
            ("fp64", DType::Float64),
        ] {
            let raw = vec![0u8; dtype.item_size()];
            assert_eq!(value(json!({"b64": b64(&raw), "type": name})).unwrap().dtype, dtype);
        }
        assert_eq!(
            value(json!({"b64": b64(b"hi"), "type": "str"})).unwrap(),
            Tensor::scalar_string("hi")
        );
        let t = value(json!({"b64": b64(b"\xff\x00")})).unwrap();
        assert_eq!(t, Tensor::scalar_bytes(&b"\xff\x00"[..]));
        let t = value(json!({"b64": b64(b"x"), "type": "bytes", "shape": [1]})).unwrap();
        assert_eq!((t.dtype, t.shape), (DType::Bytes, vec![1]));
        let t = value(json!({"b64": "", "type": "fp32", "shape": [3, 0]})).unwrap();
        assert_eq!(t.shape, vec![3, 0]);
    }

    #[test]
    fn b64_object_errors() {
        assert_eq!(
            value_err(json!({"type": "int8"})),
            "json object, 'b64' should be specified only one time"
        );
        assert_eq!(
            value_err(json!({"b64": "", "a": 1})),
            "json object, key is not ['b64', 'type', 'shape'], fail key:a"
        );
        assert_eq!(
            value_err(json!({"b64": "", "type": "str", "shape": [], "x": 1})),
            "json object, items size is more than 3, only support specified ['b64', 'type', 'shape']"
        );
        assert_eq!(
            value_err(json!({"b64": "", "type": 1})),
            "json object, key is 'type', value should be string type"
        );
        assert_eq!(
            value_err(json!({"b64": "", "type": "int4"})),
            "json object, specified type:'int4' is illegal"
        );
        assert_eq!(
            value_err(json!({"b64": "", "shape": 1})),
            "json object, key is 'shape', value should be array type"
        );
        let unsigned = "json object, key is 'shape', array value should be unsigned integer";
        assert_eq!(value_err(json!({"b64": "", "shape": [-1]})), unsigned);
        assert_eq!(value_err(json!({"b64": "", "shape": [1.0]})), unsigned);
        assert_eq!(
            value_err(json!({"b64": "", "shape": [1, 2, 0, 1]})),
            "json object, key is 'shape', invalid shape value [1,2,0,1]"
        );
        assert_eq!(
            value_err(json!({"b64": "", "type": "float16"})),
            "size is not matched, decode base64 size:0; Given info: type:float16; type size:2; element nums:1"
        );
        assert_eq!(
            value_err(json!({"b64": "AAAAAA==", "type": "fp32", "shape": [2]})),
            "size is not matched, decode base64 size:4; Given info: type:float32; type size:4; element nums:2"
        );
        assert_eq!(value_err(json!({"b64": "abc"})), "'abc' is illegal b64 encode string");
        assert_eq!(value_err(json!({"b64": "a?c="})), "'a?c=' is illegal b64 encode string");
        assert_eq!(
            value_err(json!({"b64": 12})),
            "get scalar data failed, type is string, but json is not string type"
        );
        let scalar_only =
            "json object, only support scalar when data type is string or bytes, please check 'type' or 'shape'";
        assert_eq!(value_err(json!({"b64": "", "type": "str", "shape": [2]})), scalar_only);
        assert_eq!(value_err(json!({"b64": "", "shape": [0]})), scalar_only);
        assert!(value_err(json!({"b64": b64(b"\xff"), "type": "str"})).contains("not valid UTF-8"));
        // MindSpore ignores the unused low bits of the last symbol.
        assert_eq!(value(json!({"b64": "YR=="})).unwrap(), Tensor::scalar_bytes(&b"a"[..]));
    }

    #[test]
    fn arrays_of_one_b64_object() {
        let t = value(json!([{"b64": b64(b"\x01\x02")}])).unwrap();
        assert_eq!(
            (t.dtype, t.shape.clone(), t.items().unwrap().to_vec()),
            (DType::Bytes, vec![1], vec![Bytes::from_static(b"\x01\x02")])
        );
        let t = value(json!([{"b64": b64(b"abc"), "type": "str"}])).unwrap();
        assert_eq!(t.items().unwrap(), &[Bytes::from_static(b"abc")]);
        assert_eq!(
            value_err(json!([{"b64": "", "x": 1}])),
            "json object, key is not ['b64', 'type', 'shape'], fail key:x"
        );
        assert_eq!(
            value_err(json!([{"b64": ""}, {"b64": ""}])),
            "json array, string or bytes type only support one item"
        );
    }

    #[test]
    fn reply_values() {
        assert_eq!(
            reply_of(Tensor::from_values(vec![], &[3i32]).unwrap()),
            json!({"instances": [{"y": 3}]})
        );
        let t = Tensor::from_values(vec![2, 2], &[1.5f32, -2.0, 0.25, 8.0]).unwrap();
        assert_eq!(reply_of(t), json!({"instances": [{"y": [[1.5, -2.0], [0.25, 8.0]]}]}));
        let t = Tensor::from_values(vec![2], &[half::f16::from_f32(0.5), half::f16::from_f32(-3.0)]).unwrap();
        assert_eq!(reply_of(t), json!({"instances": [{"y": [0.5, -3.0]}]}));
        let t = Tensor::from_values(vec![3], &[f32::NAN, f32::INFINITY, 1.0]).unwrap();
        assert_eq!(reply_of(t), json!({"instances": [{"y": [null, null, 1.0]}]}));
        let t = Tensor::from_values(vec![1, 2], &[true, false]).unwrap();
        assert_eq!(reply_of(t), json!({"instances": [{"y": [[true, false]]}]}));
        assert_eq!(
            reply_of(Tensor::scalar_string("hé")),
            json!({"instances": [{"y": "hé"}]})
        );
        let lossy = Tensor {
            dtype: DType::String,
            shape: vec![1],
            data: TensorData::Items(vec![Bytes::from_static(b"a\xff")]),
        };
        assert_eq!(reply_of(lossy), json!({"instances": [{"y": ["a\u{fffd}"]}]}));
        assert_eq!(
            reply_of(Tensor::scalar_bytes(&b"\x00\x01"[..])),
            json!({"instances": [{"y": {"b64": "AAE="}}]})
        );
        let big = Tensor::from_values(vec![2], &[u64::MAX, 0]).unwrap();
        assert_eq!(reply_of(big), json!({"instances": [{"y": [u64::MAX, 0]}]}));
        let t = Tensor::from_values::<i64>(vec![0], &[]).unwrap();
        assert_eq!(reply_of(t), json!({"instances": [{"y": []}]}));
        let t = Tensor::from_values::<i64>(vec![2, 0], &[]).unwrap();
        assert_eq!(reply_of(t), json!({"instances": [{"y": [[], []]}]}));
        let t = Tensor::from_values::<i64>(vec![0, 3], &[]).unwrap();
        assert_eq!(reply_of(t), json!({"instances": [{"y": []}]}));
    }

    #[test]
    fn reply_refuses_absurd_empty_shapes() {
        let t = Tensor::from_values::<f32>(vec![4_294_967_295, 0], &[]).unwrap();
        let reply = reply_of(t);
        let msg = reply["error_msg"].as_str().unwrap();
        assert!(msg.starts_with("Failed to construct the response: "), "{msg}");
    }

    #[test]
    fn reply_shapes() {
        let names: Arc<[String]> = Arc::from(vec!["y".to_string(), "z".to_string()]);
        let ok = |v: i32| {
            Ok(vec![
                Tensor::from_values(vec![], &[v]).unwrap(),
                Tensor::scalar_string("s"),
            ])
        };
        let all = PredictReply::Instances {
            output_names: names.clone(),
            results: vec![ok(1), ok(2)],
        };
        assert_eq!(
            reply_json(&all),
            json!({"instances": [{"y": 1, "z": "s"}, {"y": 2, "z": "s"}]})
        );
        let failed = PredictReply::Failed(ServeError::InvalidInput("Request servable(a) method(b) , bad".into()));
        assert_eq!(
            reply_json(&failed),
            json!({"error_msg": "Request servable(a) method(b) , bad"})
        );
        let err = Err(ServeError::Stage("boom".into()));
        let same = PredictReply::Instances {
            output_names: names.clone(),
            results: vec![err.clone(), err.clone()],
        };
        assert_eq!(reply_json(&same), json!({"error_msg": "boom"}));
        let mixed = PredictReply::Instances {
            output_names: names,
            results: vec![ok(1), err],
        };
        assert_eq!(
            reply_json(&mixed),
            json!({"instances": [{"y": 1, "z": "s"}, {"error_msg": "boom"}]})
        );
        assert_eq!(
            serde_json::from_slice::<Value>(&error_body("x")).unwrap(),
            json!({"error_msg": "x"})
        );
    }

    #[test]
    fn reply_keys_sorted_and_last_repeat_kept() {
        let names: Arc<[String]> = Arc::from(vec!["z".to_string(), "a".to_string(), "z".to_string()]);
        let scalar = |v: i32| Tensor::from_values(vec![], &[v]).unwrap();
        let reply = PredictReply::Instances {
            output_names: names,
            results: vec![Ok(vec![scalar(1), scalar(2), scalar(3)])],
        };
        assert_eq!(
            String::from_utf8(encode_reply(&reply)).unwrap(),
            r#"{"instances":[{"a":2,"z":3}]}"#
        );
    }

    #[test]
    fn request_values_round_trip_through_reply() {
        let body = json!({"instances": [{
            "a": 5, "b": 2.5, "c": true, "d": "text", "e": [[1, 2], [3, 4]], "f": [[0.5, 1.5]],
            "g": [false], "h": ["one"], "i": {"b64": "AAE="}
        }]});
        let mut instance = decode(&body).unwrap().remove(0);
        let mut names: Vec<String> = instance.keys().cloned().collect();
        names.sort();
        let tensors: Vec<Tensor> = names.iter().map(|n| instance.remove(n).unwrap()).collect();
        let reply = PredictReply::Instances {
            output_names: Arc::from(names),
            results: vec![Ok(tensors)],
        };
        assert_eq!(reply_json(&reply), json!({"instances": body["instances"]}));
    }
}
