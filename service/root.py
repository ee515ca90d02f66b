"""The composition root: every component built from settings in one place, each replaceable.

The CLI, the BentoML service, the tests and the benchmarks all call `build`. Settings stop
here: the core receives the ports and the few values it needs, never `Settings` itself.
Heavy adapters (MLflow, SQLite, PostgreSQL) are built on first use, so a command that needs
no registry never imports MLflow.

With `CHAMPION_DATABASE_URL` set (shared mode) the ledger, the leases, the manifest, the
prediction log and the drift state are the PostgreSQL adapters; otherwise local files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

from champion.training import logs
from champion.training.clock import SystemClock
from champion.training.config import Contract, Settings, get_settings, load_contract
from champion.training.ports import (
    BatchStore,
    Clock,
    DriftStore,
    Leases,
    LedgerStore,
    ModelRegistry,
    PredictionStore,
)

if TYPE_CHECKING:
    from champion.monitoring.metrics import ServiceMetrics
    from champion.monitoring.watch import Watch, WatchSettings
    from champion.training.cycle import Context
    from champion.training.manifest import Manifest
    from champion.training.postgres.database import Database
    from champion.training.postgres.notify import SwapListener
    from champion.training.shared_tuning import TuningStore


class Components:
    """What one process runs on. Pass a replacement for any port to `build` (tests do)."""

    def __init__(
        self,
        settings: Settings,
        contract: Contract,
        *,
        registry: ModelRegistry | None = None,
        ledger: LedgerStore | None = None,
        leases: Leases | None = None,
        clock: Clock | None = None,
        batches: Callable[[], BatchStore] | None = None,
        prediction_log: PredictionStore | None = None,
        tracking_uri: str | None = None,
    ) -> None:
        self.settings = settings
        self._tracking_uri = tracking_uri
        self.contract = contract
        self.clock: Clock = clock or SystemClock()
        # A replacement takes the place of the cached adapter: the property never builds one.
        given: dict[str, object] = {
            "registry": registry,
            "ledger": ledger,
            "leases": leases,
            "prediction_log": prediction_log,
        }
        self.__dict__.update({k: v for k, v in given.items() if v is not None})
        self._batches = batches

    @property
    def tracking_uri(self) -> str:
        if self._tracking_uri is not None:
            return self._tracking_uri
        return os.environ.get("MLFLOW_TRACKING_URI", self.settings.default_tracking_uri)

    @property
    def shared(self) -> bool:
        """Whether this deployment runs in shared mode (state on PostgreSQL)."""
        return self.settings.database_url is not None

    @cached_property
    def database(self) -> Database:
        """The shared-mode database (only in shared mode)."""
        from champion.training.postgres.database import Database

        url = self.settings.database_url
        if url is None:
            raise RuntimeError("no CHAMPION_DATABASE_URL: this deployment keeps state in files")
        return Database(url.get_secret_value())

    @cached_property
    def registry(self) -> ModelRegistry:
        from champion.training.registry import Registry

        return Registry(
            tracking_uri=self.tracking_uri,
            model_name=self.contract.project.name,
            artifact_root=self.settings.artifact_root,
        )

    @cached_property
    def ledger(self) -> LedgerStore:
        if self.shared:
            from champion.training.postgres.ledger import PgLedger

            return PgLedger(self.database, clock=self.clock)
        from champion.training.ledger import Ledger

        return Ledger(self.settings.ledger_path, clock=self.clock)

    @cached_property
    def leases(self) -> Leases:
        if self.shared:
            from champion.training.postgres.leases import AdvisoryLeases

            return AdvisoryLeases(self.database)
        from champion.training.lease import FileLeases

        return FileLeases(self.settings.lock_dir)

    def manifest(self) -> Manifest:
        """The batch manifest as stored now (a fresh read on each call)."""
        from champion.training.manifest import Manifest

        if self.shared:
            from champion.training.postgres.manifest import PgManifest

            return Manifest(PgManifest(self.database))
        return Manifest(self.contract.data.manifest)

    def batches(self) -> BatchStore:
        """A fresh view of the batch store (each cycle reads the manifest once, its own)."""
        if self._batches is not None:
            return self._batches()
        from champion.training.batches import FileBatches

        return FileBatches(self.contract, manifest=self.manifest)

    @cached_property
    def prediction_log(self) -> PredictionStore:
        if self.shared:
            from champion.training.postgres.predictions import PgPredictionLog

            return PgPredictionLog(self.database, max_rows=self.settings.capture_max_rows)
        from champion.monitoring.capture import PredictionLog

        return PredictionLog(
            self.settings.prediction_log_path, max_rows=self.settings.capture_max_rows
        )

    @cached_property
    def drift_store(self) -> DriftStore:
        if self.shared:
            from champion.training.postgres.drift import PgDriftStore

            return PgDriftStore(self.database)
        from champion.monitoring.state import DriftFiles

        return DriftFiles(watch_settings(self.settings).folder)

    def swap_listener(
        self, *, on_notice: Callable[[str], None], on_error: Callable[[], None]
    ) -> SwapListener | None:
        """Started: a listener for alias-move notices (shared mode, unless turned off)."""
        if not self.shared or not self.settings.swap_notices:
            return None
        from champion.training.postgres.notify import SwapListener

        listener = SwapListener(self.database, on_notice, on_error=on_error)
        listener.start()
        return listener

    def tuning_storage(self) -> TuningStore | None:
        """Where a cycle's search study lives for `champion tune-worker` to join (shared
        mode, unless CHAMPION_SHARED_TUNING=false); None: each cycle tunes alone."""
        if not self.shared or not self.settings.shared_tuning:
            return None
        from champion.training.postgres.tuning import PgTuning

        return PgTuning(self.database)

    def cycle_context(
        self,
        *,
        progress: bool | None = None,
        checkpoint: Callable[[str], None] | None = None,
    ) -> Context:
        from champion.training.cycle import Context

        ctx = Context(
            self.contract,
            self.registry,
            self.ledger,
            self.leases,
            self.batches(),
            clock=self.clock,
            train_threads=self.settings.train_threads,
            lease_timeout=self.settings.lease_timeout_seconds,
            progress=progress,
            tuning=self.tuning_storage(),
        )
        if checkpoint is not None:
            ctx.checkpoint = checkpoint
        return ctx

    def watch(
        self,
        *,
        metrics: ServiceMetrics | None = None,
        trigger_retrain: Callable[[str], bool] | None = None,
        on_error: Callable[[], None] | None = None,
        settings: Settings | None = None,
    ) -> Watch:
        from champion.monitoring.watch import Watch

        return Watch(
            contract=self.contract,
            config=watch_settings(settings or self.settings),
            registry=self.registry,
            prediction_log=self.prediction_log,
            ledger=self.ledger,
            store=self.drift_store,
            metrics=metrics,
            trigger_retrain=trigger_retrain or (lambda trigger: False),
            on_error=on_error,
        )


def watch_settings(settings: Settings) -> WatchSettings:
    """The monitoring job's values out of the deployment settings."""
    from champion.monitoring.watch import WatchSettings

    return WatchSettings(
        folder=settings.home / "drift",
        window_rows=settings.drift_window_rows,
        alpha=settings.drift_alpha,
        sustained_windows=settings.drift_sustained_windows,
        cooldown_seconds=settings.drift_cooldown_seconds,
        quality_rows=settings.quality_window_rows,
        history_rows=settings.drift_history_rows,
    )


def build(
    settings: Settings | None = None,
    *,
    contract: Contract | None = None,
    configure_logging: bool = True,
    tracking_uri: str | None = None,
    **replacements: Any,
) -> Components:
    """Settings → contract → components; `replacements` swap any port (registry=, ledger=, ...).

    Raises ChampionError (ConfigError) when the settings or the contract are invalid.
    """
    settings = settings or get_settings()
    if configure_logging:
        logs.configure(level=settings.log_level, fmt=settings.log_format)
    contract = contract or load_contract(settings.project_file)
    # MLflow reads its own variables; we only supply the local default (the retrain child
    # and MLflow's fluent API inherit it).
    if tracking_uri is None:
        os.environ.setdefault("MLFLOW_TRACKING_URI", settings.default_tracking_uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    settings.home.mkdir(parents=True, exist_ok=True)
    return Components(settings, contract, tracking_uri=tracking_uri, **replacements)
