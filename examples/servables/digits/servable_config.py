"""Handwritten digit recognition: PNG/JPEG bytes in, label and probability out.

The model is a small MLP trained on scikit-learn's 8x8 digits (see examples/build_models.py). Images are expected
as dark ink on a light background, like a scan; light-on-dark images are recognised by their brightness and used as
they are.
"""

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from rustserve.server import register

model = register.declare_model(model_file="digits.onnx", model_format="ONNX", with_batch_dim=True, max_batch_size=32)


def open_image(image: np.ndarray | bytes) -> Image.Image:
    """Opens the bytes of a PNG/JPEG image; a clear error for anything else."""
    if isinstance(image, str):
        raise TypeError("expected the bytes of a PNG or JPEG image, got a string")
    data = image.tobytes() if isinstance(image, np.ndarray) else bytes(image)
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError(f"expected a PNG or JPEG image, got {len(data)} bytes that are neither") from None


def preprocess(image: np.ndarray | bytes) -> np.ndarray:
    """Decodes the image, converts it to 8x8 grayscale and scales ink to the model's [0, 1] (data set 0..16 / 16)."""
    with open_image(image) as picture:
        gray = picture.convert("L").resize((8, 8), Image.Resampling.BOX)
    pixels = np.asarray(gray, dtype=np.float32)
    if pixels.mean() > 127.5:  # dark ink on light paper: ink must be the bright value, as in the data set
        pixels = 255.0 - pixels
    levels = np.round(pixels * 16.0 / 255.0)  # the data set's 0..16 ink levels
    return (levels / 16.0).reshape(64).astype(np.float32)


def postprocess(probs: np.ndarray) -> tuple[np.int64, np.float32]:
    """The most probable digit (int64 scalar) and its probability (float32 scalar)."""
    label = int(np.argmax(probs))
    return np.int64(label), np.float32(probs[label])


@register.register_method(output_names=["label", "probability"])
def predict(image):
    x = register.add_stage(preprocess, image, outputs_count=1)
    probs = register.add_stage(model, x, outputs_count=1)
    label, probability = register.add_stage(postprocess, probs, outputs_count=2)
    return label, probability
