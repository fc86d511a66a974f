"""Calls the `add` example servable like MindSpore's add client: `python examples/add_client.py [--address A]`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np

from rustserve.client import Client

# The server's gRPC address; $RUSTSERVE_GRPC_ADDRESS overrides the default (as for `rustserve infer`).
DEFAULT_ADDRESS = os.environ.get("RUSTSERVE_GRPC_ADDRESS", "127.0.0.1:5500")

Triple = tuple[np.ndarray, np.ndarray, np.ndarray]


def _infer(address: str, method: str, instances: list[dict[str, np.ndarray]]) -> list[Triple]:
    """Runs one request and returns (x1, x2, y) per instance; raises RuntimeError on a server error."""
    result = Client(address, "add", method).infer(instances)
    if isinstance(result, dict):
        raise RuntimeError(f"add.{method} failed: {result['error']}")
    triples = []
    for instance, output in zip(instances, result, strict=True):
        if "error" in output:
            raise RuntimeError(f"add.{method} failed: {output['error']}")
        triples.append((instance["x1"], instance["x2"], output["y"]))
    return triples


def run_add_common(address: str = DEFAULT_ADDRESS) -> list[Triple]:
    """Three float32 [2, 2] instances through `add_common`."""
    instances = [
        {"x1": np.full((2, 2), i, dtype=np.float32), "x2": np.arange(4, dtype=np.float32).reshape(2, 2) * i}
        for i in range(1, 4)
    ]
    return _infer(address, "add_common", instances)


def run_add_cast(address: str = DEFAULT_ADDRESS) -> list[Triple]:
    """Two int32 [2, 2] instances through `add_cast` (cast to float32 and back in Python stages)."""
    instances = [
        {"x1": np.array([[1, 2], [3, 4]], dtype=np.int32) * i, "x2": np.array([[5, 6], [7, 8]], dtype=np.int32)}
        for i in range(1, 3)
    ]
    return _infer(address, "add_cast", instances)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints x1 + x2 = y for both methods."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"gRPC address (default {DEFAULT_ADDRESS})")
    args = parser.parse_args(argv)
    for name, run in (("add_common", run_add_common), ("add_cast", run_add_cast)):
        for x1, x2, y in run(args.address):
            print(f"{name}: {x1.tolist()} + {x2.tolist()} = {y.tolist()} ({y.dtype})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
