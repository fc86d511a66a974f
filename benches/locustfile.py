"""Locust users for any rustserve (or MindSpore Serving) servable and method, over REST and gRPC.

Locust is not a project dependency (it pulls gevent, flask and more): `pip install locust`. Then, against a running
server (`rustserve start --dir examples/servables`):

    RUSTSERVE_SERVABLE=add RUSTSERVE_METHOD=add_common \\
    RUSTSERVE_INSTANCES='[{"x1": [[1.0, 2.0], [3.0, 4.0]], "x2": [[1.0, 2.0], [3.0, 4.0]]}]' \\
    locust -f benches/locustfile.py --headless -u 16 -r 16 -t 30s --host http://127.0.0.1:1500

Environment variables:

* `RUSTSERVE_SERVABLE`, `RUSTSERVE_METHOD` (required), `RUSTSERVE_VERSION` (default 0 = newest).
* `RUSTSERVE_INSTANCES`: the request's instances in MindSpore's REST JSON form (a list of {input: value}); a value
  may be `{"b64": "...", "type": ..., "shape": ...}` as in MindSpore. `RUSTSERVE_INSTANCES_FILE` reads it from a file.
* `RUSTSERVE_GRPC`: the gRPC address (default 127.0.0.1:5500). The REST address is locust's `--host`.
* `RUSTSERVE_USERS`: `rest`, `grpc` or `both` (default both: half the users each).

The gRPC user sends with rustserve's `Client` (MindSpore's client API), converting the JSON instances to numpy the
way MindSpore's REST decoder does (floats -> float32, ints -> int32, b64 -> bytes). Every answer is checked: a
reply with an error counts as a failure with the server's text.

Locust measures from Python, so its numbers include the client's own cost (hundreds of µs per gRPC call): use it
for load shapes, ramp-ups and soak runs; use `benches/compare.py` for the server's own throughput and latency.
"""

from __future__ import annotations

import base64
import json
import os
import time
from typing import Any

import numpy as np
from locust import User, between, task
from locust.contrib.fasthttp import FastHttpUser

SERVABLE = os.environ.get("RUSTSERVE_SERVABLE", "")
METHOD = os.environ.get("RUSTSERVE_METHOD", "")
VERSION = int(os.environ.get("RUSTSERVE_VERSION", "0"))
GRPC_ADDRESS = os.environ.get("RUSTSERVE_GRPC", "127.0.0.1:5500")
USERS = os.environ.get("RUSTSERVE_USERS", "both")


def _instances() -> list[dict[str, Any]]:
    text = os.environ.get("RUSTSERVE_INSTANCES")
    path = os.environ.get("RUSTSERVE_INSTANCES_FILE")
    if path:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    if not SERVABLE or not METHOD or not text:
        raise SystemExit(
            "set RUSTSERVE_SERVABLE, RUSTSERVE_METHOD and RUSTSERVE_INSTANCES (or _FILE): see the docstring"
        )
    instances = json.loads(text)
    if isinstance(instances, dict):
        instances = [instances]
    return instances


INSTANCES = _instances()
REST_BODY = json.dumps({"instances": INSTANCES})
REST_PATH = f"/model/{SERVABLE}" + (f"/version/{VERSION}" if VERSION else "") + f":{METHOD}"


def _numpy_value(value: Any) -> Any:
    """MindSpore's REST typing rules for one JSON value, as a client value for `Client.infer`."""
    if isinstance(value, dict) and "b64" in value:
        data = base64.b64decode(value["b64"])
        if value.get("type") in (None, "bytes"):
            return data
        array = np.frombuffer(data, dtype=np.dtype(value["type"]))
        return array.reshape(value["shape"]) if "shape" in value else array
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return np.bool_(value)
    array = np.asarray(value)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    if array.dtype.kind in "iu":
        return array.astype(np.int32)
    return array


GRPC_INSTANCES = [{name: _numpy_value(value) for name, value in instance.items()} for instance in INSTANCES]

if USERS != "rest":
    # Locust runs users as gevent greenlets; without this, grpcio's blocking calls stall every other user.
    import grpc.experimental.gevent as grpc_gevent

    grpc_gevent.init_gevent()


class RestUser(FastHttpUser):
    """POSTs the instances to the method's REST URL; a reply with `error_msg` is a failure."""

    # NOTE: FastHttpUser (geventhttpclient) rather than HttpUser (requests): locust's own per-request cost is what
    # limits a locust run against rustserve, and geventhttpclient's is several times lower.

    wait_time = between(0, 0)
    weight = 0 if USERS == "grpc" else 1

    @task
    def predict(self) -> None:
        with self.client.post(
            REST_PATH, data=REST_BODY, headers={"Content-Type": "application/json"}, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif "error_msg" in response.text:
                response.failure(response.text[:200])


class GrpcUser(User):
    """Calls `MSService.Predict` through rustserve's `Client` and reports each call to locust."""

    wait_time = between(0, 0)
    weight = 0 if USERS == "rest" else 1

    def on_start(self) -> None:
        from rustserve.client import Client

        self.grpc_client = Client(GRPC_ADDRESS, SERVABLE, METHOD, version_number=VERSION)

    def on_stop(self) -> None:
        self.grpc_client.close()

    @task
    def predict(self) -> None:
        start = time.perf_counter()
        error: Exception | None = None
        length = 0
        try:
            result = self.grpc_client.infer(GRPC_INSTANCES)
            if isinstance(result, dict) and "error" in result:
                error = RuntimeError(str(result["error"]))
            else:
                length = len(result)
                failed = [item["error"] for item in result if isinstance(item, dict) and "error" in item]
                if failed:
                    error = RuntimeError(str(failed[0]))
        except Exception as exc:  # noqa: BLE001 (every failure is reported to locust, none stops the user)
            error = exc
        self.environment.events.request.fire(
            request_type="gRPC",
            name=f"{SERVABLE}:{METHOD}",
            response_time=(time.perf_counter() - start) * 1000,
            response_length=length,
            exception=error,
            context={},
        )
