"""Calibrated drift tests of a live window against the training-time reference profile."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

import numpy as np
import numpy.typing as npt
from scipy import stats

from champion.monitoring.profile import bin_frequencies

# Cochran's rule: the chi-square approximation is trusted once every expected cell count is 5+.
MIN_EXPECTED = 5.0
# Jeffreys-style pseudo-count per bin: keeps PSI finite when a bin is empty on one side.
PSI_PSEUDO_COUNT = 0.5

# A column: a numpy array, a list (which may hold None), a pandas Series, ...
Column: TypeAlias = npt.ArrayLike | Sequence[object]

OK = "ok"
DRIFT = "drift"
INSUFFICIENT = "insufficient_data"


class Columns(Protocol):
    """Named, equally long columns: a dict of arrays or lists, or a pandas DataFrame."""

    def __contains__(self, name: object, /) -> bool: ...

    def __getitem__(self, name: str, /) -> Any: ...


@dataclass(frozen=True)
class FeatureDrift:
    """The drift verdict for one feature (or the model's predictions) over one live window.

    `psi` is the smoothed population stability index on the reference bins, `statistic` and
    `p_value` come from the two-sample chi-square test (an exact test when the counts are too
    small for it), and `threshold` is the PSI value that matches `alpha` for this window size
    and bin count. The status follows the p-value. `dof` is the test's degrees of freedom after
    sparse bins were merged. Every number is None when the status is "insufficient_data".
    """

    feature: str
    kind: str
    status: str
    psi: float | None
    statistic: float | None
    p_value: float | None
    threshold: float | None
    window_rows: int
    unseen_rate: float | None
    detail: str
    dof: int | None = None

    @property
    def drifted(self) -> bool:
        """True when this feature's p-value fell below the per-feature alpha."""
        return self.status == DRIFT

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: any non-finite number would become None (none is produced)."""
        return {
            "feature": self.feature,
            "kind": self.kind,
            "status": self.status,
            "psi": _json_float(self.psi),
            "statistic": _json_float(self.statistic),
            "p_value": _json_float(self.p_value),
            "threshold": _json_float(self.threshold),
            "window_rows": self.window_rows,
            "unseen_rate": _json_float(self.unseen_rate),
            "dof": self.dof,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class DriftReport:
    """Per-feature drift results for one window and the dataset-level verdict.

    `drift_share` is the share of tested features (those not "insufficient_data") flagged at
    the per-feature `alpha`; `dataset_drift` is True when at least one feature stays significant
    after Holm's correction at `family_alpha`, and `family_flagged` names those features. The
    prediction result is reported alongside and takes no part in either dataset figure.
    """

    features: tuple[FeatureDrift, ...]
    prediction: FeatureDrift | None
    window_rows: int
    drift_share: float
    dataset_drift: bool
    alpha: float
    family_alpha: float
    family_flagged: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict (no NaN or infinity anywhere), features in profile order."""
        return {
            "features": [feature.to_dict() for feature in self.features],
            "prediction": None if self.prediction is None else self.prediction.to_dict(),
            "window_rows": self.window_rows,
            "drift_share": _json_float(self.drift_share),
            "dataset_drift": self.dataset_drift,
            "alpha": _json_float(self.alpha),
            "family_alpha": _json_float(self.family_alpha),
            "family_flagged": list(self.family_flagged),
        }


@dataclass(frozen=True)
class _Comparison:
    statistic: float
    p_value: float
    dof: int
    exact: bool
    psi: float
    psi_bins: int


def numeric_drift(
    values: Column,
    ref: Mapping[str, Any],
    *,
    reference_rows: int,
    alpha: float = 0.01,
    min_rows: int = 30,
    name: str,
    kind: str = "numeric",
) -> FeatureDrift:
    """Test a live numeric column against its reference profile entry `ref`.

    Live values are binned with the reference quantile edges exactly as the profile was built
    (`bin_frequencies`); non-finite values count as nulls and are left out. `reference_rows` is
    the profile's `rows`; the reference's non-null count is derived from its `null_rate`. A
    constant reference column (edges [v, v]) is compared as "equals v" against "differs".
    `kind` only labels the result (prediction_drift passes "prediction").
    """
    _check_settings(alpha=alpha, min_rows=min_rows)
    data = _as_float(values, name)
    finite = data[np.isfinite(data)]
    null_share = 1.0 - finite.size / data.size if data.size else 0.0
    edges = [float(edge) for edge in ref.get("edges", [])]
    frequencies = [float(share) for share in ref.get("frequencies", [])]
    reference_n = _reference_count(ref, reference_rows)

    if not edges or reference_n == 0:
        return _insufficient(name, kind, finite.size, "the reference has no non-null values")
    if len(frequencies) != max(len(edges) - 1, 1):
        raise ValueError(
            f"profile entry {name!r} has {len(edges)} edges but {len(frequencies)} frequencies"
        )
    short = _too_few(data.size, finite.size, min_rows=min_rows, null_share=null_share)
    if short:
        return _insufficient(name, kind, finite.size, short)

    comparison = _compare_numeric(
        finite, edges=edges, frequencies=frequencies, reference_n=reference_n
    )
    return _result(
        name,
        kind,
        comparison,
        live_n=finite.size,
        reference_n=reference_n,
        alpha=alpha,
        null_share=null_share,
        unseen_rate=None,
    )


def _compare_numeric(
    finite: np.ndarray, *, edges: list[float], frequencies: list[float], reference_n: int
) -> _Comparison:
    """Bin the finite live values on the reference edges and compare the two count vectors."""
    reference_counts = np.rint(np.asarray(frequencies) * reference_n)
    if len(edges) == 2 and edges[0] == edges[1]:
        # One degenerate reference bin holds every value, so bin_frequencies cannot tell a
        # changed constant apart; compare "equals the constant" against "anything else".
        same = int(np.count_nonzero(finite == edges[0]))
        live_counts = np.array([same, finite.size - same], dtype=float)
        reference_counts = np.array([reference_n, 0.0])
        return _compare(live_counts, reference_counts, ordered=False)
    live_counts = np.rint(np.asarray(bin_frequencies(finite, edges)) * finite.size)
    return _compare(live_counts, reference_counts, ordered=True)


def categorical_drift(
    values: Column,
    ref: Mapping[str, Any],
    *,
    reference_rows: int,
    alpha: float = 0.01,
    min_rows: int = 30,
    name: str,
    kind: str = "categorical",
) -> FeatureDrift:
    """Test a live categorical column against its reference profile entry `ref`.

    Values are keyed by `str(value)` like the profile; None, NaN and pandas' missing markers
    are nulls and are left out. Live values absent from the reference go to one explicit
    "unseen" bucket whose reference count is zero; `unseen_rate` is that bucket's live share.
    `reference_rows` is the profile's `rows`; the non-null count follows from `null_rate`.
    `kind` only labels the result (prediction_drift passes "prediction").
    """
    _check_settings(alpha=alpha, min_rows=min_rows)
    items = list(_as_1d(values, name))
    keys = [str(item) for item in items if not _is_null(item)]
    null_share = 1.0 - len(keys) / len(items) if items else 0.0
    reference = {str(key): float(share) for key, share in ref.get("frequencies", {}).items()}
    reference_n = _reference_count(ref, reference_rows)

    if not reference or reference_n == 0:
        return _insufficient(name, kind, len(keys), "the reference has no non-null values")
    short = _too_few(len(items), len(keys), min_rows=min_rows, null_share=null_share)
    if short:
        return _insufficient(name, kind, len(keys), short)

    categories = sorted(reference)
    counts = Counter(keys)
    unseen = len(keys) - sum(counts[category] for category in categories)
    # The unseen bucket is a separate last cell, not a dict key, so no live category can be
    # confused with it whatever its name.
    live_counts = np.array([*(counts[category] for category in categories), unseen], float)
    reference_counts = np.array(
        [*(round(reference[category] * reference_n) for category in categories), 0], float
    )
    comparison = _compare(live_counts, reference_counts, ordered=False)
    return _result(
        name,
        kind,
        comparison,
        live_n=len(keys),
        reference_n=reference_n,
        alpha=alpha,
        null_share=null_share,
        unseen_rate=unseen / len(keys),
    )


def prediction_drift(
    profile_prediction: Mapping[str, Any] | None,
    *,
    predictions: Column | None = None,
    scores: npt.ArrayLike | None = None,
    reference_rows: int,
    alpha: float = 0.01,
    min_rows: int = 30,
) -> FeatureDrift | None:
    """Test the model's live outputs against the profile's prediction part.

    Classification compares predicted-class frequencies (classes missing from the reference go
    to the unseen bucket); without `predictions`, 2-D `scores` (probabilities, one column per
    profile class) give the class by argmax as at profile time, and 1-D `scores` are compared
    with the profile's score bins. Regression compares `predictions` (or 1-D `scores`) like a
    numeric feature. Returns None when there is no profile part or nothing to compare.
    """
    if profile_prediction is None or (predictions is None and scores is None):
        return None
    kind = profile_prediction.get("kind")
    common: dict[str, Any] = {
        "reference_rows": reference_rows,
        "alpha": alpha,
        "min_rows": min_rows,
    }
    if kind == "regression":
        values = predictions if predictions is not None else scores
        return numeric_drift(
            _as_float(values, "prediction"),
            profile_prediction,
            name="prediction",
            kind="prediction",
            **common,
        )
    if kind != "classification":
        raise ValueError(f"unknown prediction profile kind {kind!r}")
    classes = [str(label) for label in profile_prediction.get("classes", [])]
    frequencies = profile_prediction.get("class_frequencies", {})
    if predictions is None and scores is not None:
        matrix = np.asarray(scores, dtype=float)
        if matrix.ndim == 1:
            return _score_drift(matrix, profile_prediction, common)
        predictions = _predicted_classes(matrix, classes)
    reference = {"frequencies": frequencies, "null_rate": 0.0}
    return categorical_drift(
        predictions if predictions is not None else [],
        reference,
        name="prediction",
        kind="prediction",
        **common,
    )


def _score_drift(
    scores: np.ndarray, profile_prediction: Mapping[str, Any], common: Mapping[str, Any]
) -> FeatureDrift | None:
    """1-D classification scores against the profile's score bins; None without such bins."""
    edges = profile_prediction.get("score_edges", [])
    if not edges:
        return None
    score_ref = {"edges": edges, "frequencies": profile_prediction["score_frequencies"]}
    return numeric_drift(scores, score_ref, name="score", kind="prediction", **common)


def _predicted_classes(matrix: np.ndarray, classes: Sequence[str]) -> list[str | None]:
    """The argmax class of each row of probabilities, as the profile derived it."""
    if matrix.ndim != 2 or matrix.shape[1] != len(classes):
        raise ValueError(f"scores must have shape (n, {len(classes)}) or (n,), got {matrix.shape}")
    # Rows with a missing probability have no predicted class; keep them as nulls.
    usable = np.isfinite(matrix).all(axis=1)
    best = np.argmax(np.where(np.isfinite(matrix), matrix, -np.inf), axis=1)
    return [classes[index] if ok else None for index, ok in zip(best, usable, strict=True)]


def evaluate(
    frame_like: Columns,
    profile: Mapping[str, Any],
    *,
    predictions: Column | None = None,
    scores: npt.ArrayLike | None = None,
    alpha: float = 0.01,
    family_alpha: float = 0.05,
    min_rows: int = 30,
) -> DriftReport:
    """Test every profiled feature of one live window and combine them into a dataset verdict.

    `frame_like` maps column names to equally long 1-D columns (a pandas DataFrame works);
    extra columns are ignored and a profiled column absent from it is "insufficient_data".
    Each feature is flagged at `alpha`; the dataset drifts when Holm's step-down correction at
    `family_alpha` still rejects at least one feature, which bounds the chance of a false
    dataset alarm per window by `family_alpha` whatever the number of features.
    """
    _check_settings(alpha=alpha, min_rows=min_rows)
    if not 0.0 < family_alpha < 1.0:
        raise ValueError(f"family_alpha must be in (0, 1), got {family_alpha}")
    reference_rows = int(profile["rows"])
    features: Mapping[str, Mapping[str, Any]] = profile.get("features", {})
    window_rows = _window_rows(frame_like, features)
    results = _feature_results(
        frame_like, features, reference_rows=reference_rows, alpha=alpha, min_rows=min_rows
    )

    tested = [result for result in results if result.p_value is not None]
    flagged = sum(result.drifted for result in tested)
    pvalues = [(result.feature, result.p_value) for result in tested if result.p_value is not None]
    family = _holm(pvalues, family_alpha)
    prediction = prediction_drift(
        profile.get("prediction"),
        predictions=predictions,
        scores=scores,
        reference_rows=reference_rows,
        alpha=alpha,
        min_rows=min_rows,
    )
    return DriftReport(
        features=tuple(results),
        prediction=prediction,
        window_rows=window_rows,
        drift_share=flagged / len(tested) if tested else 0.0,
        dataset_drift=bool(family),
        alpha=alpha,
        family_alpha=family_alpha,
        family_flagged=tuple(family),
    )


def _window_rows(frame_like: Columns, features: Mapping[str, Mapping[str, Any]]) -> int:
    """The common length of the profiled columns present in the window (0 when none is)."""
    lengths = {len(frame_like[name]) for name in features if name in frame_like}
    if len(lengths) > 1:
        raise ValueError(f"columns of the window differ in length: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def _feature_results(
    frame_like: Columns,
    features: Mapping[str, Mapping[str, Any]],
    *,
    reference_rows: int,
    alpha: float,
    min_rows: int,
) -> list[FeatureDrift]:
    """One result per profiled feature, in profile order; absent columns are not tested."""
    results: list[FeatureDrift] = []
    for name, ref in features.items():
        kind = ref.get("type")
        if kind not in ("numeric", "categorical"):
            raise ValueError(f"profile feature {name!r} has unknown type {kind!r}")
        if name not in frame_like:
            results.append(_insufficient(name, kind, 0, "the column is absent from the window"))
            continue
        test = numeric_drift if kind == "numeric" else categorical_drift
        results.append(
            test(
                frame_like[name],
                ref,
                reference_rows=reference_rows,
                alpha=alpha,
                min_rows=min_rows,
                name=name,
            )
        )
    return results


def psi_threshold(*, bins: int, live_rows: int, reference_rows: int, alpha: float) -> float | None:
    """The PSI value a same-distribution window exceeds with probability about `alpha`.

    Under no drift n_eff * PSI is approximately chi-square with bins - 1 degrees of freedom,
    where 1 / n_eff = 1 / live_rows + 1 / reference_rows. None when fewer than two bins.
    """
    if bins < 2 or live_rows < 1 or reference_rows < 1:
        return None
    return float(stats.chi2.ppf(1.0 - alpha, bins - 1)) * (1.0 / live_rows + 1.0 / reference_rows)


def population_stability_index(live: np.ndarray, reference: np.ndarray) -> float:
    """Smoothed PSI of two count vectors over the same bins: sum((a - e) * ln(a / e)).

    Each bin gets PSI_PSEUDO_COUNT extra observations on both sides, so empty bins give a
    finite value; the result is never negative, NaN or infinite, and 0.0 for equal counts
    (equal shares from samples of different sizes give a value near 0, not exactly 0).
    """
    live = np.asarray(live, dtype=float)
    reference = np.asarray(reference, dtype=float)
    if live.size == 0:
        return 0.0
    pad = PSI_PSEUDO_COUNT * live.size
    actual = (live + PSI_PSEUDO_COUNT) / (live.sum() + pad)
    expected = (reference + PSI_PSEUDO_COUNT) / (reference.sum() + pad)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _compare(live: np.ndarray, reference: np.ndarray, *, ordered: bool) -> _Comparison:
    """Two-sample chi-square homogeneity test of two count vectors over the same bins."""
    # Bins empty in both samples carry no information and would divide by zero.
    keep = (live + reference) > 0
    live, reference = live[keep], reference[keep]
    psi = population_stability_index(live, reference)
    if live.size < 2:
        # Both samples sit entirely in the same single bin: nothing can differ.
        return _Comparison(0.0, 1.0, 0, exact=False, psi=psi, psi_bins=int(live.size))
    groups = _merge_sparse(live, reference, ordered=ordered)
    if len(groups) >= 2:
        merged_live = np.array([live[group].sum() for group in groups])
        merged_reference = np.array([reference[group].sum() for group in groups])
        statistic = _pearson(merged_live, merged_reference)
        dof = len(groups) - 1
        p_value = float(stats.chi2.sf(statistic, dof))
        return _Comparison(statistic, p_value, dof, exact=False, psi=psi, psi_bins=live.size)
    # Too few counts outside the dominant bin for the chi-square approximation: test "dominant
    # bin versus the rest" exactly (Fisher), which stays valid however small the counts are.
    main = int(np.argmax(live + reference))
    table_live = np.array([live[main], live.sum() - live[main]])
    table_reference = np.array([reference[main], reference.sum() - reference[main]])
    table = np.array([table_live, table_reference]).astype(np.int64)
    p_value = float(stats.fisher_exact(table).pvalue)
    statistic = _pearson(table_live, table_reference)
    return _Comparison(statistic, min(p_value, 1.0), 1, exact=True, psi=psi, psi_bins=live.size)


def _merge_sparse(live: np.ndarray, reference: np.ndarray, *, ordered: bool) -> list[list[int]]:
    """Group bins so every expected count of the 2 x k table reaches MIN_EXPECTED.

    Only the pooled bin totals decide the grouping: the test is conditional on them, so the
    merging does not bias it under no drift. Ordered bins merge with neighbours; unordered
    ones pool their sparse cells into one "rare" group.
    """
    total = live.sum() + reference.sum()
    # The smaller sample has the smaller expected count in every bin.
    expected = min(live.sum(), reference.sum()) * (live + reference) / total
    if ordered:
        groups: list[list[int]] = []
        current: list[int] = []
        mass = 0.0
        for index, value in enumerate(expected):
            current.append(index)
            mass += value
            if mass >= MIN_EXPECTED:
                groups.append(current)
                current, mass = [], 0.0
        if current:
            # A sparse tail joins its neighbour instead of forming an under-filled cell.
            if groups:
                groups[-1].extend(current)
            else:
                groups.append(current)
        return groups
    kept = [[index] for index in range(expected.size) if expected[index] >= MIN_EXPECTED]
    rare = [index for index in range(expected.size) if expected[index] < MIN_EXPECTED]
    if rare:
        if sum(expected[rare]) >= MIN_EXPECTED or not kept:
            kept.append(rare)
        else:
            smallest = min(kept, key=lambda group: float(expected[group].sum()))
            smallest.extend(rare)
    return kept


def _pearson(live: np.ndarray, reference: np.ndarray) -> float:
    """Pearson's X^2 for the 2 x k table with rows `live` and `reference` (no empty columns)."""
    column = live + reference
    total = column.sum()
    expected_live = live.sum() * column / total
    expected_reference = reference.sum() * column / total
    statistic = np.sum((live - expected_live) ** 2 / expected_live) + np.sum(
        (reference - expected_reference) ** 2 / expected_reference
    )
    return float(statistic)


def _result(
    name: str,
    kind: str,
    comparison: _Comparison,
    *,
    live_n: int,
    reference_n: int,
    alpha: float,
    null_share: float,
    unseen_rate: float | None,
) -> FeatureDrift:
    threshold = psi_threshold(
        bins=comparison.psi_bins, live_rows=live_n, reference_rows=reference_n, alpha=alpha
    )
    drifted = comparison.p_value < alpha
    method = "exact test" if comparison.exact else f"chi-square, {comparison.dof} df"
    if comparison.dof == 0:
        verdict = "all values fall in the single reference bin"
    elif drifted:
        verdict = f"distribution shifted (p={comparison.p_value:.3g} < {alpha:g}, {method})"
    else:
        verdict = f"no significant shift (p={comparison.p_value:.3g}, {method})"
    parts = [f"{verdict} over {live_n} rows"]
    if threshold is not None:
        parts.append(f"PSI {comparison.psi:.3g} vs calibrated threshold {threshold:.3g}")
    if unseen_rate:
        parts.append(f"{unseen_rate:.1%} of values unseen in the reference")
    if null_share:
        parts.append(f"live null share {null_share:.1%}")
    return FeatureDrift(
        feature=name,
        kind=kind,
        status=DRIFT if drifted else OK,
        psi=comparison.psi,
        statistic=comparison.statistic,
        p_value=comparison.p_value,
        threshold=threshold,
        window_rows=live_n,
        unseen_rate=unseen_rate,
        detail="; ".join(parts) + ".",
        dof=comparison.dof,
    )


def _insufficient(name: str, kind: str, rows: int, reason: str) -> FeatureDrift:
    return FeatureDrift(
        feature=name,
        kind=kind,
        status=INSUFFICIENT,
        psi=None,
        statistic=None,
        p_value=None,
        threshold=None,
        window_rows=rows,
        unseen_rate=None,
        detail=f"not tested: {reason}.",
    )


def _too_few(total: int, present: int, *, min_rows: int, null_share: float) -> str | None:
    if total == 0:
        return "the window is empty"
    if present == 0:
        return f"all {total} live values are null"
    if present < min_rows:
        return (
            f"only {present} non-null live values (at least {min_rows} needed); "
            f"live null share {null_share:.1%}"
        )
    return None


def _holm(pvalues: list[tuple[str, float]], family_alpha: float) -> list[str]:
    """Names rejected by Holm's step-down procedure at `family_alpha`."""
    ordered = sorted(pvalues, key=lambda item: item[1])
    rejected: list[str] = []
    for rank, (name, p_value) in enumerate(ordered):
        if p_value >= family_alpha / (len(ordered) - rank):
            break
        rejected.append(name)
    return rejected


def _reference_count(ref: Mapping[str, Any], reference_rows: int) -> int:
    """Non-null reference rows: the profile's shares are taken over these rows only."""
    if reference_rows < 0:
        raise ValueError(f"reference_rows must be non-negative, got {reference_rows}")
    null_rate = float(ref.get("null_rate", 0.0))
    return round(reference_rows * (1.0 - null_rate))


def _check_settings(*, alpha: float, min_rows: int) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if min_rows < 1:
        raise ValueError(f"min_rows must be at least 1, got {min_rows}")


def _as_1d(values: Column, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=object)
    if array.ndim != 1:
        raise ValueError(f"column {name!r} must be one-dimensional, got shape {array.shape}")
    return array


def _as_float(values: Column | None, name: str) -> np.ndarray:
    """Values as a 1-D float array, with None and pandas' missing markers as NaN."""
    if values is None:
        return np.empty(0)
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        # Object columns holding pd.NA refuse a bulk cast; convert one value at a time.
        items = _as_1d(values, name)
        try:
            array = np.array([np.nan if _is_null(item) else float(item) for item in items])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"column {name!r} is not numeric: {exc}") from exc
    if array.ndim != 1:
        raise ValueError(f"column {name!r} must be one-dimensional, got shape {array.shape}")
    return array


def _is_null(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float | np.floating):
        return math.isnan(value)
    try:
        # NaN-like objects (NaT, Decimal NaN) are the ones unequal to themselves.
        return bool(value != value)
    except (TypeError, ValueError):
        # pandas.NA refuses to become a bool; it is a missing marker all the same.
        return True


def _json_float(value: float | None) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None
