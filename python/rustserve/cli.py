"""The `rustserve` command: `rustserve start --dir servables/` serves every servable and version under a directory.

Exit status: 0 after a clean stop (SIGINT/SIGTERM), 1 when start-up fails (the error goes to stderr), 2 for
usage errors.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

__all__ = ["main"]

_DEFAULT_GRPC = "127.0.0.1:5500"
_DEFAULT_REST = "127.0.0.1:1500"


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


def _parser() -> argparse.ArgumentParser:
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
    start.add_argument("--grpc", default=_DEFAULT_GRPC, metavar="ADDR", help=f"gRPC address (default {_DEFAULT_GRPC})")
    start.add_argument("--rest", default=_DEFAULT_REST, metavar="ADDR", help=f"REST address (default {_DEFAULT_REST})")
    start.add_argument("--no-grpc", action="store_true", help="do not start the gRPC server")
    start.add_argument("--no-rest", action="store_true", help="do not start the REST server")
    start.add_argument(
        "--device-type", choices=("cpu", "gpu"), default="cpu", type=str.lower, help="where models run (default cpu)"
    )
    start.add_argument(
        "--device-ids", type=_device_ids, default=[], metavar="IDS", help="CUDA device ids for gpu, e.g. 0,1"
    )
    start.add_argument(
        "--log-level",
        default="info",
        metavar="LEVEL",
        help="log filter: error, warn, info, debug or a RUST_LOG-style filter; RUST_LOG overrides it (default info)",
    )
    start.add_argument(
        "--max-msg-mb-size", type=int, default=100, metavar="MB", help="largest message in MB (default 100)"
    )
    return parser


def _start(args: argparse.Namespace) -> int:
    from rustserve import server
    from rustserve.server import _loader

    directory = os.path.abspath(args.dir)
    started = time.monotonic()
    server._serve_in_foreground()
    try:
        server._native().init_logging(args.log_level)
        names = args.servable or _loader.discover_servables(directory)
        if not names:
            raise RuntimeError(f"no servable found in '{directory}' (no subdirectory holds a servable_config.py)")
        loader = _loader.ServableLoader()
        specs = []
        for name in names:
            specs.extend(
                loader.load_all_versions(directory, name, device_type=args.device_type, device_ids=args.device_ids)
            )
        server._add_specs(specs)
        listeners = []
        if not args.no_grpc:
            server.start_grpc_server(args.grpc, args.max_msg_mb_size)
            listeners.append(f"gRPC {args.grpc}")
        if not args.no_rest:
            server.start_restful_server(args.rest, args.max_msg_mb_size)
            listeners.append(f"REST {args.rest}")
    except Exception as exc:
        server.stop()
        print(f"rustserve: error: {exc}", file=sys.stderr, flush=True)
        return 1

    versions = ", ".join(f"{spec['name']} v{spec['version']}" for spec in specs)
    print(
        f"rustserve: serving {len(specs)} servable version(s) ({versions}) on {', '.join(listeners) or 'no listener'}"
        f" in {time.monotonic() - started:.2f} s",
        flush=True,
    )
    try:
        server._wait_for_stop()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `rustserve` command line.

    Args:
        argv: The arguments without the program name; None = `sys.argv[1:]`.

    Returns:
        The exit status.

    Example:
        >>> main(["start", "--dir", "servables", "--grpc", "127.0.0.1:5500"])  # blocks until SIGINT/SIGTERM
    """
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "start":
        return _start(args)
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
