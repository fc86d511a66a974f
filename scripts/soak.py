#!/usr/bin/env python
"""Soak test: a real server at saturation with a mix of good and bad requests, every answer checked.

Starts `rustserve start --dir examples/servables --servable add` on free loopback ports and drives it from client
threads for `--duration` seconds (default 600) over four wires: MindSpore gRPC (`rustserve.client.Client`), MindSpore
REST, KServe v2 REST and KServe v2 gRPC. Each request carries random inputs and its answer is checked against them
(y = x1 + x2); bad requests (unknown method, wrong dtype, malformed JSON, missing input) must get their specific
error. The server's RSS and open file descriptors are sampled after a warm-up and at the end.

Counts: sent, correct (good answer or the expected error), mismatched (a wrong answer or an unexpected error) and
lost (no answer: transport failure or timeout). A healthy run has mismatched = lost = 0 and flat RSS / fds.

Usage: python scripts/soak.py [--duration 600] [--threads 8] [--workers 0]
Not part of the test suite (it runs for minutes); see docs/10-operations.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TIMEOUT_S = 30.0


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A `rustserve start` subprocess on free ports."""

    workers: int = 0
    extra: list[str] = field(default_factory=list)
    grpc: str = ""
    rest: str = ""
    proc: subprocess.Popen[str] | None = None

    def start(self) -> Server:
        """Starts the server and waits for its ready line (fails after 120 s)."""
        self.grpc = f"{HOST}:{free_port()}"
        self.rest = f"{HOST}:{free_port()}"
        args = [sys.executable, "-m", "rustserve", "start", "--dir", str(ROOT / "examples" / "servables")]
        args += ["--servable", "add", "--grpc", self.grpc, "--rest", self.rest, "--log-level", "error"]
        args += ["--num-parallel-workers", str(self.workers), *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + 120
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("rustserve: serving"):
                threading.Thread(target=self._drain, daemon=True).start()
                return self
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"server did not start: exit code {self.proc.poll()}")

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for _ in self.proc.stdout:
            pass

    @property
    def pid(self) -> int:
        """The server's process id."""
        assert self.proc is not None
        return self.proc.pid

    def rss_kib(self) -> int:
        """Resident set size of the server process, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return -1

    def fds(self) -> int:
        """Open file descriptors of the server process."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def workers_pids(self) -> list[int]:
        """Process ids of the server's Python worker processes (`python -m rustserve.worker`)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.pid and b"rustserve.worker" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
        return found

    def stop(self) -> int:
        """SIGTERM, then waits; returns the exit code."""
        assert self.proc is not None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class Lost(Exception):
    """No answer came back (transport failure or timeout)."""


class Wires:
    """One client thread's connections to the four wires; each call returns ("ok", y) or ("error", text)."""

    def __init__(self, server: Server):
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        from rustserve.client import Client

        self.grpc_mod = grpc
        self.v2pb = service_pb2
        self.server = server
        self.clients: dict[str, Any] = {}
        self.make_client = lambda method: Client(server.grpc, "add", method)
        self.http = requests.Session()
        self.channel = grpc.insecure_channel(server.grpc)
        self.v2 = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def close(self) -> None:
        """Closes every connection."""
        for client in self.clients.values():
            client.close()
        self.channel.close()
        self.http.close()

    def ms_grpc(self, method: str, inputs: dict[str, np.ndarray]) -> tuple[str, Any]:
        """MindSpore gRPC through rustserve's own Client."""
        client = self.clients.get(method)
        if client is None:
            client = self.clients[method] = self.make_client(method)
        try:
            result = client.infer(inputs)
        except Exception as exc:
            raise Lost(f"ms_grpc: {exc}") from exc
        if isinstance(result, dict):
            text = str(result.get("error", result))
            if "failed to connect" in text.lower() or "deadline" in text.lower() or "unavailable" in text.lower():
                raise Lost(f"ms_grpc: {text}")
            return "error", text
        first = result[0]
        if "error" in first:
            return "error", str(first["error"])
        return "ok", np.asarray(first["y"])

    def ms_rest(self, method: str, body: bytes | str) -> tuple[str, Any]:
        """MindSpore REST; bodies are sent as given."""
        try:
            response = self.http.post(f"http://{self.server.rest}/model/add:{method}", data=body, timeout=TIMEOUT_S)
        except requests.RequestException as exc:
            raise Lost(f"ms_rest: {exc}") from exc
        if response.status_code != 200:
            return "error", f"HTTP {response.status_code} {response.text}"
        reply = response.json()
        if "error_msg" in reply:
            return "error", str(reply["error_msg"])
        instance = reply["instances"][0]
        if "error_msg" in instance:
            return "error", str(instance["error_msg"])
        return "ok", np.asarray(instance["y"])

    def v2_rest(self, model: str, body: Any) -> tuple[str, Any]:
        """KServe v2 REST (JSON)."""
        try:
            response = self.http.post(
                f"http://{self.server.rest}/v2/models/{model}/infer", json=body, timeout=TIMEOUT_S
            )
        except requests.RequestException as exc:
            raise Lost(f"v2_rest: {exc}") from exc
        if response.status_code != 200:
            return "error", f"HTTP {response.status_code} {response.json().get('error', response.text)}"
        output = response.json()["outputs"][0]
        return "ok", np.asarray(output["data"]).reshape(output["shape"])

    def v2_grpc(self, model: str, inputs: dict[str, np.ndarray], datatype: str) -> tuple[str, Any]:
        """KServe v2 gRPC with raw contents."""
        pb = self.v2pb
        request = pb.ModelInferRequest(
            model_name=model,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name=n, datatype=datatype, shape=list(a.shape))
                for n, a in inputs.items()
            ],
            raw_input_contents=[np.ascontiguousarray(a).tobytes() for a in inputs.values()],
        )
        try:
            reply = self.v2.ModelInfer(request, timeout=TIMEOUT_S)
        except self.grpc_mod.RpcError as exc:
            code = exc.code()
            if code in (self.grpc_mod.StatusCode.DEADLINE_EXCEEDED,) or (
                code == self.grpc_mod.StatusCode.UNAVAILABLE and "connect" in (exc.details() or "").lower()
            ):
                raise Lost(f"v2_grpc: {code} {exc.details()}") from exc
            return "error", f"{code.name} {exc.details()}"
        dtype = np.float32 if datatype == "FP32" else np.int32
        return "ok", np.frombuffer(reply.raw_output_contents[0], dtype).reshape(2, 2)


