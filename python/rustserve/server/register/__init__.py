"""MindSpore Serving's servable_config.py API: `declare_model`, `add_stage`, `register_method`.

Nothing here does I/O or keeps module-level state: every call records into the registry of the servable that
rustserve's loader (`rustserve.server._loader`) is importing right now, found through a `ContextVar`. The
loader turns the registry into `ServableSpec` dicts (`rustserve.server._spec`) for the native core.

`register_method` runs the decorated body once at import time with placeholder objects, so the `add_stage`
calls inside it record the method's stage graph; data-dependent control flow is therefore impossible.

The package follows MindSpore Serving's `register/`: `model` (`declare_model`, `Model`, `Context` and the device
infos), `method` (`register_method`, `add_stage`), `check_type` (argument checks with MindSpore's texts) and
`registry` (the per-import registry and its `ContextVar`).

Example (servable_config.py)::

    from rustserve.server import register

    model = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=False)

    @register.register_method(output_names=["y"])
    def add_common(x1, x2):
        y = register.add_stage(model, x1, x2, outputs_count=1)
        return y
"""

from __future__ import annotations

from rustserve.server.register.check_type import _check_and_as_int_tuple_list as _check_and_as_int_tuple_list
from rustserve.server.register.check_type import _check_and_as_str_tuple_list as _check_and_as_str_tuple_list
from rustserve.server.register.check_type import _check_bool as _check_bool
from rustserve.server.register.check_type import _check_delay_ms as _check_delay_ms
from rustserve.server.register.check_type import _check_int as _check_int
from rustserve.server.register.check_type import _check_int_items as _check_int_items
from rustserve.server.register.check_type import _check_int_tuple_list as _check_int_tuple_list
from rustserve.server.register.check_type import _check_str as _check_str
from rustserve.server.register.method import add_stage, register_method
from rustserve.server.register.model import (
    AclOptions,
    AscendDeviceInfo,
    Context,
    CPUDeviceInfo,
    GPUDeviceInfo,
    GpuOptions,
    Model,
    declare_model,
    declare_servable,
)
from rustserve.server.register.registry import _recording as _recording
from rustserve.server.register.registry import _Registry as _Registry

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
