"""The client's call path: hand-written codec (`rustserve.client._codec`) against Google's C-backed protobuf (upb).

`python benches/client_codec.py [--rounds N] [--e2e]`. For each request shape it times, in one process and
interleaved round by round:

* encode: MindSpore client instances (numpy arrays, str, bytes) -> `PredictRequest` bytes, i.e. what
  `Client.infer` does before the call: `_codec.encode_request` vs upb messages filled the same way
  (`arr.tobytes()` into `Tensor.data`, `SerializeToString()`);
* decode: `PredictReply` bytes -> the client's result (dicts of read-only numpy arrays / str / bytes):
  `_codec.decode_reply` vs `PredictReply.FromString` plus `np.frombuffer(tensor.data).reshape(dims)`.

The upb messages are generated from proto/ by `tests/ms_pb2` (grpcio-tools' protoc), the same modules the tests
use as the wire-format oracle. Before timing, both paths are checked to produce the same request (parsed back with
upb) and the same decoded result. Figures are medians over the rounds of per-call times (each round one
`timeit` batch sized to ~20 ms); `upb / hand` > 1 means upb is slower.

`--e2e` adds one real call path: `Client.infer` against a `rustserve start --dir examples/servables` server
(the `add` servable, [2,2] float32), hand codec vs upb on the same cached raw-bytes multicallable.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from rustserve.client import _codec  # noqa: E402

# ------------------------------------------------------------------------------------- the upb version of the codec


class UpbCodec:
    """`encode_request` / `decode_reply` on upb messages, with the client's conversion rules for the benched values."""

    def __init__(self, pb2: Any, name: str, method: str, version: int) -> None:
        self.pb2 = pb2
        self.spec = pb2.ServableSpec(name=name, method_name=method, version_number=version)

    def encode_request(self, instances: object) -> bytes:
        request = self.pb2.PredictRequest(servable_spec=self.spec)
        items = instances if isinstance(instances, (tuple, list)) else (instances,)
        add = request.instances.add
        for item in items:
            if not isinstance(item, dict):
                raise RuntimeError("instance should be a map")
            tensors = add().items
            for key, value in item.items():
                tensor = tensors[key]
                if isinstance(value, np.ndarray):
                    dt = value.dtype
                    code = _codec.DTYPE_TO_WIRE.get((dt.kind, dt.itemsize))
                    if code is None:
                        raise RuntimeError("Unknown data type " + str(dt))
                    if dt.byteorder == ">":
                        value = value.astype(dt.newbyteorder("<"))
                    tensor.shape.dims.extend(value.shape)
                    tensor.dtype = code
                    tensor.data = value.tobytes()
                elif isinstance(value, str):
                    tensor.shape.dims.append(1)
                    tensor.dtype = _codec.MS_STRING
                    tensor.bytes_val.append(value.encode("utf-8"))
                elif isinstance(value, bytes):
                    tensor.shape.dims.append(1)
                    tensor.dtype = _codec.MS_BYTES
                    tensor.bytes_val.append(value)
                else:
                    raise RuntimeError("Not support value type " + str(type(value)))
        return request.SerializeToString()  # type: ignore[no-any-return]

    def decode_reply(self, buf: bytes) -> list[dict[str, Any]] | dict[str, str]:
        reply = self.pb2.PredictReply.FromString(buf)
        errors = reply.error_msg
        n_errors = len(errors)
        if n_errors == 1 and errors[0].error_code != 0:
            return {"error": errors[0].error_msg.decode("utf-8", errors="replace")}
        n_instances = len(reply.instances)
        if n_errors not in (0, n_instances):
            raise RuntimeError(f"error msg result size {n_errors} not be 0, 1 or length of instances {n_instances}")
        result: list[dict[str, Any]] = []
        wire_to_dtype = _codec.WIRE_TO_DTYPE
        for i, instance in enumerate(reply.instances):
            if n_errors and errors[i].error_code != 0:
                result.append({"error": errors[i].error_msg.decode("utf-8", errors="replace")})
                continue
            out: dict[str, Any] = {}
            for name, tensor in instance.items.items():
                dtype = tensor.dtype
                if dtype == _codec.MS_STRING or dtype == _codec.MS_BYTES:
                    values: list[Any] = (
                        [v.decode("utf-8") for v in tensor.bytes_val]
                        if dtype == _codec.MS_STRING
                        else list(tensor.bytes_val)
                    )
                    out[name] = values[0] if len(values) == 1 else values
                    continue
                np_dtype = wire_to_dtype.get(dtype)
                if np_dtype is None:
                    raise RuntimeError(f"Unknown data type {dtype} of output '{name}' in the reply")
                out[name] = np.frombuffer(tensor.data, np_dtype).reshape(tensor.shape.dims)
            result.append(out)
        return result


# ------------------------------------------------------------------------------------------------------- the cases


def image_u8() -> np.ndarray[Any, Any]:
    return (np.arange(224 * 224 * 3) % 251).astype(np.uint8).reshape(224, 224, 3)


def cases() -> dict[str, list[dict[str, Any]]]:
    """Request instances per case; the reply of each case carries the same values back as outputs."""
    small = np.arange(4, dtype=np.float32).reshape(2, 2)
    return {
        "1 x {x1, x2: [2,2] f32}": [{"x1": small, "x2": small}],
        "1 x {image: [224,224,3] u8}": [{"image": image_u8()}],
        "1 x {image: [224,224,3] f32}": [{"image": image_u8().astype(np.float32) / 255}],
        "64 x {x1, x2: [2,2] f32}": [{"x1": small + i, "x2": small - i} for i in range(64)],
        "1 x {text: str 40 B, blob: bytes 1 KiB}": [
            {"text": "a sentence of forty ascii characters ...", "blob": bytes(1024)}
        ],
    }


