"""End-to-end fixtures: a servables tree, one `rustserve start` process per session, and wire helpers.

The tree (built once per session by `build_servable_tree`) holds these servables:

* `add` (versions 1 and 2, `with_batch_dim=False`, [2,2] float32): `add_common` (model only) and `add_cast` (int
  inputs cast to float32, model, cast back to the dtype of x1). Version 1 computes x1 + x2, version 2 x1 + x2 + 100.
* `batching`: `add_fixed` (add model, fixed batch 4, width 3), `add_dynamic` (symbolic batch, `max_batch_size=3`),
  `matmul` (`with_batch_dim=False`, [2,3] @ [3,2]), `bias_add` (x [4,3] batched + bias [3] unbatched).
* `pipeline` (models `double` y = 2x, fixed batch 2, and `plus_one` z = y + 1, symbolic batch; width 3):
  `chain` (x - 1 -> double -> + 10 -> plus_one -> (z, float(sum z)), so z = 2x + 9), `double_only`, `passthrough`
  (returns the input x and double(x)), `model_call` (`plus_one.call(x)`, `plus_one.call([[x], [2x]])` summed,
  `double.call(x)`).
* `pystages` (no models): raising stages, batch stages (list and generator form), stages returning garbage, value
  conversions, string/bytes stages. See tests/servables/pystages/servable_config.py.
* `dtypes`: `id_<dtype>` through an ONNX Identity model ([batch, 3], symbolic) for every numeric dtype, `echo`
  (no stage: returns its input).
* `mlp`: `classify` (seeded 4 -> 8 -> 3 MLP; outputs `label` int64 scalar and `probs` [3]).
"""

from __future__ import annotations

import base64
import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import models  # noqa: E402

READY_PREFIX = "rustserve: serving"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
RPC_TIMEOUT_S = 60.0
HOST = "127.0.0.1"

# MindSpore DataType enum value -> numpy dtype (STRING = 13 and BYTES = 14 travel in bytes_val).
MS_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.bool_),
    2: np.dtype(np.int8),
    3: np.dtype(np.uint8),
    4: np.dtype(np.int16),
    5: np.dtype(np.uint16),
    6: np.dtype(np.int32),
    7: np.dtype(np.uint32),
    8: np.dtype(np.int64),
    9: np.dtype(np.uint64),
    10: np.dtype(np.float16),
    11: np.dtype(np.float32),
    12: np.dtype(np.float64),
}
NP_TO_MS: dict[np.dtype, int] = {dtype: code for code, dtype in MS_DTYPES.items()}
MS_STRING = 13
MS_BYTES = 14

# ---------------------------------------------------------------------------------------------------------------
# servable_config.py sources of the session tree
# ---------------------------------------------------------------------------------------------------------------

# tests/servables/<name>/ holds the servable_config.py of each servable of the session tree but `dtypes`, which is
# generated from `models.NUMERIC_DTYPES`; `build_servable_tree` copies them. Tests that build trees of their own
# write the texts of two of them (`write_servable`).
SERVABLE_SOURCES = TESTS_DIR / "servables"
ADD_CONFIG = (SERVABLE_SOURCES / "add" / "servable_config.py").read_text()
PYSTAGES_CONFIG = (SERVABLE_SOURCES / "pystages" / "servable_config.py").read_text()

DTYPE_NAMES: tuple[str, ...] = tuple(models.NUMERIC_DTYPES)


def _dtypes_config() -> str:
    """servable_config.py of `dtypes`: one Identity model and method per numeric dtype, plus `echo`."""
    lines = [
        '"""Identity methods per dtype, through ONNX models, and a method without stages."""',
        "from rustserve.server import register",
        "",
    ]
    for name in DTYPE_NAMES:
        lines += [
            f"model_{name} = register.declare_model(",
            f'    model_file="identity_{name}.onnx", model_format="ONNX", with_batch_dim=True, max_batch_size=4',
            ")",
            "",
            "",
            '@register.register_method(output_names=["y"])',
            f"def id_{name}(x):",
            f"    return register.add_stage(model_{name}, x, outputs_count=1)",
            "",
            "",
        ]
    lines += ['@register.register_method(output_names=["y"])', "def echo(x):", "    return x", ""]
    return "\n".join(lines)


