"""One retrain cycle: intake, window, tune, register, gate, compare-and-set promote, ledger."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.inspection import permutation_importance
from threadpoolctl import threadpool_limits

from champion.monitoring.profile import build_profile, save_profile
from champion.training.clock import SystemClock
from champion.training.compile import compile_pipeline
from champion.training.config import Contract
from champion.training.data import (
    BATCH_COLUMN,
    TrainingData,
    fingerprint,
)
from champion.training.errors import ChampionError, LeaseBusyError
from champion.training.evaluation import paired_evaluation
from champion.training.gate import Decision, decide, decide_first
from champion.training.lease import CYCLE, REGISTRY
from champion.training.metrics import model_outputs
from champion.training.pipeline import Candidate, build_pipeline, prepare_features
from champion.training.plots import write_evaluation_plots
from champion.training.ports import BatchStore, Clock, Leases, LedgerStore, ModelRegistry
from champion.training.process import actor
from champion.training.records import CycleReport, Event, LedgerEntry, Verdict
from champion.training.registry import (
    TAG_CANDIDATE,
    TAG_DATA,
    TAG_KIND,
    TAG_ROWS,
    TAG_VERDICT,
    LoadedModel,
    ModelRef,
)
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
    # Test seam: called with a stage name as the cycle passes it (e.g. to kill it mid-way).
    checkpoint: Callable[[str], None] = lambda stage: None


def reconcile(ctx: Context) -> list[dict[str, Any]]:
    """Bring the ledger in line with the registry after a crash (caller holds the cycle lease)."""
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
            tagged = current.tags.get(TAG_VERDICT)
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
    fp = ctx.registry.run_json(ref.run_id, "fingerprint.json") if ref.run_id else None
    return set(fp.get("batches", [])) if fp else set()


def _holdout_outputs(
    ctx: Context, candidate: Candidate, X: pd.DataFrame, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Any]:
    """Fit on all but the last CV fold and predict it: honest rows for plots and importance."""
    train, test = splits(ctx.contract, y, seed=ctx.contract.search.seed)[-1]
    model = clone(build_pipeline(ctx.contract, candidate, seed=ctx.contract.search.seed))
    model.fit(X.iloc[train], y[train])
    pred, proba = model_outputs(model, X.iloc[test])
    return test, pred, proba, model


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
) -> None:
    contract = ctx.contract
    classes = classes_of(contract, y)
    test, pred, proba, holdout_model = _holdout_outputs(ctx, tuned.best.candidate, X, y)
    rows = test[:IMPORTANCE_ROWS]
    scoring = {
        "roc_auc": "roc_auc" if classes and len(classes) == 2 else "roc_auc_ovr",
        "log_loss": "neg_log_loss",
        "rmse": "neg_root_mean_squared_error",
        "mae": "neg_mean_absolute_error",
    }.get(contract.metrics.primary, contract.metrics.primary)
    try:
        imp = permutation_importance(
            holdout_model,
            X.iloc[rows],
            y[rows],
            scoring=scoring,
            n_repeats=3,
            random_state=contract.search.seed,
        )
        importances = dict(zip(X.columns, imp.importances_mean.tolist(), strict=True))
    except ValueError:  # e.g. a holdout with one class: no importance, still plots
        importances = {}
    sample = data.frame.tail(PROFILE_ROWS)
    Xs = X.loc[sample.index]
    out_pred, out_proba = model_outputs(final, Xs)
    profile = build_profile(
        sample,
        numeric=contract.numeric,
        categorical=contract.categorical,
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
        )
        ctx.registry.log_files(run_id, plots, "plots")
        save_profile(profile, Path(tmp) / "reference_profile.json")
        ctx.registry.log_files(run_id, [Path(tmp) / "reference_profile.json"], "")
    ctx.registry.log_json(run_id, fp, "fingerprint.json")
    ctx.registry.log_json(
        run_id,
        {
            "best": {
                "candidate": tuned.best.candidate.to_json(),
                "fold_scores": list(tuned.best.fold_scores),
                "guardrails": {k: list(v) for k, v in tuned.best.guardrail_scores.items()},
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
        },
        "cv_scores.json",
    )


def _trial_logger(ctx: Context, parent: str) -> Callable[[TrialResult], None]:
    primary = ctx.contract.metrics.primary

    def on_trial(t: TrialResult) -> None:
        run = ctx.registry.start_run(
            name=f"trial-{t.number:03d}",
            parent=parent,
            tags={
                TAG_KIND: "trial",
                "champion.source": t.source,
                **({"champion.error": t.error} if t.error else {}),
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
    started = time.monotonic()
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
            seconds=time.monotonic() - started,
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
    contract, registry = ctx.contract, ctx.registry
    run_id: str | None = None
    fp: dict[str, Any] | None = None
    champion_before: str | None = None

    def finish(verdict: Verdict, reason: str, **kw: Any) -> CycleResult:
        result = CycleResult(
            verdict,
            reason,
            run_id=run_id,
            champion_before=champion_before,
            champion_after=kw.pop("champion_after", champion_before),
            seconds=time.monotonic() - started,
            **kw,
        )
        _ledger_entry(ctx, result, trigger=trigger, fp=fp)
        return result

    try:
        reconcile(ctx)
        report = ctx.batches.intake()
        ctx.checkpoint("intake")
        data = ctx.batches.window()
        champion_ref = registry.alias("champion")
        champion_before = champion_ref.version if champion_ref else None
        if data.rows == 0:
            why = f" ({len(report.quarantined)} batches quarantined)" if report.quarantined else ""
            return finish(Verdict.SKIPPED, f"No valid data in the landing zone{why}.")
        if contract.task == "classification" and data.frame[contract.target].nunique() < 2:
            # Its batches stay unconsumed: they are trained on once another class arrives.
            only = ", ".join(str(v) for v in data.frame[contract.target].unique())
            return finish(
                Verdict.SKIPPED,
                f"The training window holds a single class ({only}); "
                "waiting for batches with other classes.",
            )
        if not data.new_batch_ids:
            return finish(Verdict.SKIPPED, "No new batches since the last cycle.")
        fp = fingerprint(data, contract)
        champion: LoadedModel | None = None
        fresh = np.ones(data.rows, dtype=bool)
        comparable = False
        if champion_ref is not None:
            with tempfile.TemporaryDirectory(prefix="champion-model-") as tmp:
                champion = registry.load(champion_ref, cache_dir=Path(tmp))
            comparable = list(champion.input_names) == list(contract.features)
            seen = _champion_batches(ctx, champion_ref)
            fresh = ~data.frame[BATCH_COLUMN].isin(seen).to_numpy()
            if not fresh.any():
                ctx.batches.mark_consumed(data.new_batch_ids, "already-in-champion")
                return finish(
                    Verdict.SKIPPED,
                    f"The champion v{champion_ref.version} was already trained on every row "
                    "in the window.",
                )
        run_id = registry.start_run(
            name=f"cycle-{datetime.now(UTC):%Y%m%dT%H%M%S}",
            tags={
                TAG_KIND: "cycle",
                "champion.trigger": trigger,
                "champion.champion_before": str(champion_before),
            },
        )
        registry.log(
            run_id,
            params={
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
                "rows": data.rows,
                "fresh_rows": int(fresh.sum()),
                "batches": len(data.batch_ids),
                "new_batches": len(data.new_batch_ids),
            },
            tags={"champion.data_sha256": fp["sha256"]},
        )
        X = prepare_features(data.frame, contract)
        y = data.frame[contract.target].to_numpy()
        baseline = (
            Candidate.from_json(champion_ref.candidate_json)
            if champion_ref is not None and champion_ref.candidate_json
            else None
        )
        ctx.checkpoint("tuning")
        tuned = tune(
            X,
            y,
            contract=contract,
            baseline=baseline,
            on_trial=_trial_logger(ctx, run_id),
            progress=ctx.progress,
        )
        primary = contract.metrics.primary
        best = tuned.best
        cv_metrics = {f"cv_{primary}_mean": best.mean, f"cv_{primary}_std": best.std}
        cv_metrics |= {f"cv_{primary}_fold_{i}": s for i, s in enumerate(best.fold_scores)}
        for name, folds in best.guardrail_scores.items():
            cv_metrics[f"cv_{name}_mean"] = float(np.nanmean(folds))
        registry.log(
            run_id,
            metrics=cv_metrics | {"trials": len(tuned.trials), "tuning_seconds": tuned.seconds},
            params={"best_candidate": best.candidate.label(), "stopped_by": tuned.stopped_by},
        )
        ctx.checkpoint("evaluate")
        decision: Decision
        if champion is not None and comparable:
            paired = paired_evaluation(
                X,
                y,
                fresh,
                contract=contract,
                challenger=best.candidate,
                champion=champion.pipeline,
            )
            decision = decide(paired, contract=contract)
            gate_metrics: dict[str, float] = {}
            for name, chal_folds in paired.challenger.items():
                gate_metrics[f"gate_{name}_challenger"] = float(np.nanmean(chal_folds))
                gate_metrics[f"gate_{name}_champion"] = float(np.nanmean(paired.champion[name]))
            registry.log(run_id, metrics=gate_metrics)
            registry.log_json(
                run_id,
                {
                    "challenger": {k: list(v) for k, v in paired.challenger.items()},
                    "champion": {k: list(v) for k, v in paired.champion.items()},
                    "test_train_ratio": paired.test_train_ratio,
                },
                "gate_folds.json",
            )
        else:
            decision = decide_first(best.mean, contract=contract)
            if champion is not None:
                decision = Decision(
                    decision.verdict,
                    f"The champion v{champion_before} takes other inputs than the contract now "
                    f"declares, so it cannot be compared; judged on the floor instead. "
                    f"{decision.reason}",
                    decision.checks,
                    decision.numbers,
                )
        final = build_pipeline(contract, best.candidate, seed=contract.search.seed).fit(X, y)
        ctx.checkpoint("compile")
        holdout = splits(contract, y, seed=contract.search.seed)[-1][1]
        compilation = compile_pipeline(final, contract, X.iloc[holdout], seed=contract.search.seed)
        log.info(
            "compiled for serving",
            extra={
                "runtime": compilation.runtime,
                "note": compilation.reason,
                "seconds": round(compilation.seconds, 2),
            },
        )
        registry.log(
            run_id,
            params={"serving_runtime": compilation.runtime},
            metrics={"compile_seconds": compilation.seconds}
            | ({} if compilation.max_diff is None else {"parity_max_diff": compilation.max_diff}),
        )
        ctx.checkpoint("register")
        ref = registry.register(
            run_id,
            final,
            compilation=compilation,
            example=X.head(5),
            tags={
                TAG_CANDIDATE: best.candidate.to_json(),
                TAG_DATA: fp["sha256"],
                TAG_ROWS: str(data.rows),
            },
        )
        _artifacts(ctx, run_id, data=data, X=X, y=y, tuned=tuned, final=final, fp=fp)
        verdict, reason = decision.verdict, decision.reason
        champion_after = champion_before
        registry.set_version_tags(ref.version, {TAG_VERDICT: verdict.value})
        ctx.checkpoint("promote")
        if verdict is Verdict.PROMOTE:
            with ctx.leases.hold(REGISTRY, timeout=ctx.lease_timeout):
                if registry.move_champion(expected=champion_before, new=ref.version):
                    champion_after = ref.version
                    ctx.checkpoint("moved")
                else:
                    now = registry.alias("champion")
                    verdict = Verdict.STALE
                    reason = (
                        f"The champion changed from {champion_before or 'none'} to "
                        f"{now.version if now else 'none'} while this cycle ran; nothing moved. "
                        f"(Would have promoted: {reason})"
                    )
                    registry.set_version_tags(ref.version, {TAG_VERDICT: verdict.value})
                full = Decision(verdict, reason, decision.checks, decision.numbers)
                _record(ctx, run_id, full)
                result = finish(
                    verdict,
                    reason,
                    version=ref.version,
                    champion_after=champion_after,
                    trials=len(tuned.trials),
                    numbers=dict(decision.numbers),
                )
        else:
            _record(ctx, run_id, decision)
            result = finish(
                verdict,
                reason,
                version=ref.version,
                trials=len(tuned.trials),
                numbers=dict(decision.numbers),
            )
        if verdict is not Verdict.STALE:
            ctx.batches.mark_consumed(data.new_batch_ids, run_id)
        registry.end_run(run_id, "FINISHED")
        return result
    except Exception as exc:
        message = str(exc) if isinstance(exc, ChampionError) else f"{type(exc).__name__}: {exc}"
        log.exception("retrain cycle failed")
        if run_id is not None:
            try:
                registry.log(
                    run_id, tags={TAG_VERDICT: Verdict.FAILED.value, "champion.error": message}
                )
                registry.end_run(run_id, "FAILED")
            except Exception:  # the registry itself may be what failed
                log.warning("could not mark the run failed", extra={"run_id": run_id})
        try:
            now = registry.alias("champion")
            after = now.version if now else None
        except Exception:
            after = champion_before
        return finish(Verdict.FAILED, f"The cycle failed: {message}", champion_after=after)


def _record(ctx: Context, run_id: str, decision: Decision) -> None:
    ctx.registry.log_json(run_id, decision.to_dict(), "verdict.json")
    ctx.registry.log(
        run_id, tags={TAG_VERDICT: decision.verdict.value, "champion.reason": decision.reason}
    )
