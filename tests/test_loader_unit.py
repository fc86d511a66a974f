"""Unit tests of the servable loader, `ServableStartConfig`, the start/stop functions and the CLI.

Pure Python: servable directories are built in tmp_path with dummy model bytes (the loader does not parse
ONNX), and the start functions run against a fake `rustserve._rustserve`.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import communicate_or_fail

from rustserve import cli, server
from rustserve.server import _loader, _ort

ADD_CONFIG = """
from rustserve.server import register
from add import helper
from . import helper as same_helper

assert helper is same_helper
helper.IMPORTS.append(1)
model = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=False)

def cast(x1, x2):
    return helper.cast(x1), helper.cast(x2)

@register.register_method(output_names=["y"])
def add_common(x1, x2):
    x1, x2 = register.add_stage(cast, x1, x2, outputs_count=2)
    return register.add_stage(model, x1, x2, outputs_count=1)
"""

HELPER = """
IMPORTS = []

def cast(x):
    return x
"""

NO_MODEL_CONFIG = """
from rustserve.server import register

def plus_one(x):
    return x + 1

@register.register_method(output_names="y")
def predict(x):
    return register.add_stage(plus_one, x, outputs_count=1)
"""


def _raises(text: str) -> Any:
    return pytest.raises(RuntimeError, match="^" + re.escape(text) + "$")


def write_servable(
    root: Path,
    name: str,
    config: str,
    versions: Sequence[int | str] = (),
    files: Sequence[str] = (),
    helper: str | None = None,
) -> Path:
    """Writes `<root>/<name>/servable_config.py`, version directories with dummy model files, and a helper.py."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "servable_config.py").write_text(textwrap.dedent(config).lstrip("\n"))
    if helper is not None:
        (folder / "helper.py").write_text(textwrap.dedent(helper).lstrip("\n"))
    for version in versions:
        (folder / str(version)).mkdir(exist_ok=True)
        for file_name in files:
            (folder / str(version) / file_name).write_bytes(b"not really onnx")
    return folder


@pytest.fixture
def add_dir(tmp_path: Path) -> Path:
    write_servable(tmp_path, "add", ADD_CONFIG, (1, 2), ("add.onnx",), helper=HELPER)
    return tmp_path


# ---------------------------------------------------------------------------------------------------------------
# loader
# ---------------------------------------------------------------------------------------------------------------


def test_load_newest_version_spec(add_dir: Path) -> None:
    (spec,) = _loader.load_servable(str(add_dir), "add")
    helper = sys.modules["add"].helper
    cast = sys.modules["add.servable_config"].cast
    version_dir = str(add_dir / "add" / "2")
    assert spec == {
        "name": "add",
        "version": 2,
        "version_dir": version_dir,
        "servable_directory": str(add_dir),
        "num_parallel_workers": 0,
        "python_in_process": True,
        "models": [
            {
                "key": "add.onnx",
                "files": [os.path.join(version_dir, "add.onnx")],
                "with_batch_dim": False,
                "without_batch_dim_inputs": [],
                "max_batch_size": None,
                "max_queue_delay_ms": None,
                "preferred_batch_sizes": [],
                "device_type": "cpu",
                "device_ids": [],
                "intra_op_threads": None,
                "distributed": None,
            }
        ],
        "methods": [
            {
                "name": "add_common",
                "inputs": ["x1", "x2"],
                "output_names": ["y"],
                "outputs": [{"stage": 2, "index": 0}],
                "stages": [
                    {
                        "kind": "function",
                        "function": cast,
                        "name": "add.cast",
                        "inputs": [{"stage": 0, "index": 0}, {"stage": 0, "index": 1}],
                        "outputs_count": 2,
                        "batch_size": None,
                        "tag": "Function 'add.cast'",
                    },
                    {
                        "kind": "model",
                        "model": 0,
                        "subgraph": 0,
                        "inputs": [{"stage": 1, "index": 0}, {"stage": 1, "index": 1}],
                        "outputs_count": 1,
                        "tag": "Model 'add.onnx'",
                    },
                ],
            }
        ],
    }
    assert helper.IMPORTS == [1]


def test_load_specific_version_and_gpu(add_dir: Path) -> None:
    (spec,) = _loader.load_servable(str(add_dir), "add", 1, device_type="gpu")
    assert spec["version"] == 1
    assert spec["models"][0]["files"] == [str(add_dir / "add" / "1" / "add.onnx")]
    assert (spec["models"][0]["device_type"], spec["models"][0]["device_ids"]) == ("gpu", [0])
    (spec,) = _loader.load_servable(str(add_dir), "add", 1, device_type="gpu", device_ids=[2, 3])
    assert spec["models"][0]["device_ids"] == [2, 3]


def test_all_versions_share_one_import(add_dir: Path) -> None:
    specs = _loader.load_all_versions(str(add_dir), "add")
    assert [spec["version"] for spec in specs] == [1, 2]
    assert sys.modules["add"].helper.IMPORTS == [1]
    first, second = (spec["methods"][0]["stages"][0] for spec in specs)
    assert first["kind"] == "function" and second["kind"] == "function"
    assert first["function"] is second["function"]
    assert specs[0]["methods"][0] is not specs[1]["methods"][0]  # unshared dicts, shared functions


