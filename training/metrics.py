"""Metric values from a fitted model's outputs, in natural units, plus their orientation.

Classification metrics read the *positive class* of a binary task from the contract
(`metrics.positive_class`; default: the last of the classes in sorted order) and average
multiclass scores as `metrics.average` says (macro, weighted or micro).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn import metrics as skm
from sklearn.preprocessing import label_binarize

from champion.training.config import METRICS, MetricsSection
from champion.training.errors import ConfigError


def oriented(metric: str, value: float) -> float:
    """The value turned so that higher is always better (losses are negated)."""
    return value if METRICS[metric][1] else -value


def model_outputs(
    model: Any, X: Any, *, threshold: float | None = None, spec: MetricsSection | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions and, for classifiers, class probabilities.

    With a `threshold` (binary classifier), the prediction is the positive class (`spec`'s,
    else the last) where its probability is at least the threshold, the other one elsewhere.
    """
    proba = np.asarray(model.predict_proba(X)) if hasattr(model, "predict_proba") else None
    if threshold is not None and proba is not None and proba.shape[1] == 2:
        classes = list(model.classes_)
        positive = positive_label(classes, spec.positive_class if spec else None)
        return apply_threshold(proba, classes, positive, threshold), proba
    pred = np.asarray(model.predict(X))
    return pred, proba


def apply_threshold(
    proba: np.ndarray, classes: Sequence[Any], positive: Any, threshold: float
) -> np.ndarray:
    """A binary model's predicted classes: `positive` where its probability >= threshold."""
    labels = np.asarray(list(classes))
    at = list(classes).index(positive)
    return np.where(proba[:, at] >= threshold, labels[at], labels[1 - at])


def positive_label(classes: Sequence[Any] | None, declared: Any = None) -> Any:
    """The positive class of a binary task (None otherwise): `declared`, else the last class.

    A declared positive class that is not among `classes` (those seen at training time) is a
    contract error, raised here where it is first detectable.
    """
    if classes is None or len(classes) != 2:
        return None
    if declared is None:
        return classes[-1]
    if declared not in list(classes):
        raise ConfigError(
            f"metrics.positive_class: {declared!r} is not one of the classes in the training "
            f'data {list(classes)!r} (mind the type: 1 and "1" differ)'
        )
    return declared


@dataclass(frozen=True)
class _Setup:
    classes: list[Any] | None
    pos: Any  # the positive class of a binary task, else None
    average: str  # "binary" for a binary task, else the contract's multiclass averaging
    beta: float
    quantile: float


def compute(
    names: Sequence[str],
    *,
    y_true: np.ndarray,
    y_pred: np.ndarray,
    proba: np.ndarray | None,
    classes: Sequence[Any] | None,
    spec: MetricsSection | None = None,
) -> dict[str, float]:
    """Each requested metric; NaN where it is undefined on this sample (e.g. one class only).

    `proba` columns follow `classes`. `spec` (the contract's `[metrics]`) supplies the
    positive class, the multiclass averaging, `beta` and `quantile`; without it the defaults
    apply (last class positive, macro averaging, beta 1, quantile 0.5).
    """
    labels = list(classes) if classes is not None else None
    binary = labels is not None and len(labels) == 2
    setup = _Setup(
        classes=labels,
        pos=positive_label(labels, spec.positive_class if spec else None),
        average="binary" if binary else (spec.average if spec else "macro"),
        beta=spec.beta if spec else 1.0,
        quantile=spec.quantile if spec else 0.5,
    )
    out: dict[str, float] = {}
    for name in names:
        try:
            out[name] = float(_one(name, y_true, y_pred, proba, setup))
        except ValueError:
            out[name] = math.nan
    return out


def _probabilities(name: str, proba: np.ndarray | None, s: _Setup) -> tuple[np.ndarray, list[Any]]:
    if proba is None or s.classes is None:
        raise ValueError(f"{name} needs probabilities")
    return proba, s.classes


def _one(
    name: str, y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None, s: _Setup
) -> float:
    kw: dict[str, Any] = {"pos_label": s.pos} if s.average == "binary" else {"labels": s.classes}
    match name:
        case "accuracy":
            return float(skm.accuracy_score(y_true, y_pred))
        case "balanced_accuracy":
            return float(skm.balanced_accuracy_score(y_true, y_pred))
        case "mcc":
            return float(skm.matthews_corrcoef(y_true, y_pred))
        case "precision":
            return float(
                skm.precision_score(y_true, y_pred, average=s.average, zero_division=0, **kw)
            )
        case "recall":
            return float(skm.recall_score(y_true, y_pred, average=s.average, zero_division=0, **kw))
        case "f1":
            return float(skm.f1_score(y_true, y_pred, average=s.average, zero_division=0, **kw))
        case "fbeta":
            return float(
                skm.fbeta_score(
                    y_true, y_pred, beta=s.beta, average=s.average, zero_division=0, **kw
                )
            )
        case "roc_auc":
            p, classes = _probabilities(name, proba, s)
            if len(np.unique(y_true)) < 2:
                raise ValueError("roc_auc is undefined with one class")
            if s.pos is not None:
                return float(skm.roc_auc_score(y_true == s.pos, p[:, classes.index(s.pos)]))
            if s.average == "micro":
                onehot = label_binarize(y_true, classes=classes)
                return float(skm.roc_auc_score(onehot, p, average="micro"))
            return float(
                skm.roc_auc_score(y_true, p, multi_class="ovr", average=s.average, labels=classes)
            )
        case "average_precision":
            p, classes = _probabilities(name, proba, s)
            if s.pos is not None:
                return float(
                    skm.average_precision_score(y_true == s.pos, p[:, classes.index(s.pos)])
                )
            onehot = label_binarize(y_true, classes=classes)
            return float(skm.average_precision_score(onehot, p, average=s.average))
        case "brier":
            # Binary: the classic Brier score of the positive class's probability (0-1).
            # Multiclass: per row, the squared distance between the one-hot label and the
            # probabilities summed over classes, averaged over rows (Brier 1950; 0-2).
            p, classes = _probabilities(name, proba, s)
            if s.pos is not None:
                return float(skm.brier_score_loss(y_true == s.pos, p[:, classes.index(s.pos)]))
            onehot = (np.asarray(y_true)[:, None] == np.asarray(classes)[None, :]).astype(float)
            return float(np.mean(np.sum((onehot - p) ** 2, axis=1)))
        case "log_loss":
            p, classes = _probabilities(name, proba, s)
            return float(skm.log_loss(y_true, p, labels=classes))
        case "rmse":
            return float(np.sqrt(skm.mean_squared_error(y_true, y_pred)))
        case "mae":
            return float(skm.mean_absolute_error(y_true, y_pred))
        case "mape":
            return float(skm.mean_absolute_percentage_error(y_true, y_pred))
        case "pinball":
            return float(skm.mean_pinball_loss(y_true, y_pred, alpha=s.quantile))
        case "r2":
            return float(skm.r2_score(y_true, y_pred))
    raise ValueError(f"unknown metric {name!r}")
