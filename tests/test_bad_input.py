"""The bad-input matrix: one table of bad requests over every protocol, each answered with a clear error.

Every row sends one bad request over one wire (MindSpore gRPC `MSService.Predict` with plain pb2 messages, MindSpore
REST, KServe v2 REST, KServe v2 gRPC) and asserts the status or code, that the error text names what is wrong, and
that the next good request over the same wire on the same server succeeds.

The server is this module's own `rustserve start` with `--num-parallel-workers 5` (four worker processes next to
the server's Python thread, so `os._exit` in a stage can be tried where it is survivable), `--max-msg-mb-size 1` (so
"over the limit" is cheap to send) and `--request-timeout-s 2` (so a hanging stage is cut off quickly). Its tree:
`add` (MindSpore's [2,2] add model, `with_batch_dim=False`) and `bad` (stages that break their contract, a worker
killer, a sleeper, a Sqrt model whose output is NaN for negative inputs, and a stage-free string echo).

Rules the table pins, beyond "error + next request works":

* MindSpore's model input check compares byte sizes, as MindSpore does: an input of another rank but the same element
  count as the model input (e.g. [4] for [2,2]) is accepted and reshaped; a different element count is an error.
* MindSpore REST's JSON object with a key given twice takes the last value (JSON objects have no duplicate keys);
  protobuf maps likewise keep the last entry. KServe v2 lists inputs, so a duplicate there is an error.
* Many instances in one request are served: the message size limit bounds them. A v2 batch is capped at 2^20 rows,
  because rows of zero elements cost no bytes ([2^62, 0] would otherwise allocate 2^62 instances).
* A Python stage that fails is reported like MindSpore's system error (code 3), and as 400 / INVALID_ARGUMENT on
  v2; a request timeout or a dead worker process is "unavailable" (code 4, 503, UNAVAILABLE): retrying may work.
* gRPC messages over the limit are refused with RESOURCE_EXHAUSTED from their header, before the body is read.
* NaN from a model is data, not an error: JSON has no NaN, so the REST wires write it as `null`.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import models
import numpy as np
import pytest
import requests
from conftest import ADD_CONFIG, RPC_TIMEOUT_S, Grpc, ServerProcess, launch_server, write_servable
from onnx import TensorProto, helper

grpc_mod = pytest.importorskip("grpc")
v2_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
v2_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")

LIMIT_MB = 1
# Worker processes: one per os._exit row plus one, so a live worker is always there while a dead one backs off.
WORKERS = 5
TIMEOUT_S = 2
TIMEOUT_TEXT = "request timed out after 2.000 s (request timeout), servable: bad, method: sleep"
OVER_LIMIT = (LIMIT_MB << 20) + 4096

BAD_CONFIG = '''
"""Stages that break their contract, a model whose output is NaN, a worker that dies, and a string echo."""
import os
import sys
import time

import numpy as np

from rustserve.server import register

sqrt = register.declare_model(model_file="sqrt.onnx", model_format="ONNX", with_batch_dim=True, max_batch_size=4)


def _in_worker():
    main = sys.modules.get("__main__")
    return os.path.basename(getattr(main, "__file__", None) or "") == "worker.py"


def raise_fn(x):
    raise ValueError("stage failed on purpose")


def three(x):
    return x, x, x


def unsupported(x):
    return object()


def exit_in_worker(x):
    if _in_worker():
        os._exit(3)
    return x


def sleep_fn(x):
    time.sleep(float(np.asarray(x).sum()))
    return x


@register.register_method(output_names=["y"])
def raising(x):
    return register.add_stage(raise_fn, x, outputs_count=1)


@register.register_method(output_names=["a", "b"])
def wrong_count(x):
    a, b = register.add_stage(three, x, outputs_count=2)
    return a, b


@register.register_method(output_names=["y"])
def wrong_type(x):
    return register.add_stage(unsupported, x, outputs_count=1)


@register.register_method(output_names=["y"])
def exit_worker(x):
    return register.add_stage(exit_in_worker, x, outputs_count=1)


@register.register_method(output_names=["y"])
def sleep(x):
    return register.add_stage(sleep_fn, x, outputs_count=1)


@register.register_method(output_names=["y"])
def root(x):
    return register.add_stage(sqrt, x, outputs_count=1)


@register.register_method(output_names=["y"])
def text(s):
    return s
'''

LAUNCHER = f"""
import sys

from rustserve.cli import main

