"""Calls the `matmul` example servable: `python examples/matmul_client.py [--address A]`.

The servable declares its model with `with_batch_dim=False`, so every instance is one whole model run and the
instances of one request may have different shapes. Exit status 1 when a product differs from numpy's.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import numpy as np

from rustserve.client import Client

# The server's gRPC address; $RUSTSERVE_GRPC_ADDRESS overrides the default (as for `rustserve infer`).
DEFAULT_ADDRESS = os.environ.get("RUSTSERVE_GRPC_ADDRESS", "127.0.0.1:5500")

Triple = tuple[np.ndarray, np.ndarray, np.ndarray]


def instances() -> list[dict[str, np.ndarray]]:
    """Three (a, b) pairs of different shapes: [2, 3] @ [3, 2], [1, 4] @ [4, 3], [3, 3] @ [3, 1]."""
    rng = np.random.default_rng(0)
    shapes = [((2, 3), (3, 2)), ((1, 4), (4, 3)), ((3, 3), (3, 1))]
    return [{"a": rng.normal(size=a).astype(np.float32), "b": rng.normal(size=b).astype(np.float32)} for a, b in shapes]


def run(address: str = DEFAULT_ADDRESS) -> list[Triple]:
    """Sends the three pairs in one request; returns (a, b, c) per instance; raises RuntimeError on an error."""
    sent = instances()
    with Client(address, "matmul", "matmul") as client:
        result = client.infer(sent)
    if isinstance(result, dict):
        raise RuntimeError(f"matmul failed: {result['error']}")
    triples = []
    for instance, output in zip(sent, result, strict=True):
        if "error" in output:
            raise RuntimeError(f"matmul failed: {output['error']}")
        triples.append((instance["a"], instance["b"], output["c"]))
    return triples


def main(argv: Sequence[str] | None = None) -> int:
    """Prints each product and whether it matches numpy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=DEFAULT_ADDRESS, help=f"gRPC address (default {DEFAULT_ADDRESS})")
    args = parser.parse_args(argv)
    mismatches = 0
    for a, b, c in run(args.address):
        same = c.shape == (a.shape[0], b.shape[1]) and np.allclose(c, a @ b, rtol=1e-5, atol=1e-5)
        mismatches += not same
        print(f"{list(a.shape)} @ {list(b.shape)} = {list(c.shape)} {c.dtype}: {'ok' if same else 'MISMATCH'}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
