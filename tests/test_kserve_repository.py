"""The Open Inference Protocol's model-repository extension: index, load, reload and unload servables of the served
directory at run time, over REST and gRPC with tritonclient, without dropping requests to other servables.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import models
import numpy as np
import pytest
import requests
from conftest import RPC_TIMEOUT_S, ServerProcess, wait_for, worker_pids

EXPLICIT = ["--model-control-mode", "explicit"]

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

ADD_CONFIG = """
from rustserve.server import register

model = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=True)


@register.register_method(output_names=["y"])
def add(x1, x2):
    return register.add_stage(model, x1, x2, outputs_count=1)
"""

SLOW_CONFIG = """
import time

from rustserve.server import register


def slow(x):
    time.sleep(1.0)
    return x


@register.register_method(output_names=["y"])
def echo(x):
    return register.add_stage(slow, x, outputs_count=1)
"""

BROKEN_CONFIG = """
raise ValueError("this config is broken on purpose")
"""


def write_add(root: Path, name: str, versions: dict[int, float]) -> None:
    """An `add` servable (symbolic batch, width 2) whose version v computes x1 + x2 + versions[v]."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "servable_config.py").write_text(ADD_CONFIG.lstrip())
    for version, offset in versions.items():
        (folder / str(version)).mkdir(exist_ok=True)
        models.build_add(folder / str(version) / "add.onnx", batch=None, offset=offset)


def add_inputs(module: Any, batch: int = 2) -> tuple[list[Any], np.ndarray]:
    x = np.arange(batch * 2, dtype=np.float32).reshape(batch, 2)
    inputs = []
    for name in ("x1", "x2"):
        item = module.InferInput(name, [batch, 2], "FP32")
        item.set_data_from_numpy(x)
        inputs.append(item)
    return inputs, x + x


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "repository"
    write_add(folder, "a", {1: 0.0})
    return folder


