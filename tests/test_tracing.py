"""OpenTelemetry traces (`rustserve start --trace-otlp-endpoint`): a real OTLP/gRPC TraceService receiver runs in the
test process (grpcio with opentelemetry-proto's generated servicer) and checks what the server exports.

One KServe v2 REST request and one MindSpore gRPC request, each with a W3C `traceparent` (header, metadata), on the
`pipeline.chain` method (Python, model, Python, model, Python): every span of a request carries the trace id sent,
the request span's parent is the span id sent, and it has children for decode, each stage (in order) and encode,
all with the servable / method / version attributes; model stage spans carry the batch size and queue wait. A
server started without the flag exports nothing and still answers.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import models
import numpy as np
import pytest
import requests
from conftest import RPC_TIMEOUT_S, Grpc, ServerProcess, copy_servable, expect_start_failure, free_port
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

pytestmark = pytest.mark.timeout(120)

# The chain method's stages, in order: preprocess, double, glue, plus_one, postprocess.
CHAIN_STAGES = [
    "rustserve.stage.python",
    "rustserve.stage.model",
    "rustserve.stage.python",
    "rustserve.stage.model",
    "rustserve.stage.python",
]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Collects every span exported to it, with its resource attributes."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Any]] = []
        self.calls = 0
        self._lock = threading.Lock()
        self.arrived = threading.Condition(self._lock)

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 (the generated servicer's name)
        with self._lock:
            self.calls += 1
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope_spans.spans)
            self.arrived.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str) -> list[Any]:
        with self._lock:
            return [span for _, span in self.spans if span.trace_id.hex() == trace_id]


def attributes(pairs: Any) -> dict[str, Any]:
    """OTLP KeyValues as a dict of plain values."""
    out: dict[str, Any] = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        out[pair.key] = getattr(pair.value, kind) if kind else None
    return out


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    """An OTLP/gRPC trace receiver on a free loopback port: (receiver, port)."""
    collector = Receiver()
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield collector, port
    grpc_server.stop(grace=None)


@pytest.fixture
def pipeline_dir(tmp_path: Path) -> Path:
    """A servables folder holding only `pipeline` (two models glued by Python stages)."""
    root = tmp_path / "servables"
    folder = copy_servable(root, "pipeline", (1,))
    models.build_chain(folder / "1", batch_a=2, batch_b=None)
    return root


def traceparent() -> tuple[str, str, str]:
    """(header value, trace id, span id) of a fresh sampled W3C parent."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def rest_infer(server: ServerProcess, header: str) -> None:
    body = {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}
    answer = requests.post(
        f"{server.rest_base}/v2/models/pipeline.chain/infer",
        json=body,
        headers={"traceparent": header} if header else {},
        timeout=RPC_TIMEOUT_S,
    )
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    # z = ((x - 1) * 2 + 10) + 1
    assert outputs["z"] == [11.0, 13.0, 15.0, 17.0, 19.0, 21.0]


def grpc_predict(server: ServerProcess, pb2_modules: tuple[Any, Any], header: str) -> None:
    client = Grpc(*pb2_modules, server.grpc_address)
    try:
        request = client.request("pipeline", "chain", [{"x": np.array([1.0, 2.0, 3.0], dtype=np.float32)}])
        metadata = [("traceparent", header)] if header else None
        reply = client.stub.Predict(request, timeout=RPC_TIMEOUT_S, metadata=metadata)
    finally:
        client.close()
    assert not reply.error_msg, reply.error_msg
    assert client.outputs(reply)[0]["z"].tolist() == [11.0, 13.0, 15.0]


def check_request_trace(spans: list[Any], trace_id: str, parent_id: str, protocol: str, instances: int) -> None:
    """One request span under the sent parent, and decode, the chain's stages and encode under it, all attributed."""
    roots = [s for s in spans if s.name == "rustserve.request"]
    assert len(roots) == 1, [s.name for s in spans]
    root = roots[0]
    assert root.parent_span_id.hex() == parent_id
    assert root.kind == root.SPAN_KIND_SERVER
    target = {"rustserve.servable": "pipeline", "rustserve.method": "chain", "rustserve.version": 1}
    root_attributes = attributes(root.attributes)
    assert root_attributes.items() >= {**target, "rustserve.protocol": protocol}.items(), root_attributes
    children = sorted((s for s in spans if s is not root), key=lambda s: s.start_time_unix_nano)
    assert [s.name for s in children] == ["rustserve.decode", *CHAIN_STAGES, "rustserve.encode"]
    for span in children:
        assert span.trace_id.hex() == trace_id
        assert span.parent_span_id == root.span_id, span.name
        assert root.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
        assert span.end_time_unix_nano <= root.end_time_unix_nano, span.name
        assert attributes(span.attributes).items() >= target.items(), (span.name, span.attributes)
    stages = [attributes(s.attributes) for s in children[1:-1]]
    assert [a["rustserve.stage.index"] for a in stages] == [1, 2, 3, 4, 5]
    assert [a.get("rustserve.function") for a in stages[::2]] == [
        "pipeline.preprocess",
        "pipeline.glue",
        "pipeline.postprocess",
    ]
    for model_stage, model_file in ((stages[1], "double.onnx"), (stages[3], "plus_one.onnx")):
        assert model_stage["rustserve.model"] == model_file
        assert model_stage["rustserve.instances"] == instances
        assert 1 <= model_stage["rustserve.batch_size"] <= 2
        assert model_stage["rustserve.queue_wait_us"] >= 0
    for python_stage in stages[::2]:
        assert python_stage["rustserve.instances"] == instances


