"""Hyperparameter search (grid, random, Optuna TPE) over estimator families, scored by CV."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.model_selection import KFold, StratifiedKFold, TimeSeriesSplit
from tqdm import tqdm

from champion.training.config import Choice, Contract, MetricsSection, Param, Range
from champion.training.metrics import compute, model_outputs, oriented, positive_label
from champion.training.pipeline import Candidate, build_pipeline, fit_rows
from champion.training.shared_tuning import (
    CLAIM_ATTR,
    DUPLICATE_ATTR,
    RESULT_ATTR,
    Outcome,
    SharedStudy,
)

log = logging.getLogger(__name__)

Split = tuple[np.ndarray, np.ndarray]

# Shipped defaults; a family declared in champion.toml replaces its default space entirely.
DEFAULT_SPACES: dict[str, dict[str, Param]] = {
    "logistic": {"C": Range(low=0.01, high=100.0, log=True)},
    "linear": {"alpha": Range(low=1e-3, high=100.0, log=True)},
    "random_forest": {
        "n_estimators": Choice(choices=(100, 200)),
        "max_depth": Choice(choices=(8, 16, None)),
        "min_samples_leaf": Range(low=1, high=20, integer=True, log=True),
        "max_features": Choice(choices=("sqrt", 0.5)),
    },
    "hist_gradient_boosting": {
        "learning_rate": Range(low=0.02, high=0.3, log=True),
        "max_leaf_nodes": Range(low=8, high=64, integer=True, log=True),
        "min_samples_leaf": Range(low=5, high=60, integer=True, log=True),
        "l2_regularization": Range(low=1e-4, high=1.0, log=True),
    },
}
REDUCTION = "reduction"


@dataclass(frozen=True)
class TrialResult:
    """One evaluated candidate: fold scores of the primary metric (natural units)."""

    number: int
    candidate: Candidate
    fold_scores: tuple[float, ...]
    guardrail_scores: Mapping[str, tuple[float, ...]]
    seconds: float
    source: str
    error: str | None = None
    pruned: bool = False  # stopped after the folds in fold_scores; never the best

    @property
    def complete(self) -> bool:
        """Every fold scored: the only kind of trial that may be chosen as the best."""
        return self.error is None and not self.pruned and math.isfinite(self.mean)

    @property
    def mean(self) -> float:
        finite = [s for s in self.fold_scores if math.isfinite(s)]
        return float(np.mean(finite)) if finite else math.nan

    @property
    def std(self) -> float:
        finite = [s for s in self.fold_scores if math.isfinite(s)]
        return float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0


@dataclass(frozen=True)
class TuneResult:
    best: TrialResult
    trials: tuple[TrialResult, ...]
    stopped_by: str
    seconds: float


@dataclass(frozen=True)
class WorkerResult:
    """What one `tune_worker` scored for a shared study, and why it stopped."""

    trials: tuple[TrialResult, ...]
    best: TrialResult | None  # of this worker's complete trials
    stopped_by: str  # "trials", "time", "closed" or "exhausted"
    seconds: float


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def trial_attrs(result: TrialResult) -> dict[str, Any]:
    """A trial's result as JSON-safe Optuna user attributes (a non-finite score is null)."""
    return {
        "candidate": result.candidate.to_json(),
        "fold_scores": [_finite(s) for s in result.fold_scores],
        "guardrail_scores": {
            k: [_finite(s) for s in v] for k, v in sorted(result.guardrail_scores.items())
        },
        "seconds": result.seconds,
        "source": result.source,
        "error": result.error,
        "pruned": result.pruned,
    }


def trial_from_attrs(attrs: Mapping[str, Any], *, number: int) -> TrialResult:
    """The TrialResult `trial_attrs` stored, numbered `number`."""

    def scores(values: Sequence[float | None]) -> tuple[float, ...]:
        return tuple(math.nan if v is None else float(v) for v in values)

    return TrialResult(
        number=number,
        candidate=Candidate.from_json(attrs["candidate"]),
        fold_scores=scores(attrs["fold_scores"]),
        guardrail_scores={k: scores(v) for k, v in attrs["guardrail_scores"].items()},
        seconds=float(attrs["seconds"]),
        source=str(attrs["source"]),
        error=attrs.get("error"),
        pruned=bool(attrs.get("pruned", False)),
    )


