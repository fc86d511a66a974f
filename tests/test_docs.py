"""Every code block of the documentation runs: docs/*.md, README.md and examples/README.md.

Blocks are fenced with a language: ```python and ```bash blocks run (in order, one page after another, each page in
its own scratch directory that holds a copy of examples/ and proto/), ```text blocks are output, trees and diagrams
and never run. HTML comments right before a block change what happens to it:

* `<!-- docs-test: skip (reason) -->`: not run; the reason is required and the number of skipped blocks is capped.
* `<!-- docs-test: file PATH -->`: the block's text is written to PATH (relative to the page's directory) instead of
  being run: a servable_config.py or a script that later blocks use.
* `<!-- docs-test: excerpt PATH -->`: the block is quoted from PATH (relative to the repository): it must appear
  there verbatim.
* `<!-- docs-test: server -->`: the bash block starts a server; it runs in the background until the next server
  block or the end of the page, and the test waits until its gRPC and REST ports accept connections.
* `<!-- docs-test: expect TEXT -->`: the block's output must contain TEXT (repeatable). Without it, output that
  contains a MindSpore error (`'error':`, `"error":`, `error_msg`) fails the block.
* README.md only, for steps its prose describes without a block: `<!-- docs-test: run COMMAND -->` runs a bash
  command, `<!-- docs-test: server COMMAND -->` starts a server, before the next block. The guide in docs/ shows
  every step it needs.

The documented default addresses (127.0.0.1:5500 for gRPC, 127.0.0.1:1500 for REST) are replaced by free ports: those
of the page's own server once it started one (and in the files it writes), otherwise those of a shared server on a
copy of examples/servables.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import HOST, ServerProcess, _child_env, free_port, launch_server

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md", ROOT / "examples" / "README.md"]
RUNNABLE = {"python", "bash"}
LANGUAGES = RUNNABLE | {"text"}
MAX_SKIPPED = 6
BLOCK_TIMEOUT_S = 180.0
SERVER_READY_S = 120.0
DEFAULT_GRPC = ("127.0.0.1:5500", "localhost:5500")
DEFAULT_REST = ("127.0.0.1:1500", "localhost:1500")
ERROR_MARKS = ("'error':", '"error":', "error_msg")
_IGNORE_NAMES = shutil.ignore_patterns("__pycache__", "test_images", "*.onnx.tmp")


def _copy_ignore(folder: str, names: list[str]) -> set[str]:
    """Generated files of the examples that are not copied into every page's directory: caches, test images and the
    ResNet-50 version directories (~100 MB each when built at full width; pages build a small copy when asked)."""
    ignored = set(_IGNORE_NAMES(folder, names))
    if Path(folder).parts[-3:] == ("resnet50", "servables", "resnet50"):
        ignored.update(name for name in names if name.isdigit())
    return ignored


DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(\w[\w-]*)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass
class Block:
    """One fenced code block and the directives right before it."""

    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    text: str
    directives: list[tuple[str, str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def directive(self, kind: str) -> str | None:
        """The argument of the first directive of `kind`, or None."""
        return next((argument for name, argument in self.directives if name == kind), None)


def parse_page(page: Path) -> list[Block]:
    """The page's fenced blocks, each with the directives on the lines just above it (blank lines allowed)."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    pending: list[tuple[str, str]] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        directive = DIRECTIVE.match(line.strip())
        fence = FENCE.match(line)
        if directive:
            pending.append((directive.group(1), directive.group(2)))
        elif fence:
            end = next((j for j in range(index + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise AssertionError(f"{page}:{index + 1}: unclosed code block")
            text = "\n".join(lines[index + 1 : end]) + "\n"
            blocks.append(Block(page, index + 1, fence.group(1), text, pending))
            pending = []
            index = end
        elif line.strip():
            pending = []  # directives must come right before their block
        index += 1
    return blocks


ALL_BLOCKS = {page: parse_page(page) for page in PAGES}


def test_every_block_has_a_known_language() -> None:
    """Blocks say what they are: python or bash (run) or text (never run)."""
    bad = [
        f"{b.where}: '{b.language}'" for blocks in ALL_BLOCKS.values() for b in blocks if b.language not in LANGUAGES
    ]
    assert not bad, "blocks need ```python, ```bash or ```text:\n" + "\n".join(bad)


def test_directives_are_known_and_skips_are_few_and_explained() -> None:
    """Only the documented directives; every skip gives a reason; at most MAX_SKIPPED blocks are skipped."""
    known = {"skip", "file", "excerpt", "server", "expect", "run"}
    skipped = []
    for blocks in ALL_BLOCKS.values():
        for block in blocks:
            for name, argument in block.directives:
                assert name in known, f"{block.where}: unknown directive '{name}'"
                if name == "skip":
                    assert re.fullmatch(r"\(.{10,}\)", argument), (
                        f"{block.where}: skip needs a (reason), got {argument!r}"
                    )
                    skipped.append(block.where)
                if name in ("file", "excerpt"):
                    assert argument, f"{block.where}: {name} needs a path"
                if name == "run" or (name == "server" and argument):
                    assert block.page.name == "README.md" and block.page.parent == ROOT, (
                        f"{block.where}: hidden steps ('{name} {argument}') are for README.md only"
                    )
            if block.directives:
                assert block.language in RUNNABLE, f"{block.where}: directives on a '{block.language}' block"
    assert len(skipped) <= MAX_SKIPPED, f"too many skipped blocks ({len(skipped)}): {skipped}"


def test_links_between_pages_resolve() -> None:
    """Relative Markdown links point to files that exist."""
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_docs_index_lists_every_page() -> None:
    """docs/README.md links every page of docs/, and README.md links the index."""
    index = (ROOT / "docs" / "README.md").read_text()
    missing = [
        page.name for page in (ROOT / "docs").glob("*.md") if page.name != "README.md" and page.name not in index
    ]
    assert not missing, missing
    assert "docs/README.md" in (ROOT / "README.md").read_text()


def test_public_python_api_has_docstrings() -> None:
    """Every public module, function, class, method and property of the Python API says what it does (the guide's
    reference defers to these docstrings)."""
    import importlib
    import inspect

    missing = []
    for module_name in ("rustserve", "rustserve.server", "rustserve.server.register", "rustserve.client",
                        "rustserve.exceptions", "rustserve.cli"):  # fmt: skip
        module = importlib.import_module(module_name)
        if not (module.__doc__ or "").strip():
            missing.append(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not (callable(obj) or inspect.isclass(obj)):
                continue
            if not (obj.__doc__ or "").strip():
                missing.append(f"{module_name}.{name}")
            if inspect.isclass(obj):
                for member, value in vars(obj).items():
                    function = value.fget if isinstance(value, property) else value
                    if member.startswith("_") or not (callable(function) or isinstance(value, property)):
                        continue
                    if not (getattr(function, "__doc__", None) or "").strip():
                        missing.append(f"{module_name}.{name}.{member}")
    assert not missing, missing


def test_configuration_reference_covers_every_cli_option() -> None:
    """Every subcommand and option of `rustserve` appears in the configuration reference."""
    import argparse

    from rustserve.cli import _parser

    reference = (ROOT / "docs" / "08-configuration.md").read_text()
    parser = _parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    missing = []
    for name, command in commands.choices.items():
        if f"`rustserve {name}" not in reference:
            missing.append(f"rustserve {name}")
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help") and f"`{option}" not in reference:
                    missing.append(f"rustserve {name} {option}")
    assert not missing, missing


INSTALL = re.compile(r'pip install "\.\[([\w,-]+)\]"')


def _named_extras(page: Path) -> list[str]:
    """The extras of the first `pip install ".[...]"` on a page."""
    match = INSTALL.search(page.read_text())
    assert match, f'{page.relative_to(ROOT)} names no `pip install ".[...]"`'
    return match.group(1).split(",")


def _distributions(extras: Sequence[str]) -> set[str]:
    """The distributions that `pip install ".[extras]"` asks for by name: the package's dependencies, those extras'
    and rustserve itself (normalised names; what they pull in on their own is not counted on)."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    return {canonicalize_name(project["name"])} | {canonicalize_name(Requirement(r).name) for r in requirements}


def _top_level_imports(path: Path) -> set[str]:
    """Every module a script imports anywhere (function bodies included), by its top-level name."""
    import ast

    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_examples_need_only_what_the_readmes_install() -> None:
    """The README's command 1 and examples/README.md install the same extras, and every module that a script under
    examples/ imports (clients, model builders, servable configs) is the standard library's, the examples' own, or
    from a distribution those extras name. The pages run the examples' commands in the development environment,
    which holds more (the `dev` extra); this check stands in for a fresh environment per run (no network, no
    minutes of pip in CI)."""
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    extras = _named_extras(ROOT / "README.md")
    assert "examples" in extras and _named_extras(ROOT / "examples" / "README.md") == extras
    allowed = _distributions(extras)
    provides = packages_distributions()
    scripts = sorted((ROOT / "examples").rglob("*.py"))
    # The examples' own modules, and the package itself (an editable install has no top_level record to map it by).
    import tomllib

    package = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["maturin"]["module-name"].split(".")[0]
    own = {path.stem for path in scripts} | {package}
    assert len(scripts) >= 10, scripts
    missing = []
    for script in scripts:
        for name in sorted(_top_level_imports(script) - own - set(sys.stdlib_module_names) - {"__future__"}):
            dists = {canonicalize_name(d) for d in provides.get(name, [])}
            if not dists & allowed:
                missing.append(f"{script.relative_to(ROOT)}: {name} (from {sorted(dists) or 'nothing installed'})")
    assert not missing, f'imports that `pip install ".[{",".join(extras)}]"` does not provide: {missing}'


# ---------------------------------------------------------------------------------------------------------------
# running the pages
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server on a copy of examples/servables: what pages that start no server of their own talk to."""
    servables = shutil.copytree(ROOT / "examples" / "servables", tmp_path_factory.mktemp("docs") / "servables")
    server = launch_server(Path(servables), tmp_path_factory.mktemp("docs-shared-logs"))
    yield server
    assert server.alive(), server.describe()
    assert server.stop(signal.SIGTERM) == 0, server.describe()


def _block_env() -> dict[str, str]:
    env = _child_env()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env["RUSTSERVE_RESNET50_WIDTH"] = "8"  # examples/resnet50/build_model.py: the small copy, as in the tests
    return env


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


class Page:
    """Runs one page's blocks in order in `workdir`."""

    def __init__(self, page: Path, workdir: Path, shared: ServerProcess) -> None:
        self.page = page
        self.workdir = workdir
        self.shared = shared
        self.own_ports = (free_port(), free_port())  # gRPC, REST of servers this page starts
        self.server: subprocess.Popen[str] | None = None
        self.server_log = workdir / "server.log"  # the latest server of the page
        self.env = _block_env()
        shutil.copytree(ROOT / "examples", workdir / "examples", ignore=_copy_ignore)
        shutil.copytree(ROOT / "proto", workdir / "proto")

    def substitute(self, text: str, own: bool) -> str:
        grpc, rest = self.own_ports if own else (self.shared.grpc_port, self.shared.rest_port)
        for address in DEFAULT_GRPC:
            text = text.replace(address, f"{HOST}:{grpc}")
        for address in DEFAULT_REST:
            text = text.replace(address, f"{HOST}:{rest}")
        return text

    def run(self, block: Block) -> None:
        for name, argument in block.directives:  # README's hidden steps come first
            if name == "run":
                self.execute(block, self.substitute(argument + "\n", self.serving), "bash")
            elif name == "server" and argument:
                self.start_server(block, argument)
        if block.directive("skip") is not None or block.language not in RUNNABLE:
            return
        excerpt = block.directive("excerpt")
        if excerpt is not None:
            source = (ROOT / excerpt).read_text()
            assert block.text in source, f"{block.where}: the excerpt is not (or no longer) in {excerpt}"
            return
        target = block.directive("file")
        if target is not None:
            path = self.workdir / target
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.substitute(block.text, own=True))
            return
        if block.directive("server") == "":
            self.start_server(block, block.text)
            return
        output = self.execute(block, self.substitute(block.text, self.serving), block.language)
        expected = [argument for name, argument in block.directives if name == "expect"]
        for text in expected:
            assert text in output, f"{block.where}: output lacks {text!r}:\n{output}"
        if not expected:
            marks = [mark for mark in ERROR_MARKS if mark in output]
            assert not marks, f"{block.where}: output shows an error ({marks}):\n{output}"

    @property
    def serving(self) -> bool:
        """Whether a server of this page is running (then the default addresses mean its ports)."""
        return self.server is not None and self.server.poll() is None

    def execute(self, block: Block, code: str, language: str) -> str:
        script = self.workdir / f"block_{block.line}.{'py' if language == 'python' else 'sh'}"
        script.write_text(code)
        command = [sys.executable, str(script)] if language == "python" else ["bash", "-eo", "pipefail", str(script)]
        grpc, rest = self.own_ports if self.serving else (self.shared.grpc_port, self.shared.rest_port)
        # `rustserve infer` and the example clients default to these (their documented defaults are 5500 / 1500).
        env = {**self.env, "RUSTSERVE_GRPC_ADDRESS": f"{HOST}:{grpc}", "RUSTSERVE_REST_ADDRESS": f"{HOST}:{rest}"}
        try:
            done = subprocess.run(
                command,
                cwd=self.workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=BLOCK_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"{block.where}: did not finish within {BLOCK_TIMEOUT_S:.0f} s\n{code}")
        output = done.stdout + done.stderr
        assert done.returncode == 0, (
            f"{block.where}: exit status {done.returncode}\n--- code ---\n{code}\n--- output ---\n{output}"
        )
        return output

    def start_server(self, block: Block, command: str) -> None:
        """Starts `command` (one line: the server gets the SIGTERM itself) and waits until it listens."""
        self.stop_server()
        grpc, rest = self.own_ports
        lines = [line for line in command.strip().splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert len(lines) == 1, f"{block.where}: a server block is one command, got {lines}"
        code = self.substitute(lines[0], own=True)
        if "rustserve start" in code and "--grpc" not in code:
            code += f" --grpc {HOST}:{grpc} --rest {HOST}:{rest}"
        script = self.workdir / f"server_{block.line}.sh"
        script.write_text(f"exec {code}\n")
        log = open(self.server_log, "w")  # noqa: SIM115 - closed by stop_server through the process' exit
        self.server = subprocess.Popen(
            ["bash", str(script)],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + SERVER_READY_S
        while not (_port_open(grpc) and _port_open(rest)):
            if self.server.poll() is not None:
                pytest.fail(
                    f"{block.where}: the server exited ({self.server.returncode}):\n{self.server_log.read_text()}"
                )
            if time.monotonic() > deadline:
                self.stop_server()
                pytest.fail(f"{block.where}: the server did not listen within {SERVER_READY_S:.0f} s")
            time.sleep(0.1)

    def stop_server(self) -> None:
        if self.server is None:
            return
        server, self.server = self.server, None
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                code = server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
                pytest.fail(f"the page's server ignored SIGTERM:\n{self.server_log.read_text()}")
            assert code == 0, f"the page's server exited with {code} on SIGTERM:\n{self.server_log.read_text()}"


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_page_runs(page: Path, shared_server: ServerProcess, tmp_path: Path) -> None:
    """The page's blocks run in order and succeed; its servers stop cleanly on SIGTERM."""
    runner = Page(page, tmp_path, shared_server)
    try:
        for block in ALL_BLOCKS[page]:
            runner.run(block)
    finally:
        runner.stop_server()
    assert shared_server.alive(), shared_server.describe()
