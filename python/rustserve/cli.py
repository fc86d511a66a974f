"""The `rustserve` command: serve a servable directory, call a method, list and check servables.

* `rustserve start --dir DIR`: serves every servable and version under DIR until SIGINT/SIGTERM (DIR may also be one
  servable folder, served as `--model-name`: KServe's /mnt/models).
* `rustserve infer --servable S --method M [--version N] name=value ...`: one gRPC call to a running server,
  the result printed as JSON.
* `rustserve list --dir DIR`: servables, versions, models and methods with input/output names, dtypes and shapes,
  as read from the configs and the model files.
* `rustserve check --dir DIR`: runs every start-up check (configs against model signatures) without serving.

Exit status: 0 on success, 1 when start-up, a call or a check fails (the error goes to stderr, or into the report of
`list` / `check`), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rustserve.server import Server
    from rustserve.server._spec import ServableSpec

__all__ = ["main", "parse_assignment"]

_REPOSITORY_KEY_ENV = "RUSTSERVE_REPOSITORY_API_KEY"
_ADDRESS_ENV = "RUSTSERVE_GRPC_ADDRESS"  # where `infer` (and the example clients) find the server by default
_LOG_LEVEL_HELP = "log filter: error, warn, info, debug or a RUST_LOG-style filter; RUST_LOG overrides it"
_MODEL_NAME_HELP = (
    "when DIR is one servable folder (servable_config.py at its root, as KServe's /mnt/models), serve it under NAME "
    "(KServe passes {{.Name}}; default: the folder's name); a folder of servables keeps its servables' names"
)


def _version() -> str:
    from rustserve import __version__

    return __version__


def _device_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated device ids, got '{text}'") from None
    if any(device_id < 0 for device_id in ids):
        raise argparse.ArgumentTypeError(f"device ids must be >= 0, got '{text}'")
    return ids


def _native() -> Any:
    """The native extension, imported on first use."""
    return importlib.import_module("rustserve._rustserve")


def _parser() -> argparse.ArgumentParser:
    # The defaults are the native server's own (one definition, in rust/src/python/server.rs).
    defaults = _native().DEFAULTS
    grpc_address, rest_address = defaults["grpc_address"], defaults["rest_address"]
    parser = argparse.ArgumentParser(prog="rustserve", description="MindSpore-Serving-compatible model server.")
    parser.add_argument("--version", action="version", version=f"rustserve {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    start = commands.add_parser(
        "start",
        help="serve every servable (and every version) under a directory",
        description="Serve every servable under DIR (each subdirectory with a servable_config.py) and every one of "
        "its version directories, until SIGINT or SIGTERM.",
    )
    start.add_argument("--dir", required=True, metavar="DIR", help="the servable directory")
    start.add_argument(
        "--servable", action="append", metavar="NAME", help="serve only this servable (repeatable; default: all)"
    )
    start.add_argument("--model-name", metavar="NAME", help=_MODEL_NAME_HELP)
    start.add_argument("--grpc", default=grpc_address, metavar="ADDR", help=f"gRPC address (default {grpc_address})")
    start.add_argument("--rest", default=rest_address, metavar="ADDR", help=f"REST address (default {rest_address})")
    start.add_argument("--no-grpc", action="store_true", help="do not start the gRPC server")
    start.add_argument("--no-rest", action="store_true", help="do not start the REST server")
    start.add_argument(
        "--device-type", choices=("cpu", "gpu"), default="cpu", type=str.lower, help="where models run (default cpu)"
    )
    start.add_argument(
        "--device-ids", type=_device_ids, default=[], metavar="IDS", help="CUDA device ids for gpu, e.g. 0,1"
    )
    start.add_argument(
        "--num-parallel-workers",
        type=int,
        default=0,
        metavar="N",
        help="Python stage executors per servable version, 0-64: N > 1 runs the Python stages in N worker processes, "
        "never in the server process (default 0: one executor, see --no-python-in-process)",
    )
    start.add_argument(
        "--no-python-in-process",
        dest="python_in_process",
        action="store_false",
        help="with one executor too, run Python stages in a worker process (a stage that crashes or hangs then costs "
        "only its worker) instead of on the server's own Python thread (the default: lowest latency)",
    )
    start.add_argument(
        "--io-threads",
        type=int,
        default=0,
        metavar="N",
        help="threads for network I/O and codecs, 0-64 (default 0: $RUSTSERVE_IO_THREADS, else half the cores, 1-4)",
    )
    start.add_argument(
        "--strict",
        action="store_true",
        help="exit when any servable fails to load (default: serve the others, report it as not ready, and exit only "
        "when none loads)",
    )
    start.add_argument("--log-level", default="info", metavar="LEVEL", help=f"{_LOG_LEVEL_HELP} (default info)")
    start.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="stderr lines as text (colour only on a terminal) or as one JSON object per line (default text)",
    )
    start.add_argument(
        "--trace-otlp-endpoint",
        metavar="URL",
        help="export an OpenTelemetry trace of every predict request to this OTLP/gRPC collector, "
        "e.g. http://127.0.0.1:4317 (default: no traces)",
    )
    start.add_argument(
        "--max-msg-mb-size",
        type=int,
        default=defaults["max_msg_mb_size"],
        metavar="MB",
        help=f"largest message in MB (default {defaults['max_msg_mb_size']})",
    )
    start.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain: serve gRPC and REST over TLS")
    start.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    start.add_argument("--tls-ca", metavar="FILE", help="PEM root certificates for client certificates")
    start.add_argument(
        "--tls-verify-client", action="store_true", help="mutual TLS: clients must present a cert signed by --tls-ca"
    )
    start.add_argument(
        "--request-timeout-s",
        type=float,
        default=defaults["request_timeout_s"],
        metavar="S",
        help="a request still running after S seconds fails and its queued work is dropped "
        f"(default {defaults['request_timeout_s']:g})",
    )
    start.add_argument(
        "--max-enqueued-requests",
        type=int,
        default=defaults["max_enqueued_requests"],
        metavar="N",
        help=f"requests in flight; further ones fail at once (default {defaults['max_enqueued_requests']}, "
        "MindSpore's set_max_enqueued_requests)",
    )
    start.add_argument(
        "--max-queued-instances",
        type=int,
        default=defaults["max_queued_instances"],
        metavar="N",
        help="per model: while N instances wait for a batch, requests needing it fail at once "
        f"(default {defaults['max_queued_instances']})",
    )
    start.add_argument(
        "--max-queued-python-calls",
        type=int,
        default=defaults["max_queued_python_calls"],
        metavar="N",
        help="Python stage calls that may wait for an executor; further ones fail at once "
        f"(default {defaults['max_queued_python_calls']})",
    )
    start.add_argument(
        "--max-in-flight-mb",
        type=int,
        default=defaults["max_in_flight_mb"],
        metavar="MB",
        help="request bodies held at once over every listener; a request past it is refused at once with 429 / "
        f"RESOURCE_EXHAUSTED (default {defaults['max_in_flight_mb']})",
    )
    start.add_argument(
        "--max-connections",
        type=int,
        default=defaults["max_connections"],
        metavar="N",
        help=f"open connections per listener; further ones wait in the kernel's backlog "
        f"(default {defaults['max_connections']})",
    )
    start.add_argument(
        "--connection-idle-timeout-s",
        type=float,
        default=defaults["connection_idle_timeout_s"],
        metavar="S",
        help="a connection that sends nothing (no HTTP/2 preface, no request) within S seconds is closed "
        f"(default {defaults['connection_idle_timeout_s']:g})",
    )
    start.add_argument(
        "--model-control-mode",
        choices=("none", "explicit"),
        default="none",
        type=str.lower,
        help="none (default): the v2 repository API only lists what is served; explicit: it may also load, reload and "
        "unload servables of DIR (only those named by --servable, when given)",
    )
    start.add_argument(
        "--repository-api-key",
        metavar="KEY",
        help="with --model-control-mode explicit: load and unload need the header (gRPC metadata) "
        f"`authorization: Bearer KEY` (default ${_REPOSITORY_KEY_ENV}; prefer it: arguments show in `ps`)",
    )
    start.add_argument(
        "--drain-timeout-s",
        type=float,
        default=defaults["drain_timeout_s"],
        metavar="S",
        help="on SIGTERM/SIGINT, how long requests in flight may finish before the server stops "
        f"(default {defaults['drain_timeout_s']:g})",
    )

    infer = commands.add_parser(
        "infer",
        help="call a method of a running server over gRPC and print the result as JSON",
        description="Send one instance to SERVABLE.METHOD over gRPC (MindSpore's MSService.Predict) and print the "
        'outputs as a JSON object (keys sorted, arrays as nested lists, bytes as {"b64": ...}). Each input is '
        "NAME=VALUE: a JSON number or array (integers become int32 and other numbers float32, as in MindSpore's "
        "REST API; true/false become bool), @FILE for the bytes of a file, or any other text as a string. "
        "NAME:DTYPE=VALUE picks the dtype, e.g. x1:float32=[[1,2],[3,4]]. Exit status 1 when the call fails.",
    )
    infer.add_argument("--servable", required=True, metavar="NAME", help="servable name")
    infer.add_argument("--method", required=True, metavar="NAME", help="method name")
    infer.add_argument("--version", type=int, default=0, metavar="N", help="servable version (default 0 = newest)")
    infer.add_argument(
        "--address",
        default=os.environ.get(_ADDRESS_ENV, grpc_address),
        metavar="ADDR",
        help=f"the server's gRPC address (default ${_ADDRESS_ENV} or {grpc_address})",
    )
    infer.add_argument("inputs", nargs="*", metavar="NAME=VALUE", help="method inputs")

    listing = commands.add_parser(
        "list",
        help="show servables, versions, models and methods (names, dtypes, shapes) without serving",
        description="Import every servable_config.py under DIR and read the model files' signatures: print the "
        "servables, versions, models and methods with input and output names, dtypes and per-instance shapes "
        "('?' = any size; 'any' = decided by a Python stage).",
    )
    listing.add_argument("--dir", required=True, metavar="DIR", help="the servable directory")
    listing.add_argument("--servable", action="append", metavar="NAME", help="only this servable (repeatable)")
    listing.add_argument("--model-name", metavar="NAME", help=_MODEL_NAME_HELP)
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")
    listing.add_argument("--log-level", default="warn", metavar="LEVEL", help=f"{_LOG_LEVEL_HELP} (default warn)")

    check = commands.add_parser(
        "check",
        help="validate servables against their models without serving",
        description="Load every servable and version under DIR the way `rustserve start` does (import the "
        "configs, open every model, check every method against the model signatures), report, and exit without "
        "listening. Exit status 1 when any servable fails.",
    )
    check.add_argument("--dir", required=True, metavar="DIR", help="the servable directory")
    check.add_argument("--servable", action="append", metavar="NAME", help="only this servable (repeatable)")
    check.add_argument("--model-name", metavar="NAME", help=_MODEL_NAME_HELP)
    check.add_argument("--log-level", default="warn", metavar="LEVEL", help=f"{_LOG_LEVEL_HELP} (default warn)")

    agent = commands.add_parser(
        "agent",
        help="serve one rank of a distributed servable (what distributed.startup_agents starts)",
        description="Load one rank's ONNX file, answer the main process's predict calls on --listen, and register "
        "with the main process at --distributed-address once a second (the heartbeat). Runs until SIGINT or "
        "SIGTERM. Started by distributed.startup_agents, by hand, or as a Kubernetes pod per agent machine.",
    )
    agent.add_argument("--model-file", required=True, metavar="FILE", help="the rank's ONNX file")
    agent.add_argument("--rank", required=True, type=int, metavar="N", help="the rank id in the rank table")
    agent.add_argument("--listen", required=True, metavar="HOST:PORT", help="where to serve; registered as is")
    agent.add_argument("--distributed-address", required=True, metavar="HOST:PORT", help="the main process")
    agent.add_argument("--group-config", metavar="FILE", help="how this rank's outputs combine with its stage's")
    agent.add_argument("--device-id", type=int, metavar="N", help="run on this CUDA device (default: CPU)")
    agent.add_argument("--intra-op-threads", type=int, metavar="N", help="ONNX Runtime intra-op threads")
    agent.add_argument("--log-level", default="info", metavar="LEVEL", help=f"{_LOG_LEVEL_HELP} (default info)")

    cut = commands.add_parser(
        "split",
        help="cut an ONNX model into the rank files of a distributed servable",
        description="Cut MODEL into pipeline stages (at --cut tensors, or --stages N balanced by weight bytes) and "
        "shard each stage's output layer into --ranks-per-stage ranks; write OUT/rank<i>/model.onnx, "
        "OUT/rank<i>/group_config.json and OUT/rank_table.json, then check the split model against the whole one on "
        "random inputs and print the largest difference.",
    )
    cut.add_argument("model", metavar="MODEL", help="the whole ONNX model")
    cut.add_argument("--out", required=True, metavar="OUT", help="the folder to write")
    cut.add_argument("--cut", action="append", default=[], metavar="TENSOR", help="cut after this tensor (repeatable)")
    cut.add_argument("--stages", type=int, default=1, metavar="N", help="pipeline stages, when no --cut (default 1)")
    cut.add_argument("--ranks-per-stage", type=int, default=1, metavar="M", help="ranks per stage (default 1)")
    cut.add_argument(
        "--shard",
        choices=["columns", "rows"],
        default="columns",
        help="how the output layer is split (default columns)",
    )
    cut.add_argument("--server-id", default="127.0.0.1", metavar="IP", help="the rank table's server_id")
    return parser


def _split(args: argparse.Namespace) -> int:
    from rustserve.split import split

    difference = split(
        args.model,
        args.out,
        cuts=args.cut,
        stages=args.stages,
        ranks_per_stage=args.ranks_per_stage,
        by=args.shard,
        server_id=args.server_id,
    )
    print(f"wrote {args.out}; largest difference from the whole model on random inputs: {difference:.3g}")
    return 0 if difference < 1e-3 else 1


def _agent(args: argparse.Namespace) -> int:
    from rustserve.server import _ort

    if args.device_id is not None:
        _ort.preload_cuda_libraries()
    native = _init_native(args.log_level)
    try:
        native.run_agent(
            args.model_file,
            args.rank,
            args.listen,
            args.distributed_address,
            group_config=args.group_config,
            device_id=args.device_id,
            intra_op_threads=args.intra_op_threads,
        )
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(f"rustserve agent: {exc}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------------------------------------------


def _method_line(method: Mapping[str, Any]) -> str:
    return f"{method['name']}({', '.join(method['inputs'])}) -> {', '.join(method['output_names'])}"


def _load_servables(srv: Server, args: argparse.Namespace, directory: str, names: Sequence[str]) -> list[ServableSpec]:
    """Loads each servable on its own, so one that fails does not stop the others (unless `--strict`).

    A failure is printed to stderr with the servable, the file and the cause, and recorded in the native server:
    `/v2/health/ready` then answers "not ready" and the repository index lists the servable as UNAVAILABLE with its
    error.

    Args:
        srv: The server to load them into.
        args: The parsed `start` arguments.
        directory: The absolute servable directory.
        names: The servables to load.

    Returns:
        The specs of every version that loaded.

    Raises:
        RuntimeError: With `--strict`, the first failure; without it, only when no servable loaded at all.
    """
    from rustserve.server import _log

    specs: list[ServableSpec] = []
    failures: list[str] = []
    for name in names:
        try:
            versions = srv.add_servable(
                directory,
                name,
                device_type=args.device_type,
                device_ids=args.device_ids,
                num_parallel_workers=args.num_parallel_workers,
                python_in_process=args.python_in_process,
            )
        except Exception as exc:
            if args.strict or len(names) == 1:
                raise
            failures.append(name)
            # The index shows the reason to clients: without the directory's absolute path (stderr keeps it).
            srv.set_load_failure(directory, name, exc)
            _log.stderr(f"rustserve: error: servable '{name}' not served: {exc}", "error")
            continue
        specs.extend(versions)
    if failures and not specs:
        raise RuntimeError(f"no servable could be loaded from '{directory}' (failed: {', '.join(failures)})")
    return specs


def _print_start_report(
    args: argparse.Namespace, specs: Sequence[ServableSpec], listeners: Sequence[str], seconds: float
) -> None:
    """The ready line on stdout, then what is served and where on stderr."""
    from rustserve.server import _log

    versions = ", ".join(f"{spec['name']} v{spec['version']}" for spec in specs)
    # NOTE: scripts and tests wait for this one stdout line ("rustserve: serving"); the details for people go to
    # stderr, next to the log, so stdout stays one line per event.
    print(
        f"rustserve: serving {len(specs)} servable version(s) ({versions}) on {', '.join(listeners) or 'no listener'}"
        f" in {seconds:.2f} s",
        flush=True,
    )
    lines = []
    for spec in specs:
        methods = "; ".join(_method_line(method) for method in spec["methods"])
        lines.append(f"  {spec['name']} v{spec['version']}: {methods}")
    if not args.no_grpc:
        lines.append(
            f"  gRPC: MindSpore MSService and KServe v2 on {args.grpc}; try `rustserve infer --address {args.grpc} ...`"
        )
    if not args.no_rest:
        lines.append(f"  REST: POST http://{args.rest}/model/<servable>[/version/<n>]:<method>")
        lines.append(f"  KServe v2: http://{args.rest}/v2/models/<servable>.<method>/infer; health /v2/health/ready")
        lines.append(f"  metrics: http://{args.rest}/metrics")
    lines.append("  stop with Ctrl-C (SIGINT) or SIGTERM")
    _log.stderr("\n".join(lines))


def _start(args: argparse.Namespace) -> int:
    from rustserve import server
    from rustserve.server import _log

    directory = os.path.abspath(args.dir)
    started = time.monotonic()
    srv = server.Server()
    try:
        srv.serve_in_foreground()
        srv.set_log_level(args.log_level, args.log_format)
        names = _servable_names(args, directory)
        if not 0 <= args.num_parallel_workers <= 64:
            raise RuntimeError(f"--num-parallel-workers must be in [0, 64], got {args.num_parallel_workers}")
        if not 0 <= args.io_threads <= 64:
            raise RuntimeError(f"--io-threads must be in [0, 64], got {args.io_threads}")
        if args.repository_api_key is not None and args.model_control_mode != "explicit":
            raise RuntimeError("--repository-api-key needs --model-control-mode explicit (load and unload are off)")
        api_key = (
            args.repository_api_key if args.repository_api_key is not None else os.environ.get(_REPOSITORY_KEY_ENV)
        )
        if api_key == "":
            raise RuntimeError(f"--repository-api-key (or ${_REPOSITORY_KEY_ENV}) must not be empty")
        srv.set_io_threads(args.io_threads)
        ssl_config = None
        if args.tls_cert or args.tls_key or args.tls_ca or args.tls_verify_client:
            if not (args.tls_cert and args.tls_key):
                raise RuntimeError("--tls-cert and --tls-key must be given together")
            if args.tls_verify_client and not args.tls_ca:
                raise RuntimeError("--tls-verify-client needs --tls-ca (the roots client certificates chain to)")
            ssl_config = server.SSLConfig(args.tls_cert, args.tls_key, args.tls_ca, args.tls_verify_client)
        srv.set_request_timeout(args.request_timeout_s)
        srv.set_drain_timeout(args.drain_timeout_s)
        srv.set_max_enqueued_requests(args.max_enqueued_requests)
        srv.set_max_queued_instances(args.max_queued_instances)
        srv.set_max_queued_python_calls(args.max_queued_python_calls)
        srv.set_connection_limits(args.max_connections, args.connection_idle_timeout_s)
        srv.set_max_in_flight_mb(args.max_in_flight_mb)
        if args.trace_otlp_endpoint:
            srv.set_trace_otlp_endpoint(args.trace_otlp_endpoint)
        specs = _load_servables(srv, args, directory, names)
        if args.model_control_mode == "explicit":
            # The Open Inference Protocol's repository extension loads / unloads the servables of DIR at run time.
            srv.enable_repository(
                directory,
                args.device_type,
                args.device_ids,
                args.num_parallel_workers,
                servables=args.servable,
                api_key=api_key,
                python_in_process=args.python_in_process,
            )
        listeners = []
        if not args.no_grpc:
            srv.start_grpc_server(args.grpc, args.max_msg_mb_size, ssl_config)
            listeners.append(f"gRPC {args.grpc}")
        if not args.no_rest:
            srv.start_restful_server(args.rest, args.max_msg_mb_size, ssl_config)
            listeners.append(f"REST {args.rest}")
    except Exception as exc:
        srv.stop()
        _log.stderr(f"rustserve: error: {exc}", "error")
        return 1

    _print_start_report(args, specs, listeners, time.monotonic() - started)
    # Only the report needed the specs; they hold the start-up stage functions, which a repository reload must be
    # able to free.
    del specs
    return srv.serve()


# ---------------------------------------------------------------------------------------------------------------
# infer
# ---------------------------------------------------------------------------------------------------------------

_JSON_START = '[{-0123456789."'


def parse_assignment(text: str) -> tuple[str, Any]:
    """Parses one `rustserve infer` input: `NAME=VALUE` or `NAME:DTYPE=VALUE`.

    VALUE is `@PATH` (the file's bytes), a JSON number, bool or array (integers -> int32, other numbers ->
    float32, bools -> bool, unless DTYPE says otherwise), a JSON string, or any other text (a string).

    Args:
        text: The command-line argument.

    Returns:
        (name, value) where value is a numpy array, bytes or str, ready for `Client.infer`.

    Raises:
        ValueError: The argument is malformed; the message says what is wrong.

    Example:
        >>> name, value = parse_assignment("x1=[[1.0, 2.0], [3.0, 4.0]]")
        >>> name, value.dtype.name, value.shape
        ('x1', 'float32', (2, 2))
    """
    import numpy as np

    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ValueError(f"'{text}': expected NAME=VALUE (for example x=[1.0, 2.0], image=@cat.jpg)")
    name, _, dtype_name = name.partition(":")
    dtype = None
    if dtype_name:
        try:
            dtype = np.dtype(dtype_name)
        except TypeError:
            raise ValueError(f"input '{name}': unknown dtype '{dtype_name}'") from None
        if dtype.kind not in "biuf":
            raise ValueError(f"input '{name}': dtype '{dtype_name}' is not a numeric or bool dtype")
    if raw.startswith("@"):
        if dtype is not None:
            raise ValueError(f"input '{name}': @FILE sends bytes, a dtype does not apply")
        try:
            return name, Path(raw[1:]).read_bytes()
        except OSError as exc:
            raise ValueError(f"input '{name}': cannot read '{raw[1:]}': {exc.strerror or exc}") from None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        if raw[:1] and raw[:1] in _JSON_START:
            raise ValueError(f"input '{name}': invalid JSON '{raw}': {exc.msg} at column {exc.colno}") from None
        value = raw
    if isinstance(value, str):
        if dtype is not None:
            raise ValueError(f"input '{name}': a string cannot have dtype '{dtype_name}'")
        return name, value
    if value is None or isinstance(value, dict):
        raise ValueError(f"input '{name}': expected a number, bool, array, string or @FILE, got '{raw}'")
    try:
        array = np.asarray(value)
    except ValueError:
        raise ValueError(f"input '{name}': the nested lists of '{raw}' are not a rectangular array") from None
    if array.dtype.kind not in "biuf" and array.size:
        raise ValueError(f"input '{name}': array elements must be numbers or bools (all of one kind), got '{raw}'")
    if dtype is None:
        dtype = {"b": np.dtype(np.bool_), "i": np.dtype(np.int32)}.get(array.dtype.kind, np.dtype(np.float32))
        if array.dtype.kind == "i" and array.size and (array.min() < -(2**31) or array.max() >= 2**31):
            raise ValueError(f"input '{name}': {raw} does not fit int32; give a dtype, e.g. {name}:int64=...")
    converted = array.astype(dtype)
    if array.size and dtype.kind in "iu" and array.dtype.kind in "iuf" and not np.array_equal(converted, array):
        raise ValueError(f"input '{name}': {raw} is not representable as {dtype.name}")
    return name, converted


def _jsonable(value: Any) -> Any:
    """A Client result value as JSON: arrays -> nested lists, bytes -> {"b64": ...}."""
    import numpy as np

    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def _infer(args: argparse.Namespace) -> int:
    from rustserve.client import Client, ClientError

    instance: dict[str, Any] = {}
    try:
        for text in args.inputs:
            name, value = parse_assignment(text)
            if name in instance:
                raise ValueError(f"input '{name}' is given twice")
            instance[name] = value
    except ValueError as exc:
        print(f"rustserve: error: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        with Client(args.address, args.servable, args.method, args.version, raise_on_error=True) as client:
            result = client.infer([instance])
    except (ClientError, RuntimeError) as exc:
        print(f"rustserve: error: {exc}", file=sys.stderr, flush=True)
        return 1
    if isinstance(result, dict):
        print(f"rustserve: error: {result['error']}", file=sys.stderr, flush=True)
        return 1
    output = result[0] if result else {}
    if "error" in output:
        print(f"rustserve: error: {output['error']}", file=sys.stderr, flush=True)
        return 1
    # NOTE: the reply's output order is not the method's (a map on the wire): sorted keys make the line stable.
    print(json.dumps({key: _jsonable(value) for key, value in output.items()}, sort_keys=True), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------------
# list and check
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Tensor:
    """A method input or output as `list` shows it: dtype and per-instance shape, None = decided by Python."""

    name: str
    dtype: str | None = None
    shape: list[int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape}

    def __str__(self) -> str:
        if self.dtype is None:
            return f"{self.name}: any"
        return f"{self.name}: {self.dtype}{_shape_text(self.shape)}"


def _shape_text(shape: Sequence[int] | None) -> str:
    if shape is None:
        return ""
    return "[" + ", ".join("?" if dim < 0 else str(dim) for dim in shape) + "]"


def _instance_io(model: dict[str, Any], io: dict[str, Any], index: int, is_input: bool) -> tuple[str, list[int]]:
    """The dtype and per-instance shape of a model input/output (dim 0 dropped when the model batches it)."""
    shape = list(io["shape"])
    batched = model["with_batch_dim"] and not (is_input and index in model["without_batch_dim_inputs"])
    return io["dtype"], shape[1:] if batched and shape else shape


def _describe_version(spec: dict[str, Any], signature: Any) -> dict[str, Any]:
    """One servable version as `list` reports it: its models and its methods' typed inputs and outputs."""
    signatures = [[signature(path) for path in model["files"]] for model in spec["models"]]
    models = [
        {
            "files": [os.path.basename(path) for path in model["files"]],
            "with_batch_dim": model["with_batch_dim"],
            "max_batch_size": model.get("max_batch_size"),
            "subgraphs": [
                {"inputs": subgraph["inputs"], "outputs": subgraph["outputs"]} for subgraph in signatures[index]
            ],
        }
        for index, model in enumerate(spec["models"])
    ]
    methods = []
    for method in spec["methods"]:
        inputs = [_Tensor(name) for name in method["inputs"]]
        # A method input gets the type of the first model input it feeds directly; Python stages accept anything.
        for stage in method["stages"]:
            if stage["kind"] != "model":
                continue
            model = spec["models"][stage["model"]]
            model_inputs = signatures[stage["model"]][stage["subgraph"]]["inputs"]
            for position, source in enumerate(stage["inputs"]):
                target = inputs[source["index"]] if source["stage"] == 0 else None
                if target is not None and target.dtype is None and position < len(model_inputs):
                    target.dtype, target.shape = _instance_io(model, model_inputs[position], position, True)
        outputs = []
        for name, source in zip(method["output_names"], method["outputs"], strict=True):
            tensor = _Tensor(name)
            if source["stage"] == 0:
                tensor.dtype, tensor.shape = inputs[source["index"]].dtype, inputs[source["index"]].shape
            else:
                stage = method["stages"][source["stage"] - 1]
                if stage["kind"] == "model":
                    model = spec["models"][stage["model"]]
                    model_outputs = signatures[stage["model"]][stage["subgraph"]]["outputs"]
                    if source["index"] < len(model_outputs):
                        tensor.dtype, tensor.shape = _instance_io(
                            model, model_outputs[source["index"]], source["index"], False
                        )
            outputs.append(tensor)
        methods.append({"name": method["name"], "inputs": inputs, "outputs": outputs})
    return {"version": spec["version"], "models": models, "methods": methods}