def splits(
    contract: Contract, y: np.ndarray, *, repeats: int = 1, seed: int, shuffled: bool = False
) -> list[Split]:
    """CV splits by the contract's scheme; rows must already be in time order for 'time'.

    `shuffled` asks for (stratified) shuffled folds even when the scheme is 'time'.
    """
    idx = np.arange(len(y))
    scheme = contract.cv_scheme
    if shuffled and scheme == "time":
        scheme = "stratified" if contract.task == "classification" else "kfold"
    folds = contract.cv.folds
    if scheme == "time":
        return list(TimeSeriesSplit(n_splits=folds).split(idx))
    out: list[Split] = []
    for r in range(repeats):
        if scheme == "stratified":
            counts = np.unique(y, return_counts=True)[1]
            k = int(min(folds, counts.min())) if len(counts) else folds
            splitter: Any = StratifiedKFold(n_splits=max(k, 2), shuffle=True, random_state=seed + r)
            out.extend(splitter.split(idx, y))
        else:
            out.extend(KFold(n_splits=folds, shuffle=True, random_state=seed + r).split(idx))
    return out


def metric_names(contract: Contract) -> list[str]:
    return [contract.metrics.primary, *contract.metrics.guarded]


def classes_of(contract: Contract, y: np.ndarray) -> list[Any] | None:
    return sorted(np.unique(y).tolist()) if contract.task == "classification" else None


def _fit_score(
    pipeline: Any,
    X: pd.DataFrame,
    y: np.ndarray,
    split: Split,
    names: list[str],
    classes: list[Any] | None,
    spec: MetricsSection | None = None,
    weights: np.ndarray | None = None,
) -> dict[str, float]:
    train, test = split
    model = fit_rows(clone(pipeline), X, y, train, weights)
    pred, proba = model_outputs(model, X.iloc[test])
    if proba is not None and classes is not None and list(model.classes_) != classes:
        # A fold missing a class: widen the probabilities to the full class list.
        full = np.zeros((len(test), len(classes)))
        for j, c in enumerate(model.classes_):
            full[:, classes.index(c)] = proba[:, j]
        proba = full
    return compute(names, y_true=y[test], y_pred=pred, proba=proba, classes=classes, spec=spec)


def cross_validate(
    contract: Contract,
    candidate: Candidate,
    X: pd.DataFrame,
    y: np.ndarray,
    folds: Sequence[Split],
    *,
    seed: int,
    n_jobs: int = 1,
    weights: np.ndarray | None = None,
) -> dict[str, tuple[float, ...]]:
    """Per-fold values of the primary and guardrail metrics for one candidate (fits weigh
    rows by `weights`; the scores do not)."""
    pipeline = build_pipeline(contract, candidate, seed=seed)
    names = metric_names(contract)
    classes = classes_of(contract, y)
    spec = contract.metrics
    positive_label(classes, spec.positive_class)  # a wrong positive class fails here, once
    jobs = (delayed(_fit_score)(pipeline, X, y, s, names, classes, spec, weights) for s in folds)
    results = (
        Parallel(n_jobs=n_jobs)(jobs)
        if n_jobs > 1
        else [_fit_score(pipeline, X, y, s, names, classes, spec, weights) for s in folds]
    )
    return {n: tuple(r[n] for r in results) for n in names}


# Searched by every classification family that keeps its default space: imbalance handled
# by reweighting the classes, or not.
CLASS_WEIGHT = Choice(choices=(None, "balanced"))


def spaces_for(contract: Contract) -> dict[str, dict[str, Param]]:
    """Each searched family's space: the contract's own, else the shipped default."""
    spaces: dict[str, dict[str, Param]] = {}
    for family in contract.families:
        declared = contract.search.space.get(family)
        space = dict(declared if declared is not None else DEFAULT_SPACES.get(family, {}))
        if declared is None and contract.task == "classification":
            space["class_weight"] = CLASS_WEIGHT
        spaces[family] = space
    return spaces


