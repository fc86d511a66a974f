"""MindSpore Serving's servable_config.py API: `declare_model`, `add_stage`, `register_method`.

Nothing here does I/O or keeps module-level state: every call records into the registry of the servable that
rustserve's loader (`rustserve.server._loader`) is importing right now, found through a `ContextVar`. The
loader turns the registry into `ServableSpec` dicts (`rustserve.server._spec`) for the native core.

`register_method` runs the decorated body once at import time with placeholder objects, so the `add_stage`
calls inside it record the method's stage graph; data-dependent control flow is therefore impossible.

Example (servable_config.py)::

    from rustserve.server import register

    model = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=False)

    @register.register_method(output_names=["y"])
    def add_common(x1, x2):
        y = register.add_stage(model, x1, x2, outputs_count=1)
        return y
"""

from __future__ import annotations

import configparser
import contextlib
import importlib
import inspect
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NoReturn

from rustserve.server._spec import FunctionStageSpec, MethodSpec, ModelStageSpec, SourceSpec

__all__ = [
    "AclOptions",
    "AscendDeviceInfo",
    "CPUDeviceInfo",
    "Context",
    "GPUDeviceInfo",
    "GpuOptions",
    "Model",
    "add_stage",
    "declare_model",
    "declare_servable",
    "register_method",
]

_logger = logging.getLogger("rustserve")

# ---------------------------------------------------------------------------------------------------------------
# Parameter checks with MindSpore Serving's texts (mindspore_serving/server/common/check_type.py).
# ---------------------------------------------------------------------------------------------------------------


def _check_str(arg_name: str, value: object) -> str:
    if not isinstance(value, str):
        raise RuntimeError(f"Parameter '{arg_name}' should be str, but actually {type(value)}")
    if not value:
        raise RuntimeError(f"Parameter '{arg_name}' should not be empty str")
    return value


def _check_bool(arg_name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise RuntimeError(f"Parameter '{arg_name}' should be bool, but actually {type(value)}")
    return value


def _check_int(
    arg_name: str,
    value: object,
    minimum: int | None = None,
    maximum: int | None = None,
    is_tuple_item: bool = False,
) -> int:
    prefix = f"The item value '{value}' in parameter '{arg_name}'" if is_tuple_item else f"Parameter '{arg_name}'"
    if isinstance(value, bool) or not isinstance(value, int):
        raise RuntimeError(f"{prefix} should be int, but actually {type(value)}")
    if minimum is not None and value < minimum:
        if maximum is not None:
            raise RuntimeError(f"{prefix} should be in range [{minimum},{maximum}]")
        raise RuntimeError(f"{prefix} should be >= {minimum}")
    if maximum is not None and value > maximum:
        if minimum is not None:
            raise RuntimeError(f"{prefix} should be in range [{minimum},{maximum}]")
        raise RuntimeError(f"{prefix} should be <= {maximum}")
    return value


def _check_and_as_str_tuple_list(arg_name: str, values: object) -> tuple[str, ...]:
    if isinstance(values, str):
        values = (values,)
    if not isinstance(values, (tuple, list)):
        raise RuntimeError(f"Parameter '{arg_name}' should be str or tuple/list of str, but actually {type(values)}")
    result: list[str] = []
    for item in values:
        if not isinstance(item, str):
            raise RuntimeError(f"The item of parameter '{arg_name}' should be str, but actually {type(item)}")
        if not item:
            raise RuntimeError(f"The item of parameter '{arg_name}' should not be empty str")
        if item in result:
            raise RuntimeError(f"The item value '{item}' in parameter '{arg_name}' should not be repeated")
        result.append(item)
    return tuple(result)


def _check_int_items(arg_name: str, values: Sequence[object], minimum: int | None) -> tuple[int, ...]:
    result: list[int] = []
    for item in values:
        if item in result:
            raise RuntimeError(f"The item value '{item}' in parameter '{arg_name}' should not be repeated")
        result.append(_check_int(arg_name, item, minimum, None, True))
    return tuple(result)


def _check_and_as_int_tuple_list(arg_name: str, values: object, minimum: int | None = None) -> tuple[int, ...]:
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, (tuple, list)):
        raise RuntimeError(f"Parameter '{arg_name}' should be int or tuple/list of int, but actually {type(values)}")
    return _check_int_items(arg_name, values, minimum)