def test_loader_imports_once_per_servable(add_dir: Path) -> None:
    loader = _loader.ServableLoader()
    (v1,) = loader.load(str(add_dir), "add", 1)
    (v2,) = loader.load(str(add_dir), "add", 2)
    assert sys.modules["add"].helper.IMPORTS == [1]
    assert v1["methods"][0]["stages"][0]["function"] is v2["methods"][0]["stages"][0]["function"]  # type: ignore[typeddict-item]
    # A fresh loader imports again, with fresh modules.
    _loader.ServableLoader().load(str(add_dir), "add", 1)
    assert sys.modules["add"].helper.IMPORTS == [1]


def test_same_servable_name_in_two_directories(tmp_path: Path) -> None:
    for which in ("a", "b"):
        config = NO_MODEL_CONFIG.replace('output_names="y"', f'output_names="y_{which}"')
        write_servable(tmp_path / which, "svc", config)
    (spec_a,) = _loader.load_servable(str(tmp_path / "a"), "svc")
    (spec_b,) = _loader.load_servable(str(tmp_path / "b"), "svc")
    assert spec_a["methods"][0]["output_names"] == ["y_a"]
    assert spec_b["methods"][0]["output_names"] == ["y_b"]


def test_package_with_init_and_subpackage(tmp_path: Path) -> None:
    folder = write_servable(
        tmp_path,
        "pkg_svc",
        NO_MODEL_CONFIG.replace("def plus_one", "from pkg_svc.sub.util import OFFSET\n\ndef plus_one"),
    )
    (folder / "__init__.py").write_text("INIT = True\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "__init__.py").write_text("")
    (folder / "sub" / "util.py").write_text("OFFSET = 1\n")
    (spec,) = _loader.load_servable(str(tmp_path), "pkg_svc")
    assert sys.modules["pkg_svc"].INIT is True
    assert spec["methods"][0]["name"] == "predict"


def test_no_model_servable_versions(tmp_path: Path) -> None:
    write_servable(tmp_path, "pystages", NO_MODEL_CONFIG)
    (spec,) = _loader.load_servable(str(tmp_path), "pystages")
    assert (spec["version"], spec["version_dir"], spec["models"]) == (1, "", [])
    (spec,) = _loader.load_servable(str(tmp_path), "pystages", 3)
    assert (spec["version"], spec["version_dir"]) == (3, "")
    assert [s["version"] for s in _loader.load_all_versions(str(tmp_path), "pystages")] == [1]
    plus_one = spec["methods"][0]["stages"][0]["function"]  # type: ignore[typeddict-item]
    assert plus_one(1) == 2


def test_version_directory_scan(tmp_path: Path) -> None:
    folder = write_servable(tmp_path, "svc", NO_MODEL_CONFIG, (1, "0", "007", "v3", "10"))
    (folder / "12").write_text("a file, not a directory")
    assert _loader.newest_version_number(str(tmp_path), "svc") == 10
    specs = _loader.load_all_versions(str(tmp_path), "svc")
    assert [(s["version"], os.path.basename(s["version_dir"])) for s in specs] == [(1, "1"), (7, "007"), (10, "10")]
    assert _loader.newest_version_number(str(tmp_path), "missing") == 0


def test_subgraphs_and_model_options(tmp_path: Path) -> None:
    config = """
    from rustserve.server import register
    context = register.Context(thread_num=2)
    model = register.declare_model(["a.onnx", "sub/b.onnx"], "onnx", without_batch_dim_inputs=1, context=context,
                                   max_batch_size=8)

    @register.register_method(output_names=["y"])
    def predict(x, bias):
        return register.add_stage(model, x, bias, outputs_count=1)
    """
    folder = write_servable(tmp_path, "multi", config, (4,), ("a.onnx",))
    (folder / "4" / "sub").mkdir()
    (folder / "4" / "sub" / "b.onnx").write_bytes(b"")
    ((spec,),) = [_loader.load_servable(str(tmp_path), "multi")]
    (model,) = spec["models"]
    assert model["key"] == "a.onnx;sub/b.onnx"
    assert model["files"] == [str(folder / "4" / "a.onnx"), str(folder / "4" / "sub" / "b.onnx")]
    assert (model["without_batch_dim_inputs"], model["max_batch_size"], model["intra_op_threads"]) == ([1], 8, 2)


def test_discover_servables(tmp_path: Path) -> None:
    write_servable(tmp_path, "b", NO_MODEL_CONFIG)
    write_servable(tmp_path, "a", NO_MODEL_CONFIG)
    (tmp_path / "not_a_servable").mkdir()
    (tmp_path / "file.txt").write_text("")
    assert _loader.discover_servables(str(tmp_path)) == ["a", "b"]
    with _raises(f"servable directory '{tmp_path / 'nope'}' not exist"):
        _loader.discover_servables(str(tmp_path / "nope"))


# ---------------------------------------------------------------------------------------------------------------
# loader errors
# ---------------------------------------------------------------------------------------------------------------


def test_missing_directory_and_config(tmp_path: Path) -> None:
    with _raises(
        f"Load servable config failed, directory '{tmp_path / 'add'}' not exist, servable directory '{tmp_path}', "
        f"servable name 'add'"
    ):
        _loader.load_servable(str(tmp_path), "add")
    (tmp_path / "add").mkdir()
    with _raises(
        f"Load servable config failed, file '{tmp_path / 'add' / 'servable_config.py'}' not exist, servable "
        f"directory '{tmp_path}', servable name 'add'"
    ):
        _loader.load_servable(str(tmp_path), "add")


@pytest.mark.parametrize(
    ("config", "text"),
    [
        ("raise ValueError('bad config')", "import svc.servable_config failed, bad config"),
        ("import svc.no_such_module", "import svc.servable_config failed, No module named 'svc.no_such_module'"),
        (
            "from rustserve.server import register\nregister.declare_model('m.onnx', 'MindIR')",
            "import svc.servable_config failed, model format can only be ONNX, case ignored; rustserve serves ONNX "
            "models only, given 'MindIR'",
        ),
        (
            NO_MODEL_CONFIG + "\n@register.register_method(output_names='y')\ndef predict(x):\n    return x\n",
            "import svc.servable_config failed, Method predict has been registered more than once.",
        ),
    ],
)
def test_import_failures(tmp_path: Path, config: str, text: str) -> None:
    write_servable(tmp_path, "svc", config)
    with _raises(text):
        _loader.load_servable(str(tmp_path), "svc")


RELATIVE_CONFIG = """
from rustserve.server import register
from . import helper
from .sub.util import OFFSET

def plus_one(x):
    return helper.cast(x) + OFFSET

@register.register_method(output_names="y")
def predict(x):
    return register.add_stage(plus_one, x, outputs_count=1)
"""


def _write_relative_servable(root: Path, name: str) -> Path:
    folder = write_servable(root, name, RELATIVE_CONFIG, helper=HELPER)
    (folder / "sub").mkdir()
    (folder / "sub" / "__init__.py").write_text("")
    (folder / "sub" / "util.py").write_text("OFFSET = 1\n")
    return folder


@pytest.mark.parametrize("name", ["types", "email", "test", "json", "queue"])
def test_servable_named_like_a_module(tmp_path: Path, name: str) -> None:
    """A servable may bear a module's name: its config loads under a private package, by path, and the module is
    left alone; relative imports work."""
    importlib.import_module(name)
    module = sys.modules[name]
    _write_relative_servable(tmp_path, name)
    (spec,) = _loader.load_servable(str(tmp_path), name)
    assert sys.modules[name] is module
    (stage,) = spec["methods"][0]["stages"]
    assert stage["kind"] == "function" and stage["name"] == f"{name}.plus_one"
    assert stage["function"](1) == 2  # type: ignore[typeddict-item]
    assert stage["function"].__module__.startswith("_rustserve_servables.")  # type: ignore[typeddict-item]
    # `<servable>.<module>` cannot work where the name is taken: the module's own name space answers.
    write_servable(tmp_path / "sibling", name, "from " + name + " import helper\n", helper=HELPER)
    with pytest.raises(RuntimeError, match=f"^import {name}.servable_config failed, "):
        _loader.load_servable(str(tmp_path / "sibling"), name)
    assert sys.modules[name] is module
    import json

    assert json.dumps([1]) == "[1]"


def test_servable_named_like_an_installed_library_leaves_it_importable(tmp_path: Path) -> None:
    """A servable named like an installed library that nobody imported yet (PyYAML's `yaml`, from the dev extra) does
    not hide it: a later `import yaml` anywhere in the process gets the library. Run in a fresh interpreter, where
    `yaml` is not imported yet."""
    _write_relative_servable(tmp_path, "yaml")
    script = (
        "import sys\n"
        "from rustserve.server import _loader\n"
        f"(spec,) = _loader.load_servable({str(tmp_path)!r}, 'yaml')\n"
        "assert spec['methods'][0]['stages'][0]['function'](1) == 2\n"
        "import yaml\n"
        "assert yaml.safe_load('a: 1') == {'a': 1}, yaml\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_sibling_and_relative_imports_give_one_module(tmp_path: Path) -> None:
    """Where the name is free, `<servable>.<module>` and `.<module>` are the same module, in either order."""
    config = RELATIVE_CONFIG.replace(
        "from . import helper\n",
        "from . import helper\nimport freename.helper\nfrom freename.sub import util\nfrom .sub import util as util2\n"
        "assert freename.helper is helper and util is util2\nhelper.IMPORTS.append(1)\n",
    )
    folder = _write_relative_servable(tmp_path, "freename")
    (folder / "servable_config.py").write_text(textwrap.dedent(config).lstrip("\n"))
    (spec,) = _loader.load_servable(str(tmp_path), "freename")
    assert sys.modules["freename.helper"] is sys.modules["freename"].helper
    assert sys.modules["freename.helper"].IMPORTS == [1]
    assert sys.modules["freename.helper"].__spec__.name == sys.modules["freename.helper"].__name__
    # A fresh import replaces the alias and its modules.
    _loader.ServableLoader().load(str(tmp_path), "freename")
    assert sys.modules["freename.helper"].IMPORTS == [1]


def test_worker_registers_the_same_stages(tmp_path: Path) -> None:
    """A worker process imports the config through the same loader: same stages, same order, module name or not."""
    from rustserve import worker

    _write_relative_servable(tmp_path, "types")
    loader_stages = [
        (method["name"], index, stage["name"])
        for method in _loader.ServableLoader().import_config(str(tmp_path), "types").methods
        for index, stage in enumerate(method["stages"], start=1)
    ]
    script = (
        "import sys\nfrom rustserve import worker\n"
        "print([f[:3] for f in worker.stage_functions(sys.argv[1], 'types')])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == str([tuple(item) for item in loader_stages])
    assert [f[:3] for f in worker.stage_functions(str(tmp_path), "types")] == loader_stages


def test_version_errors(tmp_path: Path) -> None:
    write_servable(tmp_path, "add", ADD_CONFIG, helper=HELPER)
    text = (
        f"There is no valid version directory of models while there are models declared in servable_config.py, "
        f"servable directory: {tmp_path}, servable name: add"
    )
    with _raises(text):
        _loader.load_servable(str(tmp_path), "add")
    with _raises(text):
        _loader.load_all_versions(str(tmp_path), "add")
    write_servable(tmp_path, "add", ADD_CONFIG, (1,), ("add.onnx",), helper=HELPER)
    with _raises(
        f"Start servable failed: There is no specified version directory of models, specified version number: 2, "
        f"servable directory: '{tmp_path}', servable name: 'add'"
    ):
        _loader.load_servable(str(tmp_path), "add", 2)
    with _raises("Parameter 'version_number' should be >= 0"):
        _loader.load_servable(str(tmp_path), "add", -1)


def test_missing_model_file(tmp_path: Path) -> None:
    write_servable(tmp_path, "add", ADD_CONFIG, (1,), helper=HELPER)
    path = tmp_path / "add" / "1" / "add.onnx"
    with _raises(
        f"Load model failed, servable directory: '{tmp_path}', servable name: 'add', model file: 'add.onnx', "
        f"version number 1, load error details: model file '{path}' not exist"
    ):
        _loader.load_servable(str(tmp_path), "add")


def test_no_method(tmp_path: Path) -> None:
    write_servable(tmp_path, "svc", "from rustserve.server import register\n")
    with _raises("There is no method registered for servable svc"):
        _loader.load_servable(str(tmp_path), "svc")


# ---------------------------------------------------------------------------------------------------------------
# ServableStartConfig and merging
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"servable_directory": ""}, "Parameter 'servable_directory' should not be empty str"),
        ({"servable_directory": 1}, "Parameter 'servable_directory' should be str, but actually <class 'int'>"),
        ({"servable_name": False}, "Parameter 'servable_name' should be str, but actually <class 'bool'>"),
        ({"version_number": -1}, "Parameter 'version_number' should be >= 0"),
        ({"version_number": "1"}, "Parameter 'version_number' should be int, but actually <class 'str'>"),
        ({"num_parallel_workers": 65}, "Parameter 'num_parallel_workers' should be in range [0,64]"),
        ({"num_parallel_workers": -1}, "Parameter 'num_parallel_workers' should be in range [0,64]"),
        ({"dec_key": "k" * 16}, "Parameter 'dec_key' should be bytes, but actually <class 'str'>"),
        ({"dec_key": b""}, "Parameter 'dec_key' should not be empty bytes"),
        ({"dec_key": b"k" * 15}, "Parameter 'dec_key' length 15 expected to be 16, 24 or 32"),
        ({"dec_mode": "AES"}, "Parameter 'dec_mode' expected to be 'AES-GCM' or 'AES-CBC'"),
        ({"device_ids": "0"}, "Parameter 'device_ids' should be int or tuple/list of int, but actually <class 'str'>"),
        ({"device_ids": [0, -1]}, "The item value '-1' in parameter 'device_ids' should be >= 0"),
        ({"device_ids": [1, 1]}, "The item value '1' in parameter 'device_ids' should not be repeated"),
        ({"device_type": ""}, "Parameter 'device_type' should not be empty str"),
        (
            {"device_type": "TPU"},
            "Unsupported device type 'TPU', only support 'Ascend', 'GPU', 'CPU' and None, case ignored",
        ),
    ],
)
def test_start_config_validation(kwargs: dict[str, Any], text: str) -> None:
    arguments: dict[str, Any] = {"servable_directory": "servables", "servable_name": "add"}
    arguments.update(kwargs)
    with _raises(text):
        server.ServableStartConfig(**arguments)


