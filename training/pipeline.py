"""The one scikit-learn Pipeline (encode, optional PCA, estimator): tuned, registered, served."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer, TransformedTargetRegressor
from sklearn.decomposition import PCA
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler, TargetEncoder

from champion.training.config import Contract
from champion.training.encoding import boolean_codes, ordinal_codes

MISSING_CATEGORY = "__missing__"


@dataclass(frozen=True)
class Candidate:
    """One point of the search space: an estimator family, its parameters, and PCA components.

    `threshold` (binary classification) is decided after the search (`training.threshold`):
    the positive class is predicted where its probability is at least this; None: the most
    probable class.
    """

    family: str
    params: Mapping[str, Any] = field(default_factory=dict)
    components: int = 0
    threshold: float | None = None

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "family": self.family,
            "params": dict(self.params),
            "components": self.components,
        }
        if self.threshold is not None:
            body["threshold"] = self.threshold
        return json.dumps(body, sort_keys=True, default=_jsonable)

    @classmethod
    def from_json(cls, text: str) -> Candidate:
        raw = json.loads(text)
        threshold = raw.get("threshold")
        return cls(
            raw["family"],
            dict(raw.get("params", {})),
            int(raw.get("components", 0)),
            None if threshold is None else float(threshold),
        )

    def label(self) -> str:
        params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(self.params.items()))
        pca = f", pca={self.components}" if self.components else ""
        cut = f", threshold={self.threshold:.3g}" if self.threshold is not None else ""
        return f"{self.family}({params}{pca}{cut})"


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {value!r}")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _estimator(contract: Contract, candidate: Candidate, seed: int) -> Any:
    params = dict(candidate.params)
    # A pipeline option searched like a parameter (a regression family's space may list
    # it): "log1p" fits log(1 + y) and predicts exp(.) - 1, for skewed positive targets.
    transform = params.pop("target_transform", None)
    model = _family(contract, candidate.family, params, seed)
    if transform in (None, "none"):
        return model
    if transform != "log1p" or contract.task != "regression":
        raise ValueError(f"target_transform {transform!r}: regression takes 'none' or 'log1p'")
    # check_inverse off: expm1 inverts log1p exactly; the check only costs a refit sample.
    return TransformedTargetRegressor(
        regressor=model, func=np.log1p, inverse_func=np.expm1, check_inverse=False
    )


def _family(contract: Contract, family: str, params: dict[str, Any], seed: int) -> Any:
    classification = contract.task == "classification"
    match family:
        case "logistic":
            return LogisticRegression(max_iter=2000, random_state=seed, **params)
        case "linear":
            return Ridge(random_state=seed, **params)
        case "random_forest":
            cls = RandomForestClassifier if classification else RandomForestRegressor
            return cls(random_state=seed, n_jobs=1, **params)
        case "hist_gradient_boosting":
            hgb = (
                HistGradientBoostingClassifier if classification else HistGradientBoostingRegressor
            )
            return hgb(random_state=seed, **params)
    raise ValueError(f"unknown estimator family {family!r}")


def build_pipeline(contract: Contract, candidate: Candidate, *, seed: int) -> Pipeline:
    """Build the unfitted pipeline for one candidate; seeds are fixed so fits are repeatable."""
    onehot = [n for n in contract.categorical if contract.features[n].encoding == "onehot"]
    target = [n for n in contract.categorical if contract.features[n].encoding == "target"]
    declared = [n for n in onehot if contract.features[n].values is not None]
    learned = [n for n in onehot if contract.features[n].values is None]
    transformers: list[tuple[str, Any, list[str]]] = []
    # Ordinal (position) and boolean (1/0) features arrive as numbers: `prepare_features`.
    if contract.encoded_numeric:
        numeric = Pipeline(
            [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
        )
        transformers.append(("numeric", numeric, contract.encoded_numeric))
    # Missing values become their own level; declared domains keep the encoded width stable
    # across retrains, and unknown levels encode as all zeros instead of failing.
    for name, cols, categories in (
        ("declared", declared, [list(contract.features[n].values or ()) for n in declared]),
        ("learned", learned, "auto"),
    ):
        if cols:
            encode = Pipeline(
                [
                    ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
                    (
                        "onehot",
                        OneHotEncoder(
                            categories=categories, handle_unknown="ignore", sparse_output=False
                        ),
                    ),
                ]
            )
            transformers.append((name, encode, cols))
    if target:
        # Cross-fitted in fit (each row encoded by the other folds' means), all rows after.
        encode = Pipeline(
            [
                ("impute", SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY)),
                ("target", TargetEncoder(random_state=seed)),
            ]
        )
        transformers.append(("target", encode, target))
    features = ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)
    reduce: Any = (
        PCA(n_components=candidate.components, random_state=seed)
        if candidate.components
        else "passthrough"
    )
    return Pipeline(
        [
            ("features", features),
            ("reduce", reduce),
            ("model", _estimator(contract, candidate, seed)),
        ]
    )


def sample_weights(frame: pd.DataFrame, contract: Contract) -> np.ndarray | None:
    """The contract's `weight` column as float64 (None without one): what fits weigh rows by."""
    if contract.weight is None:
        return None
    return pd.to_numeric(frame[contract.weight], errors="raise").to_numpy(dtype="float64")


def fit_rows(
    pipeline: Any,
    X: pd.DataFrame,
    y: np.ndarray,
    rows: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> Any:
    """Fit `pipeline` on `rows` (every row when None), weighing them by `weights` if given."""
    if rows is not None:
        X, y = X.iloc[rows], y[rows]
        weights = None if weights is None else weights[rows]
    params = {} if weights is None else {"model__sample_weight": weights}
    return pipeline.fit(X, y, **params)


def prepare_features(frame: pd.DataFrame, contract: Contract) -> pd.DataFrame:
    """Select the contract's features in order with the dtypes the pipeline was fitted on.

    Ordinal values become their position in the declared `values` and booleans 1/0; an
    unknown ordinal value or a non-boolean is missing (imputed), as a bad number is.
    """
    out = pd.DataFrame(index=frame.index)
    for name in contract.numeric:
        out[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    for name in contract.ordinal:
        out[name] = ordinal_codes(frame[name], contract.features[name].values or ())[0]
    for name in contract.boolean:
        out[name] = boolean_codes(frame[name])[0]
    for name in contract.categorical:
        col = frame[name].astype("object")
        out[name] = col.where(col.notna(), np.nan)
    return out[list(contract.features)]
