"""One retrain cycle: intake, window, tune, register, gate, compare-and-set promote, ledger."""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.inspection import permutation_importance
from threadpoolctl import threadpool_limits

from champion.monitoring.profile import build_profile, save_profile
from champion.training.artifacts import (
    CV_SCORES,
    FINGERPRINT,
    GATE_FOLDS,
    PLOTS,
    REFERENCE_PROFILE,
    TAG_CANDIDATE,
    TAG_CHAMPION_BEFORE,
    TAG_DATA,
    TAG_ERROR,
    TAG_KIND,
    TAG_LEASE_DOMAIN,
    TAG_REASON,
    TAG_ROWS,
    TAG_SOURCE,
    TAG_TRIGGER,
    TAG_VERDICT,
    VERDICT_FILE,
    ModelRef,
    cv_metrics,
)
from champion.training.clock import SystemClock
from champion.training.compile import compile_pipeline
from champion.training.config import Contract
from champion.training.data import (
    BATCH_COLUMN,
    IntakeReport,
    TrainingData,
    fingerprint,
)
from champion.training.errors import ChampionError, LeaseBusyError
from champion.training.evaluation import paired_evaluation, widen_proba
from champion.training.gate import Decision, PairedScores, decide, decide_first
from champion.training.lease import CYCLE, REGISTRY
from champion.training.metrics import compute, model_outputs, oriented, positive_label
from champion.training.pipeline import (
    Candidate,
    build_pipeline,
    fit_rows,
    prepare_features,
    sample_weights,
)
from champion.training.plots import write_evaluation_plots
from champion.training.ports import BatchStore, Clock, Leases, LedgerStore, ModelRegistry
from champion.training.process import actor
from champion.training.records import CycleReport, Event, LedgerEntry, Verdict
from champion.training.registry import LoadedModel
from champion.training.shared_tuning import SharedStudy, TuningStore, open_study
from champion.training.threshold import tune_threshold
from champion.training.tuning import TrialResult, TuneResult, classes_of, splits, tune

log = logging.getLogger(__name__)

PROFILE_ROWS = 20_000
IMPORTANCE_ROWS = 1_000


@dataclass(frozen=True)
class CycleResult:
    """The outcome of one cycle, as recorded in the ledger."""

    verdict: Verdict
    reason: str
    run_id: str | None = None
    version: str | None = None
    champion_before: str | None = None
    champion_after: str | None = None
    seconds: float = 0.0
    trials: int = 0
    numbers: dict[str, Any] = field(default_factory=dict)
    busy: bool = False  # another cycle held the lease: nothing was tried

    @property
    def exit_code(self) -> int:
        return 1 if self.verdict is Verdict.FAILED else 0

    def report(self) -> CycleReport:
        return CycleReport(
            self.verdict,
            self.reason,
            busy=self.busy,
            version=self.version,
            champion_before=self.champion_before,
            champion_after=self.champion_after,
            trials=self.trials,
            seconds=round(self.seconds, 3),
        )


@dataclass
class Context:
    """What a cycle needs from the outside world: the contract, the ports, two settings.

    The composition root (`champion.service.root`) builds it; tests pass in-memory fakes.
    """

    contract: Contract
    registry: ModelRegistry
    ledger: LedgerStore
    leases: Leases
    batches: BatchStore
    clock: Clock = field(default_factory=SystemClock)
    train_threads: int = 1
    lease_timeout: float = 30.0
    progress: bool | None = None
    # Shared mode: where the bayes search's study lives, for `champion tune-worker` to join.
    tuning: TuningStore | None = None
    # Test seam: called with a stage name as the cycle passes it (e.g. to kill it mid-way).
    checkpoint: Callable[[str], None] = lambda stage: None


