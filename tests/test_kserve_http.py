"""Open Inference Protocol (KServe v2) over REST, driven by Triton's own `tritonclient.http` against the session server.

Covers health, server and model metadata, readiness, inference with JSON and binary tensors (FP32, INT64, BOOL,
FP16, BYTES), the batch split / join of batchable methods, model configuration, statistics and error statuses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import models
import numpy as np
import pytest
import requests
from conftest import RPC_TIMEOUT_S, ServerProcess

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def _client(session_server: ServerProcess) -> Iterator[Any]:
    client = httpclient.InferenceServerClient(
        f"127.0.0.1:{session_server.rest_port}", connection_timeout=RPC_TIMEOUT_S, network_timeout=RPC_TIMEOUT_S
    )
    yield client
    client.close()


@pytest.fixture
def client(server: ServerProcess, _client: Any) -> Any:
    """tritonclient.http bound to the session server's REST port."""
    return _client


def tensor(name: str, array: np.ndarray, datatype: str, binary: bool = True) -> Any:
    """An `InferInput` holding `array` (binary extension or JSON `data`)."""
    item = httpclient.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array, binary_data=binary)
    return item


def output(name: str, binary: bool = True) -> Any:
    return httpclient.InferRequestedOutput(name, binary_data=binary)


def v2(server: ServerProcess, path: str, verb: str = "GET", **kwargs: Any) -> requests.Response:
    return requests.request(verb, f"{server.rest_base}{path}", timeout=RPC_TIMEOUT_S, **kwargs)


def test_health_and_server_metadata(client: Any, server: ServerProcess) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "rustserve"
    assert {"binary_tensor_data", "model_configuration", "statistics", "model_repository"} <= set(
        metadata["extensions"]
    )
    assert v2(server, "/v2/health/live").status_code == 200
    assert v2(server, "/v2/health/ready").json() == {"ready": True}


def test_model_metadata_and_readiness(client: Any) -> None:
    add = client.get_model_metadata("add.add_common")
    assert add["versions"] == ["1", "2"]
    assert add["inputs"] == [
        {"name": "x1", "datatype": "FP32", "shape": [2, 2]},
        {"name": "x2", "datatype": "FP32", "shape": [2, 2]},
    ]
    assert add["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [2, 2]}]
    dynamic = client.get_model_metadata("batching.add_dynamic", "1")
    assert dynamic["inputs"][0] == {"name": "x1", "datatype": "FP32", "shape": [-1, 3]}
    # An unbatched model input (without_batch_dim_inputs) keeps its whole shape per instance.
    bias = client.get_model_metadata("batching.bias_add")
    assert [i["shape"] for i in bias["inputs"]] == [[-1, 3], [-1, 3]]
    # A servable with one method answers under its own name too; Python-only outputs are undeclared BYTES.
    mlp = client.get_model_metadata("mlp")
    assert mlp["name"] == "mlp"
    assert mlp["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert mlp["outputs"][0] == {"name": "label", "datatype": "BYTES", "shape": [-1, -1]}
    text = client.get_model_metadata("pystages.reverse_text")
    # Python stages only: dim 0 is the batch, the rest undeclared.
    assert text["inputs"] == [{"name": "s", "datatype": "BYTES", "shape": [-1, -1]}]
    assert client.is_model_ready("add.add_common")
    assert client.is_model_ready("add.add_common", "1")
    assert not client.is_model_ready("add.add_common", "3")
    assert not client.is_model_ready("add")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_versions_and_id(client: Any, binary: bool) -> None:
    x1 = np.array([[1, 2], [3, 4]], np.float32)
    x2 = np.full((2, 2), 0.5, np.float32)
    inputs = [tensor("x1", x1, "FP32", binary), tensor("x2", x2, "FP32", binary)]
    newest = client.infer("add.add_common", inputs, request_id="req-7", outputs=[output("y", binary)])
    assert newest.get_response()["id"] == "req-7"
    assert newest.get_response()["model_version"] == "2"
    np.testing.assert_allclose(newest.as_numpy("y"), x1 + x2 + 100)
    first = client.infer("add.add_common", inputs, model_version="1", outputs=[output("y", binary)])
    np.testing.assert_allclose(first.as_numpy("y"), x1 + x2)


@pytest.mark.parametrize(
    ("method", "datatype", "array"),
    [
        ("id_float32", "FP32", np.array([[1.5, -2.25, 3e-8], [0, 1, 2]], np.float32)),
        ("id_int64", "INT64", np.array([[2**40, -1, 0]], np.int64)),
        ("id_bool", "BOOL", np.array([[True, False, True], [False, False, True]])),
        ("id_float16", "FP16", np.array([[0.5, -1.25, 65504]], np.float16)),
        ("id_uint8", "UINT8", np.array([[0, 127, 255]], np.uint8)),
    ],
)
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_numeric_datatypes_round_trip(client: Any, method: str, datatype: str, array: np.ndarray, binary: bool) -> None:
    result = client.infer(f"dtypes.{method}", [tensor("x", array, datatype, binary)], outputs=[output("y", binary)])
    got = result.as_numpy("y")
    assert got.dtype == array.dtype
    np.testing.assert_array_equal(got, array)


def test_bytes_in_binary_and_json(client: Any, server: ServerProcess) -> None:
    blob = np.array([b"\x00ab\xff"], dtype=np.object_)
    result = client.infer("pystages.reverse_blob", [tensor("b", blob, "BYTES")])
    assert result.as_numpy("y").item() == b"\xffba\x00"
    # JSON BYTES are strings; content_type "str" hands the stage a Python str instead of bytes.
    body = {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "data": ["héllo"]}]}
    body["inputs"][0]["parameters"] = {"content_type": "str"}
    reply = v2(server, "/v2/models/pystages.reverse_text/infer", "POST", json=body)
    assert reply.status_code == 200, reply.text
    out = reply.json()["outputs"][0]
    assert out["datatype"] == "BYTES" and out["data"] == ["olléh"]
    assert out["parameters"]["content_type"] == "str"


