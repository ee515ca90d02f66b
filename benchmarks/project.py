"""A throwaway champion project for the benchmarks: demo data, a real MLflow store, champions.

Demo data comes from `champion simulate` (a subprocess, as a user runs it); models are
registered by `training.cycle.run_cycle`: the default champion with the shipped contract (its own
search picks the family), the secondary ones with a contract whose search space admits exactly
one candidate, so those always measure the same kind of model.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CONTRACT = ROOT / "champion.toml"

# One candidate per scenario: the family and its hyperparameters are fixed.
FORCED: dict[str, dict[str, Any]] = {
    "forest": {
        "random_forest": {
            "n_estimators": {"choices": [100]},
            "max_depth": {"choices": [16]},
            "min_samples_leaf": {"choices": [2]},
            "max_features": {"choices": ["sqrt"]},
        }
    },
    "gbt": {
        "hist_gradient_boosting": {
            "learning_rate": {"choices": [0.1]},
            "max_leaf_nodes": {"choices": [31]},
            "min_samples_leaf": {"choices": [20]},
            "l2_regularization": {"choices": [0.0001]},
        }
    },
}


# The estimator family each forced scenario registers.
FORCED_FAMILY: dict[str, str] = {name: next(iter(space)) for name, space in FORCED.items()}


def champion_exe() -> str:
    return str(Path(sys.executable).with_name("champion"))


def shipped_raw() -> dict[str, Any]:
    raw = tomllib.loads(SHIPPED_CONTRACT.read_text(encoding="utf-8"))
    raw["data"]["settle_seconds"] = 0  # batches written by the harness are taken in at once
    return raw


def forced_raw(scenario: str, *, folds: int = 3, repeats: int = 1) -> dict[str, Any]:
    """The shipped contract with a search space admitting only the scenario's candidate."""
    raw = shipped_raw()
    space = copy.deepcopy(FORCED[scenario])
    raw["search"] = {
        "strategy": "grid",
        "max_trials": 1,
        "max_seconds": 600.0,
        "seed": 42,
        "grid_points": 2,
        "families": list(space),
        "space": space | {"reduction": {"components": {"choices": [0]}}},
    }
    raw["cv"] = {"scheme": "auto", "folds": folds, "repeats": repeats}
    return raw


def default_raw(*, folds: int = 3, repeats: int = 1) -> dict[str, Any]:
    """The shipped contract as a user gets it (its search, families and budgets), with only the
    fold count (and gate repeats) of the forced scenarios, for time."""
    raw = shipped_raw()
    raw["cv"] = dict(raw["cv"], folds=folds, repeats=repeats)
    return raw


def grid_raw() -> dict[str, Any]:
    """The shipped contract searched exhaustively: strategy grid over the same spaces, families,
    folds and seed, with trial and time budgets that never bind."""
    raw = shipped_raw()
    raw["search"] = dict(raw["search"], strategy="grid", max_trials=100_000, max_seconds=86_400.0)
    return raw


@dataclass
class BenchProject:
    """One project folder: champion.toml, var/ (ledger, locks, MLflow SQLite store, landing)."""

    root: Path

    @property
    def home(self) -> Path:
        return self.root / "var"

    @property
    def project_file(self) -> Path:
        return self.root / "champion.toml"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.home / 'mlflow.db'}"

    def write_contract(self, raw: dict[str, Any]) -> None:
        import tomli_w

        self.root.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        self.project_file.write_text(tomli_w.dumps(raw), encoding="utf-8")

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CHAMPION_PROJECT_FILE=str(self.project_file),
            CHAMPION_HOME=str(self.home),
            MLFLOW_TRACKING_URI=self.tracking_uri,
            CHAMPION_LOG_FORMAT="json",
            CHAMPION_LOG_LEVEL="WARNING",
            MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
            BENTOML_DO_NOT_TRACK="true",
            BENTOML_HOME=str(self.root / "bentoml"),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    # -- the pieces a cycle needs --------------------------------------------------------------

    def contract(self) -> Any:
        from champion.training.config import load_contract

        return load_contract(self.project_file)

    def settings(self) -> Any:
        from champion.training.config import Settings

        return Settings(home=self.home, project_file=self.project_file, lease_timeout_seconds=30)

    def components(self) -> Any:
        """The composition root, on this project's settings and registry."""
        from champion.service.root import build

        return build(self.settings(), configure_logging=False, tracking_uri=self.tracking_uri)

    def registry(self) -> Any:
        return self.components().registry

    def ledger(self) -> Any:
        return self.components().ledger

    # -- actions ---------------------------------------------------------------------------------

    def simulate(self, *, batches: int, rows: int, seed: int = 7, timeout: float = 120) -> None:
        """`champion simulate` as a user runs it (appends batches to the landing zone)."""
        out = subprocess.run(
            [
                champion_exe(),
                "simulate",
                "--batches",
                str(batches),
                "--rows",
                str(rows),
                "--seed",
                str(seed),
            ],
            cwd=self.root,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"champion simulate failed: {out.stderr[-2000:]}")

    def cycle(self) -> Any:
        """One retrain cycle in this process (training.cycle), as the scheduler would run it."""
        from champion.training.cycle import run_cycle

        return run_cycle(self.components().cycle_context(progress=False), trigger="benchmark")

    def promote(self, version: str, reason: str) -> None:
        from champion.training import actions

        parts = self.components()
        current = parts.registry.alias("champion")
        if current is not None and current.version == version:
            return
        actions.promote(
            version,
            reason=reason,
            registry=parts.registry,
            ledger=parts.ledger,
            leases=parts.leases,
        )

    def champion_version(self) -> str | None:
        ref = self.registry().alias("champion")
        return None if ref is None else str(ref.version)

    def load(self, version: str) -> Any:
        """Download, verify and load one version (a training.registry.LoadedModel)."""
        registry = self.registry()
        return registry.load(registry.version(version), cache_dir=self.root / "models")

    def demo_frame(self) -> Any:
        """Every row in the landing zone (the demo data), in file order."""
        import pandas as pd

        files = sorted(self.contract().data.landing_zone.glob("batch-*.csv"))
        return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)

    def cycle_runs(self) -> list[dict[str, Any]]:
        """Finished cycle runs in this store, oldest first, with their metrics and params."""
        return [
            {
                "run_id": r.run_id,
                "status": r.status,
                "metrics": dict(r.metrics),
                "params": dict(r.params),
            }
            for r in self.registry().runs(kind="cycle")
        ]


def demo_rows(frame: Any, contract: Any, n: int) -> list[dict[str, Any]]:
    """The first n demo rows as request instances: the contract's features, JSON types."""
    import math

    out = []
    for record in frame.head(n).to_dict(orient="records"):
        row: dict[str, Any] = {}
        for name, feature in contract.features.items():
            value = record.get(name)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                row[name] = None
            elif feature.type == "numeric":
                row[name] = float(value)
            else:
                row[name] = str(value)
        out.append(row)
    return out
