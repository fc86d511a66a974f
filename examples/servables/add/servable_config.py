"""MindSpore Serving's add example on ONNX: `add_common` runs the model, `add_cast` also accepts integer inputs."""

import numpy as np

from rustserve.server import register

model = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=False)


def add_trans_datatype(x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Casts both inputs to float32, the model's input type."""
    return x1.astype(np.float32), x2.astype(np.float32)


def cast_like(y: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Casts the model output back to the dtype of the original input."""
    return y.astype(like.dtype)


# Method bodies run once at start-up with placeholders, recording the stages; they never see data.
@register.register_method(output_names=["y"])
def add_common(x1, x2):
    y = register.add_stage(model, x1, x2, outputs_count=1)
    return y


@register.register_method(output_names=["y"])
def add_cast(x1, x2):
    f1, f2 = register.add_stage(add_trans_datatype, x1, x2, outputs_count=2)
    y = register.add_stage(model, f1, f2, outputs_count=1)
    y = register.add_stage(cast_like, y, x1, outputs_count=1)
    return y
