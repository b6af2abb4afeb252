# Two entry points: `make run` (the pipeline on the embedded default) and `make test` (lint, then the suite).
# The virtual environment is rebuilt only when a requirements file or pyproject.toml changes
# (stamp files), so a second `make` with nothing changed installs nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.stamp-install
TSTAMP := $(VENV)/.stamp-test
PYTEST_ARGS ?=

export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: run lint test test-unit bench clean-venv

$(STAMP): requirements.txt requirements-lock.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and alone: the pinned CPU wheel on disk is taken, never a CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -r requirements.txt -c requirements-lock.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

$(TSTAMP): $(STAMP) requirements-test.txt
	$(PIP) install -r requirements-test.txt -c requirements-lock.txt
	touch $@

run: $(STAMP)
	$(BIN)/python -m pipelines.run

# ruff and mypy settings live in pyproject.toml (mypy checks ast_model: its `files` key).
lint: $(TSTAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Lint first: CI (.ci/run) calls `make test`, so a lint or type error fails CI before the long suite starts.
test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(TSTAMP)
	$(BIN)/python -m pytest -m "not integration and not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m ast_model.bench

clean-venv:
	rm -rf $(VENV)
