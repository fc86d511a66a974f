"""rustserve against in-process ONNX Runtime and a FastAPI + uvicorn / grpcio server, in one run, on loopback.

`python benches/compare.py [--quick] [--duration S] [--workloads tensor_add,resnet50,pybound] [--no-build]`
(or `make bench`). Needs Debian's `wrk` (`apt-get install -y wrk`) and the dev extra (fastapi, uvicorn[standard]).

What it does:

1. Builds a release wheel of rustserve (`maturin build --release`) and unpacks it into `target/bench-work/site`,
   which goes first on the servers' `PYTHONPATH`: the benchmark never measures the debug build of `maturin develop`
   and never touches the editable install in `.venv`. Builds the Rust gRPC load generator
   (`cargo bench --bench grpc_load --no-run`).
2. Builds the workload models (`workloads.py`; ResNet-50 with the resnet50 example's builder, cached).
3. Per workload, starts each contender as its own process, checks one answer, warms up, then measures with one
   load generator per transport: `wrk -t1` for REST, `grpc_load` (one thread, one HTTP/2 connection) for gRPC.
   Server CPU is the server process tree's utime + stime from /proc over the measured window, in cores.
4. Prints one table (req/s, p50, p99, server CPU, ratios) and the issue's targets, and writes both to
   `target/bench-work/results.md` (+ `results.json`).

The numbers are for comparing contenders within one run on one machine; the load generator shares the machine's
cores with the server, as on any single-box benchmark.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = REPO / "target" / "bench-work"
CARGO_TARGET = REPO / "target" / "cargo-test"  # where `make test-rust` and `make bench` build, to share artefacts
HOST = "127.0.0.1"
READY_TIMEOUT_S = 180.0

sys.path.insert(0, str(HERE))
import workloads  # noqa: E402

# ---------------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One measured line of the table."""

    workload: str
    transport: str  # "REST", "gRPC" or "in-process"
    concurrency: int
    contender: str  # "rustserve", "FastAPI", "grpcio", "in-process", ...
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_cores: float | None
    note: str = ""
    ratios: dict[str, float] = field(default_factory=dict)


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # start-up time, idle CPU, GIL round trip, ...
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(
            f"  {row.workload:<10} {row.transport:<10} c={row.concurrency:<3} {row.contender:<22} "
            f"{row.rps:>10.1f} req/s  p50 {row.p50_ms:8.3f} ms  p99 {row.p99_ms:8.3f} ms  "
            f"cpu {_fmt_cpu(row.cpu_cores)}  {row.note}",
            flush=True,
        )
        return row

    def find(self, workload: str, transport: str, concurrency: int, contender: str) -> Row | None:
        for row in self.rows:
            if (row.workload, row.transport, row.concurrency, row.contender) == (
                workload,
                transport,
                concurrency,
                contender,
            ):
                return row
        return None


def _fmt_cpu(cores: float | None) -> str:
    return "   -" if cores is None else f"{cores:4.2f}"


# ---------------------------------------------------------------------------------------------------------------
# processes, ports, CPU
# ---------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    children = _children()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its living descendants, in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        parts = fields[fields.rindex(")") + 2 :].split()
        total += int(parts[11]) + int(parts[12])  # utime, stime (fields 14 and 15)
    return total / ticks


class Server:
    """A server subprocess (own session, so a stop reaches its workers too); output goes to a log file."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = WORK / "logs" / f"{name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                list(args),
                cwd=WORK,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


def wait_until(check: Callable[[], bool], server: Server, timeout: float = READY_TIMEOUT_S) -> None:
    """Polls `check` until it returns True; fails with the server's log when it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise SystemExit(f"{server.name} exited while starting:\n{server.tail()}")
        try:
            if check():
                return
        except urllib.error.HTTPError as exc:
            raise SystemExit(f"{server.name} answered HTTP {exc.code}: {exc.read()[:500]!r}\n{server.tail()}") from exc
        except (OSError, ValueError, KeyError):  # not up yet: refused, reset, half-started
            pass
        time.sleep(0.005)
    raise SystemExit(f"{server.name} did not answer within {timeout:.0f} s:\n{server.tail()}")


# ---------------------------------------------------------------------------------------------------------------
# build
# ---------------------------------------------------------------------------------------------------------------


