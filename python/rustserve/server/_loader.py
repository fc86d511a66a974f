"""Loads servables from disk into `ServableSpec` dicts for the native core.

A servable lives in `<servable_directory>/<name>/`: `servable_config.py` plus version directories (all-digit
names, newest = largest) that hold the model files; a servable directory with a servable_config.py at its root is
one servable itself, served under the name its caller gives (KServe's /mnt/models and `--model-name`).

The config is imported once per servable, by path, as
`_rustserve_servables.<name>_<hash of its folder>.servable_config`: a private package whose `__path__` is the
servable's folder, so no servable name can collide with a module (`types`, `json`, `test` ...) and relative imports
(`from . import helper`) always work. Where the name is free, `sys.modules[<name>]` is that same package too, so
MindSpore's sibling imports (`import <name>.helper`) give the very modules the relative imports give. The config
runs while `register` records into a fresh registry; every version of the servable then shares the same Python
functions.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import keyword
import os
import re
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Literal, NamedTuple

from rustserve.server import register
from rustserve.server._spec import ModelSpec, ServableSpec

__all__ = [
    "ServableLoader",
    "discover_servables",
    "is_servable_folder",
    "load_all_versions",
    "load_servable",
    "newest_version_number",
    "servable_folder",
]

_CONFIG_FILE = "servable_config.py"
_SERVABLE_PACKAGE_MARK = "__rustserve_servable_dir__"
_PRIVATE_ROOT = "_rustserve_servables"  # the namespace every servable's package lives in

DeviceType = Literal["cpu", "gpu"]


def is_servable_folder(directory: str) -> bool:
    """Whether `directory` is one servable itself (servable_config.py at its root), not a folder of servables.

    KServe's storage initializer puts a model at /mnt/models: such a folder is served under the name the caller gives
    (`rustserve start --model-name`), since its own name says nothing.

    Args:
        directory: The servable directory.

    Returns:
        True when `directory/servable_config.py` is a file.
    """
    return os.path.isfile(os.path.join(directory, _CONFIG_FILE))


def servable_folder(directory: str, name: str) -> str:
    """The folder of servable `name` in `directory`: `directory/name`, or `directory` itself when it is one servable.

    Args:
        directory: The servable directory.
        name: The servable name.

    Returns:
        The folder that holds the servable's servable_config.py and version directories.
    """
    return directory if is_servable_folder(directory) else os.path.join(directory, name)


def _version_dirs(directory: str, name: str) -> dict[int, str]:
    """Version number -> absolute version directory, for every all-digit directory name > 0."""
    root = servable_folder(directory, name)
    try:
        entries = os.listdir(root)
    except OSError:
        return {}
    versions: dict[int, str] = {}
    for entry in entries:
        path = os.path.join(root, entry)
        if not (entry.isascii() and entry.isdigit()) or not os.path.isdir(path):
            continue
        version = int(entry)
        # "01" and "1" both name version 1; the canonical spelling wins.
        if version > 0 and (version not in versions or entry == str(version)):
            versions[version] = path
    return versions


def newest_version_number(directory: str, name: str) -> int:
    """The largest version directory number of a servable, 0 when it has none.

    Args:
        directory: The servable directory (parent of the servable's own directory).
        name: The servable name.

    Returns:
        The newest version number, or 0.
    """
    return max(_version_dirs(os.path.abspath(directory), name), default=0)


def discover_servables(directory: str) -> list[str]:
    """Names of the servables under `directory`: its subdirectories that hold a servable_config.py, sorted.

    Args:
        directory: The servable directory.

    Returns:
        The servable names.

    Raises:
        RuntimeError: `directory` is not a directory.
    """
    if not os.path.isdir(directory):
        raise RuntimeError(f"servable directory '{directory}' not exist")
    return sorted(
        entry for entry in os.listdir(directory) if os.path.isfile(os.path.join(directory, entry, _CONFIG_FILE))
    )


def _check_location(directory: str, name: str) -> None:
    config_dir = servable_folder(directory, name)
    if not os.path.isdir(config_dir):
        raise RuntimeError(
            f"Load servable config failed, directory '{config_dir}' not exist, servable directory '{directory}', "
            f"servable name '{name}'"
        )
    config_file = os.path.join(config_dir, _CONFIG_FILE)
    if not os.path.isfile(config_file):
        raise RuntimeError(
            f"Load servable config failed, file '{config_file}' not exist, servable directory '{directory}', "
            f"servable name '{name}'"
        )


def _forget_modules(name: str) -> None:
    for module_name in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
        del sys.modules[module_name]


def _private_package_name(name: str, folder: str) -> str:
    """The servable's package: stable for one folder (a reload replaces its modules), distinct for two folders."""
    ident = re.sub(r"\W", "_", name, flags=re.ASCII)
    digest = hashlib.sha256(f"{os.path.realpath(folder)}\0{name}".encode()).hexdigest()[:12]
    return f"{_PRIVATE_ROOT}.{ident}_{digest}"


def _root_package() -> ModuleType:
    root = sys.modules.get(_PRIVATE_ROOT)
    if root is None:
        spec = importlib.machinery.ModuleSpec(_PRIVATE_ROOT, None, is_package=True)
        spec.submodule_search_locations = []  # only the packages put here; nothing is found by path
        root = importlib.util.module_from_spec(spec)
        sys.modules[_PRIVATE_ROOT] = root
    return root


def _make_package(package_name: str, package_dir: str) -> ModuleType:
    """A fresh package `package_name` for `package_dir` (its `__init__.py` run, if any), in `sys.modules`."""
    _forget_modules(package_name)  # an earlier load of this folder: load afresh
    init_file = os.path.join(package_dir, "__init__.py")
    spec: importlib.machinery.ModuleSpec | None
    if os.path.isfile(init_file):
        spec = importlib.util.spec_from_file_location(package_name, init_file, submodule_search_locations=[package_dir])
    else:
        spec = importlib.machinery.ModuleSpec(package_name, None, is_package=True)
        spec.submodule_search_locations = [package_dir]
    if spec is None:  # pragma: no cover - spec_from_file_location only fails for unknown suffixes
        raise RuntimeError(f"cannot create the package '{package_name}' from '{package_dir}'")
    module = importlib.util.module_from_spec(spec)
    setattr(module, _SERVABLE_PACKAGE_MARK, os.path.realpath(package_dir))
    root = _root_package()
    sys.modules[package_name] = module
    setattr(root, package_name.rpartition(".")[2], module)
    try:
        if spec.loader is not None:
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(package_name, None)
        raise
    return module


def _alias_package(name: str, package: ModuleType) -> bool:
    """Makes `sys.modules[name]` the servable's private package when no other module holds the name.

    Returns:
        Whether `<name>.*` imports now resolve inside the servable (False: `name` is a module of its own, such as
        `json`, or no identifier).
    """
    if not name.isidentifier() or keyword.iskeyword(name):
        return False
    existing = sys.modules.get(name)
    if existing is not None:
        if not _is_servable_package(existing):
            return False
        _forget_modules(name)  # the alias of an earlier load (this servable's or a namesake's)
    elif _importable_elsewhere(name, package):
        return False  # an installed module not imported yet (e.g. `yaml`): `import yaml` must still find it
    _install_alias_finder()
    sys.modules[name] = package
    _ALIASES.add(name)
    return True


def _importable_elsewhere(name: str, package: ModuleType) -> bool:
    """Whether `import name` would find a module other than the servable: a built-in one, or one on `sys.path` outside
    the folder that holds the servable (MindSpore appends that folder to `sys.path`, so installed modules win)."""
    if name in sys.builtin_module_names:
        return True
    root = os.path.dirname(os.path.realpath(list(package.__path__)[0]))
    paths = [p for p in sys.path if os.path.realpath(p or os.curdir) != root]
    try:
        return importlib.machinery.PathFinder.find_spec(name, paths) is not None
    except (ImportError, ValueError):
        return False


def _is_servable_package(module: object) -> bool:
    # NOTE: vars(), not getattr(): a module's __getattr__ may import (pydantic's does), and this runs inside imports.
    return isinstance(module, ModuleType) and _SERVABLE_PACKAGE_MARK in vars(module)


class _AliasLoader(importlib.abc.Loader):
    """Hands out the module that already exists under the servable's private name."""

    def __init__(self, module: ModuleType) -> None:
        self._module = module
        self._spec = module.__spec__

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return self._module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec  # the import system set the alias's spec: the module keeps its own


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Resolves `<servable>.<module>` through an aliased servable package to `<private package>.<module>`, so a
    module imported both ways is one module."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        head, dot, rest = fullname.partition(".")
        if not dot or head not in _ALIASES:
            return None
        package = sys.modules.get(head)
        if package is None or not _is_servable_package(package) or package.__name__ == head:
            return None
        private = f"{package.__name__}.{rest}"
        try:
            module = importlib.import_module(private)
        except ModuleNotFoundError as exc:
            if exc.name == private:
                return None  # the path finder then reports it under the name the config used
            raise
        return importlib.util.spec_from_loader(fullname, _AliasLoader(module))


_ALIAS_FINDER = _AliasFinder()
_ALIASES: set[str] = set()  # names made aliases of a servable package (some may have been replaced since)


def _install_alias_finder() -> None:
    if _ALIAS_FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _ALIAS_FINDER)  # before the path finder, which would load a second copy


