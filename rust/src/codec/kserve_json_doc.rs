//! A KServe v2 JSON request read in one pass. Every field becomes a small `Value`, except each input's `data`: its
//! elements go straight into a tensor buffer (never a `Value` tree, which costs tens of bytes per number) when the
//! input's `datatype` and `shape` came before it, as clients write them; otherwise `data` is kept as raw text and
//! read once those are known. Nothing is judged during the pass beyond JSON syntax: `kserve_json` checks the
//! document afterwards, so which error a bad request gets does not depend on where its keys stand. One exception: a
//! `datatype` or `shape` given again after `data` was read is refused ("given twice"), where a parse into one `Value`
//! map would have let the last one win.

use super::kserve::{count_of, parse_datatype};
use crate::tensor::DType;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::fmt;

/// The most elements reserved for before they are read (the buffer grows past it as elements arrive).
const RESERVE_ELEMENTS: usize = 1 << 16;

/// The request document.
pub enum Root<'de> {
    Object {
        /// Every field but `inputs`.
        fields: Map<String, Value>,
        inputs: Option<Inputs<'de>>,
    },
    /// The request is valid JSON but not an object.
    NotObject,
}

/// The `inputs` field.
pub enum Inputs<'de> {
    List(Vec<Entry<'de>>),
    NotList,
}

/// One entry of `inputs`.
pub enum Entry<'de> {
    Input {
        /// Every field but `data`.
        fields: Map<String, Value>,
        data: Option<Data<'de>>,
    },
    NotObject,
}

/// An input's `data`.
pub enum Data<'de> {
    /// Read as it came, for the `datatype` and shape element count in `Leaves`.
    Read(Leaves),
    /// Kept as text: `datatype` or `shape` came after it (or are not usable), or the type is BYTES.
    Raw(&'de RawValue),
}

/// Reads a request header. Errors are JSON syntax errors only (nesting deeper than serde_json's 128 levels
/// included).
pub fn read(json: &[u8]) -> Result<Root<'_>, serde_json::Error> {
    let mut reader = serde_json::Deserializer::from_slice(json);
    let root = Root::deserialize(&mut reader)?;
    reader.end()?;
    Ok(root)
}

/// Consumes any JSON value as a `Value` (so nesting limits apply as to a request parsed whole).
fn skip<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(), D::Error> {
    Value::deserialize(deserializer).map(drop)
}

/// A visitor for "one of these shapes, or anything else": `Other` consumes the value and answers `fallback`.
macro_rules! other_values {
    ($fallback:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($fallback)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($fallback)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($fallback)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($fallback)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($fallback)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($fallback)
        }
    };
}

impl<'de> Deserialize<'de> for Root<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RootVisitor;
        impl<'de> Visitor<'de> for RootVisitor {
            type Value = Root<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            other_values!(Root::NotObject);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Root<'de>, A::Error> {
                while seq.next_element::<Value>()?.is_some() {}
                Ok(Root::NotObject)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Root<'de>, A::Error> {
                let mut fields = Map::new();
                let mut inputs = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "inputs" {
                        inputs = Some(map.next_value()?);
                    } else {
                        fields.insert(key, map.next_value()?);
                    }
                }
                Ok(Root::Object { fields, inputs })
            }
        }
        deserializer.deserialize_any(RootVisitor)
    }
}

impl<'de> Deserialize<'de> for Inputs<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InputsVisitor;
        impl<'de> Visitor<'de> for InputsVisitor {
            type Value = Inputs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            other_values!(Inputs::NotList);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Inputs<'de>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element()? {
                    entries.push(entry);
                }
                Ok(Inputs::List(entries))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Inputs<'de>, A::Error> {
                skip(MapAccessDeserializer::new(map))?;
                Ok(Inputs::NotList)
            }
        }
        deserializer.deserialize_any(InputsVisitor)
    }
}

