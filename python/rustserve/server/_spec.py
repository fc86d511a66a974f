"""The plain-data servable spec that the Python loader hands to the native core (`Server.add_servables`).

`register` records declarations while `servable_config.py` is imported; `_loader.py` turns them into one
`ServableSpec` per (servable, version). Only these keys cross into Rust, so this file is the contract between
the two halves: change it together with rust/src/servable/spec.rs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypedDict


class SourceSpec(TypedDict):
    """Where a stage input or a method output comes from.

    stage 0 is the method's inputs (index = position of the method parameter); stage k >= 1 is the k-th
    `add_stage` call of the method (index = which of its outputs).
    """

    stage: int
    index: int


class ModelSpec(TypedDict):
    key: str  # model files joined with ";" (MindSpore's model key)
    files: list[str]  # absolute paths inside the version directory, one per subgraph
    with_batch_dim: bool
    without_batch_dim_inputs: list[int]  # input indices fed once per batch (from the batch's first instance)
    max_batch_size: int | None  # rows per batch when dim 0 is symbolic; None = default (see Rust BatchConfig)
    max_queue_delay_ms: float | None  # longest wait for a fuller batch; None or 0 = never wait
    preferred_batch_sizes: list[int]  # run sizes to prefer for a symbolic dim 0; [] = none
    device_type: Literal["cpu", "gpu"]
    device_ids: list[int]  # CUDA devices for "gpu"; ignored for "cpu"
    intra_op_threads: int | None  # from Context(thread_num=...); None = the cores / the servable's sessions (min 1)
    distributed: DistributedSpec | None  # declare_servable's layout; files is [] (the agents hold the model)


class DistributedSpec(TypedDict):
    rank_size: int
    stage_size: int


class ModelStageSpec(TypedDict):
    kind: Literal["model"]
    model: int  # index into ServableSpec.models
    subgraph: int
    inputs: list[SourceSpec]
    outputs_count: int
    tag: str  # error tag, e.g. "Model 'add.onnx'"


class FunctionStageSpec(TypedDict):
    kind: Literal["function"]
    function: Callable[..., Any]
    name: str  # "<servable>.<func.__name__>"
    inputs: list[SourceSpec]
    outputs_count: int
    batch_size: int | None  # None: called per instance f(*inputs); >= 0: called with a list of input tuples
    tag: str  # error tag, e.g. "Function 'add.preprocess'" or the user's tag


class MethodSpec(TypedDict):
    name: str
    inputs: list[str]
    output_names: list[str]
    outputs: list[SourceSpec]
    stages: list[ModelStageSpec | FunctionStageSpec]


class ServableSpec(TypedDict):
    name: str
    version: int
    version_dir: str  # absolute path of <servable_directory>/<name>/<version> ("" when no models are declared)
    servable_directory: str  # absolute servable directory; Python worker processes import the config from it
    num_parallel_workers: int  # Python stage executors: n >= 2 worker processes; 0 or 1: see python_in_process
    python_in_process: bool  # with < 2 executors: the server's GIL thread (True) or one worker process (False)
    models: list[ModelSpec]
    methods: list[MethodSpec]
