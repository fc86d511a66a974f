"""Finds the ONNX Runtime shared library inside the installed `onnxruntime` / `onnxruntime-gpu` wheel.

The native core loads that library (`_rustserve.init_onnxruntime`), so there is no second copy and no download.
The Python `onnxruntime` package is located without importing it: its own module links ORT statically and
importing it would only cost memory.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import logging
import os
import re

__all__ = ["cuda_provider_available", "find_onnxruntime_library", "preload_cuda_libraries"]

_logger = logging.getLogger("rustserve")
# Libraries the CUDA execution provider needs (its DT_NEEDED entries plus cuDNN), in dependency order.
_CUDA_LIBRARIES = ("cudart", "cublasLt", "cublas", "curand", "cufft", "cudnn")

_INSTALL_HINT = "install rustserve[cpu] (onnxruntime) or rustserve[gpu] (onnxruntime-gpu)"
# Linux wheels ship libonnxruntime.so.<full version>; macOS and Windows names for completeness.
_LIBRARY_PATTERNS = ("libonnxruntime.so.*", "libonnxruntime.so", "libonnxruntime.*.dylib", "onnxruntime.dll")
_CUDA_PROVIDER_PATTERNS = ("libonnxruntime_providers_cuda.so", "onnxruntime_providers_cuda.dll")


def _capi_dir() -> str:
    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise RuntimeError(f"ONNX Runtime is not installed: {_INSTALL_HINT}")
    return os.path.join(locations[0], "capi")


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", os.path.basename(path)))


def find_onnxruntime_library() -> str:
    """Returns the path of the ONNX Runtime shared library of the installed wheel.

    Returns:
        The absolute path, e.g. `.../site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0`.

    Raises:
        RuntimeError: Neither `onnxruntime` nor `onnxruntime-gpu` is installed, or the wheel lacks the library.
    """
    capi = _capi_dir()
    for pattern in _LIBRARY_PATTERNS:
        candidates = [path for path in glob.glob(os.path.join(capi, pattern)) if os.path.isfile(path)]
        if candidates:
            # The most specific version (libonnxruntime.so.1.32.0 over a libonnxruntime.so.1 link) wins.
            return os.path.abspath(max(candidates, key=lambda path: (len(_version_key(path)), _version_key(path))))
    raise RuntimeError(
        f"cannot find the ONNX Runtime shared library (libonnxruntime.so.*) in '{capi}'; reinstall ONNX Runtime: "
        f"{_INSTALL_HINT}"
    )


def cuda_provider_available() -> bool:
    """Whether the installed wheel ships the CUDA execution provider (that is, it is `onnxruntime-gpu`).

    Returns:
        True for `onnxruntime-gpu`.

    Raises:
        RuntimeError: ONNX Runtime is not installed.
    """
    capi = _capi_dir()
    return any(os.path.isfile(os.path.join(capi, name)) for name in _CUDA_PROVIDER_PATTERNS)


def _nvidia_library_dirs() -> list[str]:
    """`lib` folders of the nvidia-* wheels (nvidia-cublas, nvidia-cudnn-cu13, ...), the GPU wheel's [cuda,cudnn]."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        return []
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    found: list[str] = []
    for root in roots:
        found.extend(sorted(glob.glob(os.path.join(root, "*", "lib")) + glob.glob(os.path.join(root, "*", "*", "lib"))))
    return found


def preload_cuda_libraries() -> list[str]:
    """Loads the CUDA and cuDNN libraries of the installed nvidia-* wheels into the process, globally.

    ONNX Runtime's CUDA provider finds its dependencies by SONAME; a library already loaded under that name is used,
    so this makes a GPU server work without LD_LIBRARY_PATH. Libraries that are missing are skipped: the provider
    then reports exactly which one it could not find. Call before the first GPU model is loaded.

    Returns:
        The paths that were loaded.
    """
    loaded: list[str] = []
    directories = _nvidia_library_dirs()
    for name in _CUDA_LIBRARIES:
        for directory in directories:
            candidates = sorted(glob.glob(os.path.join(directory, f"lib{name}.so.*")), key=len)
            if not candidates:
                continue
            try:
                ctypes.CDLL(candidates[0], mode=ctypes.RTLD_GLOBAL)
            except OSError as exc:
                _logger.warning("cannot preload %s: %s", candidates[0], exc)
                continue
            loaded.append(candidates[0])
            break
    return loaded
