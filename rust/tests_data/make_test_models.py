"""Builds the tiny ONNX models used by the Rust unit tests of rust/src/model and rust/src/batching.

Usage: python make_test_models.py OUT_DIR   (needs the `onnx` package; no downloads)
Each model is written to OUT_DIR/<name>.onnx; "ok" is printed when all are written.
"""

import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, checker, helper, numpy_helper, save

OPSET = 17
IR_VERSION = 8  # NOTE: explicit, so any ONNX Runtime >= 1.12 accepts the files whatever onnx writes by default


def model(name, nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=list(initializers))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="rustserve-tests")
    m.ir_version = IR_VERSION
    checker.check_model(m)
    return m


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def build():
    f32, f16, s, b = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.STRING, TensorProto.BOOL
    models = {
        # y = x1 + x2 on a static [2, 2]: fixed batch size 2 with with_batch_dim=True
        "add_fixed": model(
            "add_fixed",
            [helper.make_node("Add", ["x1", "x2"], ["y"])],
            [vi("x1", f32, [2, 2]), vi("x2", f32, [2, 2])],
            [vi("y", f32, [2, 2])],
        ),
        # y = x * 2 with a symbolic batch dim: dynamic batching
        "mul_dynamic": model(
            "mul_dynamic",
            [helper.make_node("Mul", ["x", "two"], ["y"])],
            [vi("x", f32, ["N", 3])],
            [vi("y", f32, ["N", 3])],
            [numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
        ),
        "string_identity": model(
            "string_identity",
            [helper.make_node("Identity", ["s"], ["t"])],
            [vi("s", s, ["N", 2])],
            [vi("t", s, ["N", 2])],
        ),
        # float16 in, float16 and float32 out
        "f16_cast": model(
            "f16_cast",
            [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Cast", ["x"], ["z"], to=f32)],
            [vi("x", f16, [2, 3])],
            [vi("y", f16, [2, 3]), vi("z", f32, [2, 3])],
        ),
        "bool_not": model(
            "bool_not",
            [helper.make_node("Not", ["x"], ["y"])],
            [vi("x", b, ["N", 2])],
            [vi("y", b, ["N", 2])],
        ),
        # y = x + bias, bias [3] is passed once per batch (without_batch_dim_inputs=[1])
        "add_bias_fixed": model(
            "add_bias_fixed",
            [helper.make_node("Add", ["x", "bias"], ["y"])],
            [vi("x", f32, [2, 3]), vi("bias", f32, [3])],
            [vi("y", f32, [2, 3])],
        ),
        # symbolic non-batch dims: x1 [N, A] + x2 [N, B] fails at run time when A != B (and neither is 1)
        "add_symbolic": model(
            "add_symbolic",
            [helper.make_node("Add", ["x1", "x2"], ["y"])],
            [vi("x1", f32, ["N", "A"]), vi("x2", f32, ["N", "B"])],
            [vi("y", f32, ["N", "C"])],
        ),
        # bfloat16 is an ONNX type rustserve does not carry: read_signature must reject it
        "bf16_identity": model(
            "bf16_identity",
            [helper.make_node("Identity", ["x"], ["y"])],
            [vi("x", TensorProto.BFLOAT16, [2])],
            [vi("y", TensorProto.BFLOAT16, [2])],
        ),
    }
    # one Identity per supported element type, all [2], inputs in_<t>, outputs out_<t>
    kinds = [
        ("bool", TensorProto.BOOL),
        ("i8", TensorProto.INT8),
        ("u8", TensorProto.UINT8),
        ("i16", TensorProto.INT16),
        ("u16", TensorProto.UINT16),
        ("i32", TensorProto.INT32),
        ("u32", TensorProto.UINT32),
        ("i64", TensorProto.INT64),
        ("u64", TensorProto.UINT64),
        ("f16", TensorProto.FLOAT16),
        ("f32", TensorProto.FLOAT),
        ("f64", TensorProto.DOUBLE),
        ("str", TensorProto.STRING),
    ]
    models["identity_all"] = model(
        "identity_all",
        [helper.make_node("Identity", [f"in_{k}"], [f"out_{k}"]) for k, _ in kinds],
        [vi(f"in_{k}", t, [2]) for k, t in kinds],
        [vi(f"out_{k}", t, [2]) for k, t in kinds],
    )
    return models


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, m in build().items():
        save(m, str(out / f"{name}.onnx"))
    print("ok")


if __name__ == "__main__":
    main()
