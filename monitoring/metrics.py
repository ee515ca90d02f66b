"""Every Prometheus metric champion exports, created in a registry the entry point owns."""

from __future__ import annotations

from collections import Counter as Counter_
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from champion.training.records import Verdict

PREDICTION_OUTCOMES = ("ok", "invalid", "unavailable", "error")
# From a cached single row (~0.3 ms) to a 1,000-row batch on a busy worker.
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# A scheduled tick ends in a verdict, or in one of these (it never reached one).
TICK_OUTCOMES = (*(v.value for v in Verdict), "missed", "overlap", "timeout", "error")
# Why a captured prediction did not reach the log.
DROP_REASONS = ("buffer_full", "write_failed", "unserialisable", "duplicate_request_id")
# Background loops that must outlive any one failing item.
LOOPS = ("capture", "slot", "scheduler", "monitor")
FEEDBACK_REJECTIONS = ("unauthorized", "rate_limited", "invalid", "unknown", "already_labelled")


def _gauge(
    name: str,
    doc: str,
    labels: Sequence[str],
    registry: CollectorRegistry,
    mode: Literal["max", "mostrecent"] = "mostrecent",
) -> Gauge:
    # Gauges are written by one process (a worker or the scheduler leader); "mostrecent"
    # keeps the latest value across worker files in multiprocess mode.
    return Gauge(name, doc, list(labels), registry=registry, multiprocess_mode=mode)


