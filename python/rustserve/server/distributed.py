"""Distributed servables, compatible with `mindspore_serving.server.distributed`, on ONNX.

A model too large for one device is split into one ONNX file per *rank* (`rustserve split` makes them). The
servable declares it with `declare_servable(rank_size, stage_size)` and uses it in `add_stage` like any model. The
main process calls `start_servable(...)` (then `start_grpc_server` / `start_restful_server` as usual); each machine
starts one agent process per local rank with `startup_agents(...)`. The main process runs each batch through the
agents: `rank_size / stage_size` ranks per pipeline stage, every rank of a stage gets the stage's inputs, the ranks'
outputs are combined as their group config files say (concat along an axis, sum, or the first rank's), and a stage's
outputs feed the next stage's inputs by name. See docs/12-distributed.md.

Example (servable_config.py, then the server and the agent scripts):
    >>> model = distributed.declare_servable(rank_size=8, stage_size=1, with_batch_dim=False)
    >>> distributed.start_servable(servable_dir, "matmul", rank_table_json_file="rank_table_8pcs.json")
    >>> distributed.startup_agents("127.0.0.1:6200", model_files, group_config_files)
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from rustserve.server import register
from rustserve.server.register import _check_and_as_int_tuple_list, _check_bool, _check_int, _check_str
from rustserve.server.register.model import Model
from rustserve.server.register.registry import _DeclaredModel, _registry

__all__ = ["declare_servable", "start_servable", "startup_agents"]

_logger = logging.getLogger("rustserve")


def declare_servable(
    rank_size: int,
    stage_size: int,
    with_batch_dim: bool = True,
    without_batch_dim_inputs: int | Sequence[int] | None = None,
    enable_pipeline_infer: bool = False,
) -> Model:
    """Declares the distributed model of this servable (in servable_config.py, instead of `declare_model`).

    Args:
        rank_size: Ranks (devices, agent processes) the model runs on.
        stage_size: Pipeline stages; each has `rank_size / stage_size` ranks.
        with_batch_dim: Whether dim 0 of the model's inputs and outputs is the batch, as in `declare_model`.
        without_batch_dim_inputs: Inputs without a batch dimension, as in `declare_model`.
        enable_pipeline_infer: Accepted for MindSpore compatibility; batches always overlap across stages here.

    Returns:
        The `Model`, for `add_stage`.

    Raises:
        RuntimeError: A parameter is invalid, or a model is declared already.
    """
    registry = _registry("declare_servable")
    _check_int("rank_size", rank_size, 1)
    _check_int("stage_size", stage_size, 1)
    _check_bool("with_batch_dim", with_batch_dim)
    _check_bool("enable_pipeline_infer", enable_pipeline_infer)
    if rank_size % stage_size != 0:
        raise RuntimeError(f"Parameter 'rank_size' {rank_size} must be divisible by 'stage_size' {stage_size}")
    no_batch_inputs: tuple[int, ...] = ()
    if without_batch_dim_inputs is not None:
        no_batch_inputs = _check_and_as_int_tuple_list("without_batch_dim_inputs", without_batch_dim_inputs, 0)
    if registry.models:
        raise RuntimeError("declare_servable or declare_model has already been called in this servable_config.py")
    model = Model("distributed")
    registry.models.append(
        _DeclaredModel(
            model=model,
            files=(),
            with_batch_dim=with_batch_dim,
            without_batch_dim_inputs=no_batch_inputs,
            max_batch_size=None,
            intra_op_threads=None,
            config_file=None,
            distributed=(rank_size, stage_size),
        )
    )
    return model


def _read_rank_table(path: str) -> list[tuple[int, str, str]]:
    """`(rank_id, device_id, server_id)` of every device of a MindSpore rank table file, checked."""
    try:
        with open(path, encoding="utf-8") as file:
            table = json.load(file)
    except OSError as exc:
        raise RuntimeError(f"Cannot access rank table file '{path}': {exc.strerror}") from None
    except ValueError as exc:
        raise RuntimeError(f"Rank table file '{path}' is not valid JSON: {exc}") from None
    servers = table.get("server_list") if isinstance(table, dict) else None
    if not isinstance(servers, list) or not servers:
        raise RuntimeError(f"Rank table file '{path}': 'server_list' must be a non-empty list")
    ranks: list[tuple[int, str, str]] = []
    for i, server in enumerate(servers):
        where = f"Rank table file '{path}': server_list[{i}]"
        if not isinstance(server, dict) or not isinstance(server.get("server_id"), str):
            raise RuntimeError(f"{where} must have a string 'server_id'")
        devices = server.get("device")
        if not isinstance(devices, list) or not devices:
            raise RuntimeError(f"{where} must have a non-empty 'device' list")
        for j, device in enumerate(devices):
            entry = f"{where}.device[{j}]"
            if not isinstance(device, dict):
                raise RuntimeError(f"{entry} must be an object")
            for key in ("device_id", "rank_id"):
                value = device.get(key)
                if not isinstance(value, str) or not value.isdigit():
                    raise RuntimeError(f"{entry} '{key}' must be a string of digits, got {value!r}")
            ranks.append((int(device["rank_id"]), device["device_id"], server["server_id"]))
    ids = sorted(rank for rank, _, _ in ranks)
    if ids != list(range(len(ranks))):
        raise RuntimeError(f"Rank table file '{path}': the rank ids must be 0..{len(ranks) - 1}, each once, got {ids}")
    return ranks


def start_servable(
    servable_directory: str,
    servable_name: str,
    rank_table_json_file: str,
    version_number: int = 1,
    distributed_address: str = "0.0.0.0:6200",
    wait_agents_time_in_seconds: float = 0,
) -> None:
    """Starts a distributed servable in this (main) process: listens for its agents at `distributed_address`, waits
    until every rank of the rank table has registered, then serves it like `server.start_servables` would.

    Args:
        servable_directory: The folder that holds the servable's folder.
        servable_name: The servable's name (its folder's name).
        rank_table_json_file: MindSpore's rank table file: `server_list[].device[]` with `device_id` and `rank_id`.
        version_number: The version to serve.
        distributed_address: Where agents register (`host:port`).
        wait_agents_time_in_seconds: How long to wait for the agents; 0 waits forever.

    Raises:
        RuntimeError: A bad rank table, a servable that does not match it, an address that cannot be bound, or
            agents that did not all register in time.
    """
    from rustserve import server

    _check_str("servable_directory", servable_directory)
    _check_str("servable_name", servable_name)
    _check_str("rank_table_json_file", rank_table_json_file)
    _check_str("distributed_address", distributed_address)
    _check_int("version_number", version_number, 0)
    if not isinstance(wait_agents_time_in_seconds, (int, float)) or wait_agents_time_in_seconds < 0:
        raise RuntimeError(
            "Parameter 'wait_agents_time_in_seconds' should be a number >= 0, but gotten "
            f"{wait_agents_time_in_seconds!r}"
        )
    ranks = _read_rank_table(rank_table_json_file)
    native = server._native()
    native.start_agent_hub(servable_name, distributed_address, ranks, float(wait_agents_time_in_seconds))
    try:
        server.start_servables(server.ServableStartConfig(servable_directory, servable_name, version_number))
    except BaseException:
        native.stop_agent_hub(servable_name)  # so a retry can listen on the same address
        raise


def _local_addresses() -> set[str]:
    """The names and addresses this machine answers to, for picking its ranks out of the rank table."""
    names = {"127.0.0.1", "localhost", socket.gethostname()}
    try:
        names.update(
            info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None) if isinstance(info[4][0], str)
        )
    except OSError:
        pass
    return names


@dataclass
class _Agent:
    rank: int
    command: list[str]
    process: subprocess.Popen[str] | None = None
    registered: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Supervisor:
    """Keeps this machine's agents running: restarts one that exits, stops all on SIGINT/SIGTERM or exit."""

    agents: list[_Agent]
    stopping: threading.Event = field(default_factory=threading.Event)
    # Serialises starting and stopping, so no agent is started after stop() terminated the others.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, agent: _Agent) -> None:
        with self.lock:
            if not self.stopping.is_set():
                self._start(agent)

    def _start(self, agent: _Agent) -> None:
        agent.registered.clear()
        agent.process = subprocess.Popen(agent.command, stdout=subprocess.PIPE, text=True, bufsize=1)
        threading.Thread(target=self._read, args=(agent, agent.process.stdout), daemon=True).start()

    def _read(self, agent: _Agent, stream: IO[str] | None) -> None:
        for line in stream or ():
            sys.stdout.write(line)
            sys.stdout.flush()
            if "registered" in line:
                agent.registered.set()

    def watch(self) -> None:
        """Restarts agents that exit until stopped (runs in a non-daemon thread: it keeps the script alive)."""
        while not self.stopping.wait(0.5):
            for agent in self.agents:
                if agent.process is not None and agent.process.poll() is not None and not self.stopping.is_set():
                    _logger.warning(
                        "agent of rank %d exited with %s; starting it again", agent.rank, agent.process.returncode
                    )
                    self.start(agent)

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()
        for agent in self.agents:
            if agent.process is not None and agent.process.poll() is None:
                agent.process.terminate()
        for agent in self.agents:
            if agent.process is not None:
                try:
                    agent.process.wait(5)
                except subprocess.TimeoutExpired:
                    agent.process.kill()


