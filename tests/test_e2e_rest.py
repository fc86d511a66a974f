"""MindSpore REST wire: JSON values, instance forms, URL and body errors (compat section 10); always HTTP 200."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
from conftest import Rest, assert_rest_error

PARSE = "Parser request failed, "


def b64(data: bytes) -> str:
    """Base64 text of `data`."""
    return base64.b64encode(data).decode()


# --- values ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [3, -7, 1.5, True, False, "abc", [[1, 2], [3, 4]], [[[1.5], [2.5]]], [True, False, True], [[-1, 0, 1]]],
    ids=["int", "neg-int", "float", "true", "false", "str", "int-matrix", "float-3d", "bool-list", "int-row"],
)
def test_echo_json_values(rest: Rest, value: Any) -> None:
    """Scalars come back as scalars (shape []), nested lists keep their nesting, types survive the round trip."""
    body = rest.predict("dtypes", "echo", [{"x": value}])
    assert body == {"instances": [{"y": value}]}


def test_float_values_are_float32(rest: Rest) -> None:
    """JSON floats become float32: 0.1 comes back as float32(0.1) (printed either way, as float32 or as double)."""
    body = rest.predict("dtypes", "echo", [{"x": 0.1}, {"x": [0.1, 0.2]}])
    assert np.float32(body["instances"][0]["y"]) == np.float32(0.1)
    np.testing.assert_array_equal(np.array(body["instances"][1]["y"], dtype=np.float32), np.float32([0.1, 0.2]))


def test_several_instances_in_order(rest: Rest) -> None:
    """Each instance gets its own entry, in request order."""
    body = rest.predict("dtypes", "echo", [{"x": i * 10} for i in range(7)])
    assert body == {"instances": [{"y": i * 10} for i in range(7)]}


def test_single_instance_object_form(rest: Rest) -> None:
    """`{"instances": {...}}` is one instance; the reply is still a list of one."""
    assert rest.predict("dtypes", "echo", {"x": 5}) == {"instances": [{"y": 5}]}


def test_other_top_level_keys_are_ignored(rest: Rest) -> None:
    """Keys next to "instances" are ignored."""
    body = rest.post_json("/model/dtypes:echo", {"instances": [{"x": 1}], "signature_name": "x", "meta": {"a": 1}})
    assert body == {"instances": [{"y": 1}]}


def test_zero_length_dimension(rest: Rest) -> None:
    """A typed value with a 0-length dim travels (empty b64) and comes back as nested empty lists."""
    body = rest.predict("dtypes", "echo", [{"x": {"b64": "", "type": "fp32", "shape": [3, 0]}}])
    assert body == {"instances": [{"y": [[], [], []]}]}


def test_model_method_over_rest(rest: Rest) -> None:
    """A model method over REST: float lists in, float lists out."""
    body = rest.predict("add", "add_common", [{"x1": [[1.0, 2.0], [3.0, 4.0]], "x2": [[0.5, 0.5], [0.5, 0.5]]}], 1)
    assert body == {"instances": [{"y": [[1.5, 2.5], [3.5, 4.5]]}]}


# --- URL errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/mod/add:add_common", "please check url, the keyword:[model] must contain."),
        ("/model/add", "please check url, the keyword:[service method] must contain."),
        (
            "/model/add/version/-1:add_common",
            "please check url, version number range failed, request version number -1",
        ),
        (
            "/model/add/version/abc:add_common",
            "please check url, the keyword:[version] value invalid, request version number abc",
        ),
    ],
    ids=["no-model", "no-method", "negative-version", "bad-version"],
)
def test_url_errors(rest: Rest, path: str, expected: str) -> None:
    """Malformed URLs answer HTTP 200 with MindSpore's text (no prefix)."""
    assert_rest_error(rest.checked(rest.raw(path, b'{"instances": [{"x1": 1}]}')), expected)


@pytest.mark.parametrize("verb", ["GET", "PUT", "DELETE"])
def test_only_post(rest: Rest, verb: str) -> None:
    """Any verb but POST: HTTP 200 with "http message only support POST right now"."""
    response = rest.raw("/model/add:add_common", None if verb == "GET" else b"{}", verb=verb)
    assert_rest_error(rest.checked(response), "http message only support POST right now")


# --- body errors -----------------------------------------------------------------------------------------------


def test_empty_body(rest: Rest) -> None:
    """An empty body is "http message invalid"."""
    assert_rest_error(rest.checked(rest.raw("/model/add:add_common", b"")), "http message invalid")


