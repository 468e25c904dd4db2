# DERIM developer tasks. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo serve test lint typecheck pytest servers bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/derim demo

serve: $(VENV)/.installed
	$(BIN)/derim serve

servers:
	bash scripts/ensure-test-servers.sh

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks examples docs/hooks notebooks
	$(BIN)/ruff format --check src tests benchmarks examples docs/hooks notebooks

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy --strict src

pytest: $(VENV)/.installed-dev servers
	$(BIN)/pytest -q

test: lint typecheck pytest

bench: $(VENV)/.installed-dev servers
	$(BIN)/python benchmarks/run_all.py

docs: $(VENV)/.installed-dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) data site .pytest_cache .mypy_cache .ruff_cache
