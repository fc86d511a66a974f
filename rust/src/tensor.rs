//! Wire-neutral core types: `DType`, `Tensor` (dtype, shape, owned bytes) and `Instance` (named tensors).
//! Every codec decodes into these and every executor (model, Python) consumes and produces them, so no
//! protocol type or Python object ever travels through the batcher or the pipeline.

use bytes::Bytes;

/// Element type of a tensor; the numbering of `to_ms_proto` is MindSpore Serving's `DataType` enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    Bool,
    Int8,
    UInt8,
    Int16,
    UInt16,
    Int32,
    UInt32,
    Int64,
    UInt64,
    Float16,
    Float32,
    Float64,
    /// UTF-8 text; payload is `TensorData::Items`.
    String,
    /// Opaque bytes; payload is `TensorData::Items`.
    Bytes,
}

impl DType {
    pub const ALL: [DType; 14] = [
        DType::Bool,
        DType::Int8,
        DType::UInt8,
        DType::Int16,
        DType::UInt16,
        DType::Int32,
        DType::UInt32,
        DType::Int64,
        DType::UInt64,
        DType::Float16,
        DType::Float32,
        DType::Float64,
        DType::String,
        DType::Bytes,
    ];

    /// Bytes per element; 0 for `String` / `Bytes`, whose elements have no fixed size.
    pub fn item_size(self) -> usize {
        match self {
            DType::Bool | DType::Int8 | DType::UInt8 => 1,
            DType::Int16 | DType::UInt16 | DType::Float16 => 2,
            DType::Int32 | DType::UInt32 | DType::Float32 => 4,
            DType::Int64 | DType::UInt64 | DType::Float64 => 8,
            DType::String | DType::Bytes => 0,
        }
    }

    /// True for `String` and `Bytes`, whose payload is a list of byte strings.
    pub fn is_variable(self) -> bool {
        matches!(self, DType::String | DType::Bytes)
    }

    /// MindSpore proto `DataType` value (`MS_BOOL` = 1 ... `MS_BYTES` = 14).
    pub fn to_ms_proto(self) -> i32 {
        match self {
            DType::Bool => 1,
            DType::Int8 => 2,
            DType::UInt8 => 3,
            DType::Int16 => 4,
            DType::UInt16 => 5,
            DType::Int32 => 6,
            DType::UInt32 => 7,
            DType::Int64 => 8,
            DType::UInt64 => 9,
            DType::Float16 => 10,
            DType::Float32 => 11,
            DType::Float64 => 12,
            DType::String => 13,
            DType::Bytes => 14,
        }
    }

    /// Inverse of `to_ms_proto`; `None` for `MS_UNKNOWN` and out-of-range values.
    pub fn from_ms_proto(value: i32) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.to_ms_proto() == value)
    }

    /// MindSpore's internal name, used in its error texts (`kMSI_Float32`).
    pub fn ms_name(self) -> &'static str {
        match self {
            DType::Bool => "kMSI_Bool",
            DType::Int8 => "kMSI_Int8",
            DType::UInt8 => "kMSI_Uint8",
            DType::Int16 => "kMSI_Int16",
            DType::UInt16 => "kMSI_Uint16",
            DType::Int32 => "kMSI_Int32",
            DType::UInt32 => "kMSI_Uint32",
            DType::Int64 => "kMSI_Int64",
            DType::UInt64 => "kMSI_Uint64",
            DType::Float16 => "kMSI_Float16",
            DType::Float32 => "kMSI_Float32",
            DType::Float64 => "kMSI_Float64",
            DType::String => "kMSI_String",
            DType::Bytes => "kMSI_Bytes",
        }
    }

    /// numpy's name for the dtype (`str` / `bytes` for the variable-size types).
    pub fn numpy_name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::Int8 => "int8",
            DType::UInt8 => "uint8",
            DType::Int16 => "int16",
            DType::UInt16 => "uint16",
            DType::Int32 => "int32",
            DType::UInt32 => "uint32",
            DType::Int64 => "int64",
            DType::UInt64 => "uint64",
            DType::Float16 => "float16",
            DType::Float32 => "float32",
            DType::Float64 => "float64",
            DType::String => "str",
            DType::Bytes => "bytes",
        }
    }

    /// Parses a numpy dtype name (`float32`, `int64`, `bool`, `str`, `bytes`).
    pub fn from_numpy_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.numpy_name() == name)
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.numpy_name())
    }
}

