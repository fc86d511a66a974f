"""Python worker processes (`num_parallel_workers`, `python_in_process`) and cross-request batching of Python batch
stages.

Servers here are started the MindSpore way, by a script calling `server.start_servables(ServableStartConfig(...,
num_parallel_workers=n))`, and answer over real gRPC. Which process ran a stage is observable: the `wk` stages
return `os.getpid()`. With n > 1 executors, or `python_in_process=False`, every stage call runs in a worker process
and none in the server, so a stage that crashes the interpreter costs only its worker.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import models
import numpy as np
import pytest
from conftest import PYSTAGES_CONFIG, Grpc, ServerProcess, alive, launch_server, wait_for, worker_pids, write_servable

WORKER_UNAVAILABLE = 4

WK_CONFIG = '''
"""Stages that tell which process ran them: slow ones, a batch stage, Model.call, and ways to die."""
import os
import sys
import time

import numpy as np

from rustserve.server import register

model = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=True, max_batch_size=8)


def _in_worker():
    main = sys.modules.get("__main__")
    return os.path.basename(getattr(main, "__file__", None) or "") == "worker.py"


def slow_pid(x):
    time.sleep(0.05)
    return np.int64(os.getpid()), x * 2


def batch_len(instances):
    time.sleep(0.5)
    return [(np.int64(len(instances)), np.int64(os.getpid()), x + 1) for (x,) in instances]


def call_model(x):
    single = model.call(x, x)
    pair = model.call([[x, x], [x, x * 2]])
    return np.int64(os.getpid()), single, pair[1][0]


def sleep_pid(x, marks):
    open(os.path.join(marks, str(os.getpid())), "w").close()
    time.sleep(float(np.asarray(x).sum()))
    return np.int64(os.getpid())


def exit_in_worker(x):
    if _in_worker():
        os._exit(3)
    return np.int64(os.getpid())


def crash(x, how):
    """Ends the interpreter the hard way: a segfault, an abort or an exit status (only ever run in a worker)."""
    import ctypes

    how = str(how)
    if how == "segfault":
        ctypes.string_at(0)
    elif how == "abort":
        os.abort()
    else:
        os._exit(3)
    return np.int64(os.getpid())


@register.register_method(output_names=["pid", "y"])
def pid(x):
    p, y = register.add_stage(slow_pid, x, outputs_count=2)
    return p, y


@register.register_method(output_names=["n", "pid", "y"])
def batch(x):
    n, p, y = register.add_stage(batch_len, x, outputs_count=3, batch_size=8)
    return n, p, y


@register.register_method(output_names=["pid", "single", "second"])
def model_call(x):
    p, single, second = register.add_stage(call_model, x, outputs_count=3)
    return p, single, second


@register.register_method(output_names=["pid"])
def sleep(x, marks):
    return register.add_stage(sleep_pid, x, marks, outputs_count=1)


@register.register_method(output_names=["pid"])
def exit_worker(x):
    return register.add_stage(exit_in_worker, x, outputs_count=1)


@register.register_method(output_names=["pid"])
def crash_worker(x, how):
    return register.add_stage(crash, x, how, outputs_count=1)
'''

LAUNCHER = '''
"""Serves every servable under --dir with num_parallel_workers={workers}, as a MindSpore Serving script would."""
import argparse

from rustserve import server
from rustserve.server import _loader

parser = argparse.ArgumentParser()
parser.add_argument("command")
parser.add_argument("--dir", required=True)
parser.add_argument("--grpc", required=True)
parser.add_argument("--rest", required=True)
args = parser.parse_args()
# As `rustserve start` does: SIGTERM only stops the server, even while this script is still finishing.
server._serve_in_foreground()
configs = [
    server.ServableStartConfig(
        args.dir, name, num_parallel_workers={workers}, python_in_process={in_process}
    )
    for name in _loader.discover_servables(args.dir)
]
server.start_servables(configs)
server.start_grpc_server(args.grpc)
server.start_restful_server(args.rest)
print("rustserve: serving (test launcher, num_parallel_workers={workers})", flush=True)
'''


def launcher(folder: Path, workers: int, in_process: bool = True) -> list[str]:
    """The command of a launcher script that serves `--dir` with `num_parallel_workers=workers` and
    `python_in_process=in_process`."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / f"serve_{workers}_{in_process}.py"
    script.write_text(textwrap.dedent(LAUNCHER).format(workers=workers, in_process=in_process))
    return [sys.executable, str(script)]


