"""Unit tests of the servable_config.py API (`rustserve.server.register`): recorded specs and error texts.

Pure Python: the native extension is never imported (Model.call uses a fake `rustserve._rustserve`).
"""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rustserve.server import register


@pytest.fixture
def reg() -> Iterator[register._Registry]:
    """A registry for servable "svc" that the register API records into for the test's duration."""
    registry = register._Registry("svc")
    with register._recording(registry):
        yield registry


def _model(files: Any = "add.onnx", **kwargs: Any) -> register.Model:
    return register.declare_model(model_file=files, model_format="ONNX", **kwargs)


def _raises(match: str) -> Any:
    """pytest.raises(RuntimeError) matching the exact text `match` (not a regex)."""
    import re

    return pytest.raises(RuntimeError, match="^" + re.escape(match) + "$")


def preprocess(x1, x2):
    return x1, x2


def postprocess(y):
    return y


def batch_fn(instances):
    return [instance[0] for instance in instances]


# ---------------------------------------------------------------------------------------------------------------
# outside an import
# ---------------------------------------------------------------------------------------------------------------


def test_api_outside_import_is_a_clear_error() -> None:
    text = "can only be used in servable_config.py while rustserve loads the servable"
    with pytest.raises(RuntimeError, match="'declare_model' " + text):
        register.declare_model("a.onnx", "ONNX")
    with pytest.raises(RuntimeError, match="'register_method' " + text):
        register.register_method("y")(postprocess)
    with pytest.raises(RuntimeError, match="'add_stage' " + text):
        register.add_stage(postprocess, outputs_count=1)


def test_add_stage_outside_register_method(reg: register._Registry) -> None:
    with _raises("'add_stage' can only be used in a function decorated by 'register_method'"):
        register.add_stage(postprocess, outputs_count=1)


# ---------------------------------------------------------------------------------------------------------------
# recorded graph
# ---------------------------------------------------------------------------------------------------------------


def test_full_method_graph(reg: register._Registry) -> None:
    model = _model(with_batch_dim=False)

    @register.register_method(output_names=["y", "x1_out"])
    def add_cast(x1, x2):
        a, b = register.add_stage(preprocess, x1, x2, outputs_count=2)
        y = register.add_stage(model, a, b, outputs_count=1, tag="Add")
        y = register.add_stage(postprocess, y, outputs_count=1)
        z = register.add_stage(batch_fn, y, outputs_count=1, batch_size=0)
        return z, x1

    assert reg.methods == [
        {
            "name": "add_cast",
            "inputs": ["x1", "x2"],
            "output_names": ["y", "x1_out"],
            "outputs": [{"stage": 4, "index": 0}, {"stage": 0, "index": 0}],
            "stages": [
                {
                    "kind": "function",
                    "function": preprocess,
                    "name": "svc.preprocess",
                    "inputs": [{"stage": 0, "index": 0}, {"stage": 0, "index": 1}],
                    "outputs_count": 2,
                    "batch_size": None,
                    "tag": "Function 'svc.preprocess'",
                },
                {
                    "kind": "model",
                    "model": 0,
                    "subgraph": 0,
                    "inputs": [{"stage": 1, "index": 0}, {"stage": 1, "index": 1}],
                    "outputs_count": 1,
                    "tag": "Add",
                },
                {
                    "kind": "function",
                    "function": postprocess,
                    "name": "svc.postprocess",
                    "inputs": [{"stage": 2, "index": 0}],
                    "outputs_count": 1,
                    "batch_size": None,
                    "tag": "Function 'svc.postprocess'",
                },
                {
                    "kind": "function",
                    "function": batch_fn,
                    "name": "svc.batch_fn",
                    "inputs": [{"stage": 3, "index": 0}],
                    "outputs_count": 1,
                    "batch_size": 0,
                    "tag": "Function 'svc.batch_fn'",
                },
            ],
        }
    ]
    assert reg.models[0].io_counts == {0: (2, 1)}