def write_servable(root: Path, name: str, config: str, versions: Sequence[int] = ()) -> Path:
    """Writes `<root>/<name>/servable_config.py` (dedented) and creates the given version directories."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "servable_config.py").write_text(textwrap.dedent(config).lstrip("\n"))
    for version in versions:
        (folder / str(version)).mkdir(exist_ok=True)
    return folder


def copy_servable(root: Path, name: str, versions: Sequence[int] = ()) -> Path:
    """Copies `tests/servables/<name>/` to `<root>/<name>/` and creates the given version directories in the copy."""
    folder = Path(
        shutil.copytree(
            SERVABLE_SOURCES / name,
            root / name,
            ignore=shutil.ignore_patterns("__pycache__"),
            copy_function=shutil.copyfile,
        )
    )
    for version in versions:
        (folder / str(version)).mkdir()
    return folder


def build_servable_tree(root: Path) -> Path:
    """Builds the session's servables tree under `root` (see the module docstring) and returns `root`."""
    add = copy_servable(root, "add", (1, 2))
    models.build_add(add / "1" / "add.onnx")
    models.build_add(add / "2" / "add.onnx", offset=100.0)

    batching = copy_servable(root, "batching", (1,))
    models.build_add(batching / "1" / "add_fixed.onnx", batch=4, width=3)
    models.build_add(batching / "1" / "add_dynamic.onnx", batch=None, width=3)
    models.build_matmul(batching / "1" / "matmul.onnx")
    models.build_bias_add(batching / "1" / "bias_add.onnx", batch=4, width=3)

    pipeline = copy_servable(root, "pipeline", (1,))
    models.build_chain(pipeline / "1", batch_a=2, batch_b=None)

    copy_servable(root, "pystages", (1,))

    dtypes = write_servable(root, "dtypes", _dtypes_config(), (1,))
    for name in DTYPE_NAMES:
        models.build_identity(dtypes / "1" / f"identity_{name}.onnx", name)

    mlp = copy_servable(root, "mlp", (1,))
    models.build_small_mlp(mlp / "1" / "mlp.onnx")
    return root


# ---------------------------------------------------------------------------------------------------------------
# server processes
# ---------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    """Returns a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _child_env() -> dict[str, str]:
    """The server's environment: ours, with PYTHONPATH entries made absolute (the server runs in another cwd)."""
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve()) for p in env["PYTHONPATH"].split(os.pathsep) if p)
    return env


