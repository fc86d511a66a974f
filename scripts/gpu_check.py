"""GPU check: serves ONNX models on CUDA through rustserve and compares them with the CPU path.

Run on a CUDA machine where rustserve and onnxruntime-gpu are importable (scripts/gpu_check.sh sets that up).
Prints one line per check and exits non-zero when a check fails. Not a test: CI has no GPU.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _matmul_model(path: str, n: int) -> None:
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((n, n), dtype=np.float32) / np.sqrt(n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor("w", TensorProto.FLOAT, [n, n], weight.tobytes(), raw=True)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


CONFIG = """
from rustserve.server import register
model = register.declare_model(model_file="mm.onnx", model_format="ONNX", max_batch_size=16)

@register.register_method(output_names=["y"])
def predict(x):
    return register.add_stage(model, x, outputs_count=1)
"""


def main() -> int:
    from rustserve import server
    from rustserve.client import Client
    from rustserve.server import _ort

    print("onnxruntime library:", _ort.find_onnxruntime_library())
    print("cuda provider shipped:", _ort.cuda_provider_available())
    print("LD_LIBRARY_PATH:", os.environ.get("LD_LIBRARY_PATH", ""))
    root = tempfile.mkdtemp()
    n = 2048
    for name in ("mm_gpu", "mm_cpu"):
        os.makedirs(os.path.join(root, name, "1"))
        with open(os.path.join(root, name, "servable_config.py"), "w") as f:
            f.write(CONFIG)
        _matmul_model(os.path.join(root, name, "1", "mm.onnx"), n)
    started = time.monotonic()
    server.start_servables(
        [
            server.ServableStartConfig(root, "mm_gpu", device_ids=0, device_type="GPU"),
            server.ServableStartConfig(root, "mm_cpu", device_type="CPU"),
        ]
    )
    print(f"servables loaded in {time.monotonic() - started:.2f} s")
    port = _free_port()
    server.start_grpc_server(f"127.0.0.1:{port}")
    rng = np.random.default_rng(1)
    instances = [{"x": rng.standard_normal(n, dtype=np.float32)} for _ in range(16)]
    failures = 0
    results = {}
    for name in ("mm_gpu", "mm_cpu"):
        client = Client(f"127.0.0.1:{port}", name, "predict", raise_on_error=True)
        reply = client.infer(instances)
        if isinstance(reply, dict):
            print(f"FAIL {name}: {reply}")
            failures += 1
            continue
        results[name] = np.stack([r["y"] for r in reply])
        for _ in range(3):
            client.infer(instances)
        rounds = 50
        t0 = time.perf_counter()
        for _ in range(rounds):
            client.infer(instances)
        per_call = (time.perf_counter() - t0) / rounds * 1e3
        print(f"{name}: 16 x [{n}] @ [{n},{n}] per request {per_call:.2f} ms")
    if len(results) == 2:
        diff = float(np.max(np.abs(results["mm_gpu"] - results["mm_cpu"])))
        ok = diff < 1e-2
        failures += 0 if ok else 1
        print(f"{'OK' if ok else 'FAIL'} gpu vs cpu max abs diff {diff:.2e}")
    os.system("nvidia-smi --query-compute-apps=pid,used_memory --format=csv")
    server.stop()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
