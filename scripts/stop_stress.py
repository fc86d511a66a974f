#!/usr/bin/env python
"""Stop stress: start and stop a real server many times with SIGINT / SIGTERM at random moments; no stop may hang.

Each cycle starts `python -m rustserve start` on a copy of the bundled `add` servable plus a Python-only `echo`
servable, on free loopback ports, then sends SIGINT or SIGTERM (chosen at random) in one of four moments:

- `startup`: at a random time while the server starts (before or around its ready line), with worker processes
  starting half the time;
- `ready`: as soon as the ready line is printed;
- `load`: while client threads send requests over REST (Python stages and the model);
- `workers`: with `--num-parallel-workers 3` (three worker processes), at a random moment, under load half the time.

A process that has not exited `--drain-timeout-s` + 5 s after the signal is a hang: its thread stacks are printed
(py-spy, when installed) and it is killed. A stop must also end with status 0 once the server was ready; before that,
with 0 or 1 (start-up abandoned), or by the signal itself when it came before Python had started. `--cpu-load N` keeps
N busy processes running meanwhile, so the races of a loaded CI machine show up.

Prints one JSON summary; exit status 1 when any cycle hung or ended with an unexpected status.

Usage: python scripts/stop_stress.py [--cycles 500] [--cpu-load 2] [--seed 0]
Not part of the test suite (it runs for many minutes); see docs/10-operations.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))

from soak import HOST, ROOT, free_port  # noqa: E402

MOMENTS = ("startup", "ready", "load", "workers")
WORKER_FLAGS = ["--num-parallel-workers", "3"]
DRAIN_TIMEOUT_S = 2.0
GRACE_S = 5.0  # the promise: a stop ends within --drain-timeout-s + 5 s
ECHO_CONFIG = """
from rustserve.server import register


@register.register_method(output_names=["y"])
def echo(x):
    return register.add_stage(lambda x: x, x, outputs_count=1)
"""


def servable_directory() -> Path:
    """A temporary servable directory: the bundled `add` example and a Python-only `echo` servable."""
    directory = Path(tempfile.mkdtemp(prefix="rustserve-stop-stress-"))
    shutil.copytree(ROOT / "examples" / "servables" / "add", directory / "add")
    (directory / "echo").mkdir()
    (directory / "echo" / "servable_config.py").write_text(ECHO_CONFIG)
    return directory


def burn(stop_at: float) -> None:
    """Keeps one core busy until `stop_at` (monotonic seconds)."""
    while time.monotonic() < stop_at:
        pass


def load(rest: str, stop: threading.Event) -> None:
    """Sends requests to both servables until `stop` is set; errors (the server going away) are expected."""
    session = requests.Session()
    bodies = [
        ("add:add_cast", {"instances": [{"x1": [[1, 2], [3, 4]], "x2": [[1, 1], [1, 1]]}] * 3}),
        ("echo:echo", {"instances": [{"x": [1.0, 2.0]}]}),
    ]
    while not stop.is_set():
        path, body = random.choice(bodies)
        try:
            session.post(f"http://{rest}/model/{path}", json=body, timeout=5)
        except requests.RequestException:
            time.sleep(0.01)


def thread_stacks(pid: int) -> str:
    """The process's thread stacks (Python and native) from py-spy, or why there are none."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return "(py-spy is not installed: no stacks)"
    result = subprocess.run(
        [py_spy, "dump", "--native", "--pid", str(pid)], capture_output=True, text=True, timeout=60, check=False
    )
    return result.stdout + result.stderr


