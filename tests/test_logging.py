"""`rustserve start --log-format json`: every stderr line is one JSON object, the native log's and Python's alike.

The native lines come from tracing-subscriber's JSON formatter (timestamp, level, target, message and the event's
fields at the top level); the lines Python writes (the start report, a servable that failed to load, the exit
signal) go through the same subscriber. The text format's lines carry no colour codes when stderr is a file (see
also test_hung_stages.py, whose stderr is a file too).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import RPC_TIMEOUT_S, ServerProcess, launch_server, wait_for, write_servable

from rustserve.server import Server

RAISING_CONFIG = """
from rustserve.server import register


def shout(text):
    raise ValueError(f"bad input: {bytes(text).decode()}")  # v2 BYTES arrive as a uint8 array


@register.register_method(output_names=["y"])
def run(text):
    return register.add_stage(shout, text, outputs_count=1)
"""

# Request text that would forge a log line of its own if the log did not escape it.
FORGED = 'x\n{"timestamp":"2026-12-08T00:00:00.000000Z","level":"INFO","message":"forged record"}\x1b[2J'


def fail_a_stage(server: ServerProcess) -> None:
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [FORGED]}]}
    reply = requests.post(f"{server.rest_base}/v2/models/loud/infer", json=body, timeout=RPC_TIMEOUT_S)
    assert reply.status_code == 400, reply.text
    assert "bad input: x" in reply.json()["error"]


def records(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line as a JSON object with the expected keys (fails on a line that is not one)."""
    parsed = []
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"a stderr line is not JSON: {line!r}\n--- stderr ---\n{stderr}")
        assert isinstance(record, dict), line
        assert {"timestamp", "level", "target", "message"} <= record.keys(), line
        assert record["level"] in {"ERROR", "WARN", "INFO", "DEBUG", "TRACE"}, line
        parsed.append(record)
    return parsed


def messages(stderr: str, level: str) -> list[str]:
    return [record["message"] for record in records(stderr) if record["level"] == level]


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "worker-processes"])
def test_json_log_lines_are_one_object_each(tmp_path: Path, workers: int) -> None:
    root = tmp_path / "servables"
    write_servable(root, "loud", RAISING_CONFIG)
    write_servable(root, "broken", "raise RuntimeError('broken on purpose')\n")
    extra = ["--log-format", "json", "--log-level", "info", "--num-parallel-workers", str(workers)]
    server = launch_server(root, tmp_path / "logs", extra=extra)
    try:
        fail_a_stage(server)
        wait_for(lambda: "stage Function 'loud.shout' raised" in server.stderr_text(), "the exception's log line")
        stderr = server.stderr_text()
        raised = [m for m in messages(stderr, "WARN") + messages(stderr, "ERROR") if "'loud.shout' raised" in m]
        assert len(raised) == 1, stderr
        # The request's text stays inside the one record: no line of its own, no escape code.
        assert "bad input: x" in raised[0]
        assert not [r for r in records(stderr) if r["message"] == "forged record"], stderr
        assert "\x1b" not in stderr
        # Python's lines: the servable that failed to load, and the start report.
        assert [m for m in messages(stderr, "ERROR") if m.startswith("rustserve: error: servable 'broken' not served")]
        info = messages(stderr, "INFO")
        assert any(m.strip().startswith("KServe v2: http://") for m in info), stderr
        assert any(m.strip() == "stop with Ctrl-C (SIGINT) or SIGTERM" for m in info), stderr
    finally:
        code = server.stop(signal.SIGTERM)
    assert code == 0, server.describe()
    stderr = server.stderr_text()
    # The `rustserve` logger's record of the signal (Python logging) is JSON as well.
    assert "Serving server begin to exit: receive exit signal SIGTERM" in messages(stderr, "WARN"), stderr
    records(stderr)
    # stdout keeps its text lines (MindSpore's "Serving: ... start success", the ready line scripts wait for).
    assert any(line.startswith("rustserve: serving 1 servable version(s) (loud v1)") for line in server.stdout_lines)


def test_text_log_lines_carry_no_colour_codes_in_a_file(tmp_path: Path) -> None:
    root = tmp_path / "servables"
    write_servable(root, "loud", RAISING_CONFIG)
    server = launch_server(root, tmp_path / "logs", extra=["--log-level", "info"])
    try:
        fail_a_stage(server)
        wait_for(lambda: "stage Function 'loud.shout' raised" in server.stderr_text(), "the exception's log line")
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.describe()
    stderr = server.stderr_text()
    assert "\x1b" not in stderr
    assert "  stop with Ctrl-C (SIGINT) or SIGTERM" in stderr.splitlines()
    assert not any(line.startswith("{") for line in stderr.splitlines()), stderr


def test_an_unknown_log_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="^log format must be 'text' or 'json', got 'xml'$"):
        Server().set_log_level("info", "xml")
    server = ServerProcess(tmp_path, log_dir=tmp_path / "logs", extra=["--log-format", "xml"])
    assert server.wait_exit() == 2
    assert "invalid choice: 'xml'" in server.stderr_text()
