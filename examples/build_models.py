"""Rebuilds the example models, deterministically: `python examples/build_models.py`.

* `servables/add/1/add.onnx`: MindSpore's add example, y = x1 + x2 on float32 [2, 2].
* `servables/digits/1/digits.onnx`: a 64 -> 64 -> 10 MLP (MatMul/Add/Relu/MatMul/Add/Softmax) trained with a fixed
  seed on scikit-learn's bundled digits data set (no download); every fifth sample is held out for
  `digits_client.py`.
* `servables/matmul/1/matmul.onnx`: c = a @ b on float32 matrices with symbolic dims ([m, k] @ [k, n]).
* `servables/ocr/1/detector.onnx` and `servables/ocr/1/recognizer.onnx`: the two models of the OCR pipeline (see
  `servables/ocr/servable_config.py`); the recognizer's weights are the glyphs of `ocr_font.py`.

(The ResNet-50 example builds its own, much larger model: `resnet50/build_model.py`.)

Idempotent: a file is rewritten only when its bytes change, so a second run reports every model unchanged.
Needs numpy, onnx and scikit-learn (the `dev` extra).
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import ocr_font
import onnx
from onnx import TensorProto, helper, numpy_helper

SERVABLES = Path(__file__).resolve().parent / "servables"
OPSET = 17
IR_VERSION = 8
SEED = 0
HOLDOUT_EVERY = 5  # samples with index % 5 == 0 are held out (digits_client.py uses the same rule)
HIDDEN_UNITS = 64
# The OCR models' sizes: see servables/ocr/servable_config.py, which must agree.
OCR_HEIGHT, OCR_WIDTH = 48, 384
OCR_MAX_CHARS = 16
OCR_SHARPNESS = 30.0  # softmax temperature of the recognizer: cosine 1.0 vs 0.8 -> about 400:1


def _model_bytes(graph: onnx.GraphProto) -> bytes:
    """Serialises a checked opset-17 / IR-8 model (no timestamps, so the bytes are reproducible)."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rustserve-examples")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def add_model() -> bytes:
    """y = x1 + x2 with float32 [2, 2] inputs (served with `with_batch_dim=False`, as in MindSpore's example)."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x1", "x2"], ["y"])],
        "add",
        [
            helper.make_tensor_value_info("x1", TensorProto.FLOAT, [2, 2]),
            helper.make_tensor_value_info("x2", TensorProto.FLOAT, [2, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
    )
    return _model_bytes(graph)


def matmul_model() -> bytes:
    """c = a @ b with float32 inputs `a` [m, k], `b` [k, n] and output `c` [m, n] (every dim symbolic)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", "k"]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["k", "n"]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["m", "n"])],
    )
    return _model_bytes(graph)


def ocr_detector_model() -> bytes:
    """The OCR detector: a 3x3 box filter over the ink and a sigmoid give the text probability of each pixel.

    Input `image` [batch, 1, 48, 384] (ink 1.0, paper 0.0); outputs `text_map` (same shape) and `column_score`
    [batch, 1, 384], the column-wise maximum of the map. A pixel inside a stroke (>= 2 pixels wide) scores above
    0.99; a blank column next to a stroke (a third of its window inked) scores about 0.2; two strokes separated by
    3 blank pixels therefore stay two regions.
    """
    box = np.full((1, 1, 3, 3), 1.0 / 9.0, dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "box"], ["density"], pads=[1, 1, 1, 1]),
            helper.make_node("Sub", ["density", "level"], ["centered"]),
            helper.make_node("Mul", ["centered", "gain"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["text_map"]),
            helper.make_node("ReduceMax", ["text_map"], ["column_score"], axes=[2], keepdims=0),
        ],
        "ocr_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, OCR_HEIGHT, OCR_WIDTH])],
        [
            helper.make_tensor_value_info("text_map", TensorProto.FLOAT, ["batch", 1, OCR_HEIGHT, OCR_WIDTH]),
            helper.make_tensor_value_info("column_score", TensorProto.FLOAT, ["batch", 1, OCR_WIDTH]),
        ],
        initializer=[
            numpy_helper.from_array(box, "box"),
            numpy_helper.from_array(np.array(0.4, dtype=np.float32), "level"),
            numpy_helper.from_array(np.array(20.0, dtype=np.float32), "gain"),
        ],
    )
    return _model_bytes(graph)