def test_spans_follow_the_sent_traceparent(
    start_server: Any, pipeline_dir: Path, receiver: tuple[Receiver, int], pb2_modules: tuple[Any, Any]
) -> None:
    collector, port = receiver
    server = start_server(pipeline_dir, extra=["--trace-otlp-endpoint", f"http://127.0.0.1:{port}"])
    rest_header, rest_trace, rest_parent = traceparent()
    grpc_header, grpc_trace, grpc_parent = traceparent()
    rest_infer(server, rest_header)
    grpc_predict(server, pb2_modules, grpc_header)
    # The stop flushes the spans still queued in the batch span processor.
    assert server.stop() == 0, server.describe()
    check_request_trace(collector.of_trace(rest_trace), rest_trace, rest_parent, "kserve_rest", instances=2)
    check_request_trace(collector.of_trace(grpc_trace), grpc_trace, grpc_parent, "mindspore_grpc", instances=1)
    resources = {resource.get("service.name") for resource, _ in collector.spans}
    assert resources == {"rustserve"}


def test_a_request_without_traceparent_starts_a_trace(
    start_server: Any, pipeline_dir: Path, receiver: tuple[Receiver, int], pb2_modules: tuple[Any, Any]
) -> None:
    collector, port = receiver
    server = start_server(pipeline_dir, extra=["--trace-otlp-endpoint", f"http://127.0.0.1:{port}"])
    grpc_predict(server, pb2_modules, "")
    # Exported by the stop, or by the processor's own schedule before it: either way, without waiting for a stop.
    assert server.stop() == 0, server.describe()
    roots = [span for _, span in collector.spans if span.name == "rustserve.request"]
    assert len(roots) == 1
    assert roots[0].parent_span_id == b""
    assert len(collector.of_trace(roots[0].trace_id.hex())) == 2 + len(CHAIN_STAGES) + 1


def test_nothing_is_exported_without_the_flag(
    start_server: Any, pipeline_dir: Path, receiver: tuple[Receiver, int], pb2_modules: tuple[Any, Any]
) -> None:
    collector, _port = receiver
    server = start_server(pipeline_dir)
    header, _trace, _parent = traceparent()
    rest_infer(server, header)
    grpc_predict(server, pb2_modules, header)
    assert server.stop() == 0, server.describe()
    assert collector.calls == 0
    assert collector.spans == []


def test_a_bad_endpoint_fails_the_start(pipeline_dir: Path, tmp_path: Path) -> None:
    failed = expect_start_failure(pipeline_dir, tmp_path / "logs", extra=["--trace-otlp-endpoint", "127.0.0.1:4317"])
    assert failed.proc.wait(timeout=30) == 1
    assert "the OTLP endpoint must be an http:// or https:// URL" in failed.stderr_text()


def test_mindspore_rest_and_kserve_grpc_are_traced_too(
    start_server: Any, pipeline_dir: Path, receiver: tuple[Receiver, int]
) -> None:
    import tritonclient.grpc as triton_grpc

    collector, port = receiver
    server = start_server(pipeline_dir, extra=["--trace-otlp-endpoint", f"http://127.0.0.1:{port}"])
    rest_header, rest_trace, rest_parent = traceparent()
    answer = requests.post(
        f"{server.rest_base}/model/pipeline:chain",
        json={"instances": [{"x": [1.0, 2.0, 3.0]}]},
        headers={"traceparent": rest_header},
        timeout=RPC_TIMEOUT_S,
    )
    assert answer.json()["instances"][0]["z"] == [11.0, 13.0, 15.0], answer.text
    grpc_header, grpc_trace, grpc_parent = traceparent()
    client = triton_grpc.InferenceServerClient(server.grpc_address)
    try:
        x = triton_grpc.InferInput("x", [1, 3], "FP32")
        x.set_data_from_numpy(np.array([[1.0, 2.0, 3.0]], dtype=np.float32))
        result = client.infer("pipeline.chain", [x], headers={"traceparent": grpc_header})
    finally:
        client.close()
    assert result.as_numpy("z").tolist() == [[11.0, 13.0, 15.0]]
    assert server.stop() == 0, server.describe()
    check_request_trace(collector.of_trace(rest_trace), rest_trace, rest_parent, "mindspore_rest", instances=1)
    check_request_trace(collector.of_trace(grpc_trace), grpc_trace, grpc_parent, "kserve_grpc", instances=1)


def test_an_unreachable_collector_delays_neither_requests_nor_the_stop(
    start_server: Any, pipeline_dir: Path, pb2_modules: tuple[Any, Any]
) -> None:
    server = start_server(pipeline_dir, extra=["--trace-otlp-endpoint", f"http://127.0.0.1:{free_port()}"])
    header, _trace, _parent = traceparent()
    started = time.monotonic()
    for _ in range(20):
        grpc_predict(server, pb2_modules, header)
    assert time.monotonic() - started < 10
    started = time.monotonic()
    assert server.stop() == 0, server.describe()
    # The flush at stop waits one second at most; the rest is the ordinary stop.
    assert time.monotonic() - started < 5