def startup_agents(
    distributed_address: str,
    model_files: str | Sequence[str],
    group_config_files: str | Sequence[str] | None = None,
    agent_start_port: int = 7000,
    agent_ip: str | None = None,
    rank_start: int | None = None,
    dec_key: bytes | None = None,
    dec_mode: str = "AES-GCM",
    device_type: str = "cpu",
    intra_op_threads: int | None = None,
) -> None:
    """Starts one agent process per local rank and returns once all have registered with the main process; they
    stay supervised (one that exits is started again) until SIGINT/SIGTERM or the end of this process.

    Args:
        distributed_address: The main process's `distributed_address`.
        model_files: One ONNX file per local rank, in rank order.
        group_config_files: One group config file per local rank (how its outputs combine), or None.
        agent_start_port: The i-th local agent listens on `agent_start_port + i`.
        agent_ip: This machine's address in the rank table (`server_id`); found from the host's addresses if None.
        rank_start: The first local rank; with it, the local ranks are `rank_start .. rank_start + len(model_files)`.
        dec_key: Model decryption is not supported (ONNX files are not encrypted); must be None.
        dec_mode: Ignored.
        device_type: rustserve extension: "cpu", or "gpu" to run each rank on the CUDA device its `device_id` says.
        intra_op_threads: rustserve extension: ONNX Runtime intra-op threads per agent (None: its default).

    Raises:
        RuntimeError: A missing file, a count that does not match the rank table, or an agent that exits before it
            registers.
    """
    from rustserve import server

    _check_str("distributed_address", distributed_address)
    files = list(register._check_and_as_str_tuple_list("model_files", model_files))
    configs: list[str | None] = [None] * len(files)
    if group_config_files is not None:
        configs = list(register._check_and_as_str_tuple_list("group_config_files", group_config_files))
        if len(configs) != len(files):
            raise RuntimeError(
                f"The number of group config files {len(configs)} is not equal to the number of model files "
                f"{len(files)}"
            )
    _check_int("agent_start_port", agent_start_port, 1)
    if dec_key is not None:
        raise RuntimeError("Model decryption is not supported: ONNX model files are not encrypted, pass dec_key=None")
    if device_type not in ("cpu", "gpu"):
        raise RuntimeError(f"Parameter 'device_type' should be 'cpu' or 'gpu', but gotten {device_type!r}")
    for path in [*files, *(c for c in configs if c is not None)]:
        if not os.access(path, os.R_OK):
            raise RuntimeError(
                f"Cannot access model file '{path}'" if path in files else f"Cannot access group config file '{path}'"
            )
    native = server._native()
    table = native.agent_ranks(distributed_address, "", 600.0)
    devices = dict(table)
    if rank_start is not None:
        _check_int("rank_start", rank_start, 0)
        missing = [rank for rank in range(rank_start, rank_start + len(files)) if rank not in devices]
        if missing:
            raise RuntimeError(
                f"Ranks {missing} (rank_start {rank_start}, {len(files)} model files) are not in the rank table of the "
                f"distributed servable at {distributed_address}, which has ranks 0..{len(devices) - 1}"
            )
        local = [(rank, devices[rank]) for rank in range(rank_start, rank_start + len(files))]
        host = agent_ip or "127.0.0.1"
    else:
        names = {agent_ip} if agent_ip else _local_addresses()
        mine: list[tuple[int, str]] = []
        host = agent_ip or "127.0.0.1"
        for name in sorted(names):
            found = native.agent_ranks(distributed_address, name, 5.0)
            if found:
                mine, host = sorted(found), name
                break
        local = mine
    if len(local) != len(files):
        raise RuntimeError(
            f"The rank table lists {len(local)} ranks for this machine ({host}), but {len(files)} model files were "
            "given (pass agent_ip or rank_start to choose the ranks)"
        )
    agents = []
    for i, ((rank, device_id), path, config) in enumerate(zip(local, files, configs, strict=True)):
        command = [
            sys.executable,
            "-m",
            "rustserve",
            "agent",
            "--model-file",
            os.path.abspath(path),
            "--rank",
            str(rank),
            "--listen",
            f"{host}:{agent_start_port + i}",
            "--distributed-address",
            distributed_address,
        ]
        if config is not None:
            command += ["--group-config", os.path.abspath(config)]
        if device_type == "gpu":
            command += ["--device-id", device_id]
        if intra_op_threads is not None:
            command += ["--intra-op-threads", str(intra_op_threads)]
        agents.append(_Agent(rank, command))
    supervisor = _Supervisor(agents)
    for agent in agents:
        supervisor.start(agent)
    atexit.register(supervisor.stop)
    if threading.current_thread() is threading.main_thread():

        def stop_and_exit(*_: Any) -> None:
            supervisor.stop()
            os._exit(0)

        signal.signal(signal.SIGTERM, stop_and_exit)
        signal.signal(signal.SIGINT, stop_and_exit)
    for agent in agents:
        while not agent.registered.wait(0.2):
            process = agent.process
            if process is not None and process.poll() is not None:
                supervisor.stop()
                raise RuntimeError(
                    f"The agent of rank {agent.rank} exited with {process.returncode} before it registered"
                )
    _logger.info("all %d agents registered with %s", len(agents), distributed_address)
    print(f"rustserve agents ready: {len(agents)}", flush=True)
    threading.Thread(target=supervisor.watch, name="rustserve-agents", daemon=False).start()
