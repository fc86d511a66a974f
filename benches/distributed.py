"""Distributed servables on loopback: what a stage hop costs, and a 2-stage pipeline's throughput against the whole
model in one process. Not a test: it prints a table.

For each layout the same MLP (x [N, WIDTH] -> 4 layers of WIDTH, float32) is served by rustserve over gRPC:
* `local`: one servable with the whole model (declare_model), the baseline the hops are measured against;
* `1 stage x 1 rank`, `2 stages x 1 rank`: the model through 1 or 2 agents (`rustserve split --cut`);
* `2 stages x 2 ranks`: each stage's output layer sharded by columns.
and in-process ONNX Runtime runs the whole model as the throughput reference. Latency: p50 of one instance, one
client; throughput: instances/s with CLIENTS threads sending BATCH instances each, medians of ROUNDS rounds.

    python benches/distributed.py [--width 512] [--rounds 3] [--seconds 3]

Put a release build first on PYTHONPATH for figures worth quoting (see compare.py's --no-build site folder).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HOST = "127.0.0.1"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def build_mlp(path: Path, width: int) -> None:
    rng = np.random.default_rng(0)
    nodes, inits, last = [], [], "x"
    for i in range(4):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(width, np.float32), f"b{i}")]
        nodes.append(helper.make_node("MatMul", [last, f"w{i}"], [f"p{i}"]))
        nodes.append(helper.make_node("Add", [f"p{i}", f"b{i}"], [f"q{i}"]))
        last = f"q{i}"
        if i < 3:
            nodes.append(helper.make_node("Relu", [last], [f"h{i}"]))
            last = f"h{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


class Served:
    """A main process (and agents) serving one layout; `grpc` is its address."""

    def __init__(self, root: Path, whole: Path, stages: int, ranks: int | None) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.grpc = f"{HOST}:{free_port()}"
        servable = root / "servables" / "mlp"
        (servable / "1").mkdir(parents=True)
        env = dict(os.environ)
        if ranks is None:
            (servable / "1" / "mlp.onnx").write_bytes(whole.read_bytes())
            decl = 'model = register.declare_model(model_file="mlp.onnx", model_format="ONNX", max_batch_size=64)'
            main = f"""
                from rustserve import server
                server.start_servables(server.ServableStartConfig({str(root / "servables")!r}, "mlp"))
                server.start_grpc_server({self.grpc!r})
            """
        else:
            out = root / "ranks"
            cut = ["--cut", "q1"] if stages == 2 else []
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "rustserve",
                    "split",
                    str(whole),
                    "--out",
                    str(out),
                    *cut,
                    "--ranks-per-stage",
                    str(ranks),
                ],
                check=True,
                capture_output=True,
            )
            count = stages * ranks
            decl = f"model = distributed.declare_servable(rank_size={count}, stage_size={stages})"
            address = f"{HOST}:{free_port()}"
            main = f"""
                from rustserve import server
                from rustserve.server import distributed
                distributed.start_servable({str(root / "servables")!r}, "mlp", {str(out / "rank_table.json")!r},
                                           distributed_address={address!r})
                server.start_grpc_server({self.grpc!r})
            """
            files = [str(out / f"rank{r}" / "model.onnx") for r in range(count)]
            groups = [str(out / f"rank{r}" / "group_config.json") for r in range(count)]
            agents = f"""
                from rustserve.server import distributed
                distributed.startup_agents({address!r}, {files!r}, {groups!r}, agent_start_port={free_port()},
                                           intra_op_threads=1)
            """
            (root / "agents.py").write_text(textwrap.dedent(agents))
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, str(root / "agents.py")],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        config = f"""
            from rustserve.server import distributed, register
            {decl}

            @register.register_method(output_names=["y"])
            def predict(x):
                return register.add_stage(model, x, outputs_count=1)
        """
        (servable / "servable_config.py").write_text(textwrap.dedent(config))
        (root / "main.py").write_text(textwrap.dedent(main))
        self.procs.append(
            subprocess.Popen(
                [sys.executable, str(root / "main.py")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        )
        from rustserve.client import Client

        self.client = Client(self.grpc, "mlp", "predict")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if isinstance(self.client.infer({"x": np.zeros(WIDTH, np.float32)}), list):
                return
            time.sleep(0.2)
        raise SystemExit("the servable did not come up")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            proc.wait(20)


def p50_latency(infer, seconds: float) -> float:
    samples = []
    x = np.ones(WIDTH, np.float32)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        infer({"x": x})
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def throughput(make_infer, seconds: float, clients: int, batch: int) -> float:
    done = [0] * clients
    stop = time.monotonic() + seconds
    xs = [{"x": np.ones(WIDTH, np.float32)} for _ in range(batch)]

    def run(i: int) -> None:
        infer = make_infer()
        while time.monotonic() < stop:
            infer(xs)
            done[i] += batch

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / seconds


WIDTH = 512


def main() -> None:
    global WIDTH
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    WIDTH = args.width
    from rustserve.client import Client

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        whole = Path(scratch) / "mlp.onnx"
        build_mlp(whole, WIDTH)
        session = ort.InferenceSession(str(whole), providers=["CPUExecutionProvider"])

        def inprocess() -> object:
            def infer(instances: list[dict[str, np.ndarray]]) -> object:
                return session.run(["y"], {"x": np.stack([i["x"] for i in instances])})

            return infer

        ref = [throughput(inprocess, args.seconds, args.clients, args.batch) for _ in range(args.rounds)]
        rows.append(("in-process ONNX Runtime (whole model)", None, statistics.median(ref)))
        layouts = [
            ("local (declare_model)", 1, None),
            ("1 stage x 1 rank", 1, 1),
            ("2 stages x 1 rank", 2, 1),
            ("2 stages x 2 ranks", 2, 2),
        ]
        for index, (name, stages, ranks) in enumerate(layouts):
            root = Path(scratch) / f"layout{index}"
            root.mkdir()
            served = Served(root, whole, stages, ranks)
            try:
                lat = [p50_latency(served.client.infer, args.seconds) for _ in range(args.rounds)]
                address = served.grpc

                def client_infer(address: str = address) -> object:
                    return Client(address, "mlp", "predict").infer

                tput = [throughput(client_infer, args.seconds, args.clients, args.batch) for _ in range(args.rounds)]
            finally:
                served.stop()
            rows.append((name, statistics.median(lat), statistics.median(tput)))
    base = rows[1][1] or 0.0
    print(f"MLP 4 x {WIDTH}, {args.clients} clients x {args.batch} instances, medians of {args.rounds} rounds")
    print(f"{'layout':40} {'p50 (1 instance)':>18} {'vs local':>10} {'instances/s':>12} {'vs in-process':>14}")
    for name, lat, tput in rows:
        lat_text = f"{lat * 1e3:.3f} ms" if lat is not None else "-"
        extra = f"+{(lat - base) * 1e6:.0f} us" if lat is not None and name != rows[1][0] else ""
        print(f"{name:40} {lat_text:>18} {extra:>10} {tput:12.0f} {tput / rows[0][2]:13.2f}x")


if __name__ == "__main__":
    main()
