"""Two models glued by Python stages, several methods, a pass-through output, and Model.call."""

from rustserve.server import register

double = register.declare_model(model_file="double.onnx", model_format="ONNX", with_batch_dim=True)
plus_one = register.declare_model(
    model_file="plus_one.onnx", model_format="ONNX", with_batch_dim=True, max_batch_size=4
)


def preprocess(x):
    return x - 1


def glue(y):
    return y + 10


def postprocess(z):
    return z, float(z.sum())


def bump_in_place(value):
    value += 1
    return value.size


def scale_in_place_and_sum(y):
    y *= 10
    return float(y.sum())


def call_models(x):
    single = plus_one.call(x)
    pair = plus_one.call([[x], [x * 2]])
    doubled = double.call(x)
    return single, pair[0][0] + pair[1][0], doubled


@register.register_method(output_names=["z", "total"])
def chain(x):
    p = register.add_stage(preprocess, x, outputs_count=1)
    y = register.add_stage(double, p, outputs_count=1)
    g = register.add_stage(glue, y, outputs_count=1)
    z = register.add_stage(plus_one, g, outputs_count=1)
    z, total = register.add_stage(postprocess, z, outputs_count=2)
    return z, total


@register.register_method(output_names=["y"])
def double_only(x):
    return register.add_stage(double, x, outputs_count=1)


@register.register_method(output_names=["x", "y"])
def passthrough(x):
    y = register.add_stage(double, x, outputs_count=1)
    return x, y


@register.register_method(output_names=["single", "multi", "doubled"])
def model_call(x):
    single, multi, doubled = register.add_stage(call_models, x, outputs_count=3)
    return single, multi, doubled


@register.register_method(output_names=["x", "p", "y", "total"])
def shared_edits(x):
    # Stages share arrays, as in MindSpore: an in-place edit is seen by every later reader of that value.
    p = register.add_stage(preprocess, x, outputs_count=1)  # p = x - 1, an array a stage returned
    register.add_stage(bump_in_place, x, outputs_count=1)  # x + 1, a method input
    register.add_stage(bump_in_place, p, outputs_count=1)  # p + 1
    y = register.add_stage(double, x, outputs_count=1)  # the model reads the edited x
    total = register.add_stage(scale_in_place_and_sum, y, outputs_count=1)  # a model output, times 10
    return x, p, y, total
