"""`champion tune-worker`: join a running cycle's shared study and score trials for it.

The worker needs the shared database (study, claims, manifest) and the stored batches, not
the MLflow registry: the cycle records every trial, the workers' included, once it gathers
them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from threadpoolctl import threadpool_limits

from champion.training.config import Contract
from champion.training.data import TrainingData, fingerprint
from champion.training.pipeline import prepare_features, sample_weights
from champion.training.ports import BatchStore
from champion.training.process import actor
from champion.training.shared_tuning import (
    SharedStudy,
    TuningError,
    TuningStore,
    check_joinable,
    find_study,
    study_state,
)
from champion.training.tuning import TrialResult, WorkerResult, tune_worker

log = logging.getLogger(__name__)

POLL = 0.5  # seconds between looks for a study to open


@dataclass(frozen=True)
class WorkerRun:
    study: str
    owner: str
    result: WorkerResult | None  # None: the study had ended before this worker joined


def wait_for_study(
    store: TuningStore,
    project: str,
    *,
    name: str | None,
    wait: float,
    sleep: Callable[[float], None] = time.sleep,
) -> SharedStudy:
    """The study to join (named, or the newest open one), waiting up to `wait` seconds."""
    limit = time.monotonic() + wait
    log.info(
        "looking for a tuning study to join",
        extra={"project": project, "study": name, "wait": wait, "store": store.where},
    )
    while (shared := find_study(store, project, name=name)) is None:
        if time.monotonic() >= limit:
            which = f"study {name}" if name else f"open tuning study of project {project!r}"
            raise TuningError(
                f"no {which} in {store.where} after waiting {wait:g}s "
                "(a cycle opens one when its search starts; --wait waits longer)"
            )
        sleep(POLL)
    return shared


def _window(shared: SharedStudy, contract: Contract, data: TrainingData) -> TrainingData:
    if data.rows == 0:
        raise TuningError(
            f"study {shared.name} tunes on {shared.spec.rows} rows but this worker's training "
            "window is empty (does it read the same batch store?)"
        )
    check_joinable(shared, contract, fingerprint(data, contract))
    return data


def run_worker(
    store: TuningStore,
    contract: Contract,
    batches: BatchStore,
    *,
    study: str | None = None,
    wait: float = 60.0,
    threads: int = 1,
    owner: str | None = None,
) -> WorkerRun:
    """Join, check the data is the cycle's, and score trials until the study needs no more."""
    shared = wait_for_study(store, contract.project.name, name=study, wait=wait)
    owner = owner or f"{actor()}:{os.getpid()}"
    if study_state(shared) == "closed":
        return WorkerRun(shared.name, owner, None)
    data = _window(shared, contract, batches.window())
    X = prepare_features(data.frame, contract)
    weights = sample_weights(data.frame, contract)
    y = data.frame[contract.target].to_numpy()
    log.info(
        "joined tuning study",
        extra={
            "study": shared.name,
            "owner": owner,
            "rows": data.rows,
            "max_trials": shared.spec.max_trials,
        },
    )
    primary = contract.metrics.primary

    def progress(t: TrialResult) -> None:
        log.info(
            "trial scored",
            extra={
                "study": shared.name,
                "owner": owner,
                "nth": t.number + 1,  # this worker's; the cycle numbers the study's
                "candidate": t.candidate.label(),
                f"{primary}_mean": t.mean,
                "folds": len(t.fold_scores),
                "pruned": t.pruned,
                "error": t.error,
                "seconds": round(t.seconds, 3),
            },
        )

    with threadpool_limits(limits=threads):
        result = tune_worker(
            X, y, contract=contract, shared=shared, owner=owner, on_trial=progress, weights=weights
        )
    return WorkerRun(shared.name, owner, result)
