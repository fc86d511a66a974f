"""Unit tests of rustserve.client without a rustserve server.

Plain protobuf (tests/ms_pb2, Google's runtime) is the oracle for the wire format: requests built by the client are
parsed with it, replies are built with it. The in-process grpcio echo server checks both directions end to end.
"""

from __future__ import annotations

import pickle
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import numpy as np
import pytest

from rustserve.client import Client, ClientError, ClientGrpcAsyncResult, SSLConfig
from rustserve.client._codec import MalformedReplyError, decode_reply, encode_request, encode_servable_spec
from rustserve.client._proto.mindspore.serving import proto as bp

try:
    from ms_pb2 import load as load_ms_pb2
except ImportError:  # tests/ imported as a package
    from tests.ms_pb2 import load as load_ms_pb2

PREDICT = "/mindspore.serving.proto.MSService/Predict"

MS_BOOL, MS_INT64, MS_FLOAT32, MS_FLOAT64, MS_STRING, MS_BYTES = 1, 8, 11, 12, 13, 14

NUMERIC_DTYPES: list[tuple[type[np.generic], int]] = [
    (np.bool_, 1),
    (np.int8, 2),
    (np.uint8, 3),
    (np.int16, 4),
    (np.uint16, 5),
    (np.int32, 6),
    (np.uint32, 7),
    (np.int64, 8),
    (np.uint64, 9),
    (np.float16, 10),
    (np.float32, 11),
    (np.float64, 12),
]


@pytest.fixture(scope="module")
def pb2() -> ModuleType:
    return load_ms_pb2()[0]


@pytest.fixture(scope="module")
def pb2_grpc() -> ModuleType:
    return load_ms_pb2()[1]


SPEC = encode_servable_spec("add", "add_common", 0)


def parse_request(pb2: ModuleType, instances: object, spec: bytes = SPEC) -> Any:
    return pb2.PredictRequest.FromString(encode_request(spec, instances))


def one_tensor(pb2: ModuleType, value: object) -> Any:
    request = parse_request(pb2, {"x": value})
    assert len(request.instances) == 1
    assert list(request.instances[0].items) == ["x"]
    return request.instances[0].items["x"]


def sample(dtype: type[np.generic], shape: tuple[int, ...] = (2, 3)) -> np.ndarray[Any, Any]:
    return (np.arange(int(np.prod(shape))).reshape(shape) % 3).astype(dtype)


# ------------------------------------------------------------------------------------------- instance -> request


@pytest.mark.parametrize(("dtype", "code"), NUMERIC_DTYPES, ids=lambda p: getattr(p, "__name__", str(p)))
def test_numpy_array_every_dtype(pb2: ModuleType, dtype: type[np.generic], code: int) -> None:
    arr = sample(dtype)
    tensor = one_tensor(pb2, arr)
    assert tensor.dtype == code
    assert list(tensor.shape.dims) == [2, 3]
    assert tensor.WhichOneof("tensor_data") == "data"
    assert tensor.data == arr.tobytes()
    assert list(tensor.bytes_val) == []


@pytest.mark.parametrize(("dtype", "code"), NUMERIC_DTYPES, ids=lambda p: getattr(p, "__name__", str(p)))
def test_numpy_scalar_every_dtype_is_0d(pb2: ModuleType, dtype: type[np.generic], code: int) -> None:
    value = dtype(1)
    tensor = one_tensor(pb2, value)
    assert tensor.dtype == code
    assert list(tensor.shape.dims) == []
    assert tensor.data == np.asarray(value).tobytes()


