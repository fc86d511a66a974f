"""Distributed servables: a main process with `distributed.start_servable` and agent processes started by
`distributed.startup_agents`, on loopback with CPU agents (one intra-op thread each). Each layout is checked against
the whole computation done here with numpy; an agent killed with SIGKILL fails requests at once, naming its rank, and
the servable serves again once the supervisor has started it again."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import HOST, _child_env, free_port, wait_for
from onnx import TensorProto, helper, numpy_helper

from rustserve.client import Client

RNG = np.random.default_rng(7)


def free_port_range(count: int) -> int:
    """The first of `count` consecutive loopback ports that were all free a moment ago, below the ephemeral range."""
    for base in range(20000 + (os.getpid() % 500) * 40, 32000, 40):
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind((HOST, port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free port range")


def _save(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    inits: list[np.ndarray],
    names: list[str],
) -> None:
    graph = helper.make_graph(
        nodes, path.stem, inputs, outputs, [numpy_helper.from_array(a, n) for a, n in zip(inits, names, strict=True)]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _float(name: str, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _rank_table(path: Path, ranks: int) -> Path:
    devices = [{"device_id": str(i), "device_ip": f"192.1.27.{i}", "rank_id": str(i)} for i in range(ranks)]
    table = {"version": "1.0", "server_count": "1", "server_list": [{"server_id": "127.0.0.1", "device": devices}]}
    path.write_text(json.dumps(table))
    return path


def _group(path: Path, stage: int, combine: dict[str, dict[str, object]]) -> str:
    path.write_text(json.dumps({"stage": stage, "combine": combine}))
    return str(path)


@dataclass
class Layout:
    servable: str
    config: str
    ranks: int
    model_files: list[str]
    group_files: list[str]


def matmul_layout(root: Path) -> tuple[Layout, np.ndarray]:
    """MindSpore's own example: x [128, 96] -> y = -(x @ W), W [96, 16], 8 ranks in one stage, column shards."""
    weight = RNG.standard_normal((96, 16)).astype(np.float32)
    files, groups = [], []
    for rank in range(8):
        path = root / f"rank{rank}.onnx"
        nodes = [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Neg", ["p"], ["y"])]
        _save(
            path, nodes, [_float("x", [128, 96])], [_float("y", [128, 2])], [weight[:, 2 * rank : 2 * rank + 2]], ["w"]
        )
        files.append(str(path))
        groups.append(_group(root / f"group{rank}.json", 0, {"y": {"op": "concat", "axis": 1}}))
    config = """
        from rustserve.server import distributed, register

        model = distributed.declare_servable(rank_size=8, stage_size=1, with_batch_dim=False)


        @register.register_method(output_names=["y"])
        def predict(x):
            y = register.add_stage(model, x, outputs_count=1)
            return y
    """
    return Layout("matmul", config, 8, files, groups), weight


def mlp_layout(root: Path) -> tuple[Layout, tuple[np.ndarray, ...]]:
    """A 2-layer MLP with a batch dim, 2 stages x 2 ranks: stage 0 splits layer 1's columns (concat), stage 1 splits
    layer 2's rows (each rank reads its half of h; sum), with a Python stage before and after the model."""
    w1 = RNG.standard_normal((8, 6)).astype(np.float32)
    b1 = RNG.standard_normal(6).astype(np.float32)
    w2 = RNG.standard_normal((6, 4)).astype(np.float32)
    b2 = RNG.standard_normal(4).astype(np.float32)
    files, groups = [], []
    for rank in range(2):
        path = root / f"mlp{rank}.onnx"
        cols = slice(3 * rank, 3 * rank + 3)
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["p"]),
            helper.make_node("Add", ["p", "b"], ["q"]),
            helper.make_node("Relu", ["q"], ["h"]),
        ]
        _save(path, nodes, [_float("x", ["N", 8])], [_float("h", ["N", 3])], [w1[:, cols], b1[cols]], ["w", "b"])
        files.append(str(path))
        groups.append(_group(root / f"mlp_group{rank}.json", 0, {"h": {"op": "concat", "axis": -1}}))
    for rank in range(2):
        path = root / f"mlp{rank + 2}.onnx"
        bias = b2 if rank == 0 else np.zeros(4, np.float32)
        nodes = [
            helper.make_node("Slice", ["h", "starts", "ends", "axes"], ["part"]),
            helper.make_node("MatMul", ["part", "w"], ["p"]),
            helper.make_node("Add", ["p", "b"], ["z"]),
        ]
        inits = [
            w2[3 * rank : 3 * rank + 3],
            bias,
            np.array([3 * rank], np.int64),
            np.array([3 * rank + 3], np.int64),
            np.array([1], np.int64),
        ]
        _save(
            path, nodes, [_float("h", ["N", 6])], [_float("z", ["N", 4])], inits, ["w", "b", "starts", "ends", "axes"]
        )
        files.append(str(path))
        groups.append(_group(root / f"mlp_group{rank + 2}.json", 1, {"z": {"op": "sum"}}))
    config = """
        from rustserve.server import distributed, register

        model = distributed.declare_servable(rank_size=4, stage_size=2)


        def scale(x):
            return x * 2


        def finish(z):
            return z, float(z.sum())


        @register.register_method(output_names=["z", "total"])
        def predict(x):
            x2 = register.add_stage(scale, x, outputs_count=1)
            z = register.add_stage(model, x2, outputs_count=1)
            z, total = register.add_stage(finish, z, outputs_count=2)
            return z, total
    """
    return Layout("mlp", config, 4, files, groups), (w1, b1, w2, b2)


