"""Monitoring job: drift and live quality from the prediction log, feedback export, triggers."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.capture import PredictionLog
from monitoring.drift import DriftReport, evaluate
from monitoring.metrics import ServiceMetrics
from training.config import Contract, Settings
from training.data import atomic_write_text
from training.errors import RegistryError
from training.ledger import Ledger
from training.metrics import compute
from training.registry import ModelRef, Registry

log = logging.getLogger(__name__)

LATEST = "latest.json"
HISTORY = "history.jsonl"


@dataclass
class Watch:
    """State kept between monitoring ticks by the scheduler leader."""

    contract: Contract
    settings: Settings
    registry: Registry
    prediction_log: PredictionLog
    ledger: Ledger
    metrics: ServiceMetrics | None = None
    trigger_retrain: Callable[[str], bool] = lambda trigger: False
    clock: Callable[[], float] = time.time
    streak: int = 0
    last_trigger: float = float("-inf")
    _profiles: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.settings.home / "drift"

    def profile(self, ref: ModelRef) -> dict[str, Any] | None:
        if ref.version not in self._profiles and ref.run_id:
            found = self.registry.run_json(ref.run_id, "reference_profile.json")
            if found is not None:
                self._profiles[ref.version] = found
        return self._profiles.get(ref.version)

    def window(self, version: str) -> tuple[dict[str, list[Any]], np.ndarray, np.ndarray | None]:
        rows = self.prediction_log.recent(limit=self.settings.drift_window_rows, version=version)
        columns = {f: [r["features"].get(f) for r in rows] for f in self.contract.features}
        predictions = np.asarray([r["prediction"] for r in rows], dtype=object)
        scores = [r["score"] for r in rows]
        score_array = (
            np.asarray(scores, dtype=float) if rows and all(s is not None for s in scores) else None
        )
        return columns, predictions, score_array

    def drift(self, ref: ModelRef) -> DriftReport | None:
        profile = self.profile(ref)
        if profile is None:
            return None
        columns, predictions, scores = self.window(ref.version)
        return evaluate(
            columns,
            profile,
            predictions=predictions if len(predictions) else None,
            scores=scores,
            alpha=self.settings.drift_alpha,
        )

    def quality(self) -> dict[str, float]:
        labelled = self.prediction_log.labelled(limit=self.settings.quality_window_rows)
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
            out = compute(names, y_true=y, y_pred=pred, proba=proba, classes=classes)
        else:
            out = compute(
                [*names, "mae"],
                y_true=y.astype(float),
                y_pred=pred.astype(float),
                proba=None,
                classes=None,
            )
        return {k: v for k, v in out.items() if np.isfinite(v)}

    def export_feedback(self) -> Path | None:
        """Write labelled rows as a landing-zone batch once there are enough of them."""
        pending = self.prediction_log.unexported()
        if len(pending) < self.contract.data.min_rows:
            return None
        rows = []
        for _, features, label, at in pending:
            row = dict(features)
            row[self.contract.target] = label
            if self.contract.timestamp:
                row[self.contract.timestamp] = datetime.fromtimestamp(at, UTC).isoformat()
            rows.append(row)
        landing = self.contract.data.landing_zone
        name = f"feedback-{datetime.now(UTC):%Y%m%dT%H%M%S%f}.csv"
        atomic_write_text(landing / name, pd.DataFrame(rows).to_csv(index=False))
        self.prediction_log.mark_exported([i for i, *_ in pending])
        log.info("feedback exported", extra={"batch": name, "rows": len(rows)})
        return landing / name

    def tick(self) -> dict[str, Any]:
        """One monitoring pass; never raises (the scheduler logs and goes on)."""
        summary: dict[str, Any] = {"at": datetime.now(UTC).isoformat()}
        try:
            exported = self.export_feedback()
            summary["feedback_batch"] = exported.name if exported else None
        except OSError as exc:
            log.warning("feedback export failed", extra={"error": str(exc)})
        try:
            ref = self.registry.alias("champion")
        except RegistryError as exc:
            summary["error"] = f"registry unreachable: {exc}"
            return summary
        if ref is None:
            summary["error"] = "no champion yet"
            return summary
        summary["model_version"] = ref.version
        report = self.drift(ref)
        quality = self.quality()
        summary["live_quality"] = quality
        if report is not None:
            summary["drift"] = report.to_dict()
            self._sustained(report, ref)
        summary["streak"] = self.streak
        self._export(summary, report, quality, ref)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / LATEST, json.dumps(summary, indent=1))
        with (self.folder / HISTORY).open("a", encoding="utf-8") as fh:
            fh.write(
                json.dumps(
                    {k: summary.get(k) for k in ("at", "model_version", "streak")}
                    | {
                        "drift_share": (summary.get("drift") or {}).get("drift_share"),
                        "dataset_drift": (summary.get("drift") or {}).get("dataset_drift"),
                    }
                )
                + "\n"
            )
        return summary

    def _sustained(self, report: DriftReport, ref: ModelRef) -> None:
        self.streak = self.streak + 1 if report.dataset_drift else 0
        needed = self.settings.drift_sustained_windows
        cooling = self.clock() - self.last_trigger < self.settings.drift_cooldown_seconds
        if self.streak < needed or cooling:
            return
        flagged = list(report.family_flagged)
        if self.trigger_retrain("drift"):
            self.last_trigger = self.clock()
            self.streak = 0
            if self.metrics is not None:
                self.metrics.drift_triggers.inc()
            self.ledger.append(
                {
                    "event": "drift_trigger",
                    "reason": (
                        f"Drift sustained over {needed} windows of "
                        f"{report.window_rows} rows (features {flagged}); retrain started."
                    ),
                    "champion_after": ref.version,
                    "features": flagged,
                }
            )

    def _export(
        self,
        summary: dict[str, Any],
        report: DriftReport | None,
        quality: dict[str, float],
        ref: ModelRef,
    ) -> None:
        m = self.metrics
        if m is None:
            return
        for name, value in quality.items():
            m.live_quality.labels(name).set(value)
        try:
            run = self.registry.run_info(ref.run_id) if ref.run_id else None
            primary = self.contract.metrics.primary
            if run is not None and f"cv_{primary}_mean" in run.data.metrics:
                m.cv_score.labels(primary).set(run.data.metrics[f"cv_{primary}_mean"])
        except Exception as exc:  # a dashboard number is not worth failing the tick
            log.warning("cv score unavailable", extra={"error": str(exc)})
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


def latest(settings: Settings) -> dict[str, Any] | None:
    """The last monitoring summary written by the leader (for GET /drift on any worker)."""
    path = settings.home / "drift" / LATEST
    if not path.exists():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))