class ServerProcess:
    """One `rustserve start` subprocess; stdout is pumped into `stdout_lines`, stderr goes to a file."""

    _counter = 0

    def __init__(
        self,
        servable_dir: Path,
        *,
        log_dir: Path,
        grpc_port: int | None = None,
        command: Sequence[str] = (),
        extra: Sequence[str] = (),
    ):
        ServerProcess._counter += 1
        self.servable_dir = servable_dir
        self.grpc_port = grpc_port if grpc_port is not None else free_port()
        self.rest_port = free_port()
        self.stdout_lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = log_dir / f"server-{ServerProcess._counter}.stderr"
        launcher = list(command) or [sys.executable, "-m", "rustserve"]
        self.args = [
            *launcher,
            "start",
            "--dir",
            str(servable_dir),
            "--grpc",
            self.grpc_address,
            "--rest",
            f"{HOST}:{self.rest_port}",
            *extra,
        ]
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                self.args,
                cwd=log_dir,
                env=_child_env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                errors="replace",
                start_new_session=True,
            )
        threading.Thread(target=self._pump, name="server-stdout", daemon=True).start()

    @property
    def grpc_address(self) -> str:
        """`127.0.0.1:<grpc port>`, as the Client and grpcio want it."""
        return f"{HOST}:{self.grpc_port}"

    @property
    def rest_base(self) -> str:
        """`http://127.0.0.1:<rest port>`."""
        return f"http://{HOST}:{self.rest_port}"

    def _pump(self) -> None:
        """Reads stdout until EOF so the pipe never fills; None marks EOF."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> bool:
        """Waits for the ready line: True when it came, False when the process exited first; fails on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                pytest.fail(f"server not ready within {timeout:.0f} s: {self.args}\n{self.describe()}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=STOP_TIMEOUT_S)
                return False
            if line.startswith(READY_PREFIX):
                return True

    def stderr_text(self) -> str:
        """Everything the server wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        """Exit code, stdout and stderr, for assertion messages."""
        return (
            f"exit code: {self.proc.poll()}\n--- stdout ---\n{''.join(self.stdout_lines)}"
            f"\n--- stderr ---\n{self.stderr_text()}"
        )

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
        """Sends `sig` and waits for the exit; returns the exit code (kills and fails when it does not exit)."""
        if self.alive():
            self.proc.send_signal(sig)
        return self.wait_exit(timeout, f"after {sig.name}")

    def wait_exit(self, timeout: float = STOP_TIMEOUT_S, why: str = "") -> int:
        """Waits for the exit; returns the exit code (shows the thread stacks, kills and fails when it does not)."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stacks = self.thread_stacks()
            self.kill()
            pytest.fail(f"server did not exit within {timeout:.0f} s {why}\n{self.describe()}\n{stacks}")

    def thread_stacks(self) -> str:
        """Every thread's Python and native stack (py-spy), to show where a server that does not stop waits."""
        return thread_stacks(self.proc.pid)

    def kill(self) -> None:
        """SIGKILLs the server's process group (it was started in its own session) and reaps it."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)


def launch_server(
    servable_dir: Path,
    log_dir: Path,
    *,
    grpc_port: int | None = None,
    command: Sequence[str] = (),
    extra: Sequence[str] = (),
    attempts: int = 3,
) -> ServerProcess:
    """Starts a server (`extra`: more `start` flags) and waits for its ready line; retries on a port race, fails with
    its stderr otherwise."""
    server = ServerProcess(servable_dir, log_dir=log_dir, grpc_port=grpc_port, command=command, extra=extra)
    for attempt in range(attempts):
        if server.wait_ready():
            return server
        lost_port_race = "in use" in server.stderr_text().lower() and grpc_port is None
        if not lost_port_race or attempt == attempts - 1:
            break
        server = ServerProcess(servable_dir, log_dir=log_dir, command=command, extra=extra)
    pytest.fail(f"server failed to start on {servable_dir}\n{server.describe()}")


def expect_start_failure(
    servable_dir: Path, log_dir: Path, *, grpc_port: int | None = None, extra: Sequence[str] = ()
) -> ServerProcess:
    """Starts a server that must fail at start-up; returns the exited process (fails if it became ready)."""
    server = ServerProcess(servable_dir, log_dir=log_dir, grpc_port=grpc_port, extra=extra)
    if server.wait_ready():
        server.stop()
        pytest.fail(f"server started although start-up should fail on {servable_dir}\n{server.describe()}")
    return server


# ---------------------------------------------------------------------------------------------------------------
# process helpers
# ---------------------------------------------------------------------------------------------------------------


def thread_stacks(pid: int) -> str:
    """Every thread's Python and native stack of process `pid` (py-spy), to show where a process that does not stop
    waits."""
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        return "(py-spy is not installed: no thread stacks)"
    try:
        dump = subprocess.run(
            [str(spy), "dump", "--native", "--pid", str(pid)], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "(py-spy dump timed out)"
    return f"--- thread stacks (py-spy dump --native) ---\n{dump.stdout}{dump.stderr}"


def communicate_or_fail(proc: subprocess.Popen[str], timeout: float, what: str) -> tuple[str, str]:
    """`proc.communicate(timeout=...)`; a process still running then has its thread stacks shown, is killed, and
    fails the test with `what`."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stacks = thread_stacks(proc.pid)
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{what}: no exit within {timeout:.0f} s\n--- stdout ---\n{out}\n--- stderr ---\n{err}\n{stacks}")


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name, or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def worker_pids(server_pid: int, servable: str | None = "wk") -> list[int]:
    """Live children of `server_pid` running `rustserve.worker` (for `servable`; None = any servable)."""
    wanted = b"\0--servable\0" + (servable or "").encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = proc_stat(int(entry))
        if fields is None or fields[0] == "Z" or int(fields[1]) != server_pid:
            continue
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"rustserve.worker" in cmdline and (servable is None or wanted in cmdline):
                found.append(int(entry))
    return sorted(found)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Polls `predicate` until it returns something truthy; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


# ---------------------------------------------------------------------------------------------------------------
# wire helpers
# ---------------------------------------------------------------------------------------------------------------


class RawGrpc:
    """One HTTP/2 connection speaking gRPC by hand (the h2 package), for what grpcio will not send: message headers
    whose bodies never come, or a `grpc-timeout` that the client itself does not enforce."""

    def __init__(self, port: int):
        import h2.config
        import h2.connection

        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self._flush()

    def _flush(self) -> None:
        self.sock.sendall(self.conn.data_to_send())

    def open_call(
        self, path: str, body: bytes, extra_headers: Sequence[tuple[str, str]] = (), end: bool = False
    ) -> int:
        """Opens a unary call on `path` and sends `body` (message headers included); `end` ends the request."""
        stream = self.conn.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "127.0.0.1")]
        headers += [("content-type", "application/grpc"), ("te", "trailers"), *extra_headers]
        self.conn.send_headers(stream, headers)
        self.conn.send_data(stream, body, end_stream=end)
        self._flush()
        return stream

    def grpc_status(self, stream: int) -> tuple[int, str]:
        """Waits for the call's grpc-status (trailers-only or trailers) and message."""
        import h2.events

        while True:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            for event in self.conn.receive_data(data):
                if isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    fields = {k.decode() if isinstance(k, bytes) else k: v for k, v in event.headers}
                    found = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in fields.items()}
                    if event.stream_id == stream and "grpc-status" in found:
                        return int(found["grpc-status"]), urllib.parse.unquote(found.get("grpc-message", ""))
            self._flush()

    def close(self) -> None:
        self.sock.close()


