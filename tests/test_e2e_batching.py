"""Batching: fixed-batch padding, dynamic batches, `with_batch_dim=False`, `without_batch_dim_inputs`."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from conftest import Grpc, Rest

FIXED_BATCH = 4  # batching.add_fixed: dim 0 of its model
DYNAMIC_MAX = 3  # batching.add_dynamic: max_batch_size


def add_instances(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`count` width-3 instances whose sums all differ, so a result in the wrong slot shows."""
    rng = np.random.default_rng(seed)
    return [
        {
            "x1": np.array([i, i + 0.5, -i], dtype=np.float32) + np.float32(rng.integers(0, 100)),
            "x2": np.array([10 * i, 1, 2], dtype=np.float32) * (seed + 1),
        }
        for i in range(count)
    ]


def assert_sums(outputs: list[dict[str, Any]], instances: list[dict[str, np.ndarray]]) -> None:
    """Each output `y` is x1 + x2 of the same-index instance, float32 shape [3]."""
    assert len(outputs) == len(instances)
    for out, inst in zip(outputs, instances, strict=True):
        assert out["y"].dtype == np.float32 and out["y"].shape == (3,)
        np.testing.assert_array_equal(out["y"], inst["x1"] + inst["x2"])


@pytest.mark.parametrize(
    "count",
    [1, FIXED_BATCH - 1, FIXED_BATCH, FIXED_BATCH + 1, 3 * FIXED_BATCH + 1],
    ids=["1", "N-1", "N", "N+1", "3N+1"],
)
def test_fixed_batch_padding_raw_grpc(grpc: Grpc, count: int) -> None:
    """Instance counts around the fixed batch size: padded batches give exactly one correct result per instance."""
    instances = add_instances(count, seed=count)
    outputs = grpc.ok(grpc.predict("batching", "add_fixed", instances), count)
    assert_sums(outputs, instances)


@pytest.mark.parametrize("count", [1, FIXED_BATCH + 1, 3 * FIXED_BATCH + 1])
def test_fixed_batch_padding_client(make_client: Callable[..., Any], count: int) -> None:
    """The same through our Client."""
    instances = add_instances(count, seed=100 + count)
    result = make_client("batching", "add_fixed").infer(instances)
    assert isinstance(result, list), result
    assert_sums(result, instances)


def test_fixed_batch_rest(rest: Rest) -> None:
    """REST float lists (float32) through the padded model."""
    instances = add_instances(FIXED_BATCH + 1, seed=7)
    body = rest.predict("batching", "add_fixed", [{k: v.tolist() for k, v in inst.items()} for inst in instances])
    assert len(body["instances"]) == len(instances)
    for out, inst in zip(body["instances"], instances, strict=True):
        np.testing.assert_array_equal(np.array(out["y"], dtype=np.float32), inst["x1"] + inst["x2"])


@pytest.mark.parametrize("count", [1, DYNAMIC_MAX - 1, DYNAMIC_MAX, DYNAMIC_MAX + 1, 10])
def test_dynamic_batch(grpc: Grpc, count: int) -> None:
    """A symbolic batch dim splits into batches of at most max_batch_size; results stay in order."""
    instances = add_instances(count, seed=200 + count)
    outputs = grpc.ok(grpc.predict("batching", "add_dynamic", instances), count)
    assert_sums(outputs, instances)


def test_concurrent_requests_share_batches_correctly(grpc: Grpc) -> None:
    """Requests from several threads are batched together; every request still gets its own results."""

    def one_request(seed: int) -> tuple[list[dict[str, np.ndarray]], Any]:
        instances = add_instances(1 + seed % 6, seed=seed)
        method = "add_fixed" if seed % 2 else "add_dynamic"
        return instances, grpc.predict("batching", method, instances)

    with ThreadPoolExecutor(max_workers=8) as pool:
        done = list(pool.map(one_request, range(40)))
    for instances, reply in done:
        assert_sums(grpc.ok(reply, len(instances)), instances)


def test_instance_shape_is_not_compared_only_size(grpc: Grpc) -> None:
    """A [1,3] instance fills a [3] slot (same bytes and dtype); the output takes the model's shape [3]."""
    x1 = np.array([[1, 2, 3]], dtype=np.float32)
    x2 = np.array([[10, 20, 30]], dtype=np.float32)
    outputs = grpc.ok(grpc.predict("batching", "add_fixed", [{"x1": x1, "x2": x2}]), 1)
    assert outputs[0]["y"].shape == (3,)
    np.testing.assert_array_equal(outputs[0]["y"], [11, 22, 33])


def test_without_batch_dim_model(grpc: Grpc, make_client: Callable[..., Any]) -> None:
    """`with_batch_dim=False`: every instance carries the model's whole tensors and runs alone."""
    rng = np.random.default_rng(3)
    instances = [
        {"a": rng.normal(size=(2, 3)).astype(np.float32), "b": rng.normal(size=(3, 2)).astype(np.float32)}
        for _ in range(3)
    ]
    outputs = grpc.ok(grpc.predict("batching", "matmul", instances), 3)
    for out, inst in zip(outputs, instances, strict=True):
        assert out["c"].shape == (2, 2)
        np.testing.assert_allclose(out["c"], inst["a"] @ inst["b"], rtol=1e-5)
    result = make_client("batching", "matmul").infer(instances[:1])
    np.testing.assert_allclose(result[0]["c"], instances[0]["a"] @ instances[0]["b"], rtol=1e-5)


@pytest.mark.parametrize("count", [1, 3, FIXED_BATCH + 1])
def test_without_batch_dim_inputs_same_bias(grpc: Grpc, count: int) -> None:
    """An unbatched input (`without_batch_dim_inputs=1`) is fed whole: y = x + bias per instance."""
    bias = np.array([100, 200, 300], dtype=np.float32) * count
    xs = [np.array([i, 2 * i, 3 * i], dtype=np.float32) for i in range(count)]
    outputs = grpc.ok(grpc.predict("batching", "bias_add", [{"x": x, "bias": bias} for x in xs]), count)
    for out, x in zip(outputs, xs, strict=True):
        assert out["y"].shape == (3,)
        np.testing.assert_array_equal(out["y"], x + bias)


def test_without_batch_dim_inputs_come_from_first_instance(grpc: Grpc) -> None:
    """The unbatched input of a batch is taken from its first instance (MindSpore surprise 3).

    Instance 0 always starts a batch, so it uses its own bias; every later instance uses the bias of the instance
    that started its batch, which is at or before it (never a later one, never a stacked mix).
    """
    biases = [np.full(3, 1000 * (i + 1), dtype=np.float32) for i in range(3)]
    xs = [np.array([i, i, i], dtype=np.float32) for i in range(3)]
    reply = grpc.predict("batching", "bias_add", [{"x": x, "bias": b} for x, b in zip(xs, biases, strict=True)])
    outputs = grpc.ok(reply, 3)
    used = [float((out["y"] - x)[0]) for out, x in zip(outputs, xs, strict=True)]
    assert used[0] == 1000
    for i, value in enumerate(used):
        assert value in {1000 * (j + 1) for j in range(i + 1)}, used


def test_bias_changes_between_requests(grpc: Grpc) -> None:
    """Consecutive requests with different unbatched values each get their own."""
    x = np.array([1, 2, 3], dtype=np.float32)
    for bias_value in (5.0, -7.0, 0.25):
        bias = np.full(3, bias_value, dtype=np.float32)
        outputs = grpc.ok(grpc.predict("batching", "bias_add", [{"x": x, "bias": bias}] * 2), 2)
        for out in outputs:
            np.testing.assert_array_equal(out["y"], x + bias)
