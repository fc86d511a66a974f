"""Every DataType of the MindSpore proto through identity methods: raw gRPC, our Client and REST b64 values."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import DTYPE_NAMES, MS_BYTES, MS_STRING, NP_TO_MS, Grpc, Rest

# REST b64 type names (compat section 10) and the numpy dtype each one means.
REST_TYPE_NAMES: dict[str, str] = {
    "bool": "bool",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "fp16": "float16",
    "fp32": "float32",
    "fp64": "float64",
    "float16": "float16",
    "float32": "float32",
    "float64": "float64",
}


def sample(name: str, seed: int = 0) -> np.ndarray:
    """Three distinctive values of dtype `name` (extremes included) for one [3] instance."""
    dtype = np.dtype(name)
    if dtype == np.bool_:
        return np.array([True, False, seed % 2 == 0])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([info.min, seed + 7, info.max], dtype=dtype)
    info_f = np.finfo(dtype)
    return np.array([-1.5 - seed, 1 / 3, info_f.max], dtype=dtype)


@pytest.mark.parametrize("name", DTYPE_NAMES)
@pytest.mark.parametrize("method", ["id", "echo"])
def test_numeric_dtype_raw_grpc(grpc: Grpc, name: str, method: str) -> None:
    """A numeric tensor comes back with the same dtype enum, dims and bytes (ONNX Identity and no-stage echo)."""
    method_name = f"id_{name}" if method == "id" else "echo"
    values = [sample(name, 0), sample(name, 1)]
    reply = grpc.predict("dtypes", method_name, [{"x": v} for v in values])
    grpc.ok(reply, 2)
    for instance, value in zip(reply.instances, values, strict=True):
        tensor = instance.items["y"]
        assert tensor.dtype == NP_TO_MS[value.dtype]
        assert list(tensor.shape.dims) == [3]
        assert tensor.data == value.astype(value.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_numeric_dtype_client(make_client: Callable[..., Any], name: str) -> None:
    """Our Client sends numpy arrays with their dtype and returns numpy arrays of the same dtype and shape."""
    values = [sample(name, 0), sample(name, 1)]
    result = make_client("dtypes", f"id_{name}").infer([{"x": v} for v in values])
    assert isinstance(result, list) and len(result) == 2, result
    for got, value in zip(result, values, strict=True):
        assert got["y"].dtype == value.dtype
        np.testing.assert_array_equal(got["y"], value)


def test_numpy_scalar_keeps_shape_through_echo(make_client: Callable[..., Any]) -> None:
    """A numpy scalar travels as shape [] and comes back 0-d."""
    result = make_client("dtypes", "echo").infer({"x": np.float64(2.5)})
    assert result[0]["y"].shape == ()
    assert result[0]["y"].dtype == np.float64 and float(result[0]["y"]) == 2.5


@pytest.mark.parametrize(
    ("value", "dtype"),
    [("héllo wörld", MS_STRING), (b"\x00\xffbinary\n", MS_BYTES)],
    ids=["string", "bytes"],
)
def test_string_and_bytes_raw_grpc(grpc: Grpc, value: str | bytes, dtype: int) -> None:
    """MS_STRING and MS_BYTES travel in bytes_val and come back unchanged from a method without stages."""
    reply = grpc.predict("dtypes", "echo", [{"x": value}])
    grpc.ok(reply, 1)
    tensor = reply.instances[0].items["y"]
    assert tensor.dtype == dtype
    raw = value.encode() if isinstance(value, str) else value
    assert list(tensor.bytes_val) == [raw]


def test_string_with_empty_shape_raw_grpc(grpc: Grpc) -> None:
    """A string tensor may have shape [] as well as [1]."""
    pb2 = grpc.pb2
    tensor = pb2.Tensor(shape=pb2.TensorShape(dims=[]), dtype=MS_STRING, bytes_val=[b"scalar"])
    reply = grpc.predict("pystages", "reverse_text", [{"s": tensor}])
    assert grpc.ok(reply, 1) == [{"y": "ralacs"}]


@pytest.mark.parametrize(
    ("method", "name", "value", "expected", "dtype"),
    [
        ("reverse_text", "s", "abc€", "€cba", MS_STRING),
        ("reverse_blob", "b", b"\x01\x02\xff", b"\xff\x02\x01", MS_BYTES),
    ],
    ids=["string", "bytes"],
)
def test_string_and_bytes_through_python_stage(
    grpc: Grpc, method: str, name: str, value: str | bytes, expected: str | bytes, dtype: int
) -> None:
    """Python stages get str / uint8 arrays and return str / bytes as shape-[] MS_STRING / MS_BYTES tensors."""
    reply = grpc.predict("pystages", method, [{name: value}, {name: value * 2}])
    grpc.ok(reply, 2)
    first = reply.instances[0].items["y"]
    assert first.dtype == dtype
    assert list(first.shape.dims) == []
    assert grpc.value(first) == expected
    assert grpc.value(reply.instances[1].items["y"]) == (value * 2)[::-1]


def test_string_and_bytes_client(make_client: Callable[..., Any]) -> None:
    """Our Client maps str -> MS_STRING -> str and bytes -> MS_BYTES -> bytes."""
    echo = make_client("dtypes", "echo")
    assert echo.infer([{"x": "héllo"}, {"x": "wörld"}]) == [{"y": "héllo"}, {"y": "wörld"}]
    assert echo.infer({"x": b"\x00raw"}) == [{"y": b"\x00raw"}]
    reversed_text = make_client("pystages", "reverse_text").infer({"s": "stressed"})
    assert reversed_text == [{"y": "desserts"}]
    reversed_blob = make_client("pystages", "reverse_blob").infer({"b": b"\x00\x01"})
    assert reversed_blob == [{"y": b"\x01\x00"}]


@pytest.mark.parametrize("type_name", sorted(REST_TYPE_NAMES))
def test_rest_b64_typed_values(rest: Rest, type_name: str) -> None:
    """Every REST b64 type name decodes to that dtype and comes back as JSON numbers / bools."""
    dtype = np.dtype(REST_TYPE_NAMES[type_name])
    value = sample(dtype.name)
    typed = {"b64": base64.b64encode(value.tobytes()).decode(), "type": type_name, "shape": [3]}
    body = rest.predict("dtypes", "echo", [{"x": typed}])
    assert set(body) == {"instances"}, body
    np.testing.assert_array_equal(np.array(body["instances"][0]["y"], dtype=dtype), value)
    described = rest.predict("pystages", "describe_input", [{"x": typed}])
    assert described == {"instances": [{"kind": f"ndarray:{dtype.name}:[3]"}]}


@pytest.mark.parametrize("name", ["float16", "uint64", "bool"])
def test_rest_b64_through_identity_model(rest: Rest, name: str) -> None:
    """Typed b64 values feed ONNX models of that dtype; the reply is JSON numbers (float16 as float)."""
    value = sample(name)
    typed = {"b64": base64.b64encode(value.tobytes()).decode(), "type": name, "shape": [3]}
    body = rest.predict("dtypes", f"id_{name}", [{"x": typed}])
    np.testing.assert_array_equal(np.array(body["instances"][0]["y"], dtype=name), value)


def test_rest_bytes_and_str_b64(rest: Rest) -> None:
    """b64 without type is bytes (reply `{"b64": ...}`); type "str" is a string (reply a JSON string)."""
    raw = b"\x00\x01binary\xff"
    encoded = base64.b64encode(raw).decode()
    body = rest.predict(
        "dtypes",
        "echo",
        [{"x": {"b64": encoded}}, {"x": {"b64": base64.b64encode("grüße".encode()).decode(), "type": "str"}}],
    )
    assert body == {"instances": [{"y": {"b64": encoded}}, {"y": "grüße"}]}
    kinds = rest.predict("pystages", "describe_input", [{"x": {"b64": encoded}}, {"x": "text"}])
    assert kinds == {"instances": [{"kind": f"ndarray:uint8:[{len(raw)}]"}, {"kind": "str"}]}


def test_rest_bytes_output_of_python_stage(rest: Rest) -> None:
    """A bytes result of a Python stage is `{"b64": ...}` in the REST reply."""
    body = rest.predict("pystages", "reverse_blob", {"b": {"b64": base64.b64encode(b"abc").decode()}})
    assert body == {"instances": [{"y": {"b64": base64.b64encode(b"cba").decode()}}]}