def _reduction_choices(contract: Contract) -> list[int]:
    space = contract.search.space.get(REDUCTION, {})
    param = space.get("components")
    if param is None:
        return [0]
    if isinstance(param, Choice):
        return [int(c or 0) for c in param.choices]
    return [int(v) for v in _grid_values(param, 3)]


def _grid_values(param: Param, points: int) -> list[Any]:
    if isinstance(param, Choice):
        return list(param.choices)
    if param.log:
        values = np.geomspace(param.low, param.high, points)
    else:
        values = np.linspace(param.low, param.high, points)
    if param.integer:
        return sorted({round(v) for v in values})
    return [float(v) for v in values]


def _sample(param: Param, rng: np.random.Generator) -> Any:
    if isinstance(param, Choice):
        return param.choices[int(rng.integers(len(param.choices)))]
    if param.log:
        value = float(np.exp(rng.uniform(np.log(param.low), np.log(param.high))))
    else:
        value = float(rng.uniform(param.low, param.high))
    return round(value) if param.integer else value


def _grid(contract: Contract) -> Iterator[Candidate]:
    points = contract.search.grid_points
    for family, space in spaces_for(contract).items():
        names = sorted(space)
        axes = [_grid_values(space[n], points) for n in names]
        for components in _reduction_choices(contract):
            for combo in itertools.product(*axes):
                yield Candidate(family, dict(zip(names, combo, strict=True)), components)


def _random(contract: Contract, seed: int) -> Iterator[Candidate]:
    rng = np.random.default_rng(seed)
    spaces = spaces_for(contract)
    families = sorted(spaces)
    reductions = _reduction_choices(contract)
    while True:
        family = families[int(rng.integers(len(families)))]
        params = {n: _sample(p, rng) for n, p in sorted(spaces[family].items())}
        yield Candidate(family, params, reductions[int(rng.integers(len(reductions)))])