def _model_line(model: dict[str, Any]) -> str:
    def ios(items: Sequence[dict[str, Any]]) -> str:
        return ", ".join(f"{io['name']} {io['dtype']}{_shape_text(io['shape'])}" for io in items)

    parts = [f"{ios(subgraph['inputs'])} -> {ios(subgraph['outputs'])}" for subgraph in model["subgraphs"]]
    batch = f"with_batch_dim={model['with_batch_dim']}"
    if model["with_batch_dim"] and model.get("max_batch_size"):
        batch += f", max_batch_size={model['max_batch_size']}"
    return f"model {';'.join(model['files'])} ({batch}): {' | '.join(parts)}"


def _servable_names(args: argparse.Namespace, directory: str) -> list[str]:
    """The servables to load: those of `--servable`, else every one of DIR; DIR itself (named `--model-name`) when it
    is one servable folder."""
    from rustserve.server import Server, _loader

    model_name = args.model_name
    if model_name is not None and (not model_name or any(char in model_name for char in "./\\")):
        raise RuntimeError(f"--model-name must be a name without '.', '/' or '\\', got '{model_name}'")
    if _loader.is_servable_folder(directory):
        name = model_name or os.path.basename(directory)
        if args.servable and name not in args.servable:
            raise RuntimeError(f"'{directory}' is one servable, served as '{name}': --servable names none other")
        return [name]
    names = args.servable or Server.servable_names(directory)
    if not names:
        raise RuntimeError(f"no servable found in '{directory}' (no subdirectory holds a servable_config.py)")
    return names


