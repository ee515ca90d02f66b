"""Fixtures for integration tests: a project folder with a real MLflow store on SQLite."""

from __future__ import annotations

import os
import shutil
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from champion.service.root import Components, build
from champion.training.config import Contract, Settings, parse_contract
from champion.training.cycle import Context, CycleResult, run_cycle
from champion.training.demo.simulate import SimulationPlan, simulate_batches
from champion.training.ledger import Ledger
from champion.training.registry import Registry

ROOT = Path(__file__).resolve().parents[2]

# A small budget so a cycle takes seconds, with the shipped contract's features and gate.
SMALL = {
    "search": {
        "strategy": "bayes",
        "max_trials": 3,
        "max_seconds": 120,
        "seed": 11,
        "families": ["logistic", "hist_gradient_boosting"],
        "space": {
            "logistic": {"C": {"low": 0.1, "high": 10.0, "log": True}},
            "hist_gradient_boosting": {
                "learning_rate": {"choices": [0.1]},
                "max_leaf_nodes": {"low": 8, "high": 32, "integer": True},
                "max_iter": {"choices": [60]},
            },
        },
    },
    "cv": {"scheme": "auto", "folds": 3, "repeats": 2},
    "window": {"max_rows": 4000},
}


def project_raw(**overrides: Any) -> dict[str, Any]:
    raw = tomllib.loads((ROOT / "champion.toml").read_text())
    raw["data"]["settle_seconds"] = 0  # batches written by a test are taken in at once
    for key, value in {**SMALL, **overrides}.items():
        raw[key] = value
    return raw


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store migrated once; each test copies it (migration takes seconds)."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    Registry(tracking_uri=f"sqlite:///{path}", model_name="template").prepare()
    return path


@dataclass
class Project:
    root: Path
    contract: Contract
    settings: Settings
    tracking_uri: str

    @property
    def landing(self) -> Path:
        return self.contract.data.landing_zone

    def components(self, **replacements: Any) -> Components:
        """The composition root on this project (the service and the CLI build the same)."""
        return build(
            self.settings,
            contract=self.contract,
            configure_logging=False,
            tracking_uri=self.tracking_uri,
            **replacements,
        )

    def registry(self) -> Registry:
        registry = self.components().registry
        assert isinstance(registry, Registry)
        return registry

    def ledger(self) -> Ledger:
        ledger = self.components().ledger
        assert isinstance(ledger, Ledger)
        return ledger

    def context(self, **kw: Any) -> Context:
        return self.components().cycle_context(progress=False, **kw)

    def cycle(self, **kw: Any) -> CycleResult:
        return run_cycle(self.context(**kw), trigger="test")

    def simulate(
        self,
        batches: int,
        *,
        rows: int = 600,
        drift_at: int | None = None,
        seed: int = 3,
        noise: float = 0.05,
    ) -> list[Path]:
        plan = SimulationPlan(
            batches=batches, rows=rows, drift_at=drift_at, seed=seed, label_noise=noise
        )
        return simulate_batches(plan, landing_zone=self.landing)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CHAMPION_PROJECT_FILE=str(self.root / "champion.toml"),
            CHAMPION_HOME=str(self.settings.home),
            MLFLOW_TRACKING_URI=self.tracking_uri,
            CHAMPION_LOG_FORMAT="json",
        )
        return env


def make_project(
    root: Path, template_db: Path, *, raw: dict[str, Any] | None = None, **overrides: Any
) -> Project:
    """A project folder with its own copy of the migrated MLflow store: the shipped contract
    with `overrides`, or the contract `raw` as given."""
    import tomli_w

    root.mkdir(parents=True, exist_ok=True)
    raw = project_raw(**overrides) if raw is None else raw
    (root / "champion.toml").write_text(tomli_w.dumps(raw))
    home = root / "var"
    home.mkdir()
    shutil.copy(template_db, home / "mlflow.db")
    contract = parse_contract(raw, base=root)
    settings = Settings(home=home, project_file=root / "champion.toml", lease_timeout_seconds=30)
    return Project(root, contract, settings, f"sqlite:///{home / 'mlflow.db'}")


@pytest.fixture
def project(tmp_path: Path, template_db: Path) -> Iterator[Project]:
    yield make_project(tmp_path / "proj", template_db)


# Figures a suite measured, printed at the end of the run whatever the outcome (the shared-mode
# suite's cycles per tick, failover and swap times): `FIGURES[suite][name] = value`.
FIGURES: dict[str, dict[str, Any]] = {}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for suite, figures in FIGURES.items():
        if figures:
            terminalreporter.section(f"{suite} figures")
            for name, value in figures.items():
                terminalreporter.write_line(f"{name}: {value}")
