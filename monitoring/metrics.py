"""Every Prometheus metric champion exports, created in a registry the entry point owns."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

PREDICTION_OUTCOMES = ("ok", "invalid", "unavailable", "error")
TICK_OUTCOMES = (
    "PROMOTE",
    "HOLD",
    "REJECT",
    "SKIPPED",
    "FAILED",
    "STALE",
    "missed",
    "overlap",
    "error",
)


class ServiceMetrics:
    """Data-plane metrics; label values come only from the bounded sets above or the contract."""

    def __init__(self, registry: CollectorRegistry, *, features: Sequence[str]) -> None:
        self.features = frozenset(features)
        self.predictions = Counter(
            "champion_predictions_total",
            "Prediction requests by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.rows = Counter("champion_predicted_rows_total", "Rows predicted.", registry=registry)
        self.validation_failures = Counter(
            "champion_validation_failures_total",
            "Rejected prediction requests by reason.",
            ["reason"],
            registry=registry,
        )
        self.unseen_categories = Counter(
            "champion_unseen_categories_total",
            "Categorical values outside the contract's domain, by feature.",
            ["feature"],
            registry=registry,
        )
        self.swaps = Counter(
            "champion_model_swaps_total", "Model swaps in this service.", registry=registry
        )
        self.swap_failures = Counter(
            "champion_model_swap_failures_total",
            "Failed model loads (current model kept).",
            registry=registry,
        )
        self.model_info = Gauge(
            "champion_model_info",
            "1 for the model version being served.",
            ["version"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.retrain_ticks = Counter(
            "champion_retrain_ticks_total",
            "Scheduled retrain ticks by outcome.",
            ["outcome"],
            registry=registry,
        )

    def unseen(self, counts: dict[str, int]) -> None:
        for feature, n in counts.items():
            if feature in self.features:  # never a label from request text
                self.unseen_categories.labels(feature).inc(n)

    def served(self, version: str, old: str | None) -> None:
        if old is not None and old != version:
            self.model_info.labels(old).set(0)
        self.model_info.labels(version).set(1)


@lru_cache(maxsize=4)
def service_metrics(
    features: tuple[str, ...], registry: CollectorRegistry = REGISTRY
) -> ServiceMetrics:
    """One set per process and registry (metric names may be registered only once)."""
    return ServiceMetrics(registry, features=features)
