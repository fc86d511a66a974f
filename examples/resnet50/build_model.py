"""Builds the ResNet-50 example's model locally: `python examples/resnet50/build_model.py`.

The graph is ResNet-50 v1.5 (the torchvision / MLPerf variant: stride 2 in the 3x3 convolution of a down-sampling
bottleneck), made with the `onnx` helper API: a 7x7 stem, 3 + 4 + 6 + 3 bottlenecks, global average pooling and a
1000-way fully connected layer; input `image` float32 [batch, 3, 224, 224], output `score` float32 [batch, 1000]
(logits). Weights are seeded random numbers (He initialisation, BatchNormalization kept as separate nodes), so the
labels it predicts mean nothing; the example is about serving a real-sized model. Nothing is downloaded.

Two versions are written, `servables/resnet50/1/resnet50.onnx` (seed 1) and `.../2/resnet50.onnx` (seed 2),
about 100 MB each; both directories are git-ignored. A file that already holds the same model is left alone.

`--width 8` (or the environment variable RUSTSERVE_RESNET50_WIDTH) builds the same topology with 8 instead of 64
base channels, a 1.6 MB model: what the tests use.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
SERVABLES = HERE / "servables"
MODEL_FILE = "resnet50.onnx"
VERSIONS = {1: 1, 2: 2}  # version -> seed
OPSET = 17
IR_VERSION = 8
IMAGE_SIZE = 224
NUM_CLASSES = 1000
BLOCKS = (3, 4, 6, 3)  # bottlenecks per stage: the "50" in ResNet-50
EXPANSION = 4
WIDTH_ENV = "RUSTSERVE_RESNET50_WIDTH"


@dataclass
class _Graph:
    """Nodes and weight shapes of the network, before any weight is drawn."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    weights: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)  # name, shape, kind

    def add_weight(self, name: str, shape: tuple[int, ...], kind: str) -> str:
        self.weights.append((name, shape, kind))
        return name

    def conv_bn(
        self, x: str, name: str, c_in: int, c_out: int, kernel: int, stride: int, *, relu: bool, last: bool = False
    ) -> str:
        """Conv (no bias) + BatchNormalization (+ Relu); `last` marks the final BN of a residual branch."""
        weight = self.add_weight(f"{name}.weight", (c_out, c_in, kernel, kernel), "conv")
        pad = kernel // 2
        self.nodes.append(
            helper.make_node(
                "Conv", [x, weight], [f"{name}.conv"], strides=[stride, stride], pads=[pad] * 4, name=f"{name}.conv"
            )
        )
        bn = [
            self.add_weight(f"{name}.bn.{part}", (c_out,), f"bn_{part}" + ("_last" if last and part == "scale" else ""))
            for part in ("scale", "bias", "mean", "var")
        ]
        self.nodes.append(
            helper.make_node("BatchNormalization", [f"{name}.conv", *bn], [f"{name}.bn"], name=f"{name}.bn")
        )
        if not relu:
            return f"{name}.bn"
        self.nodes.append(helper.make_node("Relu", [f"{name}.bn"], [f"{name}.relu"], name=f"{name}.relu"))
        return f"{name}.relu"

    def bottleneck(self, x: str, name: str, c_in: int, planes: int, stride: int) -> str:
        """1x1 reduce, 3x3 (carries the stride: v1.5), 1x1 expand; projection shortcut when the shape changes."""
        out = self.conv_bn(x, f"{name}.conv1", c_in, planes, 1, 1, relu=True)
        out = self.conv_bn(out, f"{name}.conv2", planes, planes, 3, stride, relu=True)
        out = self.conv_bn(out, f"{name}.conv3", planes, planes * EXPANSION, 1, 1, relu=False, last=True)
        shortcut = x
        if stride != 1 or c_in != planes * EXPANSION:
            shortcut = self.conv_bn(x, f"{name}.downsample", c_in, planes * EXPANSION, 1, stride, relu=False)
        self.nodes.append(helper.make_node("Add", [out, shortcut], [f"{name}.add"], name=f"{name}.add"))
        self.nodes.append(helper.make_node("Relu", [f"{name}.add"], [f"{name}.out"], name=f"{name}.out"))
        return f"{name}.out"


