"""Paired evaluation: the frozen champion and the refit challenger on the same fresh folds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import train_test_split

from champion.training.config import Contract
from champion.training.gate import Backtest, PairedScores
from champion.training.metrics import compute, model_outputs
from champion.training.pipeline import Candidate, build_pipeline, fit_rows
from champion.training.tuning import classes_of, metric_names, splits

# Fewer held-out older rows than this say too little: the backtest is then left out.
MIN_BACKTEST_ROWS = 20


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
    champion_candidate: Candidate | None = None,
    weights: np.ndarray | None = None,
) -> PairedScores:
    """Score both models on validation folds drawn only from rows the champion never saw.

    Validation rows come from `fresh` (a boolean mask); the challenger is refit on each
    fold's training part (older rows + the other fresh folds), the champion is used as
    deployed.  Scoring the champion on rows it was trained on would flatter it.

    The backtest (`gate.backtest_rows` > 0) scores both on a held-out sample of the OLDER
    rows (`backtest_rows`): the challenger refit on every other row of the window, and the
    champion's recipe (`champion_candidate`) refit on the other older rows, i.e. what it was
    trained on minus the sample. Every older row is in the champion's batches, so the deployed
    champion would be scored in-sample, which for a flexible model (a deep forest) is near
    perfect and would refuse every challenger. Without `champion_candidate` the deployed
    champion is scored anyway, in-sample: biased towards it, i.e. conservative.
    """
    fresh_idx = np.flatnonzero(fresh)
    old_idx = np.flatnonzero(~fresh)
    seed = contract.search.seed
    names = metric_names(contract)
    classes = classes_of(contract, y)
    pipeline = build_pipeline(contract, challenger, seed=seed)
    # Each side predicts with its own decision threshold (none: the most probable class).
    cut_chal = challenger.threshold
    cut_champ = champion_candidate.threshold if champion_candidate is not None else None
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
        for model, out, cut in (
            (fit_rows(clone(pipeline), X, y, train, weights), out_chal, cut_chal),
            (champion, out_champ, cut_champ),
        ):
            scores = _scores(
                model,
                X_test,
                y_test,
                names=names,
                classes=classes,
                contract=contract,
                threshold=cut,
            )
            for n in names:
                out[n].append(scores[n])
    backtest = None
    held = backtest_rows(contract, y, fresh)
    if len(held):
        primary = contract.metrics.primary
        rest = np.setdiff1d(np.arange(len(y)), held)
        X_held, y_held = X.iloc[held], y[held]
        chal_model = fit_rows(clone(pipeline), X, y, rest, weights)
        champ_model = champion
        if champion_candidate is not None:
            older = np.setdiff1d(old_idx, held)
            champ_model = build_pipeline(contract, champion_candidate, seed=seed)
            fit_rows(champ_model, X, y, older, weights)
        chal_score, champ_score = (
            _scores(
                m,
                X_held,
                y_held,
                names=[primary],
                classes=classes,
                contract=contract,
                threshold=cut,
            )[primary]
            for m, cut in ((chal_model, cut_chal), (champ_model, cut_champ))
        )
        backtest = Backtest(
            primary,
            len(held),
            float(chal_score),
            float(champ_score),
            champion_refit=champion_candidate is not None,
        )
    return PairedScores(
        challenger={n: tuple(v) for n, v in out_chal.items()},
        champion={n: tuple(v) for n, v in out_champ.items()},
        test_train_ratio=float(np.mean(ratios)) if ratios else 0.0,
        backtest=backtest,
    )


def backtest_rows(contract: Contract, y: np.ndarray, fresh: np.ndarray) -> np.ndarray:
    """The older (non-fresh) rows held out for the backtest, sorted; empty when it is off.

    `gate.backtest_rows` rows (at most half the older rows), drawn with the search seed,
    stratified by class for classification when every class has two or more older rows.
    Every older row is in a batch the champion was trained on: no older row is unseen by it.
    """
    old_idx = np.flatnonzero(~np.asarray(fresh, dtype=bool))
    n = min(contract.gate.backtest_rows, len(old_idx) // 2)
    if n < MIN_BACKTEST_ROWS:
        return np.array([], dtype=int)
    seed = contract.search.seed
    stratify = y[old_idx] if contract.task == "classification" else None
    try:
        _, held = train_test_split(old_idx, test_size=n, stratify=stratify, random_state=seed)
    except ValueError:  # a class too rare to stratify: a plain seeded sample
        _, held = train_test_split(old_idx, test_size=n, random_state=seed)
    return np.sort(np.asarray(held, dtype=int))


def _scores(
    model: Any,
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    names: list[str],
    classes: list[Any] | None,
    contract: Contract,
    threshold: float | None = None,
) -> dict[str, float]:
    pred, proba = model_outputs(model, X, threshold=threshold, spec=contract.metrics)
    if proba is not None and classes is not None:
        proba = widen_proba(proba, list(model.classes_), classes)
    return compute(
        names, y_true=y, y_pred=pred, proba=proba, classes=classes, spec=contract.metrics
    )
