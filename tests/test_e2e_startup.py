"""Start-up and shutdown of `rustserve start`: bad servables fail with a message, signals stop it cleanly."""

from __future__ import annotations

import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import models
import numpy as np
import pytest
from conftest import ADD_CONFIG, Grpc, ServerProcess

# Each case: (servable config, build the add model into version 1?, texts stderr must contain).
BAD_CONFIGS: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "import-error": (
        'raise RuntimeError("boom at import")\n',
        False,
        ("import broken.servable_config failed", "boom at import"),
    ),
    "syntax-error": ("def oops(:\n", False, ("import broken.servable_config failed",)),
    "no-version-dir": (
        ADD_CONFIG,
        False,
        (
            "There is no valid version directory of models while there are models declared in servable_config.py",
            "servable name: broken",
        ),
    ),
    "no-method": (
        'from rustserve.server import register\nregister.declare_model(model_file="add.onnx", model_format="ONNX")\n',
        True,
        ("There is no method registered for servable",),
    ),
    "inputs-count": (
        """
        from rustserve.server import register
        model = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=False)

        @register.register_method(output_names=["y"])
        def add3(x1, x2, x3):
            return register.add_stage(model, x1, x2, x3, outputs_count=1)
        """,
        True,
        ("The inputs count 3 in register_method not equal to the count 2 defined in model",),
    ),
    "outputs-count": (
        """
        from rustserve.server import register
        model = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=False)

        @register.register_method(output_names=["y", "z"])
        def add2(x1, x2):
            y, z = register.add_stage(model, x1, x2, outputs_count=2)
            return y, z
        """,
        True,
        ("The outputs count 2 in register_method not equal to the count 1 defined in model",),
    ),
    "non-placeholder-arg": (
        """
        from rustserve.server import register
        model = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=False)

        @register.register_method(output_names=["y"])
        def add_const(x1):
            return register.add_stage(model, x1, 1.0, outputs_count=1)
        """,
        True,
        (
            "Each value of parameter *args is a placeholder for data and must come from the method inputs or the "
            "outputs of add_stage",
        ),
    ),
    "non-placeholder-return": (
        """
        from rustserve.server import register

        @register.register_method(output_names=["y"])
        def constant(x):
            return 1
        """,
        False,
        (
            "Each value returned is a placeholder for data and must come from the method inputs or the outputs of "
            "add_stage",
        ),
    ),
    "return-count": (
        """
        from rustserve.server import register

        @register.register_method(output_names=["y", "z"])
        def one(x):
            return x
        """,
        False,
        ("Method return output size 1 not match registered 2",),
    ),
    "duplicate-method": (
        """
        from rustserve.server import register

        @register.register_method(output_names=["y"])
        def echo(x):
            return x

        @register.register_method(output_names=["y"])
        def echo(x):  # noqa: F811
            return x
        """,
        False,
        ("Method echo has been registered more than once.",),
    ),
    "var-keyword": (
        """
        from rustserve.server import register

        @register.register_method(output_names=["y"])
        def kw(x, **others):
            return x
        """,
        False,
        ("'kw' input others cannot be VAR_KEYWORD !",),
    ),
    "negative-batch-size": (
        """
        from rustserve.server import register

        def f(instances):
            return instances

        @register.register_method(output_names=["y"])
        def m(x):
            return register.add_stage(f, x, outputs_count=1, batch_size=-1)
        """,
        False,
        ("Parameter 'batch_size' should be >= 0",),
    ),
    "function-arity": (
        """
        from rustserve.server import register

        def three(a, b, c):
            return a

        @register.register_method(output_names=["y"])
        def m(x1, x2):
            return register.add_stage(three, x1, x2, outputs_count=1)
        """,
        False,
        ("input args count 3 not match the count 2 registered in method",),
    ),
    "model-declared-twice": (
        """
        from rustserve.server import register
        a = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=False)
        b = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=False)
        """,
        True,
        ("Declare model add.onnx failed, model file 'add.onnx' has already been used",),
    ),
    "missing-model-file": (
        """
        from rustserve.server import register
        model = register.declare_model(model_file="absent.onnx", model_format="ONNX", with_batch_dim=False)

        @register.register_method(output_names=["y"])
        def add_common(x1, x2):
            return register.add_stage(model, x1, x2, outputs_count=1)
        """,
        True,
        ("absent.onnx",),
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_servable_fails_at_start(
    case: str,
    make_servable: Callable[..., Path],
    failing_start: Callable[..., ServerProcess],
) -> None:
    """A broken servable stops start-up: exit code 1, MindSpore's text and the servable on stderr."""
    config, with_model, texts = BAD_CONFIGS[case]
    folder = make_servable("broken", config, versions=(1,) if with_model else ())
    if with_model:
        models.build_add(folder / "1" / "add.onnx")
    server = failing_start(folder.parent)
    stderr = server.stderr_text()
    assert server.proc.returncode == 1, server.describe()
    assert "broken" in stderr, server.describe()
    for text in texts:
        assert text in stderr, server.describe()


def test_missing_servable_directory(tmp_path: Path, failing_start: Callable[..., ServerProcess]) -> None:
    """A --dir that does not exist: exit code 1 with the path on stderr."""
    server = failing_start(tmp_path / "does-not-exist")
    assert server.proc.returncode == 1, server.describe()
    assert "does-not-exist" in server.stderr_text()


def test_grpc_port_in_use(
    session_server: ServerProcess, make_servable: Callable[..., Path], failing_start: Callable[..., ServerProcess]
) -> None:
    """Binding a gRPC port that the session server holds fails at start with exit code 1."""
    folder = make_servable("add", ADD_CONFIG, versions=(1,))
    models.build_add(folder / "1" / "add.onnx")
    server = failing_start(folder.parent, grpc_port=session_server.grpc_port)
    assert server.proc.returncode == 1, server.describe()
    assert str(session_server.grpc_port) in server.stderr_text()
    assert session_server.alive()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly(
    sig: signal.Signals,
    make_servable: Callable[..., Path],
    start_server: Callable[..., ServerProcess],
    pb2_modules: tuple[Any, Any],
) -> None:
    """SIGINT and SIGTERM stop a serving server with exit code 0."""
    folder = make_servable("add", ADD_CONFIG, versions=(1,))
    models.build_add(folder / "1" / "add.onnx")
    server = start_server(folder.parent)
    grpc = Grpc(*pb2_modules, server.grpc_address)
    x = np.ones((2, 2), np.float32)
    outputs = grpc.ok(grpc.predict("add", "add_common", [{"x1": x, "x2": x}]), 1)
    np.testing.assert_array_equal(outputs[0]["y"], 2 * x)
    grpc.close()
    assert server.stop(sig) == 0, server.describe()


def test_sigterm_right_after_the_ready_line(
    make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess]
) -> None:
    """A SIGTERM that arrives as soon as the ready line is printed still stops the server with exit code 0."""
    config = """
    from rustserve.server import register

    @register.register_method(output_names=["y"])
    def echo(x):
        return x
    """
    folder = make_servable("echo", config)
    for _ in range(5):
        server = start_server(folder.parent)
        assert server.stop(signal.SIGTERM) == 0, server.describe()