def test_bad_json(rest: Rest) -> None:
    """Unparsable JSON starts with "Illegal JSON format."."""
    assert_rest_error(rest.checked(rest.raw("/model/add:add_common", b"{not json")), "Illegal JSON format.")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"inputs": [{"x": 1}]}, "key 'instances' expects to exist once, but actually 0 times"),
        ({"instances": []}, "instances value is array type, but no value"),
        ({"instances": [1, 2]}, "instances no key mode is not supported"),
        ({"instances": 5}, "instances no key mode is not supported"),
        ({"instances": [{"x": 1}, 3]}, "json array, instance is not object type"),
        ({"instances": [{}]}, "json array, instance is object type, but no value"),
        ({"instances": [{"": 1}]}, "string key is empty"),
        ({"instances": [{"x": [1, 2.5]}]}, "json array, elements type is not equal"),
        ({"instances": [{"x": [[1, 2], [3]]}]}, "invalid json array: json size is 1, the dim 1 expected to be 2"),
        ({"instances": [{"x": [[1, 2], 3]}]}, "invalid json array: json type is not array"),
        ({"instances": [{"x": [1, [2]]}]}, "json array, data should be number, bool, string or bytes"),
        ({"instances": [{"x": []}]}, "json array, shape is empty"),
        ({"instances": [{"x": [[]]}]}, "json array, data type is unknown"),
        ({"instances": [{"x": None}]}, "json value is null, it is not supported"),
        ({"instances": [{"x": ["a", "b"]}]}, "json array, string or bytes type only support one item"),
    ],
    ids=[
        "no-instances",
        "empty-list",
        "list-of-scalars",
        "scalar",
        "non-object-later",
        "empty-instance",
        "empty-key",
        "mixed-types",
        "ragged",
        "scalar-for-array",
        "array-for-scalar",
        "empty-array",
        "empty-nested-array",
        "null",
        "two-strings",
    ],
)
def test_body_errors(rest: Rest, body: Any, expected: str) -> None:
    """Body parse errors carry the "Parser request failed, " prefix."""
    assert_rest_error(rest.post_json("/model/dtypes:echo", body), PARSE + expected)


def test_nested_string_list_fails_tensor_check(rest: Rest) -> None:
    """`[["abc"]]` parses (shape [1,1]) but fails the string tensor check."""
    body = rest.predict("dtypes", "echo", [{"x": [["abc"]]}])
    assert set(body) == {"error_msg"}, body
    assert "bytes or string type input  shape can only be (1,) or empty, but given shape is [1, 1]" in body["error_msg"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"type": "fp32"}, "json object, 'b64' should be specified only one time"),
        ({"b64": "AAAA", "extra": 1}, "json object, key is not ['b64', 'type', 'shape'], fail key:extra"),
        ({"b64": "AAAA", "type": "complex"}, "json object, specified type:'complex' is illegal"),
        ({"b64": "AAAA", "type": 3}, "json object, key is 'type', value should be string type"),
        ({"b64": "AAAA", "type": "fp32", "shape": [-1]}, "json object, key is 'shape', array value should be unsigned"),
        (
            {"b64": "", "type": "fp32", "shape": [1, 2, 0, 1]},
            "json object, key is 'shape', invalid shape value [1,2,0,1]",
        ),
        (
            {"b64": "", "type": "float16", "shape": [1]},
            "size is not matched, decode base64 size:0; Given info: type:float16; type size:2; element nums:1",
        ),
        ({"b64": "@@@", "type": "bytes"}, "'@@@' is illegal b64 encode string"),
        ({"b64": 12}, "get scalar data failed, type is string, but json is not string type"),
        (
            {"b64": b64(b"ab"), "type": "bytes", "shape": [2]},
            "json object, only support scalar when data type is string or bytes, please check 'type' or 'shape'",
        ),
    ],
    ids=[
        "no-b64",
        "extra-key",
        "bad-type",
        "type-not-string",
        "negative-shape",
        "dim-after-zero",
        "size-mismatch",
        "bad-base64",
        "b64-not-string",
        "bytes-with-shape",
    ],
)
def test_b64_object_errors(rest: Rest, value: dict[str, Any], expected: str) -> None:
    """Typed b64 objects are validated with MindSpore's texts."""
    assert_rest_error(rest.predict("dtypes", "echo", [{"x": value}]), PARSE + expected)
