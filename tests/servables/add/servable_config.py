"""MindSpore's add example on ONNX: v1 computes x1 + x2, v2 x1 + x2 + 100 (the model file differs)."""

import numpy as np

from rustserve.server import register

model = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=False)


def add_trans_datatype(x1, x2):
    return x1.astype(np.float32), x2.astype(np.float32)


def cast_like(y, like):
    return y.astype(like.dtype)


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
