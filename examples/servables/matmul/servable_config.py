"""Matrix product of two float32 matrices of any compatible shapes, c = a @ b.

`with_batch_dim=False`: the model sees each instance's tensors whole (no rows stacked from several instances), so
every instance of a request may have its own shapes; the model's dims are all symbolic ([m, k] @ [k, n]).
"""

from rustserve.server import register

model = register.declare_model(model_file="matmul.onnx", model_format="ONNX", with_batch_dim=False)


@register.register_method(output_names=["c"])
def matmul(a, b):
    c = register.add_stage(model, a, b, outputs_count=1)
    return c
