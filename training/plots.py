"""Writes a model's evaluation plots (confusion matrix, ROC/PR, residuals, importance) as PNGs."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from sklearn.metrics import (
    auc,
    average_precision_score,
    confusion_matrix,
    precision_recall_curve,
    roc_curve,
)

DPI = 100
MAX_FEATURES = 30


def confusion_matrix_plot(
    y_true: ArrayLike, y_pred: ArrayLike, *, labels: Sequence[object], path: Path
) -> Path:
    """Plot the confusion matrix (rows: true, columns: predicted) with counts in each cell."""
    matrix = confusion_matrix(np.asarray(y_true), np.asarray(y_pred), labels=list(labels))
    names = [str(label) for label in labels]
    size = max(4.0, 0.6 * len(names) + 2.5)
    fig = Figure(figsize=(size, size * 0.85), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=45, ha="right")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(f"Confusion matrix (n = {int(matrix.sum())})")
    # Dark cells need light text to stay readable.
    threshold = matrix.max() / 2 if matrix.size else 0
    for row, col in np.ndindex(matrix.shape):
        count = int(matrix[row, col])
        colour = "white" if count > threshold else "black"
        ax.text(col, row, str(count), ha="center", va="center", color=colour)
    return _save(fig, path)


def roc_pr_plot(
    y_true: ArrayLike, scores: ArrayLike, *, positive_label: object, path: Path
) -> Path:
    """Plot ROC and precision-recall curves side by side for `positive_label` against the rest.

    When `y_true` holds only one side of the split neither curve is defined, so the plot carries
    a note instead of curves.
    """
    positive = np.asarray(y_true) == positive_label
    score = np.asarray(scores, dtype=float)
    if score.shape != positive.shape:
        raise ValueError(f"scores shape {score.shape} does not match y_true {positive.shape}")
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    roc_ax, pr_ax = fig.subplots(1, 2)
    fig.suptitle(f"Positive class: {positive_label}")
    n_positive = int(positive.sum())
    if n_positive == 0 or n_positive == positive.size:
        # One-vs-rest can hit this with several classes present, so name the missing side.
        missing = "positives" if n_positive == 0 else "negatives"
        note = f"undefined: y_true has no {missing} (single class)"
        _note(roc_ax, "ROC", note)
        _note(pr_ax, "Precision-recall", note)
        return _save(fig, path)

    fpr, tpr, _ = roc_curve(positive, score)
    roc_ax.plot(fpr, tpr, color="tab:blue", label="model")
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="chance")
    roc_ax.set_xlabel("False positive rate")
    roc_ax.set_ylabel("True positive rate")
    roc_ax.set_title(f"ROC (AUC = {auc(fpr, tpr):.3f})")
    roc_ax.legend(loc="lower right")

    precision, recall, _ = precision_recall_curve(positive, score)
    average_precision = average_precision_score(positive, score)
    # Step plot matches how average precision sums the curve; linear interpolation overstates it.
    pr_ax.step(recall, precision, where="post", color="tab:blue", label="model")
    pr_ax.axhline(n_positive / positive.size, color="grey", linestyle="--", label="prevalence")
    pr_ax.set_xlabel("Recall")
    pr_ax.set_ylabel("Precision")
    pr_ax.set_title(f"Precision-recall (AP = {average_precision:.3f})")
    pr_ax.legend(loc="lower left")
    for ax in (roc_ax, pr_ax):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    return _save(fig, path)


def residuals_plot(y_true: ArrayLike, y_pred: ArrayLike, *, path: Path) -> Path:
    """Plot residuals (true - predicted) against the prediction, next to their histogram."""
    actual = np.asarray(y_true, dtype=float)
    predicted = np.asarray(y_pred, dtype=float)
    if actual.shape != predicted.shape:
        raise ValueError(f"y_pred shape {predicted.shape} does not match y_true {actual.shape}")
    residuals = actual - predicted
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    scatter_ax, hist_ax = fig.subplots(1, 2)
    # Small translucent markers keep dense regions visible on large evaluation sets.
    scatter_ax.scatter(predicted, residuals, s=8, alpha=0.5, color="tab:blue")
    scatter_ax.axhline(0.0, color="grey", linestyle="--")
    scatter_ax.set_xlabel("Predicted")
    scatter_ax.set_ylabel("Residual (true - predicted)")
    scatter_ax.set_title("Residuals vs predicted")
    finite = residuals[np.isfinite(residuals)]
    hist_ax.hist(finite, bins=min(50, max(10, int(math.sqrt(finite.size)))), color="tab:blue")
    hist_ax.axvline(0.0, color="grey", linestyle="--")
    hist_ax.set_xlabel("Residual")
    hist_ax.set_ylabel("Count")
    if finite.size:
        hist_ax.set_title(f"Residual distribution (mean = {finite.mean():.3g})")
    else:
        hist_ax.set_title("Residual distribution")
    return _save(fig, path)


def feature_importance_plot(
    importances: Mapping[str, float],
    *,
    path: Path,
    title: str = "Permutation importance",
    max_features: int = MAX_FEATURES,
) -> Path:
    """Plot importances as horizontal bars, largest on top, keeping the `max_features` largest."""
    # NaN sorts last so it cannot scramble the order of real values.
    ranked = sorted(
        importances.items(),
        key=lambda item: (math.isnan(item[1]), -item[1]),
    )
    shown = ranked[:max_features]
    height = max(3.0, 0.3 * len(shown) + 1.5)
    fig = Figure(figsize=(8, height), layout="constrained")
    ax = fig.subplots()
    if len(ranked) > len(shown):
        title = f"{title} (top {len(shown)} of {len(ranked)})"
    if not shown:
        _note(ax, title, "no importances available")
        return _save(fig, path)
    names = [name for name, _ in reversed(shown)]
    values = [float(value) for _, value in reversed(shown)]
    ax.barh(np.arange(len(names)), values, color="tab:blue")
    ax.set_yticks(np.arange(len(names)), names)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel("Importance")
    ax.set_title(title)
    return _save(fig, path)


def write_evaluation_plots(
    *,
    task: str,
    y_true: ArrayLike,
    y_pred: ArrayLike,
    scores: np.ndarray | None,
    classes: Sequence[object] | None,
    importances: Mapping[str, float],
    out_dir: Path,
    positive: object | None = None,
) -> list[Path]:
    """Write the plots for `task` into `out_dir` and return their paths.

    Classification: confusion_matrix.png, roc_pr.png (only when `scores` is given; the positive
    class is `positive`, by default `classes[-1]`, one-vs-rest when there are more than two
    classes) and feature_importance.png. `scores` is either the (n, k) probability matrix
    ordered like `classes` or the 1-D probability of the positive class. Regression:
    residuals.png and feature_importance.png.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if task == "classification":
        if not classes:
            raise ValueError("classification plots need the class labels")
        written.append(
            confusion_matrix_plot(
                y_true, y_pred, labels=classes, path=out_dir / "confusion_matrix.png"
            )
        )
        if scores is not None:
            label = classes[-1] if positive is None else positive
            written.append(
                roc_pr_plot(
                    y_true,
                    _positive_scores(
                        scores, n_classes=len(classes), column=list(classes).index(label)
                    ),
                    positive_label=label,
                    path=out_dir / "roc_pr.png",
                )
            )
    elif task == "regression":
        written.append(residuals_plot(y_true, y_pred, path=out_dir / "residuals.png"))
    else:
        raise ValueError(f"unknown task {task!r}; expected 'classification' or 'regression'")
    written.append(feature_importance_plot(importances, path=out_dir / "feature_importance.png"))
    return written


def _positive_scores(scores: np.ndarray, *, n_classes: int, column: int) -> np.ndarray:
    """The positive class's probabilities: a 1-D score as given, else its matrix column."""
    matrix = np.asarray(scores, dtype=float)
    if matrix.ndim == 1:
        return matrix
    if matrix.ndim == 2 and matrix.shape[1] == n_classes:
        return matrix[:, column]
    raise ValueError(f"scores must be 1-D or have {n_classes} columns, got shape {matrix.shape}")


def _note(ax: Axes, title: str, message: str) -> None:
    ax.set_title(title)
    ax.set_axis_off()
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # The format is explicit so a caller's odd suffix cannot select another backend.
    fig.savefig(path, format="png", dpi=DPI)
    return path
