"""Classifies locally generated JPEG files with the `resnet50` example servable, over gRPC and REST.

`python examples/resnet50/client.py [--address A] [--rest-address R] [--images DIR] [--count N] [--version V]`
draws N pictures with Pillow (gradients, stripes, checkerboards, discs; a few sizes), saves them as JPEG files in
DIR (default `examples/resnet50/test_images`, git-ignored), sends the files' bytes to `classify_top1`,
`classify_top1_batch` and `classify_top5` with rustserve's Client, and to `classify_top1` over REST (base64 JSON),
and prints the answers. The weights are random, so the labels mean nothing; what the client checks is that the
methods agree with each other (same top label by every route, five sorted probabilities). Exit status 1 when they
do not, or on any error.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from rustserve.client import Client

# The server's gRPC address; $RUSTSERVE_GRPC_ADDRESS overrides the default (as for `rustserve infer`).
DEFAULT_ADDRESS = os.environ.get("RUSTSERVE_GRPC_ADDRESS", "127.0.0.1:5500")
DEFAULT_REST = os.environ.get("RUSTSERVE_REST_ADDRESS", "127.0.0.1:1500")
IMAGES = Path(__file__).resolve().parent / "test_images"
SIZES = ((320, 240), (500, 375), (224, 224), (640, 480), (256, 320))


def draw(index: int) -> Image.Image:
    """Picture number `index`: one of four patterns, with colours and size that depend on the index."""
    rng = np.random.default_rng(index)
    width, height = SIZES[index % len(SIZES)]
    colours = [tuple(int(c) for c in rng.integers(0, 256, size=3)) for _ in range(3)]
    kind = index % 4
    if kind == 0:  # vertical gradient between two colours
        ramp = np.linspace(0.0, 1.0, height)[:, None, None]
        pixels = (1 - ramp) * np.array(colours[0]) + ramp * np.array(colours[1])
        return Image.fromarray(np.broadcast_to(pixels, (height, width, 3)).astype(np.uint8))
    picture = Image.new("RGB", (width, height), colours[0])
    pen = ImageDraw.Draw(picture)
    step = int(rng.integers(12, 48))
    if kind == 1:  # diagonal stripes
        for offset in range(-height, width, 2 * step):
            pen.polygon(
                [(offset, 0), (offset + step, 0), (offset + step + height, height), (offset + height, height)],
                fill=colours[1],
            )
    elif kind == 2:  # checkerboard
        for y in range(0, height, step):
            for x in range(0, width, step):
                if (x // step + y // step) % 2:
                    pen.rectangle([x, y, x + step - 1, y + step - 1], fill=colours[1])
    else:  # random discs
        for _ in range(12):
            cx, cy, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(10, 60))
            pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colours[int(rng.integers(1, 3))])
    return picture


def generate_images(directory: Path = IMAGES, count: int = 5) -> list[Path]:
    """Saves `count` pictures as `image_<n>.jpg` (JPEG, quality 90) in `directory`; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = directory / f"image_{index}.jpg"
        draw(index).save(path, format="JPEG", quality=90)
        paths.append(path)
    return paths


def classify(address: str, method: str, paths: Sequence[Path], version: int = 0) -> list[dict[str, Any]]:
    """Sends the files' bytes to `resnet50.<method>` in one request; raises RuntimeError on an error."""
    with Client(address, "resnet50", method, version_number=version) as client:
        result = client.infer([{"image": path.read_bytes()} for path in paths])
    if isinstance(result, dict):
        raise RuntimeError(f"resnet50.{method} failed: {result['error']}")
    for path, output in zip(paths, result, strict=True):
        if "error" in output:
            raise RuntimeError(f"resnet50.{method} failed on {path.name}: {output['error']}")
    return result


def classify_rest(rest_address: str, paths: Sequence[Path], version: int = 0) -> list[dict[str, Any]]:
    """`classify_top1` over MindSpore's REST API, images as `{"b64": ...}`; raises RuntimeError on an error."""
    version_part = f"/version/{version}" if version else ""
    body = {"instances": [{"image": {"b64": base64.b64encode(path.read_bytes()).decode()}} for path in paths]}
    request = urllib.request.Request(
        f"http://{rest_address}/model/resnet50{version_part}:classify_top1",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        reply = json.loads(response.read())
    if "error_msg" in reply:
        raise RuntimeError(f"REST classify_top1 failed: {reply['error_msg']}")
    return reply["instances"]


def check(
    top1: Sequence[dict[str, Any]],
    top1_batch: Sequence[dict[str, Any]],
    top5: Sequence[dict[str, Any]],
    rest: Sequence[dict[str, Any]],
) -> list[str]:
    """What disagrees between the routes, one line per problem (empty: all consistent)."""
    problems = []
    for index, (a, b, c, d) in enumerate(zip(top1, top1_batch, top5, rest, strict=True)):
        labels = str(c["label"]).split(";")
        scores = np.asarray(c["score"])
        if not (a["label"] == b["label"] == labels[0] == d["label"]):
            problems.append(f"image {index}: top labels differ: {a['label']}, {b['label']}, {labels[0]}, {d['label']}")
        if len(labels) != 5 or scores.shape != (5,) or np.any(np.diff(scores) > 0) or not 0 < scores.sum() <= 1.0001:
            problems.append(f"image {index}: bad top-5 answer: {labels} {scores}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Generates the images, classifies them by every route and prints the answers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"gRPC address (default {DEFAULT_ADDRESS})")
    parser.add_argument("--rest-address", default=DEFAULT_REST, help=f"REST address (default {DEFAULT_REST})")
    parser.add_argument("--images", type=Path, default=IMAGES, help=f"where the JPEG files go (default {IMAGES})")
    parser.add_argument("--count", type=int, default=5, help="how many images (default 5)")
    parser.add_argument("--version", type=int, default=0, help="servable version, 0 = newest (default)")
    args = parser.parse_args(argv)
    paths = generate_images(args.images, args.count)
    top1 = classify(args.address, "classify_top1", paths, args.version)
    top1_batch = classify(args.address, "classify_top1_batch", paths, args.version)
    top5 = classify(args.address, "classify_top5", paths, args.version)
    rest = classify_rest(args.rest_address, paths, args.version)
    for path, answer in zip(paths, top5, strict=True):
        scores = ", ".join(f"{score:.3f}" for score in np.asarray(answer["score"]))
        print(f"{path.name}: top-5 {answer['label']} ({scores})")
    problems = check(top1, top1_batch, top5, rest)
    for problem in problems:
        print(f"MISMATCH {problem}")
    print(f"{len(paths)} images, {len(problems)} mismatches between classify_top1, classify_top1_batch, classify_top5")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
