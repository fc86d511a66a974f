"""Start-failure isolation: with several servables, one that fails to load does not stop the others.

`rustserve start` loads servables one by one. A servable whose servable_config.py fails to import, or whose model
file is missing or not a valid ONNX model, is reported on stderr (servable, file and cause) and not served; the
others serve. While any servable failed, `/v2/health/ready` (and gRPC ServerReady) say "not ready", the failed
servable's model readiness answers 503 with its error, and the repository index lists it as UNAVAILABLE with the
reason. A repository load after the fix makes it ready. `--strict` restores all-or-nothing (exit 1), and a start
where nothing loads exits 1 either way. The Python API (`server.start_servables`) stays all-or-nothing, as in
MindSpore Serving.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import models
import numpy as np
import pytest
import requests
from conftest import ADD_CONFIG, RPC_TIMEOUT_S, Grpc, ServerProcess, expect_start_failure

BROKEN_IMPORT = 'raise RuntimeError("boom at import")\n'

STRICT_LAUNCHER = """
import sys

from rustserve.cli import main

sys.exit(main([*sys.argv[1:], "--strict"]))
"""


def _tree(root: Path, make_servable: Callable[..., Path]) -> Path:
    """`add` (good), `broken` (import fails), `absent` (model file missing), `garbage` (model file not ONNX)."""
    good = make_servable("add", ADD_CONFIG, root=root)
    models.build_add(good / "1" / "add.onnx")
    make_servable("broken", BROKEN_IMPORT, versions=(), root=root)
    make_servable("absent", ADD_CONFIG, root=root)
    garbage = make_servable("garbage", ADD_CONFIG, root=root)
    (garbage / "1" / "add.onnx").write_bytes(b"this is not an ONNX model")
    return root


def _grpc_health(server: ServerProcess) -> int:
    """grpc.health.v1 Check of the whole server (service ""): 1 SERVING, 2 NOT_SERVING."""
    import grpc

    with grpc.insecure_channel(server.grpc_address) as channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check", request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        reply = check(b"", timeout=RPC_TIMEOUT_S)  # HealthCheckRequest{}; the reply is HealthCheckResponse{status}
    assert reply[:1] == b"\x08", reply
    return reply[1]


def _get(server: ServerProcess, path: str) -> requests.Response:
    return requests.get(server.rest_base + path, timeout=RPC_TIMEOUT_S)


def test_good_servables_serve_next_to_failed_ones(
    tmp_path: Path,
    make_servable: Callable[..., Path],
    start_server: Callable[..., ServerProcess],
    pb2_modules: tuple[Any, Any],
) -> None:
    """Failures are named on stderr, the good servable answers, readiness and the index name the failed ones."""
    tree = _tree(tmp_path / "servables", make_servable)
    server = start_server(tree)
    stderr = server.stderr_text()
    assert "servable 'broken' not served" in stderr and "boom at import" in stderr, stderr
    assert "servable 'absent' not served" in stderr and "add.onnx" in stderr, stderr
    assert "servable 'garbage' not served" in stderr, stderr
    assert "rustserve: serving 1 servable version(s) (add v1)" in "".join(server.stdout_lines)

    grpc = Grpc(*pb2_modules, server.grpc_address)
    try:
        x = np.ones((2, 2), np.float32)
        outputs = grpc.ok(grpc.predict("add", "add_common", [{"x1": x, "x2": x}]), 1)
        np.testing.assert_array_equal(outputs[0]["y"], x + x)
        grpc.assert_failed(
            grpc.predict("broken", "m", [{"x1": x}]),
            2,
            "Request servable(broken) method(m) , servable is not available",
        )
    finally:
        grpc.close()

    ready = _get(server, "/v2/health/ready")
    assert ready.status_code == 503, ready.text
    assert "'absent', 'broken', 'garbage' failed to load" in ready.json()["error"]
    assert _get(server, "/v2/health/live").status_code == 200
    assert _grpc_health(server) == 2  # NOT_SERVING, like v2 ServerReady
    assert _get(server, "/v2/models/add.add_common/ready").status_code == 200
    model_ready = _get(server, "/v2/models/broken/ready")
    assert model_ready.status_code == 503, model_ready.text
    assert "servable 'broken' failed to load" in model_ready.json()["error"]
    assert "boom at import" in model_ready.json()["error"]

    index = requests.post(server.rest_base + "/v2/repository/index", json={}, timeout=RPC_TIMEOUT_S).json()
    states = {entry["name"]: entry for entry in index}
    assert states["add"]["state"] == "READY"
    for name in ("broken", "absent", "garbage"):
        assert states[name]["state"] == "UNAVAILABLE", states
        assert states[name]["reason"].startswith("failed to load: "), states[name]
    assert "boom at import" in states["broken"]["reason"]
    assert "add.onnx" in states["absent"]["reason"]

    grpc_v2 = pytest.importorskip("tritonclient.grpc")
    client = grpc_v2.InferenceServerClient(server.grpc_address)
    try:
        assert client.is_server_live()
        assert not client.is_server_ready()
        assert client.is_model_ready("add.add_common")
        assert not client.is_model_ready("broken")
    finally:
        client.close()


def test_a_fixed_servable_becomes_ready_after_a_repository_load(
    tmp_path: Path, make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess]
) -> None:
    """Fixing the file and loading it through the repository API clears the failure and the server turns ready."""
    root = tmp_path / "servables"
    good = make_servable("add", ADD_CONFIG, root=root)
    models.build_add(good / "1" / "add.onnx")
    broken = make_servable("broken", BROKEN_IMPORT, versions=(), root=root)
    server = start_server(root, extra=["--model-control-mode", "explicit"])
    assert _get(server, "/v2/health/ready").status_code == 503
    assert _grpc_health(server) == 2

    (broken / "servable_config.py").write_text(ADD_CONFIG)
    (broken / "1").mkdir()
    models.build_add(broken / "1" / "add.onnx")
    load = requests.post(server.rest_base + "/v2/repository/models/broken/load", timeout=RPC_TIMEOUT_S)
    assert load.status_code == 200, load.text
    assert _get(server, "/v2/health/ready").json() == {"ready": True}
    assert _get(server, "/v2/models/broken.add_common/ready").status_code == 200
    # The gRPC health service re-checks once a second.
    deadline = time.monotonic() + 10
    while _grpc_health(server) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _grpc_health(server) == 1


def test_strict_start_fails_on_any_servable(tmp_path: Path, make_servable: Callable[..., Path]) -> None:
    """`--strict`: one failed servable fails the whole start (exit 1) with its file and cause on stderr."""
    root = tmp_path / "servables"
    good = make_servable("add", ADD_CONFIG, root=root)
    models.build_add(good / "1" / "add.onnx")
    make_servable("broken", BROKEN_IMPORT, versions=(), root=root)
    launcher = tmp_path / "strict.py"
    launcher.write_text(STRICT_LAUNCHER)
    server = ServerProcess(root, log_dir=tmp_path / "logs", command=[sys.executable, str(launcher)])
    assert not server.wait_ready(), server.describe()
    assert server.proc.returncode == 1, server.describe()
    stderr = server.stderr_text()
    assert "import broken.servable_config failed" in stderr and "boom at import" in stderr, stderr


def test_start_fails_when_no_servable_loads(tmp_path: Path, make_servable: Callable[..., Path]) -> None:
    """Without `--strict`, a start where every servable fails still exits 1, naming them."""
    root = tmp_path / "servables"
    make_servable("broken", BROKEN_IMPORT, versions=(), root=root)
    make_servable("absent", ADD_CONFIG, root=root)
    server = expect_start_failure(root, tmp_path / "logs")
    assert server.proc.returncode == 1, server.describe()
    stderr = server.stderr_text()
    assert "servable 'broken' not served" in stderr and "servable 'absent' not served" in stderr, stderr
    assert "no servable could be loaded" in stderr and "failed: absent, broken" in stderr, stderr
