"""Routing and input errors with MindSpore's texts and codes (compat sections 6 and 9); the server stays up."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import (
    MS_STRING,
    DeadlineClient,
    Grpc,
    Rest,
    ServerProcess,
    assert_client_error,
    assert_error,
    assert_rest_error,
    free_port,
)

INVALID_INPUTS = 2

X1 = np.ones((2, 2), dtype=np.float32)
X2 = np.full((2, 2), 2, dtype=np.float32)
GOOD = {"x1": X1, "x2": X2}


def assert_add_works(grpc: Grpc) -> None:
    """A good add_common request still succeeds (version 2: x1 + x2 + 100)."""
    outputs = grpc.ok(grpc.predict("add", "add_common", [GOOD]), 1)
    np.testing.assert_array_equal(outputs[0]["y"], X1 + X2 + 100)


# --- routing ---------------------------------------------------------------------------------------------------


def test_unknown_servable(grpc: Grpc, make_client: Callable[..., Any], rest: Rest) -> None:
    """An unknown servable is "servable is not available" (code 2) on every wire."""
    expected = "Request servable(nope) method(add_common) , servable is not available"
    grpc.assert_failed(grpc.predict("nope", "add_common", [GOOD]), INVALID_INPUTS, expected)
    assert_client_error(make_client("nope", "add_common").infer(GOOD), expected)
    assert_rest_error(rest.predict("nope", "add_common", [{"x1": X1.tolist(), "x2": X2.tolist()}]), expected)
    assert_add_works(grpc)


def test_unknown_method(grpc: Grpc, make_client: Callable[..., Any], rest: Rest) -> None:
    """An unknown method is "method is not available" (code 2)."""
    expected = "Request servable(add) method(nope) , method is not available"
    grpc.assert_failed(grpc.predict("add", "nope", [GOOD]), INVALID_INPUTS, expected)
    assert_client_error(make_client("add", "nope").infer(GOOD), expected)
    assert_rest_error(rest.predict("add", "nope", [{"x1": X1.tolist(), "x2": X2.tolist()}]), expected)
    assert_add_works(grpc)


def test_unknown_method_in_explicit_version(grpc: Grpc) -> None:
    """The version part of the spec text appears when a version > 0 was asked."""
    reply = grpc.predict("add", "nope", [GOOD], version=1)
    code, text = grpc.failed(reply)
    assert code == INVALID_INPUTS
    assert_error(text, "Request servable(add) method(nope)  version(1) , ")


# --- input names -----------------------------------------------------------------------------------------------


def test_missing_input(grpc: Grpc, make_client: Callable[..., Any], rest: Rest) -> None:
    """A missing input fails the whole request with MindSpore's text (code 2)."""
    expected = "Cannot find input x2 in instance input , servable add, method add_common"
    grpc.assert_failed(grpc.predict("add", "add_common", [{"x1": X1}]), INVALID_INPUTS, expected)
    assert_client_error(make_client("add", "add_common").infer({"x1": X1}), expected)
    assert_rest_error(rest.predict("add", "add_common", [{"x1": X1.tolist()}]), expected)
    assert_add_works(grpc)


def test_missing_input_in_one_instance_fails_the_request(grpc: Grpc) -> None:
    """One instance without x2 fails the whole request, not just that instance."""
    reply = grpc.predict("add", "add_common", [GOOD, {"x1": X1}, GOOD])
    grpc.assert_failed(
        reply, INVALID_INPUTS, "Cannot find input x2 in instance input , servable add, method add_common"
    )


def test_extra_inputs_are_ignored(grpc: Grpc, rest: Rest) -> None:
    """Inputs the method does not declare are ignored."""
    outputs = grpc.ok(grpc.predict("add", "add_common", [{**GOOD, "x3": np.zeros(3, np.int8), "note": "hi"}]), 1)
    np.testing.assert_array_equal(outputs[0]["y"], X1 + X2 + 100)
    body = rest.predict("add", "add_common", [{"x1": X1.tolist(), "x2": X2.tolist(), "extra": [1, 2, 3]}])
    np.testing.assert_array_equal(np.array(body["instances"][0]["y"]), X1 + X2 + 100)


# --- model input checks (per instance) -------------------------------------------------------------------------


