"""ResNet-50 image classification: MindSpore Serving's resnet50 servable on ONNX.

Methods (input `image`: JPEG/PNG bytes):

* `classify_top1` -> `label`: Pillow decodes, resizes to 224x224 and normalizes each image in a per-instance
  Python stage, the model scores the 1000 classes, a Python stage picks the best label.
* `classify_top1_batch` -> `label`: the same with a batch preprocess stage (`batch_size=8`): one Python call
  prepares up to 8 images.
* `classify_top5` -> `label`, `score`: the five best labels joined by ";" and their softmax probabilities
  (float32 [5]).

The model (`<version>/resnet50.onnx`, versions 1 and 2) is not shipped: `python examples/resnet50/build_model.py`
builds it locally with seeded random weights, so the labels are placeholders (`class_000` ... `class_999`) and
the answers mean nothing; see the digits example for a model that really recognises something.
"""

import glob
import io
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from rustserve.server import register

_HERE = os.path.dirname(os.path.abspath(__file__))
if not glob.glob(os.path.join(_HERE, "[0-9]*", "resnet50.onnx")):
    raise RuntimeError(
        f"no resnet50.onnx in a version directory of {_HERE}: the model is built locally, run "
        "`python examples/resnet50/build_model.py` first"
    )

IMAGE_SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
LABELS = [f"class_{index:03d}" for index in range(1000)]

resnet_model = register.declare_model(
    model_file="resnet50.onnx", model_format="ONNX", with_batch_dim=True, max_batch_size=8
)


def open_image(image: np.ndarray | bytes) -> Image.Image:
    """Opens the bytes of a PNG/JPEG image; a clear error for anything else."""
    if isinstance(image, str):
        raise TypeError("expected the bytes of a PNG or JPEG image, got a string")
    data = image.tobytes() if isinstance(image, np.ndarray) else bytes(image)
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError(f"expected a PNG or JPEG image, got {len(data)} bytes that are neither") from None


def preprocess_eager(image: np.ndarray | bytes) -> np.ndarray:
    """Decode, resize to 224x224, normalize with ImageNet's mean and std, HWC -> CHW: float32 [3, 224, 224]."""
    with open_image(image) as picture:
        rgb = picture.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    pixels = (np.asarray(rgb, dtype=np.float32) - MEAN) / STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def preprocess_batch(instances: list[tuple[np.ndarray | bytes]]) -> list[np.ndarray]:
    """The batch form: one call gets up to `batch_size` instances (tuples of the stage's inputs)."""
    return [preprocess_eager(image) for (image,) in instances]


def postprocess_top1(score: np.ndarray) -> str:
    """The label of the highest score."""
    return LABELS[int(np.argmax(score))]


def postprocess_top5(score: np.ndarray) -> tuple[str, np.ndarray]:
    """The five best labels joined by ";" and their softmax probabilities (float32 [5])."""
    probabilities = np.exp(score - score.max())
    probabilities /= probabilities.sum()
    best = np.argsort(-probabilities, kind="stable")[:5]
    return ";".join(LABELS[index] for index in best), probabilities[best].astype(np.float32)


@register.register_method(output_names=["label"])
def classify_top1(image):
    x = register.add_stage(preprocess_eager, image, outputs_count=1)
    x = register.add_stage(resnet_model, x, outputs_count=1)
    x = register.add_stage(postprocess_top1, x, outputs_count=1)
    return x


@register.register_method(output_names=["label"])
def classify_top1_batch(image):
    x = register.add_stage(preprocess_batch, image, outputs_count=1, batch_size=8)
    x = register.add_stage(resnet_model, x, outputs_count=1)
    x = register.add_stage(postprocess_top1, x, outputs_count=1)
    return x


@register.register_method(output_names=["label", "score"])
def classify_top5(image):
    x = register.add_stage(preprocess_eager, image, outputs_count=1)
    x = register.add_stage(resnet_model, x, outputs_count=1)
    label, score = register.add_stage(postprocess_top5, x, outputs_count=2)
    return label, score
