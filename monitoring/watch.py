"""Monitoring job: drift and live quality from the prediction log, feedback export, triggers."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from champion.monitoring.capture import LogLimiter
from champion.monitoring.drift import DriftReport, evaluate
from champion.monitoring.metrics import ServiceMetrics
from champion.monitoring.state import DriftFiles
from champion.training.artifacts import REFERENCE_PROFILE, ModelRef
from champion.training.config import Contract
from champion.training.errors import RegistryError
from champion.training.files import atomic_write_text
from champion.training.metrics import compute
from champion.training.ports import DriftStore, LedgerStore, ModelRegistry, PredictionStore
from champion.training.process import actor
from champion.training.records import Event, LedgerEntry

log = logging.getLogger(__name__)

T = TypeVar("T")
Window = tuple[dict[str, list[Any]], np.ndarray, np.ndarray | None]


@dataclass(frozen=True)
class WatchSettings:
    """The monitoring job's knobs (from `Settings`, mapped by the composition root)."""

    folder: Path  # the file store's latest.json, history.jsonl and state.json
    window_rows: int = 500
    alpha: float = 0.01
    sustained_windows: int = 3
    cooldown_seconds: float = 3600.0
    quality_rows: int = 500
    history_rows: int = 10_000


@dataclass
class Watch:
    """State kept between monitoring ticks by the scheduler leader.

    The drift streak, the cooldown and the last row tested are persisted in the drift
    store (`drift/state.json` here, a table in shared mode), so a restart or a new leader,
    on this host or another, neither re-tests old rows nor forgets a streak or a trigger.
    """

    contract: Contract
    config: WatchSettings
    registry: ModelRegistry
    prediction_log: PredictionStore
    ledger: LedgerStore
    metrics: ServiceMetrics | None = None
    trigger_retrain: Callable[[str], bool] = lambda trigger: False
    clock: Callable[[], float] = time.time
    # Called once per failed part of a tick (champion_background_errors_total{loop="monitor"}).
    on_error: Callable[[], None] | None = None
    streak: int = 0
    last_trigger: float = float("-inf")
    last_tested_id: int = 0  # the newest prediction id already part of a tested window
    version: str | None = None  # the champion the streak and last_tested_id belong to
    store: DriftStore | None = None  # None: files in `config.folder`
    _profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    _warn: LogLimiter = field(default_factory=lambda: LogLimiter(log), repr=False)

    def __post_init__(self) -> None:
        if self.store is None:
            self.store = DriftFiles(self.config.folder)
        self._load_state(at_start=True)

    @property
    def drift_store(self) -> DriftStore:
        assert self.store is not None  # set in __post_init__
        return self.store

    @property
    def folder(self) -> Path:
        return self.config.folder

    # -- persisted state -----------------------------------------------------------------

    def _load_state(self, *, at_start: bool) -> None:
        """Read the drift state; at each tick too, since a new leader may have written it."""
        path = self.drift_store.where
        try:
            raw = self.drift_store.read_state()
            if raw is None:
                if at_start:
                    log.info("no drift state yet: starting fresh", extra={"path": path})
                return
            last_tested_id = int(raw["last_tested_id"])
            streak = int(raw["streak"])
            trigger = raw["last_trigger"]
            version = raw["version"]
            if trigger is not None and not isinstance(trigger, int | float):
                raise TypeError(f"last_trigger is {trigger!r}")
            if version is not None and not isinstance(version, str):
                raise TypeError(f"version is {version!r}")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._warn.warning(
                "state",
                "drift state unreadable: starting fresh" if at_start else "drift state unreadable",
                extra={"path": path, "error": f"{type(exc).__name__}: {exc}"},
            )
            return
        self.last_tested_id = last_tested_id
        self.streak = streak
        self.last_trigger = float("-inf") if trigger is None else float(trigger)
        self.version = version
        if at_start:
            log.info(
                "drift state loaded",
                extra={"path": path, "streak": streak, "last_tested_id": last_tested_id},
            )

    def _save_state(self) -> None:
        state = {
            "last_tested_id": self.last_tested_id,
            "streak": self.streak,
            "last_trigger": self.last_trigger if math.isfinite(self.last_trigger) else None,
            "version": self.version,
        }
        self.drift_store.write_state(state)

    def _follow(self, version: str) -> None:
        """A new champion starts a new streak over its own rows."""
        if version == self.version:
            return
        if self.version is not None:
            log.info(
                "champion changed: drift streak starts over",
                extra={"old": self.version, "new": version, "streak": self.streak},
            )
        self.version = version
        self.streak = 0
        self.last_tested_id = 0
        self._save_state()

    # -- drift ---------------------------------------------------------------------------

    def profile(self, ref: ModelRef) -> dict[str, Any] | None:
        if ref.version not in self._profiles and ref.run_id:
            found = self.registry.run_json(ref.run_id, REFERENCE_PROFILE)
            if found is not None:
                self._profiles[ref.version] = found
        return self._profiles.get(ref.version)

    def _columns(self, rows: list[dict[str, Any]]) -> Window:
        columns = {f: [r["features"].get(f) for r in rows] for f in self.contract.features}
        predictions = np.asarray([r["prediction"] for r in rows], dtype=object)
        scores = [r["score"] for r in rows]
        score_array = (
            np.asarray(scores, dtype=float) if rows and all(s is not None for s in scores) else None
        )
        return columns, predictions, score_array

    def window(self, version: str) -> Window:
        """The most recent `drift_window_rows` rows of `version`, tested or not (for reports)."""
        rows = self.prediction_log.recent(limit=self.config.window_rows, version=version)
        return self._columns(rows)

    def _evaluate(self, window: Window, profile: dict[str, Any]) -> DriftReport:
        columns, predictions, scores = window
        return evaluate(
            columns,
            profile,
            predictions=predictions if len(predictions) else None,
            scores=scores,
            alpha=self.config.alpha,
        )

    def drift(self, ref: ModelRef) -> DriftReport | None:
        """Drift of the most recent rows (`champion drift-report`); the tick tests fresh ones."""
        profile = self.profile(ref)
        if profile is None:
            return None
        return self._evaluate(self.window(ref.version), profile)

    def fresh_drift(self, ref: ModelRef, summary: dict[str, Any]) -> DriftReport | None:
        """Test a window of rows no earlier window held; None when there are too few yet.

        Re-testing the same rows would count one burst as drift "sustained" over many
        windows, so a window is the newest `drift_window_rows` rows after the last one tested.
        The caller passes the report to `_sustained`, which counts it and saves the state.
        """
        profile = self.profile(ref)
        if profile is None:
            summary["drift_window"] = {"tested": False, "reason": "no reference profile"}
            return None
        self._follow(ref.version)
        needed = self.config.window_rows
        fresh = self.prediction_log.since(self.last_tested_id, limit=needed, version=ref.version)
        summary["drift_window"] = {
            "tested": False,
            "fresh_rows": fresh.fresh,
            "needed_rows": needed,
            "after_id": self.last_tested_id,
        }
        if fresh.fresh < needed:
            return None
        self.last_tested_id = fresh.max_id
        try:
            report = self._evaluate(self._columns(fresh.rows), profile)
        except Exception:
            self._save_state()  # the window is spent even when it cannot be evaluated
            raise
        summary["drift_window"] |= {"tested": True, "last_id": fresh.max_id}
        return report

    def _sustained(self, report: DriftReport, ref: ModelRef) -> None:
        self._follow(ref.version)
        self.streak = self.streak + 1 if report.dataset_drift else 0
        try:
            self._maybe_trigger(report, ref)
        finally:
            self._save_state()

    def _maybe_trigger(self, report: DriftReport, ref: ModelRef) -> None:
        needed = self.config.sustained_windows
        cooling = self.clock() - self.last_trigger < self.config.cooldown_seconds
        if self.streak < needed or cooling:
            return
        flagged = list(report.family_flagged)
        if self.trigger_retrain("drift"):
            self.last_trigger = self.clock()
            self.streak = 0
            if self.metrics is not None:
                self.metrics.drift_triggers.inc()
            reason = (
                f"Drift sustained over {needed} windows of "
                f"{report.window_rows} rows (features {flagged}); retrain started."
            )
            self.ledger.append(
                LedgerEntry(
                    Event.DRIFT_TRIGGER,
                    reason,
                    actor(),
                    champion_after=ref.version,
                    features=tuple(flagged),
                )
            )

    # -- live quality and feedback -------------------------------------------------------

    def quality(self) -> dict[str, float]:
        labelled = self.prediction_log.labelled(limit=self.config.quality_rows)
        if len(labelled) < 10:
            return {}
        y = np.asarray([r["label"] for r in labelled])
        pred = np.asarray([r["prediction"] for r in labelled])
        names = [self.contract.metrics.primary]
        if self.contract.task == "classification":
            names.append("accuracy")
            classes = sorted({*y.tolist(), *pred.tolist()}, key=str)
            scores = [r["score"] for r in labelled]
            proba = None
            if len(classes) == 2 and all(s is not None for s in scores):
                s = np.asarray(scores, dtype=float)
                proba = np.column_stack([1 - s, s])
            positive = self.contract.metrics.positive_class
            if len(classes) == 2 and positive is not None and positive not in classes:
                return {}  # two live classes, neither the declared positive one
            out = compute(
                names,
                y_true=y,
                y_pred=pred,
                proba=proba,
                classes=classes,
                spec=self.contract.metrics,
            )
        else:
            out = compute(
                [*names, "mae"],
                y_true=y.astype(float),
                y_pred=pred.astype(float),
                proba=None,
                classes=None,
                spec=self.contract.metrics,
            )
        return {k: v for k, v in out.items() if np.isfinite(v)}

    def export_feedback(self) -> Path | None:
        """Write labelled rows into the landing zone as batches; each row in exactly one.

        Two phases in the prediction log around the file: the pending rows are first named
        into a batch (one transaction), the file is written atomically from those rows alone,
        then they are marked exported. A batch named but never marked (a crash in between) is
        written again first, under the same name and with the same bytes. Returns the last
        batch written, if any.
        """
        written: Path | None = None
        for name in self.prediction_log.claimed():
            written = self._write_batch(name, resumed=True)
        name = f"feedback-{datetime.now(UTC):%Y%m%dT%H%M%S%f}.csv"
        if self.prediction_log.claim_export(name, min_rows=self.contract.data.min_rows):
            written = self._write_batch(name, resumed=False)
        return written

    def _write_batch(self, name: str, *, resumed: bool) -> Path:
        pending = self.prediction_log.export_rows(name)
        rows = []
        for _, features, label, at in pending:
            row = dict(features)
            row[self.contract.target] = label
            if self.contract.timestamp:
                row[self.contract.timestamp] = datetime.fromtimestamp(at, UTC).isoformat()
            rows.append(row)
        # The content depends on the rows only: a rewrite after a crash is byte-identical.
        text = pd.DataFrame(rows).to_csv(index=False)
        zone = self.contract.data.landing_zone
        if isinstance(zone, Path):
            path = zone / name
            atomic_write_text(path, text)
        else:  # an object store (s3://): one PUT, as atomic; the batch is known by its name
            from champion.training.storage import location

            location(zone).write_text(name, text)
            path = Path(name)
        marked = self.prediction_log.finish_export(name)
        log.info(
            "feedback exported",
            extra={"batch": name, "rows": len(rows), "marked": marked, "resumed": resumed},
        )
        return path

    # -- one pass ------------------------------------------------------------------------

    def _part(self, name: str, run: Callable[[], T], summary: dict[str, Any]) -> T | None:
        """Run one part of a tick; a failure is logged, counted and the tick goes on."""
        try:
            return run()
        except Exception as exc:
            self._failed(name, exc, summary, traceback=True)
            return None

    def _failed(
        self, name: str, exc: Exception, summary: dict[str, Any], *, traceback: bool
    ) -> None:
        error = f"{type(exc).__name__}: {exc}"
        summary.setdefault("errors", {})[name] = error
        self._warn.warning(
            f"{name}:{type(exc).__name__}",
            "monitoring step failed; the pass goes on",
            extra={"step": name, "error": error},
            exc_info=traceback,
        )
        if self.on_error is not None:
            try:
                self.on_error()
            except Exception as count_exc:  # a broken counter must not end the tick
                log.warning("monitor error counter failed", extra={"error": str(count_exc)})

    def tick(self) -> dict[str, Any]:
        """One monitoring pass; never raises (each part fails on its own, counted)."""
        summary: dict[str, Any] = {"at": datetime.now(UTC).isoformat()}
        # The file is the truth: this worker may lead only since another one stopped.
        self._part("state", lambda: self._load_state(at_start=False), summary)
        exported = self._part("export", self.export_feedback, summary)
        summary["feedback_batch"] = exported.name if exported else None
        try:
            ref = self.registry.alias("champion")
        except Exception as exc:  # RegistryError, or anything the client raised
            summary["error"] = f"registry unreachable: {exc}"
            self._failed("registry", exc, summary, traceback=not isinstance(exc, RegistryError))
            return summary
        if ref is None:
            summary["error"] = "no champion yet"
            return summary
        summary["model_version"] = ref.version
        report = self._part("drift", lambda: self.fresh_drift(ref, summary), summary)
        if report is not None:
            self._part("trigger", lambda: self._sustained(report, ref), summary)
        quality = self._part("quality", self.quality, summary) or {}
        summary["live_quality"] = quality
        if report is not None:
            summary["drift"] = report.to_dict()
            summary["drift_at"] = summary["at"]
            summary["drift_model_version"] = ref.version
        else:
            # GET /drift keeps showing the last evaluation until a fresh window is tested.
            previous = self._part("previous", self.drift_store.latest, summary) or {}
            for key in ("drift", "drift_at", "drift_model_version"):
                if key in previous:
                    summary[key] = previous[key]
        summary["streak"] = self.streak
        self._part("metrics", lambda: self._export(report, quality), summary)
        self._part("cv_score", lambda: self._export_cv(ref), summary)
        self._part("write", lambda: self._write(summary, report), summary)
        return summary

    def _write(self, summary: dict[str, Any], report: DriftReport | None) -> None:
        self.drift_store.write_latest(summary)
        entry = {k: summary.get(k) for k in ("at", "model_version", "streak")} | {
            "tested": report is not None,
            "drift_share": report.drift_share if report is not None else None,
            "dataset_drift": report.dataset_drift if report is not None else None,
        }
        self.drift_store.append_history(entry, keep=self.config.history_rows)

    def _export(self, report: DriftReport | None, quality: dict[str, float]) -> None:
        m = self.metrics
        if m is None:
            return
        for name, value in quality.items():
            m.live_quality.labels(name).set(value)
        if report is None:
            return
        m.drift_window.set(report.window_rows)
        m.drift_share.set(report.drift_share)
        for f in report.features:
            if f.feature not in m.features:
                continue
            m.drift_detected.labels(f.feature).set(1.0 if f.drifted else 0.0)
            pairs: tuple[tuple[Any, float | None], ...] = (
                (m.drift_score, f.psi),
                (m.drift_p_value, f.p_value),
                (m.drift_threshold, f.threshold),
            )
            for gauge, number in pairs:
                if number is not None:
                    gauge.labels(f.feature).set(number)
        if report.prediction is not None and report.prediction.psi is not None:
            m.prediction_drift.set(report.prediction.psi)

    def _export_cv(self, ref: ModelRef) -> None:
        m = self.metrics
        if m is None or not ref.run_id:
            return
        run = self.registry.run_summary(ref.run_id)
        primary = self.contract.metrics.primary
        if run is not None and (mean := run.cv_mean(primary)) is not None:
            m.cv_score.labels(primary).set(mean)


def latest(folder: Path) -> dict[str, Any] | None:
    """The last monitoring summary the leader wrote into the file store in `folder`."""
    return DriftFiles(folder).latest()
