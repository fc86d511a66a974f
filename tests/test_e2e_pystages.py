"""Python stages: batch functions, value conversions, exceptions with per-instance isolation, garbage results."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import MS_BYTES, MS_STRING, NP_TO_MS, Grpc, Rest, assert_client_error, assert_error, assert_rest_error

SYSTEM_ERROR = 3


def call_failed(func: str, method: str, stage: int, message: str, tag: str | None = None) -> str:
    """MindSpore's text for a raising Python stage (compat section 7)."""
    prefix = tag or f"Function 'pystages.{func}'"
    return f"Call {prefix} Failed, method: '{method}', stage index(begin with 1): {stage}, error msg: {message}"


def floats(*values: float) -> list[dict[str, np.ndarray]]:
    """One instance {"x": float32 [2]} per value (sum = 2 * value, so negative values raise)."""
    return [{"x": np.array([v, v], dtype=np.float32)} for v in values]


# --- batch functions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 4, 6, 9])
def test_batch_function_list_form(grpc: Grpc, count: int) -> None:
    """`batch_size=4`: the function gets lists of at most 4 input tuples and returns one tuple per instance."""
    instances = floats(*range(1, count + 1))
    outputs = grpc.ok(grpc.predict("pystages", "batch_list", instances), count)
    for out, inst in zip(outputs, instances, strict=True):
        np.testing.assert_array_equal(out["y"], inst["x"] * inst["x"])
        assert out["batch_len"].dtype == np.int64 and out["batch_len"].shape == ()
        assert 1 <= int(out["batch_len"]) <= 4


def test_batch_function_generator_form(grpc: Grpc, make_client: Callable[..., Any]) -> None:
    """`batch_size=0` with a generator: one yield per instance, in order."""
    instances = floats(1, 2, 3, 4, 5)
    outputs = grpc.ok(grpc.predict("pystages", "batch_gen", instances), 5)
    for out, inst in zip(outputs, instances, strict=True):
        np.testing.assert_array_equal(out["y"], inst["x"] * 3)
    result = make_client("pystages", "batch_gen").infer(floats(7))
    np.testing.assert_array_equal(result[0]["y"], [21, 21])


def test_generator_error_fails_only_that_instance(grpc: Grpc) -> None:
    """A generator raising at instance k fails k only; it is called again for the rest."""
    instances = floats(1, -1, 2, 3)
    reply = grpc.predict("pystages", "batch_gen", instances)
    expected = call_failed("gen_triple", "batch_gen", 1, "negative input")
    grpc.assert_errors(reply, [(0, ""), (SYSTEM_ERROR, expected), (0, ""), (0, "")])
    outputs = grpc.outputs(reply)
    for i in (0, 2, 3):
        np.testing.assert_array_equal(outputs[i]["y"], instances[i]["x"] * 3)


def test_batch_function_raising_fails_its_task(grpc: Grpc) -> None:
    """A batch function that raises fails the instances of its call with its message; the bad instance always."""
    instances = floats(1, -1, 2)
    reply = grpc.predict("pystages", "batch_raising", instances)
    expected = call_failed("batch_raise", "batch_raising", 1, "negative in batch")
    errors = grpc.errors(reply)
    if len(errors) == 1:  # every instance was in a failing call: collapsed
        grpc.assert_failed(reply, SYSTEM_ERROR, expected)
        return
    assert len(errors) == 3 and errors[1][0] == SYSTEM_ERROR, errors
    outputs = grpc.outputs(reply)
    for i, (code, text) in enumerate(errors):
        if code:
            assert code == SYSTEM_ERROR and outputs[i] == {}, errors
            assert_error(text, expected)
        else:
            np.testing.assert_array_equal(outputs[i]["y"], instances[i]["x"])


# --- exceptions and per-instance isolation ---------------------------------------------------------------------


def test_raising_stage_mixed_reply_raw_grpc(grpc: Grpc) -> None:
    """One bad instance among good ones: one error_msg per instance, the bad one with empty items."""
    instances = floats(1, -1, 2)
    reply = grpc.predict("pystages", "raising", instances)
    expected = call_failed("raise_fn", "raising", 1, "negative input")
    grpc.assert_errors(reply, [(0, ""), (SYSTEM_ERROR, expected), (0, "")])
    outputs = grpc.outputs(reply)
    np.testing.assert_array_equal(outputs[0]["y"], instances[0]["x"])
    np.testing.assert_array_equal(outputs[2]["y"], instances[2]["x"])


