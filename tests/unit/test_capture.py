"""Unit tests for prediction capture, the prediction log, feedback export and drift triggers."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from champion.monitoring.capture import Capture, Captured, PredictionLog, Written
from champion.monitoring.drift import DriftReport, FeatureDrift
from champion.monitoring.metrics import ServiceMetrics
from champion.monitoring.watch import Watch
from champion.service.root import watch_settings
from champion.training.artifacts import ModelRef
from champion.training.config import Contract, Settings, load_contract
from champion.training.ledger import Ledger
from tests.polling import eventually

PROJECT_FILE = Path(__file__).resolve().parents[2] / "champion.toml"


def _item(request_id: str, row: int = 0, *, salary: float = 50_000.0) -> Captured:
    return Captured(
        request_id=request_id,
        row=row,
        at=time.time(),
        model_version="1",
        features={"salary": salary, "elevel": "e1"},
        prediction=1,
        score=0.75,
    )


def _items(prefix: str, n: int) -> list[Captured]:
    return [_item(prefix, i, salary=float(i)) for i in range(n)]


@pytest.fixture
def plog(tmp_path: Path) -> Iterator[PredictionLog]:
    log = PredictionLog(tmp_path / "predictions.db", max_rows=1_000)
    yield log
    log.close()


class _BlockingLog:
    """A log whose writes wait until released: a slow disk under the flusher thread."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.written: list[Captured] = []

    def write(self, items: Sequence[Captured]) -> Written:
        self.entered.set()
        assert self.release.wait(30)
        self.written.extend(items)
        return Written(len(items), 0, 0)


# -- Capture -----------------------------------------------------------------------------------


def test_offer_then_flush_writes_rows(plog):
    """It writes offered rows to the log on flush, with their features, prediction and score."""
    capture = Capture(plog)
    capture.offer(_items("a", 3))
    assert plog.count() == 0  # nothing is written on the request path
    assert capture.flush() == 3
    rows = plog.recent(limit=10)
    assert [(r["request_id"], r["row"]) for r in rows] == [("a", 0), ("a", 1), ("a", 2)]
    assert rows[1]["features"] == {"salary": 1.0, "elevel": "e1"}
    assert rows[1]["prediction"] == 1 and rows[1]["score"] == 0.75
    assert capture.flush() == 0


def test_stop_flushes_what_is_buffered(plog):
    """It writes every buffered row when stopped (a clean worker shutdown loses none)."""
    capture = Capture(plog, flush_seconds=60)
    capture.start()
    capture.offer(_items("a", 7))
    capture.stop()
    assert plog.count() == 7


def test_full_buffer_drops_and_counts(plog):
    """It keeps what fits, drops the rest and reports the number lost to on_drop."""
    drops: list[tuple[str, int]] = []
    capture = Capture(plog, capacity=5, on_drop=lambda reason, n: drops.append((reason, n)))
    capture.offer(_items("a", 3))
    capture.offer(_items("b", 4))  # room for 2
    capture.offer(_items("c", 2))  # no room
    assert drops == [("buffer_full", 2), ("buffer_full", 2)]
    assert capture.dropped == 4
    capture.flush()
    kept = [(r["request_id"], r["row"]) for r in plog.recent(limit=10)]
    assert kept == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]


def test_offer_never_blocks_while_the_log_is_stuck():
    """It returns from offer at once while the flusher is stuck in a slow write."""
    log = _BlockingLog()
    drops: list[int] = []
    capture = Capture(
        log,  # type: ignore[arg-type]
        capacity=10,
        flush_seconds=0.01,
        on_drop=lambda reason, n: drops.append(n),
    )
    capture.start()

    def offer_many() -> None:
        for i in range(100):
            capture.offer([_item(f"r{i}")])

    try:
        capture.offer([_item("first")])
        assert log.entered.wait(10), "the flusher never started writing"
        requests = threading.Thread(target=offer_many, daemon=True)
        requests.start()
        requests.join(timeout=2)
        assert not requests.is_alive(), "offer waited for the stuck log"
        assert sum(drops) == 90 and capture.dropped == 90
    finally:
        log.release.set()
        capture.stop()
    deadline = time.monotonic() + 10
    while len(log.written) < 11 and time.monotonic() < deadline:
        time.sleep(0.01)  # the flusher finishes its own, released write
    assert len(log.written) == 11