def _distribution(param: Param) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution `_suggest` draws this parameter from."""
    if isinstance(param, Choice):
        return optuna.distributions.CategoricalDistribution(list(param.choices))
    if param.integer:
        return optuna.distributions.IntDistribution(int(param.low), int(param.high), log=param.log)
    return optuna.distributions.FloatDistribution(param.low, param.high, log=param.log)


def _inside(param: Param, value: Any) -> bool:
    """Whether a value is one `_suggest` could have drawn for this parameter."""
    if isinstance(param, Choice):
        return any(type(value) is type(c) and value == c for c in param.choices)
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return False
    if param.integer and float(value) != round(float(value)):
        return False
    return bool(param.low <= value <= param.high)


def _bayes_trial(
    contract: Contract, candidate: Candidate
) -> tuple[dict[str, Any], dict[str, optuna.distributions.BaseDistribution]] | None:
    """The candidate as the parameters and distributions of an Optuna trial, or None when
    `_bayes_candidate` could not have proposed it (another space, a value out of range)."""
    space = spaces_for(contract).get(candidate.family)
    if space is None or set(candidate.params) != set(space):
        return None
    if not all(_inside(space[n], v) for n, v in candidate.params.items()):
        return None
    params: dict[str, Any] = {"family": candidate.family}
    dists: dict[str, optuna.distributions.BaseDistribution] = {
        "family": optuna.distributions.CategoricalDistribution(sorted(spaces_for(contract)))
    }
    for name, param in sorted(space.items()):
        value = candidate.params[name]
        key = f"{candidate.family}.{name}"
        params[key] = int(value) if isinstance(param, Range) and param.integer else value
        dists[key] = _distribution(param)
    reductions = _reduction_choices(contract)
    if len(reductions) > 1:
        if candidate.components not in reductions:
            return None
        params["components"] = candidate.components
        dists["components"] = optuna.distributions.CategoricalDistribution(reductions)
    elif candidate.components != reductions[0]:
        return None
    return params, dists


def _suggest(trial: optuna.Trial, name: str, param: Param) -> Any:
    if isinstance(param, Choice):
        return trial.suggest_categorical(name, list(param.choices))
    if param.integer:
        return trial.suggest_int(name, int(param.low), int(param.high), log=param.log)
    return trial.suggest_float(name, param.low, param.high, log=param.log)


def _bayes_candidate(trial: optuna.Trial, contract: Contract) -> Candidate:
    spaces = spaces_for(contract)
    family = str(trial.suggest_categorical("family", sorted(spaces)))
    params = {n: _suggest(trial, f"{family}.{n}", p) for n, p in sorted(spaces[family].items())}
    reductions = _reduction_choices(contract)
    components = (
        int(trial.suggest_categorical("components", reductions))
        if len(reductions) > 1
        else reductions[0]
    )
    return Candidate(family, params, components)


def _middle(param: Param) -> Any:
    if isinstance(param, Choice):
        return param.choices[0]
    value = np.sqrt(param.low * param.high) if param.log else (param.low + param.high) / 2
    return round(float(value)) if param.integer else float(value)


def family_defaults(contract: Contract) -> list[Candidate]:
    """One starting point per searched family: the estimator's own default for each parameter
    the space admits it for, else the middle of the range (or the first choice)."""
    reductions = _reduction_choices(contract)
    out: list[Candidate] = []
    for family, space in sorted(spaces_for(contract).items()):
        try:
            model = build_pipeline(contract, Candidate(family), seed=0).named_steps["model"]
        except ValueError:  # an unknown family fails as a trial, not here
            continue
        own = model.get_params()
        params = {
            n: own[n] if n in own and _inside(p, own[n]) else _middle(p)
            for n, p in sorted(space.items())
        }
        out.append(Candidate(family, params, reductions[0]))
    return out


# Bayes search (measured on the demo contract against an exhaustive grid, see champion.toml):
# - TPE models the parameters jointly and per family (multivariate, group), not one by one;
# - it starts from each family's defaults (`family_defaults`) and, when there is one, from the
#   champion's own score, instead of only from random points;
# - a trial reports the running mean of its folds after each one and stops early when that
#   mean is below the median of the other trials' at the same fold (`_FoldMedianPruner`), so
#   the budget buys more trials.
_TPE_STARTUP = 10  # random trials (the family defaults included) before TPE takes over
_PRUNE_STARTUP = 5  # trials that must have reached a fold before any is stopped there
_PRUNE_WARMUP = 1  # first fold index a trial may be stopped after: never after one fold


class _FoldMedianPruner(optuna.pruners.BasePruner):
    """Stop a trial whose running mean after fold k is below the median of every other
    trial's running mean after fold k, stopped trials included.

    Optuna's MedianPruner compares with finished trials only: once weak trials are stopped,
    only strong ones finish, its median climbs and it stops good candidates too (on the demo
    data it stopped, after two folds, a candidate that would have been its search's best).
    """

    def __init__(self, *, n_startup_trials: int, n_warmup_steps: int) -> None:
        self._startup = n_startup_trials
        self._warmup = n_warmup_steps

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step < self._warmup:
            return False
        states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        others = [
            t.intermediate_values[step]
            for t in study.get_trials(deepcopy=False, states=states)
            if step in t.intermediate_values
        ]
        if len(others) < self._startup:
            return False
        return bool(trial.intermediate_values[step] < float(np.median(others)))


def _study(seed: int, shared: SharedStudy | None = None) -> optuna.Study:
    """A new in-memory study, or the shared one loaded with this process's sampler."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # group=True
        # Constant liar (Optuna's default): a running trial, another participant's in a
        # shared study, counts as a poor one, so concurrent proposals spread out.
        sampler = optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=_TPE_STARTUP,
            multivariate=True,
            group=True,
            constant_liar=True,
        )
    pruner = _FoldMedianPruner(n_startup_trials=_PRUNE_STARTUP, n_warmup_steps=_PRUNE_WARMUP)
    if shared is None:
        return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    return optuna.load_study(
        study_name=shared.name, storage=shared.store.storage, sampler=sampler, pruner=pruner
    )


