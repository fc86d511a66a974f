"""A small classifier: model output probabilities, Python postprocess picks the label."""

import numpy as np

from rustserve.server import register

model = register.declare_model(model_file="mlp.onnx", model_format="ONNX", with_batch_dim=True, max_batch_size=8)


def top1(probs):
    return np.int64(np.argmax(probs)), probs


@register.register_method(output_names=["label", "probs"])
def classify(x):
    probs = register.add_stage(model, x, outputs_count=1)
    label, probs = register.add_stage(top1, probs, outputs_count=2)
    return label, probs
