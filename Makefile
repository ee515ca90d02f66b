# One entry point for every task; each target installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint typecheck unit integration demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check training service monitoring tests
	$(BIN)/ruff format --check training service monitoring tests

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit -q

integration: install
	$(BIN)/pytest tests/integration -q

test: lint typecheck
	$(BIN)/pytest -q

# Bootstraps demo data and a champion when missing, then serves.
run: install
	$(BIN)/champion bootstrap
	$(BIN)/champion serve

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