def participant_seed(seed: int, owner: str) -> int:
    """A worker's own sampler seed: participants drawing from one seed would propose the
    same random start points, each a duplicate of the other's."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{owner}".encode()).digest()[:4], "big")


_POLL = 0.2  # seconds between looks at a shared study's unfinished claims
CLAIM_GRACE = 30.0  # seconds past the time budget the cycle waits for other processes' trials


def _chunks(folds: Sequence[Split], size: int) -> Iterator[Sequence[Split]]:
    for i in range(0, len(folds), size):
        yield folds[i : i + size]


class _Search:
    """What one `tune` call's steps share: the data and folds, the trials so far, the
    candidates already scored and the proposer (an Optuna study for bayes, else an iterator).

    With a shared study (bayes only) this process is one participant of several: it claims
    each candidate before scoring it (`_shared_step`) and stores the result on its trial.
    """

    def __init__(
        self,
        X: pd.DataFrame,
        y: np.ndarray,
        contract: Contract,
        *,
        on_trial: Callable[[TrialResult], None] | None,
        clock: Callable[[], float],
        shared: SharedStudy | None = None,
        owner: str = "cycle",
        source: str = "search",
        sampler_seed: int | None = None,
        weights: np.ndarray | None = None,
    ) -> None:
        self.X = X
        self.y = y
        self.weights = weights
        self.contract = contract
        self.config = contract.search
        self.seed = self.config.seed
        self.folds = splits(contract, y, seed=self.seed)
        self.primary = contract.metrics.primary
        self.names = metric_names(contract)
        self.on_trial = on_trial
        self.clock = clock
        self.started = clock()
        self.trials: list[TrialResult] = []
        self.seen: set[str] = set()
        self.study: optuna.Study | None = None
        self.grid: Iterator[Candidate] | None = None
        self.shared = shared
        self.owner = owner
        self.source = source
        strategy = self.config.strategy
        if shared is not None and strategy != "bayes":
            raise ValueError(f"a shared study needs the bayes strategy, not {strategy!r}")
        if strategy == "bayes":
            self.study = _study(self.seed if sampler_seed is None else sampler_seed, shared)
        else:
            self.grid = _grid(contract) if strategy == "grid" else _random(contract, self.seed)

    def start(self, baseline: Candidate | None, bar: tqdm) -> None:
        """The champion first, then (bayes) each family's defaults queued for TPE."""
        if self.shared is not None:
            self._start_shared(baseline, bar)
            return
        if baseline is not None and baseline.family in spaces_for(self.contract):
            result = self.evaluate(baseline, "champion")
            self._record(baseline, bar)
            self._warm_start(baseline, result)
        if self.study is not None:
            for default in family_defaults(self.contract):
                start = _bayes_trial(self.contract, default)
                if start is not None and default.to_json() not in self.seen:
                    self.study.enqueue_trial(start[0])

    def _warm_start(self, baseline: Candidate, result: TrialResult) -> None:
        # The champion's score tells TPE where good points were last time.
        if self.study is None:
            return
        warm = _bayes_trial(self.contract, baseline)
        if warm is not None and result.complete:
            self.study.add_trial(
                optuna.trial.create_trial(
                    params=warm[0],
                    distributions=warm[1],
                    value=_objective(self.primary, result),
                    intermediate_values=_running_values(self.primary, result.fold_scores),
                )
            )

    def _start_shared(self, baseline: Candidate | None, bar: tqdm) -> None:
        """The cycle's side of a shared study: claim the champion's candidate, queue the
        family defaults, open the study to workers, then score the champion."""
        assert self.study is not None and self.shared is not None
        claims = self.shared.claims
        first: tuple[Candidate, int] | None = None
        if baseline is not None and baseline.family in spaces_for(self.contract):
            claim = claims.claim(baseline.to_json(), self.owner, None)
            if claim.outcome is Outcome.CLAIMED and claim.seq is not None:
                first = (baseline, claim.seq)
        for default in family_defaults(self.contract):
            start = _bayes_trial(self.contract, default)
            if start is not None and (first is None or default.to_json() != first[0].to_json()):
                self.study.enqueue_trial(start[0])
        self.shared.publish()
        if first is None:
            return
        candidate, seq = first
        key = candidate.to_json()
        try:
            result = self.evaluate(candidate, "champion")
            self._add_scored(candidate, result, seq)
        except BaseException:
            claims.release(key)
            raise
        claims.finish(key)
        self._record(candidate, bar)

    def _add_scored(self, candidate: Candidate, result: TrialResult, seq: int) -> None:
        """Put a result scored outside an asked trial (the champion's) into the shared study:
        a warm start for TPE when it is one, else a FAIL trial that only carries it."""
        assert self.study is not None
        attrs = {CLAIM_ATTR: seq, RESULT_ATTR: trial_attrs(result)}
        warm = _bayes_trial(self.contract, candidate)
        if warm is not None and result.complete:
            frozen = optuna.trial.create_trial(
                params=warm[0],
                distributions=warm[1],
                value=_objective(self.primary, result),
                intermediate_values=_running_values(self.primary, result.fold_scores),
                user_attrs=attrs,
            )
        else:
            frozen = optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=attrs)
        self.study.add_trial(frozen)

    def run(self, bar: tqdm) -> str:
        """Propose and score candidates until a budget runs out; returns what stopped it.

        In a shared study the claims keep the trial budget (every participant's trials
        count) and the deadline; this process's own clock still stops it at its budget.
        """
        while self.shared is not None or len(self.trials) < self.config.max_trials:
            if self.clock() - self.started >= self.config.max_seconds:
                return "time"
            if self.shared is not None:
                stop = self._shared_step(bar)
            elif self.study is not None:
                stop = self._bayes_step(bar)
            else:
                stop = self._grid_step(bar)
            if stop is not None:
                return stop
        return "trials"

    def _shared_step(self, bar: tqdm) -> str | None:
        """Ask, claim, score, store the result on the trial, tell; None while the study
        has budget left. A candidate claimed already is told its known score (or FAIL when
        it is still being scored elsewhere), never scored twice."""
        assert self.study is not None and self.shared is not None
        claims = self.shared.claims
        trial = self.study.ask()
        candidate = _bayes_candidate(trial, self.contract)
        key = candidate.to_json()
        claim = claims.claim(key, self.owner, trial.number)
        if claim.outcome is Outcome.CLAIMED:
            trial.set_user_attr(CLAIM_ATTR, claim.seq)
            try:
                result = self.evaluate(candidate, self.source, trial)
                trial.set_user_attr(RESULT_ATTR, trial_attrs(result))
                self._tell(trial, result)
            except BaseException:
                claims.release(key)
                with contextlib.suppress(Exception):  # told already when telling failed
                    self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                raise
            claims.finish(key)
            self._record(candidate, bar)
            return None
        if claim.outcome is Outcome.TAKEN:
            known = self._known(key)
            trial.set_user_attr(DUPLICATE_ATTR, True)
            if known is None:
                self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                _report_running(trial, self.primary, known)
                self._tell(trial, known)
            crowded = len(self.study.get_trials(deepcopy=False)) > self.config.max_trials * 5
            return "exhausted" if crowded else None
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return {Outcome.SPENT: "trials", Outcome.LATE: "time"}.get(claim.outcome, "closed")

    def _known(self, key: str) -> TrialResult | None:
        """A candidate's result as some participant stored it, if it is scored already."""
        assert self.study is not None
        for t in self.study.get_trials(deepcopy=False):
            attrs = t.user_attrs.get(RESULT_ATTR)
            if attrs is not None and attrs["candidate"] == key:
                return trial_from_attrs(attrs, number=t.number)
        return None

    def gather(self, *, grace: float) -> None:
        """The cycle's side, once its study is closed: wait (up to the time budget plus
        `grace`) for trials other processes claimed, then take every scored trial of the
        study as this search's, numbered in the order their claims were given."""
        assert self.study is not None and self.shared is not None
        shared = self.shared
        limit = shared.spec.deadline + grace
        pending = shared.claims.pending()
        while any(p.alive for p in pending) and shared.store.now() < limit:
            time.sleep(_POLL)
            pending = shared.claims.pending()
        if pending:
            log.warning(
                "trials claimed in the shared study did not finish (their process is gone or "
                "took too long); the cycle goes on without them (they count as no trial)",
                extra={
                    "study": shared.name,
                    "unfinished": [
                        f"{p.owner} trial {p.trial}{'' if p.alive else ' (gone)'}" for p in pending
                    ],
                },
            )
        unfinished = {p.candidate for p in pending}
        scored = [
            t
            for t in self.study.get_trials(deepcopy=False)
            if RESULT_ATTR in t.user_attrs
            and CLAIM_ATTR in t.user_attrs
            and t.user_attrs[RESULT_ATTR]["candidate"] not in unfinished
        ]
        scored.sort(key=lambda t: int(t.user_attrs[CLAIM_ATTR]))
        self.trials = [
            trial_from_attrs(t.user_attrs[RESULT_ATTR], number=i) for i, t in enumerate(scored)
        ]
        sources = sorted({t.source for t in self.trials})
        log.info(
            "shared study gathered",
            extra={
                "study": shared.name,
                "trials": len(self.trials),
                "by_source": {s: sum(t.source == s for t in self.trials) for s in sources},
            },
        )

    def _bayes_step(self, bar: tqdm) -> str | None:
        assert self.study is not None
        trial = self.study.ask()
        candidate = _bayes_candidate(trial, self.contract)
        key = candidate.to_json()
        if key in self.seen:
            # TPE re-proposed a point already scored: tell it the known score, move on.
            known = next(t for t in self.trials if t.candidate.to_json() == key)
            _report_running(trial, self.primary, known)
            self._tell(trial, known)
            return "exhausted" if len(self.study.trials) > self.config.max_trials * 5 else None
        self._tell(trial, self.evaluate(candidate, "search", trial))
        self._record(candidate, bar)
        return None

    def _grid_step(self, bar: tqdm) -> str | None:
        assert self.grid is not None
        candidate = next(self.grid, None)
        if candidate is None:
            return "exhausted"
        if candidate.to_json() not in self.seen:
            self.evaluate(candidate, "search")
            self._record(candidate, bar)
        return None

    def _tell(self, trial: optuna.Trial, result: TrialResult) -> None:
        assert self.study is not None
        if result.pruned:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(trial, _objective(self.primary, result))

    def _record(self, candidate: Candidate, bar: tqdm) -> None:
        self.seen.add(candidate.to_json())
        bar.update(1)
        bar.set_postfix_str(f"best {self.primary}={self._best_text()}")

    def _best_text(self) -> str:
        ok = [t for t in self.trials if t.complete]
        if not ok:
            return "-"
        best = max(ok, key=lambda t: oriented(self.primary, t.mean))
        return f"{best.mean:.4f}"

    def evaluate(
        self, candidate: Candidate, source: str, trial: optuna.Trial | None = None
    ) -> TrialResult:
        """Score a candidate and record it as the next trial; a candidate that cannot fit is
        a failed trial (error set, NaN score), not a failed cycle."""
        t0 = self.clock()
        try:
            scores, pruned = self._score(candidate, trial)
            error = None
        except Exception as exc:
            scores = {n: [math.nan] for n in self.names}
            pruned = False
            error = f"{type(exc).__name__}: {exc}"
            log.warning("trial failed", extra={"candidate": candidate.label(), "error": error})
        result = TrialResult(
            number=len(self.trials),
            candidate=candidate,
            fold_scores=tuple(scores[self.primary]),
            guardrail_scores={k: tuple(v) for k, v in scores.items() if k != self.primary},
            seconds=self.clock() - t0,
            source=source,
            error=error,
            pruned=pruned,
        )
        self.trials.append(result)
        if self.on_trial is not None:
            self.on_trial(result)
        return result

    def _score(
        self, candidate: Candidate, trial: optuna.Trial | None
    ) -> tuple[dict[str, list[float]], bool]:
        """Per-fold scores and whether the pruner stopped it. With a bayes trial, folds go
        n_jobs at a time and the pruner may stop it between batches (folds so far kept)."""
        scores: dict[str, list[float]] = {n: [] for n in self.names}
        n_jobs = self.config.n_jobs
        batches = [self.folds] if trial is None else list(_chunks(self.folds, n_jobs))
        for batch in batches:
            part = cross_validate(
                self.contract,
                candidate,
                self.X,
                self.y,
                batch,
                seed=self.seed,
                n_jobs=n_jobs,
                weights=self.weights,
            )
            for n in self.names:
                scores[n].extend(part[n])
            if trial is not None and self._prune(trial, scores[self.primary]):
                return scores, True
        return scores, False

    def _prune(self, trial: optuna.Trial, fold_scores: list[float]) -> bool:
        """Report the running mean after the last fold scored; stop if the pruner says so."""
        done = len(fold_scores)
        running = _running_values(self.primary, fold_scores)
        if done - 1 in running:
            trial.report(running[done - 1], step=done - 1)
        return done < len(self.folds) and trial.should_prune()

    def best(self) -> TrialResult | None:
        ok = [t for t in self.trials if t.complete]
        if not ok:
            return None
        # Ties go to the earlier trial, so the champion's own parameters win a draw.
        return max(ok, key=lambda t: (oriented(self.primary, t.mean), -t.number))

    def result(self, stopped_by: str) -> TuneResult:
        # Only a trial scored on every fold can be the best: a pruned trial's partial mean is
        # not comparable, and the gate needs the best's full fold scores.
        best = self.best()
        if best is None:
            errors = "; ".join(sorted({t.error or "no finite score" for t in self.trials}))
            raise RuntimeError(f"every trial failed: {errors}")
        return TuneResult(
            best=best,
            trials=tuple(self.trials),
            stopped_by=stopped_by,
            seconds=self.clock() - self.started,
        )