def test_batch_is_split_into_instances_and_joined(client: Any) -> None:
    # max_batch_size 3: a batch of 5 still works (it runs as several model batches).
    x = np.arange(15, dtype=np.float32).reshape(5, 3)
    result = client.infer("batching.add_dynamic", [tensor("x1", x, "FP32"), tensor("x2", x * 10, "FP32")])
    np.testing.assert_allclose(result.as_numpy("y"), x * 11)
    # Fixed batch 4: 3 instances are padded by the batcher and answered without the padding rows.
    fixed = client.infer("batching.add_fixed", [tensor("x1", x[:3], "FP32"), tensor("x2", x[:3], "FP32")])
    np.testing.assert_allclose(fixed.as_numpy("y"), x[:3] * 2)
    # Python and model stages per instance; the Python stage's float per instance joins into an FP64 vector.
    chain = client.infer("pipeline.chain", [tensor("x", x[:4], "FP32")])
    np.testing.assert_allclose(chain.as_numpy("z"), 2 * x[:4] + 9)
    np.testing.assert_allclose(chain.as_numpy("total"), (2 * x[:4] + 9).sum(axis=1))
    assert chain.as_numpy("total").dtype == np.float64


def test_requested_outputs_only(client: Any) -> None:
    x = np.ones((2, 3), np.float32)
    result = client.infer("pipeline.passthrough", [tensor("x", x, "FP32")], outputs=[output("y", binary=False)])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["y"]
    np.testing.assert_allclose(result.as_numpy("y"), x * 2)
    assert result.as_numpy("x") is None


def test_non_batchable_method_takes_the_shapes_as_given(client: Any) -> None:
    big = np.zeros((1, 3_000_000), np.float32)  # 12 MB, binary extension; a Python-only method: dim 0 is the batch
    result = client.infer("pystages.describe_input", [tensor("x", big, "FP32")])
    assert result.as_numpy("kind").tolist() == [b"ndarray:float32:[3000000]"]
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones((3, 2), np.float32)
    matmul = client.infer("batching.matmul", [tensor("a", a, "FP32"), tensor("b", b, "FP32")])
    np.testing.assert_allclose(matmul.as_numpy("c"), a @ b)


