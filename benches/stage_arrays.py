"""What passing an array through Python stages costs: a method of STAGES Python stages that each return their input
(`lambda x: x`), called over gRPC with one float32 array of each size, p50 of one client. Stages share arrays with
the pipeline (no copy in or out, as in MindSpore), so the figure should barely grow with the stage count; compare
builds by putting another one first on PYTHONPATH. Not a test: it prints a table.

    python benches/stage_arrays.py [--seconds 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

HOST = "127.0.0.1"
SIZES_MB = (0.001, 1, 16)
STAGES = (1, 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from rustserve.client import Client

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "servables" / "chain"
        root.mkdir(parents=True)
        methods = []
        for count in STAGES:
            stages = "\n".join("    x = register.add_stage(same, x, outputs_count=1)" for _ in range(count))
            methods.append(
                f"@register.register_method(output_names=['y'])\ndef pass{count}(x):\n{stages}\n    return x\n"
            )
        config = "from rustserve.server import register\n\n\ndef same(x):\n    return x\n\n\n" + "\n\n".join(methods)
        (root / "servable_config.py").write_text(config)
        with socket.socket() as sock:
            sock.bind((HOST, 0))
            port = sock.getsockname()[1]
        script = f"""
            from rustserve import server
            server.start_servables(server.ServableStartConfig({str(root.parent)!r}, "chain"))
            server.start_grpc_server("{HOST}:{port}")
        """
        (Path(scratch) / "main.py").write_text(textwrap.dedent(script))
        proc = subprocess.Popen([sys.executable, str(Path(scratch) / "main.py")], env=dict(os.environ))
        try:
            import rustserve._rustserve as native

            print(f"native module: {native.__file__}")
            rows = []
            for count in STAGES:
                client = Client(f"{HOST}:{port}", "chain", f"pass{count}")
                deadline = time.monotonic() + 60
                while not isinstance(client.infer({"x": np.zeros(1, np.float32)}), list):
                    if time.monotonic() > deadline:
                        raise SystemExit("server did not start")
                    time.sleep(0.1)
                for mb in SIZES_MB:
                    x = np.ones(max(1, int(mb * 1e6 / 4)), np.float32)
                    medians = []
                    for _ in range(args.rounds):
                        samples = []
                        end = time.monotonic() + args.seconds
                        while time.monotonic() < end:
                            t = time.perf_counter()
                            out = client.infer({"x": x})
                            samples.append(time.perf_counter() - t)
                        assert isinstance(out, list) and out[0]["y"].shape == x.shape, out
                        medians.append(statistics.median(samples))
                    rows.append((count, mb, statistics.median(medians)))
        finally:
            proc.terminate()
            proc.wait(20)
    print(f"{'stages':>6} {'array':>8} {'p50':>10}")
    for count, mb, p50 in rows:
        print(f"{count:>6} {mb:>6g}MB {p50 * 1e3:>8.3f}ms")


if __name__ == "__main__":
    main()
