"""A method without model stages (Python stages only) over the Open Inference Protocol, judged by tritonclient.

As for a method whose models have a batch dimension, dim 0 of every v2 input is the batch: a `[4, 1]` request is
four instances of one row each, and the outputs are joined back on dim 0 (a `[1, 1]` request answers `[1, ...]`).
Its model configuration reports `max_batch_size` 32 (no `dynamic_batching`: no model queue), so perf_analyzer and
tritonclient batch it. Over HTTP (JSON and binary tensors) and gRPC.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from conftest import RPC_TIMEOUT_S, ServerProcess, launch_server, write_servable

httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

CONFIG = """
import numpy as np

from rustserve.server import register


def shout(text):
    # A BYTES row of one element arrives as its bytes (a uint8 array), as MindSpore hands it.
    return bytes(text.tobytes()).upper() + b"!"


def double(x):
    return x * 2


def total(x):
    return np.float64(x.sum())


def batch_count(instances):
    return [(np.int64(len(instances)),) for _ in instances]


@register.register_method(output_names=["y"])
def shout_text(text):
    return register.add_stage(shout, text, outputs_count=1)


@register.register_method(output_names=["y", "sum", "batch"])
def numbers(x):
    y = register.add_stage(double, x, outputs_count=1)
    s = register.add_stage(total, x, outputs_count=1)
    n = register.add_stage(batch_count, x, outputs_count=1, batch_size=2)
    return y, s, n
"""


@pytest.fixture(scope="module")
def pyonly_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("pyonly")
    write_servable(root / "servables", "pyonly", CONFIG)
    server = launch_server(root / "servables", root / "logs")
    yield server
    assert server.stop() == 0, server.describe()


Client = tuple[ModuleType, Any]


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, pyonly_server: ServerProcess) -> Iterator[Client]:
    if request.param == "http":
        module: ModuleType = httpclient
        address = f"127.0.0.1:{pyonly_server.rest_port}"
        made = httpclient.InferenceServerClient(
            address, connection_timeout=RPC_TIMEOUT_S, network_timeout=RPC_TIMEOUT_S
        )
    else:
        module = grpcclient
        made = grpcclient.InferenceServerClient(pyonly_server.grpc_address)
    yield module, made
    made.close()


def infer(client: Client, model: str, name: str, array: np.ndarray, datatype: str, binary: bool = True) -> Any:
    module, made = client
    item = module.InferInput(name, list(array.shape), datatype)
    if module is httpclient:
        item.set_data_from_numpy(array, binary_data=binary)
        return made.infer(model, [item], timeout=int(RPC_TIMEOUT_S))
    item.set_data_from_numpy(array)
    return made.infer(model, [item], client_timeout=RPC_TIMEOUT_S)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_bytes_rows_are_instances(client: Client, binary: bool) -> None:
    if client[0] is grpcclient and not binary:
        pytest.skip("gRPC has no JSON tensors")
    texts = np.array([[b"a"], [b"bc"], [b"hello"], [b"x y"]], dtype=np.object_)
    result = infer(client, "pyonly.shout_text", "text", texts, "BYTES", binary)
    assert result.as_numpy("y").tolist() == [b"A!", b"BC!", b"HELLO!", b"X Y!"]
    one = infer(client, "pyonly.shout_text", "text", np.array([[b"ok"]], dtype=np.object_), "BYTES", binary)
    assert one.as_numpy("y").tolist() == [b"OK!"]  # shape [1], not []


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_numeric_rows_are_instances(client: Client, binary: bool) -> None:
    if client[0] is grpcclient and not binary:
        pytest.skip("gRPC has no JSON tensors")
    x = np.arange(4, dtype=np.float32).reshape(4, 1)
    result = infer(client, "pyonly.numbers", "x", x, "FP32", binary)
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
    assert result.as_numpy("y").shape == (4, 1)
    assert result.as_numpy("sum").tolist() == [0.0, 1.0, 2.0, 3.0]
    # The batch stage (batch_size=2) sees the instances in batches of two.
    assert result.as_numpy("batch").tolist() == [2, 2, 2, 2]
    one = infer(client, "pyonly.numbers", "x", np.array([[7.0]], np.float32), "FP32", binary)
    assert one.as_numpy("y").shape == (1, 1) and one.as_numpy("y").item() == 14.0
    assert one.as_numpy("sum").shape == (1,) and one.as_numpy("batch").tolist() == [1]
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(infer(client, "pyonly.numbers", "x", rows, "FP32", binary).as_numpy("sum"), [3, 12])


def test_model_config_and_metadata_say_dim_0_is_the_batch(client: Client) -> None:
    module, made = client
    if module is httpclient:
        config = made.get_model_config("pyonly.numbers")
        metadata = made.get_model_metadata("pyonly.shout_text")
        inputs = metadata["inputs"]
    else:
        config = made.get_model_config("pyonly.numbers", as_json=True)["config"]
        metadata = made.get_model_metadata("pyonly.shout_text", as_json=True)
        inputs = [{**i, "shape": [int(d) for d in i["shape"]]} for i in metadata["inputs"]]
    assert config["max_batch_size"] == 32
    assert "dynamic_batching" not in config
    assert inputs == [{"name": "text", "datatype": "BYTES", "shape": [-1, -1]}]


def test_a_request_without_a_batch_dimension_is_refused(client: Client) -> None:
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="has shape \\[\\] but this model takes a batch dimension"):
        infer(client, "pyonly.numbers", "x", np.array(1.0, np.float32), "FP32")
