#!/usr/bin/env python
"""Huge requests: how the server's CPU time and peak memory grow with one request's size.

Starts `rustserve start --dir examples/servables --servable add` (limits raised so nothing is refused) and sends:

- one MindSpore gRPC Predict of N tiny instances for each N in `--instances` (default 100k, 250k, 400k): the server's
  CPU seconds per request should grow linearly with N;
- one MindSpore REST body of `--json-instances` instances (default 1.2M, about 92 MB), on a fresh server: the peak
  RSS growth (VmHWM minus the RSS before) divided by the body size;
- the same for `--wide-json-instances` instances of 256 floats each (default 60k, about 106 MB), on a generated
  identity servable.

Prints one JSON line per measurement. A release build gives the figures worth comparing (`maturin develop --release`).

Usage: python benches/huge_requests.py [--instances 100000 250000 400000] [--json-instances 1200000]
       [--wide-json-instances 60000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from ms_pb2 import load  # noqa: E402

INSTANCE_JSON = '{"x1": [[1.5, 2.25], [3.125, 4.0625]], "x2": [[1.5, 2.25], [3.125, 4.0625]]}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(
    directory: Path = ROOT / "examples" / "servables", servable: str = "add"
) -> tuple[subprocess.Popen[bytes], str, str]:
    grpc_address, rest_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    args = [sys.executable, "-m", "rustserve", "start", "--dir", str(directory)]
    args += ["--servable", servable, "--grpc", grpc_address, "--rest", rest_address, "--log-level", "error"]
    args += ["--max-msg-mb-size", "512", "--max-queued-instances", "100000000", "--max-in-flight-mb", "4096"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://{rest_address}/v2/health/ready", timeout=1).status_code == 200:
                return proc, grpc_address, rest_address
        except requests.RequestException:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not become ready")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_bytes(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def grpc_instances(counts: list[int]) -> None:
    import grpc

    pb2, pb2_grpc = load()
    proc, grpc_address, _ = serve()
    try:
        channel = grpc.insecure_channel(
            grpc_address,
            options=[("grpc.max_send_message_length", 512 << 20), ("grpc.max_receive_message_length", 512 << 20)],
        )
        stub = pb2_grpc.MSServiceStub(channel)
        x = np.ones((2, 2), np.float32).tobytes()
        tensor = pb2.Tensor(shape=pb2.TensorShape(dims=[2, 2]), dtype=11, data=x)
        for count in counts:
            request = pb2.PredictRequest(servable_spec=pb2.ServableSpec(name="add", method_name="add_common"))
            for _ in range(count):
                instance = request.instances.add()
                instance.items["x1"].CopyFrom(tensor)
                instance.items["x2"].CopyFrom(tensor)
            before, began = cpu_seconds(proc.pid), time.monotonic()
            reply = stub.Predict(request, timeout=600)
            print(
                json.dumps(
                    {
                        "grpc_instances": count,
                        "request_mb": round(request.ByteSize() / 1e6, 1),
                        "wall_s": round(time.monotonic() - began, 2),
                        "server_cpu_s": round(cpu_seconds(proc.pid) - before, 2),
                        "answered": len(reply.instances),
                        "errors": len(reply.error_msg),
                    }
                ),
                flush=True,
            )
        channel.close()
    finally:
        proc.terminate()
        proc.wait(60)


def identity_servable(directory: Path, width: int) -> None:
    """`ident`: one float32 [width] input, answered unchanged by an ONNX Identity (no batch dimension)."""
    import onnx
    from onnx import TensorProto, helper

    version = directory / "ident" / "1"
    version.mkdir(parents=True)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [width])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "ident", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(version / "ident.onnx"))
    (directory / "ident" / "servable_config.py").write_text(
        "from rustserve.server import register\n"
        'model = register.declare_model(model_file="ident.onnx", model_format="ONNX", with_batch_dim=False)\n\n\n'
        '@register.register_method(output_names=["y"])\n'
        "def predict(x):\n"
        "    return register.add_stage(model, x, outputs_count=1)\n"
    )


def json_memory(count: int, width: int = 0) -> None:
    """Peak RSS growth for one MindSpore JSON body: `add`'s two [2,2] inputs, or one float list of `width` values."""
    if width:
        scratch = Path(tempfile.mkdtemp(prefix="rustserve-huge-"))
        identity_servable(scratch, width)
        proc, _, rest_address = serve(scratch, "ident")
        instance, url = json.dumps({"x": [round(0.001 * i, 3) for i in range(width)]}), "ident:predict"
    else:
        proc, _, rest_address = serve()
        instance, url = INSTANCE_JSON, "add:add_common"
    try:
        body = ('{"instances": [' + ",".join([instance] * count) + "]}").encode()
        rss = status_bytes(proc.pid, "VmRSS:")
        began = time.monotonic()
        reply = requests.post(f"http://{rest_address}/model/{url}", data=body, timeout=600)
        peak = status_bytes(proc.pid, "VmHWM:")
        print(
            json.dumps(
                {
                    "json_instances": count,
                    "instance_bytes": len(instance),
                    "body_mb": round(len(body) / 1e6, 1),
                    "status": reply.status_code,
                    "wall_s": round(time.monotonic() - began, 2),
                    "peak_growth_mb": round((peak - rss) / 1e6),
                    "peak_growth_per_body_byte": round((peak - rss) / len(body), 1),
                }
            ),
            flush=True,
        )
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, nargs="*", default=[100_000, 250_000, 400_000])
    parser.add_argument("--json-instances", type=int, default=1_200_000)
    parser.add_argument("--wide-json-instances", type=int, default=60_000, help="instances of 256 floats each")
    args = parser.parse_args()
    if args.instances:
        grpc_instances(args.instances)
    if args.json_instances:
        json_memory(args.json_instances)
    if args.wide_json_instances:
        json_memory(args.wide_json_instances, width=256)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