/// A tensor's payload: contiguous little-endian C-order bytes, or one byte string per element.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Numeric and bool tensors (bool is one byte, 0 or 1).
    Raw(Bytes),
    /// `String` and `Bytes` tensors: one entry per element.
    Items(Vec<Bytes>),
}

/// An owned tensor. Invariant (checked by `Tensor::new`): for numeric dtypes the raw length equals
/// `num_elements * item_size`; for `String`/`Bytes` the item count equals `num_elements`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DType,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// Number of elements of a shape, `None` when a dim is negative or the product overflows.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

impl Tensor {
    /// Builds a tensor and checks the payload against dtype and shape.
    pub fn new(dtype: DType, shape: Vec<i64>, data: TensorData) -> Result<Tensor, String> {
        let count = element_count(&shape).ok_or_else(|| format!("invalid shape {shape:?}"))?;
        match (&data, dtype.is_variable()) {
            (TensorData::Raw(raw), false) => {
                let expected = count
                    .checked_mul(dtype.item_size())
                    .ok_or_else(|| format!("invalid shape {shape:?} (the byte size overflows)"))?;
                if raw.len() != expected {
                    return Err(format!(
                        "data size {} does not match shape {shape:?} of {dtype} ({expected} bytes expected)",
                        raw.len()
                    ));
                }
            }
            (TensorData::Items(items), true) => {
                if items.len() != count {
                    return Err(format!("{} items do not match shape {shape:?} of {dtype}", items.len()));
                }
            }
            _ => return Err(format!("payload kind does not match dtype {dtype}")),
        }
        Ok(Tensor { dtype, shape, data })
    }

    /// A numeric tensor from raw bytes; panics-free, returns the size error like `new`.
    pub fn from_raw(dtype: DType, shape: Vec<i64>, raw: impl Into<Bytes>) -> Result<Tensor, String> {
        Tensor::new(dtype, shape, TensorData::Raw(raw.into()))
    }

    /// A 0-d `String` tensor.
    pub fn scalar_string(text: impl Into<String>) -> Tensor {
        Tensor {
            dtype: DType::String,
            shape: vec![],
            data: TensorData::Items(vec![Bytes::from(text.into())]),
        }
    }

    /// An empty stand-in left where a tensor was moved out; allocates nothing.
    pub fn placeholder() -> Tensor {
        Tensor {
            dtype: DType::UInt8,
            shape: Vec::new(),
            data: TensorData::Raw(Bytes::new()),
        }
    }

    /// A 0-d `Bytes` tensor.
    pub fn scalar_bytes(value: impl Into<Bytes>) -> Tensor {
        Tensor {
            dtype: DType::Bytes,
            shape: vec![],
            data: TensorData::Items(vec![value.into()]),
        }
    }

    /// Builds a numeric tensor from typed values (little-endian).
    pub fn from_values<T: Element>(shape: Vec<i64>, values: &[T]) -> Result<Tensor, String> {
        let mut raw = Vec::with_capacity(values.len() * T::DTYPE.item_size());
        for v in values {
            v.write_le(&mut raw);
        }
        Tensor::from_raw(T::DTYPE, shape, raw)
    }

