"""The compiled serving form: NumPy encoding + ONNX estimator, used only on parity."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from champion.service.runtime import (
    PARITY_TOLERANCE,
    RUNTIME_ONNX,
    RUNTIME_SKLEARN,
    CompiledModel,
    Encoder,
    NotCompilable,
    frame_columns,
    parity,
    parity_frame,
    parity_tolerance,
)
from champion.training.compile import compile_pipeline
from champion.training.config import Contract
from champion.training.demo.simulate import agrawal_frame
from champion.training.pipeline import Candidate, build_pipeline, prepare_features
from tests.unit.conftest import make_contract, raw_contract

FOREST = Candidate("random_forest", {"n_estimators": 30, "max_depth": 10, "min_samples_leaf": 2})


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory) -> Contract:
    return make_contract(tmp_path_factory.mktemp("compiled"), raw_contract())


@pytest.fixture(scope="module")
def data(contract: Contract) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    train = agrawal_frame(1500, function=2, seed=3)
    held = agrawal_frame(400, function=2, seed=4)
    return (
        prepare_features(train, contract),
        train[contract.target].to_numpy(),
        prepare_features(held, contract),
    )


def _fit(contract: Contract, data: Any, candidate: Candidate) -> Any:
    X, y, _ = data
    return build_pipeline(contract, candidate, seed=0).fit(X, y)


@pytest.mark.parametrize("components", [0, 4])
def test_encoding_replays_the_pipeline_exactly(
    contract: Contract, data: Any, components: int
) -> None:
    pipeline = _fit(contract, data, Candidate("logistic", {"C": 1.0}, components))
    rows = parity_frame(data[2], contract, seed=1)
    names = list(contract.features)
    got = Encoder.from_pipeline(pipeline).encode(frame_columns(rows, names), len(rows))
    want = pipeline[:-1].transform(rows)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_single_row_path_equals_the_batch_path_bit_for_bit(contract: Contract, data: Any) -> None:
    """Single rows take a plain-Python path; it must give the very same floats, row by row."""
    pipeline = _fit(contract, data, Candidate("logistic", {"C": 1.0}))
    encoder = Encoder.from_pipeline(pipeline)
    rows = parity_frame(data[2].iloc[:60], contract, seed=3)
    names = list(contract.features)
    batch = encoder.encode(frame_columns(rows, names), len(rows))
    for i in range(len(rows)):
        one = encoder.encode(frame_columns(rows.iloc[[i]], names), 1)
        assert np.array_equal(one[0], batch[i]), i


def test_parity_rows_hold_missing_values_and_unseen_categories(
    contract: Contract, data: Any
) -> None:
    rows = parity_frame(data[2], contract, seed=1)
    for name in contract.features:
        assert rows[name].isna().any(), name
    for name in contract.categorical:
        declared = set(contract.features[name].values or ())
        assert (~rows[name].dropna().isin(declared)).any(), name


@pytest.mark.parametrize(
    "candidate",
    [FOREST, Candidate("logistic", {"C": 0.5}), Candidate("random_forest", {}, 3)],
    ids=["forest", "logistic", "forest-pca"],
)
def test_a_convertible_pipeline_serves_from_onnx_with_the_same_answers(
    contract: Contract, data: Any, candidate: Candidate
) -> None:
    pipeline = _fit(contract, data, candidate)
    result = compile_pipeline(pipeline, contract, data[2], seed=0)
    assert result.runtime == RUNTIME_ONNX, result.reason
    assert result.onnx is not None and result.sha256 is not None
    assert result.max_diff is not None and result.max_diff <= PARITY_TOLERANCE
    compiled = CompiledModel(Encoder.from_pipeline(pipeline), result.onnx, classes=[0, 1])
    rows = parity_frame(data[2], contract, seed=9)
    got = compiled.run(frame_columns(rows, list(contract.features)), len(rows))
    want = pipeline.predict_proba(rows)
    assert np.abs(got - want).max() <= PARITY_TOLERANCE
    assert np.array_equal(got.argmax(axis=1), want.argmax(axis=1))


def test_an_unconvertible_estimator_falls_back_to_sklearn_with_a_reason(
    contract: Contract, data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It serves with scikit-learn, saying why, when the converter fails on both input types."""
    import champion.training.compile as compile_module

    def gap(*args: Any) -> bytes:
        raise RuntimeError("no converter for this estimator")

    monkeypatch.setattr(compile_module, "_convert", gap)
    pipeline = _fit(contract, data, Candidate("hist_gradient_boosting", {"max_iter": 10}))
    result = compile_pipeline(pipeline, contract, data[2], seed=0)
    assert result.runtime == RUNTIME_SKLEARN and result.onnx is None
    assert "no converter for this estimator" in result.reason


def _regression(contract: Contract) -> tuple[Contract, Any]:
    """The demo contract as a regression on a price-like target (values 100 to 1,600)."""
    raw = raw_contract()
    raw["task"] = "regression"
    del raw["classes"]
    raw["metrics"] = {"primary": "rmse", "guardrails": {}}
    raw["search"]["families"] = ["linear", "random_forest", "hist_gradient_boosting"]
    raw["search"]["space"].pop("logistic", None)
    reg = make_contract(contract.data.landing_zone.parent, raw)
    frames = []
    for n, seed in ((1500, 3), (400, 4)):
        frame = agrawal_frame(n, function=2, seed=seed)
        frame[reg.target] = frame["loan"] / 300 + frame["age"] * 3 + 100.0
        frames.append(frame)
    X, held = (prepare_features(f, reg) for f in frames)
    return reg, (X, frames[0][reg.target].to_numpy(), held)


