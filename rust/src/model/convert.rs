//! Conversions between rustserve's `Tensor` and ONNX Runtime values: numeric tensors are one `memcpy` each way
//! (our payload is little-endian C-order bytes, which is ORT's CPU layout), strings go through ORT's string API.
//! Used only by the model runner thread, right before and after `Session::run`.

use bytes::Bytes;
use ort::memory::Allocator;
use ort::value::{DynTensor, DynTensorValueType, DynValue, Shape, Tensor as OrtTensor, TensorElementType};

use crate::tensor::{DType, Tensor, TensorData, element_count};

// NOTE: the raw payload of a `Tensor` is little-endian and is copied into ORT buffers byte for byte, which is only
// right on little-endian machines (x86_64, aarch64: every target rustserve ships for).
const _: () = assert!(
    cfg!(target_endian = "little"),
    "rustserve's tensor conversions assume a little-endian target"
);

/// Our dtype for an ONNX element type; `None` for the types rustserve does not carry (bfloat16, complex, float8, ...).
pub(crate) fn dtype_from_ort(ty: TensorElementType) -> Option<DType> {
    Some(match ty {
        TensorElementType::Bool => DType::Bool,
        TensorElementType::Int8 => DType::Int8,
        TensorElementType::Uint8 => DType::UInt8,
        TensorElementType::Int16 => DType::Int16,
        TensorElementType::Uint16 => DType::UInt16,
        TensorElementType::Int32 => DType::Int32,
        TensorElementType::Uint32 => DType::UInt32,
        TensorElementType::Int64 => DType::Int64,
        TensorElementType::Uint64 => DType::UInt64,
        TensorElementType::Float16 => DType::Float16,
        TensorElementType::Float32 => DType::Float32,
        TensorElementType::Float64 => DType::Float64,
        TensorElementType::String => DType::String,
        _ => return None,
    })
}

/// The ONNX element type for one of our dtypes; `None` for `Bytes`, which ONNX has no type for.
pub(crate) fn dtype_to_ort(dtype: DType) -> Option<TensorElementType> {
    Some(match dtype {
        DType::Bool => TensorElementType::Bool,
        DType::Int8 => TensorElementType::Int8,
        DType::UInt8 => TensorElementType::Uint8,
        DType::Int16 => TensorElementType::Int16,
        DType::UInt16 => TensorElementType::Uint16,
        DType::Int32 => TensorElementType::Int32,
        DType::UInt32 => TensorElementType::Uint32,
        DType::Int64 => TensorElementType::Int64,
        DType::UInt64 => TensorElementType::Uint64,
        DType::Float16 => TensorElementType::Float16,
        DType::Float32 => TensorElementType::Float32,
        DType::Float64 => TensorElementType::Float64,
        DType::String => TensorElementType::String,
        DType::Bytes => return None,
    })
}

/// ONNX's own name of an element type, for error messages (`bfloat16`, `complex64`, ...).
pub(crate) fn onnx_type_name(ty: TensorElementType) -> String {
    match ty {
        TensorElementType::Bfloat16 => "bfloat16".to_owned(),
        TensorElementType::Complex64 => "complex64".to_owned(),
        TensorElementType::Complex128 => "complex128".to_owned(),
        TensorElementType::Float8E4M3FN => "float8e4m3fn".to_owned(),
        TensorElementType::Float8E4M3FNUZ => "float8e4m3fnuz".to_owned(),
        TensorElementType::Float8E5M2 => "float8e5m2".to_owned(),
        TensorElementType::Float8E5M2FNUZ => "float8e5m2fnuz".to_owned(),
        TensorElementType::Int4 => "int4".to_owned(),
        TensorElementType::Uint4 => "uint4".to_owned(),
        other => dtype_from_ort(other).map_or_else(|| other.to_string(), |d| d.numpy_name().to_owned()),
    }
}