def test_start_config_values() -> None:
    config = server.ServableStartConfig("servables", "add", device_ids=2, device_type="None")
    assert config.servable_directory == os.path.abspath("servables")
    assert (config.device_ids, config.device_type, config.version_number) == ((2,), "none", 0)
    assert config.num_parallel_workers == 0
    assert server.ServableStartConfig("s", "a", device_type="Gpu").device_type == "gpu"
    assert server.ServableStartConfig("s", "a").num_parallel_workers == 1
    with pytest.raises(NotImplementedError, match="rustserve does not support model decryption"):
        server.ServableStartConfig("s", "a", dec_key=b"k" * 16)


def test_merge_configs(add_dir: Path) -> None:
    write_servable(add_dir, "pystages", NO_MODEL_CONFIG)
    configs = [
        server.ServableStartConfig(str(add_dir), "add", device_ids=1),
        server.ServableStartConfig(str(add_dir), "add", device_ids=(0, 1), version_number=2, num_parallel_workers=3),
        server.ServableStartConfig(str(add_dir), "add", version_number=1),
        server.ServableStartConfig(str(add_dir), "pystages"),
    ]
    merged = server._merge_configs(configs)
    assert [(d.name, d.version, d.device_type, sorted(d.device_ids), d.num_parallel_workers) for d in merged] == [
        ("add", 2, "cpu", [0, 1], 3),
        ("add", 1, "cpu", [], 1),
        ("pystages", 1, "cpu", [], 1),
    ]