def reconcile(ctx: Context) -> list[dict[str, Any]]:
    """Bring the ledger in line with the registry after a crash (caller holds the cycle lease).

    A RUNNING cycle run is ended as KILLED only when it is provably dead: it took the cycle
    lease of this same lease domain, which the caller now holds, so its process is gone.
    """
    written: list[dict[str, Any]] = []
    with ctx.leases.hold(REGISTRY, timeout=ctx.lease_timeout):
        current = ctx.registry.alias("champion")
        recorded = ctx.ledger.last_champion()
        if current is not None and current.version != recorded:
            reason = (
                f"The registry's champion is v{current.version} but the ledger last "
                f"recorded {('v' + recorded) if recorded else 'none'}; recorded now "
                "(a cycle stopped between the alias move and its ledger entry, or "
                "the alias was moved outside champion)."
            )
            tagged = current.verdict
            entry = LedgerEntry(
                Event.RECONCILED,
                reason,
                actor(),
                verdict=Verdict.parse(tagged) if tagged else None,
                moved=True,
                champion_before=recorded,
                champion_after=current.version,
            )
            written.append(ctx.ledger.append(entry))
    for run_id in ctx.registry.running_cycle_runs():
        run = ctx.registry.run_summary(run_id)
        domain = run.tags.get(TAG_LEASE_DOMAIN) if run is not None else None
        if domain is not None and domain != ctx.leases.domain:
            # Its cycle lease is not ours to see: it may be another deployment's live cycle.
            log.warning(
                "a RUNNING cycle run of another lease domain was left alone",
                extra={"run_id": run_id, "its_domain": domain, "ours": ctx.leases.domain},
            )
            continue
        ctx.registry.end_run(run_id, "KILLED")
        reason = (
            "A cycle stopped before finishing (crash or kill); it moved no alias "
            "and its batches will be trained on by the next cycle."
        )
        entry = LedgerEntry(
            Event.CYCLE_INTERRUPTED, reason, actor(), verdict=Verdict.FAILED, run_id=run_id
        )
        written.append(ctx.ledger.append(entry))
    return written


def _champion_batches(ctx: Context, ref: ModelRef) -> set[str]:
    fp = ctx.registry.run_json(ref.run_id, FINGERPRINT) if ref.run_id else None
    return set(fp.get("batches", [])) if fp else set()


def _holdout_outputs(
    ctx: Context,
    candidate: Candidate,
    X: pd.DataFrame,
    y: np.ndarray,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Any]:
    """Fit on all but the last CV fold and predict it: honest rows for plots and importance."""
    train, test = splits(ctx.contract, y, seed=ctx.contract.search.seed)[-1]
    model = clone(build_pipeline(ctx.contract, candidate, seed=ctx.contract.search.seed))
    fit_rows(model, X, y, train, weights)
    pred, proba = model_outputs(
        model, X.iloc[test], threshold=candidate.threshold, spec=ctx.contract.metrics
    )
    return test, pred, proba, model


def _importances(
    contract: Contract,
    model: Any,
    X: pd.DataFrame,
    y: np.ndarray,
    classes: list[Any] | None,
    threshold: float | None,
) -> dict[str, float]:
    """Permutation importance on held-out rows, scored by the primary metric.

    Scored by `compute` itself (oriented), so the contract's positive class, averaging, beta
    and quantile apply exactly as in the gate.
    """
    rows = np.arange(min(len(y), IMPORTANCE_ROWS))
    primary = contract.metrics.primary

    def scoring(estimator: Any, X_: pd.DataFrame, y_: np.ndarray) -> float:
        pred, proba = model_outputs(estimator, X_, threshold=threshold, spec=contract.metrics)
        if proba is not None and classes is not None:
            proba = widen_proba(proba, list(estimator.classes_), classes)
        value = compute(
            [primary], y_true=y_, y_pred=pred, proba=proba, classes=classes, spec=contract.metrics
        )[primary]
        if not math.isfinite(value):
            raise ValueError(f"{primary} is undefined on these rows")
        return oriented(primary, value)

    try:
        imp = permutation_importance(
            model,
            X.iloc[rows],
            y[rows],
            scoring=scoring,
            n_repeats=3,
            random_state=contract.search.seed,
        )
        importances = dict(zip(X.columns, imp.importances_mean.tolist(), strict=True))
    except ValueError:  # e.g. a holdout with one class: no importance, still plots
        importances = {}
    return importances


