"""The benchmark workloads of `benches/compare.py`, shared by every contender so they all do the same work.

Imported by the rustserve servables that compare.py writes (their `servable_config.py` puts `benches/` on
`sys.path`), by the FastAPI / grpcio baseline (`baseline_server.py`) and by the in-process runner (`inprocess.py`).

* `tensor_add`: MindSpore's add example, y = x1 + x2 on float32 [2, 2], no batch dimension.
* `resnet50`: JPEG bytes in; Pillow decodes, resizes to 224x224 and normalizes in a Python stage; ResNet-50 (built
  locally with the `onnx` helper API by `examples/resnet50/build_model.py`, seeded random weights) scores 1000
  classes; a Python stage returns the top-1 label.
* `pybound`: a Python stage that is deliberately slower than its model (pure-Python arithmetic holding the GIL for
  about `PYBOUND_MS`), then a tiny model: the case where more Python worker processes should help.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

REPO = Path(__file__).resolve().parents[1]
OPSET = 17
IR_VERSION = 8

IMAGE_SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
LABELS = [f"class_{index:03d}" for index in range(1000)]

# Python-bound pipeline: iterations of the pure-Python loop; ~3 ms on the 2-core benchmark machine.
PYBOUND_ITERATIONS = 60_000


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rustserve-bench")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def build_tensor_add(path: Path) -> Path:
    """MindSpore's add model: float32 x1 [2, 2] + x2 [2, 2] -> y [2, 2]."""
    shape = [2, 2]
    graph = helper.make_graph(
        [helper.make_node("Add", ["x1", "x2"], ["y"])],
        "tensor_add",
        [
            helper.make_tensor_value_info("x1", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("x2", TensorProto.FLOAT, shape),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    return _save(graph, path)


def build_pybound_model(path: Path) -> Path:
    """y = x * x on float32 [batch, 4]: the tiny model behind the slow Python stage."""
    shape: list[int | str] = ["batch", 4]
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "x"], ["y"])],
        "square",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    return _save(graph, path)


def build_resnet50(path: Path) -> Path:
    """ResNet-50 v1.5 with seeded random weights (about 100 MB), from the resnet50 example's builder; cached."""
    builder_path = REPO / "examples" / "resnet50" / "build_model.py"
    spec = importlib.util.spec_from_file_location("rustserve_example_resnet50_builder", builder_path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import the ResNet-50 builder {builder_path}")
    builder = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = builder  # dataclasses look their module up there
    spec.loader.exec_module(builder)
    data: bytes = builder.build(64, seed=1, label="resnet50 (bench)", show_progress=False)
    if not path.is_file() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return path


def make_jpeg(width: int = 640, height: int = 480, seed: int = 0) -> bytes:
    """A photo-sized JPEG (smooth gradients plus noise, quality 90): what a client would upload."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([xs / width * 255, ys / height * 255, (xs + ys) / (width + height) * 255], axis=-1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# pipeline stages (the same functions run in rustserve's Python stages, in FastAPI and in-process)
# ---------------------------------------------------------------------------------------------------------------


def resnet_preprocess(image: np.ndarray | bytes) -> np.ndarray:
    """JPEG bytes -> float32 [3, 224, 224]: decode, resize, normalize with ImageNet's mean and std, HWC -> CHW."""
    from PIL import Image

    data = image.tobytes() if isinstance(image, np.ndarray) else bytes(image)
    with Image.open(io.BytesIO(data)) as picture:
        rgb = picture.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    pixels = (np.asarray(rgb, dtype=np.float32) - MEAN) / STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def resnet_top1(score: np.ndarray) -> str:
    """The label of the highest of the 1000 scores."""
    return LABELS[int(np.argmax(score))]


def pybound_preprocess(x: np.ndarray) -> np.ndarray:
    """Pure-Python work holding the GIL (~3 ms), then x + (a value derived from it) as float32 [4]."""
    acc = 0
    for i in range(PYBOUND_ITERATIONS):
        acc = (acc + i * i) % 1_000_003
    return (np.asarray(x, dtype=np.float32) + np.float32(acc % 7)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# rustserve servables
# ---------------------------------------------------------------------------------------------------------------

_CONFIG_HEAD = f"""
import sys

sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})

import workloads
from rustserve.server import register
"""

TENSOR_ADD_CONFIG = (
    _CONFIG_HEAD
    + '''
model = register.declare_model(model_file="tensor_add.onnx", model_format="ONNX", with_batch_dim=False)


def identity(x1, x2):
    return x1, x2


@register.register_method(output_names=["y"])
def add_common(x1, x2):
    return register.add_stage(model, x1, x2, outputs_count=1)


@register.register_method(output_names=["y"])
def echo(x1, x2):
    """No stage at all: what is left is transport, codecs and routing."""
    return x1


@register.register_method(output_names=["y"])
def add_pystage(x1, x2):
    """The same with a Python stage in front: the difference is the GIL-thread round trip."""
    x1, x2 = register.add_stage(identity, x1, x2, outputs_count=2)
    return register.add_stage(model, x1, x2, outputs_count=1)
'''
)

RESNET50_CONFIG = (
    _CONFIG_HEAD
    + """
model = register.declare_model(
    model_file="resnet50.onnx", model_format="ONNX", with_batch_dim=True, max_batch_size=8
)


@register.register_method(output_names=["label"])
def classify_top1(image):
    x = register.add_stage(workloads.resnet_preprocess, image, outputs_count=1)
    score = register.add_stage(model, x, outputs_count=1)
    return register.add_stage(workloads.resnet_top1, score, outputs_count=1)
"""
)

# The same pipeline with the batching knobs set for a closed loop of 8 clients: wait up to 60 ms for a batch of 8.
RESNET50_BATCH8_CONFIG = RESNET50_CONFIG.replace(
    "max_batch_size=8", "max_batch_size=8, max_queue_delay_ms=60, preferred_batch_sizes=[8]"
)

PYBOUND_CONFIG = (
    _CONFIG_HEAD
    + """
model = register.declare_model(model_file="square.onnx", model_format="ONNX", with_batch_dim=True, max_batch_size=8)


@register.register_method(output_names=["y"])
def slow_pre(x):
    x = register.add_stage(workloads.pybound_preprocess, x, outputs_count=1)
    return register.add_stage(model, x, outputs_count=1)
"""
)


def write_servables(root: Path, models_dir: Path, *, resnet: bool) -> Path:
    """Writes the benchmark servables under `root` (model files are hard links or copies from `models_dir`)."""
    plan = {
        "tensor_add": (TENSOR_ADD_CONFIG, "tensor_add.onnx"),
        "pybound": (PYBOUND_CONFIG, "square.onnx"),
    }
    if resnet:
        plan["resnet50"] = (RESNET50_CONFIG, "resnet50.onnx")
        plan["resnet50_batch8"] = (RESNET50_BATCH8_CONFIG, "resnet50.onnx")
    for name, (config, model_file) in plan.items():
        folder = root / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "servable_config.py").write_text(config)
        target = folder / "1" / model_file
        if not target.exists():
            try:
                target.hardlink_to(models_dir / model_file)
            except OSError:
                target.write_bytes((models_dir / model_file).read_bytes())
    return root


def build_models(models_dir: Path, *, resnet: bool) -> Path:
    """Builds the workload models into `models_dir` (ResNet-50 only when asked: it takes a while)."""
    build_tensor_add(models_dir / "tensor_add.onnx")
    build_pybound_model(models_dir / "square.onnx")
    if resnet:
        build_resnet50(models_dir / "resnet50.onnx")
    return models_dir
