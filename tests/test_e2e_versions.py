"""Versions: the `add` servable has version 1 (x1 + x2) and version 2 (x1 + x2 + 100); 0 means the newest."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from conftest import Grpc, Rest, assert_client_error, assert_rest_error

X1 = np.array([[1, 2], [3, 4]], dtype=np.float32)
X2 = np.array([[10, 20], [30, 40]], dtype=np.float32)
OFFSET = {0: 100.0, 1: 0.0, 2: 100.0}  # version -> what the served model adds on top of x1 + x2


def not_available(version: int) -> str:
    """MindSpore's text for a version that is not running."""
    return f"Request servable(add) method(add_common)  version({version}) , servable is not available"


@pytest.mark.parametrize("version", [0, 1, 2])
def test_version_selection_raw_grpc(grpc: Grpc, version: int) -> None:
    """version_number picks the model; the reply's servable_spec echoes the request unchanged (0 stays 0)."""
    reply = grpc.predict("add", "add_common", [{"x1": X1, "x2": X2}], version=version)
    outputs = grpc.ok(reply, 1)
    np.testing.assert_array_equal(outputs[0]["y"], X1 + X2 + OFFSET[version])
    assert outputs[0]["y"].shape == (2, 2)
    spec = reply.servable_spec
    assert (spec.name, spec.method_name, spec.version_number) == ("add", "add_common", version)


@pytest.mark.parametrize("version", [0, 1, 2])
def test_version_selection_client(make_client: Callable[..., Any], version: int) -> None:
    """Our Client's version_number selects the same way."""
    result = make_client("add", "add_common", version_number=version).infer([{"x1": X1, "x2": X2}])
    np.testing.assert_array_equal(result[0]["y"], X1 + X2 + OFFSET[version])


@pytest.mark.parametrize("version", [None, 0, 1, 2])
def test_version_selection_rest(rest: Rest, version: int | None) -> None:
    """REST `/version/<n>` selects; no version and version 0 mean the newest."""
    body = rest.predict("add", "add_common", [{"x1": X1.tolist(), "x2": X2.tolist()}], version=version)
    np.testing.assert_array_equal(np.array(body["instances"][0]["y"]), X1 + X2 + OFFSET[version or 0])


def test_rest_version_keyword_anywhere_in_url(rest: Rest) -> None:
    """The URL parser is keyword-based: `/version/1/model/add:add_common` selects version 1."""
    body = rest.post_json("/version/1/model/add:add_common", {"instances": [{"x1": X1.tolist(), "x2": X2.tolist()}]})
    np.testing.assert_array_equal(np.array(body["instances"][0]["y"]), X1 + X2)


def test_every_method_exists_in_every_version(grpc: Grpc) -> None:
    """Both versions serve both methods: add_cast casts ints, adds with that version's model, casts back."""
    x1 = np.array([[1, 2], [3, 4]], dtype=np.int32)
    x2 = np.array([[5, 6], [7, 8]], dtype=np.int32)
    for version in (1, 2):
        outputs = grpc.ok(grpc.predict("add", "add_cast", [{"x1": x1, "x2": x2}], version=version), 1)
        assert outputs[0]["y"].dtype == np.int32
        np.testing.assert_array_equal(outputs[0]["y"], x1 + x2 + int(OFFSET[version]))


def test_missing_version(grpc: Grpc, make_client: Callable[..., Any], rest: Rest) -> None:
    """A version that is not running: "servable is not available" (code 2) on every wire."""
    reply = grpc.predict("add", "add_common", [{"x1": X1, "x2": X2}], version=3)
    grpc.assert_failed(reply, 2, not_available(3))
    result = make_client("add", "add_common", version_number=3).infer([{"x1": X1, "x2": X2}])
    assert_client_error(result, not_available(3))
    body = rest.predict("add", "add_common", [{"x1": X1.tolist(), "x2": X2.tolist()}], version=3)
    assert_rest_error(body, not_available(3))
