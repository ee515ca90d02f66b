"""Shared helpers for the unit tests: a small contract in a temp folder and a batch writer."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sklearn.ensemble  # noqa: F401  (loads scikit-learn's OpenMP runtime before limiting it)
from threadpoolctl import threadpool_limits

from champion.training.config import Contract, parse_contract

# One BLAS/OpenMP thread per process: on a busy 2-core machine the default thread pools spin
# against each other and a 20 ms fit takes seconds.  Limits stay in force for the whole session.
threadpool_limits(limits=1)

PROJECT_FILE = Path(__file__).resolve().parents[2] / "champion.toml"

# A search budget small enough for unit tests: two fast families, tiny spaces, 3 folds.
SMALL_SEARCH: dict[str, Any] = {
    "strategy": "random",
    "max_trials": 3,
    "max_seconds": 600,
    "seed": 7,
    "grid_points": 2,
    "families": ["logistic", "hist_gradient_boosting"],
    "space": {
        "logistic": {"C": {"low": 0.1, "high": 10.0, "log": True}},
        "hist_gradient_boosting": {
            "max_iter": {"choices": [15]},
            "learning_rate": {"low": 0.05, "high": 0.3, "log": True},
            "max_leaf_nodes": {"choices": [8, 16]},
        },
    },
}


def raw_contract() -> dict[str, Any]:
    """The shipped champion.toml as a raw mapping (a fresh deep copy on every call).

    Batches written by a test are taken in at once: no settle time.
    """
    raw = copy.deepcopy(tomllib.loads(PROJECT_FILE.read_text(encoding="utf-8")))
    raw["data"]["settle_seconds"] = 0
    return raw


def small_raw_contract(**search: Any) -> dict[str, Any]:
    """The shipped contract with a small search budget and 3-fold, single-repeat CV."""
    raw = raw_contract()
    raw["search"] = copy.deepcopy(SMALL_SEARCH) | search
    raw["cv"] = {"scheme": "auto", "folds": 3, "repeats": 1}
    return raw


def make_contract(base: Path, raw: dict[str, Any] | None = None, **search: Any) -> Contract:
    """Parse `raw` (default: the small contract) with data paths resolved under `base`."""
    return parse_contract(raw if raw is not None else small_raw_contract(**search), base=base)


@pytest.fixture
def contract(tmp_path: Path) -> Contract:
    """The small contract; landing zone, quarantine and manifest live under tmp_path/var."""
    return make_contract(tmp_path)


BatchWriter = Callable[[pd.DataFrame, str], Path]


@pytest.fixture
def write_batch(contract: Contract) -> BatchWriter:
    """Write a frame as a CSV batch into the contract's landing zone; returns its path."""

    def write(frame: pd.DataFrame, name: str) -> Path:
        zone = contract.data.landing_zone
        zone.mkdir(parents=True, exist_ok=True)
        path = zone / (name if name.endswith((".csv", ".parquet")) else f"{name}.csv")
        if path.suffix == ".csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        return path

    return write
