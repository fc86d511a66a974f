"""Per-request timeout and cancellation: a request past `--request-timeout-s` fails with a clear error and the server
keeps serving; a gRPC client that gives up (deadline) frees the work it had queued, which then never runs.

The servable's Python stage touches a marker file named after its input before doing anything, so the tests see
exactly which requests reached Python.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Grpc, RawGrpc, ServerProcess, launch_server, write_servable

SLOW_CONFIG = '''
"""One Python stage: touch MARKS/<tag>, sleep when the tag starts with "slow", return the tag's length."""
import os
import time

import numpy as np

from rustserve.server import register

MARKS = {marks!r}


def mark(tag):
    text = tag if isinstance(tag, str) else bytes(tag).decode()
    open(os.path.join(MARKS, text), "w").close()
    if text.startswith("slow"):
        time.sleep({sleep})
    return np.array([len(text)], np.int32)


@register.register_method(output_names=["n"])
def run(tag):
    n = register.add_stage(mark, tag, outputs_count=1)
    return n
'''

LAUNCHER = """
import sys

from rustserve import cli

sys.exit(cli.main(sys.argv[1:] + {extra!r}))
"""


def start(tmp: Path, extra: list[str], sleep: float) -> tuple[ServerProcess, Path]:
    """`rustserve start` on the slow servable with `extra` flags; returns the server and the marks folder."""
    marks = tmp / "marks"
    marks.mkdir()
    tree = tmp / "servables"
    write_servable(tree, "slow", SLOW_CONFIG.format(marks=str(marks), sleep=sleep), (1,))
    script = tmp / "serve.py"
    script.write_text(LAUNCHER.format(extra=extra))
    return launch_server(tree, tmp / "logs", command=[sys.executable, str(script)]), marks


def wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} was not reached within {timeout} s")
        time.sleep(0.02)


def reply_of(client: Grpc, tag: str, timeout: float = 60.0) -> Any:
    return client.send(client.request("slow", "run", [{"tag": tag}]), timeout=timeout)


def test_request_past_the_timeout_fails_and_the_server_keeps_serving(
    tmp_path: Path, pb2_modules: tuple[Any, Any]
) -> None:
    server, marks = start(tmp_path, ["--request-timeout-s", "0.5"], sleep=3.0)
    try:
        client = Grpc(*pb2_modules, server.grpc_address)
        began = time.monotonic()
        reply = reply_of(client, "slow-1")
        elapsed = time.monotonic() - began
        assert b"request timed out after 0.500 s" in reply.error_msg[0].error_msg, reply
        assert reply.error_msg[0].error_code == 4
        # Not a performance bound: the stage sleeps 3 s, so any answer before that came from the timeout.
        assert elapsed < 2.5, f"the timeout answered after {elapsed:.2f} s, not at 0.5 s"
        time.sleep(3.0)  # the stage itself cannot be interrupted; let the executor finish it
        ok = reply_of(client, "fast")
        assert not ok.error_msg, ok
        assert (marks / "fast").exists()
        client.channel.close()
    finally:
        assert server.stop() == 0, server.describe()


def test_client_deadline_frees_its_queued_python_work(tmp_path: Path, pb2_modules: tuple[Any, Any]) -> None:
    server, marks = start(tmp_path, [], sleep=1.5)
    try:
        client = Grpc(*pb2_modules, server.grpc_address)
        first: list[Any] = []
        holder = threading.Thread(target=lambda: first.append(reply_of(client, "slow-A")))
        holder.start()
        wait_for(marks / "slow-A")  # the one Python executor is now busy for 1.5 s
        for tag in ("gone-B", "gone-C"):
            with pytest.raises(grpc.RpcError) as caught:
                reply_of(client, tag, timeout=0.3)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        holder.join(timeout=30)
        assert first and not first[0].error_msg, first
        ok = reply_of(client, "fast")
        assert not ok.error_msg, ok
        # "fast" ran after the executor was free; the two abandoned calls queued before it never reached Python.
        assert sorted(p.name for p in marks.iterdir()) == ["fast", "slow-A"]
        client.channel.close()
    finally:
        assert server.stop() == 0, server.describe()


def test_the_server_answers_a_passed_deadline_with_deadline_exceeded(
    tmp_path: Path, pb2_modules: tuple[Any, Any]
) -> None:
    # grpcio enforces its deadline itself, so a raw HTTP/2 call shows what the server answers: DEADLINE_EXCEEDED (as
    # the gRPC spec says), not tonic's CANCELLED "Timeout expired", which raced grpcio's own answer.
    server, marks = start(tmp_path, [], sleep=1.5)
    try:
        client = Grpc(*pb2_modules, server.grpc_address)
        message = client.request("slow", "run", [{"tag": "slow-late"}]).SerializeToString()
        raw = RawGrpc(server.grpc_port)
        began = time.monotonic()
        body = b"\x00" + len(message).to_bytes(4, "big") + message
        path = "/mindspore.serving.proto.MSService/Predict"
        stream = raw.open_call(path, body, [("grpc-timeout", "300m")], end=True)
        code, text = raw.grpc_status(stream)
        elapsed = time.monotonic() - began
        assert (code, text) == (grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "Deadline Exceeded"), (code, text)
        # Not a performance bound: the stage sleeps 1.5 s, so an answer before that came from the deadline.
        assert elapsed < 1.4, f"the deadline was answered after {elapsed:.2f} s"
        raw.close()
        wait_for(marks / "slow-late")  # the call had reached Python before its deadline passed
        assert not reply_of(client, "after").error_msg
        client.channel.close()
    finally:
        assert server.stop() == 0, server.describe()


def test_full_python_queue_fails_fast_and_the_server_recovers(tmp_path: Path, pb2_modules: tuple[Any, Any]) -> None:
    server, marks = start(tmp_path, ["--max-queued-python-calls", "1"], sleep=2.0)
    try:
        client = Grpc(*pb2_modules, server.grpc_address)
        replies: dict[str, Any] = {}

        def call(tag: str) -> None:
            replies[tag] = reply_of(client, tag)

        holder = threading.Thread(target=call, args=("slow-run",))
        holder.start()
        wait_for(marks / "slow-run")  # the one executor is busy for 2 s
        # Two calls arrive while it is busy: one takes the one queue place, the other is refused at once.
        callers = [threading.Thread(target=call, args=(tag,)) for tag in ("q-1", "q-2")]
        for thread in callers:
            thread.start()
        for thread in [*callers, holder]:
            thread.join(timeout=30)
        assert not replies["slow-run"].error_msg, replies
        refused = [tag for tag in ("q-1", "q-2") if replies[tag].error_msg]
        assert len(refused) == 1, replies
        error = replies[refused[0]].error_msg[0]
        assert "Python stage queue is full" in error.error_msg.decode() and "limit 1" in error.error_msg.decode(), error
        assert error.error_code == 1
        # The refused call never reached Python; the queued one ran; the server serves on.
        assert not (marks / refused[0]).exists()
        ok = reply_of(client, "fast")
        assert not ok.error_msg, ok
        client.channel.close()
    finally:
        assert server.stop() == 0, server.describe()


def test_requests_past_the_enqueued_limit_fail_fast(tmp_path: Path, pb2_modules: tuple[Any, Any]) -> None:
    """`--max-enqueued-requests 1` (MindSpore's set_max_enqueued_requests): while one request is in flight, the next
    fails at once with MindSpore's text and code 1, and never reaches Python; then the server serves on."""
    server, marks = start(tmp_path, ["--max-enqueued-requests", "1"], sleep=2.0)
    try:
        client = Grpc(*pb2_modules, server.grpc_address)
        first: list[Any] = []
        holder = threading.Thread(target=lambda: first.append(reply_of(client, "slow-1")))
        holder.start()
        wait_for(marks / "slow-1")
        refused = reply_of(client, "over")
        assert refused.error_msg[0].error_msg == b"Serving Error: enqueued requests count exceeds the limit 1", refused
        assert refused.error_msg[0].error_code == 1
        holder.join(timeout=30)
        assert first and not first[0].error_msg, first
        assert not (marks / "over").exists()
        ok = reply_of(client, "fast")
        assert not ok.error_msg, ok
        client.channel.close()
    finally:
        assert server.stop() == 0, server.describe()