def test_model_config(client: Any) -> None:
    fixed = client.get_model_config("batching.add_fixed")
    assert fixed["max_batch_size"] == 4
    assert "dynamic_batching" in fixed
    assert fixed["input"][0] == {
        "name": "x1",
        "data_type": "TYPE_FP32",
        "format": "FORMAT_NONE",
        "dims": [3],
        "is_shape_tensor": False,
        "allow_ragged_batch": False,
        "optional": False,
    }
    assert fixed["output"][0]["dims"] == [3]
    whole = client.get_model_config("add.add_common", "1")
    assert whole["max_batch_size"] == 0
    assert "dynamic_batching" not in whole
    assert whole["input"][0]["dims"] == [2, 2]
    text = client.get_model_config("pystages.reverse_text")
    assert text["input"][0]["data_type"] == "TYPE_STRING"


def _stats(client: Any, model: str) -> dict[str, Any]:
    (entry,) = client.get_inference_statistics(model)["model_stats"]
    return entry


def test_statistics_count_requests_instances_and_batch_sizes(client: Any) -> None:
    model = "dtypes.id_int16"
    before = _stats(client, model)
    for batch in (1, 3, 3):
        x = np.arange(batch * 3, dtype=np.int16).reshape(batch, 3)
        client.infer(model, [tensor("x", x, "INT16")])
    with pytest.raises(InferenceServerException):
        client.infer(model, [tensor("x", np.zeros((1, 2), np.int16), "INT16")])  # wrong width
    after = _stats(client, model)
    assert after["name"] == model and after["version"] == "1"
    assert int(after["execution_count"]) - int(before["execution_count"]) == 3
    assert int(after["inference_count"]) - int(before["inference_count"]) == 7
    success = after["inference_stats"]["success"]
    assert int(success["count"]) - int(before["inference_stats"]["success"]["count"]) == 3
    assert int(success["ns"]) > int(before["inference_stats"]["success"].get("ns", 0))
    fail = after["inference_stats"]["fail"]
    assert int(fail["count"]) - int(before["inference_stats"]["fail"].get("count", 0)) == 1
    sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in after["batch_stats"]}
    old = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in before["batch_stats"]}
    assert sizes.get(3, 0) - old.get(3, 0) == 2 and sizes.get(1, 0) - old.get(1, 0) == 1
    assert int(after["last_inference"]) > 0
    every = client.get_inference_statistics()["model_stats"]
    assert {"add.add_common", "dtypes.id_int16", "mlp.classify"} <= {e["name"] for e in every}
    versions = client.get_inference_statistics("add.add_common")["model_stats"]
    assert [e["version"] for e in versions] == ["1", "2"]


