"""In-memory fakes of the ports in `champion.training.ports`, for unit tests of the core.

No MLflow server, no lock files, no landing zone: each fake keeps its state in plain
attributes a test can read and change. The one exception is `FakeRegistry.download`, which
writes a real MLflow model folder (with MLflow's own writer, into the test's folder) because
`ModelSlot` verifies and loads exactly such a folder.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import skops.io as sio

from champion.monitoring.capture import (
    ENCODED,
    Captured,
    Fresh,
    Written,
    encode_row,
    storable_key,
)
from champion.training.artifacts import (
    MODEL_FILE,
    TAG_KIND,
    TAG_SHA256,
    TRUSTED_TYPES,
    ModelRef,
    RunSummary,
)
from champion.training.checks import BatchReport
from champion.training.data import BATCH_COLUMN, IntakeReport, TrainingData
from champion.training.errors import IntegrityError, LeaseBusyError, RegistryError
from champion.training.records import LedgerEntry
from champion.training.registry import LoadedModel

START = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    """A clock that moves only when told to (`advance`)."""

    def __init__(self, start: datetime = START) -> None:
        self._now = start
        self._mono = 1000.0

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)
        self._mono += seconds


# -- leases ---------------------------------------------------------------------------------


@dataclass
class FakeLease:
    """A held fake lease; `release` frees it in the table it came from."""

    name: str
    owner: str
    _table: dict[str, str] = field(repr=False)
    released: bool = False

    def release(self) -> None:
        if not self.released and self._table.get(self.name) == self.owner:
            del self._table[self.name]
        self.released = True

    def alive(self) -> bool:
        """Held still: a test may take it away (`lose`) as a dropped database session would."""
        return not self.released and self._table.get(self.name) == self.owner

    def lose(self) -> None:
        """The lease is gone without a release (its session ended)."""
        if self._table.get(self.name) == self.owner:
            del self._table[self.name]


class FakeLeases:
    """Single-holder leases in a dict shared by `peer`s; a held lease never nests or waits."""

    owner: str
    domain: str

    def __init__(self, owner: str = "me", *, table: dict[str, str] | None = None) -> None:
        self.owner = owner
        self.table: dict[str, str] = {} if table is None else table  # name -> owner
        self.domain = f"fake:{id(self.table)}"  # peers share the table, hence the domain
        self.taken: list[str] = []  # names this owner acquired, in order
        self.timeouts: list[float] = []  # the timeout asked for on each acquire

    def peer(self, owner: str) -> FakeLeases:
        """Another owner (another process, another host) over the same leases."""
        return FakeLeases(owner, table=self.table)

    def acquire(self, name: str, *, timeout: float = 0.0) -> FakeLease:
        self.timeouts.append(timeout)
        holder = self.table.get(name)
        if holder is not None:  # like a flock: a second acquire blocks even for its owner
            raise LeaseBusyError(f"the '{name}' lease is held by {holder} (waited {timeout:g}s)")
        self.table[name] = self.owner
        self.taken.append(name)
        return FakeLease(name, self.owner, self.table)

    @contextmanager
    def hold(self, name: str, *, timeout: float = 0.0) -> Iterator[FakeLease]:
        held = self.acquire(name, timeout=timeout)
        try:
            yield held
        finally:
            held.release()

    def holder(self, name: str) -> str | None:
        return self.table.get(name)


# -- ledger ---------------------------------------------------------------------------------


class FakeLedger:
    """The ledger as a list of stored records, numbered 1, 2, ... like the file ledger."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.records: list[dict[str, Any]] = []

    def append(self, entry: LedgerEntry | Mapping[str, Any]) -> dict[str, Any]:
        body = entry.to_record() if isinstance(entry, LedgerEntry) else dict(entry)
        record = {"at": self.clock.now().isoformat(), **body, "seq": len(self.records) + 1}
        # Stored as the file ledger stores it: JSON, with anything else as text.
        stored: dict[str, Any] = json.loads(json.dumps(record, sort_keys=True, default=str))
        self.records.append(stored)
        return copy.deepcopy(stored)

    def entries(self) -> list[dict[str, Any]]:
        return copy.deepcopy(self.records)

    def tail(self) -> Iterator[dict[str, Any]]:
        yield from (copy.deepcopy(r) for r in reversed(self.records))

    def last(self, event: str) -> dict[str, Any] | None:
        return next((r for r in self.tail() if r.get("event") == event), None)

    def last_champion(self) -> str | None:
        return next((r["champion_after"] for r in self.tail() if "champion_after" in r), None)

    def events(self) -> list[str]:
        return [str(r["event"]) for r in self.records]