def _artifacts(
    ctx: Context,
    run_id: str,
    *,
    data: TrainingData,
    X: pd.DataFrame,
    y: np.ndarray,
    tuned: TuneResult,
    final: Any,
    fp: dict[str, Any],
    weights: np.ndarray | None,
) -> None:
    """Plots, reference profile, fingerprint and fold scores of a registered version."""
    contract = ctx.contract
    classes = classes_of(contract, y)
    candidate = tuned.best.candidate
    cut = candidate.threshold
    test, pred, proba, holdout_model = _holdout_outputs(ctx, candidate, X, y, weights)
    importances = _importances(contract, holdout_model, X.iloc[test], y[test], classes, cut)
    sample = data.frame.tail(PROFILE_ROWS)
    Xs = X.loc[sample.index]
    out_pred, out_proba = model_outputs(final, Xs, threshold=cut, spec=contract.metrics)
    profile = build_profile(
        sample,
        numeric=contract.numeric,
        categorical=contract.profiled_categorical,
        predictions=out_pred,
        probabilities=out_proba,
        classes=classes,
    )
    with tempfile.TemporaryDirectory() as tmp:
        plots = write_evaluation_plots(
            task=contract.task,
            y_true=y[test],
            y_pred=pred,
            scores=proba,
            classes=classes,
            importances=importances,
            out_dir=Path(tmp),
            positive=positive_label(classes, contract.metrics.positive_class),
        )
        ctx.registry.log_files(run_id, plots, PLOTS)
        save_profile(profile, Path(tmp) / REFERENCE_PROFILE)
        ctx.registry.log_files(run_id, [Path(tmp) / REFERENCE_PROFILE], "")
    ctx.registry.log_json(run_id, fp, FINGERPRINT)
    ctx.registry.log_json(run_id, _cv_scores(tuned, importances), CV_SCORES)


def _cv_scores(tuned: TuneResult, importances: dict[str, float]) -> dict[str, Any]:
    """Every trial's scores and the best one's folds: enough to audit the choice later."""
    best = tuned.best
    return {
        "best": {
            "candidate": best.candidate.to_json(),
            "fold_scores": list(best.fold_scores),
            "guardrails": {k: list(v) for k, v in best.guardrail_scores.items()},
        },
        "trials": [
            {
                "number": t.number,
                "source": t.source,
                "candidate": t.candidate.to_json(),
                "mean": t.mean,
                "std": t.std,
                "seconds": t.seconds,
                "error": t.error,
            }
            for t in tuned.trials
        ],
        "importances": importances,
    }


def _trial_logger(ctx: Context, parent: str) -> Callable[[TrialResult], None]:
    primary = ctx.contract.metrics.primary

    def on_trial(t: TrialResult) -> None:
        run = ctx.registry.start_run(
            name=f"trial-{t.number:03d}",
            parent=parent,
            tags={
                TAG_KIND: "trial",
                TAG_SOURCE: t.source,
                **({TAG_ERROR: t.error} if t.error else {}),
            },
        )
        metrics = {f"{primary}_fold_{i}": s for i, s in enumerate(t.fold_scores)}
        metrics |= {f"{primary}_mean": t.mean, f"{primary}_std": t.std, "seconds": t.seconds}
        for name, folds in t.guardrail_scores.items():
            metrics[f"{name}_mean"] = float(np.nanmean(folds)) if len(folds) else math.nan
        params = {"family": t.candidate.family, "components": t.candidate.components}
        params |= {f"model.{k}": v for k, v in t.candidate.params.items()}
        ctx.registry.log(run, params=params, metrics=metrics)
        ctx.registry.end_run(run, "FINISHED" if t.error is None else "FAILED")

    return on_trial