FAMILIES = [
    ("classification", Candidate("logistic", {"C": 0.5})),
    ("classification", FOREST),
    ("classification", Candidate("hist_gradient_boosting", {"max_iter": 40})),
    ("regression", Candidate("linear", {})),
    ("regression", FOREST),
    ("regression", Candidate("hist_gradient_boosting", {"max_iter": 40})),
]


@pytest.mark.parametrize(
    ("task", "candidate"), FAMILIES, ids=[f"{t}-{c.family}" for t, c in FAMILIES]
)
def test_every_family_the_search_can_pick_serves_compiled(
    contract: Contract, data: Any, task: str, candidate: Candidate
) -> None:
    """It compiles each family in both tasks, with the same answers as scikit-learn on
    held-out rows, missing values and unseen categories (probabilities within 1e-5 and the same
    class; regression within 1e-6 of the predictions' scale)."""
    chosen, rows_of = (contract, data) if task == "classification" else _regression(contract)
    pipeline = _fit(chosen, rows_of, candidate)
    result = compile_pipeline(pipeline, chosen, rows_of[2], seed=0)
    assert result.runtime == RUNTIME_ONNX, result.reason
    assert result.onnx is not None
    classes = list(pipeline.classes_) if task == "classification" else None
    compiled = CompiledModel(Encoder.from_pipeline(pipeline), result.onnx, classes=classes)
    rows = parity_frame(rows_of[2], chosen, seed=9)
    got = compiled.run(frame_columns(rows, list(chosen.features)), len(rows))
    if task == "classification":
        want = pipeline.predict_proba(rows)
        assert np.abs(got - want).max() <= PARITY_TOLERANCE
        assert np.array_equal(got.argmax(axis=1), want.argmax(axis=1))
    else:
        want = pipeline.predict(rows)
        scale = np.abs(want).max()
        assert scale > 100  # the relative rule is what is being tested
        assert np.abs(got - want).max() <= max(PARITY_TOLERANCE, 1e-6 * scale)


def test_regression_parity_is_relative_to_the_predictions_scale() -> None:
    """It allows 1e-6 of the largest prediction (at least 1e-5), and nothing more."""
    assert parity_tolerance(np.array([0.5, 0.2]), classification=False) == PARITY_TOLERANCE
    assert parity_tolerance(np.array([-3000.0, 20.0]), classification=False) == pytest.approx(3e-3)
    assert parity_tolerance(np.array([[0.2, 0.8]]), classification=True) == PARITY_TOLERANCE


def test_an_unknown_encoding_step_is_refused(contract: Contract, data: Any) -> None:
    pipeline = _fit(contract, data, Candidate("logistic", {}))
    pipeline.steps[1] = ("reduce", object())
    with pytest.raises(NotCompilable, match="reduction"):
        Encoder.from_pipeline(pipeline)
    result = compile_pipeline(pipeline, contract, data[2])
    assert result.runtime == RUNTIME_SKLEARN and "reduction" in result.reason


def test_parity_refuses_a_model_that_answers_differently(contract: Contract, data: Any) -> None:
    """The guard itself: an ONNX file of another fit must not pass as this pipeline."""
    pipeline = _fit(contract, data, FOREST)
    other = _fit(contract, data, Candidate("random_forest", {"n_estimators": 5, "max_depth": 3}))
    onnx = compile_pipeline(other, contract, data[2]).onnx
    assert onnx is not None
    wrong = CompiledModel(Encoder.from_pipeline(pipeline), onnx, classes=[0, 1])
    rows = parity_frame(data[2], contract, seed=2)
    with pytest.raises(NotCompilable, match="differ"):
        parity(wrong, pipeline, rows, list(contract.features))


def test_an_input_type_that_fails_parity_falls_through_to_the_next(
    contract: Contract, data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each input type is tried on parity; a failing one is skipped, the next one used."""
    import champion.training.compile as compiled_module

    real = compiled_module.parity
    calls: list[Any] = []

    def first_fails(model: CompiledModel, *args: Any) -> float:
        calls.append(model.dtype)
        if model.dtype is np.float64:
            raise NotCompilable("outputs differ (forced)")
        return real(model, *args)

    monkeypatch.setattr(compiled_module, "parity", first_fails)
    pipeline = _fit(contract, data, Candidate("logistic", {"C": 2.0}))
    result = compile_pipeline(pipeline, contract, data[2])
    assert calls == [np.float64, np.float32]
    assert result.runtime == RUNTIME_ONNX and result.reason.startswith("float32")


@pytest.mark.parametrize(
    ("candidate", "first"),
    [
        (FOREST, np.float32),
        (Candidate("hist_gradient_boosting", {"max_iter": 10}), np.float32),
        (Candidate("logistic", {}), np.float64),
    ],
    ids=["forest", "boosting", "logistic"],
)
def test_trees_try_float32_first_and_linear_models_float64(
    contract: Contract, data: Any, candidate: Candidate, first: type
) -> None:
    """It compiles trees in float32 (what their splits compare) and linear models in float64."""
    result = compile_pipeline(_fit(contract, data, candidate), contract, data[2], seed=0)
    assert result.runtime == RUNTIME_ONNX
    assert result.reason.startswith(np.dtype(first).name), result.reason


def test_without_rows_to_check_there_is_no_compiled_form(contract: Contract, data: Any) -> None:
    pipeline = _fit(contract, data, Candidate("logistic", {}))
    result = compile_pipeline(pipeline, contract, data[2].iloc[:0])
    assert result.runtime == RUNTIME_SKLEARN and "parity" in result.reason
