"""Huge requests: what one request may hold, and that the server keeps serving everyone else.

The instances of one request count against the model queue limit (`--max-queued-instances`): a request with more
instances than the limit is refused at once, naming the limit and the setting that raises it; one within it is
answered in full.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import models
import numpy as np
from conftest import ADD_CONFIG, Grpc, ServerProcess

INVALID_INPUTS = 2
LIMIT = 1000


def test_a_request_larger_than_the_model_queue_limit_is_refused_at_once(
    make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess], pb2_modules: tuple[Any, Any]
) -> None:
    folder = make_servable("add", ADD_CONFIG)
    models.build_add(folder / "1" / "add.onnx")
    server = start_server(folder.parent, extra=["--max-queued-instances", str(LIMIT)])
    grpc = Grpc(*pb2_modules, server.grpc_address)
    try:
        x = np.arange(4, dtype=np.float32).reshape(2, 2)
        code, text = grpc.failed(grpc.predict("add", "add_common", [{"x1": x, "x2": x}] * (LIMIT + 1)))
        assert code == INVALID_INPUTS
        assert text.startswith(
            f"Serving Error: the request has {LIMIT + 1} instances, more than the {LIMIT} that may queue for model "
            "'add.onnx' (servable: add, version: 1, method: add_common)"
        ), text
        assert "--max-queued-instances (server.set_max_queued_instances)" in text, text
        # Exactly the limit fits, every instance answered in order.
        instances = [{"x1": x + i, "x2": x} for i in range(LIMIT)]
        outputs = grpc.ok(grpc.predict("add", "add_common", instances), LIMIT)
        for i, out in enumerate(outputs):
            np.testing.assert_array_equal(out["y"], 2 * x + i)
    finally:
        grpc.close()