def _ledger_entry(
    ctx: Context, result: CycleResult, *, trigger: str, fp: dict[str, Any] | None
) -> None:
    data: dict[str, Any] | None = None
    if fp is not None:
        data = {k: fp[k] for k in ("sha256", "rows", "time_min", "time_max") if k in fp}
        data |= {"batches": len(fp.get("batches", [])), "new_batches": fp.get("new_batches", [])}
    entry = LedgerEntry(
        Event.CYCLE,
        result.reason,
        actor(),
        verdict=result.verdict,
        # SKIPPED and FAILED cycles record no alias unless one moved (reconciliation).
        moved=result.verdict not in (Verdict.SKIPPED, Verdict.FAILED)
        or bool(result.champion_after),
        champion_before=result.champion_before,
        champion_after=result.champion_after,
        trigger=trigger,
        run_id=result.run_id,
        challenger_version=result.version,
        numbers=result.numbers,
        data=data,
        seconds=round(result.seconds, 3),
        trials=result.trials,
    )
    ctx.ledger.append(entry)


def run_cycle(ctx: Context, *, trigger: str = "manual") -> CycleResult:
    """Run one cycle end to end; every outcome, failures included, is a CycleResult."""
    started = ctx.clock.monotonic()
    try:
        # OpenMP/BLAS pools sized to every core spin against each other (and against serving)
        # on a shared machine: a 0.1 s boosting fit was seen taking a minute. Parallelism
        # comes from search.n_jobs (folds in processes) instead.
        with (
            threadpool_limits(limits=ctx.train_threads),
            ctx.leases.hold(CYCLE, timeout=0.0),
        ):
            result = _locked_cycle(ctx, trigger=trigger, started=started)
    except LeaseBusyError:
        result = CycleResult(
            Verdict.SKIPPED,
            "Another retrain cycle is running; this one did nothing.",
            seconds=ctx.clock.monotonic() - started,
            busy=True,
        )
        _ledger_entry(ctx, result, trigger=trigger, fp=None)
    log.info(
        "retrain cycle",
        extra={
            "verdict": result.verdict.value,
            "reason": result.reason,
            "trigger": trigger,
            "run_id": result.run_id,
            "challenger_version": result.version,
            "champion_before": result.champion_before,
            "champion_after": result.champion_after,
            "trials": result.trials,
            "seconds": round(result.seconds, 2),
        },
    )
    return result


def _locked_cycle(ctx: Context, *, trigger: str, started: float) -> CycleResult:
    """The cycle's story, under the cycle lease: every exit is a CycleResult in the ledger."""
    cycle = _Cycle(ctx, trigger=trigger, started=started)
    try:
        reconcile(ctx)
        window = cycle.take_in()
        if isinstance(window, CycleResult):
            return window  # SKIPPED: nothing new to learn from
        cycle.open_run(window)
        tuned = cycle.search(window)
        tuned = cycle.decide_threshold(window, tuned)
        decision = cycle.judge(window, tuned)
        ref = cycle.build_and_register(window, tuned)
        return cycle.conclude(window, tuned, decision, ref)
    except Exception as exc:
        return cycle.failed(exc)


@dataclass
class _Window:
    """The training window and the champion it will be compared with."""

    data: TrainingData
    X: pd.DataFrame
    y: np.ndarray
    fresh: np.ndarray  # rows the champion has not been trained on
    champion: LoadedModel | None
    champion_ref: ModelRef | None
    comparable: bool  # the champion takes the inputs the contract declares
    weights: np.ndarray | None = None  # the contract's `weight` column: what fits weigh by