class Deployment:
    """A main process (grpc + REST) and an agent launcher process for one layout."""

    def __init__(self, root: Path, layout: Layout, wait_agents: float = 0) -> None:
        self.root = root
        self.layout = layout
        servable = root / "servables" / layout.servable
        (servable / "1").mkdir(parents=True)
        (servable / "servable_config.py").write_text(textwrap.dedent(layout.config))
        table = _rank_table(root / "rank_table.json", layout.ranks)
        self.distributed = f"{HOST}:{free_port()}"
        self.grpc = f"{HOST}:{free_port()}"
        self.rest_port = free_port()
        main = f"""
            from rustserve.server import distributed, start_grpc_server, start_restful_server

            distributed.start_servable({str(root / "servables")!r}, {layout.servable!r}, {str(table)!r},
                                       distributed_address={self.distributed!r},
                                       wait_agents_time_in_seconds={wait_agents})
            start_grpc_server({self.grpc!r})
            start_restful_server("{HOST}:{self.rest_port}")
            print("serving", flush=True)
        """
        self.main = self._spawn("main.py", main)
        self.agent_start_port = free_port_range(layout.ranks)
        self.agents: subprocess.Popen[str] | None = None

    def _spawn(self, name: str, source: str) -> subprocess.Popen[str]:
        script = self.root / name
        script.write_text(textwrap.dedent(source))
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        # A session of its own, so stop() reaches the agents the launcher started too.
        return subprocess.Popen(
            [sys.executable, str(script)],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            env=_child_env(),
            start_new_session=True,
        )

    def start_agents(self) -> None:
        layout = self.layout
        source = f"""
            from rustserve.server import distributed

            distributed.startup_agents({self.distributed!r}, {layout.model_files!r}, {layout.group_files!r},
                                       agent_start_port={self.agent_start_port}, intra_op_threads=1)
        """
        self.agents = self._spawn("agents.py", source)

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()

    def wait_serving(self) -> None:
        wait_for(lambda: "serving" in self.log("main.py") or self.main.poll() is not None, "the main process", 90)
        assert self.main.poll() is None, self.log("main.py")

    def agent_pid(self, port: int) -> int:
        pattern = f"--listen {re.escape(HOST)}:{port}( |$)"
        out = subprocess.run(["pgrep", "-f", "--", pattern], capture_output=True, text=True).stdout
        pids = [int(p) for p in out.split()]
        assert len(pids) == 1, (out, self.log("agents.py"))
        return pids[0]

    def client(self) -> Client:
        return Client(self.grpc, self.layout.servable, "predict")

    def stop(self) -> None:
        for proc in (self.agents, self.main):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in (self.agents, self.main):
            if proc is not None:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # anything of its session still running


@pytest.fixture
def deploy(tmp_path: Path) -> Iterator[type[Deployment]]:
    started: list[Deployment] = []

    class Tracked(Deployment):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield Tracked
    for deployment in started:
        deployment.stop()


def test_mindspore_matmul_example_on_eight_column_shards(tmp_path: Path, deploy: type[Deployment]) -> None:
    """8 ranks in one stage: every rank gets x, the shards' y concatenate along axis 1 into -(x @ W)."""
    layout, weight = matmul_layout(tmp_path)
    deployment = deploy(tmp_path, layout)
    deployment.start_agents()
    deployment.wait_serving()
    x = RNG.standard_normal((128, 96)).astype(np.float32)
    result = deployment.client().infer({"x": x})
    assert isinstance(result, list), result
    np.testing.assert_allclose(result[0]["y"], -(x @ weight), rtol=1e-5, atol=1e-5)