flags = ["--num-parallel-workers", "{WORKERS}", "--max-msg-mb-size", "{LIMIT_MB}"]
flags += ["--request-timeout-s", "{TIMEOUT_S}"]
sys.exit(main([*sys.argv[1:], *flags]))
"""

X = np.ones((2, 2), dtype=np.float32)
XB = X.tobytes()
XL = X.tolist()
MS_FLOAT32, MS_INT32, MS_STRING = 11, 6, 13
INVALID_INPUTS, SYSTEM_ERROR, WORKER_UNAVAILABLE = 2, 3, 4


def _build_sqrt(path: Path) -> Path:
    """y = sqrt(x), float32 [batch, 2] with a symbolic batch: NaN for negative inputs."""
    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["x"], ["y"])],
        "sqrt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    return models._save(graph, path)


# ---------------------------------------------------------------------------------------------------------------
# the four wires, each answering (status, text)
# ---------------------------------------------------------------------------------------------------------------


class Wires:
    """The module server's four protocols; every `send` returns `(status, text)` instead of raising.

    Status is `ok`, `ms:<error_code>` (MindSpore in-band error), `http:<status>` or the gRPC code name.
    """

    def __init__(self, server: ServerProcess, pb2: Any, pb2_grpc: Any):
        self.ms = Grpc(pb2, pb2_grpc, server.grpc_address)
        self.pb2 = pb2
        self.base = server.rest_base
        self.server_pid = server.proc.pid
        self.http = requests.Session()
        self.channel = grpc_mod.insecure_channel(
            server.grpc_address,
            options=[("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)],
        )
        self.v2 = v2_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self._raw_ms = self.channel.unary_unary(
            "/mindspore.serving.proto.MSService/Predict",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        self._raw_v2 = self.channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )

    def close(self) -> None:
        """Closes the channels and the HTTP session."""
        self.ms.close()
        self.channel.close()
        self.http.close()

    # --- MindSpore gRPC ---

    def tensor(self, dims: list[int], dtype: int, data: bytes = b"", bytes_val: list[bytes] | None = None) -> Any:
        """A raw pb2 `Tensor` (no checks: the point is to send bad ones)."""
        pb2 = self.pb2
        return pb2.Tensor(shape=pb2.TensorShape(dims=dims), dtype=dtype, data=data, bytes_val=bytes_val or [])

    def ms_request(self, servable: str, method: str, instances: list[dict[str, Any]], version: int = 0) -> Any:
        """A `PredictRequest` of raw tensors."""
        pb2 = self.pb2
        request = pb2.PredictRequest(
            servable_spec=pb2.ServableSpec(name=servable, method_name=method, version_number=version)
        )
        for items in instances:
            instance = request.instances.add()
            for name, tensor in items.items():
                instance.items[name].CopyFrom(tensor)
        return request

    def ms_send(self, request: Any) -> tuple[str, str]:
        """Sends a `PredictRequest` (or raw bytes) to `MSService.Predict`."""
        try:
            if isinstance(request, bytes):
                reply = self.ms.pb2.PredictReply.FromString(self._raw_ms(request, timeout=RPC_TIMEOUT_S))
            else:
                reply = self.ms.send(request)
        except grpc_mod.RpcError as exc:
            return exc.code().name, exc.details() or ""
        errors = [(code, text) for code, text in self.ms.errors(reply) if code]
        if errors:
            return f"ms:{errors[0][0]}", errors[0][1]
        return "ok", repr(self.ms.outputs(reply))

    def ms_add(self, x2: Any, servable: str = "add", method: str = "add_common") -> tuple[str, str]:
        """add_common with a good x1 and the given pb2 tensor as x2."""
        return self.ms_send(self.ms_request(servable, method, [{"x1": self.tensor([2, 2], MS_FLOAT32, XB), "x2": x2}]))

    def ms_x(self, method: str, x: np.ndarray | None = None) -> tuple[str, str]:
        """A `bad` method with one float32 input `x` ([2] ones by default)."""
        x = np.ones(2, np.float32) if x is None else x
        return self.ms_send(
            self.ms_request("bad", method, [{"x": self.tensor(list(x.shape), MS_FLOAT32, x.tobytes())}])
        )

    # --- MindSpore REST ---

    def rest(self, path: str, body: bytes | str | Any) -> tuple[str, str]:
        """POSTs `body` (bytes/str as is, anything else as JSON); the text is `error_msg` or the whole body."""
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        response = self.http.post(self.base + path, data=data, timeout=RPC_TIMEOUT_S)
        if response.status_code != 200:
            return f"http:{response.status_code}", response.text
        reply = response.json()
        if isinstance(reply, dict) and "error_msg" in reply:
            return "ms:rest", str(reply["error_msg"])
        instance_errors = [
            i["error_msg"] for i in reply.get("instances", []) if isinstance(i, dict) and "error_msg" in i
        ]
        if instance_errors:
            return "ms:rest", str(instance_errors[0])
        return "ok", response.text

    def rest_add(self, x2: Any) -> tuple[str, str]:
        """MindSpore REST add_common with a good x1 and `x2` as the JSON value."""
        return self.rest("/model/add:add_common", {"instances": [{"x1": XL, "x2": x2}]})

    # --- KServe v2 REST ---

    def v2_rest(self, model: str, body: bytes | str | Any, headers: dict[str, str] | None = None) -> tuple[str, str]:
        """POSTs to `/v2/models/<model>/infer`; the text is `error` or the whole body."""
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        response = self.http.post(
            f"{self.base}/v2/models/{model}/infer", data=data, headers=headers or {}, timeout=RPC_TIMEOUT_S
        )
        if response.status_code == 200:
            return "ok", response.text
        try:
            return f"http:{response.status_code}", str(response.json()["error"])
        except (ValueError, KeyError, TypeError):
            return f"http:{response.status_code}", response.text

    def v2_rest_add(self, **x2: Any) -> tuple[str, str]:
        """v2 REST add.add_common with a good x1 and x2's fields overridden by `x2`."""
        good = {"name": "x2", "datatype": "FP32", "shape": [2, 2], "data": [1.0] * 4}
        return self.v2_rest("add.add_common", {"inputs": [{**good, "name": "x1"}, {**good, **x2}]})

    # --- KServe v2 gRPC ---

    @staticmethod
    def v2_input(name: str, datatype: str, shape: list[int]) -> Any:
        """An `InferInputTensor` header (its bytes go in raw_input_contents)."""
        return v2_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)

    def v2_grpc(self, request: Any) -> tuple[str, str]:
        """Sends a `ModelInferRequest` (or raw bytes) to `ModelInfer`."""
        try:
            if isinstance(request, bytes):
                self._raw_v2(request, timeout=RPC_TIMEOUT_S)
                return "ok", ""
            reply = self.v2.ModelInfer(request, timeout=RPC_TIMEOUT_S)
        except grpc_mod.RpcError as exc:
            return exc.code().name, exc.details() or ""
        return "ok", repr(list(reply.raw_output_contents))

    def v2_grpc_add(self, x2: Any, raw: bytes = XB, model: str = "add.add_common") -> tuple[str, str]:
        """v2 gRPC with a good x1 and the given x2 header and bytes."""
        request = v2_pb2.ModelInferRequest(
            model_name=model, inputs=[self.v2_input("x1", "FP32", [2, 2]), x2], raw_input_contents=[XB, raw]
        )
        return self.v2_grpc(request)

    def v2_grpc_x(self, method: str) -> tuple[str, str]:
        """v2 gRPC call of a `bad` method with x = [[1, 1]]."""
        request = v2_pb2.ModelInferRequest(
            model_name=f"bad.{method}",
            inputs=[self.v2_input("x", "FP32", [1, 2])],
            raw_input_contents=[np.ones(2, np.float32).tobytes()],
        )
        return self.v2_grpc(request)

    # --- good requests (the server must still serve them after every row) ---

    def good(self, wire: str) -> None:
        """Sends a good add request over `wire` and asserts y = x1 + x2 exactly."""
        expected = X + X
        if wire == "ms_grpc":
            reply = self.ms.send(
                self.ms_request(
                    "add",
                    "add_common",
                    [{"x1": self.tensor([2, 2], MS_FLOAT32, XB), "x2": self.tensor([2, 2], MS_FLOAT32, XB)}],
                )
            )
            np.testing.assert_array_equal(self.ms.ok(reply, 1)[0]["y"], expected)
        elif wire == "ms_rest":
            status, text = self.rest_add(XL)
            assert (status, json.loads(text)) == ("ok", {"instances": [{"y": expected.tolist()}]}), (status, text)
        elif wire == "v2_rest":
            status, text = self.v2_rest_add()
            assert status == "ok", (status, text)
            assert json.loads(text)["outputs"][0]["data"] == expected.ravel().tolist(), text
        else:
            request = v2_pb2.ModelInferRequest(
                model_name="add.add_common",
                inputs=[self.v2_input(n, "FP32", [2, 2]) for n in ("x1", "x2")],
                raw_input_contents=[XB, XB],
            )
            reply = self.v2.ModelInfer(request, timeout=RPC_TIMEOUT_S)
            assert list(reply.raw_output_contents) == [expected.tobytes()]