def test_method_without_stages_and_str_output_names(reg: register._Registry) -> None:
    @register.register_method(output_names="y")
    def echo(x):
        return x

    assert reg.methods == [
        {"name": "echo", "inputs": ["x"], "output_names": ["y"], "outputs": [{"stage": 0, "index": 0}], "stages": []}
    ]


def test_register_method_returns_the_function(reg: register._Registry) -> None:
    def echo(x):
        return x

    assert register.register_method(["y"])(echo) is echo


def test_model_stage_default_tag_and_batch_size_kept(reg: register._Registry) -> None:
    model = _model(["a.onnx", "b.onnx"])

    @register.register_method(output_names=["y"])
    def predict(x):
        y = register.add_stage(model, x, outputs_count=1)
        return register.add_stage(batch_fn, y, outputs_count=1, batch_size=8)

    stages = reg.methods[0]["stages"]
    assert stages[0]["tag"] == "Model 'a.onnx;b.onnx'"
    assert stages[1]["kind"] == "function" and stages[1]["batch_size"] == 8


def test_argmax_cpp_builtin(reg: register._Registry) -> None:
    @register.register_method(output_names=["label"])
    def classify(x):
        return register.add_stage("argmax_cpp", x, outputs_count=1)

    stage = reg.methods[0]["stages"][0]
    assert stage["kind"] == "function"
    assert (stage["name"], stage["batch_size"], stage["tag"]) == ("argmax_cpp", None, "Function 'argmax_cpp'")
    label = stage["function"](np.array([[0.1, 0.7], [0.9, 0.2]], np.float32))
    assert isinstance(label, np.int64) and label == 2


def test_argmax_cpp_counts_checked(reg: register._Registry) -> None:
    def two(x1, x2):
        return register.add_stage("argmax_cpp", x1, x2, outputs_count=1)

    with _raises("Stage function 'argmax_cpp' inputs count 2 not match last registered count 1, method name 'two'"):
        register.register_method("y")(two)

    def many_out(x):
        return register.add_stage("argmax_cpp", x, outputs_count=2)

    with _raises(
        "Stage function 'argmax_cpp' outputs count 2 not match last registered count 1, method name 'many_out'"
    ):
        register.register_method(["a", "b"])(many_out)


def test_unknown_cpp_stage(reg: register._Registry) -> None:
    def m(x):
        return register.add_stage("resize_cpp", x, outputs_count=1)

    with pytest.raises(RuntimeError, match="^Check failed in method 'm', C\\+\\+ stage function 'resize_cpp' is not"):
        register.register_method("y")(m)


def test_multiple_outputs_are_a_tuple(reg: register._Registry) -> None:
    seen: list[Any] = []

    @register.register_method(output_names=["a", "b", "c"])
    def m(x):
        outputs = register.add_stage(batch_fn, x, outputs_count=3, batch_size=1)
        seen.append(outputs)
        return outputs

    (outputs,) = seen
    assert isinstance(outputs, tuple) and len(outputs) == 3
    assert reg.methods[0]["outputs"] == [{"stage": 1, "index": i} for i in range(3)]


# ---------------------------------------------------------------------------------------------------------------
# declare_model
# ---------------------------------------------------------------------------------------------------------------


def test_declare_model_records(reg: register._Registry) -> None:
    context = register.Context(thread_num=3)
    context.append_device_info(register.GPUDeviceInfo(precision_mode="fp16"))
    model = register.declare_model(
        "m.onnx", "onnx", with_batch_dim=True, without_batch_dim_inputs=[1, 0], context=context, max_batch_size=16
    )
    other = register.declare_model(["x.onnx", "y.onnx"], "Onnx", False, without_batch_dim_inputs=0)
    assert model.model_key == "m.onnx" and other.model_key == "x.onnx;y.onnx"
    first, second = reg.models
    assert (first.files, first.with_batch_dim, first.without_batch_dim_inputs) == (("m.onnx",), True, (1, 0))
    assert (first.max_batch_size, first.intra_op_threads) == (16, 3)
    assert (second.files, second.with_batch_dim, second.without_batch_dim_inputs) == (("x.onnx", "y.onnx"), False, (0,))
    assert (second.max_batch_size, second.intra_op_threads) == (None, None)


