# The two commands of the README: `make run` (the default job) and `make test` (the test suite).
# Both create the virtual environment on first use. Pass Hydra overrides with ARGS="...".
#
# Two ends of the supported stack are tested (pyproject.toml declares the range):
#   .venv     Python 3.11, torch 2.13.0, megatron-core 0.16.1 (pip's newest for 3.11)
#   .venv312  Python 3.12, torch 2.14.1, the newest megatron-core 0.19.x (as on NGC images)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch first: on this kind of machine pip takes a local CPU wheel for it;
# letting megatron-core pull an unpinned torch would download gigabytes of CUDA packages.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
# Python 3.12: the first that runs of `python3.12` on PATH and pyenv's 3.12 builds (a pyenv
# shim is on PATH even where its 3.12 is not selected, and then fails).
PYTHON312 ?= $(shell for p in $$(command -v python3.12) $(HOME)/.pyenv/versions/3.12*/bin/python3.12; do \
	"$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null && { echo "$$p"; break; }; done)
VENV312 ?= .venv312
# PyPI has only CUDA builds of torch for Python 3.12 (about 5.5 GB installed); they run on CPU.
TORCH312 ?= torch==2.14.1
STAMP312 := $(VENV312)/.installed
PYTEST_ARGS ?=
# What the Python 3.12 leg runs: everything but the container tests (the image has its own
# Python 3.12 stack, built and tested by the 3.11 leg's container test).
PY312_TESTS ?= -m "not container"

.PHONY: run test test-fast test-py312 system-deps slurm-up slurm-down lint clean bench bench-py312 mutants

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

$(STAMP312): pyproject.toml
	@test -n "$(PYTHON312)" || { echo "make: no Python 3.12 found: install one, or set PYTHON312=/path/to/python3.12" >&2; exit 2; }
	$(PYTHON312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install -q --upgrade pip
	$(VENV312)/bin/python -m pip install -q "$(TORCH312)"
	$(VENV312)/bin/python -m pip install -q -e ".[test]"
	touch $(STAMP312)

run: $(STAMP)
	$(BIN)/mimo-launch $(ARGS)

# Debian packages the Slurm and container tests need (root; idempotent, quick when present).
system-deps:
	bash slurm/local/install.sh
	bash container/install.sh

# Everything: unit, multi-process, the local Slurm cluster and the container build on Python
# 3.11 / megatron-core 0.16.1; then all but the container test on Python 3.12 / 0.19.x.
test: $(STAMP) $(STAMP312) system-deps lint
	$(BIN)/python -m pytest -v -rs $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-py312

# ruff (rules in pyproject.toml); the first step of `make test`.
lint: $(STAMP)
	$(BIN)/ruff check .

# The Python 3.12 / newest megatron-core leg alone.
test-py312: $(STAMP312)
	$(VENV312)/bin/python -m pytest -v -rs -p no:cacheprovider $(PY312_TESTS) $(PYTEST_ARGS)

# Without the Slurm and container tests (no root needed).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -v -rs -m "not slurm and not container" $(PYTEST_ARGS)

# Benchmarks (benchmarks/README.md): prints the table and writes benchmarks/RESULTS.md
# (Python 3.11 / megatron-core 0.16.1); bench-py312 writes RESULTS_py312.md (3.12 / 0.19.x).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

bench-py312: $(STAMP312)
	$(VENV312)/bin/python -m benchmarks.run --out benchmarks/RESULTS_py312.md

# Mutation check of the verifier (benchmarks/mutants.py; on demand, not part of make test):
# builder bugs of our own, each run on every preset; fails unless every one is caught.
mutants: $(STAMP)
	$(BIN)/python -m benchmarks.mutants $(ARGS)

slurm-up:
	bash slurm/local/start.sh
slurm-down:
	bash slurm/local/stop.sh

clean:
	rm -rf $(VENV) $(VENV312) outputs .pytest_cache
