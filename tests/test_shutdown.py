"""Graceful shutdown: on SIGTERM / SIGINT the server stops accepting, lets requests in flight finish within
`--drain-timeout-s`, then stops its worker processes and exits 0 with no orphan left behind.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import Grpc
from test_limits import reply_of, start, wait_for

from rustserve.server import EXIT_ABANDONED


def children(pid: int) -> list[int]:
    """Pids of the live (non-zombie) direct children of `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_request_in_flight_completes_then_the_server_exits_cleanly(
    tmp_path: Path, pb2_modules: tuple[Any, Any], sig: signal.Signals
) -> None:
    server, marks = start(tmp_path, ["--num-parallel-workers", "2", "--drain-timeout-s", "30"], sleep=1.5)
    workers = children(server.proc.pid)
    assert workers, "expected a Python worker process"
    client = Grpc(*pb2_modules, server.grpc_address)
    replies: list[Any] = []
    caller = threading.Thread(target=lambda: replies.append(reply_of(client, "slow-inflight")))
    caller.start()
    wait_for(marks / "slow-inflight")
    server.proc.send_signal(sig)
    caller.join(timeout=60)
    assert replies, "the request in flight got no answer"
    assert not replies[0].error_msg, replies[0]
    assert list(replies[0].instances[0].items) == ["n"]
    assert server.wait_exit(60, f"after {sig.name}") == 0, server.describe()
    # Stopped accepting: a new call is refused.
    with pytest.raises(grpc.RpcError):
        reply_of(client, "late", timeout=5)
    client.channel.close()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in workers if alive(pid)], "worker processes outlived the server"


def test_drain_timeout_bounds_the_wait(tmp_path: Path, pb2_modules: tuple[Any, Any]) -> None:
    server, marks = start(tmp_path, ["--drain-timeout-s", "0.5"], sleep=20.0)
    client = Grpc(*pb2_modules, server.grpc_address)
    replies: list[Any] = []
    errors: list[grpc.RpcError] = []

    def call() -> None:
        try:
            replies.append(reply_of(client, "slow-stuck"))
        except grpc.RpcError as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_for(marks / "slow-stuck")
    began = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    caller.join(timeout=60)
    # The stage sleeps 20 s: an answer well before that means the drain timeout, not the stage, ended the wait.
    assert time.monotonic() - began < 15
    assert errors or (replies and replies[0].error_msg), (replies, errors)
    # The stage still holds the server's Python thread, so the stop cannot finish: the process gives up on it and
    # exits with EXIT_ABANDONED within the drain timeout + 5 s, telling where its threads were.
    assert server.wait_exit(30, "after SIGTERM") == EXIT_ABANDONED, server.describe()
    assert time.monotonic() - began < 0.5 + 5 + 1
    assert "the stop did not finish within 5.0 s" in server.stderr_text()
    client.channel.close()
