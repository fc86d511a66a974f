"""rustserve's own stderr lines in the chosen log format.

The native side writes the log (tracing, see `rustserve._rustserve.init_logging`); in the `json` format the lines
Python prints itself (the start report, errors, the `rustserve` logger's records) go through the same subscriber,
so that every stderr line is one JSON object. In the `text` format they are printed as they are.
"""

from __future__ import annotations

import importlib
import logging
import sys
from types import ModuleType

__all__ = ["LOG_FORMATS", "configure", "stderr"]

LOG_FORMATS = ("text", "json")

_PYTHON_LEVELS = {"CRITICAL": "error", "ERROR": "error", "WARNING": "warn", "INFO": "info", "DEBUG": "debug"}


def _native() -> ModuleType:
    return importlib.import_module("rustserve._rustserve")


def _is_json() -> bool:
    try:
        return bool(_native().log_format() == "json")
    except Exception:  # no native module (a broken install): print, as the text format does
        return False


class _NativeHandler(logging.Handler):
    """Hands the `rustserve` logger's records to the native subscriber (json format only)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = _PYTHON_LEVELS.get(record.levelname, "info")
            _native().log(level, self.format(record))
        except Exception:
            self.handleError(record)


def configure(level: str, log_format: str = "text") -> None:
    """Routes the native log lines to stderr; the first call in a process wins (RUST_LOG overrides `level`).

    Args:
        level: error, warn, info, debug, trace or a RUST_LOG-style filter.
        log_format: "text" (colour only on a terminal) or "json" (one object per line: timestamp, level, target,
            message and the event's fields).

    Raises:
        ValueError: `log_format` is neither "text" nor "json".
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be 'text' or 'json', got '{log_format}'")
    native = _native()
    if log_format == "text":
        native.init_logging(level)  # the signature a text-only build (and a stand-in module) has
    else:
        native.init_logging(level, log_format)
    logger = logging.getLogger("rustserve")
    if _is_json() and not any(isinstance(h, _NativeHandler) for h in logger.handlers):
        logger.addHandler(_NativeHandler())


def stderr(text: str, level: str = "info") -> None:
    """Writes rustserve's own lines to stderr: printed as they are (text), or one log event per line (json; then
    `--log-level` filters them like the native lines)."""
    if _is_json():
        native = _native()
        for line in text.splitlines():
            if line.strip():  # the text format's indentation means nothing in a record
                native.log(level, line.strip())
        return
    print(text, file=sys.stderr, flush=True)
