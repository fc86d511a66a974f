"""Calls the distributed matmul servable and checks the answer against the whole model run here."""

import argparse
import os

import numpy as np
import onnxruntime as ort

from rustserve.client import Client

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", default="127.0.0.1:5500")
    args = parser.parse_args()
    x = np.random.default_rng(0).standard_normal((128, 96)).astype(np.float32)
    result = Client(args.address, "matmul", "predict").infer({"x": x})
    if not isinstance(result, list):
        raise SystemExit(f"request failed: {result}")
    (expected,) = ort.InferenceSession(os.path.join(HERE, "matmul.onnx")).run(["y"], {"x": x})
    difference = float(np.max(np.abs(result[0]["y"] - expected)))
    print(f"y {list(result[0]['y'].shape)} from 8 ranks, largest difference from the whole model: {difference:.2g}")
    if difference > 1e-4:
        raise SystemExit("mismatch")


if __name__ == "__main__":
    main()
