"""rustserve: a MindSpore-Serving-compatible model server with a Rust core and ONNX Runtime.

Subpackages: `rustserve.server` (servable_config.py API and start/stop functions), `rustserve.client` (gRPC
client), `rustserve.exceptions`. None of them is imported eagerly, and the native extension
(`rustserve._rustserve`) is loaded only when a server starts, so `rustserve.client` works without it.

Example:
    >>> from rustserve import server
    >>> server.start_servables(server.ServableStartConfig("servables", "add"))  # doctest: +SKIP
    >>> server.start_grpc_server("127.0.0.1:5500")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rustserve import client, exceptions, server

__all__ = ["__version__", "client", "exceptions", "server"]

try:
    __version__: str = _metadata.version("rustserve")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

_SUBMODULES = frozenset({"client", "exceptions", "server"})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
