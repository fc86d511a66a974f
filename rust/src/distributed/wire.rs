//! Tensors and signatures <-> the messages of proto/rustserve/distributed.proto.

use super::combine::Combine;
use crate::batching::IoInfo;
use crate::proto::distributed as pb;
use crate::tensor::{DType, Tensor, TensorData};

/// A numeric tensor as a message (the payload is shared, not copied).
pub fn to_message(name: &str, tensor: &Tensor) -> Result<pb::Tensor, String> {
    let TensorData::Raw(raw) = &tensor.data else {
        return Err(format!(
            "input '{name}' is {}: distributed models take numeric tensors only",
            tensor.dtype
        ));
    };
    Ok(pb::Tensor {
        name: name.to_owned(),
        dtype: tensor.dtype.numpy_name().to_owned(),
        shape: tensor.shape.clone(),
        data: raw.clone(),
    })
}

/// A message as a tensor, checked like any other (dtype name, payload size).
pub fn from_message(message: pb::Tensor) -> Result<(String, Tensor), String> {
    let dtype = DType::from_numpy_name(&message.dtype)
        .filter(|d| !d.is_variable())
        .ok_or_else(|| format!("tensor '{}' has an unknown dtype '{}'", message.name, message.dtype))?;
    let tensor =
        Tensor::from_raw(dtype, message.shape, message.data).map_err(|e| format!("tensor '{}': {e}", message.name))?;
    Ok((message.name, tensor))
}

/// One output's combine op as a message (the axis is 0 for ops without one).
pub fn combine_to_message(output: &str, op: Combine) -> pb::Combine {
    let (name, axis) = op.op();
    pb::Combine {
        output: output.to_owned(),
        op: name.to_owned(),
        axis: axis.unwrap_or(0),
    }
}

/// A combine message as an op, checked like a group config file's entry.
pub fn combine_from_message(message: &pb::Combine) -> Result<Combine, String> {
    let axis = (message.op == "concat").then_some(message.axis);
    Combine::from_op(&message.op, axis).map_err(|e| format!("output '{}': {e}", message.output))
}

pub fn io_to_message(io: &IoInfo) -> pb::Io {
    pb::Io {
        name: io.name.clone(),
        dtype: io.dtype.numpy_name().to_owned(),
        shape: io.shape.clone(),
    }
}

pub fn io_from_message(io: &pb::Io) -> Result<IoInfo, String> {
    let dtype = DType::from_numpy_name(&io.dtype)
        .ok_or_else(|| format!("'{}' has an unknown dtype '{}'", io.name, io.dtype))?;
    Ok(IoInfo {
        name: io.name.clone(),
        dtype,
        shape: io.shape.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combine_ops_round_trip_and_bad_ones_name_the_output() {
        for op in [Combine::Concat(-1), Combine::Concat(2), Combine::Sum, Combine::First] {
            assert_eq!(combine_from_message(&combine_to_message("y", op)), Ok(op));
        }
        let bad = pb::Combine {
            output: "h".into(),
            op: "max".into(),
            axis: 0,
        };
        let err = combine_from_message(&bad).unwrap_err();
        assert!(err.starts_with("output 'h': unknown op 'max'"), "{err}");
    }
}
