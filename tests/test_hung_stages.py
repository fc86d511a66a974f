"""Python stages that hang, and what the log makes of user text.

In a worker process, a call that outlives the request timeout has its worker killed and restarted: the caller got
the timeout error, later requests are served. On the server's own Python thread nothing can stop it, so the server
says so: readiness turns false (the server's and the stuck servable's), `/metrics` shows the stuck call's age, the log
names the function, new calls for that thread fail at once, and SIGTERM still ends the process within the drain
timeout + 5 s (exit status 3: calls were abandoned). Request data in a stage's exception cannot forge log lines.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import requests
from conftest import RPC_TIMEOUT_S, Grpc, ServerProcess, launch_server, wait_for, worker_pids, write_servable
from test_limits import reply_of, start
from test_limits import wait_for as wait_for_mark

from rustserve.server import EXIT_ABANDONED

FOREVER_S = 100_000


def worker_set(server: ServerProcess) -> set[int]:
    return set(worker_pids(server.proc.pid, "slow"))


def test_a_worker_call_past_the_timeout_is_killed_and_the_worker_restarts(
    tmp_path: Path, pb2_modules: tuple[Any, Any]
) -> None:
    server, marks = start(tmp_path, ["--num-parallel-workers", "2", "--request-timeout-s", "1"], sleep=FOREVER_S)
    client = Grpc(*pb2_modules, server.grpc_address)
    try:
        first = wait_for(lambda: worker_set(server) if len(worker_set(server)) == 2 else None, "two workers")
        reply = reply_of(client, "slow-forever")
        assert b"request timed out after 1.000 s" in reply.error_msg[0].error_msg, reply

        # The worker that ran it is killed at the timeout and replaced; the other one is untouched.
        def one_replaced() -> set[int] | None:
            now = worker_set(server)
            return now if len(now) == 2 and len(now & first) == 1 else None

        replaced = wait_for(one_replaced, "the hung worker's replacement")
        assert len(replaced - first) == 1
        stderr = server.stderr_text()
        assert "its call slow.mark (method 'run') ran past the call timeout of 1.0 s" in stderr, stderr
        assert "was killed by signal 9 (SIGKILL)" in stderr and "restarting it" in stderr, stderr
        # Both executors serve again: four calls at once, all answered.
        replies: list[Any] = []
        callers = [threading.Thread(target=lambda i=i: replies.append(reply_of(client, f"fast-{i}"))) for i in range(4)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(RPC_TIMEOUT_S)
        assert len(replies) == 4 and not any(r.error_msg for r in replies), replies
        assert requests.get(f"{server.rest_base}/v2/health/ready", timeout=RPC_TIMEOUT_S).status_code == 200
    finally:
        client.channel.close()
        assert server.stop() == 0, server.describe()


def test_a_call_stuck_on_the_python_thread_is_reported_and_does_not_block_the_stop(
    tmp_path: Path, pb2_modules: tuple[Any, Any]
) -> None:
    server, marks = start(tmp_path, ["--request-timeout-s", "1", "--drain-timeout-s", "1"], sleep=FOREVER_S)
    client = Grpc(*pb2_modules, server.grpc_address)
    try:
        reply = reply_of(client, "slow-forever")
        assert b"request timed out after 1.000 s" in reply.error_msg[0].error_msg, reply
        wait_for_mark(marks / "slow-forever")

        def not_ready() -> tuple[requests.Response] | None:
            ready = requests.get(f"{server.rest_base}/v2/health/ready", timeout=RPC_TIMEOUT_S)
            return (ready,) if ready.status_code == 503 else None  # a tuple: a 503 Response itself is falsy

        (ready,) = wait_for(not_ready, "the server to report not ready", timeout=10)
        assert "the server's Python thread has been running slow.mark (method 'run')" in ready.json()["error"]
        model = requests.get(f"{server.rest_base}/v2/models/slow/ready", timeout=RPC_TIMEOUT_S)
        assert model.status_code == 503, model.text
        metrics = requests.get(f"{server.rest_base}/metrics", timeout=RPC_TIMEOUT_S).text
        (line,) = [x for x in metrics.splitlines() if x.startswith("rustserve_python_stuck_call_seconds{")]
        assert 'servable="slow",function="slow.mark",method="run"' in line
        assert float(line.rsplit(" ", 1)[1]) >= 1.0
        wait_for(
            lambda: "on the server's Python thread, where it cannot be stopped" in server.stderr_text(),
            "the log line naming the stuck call",
            timeout=5,
        )
        # A new call for that thread fails at once instead of waiting for the timeout.
        began = time.monotonic()
        late = reply_of(client, "fast")
        assert b"the server's Python thread has been running slow.mark" in late.error_msg[0].error_msg, late
        assert time.monotonic() - began < 0.9
        assert not (marks / "fast").exists()
    finally:
        client.channel.close()
    began = time.monotonic()
    assert server.stop(signal.SIGTERM) == EXIT_ABANDONED, server.describe()
    assert time.monotonic() - began < 1 + 5 + 1
    assert "the stop did not finish within 5.5 s" in server.stderr_text()


RAISING_CONFIG = """
from rustserve.server import register


def shout(text):
    raise ValueError(f"bad input: {text}")


@register.register_method(output_names=["y"])
def run(text):
    return register.add_stage(shout, text, outputs_count=1)
"""

FORGED = "x\n2026-12-08T00:00:00.000000Z  INFO rustserve: forged record\x1b[2J"


def test_request_text_in_a_stage_exception_cannot_forge_log_lines(tmp_path: Path, pb2_modules: tuple[Any, Any]) -> None:
    write_servable(tmp_path / "servables", "loud", RAISING_CONFIG)
    server = launch_server(tmp_path / "servables", tmp_path / "logs")
    client = Grpc(*pb2_modules, server.grpc_address)
    try:
        reply = client.send(client.request("loud", "run", [{"text": FORGED}]), timeout=RPC_TIMEOUT_S)
        assert b"bad input: x" in reply.error_msg[0].error_msg
        wait_for(lambda: "stage Function 'loud.shout' raised" in server.stderr_text(), "the exception's log line")
        stderr = server.stderr_text()
        assert "\x1b" not in stderr
        assert not [line for line in stderr.splitlines() if "forged record" in line and "raised" not in line], stderr
        assert "bad input: x\\n2026-12-08T00:00:00.000000Z  INFO rustserve: forged record\\u{1b}[2J" in stderr
    finally:
        client.channel.close()
        assert server.stop() == 0, server.describe()
