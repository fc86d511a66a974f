#!/usr/bin/env bash
# Regenerates the betterproto2 message classes of the MindSpore wire format into python/rustserve/client/_proto/.
#
# Needs only pip packages: grpcio-tools (bundles protoc) and betterproto2_compiler (the protoc plugin). Re-runnable:
# the output folder is replaced as a whole. Run from anywhere: scripts/gen_proto.sh
# Override the interpreter with PYTHON=/path/to/python (default: the repo's .venv, else python3 on PATH).
#
# The plugin writes relative imports (`from ....message_pool import ...`), so the result imports as
# `rustserve.client._proto.mindspore.serving.proto` without any fix-up. Clients are not generated
# (client_generation=none): rustserve's client drives grpcio itself with one cached multicallable.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
proto_root="$root/proto"
proto_file="$proto_root/mindspore_serving/ms_service.proto"
out="$root/python/rustserve/client/_proto"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; else PYTHON="python3"; fi
fi

# protoc looks plugins up on PATH; name the one next to the interpreter explicitly so an inactive venv works too.
plugin="$("$PYTHON" -c 'import os, sys; print(os.path.join(os.path.dirname(sys.executable), "protoc-gen-python_betterproto2"))')"
if [[ ! -x "$plugin" ]]; then
    plugin="$(command -v protoc-gen-python_betterproto2 || true)"
fi
if [[ -z "$plugin" ]]; then
    echo "gen_proto: protoc-gen-python_betterproto2 not found; pip install betterproto2_compiler==0.10.1" >&2
    exit 1
fi

# The plugin formats its output by running `ruff` (a dev dependency): put the interpreter's bin folder first on PATH.
bindir="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))')"
export PATH="$bindir:$PATH"
command -v ruff >/dev/null || { echo "gen_proto: ruff not found (the betterproto2 plugin runs it); pip install ruff" >&2; exit 1; }

# ...and run from the repo root so that ruff picks up pyproject.toml (120 columns) wherever the script is called from.
cd "$root"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

"$PYTHON" -m grpc_tools.protoc \
    -I "$proto_root" \
    --plugin="protoc-gen-python_betterproto2=$plugin" \
    --python_betterproto2_out="$tmp" \
    --python_betterproto2_opt=client_generation=none \
    "$proto_file" 2> >(grep -v '^Writing ' >&2)

# The plugin marks its output with a py.typed of its own; the rustserve package already has one at its root.
rm -f "$tmp/py.typed"

rm -rf "$out"
mkdir -p "$out"
cp -R "$tmp/." "$out/"

# Smoke test: the generated package imports from inside rustserve.
PYTHONPATH="$root/python${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c \
    'from rustserve.client._proto.mindspore.serving.proto import PredictRequest; PredictRequest()'
echo "gen_proto: wrote $(find "$out" -name '*.py' | wc -l) files to ${out#"$root"/}"