@pytest.fixture
def served(root: Path, start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(root, extra=EXPLICIT)


@pytest.fixture
def http(served: ServerProcess) -> Iterator[Any]:
    client = httpclient.InferenceServerClient(
        f"127.0.0.1:{served.rest_port}", connection_timeout=RPC_TIMEOUT_S, network_timeout=RPC_TIMEOUT_S
    )
    yield client
    client.close()


def index(client: Any) -> list[tuple[str, str, str]]:
    return [(e["name"], e.get("version", ""), e["state"]) for e in client.get_model_repository_index()]


def test_load_reload_and_unload_over_rest(http: Any, served: ServerProcess, root: Path) -> None:
    assert index(http) == [("a", "1", "READY")]
    write_add(root, "b", {1: 0.0})
    assert index(http) == [("a", "1", "READY"), ("b", "", "UNAVAILABLE")]
    with pytest.raises(InferenceServerException) as info:
        http.get_model_metadata("b")
    assert info.value.status() == "404"

    http.load_model("b")
    assert index(http) == [("a", "1", "READY"), ("b", "1", "READY")]
    inputs, expected = add_inputs(httpclient)
    np.testing.assert_allclose(http.infer("b", inputs).as_numpy("y"), expected)
    assert http.is_model_ready("b.add")

    # A reload picks up what changed on disk: here a new version directory.
    write_add(root, "b", {2: 100.0})
    http.load_model("b.add")
    assert http.get_model_metadata("b")["versions"] == ["1", "2"]
    np.testing.assert_allclose(http.infer("b", inputs).as_numpy("y"), expected + 100)
    np.testing.assert_allclose(http.infer("b", inputs, model_version="1").as_numpy("y"), expected)

    http.unload_model("b")
    assert not http.is_model_ready("b")
    with pytest.raises(InferenceServerException) as info:
        http.infer("b", inputs)
    assert info.value.status() == "404"
    assert index(http) == [("a", "1", "READY"), ("b", "", "UNAVAILABLE")]
    ready_only = requests.post(f"{served.rest_base}/v2/repository/index", json={"ready": True}, timeout=RPC_TIMEOUT_S)
    assert [e["name"] for e in ready_only.json()] == ["a"]
    np.testing.assert_allclose(http.infer("a", inputs).as_numpy("y"), expected)


def test_repository_errors(http: Any, root: Path) -> None:
    with pytest.raises(InferenceServerException) as info:
        http.load_model("nope")
    assert info.value.status() == "404"
    assert "model 'nope' is not in the model repository of this server" in info.value.message()
    assert "holds" not in info.value.message()  # the directory's contents are not the client's business

    (root / "c").mkdir()
    (root / "c" / "servable_config.py").write_text(BROKEN_CONFIG)
    with pytest.raises(InferenceServerException) as info:
        http.load_model("c")
    assert info.value.status() == "400"
    assert "failed to load 'c'" in info.value.message()
    assert "this config is broken on purpose" in info.value.message()

    with pytest.raises(InferenceServerException) as info:
        http.load_model("a", config='{"max_batch_size": 8}')
    assert info.value.status() == "400"
    assert "load parameter 'config' is not supported" in info.value.message()

    with pytest.raises(InferenceServerException) as info:
        http.unload_model("c")
    assert info.value.status() == "404"
    # Nothing of that disturbed the loaded servable.
    inputs, expected = add_inputs(httpclient)
    np.testing.assert_allclose(http.infer("a.add", inputs).as_numpy("y"), expected)


def test_grpc_repository_calls(served: ServerProcess, root: Path) -> None:
    client = grpcclient.InferenceServerClient(served.grpc_address)
    try:
        write_add(root, "g", {3: 1.0})
        entries = client.get_model_repository_index(as_json=True)["models"]
        assert {(e["name"], e.get("state")) for e in entries} == {("a", "READY"), ("g", "UNAVAILABLE")}
        client.load_model("g")
        inputs, expected = add_inputs(grpcclient, batch=3)
        result = client.infer("g", inputs)
        np.testing.assert_allclose(result.as_numpy("y"), expected + 1)
        assert result.get_response().model_version == "3"
        client.unload_model("g")
        assert not client.is_model_ready("g")
        with pytest.raises(InferenceServerException) as info:
            client.unload_model("g")
        assert info.value.status() == "StatusCode.NOT_FOUND"
    finally:
        client.close()


def test_unload_and_reload_do_not_drop_requests(http: Any, served: ServerProcess, root: Path) -> None:
    write_add(root, "b", {1: 0.0})
    (root / "slow").mkdir()
    (root / "slow" / "servable_config.py").write_text(SLOW_CONFIG.lstrip())
    http.load_model("slow")

    # A request that is running when its servable is unloaded finishes normally.
    slow_result: dict[str, Any] = {}

    def call_slow() -> None:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{served.rest_port}", network_timeout=RPC_TIMEOUT_S)
        item = httpclient.InferInput("x", [2], "FP32")
        item.set_data_from_numpy(np.array([1.5, 2.5], np.float32))
        try:
            slow_result["y"] = client.infer("slow", [item]).as_numpy("y")
        except Exception as exc:
            slow_result["error"] = exc
        finally:
            client.close()

    slow_thread = threading.Thread(target=call_slow)
    slow_thread.start()
    time.sleep(0.3)
    http.unload_model("slow")
    slow_thread.join(RPC_TIMEOUT_S)
    assert "error" not in slow_result, slow_result
    np.testing.assert_allclose(slow_result["y"], [1.5, 2.5])

    # Requests to servable a keep succeeding while b is loaded and unloaded over and over.
    stop = threading.Event()
    outcomes: list[str] = []

    def hammer() -> None:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{served.rest_port}", network_timeout=RPC_TIMEOUT_S)
        inputs, expected = add_inputs(httpclient)
        try:
            while not stop.is_set():
                try:
                    got = client.infer("a", inputs).as_numpy("y")
                    outcomes.append("ok" if np.allclose(got, expected) else f"wrong {got}")
                except Exception as exc:
                    outcomes.append(f"error {exc}")
        finally:
            client.close()

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        for _ in range(4):
            http.load_model("b")
            http.unload_model("b")
    finally:
        stop.set()
        worker.join(RPC_TIMEOUT_S)
    assert outcomes, "the background client made no request"
    assert set(outcomes) == {"ok"}, [o for o in outcomes if o != "ok"][:3]


PID_CONFIG = """
import os

import numpy as np

from rustserve.server import register


def pid(x):
    return np.array([os.getpid()], np.int64)


@register.register_method(output_names=["pid"])
def whoami(x):
    return register.add_stage(pid, x, outputs_count=1)
"""


def workers_of(server: ServerProcess) -> set[int]:
    """Pids of the server's Python worker processes, any servable."""
    return set(worker_pids(server.proc.pid, None))


def test_repository_loads_get_worker_processes(
    root: Path, start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """With --num-parallel-workers 3, a servable loaded through the repository gets its three worker processes, which
    alone answer its Python stages; a reload replaces them and an unload stops them."""
    script = tmp_path / "serve.sh"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m rustserve "$@" --num-parallel-workers 3\n')
    script.chmod(0o755)
    server = start_server(root, command=[str(script)], extra=EXPLICIT)
    assert workers_of(server) == set()  # `a` has no Python stage: no workers
    folder = root / "who"
    folder.mkdir()
    (folder / "servable_config.py").write_text(PID_CONFIG.lstrip())
    load = requests.post(f"{server.rest_base}/v2/repository/models/who/load", timeout=RPC_TIMEOUT_S)
    assert load.status_code == 200, load.text
    first = workers_of(server)
    assert len(first) == 3, first

    def answered_pids(calls: int) -> set[int]:
        """Pids that answered `calls` concurrent requests (each stage call goes to an idle executor)."""
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
        seen: set[int] = set()

        def call() -> None:
            reply = requests.post(f"{server.rest_base}/v2/models/who/infer", json=body, timeout=RPC_TIMEOUT_S)
            assert reply.status_code == 200, reply.text
            seen.add(reply.json()["outputs"][0]["data"][0])

        threads = [threading.Thread(target=call) for _ in range(calls)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return seen

    assert answered_pids(12) <= first, "every call should run in a worker process, none in the server"
    load = requests.post(f"{server.rest_base}/v2/repository/models/who/load", timeout=RPC_TIMEOUT_S)
    assert load.status_code == 200, load.text
    wait_for(lambda: len(workers_of(server)) == 3 and not workers_of(server) & first, "the reload's workers")
    unload = requests.post(f"{server.rest_base}/v2/repository/models/who/unload", timeout=RPC_TIMEOUT_S)
    assert unload.status_code == 200, unload.text
    wait_for(lambda: workers_of(server) == set(), "the unload to stop the workers")


TRACKED_CONFIG = """
import weakref

import probe_registry
from rustserve.server import register


def echo_stage(x):
    return x


probe_registry.STAGES.append(weakref.ref(echo_stage))


@register.register_method(output_names=["y"])
def echo(x):
    return register.add_stage(echo_stage, x, outputs_count=1)
"""

PROBE_CONFIG = """
import gc

import numpy as np

import probe_registry
from rustserve.server import register


def count_dead(x):
    gc.collect()
    return np.array([sum(ref() is None for ref in probe_registry.STAGES), len(probe_registry.STAGES)], np.int64)


@register.register_method(output_names=["dead"])
def dead(x):
    return register.add_stage(count_dead, x, outputs_count=1)
"""


def test_reload_releases_the_old_stage_functions(tmp_path: Path, start_server: Callable[..., ServerProcess]) -> None:
    """A reload swaps in freshly imported stage functions; once the old version is gone, the server no longer holds
    its functions, so the old config module can be collected (seen through weak references)."""
    root = tmp_path / "repository"
    root.mkdir()
    (root / "probe_registry.py").write_text("STAGES = []\n")
    for name, config in (("tracked", TRACKED_CONFIG), ("probe", PROBE_CONFIG)):
        (root / name).mkdir()
        (root / name / "servable_config.py").write_text(config.lstrip())
    server = start_server(root, extra=EXPLICIT)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1.0]}]}

    def dead_and_total() -> list[int]:
        reply = requests.post(f"{server.rest_base}/v2/models/probe/infer", json=body, timeout=RPC_TIMEOUT_S)
        assert reply.status_code == 200, reply.text
        return list(reply.json()["outputs"][0]["data"])

    assert dead_and_total() == [0, 1]
    for _ in range(2):
        load = requests.post(f"{server.rest_base}/v2/repository/models/tracked/load", timeout=RPC_TIMEOUT_S)
        assert load.status_code == 200, load.text
    # Three imports; the two replaced versions are dropped on a blocking thread, then their functions are released.
    wait_for(lambda: dead_and_total() == [2, 3], "the replaced versions' stage functions to be released")
    reply = requests.post(f"{server.rest_base}/v2/models/tracked/infer", json=body, timeout=RPC_TIMEOUT_S)
    assert reply.status_code == 200 and reply.json()["outputs"][0]["data"] == [1.0], reply.text