class _Cycle:
    """One cycle's state as it passes its steps (intake → tune → judge → register → promote)."""

    def __init__(self, ctx: Context, *, trigger: str, started: float) -> None:
        self.ctx = ctx
        self.trigger = trigger
        self.started = started
        self.run_id: str | None = None
        self.fp: dict[str, Any] | None = None
        self.champion_before: str | None = None

    def finish(self, verdict: Verdict, reason: str, **kw: Any) -> CycleResult:
        result = CycleResult(
            verdict,
            reason,
            run_id=self.run_id,
            champion_before=self.champion_before,
            champion_after=kw.pop("champion_after", self.champion_before),
            seconds=self.ctx.clock.monotonic() - self.started,
            **kw,
        )
        _ledger_entry(self.ctx, result, trigger=self.trigger, fp=self.fp)
        return result

    # -- steps ------------------------------------------------------------------------------

    def take_in(self) -> _Window | CycleResult:
        """Intake, the window and the champion; a SKIPPED result when there is nothing to do."""
        ctx, contract = self.ctx, self.ctx.contract
        report = ctx.batches.intake()
        ctx.checkpoint("intake")
        data = ctx.batches.window()
        champion_ref = ctx.registry.alias("champion")
        self.champion_before = champion_ref.version if champion_ref else None
        if data.rows == 0:
            why = _intake_note(report)
            return self.finish(Verdict.SKIPPED, f"No valid data in the landing zone{why}.")
        if contract.task == "classification" and data.frame[contract.target].nunique() < 2:
            # Its batches stay unconsumed: they are trained on once another class arrives.
            only = ", ".join(str(v) for v in data.frame[contract.target].unique())
            return self.finish(
                Verdict.SKIPPED,
                f"The training window holds a single class ({only}); "
                "waiting for batches with other classes.",
            )
        if not data.new_batch_ids:
            why = _intake_note(report)
            return self.finish(Verdict.SKIPPED, f"No new batches since the last cycle{why}.")
        self.fp = fingerprint(data, contract)
        return self._with_champion(data, champion_ref)

    def _with_champion(self, data: TrainingData, ref: ModelRef | None) -> _Window | CycleResult:
        contract = self.ctx.contract
        X = prepare_features(data.frame, contract)
        y = data.frame[contract.target].to_numpy()
        weights = sample_weights(data.frame, contract)
        if ref is None:
            every = np.ones(data.rows, dtype=bool)
            return _Window(data, X, y, every, None, None, False, weights)
        with tempfile.TemporaryDirectory(prefix="champion-model-") as tmp:
            champion = self.ctx.registry.load(ref, cache_dir=Path(tmp))
        comparable = list(champion.input_names) == list(contract.features)
        seen = _champion_batches(self.ctx, ref)
        fresh = ~data.frame[BATCH_COLUMN].isin(seen).to_numpy()
        if not fresh.any():
            self.ctx.batches.mark_consumed(data.new_batch_ids, "already-in-champion")
            return self.finish(
                Verdict.SKIPPED,
                f"The champion v{ref.version} was already trained on every row in the window.",
            )
        return _Window(data, X, y, fresh, champion, ref, comparable, weights)

    def open_run(self, w: _Window) -> None:
        assert self.fp is not None
        self.run_id = self.ctx.registry.start_run(
            name=f"cycle-{self.ctx.clock.now():%Y%m%dT%H%M%S}",
            tags={
                TAG_KIND: "cycle",
                TAG_TRIGGER: self.trigger,
                TAG_CHAMPION_BEFORE: str(self.champion_before),
                TAG_LEASE_DOMAIN: self.ctx.leases.domain,
            },
        )
        self.ctx.registry.log(
            self.run_id,
            params=_run_params(self.ctx.contract, w),
            tags={TAG_DATA: self.fp["sha256"]},
        )

    def search(self, w: _Window) -> TuneResult:
        ctx, contract = self.ctx, self.ctx.contract
        assert self.run_id is not None
        ref = w.champion_ref
        baseline = Candidate.from_json(ref.candidate_json) if ref and ref.candidate_json else None
        if baseline is not None:
            # The search compares probabilities' quality; the threshold is decided after it.
            baseline = replace(baseline, threshold=None)
        ctx.checkpoint("tuning")
        tuned = tune(
            w.X,
            w.y,
            contract=contract,
            baseline=baseline,
            on_trial=_trial_logger(ctx, self.run_id),
            progress=ctx.progress,
            shared=self._shared_study(),
            weights=w.weights,
        )
        best = tuned.best
        guardrails = {k: float(np.nanmean(v)) for k, v in best.guardrail_scores.items()}
        scores = cv_metrics(
            contract.metrics.primary,
            mean=best.mean,
            std=best.std,
            folds=best.fold_scores,
            guardrails=guardrails,
        )
        ctx.registry.log(
            self.run_id,
            metrics=scores | {"trials": len(tuned.trials), "tuning_seconds": tuned.seconds},
            params={"best_candidate": best.candidate.label(), "stopped_by": tuned.stopped_by},
        )
        return tuned

    def decide_threshold(self, w: _Window, tuned: TuneResult) -> TuneResult:
        """A binary classifier's decision threshold, fixed or tuned out of fold; it travels
        with the candidate into the gate, the registered version and serving."""
        ctx = self.ctx
        ctx.checkpoint("threshold")
        best = tuned.best
        fresh = w.fresh if w.champion is not None and w.comparable else None
        choice = tune_threshold(
            ctx.contract, best.candidate, w.X, w.y, fresh=fresh, weights=w.weights
        )
        if choice is None:
            return tuned
        assert self.run_id is not None
        metrics = {}
        if choice.rows:
            metrics = {
                f"threshold_{choice.objective}": choice.score,
                f"threshold_{choice.objective}_at_0.5": choice.default_score,
            }
        ctx.registry.log(
            self.run_id,
            params={"decision_threshold": choice.threshold, "threshold_on": choice.objective},
            metrics=metrics,
        )
        log.info(
            "decision threshold",
            extra={
                "threshold": round(choice.threshold, 4),
                "on": choice.objective,
                "score": choice.score,
                "score_at_0.5": choice.default_score,
                "rows": choice.rows,
            },
        )
        candidate = replace(best.candidate, threshold=choice.threshold)
        return replace(tuned, best=replace(best, candidate=candidate))

    def _shared_study(self) -> SharedStudy | None:
        """In shared mode, the bayes search's study on the shared store, for workers."""
        ctx = self.ctx
        if ctx.tuning is None:
            return None
        if ctx.contract.search.strategy != "bayes":
            log.info(
                "shared tuning applies to the bayes strategy only: tuning in this process",
                extra={"strategy": ctx.contract.search.strategy},
            )
            return None
        assert self.run_id is not None and self.fp is not None
        shared = open_study(
            ctx.tuning, ctx.contract, run_id=self.run_id, fingerprint=self.fp, owner=actor()
        )
        ctx.registry.log(self.run_id, params={"tuning_study": shared.name})
        log.info(
            "tuning study open to `champion tune-worker`",
            extra={"study": shared.name, "store": ctx.tuning.where},
        )
        return shared

    def judge(self, w: _Window, tuned: TuneResult) -> Decision:
        """The gate: paired against the champion on the same folds, or the floor for a first."""
        self.ctx.checkpoint("evaluate")
        contract, best = self.ctx.contract, tuned.best
        if w.champion is not None and w.comparable:
            ref = w.champion_ref
            recipe = ref.candidate_json if ref else None
            paired = paired_evaluation(
                w.X,
                w.y,
                w.fresh,
                contract=contract,
                challenger=best.candidate,
                champion=w.champion.pipeline,
                # The backtest refits the champion's recipe without its held-out older rows.
                champion_candidate=Candidate.from_json(recipe) if recipe else None,
                weights=w.weights,
            )
            assert self.run_id is not None
            _log_gate(self.ctx, self.run_id, paired)
            return decide(paired, contract=contract)
        decision = decide_first(best.mean, contract=contract)
        if w.champion is None:
            return decision
        return Decision(
            decision.verdict,
            f"The champion v{self.champion_before} takes other inputs than the contract now "
            f"declares, so it cannot be compared; judged on the floor instead. "
            f"{decision.reason}",
            decision.checks,
            decision.numbers,
        )

    def build_and_register(self, w: _Window, tuned: TuneResult) -> ModelRef:
        """Fit on the whole window, compile for serving, register the version and its files."""
        ctx, contract, best = self.ctx, self.ctx.contract, tuned.best
        assert self.run_id is not None and self.fp is not None
        final = fit_rows(
            build_pipeline(contract, best.candidate, seed=contract.search.seed),
            w.X,
            w.y,
            weights=w.weights,
        )
        ctx.checkpoint("compile")
        holdout = splits(contract, w.y, seed=contract.search.seed)[-1][1]
        compiled = compile_pipeline(final, contract, w.X.iloc[holdout], seed=contract.search.seed)
        log.info(
            "compiled for serving",
            extra={
                "runtime": compiled.runtime,
                "note": compiled.reason,
                "seconds": round(compiled.seconds, 2),
            },
        )
        parity = {} if compiled.max_diff is None else {"parity_max_diff": compiled.max_diff}
        ctx.registry.log(
            self.run_id,
            params={"serving_runtime": compiled.runtime},
            metrics={"compile_seconds": compiled.seconds} | parity,
        )
        ctx.checkpoint("register")
        ref = ctx.registry.register(
            self.run_id,
            final,
            compilation=compiled,
            example=w.X.head(5),
            tags={
                TAG_CANDIDATE: best.candidate.to_json(),
                TAG_DATA: self.fp["sha256"],
                TAG_ROWS: str(w.data.rows),
            },
        )
        _artifacts(
            ctx,
            self.run_id,
            data=w.data,
            X=w.X,
            y=w.y,
            tuned=tuned,
            final=final,
            fp=self.fp,
            weights=w.weights,
        )
        return ref

    def conclude(
        self, w: _Window, tuned: TuneResult, decision: Decision, ref: ModelRef
    ) -> CycleResult:
        """Promote by compare-and-set (STALE if the champion moved meanwhile), then record."""
        ctx = self.ctx
        assert self.run_id is not None
        ctx.registry.set_version_tags(ref.version, {TAG_VERDICT: decision.verdict.value})
        # Before the alias moves: once it has, the cycle must not fail on a description.
        ctx.registry.describe_version(ref.version, describe(decision, tuned, ctx.contract))
        ctx.checkpoint("promote")
        if decision.verdict is Verdict.PROMOTE:
            with ctx.leases.hold(REGISTRY, timeout=ctx.lease_timeout):
                decision, after = self._move(decision, ref)
                if decision.verdict is Verdict.STALE:
                    ctx.registry.describe_version(
                        ref.version, describe(decision, tuned, ctx.contract)
                    )
                _record(ctx, self.run_id, decision)
                result = self._verdict(decision, tuned, ref, champion_after=after)
        else:
            _record(ctx, self.run_id, decision)
            result = self._verdict(decision, tuned, ref, champion_after=self.champion_before)
        if decision.verdict is not Verdict.STALE:
            ctx.batches.mark_consumed(w.data.new_batch_ids, self.run_id)
        ctx.registry.end_run(self.run_id, "FINISHED")
        return result

    def _move(self, decision: Decision, ref: ModelRef) -> tuple[Decision, str | None]:
        """The alias move (caller holds the registry lease); a lost race turns into STALE."""
        registry = self.ctx.registry
        if registry.move_champion(expected=self.champion_before, new=ref.version):
            self.ctx.checkpoint("moved")
            return decision, ref.version
        now = registry.alias("champion")
        reason = (
            f"The champion changed from {self.champion_before or 'none'} to "
            f"{now.version if now else 'none'} while this cycle ran; nothing moved. "
            f"(Would have promoted: {decision.reason})"
        )
        registry.set_version_tags(ref.version, {TAG_VERDICT: Verdict.STALE.value})
        stale = Decision(Verdict.STALE, reason, decision.checks, decision.numbers)
        # The entry records the champion in place now, the other writer's: the ledger's last
        # champion must stay the registry's.
        return stale, now.version if now else None

    def _verdict(
        self, decision: Decision, tuned: TuneResult, ref: ModelRef, *, champion_after: str | None
    ) -> CycleResult:
        return self.finish(
            decision.verdict,
            decision.reason,
            version=ref.version,
            champion_after=champion_after,
            trials=len(tuned.trials),
            numbers=dict(decision.numbers),
        )

    def failed(self, exc: Exception) -> CycleResult:
        """Any exception: the run is marked FAILED and the ledger says why; nothing moved."""
        message = str(exc) if isinstance(exc, ChampionError) else f"{type(exc).__name__}: {exc}"
        log.exception("retrain cycle failed")
        registry = self.ctx.registry
        if self.run_id is not None:
            try:
                registry.log(
                    self.run_id, tags={TAG_VERDICT: Verdict.FAILED.value, TAG_ERROR: message}
                )
                registry.end_run(self.run_id, "FAILED")
            except Exception:  # the registry itself may be what failed
                log.warning("could not mark the run failed", extra={"run_id": self.run_id})
        try:
            now = registry.alias("champion")
            after = now.version if now else None
        except Exception:
            after = self.champion_before
        return self.finish(Verdict.FAILED, f"The cycle failed: {message}", champion_after=after)


