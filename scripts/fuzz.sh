#!/usr/bin/env bash
# Time-bounded fuzzing of every wire decoder (MindSpore proto, MindSpore JSON, v2 JSON, v2 binary framing, v2 proto).
#
# The targets are the proptest property tests in rust/src/codec/fuzz_tests.rs (cargo-fuzz needs a nightly toolchain
# and a sanitizer build of the whole crate; proptest runs on stable, in the debug test build, where integer overflow
# panics instead of wrapping). Each target runs for SECONDS (default 60) in rounds of 4096 freshly seeded cases and
# prints "fuzz <target>: <n> executions, <k> findings"; a finding fails the run with the shrunk input.
#
# Usage: scripts/fuzz.sh [SECONDS]          (from the repository root, after `make venv`)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
py=".venv/bin/python"
libdir="$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')"
site="$("$py" -c 'import site; print(site.getsitepackages()[0])')"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

echo "fuzzing every decoder for ${seconds} s each (rust/src/codec/fuzz_tests.rs)"
status=0
LD_LIBRARY_PATH="$libdir" PYTHONPATH="$site" CARGO_TARGET_DIR=target/cargo-test RUSTSERVE_FUZZ_SECONDS="$seconds" \
    cargo test --lib codec::fuzz_tests -- --nocapture --test-threads=2 >"$log" 2>&1 || status=$?
grep -E '^fuzz ' "$log" | sort || true
if [ "$status" -ne 0 ]; then
    echo "--- findings / failures ---"
    grep -E 'panicked at|minimal failing input|found a panic|^error' "$log" | head -40 || true
    echo "fuzz: FAILED (exit $status); full log kept at $log.kept"
    cp "$log" "$log.kept"
    exit "$status"
fi
total=$(grep -E '^fuzz ' "$log" | awk '{s += $3} END {print s + 0}')
echo "fuzz: ${total} executions in total, 0 findings"
