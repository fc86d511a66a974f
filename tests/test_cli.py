"""The `rustserve` subcommands besides serving: `infer` (against a real server), `list` and `check`, and the
start-up report of `start`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import models
import numpy as np
import pytest
from conftest import ADD_CONFIG, RPC_TIMEOUT_S, ServerProcess, _child_env, free_port, worker_pids
from test_e2e_startup import BAD_CONFIGS

from rustserve.cli import main, parse_assignment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m rustserve <args>` in a subprocess, with a deadline; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "rustserve", *args],
        cwd=cwd,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=RPC_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def examples_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of examples/servables (add, digits, matmul, ocr)."""
    return Path(shutil.copytree(EXAMPLES / "servables", tmp_path_factory.mktemp("cli") / "servables"))


@pytest.fixture
def examples_server(examples_copy: Path, start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(examples_copy)


# ---------------------------------------------------------------------------------------------------------------
# infer: argument parsing
# ---------------------------------------------------------------------------------------------------------------

GOOD_ASSIGNMENTS: list[tuple[str, str, Any, str | None, tuple[int, ...] | None]] = [
    # (argument, name, value, dtype, shape)
    ("x=[[1, 2], [3, 4]]", "x", [[1, 2], [3, 4]], "int32", (2, 2)),
    ("x=[1.5, 2]", "x", [1.5, 2.0], "float32", (2,)),
    ("x=7", "x", 7, "int32", ()),
    ("x=-2.5e3", "x", -2500.0, "float32", ()),
    ("flag=true", "flag", True, "bool", ()),
    ("x=[]", "x", [], "float32", (0,)),
    ("x:float32=[[1, 2], [3, 4]]", "x", [[1.0, 2.0], [3.0, 4.0]], "float32", (2, 2)),
    ("x:int64=[5000000000]", "x", [5000000000], "int64", (1,)),
    ("x:uint8=[0, 255]", "x", [0, 255], "uint8", (2,)),
    ("x:float16=0.5", "x", 0.5, "float16", ()),
    ("x:int32=[2.0, 3.0]", "x", [2, 3], "int32", (2,)),
    ("text=hello world", "text", "hello world", None, None),
    ('text="[not an array]"', "text", "[not an array]", None, None),
    ("path=a=b", "path", "a=b", None, None),
]


@pytest.mark.parametrize("case", GOOD_ASSIGNMENTS, ids=[case[0] for case in GOOD_ASSIGNMENTS])
def test_parse_assignment(case: tuple[str, str, Any, str | None, tuple[int, ...] | None]) -> None:
    """Numbers, arrays and bools become numpy arrays with REST's default dtypes (or the given one); other text is
    a string."""
    text, name, expected, dtype, shape = case
    got_name, value = parse_assignment(text)
    assert got_name == name
    if dtype is None:
        assert value == expected and isinstance(value, str)
    else:
        assert isinstance(value, np.ndarray) and value.dtype == np.dtype(dtype) and value.shape == shape
        np.testing.assert_array_equal(value, np.asarray(expected))


def test_parse_assignment_reads_files(tmp_path: Path) -> None:
    """@PATH sends the file's bytes unchanged."""
    blob = bytes(range(256))
    (tmp_path / "blob.bin").write_bytes(blob)
    assert parse_assignment(f"data=@{tmp_path / 'blob.bin'}") == ("data", blob)


BAD_ASSIGNMENTS: list[tuple[str, str]] = [
    ("novalue", "expected NAME=VALUE"),
    ("=5", "expected NAME=VALUE"),
    ("x:complex64=[1]", "dtype 'complex64' is not a numeric or bool dtype"),
    ("x:nope=[1]", "unknown dtype 'nope'"),
    ("x:int32=hello", "a string cannot have dtype 'int32'"),
    ("x=[[1, 2], [3]]", "not a rectangular array"),
    ("x=[1, 2", "invalid JSON '[1, 2'"),
    ("x=5000000000", "does not fit int32; give a dtype, e.g. x:int64=..."),
    ("x:int8=[1, 300]", "is not representable as int8"),
    ("x:int32=[1.5]", "is not representable as int32"),
    ('x={"a": 1}', "expected a number, bool, array, string or @FILE"),
    ("x=null", "expected a number, bool, array, string or @FILE"),
    ('x=["a", "b"]', "array elements must be numbers or bools"),
    ("x:float32=@file.bin", "@FILE sends bytes, a dtype does not apply"),
    ("x=@/does/not/exist.png", "cannot read '/does/not/exist.png'"),
]


@pytest.mark.parametrize("case", BAD_ASSIGNMENTS, ids=[case[0] for case in BAD_ASSIGNMENTS])
def test_parse_assignment_errors(case: tuple[str, str]) -> None:
    """Malformed inputs raise ValueError saying what is wrong."""
    text, message = case
    with pytest.raises(ValueError) as info:
        parse_assignment(text)
    assert message in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# infer: against a server
# ---------------------------------------------------------------------------------------------------------------


def test_infer_prints_json(examples_server: ServerProcess) -> None:
    """add_common with float arrays, add_cast with int arrays (dtype kept), matmul with an explicit dtype."""
    address = ["--address", examples_server.grpc_address]
    done = run_cli("infer", *address, "--servable", "add", "--method", "add_common", "x1=[[1.0, 2.0], [3.0, 4.0]]",
                   "x2=[[0.5, 0.5], [0.5, 0.5]]")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"y": [[1.5, 2.5], [3.5, 4.5]]}
    done = run_cli("infer", *address, "--servable", "add", "--method", "add_cast", "x1=[[1, 2], [3, 4]]",
                   "x2=[[10, 20], [30, 40]]")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"y": [[11, 22], [33, 44]]}
    done = run_cli("infer", *address, "--servable", "matmul", "--method", "matmul", "--version", "1",
                   "a:float32=[[1, 2, 3]]", "b:float32=[[1], [1], [1]]")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"c": [[6.0]]}


