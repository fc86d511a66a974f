#!/usr/bin/env bash
# Runs scripts/gpu_check.py on a CUDA machine without registry access. Expects the onnxruntime-gpu wheel in parts
# (split -b 60M) under /tmp/parts and the rustserve abi3 wheel under gpu_parts/ (both git-ignored, carried in).
set -euo pipefail
cat /tmp/parts/ortgpu.part.* > /tmp/onnxruntime_gpu-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl
sha256sum /tmp/onnxruntime_gpu-*.whl
# The ORT wheel is cp311-tagged; only its shared libraries are used (loaded from Rust), so unpack it as a zip.
rm -rf /tmp/site && mkdir -p /tmp/site
python3 -m zipfile -e /tmp/onnxruntime_gpu-*.whl /tmp/site
python3 -m pip install -q --no-deps --no-index --target /tmp/site gpu_parts/rustserve-*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
echo "== without LD_LIBRARY_PATH (CUDA libraries preloaded from the nvidia-* wheels) =="
python3 scripts/gpu_check.py