class Grpc:
    """Raw grpcio access to `MSService.Predict` with plain protobuf messages (tests/ms_pb2)."""

    def __init__(self, pb2: Any, pb2_grpc: Any, address: str):
        import grpc

        self.pb2 = pb2
        self.channel = grpc.insecure_channel(
            address,
            options=[("grpc.max_send_message_length", 512 << 20), ("grpc.max_receive_message_length", 512 << 20)],
        )
        self.stub = pb2_grpc.MSServiceStub(self.channel)

    def tensor(self, value: Any) -> Any:
        """A `Tensor` from a pb2 Tensor (as is), str (MS_STRING [1]), bytes (MS_BYTES [1]) or numpy-convertible."""
        pb2 = self.pb2
        if isinstance(value, pb2.Tensor):
            return value
        if isinstance(value, str):
            return pb2.Tensor(shape=pb2.TensorShape(dims=[1]), dtype=MS_STRING, bytes_val=[value.encode()])
        if isinstance(value, bytes):
            return pb2.Tensor(shape=pb2.TensorShape(dims=[1]), dtype=MS_BYTES, bytes_val=[value])
        array = np.asarray(value)
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        return pb2.Tensor(
            shape=pb2.TensorShape(dims=list(array.shape)),
            dtype=NP_TO_MS[array.dtype],
            data=np.ascontiguousarray(little).tobytes(),
        )

    def request(self, servable: str, method: str, instances: Sequence[Mapping[str, Any]], version: int = 0) -> Any:
        """A `PredictRequest`; instance values go through `tensor`."""
        pb2 = self.pb2
        request = pb2.PredictRequest(
            servable_spec=pb2.ServableSpec(name=servable, method_name=method, version_number=version)
        )
        for instance in instances:
            item = request.instances.add()
            for name, value in instance.items():
                item.items[name].CopyFrom(self.tensor(value))
        return request

    def send(self, request: Any, timeout: float = RPC_TIMEOUT_S) -> Any:
        """Calls Predict with a deadline (a hang fails the test instead of blocking the run)."""
        return self.stub.Predict(request, timeout=timeout)

    def predict(
        self,
        servable: str,
        method: str,
        instances: Sequence[Mapping[str, Any]],
        version: int = 0,
        timeout: float = RPC_TIMEOUT_S,
    ) -> Any:
        """Builds a request, sends it, returns the `PredictReply`."""
        return self.send(self.request(servable, method, instances, version), timeout=timeout)

    @staticmethod
    def value(tensor: Any) -> Any:
        """The Python value of a reply tensor: numpy array, or str / bytes (a list when several bytes_val)."""
        if tensor.dtype in (MS_STRING, MS_BYTES):
            items = [b.decode() if tensor.dtype == MS_STRING else bytes(b) for b in tensor.bytes_val]
            return items[0] if len(items) == 1 else items
        dtype = MS_DTYPES[tensor.dtype].newbyteorder("<")
        return np.frombuffer(tensor.data, dtype=dtype).reshape(list(tensor.shape.dims))

    def outputs(self, reply: Any) -> list[dict[str, Any]]:
        """Per-instance {name: value} dicts of a reply (failed instances give {})."""
        return [{name: self.value(t) for name, t in inst.items.items()} for inst in reply.instances]

    @staticmethod
    def errors(reply: Any) -> list[tuple[int, str]]:
        """(error_code, text) of each `error_msg` entry."""
        return [(e.error_code, e.error_msg.decode(errors="replace")) for e in reply.error_msg]

    def ok(self, reply: Any, count: int) -> list[dict[str, Any]]:
        """Asserts a fully successful reply of `count` instances and returns its outputs."""
        assert self.errors(reply) == [], self.errors(reply)
        assert len(reply.instances) == count
        return self.outputs(reply)

    def failed(self, reply: Any) -> tuple[int, str]:
        """Asserts a whole-request (collapsed) error and returns its (code, text)."""
        errors = self.errors(reply)
        assert len(errors) == 1 and len(reply.instances) == 0, (errors, len(reply.instances))
        assert errors[0][0] != 0
        return errors[0]

    def assert_failed(self, reply: Any, code: int, expected: str) -> None:
        """Asserts a whole-request error with `code` whose text starts with MindSpore's `expected`."""
        got_code, text = self.failed(reply)
        assert got_code == code, (got_code, text)
        assert_error(text, expected)

    def assert_errors(self, reply: Any, expected: Sequence[tuple[int, str]]) -> None:
        """Asserts a per-instance reply: one (code, text prefix) per instance, "" / 0 for the good ones."""
        errors = self.errors(reply)
        assert len(errors) == len(expected) == len(reply.instances), (errors, len(reply.instances))
        for i, ((code, text), (want_code, want_text)) in enumerate(zip(errors, expected, strict=True)):
            assert code == want_code, errors
            if want_text:
                assert_error(text, want_text)
            else:
                assert text == "", errors
            if code:
                assert len(reply.instances[i].items) == 0, f"failed instance {i} has items"

    def close(self) -> None:
        """Closes the channel."""
        self.channel.close()