impl<'de> Deserialize<'de> for Entry<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = Entry<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            other_values!(Entry::NotObject);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Entry<'de>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Entry::NotObject)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entry<'de>, A::Error> {
                let mut fields = Map::new();
                let mut data = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "data" {
                        fields.insert(key, map.next_value()?);
                    } else if let Some((dtype, count)) = readable(&fields) {
                        let mut leaves = Leaves::new(dtype, count);
                        map.next_value_seed(&mut leaves)?;
                        data = Some(Data::Read(leaves));
                    } else {
                        data = Some(Data::Raw(map.next_value()?));
                    }
                }
                Ok(Entry::Input { fields, data })
            }
        }
        deserializer.deserialize_any(EntryVisitor)
    }
}

/// The dtype and element count to read `data` with as it comes, when the fields before it tell them: a numeric or
/// BOOL `datatype` and a valid `shape` (BYTES waits for `parameters.content_type`, which may come later).
fn readable(fields: &Map<String, Value>) -> Option<(DType, usize)> {
    let dtype = parse_datatype(fields.get("datatype")?.as_str()?, false).ok()?;
    if dtype.is_variable() {
        return None;
    }
    let shape = fields.get("shape")?.as_array()?;
    let shape: Vec<i64> = shape
        .iter()
        .map(|d| d.as_i64().filter(|&d| d >= 0))
        .collect::<Option<_>>()?;
    Some((dtype, count_of("", &shape).ok()?))
}

/// The elements of a `data` list as they are read: written into the buffer while they fit the dtype and the shape's
/// count; past the count they are only counted, and the first that does not fit the dtype is kept for the error
/// (the count is reported first, as before).
pub struct Leaves {
    pub dtype: DType,
    /// The element count of the input's shape.
    pub count: usize,
    /// Elements read so far.
    pub seen: usize,
    pub raw: Vec<u8>,
    pub items: Vec<Bytes>,
    /// The first element that is not a valid value of `dtype`, with its index.
    pub first_bad: Option<(usize, Value)>,
}

impl Leaves {
    /// Room for the elements is reserved up to a cap: the shape is the client's word, and `[2**40]` must not
    /// reserve terabytes before a single element is read.
    pub fn new(dtype: DType, count: usize) -> Leaves {
        let reserve = count.min(RESERVE_ELEMENTS);
        let variable = dtype.is_variable();
        Leaves {
            dtype,
            count,
            seen: 0,
            raw: Vec::with_capacity(if variable { 0 } else { reserve * dtype.item_size() }),
            items: Vec::with_capacity(if variable { reserve } else { 0 }),
            first_bad: None,
        }
    }

    /// Reads the elements of a `data` value kept as raw text.
    pub fn read(dtype: DType, count: usize, data: &RawValue) -> Result<Leaves, serde_json::Error> {
        let mut leaves = Leaves::new(dtype, count);
        let mut reader = serde_json::Deserializer::from_str(data.get());
        DeserializeSeed::deserialize(&mut leaves, &mut reader)?;
        Ok(leaves)
    }
}

impl Leaves {
    fn leaf(&mut self, value: Value) {
        let index = self.seen;
        self.seen += 1;
        if self.first_bad.is_some() || index >= self.count {
            return;
        }
        if !self.push(&value) {
            self.first_bad = Some((index, value));
        }
    }

    /// Appends one element; false when it is not a valid value of the dtype.
    fn push(&mut self, v: &Value) -> bool {
        let raw = &mut self.raw;
        match self.dtype {
            DType::String | DType::Bytes => v
                .as_str()
                .map(|s| self.items.push(Bytes::copy_from_slice(s.as_bytes()))),
            DType::Bool => v.as_bool().map(|b| raw.push(u8::from(b))),
            DType::Int8 => int::<i8>(v).map(|x| raw.extend_from_slice(&x.to_le_bytes())),
            DType::Int16 => int::<i16>(v).map(|x| raw.extend_from_slice(&x.to_le_bytes())),
            DType::Int32 => int::<i32>(v).map(|x| raw.extend_from_slice(&x.to_le_bytes())),
            DType::Int64 => v.as_i64().map(|x| raw.extend_from_slice(&x.to_le_bytes())),
            DType::UInt8 => uint::<u8>(v).map(|x| raw.extend_from_slice(&x.to_le_bytes())),
            DType::UInt16 => uint::<u16>(v).map(|x| raw.extend_from_slice(&x.to_le_bytes())),
            DType::UInt32 => uint::<u32>(v).map(|x| raw.extend_from_slice(&x.to_le_bytes())),
            DType::UInt64 => v.as_u64().map(|x| raw.extend_from_slice(&x.to_le_bytes())),
            DType::Float16 => v
                .as_f64()
                .map(|x| raw.extend_from_slice(&half::f16::from_f64(x).to_le_bytes())),
            DType::Float32 => v.as_f64().map(|x| raw.extend_from_slice(&(x as f32).to_le_bytes())),
            DType::Float64 => v.as_f64().map(|x| raw.extend_from_slice(&x.to_le_bytes())),
        }
        .is_some()
    }
}

