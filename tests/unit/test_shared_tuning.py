"""Unit tests of distributed tuning on Optuna's in-memory storage: claims, the result codec,
a cycle's search gathering a worker's trials, and the worker's refusals."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest

from champion.training.artifacts import TAG_KIND
from champion.training.config import Contract
from champion.training.cycle import Context, run_cycle
from champion.training.data import TrainingData, fingerprint
from champion.training.demo.simulate import agrawal_frame
from champion.training.pipeline import Candidate, prepare_features
from champion.training.records import Verdict
from champion.training.shared_tuning import (
    CLAIM_ATTR,
    KEEP_STUDIES,
    RESULT_ATTR,
    MemoryTuning,
    Outcome,
    SharedStudy,
    TuningError,
    check_joinable,
    find_study,
    open_study,
    study_name,
    study_state,
)
from champion.training.tune_worker import run_worker, wait_for_study
from champion.training.tuning import (
    TrialResult,
    trial_attrs,
    trial_from_attrs,
    tune,
    tune_worker,
)
from tests.fakes import FakeBatches, FakeLeases, FakeLedger, FakeRegistry
from tests.unit.conftest import make_contract, small_raw_contract

ROWS = 400


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return agrawal_frame(ROWS, function=1, seed=11, label_noise=0.05)


def _data(frame: pd.DataFrame) -> TrainingData:
    return TrainingData(frame.assign(_batch="b1"), ("b1",), ("b1",))


def _bayes(tmp_path: Path, **search: Any) -> Contract:
    return make_contract(tmp_path, strategy="bayes", **search)


def _open(
    store: MemoryTuning, contract: Contract, frame: pd.DataFrame, run_id: str = "r1"
) -> SharedStudy:
    fp = fingerprint(_data(frame), contract)
    return open_study(store, contract, run_id=run_id, fingerprint=fp, owner="cycle")


def _xy(frame: pd.DataFrame, contract: Contract) -> tuple[pd.DataFrame, np.ndarray]:
    return prepare_features(frame, contract), frame["approved"].to_numpy()


def _keys(trials: tuple[TrialResult, ...]) -> list[str]:
    return [t.candidate.to_json() for t in trials]


def test_a_trial_result_round_trips_through_optuna_user_attrs() -> None:
    """It stores fold and guardrail scores (NaN included), timing, error, pruned flag and
    source as JSON-safe user attributes and rebuilds the same result from them."""
    result = TrialResult(
        number=7,
        candidate=Candidate("logistic", {"C": 0.5}),
        fold_scores=(0.81, math.nan, 0.79),
        guardrail_scores={"accuracy": (0.7, 0.72, math.nan)},
        seconds=1.25,
        source="worker:alice@h1:42",
        error=None,
        pruned=True,
    )
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr(RESULT_ATTR, json.loads(json.dumps(trial_attrs(result), allow_nan=False)))
    study.tell(trial, 0.8)
    back = trial_from_attrs(study.trials[0].user_attrs[RESULT_ATTR], number=7)
    assert back.candidate == result.candidate
    assert back.fold_scores[::2] == (0.81, 0.79) and math.isnan(back.fold_scores[1])
    assert back.guardrail_scores["accuracy"][:2] == (0.7, 0.72)
    assert math.isnan(back.guardrail_scores["accuracy"][2])
    assert (back.seconds, back.source, back.error, back.pruned, back.number) == (
        1.25,
        "worker:alice@h1:42",
        None,
        True,
        7,
    )
    assert back.mean == pytest.approx(result.mean)


def test_claims_give_each_candidate_once_within_the_budget_until_closed(tmp_path, frame):
    """It answers claimed, taken, spent, closed; a released claim frees its budget slot."""
    store = MemoryTuning()
    shared = _open(store, _bayes(tmp_path, max_trials=2), frame)
    claims = shared.claims
    assert claims.claim("a", "w1", 0).outcome is Outcome.CLAIMED
    assert claims.claim("a", "w2", 1).outcome is Outcome.TAKEN
    assert claims.claim("b", "w2", 2).outcome is Outcome.CLAIMED
    assert claims.claim("c", "w2", 3).outcome is Outcome.SPENT
    assert [p.candidate for p in claims.pending()] == ["a", "b"]
    claims.release("b")
    claims.finish("a")
    assert claims.pending() == []
    assert claims.claim("c", "w1", 4).outcome is Outcome.CLAIMED
    shared.close()
    assert claims.claim("d", "w1", 5).outcome is Outcome.CLOSED
    late = store.claims("other", budget=5, deadline=time.time() - 1)
    late.open("cycle")
    assert late.claim("a", "w1", 0).outcome is Outcome.LATE


def test_the_cycle_gathers_a_workers_trials_numbered_in_claim_order(tmp_path, frame):
    """It spends one budget across processes: a worker scores three trials first, the
    cycle's search the rest, and the cycle's result holds all six, each with its folds."""
    contract = _bayes(tmp_path, max_trials=6)
    X, y = _xy(frame, contract)
    store = MemoryTuning()
    shared = _open(store, contract, frame)
    assert find_study(store, contract.project.name, name=shared.name) is None  # opening
    shared.publish()  # as the cycle's search would (and will again)
    joined = find_study(store, contract.project.name, name=shared.name)
    assert joined is not None
    done: list[TrialResult] = []
    # The worker's own clock runs out after three trials (a worker stopped by its budget).
    worker = tune_worker(
        X,
        y,
        contract=contract,
        shared=joined,
        owner="w1",
        on_trial=done.append,
        clock=lambda: 0.0 if len(done) < 3 else 1e9,
    )
    assert (len(worker.trials), worker.stopped_by) == (3, "time")
    logged: list[TrialResult] = []
    tuned = tune(X, y, contract=contract, shared=shared, on_trial=logged.append, progress=False)
    assert len(tuned.trials) == 6
    assert [t.number for t in tuned.trials] == list(range(6))
    assert [t.source for t in tuned.trials] == ["worker:w1"] * 3 + ["search"] * 3
    assert _keys(tuned.trials)[:3] == _keys(worker.trials)
    assert len(set(_keys(tuned.trials))) == 6
    assert all(len(t.fold_scores) >= 2 for t in tuned.trials)
    assert logged == list(tuned.trials)  # the cycle logs every trial, the worker's included
    assert tuned.stopped_by == "trials"
    assert study_state(shared) == "closed"
    assert find_study(store, contract.project.name) is None  # closed: no longer offered


def test_a_worker_joining_a_closed_study_runs_nothing(tmp_path, frame):
    """It stops at once, with no trial, when the cycle has closed the study."""
    contract = _bayes(tmp_path, max_trials=2)
    X, y = _xy(frame, contract)
    store = MemoryTuning()
    shared = _open(store, contract, frame)
    tune(X, y, contract=contract, shared=shared, progress=False)
    late = find_study(store, contract.project.name, name=shared.name)
    assert late is not None
    result = tune_worker(X, y, contract=contract, shared=late, owner="late")
    assert (result.trials, result.stopped_by) == ((), "closed")
    run = run_worker(store, contract, _FixedBatches(frame), study=shared.name, wait=0)
    assert run.result is None


def test_a_small_space_is_scored_once_per_candidate_and_stops_as_exhausted(tmp_path):
    """It tells TPE a re-proposed candidate's known score instead of scoring it again."""
    raw = small_raw_contract(strategy="bayes", max_trials=5, families=["logistic"])
    raw["search"]["space"] = {"logistic": {"C": {"choices": [0.5, 2.0]}}}
    contract = make_contract(tmp_path, raw)
    frame = agrawal_frame(200, function=1, seed=3, label_noise=0.05)
    X, y = _xy(frame, contract)
    store = MemoryTuning()
    shared = _open(store, contract, frame)
    tuned = tune(X, y, contract=contract, shared=shared, progress=False)
    assert sorted(_keys(tuned.trials)) == sorted(
        Candidate("logistic", {"C": c}).to_json() for c in (0.5, 2.0)
    )
    assert tuned.stopped_by == "exhausted"