# A case: (name, send(wires, rng) -> (status, value), check(status, value, expected) -> bool, expected value).
Case = tuple[str, Callable[[Wires, np.random.Generator], tuple[tuple[str, Any], Any, str]]]


def _inputs(rng: np.random.Generator, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    if dtype is np.float32:
        return rng.random((2, 2), dtype=np.float32), rng.random((2, 2), dtype=np.float32)
    return rng.integers(-1000, 1000, (2, 2), dtype=np.int32), rng.integers(-1000, 1000, (2, 2), dtype=np.int32)


def good_cases(python_stage: bool) -> list[Case]:
    """Good requests: (name, fn) where fn returns (answer, expected y, "")."""
    method = "add_cast" if python_stage else "add_common"
    dtype = np.int32 if python_stage else np.float32
    datatype = "INT32" if python_stage else "FP32"

    def ms_grpc(w: Wires, rng: np.random.Generator) -> tuple[tuple[str, Any], Any, str]:
        x1, x2 = _inputs(rng, dtype)
        return w.ms_grpc(method, {"x1": x1, "x2": x2}), x1 + x2, ""

    def ms_rest(w: Wires, rng: np.random.Generator) -> tuple[tuple[str, Any], Any, str]:
        x1, x2 = _inputs(rng, dtype)
        body = json.dumps({"instances": [{"x1": x1.tolist(), "x2": x2.tolist()}]})
        return w.ms_rest(method, body), x1 + x2, ""

    def v2_rest(w: Wires, rng: np.random.Generator) -> tuple[tuple[str, Any], Any, str]:
        x1, x2 = _inputs(rng, dtype)
        inputs = [
            {"name": n, "datatype": datatype, "shape": [2, 2], "data": a.ravel().tolist()}
            for n, a in (("x1", x1), ("x2", x2))
        ]
        return w.v2_rest(f"add.{method}", {"inputs": inputs}), x1 + x2, ""

    def v2_grpc(w: Wires, rng: np.random.Generator) -> tuple[tuple[str, Any], Any, str]:
        x1, x2 = _inputs(rng, dtype)
        return w.v2_grpc(f"add.{method}", {"x1": x1, "x2": x2}, datatype), x1 + x2, ""

    return [(f"{wire.__name__}:{method}", wire) for wire in (ms_grpc, ms_rest, v2_rest, v2_grpc)]


def bad_cases() -> list[Case]:
    """Bad requests: fn returns (answer, None, the text the error must contain)."""
    x = np.ones((2, 2), np.float32)

    def unknown_method(w: Wires, rng: np.random.Generator) -> tuple[tuple[str, Any], Any, str]:
        return w.ms_grpc("nope", {"x1": x, "x2": x}), None, "method is not available"

    def wrong_dtype(w: Wires, rng: np.random.Generator) -> tuple[tuple[str, Any], Any, str]:
        return w.ms_grpc("add_common", {"x1": x, "x2": x.astype(np.int32)}), None, "not match the data type"

    def malformed_json(w: Wires, rng: np.random.Generator) -> tuple[tuple[str, Any], Any, str]:
        return w.ms_rest("add_common", '{"instances": [{"x1": [1,'), None, "Illegal JSON format"

    def missing_input(w: Wires, rng: np.random.Generator) -> tuple[tuple[str, Any], Any, str]:
        body = {"inputs": [{"name": "x1", "datatype": "FP32", "shape": [2, 2], "data": [1.0] * 4}]}
        return w.v2_rest("add.add_common", body), None, "needs input 'x2'"

    def wrong_shape(w: Wires, rng: np.random.Generator) -> tuple[tuple[str, Any], Any, str]:
        return w.v2_grpc("add.add_common", {"x1": x, "x2": x[:1]}, "FP32"), None, "size 8 not match the size 16"

    return [(f"bad:{f.__name__}", f) for f in (unknown_method, wrong_dtype, malformed_json, missing_input, wrong_shape)]


@dataclass
class Tally:
    """Counts shared by the client threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    slowest_error_s: float = 0.0

    def add(self, key: str, example: str = "") -> None:
        """Counts one outcome (keeping the first example text of each kind)."""
        with self.lock:
            self.counts[key] += 1
            if example and key not in self.examples:
                self.examples[key] = example[:300]


def judge(answer: tuple[str, Any], expected: Any, error_text: str, allowed_errors: tuple[str, ...] = ()) -> str:
    """Classifies an answer: correct, error (an allowed, clear error for a good request) or mismatched."""
    status, value = answer
    if expected is None:
        return "correct" if status == "error" and error_text in str(value) else "mismatched"
    if status == "ok":
        return "correct" if np.array_equal(np.asarray(value, dtype=expected.dtype), expected) else "mismatched"
    return "error" if any(text in str(value) for text in allowed_errors) else "mismatched"


def drive(
    server: Server,
    cases: list[Case],
    duration: float,
    threads: int,
    tally: Tally,
    allowed_errors: tuple[str, ...] = (),
) -> None:
    """Runs `threads` client threads that pick random cases until `duration` has passed."""
    stop_at = time.monotonic() + duration

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        pick = random.Random(seed)
        wires = Wires(server)
        try:
            while time.monotonic() < stop_at:
                name, send = pick.choice(cases)
                tally.add("sent")
                sent_at = time.monotonic()
                try:
                    answer, expected, error_text = send(wires, rng)
                except Lost as exc:
                    tally.add("lost", f"{name}: {exc}")
                    continue
                except Exception as exc:
                    tally.add("lost", f"{name}: {type(exc).__name__}: {exc}")
                    continue
                verdict = judge(answer, expected, error_text, allowed_errors)
                if verdict == "error":
                    with tally.lock:
                        tally.slowest_error_s = max(tally.slowest_error_s, time.monotonic() - sent_at)
                tally.add(verdict, f"{name}: {answer[1]!r}" if verdict != "correct" else "")
                if verdict == "correct" and expected is None:
                    tally.add("correct_bad")
        finally:
            wires.close()

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(duration + 120)


def main() -> int:
    """Runs the soak and prints a JSON summary; exit 1 when any answer was lost or mismatched."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    parser.add_argument("--workers", type=int, default=0, help="--num-parallel-workers of the server (default 0)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the first RSS/fd sample")
    args = parser.parse_args()

    server = Server(workers=args.workers).start()
    cases = good_cases(False) + good_cases(True) + bad_cases()
    tally = Tally()
    started = time.monotonic()
    try:
        drive(server, cases, min(args.warmup, args.duration), args.threads, tally)
        start_rss, start_fds = server.rss_kib(), server.fds()
        drive(server, cases, max(args.duration - args.warmup, 0.0), args.threads, tally)
        end_rss, end_fds = server.rss_kib(), server.fds()
        alive = server.proc is not None and server.proc.poll() is None
    finally:
        code = server.stop()
    elapsed = time.monotonic() - started
    counts = tally.counts
    summary = {
        "duration_s": round(elapsed, 1),
        "threads": args.threads,
        "sent": counts["sent"],
        "correct": counts["correct"],
        "of_which_bad_requests_with_the_right_error": counts["correct_bad"],
        "error": counts["error"],
        "mismatched": counts["mismatched"],
        "lost": counts["lost"],
        "requests_per_s": round(counts["sent"] / elapsed, 1),
        "rss_kib_start_end": [start_rss, end_rss],
        "fds_start_end": [start_fds, end_fds],
        "server_alive_at_end": alive,
        "exit_code_after_sigterm": code,
        "examples": tally.examples,
    }
    print(json.dumps(summary, indent=2))
    return 0 if counts["lost"] == counts["mismatched"] == 0 and alive and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
