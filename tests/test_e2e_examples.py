"""The shipped examples: a server on a copy of examples/servables, driven by the example clients' own functions."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import requests
from conftest import RPC_TIMEOUT_S, ServerProcess

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    """Imports examples/<name>.py as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def examples_server(tmp_path: Path, start_server: Callable[..., ServerProcess]) -> Iterator[ServerProcess]:
    """A server on a copy of examples/servables (the tree itself stays untouched)."""
    servables = shutil.copytree(EXAMPLES / "servables", tmp_path / "servables")
    yield start_server(servables)


def test_build_models_reproduces_the_committed_models(tmp_path: Path) -> None:
    """examples/build_models.py rebuilds the committed models (add byte for byte, digits the same graph); reruns
    change nothing (idempotent)."""
    import onnx

    build = load_example("build_models")
    assert build.main(["--out", str(tmp_path)]) == 0
    committed = EXAMPLES / "servables"
    assert (committed / "add/1/add.onnx").read_bytes() == (tmp_path / "add/1/add.onnx").read_bytes()
    old, new = (onnx.load(str(root / "digits/1/digits.onnx")) for root in (committed, tmp_path))
    assert [n.op_type for n in old.graph.node] == [n.op_type for n in new.graph.node]
    assert [list(t.dims) for t in old.graph.initializer] == [list(t.dims) for t in new.graph.initializer]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.onnx")}
    assert build.main(["--out", str(tmp_path)]) == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.onnx")} == stamps


def test_add_client(examples_server: ServerProcess) -> None:
    """add_client.py's calls: add_common adds float32 tensors, add_cast keeps the integer dtype."""
    add_client = load_example("add_client")
    common = add_client.run_add_common(examples_server.grpc_address)
    assert len(common) == 3
    for x1, x2, y in common:
        assert y.dtype == np.float32 and y.shape == (2, 2)
        np.testing.assert_array_equal(y, x1 + x2)
    cast = add_client.run_add_cast(examples_server.grpc_address)
    assert len(cast) == 2
    for x1, x2, y in cast:
        assert y.dtype == np.int32
        np.testing.assert_array_equal(y, x1 + x2)
    assert add_client.main(["--address", examples_server.grpc_address]) == 0


def test_digits_client_accuracy(examples_server: ServerProcess) -> None:
    """digits_client.py renders held-out digits to PNG and reaches at least 0.9 accuracy through the server."""
    digits_client = load_example("digits_client")
    accuracy = digits_client.evaluate(examples_server.grpc_address)
    assert accuracy >= digits_client.MIN_ACCURACY == 0.9
    assert digits_client.main(["--address", examples_server.grpc_address, "--limit", "40"]) == 0


def test_digits_over_rest(examples_server: ServerProcess) -> None:
    """The digits method over REST with a b64 PNG: label (int) and probability (float)."""
    import base64

    digits_client = load_example("digits_client")
    images, labels = digits_client.held_out_digits(limit=5)
    instances = [{"image": {"b64": base64.b64encode(digits_client.render_png(im)).decode()}} for im in images]
    response = requests.post(
        f"{examples_server.rest_base}/model/digits:predict", json={"instances": instances}, timeout=RPC_TIMEOUT_S
    )
    assert response.status_code == 200
    outputs = response.json()["instances"]
    assert len(outputs) == 5
    for output in outputs:
        assert isinstance(output["label"], int) and 0 <= output["label"] <= 9
        assert 0.0 < output["probability"] <= 1.0
    assert sum(out["label"] == int(label) for out, label in zip(outputs, labels, strict=True)) >= 4
