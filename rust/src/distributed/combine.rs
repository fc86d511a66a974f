//! How the outputs of the ranks of one stage make one output: the group config file of each rank
//! (`{"stage": 0, "combine": {"y": {"op": "concat", "axis": 1}, "h": {"op": "sum"}}}`); an output it does not name
//! is taken from the stage's first rank (ranks that computed the same value).

use crate::tensor::{DType, Tensor, TensorData, element_count};
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    /// Joined along `axis` (negative counts from the end), in rank order.
    Concat(i64),
    /// Added elementwise (float and integer dtypes).
    Sum,
    /// The first rank's value.
    First,
}

impl Combine {
    /// The op's name and axis, as group config files and the registration message spell them.
    pub fn op(self) -> (&'static str, Option<i64>) {
        match self {
            Combine::Concat(axis) => ("concat", Some(axis)),
            Combine::Sum => ("sum", None),
            Combine::First => ("first", None),
        }
    }

    /// The op of a name and an axis (only `concat` takes one); the error says what is wrong.
    pub fn from_op(op: &str, axis: Option<i64>) -> Result<Combine, String> {
        match (op, axis) {
            ("concat", Some(axis)) => Ok(Combine::Concat(axis)),
            ("concat", None) => Err("op 'concat' needs an 'axis'".into()),
            ("sum", None) => Ok(Combine::Sum),
            ("first", None) => Ok(Combine::First),
            ("sum" | "first", Some(_)) => Err(format!("op '{op}' takes no 'axis'")),
            (other, _) => Err(format!("unknown op '{other}', expected 'concat', 'sum' or 'first'")),
        }
    }
}

/// A rank's group config file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupConfig {
    pub stage: Option<u32>,
    pub combine: HashMap<String, Combine>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    op: String,
    #[serde(default)]
    axis: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    stage: Option<u32>,
    #[serde(default)]
    combine: HashMap<String, FileEntry>,
}

impl GroupConfig {
    /// Parses a group config file's text; errors name what is wrong.
    pub fn parse(text: &str) -> Result<GroupConfig, String> {
        let file: File = serde_json::from_str(text).map_err(|e| format!("not a valid group config: {e}"))?;
        let mut combine = HashMap::with_capacity(file.combine.len());
        for (output, entry) in file.combine {
            let op = Combine::from_op(&entry.op, entry.axis).map_err(|e| format!("output '{output}': {e}"))?;
            combine.insert(output, op);
        }
        Ok(GroupConfig {
            stage: file.stage,
            combine,
        })
    }
}

/// Combines one output of every rank of a stage (rank order).
pub fn combine(name: &str, op: Combine, parts: Vec<Tensor>) -> Result<Tensor, String> {
    let mut parts = parts.into_iter();
    let first = parts
        .next()
        .ok_or_else(|| format!("output '{name}': no rank answered"))?;
    let rest: Vec<Tensor> = parts.collect();
    if rest.is_empty() || op == Combine::First {
        return Ok(first);
    }
    if let Some(other) = rest.iter().find(|t| t.dtype != first.dtype) {
        return Err(format!(
            "output '{name}': the ranks disagree on its dtype ({} and {})",
            first.dtype, other.dtype
        ));
    }
    match op {
        Combine::First => Ok(first),
        Combine::Sum => sum(name, first, &rest),
        Combine::Concat(axis) => concat(name, axis, first, rest),
    }
}

fn sum(name: &str, first: Tensor, rest: &[Tensor]) -> Result<Tensor, String> {
    if let Some(other) = rest.iter().find(|t| t.shape != first.shape) {
        return Err(format!(
            "output '{name}': op 'sum' needs equal shapes, the ranks gave {:?} and {:?}",
            first.shape, other.shape
        ));
    }
    // Integers wrap on overflow, as the model's own Add would.
    macro_rules! add {
        ($t:ty, $add:expr) => {{
            let mut total = first.to_values::<$t>().unwrap_or_default();
            for part in rest {
                for (acc, v) in total.iter_mut().zip(part.to_values::<$t>().unwrap_or_default()) {
                    *acc = $add(*acc, v);
                }
            }
            Tensor::from_values(first.shape.clone(), &total)
        }};
    }
    match first.dtype {
        DType::Float32 => add!(f32, |a, b| a + b),
        DType::Float64 => add!(f64, |a, b| a + b),
        DType::Int32 => add!(i32, i32::wrapping_add),
        DType::Int64 => add!(i64, i64::wrapping_add),
        other => Err(format!("output '{name}': op 'sum' does not support {other}")),
    }
}

