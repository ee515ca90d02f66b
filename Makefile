# One entry point for every task; each target installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lock run test lint typecheck unit integration demo clean promtool postgres monitoring-check prometheus bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Installed against exact pins (deploy/constraints.txt): reproducible, and pip does not
# backtrack between moto's boto3 and the botocore s3fs's aiobotocore pins.
$(STAMP): pyproject.toml deploy/constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c deploy/constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Re-resolve the pins after changing dependencies in pyproject.toml.
lock: | $(BIN)/python
	$(BIN)/python deploy/lock.py

lint: install
	$(BIN)/ruff check training service monitoring benchmarks tests deploy
	$(BIN)/ruff format --check training service monitoring benchmarks tests deploy

typecheck: install
	mkdir -p $(VENV)/typecheck/champion
	for p in service training monitoring; do ln -sfn ../../../$$p $(VENV)/typecheck/champion/$$p; done
	$(BIN)/mypy

unit: install
	$(BIN)/pytest tests/unit -q

integration: install postgres
	$(BIN)/pytest tests/integration -q

# promtool/prometheus for the alert-rule tests (Debian package; sudo only when not root).
promtool:
	monitoring/install-prometheus.sh

# PostgreSQL on 127.0.0.1:5432 for the shared-mode tests (started, or installed, when missing).
postgres:
	tests/start-postgres.sh

test: lint typecheck promtool postgres
	$(BIN)/pytest -q

# Reliability scenarios, full form (schemathesis on the served OpenAPI, a feedback burst, a
# kill -9 of the scheduler leader mid-cycle, a soak, a registry restart): prints figures,
# fails on any loss, and writes docs/reliability.md. `make test` runs the quick form.
.PHONY: reliability
reliability: install promtool
	CHAMPION_RELIABILITY=full $(BIN)/pytest tests/reliability -q -s

# Prometheus config, alert rules and their unit tests, dashboard checks.
monitoring-check: install promtool
	$(BIN)/pytest tests/integration/test_alert_rules.py -q

# Side-by-side serving, batch, retraining, monitoring, swap and cold-start figures
# (JSON + docs/performance.md); installs wrk from Debian when missing. Under 15 minutes.
bench: install
	$(BIN)/python -m benchmarks.run --out benchmarks/results.json --markdown docs/performance.md

# A local Prometheus on 127.0.0.1:9090 scraping the service with the alert rules.
prometheus: promtool
	prometheus --config.file=monitoring/prometheus/prometheus.yml \
		--storage.tsdb.path=var/prometheus --web.listen-address=127.0.0.1:9090

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

# A Bento (what a BentoML deployment or `bentoml containerize` takes): the wheel, then the build.
.PHONY: bento
bento: install
	rm -rf dist && $(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .
	$(BIN)/bentoml build

clean:
	rm -rf var dist .pytest_cache .mypy_cache .ruff_cache