def test_infer_sends_file_bytes(examples_server: ServerProcess, tmp_path: Path) -> None:
    """image=@digit.png: the digits servable reads the PNG file."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import digits_client
    finally:
        sys.path.remove(str(EXAMPLES))
    images, labels = digits_client.held_out_digits(limit=5)
    correct = 0
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        png = tmp_path / f"digit_{index}.png"
        png.write_bytes(digits_client.render_png(image))
        done = run_cli("infer", "--address", examples_server.grpc_address, "--servable", "digits", "--method",
                       "predict", f"image=@{png}")  # fmt: skip
        assert done.returncode == 0, done.stderr
        output = json.loads(done.stdout)
        assert 0 <= output["label"] <= 9 and 0.0 < output["probability"] <= 1.0
        correct += output["label"] == int(label)
    assert correct >= 4  # the model's held-out accuracy is 0.98


def test_infer_errors(examples_server: ServerProcess, tmp_path: Path) -> None:
    """Server errors and unreachable servers exit 1 with the error on stderr; bad arguments exit 2."""
    address = ["--address", examples_server.grpc_address]
    done = run_cli("infer", *address, "--servable", "add", "--method", "add_common", "x1=[[1, 2], [3, 4]]",
                   "x2=[[1, 2], [3, 4]]")  # fmt: skip
    assert done.returncode == 1 and done.stdout == ""
    assert "rustserve: error: Given model input 0 data type kMSI_Int32 not match" in done.stderr
    done = run_cli("infer", *address, "--servable", "nope", "--method", "m", "x=1")
    assert done.returncode == 1 and "servable is not available" in done.stderr
    done = run_cli("infer", *address, "--servable", "ocr", "--method", "read", "image=not a picture")
    assert done.returncode == 1 and "expected the bytes of a PNG or JPEG image, got a string" in done.stderr
    done = run_cli("infer", *address, "--servable", "add", "--method", "add_common", "x1=[1, 2")
    assert done.returncode == 2 and "invalid JSON" in done.stderr
    done = run_cli("infer", *address, "--servable", "add", "--method", "add_common", "x1=1", "x1=2")
    assert done.returncode == 2 and "input 'x1' is given twice" in done.stderr
    done = run_cli("infer", "--address", f"127.0.0.1:{free_port()}", "--servable", "add", "--method", "m", "x=1")
    assert done.returncode == 1 and "Grpc Error, (14, 'unavailable')" in done.stderr
    assert examples_server.alive()


# ---------------------------------------------------------------------------------------------------------------
# list
# ---------------------------------------------------------------------------------------------------------------

SHAPES_CONFIG = '''
"""Models with and without a batch dim, a Python-only method and a pass-through output."""
from rustserve.server import register

batched = register.declare_model(model_file="mlp.onnx", model_format="ONNX", with_batch_dim=True, max_batch_size=8)
whole = register.declare_model(model_file="matmul.onnx", model_format="ONNX", with_batch_dim=False)
biased = register.declare_model(
    model_file="bias_add.onnx", model_format="ONNX", with_batch_dim=True, without_batch_dim_inputs=1
)


def label(probs):
    return int(probs.argmax()), probs


@register.register_method(output_names=["label", "probs"])
def classify(x):
    probs = register.add_stage(batched, x, outputs_count=1)
    return register.add_stage(label, probs, outputs_count=2)


@register.register_method(output_names=["c", "a"])
def product(a, b):
    c = register.add_stage(whole, a, b, outputs_count=1)
    return c, a


@register.register_method(output_names=["y"])
def shift(x, bias):
    return register.add_stage(biased, x, bias, outputs_count=1)
'''


@pytest.fixture
def shapes_dir(make_servable: Callable[..., Path]) -> Path:
    """`shapes` with versions 1 and 2 (version 2's MLP has 5 classes instead of 3)."""
    folder = make_servable("shapes", SHAPES_CONFIG, versions=(1, 2))
    for version, classes in ((1, 3), (2, 5)):
        models.build_small_mlp(folder / str(version) / "mlp.onnx", n_out=classes)
        models.build_matmul(folder / str(version) / "matmul.onnx")
        models.build_bias_add(folder / str(version) / "bias_add.onnx")
    return folder.parent


def test_list_text(shapes_dir: Path) -> None:
    """Per version: each model's signature and each method's typed inputs and outputs (per instance)."""
    done = run_cli("list", "--dir", str(shapes_dir))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"shapes  ({shapes_dir / 'shapes'})"
    v1 = lines[lines.index("  version 1") : lines.index("  version 2")]
    assert v1 == [
        "  version 1",
        "    model mlp.onnx (with_batch_dim=True, max_batch_size=8): x float32[?, 4] -> probs float32[?, 3]",
        "    model matmul.onnx (with_batch_dim=False): a float32[2, 3], b float32[3, 2] -> c float32[2, 2]",
        "    model bias_add.onnx (with_batch_dim=True): x float32[4, 3], bias float32[3] -> y float32[4, 3]",
        "    method classify(x: float32[4]) -> (label: any, probs: any)",
        "    method product(a: float32[2, 3], b: float32[3, 2]) -> (c: float32[2, 2], a: float32[2, 3])",
        "    method shift(x: float32[3], bias: float32[3]) -> (y: float32[3])",
    ]
    assert "    model mlp.onnx (with_batch_dim=True, max_batch_size=8): x float32[?, 4] -> probs float32[?, 5]" in lines


def test_list_json(shapes_dir: Path) -> None:
    """--json: the same facts, machine-readable; symbolic dims are -1 and Python-decided types are null."""
    done = run_cli("list", "--dir", str(shapes_dir), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (servable,) = report["servables"]
    assert servable["name"] == "shapes" and [v["version"] for v in servable["versions"]] == [1, 2]
    methods = {method["name"]: method for method in servable["versions"][0]["methods"]}
    assert methods["classify"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": [4]}]
    assert methods["classify"]["outputs"] == [
        {"name": "label", "dtype": None, "shape": None},
        {"name": "probs", "dtype": None, "shape": None},
    ]
    model = servable["versions"][0]["models"][0]
    assert model["files"] == ["mlp.onnx"] and model["with_batch_dim"] is True and model["max_batch_size"] == 8
    assert model["subgraphs"][0]["inputs"] == [{"name": "x", "dtype": "float32", "shape": [-1, 4]}]


def test_list_reports_broken_servables_and_goes_on(shapes_dir: Path, make_servable: Callable[..., Path]) -> None:
    """A config that fails to import is reported in place; the other servables are still listed; exit 1."""
    make_servable("broken", 'raise ValueError("nope")\n', root=shapes_dir)
    done = run_cli("list", "--dir", str(shapes_dir))
    assert done.returncode == 1
    assert "  error: import broken.servable_config failed, nope" in done.stdout
    assert "    method classify(x: float32[4]) -> (label: any, probs: any)" in done.stdout


def test_list_and_check_without_servables(tmp_path: Path) -> None:
    """An empty or missing directory: exit 1 and a message naming it."""
    for command in ("list", "check"):
        done = run_cli(command, "--dir", str(tmp_path))
        assert done.returncode == 1 and "no servable found" in done.stderr and str(tmp_path) in done.stderr
        done = run_cli(command, "--dir", str(tmp_path / "missing"))
        assert done.returncode == 1 and "missing" in done.stderr


# ---------------------------------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------------------------------


def test_check_accepts_good_servables(shapes_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every version of every servable loads; the report lists them; exit 0."""
    assert main(["check", "--dir", str(shapes_dir)]) == 0
    out = capsys.readouterr().out
    assert "ok    shapes: version(s) 1, 2; methods classify, product, shift" in out
    assert out.rstrip().endswith("1 of 1 servable(s) ok")


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_check_finds_what_start_finds(
    case: str, make_servable: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each broken config that makes `rustserve start` fail makes `check` report FAIL with the same text."""
    config, with_model, texts = BAD_CONFIGS[case]
    folder = make_servable("broken", config, versions=(1,) if with_model else ())
    if with_model:
        models.build_add(folder / "1" / "add.onnx")
    good = make_servable("good", ADD_CONFIG, versions=(1,), root=folder.parent)
    models.build_add(good / "1" / "add.onnx")
    assert main(["check", "--dir", str(folder.parent)]) == 1
    out = capsys.readouterr().out
    fail = next(line for line in out.splitlines() if line.startswith("FAIL  broken: "))
    for text in texts:
        assert text in fail, out
    assert "ok    good: version(s) 1; methods add_common, add_cast" in out
    assert "1 of 2 servable(s) ok" in out


def test_check_only_named_servables(make_servable: Callable[..., Path]) -> None:
    """--servable restricts the check (a broken neighbour is not looked at)."""
    good = make_servable("good", ADD_CONFIG, versions=(1,))
    models.build_add(good / "1" / "add.onnx")
    make_servable("broken", 'raise ValueError("nope")\n', root=good.parent)
    done = run_cli("check", "--dir", str(good.parent), "--servable", "good")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broken" not in done.stdout


# ---------------------------------------------------------------------------------------------------------------
# start: the report after the ready line
# ---------------------------------------------------------------------------------------------------------------


def start_report(server: ServerProcess) -> str:
    """The server's stderr once the start-up report (written right after the ready line) is complete."""
    deadline = time.monotonic() + RPC_TIMEOUT_S
    while "  stop with Ctrl-C" not in server.stderr_text():
        assert time.monotonic() < deadline, server.describe()
        time.sleep(0.01)
    return server.stderr_text()


def test_start_reports_methods_and_addresses(examples_server: ServerProcess) -> None:
    """stdout: the one ready line; stderr: one line per servable version with its methods, then how to reach the
    server."""
    ready = [line.rstrip("\n") for line in examples_server.stdout_lines if line.startswith("rustserve: serving")]
    assert len(ready) == 1
    assert ready[0].startswith("rustserve: serving 4 servable version(s) (add v1, digits v1, matmul v1, ocr v1)")
    assert f"gRPC {examples_server.grpc_address}" in ready[0]
    lines = start_report(examples_server).splitlines()
    first = lines.index("  add v1: add_common(x1, x2) -> y; add_cast(x1, x2) -> y")
    assert lines[first : first + 9] == [
        "  add v1: add_common(x1, x2) -> y; add_cast(x1, x2) -> y",
        "  digits v1: predict(image) -> label, probability",
        "  matmul v1: matmul(a, b) -> c",
        "  ocr v1: read(image) -> text, confidence, boxes",
        f"  gRPC: MindSpore MSService and KServe v2 on {examples_server.grpc_address}; try `rustserve infer "
        f"--address {examples_server.grpc_address} ...`",
        f"  REST: POST {examples_server.rest_base}/model/<servable>[/version/<n>]:<method>",
        f"  KServe v2: {examples_server.rest_base}/v2/models/<servable>.<method>/infer; health /v2/health/ready",
        f"  metrics: {examples_server.rest_base}/metrics",
        "  stop with Ctrl-C (SIGINT) or SIGTERM",
    ]


def test_start_log_level(make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess]) -> None:
    """--log-level info shows the native 'ready' log lines on stderr; RUST_LOG=error overrides it."""
    folder = make_servable("add", ADD_CONFIG, versions=(1,))
    models.build_add(folder / "1" / "add.onnx")
    server = start_server(folder.parent)
    assert "servable 'add' version 1 ready" in server.stderr_text()
    script = folder.parent / "quiet.sh"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            RUST_LOG=error exec {sys.executable} -m rustserve "$@"
            """
        )
    )
    script.chmod(0o755)
    quiet = start_server(folder.parent, command=[str(script)])
    report = start_report(quiet)
    assert "servable 'add' version 1 ready" not in report
    assert "  add v1: add_common(x1, x2) -> y; add_cast(x1, x2) -> y" in report  # the start-up report stays


def _serve_add_with(
    make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess], tmp_path: Path, *flags: str
) -> tuple[Path, ServerProcess]:
    """The add servable served by `rustserve start ... <flags>`; returns its folder and the ready server."""
    folder = make_servable("add", ADD_CONFIG, versions=(1,))
    models.build_add(folder / "1" / "add.onnx")
    script = tmp_path / "serve.sh"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -m rustserve "$@" {" ".join(flags)}\n')
    script.chmod(0o755)
    return folder, start_server(folder.parent, command=[str(script)])


def test_start_num_parallel_workers(
    make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """--num-parallel-workers 3 gives a servable with Python stages three worker processes (which answer like the
    server's own Python thread); a value outside [0, 64] is refused before anything loads."""
    folder, server = _serve_add_with(make_servable, start_server, tmp_path, "--num-parallel-workers", "3")
    workers = worker_pids(server.proc.pid, "add")
    assert len(workers) == 3, workers
    done = run_cli("infer", "--address", server.grpc_address, "--servable", "add", "--method", "add_cast",
                   "x1=[[1, 2], [3, 4]]", "x2=[[1, 1], [1, 1]]")  # fmt: skip
    assert done.returncode == 0 and json.loads(done.stdout) == {"y": [[2, 3], [4, 5]]}, done.stderr
    done = run_cli("start", "--dir", str(folder.parent), "--num-parallel-workers", "65", "--grpc", "127.0.0.1:1")
    assert done.returncode == 1 and "--num-parallel-workers must be in [0, 64], got 65" in done.stderr


def test_start_io_threads(
    make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """--io-threads sets the server's network threads (the log says how many) and the server answers through them;
    a value outside [0, 64] is refused before anything loads."""
    folder, server = _serve_add_with(make_servable, start_server, tmp_path, "--io-threads", "3")
    assert "3 I/O thread(s)" in server.stderr_text()
    threads = [p.read_text().strip() for p in Path(f"/proc/{server.proc.pid}/task").glob("*/comm")]
    assert threads.count("rustserve-io") >= 3, threads  # tokio's blocking-pool threads share the name
    done = run_cli("infer", "--address", server.grpc_address, "--servable", "add", "--method", "add_cast",
                   "x1=[[1, 2], [3, 4]]", "x2=[[1, 1], [1, 1]]")  # fmt: skip
    assert done.returncode == 0 and json.loads(done.stdout) == {"y": [[2, 3], [4, 5]]}, done.stderr
    done = run_cli("start", "--dir", str(folder.parent), "--io-threads", "-1", "--grpc", "127.0.0.1:1")
    assert done.returncode == 1 and "--io-threads must be in [0, 64], got -1" in done.stderr