def test_merge_config_errors(add_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    other = tmp_path_factory.mktemp("other")
    write_servable(other, "add", ADD_CONFIG)
    with _raises(
        f"The servable directory of servable name add is different in multiple configurations, servable directory: "
        f"{other} and {add_dir}"
    ):
        server._merge_configs(
            [server.ServableStartConfig(str(add_dir), "add"), server.ServableStartConfig(str(other), "add")]
        )
    with _raises(
        f"Check servable config failed, directory '{add_dir / 'nope'}' not exist, servable directory '{add_dir}', "
        f"servable name 'nope'"
    ):
        server._merge_configs([server.ServableStartConfig(str(add_dir), "nope")])
    (add_dir / "empty").mkdir()
    with _raises(
        f"Check servable config failed, file '{add_dir / 'empty' / 'servable_config.py'}' not exist,  servable "
        f"directory '{add_dir}', servable name 'empty'"
    ):
        server._merge_configs([server.ServableStartConfig(str(add_dir), "empty")])


def test_device_type_support(add_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ort, "cuda_provider_available", lambda: False)
    with _raises(
        "The device type 'GPU' of servable name add is inconsistent with current running environment, supported "
        "device type: None or 'CPU'"
    ):
        server._merge_configs([server.ServableStartConfig(str(add_dir), "add", device_type="GPU")])
    monkeypatch.setattr(_ort, "cuda_provider_available", lambda: True)
    with _raises(
        "The device type 'Ascend' of servable name add is inconsistent with current running environment, "
        "supported device type: None, 'GPU' or 'CPU'"
    ):
        server._merge_configs([server.ServableStartConfig(str(add_dir), "add", device_type="ascend")])
    (deployment,) = server._merge_configs([server.ServableStartConfig(str(add_dir), "add", device_type="gpu")])
    assert deployment.device_type == "gpu"


# ---------------------------------------------------------------------------------------------------------------
# ONNX Runtime library lookup
# ---------------------------------------------------------------------------------------------------------------


def test_find_onnxruntime_library() -> None:
    imported_before = "onnxruntime" in sys.modules
    path = _ort.find_onnxruntime_library()
    assert os.path.isfile(path)
    assert re.fullmatch(r"libonnxruntime\.so\.\d+\.\d+\.\d+", os.path.basename(path))
    assert ("onnxruntime" in sys.modules) == imported_before  # found without importing it


def test_onnxruntime_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_ort.importlib.util, "find_spec", lambda name: None)
    with _raises(
        "ONNX Runtime is not installed: install rustserve[cpu] (onnxruntime) or rustserve[gpu] (onnxruntime-gpu)"
    ):
        _ort.find_onnxruntime_library()
    spec = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(_ort.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(RuntimeError, match="^cannot find the ONNX Runtime shared library"):
        _ort.find_onnxruntime_library()
    (tmp_path / "capi").mkdir()
    for name in ("libonnxruntime.so.1", "libonnxruntime.so.1.9.0", "libonnxruntime.so.1.32.0"):
        (tmp_path / "capi" / name).write_bytes(b"")
    assert _ort.find_onnxruntime_library() == str(tmp_path / "capi" / "libonnxruntime.so.1.32.0")
    assert not _ort.cuda_provider_available()
    (tmp_path / "capi" / "libonnxruntime_providers_cuda.so").write_bytes(b"")
    assert _ort.cuda_provider_available()


# ---------------------------------------------------------------------------------------------------------------
# start / stop against a fake native module
# ---------------------------------------------------------------------------------------------------------------


class FakeServer:
    """Records what the server API hands to the native `Server`."""

    instances: list[FakeServer] = []

    def __init__(self, worker_threads: int = 0) -> None:
        self.specs: list[dict[str, Any]] = []
        self.listeners: list[tuple[str, str, int]] = []
        self.stopped = False
        FakeServer.instances.append(self)

    def add_servables(self, specs: Sequence[dict[str, Any]]) -> None:
        for spec in specs:
            if spec["name"] == "reject":
                raise RuntimeError("servable 'reject' v1: model file is not a valid ONNX model")
        self.specs.extend(specs)

    def start_grpc(self, address: str, max_msg_mb_size: int, tls: Any = None) -> int:
        if address.endswith(":1"):
            raise RuntimeError(
                f"Serving Error: Serving gRPC server start failed, create server failed, address {address}"
            )
        self.listeners.append(("grpc", address, max_msg_mb_size))
        return int(address.rsplit(":", 1)[1])

    def start_rest(self, address: str, max_msg_mb_size: int, tls: Any = None) -> int:
        self.listeners.append(("rest", address, max_msg_mb_size))
        return int(address.rsplit(":", 1)[1])

    def set_repository(self, loader: Any, api_key: str | None = None) -> None:
        self.repository = loader
        self.api_key = api_key

    def set_request_timeout(self, seconds: float) -> None:
        self.request_timeout = seconds

    def set_drain_timeout(self, seconds: float) -> None:
        self.drain_timeout = seconds

    def set_max_enqueued_requests(self, limit: int) -> None:
        self.max_enqueued_requests = limit

    def set_max_queued_instances(self, limit: int) -> None:
        self.max_queued_instances = limit

    def set_connection_limits(self, max_connections: int, idle_timeout_s: float) -> None:
        self.connection_limits = (max_connections, idle_timeout_s)

    def set_max_in_flight_bytes(self, limit: int) -> None:
        self.max_in_flight_bytes = limit

    def set_max_queued_python_calls(self, limit: int) -> None:
        self.max_queued_python_calls = limit

    def stop(self) -> None:
        self.stopped = True


@pytest.fixture
def fake_native(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Installs a fake `rustserve._rustserve`; yields the library paths passed to init_onnxruntime."""
    inits: list[str] = []
    module = types.ModuleType("rustserve._rustserve")
    module.DEFAULTS = importlib.import_module("rustserve._rustserve").DEFAULTS  # type: ignore[attr-defined]
    module.Server = FakeServer  # type: ignore[attr-defined]
    module.init_onnxruntime = inits.append  # type: ignore[attr-defined]
    module.init_logging = lambda level="info": None  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rustserve._rustserve", module)
    FakeServer.instances.clear()
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield inits
    finally:
        server.stop()
        state = server._current
        assert state._keeper is None or not state._keeper.is_alive() or state._stopped.is_set()
        assert {signum: signal.getsignal(signum) for signum in handlers} == handlers


def test_start_and_stop(add_dir: Path, fake_native: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    write_servable(add_dir, "pystages", NO_MODEL_CONFIG)
    server.start_servables(
        [server.ServableStartConfig(str(add_dir), "add"), server.ServableStartConfig(str(add_dir), "pystages")]
    )
    server.start_grpc_server("127.0.0.1:5500")
    server.start_restful_server("0.0.0.0:1500", max_msg_mb_size=8)
    (native,) = FakeServer.instances
    assert [(spec["name"], spec["version"]) for spec in native.specs] == [("add", 2), ("pystages", 1)]
    assert fake_native == [_ort.find_onnxruntime_library()]
    assert native.listeners == [("grpc", "127.0.0.1:5500", 100), ("rest", "0.0.0.0:1500", 8)]
    assert capsys.readouterr().out == (
        "Serving: Serving gRPC server start success, listening on 127.0.0.1:5500\n"
        "Serving: Serving RESTful server start success, listening on 0.0.0.0:1500\n"
    )
    keeper = server._current._keeper
    assert keeper is not None and keeper.is_alive() and not keeper.daemon
    assert signal.getsignal(signal.SIGTERM) is server._on_signal
    with _raises("Serving Error: Serving gRPC server is already running"):
        server.start_grpc_server("127.0.0.1:5501")
    # MindSpore semantics: a failing start call stops everything.
    assert native.stopped
    keeper.join(5)
    assert not keeper.is_alive()


def test_max_enqueued_requests_from_master_context(fake_native: list[str]) -> None:
    """MindSpore's `server.master.context.set_max_enqueued_requests` reaches the native server; bad values raise."""
    from rustserve.server import master

    master.context.set_max_enqueued_requests(7)
    (native,) = FakeServer.instances
    assert native.max_enqueued_requests == 7
    server.set_max_enqueued_requests(9)
    assert native.max_enqueued_requests == 9
    with _raises("Parameter 'max_enqueued_requests' should be >= 1"):
        master.context.set_max_enqueued_requests(0)
    server.stop()


def test_no_model_servable_skips_onnxruntime(tmp_path: Path, fake_native: list[str]) -> None:
    write_servable(tmp_path, "pystages", NO_MODEL_CONFIG)
    server.start_servables(server.ServableStartConfig(str(tmp_path), "pystages"))
    assert fake_native == []
    server.stop()
    assert FakeServer.instances[0].stopped
    # A new start after stop() gets a fresh native server.
    server.start_servables(server.ServableStartConfig(str(tmp_path), "pystages"))
    assert len(FakeServer.instances) == 2


def test_start_servables_failures(tmp_path: Path, fake_native: list[str]) -> None:
    write_servable(tmp_path, "broken", "raise ValueError('oops')")
    with _raises("Fail to start workers: import broken.servable_config failed, oops"):
        server.start_servables(server.ServableStartConfig(str(tmp_path), "broken"))
    write_servable(tmp_path, "reject", NO_MODEL_CONFIG)
    with _raises("Fail to start workers: servable 'reject' v1: model file is not a valid ONNX model"):
        server.start_servables(server.ServableStartConfig(str(tmp_path), "reject"))
    with _raises(
        "Parameter 'servable_configs' should be ServableStartConfig, list or tuple of ServableStartConfig, but "
        "actually <class 'str'>"
    ):
        server.start_servables("add")  # type: ignore[arg-type]
    with _raises("The item of parameter 'servable_configs' should be ServableStartConfig, but actually <class 'int'>"):
        server.start_servables([1])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("address", "text"),
    [
        ("127.0.0.1", "Serving Error: The format of the Serving gRPC address '127.0.0.1' is illegal"),
        (":5500", "Serving Error: Missing ip or port of the Serving gRPC address ':5500'"),
        ("127.0.0.1:", "Serving Error: Missing ip or port of the Serving gRPC address '127.0.0.1:'"),
        ("127.0.0.1:abc", "Serving Error: The type of Serving gRPC address '127.0.0.1:abc' port is not a number"),
        (
            "127.0.0.1:0",
            "Serving Error: The port of the Serving gRPC address '127.0.0.1:0' is out of legal range [1 ~ 65535]",
        ),
        (
            "127.0.0.1:65536",
            "Serving Error: The port of the Serving gRPC address '127.0.0.1:65536' is out of legal range [1 ~ 65535]",
        ),
        ("unix:", "Serving Error: Empty grpc server unix domain socket address"),
        (
            "unix:/tmp/sock",
            "Serving Error: Serving gRPC server does not support unix domain socket address 'unix:/tmp/sock' yet",
        ),
        ("", "Parameter 'address' should not be empty str"),
    ],
)
def test_grpc_address_checks(address: str, text: str) -> None:
    with _raises(text):
        server.start_grpc_server(address)


def test_rest_and_size_checks() -> None:
    with _raises("Serving Error: RESTful server does not support binding to unix domain socket"):
        server.start_restful_server("unix:/tmp/sock")
    with _raises("Serving Error: The format of the RESTful server address 'localhost' is illegal"):
        server.start_restful_server("localhost")
    with _raises("Parameter 'max_msg_mb_size' should be in range [1,512]"):
        server.start_grpc_server("127.0.0.1:5500", max_msg_mb_size=513)
    with _raises("Parameter 'max_msg_mb_size' should be in range [1,512]"):
        server.start_restful_server("127.0.0.1:1500", max_msg_mb_size=0)
    with _raises("The type of ssl_config should be type of SSLConfig"):
        server.start_grpc_server("127.0.0.1:5500", ssl_config="tls")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="^Serving Error: load certificate from cert.pem failed: "):
        server.start_restful_server("127.0.0.1:1500", ssl_config=server.SSLConfig("cert.pem", "key.pem"))
    with _raises("Parameter 'custom_ca' should be str, but actually <class 'NoneType'>"):
        server.SSLConfig("cert.pem", "key.pem", verify_client=True)