def _topology(width: int) -> _Graph:
    """ResNet-50 v1.5 with `width` base channels (64 = the real network)."""
    graph = _Graph()
    x = graph.conv_bn("image", "stem", 3, width, 7, 2, relu=True)
    graph.nodes.append(
        helper.make_node("MaxPool", [x], ["stem.pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    )
    x, channels = "stem.pool", width
    for stage, blocks in enumerate(BLOCKS):
        planes = width * 2**stage
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = graph.bottleneck(x, f"layer{stage + 1}.{block}", channels, planes, stride)
            channels = planes * EXPANSION
    graph.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    graph.nodes.append(helper.make_node("Flatten", ["pool"], ["features"], axis=1, name="flatten"))
    fc_weight = graph.add_weight("fc.weight", (NUM_CLASSES, channels), "fc")
    fc_bias = graph.add_weight("fc.bias", (NUM_CLASSES,), "zeros")
    graph.nodes.append(helper.make_node("Gemm", ["features", fc_weight, fc_bias], ["score"], transB=1, name="fc"))
    return graph


def parameter_count(width: int = 64) -> int:
    """Trainable parameters (convolutions, BN scale and bias, fc), counted from the topology without building it.

    Example:
        >>> parameter_count(64)  # torchvision's resnet50 has the same number
        25557032
    """
    return sum(int(np.prod(shape)) for _, shape, kind in _topology(width).weights if kind not in ("bn_mean", "bn_var"))


def _draw(rng: np.random.Generator, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """One weight tensor: He-normal convolutions, BN close to identity (the last BN of a branch damped to 0.2)."""
    if kind == "conv":
        fan_in = int(np.prod(shape[1:]))
        return rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape).astype(np.float32)
    if kind == "fc":
        return rng.normal(0.0, np.sqrt(1.0 / shape[1]), size=shape).astype(np.float32)
    if kind == "bn_scale":
        return rng.uniform(0.8, 1.2, size=shape).astype(np.float32)
    if kind == "bn_scale_last":
        return rng.uniform(0.1, 0.3, size=shape).astype(np.float32)
    if kind == "bn_bias":
        return rng.normal(0.0, 0.05, size=shape).astype(np.float32)
    if kind == "bn_mean":
        return rng.normal(0.0, 0.05, size=shape).astype(np.float32)
    if kind == "bn_var":
        return rng.uniform(0.9, 1.1, size=shape).astype(np.float32)
    return np.zeros(shape, dtype=np.float32)


def _progress(done: int, total: int, label: str, started: float, stream: TextIO = sys.stderr) -> None:
    """Redraws a one-line progress bar: `[#######.......]  48% 12.3/25.6 M parameters  1.2 s`."""
    fraction = done / total if total else 1.0
    bar = "#" * int(fraction * 30)
    stream.write(
        f"\r{label} [{bar:<30}] {fraction:4.0%} {done / 1e6:5.1f}/{total / 1e6:.1f} M parameters"
        f" {time.monotonic() - started:5.1f} s"
    )
    if done >= total:
        stream.write("\n")
    stream.flush()


def _weights(graph: _Graph, seed: int, label: str, show_progress: bool) -> Iterator[onnx.TensorProto]:
    rng = np.random.default_rng(seed)
    total = sum(int(np.prod(shape)) for _, shape, _ in graph.weights)
    done = 0
    started = drawn = time.monotonic()
    for name, shape, kind in graph.weights:
        yield numpy_helper.from_array(_draw(rng, shape, kind), name)
        done += int(np.prod(shape))
        now = time.monotonic()
        if show_progress and (done == total or now - drawn >= 0.1):  # at most 10 redraws a second
            _progress(done, total, label, started)
            drawn = now


def build(width: int = 64, seed: int = 1, *, label: str = "resnet50", show_progress: bool = True) -> bytes:
    """Builds the model and returns its serialized bytes (deterministic for a width and seed).

    Args:
        width: Base channels (64 = ResNet-50; tests use 8).
        seed: Seed of the random weights.
        label: Text in front of the progress bar.
        show_progress: Draw a progress bar on stderr.

    Returns:
        The ONNX model (opset 17, IR 8).
    """
    graph = _topology(width)
    initializers = list(_weights(graph, seed, label, show_progress))
    onnx_graph = helper.make_graph(
        graph.nodes,
        f"resnet50_v1_5_w{width}",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, IMAGE_SIZE, IMAGE_SIZE])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", NUM_CLASSES])],
        initializer=initializers,
    )
    model = helper.make_model(
        onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rustserve-examples"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _same_file(path: Path, data: bytes) -> bool:
    """Whether `path` already holds `data` (compared by size, then SHA-256, without a second 100 MB copy)."""
    if not path.is_file() or path.stat().st_size != len(data):
        return False
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest() == hashlib.sha256(data).digest()


def write_versions(out: Path = SERVABLES, width: int = 64, *, show_progress: bool = True) -> list[Path]:
    """Builds both versions into `<out>/resnet50/<version>/resnet50.onnx`; returns the paths.

    Args:
        out: The servables directory.
        width: Base channels.
        show_progress: Draw progress bars on stderr.

    Returns:
        The two model paths (written or unchanged).
    """
    paths = []
    for version, seed in VERSIONS.items():
        path = out / "resnet50" / str(version) / MODEL_FILE
        data = build(width, seed, label=f"version {version}", show_progress=show_progress)
        if _same_file(path, data):
            state = "unchanged"
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
            state = "written"
        print(f"{path}: {state} ({len(data) / 1e6:.1f} MB)", flush=True)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    """Builds both versions (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SERVABLES, help=f"servables directory (default {SERVABLES})")
    parser.add_argument(
        "--width",
        type=int,
        default=int(os.environ.get(WIDTH_ENV, "64")),
        help=f"base channels: 64 = ResNet-50 (default; ${WIDTH_ENV} overrides it), 8 = a small copy for tests",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.width < 1:
        parser.error(f"--width must be >= 1, got {args.width}")
    print(f"ResNet-50 v1.5, width {args.width}: {parameter_count(args.width) / 1e6:.2f} M parameters", flush=True)
    write_versions(args.out, args.width, show_progress=not args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