# -- registry -------------------------------------------------------------------------------


@dataclass
class FakeRun:
    """One tracked run: what was logged to it and how it ended."""

    run_id: str
    name: str
    tags: dict[str, str]
    parent: str | None = None
    status: str = "RUNNING"
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    json: dict[str, Any] = field(default_factory=dict)  # artifact path -> object
    files: list[str] = field(default_factory=list)  # "artifact_path/name" of logged files


@dataclass
class StoredModel:
    """A registered version's model: the pipeline, its skops bytes and its input example."""

    pipeline: Any
    blob: bytes
    example: pd.DataFrame | None
    input_names: tuple[str, ...]


class FakeRegistry:
    """Runs, versions and aliases in dicts; `fail_on` names methods that raise RegistryError.

    `before` maps a method name to a callable run just before it (to move an alias under a
    cycle, or to look at the leases at that moment).
    """

    def __init__(self, *, fail_on: Iterable[str] = ()) -> None:
        self.versions: dict[str, ModelRef] = {}
        self.models: dict[str, StoredModel] = {}
        self.alias_map: dict[str, str] = {}  # alias -> version
        self.runs: dict[str, FakeRun] = {}
        self.fail_on: set[str] = set(fail_on)
        self.before: dict[str, Callable[[], None]] = {}
        self.calls: list[str] = []
        self.descriptions: dict[str, str] = {}  # version -> description
        self._run_ids = itertools.count(1)

    def _enter(self, method: str) -> None:
        self.calls.append(method)
        if hook := self.before.get(method):
            hook()
        if method in self.fail_on:
            raise RegistryError(f"fake registry: {method} failed")

    # -- test helpers ---------------------------------------------------------------------

    def add_version(
        self,
        pipeline: Any,
        *,
        example: pd.DataFrame | None = None,
        input_names: Sequence[str] | None = None,
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ) -> ModelRef:
        """Register `pipeline` as the next version (what `register` does, minus the run)."""
        blob = sio.dumps(pipeline)
        digest = hashlib.sha256(blob).hexdigest()
        version = str(len(self.versions) + 1)
        names = tuple(input_names if input_names is not None else _columns(example))
        ref = ModelRef(
            version, run_id, {**(tags or {}), TAG_SHA256: digest}, 1000 * len(self.versions)
        )
        self.versions[version] = ref
        self.models[version] = StoredModel(pipeline, blob, example, names)
        return ref

    def set_alias(self, alias: str, version: str) -> None:
        self.alias_map[alias] = version

    def tamper(self, version: str) -> None:
        """Change the stored model bytes so they no longer match the recorded digest."""
        model = self.models[version]
        model.blob = model.blob + b"tampered"

    def cycle_runs(self) -> list[FakeRun]:
        return [r for r in self.runs.values() if r.tags.get(TAG_KIND) == "cycle"]

    # -- read side ------------------------------------------------------------------------

    def alias(self, alias: str) -> ModelRef | None:
        self._enter("alias")
        version = self.alias_map.get(alias)
        return None if version is None else self.versions[version]

    def aliases(self) -> dict[str, str]:
        self._enter("aliases")
        return dict(self.alias_map)

    def version(self, version: str) -> ModelRef:
        self._enter("version")
        try:
            return self.versions[str(version)]
        except KeyError:
            raise RegistryError(f"model version v{version} not found") from None

    def download(self, ref: ModelRef, dst: Path) -> Path:
        """Write the version as an MLflow sklearn model folder (skops), as the real one does."""
        self._enter("download")
        import mlflow.sklearn
        from mlflow.models import infer_signature

        model = self.models[ref.version]
        local = dst / "model"
        dst.mkdir(parents=True, exist_ok=True)
        example = model.example
        signature = (
            infer_signature(example, model.pipeline.predict(example))
            if example is not None
            else None
        )
        mlflow.sklearn.save_model(
            model.pipeline,
            str(local),
            serialization_format="skops",
            skops_trusted_types=list(TRUSTED_TYPES),
            signature=signature,
            input_example=example,
            pip_requirements=["scikit-learn"],
        )
        (local / MODEL_FILE).write_bytes(model.blob)  # the bytes the digest was taken of
        return local

    def load(self, ref: ModelRef, *, cache_dir: Path) -> LoadedModel:
        self._enter("load")
        model = self.models[ref.version]
        digest = hashlib.sha256(model.blob).hexdigest()
        if digest != ref.sha256:
            raise IntegrityError(f"model file digest of v{ref.version} does not match")
        return LoadedModel(ref, model.pipeline, digest, model.input_names, cache_dir / ref.version)

    def run_json(self, run_id: str, path: str) -> dict[str, Any] | None:
        self._enter("run_json")
        run = self.runs.get(run_id)
        found = run.json.get(path) if run else None
        return copy.deepcopy(found) if found is not None else None

    def run_summary(self, run_id: str) -> RunSummary | None:
        self._enter("run_summary")
        run = self.runs.get(run_id)
        if run is None:
            return None
        return RunSummary(
            run_id,
            run.status,
            dict(run.metrics),
            params={k: str(v) for k, v in run.params.items()},
            tags=dict(run.tags),
        )

    # -- write side -----------------------------------------------------------------------

    def start_run(self, *, name: str, tags: Mapping[str, str], parent: str | None = None) -> str:
        self._enter("start_run")
        run_id = f"run-{next(self._run_ids)}"
        self.runs[run_id] = FakeRun(run_id, name, dict(tags), parent)
        return run_id

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self._enter("log")
        run = self.runs[run_id]
        run.params |= dict(params or {})
        run.metrics |= {k: float(v) for k, v in (metrics or {}).items()}
        run.tags |= {k: str(v) for k, v in (tags or {}).items()}

    def log_json(self, run_id: str, obj: Any, path: str) -> None:
        self._enter("log_json")
        self.runs[run_id].json[path] = copy.deepcopy(obj)

    def log_files(self, run_id: str, files: Sequence[Path], artifact_path: str) -> None:
        self._enter("log_files")
        self.runs[run_id].files.extend(f"{artifact_path}/{Path(f).name}" for f in files)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._enter("end_run")
        self.runs[run_id].status = status

    def register(
        self,
        run_id: str,
        pipeline: Any,
        *,
        example: Any,
        tags: Mapping[str, str],
        compilation: Any = None,
    ) -> ModelRef:
        self._enter("register")
        ref = self.add_version(pipeline, example=example, tags=tags, run_id=run_id)
        self.alias_map["challenger"] = ref.version
        return ref

    def set_version_tags(self, version: str, tags: Mapping[str, str]) -> None:
        self._enter("set_version_tags")
        ref = self.versions[version]
        self.versions[version] = ModelRef(
            ref.version,
            ref.run_id,
            {**ref.tags, **{k: str(v) for k, v in tags.items()}},
            ref.created_ms,
        )

    def describe_version(self, version: str, description: str) -> None:
        self._enter("describe_version")
        if str(version) not in self.versions:
            raise RegistryError(f"model version v{version} not found")
        self.descriptions[str(version)] = description

    def move_champion(self, *, expected: str | None, new: str) -> bool:
        self._enter("move_champion")
        current = self.alias_map.get("champion")
        if current != expected:
            return False
        if current is not None and current != new:
            self.alias_map["previous"] = current
        self.alias_map["champion"] = new
        return True

    def running_cycle_runs(self) -> list[str]:
        self._enter("running_cycle_runs")
        return [r.run_id for r in self.cycle_runs() if r.status == "RUNNING"]


