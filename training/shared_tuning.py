"""Distributed tuning: a cycle's Optuna study shared with `champion tune-worker` processes.

In shared mode a cycle opens its bayes search as a named study (`champion-cycle-<run id>`)
in a storage every host reaches (Optuna's RDBStorage on the shared PostgreSQL). Its user
attributes say what a worker needs to reproduce the exact data and folds (the data
fingerprint, the window's batches, the seed, the contract's digest) and the budget. Every
participant proposes with TPE (constant liar: a running trial counts as a poor one, so
participants spread out), and takes a *claim* on a candidate before scoring it: claims are
given one at a time per study, so no candidate is scored twice and the trial budget holds
across processes, which Optuna alone does not guarantee. A scored trial's fold scores go on
its Optuna trial (`RESULT_ATTR`), so the cycle rebuilds every participant's trials from the
study once its search ends and it has closed the study.

This module holds the in-memory adapter of the ports `TuningStore` and `Claims`
(`champion.training.ports`), (threads of one
process; the unit tests use it) and the study's description; the search itself is
`champion.training.tuning`, the PostgreSQL adapter `champion.training.postgres.tuning`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import optuna

from champion.training.config import Contract
from champion.training.errors import ChampionError
from champion.training.ports import Claims, TuningStore

log = logging.getLogger(__name__)

STUDY_PREFIX = "champion-cycle-"
# Trial user attributes written by the participants.
CLAIM_ATTR = "champion.claim"  # the claim's sequence number: the order trials are numbered in
RESULT_ATTR = "champion.result"  # the scored TrialResult (`tuning.trial_attrs`)
DUPLICATE_ATTR = "champion.duplicate"  # a re-proposed candidate, told its known score
# Study user attributes.
SPEC_ATTR = "champion.spec"
STATE_ATTR = "champion.state"  # "opening" → "open" → "closed"


class TuningError(ChampionError):
    """A shared study cannot be joined: none open, or not the same data or contract."""


class Outcome(StrEnum):
    CLAIMED = "claimed"  # this process scores the candidate
    TAKEN = "taken"  # another trial has (or had) it: tell its known score, do not re-score
    SPENT = "spent"  # the trial budget is used up
    LATE = "late"  # the time budget has passed
    CLOSED = "closed"  # the cycle's search has ended


@dataclass(frozen=True)
class Claim:
    outcome: Outcome
    seq: int | None = None  # for CLAIMED: the order of this claim in the whole store


@dataclass(frozen=True)
class Pending:
    """A claim taken but not finished: its trial is being scored (or its process died)."""

    candidate: str
    owner: str
    trial: int | None
    alive: bool = True  # False: its process is gone, the trial will never finish


@dataclass(frozen=True)
class StudySpec:
    """What a study promises its participants: the cycle's data, folds and budget."""

    project: str
    run_id: str
    sha256: str  # the window's data fingerprint (`data.fingerprint`)
    rows: int
    batches: tuple[str, ...]
    seed: int
    max_trials: int
    max_seconds: float
    deadline: float  # on the store's clock
    contract: str  # `contract_digest`: the same search space, CV and metrics

    def attrs(self) -> dict[str, Any]:
        return asdict(self) | {"batches": list(self.batches)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StudySpec:
        return cls(**(attrs | {"batches": tuple(attrs["batches"])}))


def contract_digest(contract: Contract) -> str:
    """A digest of everything in the contract a trial's scores depend on (not data paths,
    schedule or gate; not `search.n_jobs`, which changes no score)."""
    body = contract.model_dump(
        mode="json",
        include={"task", "target", "classes", "timestamp", "features", "metrics", "window"},
    )
    body["search"] = contract.search.model_dump(mode="json", exclude={"n_jobs"})
    body["cv"] = contract.cv.model_dump(mode="json")
    text = json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def study_name(run_id: str) -> str:
    return f"{STUDY_PREFIX}{run_id}"


@dataclass
class SharedStudy:
    """A study in a store, with its claims: what a participant of a shared search holds."""

    name: str
    spec: StudySpec
    store: TuningStore
    claims: Claims

    def _set_state(self, state: str) -> None:
        storage = self.store.storage
        storage.set_study_user_attr(storage.get_study_id_from_name(self.name), STATE_ATTR, state)

    def publish(self) -> None:
        """Let workers find the study (the cycle has claimed its champion, queued defaults)."""
        self._set_state("open")

    def close(self) -> None:
        """Give no more claims; a worker then stops after its current trial. Older closed
        studies of the project beyond `KEEP_STUDIES` go (a failure there is only logged)."""
        self.claims.close()
        self._set_state("closed")
        try:
            prune_studies(self.store, self.spec.project)
        except Exception as exc:  # housekeeping must not fail the cycle
            log.warning("old tuning studies not pruned", extra={"error": f"{exc!r}"})


KEEP_STUDIES = 10  # closed studies kept per project; every trial is in its cycle's MLflow run


def prune_studies(store: TuningStore, project: str, *, keep: int = KEEP_STUDIES) -> list[str]:
    """Delete the closed studies of `project` but the newest `keep`, with their claims, so
    the database does not grow by one study per cycle; returns the names deleted."""
    storage = store.storage
    closed = [
        (s._study_id, s.study_name)
        for s in storage.get_all_studies()
        if s.user_attrs.get(STATE_ATTR) == "closed"
        and isinstance(s.user_attrs.get(SPEC_ATTR), dict)
        and s.user_attrs[SPEC_ATTR].get("project") == project
    ]
    gone = [name for _, name in sorted(closed)[: max(0, len(closed) - keep)]]
    for name in gone:
        storage.delete_study(storage.get_study_id_from_name(name))
        store.forget(name)
    return gone


def open_study(
    store: TuningStore,
    contract: Contract,
    *,
    run_id: str,
    fingerprint: dict[str, Any],
    owner: str,
) -> SharedStudy:
    """Create the cycle's study (not yet visible to workers: `publish` makes it so)."""
    search = contract.search
    spec = StudySpec(
        project=contract.project.name,
        run_id=run_id,
        sha256=fingerprint["sha256"],
        rows=int(fingerprint["rows"]),
        batches=tuple(fingerprint.get("batches", ())),
        seed=search.seed,
        max_trials=search.max_trials,
        max_seconds=search.max_seconds,
        deadline=store.now() + search.max_seconds,
        contract=contract_digest(contract),
    )
    name = study_name(run_id)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=store.storage, study_name=name, direction="maximize")
    study.set_user_attr(SPEC_ATTR, spec.attrs())
    study.set_user_attr(STATE_ATTR, "opening")
    claims = store.claims(name, budget=spec.max_trials, deadline=spec.deadline)
    claims.open(owner)
    return SharedStudy(name, spec, store, claims)


