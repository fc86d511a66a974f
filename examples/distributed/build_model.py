"""Builds the whole matmul model (x [128, 96] float32 -> y = -(x @ W), W [96, 16], fixed seed) and splits it into
the 8 column shards of the example with `rustserve split` (ranks/rank<i>/model.onnx, group configs, rank table)."""

import os
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    weight = np.random.default_rng(2021).standard_normal((96, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["p"]), helper.make_node("Neg", ["p"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [128, 96])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [128, 16])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    whole = os.path.join(HERE, "matmul.onnx")
    onnx.save(model, whole)
    command = ["rustserve", "split", whole, "--out", os.path.join(HERE, "ranks"), "--ranks-per-stage", "8"]
    sys.exit(subprocess.call([sys.executable, "-m", "rustserve", *command[1:]]))


if __name__ == "__main__":
    main()