def _import_config_module(name: str, folder: str) -> None:
    """Imports the servable's servable_config.py by path under its private package (aliased as `name` if free)."""
    package_name = _private_package_name(name, folder)
    package = _make_package(package_name, folder)
    aliased = _alias_package(name, package)
    module = importlib.import_module(f"{package_name}.servable_config")
    if aliased:
        sys.modules[f"{name}.servable_config"] = module


class ServableLoader:
    """Imports servable configs (once per servable) and builds their `ServableSpec` dicts.

    One loader remembers what it imported: loading another version of the same servable through it reuses the
    recorded declarations and Python functions instead of importing servable_config.py again.
    """

    def __init__(self) -> None:
        self._registries: dict[tuple[str, str], register._Registry] = {}

    def import_config(self, directory: str, name: str) -> register._Registry:
        """Imports the servable_config.py of servable `name` in `directory` (once) and returns what it declared.

        Args:
            directory: The servable directory.
            name: The servable name.

        Returns:
            The servable's registry.

        Raises:
            RuntimeError: The servable directory or config file is missing, or the import failed
                (`import <name>.servable_config failed, <exception text>`).
        """
        directory = os.path.abspath(directory)
        _check_location(directory, name)
        key = (os.path.realpath(directory), name)
        cached = self._registries.get(key)
        if cached is not None:
            return cached

        folder = servable_folder(directory, name)
        if folder != directory and directory not in sys.path:
            sys.path.append(directory)  # as MindSpore does: a config may import from the servable directory
        registry = register._Registry(name, folder)
        try:
            with register._recording(registry):
                _import_config_module(name, folder)
        except Exception as exc:
            # NOTE: MindSpore's text names the module as `<servable>.servable_config`, whatever it is called inside.
            raise RuntimeError(f"import {name}.servable_config failed, {exc}") from exc
        self._registries[key] = registry
        return registry

    def load(
        self,
        directory: str,
        name: str,
        version_number: int = 0,
        *,
        device_type: DeviceType = "cpu",
        device_ids: Sequence[int] = (),
        num_parallel_workers: int = 0,
        python_in_process: bool = True,
    ) -> list[ServableSpec]:
        """Loads one version of a servable.

        Args:
            directory: The servable directory.
            name: The servable name.
            version_number: The version to load; 0 = the newest version directory (version 1 when the servable
                declares no model and has no version directory).
            device_type: Where its models run.
            device_ids: CUDA devices for "gpu" (default [0]).
            num_parallel_workers: Python stage executors (n > 1: n worker processes).
            python_in_process: With fewer than 2 executors, run the stages on the server's Python thread (True) or
                in one worker process (False).

        Returns:
            A list with the one `ServableSpec`.

        Raises:
            RuntimeError: See `import_config`; also a missing version directory or model file, or no method.
        """
        register._check_int("version_number", version_number, 0)
        directory = os.path.abspath(directory)
        registry = self.import_config(directory, name)
        versions = _version_dirs(directory, name)
        if version_number == 0:
            if versions:
                version_number = max(versions)
            elif _local_models(registry):
                raise RuntimeError(
                    f"There is no valid version directory of models while there are models declared in "
                    f"servable_config.py, servable directory: {directory}, servable name: {name}"
                )
            else:
                version_number = 1
        elif version_number not in versions and _local_models(registry):
            raise RuntimeError(
                f"Start servable failed: There is no specified version directory of models, specified version "
                f"number: {version_number}, servable directory: '{directory}', servable name: '{name}'"
            )
        version_dir = versions.get(version_number, "")
        workers = _Executors(num_parallel_workers, python_in_process)
        return [_build_spec(directory, registry, version_number, version_dir, device_type, device_ids, workers)]

    def load_all_versions(
        self,
        directory: str,
        name: str,
        *,
        device_type: DeviceType = "cpu",
        device_ids: Sequence[int] = (),
        num_parallel_workers: int = 0,
        python_in_process: bool = True,
    ) -> list[ServableSpec]:
        """Loads every version directory of a servable (version 1 alone when it has none and declares no model).

        Args:
            directory: The servable directory.
            name: The servable name.
            device_type: Where its models run.
            device_ids: CUDA devices for "gpu" (default [0]).
            num_parallel_workers: Python stage executors per version (n > 1: n worker processes).
            python_in_process: As for `load`.

        Returns:
            One `ServableSpec` per version, oldest first.

        Raises:
            RuntimeError: See `load`.
        """
        directory = os.path.abspath(directory)
        registry = self.import_config(directory, name)
        versions = _version_dirs(directory, name)
        workers = _Executors(num_parallel_workers, python_in_process)
        if not versions:
            if _local_models(registry):
                raise RuntimeError(
                    f"There is no valid version directory of models while there are models declared in "
                    f"servable_config.py, servable directory: {directory}, servable name: {name}"
                )
            return [_build_spec(directory, registry, 1, "", device_type, device_ids, workers)]
        return [
            _build_spec(directory, registry, version, versions[version], device_type, device_ids, workers)
            for version in sorted(versions)
        ]


