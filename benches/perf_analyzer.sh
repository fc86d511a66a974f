#!/usr/bin/env bash
# Load-tests rustserve's Open Inference Protocol (KServe v2) endpoints with Triton's own perf_analyzer, over HTTP
# (binary tensors) and gRPC, at several batch sizes and concurrencies; prints perf_analyzer's numbers and the
# gRPC / HTTP throughput ratio. A benchmark, not a test: it asserts nothing about speed.
#
#   benches/perf_analyzer.sh                     # defaults below
#   BATCHES="1 8" CONCURRENCY="1 4 8" INTERVAL_MS=3000 benches/perf_analyzer.sh
#
# perf_analyzer comes from the tritonclient 2.34.0 wheel (bin/perf_analyzer); see benches/README.md for the
# three-step setup (Debian libb64-0d, a venv with the wheel and nvidia-cuda-runtime-cu12). When it is not
# available the script says how to get it and exits 0. Override its location with PERF_ANALYZER=/path or the
# venv with PA_VENV=/path (default .venv-perf); rustserve runs from PYTHON (default .venv/bin/python).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$root/.venv/bin/python}"
PA_VENV="${PA_VENV:-$root/.venv-perf}"
BATCHES="${BATCHES:-1 8}"
CONCURRENCY="${CONCURRENCY:-1 4 8}"
INTERVAL_MS="${INTERVAL_MS:-3000}"
WIDTH="${WIDTH:-64}"

how_to_install() {
    cat >&2 <<EOF
perf_analyzer: $1
Set it up once (see benches/README.md):
  apt-get install -y libb64-0d
  python3 -m venv $PA_VENV
  $PA_VENV/bin/pip install tritonclient==2.34.0 nvidia-cuda-runtime-cu12
EOF
}

pa="${PERF_ANALYZER:-}"
if [[ -z "$pa" ]]; then
    if [[ -x "$PA_VENV/bin/perf_analyzer" ]]; then
        pa="$PA_VENV/bin/perf_analyzer"
    else
        pa="$(command -v perf_analyzer || true)"
    fi
fi
if [[ -z "$pa" || ! -x "$pa" ]]; then
    how_to_install "not found; skipping the benchmark"
    exit 0
fi
# The 2.34.0 binary links libcudart.so.12 even for CPU-only use: take it from the pip package next to it.
if [[ -x "$PA_VENV/bin/python" ]]; then
    cudart="$("$PA_VENV/bin/python" -c 'import nvidia.cuda_runtime as c, os; print(os.path.join(list(c.__path__)[0], "lib"))' 2>/dev/null || true)"
    if [[ -n "$cudart" ]]; then
        export LD_LIBRARY_PATH="$cudart${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
fi
missing="$(ldd "$pa" | awk '/not found/ {print $1}' | tr '\n' ' ')"
if [[ -n "$missing" ]]; then
    how_to_install "$pa cannot run, missing libraries: $missing; skipping the benchmark"
    exit 0
fi

work="$(mktemp -d -t rustserve-perf-XXXXXX)"
server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid"
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# One servable, `bench`, with a model-only method whose inputs and outputs are fully declared (perf_analyzer makes
# its input data from the metadata): y = x1 + x2 on float32 [batch, WIDTH], symbolic batch, max_batch_size 32.
"$PYTHON" - "$work" "$WIDTH" <<'EOF'
import sys
from pathlib import Path

import onnx
from onnx import TensorProto, helper

root, width = Path(sys.argv[1]), int(sys.argv[2])
folder = root / "bench" / "1"
folder.mkdir(parents=True)
(root / "bench" / "servable_config.py").write_text(
    "from rustserve.server import register\n\n"
    'model = register.declare_model(model_file="add.onnx", model_format="ONNX", with_batch_dim=True, '
    "max_batch_size=32)\n\n\n"
    '@register.register_method(output_names=["y"])\n'
    "def add(x1, x2):\n"
    "    return register.add_stage(model, x1, x2, outputs_count=1)\n"
)
shape = ["batch", width]
graph = helper.make_graph(
    [helper.make_node("Add", ["x1", "x2"], ["y"])],
    "add",
    [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x1", "x2")],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, folder / "add.onnx")
EOF

free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
grpc_port="$(free_port)"
rest_port="$(free_port)"
"$PYTHON" -m rustserve start --dir "$work" --grpc "127.0.0.1:$grpc_port" --rest "127.0.0.1:$rest_port" \
    --log-level warn >"$work/server.out" 2>&1 &
server_pid=$!
for _ in $(seq 1 120); do
    if "$PYTHON" -c "import urllib.request, sys; urllib.request.urlopen('http://127.0.0.1:$rest_port/v2/health/ready', timeout=1)" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        cat "$work/server.out" >&2
        echo "perf_analyzer.sh: rustserve did not start" >&2
        exit 1
    fi
    sleep 0.5
done

echo "perf_analyzer: $pa"
echo "model bench.add: float32 [batch, $WIDTH] x2 -> y; $(nproc) cores; interval ${INTERVAL_MS} ms"
for protocol in http grpc; do
    url="127.0.0.1:$rest_port"
    [[ "$protocol" == grpc ]] && url="127.0.0.1:$grpc_port"
    for batch in $BATCHES; do
        for concurrency in $CONCURRENCY; do
            csv="$work/$protocol-b$batch-c$concurrency.csv"
            "$pa" -m bench.add -i "$protocol" -u "$url" -b "$batch" --concurrency-range "$concurrency" \
                --measurement-interval "$INTERVAL_MS" -f "$csv" >"$work/$protocol-b$batch-c$concurrency.log" 2>&1 || {
                cat "$work/$protocol-b$batch-c$concurrency.log" >&2
                exit 1
            }
        done
    done
done

# One table: infer/s and latencies per protocol, batch size and concurrency, then the gRPC / HTTP throughput ratio.
"$PYTHON" - "$work" "$BATCHES" "$CONCURRENCY" <<'EOF'
import csv
import sys
from pathlib import Path

work, batches, concurrencies = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
rows = {}
print(f"{'protocol':8} {'batch':>5} {'conc':>4} {'infer/s':>10} {'p50 us':>8} {'p99 us':>8} {'srv queue':>9} {'srv infer':>9}")
for protocol in ("http", "grpc"):
    for batch in batches:
        for conc in concurrencies:
            with open(work / f"{protocol}-b{batch}-c{conc}.csv") as f:
                row = next(csv.DictReader(f))
            rows[(protocol, batch, conc)] = float(row["Inferences/Second"])
            print(
                f"{protocol:8} {batch:>5} {conc:>4} {float(row['Inferences/Second']):>10.1f} {row['p50 latency']:>8} "
                f"{row['p99 latency']:>8} {row['Server Queue']:>9} {row['Server Compute Infer']:>9}"
            )
print("gRPC / HTTP throughput:")
for batch in batches:
    for conc in concurrencies:
        print(f"  batch {batch:>3} concurrency {conc:>3}: {rows[('grpc', batch, conc)] / rows[('http', batch, conc)]:.2f}x")
EOF