def find_study(store: TuningStore, project: str, *, name: str | None = None) -> SharedStudy | None:
    """The named study (once opened, closed or not), or the newest open one of this
    project whose deadline is ahead; None when there is none (yet)."""
    storage = store.storage
    found: list[tuple[int, str, dict[str, Any]]] = []
    for study in storage.get_all_studies():
        attrs = study.user_attrs
        if SPEC_ATTR not in attrs or (name is not None and study.study_name != name):
            continue
        if attrs.get(STATE_ATTR) == "opening":
            continue  # the cycle is still claiming its champion and queueing defaults
        if name is None and (
            attrs.get(STATE_ATTR) != "open"
            or attrs[SPEC_ATTR].get("project") != project
            or attrs[SPEC_ATTR].get("deadline", 0.0) <= store.now()
        ):
            continue
        found.append((study._study_id, study.study_name, attrs))
    if not found:
        return None
    _, chosen, attrs = max(found)
    spec = StudySpec.from_attrs(attrs[SPEC_ATTR])
    if name is not None and spec.project != project:
        raise TuningError(f"study {name} is project {spec.project!r}'s, not {project!r}'s")
    claims = store.claims(chosen, budget=spec.max_trials, deadline=spec.deadline)
    return SharedStudy(chosen, spec, store, claims)


