"""Tiny ONNX models for the end-to-end tests, built with the `onnx` helper API (no downloads).

Every builder writes one model file and returns its path. Dim 0 is either a fixed batch size (an int) or a
symbolic batch dimension (`None` -> the dim param "batch"). Opset 17 with IR version 8 loads in onnxruntime 1.32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

# numpy dtype name -> ONNX element type, for every dtype the MindSpore wire carries as a numeric tensor.
NUMERIC_DTYPES: dict[str, int] = {
    "bool": TensorProto.BOOL,
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
    "int16": TensorProto.INT16,
    "uint16": TensorProto.UINT16,
    "int32": TensorProto.INT32,
    "uint32": TensorProto.UINT32,
    "int64": TensorProto.INT64,
    "uint64": TensorProto.UINT64,
    "float16": TensorProto.FLOAT16,
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
}


def _dim0(batch: int | None) -> int | str:
    """Returns a fixed dim 0, or the symbolic dim param for a dynamic batch."""
    return "batch" if batch is None else batch


def _save(graph: onnx.GraphProto, path: Path | str) -> Path:
    """Wraps `graph` in a checked model (opset 17, IR 8) and writes it to `path`."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rustserve-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out)
    return out


def build_add(path: Path | str, *, batch: int | None = 2, width: int = 2, offset: float = 0.0) -> Path:
    """y = x1 + x2 (+ offset); float32 inputs `x1`, `x2` and output `y` of shape [batch, width].

    `build_add(p)` is MindSpore's [2,2] add model; `offset=100` gives an observably different version.
    """
    shape = [_dim0(batch), width]
    nodes = [helper.make_node("Add", ["x1", "x2"], ["sum" if offset else "y"])]
    initializers = []
    if offset:
        initializers.append(numpy_helper.from_array(np.array(offset, dtype=np.float32), "offset"))
        nodes.append(helper.make_node("Add", ["sum", "offset"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "add",
        [
            helper.make_tensor_value_info("x1", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("x2", TensorProto.FLOAT, shape),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=initializers,
    )
    return _save(graph, path)


def build_scale_shift(
    path: Path | str, *, scale: float, shift: float, batch: int | None = None, width: int = 3
) -> Path:
    """y = x * scale + shift; float32 input `x` and output `y` of shape [batch, width]."""
    shape = [_dim0(batch), width]
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "scale"], ["scaled"]),
            helper.make_node("Add", ["scaled", "shift"], ["y"]),
        ],
        "scale_shift",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        initializer=[
            numpy_helper.from_array(np.array(scale, dtype=np.float32), "scale"),
            numpy_helper.from_array(np.array(shift, dtype=np.float32), "shift"),
        ],
    )
    return _save(graph, path)


def build_chain(directory: Path | str, *, batch_a: int | None = 2, batch_b: int | None = None) -> tuple[Path, Path]:
    """Two models for a multi-stage method: `double.onnx` (y = x * 2) and `plus_one.onnx` (z = y + 1), width 3."""
    folder = Path(directory)
    first = build_scale_shift(folder / "double.onnx", scale=2.0, shift=0.0, batch=batch_a)
    second = build_scale_shift(folder / "plus_one.onnx", scale=1.0, shift=1.0, batch=batch_b)
    return first, second


def build_matmul(path: Path | str, *, m: int = 2, k: int = 3, n: int = 2) -> Path:
    """c = a @ b with float32 `a` [m, k] and `b` [k, n]: no batch dim (use with `with_batch_dim=False`)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [k, n]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [m, n])],
    )
    return _save(graph, path)


def build_bias_add(path: Path | str, *, batch: int = 4, width: int = 3) -> Path:
    """y = x + bias with float32 `x` [batch, width] and an unbatched `bias` [width] (`without_batch_dim_inputs=1`)."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "bias"], ["y"])],
        "bias_add",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width]),
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, [width]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])],
    )
    return _save(graph, path)


def build_identity(path: Path | str, dtype: str, *, batch: int | None = None, width: int | None = 3) -> Path:
    """y = Identity(x) for one element type: a name of `NUMERIC_DTYPES` or "string".

    Shape is [batch, width], or just [batch] when `width` is None (one scalar per instance).
    """
    elem = TensorProto.STRING if dtype == "string" else NUMERIC_DTYPES[dtype]
    shape: list[int | str] = [_dim0(batch)] if width is None else [_dim0(batch), width]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"identity_{dtype}",
        [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info("y", elem, shape)],
    )
    return _save(graph, path)


def build_mlp(path: Path | str, layers: Sequence[tuple[np.ndarray, np.ndarray]], *, batch: int | None = None) -> Path:
    """A dense classifier: (MatMul + Add + Relu) per hidden layer, MatMul + Add + Softmax at the end.

    `layers` holds (weights [in, out], bias [out]) pairs; input `x` [batch, in] float32, output `probs` [batch, out].
    """
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    current = "x"
    for i, (weights, bias) in enumerate(layers):
        initializers.append(numpy_helper.from_array(np.asarray(weights, dtype=np.float32), f"w{i}"))
        initializers.append(numpy_helper.from_array(np.asarray(bias, dtype=np.float32), f"b{i}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]))
        nodes.append(helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"lin{i}"]))
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [f"lin{i}"], [f"act{i}"]))
            current = f"act{i}"
        else:
            nodes.append(helper.make_node("Softmax", [f"lin{i}"], ["probs"], axis=-1))
    n_in = int(np.asarray(layers[0][0]).shape[0])
    n_out = int(np.asarray(layers[-1][0]).shape[1])
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [_dim0(batch), n_in])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [_dim0(batch), n_out])],
        initializer=initializers,
    )
    return _save(graph, path)


def build_small_mlp(path: Path | str, *, n_in: int = 4, hidden: int = 8, n_out: int = 3, seed: int = 0) -> Path:
    """A seeded random MLP classifier (4 -> 8 -> 3) with a symbolic batch dim."""
    rng = np.random.default_rng(seed)
    layers = [
        (rng.normal(size=(n_in, hidden)), rng.normal(size=hidden)),
        (rng.normal(size=(hidden, n_out)), rng.normal(size=n_out)),
    ]
    return build_mlp(path, layers)
