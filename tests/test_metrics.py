"""`GET /metrics`: the Prometheus text exposition, parsed with `prometheus_client.parser`, counts what each protocol
sent (MindSpore gRPC and REST, KServe v2 REST and gRPC) and exposes latency, stage, size, queue and Python metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests
from conftest import RPC_TIMEOUT_S, Grpc, Rest, ServerProcess

parser = pytest.importorskip("prometheus_client.parser")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

Labels = tuple[tuple[str, str], ...]


def scrape(server: ServerProcess) -> dict[str, dict[Labels, float]]:
    """Sample name -> {sorted labels: value}; fails on anything the official parser rejects."""
    reply = requests.get(f"{server.rest_base}/metrics", timeout=RPC_TIMEOUT_S)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, dict[Labels, float]] = {}
    for family in parser.text_string_to_metric_families(reply.text):
        assert family.name.startswith(("rustserve_", "process_")), family.name
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, dict[Labels, float]], name: str, **labels: str) -> float:
    """One sample's value (0 when the series does not exist yet)."""
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


@pytest.fixture(scope="module")
def v2_clients(session_server: ServerProcess) -> Iterator[tuple[Any, Any]]:
    http = httpclient.InferenceServerClient(f"127.0.0.1:{session_server.rest_port}", network_timeout=RPC_TIMEOUT_S)
    grpc = grpcclient.InferenceServerClient(session_server.grpc_address)
    yield http, grpc
    http.close()
    grpc.close()


def test_requests_and_failures_per_protocol(
    server: ServerProcess, grpc: Grpc, rest: Rest, v2_clients: tuple[Any, Any]
) -> None:
    http, g = v2_clients
    labels = {"servable": "dtypes", "version": "1", "method": "id_float32"}
    before = scrape(server)
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    grpc.ok(grpc.predict("dtypes", "id_float32", [{"x": x[0]}]), 1)
    assert "instances" in rest.predict("dtypes", "id_float32", [{"x": [1.0, 2.0, 3.0]}])
    item = httpclient.InferInput("x", [3, 3], "FP32")
    item.set_data_from_numpy(np.ones((3, 3), np.float32))
    http.infer("dtypes.id_float32", [item])
    gitem = grpcclient.InferInput("x", [1, 3], "FP32")
    gitem.set_data_from_numpy(x)
    g.infer("dtypes.id_float32", [gitem])
    grpc.failed(grpc.predict("dtypes", "id_float32", [{"x": np.zeros(3, np.float64)}]))  # wrong dtype
    grpc.failed(grpc.predict("no_such_servable", "m", [{"x": x[0]}]))
    after = scrape(server)

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **extra) - value(before, name, **extra)

    for protocol, count in [("mindspore_grpc", 2), ("mindspore_rest", 1), ("kserve_rest", 1), ("kserve_grpc", 1)]:
        assert delta("rustserve_requests_total", **labels, protocol=protocol) == count, protocol
        assert delta("rustserve_request_duration_seconds_count", **labels, protocol=protocol) == count
    assert delta("rustserve_request_failures_total", **labels, protocol="mindspore_grpc") == 1
    assert delta("rustserve_request_failures_total", **labels, protocol="kserve_rest") == 0
    assert delta("rustserve_requests_rejected_total", protocol="mindspore_grpc") == 1
    # One request of 3 instances over v2 REST, three single-instance ones elsewhere (the failed one is not counted).
    assert delta("rustserve_request_size_instances_sum", **labels) == 6
    assert delta("rustserve_request_size_instances_count", **labels) == 4
    assert delta("rustserve_stage_duration_seconds_count", **labels, stage="model") == 4
    assert value(after, "rustserve_stage_duration_seconds_count", **labels, stage="python") == 0


def test_histograms_are_consistent(server: ServerProcess, rest: Rest) -> None:
    rest.predict("mlp", "classify", [{"x": [1.0, 2.0, 3.0, 4.0]}])
    samples = scrape(server)
    histograms = [
        "rustserve_request_duration_seconds",
        "rustserve_stage_duration_seconds",
        "rustserve_request_size_instances",
    ]
    for name in histograms:
        buckets = samples[f"{name}_bucket"]
        assert buckets, name
        series: dict[Labels, list[tuple[float, float]]] = {}
        for labels, count in buckets.items():
            rest_labels = tuple(kv for kv in labels if kv[0] != "le")
            le = float(dict(labels)["le"])
            series.setdefault(rest_labels, []).append((le, count))
        for labels, points in series.items():
            points.sort()
            counts = [c for _, c in points]
            assert counts == sorted(counts), (name, labels)
            assert points[-1][0] == math.inf
            assert points[-1][1] == samples[f"{name}_count"][labels]
            assert samples[f"{name}_sum"][labels] >= 0


