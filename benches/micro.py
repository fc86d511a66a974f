"""Python-side micro benchmarks: numpy <-> MindSpore wire tensors in rustserve's client codec.

`python benches/micro.py` (part of `make bench`). Times `rustserve.client._codec.encode_request` (numpy instances ->
`PredictRequest` bytes) and `decode_reply` (`PredictReply` bytes -> numpy outputs) for a tiny and an image-sized
request, and, for reference, parsing the same reply with Google's protobuf runtime (pb2, upb; no numpy conversion).
The server side of the numpy <-> tensor edge (a Python stage's inputs and outputs) is in compare.py's "GIL-thread
round trip" line.
Numbers are per call, best of 5 repeats; compare them within one run.
"""

from __future__ import annotations

import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from rustserve.client import _codec  # noqa: E402


def per_call_us(call: Callable[[], Any], min_time: float = 0.2) -> float:
    """Best-of-5 time per call in µs, each repeat running long enough to be measurable."""
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    number = max(number, int(number * min_time / 0.2))
    return min(timer.repeat(5, number)) / number * 1e6


def reply_bytes(pb2: Any, outputs: list[dict[str, np.ndarray]]) -> bytes:
    reply = pb2.PredictReply(servable_spec=pb2.ServableSpec(name="s", method_name="m"))
    for output in outputs:
        instance = reply.instances.add()
        for name, array in output.items():
            tensor = instance.items[name]
            tensor.dtype = pb2.MS_FLOAT32
            tensor.shape.dims.extend(array.shape)
            tensor.data = array.tobytes()
    return reply.SerializeToString()


def main() -> None:
    from ms_pb2 import load

    pb2, _ = load()
    spec = _codec.encode_servable_spec("s", "m", 0)
    cases = {
        "1 x {x1, x2: [2,2] f32}": [
            {"x1": np.ones((2, 2), np.float32), "x2": np.ones((2, 2), np.float32)},
        ],
        "8 x {image: [3,224,224] f32}": [{"image": np.ones((3, 224, 224), np.float32)} for _ in range(8)],
    }
    print(f"{'request':<32} {'encode (codec)':>15} {'decode reply (codec)':>21} {'pb2 parse only':>19}")
    for label, instances in cases.items():
        encode = per_call_us(lambda instances=instances: _codec.encode_request(spec, instances))
        wire = reply_bytes(pb2, instances)
        decode = per_call_us(lambda wire=wire: _codec.decode_reply(wire))
        decode_pb2 = per_call_us(lambda wire=wire: pb2.PredictReply.FromString(wire))
        print(f"{label:<32} {encode:>12.1f} µs {decode:>18.1f} µs {decode_pb2:>16.1f} µs")


if __name__ == "__main__":
    main()
