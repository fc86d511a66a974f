"""Methods: `register_method` traces the decorated body, `add_stage` records its stage graph."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from rustserve.server._spec import FunctionStageSpec, ModelStageSpec, SourceSpec
from rustserve.server.register.check_type import _check_and_as_str_tuple_list, _check_int, _check_str
from rustserve.server.register.model import Model
from rustserve.server.register.registry import _Registry, _registry, _StageFunctionInfo, _Trace

_logger = logging.getLogger("rustserve")


class _TensorDef:
    """Placeholder for a value inside a method: method input (stage 0) or output `index` of stage `stage`."""

    __slots__ = ("_trace", "index", "stage")

    def __init__(self, trace: _Trace, stage: int, index: int) -> None:
        self._trace = trace
        self.stage = stage
        self.index = index

    def as_source(self) -> SourceSpec:
        return {"stage": self.stage, "index": self.index}

    def __repr__(self) -> str:
        return f"<placeholder stage={self.stage} index={self.index}>"


def _argmax_cpp(x: Any) -> Any:
    """Built-in stage "argmax_cpp": index of the largest element of the (flattened) input, as an int64 scalar."""
    import numpy as np

    return np.int64(np.argmax(np.asarray(x)))


# C++ stage functions of MindSpore Serving that rustserve provides: name -> (function, inputs, outputs).
_BUILTIN_STAGES: dict[str, tuple[Callable[..., Any], int, int]] = {"argmax_cpp": (_argmax_cpp, 1, 1)}


def _check_stage_function(
    registry: _Registry, method_name: str, name: str, inputs_count: int, outputs_count: int
) -> _StageFunctionInfo | None:
    info = registry.functions.get(name)
    if info is None:
        return None
    if info.inputs_count != inputs_count:
        raise RuntimeError(
            f"Stage function '{name}' inputs count {inputs_count} not match last registered count "
            f"{info.inputs_count}, method name '{method_name}'"
        )
    if info.outputs_count != outputs_count:
        raise RuntimeError(
            f"Stage function '{name}' outputs count {outputs_count} not match last registered count "
            f"{info.outputs_count}, method name '{method_name}'"
        )
    return info


def _register_stage_function(
    registry: _Registry, method_name: str, name: str, inputs_count: int, outputs_count: int, use_with_size: bool
) -> None:
    info = _check_stage_function(registry, method_name, name, inputs_count, outputs_count)
    if info is not None and info.use_with_size != use_with_size:
        raise RuntimeError(
            f"Failed to add stage function {name}: parameter 'batch_size' in multiple 'add_stage' should be enabled "
            f"or disabled consistently"
        )
    registry.functions[name] = _StageFunctionInfo(inputs_count, outputs_count, use_with_size)


def add_stage(
    stage: Callable[..., Any] | Model | str,
    *args: Any,
    outputs_count: int,
    batch_size: int | None = None,
    tag: str | None = None,
) -> Any:
    """Adds a stage to the method being registered; use it only inside a `register_method` function.

    Args:
        stage: A Python function, a `Model` from `declare_model`, or the name of a built-in stage
            ("argmax_cpp": one input -> int64 index of its largest element).
        *args: The stage inputs: placeholders that are method inputs or outputs of earlier `add_stage` calls.
        outputs_count: How many values the stage returns per instance.
        batch_size: Functions only. None: the function is called per instance as `f(*inputs)`; 0 or more:
            it is called with a list of input tuples (at most `batch_size` of them, 0 = chosen by the server).
        tag: Replaces the default stage name (`Function '<servable>.<func>'`, `Model '<key>'`) in error texts.

    Returns:
        One placeholder when `outputs_count` is 1, else a tuple of `outputs_count` placeholders.

    Raises:
        RuntimeError: An input is not a placeholder, the stage is invalid or inconsistent with earlier uses.

    Example:
        >>> x1, x2 = register.add_stage(preprocess, x1, x2, outputs_count=2)
        >>> y = register.add_stage(model, x1, x2, outputs_count=1)
    """
    registry = _registry("add_stage")
    trace = registry.trace
    if trace is None:
        raise RuntimeError("'add_stage' can only be used in a function decorated by 'register_method'")
    method_name = trace.method_name
    if tag is not None:
        _check_str("tag", tag)
    for item in args:
        if not isinstance(item, _TensorDef) or item._trace is not trace:
            raise RuntimeError(
                "Each value of parameter *args is a placeholder for data and must come from the method inputs or "
                "the outputs of add_stage"
            )
    _check_int("outputs_count", outputs_count, 1)
    inputs = [item.as_source() for item in args]
    inputs_count = len(args)

    stage_spec: ModelStageSpec | FunctionStageSpec
    if isinstance(stage, Model):
        model_index = registry.model_index(stage)
        if model_index is None:
            raise RuntimeError(
                f"Check failed in method '{method_name}', the parameter 'stage' of add_stage must be function or "
                f"Model returned by declare_model, and ensure that interface 'declare_model' can take effect when "
                f"importing servable_config.py by the serving server"
            )
        declared = registry.models[model_index]
        old = declared.io_counts.get(0)
        if old is not None and old[0] != inputs_count:
            raise RuntimeError(
                f"RegisterInputOutputInfo failed, inputs count {inputs_count} not match old count {old[0]}, "
                f"model: {stage.model_key}"
            )
        if old is not None and old[1] != outputs_count:
            raise RuntimeError(
                f"RegisterInputOutputInfo failed, outputs count {outputs_count} not match old count {old[1]}, "
                f"model: {stage.model_key}"
            )
        declared.io_counts[0] = (inputs_count, outputs_count)
        stage_spec = {
            "kind": "model",
            "model": model_index,
            "subgraph": 0,
            "inputs": inputs,
            "outputs_count": outputs_count,
            "tag": tag if tag is not None else f"Model '{stage.model_key}'",
        }
    elif inspect.isfunction(stage):
        name = f"{registry.servable_name}.{stage.__name__}"
        if batch_size is None:
            arg_count = len(inspect.signature(stage).parameters)
            if arg_count != inputs_count:
                raise RuntimeError(
                    f"function {stage.__name__} input args count {arg_count} not match the count {inputs_count} "
                    f"registered in method"
                )
            _register_stage_function(registry, method_name, name, inputs_count, outputs_count, False)
        else:
            _check_int("batch_size", batch_size, 0)
            _register_stage_function(registry, method_name, name, inputs_count, outputs_count, True)
        stage_spec = {
            "kind": "function",
            "function": stage,
            "name": name,
            "inputs": inputs,
            "outputs_count": outputs_count,
            "batch_size": batch_size,
            "tag": tag if tag is not None else f"Function '{name}'",
        }
    elif isinstance(stage, str):
        builtin = _BUILTIN_STAGES.get(stage)
        if builtin is None:
            raise RuntimeError(
                f"Check failed in method '{method_name}', C++ stage function '{stage}' is not supported, "
                f"rustserve provides {', '.join(repr(name) for name in _BUILTIN_STAGES)}"
            )
        function, builtin_inputs, builtin_outputs = builtin
        registry.functions.setdefault(stage, _StageFunctionInfo(builtin_inputs, builtin_outputs, False))
        _check_stage_function(registry, method_name, stage, inputs_count, outputs_count)
        stage_spec = {
            "kind": "function",
            "function": function,
            "name": stage,
            "inputs": inputs,
            "outputs_count": outputs_count,
            "batch_size": None,
            "tag": tag if tag is not None else f"Function '{stage}'",
        }
    else:
        raise RuntimeError(
            f"Check failed in method '{method_name}', the parameter 'stage' of add_stage must be function or Model "
            f"returned by declare_model, now is {type(stage)}"
        )

    trace.stages.append(stage_spec)
    stage_index = len(trace.stages)  # stage 0 is the method inputs
    outputs = tuple(_TensorDef(trace, stage_index, i) for i in range(outputs_count))
    return outputs[0] if outputs_count == 1 else outputs


def _raise_placeholder_return() -> NoReturn:
    raise RuntimeError(
        "Each value returned is a placeholder for data and must come from the method inputs or the outputs of add_stage"
    )


def register_method(output_names: str | Sequence[str]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Registers the decorated function as a method of the servable.

    The method's input names are the function's parameter names. The body runs once, while servable_config.py
    is imported, with placeholders as arguments: its `add_stage` calls define the stage graph and it returns
    the placeholders that become the outputs (method inputs may be returned directly).

    Args:
        output_names: The method's output name(s), matching the returned placeholders in order.

    Returns:
        The decorator; it returns the function unchanged.

    Raises:
        RuntimeError: Invalid names, `*args` / `**kwargs` / keyword-only parameters, a method name used twice,
            a returned value that is not a placeholder, or a return count that differs from `output_names`.

    Example:
        >>> @register.register_method(output_names=["y"])
        ... def add_common(x1, x2):
        ...     return register.add_stage(model, x1, x2, outputs_count=1)
    """
    names = _check_and_as_str_tuple_list("output_names", output_names)

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        registry = _registry("register_method")
        if registry.trace is not None:
            raise RuntimeError("'register_method' cannot be used inside another method being registered")
        name = func.__name__
        input_names: list[str] = []
        for key, parameter in inspect.signature(func).parameters.items():
            if parameter.kind == inspect.Parameter.VAR_POSITIONAL:
                raise RuntimeError(f"'{name}' input {key} cannot be VAR_POSITIONAL !")
            if parameter.kind == inspect.Parameter.VAR_KEYWORD:
                raise RuntimeError(f"'{name}' input {key} cannot be VAR_KEYWORD !")
            if parameter.kind == inspect.Parameter.KEYWORD_ONLY:
                raise RuntimeError(f"'{name}' input {key} cannot be KEYWORD_ONLY !")
            input_names.append(key)

        trace = _Trace(method_name=name)
        registry.trace = trace
        try:
            returned = func(*(_TensorDef(trace, 0, i) for i in range(len(input_names))))
        finally:
            registry.trace = None

        if isinstance(returned, _TensorDef):
            returned = (returned,)
        if not isinstance(returned, (tuple, list)):
            _raise_placeholder_return()
        for item in returned:
            if not isinstance(item, _TensorDef) or item._trace is not trace:
                _raise_placeholder_return()
        if len(returned) != len(names):
            raise RuntimeError(f"Method return output size {len(returned)} not match registered {len(names)}")
        if any(method["name"] == name for method in registry.methods):
            raise RuntimeError(f"Method {name} has been registered more than once.")
        registry.methods.append(
            {
                "name": name,
                "inputs": input_names,
                "output_names": list(names),
                "outputs": [item.as_source() for item in returned],
                "stages": trace.stages,
            }
        )
        _logger.debug(
            "register method %s of servable %s: inputs %s, outputs %s, %d stage(s)",
            name,
            registry.servable_name,
            input_names,
            list(names),
            len(trace.stages),
        )
        return func

    return register