@pytest.mark.parametrize(
    ("value", "code", "data"),
    [
        (True, MS_BOOL, b"\x01"),
        (False, MS_BOOL, b"\x00"),
        (0, MS_INT64, np.array((0,)).tobytes()),
        (-7, MS_INT64, np.array((-7,)).tobytes()),
        (2**63 - 1, MS_INT64, np.array((2**63 - 1,)).tobytes()),
        (-(2**63), MS_INT64, np.array((-(2**63),)).tobytes()),
        (2**63, 9, np.array((2**63,)).tobytes()),  # np.array((v,)) picks uint64, as in MindSpore
        (2.5, MS_FLOAT64, np.array((2.5,)).tobytes()),
        (float("-inf"), MS_FLOAT64, np.array((float("-inf"),)).tobytes()),
    ],
)
def test_python_scalars_are_shape_1(pb2: ModuleType, value: object, code: int, data: bytes) -> None:
    tensor = one_tensor(pb2, value)
    assert tensor.dtype == code
    assert list(tensor.shape.dims) == [1]
    assert tensor.data == data


def test_int_subclass_goes_through_numpy(pb2: ModuleType) -> None:
    class MyInt(int):
        pass

    tensor = one_tensor(pb2, MyInt(3))
    assert (tensor.dtype, list(tensor.shape.dims), tensor.data) == (MS_INT64, [1], np.array((3,)).tobytes())


@pytest.mark.parametrize("value", ["", "abc", "héllo ✓", np.str_("np-str")])
def test_str_is_ms_string_shape_1(pb2: ModuleType, value: str) -> None:
    tensor = one_tensor(pb2, value)
    assert tensor.dtype == MS_STRING
    assert list(tensor.shape.dims) == [1]
    assert list(tensor.bytes_val) == [value.encode("utf-8")]
    assert tensor.WhichOneof("tensor_data") is None


@pytest.mark.parametrize("value", [b"", b"\x00\xffbin", np.bytes_(b"np-bytes")])
def test_bytes_is_ms_bytes_shape_1(pb2: ModuleType, value: bytes) -> None:
    tensor = one_tensor(pb2, value)
    assert tensor.dtype == MS_BYTES
    assert list(tensor.shape.dims) == [1]
    assert list(tensor.bytes_val) == [bytes(value)]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, 2], "Not support value type <class 'list'>"),
        ((1, 2), "Not support value type <class 'tuple'>"),
        (None, "Not support value type <class 'NoneType'>"),
        ({"a": 1}, "Not support value type <class 'dict'>"),
        (bytearray(b"x"), "Not support value type <class 'bytearray'>"),
        (1 + 2j, "Not support value type <class 'complex'>"),
        (np.array(["abc"]), "Unknown data type <U3"),
        (np.array([b"abc"]), "Unknown data type |S3"),
        (np.array([None]), "Unknown data type object"),
        (np.array([1 + 2j]), "Unknown data type complex128"),
        (np.complex64(1), "Unknown data type complex64"),
        (np.array(["2024-01-01"], dtype="datetime64[D]"), "Unknown data type datetime64[D]"),
        (2**64, "Unknown data type object"),
        (-(2**63) - 1, "Unknown data type object"),
    ],
)
def test_bad_values_have_mindspore_texts(value: object, message: str) -> None:
    with pytest.raises(RuntimeError) as info:
        encode_request(SPEC, {"x": value})
    assert str(info.value) == message


@pytest.mark.parametrize("instances", [[1], "abc", 5, [{"x": 1}, "y"], ({"x": 1}, None), [[{"x": 1}]]])
def test_instance_should_be_a_map(instances: object) -> None:
    with pytest.raises(RuntimeError, match="^instance should be a map$"):
        encode_request(SPEC, instances)


def test_dict_list_and_tuple_of_instances(pb2: ModuleType) -> None:
    assert len(parse_request(pb2, {"x": 1}).instances) == 1
    assert len(parse_request(pb2, [{"x": 1}, {"x": 2}, {"x": 3}]).instances) == 3
    request = parse_request(pb2, ({"a": 1, "b": "s"}, {}))
    assert [sorted(inst.items) for inst in request.instances] == [["a", "b"], []]
    assert len(parse_request(pb2, []).instances) == 0


def test_servable_spec(pb2: ModuleType) -> None:
    request = parse_request(pb2, [], encode_servable_spec("resnet50", "classify_top1", 3))
    assert request.servable_spec.name == "resnet50"
    assert request.servable_spec.method_name == "classify_top1"
    assert request.servable_spec.version_number == 3
    request = parse_request(pb2, [], encode_servable_spec("s" * 300, "m", 2**64 - 1))
    assert request.servable_spec.name == "s" * 300
    assert request.servable_spec.version_number == 2**64 - 1
    assert parse_request(pb2, [], encode_servable_spec("a", "b", 0)).servable_spec.version_number == 0