def test_raising_stage_all_bad_collapses(grpc: Grpc, make_client: Callable[..., Any]) -> None:
    """All instances failing alike collapse into one error and zero instances; the Client returns a dict."""
    expected = call_failed("raise_fn", "raising", 1, "negative input")
    reply = grpc.predict("pystages", "raising", floats(-1, -2, -3))
    grpc.assert_failed(reply, SYSTEM_ERROR, expected)
    assert_client_error(make_client("pystages", "raising").infer(floats(-1, -2)), expected)
    assert_client_error(make_client("pystages", "raising").infer(floats(-1)), expected)


def test_raising_stage_mixed_reply_client(make_client: Callable[..., Any]) -> None:
    """Our Client puts {"error": msg} in the failed instance's slot."""
    result = make_client("pystages", "raising").infer(floats(-1, 5))
    assert isinstance(result, list) and len(result) == 2, result
    assert set(result[0]) == {"error"}, result
    assert_error(result[0]["error"], call_failed("raise_fn", "raising", 1, "negative input"))
    np.testing.assert_array_equal(result[1]["y"], [5, 5])


def test_raising_later_stage_reports_its_index(grpc: Grpc) -> None:
    """The stage index counts add_stage calls from 1: the raise in the second stage says 2."""
    reply = grpc.predict("pystages", "raising_late", floats(-5, -0.25))
    grpc.assert_errors(reply, [(SYSTEM_ERROR, call_failed("raise_fn", "raising_late", 2, "negative input")), (0, "")])
    np.testing.assert_array_equal(grpc.outputs(reply)[1]["y"], [0.75, 0.75])


def test_raising_stage_with_tag(grpc: Grpc) -> None:
    """`tag=` replaces "Function '<servable>.<func>'" in the message."""
    reply = grpc.predict("pystages", "raising_tagged", floats(-1))
    expected = call_failed("raise_fn", "raising_tagged", 1, "negative input", tag="Preprocess")
    grpc.assert_failed(reply, SYSTEM_ERROR, expected)


def test_raising_stage_rest(rest: Rest) -> None:
    """REST: a partial failure is `{"error_msg": ...}` inside instances; a full one is the top-level error_msg."""
    expected = call_failed("raise_fn", "raising", 1, "negative input")
    mixed = rest.predict("pystages", "raising", [{"x": 1}, {"x": -1}, {"x": 2.5}])
    assert set(mixed) == {"instances"} and len(mixed["instances"]) == 3, mixed
    assert mixed["instances"][0] == {"y": 1} and mixed["instances"][2] == {"y": 2.5}
    assert set(mixed["instances"][1]) == {"error_msg"}, mixed
    assert_error(mixed["instances"][1]["error_msg"], expected)
    assert_rest_error(rest.predict("pystages", "raising", [{"x": -1}, {"x": -2}]), expected)


# --- garbage results -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "func", "detail"),
    [
        ("garbage_none", "returns_none", "Get illegal result data with type <class 'NoneType'>"),
        ("garbage_count", "returns_three", "The outputs number 3 of one instance returned by function"),
        ("garbage_short", "batch_short", "The number 0 of instances returned by function"),
    ],
    ids=["none", "wrong-output-count", "too-few-instances"],
)
def test_garbage_result_fails_request_and_server_keeps_serving(grpc: Grpc, method: str, func: str, detail: str) -> None:
    """A stage breaking its contract fails the request (never a hang, never a dead server); the next one works."""
    for _ in range(2):
        reply = grpc.predict("pystages", method, floats(1, 2))
        errors = grpc.errors(reply)
        assert errors, "a broken stage result must not succeed"
        prefix = f"Call Function 'pystages.{func}' Failed, method: '{method}', stage index(begin with 1): 1"
        for code, text in errors:
            assert code != 0 and text.startswith(prefix) and detail in text, errors
        good = grpc.predict("pystages", "raising", floats(4))
        np.testing.assert_array_equal(grpc.ok(good, 1)[0]["y"], [4, 4])


# --- value conversions -----------------------------------------------------------------------------------------


