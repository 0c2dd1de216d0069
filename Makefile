# `make run` / `make test` do all set-up on a fresh machine: the venv is created on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast list clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

run: $(STAMP)  ## a Lab 1 study on the offline quick profile
	$(PY) orchestrator/run.py lab1 --study residual-mlp

test: $(STAMP)  ## the whole suite, slow tests included (what CI runs)
	$(PY) -m pytest

test-fast: $(STAMP)  ## the day-to-day subset: no end-to-end Ray studies
	$(PY) -m pytest -m "not slow"

list: $(STAMP)
	$(PY) orchestrator/run.py list

clean:
	rm -rf ray_results mlflow.db .pytest_cache