impl<'de> DeserializeSeed<'de> for &mut Leaves {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// Lists are walked (serde_json stops at 128 levels of nesting, so the recursion is bounded); every other JSON
/// value is one element. Scalars become a small `Value` only for the moment it takes to convert them.
impl<'de> Visitor<'de> for &mut Leaves {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of tensor elements")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, v: bool) -> Result<(), E> {
        self.leaf(Value::Bool(v));
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        self.leaf(Value::from(v));
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        self.leaf(Value::from(v));
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        self.leaf(Value::from(v));
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.leaf(Value::String(v.to_owned()));
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.leaf(Value::Null);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let object = Deserialize::deserialize(MapAccessDeserializer::new(map))?;
        self.leaf(Value::Object(object));
        Ok(())
    }
}

fn int<T: TryFrom<i64>>(v: &Value) -> Option<T> {
    v.as_i64().and_then(|x| T::try_from(x).ok())
}

fn uint<T: TryFrom<u64>>(v: &Value) -> Option<T> {
    v.as_u64().and_then(|x| T::try_from(x).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(text: &str) -> (Map<String, Value>, Option<Data<'_>>) {
        let Ok(Root::Object {
            inputs: Some(Inputs::List(mut entries)),
            ..
        }) = read(text.as_bytes())
        else {
            panic!("not a request with a list of inputs: {text}");
        };
        match entries.remove(0) {
            Entry::Input { fields, data } => (fields, data),
            Entry::NotObject => panic!("not an input object"),
        }
    }

    #[test]
    fn data_after_datatype_and_shape_is_read_as_it_comes() {
        let (fields, data) =
            input(r#"{"inputs": [{"name": "a", "datatype": "INT16", "shape": [2, 2], "data": [[1, 2], [3, 4]]}]}"#);
        assert_eq!(fields["name"], "a");
        let Some(Data::Read(leaves)) = data else {
            panic!("not read")
        };
        assert_eq!((leaves.dtype, leaves.count, leaves.seen), (DType::Int16, 4, 4));
        assert_eq!(
            leaves.raw,
            [1i16, 2, 3, 4]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
        );
    }

    #[test]
    fn data_before_its_datatype_or_of_bytes_stays_raw() {
        let (_, data) = input(r#"{"inputs": [{"data": [1, 2], "name": "a", "datatype": "FP32", "shape": [2]}]}"#);
        assert!(matches!(data, Some(Data::Raw(raw)) if raw.get() == "[1, 2]"));
        let (_, data) = input(r#"{"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}"#);
        assert!(matches!(data, Some(Data::Raw(_))));
    }

    #[test]
    fn other_shapes_are_told_apart_and_syntax_errors_fail() {
        assert!(matches!(read(b"[1, {}]"), Ok(Root::NotObject)));
        assert!(matches!(read(b"7"), Ok(Root::NotObject)));
        assert!(matches!(
            read(br#"{"inputs": {"a": 1}}"#),
            Ok(Root::Object {
                inputs: Some(Inputs::NotList),
                ..
            })
        ));
        let Ok(Root::Object {
            inputs: Some(Inputs::List(entries)),
            ..
        }) = read(br#"{"inputs": [3, [4]]}"#)
        else {
            panic!("a list");
        };
        assert!(entries.iter().all(|e| matches!(e, Entry::NotObject)));
        assert!(read(br#"{"inputs": [}"#).is_err());
        assert!(read(b"{} {}").is_err());
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(read(deep.as_bytes()).is_err_and(|e| e.to_string().contains("recursion limit")));
    }
}
