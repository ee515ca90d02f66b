"""Paired evaluation: the frozen champion and the refit challenger on the same fresh folds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

from champion.training.config import Contract
from champion.training.gate import PairedScores
from champion.training.metrics import compute, model_outputs
from champion.training.pipeline import Candidate, build_pipeline
from champion.training.tuning import classes_of, metric_names, splits


def widen_proba(proba: np.ndarray, model_classes: list[Any], classes: list[Any]) -> np.ndarray:
    """Probabilities over `classes` (zero for a class the model never saw)."""
    full = np.zeros((len(proba), len(classes)))
    for j, c in enumerate(model_classes):
        if c in classes:
            full[:, classes.index(c)] = proba[:, j]
    return full


def paired_evaluation(
    X: pd.DataFrame,
    y: np.ndarray,
    fresh: np.ndarray,
    *,
    contract: Contract,
    challenger: Candidate,
    champion: Any,
) -> PairedScores:
    """Score both models on validation folds drawn only from rows the champion never saw.

    Validation rows come from `fresh` (a boolean mask); the challenger is refit on each
    fold's training part (older rows + the other fresh folds), the champion is used as
    deployed.  Scoring the champion on rows it was trained on would flatter it.
    """
    fresh_idx = np.flatnonzero(fresh)
    old_idx = np.flatnonzero(~fresh)
    seed = contract.search.seed
    names = metric_names(contract)
    classes = classes_of(contract, y)
    pipeline = build_pipeline(contract, challenger, seed=seed)
    # Every fresh row post-dates the champion's data, so the champion never scores its past;
    # within the fresh block rows are exchangeable, and shuffled repeated folds give the
    # paired test its power (expanding time folds would starve the early folds).
    folds = splits(contract, y[fresh_idx], repeats=contract.cv.repeats, seed=seed, shuffled=True)
    out_chal: dict[str, list[float]] = {n: [] for n in names}
    out_champ: dict[str, list[float]] = {n: [] for n in names}
    ratios: list[float] = []
    for train_f, test_f in folds:
        train = np.concatenate([old_idx, fresh_idx[train_f]])
        test = fresh_idx[test_f]
        # Conservative: count only the fresh part of the training rows (shared old rows make
        # fold estimates more correlated, not less).
        ratios.append(len(test_f) / max(len(train_f), 1))
        X_test, y_test = X.iloc[test], y[test]
        for model, out in (
            (clone(pipeline).fit(X.iloc[train], y[train]), out_chal),
            (champion, out_champ),
        ):
            pred, proba = model_outputs(model, X_test)
            if proba is not None and classes is not None:
                proba = widen_proba(proba, list(model.classes_), classes)
            scores = compute(
                names,
                y_true=y_test,
                y_pred=pred,
                proba=proba,
                classes=classes,
                spec=contract.metrics,
            )
            for n in names:
                out[n].append(scores[n])
    return PairedScores(
        challenger={n: tuple(v) for n, v in out_chal.items()},
        champion={n: tuple(v) for n, v in out_champ.items()},
        test_train_ratio=float(np.mean(ratios)) if ratios else 0.0,
    )
