"""In-process references of `benches/compare.py`: the workloads' pipelines called directly in one Python process
with onnxruntime's Python API, no server and no network. Prints one JSON object per measurement on stdout.

`python benches/inprocess.py --workload resnet50 --models DIR --duration 10`

* `tensor_add`: `session.run` in a loop (intra-op threads 1).
* `resnet50`: the per-image pipeline (decode, resize, normalize, `session.run` on one image, top-1), and the best
  batch: the same pipeline on batches of 1, 2, 4 and 8 images with one `session.run` per batch; the fastest
  batch size's images/s is the reference for a server under concurrent load. ONNX Runtime's default thread count.
* `pybound`: the slow Python stage, then the tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads  # noqa: E402


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(
    name: str, call: Callable[[], Any], duration: float, *, items: int = 1, warmup: float = 1.0
) -> dict[str, Any]:
    """Calls `call` back to back for `duration` seconds after `warmup`; each call handles `items` requests."""
    end_warmup = time.perf_counter() + warmup
    while time.perf_counter() < end_warmup:
        call()
    latencies: list[float] = []
    cpu_start = os.times()
    start = time.perf_counter()
    end = start + duration
    now = start
    while now < end:
        call()
        after = time.perf_counter()
        latencies.append(after - now)
        now = after
    elapsed = now - start
    cpu_end = os.times()
    cpu = (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)
    ordered = np.sort(np.array(latencies))
    return {
        "name": name,
        "rps": len(latencies) * items / elapsed,
        "p50_ms": float(ordered[len(ordered) // 2]) * 1e3,
        "p99_ms": float(ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]) * 1e3,
        "cpu_cores": cpu / elapsed,
        "calls": len(latencies),
        "batch": items,
    }


def tensor_add(models: Path, duration: float) -> list[dict[str, Any]]:
    session = _session(models / "tensor_add.onnx", 1)
    x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    return [measure("session.run", lambda: session.run(None, {"x1": x, "x2": x}), duration)]


def resnet50(models: Path, duration: float) -> list[dict[str, Any]]:
    session = _session(models / "resnet50.onnx", None)
    jpeg = workloads.make_jpeg()

    def pipeline(batch: int) -> Callable[[], Any]:
        def call() -> list[str]:
            x = np.stack([workloads.resnet_preprocess(jpeg) for _ in range(batch)])
            (scores,) = session.run(None, {"image": x})
            return [workloads.resnet_top1(score) for score in scores]

        return call

    rows = [measure("pipeline", pipeline(1), duration)]
    batches = [measure(f"pipeline batch {b}", pipeline(b), duration, items=b) for b in (1, 2, 4, 8)]
    best = max(batches, key=lambda row: row["rps"])
    rows.append({**best, "name": "best batch", "all_batches": {r["batch"]: r["rps"] for r in batches}})
    return rows


def pybound(models: Path, duration: float) -> list[dict[str, Any]]:
    session = _session(models / "square.onnx", 1)
    x = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)

    def call() -> Any:
        y = workloads.pybound_preprocess(x)
        return session.run(None, {"x": y[None]})

    return [measure("pipeline", call, duration)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", required=True, choices=("tensor_add", "resnet50", "pybound"))
    parser.add_argument("--models", required=True)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    runner = {"tensor_add": tensor_add, "resnet50": resnet50, "pybound": pybound}[args.workload]
    for row in runner(Path(args.models), args.duration):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