def tune(
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    contract: Contract,
    baseline: Candidate | None = None,
    on_trial: Callable[[TrialResult], None] | None = None,
    progress: bool | None = None,
    clock: Callable[[], float] = time.monotonic,
    shared: SharedStudy | None = None,
    grace: float = CLAIM_GRACE,
    weights: np.ndarray | None = None,
) -> TuneResult:
    """Search the contract's space within its trial and time budget; the baseline goes first.

    The same data, contract and seed give the same trials, unless the time budget cuts the
    search short (then fewer trials run, each still repeatable).

    With `shared` (an open study, bayes only) workers may join: the budget counts every
    participant's trials, the result holds them all (`on_trial` is called for each once
    the search has ended) and its trials are no longer repeatable.
    """
    deferred = shared is not None  # a shared study's trials are known once it has ended
    search = _Search(
        X,
        y,
        contract,
        on_trial=None if deferred else on_trial,
        clock=clock,
        shared=shared,
        weights=weights,
    )
    with tqdm(
        total=contract.search.max_trials,
        desc="tuning",
        unit="trial",
        disable=None if progress is None else not progress,
    ) as bar:
        try:
            search.start(baseline, bar)
            stopped_by = search.run(bar)
        finally:
            if shared is not None:
                shared.close()  # even when the search failed: its workers stop
                shared.claims.leave()
    if shared is not None:
        search.gather(grace=grace)
        if on_trial is not None:
            for t in search.trials:
                on_trial(t)
    return search.result(stopped_by)


