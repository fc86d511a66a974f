"""Who may load and unload servables at run time (Triton's model control modes), and what readiness says after.

`--model-control-mode none` (the default) refuses v2 load and unload on both wires, and so does a server started
from a script; `explicit` allows them, for the servables named by `--servable` only, and `--repository-api-key`
then requires `authorization: Bearer <key>`. Unloading a servable the server was started with makes it not ready
until it is loaded again. Error texts never show the servable directory.
"""

from __future__ import annotations

import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import requests
from conftest import RPC_TIMEOUT_S, ServerProcess, expect_start_failure
from test_kserve_repository import BROKEN_CONFIG, add_inputs, write_add
from test_start_isolation import _grpc_health

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

EXPLICIT = ["--model-control-mode", "explicit"]
KEY = "s3cret-key"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "repository"
    write_add(folder, "a", {1: 0.0})
    return folder


def post(server: ServerProcess, path: str, headers: dict[str, str] | None = None, **body: object) -> requests.Response:
    return requests.post(f"{server.rest_base}{path}", json=body or None, headers=headers, timeout=RPC_TIMEOUT_S)


def grpc_error(call: Callable[[], object]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


def assert_serves_a(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.rest_port}", network_timeout=RPC_TIMEOUT_S)
    try:
        inputs, expected = add_inputs(httpclient)
        assert (client.infer("a", inputs).as_numpy("y") == expected).all()
    finally:
        client.close()


def test_model_control_none_refuses_load_and_unload(root: Path, start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(root)
    write_add(root, "b", {1: 0.0})
    for action in ("load", "unload"):
        for name in ("a", "b"):
            reply = post(server, f"/v2/repository/models/{name}/{action}")
            assert reply.status_code == 403, reply.text
            assert "model load and unload are disabled on this server" in reply.json()["error"]
            assert "--model-control-mode explicit" in reply.json()["error"]
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        assert grpc_error(lambda: client.unload_model("a")).status() == "StatusCode.PERMISSION_DENIED"
        assert grpc_error(lambda: client.load_model("b")).status() == "StatusCode.PERMISSION_DENIED"
        # The index still lists what is served, and nothing of the directory that is not.
        entries = client.get_model_repository_index(as_json=True)["models"]
        assert [(e["name"], e["state"]) for e in entries] == [("a", "READY")]
        assert client.is_server_ready()
    finally:
        client.close()
    assert_serves_a(server)


SCRIPT = """
import sys
from rustserve import server

server.start_servables(server.ServableStartConfig({root!r}, "a"))
server.start_grpc_server(sys.argv[sys.argv.index("--grpc") + 1])
server.start_restful_server(sys.argv[sys.argv.index("--rest") + 1])
print("rustserve: serving (script)", flush=True)
"""


def test_a_server_started_from_a_script_refuses_unload(
    root: Path, tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    script = tmp_path / "serve.py"
    script.write_text(textwrap.dedent(SCRIPT).format(root=str(root)))
    server = start_server(root, command=[sys.executable, str(script)])
    reply = post(server, "/v2/repository/models/a/unload")
    assert reply.status_code == 403, reply.text
    assert requests.get(f"{server.rest_base}/v2/health/ready", timeout=RPC_TIMEOUT_S).status_code == 200
    assert_serves_a(server)


def test_the_api_key_guards_load_and_unload(root: Path, start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(root, extra=[*EXPLICIT, "--repository-api-key", KEY])
    write_add(root, "b", {1: 0.0})
    for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": KEY}, {"x-api-key": KEY}):
        for action in ("load", "unload"):
            reply = post(server, f"/v2/repository/models/a/{action}", headers=headers)
            assert reply.status_code == 401, (headers, reply.text)
            assert "repository API key" in reply.json()["error"]
    assert_serves_a(server)
    reply = post(server, "/v2/repository/models/b/load", headers={"authorization": f"bearer {KEY}"})
    assert reply.status_code == 200, reply.text
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        assert grpc_error(lambda: client.unload_model("b")).status() == "StatusCode.UNAUTHENTICATED"
        wrong = {"authorization": "Bearer s3cret-kez"}
        assert grpc_error(lambda: client.unload_model("b", headers=wrong)).status() == "StatusCode.UNAUTHENTICATED"
        assert client.is_model_ready("b")
        client.unload_model("b", headers={"authorization": f"Bearer {KEY}"})
        assert not client.is_model_ready("b")
        client.load_model("b", headers={"authorization": f"Bearer {KEY}"})
        assert client.is_model_ready("b")
    finally:
        client.close()


def test_the_api_key_needs_explicit_mode(root: Path, tmp_path: Path) -> None:
    server = expect_start_failure(root, tmp_path / "logs", extra=["--repository-api-key", KEY])
    assert server.proc.returncode == 1
    assert "--repository-api-key needs --model-control-mode explicit" in server.stderr_text()


def test_only_the_servables_named_at_start_can_be_loaded(
    root: Path, tmp_path: Path, start_server: Callable[..., ServerProcess]
) -> None:
    marker = tmp_path / "imported"
    (root / "spy").mkdir()
    (root / "spy" / "servable_config.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    server = start_server(root, extra=[*EXPLICIT, "--servable", "a"])
    reply = post(server, "/v2/repository/models/spy/load")
    assert reply.status_code == 404, reply.text
    assert "model 'spy' is not in the model repository of this server" in reply.json()["error"]
    assert not marker.exists(), "the servable_config.py of a servable not named by --servable was imported"
    index = post(server, "/v2/repository/index").json()
    assert [entry["name"] for entry in index] == ["a"]
    assert post(server, "/v2/repository/models/a/load").status_code == 200


def test_readiness_is_false_while_a_started_servable_is_unloaded(
    root: Path, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server(root, extra=EXPLICIT)
    client = grpcclient.InferenceServerClient(server.grpc_address)

    def grpc_health_becomes(status: int) -> bool:
        deadline = time.monotonic() + 10  # grpc.health.v1 is re-checked once a second
        while _grpc_health(server) != status and time.monotonic() < deadline:
            time.sleep(0.1)
        return _grpc_health(server) == status

    try:
        assert client.is_server_ready() and _grpc_health(server) == 1
        assert post(server, "/v2/repository/models/a/unload").status_code == 200
        ready = requests.get(f"{server.rest_base}/v2/health/ready", timeout=RPC_TIMEOUT_S)
        assert ready.status_code == 503
        assert "servable(s) 'a' not loaded" in ready.json()["error"]
        assert not client.is_server_ready()
        assert grpc_health_becomes(2)
        assert client.is_server_live()

        assert post(server, "/v2/repository/models/a/load").status_code == 200
        assert requests.get(f"{server.rest_base}/v2/health/ready", timeout=RPC_TIMEOUT_S).json() == {"ready": True}
        assert client.is_server_ready()
        assert grpc_health_becomes(1)
    finally:
        client.close()


def test_repository_errors_show_no_directory_and_load_parameters_ignore_case(
    root: Path, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server(root, extra=EXPLICIT)
    (root / "broken").mkdir()
    (root / "broken" / "servable_config.py").write_text(BROKEN_CONFIG)
    (root / "absent").mkdir()
    (root / "absent" / "servable_config.py").write_text((root / "a" / "servable_config.py").read_text())
    (root / "absent" / "1").mkdir()
    for name, cause in (("broken", "this config is broken on purpose"), ("absent", "add.onnx")):
        reply = post(server, f"/v2/repository/models/{name}/load")
        assert reply.status_code == 400, reply.text
        text = reply.json()["error"]
        assert f"failed to load '{name}'" in text and cause in text
        assert str(root) not in text and str(root.parent) not in text, text
    for key in ("Config", "CONFIG", "FILE:1/add.onnx", "File:x"):
        reply = post(server, "/v2/repository/models/a/load", parameters={key: "{}"})
        assert reply.status_code == 400, reply.text
        assert f"load parameter '{key}' is not supported" in reply.json()["error"]
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for key in ("Config", "FILE:x"):
            request = service_pb2.RepositoryModelLoadRequest(model_name="a")
            request.parameters[key].string_param = "{}"
            with pytest.raises(grpc.RpcError) as info:
                stub.RepositoryModelLoad(request, timeout=RPC_TIMEOUT_S)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"load parameter '{key}' is not supported" in str(info.value.details())
    assert_serves_a(server)
