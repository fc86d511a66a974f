"""Model batching knobs: `declare_model(max_queue_delay_ms=..., preferred_batch_sizes=...)` from the API to the batcher.

The end-to-end cases use a model that reports its own batch size: output `rows` of every instance is the number of
rows of the batch it ran in, so the tests see how instances were grouped without any timing assumption.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Grpc, ServerProcess
from models import _save
from onnx import TensorProto, helper, numpy_helper

from rustserve.server import register

# ---------------------------------------------------------------------------------------------------------------
# declare_model: recording and validation
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def reg() -> Iterator[register._Registry]:
    """A registry for servable "svc" that the register API records into for the test's duration."""
    registry = register._Registry("svc")
    with register._recording(registry):
        yield registry


def _raises(text: str) -> Any:
    return pytest.raises(RuntimeError, match="^" + re.escape(text) + "$")


def test_knobs_are_recorded_and_reach_the_spec(reg: register._Registry) -> None:
    register.declare_model("a.onnx", "ONNX", max_batch_size=8, max_queue_delay_ms=2.5, preferred_batch_sizes=[4, 8])
    register.declare_model("b.onnx", "ONNX", max_queue_delay_ms=3, preferred_batch_sizes=2)
    register.declare_model("c.onnx", "ONNX")
    first, second, third = reg.models
    assert (first.max_queue_delay_ms, first.preferred_batch_sizes) == (2.5, (4, 8))
    assert (second.max_queue_delay_ms, second.preferred_batch_sizes) == (3.0, (2,))
    assert isinstance(second.max_queue_delay_ms, float)
    assert (third.max_queue_delay_ms, third.preferred_batch_sizes) == (None, ())


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"max_queue_delay_ms": -1}, "Parameter 'max_queue_delay_ms' should be a finite number >= 0, but actually -1"),
        (
            {"max_queue_delay_ms": float("nan")},
            "Parameter 'max_queue_delay_ms' should be a finite number >= 0, but actually nan",
        ),
        (
            {"max_queue_delay_ms": "5"},
            "Parameter 'max_queue_delay_ms' should be int or float, but actually <class 'str'>",
        ),
        (
            {"max_queue_delay_ms": True},
            "Parameter 'max_queue_delay_ms' should be int or float, but actually <class 'bool'>",
        ),
        ({"preferred_batch_sizes": [0]}, "The item value '0' in parameter 'preferred_batch_sizes' should be >= 1"),
        (
            {"preferred_batch_sizes": [2, 2]},
            "The item value '2' in parameter 'preferred_batch_sizes' should not be repeated",
        ),
        (
            {"preferred_batch_sizes": "2"},
            "Parameter 'preferred_batch_sizes' should be int or tuple/list of int, but actually <class 'str'>",
        ),
        (
            {"preferred_batch_sizes": [2, 16], "max_batch_size": 8},
            "The item value '16' in parameter 'preferred_batch_sizes' should be <= max_batch_size 8",
        ),
        (
            {"preferred_batch_sizes": [2], "with_batch_dim": False},
            "Parameter 'preferred_batch_sizes' needs with_batch_dim=True",
        ),
    ],
)
def test_knob_errors(reg: register._Registry, kwargs: dict[str, Any], text: str) -> None:
    with _raises(text):
        register.declare_model("m.onnx", "ONNX", **kwargs)
    assert reg.models == []


# ---------------------------------------------------------------------------------------------------------------
# end to end
# ---------------------------------------------------------------------------------------------------------------


def build_rows_model(path: Path) -> Path:
    """x [batch, 3] float32 -> y = x, rows [batch, 3] = the batch's row count in every element."""
    nodes = [
        helper.make_node("Identity", ["x"], ["y"]),
        helper.make_node("Mul", ["x", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "one"], ["ones"]),
        helper.make_node("ReduceSum", ["ones", "axis0"], ["count"], keepdims=1),
        helper.make_node("Add", ["zeros", "count"], ["rows"]),
    ]
    graph = helper.make_graph(
        nodes,
        "rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 3]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
            numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        ],
    )
    return _save(graph, path)


SCHED_CONFIG = """
from rustserve.server import register

# An hour of delay: a batch runs only when it is full (4 rows).
full = register.declare_model(
    model_file="full.onnx", model_format="ONNX", max_batch_size=4, max_queue_delay_ms=3_600_000
)
# Preferred size 2: every run has 2 rows as long as instances come in pairs.
pairs = register.declare_model(
    model_file="pairs.onnx", model_format="ONNX", max_batch_size=8, preferred_batch_sizes=[2],
    max_queue_delay_ms=3_600_000,
)
# A short delay: a lone instance runs alone once it is due.
due = register.declare_model(model_file="due.onnx", model_format="ONNX", max_batch_size=4, max_queue_delay_ms=20)


@register.register_method(output_names=["y", "rows"])
def wait_full(x):
    return register.add_stage(full, x, outputs_count=2)


@register.register_method(output_names=["y", "rows"])
def in_pairs(x):
    return register.add_stage(pairs, x, outputs_count=2)


@register.register_method(output_names=["y", "rows"])
def when_due(x):
    return register.add_stage(due, x, outputs_count=2)
"""


@pytest.fixture
def sched(
    make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess], pb2_modules: tuple[Any, Any]
) -> Iterator[Grpc]:
    folder = make_servable("sched", SCHED_CONFIG)
    for name in ("full", "pairs", "due"):
        build_rows_model(folder / "1" / f"{name}.onnx")
    server = start_server(folder.parent)
    grpc = Grpc(*pb2_modules, server.grpc_address)
    yield grpc
    grpc.close()


def _x(k: int) -> dict[str, np.ndarray]:
    return {"x": np.array([k, k + 0.5, -k], dtype=np.float32)}


def _check(outputs: list[dict[str, Any]], first: int, rows: int) -> None:
    for k, out in enumerate(outputs, start=first):
        np.testing.assert_array_equal(out["y"], _x(k)["x"])
        np.testing.assert_array_equal(out["rows"], np.full(3, rows, np.float32))


def test_queue_delay_fills_batches_across_requests(sched: Grpc) -> None:
    """Four concurrent one-instance requests run as one batch of four: the batcher waited for them."""
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda k: sched.predict("sched", "wait_full", [_x(k)]), range(4)))
    for k, reply in enumerate(replies):
        _check(sched.ok(reply, 1), k, rows=4)
    # one request that fills the batch by itself needs no company
    _check(sched.ok(sched.predict("sched", "wait_full", [_x(k) for k in range(4)]), 4), 0, rows=4)


def test_preferred_batch_size(sched: Grpc) -> None:
    """With preferred size 2 (max 8), six instances of one request run as three batches of two."""
    _check(sched.ok(sched.predict("sched", "in_pairs", [_x(k) for k in range(6)]), 6), 0, rows=2)


def test_due_instance_runs_alone(sched: Grpc) -> None:
    """A lone instance is not held back for longer than max_queue_delay_ms."""
    _check(sched.ok(sched.predict("sched", "when_due", [_x(7)]), 1), 7, rows=1)
