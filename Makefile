# Developer entry points. `make ci` is README command 2: dev dependencies, build, every test.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# cargo test builds without maturin's PYO3_BUILD_EXTENSION_MODULE; a separate target dir avoids rebuilding pyo3
# every time we alternate between `cargo test` and `maturin develop`.
CARGO_TEST_TARGET ?= target/cargo-test
PY_LIBDIR = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
PY_SITE = $(shell $(PY) -c 'import site; print(site.getsitepackages()[0])')

.PHONY: ci venv build-dev test test-rust test-python docs-test lint format bench proto clean

ci: venv build-dev test

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

venv: $(PY)
	$(PY) -m pip install --quiet "maturin>=1.16,<2"

# Debug build of the extension into python/rustserve, plus runtime and dev dependencies (extras cpu + dev).
build-dev: venv
	$(VENV)/bin/maturin develop --extras cpu,dev

test: test-rust test-python

test-rust: venv
	LD_LIBRARY_PATH=$(PY_LIBDIR) PYTHONPATH=$(PY_SITE) RUSTSERVE_TEST_PYTHON=$(abspath $(PY)) \
		CARGO_TARGET_DIR=$(CARGO_TEST_TARGET) cargo test --lib

test-python: venv
	$(PY) -m pytest -q

# Runs every code block of docs/, README.md and examples/README.md (also part of test-python).
docs-test: venv
	$(PY) -m pytest -q tests/test_docs.py

lint: venv
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	$(VENV)/bin/ruff check python tests examples
	$(VENV)/bin/ruff format --check python tests examples
	$(VENV)/bin/mypy python/rustserve --ignore-missing-imports
	$(PY) -m mypy.stubtest rustserve._rustserve

format:
	cargo fmt
	$(VENV)/bin/ruff format python tests examples
	$(VENV)/bin/ruff check --fix python tests examples

proto: venv
	bash scripts/gen_proto.sh

# Criterion benches (codecs, batcher, Python edge), then benches/compare.py: rustserve vs in-process ONNX Runtime vs FastAPI/grpcio
# on loopback (release wheel, needs Debian's wrk). BENCH_ARGS=--quick for a short smoke run; see benches/README.md.
bench: venv
	LD_LIBRARY_PATH=$(PY_LIBDIR) PYTHONPATH=$(PY_SITE) CARGO_TARGET_DIR=$(CARGO_TEST_TARGET) \
		cargo bench --bench codecs --bench batcher --bench python_edge
	$(PY) benches/micro.py
	$(PY) benches/compare.py $(BENCH_ARGS)

clean:
	rm -rf target python/rustserve/*.so