class _Executors(NamedTuple):
    """Where a servable version's Python stages run (see ServableSpec)."""

    num_parallel_workers: int = 0
    python_in_process: bool = True


def _local_models(registry: register._Registry) -> bool:
    """Whether the servable declares a model whose files are in its version folders (not a distributed one)."""
    return any(declared.distributed is None for declared in registry.models)


def _build_spec(
    directory: str,
    registry: register._Registry,
    version: int,
    version_dir: str,
    device_type: DeviceType,
    device_ids: Sequence[int],
    executors: _Executors,
) -> ServableSpec:
    name = registry.servable_name
    gpu_ids = [int(device_id) for device_id in device_ids] or [0]
    models: list[ModelSpec] = []
    for declared in registry.models:
        files: list[str] = []
        for file_name in declared.files:
            path = os.path.join(version_dir, file_name)
            if not os.path.isfile(path):
                raise RuntimeError(
                    f"Load model failed, servable directory: '{directory}', servable name: '{name}', model file: "
                    f"'{declared.model.model_key}', version number {version}, load error details: model file "
                    f"'{path}' not exist"
                )
            files.append(path)
        models.append(
            {
                "key": declared.model.model_key,
                "files": files,
                "with_batch_dim": declared.with_batch_dim,
                "without_batch_dim_inputs": list(declared.without_batch_dim_inputs),
                "max_batch_size": declared.max_batch_size,
                "max_queue_delay_ms": declared.max_queue_delay_ms,
                "preferred_batch_sizes": list(declared.preferred_batch_sizes),
                "device_type": device_type,
                "device_ids": gpu_ids if device_type == "gpu" else [],
                "intra_op_threads": declared.intra_op_threads,
                "distributed": (
                    None
                    if declared.distributed is None
                    else {"rank_size": declared.distributed[0], "stage_size": declared.distributed[1]}
                ),
            }
        )
    if not registry.methods:
        raise RuntimeError(f"There is no method registered for servable {name}")
    return {
        "name": name,
        "version": version,
        "version_dir": version_dir,
        "servable_directory": directory,
        "num_parallel_workers": executors.num_parallel_workers,
        "python_in_process": executors.python_in_process,
        "models": models,
        # deepcopy keeps the function objects (copy treats functions as atomic) and unshares the lists.
        "methods": copy.deepcopy(registry.methods),
    }


