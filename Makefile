# `make demo` runs a durable demo; `make test` runs the test suite. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

.PHONY: demo test lint bench
demo: $(VENV)/.installed
	$(PY) examples/durable_demo.py

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src

bench: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/core.py --skip-llama-10k

# the model checker's soak: PITON_SOAK_SCHEDULES (default 1000) schedules per store;
# PITON_SOAK_STORES=sqlite,postgres,redis; or pass ARGS="--schedules 50 --first-seed 7"
.PHONY: soak
soak: $(VENV)/.installed
	$(PY) bench/soak.py $(ARGS)