def build_tree(root: Path) -> Path:
    """`wk` (see WK_CONFIG, with an add model for Model.call) and the session's `pystages`."""
    wk = write_servable(root, "wk", WK_CONFIG, (1,))
    models.build_add(wk / "1" / "add.onnx", batch=None, width=2)
    write_servable(root, "pystages", PYSTAGES_CONFIG, (1,))
    return root


# --- processes ---------------------------------------------------------------------------------------------------


def wait_for_workers(
    server: ServerProcess, count: int, exclude: Sequence[int] = (), servable: str | None = "wk"
) -> list[int]:
    """The server's worker pids (of `servable`) once exactly `count` are up (none of them in `exclude`)."""

    def ready() -> list[int] | None:
        pids = worker_pids(server.proc.pid, servable)
        return pids if len(pids) == count and not set(pids) & set(exclude) else None

    return wait_for(ready, f"{count} worker process(es) of server {server.proc.pid}")


# --- requests ----------------------------------------------------------------------------------------------------


def vec(value: float) -> dict[str, np.ndarray]:
    """One instance {"x": float32 [2]}."""
    return {"x": np.array([value, value], dtype=np.float32)}


def concurrently(calls: Sequence[Callable[[], Any]]) -> list[Any]:
    """Runs every call at once on its own thread; returns their results in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's servables tree."""
    return build_tree(tmp_path_factory.mktemp("workers-tree"))