def cycle(
    directory: Path, moment: str, sig: signal.Signals, pick: random.Random, start_s: dict[bool, float]
) -> dict[str, object]:
    """One start and stop; returns what happened."""
    grpc, rest = f"{HOST}:{free_port()}", f"{HOST}:{free_port()}"
    args = [sys.executable, "-m", "rustserve", "start", "--dir", str(directory), "--grpc", grpc, "--rest", rest]
    args += ["--log-level", "warn", "--drain-timeout-s", str(DRAIN_TIMEOUT_S)]
    workers = moment == "workers" or (moment == "startup" and pick.random() < 0.5)
    if workers:
        args += WORKER_FLAGS
    stderr = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert proc.stdout is not None
    stop_load = threading.Event()
    loaders: list[threading.Thread] = []
    ready = False
    try:
        if moment == "startup":
            time.sleep(pick.uniform(0, start_s[workers] * 1.2))
            ready = None  # unknown: the signal may land before or after the ready line
        else:
            for line in proc.stdout:
                if line.startswith("rustserve: serving"):
                    ready = True
                    break
            if not ready:
                stderr.seek(0)
                return {"outcome": "no-start", "status": proc.wait(), "stderr": stderr.read()[-2000:]}
            threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()
            if moment == "load" or (moment == "workers" and pick.random() < 0.5):
                loaders = [threading.Thread(target=load, args=(rest, stop_load), daemon=True) for _ in range(4)]
                for thread in loaders:
                    thread.start()
                time.sleep(pick.uniform(0.05, 0.6))
            elif moment == "workers":
                time.sleep(pick.uniform(0, 0.2))
        signalled = time.monotonic()
        proc.send_signal(sig)
        try:
            status = proc.wait(timeout=DRAIN_TIMEOUT_S + GRACE_S)
        except subprocess.TimeoutExpired:
            stacks = thread_stacks(proc.pid)
            proc.kill()
            proc.wait()
            stderr.seek(0)
            return {"outcome": "hang", "stacks": stacks, "stderr": stderr.read()[-4000:]}
        seconds = time.monotonic() - signalled
        # Before the CLI installs its handlers (the interpreter still starting), a signal has its default effect.
        allowed = {0} if ready else {0, 1, -sig}
        if status not in allowed:
            stderr.seek(0)
            return {"outcome": "bad-status", "status": status, "seconds": seconds, "stderr": stderr.read()[-4000:]}
        return {"outcome": "ok", "status": status, "seconds": seconds}
    finally:
        stop_load.set()
        for thread in loaders:
            thread.join(timeout=10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stderr.close()


def measure_start_s(directory: Path, extra: list[str]) -> float:
    """How long one start takes here, up to the ready line (the window the `startup` moment aims at)."""
    grpc, rest = f"{HOST}:{free_port()}", f"{HOST}:{free_port()}"
    args = [sys.executable, "-m", "rustserve", "start", "--dir", str(directory), "--grpc", grpc, "--rest", rest]
    args += extra
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("rustserve: serving"):
            break
    seconds = time.monotonic() - started
    proc.terminate()
    proc.wait(timeout=60)
    return seconds


def main() -> int:
    """Runs the cycles and prints a JSON summary; exit 1 on any hang or unexpected exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=500, help="start/stop cycles (default 500)")
    parser.add_argument("--cpu-load", type=int, default=os.cpu_count() or 2, help="busy processes (default: cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random choices")
    args = parser.parse_args()

    pick = random.Random(args.seed)
    directory = servable_directory()
    start_s = {False: measure_start_s(directory, []), True: measure_start_s(directory, WORKER_FLAGS)}
    burners = [
        multiprocessing.Process(target=burn, args=(time.monotonic() + 24 * 3600,), daemon=True)
        for _ in range(args.cpu_load)
    ]
    for burner in burners:
        burner.start()
    outcomes: Counter[str] = Counter()
    by_moment: dict[str, Counter[str]] = {moment: Counter() for moment in MOMENTS}
    slowest = 0.0
    failures: list[dict[str, object]] = []
    began = time.monotonic()
    try:
        for number in range(args.cycles):
            moment = pick.choice(MOMENTS)
            sig = pick.choice([signal.SIGINT, signal.SIGTERM])
            result = cycle(directory, moment, sig, pick, start_s)
            outcomes[str(result["outcome"])] += 1
            by_moment[moment][str(result["outcome"])] += 1
            slowest = max(slowest, float(result.get("seconds", 0.0)))  # type: ignore[arg-type]
            if result["outcome"] != "ok":
                failures.append({"cycle": number, "moment": moment, "signal": sig.name, **result})
                print(json.dumps(failures[-1], indent=1), file=sys.stderr, flush=True)
    finally:
        for burner in burners:
            burner.terminate()
        shutil.rmtree(directory, ignore_errors=True)
    summary = {
        "cycles": args.cycles,
        "cpu_load": args.cpu_load,
        "start_s": {"plain": round(start_s[False], 3), "workers": round(start_s[True], 3)},
        "outcomes": dict(outcomes),
        "by_moment": {moment: dict(counts) for moment, counts in by_moment.items()},
        "hangs": outcomes["hang"],
        "slowest_stop_s": round(slowest, 3),
        "limit_s": DRAIN_TIMEOUT_S + GRACE_S,
        "minutes": round((time.monotonic() - began) / 60, 1),
    }
    print(json.dumps(summary, indent=1))
    return 0 if outcomes["ok"] == args.cycles else 1


if __name__ == "__main__":
    raise SystemExit(main())
