# Quickstart: `make evolve` and `make test`. Both create .venv/ when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# A second environment with the oldest edge_evolver dependencies (JetPack 4.6), no torch.
OLDEST := .venv-oldest
OLDEST_STAMP := $(OLDEST)/.installed
EDGE_TESTS := tests/test_benchmark.py tests/test_edge_cli.py tests/test_vermin.py
ARGS   ?=

.PHONY: evolve test lint bench-default bench-peers bench-precision clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from the local CPU wheel; the constraint keeps every later step on it.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[host,dev]'
	touch $(STAMP)

$(OLDEST_STAMP): pyproject.toml requirements-oldest.txt
	test -x $(OLDEST)/bin/python || $(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install -q --upgrade pip
	$(OLDEST)/bin/python -m pip install -q -r requirements-oldest.txt
	$(OLDEST)/bin/python -m pip install -q --no-deps -e .
	touch $(OLDEST_STAMP)

evolve: $(STAMP)
	$(BIN)/host-trainer evolve $(ARGS)

test: $(STAMP) $(OLDEST_STAMP)
	$(BIN)/python -m pytest -q $(ARGS)
	# edge_evolver again, on the oldest library versions a Python 3.6 Jetson gets
	$(OLDEST)/bin/python -m pytest -q -p no:cacheprovider $(EDGE_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check edge_evolver host_trainer tests bench
	$(BIN)/vermin -q --no-tips --violations -t=3.6- --backport dataclasses edge_evolver
	$(BIN)/mypy

bench-default: $(STAMP)
	$(BIN)/python bench/default_run.py $(ARGS)

bench-peers: $(STAMP)
	$(BIN)/python bench/peers.py $(ARGS)

bench-precision: $(STAMP)
	$(BIN)/python bench/precision.py $(ARGS)

clean:
	rm -rf $(VENV) $(OLDEST) runs .pytest_cache