@pytest.mark.parametrize(
    ("path", "verb", "body", "status", "text"),
    [
        ("/v2/models/nope/infer", "POST", {"inputs": []}, 404, "unknown model 'nope'"),
        ("/v2/models/add/infer", "POST", {"inputs": []}, 404, "has several methods, address one of add.add_cast"),
        ("/v2/models/add.nope", "GET", None, 404, "servable 'add' has no method 'nope'"),
        ("/v2/models/add.add_common/versions/9", "GET", None, 404, "version 9 of model 'add.add_common' is not loaded"),
        ("/v2/models/add.add_common/versions/x/config", "GET", None, 400, "is not a positive integer"),
        ("/v2/models/add.add_common/infer", "GET", None, 405, "not allowed"),
        ("/v2/no/such/endpoint", "GET", None, 404, "no Open Inference Protocol endpoint"),
        ("/v2/models/mlp/infer", "POST", {"inputs": [{"name": "x"}]}, 400, "model 'mlp': input 'x' has no 'datatype'"),
        (
            "/v2/models/mlp/infer",
            "POST",
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3]}]},
            400,
            "'data' has 3 elements but shape [1, 4] needs 4",
        ),
        (
            "/v2/models/add.add_common/infer",
            "POST",
            {"inputs": [{"name": "x1", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]},
            400,
            "model 'add.add_common' needs input 'x2'",
        ),
        (
            "/v2/models/mlp/infer",
            "POST",
            {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1], "data": [1]}]},
            400,
            "unexpected input 'z' for model 'mlp' (its inputs: x)",
        ),
        (
            "/v2/models/mlp/infer",
            "POST",
            {
                "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
                "outputs": [{"name": "nope"}],
            },
            400,
            "unknown output 'nope' requested from model 'mlp' (its outputs: label, probs)",
        ),
        (
            "/v2/models/batching.add_dynamic/infer",
            "POST",
            {
                "inputs": [
                    {"name": "x1", "datatype": "FP32", "shape": [2, 3], "data": [0] * 6},
                    {"name": "x2", "datatype": "FP32", "shape": [1, 3], "data": [0] * 3},
                ]
            },
            400,
            "input 'x2' has batch size 1 but input 'x1' has 2",
        ),
        (
            # The batcher's own check (MindSpore's text): wrong dtype for the model input.
            "/v2/models/mlp/infer",
            "POST",
            {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
            400,
            "Given model input 0 size 32 not match the size 16 defined in model",
        ),
        (
            "/v2/models/pystages.raising/infer",
            "POST",
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [-1]}]},
            400,
            "Call Function 'pystages.raise_fn' Failed, method: 'raising', stage index(begin with 1): 1, error msg: "
            "negative input",
        ),
    ],
)
def test_errors_have_status_and_text(
    server: ServerProcess, path: str, verb: str, body: Any, status: int, text: str
) -> None:
    reply = v2(server, path, verb, json=body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert text in error, error


def test_malformed_bodies(server: ServerProcess) -> None:
    reply = v2(server, "/v2/models/mlp/infer", "POST", data=b"{not json")
    assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]
    header = b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": 16}}]}'
    reply = v2(
        server,
        "/v2/models/mlp/infer",
        "POST",
        data=header + b"\x00" * 8,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert reply.status_code == 400 and "goes past the end of the binary data" in reply.json()["error"]
    reply = v2(server, "/v2/models/mlp/infer", "POST", data=b"{}", headers={"Content-Encoding": "gzip"})
    assert reply.status_code == 400 and "not supported" in reply.json()["error"]
    # The server keeps serving.
    ok = v2(
        server,
        "/v2/models/mlp/infer",
        "POST",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 4], "data": [[1, 2, 3, 4], [0, 0, 0, 1]]}]},
    )
    assert ok.status_code == 200, ok.text
    labels = next(o for o in ok.json()["outputs"] if o["name"] == "label")
    assert labels["shape"] == [2] and labels["datatype"] == "INT64"


def test_mindspore_rest_is_unchanged(server: ServerProcess) -> None:
    reply = v2(
        server,
        "/model/add:add_common",
        "POST",
        json={"instances": [{"x1": [[1.0, 2.0], [3.0, 4.0]], "x2": [[0.0, 0.0], [0.0, 0.0]]}]},
    )
    assert reply.status_code == 200
    assert reply.json() == {"instances": [{"y": [[101.0, 102.0], [103.0, 104.0]]}]}
    # Paths outside /v2 still get MindSpore's in-band error (HTTP 200).
    odd = v2(server, "/v3/models/x", "POST", data=b"{}")
    assert odd.status_code == 200 and "error_msg" in odd.json()


RAGGED_CONFIG = """
import numpy as np

from rustserve.server import register

model = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=True, max_batch_size=8)


def head(y):
    return y[: int(y[0])]


@register.register_method(output_names=["y"])
def ragged(x1, x2):
    y = register.add_stage(model, x1, x2, outputs_count=1)
    return register.add_stage(head, y, outputs_count=1)
"""


def test_outputs_that_cannot_be_joined_are_a_500(
    make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess]
) -> None:
    folder = make_servable("ragged", RAGGED_CONFIG)
    models.build_add(folder / "1" / "add.onnx", batch=None, width=4)
    served = start_server(folder.parent)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{served.rest_port}", network_timeout=RPC_TIMEOUT_S)
    try:
        # Each instance keeps as many values as its first element says: 1 and 3, which cannot share one tensor.
        x = np.array([[1, 0, 0, 0], [3, 0, 0, 0]], np.float32)
        with pytest.raises(InferenceServerException) as info:
            client.infer("ragged", [tensor("x1", x, "FP32"), tensor("x2", np.zeros_like(x), "FP32")])
        assert info.value.status() == "500"
        assert "output 'y' differs between the instances of the batch" in info.value.message()
        # One instance per request works.
        one = client.infer("ragged", [tensor("x1", x[1:], "FP32"), tensor("x2", np.zeros_like(x[1:]), "FP32")])
        np.testing.assert_allclose(one.as_numpy("y"), [[3, 0, 0]])
    finally:
        client.close()
