# Two entry points for a fresh machine: `make run` (the demo pipeline) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := -e ".[test]" \
	-e capabilities/reasoning -e capabilities/math -e capabilities/voice -e capabilities/vision \
	-e plugins/nexus-quant-bnb
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

$(STAMP): pyproject.toml capabilities/*/pyproject.toml plugins/*/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel; an unpinned torch pulls gigabytes of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet $(PACKAGES)
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/nexus run

test: install
	$(BIN)/python -m pytest

bench: install
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/pca.py --json runs/benchmarks/pca.json
	$(BIN)/python benchmarks/profiling.py --json runs/benchmarks/profiling.json
	$(BIN)/python benchmarks/distill.py --json runs/benchmarks/distill.json

clean:
	rm -rf $(VENV) runs
