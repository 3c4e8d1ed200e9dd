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
	rm -rf build *.egg-info janus_kernels/_C*.so janus_kernels/_cpu_*.so .deps-external.stamp

# ---------------------------------------------------------------------------- GPU validation
# `make gpu-check` on a machine with one GPU (and nvcc; no network needed): build the CUDA
# extension (for this GPU's architecture unless TORCH_CUDA_ARCH_LIST says otherwise;
# time-boxed), then tests at real sizes, the GPU
# checks and the timings (benchmarks/gpu_check, time-boxed: GPU_CHECK_BUDGET_S seconds),
# writing benchmarks/results/gpu_check.md; sized to fit 8 minutes on one H200.
# With an existing CUDA torch: make gpu-check PYTHON=python
GPU_CHECK_BUDGET_S ?= 260
GPU_BUILD_TIMEOUT_S ?= 200
.PHONY: gpu-check gpu-check-dry
gpu-check:
	@echo "== gpu-check: building the CUDA extension (at most $(GPU_BUILD_TIMEOUT_S) s)"
	JANUS_WITH_CUDA=1 TORCH_CUDA_ARCH_LIST="$${TORCH_CUDA_ARCH_LIST:-$$($(PY) -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}" \
	  timeout $(GPU_BUILD_TIMEOUT_S) $(PY) setup.py -q build_ext --inplace
	@echo "== gpu-check: tests, checks, timings (budget $(GPU_CHECK_BUDGET_S) s)"
	$(PY) -m benchmarks.gpu_check --budget-s $(GPU_CHECK_BUDGET_S)

# The same checks on CPU with tiny shapes (Triton interpreter, CPU kernels, CUDA kernels under
# the CPU emulation); report in build/gpu_check_dry.md. A few minutes on any CPU machine.
gpu-check-dry: $(DEPS_STAMP)
	$(PY) setup.py -q build_ext --inplace
	$(PY) -m benchmarks.gpu_check --dry --budget-s 600