fn concat(name: &str, axis: i64, first: Tensor, rest: Vec<Tensor>) -> Result<Tensor, String> {
    let rank = first.shape.len() as i64;
    let at = if axis < 0 { axis + rank } else { axis };
    if !(0..rank).contains(&at) {
        return Err(format!(
            "output '{name}': concat axis {axis} is out of range for shape {:?}",
            first.shape
        ));
    }
    let at = at as usize;
    let mut parts = vec![first];
    parts.extend(rest);
    for part in &parts[1..] {
        let same = part.shape.len() == parts[0].shape.len()
            && part
                .shape
                .iter()
                .zip(&parts[0].shape)
                .enumerate()
                .all(|(d, (a, b))| d == at || a == b);
        if !same {
            return Err(format!(
                "output '{name}': cannot concat shapes {:?} and {:?} on axis {axis}",
                parts[0].shape, part.shape
            ));
        }
    }
    let item = parts[0].dtype.item_size();
    let outer = element_count(&parts[0].shape[..at]).unwrap_or(0);
    let inner = element_count(&parts[0].shape[at + 1..]).unwrap_or(0) * item;
    let mut shape = parts[0].shape.clone();
    shape[at] = parts.iter().map(|p| p.shape[at]).sum();
    let total: usize = parts.iter().map(Tensor::byte_size).sum();
    let mut out = Vec::with_capacity(total);
    for row in 0..outer {
        for part in &parts {
            let Some(TensorData::Raw(raw)) = Some(&part.data) else {
                continue;
            };
            let width = part.shape[at] as usize * inner;
            out.extend_from_slice(&raw[row * width..(row + 1) * width]);
        }
    }
    Tensor::from_raw(parts[0].dtype, shape, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: Vec<i64>, v: &[f32]) -> Tensor {
        Tensor::from_values(shape, v).unwrap()
    }

    #[test]
    fn concat_joins_in_rank_order_along_the_axis() {
        let a = t(vec![2, 1], &[1.0, 2.0]);
        let b = t(vec![2, 2], &[3.0, 4.0, 5.0, 6.0]);
        let out = combine("y", Combine::Concat(-1), vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(out.shape, vec![2, 3]);
        assert_eq!(out.to_values::<f32>().unwrap(), vec![1.0, 3.0, 4.0, 2.0, 5.0, 6.0]);
        let rows = combine("y", Combine::Concat(0), vec![b.clone(), b.clone()]).unwrap();
        assert_eq!(rows.shape, vec![4, 2]);
        let err = combine("y", Combine::Concat(0), vec![a, b]).unwrap_err();
        assert!(
            err.contains("cannot concat shapes [2, 1] and [2, 2] on axis 0"),
            "{err}"
        );
    }

    #[test]
    fn sum_adds_and_first_keeps_rank_zero() {
        let a = t(vec![2], &[1.0, 2.0]);
        let b = t(vec![2], &[10.0, 20.0]);
        let out = combine("h", Combine::Sum, vec![a.clone(), b.clone()]).unwrap();
        assert_eq!(out.to_values::<f32>().unwrap(), vec![11.0, 22.0]);
        assert_eq!(combine("h", Combine::First, vec![a.clone(), b]).unwrap(), a);
        let err = combine("h", Combine::Sum, vec![a, t(vec![1], &[1.0])]).unwrap_err();
        assert!(err.contains("needs equal shapes"), "{err}");
    }

    #[test]
    fn group_config_errors_name_the_output() {
        let config =
            GroupConfig::parse(r#"{"stage": 1, "combine": {"y": {"op": "concat", "axis": 1}, "h": {"op": "sum"}}}"#)
                .unwrap();
        assert_eq!(config.stage, Some(1));
        assert_eq!(config.combine["y"], Combine::Concat(1));
        assert_eq!(config.combine["h"], Combine::Sum);
        let err = GroupConfig::parse(r#"{"combine": {"y": {"op": "concat"}}}"#).unwrap_err();
        assert!(err.contains("output 'y': op 'concat' needs an 'axis'"), "{err}");
        let err = GroupConfig::parse(r#"{"combine": {"y": {"op": "max"}}}"#).unwrap_err();
        assert!(err.contains("unknown op 'max'"), "{err}");
        assert!(
            GroupConfig::parse(r#"{"stages": 1}"#)
                .unwrap_err()
                .contains("not a valid group config")
        );
    }
}