def _check_int_tuple_list(arg_name: str, values: object, minimum: int | None = None) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)):
        raise RuntimeError(f"Parameter '{arg_name}' should be tuple/list of int, but actually {type(values)}")
    return _check_int_items(arg_name, values, minimum)


# ---------------------------------------------------------------------------------------------------------------
# The registry of the servable being imported.
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Models and their options.
# ---------------------------------------------------------------------------------------------------------------


class Model:
    """A model declared by `declare_model`; use it as the `stage` of `add_stage` or call it with `Model.call`.

    Users do not construct it: `declare_model` returns it.

    Args:
        model_key: The model files joined with ";".
    """

    def __init__(self, model_key: str) -> None:
        self.model_key = model_key

    def __repr__(self) -> str:
        return f"Model({self.model_key!r})"

    def call(self, *args: Any, subgraph: int = 0) -> Any:
        """Runs the model from inside a Python stage, batched with the model's other traffic.

        Args:
            *args: The inputs of one instance, `call(x1, x2)`, or one list/tuple of per-instance input lists,
                `call([[x1, x2], [x1, x2]])`.
            subgraph: Which model file (subgraph) to run when the model has several.

        Returns:
            For one instance, its single output, or a tuple of outputs when the model has several; for the
            list form, a tuple with one tuple of outputs per instance.

        Raises:
            RuntimeError: The inputs are malformed or the model run failed; the text starts with
                `Model(<key>).call() failed: `.

        Example:
            >>> def postprocess(x1, x2):
            ...     y = model.call(x1, x2)
            ...     return y.argmax()
        """
        _check_int("subgraph", subgraph, 0)
        # NOTE: " ,subgraph=" (sic) is MindSpore Serving 2.0.2's spelling (register/model.py).
        subgraph_str = f" ,subgraph={subgraph}" if subgraph != 0 else ""
        prefix = f"Model({self.model_key}{subgraph_str}).call() failed: "
        if not args:
            raise RuntimeError(
                f"{prefix}no inputs provided, the inputs can be call(x1, x2) for single instance or "
                f"call([[x1, x2], [x1, x2]]) for multi instances."
            )
        instances: list[tuple[Any, ...]] = []
        instance_format = len(args) == 1 and isinstance(args[0], (tuple, list))
        if instance_format:
            for instance in args[0]:
                if not isinstance(instance, (tuple, list)):
                    raise RuntimeError(
                        f"{prefix}inputs format invalid, the inputs can be call(x1, x2) for single instance or "
                        f" call([[x1, x2], [x1, x2]]) for multi instances."
                    )
                instances.append(tuple(instance))
            if not instances:
                raise RuntimeError(f"{prefix}Input instances count is 0")
        else:
            instances.append(tuple(args))

        native = importlib.import_module("rustserve._rustserve")
        try:
            output = native.model_call(self.model_key, subgraph, instances)
        except Exception as exc:
            text = str(exc)
            raise RuntimeError(text if text.startswith(f"Model({self.model_key}") else prefix + text) from exc
        if not instance_format:
            first = tuple(output[0])
            return first[0] if len(first) == 1 else first
        return tuple(tuple(item) for item in output)


class _DeviceInfoContext:
    """Base of the per-device option holders accepted by `Context.append_device_info`."""

    _device_type = ""

    def __init__(self) -> None:
        self.context_map: dict[str, str] = {}

    def _as_context_map(self) -> dict[str, str]:
        raise NotImplementedError