def test_two_stages_of_two_ranks_batch_like_a_local_model(tmp_path: Path, deploy: type[Deployment]) -> None:
    """The MLP split 2 x 2 answers like the whole model, over gRPC (several instances, batched), MindSpore's REST
    and KServe v2."""
    import requests

    layout, (w1, b1, w2, b2) = mlp_layout(tmp_path)
    deployment = deploy(tmp_path, layout)
    deployment.start_agents()
    deployment.wait_serving()
    xs = [RNG.standard_normal(8).astype(np.float32) for _ in range(5)]
    expected = [np.maximum(2 * x @ w1 + b1, 0) @ w2 + b2 for x in xs]
    result = deployment.client().infer([{"x": x} for x in xs])
    for out, want in zip(result, expected, strict=True):
        np.testing.assert_allclose(out["z"], want, rtol=1e-5, atol=1e-5)
        assert float(out["total"]) == pytest.approx(float(want.sum()), rel=1e-5, abs=1e-5)
    body = requests.post(
        f"http://{HOST}:{deployment.rest_port}/model/mlp:predict",
        json={"instances": [{"x": x.tolist()} for x in xs[:2]]},
        timeout=30,
    ).json()
    for out, want in zip(body["instances"], expected[:2], strict=True):
        np.testing.assert_allclose(out["z"], want, rtol=1e-5, atol=1e-5)
    v2_input = {"name": "x", "datatype": "FP32", "shape": [3, 8], "data": np.stack(xs[:3]).ravel().tolist()}
    v2 = requests.post(
        f"http://{HOST}:{deployment.rest_port}/v2/models/mlp/infer",
        json={"inputs": [v2_input]},
        timeout=30,
    ).json()
    metrics = requests.get(f"http://{HOST}:{deployment.rest_port}/metrics", timeout=30).text
    for rank in range(4):
        assert f'rustserve_distributed_rank_up{{servable="mlp",rank="{rank}"}} 1' in metrics, metrics
        calls = re.search(rf'rustserve_distributed_rank_calls_total{{servable="mlp",rank="{rank}"}} (\S+)', metrics)
        assert calls is not None and float(calls.group(1)) >= 2, metrics
    z = next(o for o in v2["outputs"] if o["name"] == "z")
    assert z["shape"] == [3, 4], v2
    np.testing.assert_allclose(np.array(z["data"]).reshape(3, 4), np.stack(expected[:3]), rtol=1e-5, atol=1e-5)


def test_a_killed_agent_fails_requests_at_once_and_its_restart_serves_again(
    tmp_path: Path, deploy: type[Deployment]
) -> None:
    """SIGKILL one agent: the next requests fail quickly with an error naming its rank and address (not a hang); the
    supervisor starts it again, it registers again, and the same main process serves again."""
    layout, (w1, b1, w2, b2) = mlp_layout(tmp_path)
    deployment = deploy(tmp_path, layout)
    deployment.start_agents()
    deployment.wait_serving()
    client = deployment.client()
    x = RNG.standard_normal(8).astype(np.float32)
    expected = np.maximum(2 * x @ w1 + b1, 0) @ w2 + b2
    np.testing.assert_allclose(client.infer({"x": x})[0]["z"], expected, rtol=1e-5, atol=1e-5)
    port = deployment.agent_start_port + 3
    os.kill(deployment.agent_pid(port), signal.SIGKILL)
    started = time.monotonic()
    failed = client.infer({"x": x})
    assert time.monotonic() - started < 10
    error = failed["error"] if isinstance(failed, dict) else failed[0]["error"]
    assert "rank 3" in error and f"{HOST}:{port}" in error, failed

    def serves() -> bool:
        out = client.infer({"x": x})
        return isinstance(out, list) and "z" in out[0] and np.allclose(out[0]["z"], expected, rtol=1e-5, atol=1e-5)

    wait_for(serves, "the restarted agent to serve again", 60)
    assert deployment.main.poll() is None


def test_missing_agents_fail_start_after_the_wait_time(tmp_path: Path, deploy: type[Deployment]) -> None:
    """No agent ever registers: start_servable gives up after wait_agents_time_in_seconds, with MindSpore's text."""
    layout, _ = matmul_layout(tmp_path)
    deployment = deploy(tmp_path, layout, wait_agents=2)
    started = time.monotonic()
    deployment.main.wait(60)
    assert time.monotonic() - started < 30
    assert deployment.main.returncode != 0
    assert "Failed to wait for ready of all agents, current agents count: 0, rank size: 8" in deployment.log("main.py")


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ("not json", "is not valid JSON"),
        ({"server_list": []}, "'server_list' must be a non-empty list"),
        (
            {"server_list": [{"server_id": "h", "device": [{"device_id": "0", "rank_id": "1"}]}]},
            "rank ids must be 0..0",
        ),
        (
            {"server_list": [{"server_id": "h", "device": [{"device_id": 0, "rank_id": "0"}]}]},
            "'device_id' must be a string",
        ),
    ],
)
def test_bad_rank_tables_are_refused_with_what_is_wrong(tmp_path: Path, table: object, expected: str) -> None:
    from rustserve.server import distributed

    path = tmp_path / "rank_table.json"
    path.write_text(table if isinstance(table, str) else json.dumps(table))
    with pytest.raises(RuntimeError, match="rank table|Rank table") as info:
        distributed.start_servable(str(tmp_path), "nothing", str(path), distributed_address=f"{HOST}:{free_port()}")
    assert expected in str(info.value)