/// Builds an owned ORT input value from a tensor (one copy of the payload).
pub(crate) fn to_ort_value(tensor: &Tensor) -> Result<DynValue, String> {
    let count = element_count(&tensor.shape).ok_or_else(|| format!("invalid shape {:?}", tensor.shape))?;
    match (&tensor.data, tensor.dtype) {
        (TensorData::Items(items), DType::String) => {
            if items.len() != count {
                return Err(format!("{} strings do not match shape {:?}", items.len(), tensor.shape));
            }
            let texts = items
                .iter()
                .map(|item| {
                    std::str::from_utf8(item)
                        .map(str::to_owned)
                        .map_err(|e| format!("string tensor holds invalid UTF-8: {e}"))
                })
                // NOTE: ort wants `T: 'static` string elements here, hence owned copies (ORT copies them again).
                .collect::<Result<Vec<String>, String>>()?;
            let value =
                OrtTensor::from_string_array((tensor.shape.clone(), texts.as_slice())).map_err(|e| e.to_string())?;
            Ok(value.into_dyn())
        }
        (TensorData::Raw(raw), dtype) => {
            let ty = dtype_to_ort(dtype).ok_or_else(|| format!("dtype {dtype} cannot be passed to ONNX Runtime"))?;
            let expected = count * dtype.item_size();
            if raw.len() != expected {
                return Err(format!(
                    "data size {} does not match shape {:?} of {dtype}",
                    raw.len(),
                    tensor.shape
                ));
            }
            let mut value = DynTensor::new(&Allocator::default(), ty, Shape::new(tensor.shape.iter().copied()))
                .map_err(|e| e.to_string())?;
            if expected > 0 {
                let dst = value.data_ptr_mut().cast::<u8>();
                if dst.is_null() {
                    return Err("ONNX Runtime returned no buffer for a non-empty tensor".to_owned());
                }
                // SAFETY: `DynTensor::new` allocated a CPU buffer (the default allocator) for `count` elements of
                // `ty`, i.e. `count * item_size == expected == raw.len()` bytes, and `dst` is non-null; `raw` is a
                // separate Rust allocation, so the ranges cannot overlap. Every byte pattern is a valid ORT element.
                unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), dst, expected) };
                if dtype == DType::Bool && raw.iter().any(|&b| b > 1) {
                    // ORT and Rust both expect 0/1 for bool; normalise any other truthy byte.
                    // SAFETY: same buffer as above, `expected` bytes, exclusively ours until the run.
                    let bools = unsafe { std::slice::from_raw_parts_mut(dst, expected) };
                    for b in bools {
                        *b = u8::from(*b != 0);
                    }
                }
            }
            Ok(value.into_dyn())
        }
        (TensorData::Items(_), dtype) => Err(format!("dtype {dtype} cannot be passed to ONNX Runtime")),
    }
}

/// Copies an ORT output value into an owned tensor.
pub(crate) fn from_ort_value(value: DynValue) -> Result<Tensor, String> {
    let value = value
        .downcast::<DynTensorValueType>()
        .map_err(|e| format!("output is not a tensor: {e}"))?;
    let ty = *value.data_type();
    let shape: Vec<i64> = value.shape().iter().copied().collect();
    let dtype = dtype_from_ort(ty).ok_or_else(|| format!("output has unsupported ONNX type {}", onnx_type_name(ty)))?;
    if dtype == DType::String {
        let (_, strings) = value.try_extract_strings().map_err(|e| e.to_string())?;
        let items = strings.into_iter().map(Bytes::from).collect();
        return Tensor::new(dtype, shape, TensorData::Items(items));
    }
    if !value.memory_info().is_cpu_accessible() {
        return Err("output is not in CPU memory".to_owned());
    }
    let count = element_count(&shape).ok_or_else(|| format!("invalid output shape {shape:?}"))?;
    let len = count * dtype.item_size();
    let src = value.data_ptr().cast::<u8>();
    let raw = if len == 0 {
        Bytes::new()
    } else if src.is_null() {
        return Err("ONNX Runtime returned no buffer for a non-empty output".to_owned());
    } else {
        // SAFETY: the value is a CPU-accessible tensor of `count` elements of `ty` (checked above), so its buffer
        // holds `len` initialised bytes and stays alive while `value` is borrowed here; we copy them out at once.
        Bytes::copy_from_slice(unsafe { std::slice::from_raw_parts(src, len) })
    };
    Tensor::new(dtype, shape, TensorData::Raw(raw))
}
