"""The ports: what the core needs from the outside world, as Protocols with one adapter each today.

| port              | adapter (embedded default)                 | in-memory fake        |
|-------------------|--------------------------------------------|-----------------------|
| `ModelRegistry`   | `champion.training.registry.Registry`      | `tests.fakes`         |
| `LedgerStore`     | `champion.training.ledger.Ledger`          | `tests.fakes`         |
| `Leases`          | `champion.training.lease.FileLeases`       | `tests.fakes`         |
| `BatchStore`      | `champion.training.batches.FileBatches`    | `tests.fakes`         |
| `PredictionStore` | `champion.monitoring.capture.PredictionLog`| `tests.fakes`         |
| `DriftStore`      | `champion.monitoring.state.DriftFiles`     | `tests.fakes`         |
| `TuningStore`     | (shared mode only) `postgres.tuning.PgTuning` | `shared_tuning.MemoryTuning` |
| `Clock`           | `champion.training.clock.SystemClock`      | `tests.fakes`         |

Shared mode (`CHAMPION_DATABASE_URL`) puts every port but the registry and the clock on
PostgreSQL (`champion.training.postgres`); the registry is then an `mlflow server`.

They are shaped for a second, shared backend: leases name their owner, ledger appends return a
sequence number, the prediction store writes batches, queries windows and labels exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import optuna

    from champion.monitoring.capture import Captured, Fresh, Written
    from champion.training.artifacts import ModelRef, RunSummary
    from champion.training.compile import Compilation
    from champion.training.data import IntakeReport, TrainingData
    from champion.training.records import LedgerEntry
    from champion.training.registry import LoadedModel
    from champion.training.shared_tuning import Claim, Pending


class Clock(Protocol):
    def now(self) -> datetime:
        """Aware UTC wall time."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (durations only)."""
        ...


class Lease(Protocol):
    """A held lease; `release` gives it up (the holder dying gives it up too)."""

    name: str
    owner: str

    def release(self) -> None: ...

    def alive(self) -> bool:
        """Whether it is still held (a lease on a database session is lost with the session)."""
        ...


class Leases(Protocol):
    """Named single-holder leases: one cycle, one writer of aliases and the ledger, one leader."""

    owner: str
    # Where the leases live (a lock folder on one host, one database): holders of the same
    # domain exclude each other, holders of different domains do not.
    domain: str

    def acquire(self, name: str, *, timeout: float = 0.0) -> Lease:
        """Take the lease, waiting up to `timeout` seconds; raises LeaseBusyError if held."""
        ...

    def hold(self, name: str, *, timeout: float = 0.0) -> AbstractContextManager[Lease]:
        """`acquire` as a context manager."""
        ...

    def holder(self, name: str) -> str | None:
        """Who holds the lease now (its owner identity), None when it is free."""
        ...


class LedgerStore(Protocol):
    """The append-only record of verdicts, alias moves and manual actions."""

    def append(self, entry: LedgerEntry | Mapping[str, Any]) -> dict[str, Any]:
        """Store one entry; returns it as stored, with `at` and its sequence number `seq`."""
        ...

    def entries(self) -> list[dict[str, Any]]: ...

    def tail(self) -> Iterator[dict[str, Any]]: ...

    def last(self, event: str) -> dict[str, Any] | None: ...

    def last_champion(self) -> str | None: ...


class ModelRegistry(Protocol):
    """Runs, model versions and aliases of one registered model, in champion's own types."""

    def alias(self, alias: str) -> ModelRef | None: ...

    def aliases(self) -> dict[str, str]: ...

    def version(self, version: str) -> ModelRef: ...

    def download(self, ref: ModelRef, dst: Path) -> Path: ...

    def load(self, ref: ModelRef, *, cache_dir: Path) -> LoadedModel: ...

    def run_json(self, run_id: str, path: str) -> dict[str, Any] | None: ...

    def run_summary(self, run_id: str) -> RunSummary | None: ...

    def start_run(
        self, *, name: str, tags: Mapping[str, str], parent: str | None = None
    ) -> str: ...

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None: ...

    def log_json(self, run_id: str, obj: Any, path: str) -> None: ...

    def log_files(self, run_id: str, files: Sequence[Path], artifact_path: str) -> None: ...

    def end_run(self, run_id: str, status: str = "FINISHED") -> None: ...

    def register(
        self,
        run_id: str,
        pipeline: Any,
        *,
        example: Any,
        tags: Mapping[str, str],
        compilation: Compilation | None = None,
    ) -> ModelRef: ...

    def set_version_tags(self, version: str, tags: Mapping[str, str]) -> None: ...

    def describe_version(self, version: str, description: str) -> None:
        """Set the version's description (what the MLflow UI shows an operator)."""
        ...

    def move_champion(self, *, expected: str | None, new: str) -> bool:
        """Compare-and-set the champion alias (`previous` keeps the old one)."""
        ...

    def running_cycle_runs(self) -> list[str]: ...