def test_non_contiguous_and_big_endian_arrays_go_c_order_little_endian(pb2: ModuleType) -> None:
    base = np.arange(12, dtype=np.int32).reshape(3, 4)
    for arr in (base.T, base[:, ::2], base.astype(">i4"), base.astype(">f8").T, np.asfortranarray(base)):
        tensor = one_tensor(pb2, arr)
        assert list(tensor.shape.dims) == list(arr.shape)
        expected = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"))
        assert tensor.data == expected.tobytes()
        assert tensor.dtype == (12 if arr.dtype.kind == "f" else 6)


def test_empty_and_large_shapes(pb2: ModuleType) -> None:
    for shape in [(0,), (3, 0), (1, 0, 5), (200, 1), (1, 1, 1, 1, 1, 1, 1, 1)]:
        tensor = one_tensor(pb2, np.zeros(shape, np.float32))
        assert list(tensor.shape.dims) == list(shape)
        assert tensor.WhichOneof("tensor_data") == "data"
        assert len(tensor.data) == 4 * int(np.prod(shape))
    big = np.random.default_rng(0).random((3, 300, 300)).astype(np.float32)
    assert one_tensor(pb2, big).data == big.tobytes()


def test_many_inputs_and_instances(pb2: ModuleType) -> None:
    instances = [{f"in{i}": np.full((i + 1,), i, np.int16) for i in range(20)} for _ in range(5)]
    request = parse_request(pb2, instances)
    assert len(request.instances) == 5
    for inst in request.instances:
        for i in range(20):
            assert np.frombuffer(inst.items[f"in{i}"].data, np.int16).tolist() == [i] * (i + 1)


def test_request_reused_array_can_change_after_encoding(pb2: ModuleType) -> None:
    arr = np.ones(4, np.float32)
    data = encode_request(SPEC, {"x": arr})
    arr[:] = 5
    assert pb2.PredictRequest.FromString(data).instances[0].items["x"].data == np.ones(4, np.float32).tobytes()


def test_non_str_key_fails_like_kwargs() -> None:
    with pytest.raises(TypeError, match="keywords must be strings"):
        encode_request(SPEC, {1: 1})


def test_request_matches_betterproto2(pb2: ModuleType) -> None:
    instances = [{"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": "txt", "b": b"raw", "i": 7, "f": True}]
    data = encode_request(encode_servable_spec("svc", "m", 2), instances)
    request = bp.PredictRequest.parse(data)
    assert request.servable_spec == bp.ServableSpec(name="svc", method_name="m", version_number=2)
    items = request.instances[0].items
    assert items["a"].dtype == bp.DataType.MS_FLOAT32 and items["a"].shape.dims == [2, 3]
    assert items["a"].data == instances[0]["a"].tobytes()
    assert items["s"].dtype == bp.DataType.MS_STRING and items["s"].bytes_val == [b"txt"]
    assert items["b"].dtype == bp.DataType.MS_BYTES and items["b"].bytes_val == [b"raw"]
    assert items["i"].dtype == bp.DataType.MS_INT64 and items["f"].dtype == bp.DataType.MS_BOOL
    # ...and the same message serialised by plain protobuf parses to the same thing.
    assert pb2.PredictRequest.FromString(data) == pb2.PredictRequest.FromString(bytes(request))


# ------------------------------------------------------------------------------------------------ reply -> result


def make_tensor(pb2: ModuleType, value: object) -> Any:
    """Builds a reply tensor the way a server would (plain protobuf)."""
    tensor = pb2.Tensor()
    if isinstance(value, str):
        tensor.dtype = MS_STRING
        tensor.bytes_val.append(value.encode())
        return tensor
    if isinstance(value, bytes):
        tensor.dtype = MS_BYTES
        tensor.bytes_val.append(value)
        return tensor
    arr = np.asarray(value)
    code = {np.dtype(d): c for d, c in NUMERIC_DTYPES}[arr.dtype]
    tensor.dtype = code
    tensor.shape.dims.extend(arr.shape)
    tensor.data = arr.tobytes()
    return tensor


