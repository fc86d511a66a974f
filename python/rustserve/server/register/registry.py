"""The registry of the servable being imported: what `declare_model` and `register_method` record into."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rustserve.server._spec import FunctionStageSpec, MethodSpec, ModelStageSpec

if TYPE_CHECKING:
    from rustserve.server.register.model import Model


@dataclass
class _DeclaredModel:
    """One `declare_model` call."""

    model: Model
    files: tuple[str, ...]
    with_batch_dim: bool
    without_batch_dim_inputs: tuple[int, ...]
    max_batch_size: int | None
    intra_op_threads: int | None
    config_file: str | None
    max_queue_delay_ms: float | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    # (rank_size, stage_size) of `distributed.declare_servable`; its ranks' files belong to the agents.
    distributed: tuple[int, int] | None = None
    # subgraph -> (inputs count, outputs count), as used by `add_stage` (MindSpore's RegisterInputOutputInfo).
    io_counts: dict[int, tuple[int, int]] = field(default_factory=dict)


@dataclass
class _StageFunctionInfo:
    """What the stages that used one function identity (`<servable>.<func>` or a C++ name) agreed on."""

    inputs_count: int
    outputs_count: int
    use_with_size: bool


@dataclass
class _Trace:
    """State of the `register_method` body being traced."""

    method_name: str
    stages: list[ModelStageSpec | FunctionStageSpec] = field(default_factory=list)


class _Registry:
    """Everything one servable_config.py declares; filled while the loader imports it.

    Args:
        servable_name: The servable's name: the directory that holds servable_config.py.
        config_dir: That directory (relative `config_file` paths start there); "" when unknown.
    """

    def __init__(self, servable_name: str, config_dir: str = "") -> None:
        self.servable_name = servable_name
        self.config_dir = config_dir
        self.models: list[_DeclaredModel] = []
        self.methods: list[MethodSpec] = []
        self.functions: dict[str, _StageFunctionInfo] = {}
        self.trace: _Trace | None = None

    def model_index(self, model: Model) -> int | None:
        """Index of `model` in `self.models` (identity), or None when it was not declared here."""
        for index, declared in enumerate(self.models):
            if declared.model is model:
                return index
        return None


_current_registry: ContextVar[_Registry | None] = ContextVar("rustserve_servable_registry", default=None)


@contextlib.contextmanager
def _recording(registry: _Registry) -> Iterator[_Registry]:
    """Makes `registry` the target of the register API for the duration of the block (used by the loader)."""
    token = _current_registry.set(registry)
    try:
        yield registry
    finally:
        _current_registry.reset(token)


def _registry(api_name: str) -> _Registry:
    registry = _current_registry.get()
    if registry is None:
        raise RuntimeError(
            f"'{api_name}' can only be used in servable_config.py while rustserve loads the servable "
            f"(server.start_servables or `rustserve start`)"
        )
    return registry
