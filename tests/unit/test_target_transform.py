"""The log1p target transform: searched like a parameter, fitted through scikit-learn's
TransformedTargetRegressor, compiled (the regressor in ONNX, expm1 after it) and served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from champion.service.runtime import RUNTIME_ONNX, CompiledModel, Encoder, converted_model
from champion.service.validation import validate_instances
from champion.training.compile import compile_pipeline
from champion.training.config import Contract
from champion.training.demo.simulate import agrawal_frame
from champion.training.pipeline import Candidate, build_pipeline, prepare_features
from champion.training.tuning import tune
from tests.unit.conftest import make_contract, small_raw_contract


@pytest.fixture
def contract(tmp_path: Path) -> Contract:
    raw = small_raw_contract(
        families=["linear", "hist_gradient_boosting"],
        space={
            "linear": {
                "alpha": {"low": 0.1, "high": 10.0, "log": True},
                "target_transform": {"choices": ["none", "log1p"]},
            },
            "hist_gradient_boosting": {
                "max_iter": {"choices": [20]},
                "target_transform": {"choices": ["none", "log1p"]},
            },
        },
        strategy="grid",
        max_trials=8,
    )
    raw["task"] = "regression"
    raw["target"] = "price"
    del raw["classes"]
    raw["metrics"] = {"primary": "rmse"}
    raw["gate"]["floor"] = 1e9
    return make_contract(tmp_path, raw)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    """A skewed positive price: log-linear in salary and loan, with multiplicative noise."""
    frame = agrawal_frame(500, function=1, seed=12, label_noise=0.0)
    rng = np.random.default_rng(12)
    log_price = 1e-5 * frame["salary"] + 2e-6 * frame["loan"] + rng.normal(0, 0.3, len(frame))
    frame["price"] = np.exp(log_price) * 100
    return frame


@pytest.mark.parametrize("family", ["linear", "hist_gradient_boosting"])
def test_a_log1p_regressor_compiles_and_serves_its_predictions(contract, frame, family):
    X, y = prepare_features(frame, contract), frame["price"].to_numpy()
    params = {"alpha": 1.0} if family == "linear" else {"max_iter": 20}
    candidate = Candidate(family, params | {"target_transform": "log1p"})
    pipeline = build_pipeline(contract, candidate, seed=0).fit(X, y)
    inner, inverse = converted_model(pipeline)
    assert inverse == "expm1" and inner is pipeline.named_steps["model"].regressor_
    compiled = compile_pipeline(pipeline, contract, X.tail(100))
    assert compiled.runtime == RUNTIME_ONNX, compiled.reason
    assert compiled.onnx is not None
    model = CompiledModel(
        Encoder.from_pipeline(pipeline), compiled.onnx, classes=None, inverse=inverse
    )
    rows = [
        {k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
        for r in frame.head(30)[list(contract.features)].to_dict("records")
    ]
    batch = validate_instances({"instances": rows}, contract=contract, max_rows=30)
    want = pipeline.predict(X.head(30))
    assert (want > 0).all()
    np.testing.assert_allclose(model.run(batch.columns, batch.n), want, rtol=1e-5)
    # Without the inverse the compiled regressor would answer in log units.
    raw = CompiledModel(Encoder.from_pipeline(pipeline), compiled.onnx, classes=None)
    np.testing.assert_allclose(np.expm1(raw.run(batch.columns, batch.n)), want, rtol=1e-5)


def test_the_search_weighs_the_transform_like_any_parameter(contract, frame):
    """A grid over it scores both settings; on a log-linear price the log1p linear model wins."""
    X, y = prepare_features(frame, contract), frame["price"].to_numpy()
    result = tune(X, y, contract=contract, progress=False)
    linear = [t for t in result.trials if t.candidate.family == "linear" and t.complete]
    by_transform = {t.candidate.params["target_transform"] for t in linear}
    assert by_transform == {None, "log1p"}  # "none" in TOML is no value
    best_linear = min(linear, key=lambda t: t.mean)
    assert best_linear.candidate.params["target_transform"] == "log1p"


def test_log1p_is_refused_for_classification(tmp_path):
    contract = make_contract(tmp_path)
    with pytest.raises(ValueError, match="target_transform 'log1p'"):
        build_pipeline(contract, Candidate("logistic", {"target_transform": "log1p"}), seed=0)
