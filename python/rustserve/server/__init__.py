"""rustserve's server API, compatible with `mindspore_serving.server`.

`start_servables` loads servables (importing their servable_config.py), `start_grpc_server` and
`start_restful_server` open the listeners, `stop` shuts everything down. These module functions drive one default
`Server`, which owns the native server (created on first use), the loader, the listeners, the signal handlers and
the thread that keeps the process alive; `rustserve start` builds a `Server` of its own. As in MindSpore Serving, a
script that started serving and returns keeps serving until SIGINT or SIGTERM (or `stop()`).

Example:
    >>> from rustserve import server
    >>> server.start_servables(server.ServableStartConfig("servables", "add"))
    >>> server.start_grpc_server("127.0.0.1:5500")
    >>> server.start_restful_server("127.0.0.1:1500")
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import functools
import importlib
import inspect
import logging
import math
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType, ModuleType
from typing import Any, Concatenate, ParamSpec, TypeVar

from rustserve.server import _log, register
from rustserve.server._loader import DeviceType, ServableLoader, discover_servables, newest_version_number
from rustserve.server._spec import ServableSpec
from rustserve.server.register import _check_and_as_int_tuple_list, _check_bool, _check_int, _check_str

__all__ = [
    "SSLConfig",
    "ServableStartConfig",
    "Server",
    "register",
    "set_connection_limits",
    "set_drain_timeout",
    "set_max_enqueued_requests",
    "set_max_in_flight_mb",
    "set_max_queued_instances",
    "set_max_queued_python_calls",
    "set_request_timeout",
    "start_grpc_server",
    "start_restful_server",
    "start_servables",
    "stop",
]

_logger = logging.getLogger("rustserve")

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _native() -> ModuleType:
    """The native extension, imported on first use (so the pure-Python parts work without it)."""
    return importlib.import_module("rustserve._rustserve")


class SSLConfig:
    """Server TLS settings for `start_grpc_server` / `start_restful_server` (MindSpore-compatible signature).

    The files are read when the server starts; a missing file, a file that is not PEM, or a key that does not match
    the certificate fails that start call with a message naming the file.

    Args:
        certificate: PEM certificate chain file (leaf first).
        private_key: PEM private key file (PKCS#8, PKCS#1 or SEC1).
        custom_ca: PEM root certificates that client certificates must chain to; required when `verify_client` is
            True, ignored otherwise.
        verify_client: Whether clients must present a certificate signed by `custom_ca` (mutual TLS).

    Raises:
        RuntimeError: A parameter is invalid.

    Example:
        >>> ssl = server.SSLConfig("server.crt", "server.key")
        >>> server.start_grpc_server("127.0.0.1:5500", ssl_config=ssl)  # doctest: +SKIP
    """

    def __init__(
        self, certificate: str, private_key: str, custom_ca: str | None = None, verify_client: bool = False
    ) -> None:
        _check_str("certificate", certificate)
        _check_str("private_key", private_key)
        _check_bool("verify_client", verify_client)
        if verify_client:
            _check_str("custom_ca", custom_ca)
        self.certificate = certificate
        self.private_key = private_key
        self.custom_ca = custom_ca
        self.verify_client = verify_client


class ServableStartConfig:
    """What to start: one servable version and where it runs.

    Args:
        servable_directory: The directory that holds the servable's directory.
        servable_name: The servable name (its directory name).
        device_ids: CUDA device id(s) for `device_type="GPU"` (default 0).
        version_number: The version to load; 0 = the newest version directory.
        device_type: "GPU", "CPU" or None (= CPU), case ignored; "Ascend" is not supported by rustserve.
        num_parallel_workers: Python stage executors in [0,64]: n > 1 runs the servable's Python stages in n
            worker processes (`python -m rustserve.worker`), never in the server process, so a stage that crashes
            or hangs costs only its worker (restarted); 0 and 1 use one executor, see `python_in_process`.
        dec_key: Model decryption key (16, 24 or 32 bytes); validated, then refused: decryption is unsupported.
        dec_mode: 'AES-GCM' or 'AES-CBC'.
        python_in_process: With one executor (`num_parallel_workers` 0 or 1): True (default) runs the stages on the
            server's own Python thread (lowest latency, but a stage that crashes the interpreter ends the server);
            False runs them in one worker process. Ignored for n > 1 (always worker processes).

    Raises:
        RuntimeError: A parameter is invalid (MindSpore Serving's texts).
        NotImplementedError: `dec_key` is given.

    Example:
        >>> config = server.ServableStartConfig("servables", "resnet50", device_ids=0, device_type="GPU")
    """

    def __init__(
        self,
        servable_directory: str,
        servable_name: str,
        device_ids: int | Sequence[int] | None = None,
        version_number: int = 0,
        device_type: str | None = None,
        num_parallel_workers: int = 0,
        dec_key: bytes | None = None,
        dec_mode: str = "AES-GCM",
        python_in_process: bool = True,
    ) -> None:
        _check_str("servable_directory", servable_directory)
        servable_directory = os.path.abspath(servable_directory)
        _check_str("servable_name", servable_name)
        _check_int("version_number", version_number, 0)
        _check_int("num_parallel_workers", num_parallel_workers, 0, 64)
        if dec_key is not None:
            if not isinstance(dec_key, bytes):
                raise RuntimeError(f"Parameter 'dec_key' should be bytes, but actually {type(dec_key)}")
            if not dec_key:
                raise RuntimeError("Parameter 'dec_key' should not be empty bytes")
            if len(dec_key) not in (16, 24, 32):
                raise RuntimeError(f"Parameter 'dec_key' length {len(dec_key)} expected to be 16, 24 or 32")
        _check_bool("python_in_process", python_in_process)
        _check_str("dec_mode", dec_mode)
        if dec_mode not in ("AES-GCM", "AES-CBC"):
            raise RuntimeError("Parameter 'dec_mode' expected to be 'AES-GCM' or 'AES-CBC'")
        ids = _check_and_as_int_tuple_list("device_ids", [] if device_ids is None else device_ids, 0)
        if device_type is None:
            device_type = "None"
        _check_str("device_type", device_type)
        if device_type.lower() not in ("none", "ascend", "gpu", "cpu"):
            raise RuntimeError(
                f"Unsupported device type '{device_type}', only support 'Ascend', 'GPU', 'CPU' and None, case ignored"
            )
        if dec_key is not None:
            raise NotImplementedError(
                "Parameter 'dec_key' is not supported: rustserve does not support model decryption, "
                "serve unencrypted ONNX models"
            )
        self._servable_directory = servable_directory
        self._servable_name = servable_name
        self._version_number = version_number
        self._device_ids = ids
        self._device_type = device_type.lower()
        self._num_parallel_workers = 1 if not ids and not num_parallel_workers else num_parallel_workers
        self._dec_key = dec_key
        self._dec_mode = dec_mode
        self._python_in_process = python_in_process

    @property
    def servable_directory(self) -> str:
        """The absolute servable directory (the parent of the servable's own directory)."""
        return self._servable_directory

    @property
    def servable_name(self) -> str:
        """The servable name."""
        return self._servable_name

    @property
    def version_number(self) -> int:
        """The version to start; 0 = the newest version directory."""
        return self._version_number

    @property
    def device_ids(self) -> tuple[int, ...]:
        """The CUDA device ids (empty: device 0 for GPU)."""
        return self._device_ids

    @property
    def device_type(self) -> str:
        """One of "none", "ascend", "gpu", "cpu"."""
        return self._device_type

    @property
    def num_parallel_workers(self) -> int:
        """Python stage executors: n > 1 worker processes."""
        return self._num_parallel_workers

    @property
    def python_in_process(self) -> bool:
        """With one executor: run the stages on the server's Python thread (True) or in a worker process."""
        return self._python_in_process

    @property
    def dec_key(self) -> bytes | None:
        """The model decryption key (always None: a key is refused)."""
        return self._dec_key

    @property
    def dec_mode(self) -> str:
        """The decryption mode, 'AES-GCM' or 'AES-CBC'."""
        return self._dec_mode


@dataclass
class _Deployment:
    """One (servable, version) to start, after merging the configs that name it."""

    directory: str
    name: str
    version: int
    device_type: DeviceType
    device_ids: set[int] = field(default_factory=set)
    num_parallel_workers: int = 0
    python_in_process: bool = True


def _resolve_device_type(config: ServableStartConfig) -> DeviceType:
    if config.device_type in ("none", "cpu"):
        return "cpu"
    from rustserve.server import _ort

    gpu = _ort.cuda_provider_available()
    if config.device_type == "gpu" and gpu:
        return "gpu"
    supported = "None, 'GPU' or 'CPU'" if gpu else "None or 'CPU'"
    shown = {"gpu": "GPU", "ascend": "Ascend"}[config.device_type]
    raise RuntimeError(
        f"The device type '{shown}' of servable name {config.servable_name} is inconsistent with current running "
        f"environment, supported device type: {supported}"
    )


def _check_servable_location(directory: str, name: str) -> None:
    config_dir = os.path.join(directory, name)
    if not os.path.isdir(config_dir):
        raise RuntimeError(
            f"Check servable config failed, directory '{config_dir}' not exist, servable directory '{directory}', "
            f"servable name '{name}'"
        )
    config_file = os.path.join(config_dir, "servable_config.py")
    if not os.path.isfile(config_file):
        # NOTE: two spaces before "servable directory", as in MindSpore Serving.
        raise RuntimeError(
            f"Check servable config failed, file '{config_file}' not exist,  servable directory '{directory}', "
            f"servable name '{name}'"
        )


def _merge_configs(configs: Sequence[ServableStartConfig]) -> list[_Deployment]:
    """Groups configs by servable, resolves version 0 to the newest version and merges same-version configs."""
    directories: dict[str, str] = {}
    deployments: dict[tuple[str, int], _Deployment] = {}
    for config in configs:
        name = config.servable_name
        known = directories.get(name)
        if known is None:
            _check_servable_location(config.servable_directory, name)
            directories[name] = config.servable_directory
        elif known != config.servable_directory:
            raise RuntimeError(
                f"The servable directory of servable name {name} is different in multiple configurations, "
                f"servable directory: {config.servable_directory} and {known}"
            )
        version = config.version_number or newest_version_number(config.servable_directory, name) or 1
        deployment = deployments.get((name, version))
        if deployment is None:
            deployment = _Deployment(config.servable_directory, name, version, _resolve_device_type(config))
            deployments[(name, version)] = deployment
        deployment.device_ids.update(config.device_ids)
        deployment.num_parallel_workers = max(deployment.num_parallel_workers, config.num_parallel_workers)
        deployment.python_in_process = deployment.python_in_process and config.python_in_process
    return list(deployments.values())


def _hide_directory(text: str, directory: str) -> str:
    """`text` with the absolute servable directory left out: errors that clients see name servables and files only."""
    return text.replace(directory + os.sep, "").replace(directory, "<servable directory>")


class _Repository:
    """The servable directory behind the Open Inference Protocol's model-repository extension.

    The native server calls it on a blocking thread (never a tokio worker): `names()` lists the servables of the
    directory, `load(name)` imports the servable's servable_config.py afresh and returns the specs of every version
    directory, with ONNX Runtime initialised.

    Args:
        directory: The servable directory.
        device_type: Where the models of loaded servables run.
        device_ids: CUDA devices for "gpu".
        num_parallel_workers: Python stage executors per loaded servable version (n > 1: n worker processes,
            which stop when that version is unloaded or replaced).
        servables: The only servables that may ever be loaded (`--servable`); None: every one of the directory.
        python_in_process: With one executor, run the stages on the server's Python thread (or a worker process).
    """

    def __init__(
        self,
        directory: str,
        device_type: DeviceType = "cpu",
        device_ids: Sequence[int] = (),
        num_parallel_workers: int = 0,
        servables: Sequence[str] | None = None,
        python_in_process: bool = True,
    ) -> None:
        self.directory = os.path.abspath(directory)
        self.device_type: DeviceType = device_type
        self.device_ids = list(device_ids)
        self.num_parallel_workers = num_parallel_workers
        self.servables = None if servables is None else frozenset(servables)
        self.python_in_process = python_in_process

    def names(self) -> list[str]:
        """The servables of the directory (subdirectories with a servable_config.py), `servables` only if given.

        Returns:
            The names, sorted.
        """
        from rustserve.server._loader import discover_servables

        found = discover_servables(self.directory)
        return found if self.servables is None else [name for name in found if name in self.servables]

    def load(self, name: str) -> list[ServableSpec]:
        """Imports servable `name` afresh and builds the specs of all its versions.

        Args:
            name: The servable name.

        Returns:
            One spec per version directory.

        Raises:
            RuntimeError: The servable may not be loaded, or its config or a model file is missing or broken (the
                loader's texts, without the directory's absolute path).
        """
        if self.servables is not None and name not in self.servables:
            raise RuntimeError(f"servable '{name}' is not one this server was started to serve")
        try:
            specs = ServableLoader().load_all_versions(
                self.directory,
                name,
                device_type=self.device_type,
                device_ids=self.device_ids,
                num_parallel_workers=self.num_parallel_workers,
                python_in_process=self.python_in_process,
            )
            if any(spec["models"] for spec in specs):
                from rustserve.server import _ort

                _native().init_onnxruntime(_ort.find_onnxruntime_library())
                if self.device_type == "gpu":
                    _ort.preload_cuda_libraries()
        except Exception as exc:
            raise RuntimeError(_hide_directory(str(exc), self.directory)) from None
        return specs


_PORT_RE = re.compile(r"\s*[+-]?\d+")


def _check_address(address: str, server_tag: str) -> None:
    """MindSpore Serving's `common::CheckAddress` (ip:port), with its texts."""
    position = address.rfind(":")
    if position < 0:
        raise RuntimeError(f"Serving Error: The format of the {server_tag} address '{address}' is illegal")
    if position == 0 or position == len(address) - 1:
        raise RuntimeError(f"Serving Error: Missing ip or port of the {server_tag} address '{address}'")
    match = _PORT_RE.match(address[position + 1 :])  # std::stoi: leading number, rest ignored
    if match is None:
        raise RuntimeError(f"Serving Error: The type of {server_tag} address '{address}' port is not a number")
    if not 1 <= int(match.group()) <= 65535:
        raise RuntimeError(
            f"Serving Error: The port of the {server_tag} address '{address}' is out of legal range [1 ~ 65535]"
        )


def _check_ssl_config(ssl_config: SSLConfig | None) -> tuple[str, str, str | None, bool] | None:
    """The native `tls` argument for `ssl_config`: (certificate, private_key, custom_ca, verify_client) or None."""
    if ssl_config is None:
        return None
    if not isinstance(ssl_config, SSLConfig):
        raise RuntimeError("The type of ssl_config should be type of SSLConfig")
    return (ssl_config.certificate, ssl_config.private_key, ssl_config.custom_ca, ssl_config.verify_client)


def _check_seconds(name: str, seconds: float, allow_zero: bool) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise RuntimeError(f"Parameter '{name}' should be int or float, but actually {type(seconds)}")
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise RuntimeError(f"Parameter '{name}' should be {bound} and finite, but actually {seconds}")
    return float(seconds)


# ---------------------------------------------------------------------------------------------------------------
# The server and its lifetime.
# ---------------------------------------------------------------------------------------------------------------

# A stop that a signal started ends the process within the drain timeout plus this, whatever hangs.
STOP_GRACE_S = 4.5
# The exit status of a stop that had to abandon requests or calls in flight (see docs/10-operations.md).
EXIT_ABANDONED = 3
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _defaults() -> Mapping[str, Any]:
    """The native server's defaults (`rustserve._rustserve.DEFAULTS`): ports, limits and timeouts are defined there."""
    defaults: Mapping[str, Any] = _native().DEFAULTS
    return defaults


# Signal dispositions belong to the process: one handler for every serving Server, installed with the first and
# removed with the last, and the handlers it replaced, saved once (never our own handler, so a signal cannot loop).
_serving: list[Server] = []
_original_handlers: dict[int, Any] = {}


def _on_signal(signum: int, frame: FrameType | None) -> None:
    """The SIGINT / SIGTERM handler while servers serve: every serving server is asked to stop."""
    # NOTE: the handler only asks each keeper thread to stop. Stopping here, on the interrupted main thread, could
    # wait for a lock that the interrupted code holds (an import, a print, the logging lock, ours) and never return.
    servers = list(_serving)
    for server in servers:
        server._note_signal(signum)
    if any(server._foreground for server in servers) or not threading.main_thread().is_alive():
        return  # `rustserve start`, or a script that returned: stopping is all there is to do
    # The main thread still runs user code: give the signal its usual effect there too.
    previous = _original_handlers.get(signum)
    if callable(previous):
        previous(signum, frame)
    elif previous in (signal.SIG_DFL, None):
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _stop_on_except(
    method: Callable[Concatenate[Server, _P], _R],
) -> Callable[Concatenate[Server, _P], _R]:
    """MindSpore semantics: a failing start call stops the whole server before raising."""

    @functools.wraps(method)
    def wrapper(self: Server, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except BaseException:
            self.stop()
            raise

    return wrapper


class Server:
    """One rustserve server: the native server, the servable loader, the listeners, the SIGINT / SIGTERM handlers and
    the thread that keeps the process alive while it serves.

    The module functions (`start_servables`, `start_grpc_server`, `stop`, the `set_*` limits) drive one default
    instance, as MindSpore Serving's do; `rustserve start` builds its own and calls `serve()`. The native server is
    created on first use and again after a `stop()`, except after SIGINT / SIGTERM: a signal's stop is final.

    Example:
        >>> srv = server.Server()
        >>> srv.start_servables(server.ServableStartConfig("servables", "add"))  # doctest: +SKIP
        >>> srv.start_grpc_server("127.0.0.1:5500")  # doctest: +SKIP
        >>> raise SystemExit(srv.serve())  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._native_server: Any = None
        self._loader: ServableLoader | None = None
        self._grpc_address: str | None = None
        self._rest_address: str | None = None
        self._stopped = threading.Event()  # set once a stop has finished
        self._stop_running = False  # a stop is under way (on the keeper thread or another caller's)
        self._keeper: threading.Thread | None = None
        # The signal handler wakes the keeper through this pipe: a write needs no lock the interrupted code may hold.
        self._wake: tuple[int, int] | None = None
        self._handles_signals = False
        self._io_threads = 0  # 0: the native default (RUSTSERVE_IO_THREADS, else half the cores)
        self._drain_timeout_s: float | None = None  # None: the native default, read when the keeper starts
        self._stop_signal: int | None = None  # the SIGINT/SIGTERM that asked this process to stop: no restart after it
        self._abandoned = False  # the last stop gave up on requests still in flight
        self._foreground = False  # the main thread only serves (the CLI): a signal just stops, it never raises
        self._atexit_registered = False

    # --- the native server and the loader ---------------------------------------------------------------------

    def _server(self) -> Any:
        with self._lock:
            if self._stop_signal is not None:
                name = signal.Signals(self._stop_signal).name
                raise RuntimeError(f"Serving Error: the server is stopping ({name} received), it cannot start again")
            if self._native_server is None:
                native = _native()
                native.init_logging("warn")  # a no-op when the CLI already chose a level
                self._native_server = native.Server(self._io_threads)
                self._drain_timeout_s = native.DEFAULTS["drain_timeout_s"]
                self._abandoned = False
            return self._native_server

    def _get_loader(self) -> ServableLoader:
        with self._lock:
            if self._loader is None:
                self._loader = ServableLoader()
            return self._loader

    def _add_specs(self, specs: Sequence[ServableSpec], error_prefix: str = "") -> None:
        """Hands loaded specs to the native server (initialising ONNX Runtime first when a model is declared)."""
        native = _native()
        try:
            if any(spec["models"] for spec in specs):
                from rustserve.server import _ort

                native.init_onnxruntime(_ort.find_onnxruntime_library())
                if any(model["device_type"] == "gpu" for spec in specs for model in spec["models"]):
                    _ort.preload_cuda_libraries()
            self._server().add_servables(list(specs))
        except RuntimeError as exc:
            # Native errors (RustServeError and its subclasses) and the loader's keep their class.
            if error_prefix:
                raise type(exc)(error_prefix + str(exc)) from exc
            raise
        except Exception as exc:
            # Anything else (a malformed spec dict) becomes the RuntimeError MindSpore Serving scripts catch.
            raise RuntimeError(error_prefix + str(exc)) from exc
        self._keep_serving()

    def set_io_threads(self, count: int) -> None:
        """Sets the I/O threads of the native server, which must not exist yet (`rustserve start --io-threads`).

        Args:
            count: Threads for network I/O and codecs; 0 = `$RUSTSERVE_IO_THREADS`, else half the cores (1-4).

        Raises:
            RuntimeError: The native server exists already.
        """
        with self._lock:
            if self._native_server is not None:
                raise RuntimeError("the I/O thread count must be set before the server starts")
            self._io_threads = count

    def set_log_level(self, level: str, log_format: str = "text") -> None:
        """Routes the native log lines to stderr with a RUST_LOG-style filter (RUST_LOG overrides it); the first call
        in a process wins (a server started without one logs warnings and errors, as text).

        Args:
            level: error, warn, info, debug, trace or a RUST_LOG-style filter.
            log_format: "text" (colour only when stderr is a terminal) or "json": one object per line with
                timestamp, level, target, message and the event's fields; the `rustserve` logger's records and the
                lines `rustserve start` writes to stderr take it too.

        Raises:
            ValueError: `log_format` is neither "text" nor "json".
        """
        _log.configure(level, log_format)

    # --- servables -----------------------------------------------------------------------------------------------

    @_stop_on_except
    def start_servables(self, servable_configs: ServableStartConfig | Sequence[ServableStartConfig]) -> None:
        """Loads one or more servables into the server (importing each servable_config.py once).

        Configs that name the same servable and version are merged (device ids united). After this call the process
        keeps serving until SIGINT/SIGTERM or `stop()`, even when the calling script returns.

        Args:
            servable_configs: One `ServableStartConfig` or a list/tuple of them.

        Raises:
            RuntimeError: Invalid configs, or a servable failed to load (`Fail to start workers: <cause>`, e.g.
                `import <name>.servable_config failed, ...`). The server is stopped first.

        Example:
            >>> server.start_servables([server.ServableStartConfig("servables", "add")])
        """
        if isinstance(servable_configs, ServableStartConfig):
            servable_configs = (servable_configs,)
        if not isinstance(servable_configs, (tuple, list)):
            raise RuntimeError(
                f"Parameter 'servable_configs' should be ServableStartConfig, list or tuple of ServableStartConfig, "
                f"but actually {type(servable_configs)}"
            )
        for config in servable_configs:
            if not isinstance(config, ServableStartConfig):
                raise RuntimeError(
                    f"The item of parameter 'servable_configs' should be ServableStartConfig, but actually "
                    f"{type(config)}"
                )
        deployments = _merge_configs(servable_configs)
        loader = self._get_loader()
        specs: list[ServableSpec] = []
        try:
            for deployment in deployments:
                specs.extend(
                    loader.load(
                        deployment.directory,
                        deployment.name,
                        deployment.version,
                        device_type=deployment.device_type,
                        device_ids=sorted(deployment.device_ids),
                        num_parallel_workers=deployment.num_parallel_workers,
                        python_in_process=deployment.python_in_process,
                    )
                )
        except RuntimeError as exc:
            raise RuntimeError(f"Fail to start workers: {exc}") from exc
        self._add_specs(specs, "Fail to start workers: ")

    @staticmethod
    def servable_names(directory: str) -> list[str]:
        """The servables of `directory`: its subdirectories that hold a servable_config.py.

        Args:
            directory: The servable directory.

        Returns:
            The names, sorted.
        """
        return discover_servables(directory)

    def add_servable(
        self,
        directory: str,
        name: str,
        device_type: DeviceType = "cpu",
        device_ids: Sequence[int] = (),
        num_parallel_workers: int = 0,
        python_in_process: bool = True,
    ) -> list[ServableSpec]:
        """Loads every version of one servable into the server (`rustserve start`); unlike `start_servables`, a
        failure leaves the server and the servables loaded before as they are.

        Args:
            directory: The absolute servable directory.
            name: The servable name.
            device_type: Where its models run.
            device_ids: CUDA devices for "gpu".
            num_parallel_workers: Python stage executors per version (n > 1: n worker processes).
            python_in_process: With one executor, run the stages on the server's Python thread (or a worker process).

        Returns:
            The specs of its versions, oldest first.

        Raises:
            RuntimeError: The config, a model or a worker process failed (the loader's and the native texts).
        """
        # NOTE: a loader of its own, dropped on return: the server's would keep the imported stage functions alive,
        # and a repository reload must be able to release them.
        versions = ServableLoader().load_all_versions(
            directory,
            name,
            device_type=device_type,
            device_ids=device_ids,
            num_parallel_workers=num_parallel_workers,
            python_in_process=python_in_process,
        )
        self._add_specs(versions)
        return versions

    def set_load_failure(self, directory: str, name: str, error: BaseException) -> None:
        """Records that servable `name` failed to load: `/v2/health/ready` answers "not ready" and the repository index
        lists it as UNAVAILABLE with `error`'s text, without the directory's absolute path.

        Args:
            directory: The absolute servable directory.
            name: The servable name.
            error: Why it failed.
        """
        self._server().set_load_failure(name, _hide_directory(str(error), directory))

    def enable_repository(
        self,
        directory: str,
        device_type: DeviceType = "cpu",
        device_ids: Sequence[int] = (),
        num_parallel_workers: int = 0,
        servables: Sequence[str] | None = None,
        api_key: str | None = None,
        python_in_process: bool = True,
    ) -> None:
        """Lets the model-repository extension (`POST /v2/repository/models/<name>/load`, gRPC `RepositoryModelLoad`)
        load, reload and unload the servables of `directory` while the server runs (`--model-control-mode explicit`);
        without this call, load and unload are refused.

        Args:
            directory: The servable directory.
            device_type: Where the models of loaded servables run.
            device_ids: CUDA devices for "gpu".
            num_parallel_workers: Python stage executors per loaded servable version (n > 1: n worker processes).
            servables: The only servables that may be loaded; None: every servable of the directory.
            api_key: When given, load and unload need `authorization: Bearer <api_key>`.
            python_in_process: With one executor, run the stages on the server's Python thread (or a worker process).
        """
        repository = _Repository(directory, device_type, device_ids, num_parallel_workers, servables, python_in_process)
        self._server().set_repository(repository, api_key)

    # --- listeners -----------------------------------------------------------------------------------------------

    @_stop_on_except
    def start_grpc_server(self, address: str, max_msg_mb_size: int = 100, ssl_config: SSLConfig | None = None) -> None:
        """Starts the MindSpore Serving gRPC service (`MSService`).

        Args:
            address: `ip:port`; `unix:<path>` is not supported yet.
            max_msg_mb_size: Largest message in MB, in [1,512], for receiving and sending.
            ssl_config: TLS settings (`SSLConfig`); None (default) serves plaintext.

        Raises:
            RuntimeError: Invalid parameters, already running, bind failure or an unusable certificate / key
                (MindSpore's texts). The server is stopped first.

        Example:
            >>> server.start_grpc_server("127.0.0.1:5500")
        """
        _check_str("address", address)
        _check_int("max_msg_mb_size", max_msg_mb_size, 1, 512)
        tls = _check_ssl_config(ssl_config)
        with self._lock:
            if self._grpc_address is not None:
                raise RuntimeError("Serving Error: Serving gRPC server is already running")
            if address.startswith("unix:"):
                if len(address) == len("unix:"):
                    raise RuntimeError("Serving Error: Empty grpc server unix domain socket address")
                raise RuntimeError(
                    f"Serving Error: Serving gRPC server does not support unix domain socket address '{address}' yet"
                )
            _check_address(address, "Serving gRPC")
            self._server().start_grpc(address, max_msg_mb_size, tls)
            self._grpc_address = address
        print(f"Serving: Serving gRPC server start success, listening on {address}", flush=True)
        self._keep_serving()

    @_stop_on_except
    def start_restful_server(
        self, address: str, max_msg_mb_size: int = 100, ssl_config: SSLConfig | None = None
    ) -> None:
        """Starts the MindSpore Serving RESTful service (`POST /model/<servable>[/version/<n>]:<method>`).

        Args:
            address: `ip:port`.
            max_msg_mb_size: Largest request body in MB, in [1,512].
            ssl_config: TLS settings (`SSLConfig`); None (default) serves plaintext.

        Raises:
            RuntimeError: Invalid parameters, already running, bind failure or an unusable certificate / key
                (MindSpore's texts). The server is stopped first.

        Example:
            >>> server.start_restful_server("127.0.0.1:1500")
        """
        _check_str("address", address)
        _check_int("max_msg_mb_size", max_msg_mb_size, 1, 512)
        tls = _check_ssl_config(ssl_config)
        with self._lock:
            if self._rest_address is not None:
                raise RuntimeError("Serving Error: RESTful server is already running")
            if address.startswith("unix:"):
                raise RuntimeError("Serving Error: RESTful server does not support binding to unix domain socket")
            _check_address(address, "RESTful server")
            self._server().start_rest(address, max_msg_mb_size, tls)
            self._rest_address = address
        print(f"Serving: Serving RESTful server start success, listening on {address}", flush=True)
        self._keep_serving()

    # --- limits --------------------------------------------------------------------------------------------------

    def set_request_timeout(self, seconds: float) -> None:
        """Sets how long one request may take, queueing included (default 300 s; applies to requests that start
        later).

        A request past it fails (MindSpore protocols: error_code 4 in-band; v2: UNAVAILABLE / 503) and the work still
        queued for it is dropped, as when the client disconnects.

        Args:
            seconds: The timeout, > 0.

        Raises:
            RuntimeError: `seconds` is not a positive finite number.

        Example:
            >>> server.set_request_timeout(30)
        """
        self._server().set_request_timeout(_check_seconds("seconds", seconds, allow_zero=False))

    def set_drain_timeout(self, seconds: float) -> None:
        """Sets how long `stop` (and SIGTERM / SIGINT) lets requests in flight finish before stopping (default 10 s).

        Args:
            seconds: The timeout, >= 0 (0: stop without waiting).

        Raises:
            RuntimeError: `seconds` is not a finite number >= 0.

        Example:
            >>> server.set_drain_timeout(30)
        """
        seconds = _check_seconds("seconds", seconds, allow_zero=True)
        self._server().set_drain_timeout(seconds)
        self._drain_timeout_s = seconds

    def set_trace_otlp_endpoint(self, endpoint: str) -> None:
        """Exports an OpenTelemetry trace of every predict request to an OTLP/gRPC collector (`rustserve start
        --trace-otlp-endpoint`); off until called.

        Each request is a `rustserve.request` span (the child of the W3C `traceparent` the client sent, as an HTTP
        header or gRPC metadata) with child spans for decode, each stage and encode; spans leave from a background
        thread in batches, and `stop` flushes what is queued (waiting at most a second).

        Args:
            endpoint: The collector's URL, `http://host:4317` (or `https://`).

        Raises:
            ServerStartError: The endpoint is not an http(s) URL, or this server exports traces already.

        Example:
            >>> server.set_trace_otlp_endpoint("http://127.0.0.1:4317")  # doctest: +SKIP
        """
        self._server().set_trace_otlp_endpoint(endpoint)

    def set_connection_limits(self, max_connections: int | None = None, idle_timeout: float | None = None) -> None:
        """Sets, for the listeners started after this call, how many connections each keeps open at once (further ones
        wait in the kernel's backlog) and how long a connection that has sent nothing (no HTTP/2 preface, no request)
        stays open (defaults 10000 and 10 s).

        Args:
            max_connections: Open connections per listener, >= 1; None: the default.
            idle_timeout: Seconds a silent connection is kept after it was accepted, > 0; None: the default.

        Raises:
            RuntimeError: A parameter is out of range.

        Example:
            >>> server.set_connection_limits(max_connections=1000, idle_timeout=5)
        """
        if max_connections is None:
            max_connections = _defaults()["max_connections"]
        if idle_timeout is None:
            idle_timeout = _defaults()["connection_idle_timeout_s"]
        _check_int("max_connections", max_connections, 1)
        self._server().set_connection_limits(
            max_connections, _check_seconds("idle_timeout", idle_timeout, allow_zero=False)
        )

    def set_max_in_flight_mb(self, limit: int) -> None:
        """Bounds the request bodies the server holds at once, over every listener (default 1024 MB).

        A request whose body would pass the bound is refused at once, before its body is read: REST 429, gRPC
        RESOURCE_EXHAUSTED (`Serving Error: the server is holding ... bytes of requests ...`). A REST body sent without
        a Content-Length counts as the largest message allowed (`max_msg_mb_size`).

        Args:
            limit: Megabytes, >= 1.

        Raises:
            RuntimeError: `limit` is not an int >= 1.

        Example:
            >>> server.set_max_in_flight_mb(2048)
        """
        _check_int("limit", limit, 1)
        self._server().set_max_in_flight_bytes(limit << 20)

    def set_max_queued_instances(self, limit: int) -> None:
        """Bounds the instances queued for one model (default 10000): back-pressure instead of unbounded memory.

        While a model a method runs has `limit` instances waiting for a batch, requests for that method fail at once
        with `Serving Error: the queue of model '<file>' is full ...` (MindSpore protocols: error_code 1; v2:
        UNAVAILABLE / 503). The requests in flight limit (10000, MindSpore's) still applies on top.

        Args:
            limit: Queued instances per model, >= 1.

        Raises:
            RuntimeError: `limit` is not an int >= 1.

        Example:
            >>> server.set_max_queued_instances(1000)
        """
        _check_int("limit", limit, 1)
        self._server().set_max_queued_instances(limit)

    def set_max_queued_python_calls(self, limit: int) -> None:
        """Bounds the Python stage calls waiting for a free executor (default 10000); further calls fail at once.

        The error is `Serving Error: the Python stage queue is full ...` (MindSpore protocols: error_code 1; v2:
        UNAVAILABLE / 503). Calls whose client has gone away do not count.

        Args:
            limit: Waiting calls, >= 1.

        Raises:
            RuntimeError: `limit` is not an int >= 1.

        Example:
            >>> server.set_max_queued_python_calls(1000)
        """
        _check_int("limit", limit, 1)
        self._server().set_max_queued_python_calls(limit)

    def set_max_enqueued_requests(self, max_enqueued_requests: int) -> None:
        """Bounds the requests in flight (default 10000), as MindSpore's `master.context.set_max_enqueued_requests`.

        Further requests fail at once with `Serving Error: enqueued requests count exceeds the limit <n>` (MindSpore
        protocols: error_code 1; v2: UNAVAILABLE / 503).

        Args:
            max_enqueued_requests: Requests in flight, >= 1.

        Raises:
            RuntimeError: `max_enqueued_requests` is not an int >= 1.

        Example:
            >>> server.set_max_enqueued_requests(100)
        """
        _check_int("max_enqueued_requests", max_enqueued_requests, 1)
        self._server().set_max_enqueued_requests(max_enqueued_requests)

    # --- lifetime ------------------------------------------------------------------------------------------------

    def serve_in_foreground(self) -> None:
        """Makes the main thread a pure server (`rustserve start`): from now on SIGINT / SIGTERM only stop the server,
        they never raise in the main thread (a stop asked for during start-up makes the remaining start calls fail),
        and the module functions (`server.stop()` included) drive this server.
        """
        global _current
        _current = self
        self._foreground = True
        self._keep_serving()

    def serve(self) -> int:
        """Blocks the calling (main) thread until the server stops (`stop()`, or SIGINT / SIGTERM), then stops it.

        Returns:
            The exit status the stop deserves: 0, or `EXIT_ABANDONED` when it gave up on requests in flight.
        """
        try:
            with self._lock:
                stopped = self._stopped
                self._install_signal_handlers()
            while not stopped.wait(1.0):
                pass
        finally:
            self.stop()
        return self.exit_status

    @property
    def exit_status(self) -> int:
        """0, or `EXIT_ABANDONED` when the last stop gave up on requests or calls in flight."""
        return EXIT_ABANDONED if self._abandoned else 0

    def stop(self) -> None:
        """Stops the listeners and servables and releases the process (idempotent; also runs on SIGINT/SIGTERM).

        Requests in flight get up to the drain timeout (`set_drain_timeout`) to finish. When another thread is stopping
        the server already (after a signal), this waits until that stop has finished.

        Example:
            >>> server.stop()
        """
        with self._lock:
            native_server, self._native_server = self._native_server, None
            self._loader = None
            self._grpc_address = None
            self._rest_address = None
            stopped = self._stopped
            self._restore_signal_handlers()
            wait_for_other = native_server is None and self._stop_running
            if native_server is not None:
                self._stop_running = True
        if wait_for_other:
            stopped.wait()
            return
        try:
            # NOTE: the native stop returns False when the drain timeout passed with requests in flight (fakes: None).
            if native_server is not None and native_server.stop() is False:
                self._abandoned = True
            if native_server is not None:
                # Distributed servables' hubs (distributed.start_servable) stop with the server that serves them.
                stop_hubs = getattr(_native(), "stop_agent_hubs", None)
                if stop_hubs is not None:
                    stop_hubs()
        finally:
            self._stop_running = False
            stopped.set()
            self._wake_keeper()

    def _wake_keeper(self) -> None:
        """Wakes the keeper thread; safe inside a signal handler (one non-blocking write, no lock)."""
        if self._wake is not None:
            try:
                os.write(self._wake[1], b"!")
            except (BlockingIOError, OSError):
                pass  # the pipe is full: the keeper has a wake-up pending anyway

    def _note_signal(self, signum: int) -> None:
        """Asks this server's keeper to stop for `signum`; safe inside a signal handler (no lock)."""
        if self._stop_signal is None:
            self._stop_signal = signum
        self._wake_keeper()

    def _install_signal_handlers(self) -> None:
        if not _in_main_thread() or self._handles_signals:
            return
        if not _serving:
            for signum in _SIGNALS:
                _original_handlers[signum] = signal.signal(signum, _on_signal)
        _serving.append(self)
        self._handles_signals = True

    def _restore_signal_handlers(self) -> None:
        if not _in_main_thread() or not self._handles_signals:
            return
        self._handles_signals = False
        if self in _serving:
            _serving.remove(self)
        if not _serving:
            for signum, handler in _original_handlers.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            _original_handlers.clear()

    def _keep(self, stopped: threading.Event) -> None:
        """The keeper thread: keeps the process alive until `stopped`, and runs the stop a signal asks for."""
        assert self._wake is not None
        while not stopped.is_set():
            os.read(self._wake[0], 512)
            if self._stop_signal is not None and not stopped.is_set():
                _logger.warning(
                    "Serving server begin to exit: receive exit signal %s", signal.Signals(self._stop_signal).name
                )
                self._stop_within_deadline()

    def _stop_within_deadline(self) -> None:
        """`stop()`, but past the drain timeout + STOP_GRACE_S the process exits with EXIT_ABANDONED, whatever hangs.

        For `rustserve start` the deadline covers the whole exit, not just the stop: a main thread still inside a
        start-up step (waiting for a worker process to come up, say) cannot hold the process either. A script's own
        code after its KeyboardInterrupt is its business, so there the deadline ends with the stop.
        """
        drain_timeout_s = self._drain_timeout_s
        assert drain_timeout_s is not None  # read before the keeper started
        limit_s = drain_timeout_s + STOP_GRACE_S
        timer = threading.Timer(limit_s, self._abandon, args=(limit_s, drain_timeout_s))
        timer.daemon = True
        timer.name = "rustserve-stop-deadline"
        timer.start()
        try:
            self.stop()
        finally:
            if not self._foreground:
                timer.cancel()

    @staticmethod
    def _abandon(limit_s: float, drain_timeout_s: float) -> None:
        """The stop took too long (a stage that never returns, say): tell where every thread is, then exit."""
        _logger.error(
            "the stop did not finish within %.1f s (drain timeout %.1f s + %.1f s): exiting with status %d, "
            "abandoning the calls still running; thread stacks follow",
            limit_s,
            drain_timeout_s,
            STOP_GRACE_S,
            EXIT_ABANDONED,
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(EXIT_ABANDONED)

    def _start_keeper(self) -> None:
        """Starts the keeper thread (non-daemon) unless it runs; call with `self._lock` held."""
        if self._keeper is not None and self._keeper.is_alive():
            return
        if self._stopped.is_set():
            self._stopped = threading.Event()
        self._keeper = threading.Thread(
            target=self._keep, args=(self._stopped,), name="rustserve-serving", daemon=False
        )
        self._keeper.start()

    def _keep_serving(self) -> None:
        """After any start call: a non-daemon thread keeps the process alive until `stop()`, as in MindSpore."""
        with self._lock:
            if self._wake is None:
                read_end, write_end = os.pipe()
                os.set_blocking(write_end, False)
                self._wake = (read_end, write_end)
            if self._drain_timeout_s is None:
                self._drain_timeout_s = _defaults()["drain_timeout_s"]
            # NOTE: handlers first, keeper second. A signal before the handlers has its default effect (the process
            # ends: nothing keeps it); one after them reaches the keeper through the pipe, even before it reads.
            self._install_signal_handlers()
            self._start_keeper()
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True


# The server the module functions drive: MindSpore Serving's one server per process. A server in the foreground (the
# CLI's) takes its place, so that `stop()` from a stage or another thread stops what serves, as before.
_current = Server()


def _delegate(method: Callable[Concatenate[Server, _P], _R]) -> Callable[_P, _R]:
    """The module function for `method`: calls it on the process's server, with its name, docstring and signature."""

    @functools.wraps(method)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        return method(_current, *args, **kwargs)

    del call.__wrapped__  # type: ignore[attr-defined]
    signature = inspect.signature(method)
    parameters = list(signature.parameters.values())[1:]  # without `self`
    call.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return call


start_servables = _delegate(Server.start_servables)
start_grpc_server = _delegate(Server.start_grpc_server)
start_restful_server = _delegate(Server.start_restful_server)
set_request_timeout = _delegate(Server.set_request_timeout)
set_drain_timeout = _delegate(Server.set_drain_timeout)
set_connection_limits = _delegate(Server.set_connection_limits)
set_max_in_flight_mb = _delegate(Server.set_max_in_flight_mb)
set_max_queued_instances = _delegate(Server.set_max_queued_instances)
set_max_queued_python_calls = _delegate(Server.set_max_queued_python_calls)
set_max_enqueued_requests = _delegate(Server.set_max_enqueued_requests)
stop = _delegate(Server.stop)
# A MindSpore-style script that serves and nothing else (test_workers.py's launcher), as `rustserve start` does.
_serve_in_foreground = _delegate(Server.serve_in_foreground)
