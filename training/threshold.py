"""The decision threshold of a binary classifier: tuned on out-of-fold probabilities.

Probabilities never change: the threshold only decides which class a row is predicted as
(the positive class when its probability is at least the threshold). It is chosen after the
search, on the best candidate's out-of-fold probabilities, to maximise the primary metric
(when that metric depends on the threshold) or to minimise a declared cost,
`cost_ratio` x missed positives + false alarms. It travels with the candidate of the
registered version, and serving and the gate apply it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import cross_val_predict

from champion.training.config import Contract
from champion.training.errors import ConfigError
from champion.training.metrics import apply_threshold, compute, oriented, positive_label
from champion.training.pipeline import Candidate, build_pipeline
from champion.training.tuning import classes_of, splits

# Metrics a threshold changes and whose optimum is not degenerate. Precision alone is best at
# a threshold that predicts almost nothing positive, recall alone at one that predicts
# everything positive: tuning either would be a trap, so they are refused.
TUNABLE = ("accuracy", "balanced_accuracy", "f1", "fbeta", "mcc")
DEGENERATE = ("precision", "recall")
DEFAULT = 0.5
GRID_POINTS = 199  # candidate thresholds: distinct probability quantiles, at most this many


@dataclass(frozen=True)
class ThresholdChoice:
    """What tuning found: the threshold, and the objective there and at 0.5 (natural units)."""

    threshold: float
    objective: str  # a metric name, or "cost"
    score: float
    default_score: float
    rows: int


def objective(contract: Contract) -> str | None:
    """What the threshold is tuned on for this contract; None: it is not tuned.

    `decision.threshold` "auto" tunes when the task is binary and either `cost_ratio` is set
    or the primary metric depends on the threshold; "tuned" insists (a contract error when
    there is nothing to tune on); a number fixes it.
    """
    decision = contract.decision
    if contract.task != "classification" or not isinstance(decision.threshold, str):
        return None
    if decision.cost_ratio > 0:
        return "cost"
    primary = contract.metrics.primary
    if primary in TUNABLE:
        return primary
    if decision.threshold == "tuned":
        why = (
            f"tuning the threshold on {primary!r} alone is degenerate"
            if primary in DEGENERATE
            else f"the primary metric {primary!r} does not depend on the threshold"
        )
        raise ConfigError(
            f"decision.threshold: 'tuned' but {why}; set decision.cost_ratio, or make the "
            f"primary metric one of {list(TUNABLE)}"
        )
    return None


def choose(
    y: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[Any],
    *,
    contract: Contract,
    objective_name: str,
) -> ThresholdChoice:
    """The threshold that scores best on these out-of-fold probabilities.

    Ties go to the threshold nearest 0.5: among equally good choices, the least surprising.
    """
    positive = positive_label(list(classes), contract.metrics.positive_class)
    pos = list(classes).index(positive)
    p = proba[:, pos]
    grid = np.unique(np.quantile(p, np.linspace(0.0, 1.0, GRID_POINTS)))
    grid = np.unique(np.concatenate([grid, [DEFAULT]]))

    def value(t: float) -> float:
        pred = apply_threshold(proba, classes, positive, t)
        if objective_name == "cost":
            missed = np.sum((y == positive) & (pred != positive))
            alarms = np.sum((y != positive) & (pred == positive))
            return float(contract.decision.cost_ratio * missed + alarms) / len(y)
        return compute(
            [objective_name],
            y_true=y,
            y_pred=pred,
            proba=proba,
            classes=classes,
            spec=contract.metrics,
        )[objective_name]

    def goodness(v: float) -> float:
        if not np.isfinite(v):
            return -np.inf
        return -v if objective_name == "cost" else oriented(objective_name, v)

    scored = [(goodness(value(float(t))), -abs(float(t) - DEFAULT), float(t)) for t in grid]
    best = max(scored)
    return ThresholdChoice(
        threshold=best[2],
        objective=objective_name,
        score=value(best[2]),
        default_score=value(DEFAULT),
        rows=len(y),
    )


MIN_ROWS = 50  # fewer older rows than this (or a class rarer than the folds): all rows


def tuning_rows(contract: Contract, y: np.ndarray, fresh: np.ndarray | None) -> np.ndarray:
    """The rows the threshold is tuned on: the older rows when a champion is compared.

    The gate scores the challenger on folds of the fresh rows; a threshold chosen on them
    would flatter it. Only when the older rows are too few (or miss a class) are all rows
    used.
    """
    every = np.arange(len(y))
    if fresh is None or fresh.all():
        return every
    older = np.flatnonzero(~fresh)
    _, counts = np.unique(y[older], return_counts=True)
    enough = len(older) >= MIN_ROWS and len(counts) == 2 and counts.min() >= contract.cv.folds
    return older if enough else every


def tune_threshold(
    contract: Contract,
    candidate: Candidate,
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    fresh: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> ThresholdChoice | None:
    """The threshold for `candidate` (a fixed one, a tuned one, or None: most probable class).

    Tuned on out-of-fold probabilities (`cross_val_predict`, the contract's folds shuffled
    once) of the rows `tuning_rows` picks.
    """
    classes = classes_of(contract, y)
    if classes is None or len(classes) != 2:
        return None
    fixed = contract.decision.threshold
    if not isinstance(fixed, str):
        return ThresholdChoice(float(fixed), "fixed", math.nan, math.nan, 0)
    name = objective(contract)
    if name is None:
        return None
    rows = tuning_rows(contract, y, fresh)
    Xr, yr = X.iloc[rows], y[rows]
    folds = splits(contract, yr, seed=contract.search.seed, shuffled=True)
    pipeline = build_pipeline(contract, candidate, seed=contract.search.seed)
    params = None if weights is None else {"model__sample_weight": weights[rows]}
    proba = cross_val_predict(pipeline, Xr, yr, cv=folds, method="predict_proba", params=params)
    return choose(yr, proba, classes, contract=contract, objective_name=name)