def _init_native(log_level: str) -> Any:
    """The native module with logging and ONNX Runtime initialised."""
    from rustserve.server import _ort

    native = _native()
    native.init_logging(log_level)
    native.init_onnxruntime(_ort.find_onnxruntime_library())
    return native


def _list(args: argparse.Namespace) -> int:
    from rustserve.server import _loader

    directory = os.path.abspath(args.dir)
    try:
        names = _servable_names(args, directory)
        native = _init_native(args.log_level)
    except Exception as exc:
        print(f"rustserve: error: {exc}", file=sys.stderr, flush=True)
        return 1
    report: list[dict[str, Any]] = []
    for name in names:
        entry: dict[str, Any] = {"name": name, "directory": _loader.servable_folder(directory, name), "versions": []}
        try:
            specs = _loader.ServableLoader().load_all_versions(directory, name)
            entry["versions"] = [_describe_version(dict(spec), native.onnx_signature) for spec in specs]
        except Exception as exc:
            entry["error"] = str(exc)
        report.append(entry)
    if args.json:
        for entry in report:
            for version in entry["versions"]:
                for method in version["methods"]:
                    method["inputs"] = [tensor.as_dict() for tensor in method["inputs"]]
                    method["outputs"] = [tensor.as_dict() for tensor in method["outputs"]]
        print(json.dumps({"directory": directory, "servables": report}, indent=2), flush=True)
    else:
        lines = []
        for entry in report:
            lines.append(f"{entry['name']}  ({entry['directory']})")
            if "error" in entry:
                lines.append(f"  error: {entry['error']}")
            for version in entry["versions"]:
                lines.append(f"  version {version['version']}")
                lines.extend(f"    {_model_line(model)}" for model in version["models"])
                for method in version["methods"]:
                    inputs = ", ".join(str(tensor) for tensor in method["inputs"])
                    outputs = ", ".join(str(tensor) for tensor in method["outputs"])
                    lines.append(f"    method {method['name']}({inputs}) -> ({outputs})")
        print("\n".join(lines), flush=True)
    return 1 if any("error" in entry for entry in report) else 0