class _CountingLog:
    def __init__(self) -> None:
        self.rows = 0

    def write(self, items: Sequence[Captured]) -> Written:
        self.rows += len(items)
        return Written(len(items), 0, 0)


class _SlowDeque(deque):  # type: ignore[type-arg]
    """A buffer whose length check yields the CPU: a thread switch right after the check."""

    def __len__(self) -> int:
        n = super().__len__()
        time.sleep(0.0002)
        return n


def test_two_threads_may_flush_at_once():
    """It flushes from the flusher thread and a request (/feedback) at once without raising."""
    log = _CountingLog()
    capture = Capture(log, capacity=10**6)  # type: ignore[arg-type]
    capture._buffer = _SlowDeque()
    errors: list[BaseException] = []

    def flush(start: threading.Barrier) -> None:
        start.wait(5)
        try:
            capture.flush()
        except BaseException as exc:
            errors.append(exc)

    offered = 0
    for _ in range(20):  # bounded rounds; the race shows in the first few
        capture.offer(_items("a", 5))
        offered += 5
        start = threading.Barrier(2)
        threads = [threading.Thread(target=flush, args=(start,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        if errors:
            break
    assert errors == []
    capture.flush()
    assert log.rows == offered and capture.dropped == 0


def test_sample_rate_zero_captures_nothing(plog):
    """It captures no request at sample rate 0."""
    capture = Capture(plog, sample_rate=0.0, seed=1)
    for i in range(200):
        capture.offer([_item(f"r{i}")])
    capture.flush()
    assert plog.count() == 0
    assert capture.dropped == 0  # sampled out is not dropped


def test_sample_rate_half_captures_about_half(tmp_path):
    """It captures roughly half of the requests, whole, at sample rate 0.5 with a seed."""
    log = PredictionLog(tmp_path / "p.db", max_rows=10_000)
    capture = Capture(log, sample_rate=0.5, seed=7)
    for i in range(1_000):
        capture.offer(_items(f"r{i}", 2))
    while capture.flush():
        pass
    rows = log.recent(limit=5_000)
    log.close()
    requests = {r["request_id"] for r in rows}
    assert 420 <= len(requests) <= 580
    assert len(rows) == 2 * len(requests)  # a request is captured whole or not at all


class _FlakyLog:
    """A log whose first `failures` writes raise `error`, then write normally."""

    def __init__(self, error: Exception, failures: int = 1) -> None:
        self.error = error
        self.failures = failures
        self.calls = 0
        self.written: list[Captured] = []

    def write(self, items: Sequence[Captured]) -> Written:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        self.written.extend(items)
        return Written(len(items), 0, 0)


class _Recorder:
    """on_drop and on_error callbacks that remember what they were told."""

    def __init__(self) -> None:
        self.drops: list[tuple[str, int]] = []
        self.errors = 0

    def drop(self, reason: str, n: int) -> None:
        self.drops.append((reason, n))

    def error(self) -> None:
        self.errors += 1


def _capture_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "champion.monitoring.capture" and r.levelno == logging.WARNING
    ]


def test_unserialisable_rows_are_dropped_alone_and_capture_goes_on(plog):
    """It drops only rows that cannot be stored (lone surrogate, huge row), writes the rest."""
    seen = _Recorder()
    capture = Capture(plog, flush_seconds=0.01, on_drop=seen.drop, on_error=seen.error)
    capture.start()
    try:
        bad_features = _item("a", 1)._replace(features={"salary": 1.0, "elevel": "\ud800"})
        bad_id = _item("\ud800", 0)
        bad_row = _item("a", 2**70)
        capture.offer([_item("a", 0), bad_features, _item("a", 2), bad_id, bad_row])
        assert eventually(lambda: plog.count() == 2), "the good rows of the batch were not written"
        capture.offer(_items("later", 3))
        assert eventually(lambda: plog.count() == 5), "capture stopped after an unserialisable row"
        assert capture.is_alive()
    finally:
        capture.stop()
    kept = [(r["request_id"], r["row"]) for r in plog.recent(limit=10)]
    assert kept[:2] == [("a", 0), ("a", 2)]
    assert seen.drops == [("unserialisable", 3)] and seen.errors == 0
    assert capture.drops == {"unserialisable": 3} and capture.dropped == 3


def test_the_flusher_survives_any_error_and_writes_later_rows():
    """It counts a pass failing with any exception, drops that batch, and keeps flushing."""
    log = _FlakyLog(RuntimeError("disk on fire"))
    seen = _Recorder()
    capture = Capture(
        log,  # type: ignore[arg-type]
        flush_seconds=0.01,
        on_drop=seen.drop,
        on_error=seen.error,
    )
    capture.start()
    try:
        capture.offer(_items("lost", 3))
        assert eventually(lambda: log.calls >= 1)
        capture.offer(_items("kept", 2))
        assert eventually(lambda: len(log.written) == 2), "the flusher died after an error"
        assert capture.is_alive()
    finally:
        capture.stop()
    assert [c.request_id for c in log.written] == ["kept", "kept"]
    assert seen.drops == [("write_failed", 3)] and seen.errors == 1
    assert capture.errors == 1


def test_a_database_error_drops_the_batch_as_write_failed():
    """It drops the whole batch as write_failed when the database refuses it."""
    log = _FlakyLog(sqlite3.OperationalError("database is locked"))
    seen = _Recorder()
    capture = Capture(log, on_drop=seen.drop, on_error=seen.error)  # type: ignore[arg-type]
    capture.offer(_items("a", 4))
    assert capture.flush() == 4
    capture.offer(_items("b", 1))
    capture.flush()
    assert seen.drops == [("write_failed", 4)] and seen.errors == 1
    assert len(log.written) == 1


def test_repeated_failures_are_logged_once_per_error_type(caplog):
    """It logs a failure that repeats on every pass once per error type, counting all rows."""
    log = _FlakyLog(RuntimeError("disk on fire"), failures=10**6)
    seen = _Recorder()
    capture = Capture(log, on_drop=seen.drop, on_error=seen.error)  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING, logger="champion.monitoring.capture")
    for _ in range(50):
        capture.offer(_items("a", 2))
        capture.flush()
    log.error = ValueError("bad value")
    for _ in range(50):
        capture.offer(_items("b", 2))
        capture.flush()
    records = _capture_warnings(caplog)
    assert len(records) == 2, [r.getMessage() for r in records]
    assert [getattr(r, "reason", None) for r in records] == ["write_failed", "write_failed"]
    assert "RuntimeError" in records[0].error and "ValueError" in records[1].error  # type: ignore[attr-defined]
    assert seen.errors == 100 and sum(n for _, n in seen.drops) == 200


def test_a_failing_callback_never_reaches_the_request(plog):
    """It keeps offering and writing when the drop counter itself raises."""

    def broken(reason: str, n: int) -> None:
        raise RuntimeError("metrics down")

    capture = Capture(plog, capacity=2, on_drop=broken)
    capture.offer(_items("a", 3))  # one row over: the callback raises, offer must not
    capture.flush()
    assert plog.count() == 2 and capture.dropped == 1


def test_a_reused_request_id_keeps_the_first_row_and_counts_the_rest(plog, caplog):
    """It keeps the first row of a (request_id, row) key and counts every later one."""
    first = plog.write([_item("a", 0, salary=1.0), _item("a", 1, salary=2.0)])
    assert first == Written(inserted=2, duplicates=0, unserialisable=0)
    again = plog.write(
        [
            _item("a", 0, salary=99.0),  # already in the log
            _item("b", 0, salary=3.0),
            _item("b", 0, salary=98.0),  # twice in one batch
        ]
    )
    assert again == Written(inserted=1, duplicates=2, unserialisable=0)
    rows = {(r["request_id"], r["row"]): r["features"]["salary"] for r in plog.recent(limit=10)}
    assert rows == {("a", 0): 1.0, ("a", 1): 2.0, ("b", 0): 3.0}

    seen = _Recorder()
    capture = Capture(plog, on_drop=seen.drop, on_error=seen.error)
    caplog.set_level(logging.WARNING, logger="champion.monitoring.capture")
    for _ in range(3):
        capture.offer([_item("a", 1), _item("c", 0)])
        capture.flush()
    assert seen.drops == [("duplicate_request_id", n) for n in (1, 2, 2)]
    assert seen.errors == 0
    warned = _capture_warnings(caplog)
    assert len(warned) == 1 and warned[0].reason == "duplicate_request_id"  # type: ignore[attr-defined]


# -- PredictionLog -----------------------------------------------------------------------------


def test_rotation_keeps_at_most_max_rows(tmp_path):
    """It keeps only the newest max_rows rows."""
    log = PredictionLog(tmp_path / "p.db", max_rows=10)
    for i in range(5):
        log.write(_items(f"r{i}", 7))
    assert log.count() == 10
    rows = log.recent(limit=100)
    assert (rows[0]["request_id"], rows[0]["row"]) == ("r3", 4)
    assert (rows[-1]["request_id"], rows[-1]["row"]) == ("r4", 6)
    log.close()


def test_rotation_never_deletes_labelled_unexported_rows(tmp_path):
    """It keeps labelled rows past the bound until they are exported, then rotates them out."""
    log = PredictionLog(tmp_path / "p.db", max_rows=10)
    log.write(_items("old", 3))
    assert log.label([("old", 0, 1), ("old", 2, 0)]) == ([], [])
    for i in range(4):
        log.write(_items(f"new{i}", 10))
    assert log.count() == 12  # 10 newest + 2 pinned by their labels
    assert log.claim_export("b", min_rows=1) == 2
    pending = log.export_rows("b")
    assert [(f["salary"], label) for _, f, label, _ in pending] == [(0.0, 1), (2.0, 0)]
    assert log.finish_export("b") == 2
    log.write([_item("last")])
    assert log.count() == 10
    assert not any(r["request_id"] == "old" for r in log.recent(limit=100))
    log.close()


def test_label_with_an_unknown_id_writes_nothing(plog):
    """It writes no label when one id in the call is unknown, and returns that id."""
    plog.write(_items("a", 2))
    unknown, done = plog.label([("a", 0, 1), ("nope", 0, 1), ("a", 5, 0)])
    assert unknown == ["nope#0", "a#5"] and done == []
    assert plog.labelled(limit=10) == []
    assert plog.claim_export("b", min_rows=1) == 0  # nothing labelled to export


def test_label_twice_is_refused_and_writes_nothing(plog):
    """It refuses a second label of a row (returned as already labelled) and writes nothing."""
    plog.write(_items("a", 2))
    assert plog.label([("a", 0, 1)]) == ([], [])
    unknown, done = plog.label([("a", 1, 1), ("a", 0, 0)])
    assert unknown == [] and done == ["a#0"]
    labelled = plog.labelled(limit=10)
    assert [(r["features"]["salary"], r["label"]) for r in labelled] == [(0.0, 1)]


def test_labelled_rows_are_exported_once_oldest_first(plog):
    """It names labelled rows into one batch, oldest first, and forgets them once exported."""
    plog.write(_items("a", 4))
    assert plog.claim_export("none", min_rows=1) == 0
    plog.label([("a", 2, 0), ("a", 0, 1), ("a", 3, 1)])
    assert plog.claim_export("too-few", min_rows=4) == 0  # below the minimum: nothing named
    assert plog.claim_export("b1", min_rows=3) == 3
    pending = plog.export_rows("b1")
    assert [(f["salary"], label) for _, f, label, _ in pending] == [(0.0, 1), (2.0, 0), (3.0, 1)]
    assert all(isinstance(at, float) for *_, at in pending)
    assert plog.claimed() == ["b1"]
    assert plog.finish_export("b1") == 3
    assert plog.claimed() == [] and plog.claim_export("b2", min_rows=1) == 0
    assert len(plog.labelled(limit=10)) == 3  # exported rows still count for live quality


def test_two_logs_on_one_file_both_write_while_a_reader_scans(tmp_path):
    """It lets two instances (two workers) write while a third connection holds a read."""
    path = tmp_path / "p.db"
    first, second = PredictionLog(path), PredictionLog(path)
    reader = sqlite3.connect(str(path), timeout=30)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM predictions").fetchone() == (0,)
    done: list[str] = []

    def write(log: PredictionLog, prefix: str) -> None:
        for i in range(20):
            log.write(_items(f"{prefix}{i}", 5))
        done.append(prefix)

    threads = [
        threading.Thread(target=write, args=(first, "w1-")),
        threading.Thread(target=write, args=(second, "w2-")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    writers_finished = sorted(done)
    reader.rollback()  # lets writers blocked by a non-WAL journal finish before asserting
    for t in threads:
        t.join(timeout=60)
    reader.close()
    assert writers_finished == ["w1-", "w2-"], "a reader blocked the writers"
    assert first.count() == second.count() == 200
    assert first.path.with_name("p.db-wal").exists()
    first.close()
    second.close()


def test_label_is_exactly_once_across_two_connections(tmp_path):
    """It labels each row once when two workers (two connections) label the same rows."""
    path = tmp_path / "p.db"
    rows = 300
    first, second = PredictionLog(path), PredictionLog(path)
    first.write(_items("a", rows))
    won: dict[int, list[int]] = {0: [], 1: []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def hammer(log: PredictionLog, label: int) -> None:
        try:
            start.wait(10)
            for i in range(rows):
                if log.label([("a", i, label)]) == ([], []):
                    won[label].append(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=hammer, args=(first, 0)),
        threading.Thread(target=hammer, args=(second, 1)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(won[0]) + len(won[1]) == rows, "a row was labelled twice (or not at all)"
    assert sorted(won[0] + won[1]) == list(range(rows))
    stored = {r["row"]: r for r in first.recent(limit=rows)}
    labels = dict(
        first._conn.execute("SELECT row, label FROM predictions WHERE request_id = 'a'").fetchall()
    )
    for label, mine in won.items():
        assert all(labels[i] == str(label) for i in mine)  # the winner's label is the one kept
    assert len(stored) == rows
    first.close()
    second.close()


def test_label_is_all_or_nothing_inside_one_transaction(plog):
    """It rolls back the rows it already updated when a later key of the call is refused."""
    plog.write(_items("a", 3))
    assert plog.label([("a", 2, 1)]) == ([], [])
    unknown, done = plog.label([("a", 0, 1), ("a", 1, 0), ("a", 2, 0), ("zz", 0, 1)])
    assert unknown == ["zz#0"] and done == ["a#2"]
    assert [r["label"] for r in plog.labelled(limit=10)] == [1]
    unknown, done = plog.label([("a", 0, 1), ("a", 0, 0)])  # one row twice in a call
    assert unknown == [] and done == ["a#0"]
    assert len(plog.labelled(limit=10)) == 1


def test_label_with_an_out_of_range_row_is_unknown(plog):
    """It answers unknown, without raising, for a row beyond SQLite's 64-bit integers."""
    plog.write(_items("a", 1))
    huge = 2**70
    unknown, done = plog.label([("a", 0, 1), ("a", huge, 1), ("a", -huge, 0), ("\ud800", 0, 1)])
    assert unknown == [f"a#{huge}", f"a#{-huge}", "\ud800#0"] and done == []
    assert plog.labelled(limit=10) == []


def test_since_returns_the_newest_rows_after_an_id(plog):
    """It returns the newest rows of one version after an id, with the count of fresh rows."""
    plog.write(_items("a", 5))
    plog.write([_item("other", 0)._replace(model_version="2")])
    plog.write(_items("b", 5))
    everything = plog.since(0, limit=100, version="1")
    assert everything.fresh == 10 and len(everything.rows) == 10
    assert all(r["model_version"] == "1" for r in everything.rows)
    after = everything.rows[4]["id"]  # the last row of "a"
    fresh = plog.since(after, limit=3, version="1")
    assert fresh.fresh == 5
    assert [(r["request_id"], r["row"]) for r in fresh.rows] == [("b", 2), ("b", 3), ("b", 4)]
    assert fresh.max_id == everything.rows[-1]["id"]
    none = plog.since(fresh.max_id, limit=3, version="1")
    assert none == (([], fresh.max_id, 0))


def test_an_old_log_gains_the_export_name_column(tmp_path):
    """It adds export_name to a log file written before the column existed, keeping its rows."""
    path = tmp_path / "p.db"
    old = sqlite3.connect(str(path))
    old.executescript(
        "CREATE TABLE predictions (id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " request_id TEXT NOT NULL, row INTEGER NOT NULL, at REAL NOT NULL,"
        " model_version TEXT NOT NULL, features TEXT NOT NULL, prediction TEXT NOT NULL,"
        " score REAL, label TEXT, labelled_at REAL, exported INTEGER NOT NULL DEFAULT 0,"
        " UNIQUE (request_id, row));"
        " INSERT INTO predictions (request_id, row, at, model_version, features, prediction,"
        " score, label) VALUES ('old', 0, 1.0, '1', '{\"salary\": 5.0}', '1', 0.5, '1');"
    )
    old.commit()
    old.close()
    log = PredictionLog(path)
    again = PredictionLog(path)  # a second worker opening the migrated file
    columns = {r[1] for r in log._conn.execute("PRAGMA table_info(predictions)")}
    assert "export_name" in columns
    assert log.claim_export("feedback-x.csv", min_rows=1) == 1
    assert again.claimed() == ["feedback-x.csv"]
    assert [f for _, f, _, _ in log.export_rows("feedback-x.csv")] == [{"salary": 5.0}]
    log.close()
    again.close()


def test_rotation_keeps_rows_named_into_an_unfinished_export(tmp_path):
    """It keeps labelled rows named into a batch not yet marked exported past the bound."""
    log = PredictionLog(tmp_path / "p.db", max_rows=10)
    log.write(_items("old", 3))
    log.label([("old", 0, 1), ("old", 1, 0)])
    assert log.claim_export("feedback-1.csv", min_rows=2) == 2
    for i in range(3):
        log.write(_items(f"new{i}", 10))
    assert log.count() == 12
    assert [label for _, _, label, _ in log.export_rows("feedback-1.csv")] == [1, 0]
    assert log.finish_export("feedback-1.csv") == 2
    log.write([_item("last")])
    assert log.count() == 10
    log.close()


# -- Watch: feedback export --------------------------------------------------------------------


class _NoRegistry:
    """Watch needs a registry only for drift; export and triggers must not touch it."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the registry was used: {name}")


def _contract(tmp_path: Path) -> Contract:
    contract = load_contract(PROJECT_FILE)
    data = contract.data.model_copy(
        update={
            "landing_zone": tmp_path / "landing",
            "quarantine": tmp_path / "quarantine",
            "manifest": tmp_path / "manifest.json",
        }
    )
    return contract.model_copy(update={"data": data})


def _watch(tmp_path: Path, plog: PredictionLog, **settings: Any) -> Watch:
    return Watch(
        contract=_contract(tmp_path),
        config=watch_settings(Settings(home=tmp_path / "home", **settings)),
        registry=_NoRegistry(),  # type: ignore[arg-type]
        prediction_log=plog,
        ledger=Ledger(tmp_path / "home" / "ledger.jsonl"),
    )


def test_export_feedback_waits_for_min_rows_and_never_repeats(tmp_path, plog):
    """It writes a landing-zone CSV once min_rows labels are pending, each row only once."""
    watch = _watch(tmp_path, plog)
    min_rows = watch.contract.data.min_rows
    landing = watch.contract.data.landing_zone
    plog.write(_items("a", 3 * min_rows))
    plog.label([("a", i, i % 2) for i in range(min_rows - 1)])
    assert watch.export_feedback() is None
    assert not landing.exists() or not list(landing.iterdir())

    plog.label([("a", min_rows - 1, 1)])
    first = watch.export_feedback()
    assert first is not None and first.parent == landing and first.name.startswith("feedback-")
    frame = pd.read_csv(first)
    assert len(frame) == min_rows
    assert {"salary", "elevel", "approved", "event_time"} <= set(frame.columns)
    assert frame["approved"].tolist() == [i % 2 for i in range(min_rows)]
    assert pd.to_datetime(frame["event_time"], utc=True).notna().all()
    assert watch.export_feedback() is None  # nothing new pending

    plog.label([("a", i, 0) for i in range(min_rows, 2 * min_rows)])
    second = watch.export_feedback()
    assert second is not None and second != first
    assert sorted(p.name for p in landing.glob("feedback-*.csv")) == sorted(
        [first.name, second.name]
    )
    salaries = [*frame["salary"], *pd.read_csv(second)["salary"]]
    assert sorted(salaries) == [float(i) for i in range(2 * min_rows)]  # none exported twice
    assert watch.export_feedback() is None


# -- Watch: sustained drift --------------------------------------------------------------------


def _report(drift: bool) -> DriftReport:
    salary = FeatureDrift(
        feature="salary",
        kind="numeric",
        status="drift" if drift else "ok",
        psi=0.9 if drift else 0.01,
        statistic=120.0 if drift else 3.0,
        p_value=1e-12 if drift else 0.7,
        threshold=0.05,
        window_rows=200,
        unseen_rate=None,
        detail="test",
        dof=9,
    )
    return DriftReport(
        features=(salary,),
        prediction=None,
        window_rows=200,
        drift_share=1.0 if drift else 0.0,
        dataset_drift=drift,
        alpha=0.01,
        family_alpha=0.05,
        family_flagged=("salary",) if drift else (),
    )


class _Trigger:
    def __init__(self, accept: bool = True) -> None:
        self.calls: list[str] = []
        self.accept = accept

    def __call__(self, trigger: str) -> bool:
        self.calls.append(trigger)
        return self.accept


REF = ModelRef(version="4", run_id=None, tags={})


def _sustained_watch(
    tmp_path: Path, plog: PredictionLog, *, cooldown: float
) -> tuple[Watch, _Trigger, CollectorRegistry]:
    """A Watch needing 3 drifted windows, with a recording trigger and its own metrics."""
    watch = _watch(tmp_path, plog, drift_sustained_windows=3, drift_cooldown_seconds=cooldown)
    registry = CollectorRegistry()
    watch.metrics = ServiceMetrics(registry, features=tuple(watch.contract.features))
    watch.trigger_retrain = trigger = _Trigger()
    watch.clock = lambda: 1_000.0
    return watch, trigger, registry


def _triggers(watch: Watch) -> list[dict[str, Any]]:
    return [e for e in watch.ledger.entries() if e.get("event") == "drift_trigger"]


def test_drift_in_consecutive_windows_triggers_once(tmp_path, plog):
    """It triggers one retrain after N drifted windows in a row, records it, and starts over."""
    watch, trigger, registry = _sustained_watch(tmp_path, plog, cooldown=0)
    for _ in range(2):
        watch._sustained(_report(True), REF)
    assert trigger.calls == []
    watch._sustained(_report(True), REF)
    assert trigger.calls == ["drift"] and watch.streak == 0
    for _ in range(2):
        watch._sustained(_report(True), REF)
    assert trigger.calls == ["drift"]  # the streak starts again after a trigger
    entries = _triggers(watch)
    assert len(entries) == 1
    assert entries[0]["features"] == ["salary"] and entries[0]["champion_after"] == "4"
    assert "3 windows" in entries[0]["reason"]
    assert registry.get_sample_value("champion_drift_triggers_total") == 1


def test_a_clean_window_resets_the_streak(tmp_path, plog):
    """It never triggers when a clean window breaks every run of drifted windows."""
    watch, trigger, _ = _sustained_watch(tmp_path, plog, cooldown=0)
    for drift in [True, True, False, True, True, False, True, True]:
        watch._sustained(_report(drift), REF)
    assert trigger.calls == [] and _triggers(watch) == []
    assert watch.streak == 2
    watch._sustained(_report(True), REF)
    assert trigger.calls == ["drift"]


def test_cooldown_blocks_a_second_trigger(tmp_path, plog):
    """It triggers no second retrain within the cooldown, and may again once it has passed."""
    watch, trigger, _ = _sustained_watch(tmp_path, plog, cooldown=600)
    now = [1_000.0]
    watch.clock = lambda: now[0]
    for _ in range(3):
        watch._sustained(_report(True), REF)
    assert trigger.calls == ["drift"]
    for _ in range(10):
        now[0] += 50  # 500 s of drifted windows, inside the 600 s cooldown
        watch._sustained(_report(True), REF)
    assert trigger.calls == ["drift"] and len(_triggers(watch)) == 1
    now[0] += 200
    watch._sustained(_report(True), REF)
    assert trigger.calls == ["drift", "drift"] and len(_triggers(watch)) == 2


def test_a_refused_trigger_is_not_recorded(tmp_path, plog):
    """It writes no ledger entry and starts no cooldown when the retrain could not start."""
    watch, refused, _ = _sustained_watch(tmp_path, plog, cooldown=600)
    refused.accept = False
    for _ in range(4):
        watch._sustained(_report(True), REF)
    assert refused.calls == ["drift", "drift"]  # asked again on the next drifted window
    assert _triggers(watch) == []
    refused.accept = True
    watch._sustained(_report(True), REF)
    assert len(_triggers(watch)) == 1


def test_a_log_from_an_older_release_loses_the_indexes_every_insert_paid_for(tmp_path):
    """It drops the index on `at` (no query uses it) and the full index on `labelled_at`
    (every unlabelled row paid for it), keeping the labelled rows' query on an index."""
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL,"
        " row INTEGER NOT NULL, at REAL NOT NULL, model_version TEXT NOT NULL,"
        " features TEXT NOT NULL, prediction TEXT NOT NULL, score REAL, label TEXT,"
        " labelled_at REAL, exported INTEGER NOT NULL DEFAULT 0, UNIQUE (request_id, row));"
        "CREATE INDEX predictions_at ON predictions (at);"
        "CREATE INDEX predictions_labelled ON predictions (labelled_at);"
    )
    old.close()
    plog = PredictionLog(path)
    try:
        conn = sqlite3.connect(path)
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(predictions)")}
        assert not {"predictions_at", "predictions_labelled"} & indexes
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT label FROM predictions"
            " WHERE label IS NOT NULL ORDER BY labelled_at DESC LIMIT 5"
        ).fetchall()
        assert "predictions_labelled_rows" in str(plan)
        conn.close()
    finally:
        plog.close()


@pytest.mark.parametrize("chunk", [1, 7, 500])
def test_rows_go_in_by_chunks_with_every_duplicate_counted(tmp_path, chunk):
    """It stores a write as multi-row inserts of any size: what each inserts adds up, and a
    key already stored (or twice in one write) is counted once as a duplicate, never lost."""
    log_ = PredictionLog(tmp_path / "p.db", max_rows=10_000)
    log_._chunk = chunk
    try:
        assert log_.write(_items("a", 30)) == Written(inserted=30, duplicates=0, unserialisable=0)
        mixed = _items("a", 40)[25:] + _items("b", 20) + [_item("b", 3)]
        assert log_.write(mixed) == Written(inserted=30, duplicates=6, unserialisable=0)
        assert log_.count() == 60
        stored = {(r["request_id"], r["row"]) for r in log_.recent(limit=100)}
        assert stored == {("a", i) for i in range(40)} | {("b", i) for i in range(20)}
    finally:
        log_.close()
