"""Metric values from a fitted model's outputs, in natural units, plus their orientation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

from champion.training.config import METRICS


def oriented(metric: str, value: float) -> float:
    """The value turned so that higher is always better (losses are negated)."""
    return value if METRICS[metric][1] else -value


def model_outputs(model: Any, X: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions and, for classifiers, class probabilities."""
    pred = np.asarray(model.predict(X))
    proba = np.asarray(model.predict_proba(X)) if hasattr(model, "predict_proba") else None
    return pred, proba


def compute(
    names: Sequence[str],
    *,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None,
    classes: Sequence[Any] | None,
) -> dict[str, float]:
    """Each requested metric; NaN where it is undefined on this sample (e.g. one class only)."""
    out: dict[str, float] = {}
    binary = classes is not None and len(classes) == 2
    pos = classes[-1] if binary and classes is not None else None
    average = "binary" if binary else "macro"
    for name in names:
        try:
            out[name] = float(_one(name, y_true, y_pred, proba, classes, pos, average))
        except ValueError:
            out[name] = math.nan
    return out


def _one(
    name: str,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None,
    classes: Sequence[Any] | None,
    pos: Any,
    average: str,
) -> float:
    kw: dict[str, Any] = {"pos_label": pos} if average == "binary" else {"labels": classes}
    match name:
        case "accuracy":
            return float(skm.accuracy_score(y_true, y_pred))
        case "balanced_accuracy":
            return float(skm.balanced_accuracy_score(y_true, y_pred))
        case "precision":
            return float(
                skm.precision_score(y_true, y_pred, average=average, zero_division=0, **kw)
            )
        case "recall":
            return float(skm.recall_score(y_true, y_pred, average=average, zero_division=0, **kw))
        case "f1":
            return float(skm.f1_score(y_true, y_pred, average=average, zero_division=0, **kw))
        case "roc_auc":
            if proba is None or classes is None:
                raise ValueError("roc_auc needs probabilities")
            if len(np.unique(y_true)) < 2:
                raise ValueError("roc_auc is undefined with one class")
            if len(classes) == 2:
                return float(skm.roc_auc_score(y_true == classes[-1], proba[:, -1]))
            return float(
                skm.roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=classes)
            )
        case "log_loss":
            if proba is None or classes is None:
                raise ValueError("log_loss needs probabilities")
            return float(skm.log_loss(y_true, proba, labels=list(classes)))
        case "rmse":
            return float(np.sqrt(skm.mean_squared_error(y_true, y_pred)))
        case "mae":
            return float(skm.mean_absolute_error(y_true, y_pred))
        case "r2":
            return float(skm.r2_score(y_true, y_pred))
    raise ValueError(f"unknown metric {name!r}")