def _columns(example: pd.DataFrame | None) -> tuple[str, ...]:
    return () if example is None else tuple(str(c) for c in example.columns)


# -- batches --------------------------------------------------------------------------------


class FakeBatches:
    """Accepted batches as one frame (with BATCH_COLUMN); records what was marked consumed."""

    def __init__(
        self,
        frame: pd.DataFrame | None = None,
        *,
        quarantined: Sequence[str] = (),
        waiting: Sequence[str] = (),
    ):
        self.frame = frame if frame is not None else pd.DataFrame()
        self.quarantined = tuple(quarantined)
        self.waiting = tuple(waiting)  # file names intake leaves to settle
        self.consumed: dict[str, str] = {}  # batch id -> by
        self.marks: list[tuple[tuple[str, ...], str]] = []
        self.intakes = 0

    def add(self, frame: pd.DataFrame, batch_id: str) -> None:
        """Take in one more accepted batch."""
        batch = frame.assign(**{BATCH_COLUMN: batch_id})
        self.frame = pd.concat([self.frame, batch], ignore_index=True)

    def batch_ids(self) -> tuple[str, ...]:
        if self.frame.empty:
            return ()
        return tuple(dict.fromkeys(self.frame[BATCH_COLUMN].tolist()))

    def intake(self) -> IntakeReport:
        self.intakes += 1
        bad = tuple(
            BatchReport(b, f"{b}.csv", False, 0, ("fake: quarantined",)) for b in self.quarantined
        )
        return IntakeReport(accepted=(), quarantined=bad, waiting=self.waiting)

    def window(self) -> TrainingData:
        present = self.batch_ids()
        new = tuple(b for b in present if b not in self.consumed)
        return TrainingData(self.frame.reset_index(drop=True), present, new)

    def mark_consumed(self, batch_ids: Sequence[str], by: str) -> None:
        self.marks.append((tuple(batch_ids), by))
        self.consumed |= dict.fromkeys(batch_ids, by)