class Rest:
    """MindSpore REST access: POST `/model/<servable>[/version/<n>]:<method>`; every answer is HTTP 200 JSON."""

    def __init__(self, base: str):
        self.base = base
        self.session = requests.Session()

    def url(self, servable: str, method: str, version: int | None = None) -> str:
        """The predict URL of a servable method (with `/version/<n>` when given)."""
        middle = "" if version is None else f"/version/{version}"
        return f"{self.base}/model/{servable}{middle}:{method}"

    def raw(self, path: str, data: bytes | str | None = None, verb: str = "POST") -> requests.Response:
        """Sends `data` as the body to `base + path`; returns the response unchecked."""
        return self.session.request(verb, self.base + path, data=data, timeout=RPC_TIMEOUT_S)

    def post_json(self, path: str, body: Any) -> dict[str, Any]:
        """POSTs `body` as JSON to `base + path`, asserts HTTP 200 JSON, returns the decoded object."""
        response = self.session.post(self.base + path, json=body, timeout=RPC_TIMEOUT_S)
        return self.checked(response)

    def predict(self, servable: str, method: str, instances: Any, version: int | None = None) -> dict[str, Any]:
        """POSTs `{"instances": instances}` to a method and returns the decoded JSON reply."""
        path = self.url(servable, method, version)[len(self.base) :]
        return self.post_json(path, {"instances": instances})

    @staticmethod
    def checked(response: requests.Response) -> dict[str, Any]:
        """Asserts MindSpore's HTTP contract (status 200, JSON content type) and decodes the body."""
        assert response.status_code == 200, (response.status_code, response.text)
        assert response.headers.get("Content-Type", "").startswith("application/json"), response.headers
        return response.json()

    def close(self) -> None:
        """Closes the HTTP session."""
        self.session.close()


def assert_error(text: str, expected: str) -> None:
    """MindSpore's text comes first; rustserve may add detail after it (compat preamble)."""
    assert text.startswith(expected), f"error {text!r} does not start with {expected!r}"


def assert_client_error(result: Any, expected: str) -> None:
    """Our Client's whole-request failure: the dict {"error": text} instead of a list."""
    assert isinstance(result, dict) and set(result) == {"error"}, result
    assert_error(result["error"], expected)


def assert_rest_error(body: Any, expected: str) -> None:
    """A REST whole-request failure: `{"error_msg": text}` only."""
    assert isinstance(body, dict) and set(body) == {"error_msg"}, body
    assert_error(body["error_msg"], expected)


def b64(data: bytes) -> str:
    """Base64 text of `data` (REST typed/binary values)."""
    return base64.b64encode(data).decode()


