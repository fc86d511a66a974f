//! JSON text written straight into a byte buffer: strings, dims and tensor elements. Replies are written this way
//! instead of through a `serde_json::Value` tree, which costs tens of bytes per number (a reply of a million tiny
//! instances would otherwise need gigabytes).

use crate::tensor::DType;

/// How float16/float32 elements are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatText {
    /// The shortest text that reads back to the same value of the element's own type (KServe v2).
    Shortest,
    /// Widened to float64 first, as MindSpore does (`1.1f32` becomes `1.100000023841858`).
    Widened,
}

/// A JSON string literal, escaped.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

/// `[d0,d1,...]`.
pub fn write_dims(out: &mut Vec<u8>, dims: &[i64]) {
    out.push(b'[');
    for (i, d) in dims.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut *out, d);
    }
    out.push(b']');
}

/// One numeric or bool element from its little-endian bytes (`b` holds exactly the dtype's item size). NaN and the
/// infinities have no JSON literal and become `null`, as serde_json and MindSpore's nlohmann both write them.
pub fn write_element(out: &mut Vec<u8>, dtype: DType, b: &[u8], floats: FloatText) {
    let out = &mut *out;
    let _ = match dtype {
        DType::Bool => serde_json::to_writer(out, &(b[0] != 0)),
        DType::Int8 => serde_json::to_writer(out, &i8::from_le_bytes([b[0]])),
        DType::UInt8 => serde_json::to_writer(out, &b[0]),
        DType::Int16 => serde_json::to_writer(out, &i16::from_le_bytes([b[0], b[1]])),
        DType::UInt16 => serde_json::to_writer(out, &u16::from_le_bytes([b[0], b[1]])),
        DType::Int32 => serde_json::to_writer(out, &i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        DType::UInt32 => serde_json::to_writer(out, &u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        DType::Int64 => serde_json::to_writer(out, &i64::from_le_bytes(eight(b))),
        DType::UInt64 => serde_json::to_writer(out, &u64::from_le_bytes(eight(b))),
        DType::Float16 => write_f32(out, half::f16::from_le_bytes([b[0], b[1]]).to_f32(), floats),
        DType::Float32 => write_f32(out, f32::from_le_bytes([b[0], b[1], b[2], b[3]]), floats),
        DType::Float64 => serde_json::to_writer(out, &f64::from_le_bytes(eight(b))),
        DType::String | DType::Bytes => Ok(()),
    };
}

fn write_f32(out: &mut Vec<u8>, value: f32, floats: FloatText) -> serde_json::Result<()> {
    match floats {
        FloatText::Shortest => serde_json::to_writer(out, &value),
        FloatText::Widened => serde_json::to_writer(out, &f64::from(value)),
    }
}

fn eight(b: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&b[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(dtype: DType, b: &[u8], floats: FloatText) -> String {
        let mut out = Vec::new();
        write_element(&mut out, dtype, b, floats);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn floats_shortest_or_widened() {
        let b = 1.1f32.to_le_bytes();
        assert_eq!(element(DType::Float32, &b, FloatText::Shortest), "1.1");
        assert_eq!(element(DType::Float32, &b, FloatText::Widened), "1.100000023841858");
        assert_eq!(
            element(DType::Float32, &f32::NAN.to_le_bytes(), FloatText::Widened),
            "null"
        );
        assert_eq!(
            element(DType::Float64, &f64::INFINITY.to_le_bytes(), FloatText::Shortest),
            "null"
        );
        assert_eq!(
            element(DType::UInt64, &u64::MAX.to_le_bytes(), FloatText::Shortest),
            "18446744073709551615"
        );
        assert_eq!(element(DType::Bool, &[1], FloatText::Shortest), "true");
    }

    #[test]
    fn dims_and_strings() {
        let mut out = Vec::new();
        write_dims(&mut out, &[2, -1, 0]);
        write_str(&mut out, "a\"\n");
        assert_eq!(String::from_utf8(out).unwrap(), "[2,-1,0]\"a\\\"\\n\"");
    }
}