# -- predictions ----------------------------------------------------------------------------


def _stored(c: Captured) -> dict[str, Any]:
    """One captured row as the log stores it, encoded by the log's own rule (it raises one of
    UNSTORABLE when the row cannot be stored)."""
    return dict(zip(ENCODED, encode_row(c), strict=True)) | {
        "label": None,  # the label as JSON text ("null" is a label); None: not labelled
        "labelled_at": 0,  # the order labels came in (one number per `label` call)
        "exported": False,
        "export_name": None,
    }


def _window_row(row_id: int, r: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row_id,
        "request_id": r["request_id"],
        "row": r["row"],
        "at": r["at"],
        "model_version": r["model_version"],
        "features": json.loads(r["features"]),
        "prediction": json.loads(r["prediction"]),
        "score": r["score"],
    }


def _newest(found: list[Any], limit: int) -> list[Any]:
    """The last `limit` of `found` (a negative limit is no limit, as in SQL's LIMIT -1)."""
    if limit < 0:
        return found
    return found[max(len(found) - limit, 0) :] if limit else []


class FakePredictions:
    """The prediction log as a dict of rows by id, behaving like the SQLite `PredictionLog`."""

    def __init__(self, *, max_rows: int = 200_000) -> None:
        self.max_rows = max_rows
        self.rows: dict[int, dict[str, Any]] = {}  # id -> stored row, in id order
        self.keys: dict[tuple[str, int], int] = {}  # (request_id, row) -> id
        self._ids = itertools.count(1)  # like AUTOINCREMENT: never reused, one per insert try
        self._label_calls = itertools.count(1)
        self._lock = threading.Lock()

    def write(self, items: Sequence[Captured]) -> Written:
        stored: list[dict[str, Any]] = []
        bad = 0
        for c in items:
            try:
                stored.append(_stored(c))
            except (TypeError, ValueError, OverflowError):
                bad += 1
        inserted = 0
        with self._lock:
            for r in stored:
                row_id = next(self._ids)  # a conflicting insert uses up its id too
                key = (r["request_id"], r["row"])
                if key in self.keys:
                    continue
                self.rows[row_id] = r
                self.keys[key] = row_id
                inserted += 1
            if self.rows:  # the disk bound: labelled-but-unexported rows are kept
                newest = max(self.rows)
                for row_id in [i for i in self.rows if i <= newest - self.max_rows]:
                    r = self.rows[row_id]
                    if r["label"] is None or r["exported"]:
                        del self.rows[row_id]
                        del self.keys[(r["request_id"], r["row"])]
        return Written(inserted=inserted, duplicates=len(stored) - inserted, unserialisable=bad)

    def recent(self, *, limit: int, version: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            found = [
                _window_row(i, r)
                for i, r in self.rows.items()
                if version is None or r["model_version"] == version
            ]
        return _newest(found, limit)

    def since(self, after_id: int, *, limit: int, version: str) -> Fresh:
        with self._lock:
            found = [
                _window_row(i, r)
                for i, r in self.rows.items()
                if r["model_version"] == version and i > after_id
            ]
        rows = _newest(found, limit)
        return Fresh(rows=rows, max_id=rows[-1]["id"] if rows else after_id, fresh=len(found))

    def label(self, items: Sequence[tuple[str, int, Any]]) -> tuple[list[str], list[str]]:
        """All or nothing: returns (unknown keys, already labelled keys); writes if both empty."""
        unknown: list[str] = []
        done: list[str] = []
        with self._lock:
            call = next(self._label_calls)
            staged: dict[int, str] = {}  # id -> label JSON, written only if nothing is refused
            for request_id, row, label in items:
                key = f"{request_id}#{row}"
                if not storable_key(request_id, row):
                    unknown.append(key)  # it could never have been captured
                    continue
                text = json.dumps(label)  # a label JSON cannot encode raises, writing nothing
                row_id = self.keys.get((request_id, row))
                if row_id is None:
                    unknown.append(key)
                elif self.rows[row_id]["label"] is None and row_id not in staged:
                    staged[row_id] = text
                else:
                    done.append(key)
            if not unknown and not done:
                for row_id, text in staged.items():
                    self.rows[row_id] |= {"label": text, "labelled_at": call}
        return unknown, done

    def labelled(self, *, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            found = sorted(
                ((r["labelled_at"], i, r) for i, r in self.rows.items() if r["label"] is not None),
                key=lambda t: (t[0], t[1]),
                reverse=True,
            )
        chosen = found if limit < 0 else found[:limit]
        return [
            {
                "features": json.loads(r["features"]),
                "prediction": json.loads(r["prediction"]),
                "score": r["score"],
                "label": json.loads(r["label"]),
            }
            for _, _, r in chosen
        ]

    def claim_export(self, name: str, *, min_rows: int) -> int:
        with self._lock:
            pending = [
                r
                for r in self.rows.values()
                if r["label"] is not None and not r["exported"] and r["export_name"] is None
            ]
            if len(pending) < min_rows:
                return 0
            for r in pending:
                r["export_name"] = name
            return len(pending)

    def claimed(self) -> list[str]:
        with self._lock:
            names = [
                r["export_name"]
                for r in self.rows.values()  # id order: a name's first row decides its place
                if r["label"] is not None and not r["exported"] and r["export_name"] is not None
            ]
        return list(dict.fromkeys(names))

    def export_rows(self, name: str) -> list[tuple[int, dict[str, Any], Any, float]]:
        with self._lock:
            return [
                (i, json.loads(r["features"]), json.loads(r["label"]), r["at"])
                for i, r in self.rows.items()
                if r["export_name"] == name
            ]

    def finish_export(self, name: str) -> int:
        with self._lock:
            marked = [
                r for r in self.rows.values() if r["export_name"] == name and not r["exported"]
            ]
            for r in marked:
                r["exported"] = True
            return len(marked)

    def count(self) -> int:
        with self._lock:
            return len(self.rows)

    def close(self) -> None:
        return None


if TYPE_CHECKING:  # mypy checks that each fake satisfies its port
    from champion.training.ports import (
        BatchStore,
        Clock,
        Leases,
        LedgerStore,
        ModelRegistry,
        PredictionStore,
    )

    _registry: ModelRegistry = FakeRegistry()
    _ledger: LedgerStore = FakeLedger()
    _leases: Leases = FakeLeases()
    _batches: BatchStore = FakeBatches()
    _clock: Clock = FakeClock()
    _predictions: PredictionStore = FakePredictions()


# -- drift state ------------------------------------------------------------------------------


class FakeDriftStore:
    """The monitoring job's memory in dicts and a list (copies in, copies out)."""

    where: str

    def __init__(self) -> None:
        self.where = "fake drift store"
        self.state: dict[str, Any] | None = None
        self.summary: dict[str, Any] | None = None
        self.lines: list[dict[str, Any]] = []

    def read_state(self) -> Mapping[str, Any] | None:
        return None if self.state is None else dict(self.state)

    def write_state(self, state: Mapping[str, Any]) -> None:
        self.state = dict(state)

    def latest(self) -> dict[str, Any] | None:
        return None if self.summary is None else dict(self.summary)

    def write_latest(self, summary: Mapping[str, Any]) -> None:
        self.summary = json.loads(json.dumps(summary))

    def append_history(self, entry: Mapping[str, Any], *, keep: int) -> None:
        self.lines.append(dict(entry))
        if len(self.lines) > keep + keep // 10:
            del self.lines[:-keep]

    def history(self) -> list[dict[str, Any]]:
        return [dict(line) for line in self.lines]