def test_wrong_dtype(grpc: Grpc, make_client: Callable[..., Any]) -> None:
    """An int32 tensor for a float32 model input: per-instance dtype check (code 2)."""
    expected = "Given model input 0 data type kMSI_Int32 not match the data type kMSI_Float32 defined in model"
    reply = grpc.predict("add", "add_common", [{"x1": X1.astype(np.int32), "x2": X2}])
    grpc.assert_failed(reply, INVALID_INPUTS, expected)
    assert_client_error(make_client("add", "add_common").infer({"x1": X1.astype(np.int32), "x2": X2}), expected)
    # Same item size, so only the dtype differs (the spec leaves open whether size or dtype is checked first).
    expected_second = "Given model input 1 data type kMSI_Uint32 not match the data type kMSI_Float32 defined in model"
    reply = grpc.predict("add", "add_common", [{"x1": X1, "x2": X2.astype(np.uint32)}])
    grpc.assert_failed(reply, INVALID_INPUTS, expected_second)
    assert_add_works(grpc)


def test_wrong_size(grpc: Grpc, rest: Rest) -> None:
    """A [2,3] float32 instance (24 bytes) for a [2,2] float32 input (16 bytes): size check (code 2)."""
    expected = "Given model input 0 size 24 not match the size 16 defined in model"
    reply = grpc.predict("add", "add_common", [{"x1": np.ones((2, 3), np.float32), "x2": X2}])
    grpc.assert_failed(reply, INVALID_INPUTS, expected)
    body = rest.predict("add", "add_common", [{"x1": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "x2": X2.tolist()}])
    assert_rest_error(body, expected)


def test_wrong_size_batched_model(grpc: Grpc) -> None:
    """With a batch dim the per-instance slot is compared: 16 bytes against 12 (float32 [3])."""
    reply = grpc.predict("batching", "add_fixed", [{"x1": np.ones(4, np.float32), "x2": np.ones(3, np.float32)}])
    grpc.assert_failed(reply, INVALID_INPUTS, "Given model input 0 size 16 not match the size 12 defined in model")


def test_rest_int_values_for_float_model(rest: Rest) -> None:
    """REST JSON ints are int32, so they fail a float32 model input; add_cast accepts them."""
    ints = {"x1": [[1, 2], [3, 4]], "x2": [[5, 6], [7, 8]]}
    body = rest.predict("add", "add_common", [ints])
    assert_rest_error(body, "Given model input 0 data type kMSI_Int32 not match the data type kMSI_Float32")
    assert rest.predict("add", "add_cast", [ints]) == {"instances": [{"y": [[106, 108], [110, 112]]}]}


def test_bad_instance_among_good_ones(grpc: Grpc) -> None:
    """Input checks are per instance: the others still run."""
    bad = {"x1": X1.astype(np.int32), "x2": X2}
    reply = grpc.predict("add", "add_common", [GOOD, bad, GOOD])
    expected = "Given model input 0 data type kMSI_Int32 not match the data type kMSI_Float32 defined in model"
    grpc.assert_errors(reply, [(0, ""), (INVALID_INPUTS, expected), (0, "")])
    for i in (0, 2):
        np.testing.assert_array_equal(grpc.value(reply.instances[i].items["y"]), X1 + X2 + 100)


# --- request tensor checks -------------------------------------------------------------------------------------


def test_tensor_data_size_mismatch(grpc: Grpc) -> None:
    """data shorter than shape x itemsize: tensor check (code 2)."""
    pb2 = grpc.pb2
    short = pb2.Tensor(shape=pb2.TensorShape(dims=[2, 2]), dtype=grpc.tensor(X1).dtype, data=X1.tobytes()[:12])
    reply = grpc.predict("add", "add_common", [{"x1": short, "x2": X2}])
    expected = "Instances input x1 check failed, detail: Tensor check failed: input data size 12 invalid"
    grpc.assert_failed(reply, INVALID_INPUTS, expected)


