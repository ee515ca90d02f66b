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
    contract: Contract, data: Any
) -> None:
    pipeline = _fit(contract, data, Candidate("hist_gradient_boosting", {"max_iter": 10}))
    result = compile_pipeline(pipeline, contract, data[2], seed=0)
    if result.runtime == RUNTIME_ONNX:  # a converter release that handles it: still on parity
        assert result.max_diff is not None and result.max_diff <= PARITY_TOLERANCE
        return
    assert result.runtime == RUNTIME_SKLEARN
    assert result.onnx is None and result.reason


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


def test_float32_splits_that_disagree_fall_through_to_float64(
    contract: Contract, data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each input type is tried on parity; a failing one is skipped, the next one used."""
    import champion.training.compile as compiled_module

    real = compiled_module.parity
    calls: list[Any] = []

    def first_fails(model: CompiledModel, *args: Any) -> float:
        calls.append(model.dtype)
        if model.dtype is np.float32:
            raise NotCompilable("outputs differ (forced)")
        return real(model, *args)

    monkeypatch.setattr(compiled_module, "parity", first_fails)
    pipeline = _fit(contract, data, Candidate("logistic", {"C": 2.0}))
    result = compile_pipeline(pipeline, contract, data[2])
    assert calls == [np.float32, np.float64]
    assert result.runtime == RUNTIME_ONNX and result.reason.startswith("float64")


def test_without_rows_to_check_there_is_no_compiled_form(contract: Contract, data: Any) -> None:
    pipeline = _fit(contract, data, Candidate("logistic", {}))
    result = compile_pipeline(pipeline, contract, data[2].iloc[:0])
    assert result.runtime == RUNTIME_SKLEARN and "parity" in result.reason
