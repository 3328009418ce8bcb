# Quickstart: `make evolve` and `make test`. Both create .venv/ when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# A second environment with the oldest edge_evolver dependencies (JetPack 4.6), no torch.
OLDEST := .venv-oldest
OLDEST_STAMP := $(OLDEST)/.installed
# Everything edge_evolver runs on a Jetson, tested again with the JetPack 4.6 library set.
EDGE_TESTS := tests/test_benchmark.py tests/test_edge_cli.py tests/test_vermin.py tests/test_protocol.py \
              tests/test_daemon.py tests/test_power.py tests/test_power_sampler.py tests/test_devicefacts.py \
              tests/test_tensorrt_backend.py tests/test_det_decode.py tests/test_profile.py \
              tests/test_profile_ort.py tests/test_containment.py tests/test_systemd_unit.py tests/test_tls.py \
              tests/test_model_guard.py tests/test_trust.py tests/test_security_daemon.py tests/test_keys_cli.py \
              tests/test_fuzz_jobs.py tests/test_bridge.py tests/test_board_answers.py tests/test_trust_reload.py \
              tests/test_board_bounds.py tests/test_board_gauges.py tests/test_config_default.py \
              tests/test_intake_limits.py
# The daemon tests start their own Mosquitto on a free loopback port; Debian's packages provide it.
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ARGS   ?=

# The first python3.6 that actually runs (a pyenv shim without 3.6 selected does not).
PY36   ?= $(shell for p in $$HOME/.pyenv/versions/3.6*/bin/python3.6 $$(command -v python3.6); do \
                  "$$p" -c pass 2>/dev/null && echo "$$p" && break; done)
VENV36 := .venv-py36

.PHONY: evolve gen0 test test-py36 lint docs broker bench-default bench-peers bench-precision bench-daemon bench-loop \
        bench-detect bench-pareto bench-pareto-quick bench-evolve-ab bench-security bench-load \
        bench-ddp bench-data bench-fleet clean

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

# The trained generation 0 `make evolve` starts from, as a user starts from a model they trained (assets/README.md
# has its sha256 and the command that made it: `make gen0`). Given --model, --dataset, --task, --weights,
# --resume or --config, `make evolve` starts from those instead.
GEN0 := assets/gen0-vgg-small-glyphs-s0.safetensors
OWN_START := --model --dataset --task --weights --resume --config

evolve: $(STAMP) broker
	$(BIN)/host-trainer evolve $(if $(filter $(OWN_START),$(ARGS)),,--weights $(GEN0)) $(ARGS)