def test_declare_servable_alias_and_options(reg: register._Registry) -> None:
    model = register.declare_servable("m.onnx", "ONNX", options=register.GpuOptions(precision_mode="origin"))
    assert model.model_key == "m.onnx"
    assert reg.models[0].intra_op_threads is None


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        (
            {"model_format": "MindIR"},
            "model format can only be ONNX, case ignored; rustserve serves ONNX models only, given 'MindIR'",
        ),
        ({"model_format": ""}, "Parameter 'model_format' should not be empty str"),
        ({"model_format": 1}, "Parameter 'model_format' should be str, but actually <class 'int'>"),
        ({"with_batch_dim": 1}, "Parameter 'with_batch_dim' should be bool, but actually <class 'int'>"),
        ({"model_file": 3}, "Parameter 'model_file' should be str or tuple/list of str, but actually <class 'int'>"),
        ({"model_file": ["a", 1]}, "The item of parameter 'model_file' should be str, but actually <class 'int'>"),
        ({"model_file": ["a", ""]}, "The item of parameter 'model_file' should not be empty str"),
        ({"model_file": ["a", "a"]}, "The item value 'a' in parameter 'model_file' should not be repeated"),
        (
            {"without_batch_dim_inputs": -1},
            "The item value '-1' in parameter 'without_batch_dim_inputs' should be >= 0",
        ),
        (
            {"without_batch_dim_inputs": "0"},
            "Parameter 'without_batch_dim_inputs' should be int or tuple/list of int, but actually <class 'str'>",
        ),
        ({"context": {}}, "Parameter 'context' should be Context, but gotten <class 'dict'>"),
        ({"options": 1}, "Parameter 'options' should be None, GpuOptions or AclOptions, but gotten <class 'int'>"),
        ({"config_file": ""}, "Parameter 'config_file' should not be empty str"),
        ({"max_batch_size": 0}, "Parameter 'max_batch_size' should be >= 1"),
        ({"max_batch_size": True}, "Parameter 'max_batch_size' should be int, but actually <class 'bool'>"),
    ],
)
def test_declare_model_errors(reg: register._Registry, kwargs: dict[str, Any], text: str) -> None:
    arguments: dict[str, Any] = {"model_file": "m.onnx", "model_format": "ONNX"}
    arguments.update(kwargs)
    with _raises(text):
        register.declare_model(**arguments)
    assert reg.models == []