def make_reply(pb2: ModuleType, instances: list[dict[str, object]], errors: list[tuple[int, str]] = ()) -> bytes:
    reply = pb2.PredictReply()
    reply.servable_spec.name = "svc"
    for inst in instances:
        msg = reply.instances.add()
        for name, value in inst.items():
            msg.items[name].CopyFrom(make_tensor(pb2, value))
    for code, text in errors:
        reply.error_msg.add(error_code=code, error_msg=text.encode())
    return reply.SerializeToString()


@pytest.mark.parametrize(("dtype", "code"), NUMERIC_DTYPES, ids=lambda p: getattr(p, "__name__", str(p)))
def test_parse_every_numeric_dtype(pb2: ModuleType, dtype: type[np.generic], code: int) -> None:
    arr = sample(dtype, (2, 2))
    result = decode_reply(make_reply(pb2, [{"y": arr}]))
    assert isinstance(result, list) and len(result) == 1
    y = result[0]["y"]
    assert isinstance(y, np.ndarray)
    assert y.dtype == np.dtype(dtype) and y.shape == (2, 2)
    np.testing.assert_array_equal(y, arr)
    assert not y.flags.writeable


def test_parse_shapes(pb2: ModuleType) -> None:
    result = decode_reply(
        make_reply(pb2, [{"s": np.float32(2.5), "one": np.array([7], np.int64), "e": np.zeros((3, 0))}])
    )
    assert isinstance(result, list)
    s, one, e = result[0]["s"], result[0]["one"], result[0]["e"]
    assert s.shape == () and s.dtype == np.float32 and float(s) == 2.5
    assert one.shape == (1,) and one.tolist() == [7]
    assert e.shape == (3, 0) and e.dtype == np.float64


def test_parse_strings_and_bytes(pb2: ModuleType) -> None:
    reply = pb2.PredictReply()
    inst = reply.instances.add()
    inst.items["s"].CopyFrom(make_tensor(pb2, "héllo"))
    inst.items["b"].CopyFrom(make_tensor(pb2, b"\x00\x01"))
    many_s = inst.items["ss"]
    many_s.dtype = MS_STRING
    many_s.bytes_val.extend([b"a", b"b"])
    many_b = inst.items["bb"]
    many_b.dtype = MS_BYTES
    many_b.bytes_val.extend([b"x", b"y", b"z"])
    none_s = inst.items["none"]
    none_s.dtype = MS_STRING
    result = decode_reply(reply.SerializeToString())
    assert result == [{"s": "héllo", "b": b"\x00\x01", "ss": ["a", "b"], "bb": [b"x", b"y", b"z"], "none": []}]


def test_parse_all_ok_several_instances(pb2: ModuleType) -> None:
    result = decode_reply(make_reply(pb2, [{"y": np.float32(i), "t": f"r{i}"} for i in range(4)]))
    assert isinstance(result, list)
    assert [(float(r["y"]), r["t"]) for r in result] == [(0.0, "r0"), (1.0, "r1"), (2.0, "r2"), (3.0, "r3")]


def test_parse_one_error_collapses_to_dict(pb2: ModuleType) -> None:
    text = "servable is not available"
    assert decode_reply(make_reply(pb2, [], [(5, text)])) == {"error": text}
    # also when the reply still carries one instance
    assert decode_reply(make_reply(pb2, [{"y": np.int32(1)}], [(3, text)])) == {"error": text}


def test_parse_one_ok_error_entry_is_a_list(pb2: ModuleType) -> None:
    result = decode_reply(make_reply(pb2, [{"y": np.int32(1)}], [(0, "")]))
    assert isinstance(result, list) and int(result[0]["y"]) == 1


