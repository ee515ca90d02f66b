"""Builds, saves and loads the JSON reference profile of training data used for drift monitoring."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

PROFILE_VERSION = 1


def build_profile(
    frame: pd.DataFrame,
    *,
    numeric: Sequence[str],
    categorical: Sequence[str],
    predictions: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    classes: Sequence[object] | None = None,
    bins: int = 10,
) -> dict[str, Any]:
    """Profile `frame` (and optionally the model's outputs on it) as a JSON-serialisable dict.

    Numeric features get `bins` quantile bins; the first and last bins are open-ended so the
    same edges can bin future data (see `bin_frequencies`). Non-finite numeric values count as
    missing. Categorical frequencies are keyed by `str(value)`.

    The prediction part is a classification profile when `probabilities` (shape (n, k), with
    `classes` of length k) or `classes` is given, a regression profile when only
    `predictions` is given, and None when neither is given. Without probabilities a
    classification profile has empty score edges and frequencies.
    """
    numeric = _names(numeric, "numeric")
    categorical = _names(categorical, "categorical")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    overlap = sorted(set(numeric) & set(categorical))
    if overlap:
        raise ValueError(f"columns listed as both numeric and categorical: {overlap}")
    missing = [name for name in [*numeric, *categorical] if name not in frame.columns]
    if missing:
        raise ValueError(f"columns missing from the frame: {missing}")
    rows = len(frame)
    if rows == 0:
        # An empty reference would make every later comparison meaningless.
        raise ValueError("cannot profile an empty frame")

    features: dict[str, Any] = {}
    for name in numeric:
        features[name] = _numeric_profile(_as_float(frame[name], name), bins=bins)
    for name in categorical:
        features[name] = _categorical_profile(frame[name])

    return {
        "version": PROFILE_VERSION,
        "rows": rows,
        "bins": bins,
        "features": features,
        "prediction": _prediction_profile(
            rows=rows,
            predictions=predictions,
            probabilities=probabilities,
            classes=classes,
            bins=bins,
        ),
    }


def bin_frequencies(values: np.ndarray, edges: Sequence[float]) -> list[float]:
    """Fraction of the finite `values` falling in each bin defined by profile `edges`.

    Bins are closed on the left, and the first and last are open-ended, so values outside the
    reference range land in the outer bins. Returns [] when there are no edges or no finite
    values.
    """
    if len(edges) == 0:
        return []
    data = np.asarray(values, dtype=float)
    data = data[np.isfinite(data)]
    n_bins = max(len(edges) - 1, 1)
    if data.size == 0:
        return []
    # Only the inner edges matter: the outer bins are unbounded by design.
    inner = np.asarray(edges, dtype=float)[1:-1]
    counts = np.bincount(np.searchsorted(inner, data, side="right"), minlength=n_bins)
    return [float(count) / data.size for count in counts]


def save_profile(profile: dict[str, Any], path: Path) -> None:
    """Write `profile` as JSON (sorted keys), replacing any existing file atomically."""
    # allow_nan=False turns a contract breach into an error here instead of invalid JSON later.
    text = json.dumps(profile, sort_keys=True, indent=1, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Readers (the monitor) may load the profile at any moment; never let them see half a file.
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_profile(path: Path) -> dict[str, Any]:
    """Read a profile written by `save_profile`, rejecting other formats and versions."""
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(profile, dict):
        raise ValueError(f"{path} does not hold a profile object")
    version = profile.get("version")
    # bool is an int subclass; `true` must not pass for version 1.
    if isinstance(version, bool) or version != PROFILE_VERSION:
        raise ValueError(f"{path} has profile version {version!r}, expected {PROFILE_VERSION}")
    return profile


def _names(names: Sequence[str], kind: str) -> list[str]:
    # A bare string is a Sequence[str] too, and would silently profile one column per letter.
    if isinstance(names, str):
        raise TypeError(f"{kind} must be a sequence of column names, not a string")
    return list(names)


def _as_float(series: pd.Series, name: str) -> np.ndarray:
    try:
        return series.to_numpy(dtype=float, na_value=np.nan)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"column {name!r} is not numeric: {exc}") from exc


def _finite(value: float) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def _numeric_profile(values: np.ndarray, *, bins: int) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    null_rate = 1.0 - finite.size / values.size if values.size else 1.0
    if finite.size == 0:
        return {
            "type": "numeric",
            "edges": [],
            "frequencies": [],
            "null_rate": 1.0,
            "mean": None,
            "std": None,
            "min": None,
            "max": None,
        }
    # np.unique both sorts and drops the repeated quantiles of low-cardinality columns.
    edges = [
        float(edge) for edge in np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)))
    ]
    if len(edges) == 1:
        # A constant column still needs a (degenerate) bin so future values can be placed.
        edges = [edges[0], edges[0]]
    return {
        "type": "numeric",
        "edges": edges,
        "frequencies": bin_frequencies(finite, edges),
        "null_rate": null_rate,
        "mean": _finite(np.mean(finite)),
        # Population std: defined for a single row, and the profile describes this data only.
        "std": _finite(np.std(finite)),
        "min": edges[0],
        "max": edges[-1],
    }


def _categorical_profile(series: pd.Series) -> dict[str, Any]:
    rows = len(series)
    present = series.dropna()
    null_rate = 1.0 - len(present) / rows if rows else 1.0
    if present.empty:
        return {"type": "categorical", "frequencies": {}, "null_rate": 1.0}
    return {
        "type": "categorical",
        "frequencies": _relative_counts(str(value) for value in present),
        "null_rate": null_rate,
    }


def _relative_counts(keys: Iterable[str], *, start: Sequence[str] = ()) -> dict[str, float]:
    counts: dict[str, int] = dict.fromkeys(start, 0)
    total = 0
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
        total += 1
    return {key: (counts[key] / total if total else 0.0) for key in sorted(counts)}


def _prediction_profile(
    *,
    rows: int,
    predictions: np.ndarray | None,
    probabilities: np.ndarray | None,
    classes: Sequence[object] | None,
    bins: int,
) -> dict[str, Any] | None:
    if predictions is not None:
        predictions = np.asarray(predictions)
        if predictions.ndim != 1 or len(predictions) != rows:
            raise ValueError(f"predictions must have shape ({rows},), got {predictions.shape}")
    if probabilities is None and classes is None:
        if predictions is None:
            return None
        profile = _numeric_profile(_as_float(pd.Series(predictions), "predictions"), bins=bins)
        return {"kind": "regression", **profile}
    if classes is None:
        raise ValueError("classes are required with probabilities")
    labels = [str(label) for label in classes]
    if len(set(labels)) != len(labels):
        raise ValueError(f"classes must be distinct, got {labels}")

    score_edges: list[float] = []
    score_frequencies: list[float] = []
    predicted: list[str]
    if probabilities is not None:
        probabilities = np.asarray(probabilities, dtype=float)
        if probabilities.ndim != 2 or probabilities.shape != (rows, len(labels)):
            raise ValueError(
                f"probabilities must have shape ({rows}, {len(labels)}), got {probabilities.shape}"
            )
        # The last class is the positive one for binary tasks, so its probability is the score.
        score = _numeric_profile(probabilities[:, -1], bins=bins)
        score_edges, score_frequencies = score["edges"], score["frequencies"]
    if predictions is not None:
        predicted = [str(label) for label in predictions]
    elif probabilities is not None:
        predicted = [labels[index] for index in np.argmax(probabilities, axis=1)]
    else:
        raise ValueError("a classification profile needs predictions or probabilities")
    unknown = sorted(set(predicted) - set(labels))
    if unknown:
        raise ValueError(f"predictions hold labels not among classes: {unknown}")
    frequencies = _relative_counts(predicted, start=labels)
    return {
        "kind": "classification",
        "classes": labels,
        "class_frequencies": {label: frequencies[label] for label in labels},
        "score_edges": score_edges,
        "score_frequencies": score_frequencies,
    }
