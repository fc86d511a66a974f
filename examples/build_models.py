"""Rebuilds the example models, deterministically: `python examples/build_models.py`.

* `servables/add/1/add.onnx`: MindSpore's add example, y = x1 + x2 on float32 [2, 2].
* `servables/digits/1/digits.onnx`: a 64 -> 64 -> 10 MLP (MatMul/Add/Relu/MatMul/Add/Softmax) trained with a fixed
  seed on scikit-learn's bundled digits data set (no download); every fifth sample is held out for
  `digits_client.py`.

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
import onnx
from onnx import TensorProto, helper, numpy_helper

SERVABLES = Path(__file__).resolve().parent / "servables"
OPSET = 17
IR_VERSION = 8
SEED = 0
HOLDOUT_EVERY = 5  # samples with index % 5 == 0 are held out (digits_client.py uses the same rule)
HIDDEN_UNITS = 64


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
    """Builds both example models into `--out` (default: examples/servables)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SERVABLES, help="servables directory to write into")
    args = parser.parse_args(argv)
    layers, accuracy = train_digits()
    targets = {
        args.out / "add" / "1" / "add.onnx": add_model(),
        args.out / "digits" / "1" / "digits.onnx": digits_model(layers),
    }
    for path, data in targets.items():
        state = "written" if write_if_changed(path, data) else "unchanged"
        print(f"{path}: {state} ({len(data)} bytes)")
    print(f"digits MLP held-out accuracy (scikit-learn): {accuracy:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
