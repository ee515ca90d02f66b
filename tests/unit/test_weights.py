"""Row weights from a contract column: intake checks them, every fit weighs by them, the
scores and the API ignore them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from champion.service.validation import validate_instances
from champion.training.checks import validate_batch
from champion.training.config import Contract
from champion.training.demo.simulate import agrawal_frame
from champion.training.errors import ConfigError
from champion.training.evaluation import paired_evaluation
from champion.training.pipeline import (
    Candidate,
    build_pipeline,
    fit_rows,
    prepare_features,
    sample_weights,
)
from champion.training.tuning import cross_validate, splits
from tests.unit.conftest import make_contract, small_raw_contract

LOGISTIC = Candidate("logistic", {"C": 1.0})


@pytest.fixture
def contract(tmp_path: Path) -> Contract:
    raw = small_raw_contract()
    raw["weight"] = "w"
    return make_contract(tmp_path, raw)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    frame = agrawal_frame(300, function=2, seed=4, label_noise=0.05)
    frame["w"] = np.where(np.arange(300) % 3 == 0, 0.0, 1.0)
    return frame


def test_a_zero_weight_row_counts_as_absent_in_a_fit(contract, frame):
    """Weights reach the estimator: weight 0 gives the model fitted without those rows."""
    X, y = prepare_features(frame, contract), frame["approved"].to_numpy()
    w = sample_weights(frame, contract)
    assert w is not None
    weighted = fit_rows(build_pipeline(contract, LOGISTIC, seed=0), X, y, weights=w)
    # The scaler and imputer see every row; the model's own fit is what the weights change.
    kept = w > 0
    coef = weighted.named_steps["model"].coef_
    plain = fit_rows(build_pipeline(contract, LOGISTIC, seed=0), X, y)
    assert not np.allclose(coef, plain.named_steps["model"].coef_)
    Z = weighted[:-1].transform(X)
    alone = LogisticRegression(max_iter=2000, C=1.0).fit(Z[kept], y[kept])
    np.testing.assert_allclose(coef, alone.coef_, rtol=1e-3, atol=1e-4)


def test_cross_validation_and_the_gate_fit_with_the_weights(contract, frame):
    X, y = prepare_features(frame, contract), frame["approved"].to_numpy()
    w = sample_weights(frame, contract)
    folds = splits(contract, y, seed=0)
    with_w = cross_validate(contract, LOGISTIC, X, y, folds, seed=0, weights=w)
    without = cross_validate(contract, LOGISTIC, X, y, folds, seed=0)
    assert with_w["roc_auc"] != without["roc_auc"]
    fresh = np.arange(len(y)) >= 200
    champion = build_pipeline(contract, LOGISTIC, seed=0).fit(X[:200], y[:200])
    kwargs = {"contract": contract, "challenger": LOGISTIC, "champion": champion}
    a = paired_evaluation(X, y, fresh, weights=w, **kwargs)
    b = paired_evaluation(X, y, fresh, **kwargs)
    assert a.challenger["roc_auc"] != b.challenger["roc_auc"]
    assert a.champion == b.champion  # the deployed champion is scored as it is


def test_intake_refuses_negative_or_missing_weights(contract, frame):
    bad = frame.copy()
    bad.loc[0, "w"] = -1.0
    clean, report = validate_batch(bad, contract)
    assert clean is None and any("weights must be finite numbers >= 0" in r for r in report.reasons)
    clean, report = validate_batch(frame.drop(columns="w"), contract)
    assert clean is None and any("'w'" in r for r in report.reasons)
    clean, report = validate_batch(frame, contract)
    assert report.accepted and clean is not None and "w" in clean.columns


def test_the_api_accepts_and_drops_a_weight_sent_with_the_features(contract, frame):
    row = {k: (v.item() if hasattr(v, "item") else v) for k, v in frame.iloc[0].items()}
    row.pop("event_time")
    batch = validate_instances({"instances": [row]}, contract=contract, max_rows=1)
    assert "w" not in batch.columns


def test_a_weight_column_that_is_also_a_feature_is_refused(tmp_path):
    raw = small_raw_contract()
    raw["weight"] = "salary"
    with pytest.raises(ConfigError, match="weight: 'salary'"):
        make_contract(tmp_path, raw)