def test_bind_failure_is_a_runtime_error(fake_native: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with _raises("Serving Error: Serving gRPC server start failed, create server failed, address 127.0.0.1:1"):
        server.start_grpc_server("127.0.0.1:1")
    assert capsys.readouterr().out == ""
    assert FakeServer.instances[0].stopped


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def _without_startup_time(out: str) -> str:
    """Drops the ready line's ` in 0.12 s` suffix, the one part that differs between runs."""
    return re.sub(r" in \d+\.\d\d s$", "", out, flags=re.MULTILINE)


def test_cli_serves_every_version(add_dir: Path, fake_native: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    write_servable(add_dir, "pystages", NO_MODEL_CONFIG)
    stopper = threading.Timer(0.3, server.stop)
    stopper.start()
    try:
        code = cli.main(["start", "--dir", str(add_dir), "--grpc", "127.0.0.1:6000", "--rest", "127.0.0.1:6001"])
    finally:
        stopper.cancel()
    assert code == 0
    (native,) = FakeServer.instances
    assert [(spec["name"], spec["version"]) for spec in native.specs] == [("add", 1), ("add", 2), ("pystages", 1)]
    assert native.stopped
    assert _without_startup_time(capsys.readouterr().out).splitlines() == [
        "Serving: Serving gRPC server start success, listening on 127.0.0.1:6000",
        "Serving: Serving RESTful server start success, listening on 127.0.0.1:6001",
        "rustserve: serving 3 servable version(s) (add v1, add v2, pystages v1) on gRPC 127.0.0.1:6000, "
        "REST 127.0.0.1:6001",
    ]


def test_cli_selected_servable_without_listeners(
    add_dir: Path, fake_native: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    write_servable(add_dir, "pystages", NO_MODEL_CONFIG)
    stopper = threading.Timer(0.2, server.stop)
    stopper.start()
    try:
        code = cli.main(["start", "--dir", str(add_dir), "--servable", "pystages", "--no-grpc", "--no-rest"])
    finally:
        stopper.cancel()
    assert code == 0
    out = _without_startup_time(capsys.readouterr().out)
    assert out == "rustserve: serving 1 servable version(s) (pystages v1) on no listener\n"


def test_cli_start_failures(tmp_path: Path, fake_native: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["start", "--dir", str(tmp_path)]) == 1
    assert (
        capsys.readouterr().err
        == f"rustserve: error: no servable found in '{tmp_path}' (no subdirectory holds a servable_config.py)\n"
    )
    write_servable(tmp_path, "broken", "raise ValueError('oops')")
    assert cli.main(["start", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "rustserve: error: import broken.servable_config failed, oops\n"
    write_servable(tmp_path, "broken", NO_MODEL_CONFIG)
    assert cli.main(["start", "--dir", str(tmp_path), "--grpc", "localhost"]) == 1
    captured = capsys.readouterr()
    assert (
        captured.err
        == "rustserve: error: Serving Error: The format of the Serving gRPC address 'localhost' is illegal\n"
    )
    assert FakeServer.instances[-1].stopped


def test_python_m_rustserve_version() -> None:
    python_dir = str(Path(server.__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [python_dir, os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", "rustserve", "--version"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("rustserve ")
    result = subprocess.run([sys.executable, "-m", "rustserve"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and "usage: rustserve" in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# process lifetime (subprocesses with a fake native module)
# ---------------------------------------------------------------------------------------------------------------

FAKE_NATIVE_PRELUDE = """
import sys, types

import rustserve._rustserve as native

class Server:
    def __init__(self, worker_threads=0):
        pass
    def add_servables(self, specs):
        pass
    def start_grpc(self, address, size, tls=None):
        return 1
    def start_rest(self, address, size, tls=None):
        return 1
    def set_repository(self, loader, api_key=None):
        pass
    def set_request_timeout(self, seconds):
        pass
    def set_drain_timeout(self, seconds):
        pass
    def set_max_enqueued_requests(self, limit):
        pass
    def set_max_queued_instances(self, limit):
        pass
    def set_max_queued_python_calls(self, limit):
        pass
    def set_connection_limits(self, max_connections, idle_timeout_s):
        pass
    def set_max_in_flight_bytes(self, limit):
        pass
    def stop(self):
        print("native stop", flush=True)

fake = types.ModuleType("rustserve._rustserve")
fake.DEFAULTS = native.DEFAULTS
fake.Server = Server
fake.init_onnxruntime = lambda path: None
fake.init_logging = lambda level="info": None
sys.modules["rustserve._rustserve"] = fake
"""


def _spawn(script: str, tmp_path: Path) -> subprocess.Popen[str]:
    python_dir = str(Path(server.__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=python_dir)
    path = tmp_path / "script.py"
    path.write_text(FAKE_NATIVE_PRELUDE + textwrap.dedent(script))
    return subprocess.Popen(
        [sys.executable, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )


def _wait_line(proc: subprocess.Popen[str], prefix: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    pytest.fail(
        f"no line starting with {prefix!r}; exit {proc.wait()}, stderr: {proc.stderr.read() if proc.stderr else ''}"
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_script_that_returns_keeps_serving_until_signal(tmp_path: Path, sig: signal.Signals) -> None:
    write_servable(tmp_path, "pystages", NO_MODEL_CONFIG)
    proc = _spawn(
        f"""
        from rustserve import server
        server.start_servables(server.ServableStartConfig({str(tmp_path)!r}, "pystages"))
        server.start_grpc_server("127.0.0.1:5500")
        """,
        tmp_path,
    )
    try:
        _wait_line(proc, "Serving: Serving gRPC server start success")
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)  # the script returned, the process keeps serving
        proc.send_signal(sig)
        out, err = communicate_or_fail(proc, 30, f"script after {sig.name}")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "native stop" in out


def test_script_in_a_loop_gets_keyboard_interrupt(tmp_path: Path) -> None:
    write_servable(tmp_path, "pystages", NO_MODEL_CONFIG)
    proc = _spawn(
        f"""
        import time
        from rustserve import server
        server.start_servables(server.ServableStartConfig({str(tmp_path)!r}, "pystages"))
        try:
            # Inside the try: SIGINT may land while print() returns, right after the line is flushed.
            print("ready", flush=True)
            while True:
                time.sleep(0.05)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        """,
        tmp_path,
    )
    try:
        _wait_line(proc, "ready")
        proc.send_signal(signal.SIGINT)
        out, err = communicate_or_fail(proc, 30, "script in a loop after SIGINT")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    # The stop runs on rustserve's keeper thread while the script handles its KeyboardInterrupt; the process exits
    # only once both are done, whichever finishes first.
    assert sorted(out.splitlines()) == ["interrupted", "native stop"]


def test_cli_process_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    write_servable(tmp_path, "pystages", NO_MODEL_CONFIG)
    proc = _spawn(
        f"""
        from rustserve.cli import main
        raise SystemExit(main(["start", "--dir", {str(tmp_path)!r}, "--grpc", "127.0.0.1:7000", "--no-rest"]))
        """,
        tmp_path,
    )
    try:
        _wait_line(proc, "rustserve: serving 1 servable version(s) (pystages v1) on gRPC 127.0.0.1:7000")
        proc.send_signal(signal.SIGTERM)
        out, err = communicate_or_fail(proc, 30, "CLI after SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["native stop"]
