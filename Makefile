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

# Bootstraps demo data and a champion when missing, then serves API + scheduler.
run: install
	$(BIN)/champion bootstrap
	$(BIN)/champion serve

# As `run`, plus traffic and a concept change: watch a retrain promote a new champion.
DEMO_TOKEN ?= demo-token
demo: install
	$(BIN)/champion bootstrap
	CHAMPION_ADMIN_TOKEN=$(DEMO_TOKEN) $(BIN)/champion serve --port 3000 & server=$$!; \
	trap 'kill $$server 2>/dev/null' EXIT INT TERM; \
	CHAMPION_ADMIN_TOKEN=$(DEMO_TOKEN) $(BIN)/champion demo --url http://127.0.0.1:3000

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
