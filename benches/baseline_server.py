"""The Python-core baseline of `benches/compare.py`: FastAPI + uvicorn for REST and grpcio (asyncio) for gRPC, doing
the same work as the rustserve servables with the same functions (`workloads.py`) and onnxruntime's Python API.

It speaks MindSpore Serving's wire formats (REST `POST /model/<servable>:<method>` with `{"instances": [...]}`,
gRPC `MSService.Predict`), so the same load generators and requests drive both servers. Configured the way a
careful Python deployment would be: uvloop + httptools when installed, `async def` handlers for microsecond work,
the thread pool for blocking work (so ONNX Runtime runs with the GIL released), one process.

`python benches/baseline_server.py --workload tensor_add --models DIR --http 127.0.0.1:8000 --grpc 127.0.0.1:8001`
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import workloads  # noqa: E402


def _session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class Work:
    """One workload: a REST handler body and a gRPC handler body over the same functions."""

    def __init__(self, workload: str, models: Path) -> None:
        self.workload = workload
        if workload == "tensor_add":
            self.session = _session(models / "tensor_add.onnx", 1)
        elif workload == "resnet50":
            # ONNX Runtime's default (one intra-op thread per core), as in the in-process reference.
            self.session = _session(models / "resnet50.onnx", None)
        elif workload == "pybound":
            self.session = _session(models / "square.onnx", 1)
        else:
            raise SystemExit(f"unknown workload {workload}")

    # The per-instance work, on numpy values; returns the output dict of one instance.
    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if self.workload == "tensor_add":
            (y,) = self.session.run(None, {"x1": inputs["x1"], "x2": inputs["x2"]})
            return {"y": y}
        if self.workload == "resnet50":
            x = workloads.resnet_preprocess(inputs["image"])
            (score,) = self.session.run(None, {"image": x[None]})
            return {"label": workloads.resnet_top1(score[0])}
        x = workloads.pybound_preprocess(inputs["x"])
        (y,) = self.session.run(None, {"x": x[None]})
        return {"y": y[0]}

    @property
    def blocking(self) -> bool:
        """Whether the work is long enough to belong in the thread pool instead of the event loop."""
        return self.workload != "tensor_add"


# ---------------------------------------------------------------------------------------------------------------
# REST (FastAPI)
# ---------------------------------------------------------------------------------------------------------------


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and "b64" in value:
        return base64.b64decode(value["b64"])
    return np.asarray(value, dtype=np.float32)


def _to_json(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def make_app(work: Work) -> FastAPI:
    app = FastAPI()

    def handle(body: bytes) -> bytes:
        instances = json.loads(body)["instances"]
        outputs = []
        for instance in instances:
            result = work.run({name: _from_json(value) for name, value in instance.items()})
            outputs.append({name: _to_json(value) for name, value in result.items()})
        return json.dumps({"instances": outputs}).encode()

    @app.post("/model/{target}")
    async def predict(target: str, request: Request) -> Response:
        body = await request.body()
        answer = await run_in_threadpool(handle, body) if work.blocking else handle(body)
        return Response(answer, media_type="application/json")

    return app


# ---------------------------------------------------------------------------------------------------------------
# gRPC (grpcio asyncio)
# ---------------------------------------------------------------------------------------------------------------


def make_grpc_server(work: Work, address: str) -> Any:
    import grpc
    from ms_pb2 import load

    pb2, pb2_grpc = load()

    def value_of(tensor: Any) -> Any:
        if tensor.dtype in (pb2.MS_BYTES, pb2.MS_STRING):
            return tensor.bytes_val[0]
        return np.frombuffer(tensor.data, dtype=np.float32).reshape(tuple(tensor.shape.dims))

    def tensor_of(value: Any) -> Any:
        if isinstance(value, str):
            return pb2.Tensor(dtype=pb2.MS_STRING, bytes_val=[value.encode()], shape=pb2.TensorShape(dims=[]))
        array = np.ascontiguousarray(value, dtype=np.float32)
        return pb2.Tensor(dtype=pb2.MS_FLOAT32, shape=pb2.TensorShape(dims=list(array.shape)), data=array.tobytes())

    def handle(request: Any) -> Any:
        reply = pb2.PredictReply(servable_spec=request.servable_spec)
        for instance in request.instances:
            result = work.run({name: value_of(tensor) for name, tensor in instance.items.items()})
            out = reply.instances.add()
            for name, value in result.items():
                out.items[name].CopyFrom(tensor_of(value))
        return reply

    class Servicer(pb2_grpc.MSServiceServicer):  # type: ignore[misc, name-defined]
        async def Predict(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method name)
            if work.blocking:
                return await asyncio.get_running_loop().run_in_executor(None, handle, request)
            return handle(request)

    server = grpc.aio.server(
        options=[("grpc.max_send_message_length", 512 << 20), ("grpc.max_receive_message_length", 512 << 20)]
    )
    pb2_grpc.add_MSServiceServicer_to_server(Servicer(), server)
    server.add_insecure_port(address)
    return server


async def serve(args: argparse.Namespace) -> None:
    import uvicorn

    work = Work(args.workload, Path(args.models))
    host, port = args.http.rsplit(":", 1)
    config = uvicorn.Config(
        make_app(work),
        host=host,
        port=int(port),
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        log_level="warning",
        access_log=False,
    )
    grpc_server = make_grpc_server(work, args.grpc)
    await grpc_server.start()
    try:
        await uvicorn.Server(config).serve()
    finally:
        await grpc_server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", required=True, choices=("tensor_add", "resnet50", "pybound"))
    parser.add_argument("--models", required=True, help="folder with the workload's model files")
    parser.add_argument("--http", required=True, metavar="HOST:PORT")
    parser.add_argument("--grpc", required=True, metavar="HOST:PORT")
    args = parser.parse_args()
    if importlib.util.find_spec("uvloop"):
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