class _PrecisionDeviceInfo(_DeviceInfoContext):
    """A device info whose only option is `precision_mode` ("origin" or "fp16"), as for CPU and GPU."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.precision_mode = ""
        kind = self._device_type.capitalize()
        for key, value in kwargs.items():
            if key != "precision_mode":
                raise RuntimeError(f"Set {self._device_type} device info failed, unsupported option " + key)
            _check_str("precision_mode", value)
            if value not in ("origin", "fp16"):
                raise RuntimeError(f"{kind} device info 'precision_mode' can only be 'origin', 'fp16'. given '{value}'")
            self.precision_mode = value
        self.context_map = self._as_context_map()

    def _as_context_map(self) -> dict[str, str]:
        result = {"precision_mode": self.precision_mode} if self.precision_mode else {}
        result["device_type"] = self._device_type
        return result


class CPUDeviceInfo(_PrecisionDeviceInfo):
    """CPU options of a `Context`; accepted for compatibility, ONNX Runtime ignores them.

    Args:
        **kwargs: `precision_mode`: "origin" or "fp16".

    Raises:
        RuntimeError: An unknown option or an invalid value.
    """

    _device_type = "cpu"


class GPUDeviceInfo(_PrecisionDeviceInfo):
    """GPU options of a `Context`; accepted for compatibility, ONNX Runtime ignores them.

    Args:
        **kwargs: `precision_mode`: "origin" or "fp16".

    Raises:
        RuntimeError: An unknown option or an invalid value.
    """

    _device_type = "gpu"


_ASCEND_CHOICES: dict[str, tuple[tuple[str, ...], str]] = {
    "input_format": (
        ("ND", "NCHW", "NHWC", "CHWN", "NC1HWC0", "NHWC1C0"),
        "Ascend device info 'input_format' can only be 'ND', 'NCHW', 'NHWC', 'CHWN', 'NC1HWC0', or 'NHWC1C0', "
        "actually given '{}'",
    ),
    "output_type": (
        ("FP32", "FP16", "UINT8"),
        # NOTE: 'op_select_impl_mode' (sic) is MindSpore Serving's text for output_type.
        "Ascend device info 'op_select_impl_mode' can only be 'FP32'(default), 'FP16' or 'UINT8', actually given '{}'",
    ),
    "precision_mode": (
        ("force_fp16", "allow_fp32_to_fp16", "must_keep_origin_dtype", "allow_mix_precision"),
        "Ascend device info 'precision_mode' can only be 'force_fp16'(default), 'allow_fp32_to_fp16' "
        "'must_keep_origin_dtype' or 'allow_mix_precision', actually given '{}'",
    ),
    "op_select_impl_mode": (
        ("high_performance", "high_precision"),
        "Ascend device info 'op_select_impl_mode' can only be 'high_performance'(default) or 'high_precision', "
        "actually given '{}'",
    ),
    "buffer_optimize_mode": (
        ("l1_optimize", "l2_optimize", "off_optimize", "l1_and_l2_optimize"),
        "Ascend device info 'buffer_optimize_mode' can only be 'off_optimize'(default), 'l1_optimize', "
        "'l2_optimize' or 'l1_and_l2_optimize', actually given '{}'",
    ),
}
_ASCEND_OPTIONS = (
    "insert_op_cfg_path",
    "input_format",
    "input_shape",
    "output_type",
    "precision_mode",
    "op_select_impl_mode",
    "fusion_switch_config_path",
    "buffer_optimize_mode",
)


class AscendDeviceInfo(_DeviceInfoContext):
    """Ascend options of a `Context`; accepted for compatibility (rustserve does not run on Ascend).

    Args:
        **kwargs: `insert_op_cfg_path`, `input_format`, `input_shape`, `output_type`, `precision_mode`,
            `op_select_impl_mode`, `fusion_switch_config_path`, `buffer_optimize_mode` (all str).

    Raises:
        RuntimeError: An unknown option or an invalid value.
    """

    _device_type = "ascend"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.options: dict[str, str] = {}
        for key, value in kwargs.items():
            if key not in _ASCEND_OPTIONS:
                raise RuntimeError("Set ascend device info failed, unsupported parameter " + key)
            _check_str(key, value)
            if key in _ASCEND_CHOICES:
                choices, message = _ASCEND_CHOICES[key]
                if value not in choices:
                    raise RuntimeError(message.format(value))
            self.options[key] = value
        self.context_map = self._as_context_map()

    def _as_context_map(self) -> dict[str, str]:
        result = {key: self.options[key] for key in _ASCEND_OPTIONS if self.options.get(key)}
        result["device_type"] = self._device_type
        return result


class Context:
    """Model runtime options for `declare_model(context=...)`.

    Only `thread_num` changes rustserve's behaviour: it becomes ONNX Runtime's intra-op thread count for the
    model. The other options and the device infos are validated and otherwise ignored.

    Args:
        **kwargs: `thread_num` (int >= 1), `thread_affinity_core_list` (tuple/list of int >= 0),
            `enable_parallel` (bool).

    Raises:
        RuntimeError: An unknown option or an invalid value.

    Example:
        >>> context = register.Context(thread_num=2)
        >>> context.append_device_info(register.GPUDeviceInfo(precision_mode="fp16"))
    """

    def __init__(self, **kwargs: Any) -> None:
        self.thread_num: int | None = None
        self.thread_affinity_core_list: tuple[int, ...] = ()
        self.enable_parallel: bool | None = None
        self.device_list: list[dict[str, str]] = []
        self.device_types: list[str] = []
        for key, value in kwargs.items():
            if key == "thread_num":
                self.thread_num = _check_int("thread_num", value, 1)
            elif key == "thread_affinity_core_list":
                self.thread_affinity_core_list = _check_int_tuple_list("thread_affinity_core_list", value, 0)
            elif key == "enable_parallel":
                self.enable_parallel = _check_bool("enable_parallel", value)
            else:
                raise RuntimeError("Set context failed, unsupported option " + key)

    def append_device_info(self, device_info: CPUDeviceInfo | GPUDeviceInfo | AscendDeviceInfo) -> None:
        """Adds the options of one device type (at most one per type).

        Args:
            device_info: A `CPUDeviceInfo`, `GPUDeviceInfo` or `AscendDeviceInfo`.

        Raises:
            RuntimeError: Not a device info, or one of the same type was already appended.
        """
        if not isinstance(device_info, _DeviceInfoContext):
            raise RuntimeError(
                f"Parameter 'device_info' should instance of CPUDeviceInfo, GPUDeviceInfo, or AscendDeviceInfo, "
                f"but actually {type(device_info)}"
            )
        info_map = device_info._as_context_map()
        device_type = info_map["device_type"]
        if device_type in self.device_types:
            raise RuntimeError(f"Device info of type {device_type} has already been appended")
        self.device_types.append(device_type)
        self.device_list.append(info_map)

    def __str__(self) -> str:
        return (
            f"thread_num: {self.thread_num}, thread_affinity_core_list: {list(self.thread_affinity_core_list)}, "
            f"enable_parallel: {self.enable_parallel}, device_list, {self.device_list}"
        )


class AclOptions:
    """Deprecated Ascend options (MindSpore 1.x); use `Context` with `AscendDeviceInfo`.

    Args:
        **kwargs: The options of `AscendDeviceInfo`.
    """

    def __init__(self, **kwargs: Any) -> None:
        _logger.warning("'AclOptions' is deprecated, use 'Context' and 'AscendDeviceInfo' instead")
        self.context = Context()
        self.context.append_device_info(AscendDeviceInfo(**kwargs))


class GpuOptions:
    """Deprecated GPU options (MindSpore 1.x); use `Context` with `GPUDeviceInfo`.

    Args:
        **kwargs: The options of `GPUDeviceInfo`.
    """

    def __init__(self, **kwargs: Any) -> None:
        _logger.warning("'GpuOptions' is deprecated, use 'Context' and 'GPUDeviceInfo' instead")
        self.context = Context()
        self.context.append_device_info(GPUDeviceInfo(**kwargs))


def _check_delay_ms(arg_name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RuntimeError(f"Parameter '{arg_name}' should be int or float, but actually {type(value)}")
    if not math.isfinite(value) or value < 0:
        raise RuntimeError(f"Parameter '{arg_name}' should be a finite number >= 0, but actually {value}")
    return float(value)


def _check_preferred_batch_sizes(values: object, with_batch_dim: bool, max_batch_size: int | None) -> tuple[int, ...]:
    sizes = _check_and_as_int_tuple_list("preferred_batch_sizes", values, 1)
    if sizes and not with_batch_dim:
        raise RuntimeError("Parameter 'preferred_batch_sizes' needs with_batch_dim=True")
    if max_batch_size is not None:
        for size in sizes:
            if size > max_batch_size:
                raise RuntimeError(
                    f"The item value '{size}' in parameter 'preferred_batch_sizes' should be <= max_batch_size "
                    f"{max_batch_size}"
                )
    return sizes


def declare_model(
    model_file: str | Sequence[str],
    model_format: str,
    with_batch_dim: bool = True,
    options: AclOptions | GpuOptions | None = None,
    without_batch_dim_inputs: int | Sequence[int] | None = None,
    context: Context | None = None,
    config_file: str | None = None,
    max_batch_size: int | None = None,
    max_queue_delay_ms: float | None = None,
    preferred_batch_sizes: int | Sequence[int] | None = None,
) -> Model:
    """Declares a model of the servable; call it at the top level of servable_config.py.

    Args:
        model_file: The model file, or several files (one per subgraph), relative to the version directory
            `<servable_directory>/<servable_name>/<version>/`.
        model_format: "ONNX" (case ignored); rustserve serves ONNX models only.
        with_batch_dim: Whether dim 0 of the model's inputs and outputs is the batch dimension.
        options: Deprecated `AclOptions` / `GpuOptions`; used only when `context` is None.
        without_batch_dim_inputs: Index or indices of inputs that have no batch dimension; they are taken once
            per batch, from its first instance.
        context: Runtime options; `thread_num` sets ONNX Runtime's intra-op threads.
        config_file: An INI file, relative to the directory of servable_config.py or absolute. Its
            `[onnxruntime]` section may set `intra_op_num_threads` (`context`'s `thread_num` wins when both are
            given); other sections (MindSpore Lite's mixed-precision settings) are ignored with a warning.
        max_batch_size: rustserve extension: rows per batch when the model's dim 0 is symbolic; None leaves
            the default.
        max_queue_delay_ms: rustserve extension: how long (milliseconds, >= 0) an instance may wait for others
            to fill its batch. None or 0 never waits: whatever is queued runs at once.
        preferred_batch_sizes: rustserve extension, symbolic dim 0 only: batch sizes to run at when the queue
            allows (the largest one the queued instances fill); each in [1, max_batch_size].

    Returns:
        The `Model`, for `add_stage` or `Model.call`.

    Raises:
        RuntimeError: A parameter is invalid, a file is declared twice, or the call happens outside the import
            of a servable_config.py by rustserve.

    Example:
        >>> model = register.declare_model(model_file="resnet50.onnx", model_format="ONNX")
    """
    registry = _registry("declare_model")
    _check_bool("with_batch_dim", with_batch_dim)
    files = _check_and_as_str_tuple_list("model_file", model_file)
    model_key = ";".join(files)
    no_batch_inputs: tuple[int, ...] = ()
    if without_batch_dim_inputs is not None:
        no_batch_inputs = _check_and_as_int_tuple_list("without_batch_dim_inputs", without_batch_dim_inputs, 0)

    _check_str("model_format", model_format)
    if model_format.lower() != "onnx":
        raise RuntimeError(
            f"model format can only be ONNX, case ignored; rustserve serves ONNX models only, given '{model_format}'"
        )

    intra_op_threads: int | None = None
    if context is not None:
        if not isinstance(context, Context):
            raise RuntimeError(f"Parameter 'context' should be Context, but gotten {type(context)}")
        intra_op_threads = context.thread_num
    elif isinstance(options, (AclOptions, GpuOptions)):
        _logger.warning("'options' will be deprecated in the future, we recommend using 'context'")
        intra_op_threads = options.context.thread_num
    elif options is not None:
        raise RuntimeError(f"Parameter 'options' should be None, GpuOptions or AclOptions, but gotten {type(options)}")

    if config_file is not None:
        _check_str("config_file", config_file)
        configured = _config_file_threads(os.path.join(registry.config_dir, config_file), model_key)
        if intra_op_threads is None:
            intra_op_threads = configured
    if max_batch_size is not None:
        _check_int("max_batch_size", max_batch_size, 1)
    if max_queue_delay_ms is not None:
        max_queue_delay_ms = _check_delay_ms("max_queue_delay_ms", max_queue_delay_ms)
    preferred: tuple[int, ...] = ()
    if preferred_batch_sizes is not None:
        preferred = _check_preferred_batch_sizes(preferred_batch_sizes, with_batch_dim, max_batch_size)

    used_files = {name for declared in registry.models for name in declared.files}
    for name in files:
        if name in used_files:
            raise RuntimeError(f"Declare model {model_key} failed, model file '{name}' has already been used")
    if any(declared.model.model_key == model_key for declared in registry.models):
        raise RuntimeError(f"Declare model {model_key} failed, the same model has already been declared")

    model = Model(model_key)
    registry.models.append(
        _DeclaredModel(
            model=model,
            files=files,
            with_batch_dim=with_batch_dim,
            without_batch_dim_inputs=no_batch_inputs,
            max_batch_size=max_batch_size,
            intra_op_threads=intra_op_threads,
            config_file=config_file,
            max_queue_delay_ms=max_queue_delay_ms,
            preferred_batch_sizes=preferred,
        )
    )
    return model


_ORT_SECTION = "onnxruntime"
_ORT_KEYS = ("intra_op_num_threads",)


def _config_file_threads(path: str, model_key: str) -> int | None:
    """The intra-op thread count a `declare_model` config file sets, if any; its errors name the file and key."""
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as file:
            parser.read_file(file)
    except (OSError, configparser.Error) as exc:
        raise RuntimeError(f"Declare model {model_key} failed, cannot read config file '{path}': {exc}") from exc
    ignored = [section for section in parser.sections() if section != _ORT_SECTION]
    if ignored:
        _logger.warning(
            "declare_model: config file '%s': sections %s are not used by ONNX Runtime and are ignored", path, ignored
        )
    if not parser.has_section(_ORT_SECTION):
        return None
    section = parser[_ORT_SECTION]
    unknown = [key for key in section if key not in _ORT_KEYS]
    if unknown:
        raise RuntimeError(
            f"Declare model {model_key} failed, config file '{path}': unknown key(s) {unknown} in "
            f"[{_ORT_SECTION}], known: {list(_ORT_KEYS)}"
        )
    if "intra_op_num_threads" not in section:
        return None
    text = section["intra_op_num_threads"]
    if not text.strip().isdigit() or int(text) < 1:
        raise RuntimeError(
            f"Declare model {model_key} failed, config file '{path}': intra_op_num_threads must be an integer >= 1, "
            f"got '{text}'"
        )
    return int(text)


def declare_servable(
    servable_file: str | Sequence[str],
    model_format: str,
    with_batch_dim: bool = True,
    options: AclOptions | GpuOptions | None = None,
    without_batch_dim_inputs: int | Sequence[int] | None = None,
) -> Model:
    """Deprecated alias of `declare_model` (MindSpore 1.x).

    Args:
        servable_file: See `declare_model(model_file=...)`.
        model_format: See `declare_model`.
        with_batch_dim: See `declare_model`.
        options: See `declare_model`.
        without_batch_dim_inputs: See `declare_model`.

    Returns:
        The `Model`.
    """
    return declare_model(servable_file, model_format, with_batch_dim, options, without_batch_dim_inputs)


# ---------------------------------------------------------------------------------------------------------------
# Methods and stages.
# ---------------------------------------------------------------------------------------------------------------


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
