"""Huge requests and many connections: what one client may hold, and that the server keeps serving everyone else.

The instances of one request count against the model queue limit (`--max-queued-instances`): a request with more
instances than the limit is refused at once, naming the limit and the setting that raises it; one within it is
answered in full. Each listener keeps at most `--max-connections` open (more wait in the backlog), closes
connections that send nothing within `--connection-idle-timeout-s`, and backs off (and logs) when accepting fails.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import models
import numpy as np
import pytest
import requests
from conftest import ADD_CONFIG, RPC_TIMEOUT_S, Grpc, RawGrpc, ServerProcess, wait_for

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


# --- connections -----------------------------------------------------------------------------------------------


def _silent_socket(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.settimeout(30)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    """Reads (an HTTP/2 server sends its SETTINGS at once) until the server closes `sock`: True at EOF or reset, False
    when it stays open for the socket's timeout."""
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_silent_connections_are_closed_after_the_idle_timeout(
    make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess]
) -> None:
    folder = make_servable("add", ADD_CONFIG)
    models.build_add(folder / "1" / "add.onnx")
    server = start_server(folder.parent, extra=["--connection-idle-timeout-s", "1"])
    began = time.monotonic()
    socks = [_silent_socket(server.grpc_port), _silent_socket(server.rest_port)]
    try:
        # Neither an HTTP/2 preface nor a request: both listeners hang up after about a second.
        assert all(_closed_by_server(sock) for sock in socks)
        assert time.monotonic() - began >= 0.9
        # A connection that talks is served as usual.
        assert requests.get(f"{server.rest_base}/v2/health/live", timeout=RPC_TIMEOUT_S).status_code == 200
    finally:
        for sock in socks:
            sock.close()


def test_connections_past_the_limit_wait_for_a_free_place(
    make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess]
) -> None:
    folder = make_servable("add", ADD_CONFIG)
    models.build_add(folder / "1" / "add.onnx")
    server = start_server(folder.parent, extra=["--max-connections", "2", "--connection-idle-timeout-s", "3"])
    live = f"{server.rest_base}/v2/health/live"
    socks = [_silent_socket(server.rest_port), _silent_socket(server.rest_port)]
    try:
        time.sleep(0.3)  # both accepted: the two places are taken
        # A third connection waits in the backlog: no answer while the silent two hold their places...
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(live, timeout=1)
        # ...and is served once the idle timeout frees them.
        assert all(_closed_by_server(sock) for sock in socks)
        assert requests.get(live, timeout=RPC_TIMEOUT_S).status_code == 200
    finally:
        for sock in socks:
            sock.close()


def test_running_out_of_file_descriptors_backs_off_and_logs(
    make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess]
) -> None:
    """With its descriptors exhausted, each listener logs and retries with back-off instead of spinning."""
    folder = make_servable("add", ADD_CONFIG)
    models.build_add(folder / "1" / "add.onnx")
    server = start_server(folder.parent)
    pid = server.proc.pid
    socks: list[socket.socket] = []
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    try:
        # A few descriptors to spare: the next connections find none.
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (len(os.listdir(f"/proc/{pid}/fd")) + 4, hard))
        for port in (server.grpc_port, server.rest_port) * 8:
            socks.append(_silent_socket(port))
        wait_for(lambda: server.stderr_text().count("listener: accept failed") >= 2, "both listeners' accept errors")
        stderr = server.stderr_text()
        assert "gRPC listener: accept failed" in stderr and "REST listener: accept failed" in stderr, stderr
        assert "Too many open files" in stderr, stderr
        before = _cpu_seconds(pid)
        time.sleep(2)
        # Not a speed bound: a spinning accept loop burns a whole core (2 s); backing off costs next to nothing.
        assert _cpu_seconds(pid) - before < 0.5
    finally:
        for sock in socks:
            sock.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    wait_for(
        lambda: requests.get(f"{server.rest_base}/v2/health/live", timeout=RPC_TIMEOUT_S).status_code == 200,
        "the server to accept again",
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- message sizes and the in-flight budget ------------------------------------------------------------------------


class RawV2Grpc(RawGrpc):
    """v2 ModelInfer calls whose message header declares more bytes than are sent."""

    def start_call(self, declared: int, sent: int) -> int:
        """Opens a call whose message header declares `declared` bytes, and sends only `sent` of them."""
        body = b"\x00" + declared.to_bytes(4, "big") + b"\x00" * sent
        return self.open_call("/inference.GRPCInferenceService/ModelInfer", body)


def _vm_size_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1])
    raise AssertionError("no VmSize")


