"""Batching shapes: fixed batch 4, symbolic batch (max 3), no batch dim, and an unbatched input."""

from rustserve.server import register

fixed = register.declare_model(model_file="add_fixed.onnx", model_format="ONNX", with_batch_dim=True)
dynamic = register.declare_model(
    model_file="add_dynamic.onnx", model_format="ONNX", with_batch_dim=True, max_batch_size=3
)
matmul_model = register.declare_model(model_file="matmul.onnx", model_format="ONNX", with_batch_dim=False)
bias_model = register.declare_model(
    model_file="bias_add.onnx", model_format="ONNX", with_batch_dim=True, without_batch_dim_inputs=1
)


@register.register_method(output_names=["y"])
def add_fixed(x1, x2):
    return register.add_stage(fixed, x1, x2, outputs_count=1)


@register.register_method(output_names=["y"])
def add_dynamic(x1, x2):
    return register.add_stage(dynamic, x1, x2, outputs_count=1)


@register.register_method(output_names=["c"])
def matmul(a, b):
    return register.add_stage(matmul_model, a, b, outputs_count=1)


@register.register_method(output_names=["y"])
def bias_add(x, bias):
    return register.add_stage(bias_model, x, bias, outputs_count=1)