def _check(args: argparse.Namespace) -> int:
    from rustserve.server import _loader

    directory = os.path.abspath(args.dir)
    try:
        names = _servable_names(args, directory)
        native = _init_native(args.log_level)
    except Exception as exc:
        print(f"rustserve: error: {exc}", file=sys.stderr, flush=True)
        return 1
    failures = 0
    for name in names:
        try:
            specs = _loader.ServableLoader().load_all_versions(directory, name)
            # A throwaway server runs every start-up check (models opened, methods against signatures) and
            # never listens.
            scratch = native.Server()
            try:
                scratch.add_servables(specs)
            finally:
                scratch.stop()
        except Exception as exc:
            failures += 1
            print(f"FAIL  {name}: {exc}", flush=True)
            continue
        versions = ", ".join(str(spec["version"]) for spec in specs)
        methods = ", ".join(method["name"] for method in specs[0]["methods"])
        print(f"ok    {name}: version(s) {versions}; methods {methods}", flush=True)
    print(f"{len(names) - failures} of {len(names)} servable(s) ok", flush=True)
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `rustserve` command line.

    Args:
        argv: The arguments without the program name; None = `sys.argv[1:]`.

    Returns:
        The exit status.

    Example:
        >>> main(["check", "--dir", "examples/servables"])  # doctest: +SKIP
        0
    """
    parser = _parser()
    args = parser.parse_args(argv)
    handlers = {"start": _start, "infer": _infer, "list": _list, "check": _check, "agent": _agent, "split": _split}
    handler = handlers.get(args.command)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except BrokenPipeError:  # `rustserve list ... | head`: the reader left, which is not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