def reply_bytes(pb2: Any, outputs: list[dict[str, Any]]) -> bytes:
    """A `PredictReply` carrying `outputs`, serialised by upb (what the server's reply looks like on the wire)."""
    reply = pb2.PredictReply(servable_spec=pb2.ServableSpec(name="s", method_name="m"))
    for output in outputs:
        instance = reply.instances.add()
        for name, value in output.items():
            tensor = instance.items[name]
            if isinstance(value, np.ndarray):
                tensor.dtype = _codec.DTYPE_TO_WIRE[(value.dtype.kind, value.dtype.itemsize)]
                tensor.shape.dims.extend(value.shape)
                tensor.data = value.tobytes()
            else:
                tensor.dtype = _codec.MS_STRING if isinstance(value, str) else _codec.MS_BYTES
                tensor.shape.dims.append(1)
                tensor.bytes_val.append(value.encode() if isinstance(value, str) else value)
    return reply.SerializeToString()  # type: ignore[no-any-return]


def same_result(a: object, b: object) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_result(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_result(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    return type(a) is type(b) and a == b


# -------------------------------------------------------------------------------------------------------- timing


def batch_size(call: Callable[[], Any], seconds: float = 0.02) -> int:
    elapsed = timeit.timeit(call, number=1)
    return max(1, int(seconds / max(elapsed, 1e-7)))


def interleaved_medians(calls: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median per-call µs of each call; the calls take turns within every round."""
    timers = {name: (timeit.Timer(call), batch_size(call)) for name, call in calls.items()}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, (timer, number) in timers.items():
            samples[name].append(timer.timeit(number) / number * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def codec_table(pb2: Any, rounds: int) -> list[tuple[str, float, float, float, float]]:
    spec = _codec.encode_servable_spec("s", "m", 0)
    upb = UpbCodec(pb2, "s", "m", 0)
    rows = []
    for label, instances in cases().items():
        hand_req = _codec.encode_request(spec, instances)
        upb_req = upb.encode_request(instances)
        assert pb2.PredictRequest.FromString(hand_req) == pb2.PredictRequest.FromString(upb_req), label
        wire = reply_bytes(pb2, instances)
        assert same_result(_codec.decode_reply(wire), upb.decode_reply(wire)), label
        t = interleaved_medians(
            {
                "hand encode": partial(_codec.encode_request, spec, instances),
                "upb encode": partial(upb.encode_request, instances),
                "hand decode": partial(_codec.decode_reply, wire),
                "upb decode": partial(upb.decode_reply, wire),
            },
            rounds,
        )
        rows.append((label, t["hand encode"], t["upb encode"], t["hand decode"], t["upb decode"]))
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def e2e_row(pb2: Any, rounds: int) -> tuple[float, float]:
    """Median µs of one `Client.infer` on the bundled `add` servable: hand codec vs upb on the same channel."""
    from rustserve.client import Client

    port = free_port()
    exe = Path(sys.executable).with_name("rustserve")
    args = [str(exe), "start", "--dir", str(REPO / "examples" / "servables"), "--servable", "add"]
    args += ["--grpc", f"127.0.0.1:{port}", "--no-rest"]
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ))
    try:
        x = np.ones((2, 2), np.float32)
        instances = [{"x1": x, "x2": x}]
        client = Client(f"127.0.0.1:{port}", "add", "add_common")
        deadline = time.monotonic() + 60
        while not isinstance(client.infer(instances), list):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("rustserve start did not come up")
            time.sleep(0.2)
        upb = UpbCodec(pb2, "add", "add_common", 0)
        predict = client._predict

        def upb_infer() -> object:
            return upb.decode_reply(predict(upb.encode_request(instances)))

        assert same_result(client.infer(instances), upb_infer())
        t = interleaved_medians({"hand": lambda: client.infer(instances), "upb": upb_infer}, rounds)
        client.close()
        return t["hand"], t["upb"]
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds per case (median of them)")
    parser.add_argument("--e2e", action="store_true", help="also time Client.infer against a rustserve server")
    args = parser.parse_args()

    import google.protobuf
    from google.protobuf.internal import api_implementation
    from ms_pb2 import load

    pb2, _ = load()
    print(f"protobuf {google.protobuf.__version__} ({api_implementation.Type()}), numpy {np.__version__}")
    print(f"median of {args.rounds} interleaved rounds, µs per call; ratio = upb / hand (> 1: upb slower)\n")
    print(
        "| request (reply carries the same values) | encode hand | encode upb | decode hand | decode upb "
        "| encode+decode hand | encode+decode upb | ratio |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, he, ue, hd, ud in codec_table(pb2, args.rounds):
        print(
            f"| {label} | {he:.1f} | {ue:.1f} | {hd:.1f} | {ud:.1f} | {he + hd:.1f} | {ue + ud:.1f} "
            f"| {(ue + ud) / (he + hd):.2f} |"
        )
    if args.e2e:
        hand, upb = e2e_row(pb2, args.rounds)
        print(
            f"\nClient.infer, add [2,2] f32 on `rustserve start` (loopback gRPC): hand {hand:.0f} µs, "
            f"upb {upb:.0f} µs, ratio {upb / hand:.2f}"
        )


if __name__ == "__main__":
    main()