def test_config_file_sets_intra_op_threads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`config_file` (relative to the servable's directory) sets ONNX Runtime's intra-op threads; `Context` wins;
    MindSpore Lite sections are ignored with a warning; bad files, keys and values name the file and key."""
    (tmp_path / "ort.ini").write_text("[onnxruntime]\nintra_op_num_threads = 3\n[execution_plan]\nop1=float16\n")
    (tmp_path / "empty.ini").write_text("[execution_plan]\nop1=float16\n")
    (tmp_path / "typo.ini").write_text("[onnxruntime]\nintra_op_threads = 3\n")
    (tmp_path / "zero.ini").write_text("[onnxruntime]\nintra_op_num_threads = 0\n")
    (tmp_path / "broken.ini").write_text("intra_op_num_threads = 3\n")
    registry = register._Registry("svc", str(tmp_path))
    with register._recording(registry):
        _model("a.onnx", config_file="ort.ini")
        _model("b.onnx", config_file="ort.ini", context=register.Context(thread_num=1))
        _model("c.onnx", config_file=str(tmp_path / "empty.ini"))
        path = os.path.join(str(tmp_path), "typo.ini")
        with _raises(
            f"Declare model d.onnx failed, config file '{path}': unknown key(s) ['intra_op_threads'] in "
            "[onnxruntime], known: ['intra_op_num_threads']"
        ):
            _model("d.onnx", config_file="typo.ini")
        path = os.path.join(str(tmp_path), "zero.ini")
        with _raises(
            f"Declare model d.onnx failed, config file '{path}': intra_op_num_threads must be an integer >= 1, got '0'"
        ):
            _model("d.onnx", config_file="zero.ini")
        with pytest.raises(RuntimeError, match="^Declare model d.onnx failed, cannot read config file .*broken.ini"):
            _model("d.onnx", config_file="broken.ini")
        with pytest.raises(RuntimeError, match="^Declare model d.onnx failed, cannot read config file .*missing.ini"):
            _model("d.onnx", config_file="missing.ini")
    assert [m.intra_op_threads for m in registry.models] == [3, 1, None]
    assert "sections ['execution_plan'] are not used by ONNX Runtime" in caplog.text


def test_declare_model_twice(reg: register._Registry) -> None:
    _model(["a.onnx", "b.onnx"])
    with _raises("Declare model c.onnx;b.onnx failed, model file 'b.onnx' has already been used"):
        _model(["c.onnx", "b.onnx"])
    with _raises("Declare model a.onnx failed, model file 'a.onnx' has already been used"):
        _model("a.onnx")
    assert len(reg.models) == 1


def test_context_and_device_infos() -> None:
    with _raises("Set context failed, unsupported option threads"):
        register.Context(threads=1)
    with _raises("Parameter 'thread_num' should be >= 1"):
        register.Context(thread_num=0)
    with _raises("Parameter 'thread_affinity_core_list' should be tuple/list of int, but actually <class 'int'>"):
        register.Context(thread_affinity_core_list=1)
    with _raises("Parameter 'enable_parallel' should be bool, but actually <class 'int'>"):
        register.Context(enable_parallel=1)
    context = register.Context(thread_num=1, thread_affinity_core_list=[0, 1], enable_parallel=True)
    context.append_device_info(register.CPUDeviceInfo(precision_mode="fp16"))
    context.append_device_info(register.AscendDeviceInfo(input_format="NCHW", precision_mode="force_fp16"))
    with _raises("Device info of type ascend has already been appended"):
        context.append_device_info(register.AscendDeviceInfo())
    with pytest.raises(RuntimeError, match="^Parameter 'device_info' should instance of CPUDeviceInfo"):
        context.append_device_info("gpu")  # type: ignore[arg-type]
    assert context.device_list == [
        {"precision_mode": "fp16", "device_type": "cpu"},
        {"input_format": "NCHW", "precision_mode": "force_fp16", "device_type": "ascend"},
    ]
    with _raises("Set gpu device info failed, unsupported option mode"):
        register.GPUDeviceInfo(mode="fp16")
    with _raises("Gpu device info 'precision_mode' can only be 'origin', 'fp16'. given 'fp32'"):
        register.GPUDeviceInfo(precision_mode="fp32")
    with _raises("Cpu device info 'precision_mode' can only be 'origin', 'fp16'. given 'x'"):
        register.CPUDeviceInfo(precision_mode="x")
    with _raises("Set ascend device info failed, unsupported parameter foo"):
        register.AscendDeviceInfo(foo="x")
    with pytest.raises(RuntimeError, match="^Ascend device info 'input_format' can only be 'ND'"):
        register.AscendDeviceInfo(input_format="XYZ")


# ---------------------------------------------------------------------------------------------------------------
# add_stage errors
# ---------------------------------------------------------------------------------------------------------------


def _register(body: Any, output_names: Any = "y") -> None:
    register.register_method(output_names)(body)


def test_add_stage_args_must_be_placeholders(reg: register._Registry) -> None:
    def m(x):
        return register.add_stage(postprocess, 1, outputs_count=1)

    with _raises(
        "Each value of parameter *args is a placeholder for data and must come from the method inputs or the "
        "outputs of add_stage"
    ):
        _register(m)

    leaked: list[Any] = []

    def first(x):
        leaked.append(x)
        return x

    def second(x):
        return register.add_stage(postprocess, leaked[0], outputs_count=1)

    _register(first)
    with pytest.raises(RuntimeError, match="^Each value of parameter \\*args is a placeholder"):
        _register(second)


def test_add_stage_bad_stage_and_tag(reg: register._Registry) -> None:
    def bad_stage(x):
        return register.add_stage(print, x, outputs_count=1)

    with _raises(
        "Check failed in method 'bad_stage', the parameter 'stage' of add_stage must be function or Model returned "
        "by declare_model, now is <class 'builtin_function_or_method'>"
    ):
        _register(bad_stage)

    def foreign_model(x):
        return register.add_stage(register.Model("other.onnx"), x, outputs_count=1)

    with pytest.raises(
        RuntimeError,
        match="^Check failed in method 'foreign_model', the parameter 'stage' of add_stage must be function or Model "
        "returned by declare_model, and ensure that interface 'declare_model' can take effect",
    ):
        _register(foreign_model)

    def empty_tag(x):
        return register.add_stage(postprocess, x, outputs_count=1, tag="")

    with _raises("Parameter 'tag' should not be empty str"):
        _register(empty_tag)

    def zero_outputs(x):
        return register.add_stage(postprocess, x, outputs_count=0)

    with _raises("Parameter 'outputs_count' should be >= 1"):
        _register(zero_outputs)


@pytest.mark.parametrize(
    ("batch_size", "text"),
    [
        (-1, "Parameter 'batch_size' should be >= 0"),
        (True, "Parameter 'batch_size' should be int, but actually <class 'bool'>"),
        (1.0, "Parameter 'batch_size' should be int, but actually <class 'float'>"),
    ],
)
def test_add_stage_batch_size_checked(reg: register._Registry, batch_size: Any, text: str) -> None:
    def m(x):
        return register.add_stage(batch_fn, x, outputs_count=1, batch_size=batch_size)

    with _raises(text):
        _register(m)


def test_per_instance_arity_checked(reg: register._Registry) -> None:
    def m(x):
        return register.add_stage(preprocess, x, outputs_count=1)

    with _raises("function preprocess input args count 2 not match the count 1 registered in method"):
        _register(m)


def test_model_io_counts_consistent(reg: register._Registry) -> None:
    model = _model()

    def first(x1, x2):
        return register.add_stage(model, x1, x2, outputs_count=1)

    def fewer_inputs(x1, x2):
        return register.add_stage(model, x1, outputs_count=1)

    def more_outputs(x1, x2):
        return register.add_stage(model, x1, x2, outputs_count=2)

    _register(first)
    with _raises("RegisterInputOutputInfo failed, inputs count 1 not match old count 2, model: add.onnx"):
        _register(fewer_inputs)
    with _raises("RegisterInputOutputInfo failed, outputs count 2 not match old count 1, model: add.onnx"):
        _register(more_outputs, ["a", "b"])


def test_function_identity_consistent_across_methods(reg: register._Registry) -> None:
    def one(x):
        return register.add_stage(batch_fn, x, outputs_count=1, batch_size=2)

    def two_inputs(x1, x2):
        return register.add_stage(batch_fn, x1, x2, outputs_count=1, batch_size=2)

    def two_outputs(x):
        return register.add_stage(batch_fn, x, outputs_count=2, batch_size=2)

    _register(one)
    with _raises(
        "Stage function 'svc.batch_fn' inputs count 2 not match last registered count 1, method name 'two_inputs'"
    ):
        _register(two_inputs)
    with _raises(
        "Stage function 'svc.batch_fn' outputs count 2 not match last registered count 1, method name 'two_outputs'"
    ):
        _register(two_outputs, ["a", "b"])


def test_batch_size_enabled_consistently(reg: register._Registry) -> None:
    def batched(x):
        return register.add_stage(postprocess, x, outputs_count=1, batch_size=4)

    def per_instance(x):
        return register.add_stage(postprocess, x, outputs_count=1)

    _register(batched)
    with _raises(
        "Failed to add stage function svc.postprocess: parameter 'batch_size' in multiple 'add_stage' should be "
        "enabled or disabled consistently"
    ):
        _register(per_instance)


# ---------------------------------------------------------------------------------------------------------------
# register_method errors
# ---------------------------------------------------------------------------------------------------------------


def test_register_method_parameter_kinds(reg: register._Registry) -> None:
    def var_positional(x1, *x2):
        return x1

    def var_keyword(x1, **x2):
        return x1

    def keyword_only(x1, *, x2):
        return x1

    with _raises("'var_positional' input x2 cannot be VAR_POSITIONAL !"):
        _register(var_positional)
    with _raises("'var_keyword' input x2 cannot be VAR_KEYWORD !"):
        _register(var_keyword)
    with _raises("'keyword_only' input x2 cannot be KEYWORD_ONLY !"):
        _register(keyword_only)
    assert reg.methods == []


def test_register_method_return_checks(reg: register._Registry) -> None:
    placeholder_text = (
        "Each value returned is a placeholder for data and must come from the method inputs or the outputs of add_stage"
    )

    def returns_value(x):
        return 1

    def returns_mixed(x):
        return x, None

    def returns_two(x1, x2):
        return x1, x2

    with _raises(placeholder_text):
        _register(returns_value)
    with _raises(placeholder_text):
        _register(returns_mixed, ["a", "b"])
    with _raises("Method return output size 2 not match registered 1"):
        _register(returns_two, ["y"])
    assert reg.methods == []


def test_register_method_output_names_checked(reg: register._Registry) -> None:
    with _raises("Parameter 'output_names' should be str or tuple/list of str, but actually <class 'int'>"):
        register.register_method(1)  # type: ignore[arg-type]
    with _raises("The item value 'y' in parameter 'output_names' should not be repeated"):
        register.register_method(["y", "y"])


def test_duplicate_method(reg: register._Registry) -> None:
    def echo(x):
        return x

    _register(echo)
    with _raises("Method echo has been registered more than once."):
        _register(echo)
    assert len(reg.methods) == 1


def test_exception_in_body_leaves_no_trace(reg: register._Registry) -> None:
    def broken(x):
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        _register(broken)
    assert reg.trace is None and reg.methods == []


# ---------------------------------------------------------------------------------------------------------------
# Model.call (request time)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_native(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, list[tuple[Any, ...]]]]:
    """A fake `rustserve._rustserve` whose model_call returns (sum of inputs, count) per instance."""
    calls: list[tuple[str, int, list[tuple[Any, ...]]]] = []

    def model_call(key: str, subgraph: int, instances: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        calls.append((key, subgraph, instances))
        if key == "broken.onnx":
            raise RuntimeError("The inputs count 3 of instance 0 is not equal to the inputs count 2 of the model")
        if key == "two.onnx":
            return [(sum(instance), len(instance)) for instance in instances]
        return [(sum(instance),) for instance in instances]

    module = types.ModuleType("rustserve._rustserve")
    module.model_call = model_call  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rustserve._rustserve", module)
    return calls


def test_model_call_forms(fake_native: list[Any]) -> None:
    model = register.Model("add.onnx")
    assert model.call(1, 2) == 3
    assert model.call([[1, 2], (3, 4)]) == ((3,), (7,))
    assert register.Model("two.onnx").call(1, 2, subgraph=1) == (3, 2)
    assert fake_native == [
        ("add.onnx", 0, [(1, 2)]),
        ("add.onnx", 0, [(1, 2), (3, 4)]),
        ("two.onnx", 1, [(1, 2)]),
    ]


def test_model_call_errors(fake_native: list[Any]) -> None:
    model = register.Model("add.onnx")
    with _raises(
        "Model(add.onnx).call() failed: no inputs provided, the inputs can be call(x1, x2) for single instance or "
        "call([[x1, x2], [x1, x2]]) for multi instances."
    ):
        model.call()
    with _raises(
        "Model(add.onnx ,subgraph=1).call() failed: inputs format invalid, the inputs can be call(x1, x2) for single "
        "instance or  call([[x1, x2], [x1, x2]]) for multi instances."
    ):
        model.call([1, 2], subgraph=1)
    with _raises("Model(add.onnx).call() failed: Input instances count is 0"):
        model.call([])
    with _raises("Parameter 'subgraph' should be >= 0"):
        model.call(1, subgraph=-1)
    with _raises(
        "Model(broken.onnx).call() failed: The inputs count 3 of instance 0 is not equal to the inputs count 2 of "
        "the model"
    ):
        register.Model("broken.onnx").call(1, 2, 3)
    assert len(fake_native) == 1
