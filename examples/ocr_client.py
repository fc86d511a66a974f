"""Reads generated digit strings with the `ocr` example servable and checks every answer.

`python examples/ocr_client.py [--address A] [--count N] [--seed S]` renders N random digit strings with the
5x7 font of `ocr_font.py` (random scale, position, ink and paper shades, pixel noise), sends the PNG bytes to
`ocr.read` in one request, and compares the text and every character box with what was drawn. Exit status 1 when
any image is read wrongly.
"""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import ocr_font
from PIL import Image

from rustserve.client import Client

# The server's gRPC address; $RUSTSERVE_GRPC_ADDRESS overrides the default (as for `rustserve infer`).
DEFAULT_ADDRESS = os.environ.get("RUSTSERVE_GRPC_ADDRESS", "127.0.0.1:5500")


@dataclass(frozen=True)
class Reading:
    """One image's ground truth and the servable's answer."""

    truth: ocr_font.Rendered
    text: str
    confidence: float
    boxes: list[tuple[int, int, int, int]]

    @property
    def correct(self) -> bool:
        """The text and every box match what was drawn."""
        return self.text == self.truth.text and self.boxes == self.truth.boxes


def generate(count: int, seed: int = 0) -> list[ocr_font.Rendered]:
    """`count` random digit strings (3 to 10 digits) drawn at random scales (2 to 4), places and shades."""
    rng = np.random.default_rng(seed)
    rendered = []
    for i in range(count):
        length = int(rng.integers(3, 11))
        text = "".join(rng.choice(list(ocr_font.CHARSET), size=length))
        scale = int(rng.integers(2, 5))
        origin = (int(rng.integers(1, 20)), int(rng.integers(1, 48 - 7 * scale)))
        size = (min(384, origin[0] + length * (6 * scale + 1) + int(rng.integers(0, 20))), 48)
        rendered.append(
            ocr_font.render(
                text,
                scale=scale,
                origin=origin,
                size=size,
                ink=int(rng.integers(0, 60)),
                paper=int(rng.integers(200, 256)),
                noise=30,
                seed=seed * 1000 + i,
            )
        )
    return rendered


def to_png(image: np.ndarray) -> bytes:
    """Encodes a grayscale uint8 image as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def read(address: str, images: Sequence[ocr_font.Rendered]) -> list[Reading]:
    """Sends every image in one request; raises RuntimeError on a server error."""
    with Client(address, "ocr", "read") as client:
        result = client.infer([{"image": to_png(item.image)} for item in images])
    if isinstance(result, dict):
        raise RuntimeError(f"ocr.read failed: {result['error']}")
    readings = []
    for item, output in zip(images, result, strict=True):
        if "error" in output:
            raise RuntimeError(f"ocr.read failed for '{item.text}': {output['error']}")
        boxes = [(int(a), int(b), int(c), int(d)) for a, b, c, d in np.asarray(output["boxes"]).reshape(-1, 4)]
        readings.append(Reading(item, str(output["text"]), float(output["confidence"]), boxes))
    return readings


def main(argv: Sequence[str] | None = None) -> int:
    """Prints each reading; exit status 1 when one is wrong."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"gRPC address (default {DEFAULT_ADDRESS})")
    parser.add_argument("--count", type=int, default=8, help="how many images (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the images (default 0)")
    args = parser.parse_args(argv)
    readings = read(args.address, generate(args.count, args.seed))
    for reading in readings:
        verdict = "ok" if reading.correct else f"WRONG (drawn '{reading.truth.text}' at {reading.truth.boxes})"
        print(f"read '{reading.text}' (confidence {reading.confidence:.3f}, {len(reading.boxes)} boxes): {verdict}")
    wrong = sum(not reading.correct for reading in readings)
    print(f"{len(readings) - wrong}/{len(readings)} images read correctly")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