def ocr_recognizer_model() -> bytes:
    """The OCR recognizer: cosine similarity of each 7x5 cell to the ten digit templates, through a softmax.

    Input `cells` [batch, 16, 7, 5]; output `probs` [batch, 16, 10]. Cells and templates are centred and scaled to
    unit length, so a cell that is exactly a glyph scores 1.0 for that glyph.
    """
    glyphs = ocr_font.templates().reshape(len(ocr_font.CHARSET), -1)
    centred = glyphs - glyphs.mean(axis=1, keepdims=True)
    weights = (centred / np.linalg.norm(centred, axis=1, keepdims=True)).T.astype(np.float32)  # [35, 10]
    cell_size = ocr_font.GLYPH_ROWS * ocr_font.GLYPH_COLS
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["cells", "flat_shape"], ["flat"]),
            helper.make_node("ReduceMean", ["flat"], ["mean"], axes=[1], keepdims=1),
            helper.make_node("Sub", ["flat", "mean"], ["centred"]),
            helper.make_node("ReduceL2", ["centred"], ["length"], axes=[1], keepdims=1),
            helper.make_node("Add", ["length", "epsilon"], ["safe_length"]),
            helper.make_node("Div", ["centred", "safe_length"], ["unit"]),
            helper.make_node("MatMul", ["unit", "templates"], ["cosine"]),
            helper.make_node("Mul", ["cosine", "sharpness"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["flat_probs"], axis=-1),
            helper.make_node("Reshape", ["flat_probs", "probs_shape"], ["probs"]),
        ],
        "ocr_recognizer",
        [
            helper.make_tensor_value_info(
                "cells", TensorProto.FLOAT, ["batch", OCR_MAX_CHARS, ocr_font.GLYPH_ROWS, ocr_font.GLYPH_COLS]
            )
        ],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", OCR_MAX_CHARS, len(ocr_font.CHARSET)])],
        initializer=[
            numpy_helper.from_array(np.array([-1, cell_size], dtype=np.int64), "flat_shape"),
            numpy_helper.from_array(
                np.array([-1, OCR_MAX_CHARS, len(ocr_font.CHARSET)], dtype=np.int64), "probs_shape"
            ),
            numpy_helper.from_array(np.array(1e-6, dtype=np.float32), "epsilon"),
            numpy_helper.from_array(weights, "templates"),
            numpy_helper.from_array(np.array(OCR_SHARPNESS, dtype=np.float32), "sharpness"),
        ],
    )
    return _model_bytes(graph)


def train_digits() -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """Trains the seeded MLP on the digits data set scaled to [0, 1]; returns its layers and held-out accuracy."""
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    features = digits.data.astype(np.float32) / 16.0
    held_out = np.arange(len(digits.target)) % HOLDOUT_EVERY == 0
    classifier = MLPClassifier(hidden_layer_sizes=(HIDDEN_UNITS,), alpha=1e-3, max_iter=600, random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(features[~held_out], digits.target[~held_out])
    accuracy = float(classifier.score(features[held_out], digits.target[held_out]))
    layers = list(zip(classifier.coefs_, classifier.intercepts_, strict=True))
    return layers, accuracy


def digits_model(layers: Sequence[tuple[np.ndarray, np.ndarray]]) -> bytes:
    """The MLP as ONNX: input `x` [batch, 64] in [0, 1], output `probs` [batch, 10] (softmax)."""
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    current = "x"
    for i, (weights, bias) in enumerate(layers):
        initializers.append(numpy_helper.from_array(np.asarray(weights, dtype=np.float32), f"w{i}"))
        initializers.append(numpy_helper.from_array(np.asarray(bias, dtype=np.float32), f"b{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"matmul{i}"]))
        nodes.append(helper.make_node("Add", [f"matmul{i}", f"b{i}"], [f"linear{i}"]))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [f"linear{i}"], [f"relu{i}"]))
            current = f"relu{i}"
        else:
            nodes.append(helper.make_node("Softmax", [f"linear{i}"], ["probs"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "digits_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", int(layers[0][0].shape[0])])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", int(layers[-1][0].shape[1])])],
        initializer=initializers,
    )
    return _model_bytes(graph)


def write_if_changed(path: Path, data: bytes) -> bool:
    """Writes `data` to `path` atomically (via `<path>.tmp`) unless it already holds those bytes."""
    if path.exists() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Builds every example model into `--out` (default: examples/servables)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SERVABLES, help="servables directory to write into")
    args = parser.parse_args(argv)
    layers, accuracy = train_digits()
    targets = {
        args.out / "add" / "1" / "add.onnx": add_model(),
        args.out / "digits" / "1" / "digits.onnx": digits_model(layers),
        args.out / "matmul" / "1" / "matmul.onnx": matmul_model(),
        args.out / "ocr" / "1" / "detector.onnx": ocr_detector_model(),
        args.out / "ocr" / "1" / "recognizer.onnx": ocr_recognizer_model(),
    }
    for path, data in targets.items():
        state = "written" if write_if_changed(path, data) else "unchanged"
        print(f"{path}: {state} ({len(data)} bytes)")
    print(f"digits MLP held-out accuracy (scikit-learn): {accuracy:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