def test_a_bad_group_config_stops_its_agent_with_a_clear_error(tmp_path: Path) -> None:
    """An agent whose group config names an unknown op or output exits at once, saying which and where."""
    layout, _ = matmul_layout(tmp_path)
    bad = tmp_path / "bad.json"
    for text, expected in [
        ('{"combine": {"y": {"op": "max"}}}', "unknown op 'max'"),
        ('{"combine": {"q": {"op": "sum"}}}', "names output 'q', which model"),
    ]:
        bad.write_text(text)
        command = [sys.executable, "-m", "rustserve", "agent", "--model-file", layout.model_files[0], "--rank", "0"]
        command += ["--listen", f"{HOST}:{free_port()}", "--distributed-address", f"{HOST}:{free_port()}"]
        command += ["--group-config", str(bad)]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60, env=_child_env())
        assert proc.returncode == 1, proc
        assert expected in proc.stderr, proc.stderr


def _whole_mlp(path: Path) -> tuple[np.ndarray, ...]:
    """A 3-layer MLP x [N, 8] -> 8 -> 6 -> 4 in one ONNX file; q1 is layer 1 before its Relu."""
    shapes = [(8, 8), (8, 6), (6, 4)]
    params = []
    for n_in, n_out in shapes:
        params += [RNG.standard_normal((n_in, n_out)).astype(np.float32), RNG.standard_normal(n_out).astype(np.float32)]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["p1"]),
        helper.make_node("Add", ["p1", "b1"], ["q1"]),
        helper.make_node("Relu", ["q1"], ["h1"]),
        helper.make_node("MatMul", ["h1", "w2"], ["p2"]),
        helper.make_node("Add", ["p2", "b2"], ["q2"]),
        helper.make_node("Relu", ["q2"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w3"], ["p3"]),
        helper.make_node("Add", ["p3", "b3"], ["y"]),
    ]
    names = ["w1", "b1", "w2", "b2", "w3", "b3"]
    _save(path, nodes, [_float("x", ["N", 8])], [_float("y", ["N", 4])], params, names)
    return tuple(params)


@pytest.mark.parametrize("shard", ["columns", "rows"])
def test_split_makes_rank_files_that_serve_like_the_whole_model(
    tmp_path: Path, deploy: type[Deployment], shard: str
) -> None:
    """`rustserve split` cuts a 3-layer MLP into 2 stages x 2 ranks, checks itself, and the result serves."""
    import onnxruntime as ort

    whole = tmp_path / "mlp.onnx"
    _whole_mlp(whole)
    out = tmp_path / "split"
    command = [sys.executable, "-m", "rustserve", "split", str(whole), "--out", str(out), "--cut", "q1"]
    command += ["--ranks-per-stage", "2", "--shard", shard]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=_child_env())
    assert proc.returncode == 0, proc
    assert "largest difference from the whole model" in proc.stdout
    groups = [json.loads((out / f"rank{r}" / "group_config.json").read_text()) for r in range(4)]
    assert [g["stage"] for g in groups] == [0, 0, 1, 1]
    config = """
        from rustserve.server import distributed, register

        model = distributed.declare_servable(rank_size=4, stage_size=2)


        @register.register_method(output_names=["y"])
        def predict(x):
            return register.add_stage(model, x, outputs_count=1)
    """
    files = [str(out / f"rank{r}" / "model.onnx") for r in range(4)]
    layout = Layout("mlp3", config, 4, files, [str(out / f"rank{r}" / "group_config.json") for r in range(4)])
    deployment = deploy(tmp_path, layout)
    deployment.start_agents()
    deployment.wait_serving()
    xs = RNG.standard_normal((3, 8)).astype(np.float32)
    (expected,) = ort.InferenceSession(str(whole), providers=["CPUExecutionProvider"]).run(["y"], {"x": xs})
    result = Client(deployment.grpc, "mlp3", "predict").infer([{"x": x} for x in xs])
    assert isinstance(result, list), result
    for got, want in zip(result, expected, strict=True):
        np.testing.assert_allclose(got["y"], want, rtol=1e-4, atol=1e-4)


def test_split_refuses_a_cut_that_is_not_a_single_tensor(tmp_path: Path) -> None:
    whole = tmp_path / "mlp.onnx"
    _whole_mlp(whole)
    command = [sys.executable, "-m", "rustserve", "split", str(whole), "--out", str(tmp_path / "o"), "--cut", "w2"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=_child_env())
    assert proc.returncode != 0
    assert "cannot cut at 'w2'" in proc.stderr, proc.stderr