class BatchStore(Protocol):
    """Where training data comes from: the landing zone, intake's manifest, the stored batches."""

    def intake(self) -> IntakeReport:
        """Take in new landing-zone files (accept or quarantine each)."""
        ...

    def window(self) -> TrainingData:
        """The current training window over accepted batches."""
        ...

    def mark_consumed(self, batch_ids: Sequence[str], by: str) -> None:
        """Record that a cycle (`by`, a run id or a reason) trained on these batches."""
        ...


class PredictionStore(Protocol):
    """The prediction log: batched writes, window queries, labels attached exactly once."""

    def write(self, items: Sequence[Captured]) -> Written: ...

    def recent(self, *, limit: int, version: str | None = None) -> list[dict[str, Any]]: ...

    def since(self, after_id: int, *, limit: int, version: str) -> Fresh: ...

    def label(self, items: Sequence[tuple[str, int, Any]]) -> tuple[list[str], list[str]]:
        """Attach labels, all or nothing, each row exactly once: returns (unknown keys,
        already labelled keys); when either is non-empty nothing is written."""
        ...

    def labelled(self, *, limit: int) -> list[dict[str, Any]]: ...

    def claim_export(self, name: str, *, min_rows: int) -> int:
        """Claim labelled rows not yet exported for export `name`; returns how many."""
        ...

    def claimed(self) -> list[str]: ...

    def export_rows(self, name: str) -> list[tuple[int, dict[str, Any], Any, float]]: ...

    def finish_export(self, name: str) -> int: ...

    def count(self) -> int: ...


class DriftStore(Protocol):
    """The monitoring job's memory across ticks and leaders: its state, last summary, history."""

    where: str  # for messages: the file or the database

    def read_state(self) -> Mapping[str, Any] | None:
        """The state the last tick saved (None before any); raises when it cannot be read."""
        ...

    def write_state(self, state: Mapping[str, Any]) -> None: ...

    def latest(self) -> dict[str, Any] | None:
        """The last tick's summary (what GET /drift shows on every worker and replica)."""
        ...

    def write_latest(self, summary: Mapping[str, Any]) -> None: ...

    def append_history(self, entry: Mapping[str, Any], *, keep: int) -> None:
        """Add one tick's line, keeping the newest `keep` lines (up to 10 % more)."""
        ...

    def history(self) -> list[dict[str, Any]]:
        """The kept lines, oldest first."""
        ...


class Claims(Protocol):
    """One study's claims: at most one per candidate, at most `budget` in all, none after
    the deadline or once the study is closed; each decision atomic across processes."""

    def open(self, owner: str) -> None: ...

    def claim(self, candidate: str, owner: str, trial: int | None) -> Claim:
        """A claim for `owner` (unique to its process); with the budget spent, the
        unfinished claims of owners whose process is gone are taken back first."""
        ...

    def finish(self, candidate: str) -> None:
        """The claimed candidate is scored (its result is on its trial)."""
        ...

    def release(self, candidate: str) -> None:
        """Give an unfinished claim back (its scoring was interrupted): it counts no more."""
        ...

    def close(self) -> None:
        """No claim is given after this returns."""
        ...

    def pending(self) -> list[Pending]: ...

    def leave(self) -> None:
        """This process takes no more claims (it has finished or released its own)."""
        ...


class TuningStore(Protocol):
    """Where shared studies live: the Optuna storage, the claims, one clock for every host."""

    @property
    def where(self) -> str:
        """The store, for messages (no secrets)."""
        ...

    @property
    def storage(self) -> optuna.storages.BaseStorage: ...

    def claims(self, study: str, *, budget: int, deadline: float) -> Claims: ...

    def forget(self, study: str) -> None:
        """Drop a deleted study's claims."""
        ...

    def now(self) -> float:
        """Seconds since the epoch on the store's clock (deadlines are on it)."""
        ...