    /// Moves a numeric payload that is not aligned to its element size (a slice of a wire message) into a buffer of
    /// its own that is, so numpy can share it with Python stages instead of copying it for each one.
    pub fn align(&mut self) {
        let TensorData::Raw(raw) = &self.data else { return };
        if (raw.as_ptr() as usize).is_multiple_of(self.dtype.item_size().max(1)) {
            return;
        }
        let mut words = vec![0u64; raw.len().div_ceil(8)];
        // SAFETY: `words` spans at least `raw.len()` bytes.
        unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), words.as_mut_ptr().cast::<u8>(), raw.len()) };
        self.data = TensorData::Raw(Bytes::from_owner(AlignedBytes { words, len: raw.len() }));
    }

    /// Element count (1 for a scalar).
    pub fn num_elements(&self) -> usize {
        element_count(&self.shape).unwrap_or(0)
    }

    /// Payload size in bytes (sum of item lengths for `String`/`Bytes`).
    pub fn byte_size(&self) -> usize {
        match &self.data {
            TensorData::Raw(raw) => raw.len(),
            TensorData::Items(items) => items.iter().map(Bytes::len).sum(),
        }
    }

    /// The raw payload of a numeric tensor.
    pub fn raw(&self) -> Option<&Bytes> {
        match &self.data {
            TensorData::Raw(raw) => Some(raw),
            TensorData::Items(_) => None,
        }
    }

    /// The items of a `String`/`Bytes` tensor.
    pub fn items(&self) -> Option<&[Bytes]> {
        match &self.data {
            TensorData::Items(items) => Some(items),
            TensorData::Raw(_) => None,
        }
    }

    /// Decodes a numeric tensor into typed values; `None` when `T` is not this tensor's dtype.
    pub fn to_values<T: Element>(&self) -> Option<Vec<T>> {
        if T::DTYPE != self.dtype {
            return None;
        }
        let raw = self.raw()?;
        Some(raw.chunks_exact(T::DTYPE.item_size()).map(T::read_le).collect())
    }
}

/// Bytes held in 8-byte words, so they are aligned for every numeric dtype.
struct AlignedBytes {
    words: Vec<u64>,
    len: usize,
}

impl AsRef<[u8]> for AlignedBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes; u8 has no alignment or validity requirement.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// Rust scalar types that map one-to-one onto a numeric `DType`.
pub trait Element: Copy {
    const DTYPE: DType;
    fn write_le(self, out: &mut Vec<u8>);
    fn read_le(bytes: &[u8]) -> Self;
}

macro_rules! element {
    ($t:ty, $d:expr) => {
        impl Element for $t {
            const DTYPE: DType = $d;
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn read_le(bytes: &[u8]) -> Self {
                let mut buf = [0u8; std::mem::size_of::<$t>()];
                buf.copy_from_slice(bytes);
                <$t>::from_le_bytes(buf)
            }
        }
    };
}
element!(i8, DType::Int8);
element!(u8, DType::UInt8);
element!(i16, DType::Int16);
element!(u16, DType::UInt16);
element!(i32, DType::Int32);
element!(u32, DType::UInt32);
element!(i64, DType::Int64);
element!(u64, DType::UInt64);
element!(half::f16, DType::Float16);
element!(f32, DType::Float32);
element!(f64, DType::Float64);

impl Element for bool {
    const DTYPE: DType = DType::Bool;
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
    fn read_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
}

/// One request instance as it arrives on the wire: input name -> tensor, each name once (a repeated name keeps its
/// last tensor, as a map would).
///
/// NOTE: a short list, not a hash map: instances have a handful of inputs, and one request can hold a million
/// instances, where a hash table's buckets would cost several times the JSON they came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamedInstance(Vec<(String, Tensor)>);

impl NamedInstance {
    pub fn new() -> NamedInstance {
        NamedInstance::default()
    }

    /// Adds or replaces `name`; answers the tensor it replaced. Linear in the names held: for building an instance
    /// from many names at once, collect it from an iterator instead.
    pub fn insert(&mut self, name: String, tensor: Tensor) -> Option<Tensor> {
        if let Some((_, slot)) = self.0.iter_mut().find(|(n, _)| *n == name) {
            return Some(std::mem::replace(slot, tensor));
        }
        self.0.push((name, tensor));
        None
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        let at = self.0.iter().position(|(n, _)| n == name)?;
        Some(self.0.swap_remove(at).1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Names and tensors, in the order they were first inserted.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.0.iter().map(|(n, t)| (n, t))
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(n, _)| n)
    }
}

/// A repeated name keeps its last tensor. Linear in the number of names, however many a client sends.
impl FromIterator<(String, Tensor)> for NamedInstance {
    fn from_iter<I: IntoIterator<Item = (String, Tensor)>>(pairs: I) -> NamedInstance {
        let mut pairs: Vec<(String, Tensor)> = pairs.into_iter().collect();
        if pairs.len() > 1 {
            // From the end, so the first sighting of a name is its last occurrence.
            let keep: Vec<bool> = {
                let mut seen = std::collections::HashSet::with_capacity(pairs.len());
                pairs.iter().rev().map(|(name, _)| seen.insert(name.as_str())).collect()
            };
            let mut keep = keep.into_iter().rev();
            pairs.retain(|_| keep.next().unwrap_or(true));
        }
        NamedInstance(pairs)
    }
}

