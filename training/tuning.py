"""Hyperparameter search (grid, random, Optuna TPE) over estimator families, scored by CV."""

from __future__ import annotations

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

from champion.training.config import Choice, Contract, Param, Range
from champion.training.metrics import compute, model_outputs, oriented
from champion.training.pipeline import Candidate, build_pipeline

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
    return [contract.metrics.primary, *contract.metrics.guardrails]


def classes_of(contract: Contract, y: np.ndarray) -> list[Any] | None:
    return sorted(np.unique(y).tolist()) if contract.task == "classification" else None


def _fit_score(
    pipeline: Any,
    X: pd.DataFrame,
    y: np.ndarray,
    split: Split,
    names: list[str],
    classes: list[Any] | None,
) -> dict[str, float]:
    train, test = split
    model = clone(pipeline).fit(X.iloc[train], y[train])
    pred, proba = model_outputs(model, X.iloc[test])
    if proba is not None and classes is not None and list(model.classes_) != classes:
        # A fold missing a class: widen the probabilities to the full class list.
        full = np.zeros((len(test), len(classes)))
        for j, c in enumerate(model.classes_):
            full[:, classes.index(c)] = proba[:, j]
        proba = full
    return compute(names, y_true=y[test], y_pred=pred, proba=proba, classes=classes)


def cross_validate(
    contract: Contract,
    candidate: Candidate,
    X: pd.DataFrame,
    y: np.ndarray,
    folds: Sequence[Split],
    *,
    seed: int,
    n_jobs: int = 1,
) -> dict[str, tuple[float, ...]]:
    """Per-fold values of the primary and guardrail metrics for one candidate."""
    pipeline = build_pipeline(contract, candidate, seed=seed)
    names = metric_names(contract)
    classes = classes_of(contract, y)
    jobs = (delayed(_fit_score)(pipeline, X, y, s, names, classes) for s in folds)
    results = (
        Parallel(n_jobs=n_jobs)(jobs)
        if n_jobs > 1
        else [_fit_score(pipeline, X, y, s, names, classes) for s in folds]
    )
    return {n: tuple(r[n] for r in results) for n in names}


def spaces_for(contract: Contract) -> dict[str, dict[str, Param]]:
    spaces = {
        f: dict(contract.search.space.get(f, DEFAULT_SPACES.get(f, {}))) for f in contract.families
    }
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


def _study(seed: int) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # group=True
        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=_TPE_STARTUP, multivariate=True, group=True
        )
    pruner = _FoldMedianPruner(n_startup_trials=_PRUNE_STARTUP, n_warmup_steps=_PRUNE_WARMUP)
    return optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)


def _chunks(folds: Sequence[Split], size: int) -> Iterator[Sequence[Split]]:
    for i in range(0, len(folds), size):
        yield folds[i : i + size]