class ServiceMetrics:
    """All champion_* metrics; label values come only from bounded sets or the contract."""

    def __init__(self, registry: CollectorRegistry, *, features: Sequence[str]) -> None:
        self.features = frozenset(features)
        self._allowed: dict[tuple[Any, ...], frozenset[str]] = {}
        self._serving(registry)
        self._requests(registry)
        self._retraining(registry)
        self._monitoring(registry)
        self._zero_known_labels()

    def _serving(self, r: CollectorRegistry) -> None:
        """The data plane: requests, rows, capture, feedback, swaps (every worker)."""
        self.predictions = Counter(
            "champion_predictions_total", "Prediction requests by outcome.", ["outcome"], registry=r
        )
        self.rows = Counter("champion_predicted_rows_total", "Rows predicted.", registry=r)
        self.predicted_class = Counter(
            "champion_predicted_class_total", "Predicted rows by class.", ["class"], registry=r
        )
        self.validation_failures = Counter(
            "champion_validation_failures_total",
            "Rejected prediction requests by reason.",
            ["reason"],
            registry=r,
        )
        self.unseen_categories = Counter(
            "champion_unseen_categories_total",
            "Categorical values outside the contract's domain, by feature.",
            ["feature"],
            registry=r,
        )
        self.capture_dropped = Counter(
            "champion_capture_dropped_total",
            "Predicted rows not captured, by reason.",
            ["reason"],
            registry=r,
        )
        self.feedback = Counter(
            "champion_feedback_labels_total", "Labels joined to captured predictions.", registry=r
        )
        self.feedback_rejected = Counter(
            "champion_feedback_rejected_total",
            "Refused feedback requests, by reason.",
            ["reason"],
            registry=r,
        )
        self.background_errors = Counter(
            "champion_background_errors_total",
            "Items a background loop failed on (the loop went on), by loop.",
            ["loop"],
            registry=r,
        )
        self.swaps = Counter(
            "champion_model_swaps_total", "Model swaps in this service.", registry=r
        )
        self.swap_failures = Counter(
            "champion_model_swap_failures_total",
            "Failed model loads (the current model kept serving).",
            registry=r,
        )
        self.model_info = _gauge(
            "champion_model_info",
            "1 for the model version being served.",
            ["version"],
            r,
            mode="max",
        )
        self.model_age = _gauge(
            "champion_model_age_seconds",
            "Seconds since the serving model was registered.",
            [],
            r,
            mode="max",
        )

    def _requests(self, r: CollectorRegistry) -> None:
        """champion's own request latency: what ops keep when BentoML's metrics are off."""
        self.request_seconds = Histogram(
            "champion_request_duration_seconds",
            "Time to answer POST /predict (parse, validate, predict, encode), by outcome and "
            "the model version that answered ('none' before a champion is loaded).",
            ["outcome", "version"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self._request_children: dict[tuple[str, str], Any] = {}

    def answered(self, outcome: str, version: str, seconds: float) -> None:
        """One answered prediction request, counted and timed in one place (hot path: each
        label pair is resolved once)."""
        key = (outcome if outcome in PREDICTION_OUTCOMES else "error", version)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self.predictions.labels(key[0]),
                self.request_seconds.labels(*key),
            )
        children[0].inc()
        children[1].observe(seconds)

    def _retraining(self, r: CollectorRegistry) -> None:
        """The control plane: ticks and cycles (recorded by the scheduler leader)."""
        self.retrain_ticks = Counter(
            "champion_retrain_ticks_total",
            "Scheduled retrain ticks by outcome.",
            ["outcome"],
            registry=r,
        )
        self.retrain_runs = Counter(
            "champion_retrain_runs_total", "Retrain cycles by verdict.", ["verdict"], registry=r
        )
        self.retrain_duration = Histogram(
            "champion_retrain_duration_seconds",
            "Wall time of retrain cycles.",
            buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 2400),
            registry=r,
        )
        self.retrain_last_success = _gauge(
            "champion_retrain_last_success_timestamp_seconds",
            "When a retrain cycle last finished without FAILED.",
            [],
            r,
            mode="max",
        )

    def _monitoring(self, r: CollectorRegistry) -> None:
        """The monitoring job's gauges: CV score, drift, live quality (the leader)."""
        self.cv_score = _gauge(
            "champion_cv_score", "The champion's cross-validated score.", ["metric"], r
        )
        self.drift_score = _gauge(
            "champion_drift_score", "PSI of the live window against the reference.", ["feature"], r
        )
        self.drift_p_value = _gauge(
            "champion_drift_p_value", "Drift test p-value per feature.", ["feature"], r
        )
        self.drift_threshold = _gauge(
            "champion_drift_threshold", "Calibrated PSI threshold for this window.", ["feature"], r
        )
        self.drift_detected = _gauge(
            "champion_drift_detected",
            "1 when the feature drifted in the last window.",
            ["feature"],
            r,
        )
        self.drift_window = _gauge(
            "champion_drift_window_rows", "Rows in the last drift window.", [], r
        )
        self.drift_share = _gauge(
            "champion_dataset_drift_share", "Share of features drifted in the last window.", [], r
        )
        self.prediction_drift = _gauge(
            "champion_prediction_drift_score",
            "PSI of the predictions against the reference.",
            [],
            r,
        )
        self.drift_triggers = Counter(
            "champion_drift_triggers_total", "Retrains triggered by sustained drift.", registry=r
        )
        self.live_quality = _gauge(
            "champion_live_quality", "Quality on labelled live rows.", ["metric"], r
        )

    def _zero_known_labels(self) -> None:
        # Create every known label value at 0, so the first failure after a start is an
        # increase Prometheus can see (a series born at 1 reads as no change).
        for outcome in PREDICTION_OUTCOMES:
            self.predictions.labels(outcome)
        for outcome in TICK_OUTCOMES:
            self.retrain_ticks.labels(outcome)
        for verdict in Verdict:
            self.retrain_runs.labels(verdict.value)
        for reason in DROP_REASONS:
            self.capture_dropped.labels(reason)
        for reason in FEEDBACK_REJECTIONS:
            self.feedback_rejected.labels(reason)
        for loop in LOOPS:
            self.background_errors.labels(loop)

    def dropped(self, reason: str, n: int) -> None:
        """Count captured rows lost, under a bounded reason."""
        if n > 0:
            self.capture_dropped.labels(reason if reason in DROP_REASONS else "write_failed").inc(n)

    def background_error(self, loop: str) -> None:
        self.background_errors.labels(loop if loop in LOOPS else "monitor").inc()

    def unseen(self, counts: dict[str, int]) -> None:
        for feature, n in counts.items():
            if feature in self.features:  # never a label from request text
                self.unseen_categories.labels(feature).inc(n)

    def served(self, version: str, old: str | None) -> None:
        if old is not None and old != version:
            self.model_info.labels(old).set(0)
        self.model_info.labels(version).set(1)

    def classes(self, predictions: Sequence[Any] | np.ndarray, known: Sequence[Any] | None) -> None:
        if not known:
            return
        key = tuple(known)
        allowed = self._allowed.get(key)
        if allowed is None:
            allowed = self._allowed[key] = frozenset(str(c) for c in known)
        if len(predictions) == 1:  # the common request: no counting structure needed
            found = {str(predictions[0]): 1}
        elif len(predictions) > 64:  # one pass in NumPy: a big request adds each class once
            try:
                values, counts = np.unique(np.asarray(predictions), return_counts=True)
                found = {
                    str(v): int(n) for v, n in zip(values.tolist(), counts.tolist(), strict=True)
                }
            except TypeError:  # mixed types cannot be sorted
                found = dict(Counter_(str(v) for v in predictions))
        else:
            values_ = predictions.tolist() if isinstance(predictions, np.ndarray) else predictions
            found = dict(Counter_(str(v) for v in values_))
        for label, n in found.items():
            if label in allowed:  # the model's own classes only: a bounded set
                self.predicted_class.labels(label).inc(n)


@lru_cache(maxsize=4)
def service_metrics(
    features: tuple[str, ...], registry: CollectorRegistry = REGISTRY
) -> ServiceMetrics:
    """One set per process and registry (metric names may be registered only once)."""
    return ServiceMetrics(registry, features=features)
