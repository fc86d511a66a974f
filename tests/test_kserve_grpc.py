"""Open Inference Protocol (KServe v2) over gRPC, driven by `tritonclient.grpc` (raw tensors) and by Triton's generated
`service_pb2` stubs (typed `contents`), plus the standard `grpc.health.v1.Health` service, on the session server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import RPC_TIMEOUT_S, ServerProcess

grpcclient = pytest.importorskip("tritonclient.grpc")
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def _client(session_server: ServerProcess) -> Iterator[Any]:
    client = grpcclient.InferenceServerClient(session_server.grpc_address)
    yield client
    client.close()


@pytest.fixture
def client(server: ServerProcess, _client: Any) -> Any:
    """tritonclient.grpc bound to the session server's gRPC port."""
    return _client


@pytest.fixture(scope="module")
def channel(session_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(session_server.grpc_address) as chan:
        yield chan


def tensor(name: str, array: np.ndarray, datatype: str) -> Any:
    item = grpcclient.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def test_health_metadata_and_readiness(client: Any) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "rustserve"
    assert "statistics" in metadata["extensions"]
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("add.add_cast", "1")
    assert not client.is_model_ready("add.add_cast", "7")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("batching.add_fixed", as_json=True)
    assert meta["versions"] == ["1"]
    assert meta["inputs"][0] == {"name": "x1", "datatype": "FP32", "shape": ["-1", "3"]}


def _health(channel: grpc.Channel, service: str) -> bytes:
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    # HealthCheckRequest{service = 1}; the reply is HealthCheckResponse{status = 1}.
    name = service.encode()
    request = b"\x0a" + bytes([len(name)]) + name if name else b""
    return check(request, timeout=RPC_TIMEOUT_S)


def test_grpc_health_service(channel: grpc.Channel) -> None:
    serving = b"\x08\x01"
    assert _health(channel, "") == serving
    assert _health(channel, "inference.GRPCInferenceService") == serving
    assert _health(channel, "mindspore.serving.proto.MSService") == serving
    with pytest.raises(grpc.RpcError) as info:
        _health(channel, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("method", "datatype", "array"),
    [
        ("id_float32", "FP32", np.array([[1.5, -2.25, 3e-8], [0, 1, 2]], np.float32)),
        ("id_int64", "INT64", np.array([[2**40, -1, 0]], np.int64)),
        ("id_bool", "BOOL", np.array([[True, False, True]])),
        ("id_float16", "FP16", np.array([[0.5, -1.25, 65504]], np.float16)),
        ("id_int8", "INT8", np.array([[-128, 0, 127]], np.int8)),
    ],
)
def test_raw_tensors_round_trip(client: Any, method: str, datatype: str, array: np.ndarray) -> None:
    result = client.infer(f"dtypes.{method}", [tensor("x", array, datatype)], request_id="g1")
    assert result.get_response().id == "g1"
    got = result.as_numpy("y")
    assert got.dtype == array.dtype
    np.testing.assert_array_equal(got, array)


def test_bytes_and_batches(client: Any) -> None:
    blob = np.array([b"\x00ab\xff"], dtype=np.object_)
    assert client.infer("pystages.reverse_blob", [tensor("b", blob, "BYTES")]).as_numpy("y").item() == b"\xffba\x00"
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    result = client.infer("mlp", [tensor("x", x[:, :3].repeat(2, axis=1)[:, :4], "FP32")])
    assert result.as_numpy("label").shape == (4,)
    assert result.as_numpy("probs").shape == (4, 3)
    np.testing.assert_allclose(result.as_numpy("probs").sum(axis=1), 1.0, rtol=1e-5)
    added = client.infer(
        "batching.bias_add", [tensor("x", x, "FP32"), tensor("bias", np.ones((4, 3), np.float32), "FP32")]
    )
    np.testing.assert_allclose(added.as_numpy("y"), x + 1)


def test_large_message_is_accepted(client: Any) -> None:
    big = np.zeros((1, 3_000_000), np.float32)  # 12 MB: over gRPC's usual 4 MB default; one instance
    result = client.infer("pystages.describe_input", [tensor("x", big, "FP32")])
    assert result.as_numpy("kind").tolist() == [b"ndarray:float32:[3000000]"]


def _typed_request(model: str, name: str, datatype: str, shape: list[int], **contents: Any) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model)
    item = request.inputs.add(name=name, datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(item.contents, field).extend(values)
    return request


def test_typed_contents_with_triton_stubs(channel: grpc.Channel) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    reply = stub.ModelInfer(
        _typed_request("dtypes.id_int16", "x", "INT16", [1, 3], int_contents=[-5, 0, 300]), timeout=RPC_TIMEOUT_S
    )
    assert reply.outputs[0].datatype == "INT16" and list(reply.outputs[0].shape) == [1, 3]
    assert np.frombuffer(reply.raw_output_contents[0], "<i2").tolist() == [-5, 0, 300]
    reply = stub.ModelInfer(
        _typed_request("pystages.reverse_blob", "b", "BYTES", [1], bytes_contents=[b"xyz"]), timeout=RPC_TIMEOUT_S
    )
    assert reply.raw_output_contents[0] == b"\x03\x00\x00\x00zyx"
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(
            _typed_request("dtypes.id_int8", "x", "INT8", [1, 3], int_contents=[1, 2, 999]), timeout=RPC_TIMEOUT_S
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a value in int_contents does not fit INT8" in info.value.details()


def test_config_and_statistics(client: Any) -> None:
    config = client.get_model_config("batching.add_dynamic", as_json=True)["config"]
    assert config["max_batch_size"] == 3
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert [int(d) for d in config["input"][0]["dims"]] == [3]
    assert "dynamic_batching" in config
    whole = client.get_model_config("batching.matmul").config
    assert whole.max_batch_size == 0 and not whole.HasField("dynamic_batching")

    def count(model: str) -> int:
        (entry,) = client.get_inference_statistics(model).model_stats
        return entry.inference_stats.success.count

    before = count("dtypes.id_uint16")
    client.infer("dtypes.id_uint16", [tensor("x", np.zeros((2, 3), np.uint16), "UINT16")])
    assert count("dtypes.id_uint16") == before + 1
    every = client.get_inference_statistics().model_stats
    assert "dtypes.id_uint16" in {e.name for e in every}


@pytest.mark.parametrize(
    ("model", "version", "inputs", "code", "text"),
    [
        ("nope", "", [], grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        ("mlp", "5", [], grpc.StatusCode.NOT_FOUND, "version 5 of model 'mlp' is not loaded"),
        (
            "mlp",
            "",
            [("z", np.zeros((1, 4), np.float32), "FP32")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "unexpected input",
        ),
        (
            "mlp",
            "",
            [("x", np.zeros((1, 5), np.float32), "FP32")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "Given model input 0 size 20 not match the size 16 defined in model",
        ),
        (
            "pystages.raising",
            "",
            [("x", np.array([-1.0], np.float32), "FP32")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "error msg: negative input",
        ),
    ],
)
def test_errors_are_grpc_statuses(
    client: Any, model: str, version: str, inputs: list[Any], code: grpc.StatusCode, text: str
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [tensor(*i) for i in inputs], model_version=version)
    assert info.value.status() == str(code)
    assert text in info.value.message()