/// `instance["x"]` in tests, panicking on a missing name like a map's index.
#[cfg(test)]
impl std::ops::Index<&str> for NamedInstance {
    type Output = Tensor;
    fn index(&self, name: &str) -> &Tensor {
        self.get(name).expect("no such input")
    }
}

impl IntoIterator for NamedInstance {
    type Item = (String, Tensor);
    type IntoIter = std::vec::IntoIter<(String, Tensor)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_names_keep_the_last_of_a_repeat() {
        // 60k names: linear, where one insert per name (a search each) took minutes.
        let pairs = (0..60_000).map(|i| (format!("n{}", i % 50_000), Tensor::scalar_string(i.to_string())));
        let instance: NamedInstance = pairs.collect();
        assert_eq!(instance.len(), 50_000);
        assert_eq!(instance.get("n7"), Some(&Tensor::scalar_string("50007")));
        assert_eq!(instance.get("n49999"), Some(&Tensor::scalar_string("49999")));
        let order: Vec<&String> = instance.keys().take(2).collect();
        assert_eq!(order, ["n10000", "n10001"]);
    }

    #[test]
    fn a_byte_size_that_overflows_is_refused() {
        let err = Tensor::new(DType::Float64, vec![1 << 61], TensorData::Raw(Bytes::new())).unwrap_err();
        assert!(err.contains("overflows"), "{err}");
    }

    #[test]
    fn align_moves_only_unaligned_payloads() {
        let body = Bytes::from(vec![0u8; 17]);
        let mut unaligned = Tensor::from_raw(DType::Float64, vec![2], body.slice(1..17)).unwrap();
        let original = unaligned.raw().unwrap().as_ptr() as usize;
        assert_ne!(original % 8, 0, "the test needs an odd offset");
        unaligned.align();
        assert_eq!(unaligned.raw().unwrap().as_ptr() as usize % 8, 0);
        assert_eq!(unaligned.raw().unwrap().as_ref(), &[0u8; 16]);
        let mut aligned = Tensor::from_values(vec![2], &[1.5f64, 2.5]).unwrap();
        let before = aligned.raw().unwrap().as_ptr();
        aligned.align();
        assert_eq!(
            aligned.raw().unwrap().as_ptr(),
            before,
            "an aligned payload is not copied"
        );
        assert_eq!(aligned.to_values::<f64>().unwrap(), vec![1.5, 2.5]);
    }

    #[test]
    fn proto_numbers_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_ms_proto(d.to_ms_proto()), Some(d));
            assert_eq!(DType::from_numpy_name(d.numpy_name()), Some(d));
        }
        assert_eq!(DType::from_ms_proto(0), None);
        assert_eq!(DType::from_ms_proto(15), None);
        assert_eq!(DType::Float32.to_ms_proto(), 11);
    }

    #[test]
    fn new_checks_payload_size() {
        assert!(Tensor::from_raw(DType::Float32, vec![2, 2], vec![0u8; 16]).is_ok());
        let err = Tensor::from_raw(DType::Float32, vec![2, 2], vec![0u8; 15]).unwrap_err();
        assert!(err.contains("15"), "{err}");
        assert!(Tensor::from_raw(DType::Float32, vec![-1], vec![]).is_err());
        assert!(Tensor::new(DType::String, vec![], TensorData::Raw(Bytes::new())).is_err());
        assert_eq!(Tensor::scalar_string("ab").num_elements(), 1);
    }

    #[test]
    fn typed_values_round_trip() {
        let t = Tensor::from_values(vec![3], &[1.5f32, -2.0, 3.25]).unwrap();
        assert_eq!(t.to_values::<f32>().unwrap(), vec![1.5, -2.0, 3.25]);
        assert!(t.to_values::<f64>().is_none());
        let b = Tensor::from_values(vec![2], &[true, false]).unwrap();
        assert_eq!(b.to_values::<bool>().unwrap(), vec![true, false]);
    }
}