def test_declared_message_sizes_reserve_nothing_and_over_limit_ones_are_resource_exhausted(
    make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess]
) -> None:
    folder = make_servable("add", ADD_CONFIG)
    models.build_add(folder / "1" / "add.onnx")
    server = start_server(folder.parent)  # --max-msg-mb-size 100
    pid = server.proc.pid
    clients = [RawV2Grpc(server.grpc_port) for _ in range(4)]
    try:
        before = _vm_size_kib(pid)
        # 40 calls that each declare a message of almost 100 MB and send 3 KB of it.
        for client in clients:
            for _ in range(10):
                client.start_call((100 << 20) - 1, 3000)
        time.sleep(1.0)
        grown_mib = (_vm_size_kib(pid) - before) / 1024
        # Reserving what they declare would map about 4000 MiB; memory follows the bytes that arrived.
        assert grown_mib < 400, f"the server's address space grew by {grown_mib:.0f} MiB"
        assert requests.get(f"{server.rest_base}/v2/health/ready", timeout=RPC_TIMEOUT_S).status_code == 200
        # A declared length over the limit is refused from the header alone, with RESOURCE_EXHAUSTED (8).
        code, message = clients[0].grpc_status(clients[0].start_call((100 << 20) + 1, 10))
        assert code == 8, (code, message)
        assert "more than the limit of 104857600 bytes" in message, message
    finally:
        for client in clients:
            client.close()


def test_requests_past_the_in_flight_budget_are_refused_at_once(
    make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess], pb2_modules: tuple[Any, Any]
) -> None:
    folder = make_servable("add", ADD_CONFIG)
    models.build_add(folder / "1" / "add.onnx")
    server = start_server(folder.parent, extra=["--max-in-flight-mb", "1"])
    # REST: a body that would pass the budget is refused from its Content-Length, before it is read.
    big = b'{"instances": [' + b" " * (2 << 20) + b"]}"
    for path, key in (("/model/add:add_common", "error_msg"), ("/v2/models/add.add_common/infer", "error")):
        reply = requests.post(f"{server.rest_base}{path}", data=big, timeout=RPC_TIMEOUT_S)
        assert reply.status_code == 429, reply.text
        assert "would pass its in-flight limit of 1048576 bytes (--max-in-flight-mb)" in reply.json()[key]
    # gRPC: the same from the message header.
    raw = RawV2Grpc(server.grpc_port)
    try:
        code, message = raw.grpc_status(raw.start_call(2 << 20, 10))
        assert code == 8 and "--max-in-flight-mb" in message, (code, message)
    finally:
        raw.close()
    # Requests within the budget are served as usual.
    grpc = Grpc(*pb2_modules, server.grpc_address)
    try:
        x = np.ones((2, 2), np.float32)
        (out,) = grpc.ok(grpc.predict("add", "add_common", [{"x1": x, "x2": x}]), 1)
        np.testing.assert_array_equal(out["y"], 2 * x)
    finally:
        grpc.close()
    reply = requests.post(
        f"{server.rest_base}/model/add:add_common",
        json={"instances": [{"x1": [[1.0, 1.0], [1.0, 1.0]], "x2": [[1.0, 1.0], [1.0, 1.0]]}]},
        timeout=RPC_TIMEOUT_S,
    )
    assert reply.json() == {"instances": [{"y": [[2.0, 2.0], [2.0, 2.0]]}]}, reply.text