@pytest.mark.parametrize("dims", [[0, 3], [-1, 2]], ids=["dim-after-zero", "negative"])
def test_tensor_invalid_shape(grpc: Grpc, dims: list[int]) -> None:
    """A negative dim or any dim after a 0 dim is rejected."""
    pb2 = grpc.pb2
    tensor = pb2.Tensor(shape=pb2.TensorShape(dims=dims), dtype=grpc.tensor(X1).dtype, data=b"")
    reply = grpc.predict("add", "add_common", [{"x1": tensor, "x2": X2}])
    shape = "[" + ", ".join(str(d) for d in dims) + "]"
    expected = f"Instances input x1 check failed, detail: Tensor check failed: input  shape {shape} invalid"
    grpc.assert_failed(reply, INVALID_INPUTS, expected)


def test_tensor_unknown_dtype(grpc: Grpc) -> None:
    """MS_UNKNOWN has no item size: tensor check (code 2)."""
    pb2 = grpc.pb2
    tensor = pb2.Tensor(shape=pb2.TensorShape(dims=[2, 2]), dtype=0, data=X1.tobytes())
    reply = grpc.predict("add", "add_common", [{"x1": tensor, "x2": X2}])
    grpc.assert_failed(
        reply, INVALID_INPUTS, "Instances input x1 check failed, detail: Tensor check failed: input data type"
    )


def test_string_tensor_checks(grpc: Grpc) -> None:
    """A string tensor needs exactly one bytes_val and shape [] or [1]."""
    pb2 = grpc.pb2
    two = pb2.Tensor(shape=pb2.TensorShape(dims=[2]), dtype=MS_STRING, bytes_val=[b"a", b"b"])
    reply = grpc.predict("dtypes", "echo", [{"x": two}])
    code, text = grpc.failed(reply)
    assert code == INVALID_INPUTS
    assert_error(text, "Instances input x check failed, detail: ")
    assert "Instance tensor check failed: bytes or string type shape batch size can only be 1" in text
    nested = pb2.Tensor(shape=pb2.TensorShape(dims=[1, 1]), dtype=MS_STRING, bytes_val=[b"a"])
    code, text = grpc.failed(grpc.predict("dtypes", "echo", [{"x": nested}]))
    assert code == INVALID_INPUTS
    assert (
        "Instance tensor check failed: bytes or string type input  shape can only be (1,) or empty, "
        "but given shape is [1, 1]" in text
    )


# --- zero instances and transport ------------------------------------------------------------------------------


def test_zero_instances_is_an_error_not_a_hang(grpc: Grpc, make_client: Callable[..., Any], rest: Rest) -> None:
    """MindSpore 2.0.2 hangs here; rustserve answers with the intended error (code 2)."""
    expected = "Instances count of request cannot be 0, servable: add, method: add_common"
    grpc.assert_failed(grpc.predict("add", "add_common", [], timeout=30), INVALID_INPUTS, expected)
    assert_client_error(make_client("add", "add_common").infer([]), expected)
    assert_rest_error(
        rest.predict("add", "add_common", []), "Parser request failed, instances value is array type, but no value"
    )
    assert_add_works(grpc)


def test_client_transport_error_is_returned() -> None:
    """Our Client returns gRPC transport failures as {"error": "Grpc Error, (14, 'unavailable'), ..."}."""
    from rustserve.client import Client

    client = DeadlineClient(Client(f"127.0.0.1:{free_port()}", "add", "add_common"))
    assert_client_error(client.infer(GOOD), "Grpc Error, (14, 'unavailable')")


def test_server_survives_an_error_storm(grpc: Grpc, rest: Rest, server: ServerProcess) -> None:
    """Many failing requests of every kind in a row; then a good request still works on both wires."""
    for _ in range(3):
        grpc.predict("nope", "x", [GOOD])
        grpc.predict("add", "add_common", [{"x1": X1}])
        grpc.predict("add", "add_common", [{"x1": X1.astype(np.int8), "x2": X2}])
        grpc.predict("add", "add_common", [])
        grpc.predict("pystages", "raising", [{"x": np.float32(-1)}])
        grpc.predict("pystages", "garbage_none", [{"x": np.float32(1)}])
        rest.raw("/model/add:add_common", b"{not json")
    assert server.alive()
    assert_add_works(grpc)
    body = rest.predict("add", "add_common", [{"x1": X1.tolist(), "x2": X2.tolist()}])
    np.testing.assert_array_equal(np.array(body["instances"][0]["y"]), X1 + X2 + 100)
