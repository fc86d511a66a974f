"""Recognises held-out digits with the `digits` example servable and prints the accuracy.

`python examples/digits_client.py [--address A] [--limit N]` renders every fifth sample of scikit-learn's digits
data set (the ones examples/build_models.py held out of training) to an in-memory PNG, sends the PNG bytes to
`digits.predict` with rustserve's Client and compares the labels. Exit status 1 when the accuracy is below 0.9.
"""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from rustserve.client import Client

# The server's gRPC address; $RUSTSERVE_GRPC_ADDRESS overrides the default (as for `rustserve infer`).
DEFAULT_ADDRESS = os.environ.get("RUSTSERVE_GRPC_ADDRESS", "127.0.0.1:5500")
HOLDOUT_EVERY = 5  # the rule of examples/build_models.py
MIN_ACCURACY = 0.9


def held_out_digits(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The held-out 8x8 images (ink levels 0..16) and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    held_out = np.arange(len(digits.target)) % HOLDOUT_EVERY == 0
    images, labels = digits.images[held_out], digits.target[held_out]
    return images[:limit], labels[:limit]


def render_png(image: np.ndarray, scale: int = 4) -> bytes:
    """Draws an 8x8 ink-level image as dark ink on white paper, `scale` times larger, and encodes it as PNG."""
    gray = np.round(255.0 - np.asarray(image, dtype=np.float64) * 255.0 / 16.0).astype(np.uint8)
    picture = Image.fromarray(gray).resize((8 * scale, 8 * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def predict(address: str, pngs: Sequence[bytes], batch_size: int = 32) -> list[int]:
    """Labels of the images, `batch_size` instances per request; raises RuntimeError on a server error."""
    client = Client(address, "digits", "predict")
    labels: list[int] = []
    for start in range(0, len(pngs), batch_size):
        result = client.infer([{"image": png} for png in pngs[start : start + batch_size]])
        if isinstance(result, dict):
            raise RuntimeError(f"digits.predict failed: {result['error']}")
        for output in result:
            if "error" in output:
                raise RuntimeError(f"digits.predict failed: {output['error']}")
            labels.append(int(output["label"]))
    return labels


def evaluate(address: str = DEFAULT_ADDRESS, limit: int | None = None) -> float:
    """Accuracy of the servable on the held-out digits (the first `limit` of them when given)."""
    images, truth = held_out_digits(limit)
    predicted = predict(address, [render_png(image) for image in images])
    return float(np.mean(np.asarray(predicted) == truth))


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the accuracy; exit status 1 below 0.9."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"gRPC address (default {DEFAULT_ADDRESS})")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N held-out digits")
    args = parser.parse_args(argv)
    accuracy = evaluate(args.address, args.limit)
    print(f"accuracy: {accuracy:.3f}")
    return 0 if accuracy >= MIN_ACCURACY else 1


if __name__ == "__main__":
    raise SystemExit(main())