@dataclass(frozen=True)
class Row:
    """One bad request: what it is, the wire, how to send it, and the answer it must get."""

    case: str
    wire: str
    send: Callable[[Wires], tuple[str, str]]
    status: str
    text: str


# ---------------------------------------------------------------------------------------------------------------
# the matrix
# ---------------------------------------------------------------------------------------------------------------

ADD_SPEC = "servable(add) method(add_common)"


def _v2_binary(extra: int, header_length: str | None = None) -> Callable[[Wires], tuple[str, str]]:
    """v2 REST binary-extension body: a JSON header claiming 2 x 16 bytes, followed by 32 + `extra` bytes."""
    header = json.dumps(
        {
            "inputs": [
                {"name": n, "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}}
                for n in ("x1", "x2")
            ]
        }
    ).encode()
    length = header_length if header_length is not None else str(len(header))
    body = header + b"\0" * (32 + extra)
    return lambda w: w.v2_rest("add.add_common", body, {"Inference-Header-Content-Length": length})


def _deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _over_limit_ms_grpc(w: Wires) -> tuple[str, str]:
    return w.ms_add(w.tensor([OVER_LIMIT // 4], MS_FLOAT32, b"\0" * (OVER_LIMIT // 4 * 4)))


def _over_limit_v2_grpc(w: Wires) -> tuple[str, str]:
    return w.v2_grpc_add(w.v2_input("x2", "FP32", [OVER_LIMIT // 4]), b"\0" * (OVER_LIMIT // 4 * 4))


def _large_json(w: Wires) -> tuple[str, str]:
    """A JSON body just under the limit: 3000 instances, all served."""
    status, text = w.rest("/model/add:add_common", {"instances": [{"x1": XL, "x2": XL}] * 3000})
    return status, f"{text.count('[[2.0,2.0],[2.0,2.0]]')} answers"


def _many_ms(w: Wires) -> tuple[str, str]:
    instance = {"x1": w.tensor([2, 2], MS_FLOAT32, XB), "x2": w.tensor([2, 2], MS_FLOAT32, XB)}
    status, text = w.ms_send(w.ms_request("add", "add_common", [instance] * 5000))
    return status, f"{text.count('y')} answers"


def _wait_for_workers(server_pid: int, count: int, timeout: float = 30.0) -> None:
    """Waits until the server has at least `count` worker processes (`python -m rustserve.worker`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if parent == server_pid and b"rustserve.worker" in (entry / "cmdline").read_bytes():
                    alive += 1
            except (OSError, ValueError, IndexError):
                continue
        if alive >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"fewer than {count} worker processes after {timeout:.0f} s")


def _on_a_worker(call: Callable[[Wires], tuple[str, str]]) -> Callable[[Wires], tuple[str, str]]:
    """Runs `call` once the server's worker processes are up (with workers, every Python stage runs in one)."""

    def send(w: Wires) -> tuple[str, str]:
        _wait_for_workers(w.server_pid, WORKERS)
        return call(w)

    return send


def _nan_v2_grpc(w: Wires) -> tuple[str, str]:
    """bad.root over v2 gRPC with x = [[-1, 4]]; the text is the decoded float32 output."""
    request = v2_pb2.ModelInferRequest(
        model_name="bad.root",
        inputs=[w.v2_input("x", "FP32", [1, 2])],
        raw_input_contents=[np.array([-1.0, 4.0], np.float32).tobytes()],
    )
    try:
        reply = w.v2.ModelInfer(request, timeout=RPC_TIMEOUT_S)
    except grpc_mod.RpcError as exc:
        return exc.code().name, exc.details() or ""
    return "ok", str(np.frombuffer(reply.raw_output_contents[0], np.float32))


def _rows() -> list[Row]:
    rows: list[Row] = []

    def add(case: str, wire: str, send: Callable[[Wires], tuple[str, str]], status: str, text: str) -> None:
        rows.append(Row(case, wire, send, status, text))

    # --- malformed framing ---
    add(
        "malformed protobuf",
        "ms_grpc",
        lambda w: w.ms_send(b"\xff\xff\xff\x0fgarbage"),
        "INTERNAL",
        "failed to decode Protobuf message",
    )
    add(
        "malformed protobuf",
        "v2_grpc",
        lambda w: w.v2_grpc(b"\xff\xff\xff\x0fgarbage"),
        "INTERNAL",
        "failed to decode Protobuf message",
    )
    add(
        "malformed JSON",
        "ms_rest",
        lambda w: w.rest("/model/add:add_common", b'{"instances": ['),
        "ms:rest",
        "Illegal JSON format",
    )
    add(
        "malformed JSON",
        "v2_rest",
        lambda w: w.v2_rest("add.add_common", b'{"inputs": ['),
        "http:400",
        "not valid JSON",
    )
    add(
        "binary: header length past the body",
        "v2_rest",
        _v2_binary(0, "100000"),
        "http:400",
        "Inference-Header-Content-Length is 100000 but the body has only",
    )
    add(
        "binary: header length not a number",
        "v2_rest",
        _v2_binary(0, "abc"),
        "http:400",
        'Inference-Header-Content-Length "abc" is not a number',
    )
    add(
        "binary: data too short",
        "v2_rest",
        _v2_binary(-12),
        "http:400",
        "input 'x2': binary_data_size 16 goes past the end of the binary data",
    )
    add(
        "binary: data too long",
        "v2_rest",
        _v2_binary(8),
        "http:400",
        "40 bytes of binary data follow the JSON header but the inputs' binary_data_size add up to 32",
    )

    # --- unknown servable / version / method / input ---
    def ms_target(servable: str, method: str, version: int = 0) -> Callable[[Wires], tuple[str, str]]:
        def send(w: Wires) -> tuple[str, str]:
            items = {"x1": w.tensor([2, 2], MS_FLOAT32, XB), "x2": w.tensor([2, 2], MS_FLOAT32, XB)}
            return w.ms_send(w.ms_request(servable, method, [items], version))

        return send

    body = {"instances": [{"x1": XL, "x2": XL}]}
    add(
        "unknown servable",
        "ms_grpc",
        ms_target("nope", "add_common"),
        "ms:2",
        "Request servable(nope) method(add_common) , servable is not available",
    )
    add(
        "unknown version",
        "ms_grpc",
        ms_target("add", "add_common", 7),
        "ms:2",
        f"Request {ADD_SPEC}  version(7) , servable is not available",
    )
    add(
        "unknown method",
        "ms_grpc",
        ms_target("add", "nope"),
        "ms:2",
        "Request servable(add) method(nope) , method is not available",
    )
    add(
        "unknown servable",
        "ms_rest",
        lambda w: w.rest("/model/nope:add_common", body),
        "ms:rest",
        "Request servable(nope) method(add_common) , servable is not available",
    )
    add(
        "unknown version",
        "ms_rest",
        lambda w: w.rest("/model/add/version/7:add_common", body),
        "ms:rest",
        f"Request {ADD_SPEC}  version(7) , servable is not available",
    )
    add(
        "unknown method",
        "ms_rest",
        lambda w: w.rest("/model/add:nope", body),
        "ms:rest",
        "Request servable(add) method(nope) , method is not available",
    )
    v2_body = {"inputs": [{"name": n, "datatype": "FP32", "shape": [2, 2], "data": [1.0] * 4} for n in ("x1", "x2")]}
    add("unknown servable", "v2_rest", lambda w: w.v2_rest("nope", v2_body), "http:404", "unknown model 'nope'")
    add(
        "unknown version",
        "v2_rest",
        lambda w: w.v2_rest("add.add_common/versions/7", v2_body),
        "http:404",
        "version 7 of model 'add.add_common' is not loaded",
    )
    add(
        "unknown method",
        "v2_rest",
        lambda w: w.v2_rest("add.nope", v2_body),
        "http:404",
        "servable 'add' has no method 'nope' (its methods: add_cast, add_common)",
    )
    add(
        "ambiguous model",
        "v2_rest",
        lambda w: w.v2_rest("add", v2_body),
        "http:404",
        "servable 'add' has several methods, address one of add.add_cast, add.add_common",
    )

    def v2g_model(model: str, version: str = "") -> Callable[[Wires], tuple[str, str]]:
        def send(w: Wires) -> tuple[str, str]:
            inputs = [w.v2_input(n, "FP32", [2, 2]) for n in ("x1", "x2")]
            request = v2_pb2.ModelInferRequest(
                model_name=model, model_version=version, inputs=inputs, raw_input_contents=[XB, XB]
            )
            return w.v2_grpc(request)

        return send

    add("unknown servable", "v2_grpc", v2g_model("nope"), "NOT_FOUND", "unknown model 'nope'")
    add(
        "unknown version",
        "v2_grpc",
        v2g_model("add.add_common", "7"),
        "NOT_FOUND",
        "version 7 of model 'add.add_common' is not loaded",
    )
    add("unknown method", "v2_grpc", v2g_model("add.nope"), "NOT_FOUND", "servable 'add' has no method 'nope'")

    # --- input names: unknown (so one is missing), missing, duplicate ---
    add(
        "unknown input name",
        "ms_grpc",
        lambda w: w.ms_send(
            w.ms_request(
                "add", "add_common", [{"x1": w.tensor([2, 2], MS_FLOAT32, XB), "zz": w.tensor([2, 2], MS_FLOAT32, XB)}]
            )
        ),
        "ms:2",
        "Cannot find input x2 in instance input , servable add, method add_common",
    )
    add(
        "unknown input name",
        "ms_rest",
        lambda w: w.rest("/model/add:add_common", {"instances": [{"x1": XL, "zz": XL}]}),
        "ms:rest",
        "Cannot find input x2 in instance input , servable add, method add_common",
    )
    add(
        "unknown input name",
        "v2_rest",
        lambda w: w.v2_rest_add(name="zz"),
        "http:400",
        "unexpected input 'zz' for model 'add.add_common' (its inputs: x1, x2)",
    )
    add(
        "unknown input name",
        "v2_grpc",
        lambda w: w.v2_grpc_add(w.v2_input("zz", "FP32", [2, 2])),
        "INVALID_ARGUMENT",
        "unexpected input 'zz' for model 'add.add_common'",
    )
    add(
        "missing input",
        "ms_grpc",
        lambda w: w.ms_send(w.ms_request("add", "add_common", [{"x1": w.tensor([2, 2], MS_FLOAT32, XB)}])),
        "ms:2",
        "Cannot find input x2 in instance input",
    )
    add(
        "missing input",
        "ms_rest",
        lambda w: w.rest("/model/add:add_common", {"instances": [{"x1": XL}]}),
        "ms:rest",
        "Cannot find input x2 in instance input",
    )
    add(
        "missing input",
        "v2_rest",
        lambda w: w.v2_rest("add.add_common", {"inputs": v2_body["inputs"][:1]}),
        "http:400",
        "model 'add.add_common' needs input 'x2' (its inputs: x1, x2)",
    )
    add(
        "missing input",
        "v2_grpc",
        lambda w: w.v2_grpc(
            v2_pb2.ModelInferRequest(
                model_name="add.add_common", inputs=[w.v2_input("x1", "FP32", [2, 2])], raw_input_contents=[XB]
            )
        ),
        "INVALID_ARGUMENT",
        "model 'add.add_common' needs input 'x2'",
    )
    add(
        "duplicate input",
        "v2_rest",
        lambda w: w.v2_rest("add.add_common", {"inputs": [v2_body["inputs"][0], *v2_body["inputs"]]}),
        "http:400",
        "input 'x1' is given twice",
    )
    add(
        "duplicate input",
        "v2_grpc",
        lambda w: w.v2_grpc(
            v2_pb2.ModelInferRequest(
                model_name="add.add_common",
                inputs=[w.v2_input(n, "FP32", [2, 2]) for n in ("x1", "x1", "x2")],
                raw_input_contents=[XB] * 3,
            )
        ),
        "INVALID_ARGUMENT",
        "input 'x1' is given twice",
    )
    xl = json.dumps(XL)
    dup_key = f'{{"instances":[{{"x1":{xl},"x2":[[9.0,9.0],[9.0,9.0]],"x2":{xl}}}]}}'
    add(
        "duplicate JSON key: the last one wins",
        "ms_rest",
        lambda w: w.rest("/model/add:add_common", dup_key),
        "ok",
        "[[2.0,2.0],[2.0,2.0]]",
    )

    # --- dtype ---
    dtype_text = "Given model input 1 data type kMSI_Int32 not match the data type kMSI_Float32 defined in model"
    add("dtype mismatch", "ms_grpc", lambda w: w.ms_add(w.tensor([2, 2], MS_INT32, XB)), "ms:2", dtype_text)
    add("dtype mismatch", "ms_rest", lambda w: w.rest_add([[1, 2], [3, 4]]), "ms:rest", dtype_text)
    add(
        "dtype mismatch",
        "v2_rest",
        lambda w: w.v2_rest_add(datatype="INT32", data=[1, 2, 3, 4]),
        "http:400",
        dtype_text,
    )
    add(
        "dtype mismatch",
        "v2_grpc",
        lambda w: w.v2_grpc_add(w.v2_input("x2", "INT32", [2, 2])),
        "INVALID_ARGUMENT",
        dtype_text,
    )
    add(
        "unknown dtype",
        "ms_grpc",
        lambda w: w.ms_add(w.tensor([2, 2], 99, XB)),
        "ms:2",
        "Instances input x2 check failed, detail: Tensor check failed: input data type",
    )
    add("unknown dtype", "v2_rest", lambda w: w.v2_rest_add(datatype="FP99"), "http:400", "FP99")
    add(
        "unknown dtype",
        "v2_grpc",
        lambda w: w.v2_grpc_add(w.v2_input("x2", "FP99", [2, 2])),
        "INVALID_ARGUMENT",
        "FP99",
    )

    # --- shape: rank and dims (MindSpore's rule: sizes are compared, see the module docstring) ---
    size_text = "Given model input 1 size 24 not match the size 16 defined in model"
    six = np.ones((2, 3), np.float32)
    add("shape: dims", "ms_grpc", lambda w: w.ms_add(w.tensor([2, 3], MS_FLOAT32, six.tobytes())), "ms:2", size_text)
    add("shape: dims", "ms_rest", lambda w: w.rest_add(six.tolist()), "ms:rest", size_text)
    add("shape: dims", "v2_rest", lambda w: w.v2_rest_add(shape=[2, 3], data=[1.0] * 6), "http:400", size_text)
    add(
        "shape: dims",
        "v2_grpc",
        lambda w: w.v2_grpc_add(w.v2_input("x2", "FP32", [2, 3]), six.tobytes()),
        "INVALID_ARGUMENT",
        size_text,
    )
    add(
        "shape: rank and size",
        "ms_grpc",
        lambda w: w.ms_x("root", np.ones((3,), np.float32)),
        "ms:2",
        "Given model input 0 size 12 not match the size 8 defined in model",
    )
    add("shape: rank, same size", "ms_grpc", lambda w: w.ms_add(w.tensor([4], MS_FLOAT32, XB)), "ok", "2.")
    add("shape: rank, same size", "ms_rest", lambda w: w.rest_add([1.0, 1.0, 1.0, 1.0]), "ok", "[[2.0,2.0],[2.0,2.0]]")
    add(
        "shape: ragged JSON array",
        "ms_rest",
        lambda w: w.rest_add([[1.0, 2.0], [1.0]]),
        "ms:rest",
        "invalid json array: json size is 1, the dim 1 expected to be 2",
    )

    # --- data length vs shape x dtype ---
    add(
        "data length",
        "ms_grpc",
        lambda w: w.ms_add(w.tensor([2, 2], MS_FLOAT32, XB[:12])),
        "ms:2",
        "Instances input x2 check failed, detail: Tensor check failed: input data size 12 invalid",
    )
    add(
        "data length",
        "ms_rest",
        lambda w: w.rest_add({"b64": base64.b64encode(XB[:12]).decode(), "type": "fp32", "shape": [2, 2]}),
        "ms:rest",
        "size is not matched, decode base64 size:12",
    )
    add(
        "data length",
        "v2_rest",
        lambda w: w.v2_rest_add(data=[1.0] * 5),
        "http:400",
        "input 'x2': 'data' has 5 elements but shape [2, 2] needs 4",
    )
    add(
        "data length",
        "v2_grpc",
        lambda w: w.v2_grpc_add(w.v2_input("x2", "FP32", [2, 2]), XB[:12]),
        "INVALID_ARGUMENT",
        "input 'x2': 12 bytes of FP32 data do not match shape [2, 2] (16 bytes expected)",
    )

    # --- negative and absurd dims ---
    absurd = [2**62, 2**62]
    add(
        "negative dims",
        "ms_grpc",
        lambda w: w.ms_add(w.tensor([-2, -2], MS_FLOAT32, XB)),
        "ms:2",
        "Tensor check failed: input  shape [-2, -2] invalid",
    )
    add(
        "negative dims",
        "ms_rest",
        lambda w: w.rest_add({"b64": base64.b64encode(XB).decode(), "type": "fp32", "shape": [-2, -2]}),
        "ms:rest",
        "key is 'shape', array value should be unsigned integer",
    )
    add(
        "negative dims",
        "v2_rest",
        lambda w: w.v2_rest_add(shape=[-2, -2]),
        "http:400",
        "input 'x2': 'shape' must be a list of integers >= 0",
    )
    add(
        "negative dims",
        "v2_grpc",
        lambda w: w.v2_grpc_add(w.v2_input("x2", "FP32", [-2, -2])),
        "INVALID_ARGUMENT",
        "input 'x2': invalid shape [-2, -2]",
    )
    add(
        "absurd dims",
        "ms_grpc",
        lambda w: w.ms_add(w.tensor(absurd, MS_FLOAT32, XB)),
        "ms:2",
        "Instances input x2 check failed, detail: Tensor check failed: input data size 16 invalid",
    )
    add(
        "absurd dims",
        "ms_rest",
        lambda w: w.rest_add({"b64": base64.b64encode(XB).decode(), "type": "fp32", "shape": absurd}),
        "ms:rest",
        "Parser request failed, size is not matched, decode base64 size:16",
    )
    add(
        "absurd dims",
        "v2_rest",
        lambda w: w.v2_rest_add(shape=absurd),
        "http:400",
        f"input 'x2': invalid shape {absurd} (the element count overflows)",
    )
    add(
        "absurd dims",
        "v2_grpc",
        lambda w: w.v2_grpc_add(w.v2_input("x2", "FP32", absurd)),
        "INVALID_ARGUMENT",
        f"input 'x2': invalid shape {absurd} (the element count overflows)",
    )

    huge = [2**40]  # no overflow, but reserving room for 2^40 elements up front would abort the server
    add(
        "huge dims, little data",
        "v2_rest",
        lambda w: w.v2_rest_add(shape=huge),
        "http:400",
        f"input 'x2': 'data' has 4 elements but shape {huge} needs {2**40}",
    )

    empty_rows = [2**62, 0]  # no data at all, so only a cap stops 2^62 instances
    batch_text = f"the batch size (first dimension of every input) is {2**62}, more than the limit of"
    add(
        "absurd batch of empty rows",
        "v2_rest",
        lambda w: w.v2_rest(
            "bad.root", {"inputs": [{"name": "x", "datatype": "FP32", "shape": empty_rows, "data": []}]}
        ),
        "http:400",
        batch_text,
    )
    add(
        "absurd batch of empty rows",
        "v2_grpc",
        lambda w: w.v2_grpc(
            v2_pb2.ModelInferRequest(
                model_name="bad.root", inputs=[w.v2_input("x", "FP32", empty_rows)], raw_input_contents=[b""]
            )
        ),
        "INVALID_ARGUMENT",
        batch_text,
    )
    add(
        "absurd shape of empty rows",
        "ms_grpc",
        lambda w: w.ms_send(w.ms_request("bad", "root", [{"x": w.tensor(empty_rows, MS_FLOAT32, b"")}])),
        "ms:2",
        "Given model input 0 size 0 not match the size 8 defined in model",
    )

    # --- text: non-UTF-8 where a string is required, b64 that is not base64 ---
    add(
        "non-UTF-8 string",
        "ms_grpc",
        lambda w: w.ms_send(w.ms_request("bad", "text", [{"s": w.tensor([1], MS_STRING, bytes_val=[b"\xff\xfe"])}])),
        "ms:2",
        "Instances input s check failed, detail: Instance tensor check failed: string type input is not valid UTF-8",
    )
    add(
        "non-UTF-8 JSON body",
        "ms_rest",
        lambda w: w.rest("/model/bad:text", b'{"instances":[{"s":"\xff\xfe"}]}'),
        "ms:rest",
        "Illegal JSON format",
    )
    add(
        "non-UTF-8 JSON body",
        "v2_rest",
        lambda w: w.v2_rest(
            "bad.text", b'{"inputs":[{"name":"s","datatype":"BYTES","shape":[1],"data":["\xff\xfe"]}]}'
        ),
        "http:400",
        "not valid JSON",
    )
    add(
        "b64 not base64",
        "ms_rest",
        lambda w: w.rest_add({"b64": "!!!not base64", "type": "fp32", "shape": [2, 2]}),
        "ms:rest",
        "Parser request failed, '!!!not base64' is illegal b64 encode string",
    )

    # --- instance count ---
    add(
        "empty instance list",
        "ms_grpc",
        lambda w: w.ms_send(w.ms_request("add", "add_common", [])),
        "ms:2",
        "Instances count of request cannot be 0, servable: add, method: add_common",
    )
    add(
        "empty instance list",
        "ms_rest",
        lambda w: w.rest("/model/add:add_common", {"instances": []}),
        "ms:rest",
        "instances value is array type, but no value",
    )
    add("many instances are served", "ms_grpc", _many_ms, "ok", "5000 answers")
    add("large JSON under the limit is served", "ms_rest", _large_json, "ok", "3000 answers")

    # --- over the size limit, very deep JSON ---
    big_json = b'{"instances":[{"x1":[' + b"1.0," * (OVER_LIMIT // 4) + b"1.0]}]}"
    add(
        "body over the limit",
        "ms_rest",
        lambda w: w.rest("/model/add:add_common", big_json),
        "ms:rest",
        f"http message is bigger than {LIMIT_MB << 20}",
    )
    add(
        "body over the limit",
        "v2_rest",
        lambda w: w.v2_rest("add.add_common", b" " * OVER_LIMIT),
        "http:413",
        str(LIMIT_MB << 20),
    )
    over = f"more than the limit of {LIMIT_MB << 20} bytes (max_msg_mb_size / --max-msg-mb-size)"
    add("message over the limit", "ms_grpc", _over_limit_ms_grpc, "RESOURCE_EXHAUSTED", over)
    add("message over the limit", "v2_grpc", _over_limit_v2_grpc, "RESOURCE_EXHAUSTED", over)
    deep = _deep_json(100_000)
    add(
        "100k nested arrays",
        "ms_rest",
        lambda w: w.rest("/model/add:add_common", b'{"instances":[{"x1":' + deep + b"}]}"),
        "ms:rest",
        "Illegal JSON format.recursion limit exceeded",
    )
    add(
        "100k nested arrays",
        "v2_rest",
        lambda w: w.v2_rest("add.add_common", deep),
        "http:400",
        "recursion limit exceeded",
    )

    # --- Python stages that break their contract ---
    raise_text = (
        "Call Function 'bad.raise_fn' Failed, method: 'raising', stage index(begin with 1): 1, "
        "error msg: stage failed on purpose"
    )
    count_text = (
        "The outputs number 3 of one instance returned by function 'bad.three' is not equal to the outputs number 2"
    )
    type_text = "Get illegal result data with type <class 'object'>"
    v2_stage = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 1.0]}]}
    for method, text in (("raising", raise_text), ("wrong_count", count_text), ("wrong_type", type_text)):
        add(f"stage {method}", "ms_grpc", lambda w, m=method: w.ms_x(m), f"ms:{SYSTEM_ERROR}", text)
        add(
            f"stage {method}",
            "ms_rest",
            lambda w, m=method: w.rest(f"/model/bad:{m}", {"instances": [{"x": [1.0, 1.0]}]}),
            "ms:rest",
            text,
        )
        add(f"stage {method}", "v2_rest", lambda w, m=method: w.v2_rest(f"bad.{m}", v2_stage), "http:400", text)
        add(f"stage {method}", "v2_grpc", lambda w, m=method: w.v2_grpc_x(m), "INVALID_ARGUMENT", text)

    exit_text = (
        "exited with code 3 while running Function 'bad.exit_in_worker' of method 'exit_worker'; it is being restarted"
    )
    add(
        "os._exit in a worker process",
        "ms_grpc",
        _on_a_worker(lambda w: w.ms_x("exit_worker")),
        f"ms:{WORKER_UNAVAILABLE}",
        exit_text,
    )
    add(
        "os._exit in a worker process",
        "ms_rest",
        _on_a_worker(lambda w: w.rest("/model/bad:exit_worker", {"instances": [{"x": [1.0, 1.0]}]})),
        "ms:rest",
        exit_text,
    )
    add(
        "os._exit in a worker process",
        "v2_rest",
        _on_a_worker(lambda w: w.v2_rest("bad.exit_worker", v2_stage)),
        "http:503",
        exit_text,
    )
    add(
        "os._exit in a worker process",
        "v2_grpc",
        _on_a_worker(lambda w: w.v2_grpc_x("exit_worker")),
        "UNAVAILABLE",
        exit_text,
    )

    hang = np.full(2, 1.5, np.float32)  # sleeps 3 s, past the 2 s request timeout
    add("stage hangs past the timeout", "ms_grpc", lambda w: w.ms_x("sleep", hang), "ms:4", TIMEOUT_TEXT)
    add(
        "stage hangs past the timeout",
        "ms_rest",
        lambda w: w.rest("/model/bad:sleep", {"instances": [{"x": hang.tolist()}]}),
        "ms:rest",
        "",
    )
    add(
        "stage hangs past the timeout",
        "v2_rest",
        lambda w: w.v2_rest(
            "bad.sleep", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": hang.tolist()}]}
        ),
        "http:504",
        TIMEOUT_TEXT,
    )
    add(
        "stage hangs past the timeout",
        "v2_grpc",
        lambda w: w.v2_grpc(
            v2_pb2.ModelInferRequest(
                model_name="bad.sleep", inputs=[w.v2_input("x", "FP32", [1, 2])], raw_input_contents=[hang.tobytes()]
            )
        ),
        "DEADLINE_EXCEEDED",
        TIMEOUT_TEXT,
    )

    # --- NaN from a model is data ---
    neg = np.array([-1.0, 4.0], np.float32)
    add("NaN output passes through", "ms_grpc", lambda w: w.ms_x("root", neg), "ok", "nan,  2.")
    add(
        "NaN output passes through",
        "ms_rest",
        lambda w: w.rest("/model/bad:root", {"instances": [{"x": [-1.0, 4.0]}]}),
        "ok",
        '{"y":[null,2.0]}',
    )
    add(
        "NaN output passes through",
        "v2_rest",
        lambda w: w.v2_rest(
            "bad.root", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [-1.0, 4.0]}]}
        ),
        "ok",
        '"data":[null,2.0]',
    )
    add("NaN output passes through", "v2_grpc", _nan_v2_grpc, "ok", "[nan  2.]")
    return rows


ROWS = _rows()


@pytest.fixture(scope="module")
def wires(tmp_path_factory: pytest.TempPathFactory, pb2_modules: tuple[Any, Any]) -> Iterator[Wires]:
    """This module's server (workers 2, 1 MB limit) and its four wires."""
    root = tmp_path_factory.mktemp("bad_input")
    tree = root / "servables"
    add = write_servable(tree, "add", ADD_CONFIG, (1,))
    models.build_add(add / "1" / "add.onnx")
    bad = write_servable(tree, "bad", BAD_CONFIG, (1,))
    _build_sqrt(bad / "1" / "sqrt.onnx")
    launcher = root / "launch.py"
    launcher.write_text(LAUNCHER)
    server = launch_server(tree, root / "logs", command=[sys.executable, str(launcher)])
    connected = Wires(server, *pb2_modules)
    yield connected
    connected.close()
    assert server.alive(), f"the bad-input server died\n{server.describe()}"
    assert server.stop() == 0, server.describe()


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.wire}-{r.case}".replace(" ", "_") for r in ROWS])
def test_bad_input(wires: Wires, row: Row) -> None:
    """The row's request gets its status and a text naming the problem; the next good request succeeds."""
    status, text = row.send(wires)
    assert status == row.status, (status, text)
    assert row.text in text, f"{row.text!r} not in {text!r}"
    wires.good(row.wire)


def test_every_wire_has_rows() -> None:
    """The matrix covers each protocol with the core kinds of bad input."""
    core = ("unknown servable", "unknown method", "missing input", "dtype mismatch", "data length", "negative dims")
    for wire in ("ms_grpc", "ms_rest", "v2_rest", "v2_grpc"):
        cases = {row.case for row in ROWS if row.wire == wire}
        assert set(core) <= cases, (wire, set(core) - cases)
