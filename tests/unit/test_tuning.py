"""Unit tests of the hyperparameter search, candidates and the model pipeline."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest

from champion.training import tuning
from champion.training.config import Contract
from champion.training.demo.simulate import agrawal_frame
from champion.training.errors import ConfigError
from champion.training.pipeline import Candidate, build_pipeline, prepare_features
from champion.training.tuning import TrialResult, family_defaults, metric_names, splits, tune
from tests.unit.conftest import make_contract, small_raw_contract

ROWS = 400


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return agrawal_frame(ROWS, function=1, seed=11, label_noise=0.05)


def _xy(frame: pd.DataFrame, contract: Contract) -> tuple[pd.DataFrame, np.ndarray]:
    return prepare_features(frame, contract), frame["approved"].to_numpy()


def _fingerprint(trials: tuple[TrialResult, ...]) -> list[tuple[Any, ...]]:
    return [
        (
            t.number,
            t.candidate.to_json(),
            t.fold_scores,
            dict(t.guardrail_scores),
            t.source,
            t.error,
        )
        for t in trials
    ]


@pytest.mark.parametrize("strategy", ["grid", "random", "bayes"])
def test_same_inputs_give_identical_trials(
    strategy: str, frame: pd.DataFrame, tmp_path: Path
) -> None:
    """It repeats the same candidates and fold scores for the same data, contract and seed."""
    contract = make_contract(tmp_path, strategy=strategy, max_trials=4)
    X, y = _xy(frame, contract)
    first = tune(X, y, contract=contract, progress=False)
    second = tune(X, y, contract=contract, progress=False)
    assert len(first.trials) == 4
    assert _fingerprint(first.trials) == _fingerprint(second.trials)
    assert first.best.number == second.best.number
    assert all(len(t.fold_scores) == 3 for t in first.trials)
    assert all(math.isfinite(s) for t in first.trials for s in t.fold_scores)


@pytest.mark.parametrize("strategy", ["random", "bayes"])
def test_another_seed_gives_other_candidates(
    strategy: str, frame: pd.DataFrame, tmp_path: Path
) -> None:
    """It draws other candidates for another seed, so the seed really drives the search."""
    X, y = _xy(frame, make_contract(tmp_path))
    runs = [
        tune(X, y, contract=make_contract(tmp_path, strategy=strategy, seed=s), progress=False)
        for s in (1, 2)
    ]
    first, second = ([t.candidate.to_json() for t in r.trials] for r in runs)
    assert first != second


def test_baseline_is_trial_zero_from_the_champion(frame: pd.DataFrame, tmp_path: Path) -> None:
    """It scores the champion's own candidate first, marked as coming from the champion."""
    contract = make_contract(tmp_path, strategy="random")
    X, y = _xy(frame, contract)
    baseline = Candidate("hist_gradient_boosting", {"max_iter": 15, "learning_rate": 0.1})
    result = tune(X, y, contract=contract, baseline=baseline, progress=False)
    first = result.trials[0]
    assert first.number == 0
    assert first.source == "champion"
    assert first.candidate == baseline
    assert {t.source for t in result.trials[1:]} == {"search"}