def tune(
    X: pd.DataFrame,
    y: np.ndarray,
    *,
    contract: Contract,
    baseline: Candidate | None = None,
    on_trial: Callable[[TrialResult], None] | None = None,
    progress: bool | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TuneResult:
    """Search the contract's space within its trial and time budget; the baseline goes first.

    The same data, contract and seed give the same trials, unless the time budget cuts the
    search short (then fewer trials run, each still repeatable).
    """
    search = contract.search
    seed = search.seed
    folds = splits(contract, y, seed=seed)
    primary = contract.metrics.primary
    names = metric_names(contract)
    started = clock()
    trials: list[TrialResult] = []
    seen: set[str] = set()
    study: optuna.Study | None = None
    grid: Iterator[Candidate] | None = None
    if search.strategy == "bayes":
        study = _study(seed)
    else:
        grid = _grid(contract) if search.strategy == "grid" else _random(contract, seed)

    def evaluate(
        candidate: Candidate, source: str, trial: optuna.Trial | None = None
    ) -> TrialResult:
        """Score a candidate on the folds; with a bayes trial, folds go n_jobs at a time and
        the pruner may stop it between batches (then `pruned`, with the folds scored so far)."""
        t0 = clock()
        scores: dict[str, list[float]] = {n: [] for n in names}
        pruned = False
        try:
            batches = [folds] if trial is None else list(_chunks(folds, search.n_jobs))
            for batch in batches:
                part = cross_validate(
                    contract, candidate, X, y, batch, seed=seed, n_jobs=search.n_jobs
                )
                for n in names:
                    scores[n].extend(part[n])
                if trial is None:
                    continue
                done = len(scores[primary])
                running = _running_values(primary, scores[primary])
                if done - 1 in running:
                    trial.report(running[done - 1], step=done - 1)
                if done < len(folds) and trial.should_prune():
                    pruned = True
                    break
            error = None
        except (
            Exception
        ) as exc:  # a candidate that cannot fit is a failed trial, not a failed cycle
            scores = {n: [math.nan] for n in names}
            pruned = False
            error = f"{type(exc).__name__}: {exc}"
            log.warning("trial failed", extra={"candidate": candidate.label(), "error": error})
        result = TrialResult(
            number=len(trials),
            candidate=candidate,
            fold_scores=tuple(scores[primary]),
            guardrail_scores={k: tuple(v) for k, v in scores.items() if k != primary},
            seconds=clock() - t0,
            source=source,
            error=error,
            pruned=pruned,
        )
        trials.append(result)
        if on_trial is not None:
            on_trial(result)
        return result

    def tell(trial: optuna.Trial, result: TrialResult) -> None:
        assert study is not None
        if result.pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, _objective(primary, result))

    stopped_by = "trials"
    with tqdm(
        total=search.max_trials,
        desc="tuning",
        unit="trial",
        disable=None if progress is None else not progress,
    ) as bar:

        def best_text() -> str:
            ok = [t for t in trials if t.complete]
            if not ok:
                return "-"
            best = max(ok, key=lambda t: oriented(primary, t.mean))
            return f"{best.mean:.4f}"

        if baseline is not None and baseline.family in spaces_for(contract):
            result = evaluate(baseline, "champion")
            seen.add(baseline.to_json())
            bar.update(1)
            bar.set_postfix_str(f"best {primary}={best_text()}")
            # Warm start: the champion's score tells TPE where good points were last time.
            warm = _bayes_trial(contract, baseline) if study is not None else None
            if study is not None and warm is not None and result.complete:
                study.add_trial(
                    optuna.trial.create_trial(
                        params=warm[0],
                        distributions=warm[1],
                        value=_objective(primary, result),
                        intermediate_values=_running_values(primary, result.fold_scores),
                    )
                )
        if study is not None:
            for default in family_defaults(contract):
                start = _bayes_trial(contract, default)
                if start is not None and default.to_json() not in seen:
                    study.enqueue_trial(start[0])
        while len(trials) < search.max_trials:
            if clock() - started >= search.max_seconds:
                stopped_by = "time"
                break
            if study is not None:
                trial = study.ask()
                candidate = _bayes_candidate(trial, contract)
                if candidate.to_json() in seen:
                    # TPE re-proposed a point already scored: tell it the known score, move on.
                    known = next(t for t in trials if t.candidate.to_json() == candidate.to_json())
                    _report_running(trial, primary, known)
                    tell(trial, known)
                    if len(study.trials) > search.max_trials * 5:
                        stopped_by = "exhausted"
                        break
                    continue
                result = evaluate(candidate, "search", trial)
                tell(trial, result)
            else:
                assert grid is not None
                proposed = next(grid, None)
                if proposed is None:
                    stopped_by = "exhausted"
                    break
                candidate = proposed
                if candidate.to_json() in seen:
                    continue
                evaluate(candidate, "search")
            seen.add(candidate.to_json())
            bar.update(1)
            bar.set_postfix_str(f"best {primary}={best_text()}")
    # Only a trial scored on every fold can be the best: a pruned trial's partial mean is not
    # comparable, and the gate needs the best's full fold scores.
    ok = [t for t in trials if t.complete]
    if not ok:
        errors = "; ".join(sorted({t.error or "no finite score" for t in trials}))
        raise RuntimeError(f"every trial failed: {errors}")
    # Ties go to the earlier trial, so the champion's own parameters win a draw.
    best = max(ok, key=lambda t: (oriented(primary, t.mean), -t.number))
    return TuneResult(
        best=best, trials=tuple(trials), stopped_by=stopped_by, seconds=clock() - started
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
