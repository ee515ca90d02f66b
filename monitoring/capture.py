"""Prediction capture off the request path: a bounded buffer flushed to a SQLite prediction log."""

from __future__ import annotations

import json
import logging
import random
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import orjson

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
    UNIQUE (request_id, row)
);
CREATE INDEX IF NOT EXISTS predictions_at ON predictions (at);
CREATE INDEX IF NOT EXISTS predictions_labelled ON predictions (labelled_at);
"""


class Captured(NamedTuple):
    """One predicted row as it goes into the log (a tuple: a 1,000-row request makes 1,000)."""

    request_id: str
    row: int
    at: float
    model_version: str
    features: Mapping[str, Any]
    prediction: Any
    score: float | None


def connect(path: Path) -> sqlite3.Connection:
    """Open the log; WAL lets several workers write while a reader scans."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


class PredictionLog:
    """Reads and writes the prediction log; rotation keeps at most `max_rows` rows."""

    def __init__(self, path: Path, *, max_rows: int = 200_000) -> None:
        self.path = path
        self.max_rows = max_rows
        self._conn = connect(path)
        self._lock = threading.Lock()

    def write(self, items: Sequence[Captured]) -> None:
        rows = [
            (
                c.request_id,
                c.row,
                c.at,
                c.model_version,
                orjson.dumps(c.features, default=str).decode(),
                orjson.dumps(c.prediction, default=str).decode(),
                c.score,
            )
            for c in items
        ]
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT OR IGNORE INTO predictions (request_id, row, at, model_version, features,"
                " prediction, score) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            # Disk bound: drop the oldest rows past the limit (labelled-but-unexported kept).
            self._conn.execute(
                "DELETE FROM predictions WHERE id <= (SELECT MAX(id) FROM predictions) - ?"
                " AND NOT (label IS NOT NULL AND exported = 0)",
                (self.max_rows,),
            )

    def recent(self, *, limit: int, version: str | None = None) -> list[dict[str, Any]]:
        """The most recent captured rows (optionally of one model version), oldest first."""
        query = (
            "SELECT request_id, row, at, model_version, features, prediction, score"
            " FROM predictions"
        )
        args: list[Any] = []
        if version is not None:
            query += " WHERE model_version = ?"
            args.append(version)
        query += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            found = self._conn.execute(query, args).fetchall()
        return [
            {
                "request_id": r[0],
                "row": r[1],
                "at": r[2],
                "model_version": r[3],
                "features": json.loads(r[4]),
                "prediction": json.loads(r[5]),
                "score": r[6],
            }
            for r in reversed(found)
        ]

    def label(self, items: Sequence[tuple[str, int, Any]]) -> tuple[list[str], list[str]]:
        """Join labels to captured rows; all or nothing.

        Returns (unknown keys, already labelled keys); when either is non-empty nothing is
        written, so a retried call never labels a row twice.
        """
        now = time.time()
        with self._lock, self._conn:
            unknown: list[str] = []
            done: list[str] = []
            for request_id, row, _ in items:
                found = self._conn.execute(
                    "SELECT label FROM predictions WHERE request_id = ? AND row = ?",
                    (request_id, row),
                ).fetchone()
                key = f"{request_id}#{row}"
                if found is None:
                    unknown.append(key)
                elif found[0] is not None:
                    done.append(key)
            if unknown or done:
                return unknown, done
            self._conn.executemany(
                "UPDATE predictions SET label = ?, labelled_at = ?"
                " WHERE request_id = ? AND row = ?",
                [(json.dumps(label), now, rid, row) for rid, row, label in items],
            )
        return [], []

    def labelled(self, *, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            found = self._conn.execute(
                "SELECT features, prediction, score, label FROM predictions"
                " WHERE label IS NOT NULL ORDER BY labelled_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            {
                "features": json.loads(f),
                "prediction": json.loads(p),
                "score": s,
                "label": json.loads(lab),
            }
            for f, p, s, lab in found
        ]

    def unexported(self) -> list[tuple[int, dict[str, Any], Any, float]]:
        with self._lock:
            found = self._conn.execute(
                "SELECT id, features, label, at FROM predictions"
                " WHERE label IS NOT NULL AND exported = 0 ORDER BY id"
            ).fetchall()
        return [(i, json.loads(f), json.loads(lab), at) for i, f, lab, at in found]

    def mark_exported(self, ids: Iterable[int]) -> None:
        with self._lock, self._conn:
            self._conn.executemany(
                "UPDATE predictions SET exported = 1 WHERE id = ?", [(i,) for i in ids]
            )

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class Capture:
    """Bounded buffer + flusher thread: `offer` never blocks and never raises."""

    def __init__(
        self,
        log_: PredictionLog,
        *,
        capacity: int = 10_000,
        sample_rate: float = 1.0,
        flush_seconds: float = 0.5,
        on_drop: Any = None,
        seed: int | None = None,
    ) -> None:
        self.log = log_
        self.capacity = capacity
        self.sample_rate = sample_rate
        self.flush_seconds = flush_seconds
        self.dropped = 0
        self._on_drop = on_drop or (lambda n: None)
        self._buffer: deque[Captured] = deque()
        self._stop = threading.Event()
        self._rng = random.Random(seed)
        self._thread = threading.Thread(target=self._run, name="capture-flush", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def sampled(self) -> bool:
        """Whether to capture this request: decided before its rows are built."""
        return self.sample_rate >= 1.0 or self._rng.random() < self.sample_rate

    def offer(self, items: Sequence[Captured], *, sampled: bool | None = None) -> None:
        """Queue rows for the log; when full, drop and count (the request never waits)."""
        if not (self.sampled() if sampled is None else sampled):
            return
        room = self.capacity - len(self._buffer)
        if room < len(items):
            lost = len(items) - max(room, 0)
            self.dropped += lost
            self._on_drop(lost)
            items = items[: max(room, 0)]
        self._buffer.extend(items)  # deque.extend is atomic under the GIL

    def flush(self) -> int:
        batch: list[Captured] = []
        while len(batch) < 5_000:
            try:
                batch.append(self._buffer.popleft())  # atomic; another flusher may race us
            except IndexError:
                break
        if batch:
            try:
                self.log.write(batch)
            except sqlite3.Error as exc:  # losing capture must never hurt serving
                self.dropped += len(batch)
                self._on_drop(len(batch))
                log.warning("prediction capture write failed", extra={"error": str(exc)})
        return len(batch)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            while self.flush() > 0:
                pass

    def stop(self) -> None:
        """Stop the flusher, wait for a write under way, then write what is left."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        while self.flush() > 0:
            pass