def test_parse_mixed_per_instance_errors(pb2: ModuleType) -> None:
    data = make_reply(
        pb2,
        [{"y": np.int32(1)}, {}, {"y": np.int32(3)}],
        [(0, ""), (2, "Given model input 0 size 8 not match the size 16 defined in model"), (0, "")],
    )
    result = decode_reply(data)
    assert isinstance(result, list) and len(result) == 3
    assert int(result[0]["y"]) == 1
    assert result[1] == {"error": "Given model input 0 size 8 not match the size 16 defined in model"}
    assert int(result[2]["y"]) == 3


def test_parse_error_size_mismatch(pb2: ModuleType) -> None:
    data = make_reply(pb2, [{"y": 1}, {"y": 2}, {"y": 3}], [(0, ""), (1, "x")])
    with pytest.raises(RuntimeError) as info:
        decode_reply(data)
    assert str(info.value) == "error msg result size 2 not be 0, 1 or length of instances 3"
    with pytest.raises(RuntimeError, match="^error msg result size 1 not be 0, 1 or length of instances 0$"):
        decode_reply(make_reply(pb2, [], [(0, "")]))


def test_parse_empty_reply(pb2: ModuleType) -> None:
    assert decode_reply(b"") == []
    assert decode_reply(make_reply(pb2, [])) == []


def test_parse_unpacked_dims_and_unknown_fields(pb2: ModuleType) -> None:
    # TensorShape with unpacked dims (field 1 varints), plus an unknown varint field 9 in the Tensor.
    shape = b"\x08\x02\x08\x03"
    data = np.arange(6, dtype=np.int8).tobytes()
    tensor = b"\x0a" + bytes([len(shape)]) + shape + b"\x10\x02" + b"\x48\x2a" + b"\x1a\x06" + data
    entry = b"\x0a\x01y\x12" + bytes([len(tensor)]) + tensor
    instance = b"\x0a" + bytes([len(entry)]) + entry
    reply = b"\x0a\x05\x0a\x03svc" + b"\x1a" + bytes([len(instance)]) + instance
    result = decode_reply(reply)
    assert isinstance(result, list)
    assert result[0]["y"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_parse_malformed_reply_raises() -> None:
    with pytest.raises(MalformedReplyError):
        decode_reply(b"\x1a\x10\x0a")  # length past the end
    with pytest.raises(MalformedReplyError):
        decode_reply(b"\x1a")  # truncated
    # dims [2] of float32 with 4 bytes of data
    with pytest.raises(MalformedReplyError, match="invalid tensor"):
        decode_reply(b"\x1a\x14\x0a\x12\x0a\x01y\x12\x0d\x0a\x03\x0a\x01\x02\x10\x0b\x1a\x04\x00\x00\x00\x00")
    with pytest.raises(RuntimeError, match="Unknown data type 0"):
        decode_reply(b"\x1a\x05\x0a\x03\x0a\x01y")  # an output without a tensor (dtype MS_UNKNOWN)


def test_betterproto2_reply_parses_like_pb2(pb2: ModuleType) -> None:
    data = make_reply(pb2, [{"y": np.arange(4, dtype=np.float32).reshape(2, 2)}, {}], [(0, ""), (2, "bad")])
    reply = bp.PredictReply.parse(data)
    assert reply.instances[0].items["y"].shape.dims == [2, 2]
    assert reply.instances[0].items["y"].dtype == bp.DataType.MS_FLOAT32
    assert [(e.error_code, e.error_msg) for e in reply.error_msg] == [(0, b""), (2, b"bad")]
    assert pb2.PredictReply.FromString(bytes(reply)) == pb2.PredictReply.FromString(data)


# ------------------------------------------------------------------------------------------- client arguments


def test_client_argument_checks() -> None:
    with pytest.raises(RuntimeError, match=r"^Parameter 'address' should be str, but actually <class 'int'>$"):
        Client(5500, "add", "m")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="^Parameter 'servable_name' should not be empty str$"):
        Client("localhost:5500", "", "m")
    with pytest.raises(RuntimeError, match="^Parameter 'method_name' should be str"):
        Client("localhost:5500", "add", None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="^Parameter 'version_number' should be >= 0$"):
        Client("localhost:5500", "add", "m", -1)
    with pytest.raises(RuntimeError, match="^Parameter 'version_number' should be int"):
        Client("localhost:5500", "add", "m", "1")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="^The type of ssl_config should be type of SSLConfig$"):
        Client("localhost:5500", "add", "m", ssl_config="ca.pem")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="^Parameter 'custom_ca' should not be empty str$"):
        SSLConfig(custom_ca="")


