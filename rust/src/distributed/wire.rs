//! Tensors and signatures <-> the messages of proto/rustserve/distributed.proto.

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