def test_a_cycle_and_two_worker_threads_share_the_budget_without_duplicates(tmp_path, frame):
    """It keeps the trial count at the budget and every candidate unique when the cycle's
    search and two workers propose at the same time."""
    contract = _bayes(tmp_path, max_trials=10)
    X, y = _xy(frame, contract)
    store = MemoryTuning()
    shared = _open(store, contract, frame)
    results: dict[str, Any] = {}

    def work(owner: str) -> None:
        try:
            joined = wait_for_study(store, contract.project.name, name=None, wait=10)
        except TuningError:  # the search ended before this thread looked: it scored none
            return
        results[owner] = tune_worker(X, y, contract=contract, shared=joined, owner=owner)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in (1, 2)]
    for t in threads:
        t.start()
    tuned = tune(X, y, contract=contract, shared=shared, progress=False)
    for t in threads:
        t.join(30)
    assert len(tuned.trials) == 10
    assert len(set(_keys(tuned.trials))) == 10
    # Every trial a worker scored is in the cycle's result, under that worker's name.
    for owner, result in results.items():
        mine = [t for t in tuned.trials if t.source == f"worker:{owner}"]
        assert _keys(tuple(mine)) == _keys(result.trials)
        assert result.stopped_by in {"trials", "closed"}


def test_a_worker_refuses_other_data_or_another_contract(tmp_path, frame):
    """It names the study and both fingerprints, and refuses to score."""
    contract = _bayes(tmp_path)
    store = MemoryTuning()
    shared = _open(store, contract, frame)
    other = fingerprint(_data(frame.head(300)), contract)
    with pytest.raises(TuningError, match=r"study champion-cycle-r1 tunes on data .*refusing"):
        check_joinable(shared, contract, other)
    with pytest.raises(TuningError, match=r"another champion\.toml"):
        check_joinable(shared, _bayes(tmp_path, seed=99), fingerprint(_data(frame), contract))
    shared.publish()
    with pytest.raises(TuningError, match="refusing"):
        run_worker(store, contract, _FixedBatches(frame.head(300)), wait=0)