def test_ssl_config_certificate_and_key_together(tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_bytes(b"not really a pem")
    for kwargs in (
        {"certificate": str(pem)},
        {"private_key": str(pem)},
        {"certificate": str(pem), "custom_ca": str(pem)},
    ):
        with pytest.raises(RuntimeError, match="^The certificate and private_key should be passed at the same time$"):
            Client("localhost:5500", "add", "m", ssl_config=SSLConfig(**kwargs))
    with pytest.raises(FileNotFoundError):  # files are read at Client creation
        Client("localhost:5500", "add", "m", ssl_config=SSLConfig(custom_ca=str(tmp_path / "missing.pem")))


def test_client_caches_the_multicallable() -> None:
    with Client("localhost:1", "add", "m") as client:
        assert isinstance(client._predict, grpc.UnaryUnaryMultiCallable)
        first = client._predict
        client.infer_async({"x": 1})
        assert client._predict is first


# -------------------------------------------------------------------------------------------- transport errors


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_transport_error_returns_mindspore_dict_without_printing(capsys: pytest.CaptureFixture[str]) -> None:
    with Client(f"127.0.0.1:{closed_port()}", "add", "m") as client:
        result = client.infer({"x": np.ones(2, np.float32)})
        assert isinstance(result, dict) and list(result) == ["error"]
        assert result["error"].startswith("Grpc Error, (14, 'unavailable'), ")
        async_result = client.infer_async([{"x": 1}])
        assert isinstance(async_result, ClientGrpcAsyncResult)
        assert async_result.result()["error"].startswith("Grpc Error, (14, 'unavailable'), ")  # type: ignore[call-overload]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_transport_error_raises_with_raise_on_error() -> None:
    with Client(f"127.0.0.1:{closed_port()}", "add", "m", raise_on_error=True) as client:
        with pytest.raises(ClientError) as info:
            client.infer({"x": 1})
        error = info.value
        assert isinstance(error, RuntimeError)
        assert error.code is grpc.StatusCode.UNAVAILABLE
        assert error.details
        assert str(error) == f"Grpc Error, (14, 'unavailable'), {error.details}"
        assert isinstance(error.__cause__, grpc.RpcError)
        copy = pickle.loads(pickle.dumps(error))
        assert (copy.code, copy.details, str(copy)) == (error.code, error.details, str(error))

        pending = client.infer_async({"x": 1})
        with pytest.raises(ClientError) as info:
            pending.result()
        assert info.value.code is grpc.StatusCode.UNAVAILABLE


def test_bad_instances_raise_before_any_call() -> None:
    with Client(f"127.0.0.1:{closed_port()}", "add", "m") as client:
        with pytest.raises(RuntimeError, match="^Not support value type <class 'list'>$"):
            client.infer({"x": [1, 2]})
        with pytest.raises(RuntimeError, match="^instance should be a map$"):
            client.infer_async([1])


# --------------------------------------------------------------------------- in-process grpcio (pb2) echo server


class EchoServer:
    """A grpcio server on 127.0.0.1:0 that parses requests with plain protobuf and echoes inputs as outputs.

    Servable name "fail_all" answers one error; "fail_odd" fails every odd instance.
    """

    def __init__(
        self,
        pb2: ModuleType,
        credentials: grpc.ServerCredentials | None = None,
        address: str = "127.0.0.1:0",
        **options: int,
    ) -> None:
        self.pb2 = pb2
        self.requests: list[Any] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=list(options.items()))
        handler = grpc.unary_unary_rpc_method_handler(
            self.predict,
            request_deserializer=pb2.PredictRequest.FromString,
            response_serializer=pb2.PredictReply.SerializeToString,
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("mindspore.serving.proto.MSService", {"Predict": handler}),)
        )
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        self.server.start()

    def predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        reply = self.pb2.PredictReply()
        reply.servable_spec.CopyFrom(request.servable_spec)
        name = request.servable_spec.name
        if name == "fail_all":
            reply.error_msg.add(error_code=2, error_msg=b"Request servable(fail_all) method(m) , servable is not found")
            return reply
        for i, inst in enumerate(request.instances):
            out = reply.instances.add()
            if name == "fail_odd":
                failed = i % 2 == 1
                reply.error_msg.add(
                    error_code=3 if failed else 0, error_msg=f"instance {i} failed".encode() if failed else b""
                )
                if failed:
                    continue
            for key, tensor in inst.items.items():
                out.items[key].CopyFrom(tensor)
        return reply

    def stop(self) -> None:
        self.server.stop(None)