def test_console_script(
    make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess], pb2_modules: tuple[Any, Any]
) -> None:
    """The installed `rustserve` command serves like `python -m rustserve`."""
    script = Path(sys.executable).parent / "rustserve"
    if not script.exists() and shutil.which("rustserve") is None:
        pytest.skip("the rustserve console script is not installed in this environment")
    command = str(script) if script.exists() else str(shutil.which("rustserve"))
    folder = make_servable("add", ADD_CONFIG, versions=(1,))
    models.build_add(folder / "1" / "add.onnx")
    server = start_server(folder.parent, command=[command])
    grpc = Grpc(*pb2_modules, server.grpc_address)
    x = np.arange(4, dtype=np.float32).reshape(2, 2)
    np.testing.assert_array_equal(grpc.ok(grpc.predict("add", "add_common", [{"x1": x, "x2": x}]), 1)[0]["y"], 2 * x)
    grpc.close()


def test_servable_without_models_or_version_dir_is_version_1(
    make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess], pb2_modules: tuple[Any, Any]
) -> None:
    """A servable with no models and no version directory runs as version 1; non-digit folders are not versions."""
    config = """
    from rustserve.server import register

    def shout(s):
        return s.upper()

    @register.register_method(output_names=["y"])
    def loud(s):
        return register.add_stage(shout, s, outputs_count=1)
    """
    folder = make_servable("text", config)
    (folder / "notes").mkdir()
    server = start_server(folder.parent)
    grpc = Grpc(*pb2_modules, server.grpc_address)
    for version in (0, 1):
        assert grpc.ok(grpc.predict("text", "loud", [{"s": "hi"}], version=version), 1) == [{"y": "HI"}]
    reply = grpc.predict("text", "loud", [{"s": "hi"}], version=2)
    grpc.assert_failed(reply, 2, "Request servable(text) method(loud)  version(2) , servable is not available")
    grpc.close()


def test_string_identity_model(
    make_servable: Callable[..., Path], start_server: Callable[..., ServerProcess], pb2_modules: tuple[Any, Any]
) -> None:
    """An ONNX model with a string input and output ([batch] strings) serves MS_STRING instances."""
    config = """
    from rustserve.server import register

    model = register.declare_model(
        model_file="identity_string.onnx", model_format="ONNX", with_batch_dim=True, max_batch_size=4
    )

    @register.register_method(output_names=["y"])
    def id_string(x):
        return register.add_stage(model, x, outputs_count=1)
    """
    folder = make_servable("strings", config, versions=(1,))
    models.build_identity(folder / "1" / "identity_string.onnx", "string", width=None)
    server = start_server(folder.parent)
    grpc = Grpc(*pb2_modules, server.grpc_address)
    words = ["alpha", "βeta", "", "delta", "epsilon"]
    outputs = grpc.ok(grpc.predict("strings", "id_string", [{"x": w} for w in words]), len(words))
    assert [out["y"] for out in outputs] == words
    grpc.close()
