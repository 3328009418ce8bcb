# Quickstart: `make evolve` and `make test`. Both create .venv/ when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: evolve test lint bench-default bench-peers bench-precision clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from the local CPU wheel; the constraint keeps every later step on it.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[host,dev]'
	touch $(STAMP)

evolve: $(STAMP)
	$(BIN)/host-trainer evolve $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

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
	rm -rf $(VENV) runs .pytest_cache