@pytest.fixture()
def echo_server(pb2: ModuleType) -> Iterator[EchoServer]:
    server = EchoServer(pb2)
    yield server
    server.stop()


ECHO_INSTANCE: dict[str, object] = {
    "f32": np.arange(6, dtype=np.float32).reshape(2, 3),
    "u8": np.array([[1, 2], [3, 4]], np.uint8).T,
    "f16s": np.float16(0.5),
    "b": np.array([True, False]),
    "i": 42,
    "f": 1.25,
    "t": True,
    "s": "héllo",
    "raw": b"\x00\xff",
}


def check_echo(result: dict[str, Any], sent: dict[str, object]) -> None:
    assert set(result) == set(sent)
    for key, value in sent.items():
        got = result[key]
        if isinstance(value, (str, bytes)):
            assert got == value and type(got) is type(value)
        elif isinstance(value, (bool, int, float)):
            assert got.shape == (1,) and got.dtype == np.array((value,)).dtype and got[0] == value
        else:
            expected = np.asarray(value)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)


def test_echo_roundtrip_through_plain_protobuf_server(echo_server: EchoServer) -> None:
    with Client(f"127.0.0.1:{echo_server.port}", "echo", "echo_method", 7) as client:
        result = client.infer([ECHO_INSTANCE, {"i": -1}])
        assert isinstance(result, list) and len(result) == 2
        check_echo(result[0], ECHO_INSTANCE)
        check_echo(result[1], {"i": -1})

        request = echo_server.requests[-1]
        assert (request.servable_spec.name, request.servable_spec.method_name) == ("echo", "echo_method")
        assert request.servable_spec.version_number == 7
        assert request.instances[0].items["s"].bytes_val == [b"h\xc3\xa9llo"]

        pending = client.infer_async({"f32": ECHO_INSTANCE["f32"]})
        assert isinstance(pending, ClientGrpcAsyncResult)
        async_result = pending.result()
        assert isinstance(async_result, list)
        check_echo(async_result[0], {"f32": ECHO_INSTANCE["f32"]})


def test_echo_errors_from_server(echo_server: EchoServer) -> None:
    address = f"127.0.0.1:{echo_server.port}"
    with Client(address, "fail_all", "m") as client:
        assert client.infer([{"x": 1}, {"x": 2}]) == {
            "error": "Request servable(fail_all) method(m) , servable is not found"
        }
    with Client(address, "fail_odd", "m") as client:
        result = client.infer([{"x": 0}, {"x": 1}, {"x": 2}])
        assert isinstance(result, list)
        assert result[0]["x"].tolist() == [0]
        assert result[1] == {"error": "instance 1 failed"}
        assert result[2]["x"].tolist() == [2]


