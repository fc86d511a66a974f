"""Plain protobuf (pb2) + grpcio stub modules for proto/mindspore_serving/ms_service.proto, generated on demand.

They stand in for MindSpore's own `mindspore_serving.proto.ms_service_pb2{,_grpc}` in tests: a raw grpcio client or
server that speaks the wire format with Google's protobuf runtime, independent of rustserve's client codec.
Nothing is committed: `load()` runs `grpc_tools.protoc` into a temporary folder once per process.

Example:
    >>> pb2, pb2_grpc = load()
    >>> stub = pb2_grpc.MSServiceStub(channel)  # doctest: +SKIP
    >>> reply = stub.Predict(pb2.PredictRequest(servable_spec=pb2.ServableSpec(name="add", method_name="add_common")))
"""

from __future__ import annotations

import atexit
import importlib
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from types import ModuleType

__all__ = ["PROTO_FILE", "load"]

PROTO_FILE = Path(__file__).resolve().parents[2] / "proto" / "mindspore_serving" / "ms_service.proto"

# The generated modules live in a package of this (unlikely to clash) name: protoc derives the pb2_grpc module's
# `from <package> import ms_service_pb2` line from the proto's folder, so the proto is compiled from a copy placed in
# a folder of that name. Message names (mindspore.serving.proto.*) are as in MindSpore. No leading underscore: the
# stub imports the module under an alias derived from it, and a `__x` alias would be name-mangled inside the stub class.
_PACKAGE = "rustserve_test_ms_pb2"

_lock = threading.Lock()
_modules: tuple[ModuleType, ModuleType] | None = None


def load() -> tuple[ModuleType, ModuleType]:
    """Generates (first call only) and imports the pb2 and pb2_grpc modules of ms_service.proto.

    Returns:
        `(ms_service_pb2, ms_service_pb2_grpc)`: messages such as `PredictRequest`, and `MSServiceStub` /
        `MSServiceServicer` / `add_MSServiceServicer_to_server`.

    Raises:
        RuntimeError: protoc failed.
    """
    global _modules
    with _lock:
        if _modules is None:
            _modules = _generate()
        return _modules


def _generate() -> tuple[ModuleType, ModuleType]:
    from grpc_tools import protoc

    tmp = Path(tempfile.mkdtemp(prefix="rustserve-ms-pb2-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    src = tmp / "src"
    out = tmp / "out"
    (src / _PACKAGE).mkdir(parents=True)
    out.mkdir()
    shutil.copyfile(PROTO_FILE, src / _PACKAGE / "ms_service.proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{src}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(src / _PACKAGE / "ms_service.proto"),
        ]
    )
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with exit code {rc} on {PROTO_FILE}")
    (out / _PACKAGE / "__init__.py").touch()
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module(f"{_PACKAGE}.ms_service_pb2")
        pb2_grpc = importlib.import_module(f"{_PACKAGE}.ms_service_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb2, pb2_grpc
