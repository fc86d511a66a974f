"""Model declaration: `declare_model`, `Model` (and `Model.call`), `Context` and the device infos."""

from __future__ import annotations

import configparser
import importlib
import logging
import os
from collections.abc import Sequence
from typing import Any

from rustserve.server.register.check_type import (
    _check_and_as_int_tuple_list,
    _check_and_as_str_tuple_list,
    _check_bool,
    _check_delay_ms,
    _check_int,
    _check_int_tuple_list,
    _check_str,
)
from rustserve.server.register.registry import _DeclaredModel, _registry

_logger = logging.getLogger("rustserve")


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