def load_servable(
    directory: str,
    name: str,
    version_number: int = 0,
    *,
    device_type: DeviceType = "cpu",
    device_ids: Sequence[int] = (),
) -> list[ServableSpec]:
    """Loads one version of a servable with a fresh `ServableLoader`; 0 = the newest version.

    Args:
        directory: The servable directory.
        name: The servable name.
        version_number: The version to load, 0 = newest.
        device_type: Where its models run.
        device_ids: CUDA devices for "gpu" (default [0]).

    Returns:
        A list with the one `ServableSpec`.

    Raises:
        RuntimeError: See `ServableLoader.load`.
    """
    return ServableLoader().load(directory, name, version_number, device_type=device_type, device_ids=device_ids)


def load_all_versions(
    directory: str,
    name: str,
    *,
    device_type: DeviceType = "cpu",
    device_ids: Sequence[int] = (),
) -> list[ServableSpec]:
    """Loads every version of a servable with a fresh `ServableLoader`; servable_config.py is imported once.

    Args:
        directory: The servable directory.
        name: The servable name.
        device_type: Where its models run.
        device_ids: CUDA devices for "gpu" (default [0]).

    Returns:
        One `ServableSpec` per version, oldest first.

    Raises:
        RuntimeError: See `ServableLoader.load`.
    """
    return ServableLoader().load_all_versions(directory, name, device_type=device_type, device_ids=device_ids)