# Train that generation 0 again: vgg-small on glyphs, seed 0, until validation accuracy stops improving.
gen0: $(STAMP)
	rm -rf runs/gen0
	$(BIN)/host-trainer evolve --generations 0 --final-epochs 0 --no-mqtt --run-dir runs/gen0
	cp runs/gen0/*/final/model.safetensors $(GEN0)
	sha256sum $(GEN0)

# Debian packages the tests drive for real: the broker, its clients, and the Prometheus exporter
# whose configs deploy/monitoring/ ships (tests/test_monitoring.py starts it on a free port).
APT_PKGS := mosquitto mosquitto-clients prometheus-mqtt-exporter

broker:
	@if { command -v mosquitto || test -x /usr/sbin/mosquitto; } >/dev/null 2>&1 && command -v mosquitto_pub >/dev/null 2>&1 \
	    && command -v prometheus-mqtt-exporter >/dev/null 2>&1; \
	then :; else \
	  echo "installing Debian's $(APT_PKGS) (the tests start their own broker and exporter)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PKGS) \
	  || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PKGS); }; \
	fi
	@# openssl makes the test PKI (deploy/mosquitto/make-certs.sh); systemd-analyze scores the unit's hardening.
	@if command -v openssl >/dev/null 2>&1 && command -v systemd-analyze >/dev/null 2>&1; then :; else \
	  echo "installing Debian's openssl and systemd (tests/test_tls.py, tests/test_systemd_unit.py)"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl systemd \
	  || { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl systemd; }; \
	fi

# The main suite on TEST_WORKERS processes (a file stays on one, so its module fixtures are built once), with
# edge_evolver's suite on the oldest library versions a Python 3.6 Jetson gets running beside it (its own temporary
# folder; its output is printed when it ends). Most of both is waiting on brokers, daemons and subprocesses.
TEST_WORKERS ?= 3
OLDEST_LOG := $(VENV)/oldest-tests.log

test: $(STAMP) $(OLDEST_STAMP) broker
	@$(OLDEST)/bin/python -m pytest -q -p no:cacheprovider --basetemp=$(VENV)/oldest-tests-tmp $(EDGE_TESTS) \
	    > $(OLDEST_LOG) 2>&1 & oldest=$$!; \
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(ARGS); main=$$?; \
	wait $$oldest; status=$$?; \
	echo "# edge_evolver again, on the oldest library versions a Python 3.6 Jetson gets:"; cat $(OLDEST_LOG); \
	test $$main -eq 0 && test $$status -eq 0

# Optional: the edge suite on a real Python 3.6 (JetPack 4.6's interpreter), where one is installed.
test-py36: broker
	@test -n "$(PY36)" || { echo "no python3.6 found (set PY36=/path/to/python3.6)"; exit 1; }
	test -x $(VENV36)/bin/python || $(PY36) -m venv $(VENV36)
	$(VENV36)/bin/python -m pip install -q --upgrade "pip<22" && $(VENV36)/bin/python -m pip install -q -r requirements-py36.txt
	PYTHONPATH=$(CURDIR) $(VENV36)/bin/python -m pytest -q -p no:cacheprovider $(EDGE_TESTS)

lint: $(STAMP)
	$(BIN)/ruff check edge_evolver host_trainer tests bench
	$(BIN)/vermin -q --no-tips --violations -t=3.6- --backport dataclasses edge_evolver
	$(BIN)/mypy

# docs/generations.md's field table, from host_trainer/record.py (a test checks that they agree).
docs: $(STAMP)
	$(BIN)/python -c "from host_trainer.record import write_fields_doc; write_fields_doc('docs/generations.md')"
	$(BIN)/python -c "from host_trainer.options_doc import write_options_doc; write_options_doc('docs/options.md')"

bench-default: $(STAMP)
	$(BIN)/python bench/default_run.py $(ARGS)

bench-peers: $(STAMP)
	$(BIN)/python bench/peers.py $(ARGS)

bench-precision: $(STAMP)
	$(BIN)/python bench/precision.py $(ARGS)

bench-daemon: $(STAMP) broker
	$(BIN)/python bench/daemon.py $(ARGS)

# Every class of bad job against a real signed board (N each), and what verifying a job costs; ~1 min.
bench-security: $(STAMP) broker
	$(BIN)/python bench/security.py $(ARGS)

bench-load: $(STAMP) broker
	$(BIN)/python bench/load.py $(ARGS)

# Issue #13: training through torchrun, streaming data, a fleet of daemons behind one broker.
bench-ddp: $(STAMP)
	$(BIN)/python bench/ddp.py $(ARGS)

bench-data: $(STAMP)
	$(BIN)/python bench/data.py $(ARGS)

bench-fleet: $(STAMP) broker
	$(BIN)/python bench/fleet.py $(ARGS)

bench-loop: $(STAMP) broker
	$(BIN)/python bench/loop.py $(ARGS)

bench-detect: $(STAMP) broker
	$(BIN)/python bench/detect.py $(ARGS)

# Ours (device-aware and magnitude) against Torch-Pruning (L1 uniform, Taylor global) at 3x, 6x and 10x measured
# speed-up: classification seeds 0 and 1, detection seed 0, about 2 hours on 2 cores with generation 0 already
# trained (ARGS=--gen0-only trains it ahead); ours runs with --no-mqtt. Writes bench/out/pareto.*
bench-pareto: $(STAMP)
	$(BIN)/python bench/pareto.py $(ARGS)

# The same as a smoke run: one seed, 2 generations, small subsets, minutes per task; writes bench/out/pareto_quick.*
bench-pareto-quick: $(STAMP)
	$(BIN)/python bench/pareto.py --quick $(ARGS)

# `make evolve` as it is against the same command with --allocation magnitude, side by side: writes bench/out/evolve_ab.*
bench-evolve-ab: $(STAMP) broker
	$(BIN)/python bench/evolve_ab.py $(ARGS)

clean:
	rm -rf $(VENV) $(OLDEST) $(VENV36) runs .pytest_cache
