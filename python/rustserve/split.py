"""`rustserve split`: one ONNX model -> the rank files of a distributed servable.

The model is cut into pipeline stages at tensor names (`--cut`, or `--stages N` to balance the weight bytes), each
cut with `onnx.utils.extract_model`; with `--ranks-per-stage M` each stage is sharded into M ranks by its output
layer: the MatMul (or MatMul + Add of a constant bias) that produces the stage's one output gets 1/M of its weight,
by columns (outputs concatenated on the last axis) or by rows (each rank reads its slice of the layer's input;
outputs summed). Layers before it are the same on every rank. Writes `rank<i>/model.onnx`, `rank<i>/group_config.json`
and `rank_table.json`, then runs the split model against the whole one on random inputs and prints the largest
difference. Needs the `onnx` package (`pip install onnx`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Stage:
    inputs: list[str]
    outputs: list[str]


def _topo_cuts(model: Any) -> list[tuple[int, set[str], int]]:
    """Per node boundary (after node i): the tensors crossing it and the weight bytes of the nodes before it."""
    graph = model.graph
    weights = {init.name: int(np.prod(init.dims)) * 4 for init in graph.initializer}
    inputs = {i.name for i in graph.input} - set(weights)
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            last_use[name] = index
    for output in graph.output:
        last_use[output.name] = len(graph.node)
    produced: set[str] = set()
    cuts = []
    before = 0
    for index, node in enumerate(graph.node[:-1]):
        produced.update(node.output)
        before += sum(weights.get(name, 0) for name in node.input)
        crossing = {name for name in produced if last_use.get(name, -1) > index}
        needs_input = any(last_use.get(name, -1) > index for name in inputs)
        if crossing and not needs_input:
            cuts.append((index, crossing, before))
    return cuts


def plan_stages(model: Any, cuts: Sequence[str], stages: int) -> list[Stage]:
    """The stages' input and output names, cutting at `cuts` (tensor names) or into `stages` balanced parts."""
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    model_inputs = [i.name for i in graph.input if i.name not in initializers]
    model_outputs = [o.name for o in graph.output]
    candidates = _topo_cuts(model)
    if cuts:
        chosen = []
        for name in cuts:
            found = [c for c in candidates if c[1] == {name}]
            if not found:
                raise SystemExit(
                    f"rustserve split: cannot cut at '{name}': it is not the only tensor that crosses a point between "
                    "two nodes (the later nodes need other tensors or the model's inputs too)"
                )
            chosen.append(found[0][1])
    elif stages > 1:
        total = sum(int(np.prod(init.dims)) * 4 for init in graph.initializer) or 1
        chosen = []
        for k in range(1, stages):
            target = total * k / stages
            best = min(candidates, key=lambda c: abs(c[2] - target), default=None)
            if best is None or best[1] in chosen:
                raise SystemExit(f"rustserve split: the model has no {stages} places to cut into pipeline stages")
            chosen.append(best[1])
    else:
        chosen = []
    bounds = [model_inputs, *[sorted(c) for c in chosen], model_outputs]
    return [Stage(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def _shard(stage_model: Any, ranks: int, by: str) -> list[Any]:
    """`ranks` copies of a one-output stage whose output layer holds 1/ranks of its weight each."""
    import onnx
    from onnx import helper, numpy_helper

    graph = stage_model.graph
    if len(graph.output) != 1:
        raise SystemExit("rustserve split: only a stage with one output can be sharded")
    out = graph.output[0].name
    producers = {o: node for node in graph.node for o in node.output}
    inits = {init.name: init for init in graph.initializer}
    last = producers.get(out)
    # Elementwise ops after the layer commute with its split: any for columns, only linear ones for a sum of rows.
    passthrough = {"Neg", "Identity"} | ({"Relu", "Sigmoid", "Tanh", "Abs", "Exp", "Erf"} if by == "columns" else set())
    while last is not None and last.op_type in passthrough and len(last.input) == 1:
        last = producers.get(last.input[0])
    bias = None
    if last is not None and last.op_type == "Add":
        matmul = next((producers.get(i) for i in last.input if i not in inits), None)
        bias = next((i for i in last.input if i in inits), None)
    else:
        matmul, last = last, None
    if matmul is None or matmul.op_type != "MatMul" or matmul.input[1] not in inits:
        raise SystemExit(
            f"rustserve split: stage output '{out}' is not made by a MatMul with a constant weight (optionally plus a "
            "constant bias), so it cannot be sharded"
        )
    weight = numpy_helper.to_array(inits[matmul.input[1]])
    if weight.ndim != 2 or weight.shape[1 if by == "columns" else 0] % ranks != 0:
        raise SystemExit(f"rustserve split: weight {list(weight.shape)} does not split into {ranks} equal {by}")
    copies = []
    for rank in range(ranks):
        shard = onnx.ModelProto()
        shard.CopyFrom(stage_model)
        g = shard.graph
        g.ClearField("value_info")  # intermediate shapes of the whole layer no longer hold
        names = {init.name: init for init in g.initializer}
        node = next(n for n in g.node if list(n.output) == list(matmul.output))
        if by == "columns":
            width = weight.shape[1] // ranks
            cols = slice(rank * width, (rank + 1) * width)
            names[matmul.input[1]].CopyFrom(numpy_helper.from_array(weight[:, cols], matmul.input[1]))
            if bias is not None:
                values = numpy_helper.to_array(names[bias])
                names[bias].CopyFrom(numpy_helper.from_array(values[..., cols], bias))
        else:
            height = weight.shape[0] // ranks
            rows = slice(rank * height, (rank + 1) * height)
            names[matmul.input[1]].CopyFrom(numpy_helper.from_array(weight[rows], matmul.input[1]))
            part = f"{matmul.input[0]}__rank{rank}"
            g.initializer.extend(
                [
                    numpy_helper.from_array(np.array([rows.start], np.int64), f"{part}_starts"),
                    numpy_helper.from_array(np.array([rows.stop], np.int64), f"{part}_ends"),
                    numpy_helper.from_array(np.array([-1], np.int64), f"{part}_axes"),
                ]
            )
            position = list(g.node).index(node)
            g.node.insert(
                position,
                helper.make_node("Slice", [matmul.input[0], f"{part}_starts", f"{part}_ends", f"{part}_axes"], [part]),
            )
            node.input[0] = part
            if bias is not None and rank > 0:
                values = numpy_helper.to_array(names[bias])
                names[bias].CopyFrom(numpy_helper.from_array(np.zeros_like(values), bias))
        dims = g.output[0].type.tensor_type.shape.dim
        if by == "columns" and dims:
            dims[len(dims) - 1].ClearField("dim_value")
        copies.append(shard)
    return copies


def _random_inputs(model: Any, batch: int) -> dict[str, np.ndarray]:
    from onnx import helper

    initializers = {init.name for init in model.graph.initializer}
    feeds = {}
    rng = np.random.default_rng(0)
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in tensor.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _run_split(
    paths: list[list[str]], configs: list[list[dict[str, Any]]], feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Runs the rank files as the server would: stage by stage, ranks combined as their group configs say."""
    import onnxruntime as ort

    values = dict(feeds)
    for stage_paths, stage_configs in zip(paths, configs, strict=True):
        outs = []
        for path in stage_paths:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            wanted = {i.name: values[i.name] for i in session.get_inputs()}
            names = [o.name for o in session.get_outputs()]
            outs.append(dict(zip(names, session.run(names, wanted), strict=True)))
        values = {}
        for name in outs[0]:
            op = stage_configs[0]["combine"].get(name, {"op": "first"})
            parts = [o[name] for o in outs]
            if op["op"] == "concat":
                values[name] = np.concatenate(parts, axis=op["axis"])
            elif op["op"] == "sum":
                values[name] = np.sum(parts, axis=0)
            else:
                values[name] = parts[0]
    return values


def split(
    model_path: str,
    out_dir: str,
    cuts: Sequence[str] = (),
    stages: int = 1,
    ranks_per_stage: int = 1,
    by: str = "columns",
    server_id: str = "127.0.0.1",
    batch: int = 2,
) -> float:
    """Writes the rank files, group configs and rank table; returns the largest difference against the whole model."""
    import onnx
    import onnx.utils
    import onnxruntime as ort

    model = onnx.load(model_path)
    plan = plan_stages(model, cuts, stages)
    os.makedirs(out_dir, exist_ok=True)
    paths: list[list[str]] = []
    configs: list[list[dict[str, Any]]] = []
    rank = 0
    with tempfile.TemporaryDirectory() as scratch:
        for k, stage in enumerate(plan):
            part = os.path.join(scratch, f"stage{k}.onnx")
            onnx.utils.extract_model(model_path, part, stage.inputs, stage.outputs)
            stage_model = onnx.load(part)
            shards = [stage_model] if ranks_per_stage == 1 else _shard(stage_model, ranks_per_stage, by)
            op = {"op": "concat", "axis": -1} if by == "columns" else {"op": "sum"}
            combine = {} if ranks_per_stage == 1 else {stage.outputs[0]: op}
            stage_paths, stage_configs = [], []
            for shard in shards:
                folder = os.path.join(out_dir, f"rank{rank}")
                os.makedirs(folder, exist_ok=True)
                path = os.path.join(folder, "model.onnx")
                onnx.save(shard, path)
                config = {"stage": k, "combine": combine}
                with open(os.path.join(folder, "group_config.json"), "w", encoding="utf-8") as file:
                    json.dump(config, file, indent=2)
                stage_paths.append(path)
                stage_configs.append(config)
                rank += 1
            paths.append(stage_paths)
            configs.append(stage_configs)
    devices = [{"device_id": str(i), "device_ip": "0.0.0.0", "rank_id": str(i)} for i in range(rank)]
    table = {
        "version": "1.0",
        "server_count": "1",
        "server_list": [{"server_id": server_id, "device": devices}],
        "status": "completed",
    }
    with open(os.path.join(out_dir, "rank_table.json"), "w", encoding="utf-8") as file:
        json.dump(table, file, indent=2)
    feeds = _random_inputs(model, batch)
    whole = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in whole.get_outputs()]
    expected = dict(zip(names, whole.run(names, feeds), strict=True))
    got = _run_split(paths, configs, feeds)
    return max(float(np.max(np.abs(got[n] - expected[n]))) if expected[n].size else 0.0 for n in names)
