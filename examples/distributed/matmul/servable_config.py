"""MindSpore Serving's distributed matmul example on ONNX: y = -(x @ W) over 8 ranks in one stage."""

from rustserve.server import distributed, register

model = distributed.declare_servable(rank_size=8, stage_size=1, with_batch_dim=False)


@register.register_method(output_names=["y"])
def predict(x):
    y = register.add_stage(model, x, outputs_count=1)
    return y