def test_stage_result_conversions_raw_grpc(grpc: Grpc) -> None:
    """int -> int64 [], float -> float64 [], bool -> bool [], str -> MS_STRING [], bytes -> MS_BYTES [], numpy as is."""
    reply = grpc.predict("pystages", "convert_values", floats(2.0))
    grpc.ok(reply, 1)
    items = reply.instances[0].items
    expected_types = {
        "as_int": (NP_TO_MS[np.dtype(np.int64)], []),
        "as_float": (NP_TO_MS[np.dtype(np.float64)], []),
        "as_bool": (NP_TO_MS[np.dtype(np.bool_)], []),
        "as_str": (MS_STRING, []),
        "as_bytes": (MS_BYTES, []),
        "as_f16": (NP_TO_MS[np.dtype(np.float16)], []),
        "as_array": (NP_TO_MS[np.dtype(np.float64)], [2]),
    }
    assert {name: (t.dtype, list(t.shape.dims)) for name, t in items.items()} == expected_types
    values = {name: grpc.value(t) for name, t in items.items()}
    assert int(values["as_int"]) == 4 and float(values["as_float"]) == 4.0 and bool(values["as_bool"]) is True
    assert values["as_str"] == "sum=4" and values["as_bytes"] == b"\x00sum4"
    assert float(values["as_f16"]) == 4.0
    np.testing.assert_array_equal(values["as_array"], [4.0, -4.0])


def test_stage_result_conversions_rest(rest: Rest) -> None:
    """The same results as REST JSON: numbers, bool, string, and `{"b64": ...}` for bytes."""
    body = rest.predict("pystages", "convert_values", [{"x": [-1.5, 0.5]}])
    assert body == {
        "instances": [
            {
                "as_int": -1,
                "as_float": -1.0,
                "as_bool": False,
                "as_str": "sum=-1",
                "as_bytes": {"b64": base64.b64encode(b"\x00sum-1").decode()},
                "as_f16": -1.0,
                "as_array": [-1.0, 1.0],
            }
        ]
    }


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (3, "ndarray:int64:[1]"),
        (2.5, "ndarray:float64:[1]"),
        (True, "ndarray:bool:[1]"),
        ("text", "str"),
        (b"\x00\x01\x02", "ndarray:uint8:[3]"),
        (np.float32(1.5), "ndarray:float32:[]"),
        (np.zeros((2, 3), dtype=np.uint16), "ndarray:uint16:[2, 3]"),
    ],
    ids=["int", "float", "bool", "str", "bytes", "np-scalar", "array"],
)
def test_client_values_as_seen_by_a_stage(make_client: Callable[..., Any], value: Any, kind: str) -> None:
    """Client conversions (Python scalars -> shape [1]) and stage inputs (bytes -> uint8 array, str -> str)."""
    assert make_client("pystages", "describe_input").infer({"x": value}) == [{"kind": kind}]


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (3, "ndarray:int32:[]"),
        (1.5, "ndarray:float32:[]"),
        (True, "ndarray:bool:[]"),
        ("abc", "str"),
        (["abc"], "str"),
        ([[1, 2], [3, 4]], "ndarray:int32:[2, 2]"),
        ([[1.5], [2.5], [3.5]], "ndarray:float32:[3, 1]"),
        ([True, False], "ndarray:bool:[2]"),
    ],
    ids=["int", "float", "bool", "str", "str-list", "int-matrix", "float-matrix", "bool-list"],
)
def test_rest_values_as_seen_by_a_stage(rest: Rest, value: Any, kind: str) -> None:
    """REST JSON ints are int32, floats float32, scalars shape []; nested lists keep their shape."""
    assert rest.predict("pystages", "describe_input", [{"x": value}]) == {"instances": [{"kind": kind}]}


def test_arrays_that_cannot_be_shared_are_copied_before_a_later_stage_edits_them(grpc: Grpc) -> None:
    """A returned read-only array (over a `bytes` constant), a strided one and one the module keeps are copied into
    the pipeline: a later stage's in-place edit changes the copy, never the original, so every request sees the same
    answer."""
    for _ in range(3):
        (out,) = grpc.ok(grpc.predict("pystages", "edit_unshareable", floats(1)), 1)
        np.testing.assert_array_equal(out["ro"], np.array([2, 3, 4, 5], dtype=np.uint8))
        np.testing.assert_array_equal(out["strided"], np.array([1, 3, 5, 7], dtype=np.int32))
        np.testing.assert_array_equal(out["kept"], np.array([11, 21], dtype=np.int64))