@pytest.fixture(scope="module", params=[1, 2], ids=["gil-thread-only", "worker-processes"])
def any_server(
    request: pytest.FixtureRequest, tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server on `tree` with num_parallel_workers 1 (the Python thread only) or 2 (two worker processes)."""
    workers = request.param
    logs = tmp_path_factory.mktemp(f"workers-{workers}")
    server = launch_server(tree, logs, command=launcher(logs, workers))
    yield server
    assert server.alive(), server.describe()
    assert server.stop(signal.SIGTERM) == 0, server.describe()


@pytest.fixture(scope="module")
def gil_server(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on `tree` whose Python stages run on its own Python thread (one executor, the default)."""
    logs = tmp_path_factory.mktemp("workers-gil")
    server = launch_server(tree, logs, command=launcher(logs, 1))
    yield server
    assert server.alive(), server.describe()
    assert server.stop(signal.SIGTERM) == 0, server.describe()


@pytest.fixture(scope="module")
def worker_server(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on `tree` with one executor and python_in_process=False: one worker process per servable."""
    logs = tmp_path_factory.mktemp("workers-1-out")
    server = launch_server(tree, logs, command=launcher(logs, 1, in_process=False))
    yield server
    assert server.alive(), server.describe()
    assert server.stop(signal.SIGTERM) == 0, server.describe()


@pytest.fixture
def grpc_for(pb2_modules: tuple[Any, Any]) -> Iterator[Callable[[ServerProcess], Grpc]]:
    """Factory: a raw gRPC helper for a server, closed at teardown."""
    made: list[Grpc] = []

    def factory(server: ServerProcess) -> Grpc:
        helper = Grpc(*pb2_modules, server.grpc_address)
        made.append(helper)
        return helper

    yield factory
    for helper in made:
        helper.close()


# --- tests -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [2, 3])
def test_every_executor_serves_under_load(
    workers: int, tree: Path, tmp_path: Path, grpc_for: Callable[[ServerProcess], Grpc]
) -> None:
    """n executors = n worker processes, each of which answers requests; the server process runs no stage."""
    server = launch_server(tree, tmp_path / "logs", command=launcher(tmp_path, workers))
    try:
        children = wait_for_workers(server, workers)
        grpc = grpc_for(server)
        values = [float(i) for i in range(20 * workers)]
        replies = concurrently([lambda v=v: grpc.predict("wk", "pid", [vec(v)]) for v in values])
        pids = set()
        for value, reply in zip(values, replies, strict=True):
            (out,) = grpc.ok(reply, 1)
            np.testing.assert_array_equal(out["y"], vec(value)["x"] * 2)
            pids.add(int(out["pid"]))
        assert pids == set(children)
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.describe()


def test_model_call_from_a_worker_process(
    gil_server: ServerProcess, worker_server: ServerProcess, grpc_for: Callable[[ServerProcess], Grpc]
) -> None:
    """`Model.call` inside a worker runs on the server's batcher and answers like it does on the Python thread."""
    x = vec(1.5)["x"]
    expected = {"single": x * 2, "second": x * 3}
    on_gil = grpc_for(gil_server).ok(grpc_for(gil_server).predict("wk", "model_call", [{"x": x}, {"x": x + 1}]), 2)
    (worker,) = wait_for_workers(worker_server, 1)
    grpc = grpc_for(worker_server)
    on_worker = grpc.ok(grpc.predict("wk", "model_call", [{"x": x}, {"x": x + 1}]), 2)
    assert [int(out["pid"]) for out in on_gil] == [gil_server.proc.pid] * 2
    assert [int(out["pid"]) for out in on_worker] == [worker, worker]
    for name, value in expected.items():
        np.testing.assert_array_equal(on_gil[0][name], value)
        np.testing.assert_array_equal(on_worker[0][name], value)
    np.testing.assert_array_equal(on_gil[1]["second"], (x + 1) * 3)
    np.testing.assert_array_equal(on_worker[1]["second"], (x + 1) * 3)


def test_batch_stage_merges_concurrent_requests(
    any_server: ServerProcess, grpc_for: Callable[[ServerProcess], Grpc]
) -> None:
    """Requests that wait for a busy executor reach a `batch_size=8` stage together: batches longer than 1."""
    grpc = grpc_for(any_server)
    values = [float(i) for i in range(12)]
    replies = concurrently([lambda v=v: grpc.predict("wk", "batch", [vec(v)]) for v in values])
    lengths = []
    for value, reply in zip(values, replies, strict=True):
        (out,) = grpc.ok(reply, 1)
        np.testing.assert_array_equal(out["y"], vec(value)["x"] + 1)
        lengths.append(int(out["n"]))
    assert all(1 <= n <= 8 for n in lengths), lengths
    assert max(lengths) > 1, f"no call merged requests: batch lengths {lengths}"


# Requests whose replies must be identical from the server's Python thread and from a worker process.
CONVENTION_CASES: list[tuple[str, list[Any]]] = [
    ("raising", [vec(1), vec(-1), vec(2)]),
    ("raising_tagged", [vec(-1)]),
    ("raising_late", [vec(-3), vec(3)]),
    ("batch_list", [vec(v) for v in range(6)]),
    ("batch_gen", [vec(1), vec(-1), vec(2), vec(3)]),
    ("batch_raising", [vec(1), vec(-1), vec(2)]),
    ("garbage_none", [vec(1)]),
    ("garbage_count", [vec(1), vec(2)]),
    ("garbage_short", [vec(1)]),
    ("convert_values", [vec(2.5), vec(-1)]),
    ("describe_input", [vec(1)]),
    ("reverse_text", [{"s": "héllo"}]),
    ("reverse_blob", [{"b": b"\x00\x01abc"}]),
]


def test_worker_stage_conventions_match_the_python_thread(
    gil_server: ServerProcess, worker_server: ServerProcess, grpc_for: Callable[[ServerProcess], Grpc]
) -> None:
    """Per-instance / batch / generator calls, exceptions, contract violations and conversions: same replies."""
    on_gil = grpc_for(gil_server)
    expected = [on_gil.predict("pystages", method, instances) for method, instances in CONVENTION_CASES]
    grpc = grpc_for(worker_server)
    (worker,) = wait_for_workers(worker_server, 1)
    (probe,) = grpc.ok(grpc.predict("wk", "pid", [vec(0)]), 1)
    got = [grpc.predict("pystages", method, instances) for method, instances in CONVENTION_CASES]
    assert int(probe["pid"]) == worker, "with python_in_process=False every call should run on the worker"
    for (method, _), want, have in zip(CONVENTION_CASES, expected, got, strict=True):
        assert grpc.errors(have) == grpc.errors(want), method
        for a, b in zip(grpc.outputs(have), grpc.outputs(want), strict=True):
            assert a.keys() == b.keys(), method
            for name in a:
                if isinstance(a[name], np.ndarray):
                    assert a[name].dtype == b[name].dtype, (method, name)
                    np.testing.assert_array_equal(a[name], b[name], err_msg=f"{method}.{name}")
                else:
                    assert a[name] == b[name], (method, name)


def test_killed_worker_fails_its_calls_and_restarts(
    tree: Path, tmp_path: Path, grpc_for: Callable[[ServerProcess], Grpc]
) -> None:
    """kill -9 on a busy worker: its call fails at once with a clear error, the other worker's call succeeds,
    the worker comes back, and later calls run on the new worker."""
    server = launch_server(tree, tmp_path / "logs", command=launcher(tmp_path, 2))
    try:
        workers = wait_for_workers(server, 2)
        grpc = grpc_for(server)
        stage_seconds = 3.0  # sleep_pid sleeps for the sum of x, after dropping a file named by its pid in marks
        marks = tmp_path / "marks"
        marks.mkdir()
        finished: dict[int, float] = {}

        def call(index: int) -> Any:
            reply = grpc.predict("wk", "sleep", [{**vec(stage_seconds / 2), "marks": str(marks)}])
            finished[index] = time.monotonic()
            return reply

        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(call, i) for i in range(2)]
            wait_for(lambda: set(os.listdir(marks)) == {str(w) for w in workers}, "a call running on each worker")
            killed_at = time.monotonic()
            worker, survivor = workers
            os.kill(worker, signal.SIGKILL)
            replies = [f.result() for f in futures]
        failed = [i for i, reply in enumerate(replies) if grpc.errors(reply)]
        assert len(failed) == 1, [grpc.errors(r) for r in replies]
        code, text = grpc.failed(replies[failed[0]])
        assert code == WORKER_UNAVAILABLE
        assert text.startswith(
            f"Servable stopped: the Python worker process {worker} of servable 'wk' version 1 was killed by signal "
            f"9 (SIGKILL) while running Function 'wk.sleep_pid' of method 'sleep'"
        ), text
        detected = finished[failed[0]] - killed_at
        # The stage had up to 3 s left: failing well before that proves the death was detected, not waited out.
        assert detected < stage_seconds / 2, f"the failure took {detected:.2f} s after the kill"
        print(f"\nkill -9 -> failed reply after {detected * 1000:.0f} ms")
        (ok,) = grpc.ok(replies[1 - failed[0]], 1)
        assert int(ok["pid"]) == survivor

        restarted = set(wait_for_workers(server, 2, exclude=[worker])) - {survivor}
        assert len(restarted) == 1
        pids = {int(out["pid"]) for out in grpc.ok(grpc.predict("wk", "pid", [vec(v) for v in range(8)]), 8)}
        assert pids <= {survivor, *restarted} and server.proc.pid not in pids
        assert f"process {worker} was killed by signal 9 (SIGKILL); restarting it" in server.stderr_text()
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.describe()


@pytest.mark.parametrize(
    ("how", "cause"),
    [
        ("exit", "exited with code 3"),
        ("segfault", "was killed by signal 11 (SIGSEGV)"),
        ("abort", "was killed by signal 6 (SIGABRT)"),
    ],
)
@pytest.mark.parametrize(
    ("workers", "in_process"), [(2, True), (1, False)], ids=["two-workers", "no-python-in-process"]
)
def test_a_stage_that_kills_its_interpreter_fails_the_call_not_the_server(
    tree: Path,
    tmp_path: Path,
    grpc_for: Callable[[ServerProcess], Grpc],
    how: str,
    cause: str,
    workers: int,
    in_process: bool,
) -> None:
    """`os._exit(3)`, a segfault (`ctypes.string_at(0)`) or `os.abort()` in a stage: with worker processes the call
    fails naming the cause, the worker restarts, and the server serves on."""
    server = launch_server(tree, tmp_path / "logs", command=launcher(tmp_path, workers, in_process))
    try:
        first = wait_for_workers(server, workers)
        grpc = grpc_for(server)
        code, text = grpc.failed(grpc.predict("wk", "crash_worker", [{**vec(1), "how": how}]))
        assert code == WORKER_UNAVAILABLE
        assert text.startswith("Servable stopped: the Python worker process "), text
        assert f"of servable 'wk' version 1 {cause} while running Function 'wk.crash'" in text, text
        assert server.alive(), server.describe()
        # The crashed worker is replaced; every later call is answered, by workers only.
        wait_for(
            lambda: len(worker_pids(server.proc.pid, "wk")) == workers and worker_pids(server.proc.pid, "wk") != first,
            "the crashed worker's replacement",
        )
        pids = {int(out["pid"]) for out in grpc.ok(grpc.predict("wk", "pid", [vec(v) for v in range(4)]), 4)}
        assert pids <= set(worker_pids(server.proc.pid, "wk")), pids
    finally:
        assert server.stop(signal.SIGTERM) == 0, server.describe()


def test_stop_terminates_every_worker(tree: Path, tmp_path: Path) -> None:
    """SIGTERM to the server: it exits 0 and no worker process, socket directory or shm file is left behind."""
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    server = launch_server(tree, tmp_path / "logs", command=launcher(tmp_path, 3))
    workers = wait_for_workers(server, 6, servable=None)  # three per servable
    pid = server.proc.pid
    assert server.stop(signal.SIGTERM) == 0, server.describe()
    assert [w for w in workers if alive(w)] == []
    assert list(Path(tempfile.gettempdir()).glob(f"rustserve-{pid}-*")) == []
    if os.path.isdir("/dev/shm"):
        assert {f for f in os.listdir("/dev/shm") if "rustserve" in f} <= shm_before


def test_workers_die_with_a_killed_server(tree: Path, tmp_path: Path) -> None:
    """SIGKILL to the server alone (not its process group): its workers follow (PR_SET_PDEATHSIG)."""
    server = launch_server(tree, tmp_path / "logs", command=launcher(tmp_path, 2))
    try:
        workers = wait_for_workers(server, 4, servable=None)  # two per servable
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(30)
        wait_for(lambda: not any(alive(w) for w in workers), "the workers of the killed server to exit", 10)
    finally:
        server.kill()


def test_worker_that_cannot_start_fails_start_up(make_servable: Callable[..., Path], tmp_path: Path) -> None:
    """A servable_config.py that fails only in the worker: start-up fails with the worker's reason, no orphans."""
    config = """
    import os
    import sys

    from rustserve.server import register

    if os.path.basename(getattr(sys.modules["__main__"], "__file__", None) or "") == "worker.py":
        raise RuntimeError("this config refuses worker processes")


    def twice(x):
        return x * 2


    @register.register_method(output_names=["y"])
    def run(x):
        return register.add_stage(twice, x, outputs_count=1)
    """
    folder = make_servable("picky", config)
    server = ServerProcess(folder.parent, log_dir=tmp_path / "logs", command=launcher(tmp_path, 2))
    assert not server.wait_ready(), server.describe()
    assert server.proc.returncode != 0
    stderr = server.stderr_text()
    assert "Python worker 1 of servable 'picky' version 1 (process " in stderr, stderr
    assert (
        "failed to start: importing servable_config.py failed in the worker process: import "
        "picky.servable_config failed, this config refuses worker processes" in stderr
    ), stderr
    assert worker_pids(server.proc.pid, None) == []
