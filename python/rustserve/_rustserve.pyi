"""Type stubs for the native extension `rustserve._rustserve` (built from rust/src by maturin)."""

from collections.abc import Callable, Sequence
from typing import Any, Final, TypedDict, final

__all__ = [
    "DEFAULTS",
    "ModelCallError",
    "RustServeError",
    "ServableStartError",
    "Server",
    "ServerStartError",
    "__version__",
    "agent_ranks",
    "agents_ready",
    "init_logging",
    "init_onnxruntime",
    "log",
    "log_format",
    "model_call",
    "onnx_signature",
    "run_agent",
    "run_worker",
    "start_agent_hub",
    "stop_agent_hub",
    "stop_agent_hubs",
]

__version__: str

class _Defaults(TypedDict):
    grpc_address: str
    rest_address: str
    max_msg_mb_size: int
    request_timeout_s: float
    drain_timeout_s: float
    max_enqueued_requests: int
    max_queued_instances: int
    max_queued_python_calls: int
    max_in_flight_mb: int
    max_connections: int
    connection_idle_timeout_s: float

DEFAULTS: Final[_Defaults]
"""The server's defaults (addresses, limits, timeouts), as the native modules that apply them define them."""

class RustServeError(RuntimeError):
    """Base class of every error raised by rustserve's native core."""

class ServableStartError(RustServeError):
    """A servable failed to load or validate at start-up (the message names the file and the cause)."""

class ServerStartError(RustServeError):
    """A gRPC or REST listener could not be started (bad address, port in use, already running)."""

class ModelCallError(RustServeError):
    """`Model.call` from a Python stage failed."""

def init_onnxruntime(library_path: str) -> None:
    """Loads ONNX Runtime from `library_path` (the libonnxruntime inside the installed wheel); idempotent."""

def onnx_signature(model_path: str) -> dict[str, list[dict[str, Any]]]:
    """Reads a model's inputs and outputs: {"inputs": [{"name", "dtype", "shape"}], "outputs": [...]}.

    Dims that are symbolic are reported as -1.
    """

@final
class Server:
    """The native server: servables, executors and the gRPC / REST listeners, on a private tokio runtime."""

    def __new__(cls, worker_threads: int = 0) -> Server: ...
    def add_servables(self, specs: Sequence[dict[str, Any]]) -> None:
        """Loads and validates servable versions described by spec dicts (see rustserve.server._spec)."""
    def start_grpc(
        self, address: str, max_msg_mb_size: int, tls: tuple[str, str, str | None, bool] | None = None
    ) -> int:
        """Starts the MindSpore gRPC service on `address` (ip:port); returns the bound port. `tls` is
        `(certificate, private_key, custom_ca, verify_client)` with PEM file paths, or None for plaintext."""
    def start_rest(
        self, address: str, max_msg_mb_size: int, tls: tuple[str, str, str | None, bool] | None = None
    ) -> int:
        """Starts the REST server on `address` (ip:port); returns the bound port. `tls` as for `start_grpc`."""
    def set_load_failure(self, name: str, reason: str) -> None:
        """Records that servable `name` failed to load: not ready, UNAVAILABLE in the repository index."""
    def set_request_timeout(self, seconds: float) -> None:
        """Sets the per-request timeout in seconds (> 0): a request still running then fails."""
    def set_max_queued_instances(self, limit: int) -> None:
        """Bounds the instances queued per model (subgraph): requests needing a full model queue fail at once."""
    def set_max_enqueued_requests(self, limit: int) -> None:
        """Bounds the requests in flight (MindSpore's `set_max_enqueued_requests`): further requests fail at once."""
    def set_max_queued_python_calls(self, limit: int) -> None:
        """Bounds the Python stage calls waiting for an executor: further calls fail at once."""
    def set_connection_limits(self, max_connections: int, idle_timeout_s: float) -> None:
        """Sets how many connections each listener started later keeps open, and when a silent one is closed."""
    def set_max_in_flight_bytes(self, limit: int) -> None:
        """Bounds the bytes of request bodies held at once; requests past it are refused (429 / RESOURCE_EXHAUSTED)."""
    def set_drain_timeout(self, seconds: float) -> None:
        """Sets how long `stop` lets requests in flight finish, in seconds (>= 0)."""
    def set_trace_otlp_endpoint(self, endpoint: str) -> None:
        """Exports OpenTelemetry traces of every predict request to the OTLP/gRPC collector at `endpoint`."""
    def servables(self) -> list[tuple[str, int, list[str]]]:
        """(name, version, method names) of every loaded servable version."""
    def stop(self) -> bool:
        """Stops the listeners and executors; idempotent. False when requests in flight outlived the drain timeout."""
    def is_running(self) -> bool: ...
    def set_repository(self, loader: Any, api_key: str | None = None) -> None:
        """Installs the model repository of the Open Inference Protocol's repository extension.

        `loader.names()` lists the servable names it holds; `loader.load(name)` returns the spec dicts of every version
        of one servable. Both are called on a blocking thread. Load and unload are refused until this is called;
        `api_key` (not empty) makes them require `authorization: Bearer <api_key>`.
        """
    def worker_pids(self) -> list[int]:
        """Pids of the running Python worker processes (a restarting worker has none for a moment)."""

def model_call(model_key: str, subgraph: int, instances: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """Runs a declared model on per-instance inputs through its batcher (used by `Model.call`)."""

def start_agent_hub(servable: str, address: str, ranks: Sequence[tuple[int, str, str]], wait_seconds: float) -> None:
    """Starts the hub where the agents of a distributed servable register (`distributed.start_servable`)."""

def stop_agent_hub(servable: str) -> None:
    """Stops the hub of one distributed servable (its start failed)."""

def stop_agent_hubs() -> None:
    """Stops every distributed servable hub of this process."""

def agents_ready(servable: str) -> bool:
    """Whether every rank of a distributed servable has an agent registered and heard from lately."""

def agent_ranks(address: str, server_id: str, timeout_seconds: float) -> list[tuple[int, str]]:
    """`(rank_id, device_id)` of the rank table entries the main process at `address` lists for `server_id`."""

def run_agent(
    model_file: str,
    rank_id: int,
    listen: str,
    distributed_address: str,
    group_config: str | None = None,
    device_id: int | None = None,
    intra_op_threads: int | None = None,
) -> None:
    """Serves one rank of a distributed servable until SIGINT/SIGTERM (`rustserve agent`)."""

def init_logging(level: str = "info", format: str = "text") -> None:
    """Routes rustserve's log lines to stderr with a RUST_LOG-style filter (RUST_LOG overrides it); first call wins.

    `format` is "text" (colour only when stderr is a terminal) or "json" (one object per line: timestamp, level,
    target, message and the event's fields); anything else raises ValueError.
    """

def log_format() -> str:
    """The format the installed log lines take: "text" or "json" ("text" before `init_logging`)."""

def log(level: str, message: str) -> None:
    """Logs one line (target `rustserve`) through the installed subscriber; level: error, warn, info, debug, trace."""

def run_worker(
    socket_path: str,
    functions: Sequence[tuple[str, int, str, Callable[..., Any]]],
    error: str | None = None,
) -> bool:
    """The loop of a Python worker process (`python -m rustserve.worker`): serves the server's stage calls.

    `functions` are (method, 1-based stage index, "<servable>.<name>", callable) as servable_config.py registered
    them. With `error`, only reports to the server that the worker could not start. Returns False when the setup
    failed, True after the server closed the connection.
    """
