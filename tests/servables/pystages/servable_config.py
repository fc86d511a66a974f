"""Python-only stages: errors, batch functions, garbage results, and value conversions."""

import numpy as np

from rustserve.server import register


def _negative(x):
    return float(np.asarray(x, dtype=np.float64).sum()) < 0


def raise_fn(x):
    if _negative(x):
        raise ValueError("negative input")
    return x


def plus_one(x):
    return x + 1


def batch_square(instances):
    count = np.int64(len(instances))
    return [(x * x, count) for (x,) in instances]


def gen_triple(instances):
    for (x,) in instances:
        if _negative(x):
            raise ValueError("negative input")
        yield x * 3


def batch_raise(instances):
    if any(_negative(x) for (x,) in instances):
        raise ValueError("negative in batch")
    return [x for (x,) in instances]


def returns_none(x):
    return None


def returns_three(x):
    return x, x, x


def batch_short(instances):
    return []


def convert(x):
    v = float(np.asarray(x, dtype=np.float64).sum())
    return (
        int(v),
        v,
        v > 0,
        f"sum={v:g}",
        b"\x00sum" + str(int(v)).encode(),
        np.float16(v),
        np.array([v, -v], dtype=np.float64),
    )


def describe(x):
    if isinstance(x, np.ndarray):
        return f"ndarray:{x.dtype}:{list(x.shape)}"
    return type(x).__name__


def reverse_str(s):
    return s[::-1]


def reverse_bytes(b):
    return bytes(b.tobytes()[::-1])


_CONSTANT = b"\x01\x02\x03\x04"


def read_only_view(x):
    # A read-only array over an immutable bytes object: the server must copy it before a later stage may edit it.
    return np.frombuffer(_CONSTANT, dtype=np.uint8)


_KEPT = np.array([10, 20], dtype=np.int64)


def kept_array(x):
    # A writable array the module keeps: sharing it would let a later stage's edit change it for every request.
    return _KEPT


def strided_view(x):
    return np.arange(8, dtype=np.int32)[::2]


def add_one_in_place(v):
    v += 1
    return v


@register.register_method(output_names=["y"])
def raising(x):
    return register.add_stage(raise_fn, x, outputs_count=1)


@register.register_method(output_names=["y"])
def raising_late(x):
    y = register.add_stage(plus_one, x, outputs_count=1)
    return register.add_stage(raise_fn, y, outputs_count=1)


@register.register_method(output_names=["y"])
def raising_tagged(x):
    return register.add_stage(raise_fn, x, outputs_count=1, tag="Preprocess")


@register.register_method(output_names=["y", "batch_len"])
def batch_list(x):
    y, n = register.add_stage(batch_square, x, outputs_count=2, batch_size=4)
    return y, n


@register.register_method(output_names=["y"])
def batch_gen(x):
    return register.add_stage(gen_triple, x, outputs_count=1, batch_size=0)


@register.register_method(output_names=["y"])
def batch_raising(x):
    return register.add_stage(batch_raise, x, outputs_count=1, batch_size=2)


@register.register_method(output_names=["y"])
def garbage_none(x):
    return register.add_stage(returns_none, x, outputs_count=1)


@register.register_method(output_names=["a", "b"])
def garbage_count(x):
    a, b = register.add_stage(returns_three, x, outputs_count=2)
    return a, b


@register.register_method(output_names=["y"])
def garbage_short(x):
    return register.add_stage(batch_short, x, outputs_count=1, batch_size=4)


@register.register_method(output_names=["as_int", "as_float", "as_bool", "as_str", "as_bytes", "as_f16", "as_array"])
def convert_values(x):
    return register.add_stage(convert, x, outputs_count=7)


@register.register_method(output_names=["kind"])
def describe_input(x):
    return register.add_stage(describe, x, outputs_count=1)


@register.register_method(output_names=["y"])
def reverse_text(s):
    return register.add_stage(reverse_str, s, outputs_count=1)


@register.register_method(output_names=["y"])
def reverse_blob(b):
    return register.add_stage(reverse_bytes, b, outputs_count=1)


@register.register_method(output_names=["ro", "strided", "kept"])
def edit_unshareable(x):
    ro = register.add_stage(read_only_view, x, outputs_count=1)
    strided = register.add_stage(strided_view, x, outputs_count=1)
    kept = register.add_stage(kept_array, x, outputs_count=1)
    ro = register.add_stage(add_one_in_place, ro, outputs_count=1)
    strided = register.add_stage(add_one_in_place, strided, outputs_count=1)
    kept = register.add_stage(add_one_in_place, kept, outputs_count=1)
    return ro, strided, kept