def test_baseline_of_a_family_outside_the_search_is_skipped(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    """It does not score a baseline whose family the contract no longer searches."""
    contract = make_contract(tmp_path, strategy="random")
    X, y = _xy(frame, contract)
    baseline = Candidate("random_forest", {"n_estimators": 5})
    result = tune(X, y, contract=contract, baseline=baseline, progress=False)
    assert all(t.source == "search" for t in result.trials)
    assert len(result.trials) == contract.search.max_trials


@pytest.mark.parametrize("strategy", ["grid", "random", "bayes"])
def test_max_trials_is_respected(strategy: str, frame: pd.DataFrame, tmp_path: Path) -> None:
    """It stops at max_trials, counting the baseline, and says the trial budget stopped it."""
    contract = make_contract(tmp_path, strategy=strategy, max_trials=2)
    X, y = _xy(frame, contract)
    seen: list[int] = []
    result = tune(
        X,
        y,
        contract=contract,
        baseline=Candidate("logistic", {"C": 1.0}),
        on_trial=lambda t: seen.append(t.number),
        progress=False,
    )
    assert len(result.trials) == 2
    assert seen == [0, 1]
    assert result.stopped_by == "trials"


class FakeClock:
    """A clock that moves only when told to (here: 100 s per finished trial)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, _trial: TrialResult) -> None:
        self.now += 100.0


def test_time_budget_stops_the_search_early(frame: pd.DataFrame, tmp_path: Path) -> None:
    """It stops with stopped_by "time" once max_seconds have passed, before max_trials."""
    contract = make_contract(tmp_path, strategy="random", max_trials=20, max_seconds=250)
    X, y = _xy(frame, contract)
    clock = FakeClock()
    result = tune(X, y, contract=contract, on_trial=clock.tick, clock=clock, progress=False)
    assert result.stopped_by == "time"
    assert len(result.trials) == 3
    assert result.seconds == pytest.approx(300.0)


def test_grid_enumerates_the_product_and_reports_exhaustion(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    """It scores every grid point once and stops with "exhausted" below max_trials."""
    contract = make_contract(tmp_path, strategy="grid", max_trials=50, grid_points=3)
    X, y = _xy(frame, contract)
    baseline = Candidate("logistic", {"C": 1.0})
    result = tune(X, y, contract=contract, baseline=baseline, progress=False)
    assert result.stopped_by == "exhausted"
    got = [(t.candidate.family, t.candidate.params) for t in result.trials]
    logistic = [{"C": c} for c in (0.1, 1.0, 10.0)]
    rates = np.geomspace(0.05, 0.3, 3)
    hgb = [
        {"learning_rate": lr, "max_iter": 15, "max_leaf_nodes": leaves}
        for lr in rates
        for leaves in (8, 16)
    ]
    expected = [("logistic", p) for p in logistic] + [("hist_gradient_boosting", p) for p in hgb]
    # The baseline (C=1) goes first and is not scored a second time by the grid.
    assert len(got) == len(expected) == 9
    assert got[0] == ("logistic", {"C": 1.0})
    remaining = [e for e in expected if e != ("logistic", {"C": 1.0})]
    for (family, params), (want_family, want) in zip(got[1:], remaining, strict=True):
        assert family == want_family
        assert params == pytest.approx(want)


def test_failing_candidate_is_a_failed_trial(frame: pd.DataFrame, tmp_path: Path) -> None:
    """It records a candidate that cannot fit as a failed trial and picks a working one."""
    contract = make_contract(tmp_path, strategy="random")
    X, y = _xy(frame, contract)
    bad = Candidate("logistic", {"C": -1})
    result = tune(X, y, contract=contract, baseline=bad, progress=False)
    failed = result.trials[0]
    assert failed.candidate == bad
    assert failed.error is not None
    assert "C" in failed.error
    assert math.isnan(failed.mean)
    assert result.best.error is None
    assert result.best.number != 0
    assert len(result.trials) == contract.search.max_trials


def test_all_candidates_failing_raises(frame: pd.DataFrame, tmp_path: Path) -> None:
    """It raises, listing the errors, when no candidate at all can be fitted."""
    raw = small_raw_contract(strategy="grid", families=["logistic"])
    raw["search"]["space"] = {"logistic": {"C": {"choices": [-1.0, -2.0]}}}
    contract = make_contract(tmp_path, raw)
    X, y = _xy(frame, contract)
    with pytest.raises(RuntimeError, match="every trial failed"):
        tune(X, y, contract=contract, progress=False)


def test_best_is_the_highest_mean_and_ties_go_to_the_earlier_trial(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    """It picks the best mean score, and the earlier trial (the champion's) on a tie."""
    raw = small_raw_contract(strategy="grid", families=["logistic"], max_trials=10)
    raw["search"]["space"] = {"logistic": {"C": {"choices": [1.0, 1.0000000001, 0.01]}}}
    contract = make_contract(tmp_path, raw)
    X, y = _xy(frame, contract)
    result = tune(X, y, contract=contract, progress=False)
    finite = [t for t in result.trials if math.isfinite(t.mean)]
    assert result.best.mean == max(t.mean for t in finite)
    ties = [t for t in finite if t.mean == result.best.mean]
    assert result.best.number == min(t.number for t in ties)


# --- pruning and warm starts (bayes) -----------------------------------------------------------


def _declining_folds(
    contract: Contract, y: np.ndarray, calls: list[tuple[int, int]] | None = None
) -> Callable[..., dict[str, tuple[float, ...]]]:
    """A stand-in for cross_validate: every candidate scores 0.9, 0.9, 0.5 on folds 0, 1, 2
    (the last fold is hard), shifted by up to -0.04 by its parameters, so a trial stopped after
    two folds has a partial mean above every complete trial's mean.  `calls` collects
    (folds, n_jobs) per call."""
    order = {len(train): i for i, (train, _) in enumerate(splits(contract, y, seed=0))}

    def fake(
        contract: Contract,
        candidate: Candidate,
        X: pd.DataFrame,
        y: np.ndarray,
        folds: Sequence[tuple[np.ndarray, np.ndarray]],
        *,
        seed: int,
        n_jobs: int = 1,
        weights: np.ndarray | None = None,
    ) -> dict[str, tuple[float, ...]]:
        if calls is not None:
            calls.append((len(folds), n_jobs))
        value = float(candidate.params.get("C", 10 * candidate.params.get("learning_rate", 0.1)))
        shift = -0.02 * min(abs(math.log10(value)), 2.0)
        scores = tuple((0.9 if order[len(train)] < 2 else 0.5) + shift for train, _ in folds)
        return {name: scores for name in metric_names(contract)}

    return fake


def test_pruned_trials_stop_early_and_are_never_the_best(
    frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It stops trials whose running mean trails, and picks the best among trials scored on
    every fold only, even when a pruned trial's partial mean is higher."""
    contract = make_contract(tmp_path, strategy="bayes", max_trials=16)
    X, y = _xy(frame, contract)
    monkeypatch.setattr(tuning, "cross_validate", _declining_folds(contract, y))
    reported: list[TrialResult] = []
    result = tune(X, y, contract=contract, on_trial=reported.append, progress=False)
    pruned = [t for t in result.trials if t.pruned]
    assert pruned, "expected the median rule to prune some trials"
    assert all(len(t.fold_scores) < contract.cv.folds for t in pruned)
    assert all(len(t.fold_scores) == contract.cv.folds for t in result.trials if not t.pruned)
    assert [t.pruned for t in reported] == [t.pruned for t in result.trials]
    assert result.best.complete
    assert not result.best.pruned
    assert len(result.best.fold_scores) == contract.cv.folds
    # The guard matters: a pruned trial's partial mean beats every complete trial here.
    assert max(t.mean for t in pruned) > result.best.mean
    assert result.best.mean == max(t.mean for t in result.trials if t.complete)


def test_pruning_decisions_do_not_depend_on_parallel_folds(
    frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It prunes the same trials when folds run two at a time (the pruner deciding between
    batches) as when they run one by one."""
    runs = []
    calls: dict[int, list[tuple[int, int]]] = {1: [], 2: []}
    for n_jobs in (1, 2):
        contract = make_contract(tmp_path, strategy="bayes", max_trials=12, n_jobs=n_jobs)
        X, y = _xy(frame, contract)
        monkeypatch.setattr(tuning, "cross_validate", _declining_folds(contract, y, calls[n_jobs]))
        runs.append(tune(X, y, contract=contract, progress=False))
    assert set(calls[1]) == {(1, 1)}
    assert set(calls[2]) == {(2, 2), (1, 2)}  # folds 0-1 together, then fold 2
    assert any(t.pruned for t in runs[0].trials)
    assert _fingerprint(runs[0].trials) == _fingerprint(runs[1].trials)
    assert [t.pruned for t in runs[0].trials] == [t.pruned for t in runs[1].trials]


def test_random_and_grid_search_never_prune(
    frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It scores every fold of every trial outside the bayes strategy."""
    for strategy in ("random", "grid"):
        contract = make_contract(tmp_path, strategy=strategy, max_trials=12)
        X, y = _xy(frame, contract)
        monkeypatch.setattr(tuning, "cross_validate", _declining_folds(contract, y))
        result = tune(X, y, contract=contract, progress=False)
        assert not any(t.pruned for t in result.trials)
        assert all(len(t.fold_scores) == contract.cv.folds for t in result.trials)


def test_bayes_search_starts_from_each_familys_defaults(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    """It scores one starting point per family first: the estimator's own defaults where the
    space admits them, else the first choice or the middle of the range."""
    contract = make_contract(tmp_path, strategy="bayes", max_trials=3)
    X, y = _xy(frame, contract)
    result = tune(X, y, contract=contract, progress=False)
    starts = [
        Candidate(
            "hist_gradient_boosting",
            # learning_rate: the estimator's 0.1; max_iter and max_leaf_nodes: their defaults
            # (100, 31) are not among the choices, so the first choice.
            {"learning_rate": 0.1, "max_iter": 15, "max_leaf_nodes": 8},
        ),
        Candidate("logistic", {"C": 1.0}),
    ]
    assert family_defaults(contract) == starts
    assert [t.candidate for t in result.trials[:2]] == starts
    assert result.trials[2].candidate not in starts


def test_family_default_outside_a_range_takes_its_middle(tmp_path: Path) -> None:
    """It starts a range that excludes the estimator's default at its (geometric) middle."""
    raw = small_raw_contract(strategy="bayes", families=["logistic"])
    raw["search"]["space"] = {"logistic": {"C": {"low": 4.0, "high": 100.0, "log": True}}}
    assert family_defaults(make_contract(tmp_path, raw)) == [Candidate("logistic", {"C": 20.0})]


def test_champion_in_the_space_warm_starts_the_sampler(
    frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It tells TPE the champion's score as a finished trial; a champion outside the space is
    still scored first but not told; a family default equal to it is not scored twice."""
    told: list[optuna.trial.FrozenTrial] = []
    add_trial = optuna.Study.add_trial

    def spy(self: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:  # not the enqueued defaults
            told.append(trial)
        add_trial(self, trial)

    monkeypatch.setattr(optuna.Study, "add_trial", spy)
    contract = make_contract(tmp_path, strategy="bayes", max_trials=4)
    X, y = _xy(frame, contract)

    inside = tune(X, y, contract=contract, baseline=Candidate("logistic", {"C": 2.0}))
    assert inside.trials[0].source == "champion"
    assert [(t.params, t.value) for t in told] == [
        ({"family": "logistic", "logistic.C": 2.0}, inside.trials[0].mean)
    ]

    told.clear()
    outside = tune(X, y, contract=contract, baseline=Candidate("logistic", {"C": 500.0}))
    assert outside.trials[0].candidate == Candidate("logistic", {"C": 500.0})
    assert told == []

    same = tune(X, y, contract=contract, baseline=Candidate("logistic", {"C": 1.0}))
    labels = [t.candidate.to_json() for t in same.trials]
    assert len(labels) == len(set(labels)) == 4


def test_candidate_json_round_trip() -> None:
    """It round-trips a candidate through JSON, numpy scalars included."""
    candidate = Candidate(
        "hist_gradient_boosting",
        {"learning_rate": np.float64(0.1), "max_leaf_nodes": np.int64(16), "loss": "log_loss"},
        components=3,
    )
    text = candidate.to_json()
    body = json.loads(text)
    assert body == {
        "family": "hist_gradient_boosting",
        "params": {"learning_rate": 0.1, "loss": "log_loss", "max_leaf_nodes": 16},
        "components": 3,
    }
    back = Candidate.from_json(text)
    assert back == candidate
    assert back.to_json() == text
    assert back.label() == (
        "hist_gradient_boosting(learning_rate=0.1, loss=log_loss, max_leaf_nodes=16, pca=3)"
    )


def test_candidate_json_refuses_unserialisable_params() -> None:
    """It refuses to serialise a parameter JSON cannot hold instead of writing garbage."""
    with pytest.raises(TypeError):
        Candidate("logistic", {"C": object()}).to_json()


# --- pipeline ----------------------------------------------------------------------------------


def _messy(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out.loc[out.index[0], "elevel"] = "e99"
    out.loc[out.index[1], "car"] = "car999"
    out.loc[out.index[2], "zipcode"] = None
    out.loc[out.index[3], "salary"] = np.nan
    out.loc[out.index[4], ["age", "elevel"]] = [np.nan, None]
    return out


@pytest.mark.parametrize(
    "candidate",
    [
        Candidate("logistic", {"C": 1.0}),
        Candidate("hist_gradient_boosting", {"max_iter": 10}),
        Candidate("random_forest", {"n_estimators": 5}, components=4),
    ],
    ids=lambda c: c.family,
)
def test_pipeline_predicts_unknown_categories_and_missing_values(
    candidate: Candidate, frame: pd.DataFrame, contract: Contract
) -> None:
    """It predicts rows with unseen categories and missing values instead of failing."""
    train = frame.iloc[:300]
    model = build_pipeline(contract, candidate, seed=0).fit(
        prepare_features(train, contract), train["approved"].to_numpy()
    )
    test = _messy(frame.iloc[300:])
    proba = model.predict_proba(prepare_features(test, contract))
    assert proba.shape == (len(test), 2)
    assert np.isfinite(proba).all()


def test_pipeline_learns_undeclared_categories_and_ignores_new_ones(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    """It learns a categorical domain that the contract leaves open and ignores unseen levels."""
    raw = small_raw_contract()
    del raw["features"]["zipcode"]["values"]
    contract = make_contract(tmp_path, raw)
    train = frame.iloc[:300].copy()
    train.loc[train.index[:5], "zipcode"] = np.nan  # missing at training time too
    model = build_pipeline(contract, Candidate("logistic"), seed=0).fit(
        prepare_features(train, contract), train["approved"].to_numpy()
    )
    test = frame.iloc[300:].assign(zipcode="z-new")
    assert model.predict(prepare_features(test, contract)).shape == (len(test),)


def test_pipeline_keeps_the_encoded_width_fixed_by_the_declared_domain(
    frame: pd.DataFrame, contract: Contract
) -> None:
    """It encodes declared categories to the same width whatever levels a batch happens to hold."""
    few = frame.iloc[:50].assign(car="car1", zipcode="z0")
    model = build_pipeline(contract, Candidate("logistic"), seed=0)
    model.fit(prepare_features(few, contract), few["approved"].to_numpy())
    width = model.named_steps["features"].transform(prepare_features(few, contract)).shape[1]
    assert width == 6 + 5 + 20 + 9


def test_unknown_family_is_refused(contract: Contract) -> None:
    """It refuses to build a pipeline for a family it does not know."""
    with pytest.raises(ValueError, match="unknown estimator family"):
        build_pipeline(contract, Candidate("svm"), seed=0)


def test_prepare_features_gives_float_numerics_in_contract_order(
    frame: pd.DataFrame, contract: Contract
) -> None:
    """It returns exactly the contract's features, in its order, numerics as float64."""
    shuffled = frame[list(reversed(frame.columns))].copy()
    shuffled["age"] = shuffled["age"].astype("int64")
    shuffled["hyears"] = shuffled["hyears"].astype(str)
    shuffled.loc[shuffled.index[0], "hyears"] = "not a number"
    shuffled["elevel"] = shuffled["elevel"].astype("string")
    shuffled.loc[shuffled.index[1], "elevel"] = pd.NA
    X = prepare_features(shuffled, contract)
    assert list(X.columns) == list(contract.features)
    for name in contract.numeric:
        assert X[name].dtype == np.float64, name
    assert math.isnan(X["hyears"].iloc[0])
    assert X["hyears"].iloc[1] == float(frame["hyears"].iloc[1])
    assert X["elevel"].dtype == object
    assert X["elevel"].iloc[1] is np.nan or (
        isinstance(X["elevel"].iloc[1], float) and math.isnan(X["elevel"].iloc[1])
    )
    assert X["elevel"].iloc[2] == frame["elevel"].iloc[2]


# --- splits ------------------------------------------------------------------------------------


def test_time_scheme_splits_forward_in_time(contract: Contract) -> None:
    """It validates on later rows than it trains on when the scheme is time."""
    y = np.tile([0, 1], 60)
    folds = splits(contract, y, seed=0)
    assert len(folds) == contract.cv.folds
    for train, test in folds:
        assert train.max() < test.min()


def test_shuffled_splits_repeat_and_cover_every_row(contract: Contract) -> None:
    """It gives folds x repeats shuffled stratified splits whose test parts cover each row once."""
    y = np.tile([0, 1, 1], 40)
    folds = splits(contract, y, repeats=2, seed=0, shuffled=True)
    assert len(folds) == contract.cv.folds * 2
    for r in range(2):
        tests = np.concatenate([test for _, test in folds[r * 3 : (r + 1) * 3]])
        assert sorted(tests.tolist()) == list(range(len(y)))
    assert not np.array_equal(folds[0][1], folds[3][1])
    assert any(test.max() < train.max() for train, test in folds)


def _metric_contract(tmp_path: Path, **metrics: Any) -> Contract:
    raw = small_raw_contract()
    raw["metrics"] = {"primary": "precision", "guardrails": {}} | metrics
    return make_contract(tmp_path, raw)


def test_metric_names_include_relative_guardrails(tmp_path: Path) -> None:
    """It scores absolute and relative guardrails alongside the primary metric."""
    contract = _metric_contract(
        tmp_path, guardrails={"accuracy": 0.02}, guardrails_relative={"brier": 0.05}
    )
    assert metric_names(contract) == ["precision", "accuracy", "brier"]


def test_cross_validate_scores_the_declared_positive_class(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    """It passes the contract's positive class to the fold scores: precision of 0 vs of 1."""
    candidate = Candidate("logistic", {"C": 1.0})
    scores = {}
    for positive in (0, 1, None):
        contract = _metric_contract(tmp_path, positive_class=positive)
        X, y = _xy(frame, contract)
        folds = splits(contract, y, seed=contract.search.seed)
        result = tuning.cross_validate(contract, candidate, X, y, folds, seed=1)
        scores[positive] = result["precision"]
    assert scores[0] != scores[1]
    assert scores[None] == scores[1]  # default: the last class in sorted order


def test_positive_class_missing_from_the_training_data_is_a_config_error(
    frame: pd.DataFrame, tmp_path: Path
) -> None:
    """It stops with a ConfigError naming the key when the positive class never occurs."""
    raw = small_raw_contract()
    del raw["classes"]  # undeclared: only the training data can tell
    raw["metrics"] = {"primary": "f1", "positive_class": 7}
    contract = make_contract(tmp_path, raw)
    X, y = _xy(frame, contract)
    folds = splits(contract, y, seed=contract.search.seed)
    with pytest.raises(ConfigError, match=r"metrics\.positive_class: 7 is not one of"):
        tuning.cross_validate(contract, Candidate("logistic", {"C": 1.0}), X, y, folds, seed=1)


def test_default_classification_spaces_search_class_weights(tmp_path, frame):
    """A classification family left to its default space searches class_weight (none or
    balanced), and a candidate with either fits; declared spaces and regression are as given."""
    raw = small_raw_contract()
    del raw["search"]["space"]["logistic"]
    contract = make_contract(tmp_path, raw)
    spaces = tuning.spaces_for(contract)
    assert spaces["logistic"]["class_weight"] == tuning.CLASS_WEIGHT
    assert "class_weight" not in spaces["hist_gradient_boosting"]  # declared in the contract
    X, y = _xy(frame, contract)
    for weight in tuning.CLASS_WEIGHT.choices:
        candidate = Candidate("logistic", {"C": 1.0, "class_weight": weight})
        build_pipeline(contract, candidate, seed=0).fit(X, y)


def test_none_in_toml_choices_is_no_value(tmp_path):
    raw = small_raw_contract()
    raw["search"]["space"]["logistic"]["class_weight"] = {"choices": ["none", "balanced"]}
    contract = make_contract(tmp_path, raw)
    assert contract.search.space["logistic"]["class_weight"].choices == (None, "balanced")