def test_a_worker_with_no_open_study_gives_up_after_its_wait(tmp_path):
    """It waits the given seconds and then says there is no open study of the project."""
    store = MemoryTuning()
    started = time.monotonic()
    with pytest.raises(TuningError, match=r"no open tuning study of project .* after waiting"):
        wait_for_study(store, "loans", name=None, wait=0.6)
    assert time.monotonic() - started >= 0.5


class _FixedBatches(FakeBatches):
    def __init__(self, frame: pd.DataFrame) -> None:
        super().__init__()
        self.add(frame, "b1")


def test_a_cycle_with_a_tuning_store_logs_every_trial_of_its_shared_study(tmp_path):
    """It opens `champion-cycle-<run id>`, records it on the run, and logs each trial."""
    raw = small_raw_contract(strategy="bayes", max_trials=3, families=["logistic"])
    contract = make_contract(tmp_path, raw)
    batches = FakeBatches()
    batches.add(agrawal_frame(300, function=1, seed=5, label_noise=0.05), "b1")
    registry = FakeRegistry()
    store = MemoryTuning()
    ctx = Context(
        contract,
        registry,
        FakeLedger(),
        FakeLeases("owner"),
        batches,
        lease_timeout=0.0,
        progress=False,
        tuning=store,
    )
    result = run_cycle(ctx, trigger="test")
    assert result.verdict is not Verdict.FAILED, result.reason
    assert result.trials == 3
    assert result.run_id is not None
    run = registry.runs[result.run_id]
    assert run.params["tuning_study"] == study_name(result.run_id)
    children = [r for r in registry.runs.values() if r.tags.get(TAG_KIND) == "trial"]
    assert sorted(r.name for r in children) == ["trial-000", "trial-001", "trial-002"]
    assert {r.parent for r in children} == {result.run_id}


@pytest.mark.parametrize(("c", "state"), [(2.0, "COMPLETE"), (1000.0, "FAIL")])
def test_the_champion_is_trial_zero_of_a_shared_study(c, state, tmp_path, frame):
    """It claims and scores the champion's candidate first: a warm start for TPE when the
    space holds it, else a FAIL trial that only carries its scores; either way trial 0."""
    contract = _bayes(tmp_path, max_trials=3)
    X, y = _xy(frame, contract)
    store = MemoryTuning()
    shared = _open(store, contract, frame)
    baseline = Candidate("logistic", {"C": c})
    tuned = tune(X, y, contract=contract, shared=shared, baseline=baseline, progress=False)
    assert len(tuned.trials) == 3
    first = tuned.trials[0]
    assert (first.number, first.source, first.candidate) == (0, "champion", baseline)
    study = optuna.load_study(study_name=shared.name, storage=store.storage)
    carrier = min(
        (t for t in study.trials if CLAIM_ATTR in t.user_attrs),
        key=lambda t: t.user_attrs[CLAIM_ATTR],
    )
    assert carrier.state.name == state
    assert carrier.user_attrs[RESULT_ATTR]["candidate"] == baseline.to_json()


def test_closing_a_study_prunes_the_projects_oldest_closed_studies(tmp_path, frame):
    """It keeps the newest KEEP_STUDIES closed studies of the project (and their claims),
    deleting older ones when a study closes; an open study is never deleted."""
    contract = _bayes(tmp_path, max_trials=2)
    store = MemoryTuning()
    still_open = _open(store, contract, frame, run_id="open-0")
    for i in range(KEEP_STUDIES + 3):
        shared = _open(store, contract, frame, run_id=f"r{i}")
        shared.claims.claim("{}", "cycle", None)
        shared.close()
    names = {s.study_name for s in store.storage.get_all_studies()}
    kept = {study_name(f"r{i}") for i in range(3, KEEP_STUDIES + 3)}
    assert names == kept | {still_open.name}
    assert study_name("r0") not in store._book.rows  # its claims went with it