def run_checked(args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    print("$ " + " ".join(str(a) for a in args), flush=True)
    return subprocess.run(list(args), check=True, text=True, **kwargs)


def build_release(rebuild: bool) -> Path:
    """Release wheel of rustserve, unpacked into WORK/site; returns that folder."""
    site = WORK / "site"
    wheels = WORK / "wheels"
    if rebuild or not (site / "rustserve").is_dir():
        shutil.rmtree(wheels, ignore_errors=True)
        maturin = shutil.which("maturin", path=str(Path(sys.executable).parent)) or "maturin"
        run_checked([maturin, "build", "--release", "--interpreter", sys.executable, "-o", str(wheels)], cwd=REPO)
        (wheel,) = wheels.glob("rustserve-*.whl")
        shutil.rmtree(site, ignore_errors=True)
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    return site


def build_loadgen(rebuild: bool) -> Path:
    """The Rust gRPC load generator (benches/grpc_load.rs, bench profile); returns its executable."""
    marker = WORK / "grpc_load.path"
    if not rebuild and marker.is_file() and Path(marker.read_text().strip()).is_file():
        return Path(marker.read_text().strip())
    env = {**os.environ, "CARGO_TARGET_DIR": str(CARGO_TARGET)}
    out = run_checked(
        ["cargo", "bench", "--bench", "grpc_load", "--no-run", "--message-format=json"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
    ).stdout
    for line in out.splitlines():
        message = json.loads(line)
        if message.get("reason") == "compiler-artifact" and message.get("target", {}).get("name") == "grpc_load":
            if message.get("executable"):
                marker.write_text(message["executable"])
                return Path(message["executable"])
    raise SystemExit("cargo did not report the grpc_load executable")


# ---------------------------------------------------------------------------------------------------------------
# load generators
# ---------------------------------------------------------------------------------------------------------------

_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _WRK_UNITS[match.group(2)]


def wrk(url: str, body: Path, concurrency: int, duration: float) -> dict[str, float]:
    """`wrk -t1 -c<concurrency> --latency` POSTing `body` (JSON); req/s, p50, p99 and the error count."""
    script = body.with_suffix(".lua")
    script.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{body}", "rb")\nwrk.body = f:read("*a")\nf:close()\n'
    )
    seconds = max(1, round(duration))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "60s", "--latency", "-s", str(script), url],
        check=True,
        text=True,
        capture_output=True,
    ).stdout
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.MULTILINE)
    if not rps or "50" not in percentiles or "99" not in percentiles:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(int(g) for g in sock.groups()) if sock else 0)
    return {
        "rps": float(rps.group(1)),
        "p50_ms": _wrk_ms(percentiles["50"]),
        "p99_ms": _wrk_ms(percentiles["99"]),
        "errors": errors,
    }


