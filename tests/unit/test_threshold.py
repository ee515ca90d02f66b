"""The binary decision threshold: chosen out of fold, carried by the candidate, applied by
the gate and by serving; probabilities never change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from champion.service.slot import FrameInputs, ModelSlot
from champion.training.artifacts import TAG_CANDIDATE
from champion.training.config import Contract
from champion.training.demo.simulate import agrawal_frame
from champion.training.errors import ConfigError
from champion.training.evaluation import paired_evaluation
from champion.training.metrics import apply_threshold, model_outputs
from champion.training.pipeline import Candidate, build_pipeline, prepare_features
from champion.training.threshold import choose, objective, tune_threshold, tuning_rows
from tests.fakes import FakeRegistry
from tests.unit.conftest import make_contract, small_raw_contract

LOGISTIC = Candidate("logistic", {"C": 1.0})


def _contract(tmp_path: Path, primary: str = "f1", **decision: Any) -> Contract:
    raw = small_raw_contract()
    raw["metrics"]["primary"] = primary
    raw["metrics"]["guardrails"] = {}
    if decision:
        raw["decision"] = decision
    return make_contract(tmp_path, raw)


def _rare_positives(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels with 10 % positives and probabilities that rank them well but sit below 0.5."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(int)
    p = np.clip(0.05 + 0.3 * y + rng.normal(0, 0.08, n), 0.001, 0.999)
    return y, np.column_stack([1 - p, p])


def test_the_chosen_threshold_maximises_f1_over_the_grid(tmp_path):
    """It picks the threshold scikit-learn's f1 rates best, well below 0.5 here."""
    contract = _contract(tmp_path)
    y, proba = _rare_positives()
    choice = choose(y, proba, [0, 1], contract=contract, objective_name="f1")

    brute = max(
        f1_score(y, (proba[:, 1] >= t).astype(int), zero_division=0) for t in np.unique(proba[:, 1])
    )
    assert choice.score == pytest.approx(brute)
    assert choice.threshold < 0.5 and choice.score > choice.default_score
    assert choice.default_score == pytest.approx(
        f1_score(y, (proba[:, 1] >= 0.5).astype(int), zero_division=0)
    )


def test_a_cost_ratio_lowers_the_threshold_as_misses_get_dearer(tmp_path):
    """Misses costing more push the threshold down; the cost it reports is the real one."""
    y, proba = _rare_positives(seed=1)
    cheap = choose(
        y, proba, [0, 1], contract=_contract(tmp_path, cost_ratio=1.0), objective_name="cost"
    )
    dear = choose(
        y, proba, [0, 1], contract=_contract(tmp_path, cost_ratio=20.0), objective_name="cost"
    )
    assert dear.threshold <= cheap.threshold
    pred = (proba[:, 1] >= dear.threshold).astype(int)
    cost = (20 * np.sum((y == 1) & (pred == 0)) + np.sum((y == 0) & (pred == 1))) / len(y)
    assert dear.score == pytest.approx(cost)


