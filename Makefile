# The two commands of the README: `make run` (the default job) and `make test` (the test suite).
# Both create the virtual environment on first use. Pass Hydra overrides with ARGS="...".
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch first: on this kind of machine pip takes a local CPU wheel for it;
# letting megatron-core pull an unpinned torch would download gigabytes of CUDA packages.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test test-fast system-deps slurm-up slurm-down lint clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/mimo-launch $(ARGS)

# Debian packages the Slurm and container tests need (root; idempotent, quick when present).
system-deps:
	bash slurm/local/install.sh
	bash container/install.sh

# Everything: unit, multi-process, the local Slurm cluster and the container build.
test: $(STAMP) system-deps
	$(BIN)/python -m pytest -v -rs $(PYTEST_ARGS)

# Without the Slurm and container tests (no root needed).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -v -rs -m "not slurm and not container" $(PYTEST_ARGS)

# Benchmarks (benchmarks/README.md): prints the table and writes benchmarks/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

slurm-up:
	bash slurm/local/start.sh
slurm-down:
	bash slurm/local/stop.sh

clean:
	rm -rf $(VENV) outputs .pytest_cache