def with_deadline(fn: Callable[[], Any], timeout: float = RPC_TIMEOUT_S) -> Any:
    """Runs `fn` on a daemon thread and fails the test if it does not return in time (the Client has no timeout)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # re-raised in the calling thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"call did not return within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


class DeadlineClient:
    """`rustserve.client.Client` whose `infer` fails the test instead of hanging."""

    def __init__(self, client: Any, timeout: float = RPC_TIMEOUT_S):
        self.client = client
        self.timeout = timeout

    def infer(self, instances: Any) -> Any:
        """`Client.infer` with a deadline."""
        return with_deadline(lambda: self.client.infer(instances), self.timeout)


# ---------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def servables_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's servables tree (see the module docstring)."""
    return build_servable_tree(tmp_path_factory.mktemp("servables"))


@pytest.fixture(scope="session")
def session_server(servables_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The one server of the session on `servables_dir`; stopped with SIGTERM at the end (exit code must be 0)."""
    server = launch_server(servables_dir, tmp_path_factory.mktemp("server"))
    yield server
    assert server.alive(), f"the session server died\n{server.describe()}"
    code = server.stop(signal.SIGTERM)
    assert code == 0, f"SIGTERM exit code {code}\n{server.describe()}"


@pytest.fixture
def server(session_server: ServerProcess) -> Iterator[ServerProcess]:
    """The session server, checked alive before and after each test (a crash is pinned on the test)."""
    assert session_server.alive(), f"the session server died earlier\n{session_server.describe()}"
    yield session_server
    assert session_server.alive(), f"the session server died during this test\n{session_server.describe()}"


@pytest.fixture(scope="session")
def pb2_modules() -> tuple[Any, Any]:
    """(pb2, pb2_grpc) for proto/mindspore_serving/ms_service.proto, from tests/ms_pb2."""
    from ms_pb2 import load

    return load()


@pytest.fixture(scope="session")
def _session_grpc(session_server: ServerProcess, pb2_modules: tuple[Any, Any]) -> Iterator[Grpc]:
    grpc_helper = Grpc(*pb2_modules, session_server.grpc_address)
    yield grpc_helper
    grpc_helper.close()


@pytest.fixture
def grpc(server: ServerProcess, _session_grpc: Grpc) -> Grpc:
    """Raw grpcio helper bound to the session server."""
    return _session_grpc


@pytest.fixture(scope="session")
def _session_rest(session_server: ServerProcess) -> Iterator[Rest]:
    rest_helper = Rest(session_server.rest_base)
    yield rest_helper
    rest_helper.close()


@pytest.fixture
def rest(server: ServerProcess, _session_rest: Rest) -> Rest:
    """REST helper bound to the session server."""
    return _session_rest


@pytest.fixture
def make_client(server: ServerProcess) -> Iterator[Callable[..., DeadlineClient]]:
    """Factory: `make_client(servable, method, version_number=0)` -> our Client on the session server."""
    from rustserve.client import Client

    made: list[Any] = []

    def factory(servable: str, method: str, version_number: int = 0) -> DeadlineClient:
        client = Client(server.grpc_address, servable, method, version_number=version_number)
        made.append(client)
        return DeadlineClient(client)

    yield factory
    for client in made:
        client.close()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory for a test's own short-lived server: `start_server(servable_dir, command=(), extra=())` -> ready server
    (`extra`: more `start` flags).

    Servers still running at teardown are stopped with SIGTERM and must exit with code 0.
    """
    started: list[ServerProcess] = []

    def factory(servable_dir: Path, command: Sequence[str] = (), extra: Sequence[str] = ()) -> ServerProcess:
        server = launch_server(servable_dir, tmp_path / "logs", command=command, extra=extra)
        started.append(server)
        return server

    yield factory
    for server in started:
        if server.alive():
            code = server.stop(signal.SIGTERM)
            assert code == 0, f"SIGTERM exit code {code}\n{server.describe()}"


@pytest.fixture
def make_servable(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `make_servable(name, config, versions=(1,), root=None)` writes a servable under a fresh root.

    Returns the servable's folder (`<root>/<name>`); its parent is the `--dir` to serve. Build model files into
    `<folder>/<version>/` with the `models` builders.
    """

    def factory(name: str, config: str, versions: Sequence[int] = (1,), root: Path | None = None) -> Path:
        return write_servable(root or tmp_path / "servables", name, config, versions)

    return factory


@pytest.fixture
def failing_start(tmp_path: Path) -> Callable[..., ServerProcess]:
    """Factory: `failing_start(servable_dir, grpc_port=None)` -> the exited server process (it must not start)."""

    def factory(servable_dir: Path, grpc_port: int | None = None) -> ServerProcess:
        return expect_start_failure(servable_dir, tmp_path / "logs", grpc_port=grpc_port)

    return factory
