"""Entry point of an extra Python worker process: ``python -m rustserve.worker --socket PATH --directory DIR ...``.

The server starts one per extra worker of a servable started with ``num_parallel_workers`` > 1, with its own
interpreter (its supervisor: rust/src/workers/; its loop: rust/src/python/worker_loop.rs). The worker imports the
servable's ``servable_config.py`` exactly as the server did (``rustserve.server._loader``), so it registers the
same stage functions in the same order, then hands them to the native loop (``_rustserve.run_worker``), which serves
the server's stage calls with the same conventions, conversions and error texts as the server's own Python thread,
until the server closes the socket.
Not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main"]

StageFunction = tuple[str, int, str, Callable[..., Any]]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rustserve.worker", description="A rustserve Python worker process (started by the server)."
    )
    parser.add_argument("--socket", required=True, help="the server's Unix socket for this worker")
    parser.add_argument("--directory", required=True, help="the servable directory")
    parser.add_argument("--servable", required=True, help="the servable name")
    parser.add_argument("--version", type=int, default=0, help="the servable version (for process listings only)")
    parser.add_argument("--log-level", default="warn", help="log filter, as for `rustserve start`")
    parser.add_argument("--log-format", default="text", choices=("text", "json"), help="as for `rustserve start`")
    return parser


def stage_functions(directory: str, servable: str) -> list[StageFunction]:
    """Imports a servable's config and lists its Python stages as the server numbers them.

    Args:
        directory: The servable directory.
        servable: The servable name.

    Returns:
        (method name, 1-based stage index, "<servable>.<function name>", function) per Python stage.

    Raises:
        RuntimeError: The config could not be imported.
    """
    from rustserve.server._loader import ServableLoader

    registry = ServableLoader().import_config(directory, servable)
    functions: list[StageFunction] = []
    for method in registry.methods:
        for index, stage in enumerate(method["stages"], start=1):
            if stage["kind"] == "function":
                functions.append((method["name"], index, stage["name"], stage["function"]))
    return functions


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a worker until the server closes its connection.

    Args:
        argv: The arguments without the program name; None = `sys.argv[1:]`.

    Returns:
        The exit status: 0 after the server closed the connection, 1 when the worker could not start.
    """
    args = _parser().parse_args(argv)
    # Ctrl-C reaches the whole process group; the server stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    native: Any = importlib.import_module("rustserve._rustserve")
    native.init_logging(args.log_level, args.log_format)
    try:
        functions = stage_functions(args.directory, args.servable)
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        native.run_worker(args.socket, [], f"importing servable_config.py failed in the worker process: {exc}")
        return 1
    return 0 if native.run_worker(args.socket, functions) else 1


if __name__ == "__main__":
    raise SystemExit(main())