def grpc_load(loadgen: Path, port: int, request: Path, concurrency: int, duration: float) -> dict[str, float]:
    out = subprocess.run(
        [
            str(loadgen),
            "--addr",
            f"http://{HOST}:{port}",
            "--request",
            str(request),
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
            "--warmup",
            "0",
        ],
        check=True,
        text=True,
        capture_output=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if result["errors"]:
        raise SystemExit(f"gRPC load got {result['errors']} errors, first: {result['first_error']}")
    return {"rps": result["rps"], "p50_ms": result["p50_us"] / 1e3, "p99_ms": result["p99_us"] / 1e3, "errors": 0}


def measured(pid: int, load: Callable[[], dict[str, float]]) -> tuple[dict[str, float], float]:
    """Runs `load` and returns its result plus the server tree's CPU use over it, in cores."""
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    result = load()
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    if result.get("errors"):
        raise SystemExit(f"load generator reported {result['errors']} failed requests")
    return result, (cpu1 - cpu0) / (t1 - t0)


# ---------------------------------------------------------------------------------------------------------------
# requests
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Requests:
    """One request of a method, as a REST body file, a gRPC request file, and the instances for a check call."""

    servable: str
    method: str
    instances: list[dict[str, Any]]
    rest_body: Path
    grpc_body: Path

    @staticmethod
    def write(servable: str, method: str, instances: list[dict[str, Any]], rest_json: dict[str, Any]) -> Requests:
        from rustserve.client import _codec

        folder = WORK / "requests"
        folder.mkdir(parents=True, exist_ok=True)
        rest = folder / f"{servable}.{method}.json"
        rest.write_text(json.dumps(rest_json))
        grpc_file = folder / f"{servable}.{method}.bin"
        grpc_file.write_bytes(
            _codec.encode_request(_codec.encode_servable_spec(servable, method, 0), instances)  # type: ignore[arg-type]
        )
        return Requests(servable, method, instances, rest, grpc_file)

    def rest_url(self, port: int) -> str:
        return f"http://{HOST}:{port}/model/{self.servable}:{self.method}"

    def post(self, port: int, timeout: float = 10.0) -> dict[str, Any]:
        request = urllib.request.Request(
            self.rest_url(port), data=self.rest_body.read_bytes(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def grpc(self, port: int) -> Any:
        from rustserve.client import Client

        client = Client(f"{HOST}:{port}", self.servable, self.method)
        try:
            return client.infer(self.instances)
        finally:
            client.close()


def tensor_add_requests(method: str = "add_common") -> Requests:
    x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    instances = [{"x1": x, "x2": x}]
    return Requests.write("tensor_add", method, instances, {"instances": [{"x1": x.tolist(), "x2": x.tolist()}]})


def resnet_requests(jpeg: bytes, servable: str = "resnet50") -> Requests:
    b64 = base64.b64encode(jpeg).decode()
    return Requests.write(servable, "classify_top1", [{"image": jpeg}], {"instances": [{"image": {"b64": b64}}]})


def pybound_requests() -> Requests:
    x = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    return Requests.write("pybound", "slow_pre", [{"x": x}], {"instances": [{"x": x.tolist()}]})


# ---------------------------------------------------------------------------------------------------------------
# contenders
# ---------------------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, site: Path, loadgen: Path, models: Path, servables: Path) -> None:
        self.args = args
        self.site = site
        self.loadgen = loadgen
        self.models = models
        self.servables = servables
        self.results = Results()
        self.duration: float = args.duration
        self.warmup: float = max(1.0, args.duration / 5)
        self.server_env = {**os.environ, "PYTHONPATH": str(site), "RUST_LOG": "warn"}

    # -- starting servers ------------------------------------------------------------------------------------

    def rustserve(self, servable: str, workers: int = 0, name: str = "") -> tuple[Server, int, int]:
        grpc_port, rest_port = free_port(), free_port()
        if workers:
            args = [sys.executable, str(HERE / "serve.py"), "--dir", str(self.servables), "--servable", servable]
            args += ["--workers", str(workers)]
        else:
            args = [sys.executable, "-m", "rustserve", "start", "--dir", str(self.servables), "--servable", servable]
            args += ["--log-level", "warn"]
        args += ["--grpc", f"{HOST}:{grpc_port}", "--rest", f"{HOST}:{rest_port}"]
        return Server(name or f"rustserve-{servable}", args, self.server_env), grpc_port, rest_port

    def baseline(self, workload: str) -> tuple[Server, int, int]:
        grpc_port, rest_port = free_port(), free_port()
        args = [sys.executable, str(HERE / "baseline_server.py"), "--workload", workload, "--models", str(self.models)]
        args += ["--http", f"{HOST}:{rest_port}", "--grpc", f"{HOST}:{grpc_port}"]
        return Server(f"baseline-{workload}", args), grpc_port, rest_port

    def check_release_build(self) -> None:
        out = subprocess.run(
            [sys.executable, "-c", "import rustserve._rustserve as m; print(m.__file__)"],
            env=self.server_env,
            check=True,
            text=True,
            capture_output=True,
        ).stdout.strip()
        if not out.startswith(str(self.site)):
            raise SystemExit(f"the servers would import rustserve from {out}, not from the release build {self.site}")

    # -- measuring -------------------------------------------------------------------------------------------

    def rest(self, server: Server, port: int, req: Requests, concurrency: int) -> tuple[dict[str, float], float]:
        wrk(req.rest_url(port), req.rest_body, concurrency, self.warmup)
        return measured(server.pid, lambda: wrk(req.rest_url(port), req.rest_body, concurrency, self.duration))

    def grpc(self, server: Server, port: int, req: Requests, concurrency: int) -> tuple[dict[str, float], float]:
        grpc_load(self.loadgen, port, req.grpc_body, concurrency, self.warmup)
        return measured(server.pid, lambda: grpc_load(self.loadgen, port, req.grpc_body, concurrency, self.duration))

    def row(
        self,
        workload: str,
        transport: str,
        concurrency: int,
        contender: str,
        result: tuple[dict[str, float], float],
        note: str = "",
    ) -> Row:
        load, cpu = result
        return self.results.add(
            Row(workload, transport, concurrency, contender, load["rps"], load["p50_ms"], load["p99_ms"], cpu, note)
        )

    def inprocess(self, workload: str) -> list[dict[str, Any]]:
        out = subprocess.run(
            [sys.executable, str(HERE / "inprocess.py"), "--workload", workload, "--models", str(self.models)]
            + ["--duration", str(self.duration)],
            check=True,
            text=True,
            capture_output=True,
            cwd=WORK,
        ).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        for row in rows:
            note = ""
            if "all_batches" in row:
                note = f"batch {row['batch']}; images/s by batch: " + ", ".join(
                    f"{size}: {rps:.1f}" for size, rps in row["all_batches"].items()
                )
            self.results.add(
                Row(
                    workload,
                    "in-process",
                    1,
                    row["name"],
                    row["rps"],
                    row["p50_ms"],
                    row["p99_ms"],
                    row["cpu_cores"],
                    note,
                )
            )
        return rows

    # -- workloads -------------------------------------------------------------------------------------------

    def tensor_add(self) -> None:
        print("\n== tensor_add ([2,2] float32 add)", flush=True)
        req = tensor_add_requests()
        expected = [[2.0, 4.0], [6.0, 8.0]]
        self.startup()
        server, grpc_port, rest_port = self.rustserve("tensor_add")
        with running(server):
            wait_until(lambda: req.post(rest_port)["instances"][0]["y"] == expected, server)
            assert req.grpc(grpc_port)[0]["y"].tolist() == expected
            for concurrency in (1, 16):
                self.row("tensor_add", "REST", concurrency, "rustserve", self.rest(server, rest_port, req, concurrency))
            for concurrency in (1, 16):
                self.row("tensor_add", "gRPC", concurrency, "rustserve", self.grpc(server, grpc_port, req, concurrency))
            # The GIL-thread round trip: the same call with an identity Python stage in front of the model.
            staged = tensor_add_requests("add_pystage")
            assert staged.post(rest_port)["instances"][0]["y"] == expected
            row = self.row("tensor_add", "gRPC", 1, "rustserve +Python stage", self.grpc(server, grpc_port, staged, 1))
            plain = self.results.find("tensor_add", "gRPC", 1, "rustserve")
            if plain:
                self.results.facts["GIL-thread round trip (p50 with - without a Python stage, gRPC c=1)"] = (
                    f"{(row.p50_ms - plain.p50_ms) * 1e3:.0f} µs"
                )
            # The model stage's share: the same request to a method without any stage.
            echo = tensor_add_requests("echo")
            assert echo.post(rest_port)["instances"][0]["y"] == [[1.0, 2.0], [3.0, 4.0]]
            for transport, measure, port in (("REST", self.rest, rest_port), ("gRPC", self.grpc, grpc_port)):
                row = self.row("tensor_add", transport, 1, "rustserve, no stage", measure(server, port, echo, 1))
                plain = self.results.find("tensor_add", transport, 1, "rustserve")
                if plain:
                    self.results.facts[f"model stage (p50 with - without it, {transport} c=1)"] = (
                        f"{(plain.p50_ms - row.p50_ms) * 1e3:.0f} µs"
                    )
            self.idle_cpu(server)
        server, grpc_port, rest_port = self.baseline("tensor_add")
        with running(server):
            wait_until(lambda: req.post(rest_port)["instances"][0]["y"] == expected, server)
            assert req.grpc(grpc_port)[0]["y"].tolist() == expected
            for concurrency in (1, 16):
                self.row("tensor_add", "REST", concurrency, "FastAPI", self.rest(server, rest_port, req, concurrency))
            for concurrency in (1, 16):
                self.row("tensor_add", "gRPC", concurrency, "grpcio", self.grpc(server, grpc_port, req, concurrency))
        self.inprocess("tensor_add")

    def startup(self) -> None:
        """Seconds from spawning `rustserve start` (tensor_add) to its first REST answer; median of three."""
        req = tensor_add_requests()
        times = []
        for attempt in range(3):
            started = time.monotonic()
            server, _, rest_port = self.rustserve("tensor_add", name=f"rustserve-startup-{attempt}")
            with running(server):
                wait_until(lambda port=rest_port: bool(req.post(port, timeout=2)["instances"]), server, timeout=60)
                times.append(time.monotonic() - started)
        self.results.facts["start-up of tensor_add to first answer (median of 3)"] = (
            f"{statistics.median(times):.2f} s ({', '.join(f'{t:.2f}' for t in times)})"
        )
        print(f"  start-up to first answer: {', '.join(f'{t:.2f} s' for t in times)}", flush=True)

    def idle_cpu(self, server: Server) -> None:
        time.sleep(1.0)
        cpu0, t0 = cpu_seconds(server.pid), time.monotonic()
        time.sleep(5.0)
        cores = (cpu_seconds(server.pid) - cpu0) / (time.monotonic() - t0)
        self.results.facts["idle server CPU over 5 s after load (tensor_add)"] = f"{cores:.4f} cores"
        print(f"  idle CPU: {cores:.4f} cores", flush=True)

    def resnet50(self) -> None:
        print("\n== resnet50 (JPEG in, Pillow preprocess in a Python stage, top-1 label out)", flush=True)
        jpeg = workloads.make_jpeg()
        req = resnet_requests(jpeg)
        server, grpc_port, rest_port = self.rustserve("resnet50")
        with running(server):
            wait_until(lambda: req.post(rest_port, timeout=60)["instances"][0]["label"].startswith("class_"), server)
            label = req.post(rest_port)["instances"][0]["label"]
            assert req.grpc(grpc_port)[0]["label"] == label
            for concurrency in (1, 8):
                self.row("resnet50", "REST", concurrency, "rustserve", self.rest(server, rest_port, req, concurrency))
            for concurrency in (1, 8):
                self.row("resnet50", "gRPC", concurrency, "rustserve", self.grpc(server, grpc_port, req, concurrency))
        # The batching knobs: wait up to 60 ms for a batch of 8 (what a closed loop of 8 clients can fill).
        tuned = resnet_requests(jpeg, "resnet50_batch8")
        server, grpc_port, rest_port = self.rustserve("resnet50_batch8")
        with running(server):
            wait_until(lambda: tuned.post(rest_port, timeout=60)["instances"][0]["label"] == label, server)
            self.row(
                "resnet50",
                "REST",
                8,
                "rustserve delay 60 ms, pref. 8",
                self.rest(server, rest_port, tuned, 8),
            )
        server, grpc_port, rest_port = self.baseline("resnet50")
        with running(server):
            wait_until(lambda: req.post(rest_port, timeout=60)["instances"][0]["label"] == label, server)
            for concurrency in (1, 8):
                self.row("resnet50", "REST", concurrency, "FastAPI", self.rest(server, rest_port, req, concurrency))
        self.inprocess("resnet50")

    def pybound(self) -> None:
        print("\n== pybound (Python stage slower than the model), num_parallel_workers 1 vs 2", flush=True)
        req = pybound_requests()
        for workers in (1, 2):
            server, _, rest_port = self.rustserve("pybound", workers=workers, name=f"rustserve-pybound-{workers}")
            with running(server):
                wait_until(lambda port=rest_port: len(req.post(port)["instances"][0]["y"]) == 4, server)
                processes = len(process_tree(server.pid))
                note = f"{processes} process(es)"
                self.row(
                    "pybound", "REST", 8, f"rustserve workers={workers}", self.rest(server, rest_port, req, 8), note
                )
                if workers == 2 and processes < 2:
                    self.results.notes.append(
                        "pybound: the server ran in one process with num_parallel_workers=2: Python worker "
                        "processes are not in this build, so the 2-worker row measures the single GIL thread."
                    )
        server, _, rest_port = self.baseline("pybound")
        with running(server):
            wait_until(lambda: len(req.post(rest_port)["instances"][0]["y"]) == 4, server)
            self.row("pybound", "REST", 8, "FastAPI", self.rest(server, rest_port, req, 8))
        self.inprocess("pybound")


# ---------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------


def median_of(rounds: list[Results]) -> Results:
    """One `Results` whose lines are the medians of the rounds' lines (req/s, p50, p99 and CPU each on its own)."""
    if len(rounds) == 1:
        return rounds[0]
    merged = Results(facts=dict(rounds[0].facts), notes=sorted({note for r in rounds for note in r.notes}))
    for row in rounds[0].rows:
        key = (row.workload, row.transport, row.concurrency, row.contender)
        same = [found for r in rounds if (found := r.find(*key)) is not None]
        cpus = [r.cpu_cores for r in same if r.cpu_cores is not None]
        # Ratios are taken within each round (contenders measured minutes apart, not a whole run apart), then
        # their median: other load on the machine then skews a ratio only when it hit one contender of a round.
        ratios = {
            name: statistics.median(r.ratios[name] for r in same if name in r.ratios)
            for name in {name for r in same for name in r.ratios}
        }
        merged.rows.append(
            Row(
                *key,
                rps=statistics.median(r.rps for r in same),
                p50_ms=statistics.median(r.p50_ms for r in same),
                p99_ms=statistics.median(r.p99_ms for r in same),
                cpu_cores=statistics.median(cpus) if cpus else None,
                note=f"median of {len(same)}; req/s {min(r.rps for r in same):,.0f}-{max(r.rps for r in same):,.0f}",
                ratios=ratios,
            )
        )
    for key in rounds[0].facts:
        values = [r.facts[key] for r in rounds if key in r.facts]
        merged.facts[key] = values[0] if len(values) == 1 else "; ".join(str(v) for v in values)  # one table cell
    return merged


def add_ratios(results: Results) -> None:
    for row in results.rows:
        if not row.contender.startswith("rustserve"):
            continue
        if row.contender == "rustserve workers=2":
            one = results.find(row.workload, row.transport, row.concurrency, "rustserve workers=1")
            if one and one.rps:
                row.ratios["vs 1 worker"] = row.rps / one.rps
        baseline = "FastAPI" if row.transport == "REST" else "grpcio"
        other = results.find(row.workload, row.transport, row.concurrency, baseline)
        if other and other.rps:
            row.ratios["vs Python server"] = row.rps / other.rps
        inproc_name = {("tensor_add", 1): "session.run", ("resnet50", 1): "pipeline", ("pybound", 8): "pipeline"}
        name = inproc_name.get((row.workload, row.concurrency))
        if row.workload == "resnet50" and row.concurrency > 1:
            best = results.find("resnet50", "in-process", 1, "best batch")
            if best:
                row.ratios["vs in-process"] = row.rps / best.rps
        elif name:
            inproc = results.find(row.workload, "in-process", 1, name)
            if inproc and inproc.rps:
                row.ratios["vs in-process"] = row.rps / inproc.rps


def _target(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "MISSED")


def targets(results: Results) -> list[tuple[str, str, str]]:
    """(target, measured, met / MISSED / n/a) for the issue's targets that this run measured."""
    out: list[tuple[str, str, str]] = []
    r = results.find
    for transport in ("REST", "gRPC"):
        c1 = r("tensor_add", transport, 1, "rustserve")
        if c1:
            out.append(
                (f"tensor_add {transport} p50 <= 0.10 ms at c=1", f"{c1.p50_ms:.3f} ms", _target(c1.p50_ms <= 0.10))
            )
        c16 = r("tensor_add", transport, 16, "rustserve")
        if c16 and "vs Python server" in c16.ratios:
            ratio = c16.ratios["vs Python server"]
            out.append((f"tensor_add {transport} c=16 >= 12x the Python server", f"{ratio:.1f}x", _target(ratio >= 12)))
        if c16 and c16.cpu_cores is not None:
            out.append(
                (
                    f"tensor_add {transport} c=16 server CPU <= 1 core",
                    f"{c16.cpu_cores:.2f}",
                    _target(c16.cpu_cores <= 1.0),
                )
            )
    for transport in ("REST", "gRPC"):
        c1 = r("resnet50", transport, 1, "rustserve")
        if c1 and "vs in-process" in c1.ratios:
            ratio = c1.ratios["vs in-process"]
            out.append((f"resnet50 {transport} c=1 >= 0.98 of in-process", f"{ratio:.4f}", _target(ratio >= 0.98)))
        for c8 in results.rows:
            if (c8.workload, c8.transport, c8.concurrency) != ("resnet50", transport, 8):
                continue
            if not c8.contender.startswith("rustserve") or "vs in-process" not in c8.ratios:
                continue
            label = f"resnet50 {transport} c=8" + ("" if c8.contender == "rustserve" else f" ({c8.contender[10:]})")
            ratio = c8.ratios["vs in-process"]
            out.append((f"{label} >= 0.97 of in-process best batch", f"{ratio:.4f}", _target(ratio >= 0.97)))
            spread = c8.p99_ms / c8.p50_ms
            out.append((f"{label} p99 <= 1.5 x p50", f"{spread:.2f}x", _target(spread <= 1.5)))
    two = r("pybound", "REST", 8, "rustserve workers=2")
    if two and "vs 1 worker" in two.ratios:
        ratio = two.ratios["vs 1 worker"]
        out.append(("pybound 2 workers >= 1.7x 1 worker", f"{ratio:.2f}x", _target(ratio >= 1.7)))
    for key, value in results.facts.items():
        if not key.startswith(("start-up", "idle")):
            continue
        # With --repeat, a fact holds every round's value, joined by " | ": the worst one decides.
        worst = max(float(part.split()[0]) for part in str(value).split(" | "))
        if key.startswith("start-up"):
            out.append(("start-up to first answer <= 1 s", value, _target(worst <= 1.0)))
        else:
            out.append(("idle CPU ~ 0", value, _target(worst < 0.01)))
    return out


def report(results: Results, command: str) -> str:
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {os.cpu_count()} CPUs ({_cpu_model()}), load generator on the same machine; load average "
        f"{results.facts.get('load average at start', '?')} at the start, {_loadavg()} at the end (other work on the "
        "machine shows up as noise in every column).",
        "",
        "| workload | transport | conc. | contender | req/s | p50 ms | p99 ms | server CPU (cores) | "
        "vs Python server | vs in-process | note |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in results.rows:
        python = row.ratios.get("vs Python server")
        inproc = row.ratios.get("vs in-process")
        lines.append(
            f"| {row.workload} | {row.transport} | {row.concurrency} | {row.contender} | {row.rps:,.0f} | "
            f"{row.p50_ms:.3f} | {row.p99_ms:.3f} | {_fmt_cpu(row.cpu_cores).strip()} | "
            f"{'' if python is None else f'{python:.2f}x'} | {'' if inproc is None else f'{inproc:.3f}'} | {row.note} |"
        )
    facts = {key: value for key, value in results.facts.items() if not key.startswith("load")}
    if facts:
        lines += ["", "| measurement | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in facts.items()]
    checked = targets(results)
    if checked:
        lines += ["", "| target (issue 5) | measured | |", "|---|---|---|"]
        lines += [f"| {name} | {value} | {verdict} |" for name, value, verdict in checked]
    if results.notes:
        lines += [""] + [f"Note: {note}" for note in results.notes]
    return "\n".join(lines) + "\n"


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2-second measurements (a smoke run, noisy numbers)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--workloads", default="tensor_add,resnet50,pybound", help="comma-separated subset")
    parser.add_argument("--no-build", action="store_true", help="reuse the last release build and load generator")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run every workload N times, alternating the contenders, and report each line's median (default 1)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 2.0
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(chosen) - {"tensor_add", "resnet50", "pybound"}
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}")
    if shutil.which("wrk") is None:
        print("compare.py needs wrk for the HTTP load: apt-get install -y wrk", file=sys.stderr)
        return 2
    for module in ("fastapi", "uvicorn", "onnxruntime", "onnx", "PIL"):
        try:
            __import__(module)
        except ImportError:
            print(f"compare.py needs the Python package '{module}': pip install -e '.[cpu,dev]'", file=sys.stderr)
            return 2
    WORK.mkdir(parents=True, exist_ok=True)
    site = build_release(rebuild=not args.no_build)
    loadgen = build_loadgen(rebuild=not args.no_build)
    models = workloads.build_models(WORK / "models", resnet="resnet50" in chosen)
    servables = WORK / "servables"
    shutil.rmtree(servables, ignore_errors=True)
    workloads.write_servables(servables, models, resnet="resnet50" in chosen)
    bench = Bench(args, site, loadgen, models, servables)
    bench.check_release_build()
    rounds: list[Results] = []
    for round_index in range(args.repeat):
        if args.repeat > 1:
            print(f"\n#### round {round_index + 1} of {args.repeat}", flush=True)
        bench.results = Results(facts={"load average at start": _loadavg()})
        for workload in chosen:
            getattr(bench, workload)()
        add_ratios(bench.results)
        rounds.append(bench.results)
    bench.results = median_of(rounds)
    command = "python benches/compare.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(bench.results, command.strip())
    print("\n" + text)
    (WORK / "results.md").write_text(text)
    (WORK / "results.json").write_text(
        json.dumps(
            {"rows": [asdict(row) for row in bench.results.rows], "facts": bench.results.facts}, indent=2, default=str
        )
    )
    print(f"written to {WORK / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
