"""Prediction capture off the request path: a bounded buffer flushed to a SQLite prediction log."""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from champion.training.errors import ChampionError
from champion.training.ports import PredictionStore

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    row INTEGER NOT NULL,
    at REAL NOT NULL,
    model_version TEXT NOT NULL,
    features TEXT NOT NULL,
    prediction TEXT NOT NULL,
    score REAL,
    label TEXT,
    labelled_at REAL,
    exported INTEGER NOT NULL DEFAULT 0,
    export_name TEXT,
    UNIQUE (request_id, row)
);
"""
# Created after the migration: they name columns an older log may not have yet. Every insert
# pays for each index, so the labelled rows' index holds labelled rows only (the queries that
# use it ask for them), and no index serves a query nobody makes.
INDEXES = """
DROP INDEX IF EXISTS predictions_at;
DROP INDEX IF EXISTS predictions_labelled;
CREATE INDEX IF NOT EXISTS predictions_labelled_rows ON predictions (labelled_at)
    WHERE label IS NOT NULL;
CREATE INDEX IF NOT EXISTS predictions_version ON predictions (model_version, id);
CREATE INDEX IF NOT EXISTS predictions_pending ON predictions (export_name, id)
    WHERE label IS NOT NULL AND exported = 0;
"""
# Columns added since the first release, with their declarations.
ADDED_COLUMNS = {"export_name": "TEXT"}

# SQLite integers are signed 64-bit; a larger Python int cannot be bound.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
# What encoding a row raises when it cannot be stored (orjson raises a TypeError subclass).
UNSTORABLE = (TypeError, ValueError, OverflowError)


class Captured(NamedTuple):
    """One predicted row as it goes into the log (a tuple: a 1,000-row request makes 1,000)."""

    request_id: str
    row: int
    at: float
    model_version: str
    features: Mapping[str, Any]
    prediction: Any
    score: float | None


class Written(NamedTuple):
    """What one `PredictionLog.write` did with the rows it was offered."""

    inserted: int
    duplicates: int  # (request_id, row) already in the log: the first row is kept
    unserialisable: int  # rows that cannot be stored (e.g. a lone surrogate in a string)


class Fresh(NamedTuple):
    """The newest rows of one model version after a given row id."""

    rows: list[dict[str, Any]]  # oldest first, at most the limit asked for
    max_id: int  # the newest id in `rows` (the id asked from when there are none)
    fresh: int  # how many rows of the version come after that id, returned or not


class LogLimiter:
    """Logs the first event of each key, then at most one per `every` seconds per key.

    A failure repeating on every row or every pass must not flood the log: held-back
    events are counted and reported as `suppressed` on the next line logged for that key.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        every: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def warning(
        self, key: str, message: str, *, extra: Mapping[str, Any], exc_info: bool = False
    ) -> bool:
        """Log `message` unless `key` was logged within `every` seconds; True when logged."""
        with self._lock:
            now = self.clock()
            last = self._last.get(key)
            if last is not None and now - last < self.every:
                self._held[key] += 1
                return False
            self._last[key] = now
            held = self._held.pop(key, 0)
        self.logger.warning(message, extra={**extra, "suppressed": held}, exc_info=exc_info)
        return True


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction that takes the write lock first: what it checks stays true.

    Committed on exit, rolled back on an exception; a caller may roll back early itself.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Add the columns a log written by an older release lacks (workers may race here)."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(predictions)")}
    if not set(ADDED_COLUMNS) - have:
        return
    with _immediate(conn):
        # Checked again under the write lock: another worker may have migrated meanwhile.
        have = {r[1] for r in conn.execute("PRAGMA table_info(predictions)")}
        for name, declaration in ADDED_COLUMNS.items():
            if name not in have:
                conn.execute(f"ALTER TABLE predictions ADD COLUMN {name} {declaration}")
                log.info("prediction log migrated", extra={"path": str(path), "added": name})


