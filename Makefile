# `make demo` and `make test` are the two commands: each creates/refreshes .venv with the
# pinned dependencies, builds and installs the package, then runs.
# Reuse an existing interpreter (e.g. a CUDA torch on a GPU machine): make test PYTHON=python
SHELL := /bin/bash
VENV ?= .venv
ifdef PYTHON
  PY := $(PYTHON)
  DEPS_STAMP := .deps-external.stamp
else
  PY := $(VENV)/bin/python
  DEPS_STAMP := $(VENV)/.deps.stamp
endif
BUILD_STAMP := $(dir $(DEPS_STAMP)).build.stamp
export OMP_NUM_THREADS ?= $(shell nproc)
PYTEST_ARGS ?=

.PHONY: demo test test-slow test-all test-avx2 check-portable build bench gpu-report clean

$(VENV)/.deps.stamp: requirements.txt
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

.deps-external.stamp: requirements.txt
	$(PY) -c "import torch" || (echo "PYTHON=$(PY) has no torch" && false)
	$(PY) -m pip install -q --disable-pip-version-check $$(grep -v -E '^(#|torch==|$$)' requirements.txt)
	touch $@

# Editable install (console scripts, metadata) when setup.py/pyproject change; the
# extension itself is rebuilt incrementally by ninja on every run.
$(BUILD_STAMP): $(DEPS_STAMP) setup.py pyproject.toml
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

build: $(BUILD_STAMP)
	$(PY) setup.py -q build_ext --inplace

test: build
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-slow: build
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

test-all: build
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The whole suite with the CPU kernels capped at AVX2 (what an AVX2-only CPU runs).
test-avx2: build
	JANUS_CPU_ISA=avx2 $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# The default build on an AVX2-only CPU: every op and dtype under `qemu-x86_64 -cpu Haswell`
# (Debian's qemu-user; it traps on AVX-512 instructions).
check-portable: build
	$(PY) -m pytest -q tests/test_portable_build.py -m "slow or not slow"

demo: build
	$(PY) -m janus_model.demo

bench: build
	$(PY) -m benchmarks

gpu-report: build
	$(PY) -m benchmarks.gpu_readiness

clean:
	rm -rf build *.egg-info janus_kernels/_C*.so .deps-external.stamp