def study_state(shared: SharedStudy) -> str:
    storage = shared.store.storage
    attrs = storage.get_study_user_attrs(storage.get_study_id_from_name(shared.name))
    return str(attrs.get(STATE_ATTR, "unknown"))


def check_joinable(shared: SharedStudy, contract: Contract, fingerprint: dict[str, Any]) -> None:
    """Refuse, saying why, a study whose data or contract is not this process's."""
    spec = shared.spec
    if spec.contract != contract_digest(contract):
        raise TuningError(
            f"study {shared.name} was opened with another champion.toml (search space, CV, "
            "metrics or features differ): this worker would not score the same trials"
        )
    if fingerprint["sha256"] != spec.sha256:
        theirs, ours = spec.sha256[:12], str(fingerprint["sha256"])[:12]
        missing = sorted(set(spec.batches) - set(fingerprint.get("batches", ())))
        hint = f"; batches missing here: {', '.join(missing[:5])}" if missing else ""
        raise TuningError(
            f"study {shared.name} tunes on data {theirs} ({spec.rows} rows, "
            f"{len(spec.batches)} batches) but this worker's window is {ours} "
            f"({fingerprint['rows']} rows, {len(fingerprint.get('batches', ()))} batches){hint}: "
            "refusing to score other data"
        )


# -- in memory: threads of one process ---------------------------------------------------------


class MemoryClaims:
    """`Claims` for threads of one process (a lock instead of the database's)."""

    def __init__(self, book: _Book, study: str, *, budget: int, deadline: float) -> None:
        self._book = book
        self.study = study
        self.budget = budget
        self.deadline = deadline

    def _rows(self) -> dict[str, dict[str, Any]]:
        return self._book.rows.setdefault(self.study, {})

    def open(self, owner: str) -> None:
        with self._book.lock:
            self._book.opened.add(self.study)

    def claim(self, candidate: str, owner: str, trial: int | None) -> Claim:
        with self._book.lock:
            rows = self._rows()
            if self.study not in self._book.opened or self.study in self._book.closed:
                return Claim(Outcome.CLOSED)
            if candidate in rows:
                return Claim(Outcome.TAKEN)
            if len(rows) >= self.budget:
                return Claim(Outcome.SPENT)
            if time.time() >= self.deadline:
                return Claim(Outcome.LATE)
            self._book.seq += 1
            rows[candidate] = {"owner": owner, "trial": trial, "done": False}
            return Claim(Outcome.CLAIMED, self._book.seq)

    def finish(self, candidate: str) -> None:
        with self._book.lock:
            self._rows()[candidate]["done"] = True

    def release(self, candidate: str) -> None:
        with self._book.lock:
            rows = self._rows()
            if candidate in rows and not rows[candidate]["done"]:
                del rows[candidate]

    def close(self) -> None:
        with self._book.lock:
            self._book.closed.add(self.study)

    def pending(self) -> list[Pending]:
        with self._book.lock:
            return [
                Pending(c, r["owner"], r["trial"]) for c, r in self._rows().items() if not r["done"]
            ]

    def leave(self) -> None:
        return None  # one process: its threads are alive while it is


@dataclass
class _Book:
    lock: threading.Lock
    rows: dict[str, dict[str, dict[str, Any]]]
    opened: set[str]
    closed: set[str]
    seq: int = 0


class MemoryTuning:
    """`TuningStore` in this process: Optuna's in-memory storage and `MemoryClaims`."""

    where = "memory"

    def __init__(self) -> None:
        self._storage = optuna.storages.InMemoryStorage()
        self._book = _Book(threading.Lock(), {}, set(), set())

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        return self._storage

    def claims(self, study: str, *, budget: int, deadline: float) -> Claims:
        return MemoryClaims(self._book, study, budget=budget, deadline=deadline)

    def forget(self, study: str) -> None:
        with self._book.lock:
            self._book.rows.pop(study, None)
            self._book.opened.discard(study)
            self._book.closed.discard(study)

    def now(self) -> float:
        return time.time()