def connect(path: Path) -> sqlite3.Connection:
    """Open the log; WAL lets several workers write while a reader scans."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    _migrate(conn, path)
    conn.executescript(INDEXES)
    return conn


def encode_row(c: Captured) -> tuple[Any, ...]:
    """One row as SQLite parameters; raises one of UNSTORABLE when it cannot be stored."""
    # SQLite text must be valid UTF-8: a lone surrogate would fail inside executemany.
    str.encode(c.request_id)
    str.encode(c.model_version)
    if not INT_MIN <= c.row <= INT_MAX:
        raise OverflowError(f"row {c.row} is outside SQLite's integer range")
    return (
        c.request_id,
        c.row,
        float(c.at),
        c.model_version,
        orjson.dumps(c.features, default=str).decode(),
        orjson.dumps(c.prediction, default=str).decode(),
        None if c.score is None else float(c.score),
    )


def _encode_all(items: Sequence[Captured]) -> tuple[list[tuple[Any, ...]], int]:
    """The storable rows of `items` as SQLite parameters, and how many could not be stored
    (one bad row must not cost the others)."""
    try:
        return [encode_row(c) for c in items], 0
    except UNSTORABLE:
        rows = []
        for c in items:
            with suppress(*UNSTORABLE):
                rows.append(encode_row(c))
        return rows, len(items) - len(rows)


def storable_key(request_id: Any, row: Any) -> bool:
    """Whether (request_id, row) could be in the log at all (no bind error possible)."""
    if not isinstance(request_id, str) or not isinstance(row, int):
        return False
    try:
        request_id.encode()
    except UnicodeEncodeError:
        return False
    return INT_MIN <= row <= INT_MAX


# The columns a read returns, in the order `as_row` takes them (both log adapters use them).
COLUMNS = "id, request_id, row, at, model_version, features, prediction, score"
# What `encode_row` returns, in order, and how the rows go in.
ENCODED = ("request_id", "row", "at", "model_version", "features", "prediction", "score")
_INSERT = f"INSERT INTO predictions ({', '.join(ENCODED)}) VALUES "
_VALUES = "(" + ", ".join("?" * len(ENCODED)) + ")"
_ON_CONFLICT = " ON CONFLICT (request_id, row) DO NOTHING"


def as_row(r: Sequence[Any]) -> dict[str, Any]:
    """One row read as `COLUMNS`, its JSON columns decoded."""
    return {
        "id": r[0],
        "request_id": r[1],
        "row": r[2],
        "at": r[3],
        "model_version": r[4],
        "features": json.loads(r[5]),
        "prediction": json.loads(r[6]),
        "score": r[7],
    }


# What `labelled` reads, in the order `labelled_row` takes it (both log adapters use them).
LABELLED = "features, prediction, score, label"


def labelled_row(r: Sequence[Any]) -> dict[str, Any]:
    """One labelled row read as `LABELLED`, its JSON columns decoded."""
    return {
        "features": json.loads(r[0]),
        "prediction": json.loads(r[1]),
        "score": r[2],
        "label": json.loads(r[3]),
    }


class PredictionLog:
    """Reads and writes the prediction log; rotation keeps at most `max_rows` rows."""

    def __init__(self, path: Path, *, max_rows: int = 200_000) -> None:
        self.path = path
        self.max_rows = max_rows
        self._conn = connect(path)
        self._lock = threading.Lock()
        limit = self._conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._chunk = max(1, min(100, limit // len(ENCODED)))

    def write(self, items: Sequence[Captured]) -> Written:
        """Insert rows; a row that cannot be stored or whose key is taken is skipped, counted."""
        bad = stored = inserted = 0
        with self._lock, self._conn:
            # Multi-row INSERTs of up to `_chunk` rows: about 30 % less time per row than
            # executemany's one statement per row. Each chunk is encoded just before its
            # statement, which runs without the GIL: the event loop never waits for more than
            # one chunk's encoding. rowcount counts the rows a statement inserted (a conflict
            # adds 0).
            for start in range(0, len(items), self._chunk):
                rows, unstorable = _encode_all(items[start : start + self._chunk])
                bad += unstorable
                stored += len(rows)
                if not rows:
                    continue
                cursor = self._conn.execute(
                    _INSERT + ",".join([_VALUES] * len(rows)) + _ON_CONFLICT,
                    [value for row in rows for value in row],
                )
                inserted += max(cursor.rowcount, 0)
            # Disk bound: drop the oldest rows past the limit (labelled-but-unexported kept,
            # whether or not they are already named into an export batch).
            self._conn.execute(
                "DELETE FROM predictions WHERE id <= (SELECT MAX(id) FROM predictions) - ?"
                " AND NOT (label IS NOT NULL AND exported = 0)",
                (self.max_rows,),
            )
        return Written(inserted=inserted, duplicates=stored - inserted, unserialisable=bad)

    def recent(self, *, limit: int, version: str | None = None) -> list[dict[str, Any]]:
        """The most recent captured rows (optionally of one model version), oldest first."""
        query = f"SELECT {COLUMNS} FROM predictions"
        args: list[Any] = []
        if version is not None:
            query += " WHERE model_version = ?"
            args.append(version)
        query += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            found = self._conn.execute(query, args).fetchall()
        return [as_row(r) for r in reversed(found)]

    def since(self, after_id: int, *, limit: int, version: str) -> Fresh:
        """The most recent `limit` rows of `version` with ids above `after_id`, oldest first."""
        with self._lock:
            fresh = int(
                self._conn.execute(
                    "SELECT COUNT(*) FROM predictions WHERE model_version = ? AND id > ?",
                    (version, after_id),
                ).fetchone()[0]
            )
            found = self._conn.execute(
                f"SELECT {COLUMNS} FROM predictions WHERE model_version = ? AND id > ?"
                " ORDER BY id DESC LIMIT ?",
                (version, after_id, limit),
            ).fetchall()
        rows = [as_row(r) for r in reversed(found)]
        return Fresh(rows=rows, max_id=rows[-1]["id"] if rows else after_id, fresh=fresh)

    def label(self, items: Sequence[tuple[str, int, Any]]) -> tuple[list[str], list[str]]:
        """Join labels to captured rows; all or nothing, exactly once across processes.

        Returns (unknown keys, already labelled keys); when either is non-empty nothing is
        written, so a retried call never labels a row twice. Check and update are one write
        transaction: of two workers labelling one row, exactly one succeeds.
        """
        now = time.time()
        unknown: list[str] = []
        done: list[str] = []
        with self._lock, _immediate(self._conn) as conn:
            for request_id, row, label in items:
                key = f"{request_id}#{row}"
                if not storable_key(request_id, row):
                    unknown.append(key)  # it could never have been captured
                    continue
                updated = conn.execute(
                    "UPDATE predictions SET label = ?, labelled_at = ?"
                    " WHERE request_id = ? AND row = ? AND label IS NULL",
                    (json.dumps(label), now, request_id, row),
                ).rowcount
                if updated == 1:
                    continue
                found = conn.execute(
                    "SELECT 1 FROM predictions WHERE request_id = ? AND row = ?",
                    (request_id, row),
                ).fetchone()
                (unknown if found is None else done).append(key)
            if unknown or done:
                conn.rollback()  # all or nothing
        return unknown, done

    def labelled(self, *, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            found = self._conn.execute(
                f"SELECT {LABELLED} FROM predictions"
                " WHERE label IS NOT NULL ORDER BY labelled_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [labelled_row(r) for r in found]

    # -- two-phase feedback export: name the rows, write the file, mark them ---------------

    def claim_export(self, name: str, *, min_rows: int) -> int:
        """Name every pending labelled row into batch `name` once there are `min_rows`.

        Returns the rows named (0 when too few are pending: nothing is named). One write
        transaction, so a row is named into one batch only, whoever else exports.
        """
        with self._lock, _immediate(self._conn) as conn:
            pending = int(
                conn.execute(
                    "SELECT COUNT(*) FROM predictions"
                    " WHERE label IS NOT NULL AND exported = 0 AND export_name IS NULL"
                ).fetchone()[0]
            )
            named = 0
            if pending >= min_rows:
                named = conn.execute(
                    "UPDATE predictions SET export_name = ?"
                    " WHERE label IS NOT NULL AND exported = 0 AND export_name IS NULL",
                    (name,),
                ).rowcount
        return named

    def claimed(self) -> list[str]:
        """Batches named but not yet marked exported (a crash came in between), oldest first."""
        with self._lock:
            found = self._conn.execute(
                "SELECT export_name FROM predictions"
                " WHERE label IS NOT NULL AND exported = 0 AND export_name IS NOT NULL"
                " GROUP BY export_name ORDER BY MIN(id)"
            ).fetchall()
        return [name for (name,) in found]

    def export_rows(self, name: str) -> list[tuple[int, dict[str, Any], Any, float]]:
        """The rows of batch `name`, in id order: the same answer every time it is asked."""
        with self._lock:
            found = self._conn.execute(
                "SELECT id, features, label, at FROM predictions WHERE export_name = ? ORDER BY id",
                (name,),
            ).fetchall()
        return [(i, json.loads(f), json.loads(lab), at) for i, f, lab, at in found]

    def finish_export(self, name: str) -> int:
        """Mark batch `name` exported (its file is written); returns the rows marked."""
        with self._lock, self._conn:
            return int(
                self._conn.execute(
                    "UPDATE predictions SET exported = 1 WHERE export_name = ? AND exported = 0",
                    (name,),
                ).rowcount
            )

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _ignore_drop(reason: str, n: int) -> None:
    return None


def _ignore_error() -> None:
    return None


class Capture:
    """Bounded buffer + flusher thread: `offer` never blocks and never raises.

    Every row offered and not written is reported to `on_drop(reason, rows)` with a reason
    from `monitoring.metrics.DROP_REASONS`; every failed flush pass to `on_error()`. The
    flusher thread outlives any failure of the log.
    """

    def __init__(
        self,
        log_: PredictionStore,
        *,
        capacity: int = 10_000,
        sample_rate: float = 1.0,
        flush_seconds: float = 0.5,
        on_drop: Callable[[str, int], None] | None = None,
        on_error: Callable[[], None] | None = None,
        seed: int | None = None,
        batch_rows: int = 5_000,
        log_every: float = 300.0,
    ) -> None:
        self.log = log_
        self.capacity = capacity
        self.sample_rate = sample_rate
        self.flush_seconds = flush_seconds
        self.batch_rows = batch_rows
        self.dropped = 0
        self.drops: Counter[str] = Counter()  # rows dropped, by reason
        self.errors = 0  # failed flush passes
        self._on_drop = on_drop or _ignore_drop
        self._on_error = on_error or _ignore_error
        self._warn = LogLimiter(log, every=log_every)
        self._buffer: deque[Captured] = deque()
        self._stop = threading.Event()
        self._rng = random.Random(seed)
        self._thread = threading.Thread(target=self._run, name="capture-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def sampled(self) -> bool:
        """Whether to capture this request: decided before its rows are built."""
        return self.sample_rate >= 1.0 or self._rng.random() < self.sample_rate

    def offer(self, items: Sequence[Captured], *, sampled: bool | None = None) -> None:
        """Queue rows for the log; when full, drop and count (the request never waits)."""
        if not (self.sampled() if sampled is None else sampled):
            return
        room = self.capacity - len(self._buffer)
        if room < len(items):
            self._drop("buffer_full", len(items) - max(room, 0), capacity=self.capacity)
            items = items[: max(room, 0)]
        self._buffer.extend(items)  # deque.extend is atomic under the GIL

    def flush(self) -> int:
        """Write up to `batch_rows` buffered rows; returns how many were taken. Never raises."""
        batch: list[Captured] = []
        while len(batch) < self.batch_rows:
            try:
                batch.append(self._buffer.popleft())  # atomic; another flusher may race us
            except IndexError:
                break
        if batch:
            self._write(batch)
        return len(batch)

    def _write(self, batch: list[Captured]) -> None:
        try:
            written = self.log.write(batch)
        except Exception as exc:  # losing capture must never hurt serving, nor stop capture
            self.errors += 1
            self._call(self._on_error)
            self._drop("write_failed", len(batch), error=exc)
            return
        if written.unserialisable:
            self._drop("unserialisable", written.unserialisable)
        if written.duplicates:
            self._drop("duplicate_request_id", written.duplicates)

    def _drop(self, reason: str, n: int, *, error: Exception | None = None, **detail: Any) -> None:
        if n <= 0:
            return
        self.dropped += n
        self.drops[reason] += n
        self._call(self._on_drop, reason, n)
        key = reason if error is None else f"{reason}:{type(error).__name__}"
        extra: dict[str, Any] = {"reason": reason, "rows": n, **detail}
        if error is not None:
            extra["error"] = f"{type(error).__name__}: {error}"
        # A traceback for a failure nobody expected; the known reasons speak for themselves.
        unexpected = error is not None and not isinstance(error, sqlite3.Error | ChampionError)
        self._warn.warning(key, "prediction capture dropped rows", extra=extra, exc_info=unexpected)

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception as exc:  # a broken counter must not stop capture either
            self._warn.warning(
                f"callback:{type(exc).__name__}",
                "prediction capture callback failed",
                extra={"error": f"{type(exc).__name__}: {exc}"},
            )

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                while self.flush() > 0:
                    pass
            except Exception as exc:  # flush guards itself; this keeps the thread whatever
                self.errors += 1
                self._call(self._on_error)
                self._warn.warning(
                    f"loop:{type(exc).__name__}",
                    "prediction capture pass failed",
                    extra={"error": f"{type(exc).__name__}: {exc}"},
                    exc_info=True,
                )

    def stop(self) -> None:
        """Stop the flusher, wait for a write under way, then write what is left."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        while self.flush() > 0:
            pass