def test_the_threshold_applies_to_the_declared_positive_class(tmp_path):
    """With string classes and the first one positive, it thresholds that class's column."""
    proba = np.array([[0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    pred = apply_threshold(proba, ["bad", "good"], "bad", 0.25)
    assert pred.tolist() == ["bad", "bad", "good"]


def test_what_the_threshold_is_tuned_on(tmp_path):
    """auto: the primary when it depends on the threshold, the cost when set, else nothing;
    'tuned' with nothing sensible to tune on is a contract error naming the way out."""
    assert objective(_contract(tmp_path, "f1")) == "f1"
    assert objective(_contract(tmp_path, "mcc")) == "mcc"
    assert objective(_contract(tmp_path, "roc_auc")) is None
    assert objective(_contract(tmp_path, "roc_auc", cost_ratio=3.0)) == "cost"
    assert objective(_contract(tmp_path, "f1", threshold=0.3)) is None
    for primary in ("roc_auc", "precision"):
        with pytest.raises(ConfigError, match=r"decision\.threshold.*cost_ratio"):
            objective(_contract(tmp_path, primary, threshold="tuned"))


@pytest.mark.parametrize(
    ("decision", "task_change", "message"),
    [
        ({"threshold": 0.3, "cost_ratio": 2.0}, None, "exclude each other"),
        ({"threshold": 1.0}, None, "decision.threshold"),
        ({"threshold": "sometimes"}, None, "decision.threshold"),
        ({"cost_ratio": 2.0}, "multiclass", "applies to a binary task"),
    ],
)
def test_a_decision_the_task_cannot_take_is_refused(tmp_path, decision, task_change, message):
    raw = small_raw_contract()
    raw["decision"] = decision
    if task_change == "multiclass":
        raw["classes"] = [0, 1, 2]
        raw["metrics"]["guardrails"] = {}
    with pytest.raises(ConfigError, match=message):
        make_contract(tmp_path, raw)


def test_tuning_uses_the_older_rows_when_a_champion_is_compared(tmp_path):
    """The gate's test rows (the fresh ones) never choose the challenger's threshold."""
    contract = _contract(tmp_path)
    y = np.array([0, 1] * 100)
    fresh = np.zeros(200, dtype=bool)
    fresh[150:] = True
    assert tuning_rows(contract, y, fresh).tolist() == list(range(150))
    assert tuning_rows(contract, y, None).tolist() == list(range(200))
    fresh[10:] = True  # 10 older rows: too few, every row
    assert len(tuning_rows(contract, y, fresh)) == 200


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return agrawal_frame(600, function=1, seed=11, label_noise=0.05)


def test_tune_threshold_scores_out_of_fold_and_beats_half_on_f1(tmp_path, frame):
    """On a real fit, the tuned threshold's out-of-fold f1 is at least 0.5's."""
    contract = _contract(tmp_path)
    X = prepare_features(frame, contract)
    y = frame["approved"].to_numpy()
    choice = tune_threshold(contract, LOGISTIC, X, y)
    assert choice is not None and choice.objective == "f1" and choice.rows == len(y)
    assert 0.0 < choice.threshold < 1.0
    assert choice.score >= choice.default_score
    fixed = tune_threshold(_contract(tmp_path, threshold=0.3), LOGISTIC, X, y)
    assert fixed is not None and fixed.threshold == 0.3 and fixed.rows == 0
    assert tune_threshold(_contract(tmp_path, "roc_auc"), LOGISTIC, X, y) is None


def test_the_gate_scores_each_side_at_its_own_threshold(tmp_path, frame):
    """A challenger whose threshold predicts every row positive scores the positive rate as
    accuracy; the champion without one predicts its most probable class."""
    contract = _contract(tmp_path, "accuracy")
    X = prepare_features(frame, contract)
    y = frame["approved"].to_numpy()
    fresh = np.zeros(len(y), dtype=bool)
    fresh[300:] = True
    boosting = Candidate("hist_gradient_boosting", {"max_iter": 30})
    champion = build_pipeline(contract, boosting, seed=0).fit(X.iloc[:300], y[:300])
    paired = paired_evaluation(
        X,
        y,
        fresh,
        contract=contract,
        challenger=Candidate("logistic", {"C": 1.0}, threshold=0.0),
        champion=champion,
    )
    positive_rate = np.mean(y[300:] == 1)
    assert np.mean(paired.challenger["accuracy"]) == pytest.approx(positive_rate, abs=1e-9)
    assert np.mean(paired.champion["accuracy"]) > positive_rate + 0.1


def test_a_registered_threshold_decides_the_served_class(tmp_path, frame):
    """Serving applies the candidate's threshold to the positive class; the probabilities are
    the model's own, and a version without one predicts the most probable class."""
    contract = _contract(tmp_path)
    X = prepare_features(frame, contract)
    y = frame["approved"].to_numpy()
    pipeline = build_pipeline(contract, LOGISTIC, seed=0).fit(X, y)
    registry = FakeRegistry()
    with_cut = Candidate("logistic", {"C": 1.0}, threshold=0.2)
    registry.add_version(pipeline, example=X.head(5), tags={TAG_CANDIDATE: with_cut.to_json()})
    registry.add_version(pipeline, example=X.head(5), tags={TAG_CANDIDATE: LOGISTIC.to_json()})
    slot = ModelSlot(registry=registry, contract=contract, cache_dir=tmp_path / "cache")
    answers = {}
    for version in ("1", "2"):
        registry.set_alias("champion", version)
        assert slot.refresh()
        assert slot.current is not None
        answers[version] = slot.current.predict(FrameInputs(X))
    (cut_pred, cut_proba), (plain_pred, plain_proba) = answers["1"], answers["2"]
    np.testing.assert_allclose(cut_proba, plain_proba)
    np.testing.assert_array_equal(cut_pred, np.where(cut_proba[:, 1] >= 0.2, 1, 0))
    np.testing.assert_array_equal(plain_pred, pipeline.predict(X))
    assert (cut_pred == 1).sum() > (plain_pred == 1).sum()
    assert slot.current.threshold is None
    same, _ = model_outputs(pipeline, X, threshold=0.2)
    np.testing.assert_array_equal(same, cut_pred)


def test_a_candidate_keeps_its_threshold_through_json():
    assert (
        Candidate.from_json(Candidate("logistic", {"C": 2.0}, 2, 0.37).to_json()).threshold == 0.37
    )
    assert "threshold" not in LOGISTIC.to_json()
    assert "threshold=0.37" in Candidate("logistic", {}, threshold=0.37).label()
