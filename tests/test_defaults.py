"""The server's defaults are the native core's (`rustserve._rustserve.DEFAULTS`): the literals MindSpore Serving's
signatures fix equal them, and the CLI and `set_connection_limits` read them."""

from __future__ import annotations

import inspect

from rustserve import cli, server
from rustserve._rustserve import DEFAULTS


def test_mindspore_signature_literals_are_the_native_defaults() -> None:
    for function in (server.start_grpc_server, server.start_restful_server, server.Server.start_grpc_server):
        assert inspect.signature(function).parameters["max_msg_mb_size"].default == DEFAULTS["max_msg_mb_size"]


def test_cli_start_defaults_are_the_native_defaults() -> None:
    args = cli._parser().parse_args(["start", "--dir", "servables"])
    assert (args.grpc, args.rest) == (DEFAULTS["grpc_address"], DEFAULTS["rest_address"])
    assert args.max_msg_mb_size == DEFAULTS["max_msg_mb_size"]
    assert args.request_timeout_s == DEFAULTS["request_timeout_s"]
    assert args.drain_timeout_s == DEFAULTS["drain_timeout_s"]
    assert args.max_enqueued_requests == DEFAULTS["max_enqueued_requests"]
    assert args.max_queued_instances == DEFAULTS["max_queued_instances"]
    assert args.max_queued_python_calls == DEFAULTS["max_queued_python_calls"]
    assert args.max_in_flight_mb == DEFAULTS["max_in_flight_mb"]
    assert args.max_connections == DEFAULTS["max_connections"]
    assert args.connection_idle_timeout_s == DEFAULTS["connection_idle_timeout_s"]


def test_module_functions_delegate_with_the_methods_signatures() -> None:
    for name in ("start_servables", "start_grpc_server", "set_connection_limits", "stop"):
        method = inspect.signature(getattr(server.Server, name))
        function = inspect.signature(getattr(server, name))
        assert list(function.parameters) == list(method.parameters)[1:]
        assert getattr(server, name).__doc__ == getattr(server.Server, name).__doc__