def test_python_stage_time_busy_time_and_queue_depth(server: ServerProcess, rest: Rest) -> None:
    before = scrape(server)
    for _ in range(3):
        rest.predict("pipeline", "chain", [{"x": [1.0, 2.0, 3.0]}, {"x": [4.0, 5.0, 6.0]}])
    after = scrape(server)
    labels = {"servable": "pipeline", "version": "1", "method": "chain"}
    python = "rustserve_stage_duration_seconds_count"
    assert value(after, python, **labels, stage="python") - value(before, python, **labels, stage="python") == 3
    assert value(after, python, **labels, stage="model") - value(before, python, **labels, stage="model") == 3
    python_sum = "rustserve_stage_duration_seconds_sum"
    assert value(after, python_sum, **labels, stage="python") > value(before, python_sum, **labels, stage="python")
    busy = "rustserve_python_busy_seconds_total"
    assert value(after, busy) > value(before, busy)
    depth = after["rustserve_queue_depth_instances"]
    models = {(dict(k)["servable"], dict(k)["model"]) for k in depth}
    assert {("pipeline", "double.onnx"), ("pipeline", "plus_one.onnx"), ("mlp", "mlp.onnx")} <= models
    assert all(v >= 0 for v in depth.values())
    assert value(after, "rustserve_requests_in_flight_requests") >= 0


DOCUMENTED_TYPES = {
    "rustserve_requests_total": "counter",
    "rustserve_request_failures_total": "counter",
    "rustserve_requests_rejected_total": "counter",
    "rustserve_request_duration_seconds": "histogram",
    "rustserve_stage_duration_seconds": "histogram",
    "rustserve_request_size_instances": "histogram",
    "rustserve_batch_size_instances": "histogram",
    "rustserve_batch_queue_duration_seconds": "histogram",
    "rustserve_batch_run_duration_seconds": "histogram",
    "rustserve_queue_depth_instances": "gauge",
    "rustserve_requests_in_flight_requests": "gauge",
    "rustserve_python_busy_seconds_total": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_threads": "gauge",
    "process_cpu_seconds_total": "counter",
}


def test_every_sample_has_its_help_and_type_lines(server: ServerProcess, rest: Rest) -> None:
    """The Prometheus text format (0.0.4): HELP and TYPE lines name the family as its samples do (`_total`
    included), come before its samples, and carry the documented types; no OpenMetrics `# EOF`."""
    rest.predict("pipeline", "chain", [{"x": [1.0, 2.0, 3.0]}])
    text = requests.get(f"{server.rest_base}/metrics", timeout=RPC_TIMEOUT_S).text
    types: dict[str, str] = {}
    helps: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            helps.add(line.split(" ", 3)[2])
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helps, f"TYPE before HELP: {line}"
            types[name] = kind
        else:
            assert not line.startswith("#"), line
            name = line.split("{", 1)[0].split(" ", 1)[0]
            family = name if name in types else name.rsplit("_", 1)[0]
            assert family in types, f"a sample before its TYPE line: {line}"
            if family != name:
                assert types[family] == "histogram", line
    assert {name: types.get(name) for name in DOCUMENTED_TYPES} == DOCUMENTED_TYPES


def test_process_metrics_track_the_server_process(server: ServerProcess) -> None:
    """RSS, open fds (and their limit), threads and CPU seconds of the server process, under Prometheus' standard
    process-collector names, so a stage that leaks shows up."""
    before = scrape(server)
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_max_fds", "process_threads"):
        assert value(before, name) > 0, name
    with open(f"/proc/{server.proc.pid}/status") as lines:
        status = dict(line.split(":", 1) for line in lines if ":" in line)
    status = {key: text.split()[0] for key, text in status.items() if text.split()}
    assert abs(value(before, "process_threads") - int(status["Threads"])) <= 4  # threads come and go
    rss_kib = int(status["VmRSS"])
    assert 0.5 * rss_kib * 1024 < value(before, "process_resident_memory_bytes") < 2 * rss_kib * 1024
    with open(f"/proc/{server.proc.pid}/limits") as limits:
        soft = next(line.split()[3] for line in limits if line.startswith("Max open files"))
    assert value(before, "process_max_fds") == int(soft)
    deadline = time.monotonic() + 10
    while value(scrape(server), "process_cpu_seconds_total") <= value(before, "process_cpu_seconds_total"):
        assert time.monotonic() < deadline, "the server's CPU seconds did not grow while it answered scrapes"


def test_batch_metrics_count_real_rows_per_model(server: ServerProcess, rest: Rest) -> None:
    """Five instances on a fixed batch-4 model run as two batches (4 real rows, then 1 real row + 3 padded)."""
    labels = {"servable": "batching", "version": "1", "model": "add_fixed.onnx", "subgraph": "0"}
    before = scrape(server)
    instances = [{"x1": [float(i)] * 3, "x2": [1.0] * 3} for i in range(5)]
    rest.predict("batching", "add_fixed", instances)
    after = scrape(server)
    batches = value(after, "rustserve_batch_size_instances_count", **labels) - value(
        before, "rustserve_batch_size_instances_count", **labels
    )
    rows = value(after, "rustserve_batch_size_instances_sum", **labels) - value(
        before, "rustserve_batch_size_instances_sum", **labels
    )
    assert rows == 5, "padding rows must not count as instances"
    assert 2 <= batches <= 5
    assert value(after, "rustserve_batch_run_duration_seconds_count", **labels) > value(
        before, "rustserve_batch_run_duration_seconds_count", **labels
    )