def tune_worker(
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    contract: Contract,
    shared: SharedStudy,
    owner: str,
    on_trial: Callable[[TrialResult], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    weights: np.ndarray | None = None,
) -> WorkerResult:
    """Join a cycle's shared study: claim, score and store trials until its budget is spent,
    its deadline passes or the cycle closes it. X and y must be the cycle's (the caller
    checks the fingerprint); the folds follow from them and the contract's seed."""
    search = _Search(
        X,
        y,
        contract,
        on_trial=on_trial,
        clock=clock,
        shared=shared,
        owner=owner,
        source=f"worker:{owner}",
        sampler_seed=participant_seed(shared.spec.seed, owner),
        weights=weights,
    )
    try:
        with tqdm(disable=True) as bar:
            stopped_by = search.run(bar)
    finally:
        shared.claims.leave()
    return WorkerResult(
        trials=tuple(search.trials),
        best=search.best(),
        stopped_by=stopped_by,
        seconds=clock() - search.started,
    )


def _running_values(primary: str, fold_scores: Sequence[float]) -> dict[int, float]:
    """Running means of the primary metric after each fold (oriented: higher is better), as
    the pruner sees them; a fold without a finite score adds no value of its own."""
    out: dict[int, float] = {}
    for i in range(len(fold_scores)):
        finite = [s for s in fold_scores[: i + 1] if math.isfinite(s)]
        if finite:
            out[i] = oriented(primary, float(np.mean(finite)))
    return out


def _report_running(trial: optuna.Trial, primary: str, result: TrialResult) -> None:
    for step, value in _running_values(primary, result.fold_scores).items():
        trial.report(value, step=step)


def _objective(primary: str, result: TrialResult) -> float:
    return oriented(primary, result.mean) if math.isfinite(result.mean) else -1e12
