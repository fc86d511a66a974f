"""Argument checks with MindSpore Serving's texts (mindspore_serving/server/common/check_type.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence


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


def _check_delay_ms(arg_name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RuntimeError(f"Parameter '{arg_name}' should be int or float, but actually {type(value)}")
    if not math.isfinite(value) or value < 0:
        raise RuntimeError(f"Parameter '{arg_name}' should be a finite number >= 0, but actually {value}")
    return float(value)