def _intake_note(report: IntakeReport) -> str:
    """What this cycle's intake held back, for a SKIPPED reason ("" when nothing)."""
    notes: list[str] = []
    if report.quarantined:
        first = report.quarantined[0]
        reason = first.reasons[0] if first.reasons else "no reason recorded"
        notes.append(f"{len(report.quarantined)} quarantined ({first.file}: {reason})")
    if report.waiting:
        notes.append(f"{len(report.waiting)} still being written, left for a later cycle")
    return f": {'; '.join(notes)}; see `champion batches`" if notes else ""


def describe(decision: Decision, tuned: TuneResult, contract: Contract) -> str:
    """A registered version's description: its verdict sentence, family and CV summary."""
    best = tuned.best
    folds = len(best.fold_scores)
    return (
        f"{decision.verdict.value}: {decision.reason}\n\n"
        f"Family: {best.candidate.family} ({best.candidate.label()}).\n"
        f"CV {contract.metrics.primary}: {best.mean:.4f} ± {best.std:.4f} over {folds} folds "
        f"({contract.cv_scheme}), best of {len(tuned.trials)} trials."
    )


def _run_params(contract: Contract, w: _Window) -> dict[str, Any]:
    """What the cycle run records about its search, gate and window."""
    return {
        "strategy": contract.search.strategy,
        "max_trials": contract.search.max_trials,
        "max_seconds": contract.search.max_seconds,
        "seed": contract.search.seed,
        "cv_scheme": contract.cv_scheme,
        "cv_folds": contract.cv.folds,
        "cv_repeats": contract.cv.repeats,
        "primary_metric": contract.metrics.primary,
        "gate_min_delta": contract.gate.min_delta,
        "gate_confidence": contract.gate.confidence,
        "gate_method": contract.gate.method,
        "rows": w.data.rows,
        "fresh_rows": int(w.fresh.sum()),
        "batches": len(w.data.batch_ids),
        "new_batches": len(w.data.new_batch_ids),
    }


def _log_gate(ctx: Context, run_id: str, paired: PairedScores) -> None:
    metrics: dict[str, float] = {}
    for name, chal_folds in paired.challenger.items():
        metrics[f"gate_{name}_challenger"] = float(np.nanmean(chal_folds))
        metrics[f"gate_{name}_champion"] = float(np.nanmean(paired.champion[name]))
    ctx.registry.log(run_id, metrics=metrics)
    ctx.registry.log_json(
        run_id,
        {
            "challenger": {k: list(v) for k, v in paired.challenger.items()},
            "champion": {k: list(v) for k, v in paired.champion.items()},
            "test_train_ratio": paired.test_train_ratio,
        },
        GATE_FOLDS,
    )


def _record(ctx: Context, run_id: str, decision: Decision) -> None:
    ctx.registry.log_json(run_id, decision.to_dict(), VERDICT_FILE)
    ctx.registry.log(
        run_id, tags={TAG_VERDICT: decision.verdict.value, TAG_REASON: decision.reason}
    )
