"""proto/kserve must stay wire-compatible with Triton's own `inference` protos, which tritonclient was generated from.

Every service method, message, field and enum value of our subset is compared with the descriptors inside the
installed tritonclient wheel (same number, type, label and message/enum type; same method input/output types).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

PROTO_ROOT = Path(__file__).resolve().parents[1] / "proto"
FILES = ("kserve/grpc_service.proto", "kserve/model_config.proto")


def _ours(tmp_path: Path) -> list[descriptor_pb2.FileDescriptorProto]:
    from grpc_tools import protoc

    out = tmp_path / "kserve.pb"
    args = ["protoc", f"-I{PROTO_ROOT}", f"--descriptor_set_out={out}", "--include_imports", *FILES]
    assert protoc.main(args) == 0, "protoc failed on proto/kserve"
    return list(descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file)


def _theirs() -> list[descriptor_pb2.FileDescriptorProto]:
    service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    return [
        descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        for module in (service_pb2, model_config_pb2)
    ]


def _index(files: list[descriptor_pb2.FileDescriptorProto]) -> tuple[dict, dict, dict]:
    """(messages, enums, methods) by fully qualified name."""
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
    methods: dict[str, descriptor_pb2.MethodDescriptorProto] = {}

    def walk(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        messages[name] = message
        for enum in message.enum_type:
            enums[f"{name}.{enum.name}"] = enum
        for nested in message.nested_type:
            walk(name, nested)

    for file in files:
        prefix = f".{file.package}"
        for message in file.message_type:
            walk(prefix, message)
        for enum in file.enum_type:
            enums[f"{prefix}.{enum.name}"] = enum
        for service in file.service:
            for method in service.method:
                methods[f"{prefix}.{service.name}/{method.name}"] = method
    return messages, enums, methods


def test_every_field_matches_triton(tmp_path: Path) -> None:
    our_messages, our_enums, our_methods = _index(_ours(tmp_path))
    their_messages, their_enums, their_methods = _index(_theirs())
    assert len(our_methods) == 11 and len(our_messages) > 40
    problems: list[str] = []
    for name, method in our_methods.items():
        theirs = their_methods.get(name)
        if theirs is None:
            problems.append(f"rpc {name} does not exist in Triton")
        elif (method.input_type, method.output_type, method.server_streaming) != (
            theirs.input_type,
            theirs.output_type,
            theirs.server_streaming,
        ):
            problems.append(f"rpc {name}: {method.input_type} -> {method.output_type} differs")
    for name, message in our_messages.items():
        theirs = their_messages.get(name)
        if theirs is None:
            problems.append(f"message {name} does not exist in Triton")
            continue
        their_fields = {f.name: f for f in theirs.field}
        for field in message.field:
            other = their_fields.get(field.name)
            if other is None:
                problems.append(f"{name}.{field.name} does not exist in Triton")
            elif (field.number, field.type, field.label, field.type_name) != (
                other.number,
                other.type,
                other.label,
                other.type_name,
            ):
                problems.append(f"{name}.{field.name}: ours {field} differs from Triton's {other}")
    for name, enum in our_enums.items():
        theirs = their_enums.get(name)
        if theirs is None:
            problems.append(f"enum {name} does not exist in Triton")
            continue
        their_values = {v.name: v.number for v in theirs.value}
        for value in enum.value:
            if their_values.get(value.name) != value.number:
                problems.append(f"{name}.{value.name} = {value.number}, Triton: {their_values.get(value.name)}")
    assert problems == []


def test_the_api_rustserve_serves_is_complete(tmp_path: Path) -> None:
    _, _, methods = _index(_ours(tmp_path))
    served = {name.rsplit("/", 1)[1] for name in methods}
    assert served == {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
    }