def test_pb2_stub_and_betterproto2_messages_against_the_echo_server(
    echo_server: EchoServer, pb2: ModuleType, pb2_grpc: ModuleType
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{echo_server.port}") as channel:
        # MindSpore's own client path: pb2 stub, pb2 messages.
        stub = pb2_grpc.MSServiceStub(channel)
        request = pb2.PredictRequest(servable_spec=pb2.ServableSpec(name="echo", method_name="m"))
        request.instances.add().items["x"].CopyFrom(make_tensor(pb2, np.arange(3, dtype=np.int32)))
        reply = stub.Predict(request)
        assert np.frombuffer(reply.instances[0].items["x"].data, np.int32).tolist() == [0, 1, 2]

        # betterproto2 messages on a raw multicallable: serialised by betterproto2 -> parsed by protobuf, and back.
        call: Callable[[bp.PredictRequest], bp.PredictReply] = channel.unary_unary(
            PREDICT, request_serializer=bytes, response_deserializer=bp.PredictReply.parse
        )
        bp_request = bp.PredictRequest(
            servable_spec=bp.ServableSpec(name="echo", method_name="m", version_number=4),
            instances=[
                bp.Instance(
                    items={
                        "x": bp.Tensor(
                            shape=bp.TensorShape(dims=[2]),
                            dtype=bp.DataType.MS_FLOAT64,
                            data=np.array([1.5, -2.0]).tobytes(),
                        ),
                        "s": bp.Tensor(shape=bp.TensorShape(dims=[1]), dtype=bp.DataType.MS_STRING, bytes_val=[b"hi"]),
                    }
                )
            ],
        )
        bp_reply = call(bp_request)
        assert echo_server.requests[-1].servable_spec.version_number == 4
        x = bp_reply.instances[0].items["x"]
        assert x.dtype == bp.DataType.MS_FLOAT64 and x.shape.dims == [2]
        assert np.frombuffer(x.data, np.float64).tolist() == [1.5, -2.0]
        assert bp_reply.instances[0].items["s"].bytes_val == [b"hi"]
        # The codec decodes what betterproto2 re-serialises.
        decoded = decode_reply(bytes(bp_reply))
        assert isinstance(decoded, list) and decoded[0]["s"] == "hi"


def test_resource_exhausted(pb2: ModuleType) -> None:
    server = EchoServer(pb2, **{"grpc.max_receive_message_length": 1024})
    try:
        with Client(f"127.0.0.1:{server.port}", "echo", "m") as client:
            result = client.infer({"x": np.zeros(4096, np.uint8)})
            assert isinstance(result, dict)
            assert result["error"].startswith("Grpc Error, (8, 'resource exhausted'), ")
        with Client(f"127.0.0.1:{server.port}", "echo", "m", raise_on_error=True) as client:
            with pytest.raises(ClientError) as info:
                client.infer({"x": np.zeros(4096, np.uint8)})
            assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        server.stop()


def test_unix_socket_address(pb2: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "ms.sock"
    server = EchoServer(pb2, address=f"unix:{path}")
    try:
        with Client(f"unix:{path}", "echo", "m") as client:
            result = client.infer({"s": "over a unix socket"})
            assert result == [{"s": "over a unix socket"}]
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI to make a test certificate")
def test_tls_and_mutual_tls(pb2: ModuleType, tmp_path: Path) -> None:
    def make_cert(name: str) -> tuple[Path, Path]:
        key, cert = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
            + ["-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"]
            + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True,
            capture_output=True,
        )
        return key, cert

    server_key, server_cert = make_cert("server")
    client_key, client_cert = make_cert("client")
    credentials = grpc.ssl_server_credentials(
        [(server_key.read_bytes(), server_cert.read_bytes())],
        root_certificates=client_cert.read_bytes(),
        require_client_auth=True,
    )
    server = EchoServer(pb2, credentials)
    try:
        mutual = SSLConfig(certificate=str(client_cert), private_key=str(client_key), custom_ca=str(server_cert))
        with Client(f"localhost:{server.port}", "echo", "m", ssl_config=mutual) as client:
            assert client.infer({"s": "tls"}) == [{"s": "tls"}]
        # Server requires a client certificate: without one the handshake fails -> transport error dict.
        with Client(
            f"localhost:{server.port}", "echo", "m", ssl_config=SSLConfig(custom_ca=str(server_cert))
        ) as client:
            result = client.infer({"s": "tls"})
            assert isinstance(result, dict) and result["error"].startswith("Grpc Error, (14, 'unavailable')")
    finally:
        server.stop()
