"""Multi-stage methods: two models glued by Python stages, several methods per servable, Model.call, an MLP."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from conftest import Grpc, Rest


def xs(count: int) -> list[np.ndarray]:
    """`count` distinct float32 [3] inputs."""
    return [np.array([i, -2.5 * i, 0.5 + i], dtype=np.float32) for i in range(count)]


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_chain_two_models_and_python_glue(grpc: Grpc, count: int) -> None:
    """preprocess (x - 1) -> double -> glue (+ 10) -> plus_one -> postprocess: z = 2x + 9, total = sum(z)."""
    inputs = xs(count)
    outputs = grpc.ok(grpc.predict("pipeline", "chain", [{"x": x} for x in inputs]), count)
    for out, x in zip(outputs, inputs, strict=True):
        expected = 2 * x + 9
        assert out["z"].dtype == np.float32 and out["z"].shape == (3,)
        np.testing.assert_array_equal(out["z"], expected)
        assert out["total"].dtype == np.float64 and out["total"].shape == ()
        assert float(out["total"]) == pytest.approx(float(expected.sum()))


def test_chain_client_and_rest(make_client: Callable[..., Any], rest: Rest) -> None:
    """The chain through our Client and through REST gives the same values."""
    inputs = xs(3)
    result = make_client("pipeline", "chain").infer([{"x": x} for x in inputs])
    body = rest.predict("pipeline", "chain", [{"x": x.tolist()} for x in inputs])
    for got, json_out, x in zip(result, body["instances"], inputs, strict=True):
        np.testing.assert_array_equal(got["z"], 2 * x + 9)
        np.testing.assert_allclose(json_out["z"], 2 * x + 9)
        assert json_out["total"] == pytest.approx(float((2 * x + 9).sum()))


@pytest.mark.parametrize("wire", ["grpc", "rest"])
def test_stages_share_arrays_so_in_place_edits_are_seen_later(grpc: Grpc, rest: Rest, wire: str) -> None:
    """As in MindSpore, a stage's in-place edit of a value (a method input, an array a stage returned, a model output)
    is seen by the later stages and outputs that read it, and only within its own instance."""
    inputs = xs(3)
    if wire == "grpc":
        outputs = grpc.ok(grpc.predict("pipeline", "shared_edits", [{"x": x} for x in inputs]), 3)
    else:
        body = rest.predict("pipeline", "shared_edits", [{"x": x.tolist()} for x in inputs])
        outputs = [{k: np.asarray(v) for k, v in out.items()} for out in body["instances"]]
    for out, x in zip(outputs, inputs, strict=True):
        np.testing.assert_allclose(out["x"], x + 1)
        np.testing.assert_allclose(out["p"], x)  # (x - 1) + 1
        np.testing.assert_allclose(out["y"], 20 * (x + 1))
        assert float(out["total"]) == pytest.approx(float((20 * (x + 1)).sum()))


def test_several_methods_share_models(grpc: Grpc) -> None:
    """Methods of one servable use the same models independently: `double_only` is y = 2x."""
    inputs = xs(3)
    outputs = grpc.ok(grpc.predict("pipeline", "double_only", [{"x": x} for x in inputs]), 3)
    for out, x in zip(outputs, inputs, strict=True):
        np.testing.assert_array_equal(out["y"], 2 * x)


def test_method_returns_its_input_directly(grpc: Grpc, make_client: Callable[..., Any]) -> None:
    """`passthrough` returns the method input x unchanged next to a model output."""
    inputs = xs(3)
    outputs = grpc.ok(grpc.predict("pipeline", "passthrough", [{"x": x} for x in inputs]), 3)
    for out, x in zip(outputs, inputs, strict=True):
        assert out["x"].dtype == np.float32
        np.testing.assert_array_equal(out["x"], x)
        np.testing.assert_array_equal(out["y"], 2 * x)
    result = make_client("pipeline", "passthrough").infer({"x": inputs[2]})
    np.testing.assert_array_equal(result[0]["x"], inputs[2])


@pytest.mark.parametrize("count", [1, 3])
def test_model_call_inside_python_stage(grpc: Grpc, count: int) -> None:
    """Model.call with one instance, with a list of instances, and on a fixed-batch model."""
    inputs = xs(count)
    outputs = grpc.ok(grpc.predict("pipeline", "model_call", [{"x": x} for x in inputs]), count)
    for out, x in zip(outputs, inputs, strict=True):
        np.testing.assert_array_equal(out["single"], x + 1)
        np.testing.assert_array_equal(out["multi"], (x + 1) + (2 * x + 1))
        np.testing.assert_array_equal(out["doubled"], 2 * x)


def test_mlp_classifier_matches_onnxruntime(grpc: Grpc, servables_dir: Path) -> None:
    """The MLP servable's probabilities equal in-process ONNX Runtime's; the label is their argmax."""
    rng = np.random.default_rng(11)
    inputs = rng.normal(size=(10, 4)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(servables_dir / "mlp" / "1" / "mlp.onnx"), options)
    expected = session.run(None, {"x": inputs})[0]
    outputs = grpc.ok(grpc.predict("mlp", "classify", [{"x": x} for x in inputs]), len(inputs))
    for out, probs in zip(outputs, expected, strict=True):
        np.testing.assert_allclose(out["probs"], probs, rtol=1e-5, atol=1e-6)
        assert out["label"].dtype == np.int64 and out["label"].shape == ()
        assert int(out["label"]) == int(np.argmax(probs))
