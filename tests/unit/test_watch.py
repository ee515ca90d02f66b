"""Unit tests for the monitoring job: fresh drift windows, persisted streak, export, history."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

import champion.monitoring.watch as watch_module
from champion.monitoring.capture import Captured, PredictionLog
from champion.monitoring.metrics import ServiceMetrics
from champion.monitoring.profile import build_profile
from champion.monitoring.watch import Watch, latest
from champion.service.root import watch_settings
from champion.training.artifacts import ModelRef
from champion.training.config import Settings
from champion.training.demo.simulate import FEATURES_CATEGORICAL, FEATURES_NUMERIC, agrawal_frame
from champion.training.files import atomic_write_text
from champion.training.ledger import Ledger
from tests.unit.conftest import make_contract

FEATURES = (*FEATURES_NUMERIC, *FEATURES_CATEGORICAL)
WINDOW = 100


@lru_cache(maxsize=1)
def _profile() -> dict[str, Any]:
    frame = agrawal_frame(3_000, function=1, seed=1)
    return build_profile(frame, numeric=FEATURES_NUMERIC, categorical=FEATURES_CATEGORICAL)


class _Registry:
    """The champion alias and its reference profile, without MLflow."""

    def __init__(self, version: str = "1") -> None:
        self.version = version
        self.fail: set[str] = set()

    def alias(self, name: str) -> ModelRef:
        if "alias" in self.fail:
            raise RuntimeError("connection reset")
        return ModelRef(version=self.version, run_id=f"run-{self.version}", tags={})

    def run_json(self, run_id: str, path: str) -> dict[str, Any]:
        if "profile" in self.fail:
            raise RuntimeError("artifact store down")
        return _profile()

    def run_summary(self, run_id: str) -> None:
        if "run_summary" in self.fail:
            raise RuntimeError("tracking server down")
        return None


class _Trigger:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, trigger: str) -> bool:
        self.calls.append(trigger)
        return True


@pytest.fixture
def plog(tmp_path: Path) -> Iterator[PredictionLog]:
    log = PredictionLog(tmp_path / "predictions.db", max_rows=100_000)
    yield log
    log.close()


def _watch(
    tmp_path: Path,
    plog: PredictionLog,
    registry: _Registry | None = None,
    trigger: _Trigger | None = None,
    **settings: Any,
) -> Watch:
    """A Watch on tmp_path/home: 100-row windows, 3 drifted windows to trigger, 600 s cooldown."""
    defaults: dict[str, Any] = {
        "drift_window_rows": WINDOW,
        "drift_sustained_windows": 3,
        "drift_cooldown_seconds": 600,
    }
    return Watch(
        contract=make_contract(tmp_path),
        config=watch_settings(Settings(home=tmp_path / "home", **(defaults | settings))),
        registry=registry or _Registry(),  # type: ignore[arg-type]
        prediction_log=plog,
        ledger=Ledger(tmp_path / "home" / "ledger.jsonl"),
        trigger_retrain=trigger or _Trigger(),
        clock=lambda: 1_000.0,
    )


def _traffic(
    plog: PredictionLog, prefix: str, n: int, *, seed: int, drifted: bool, version: str = "1"
) -> None:
    """Capture n predicted rows; drifted rows have three times the salary."""
    frame = agrawal_frame(n, function=1, seed=seed)
    if drifted:
        frame["salary"] = frame["salary"] * 3
    records = frame[list(FEATURES)].to_dict("records")
    now = time.time()
    plog.write([Captured(prefix, i, now, version, r, 1, 0.7) for i, r in enumerate(records)])


def _history(watch: Watch) -> list[dict[str, Any]]:
    path = watch.folder / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- fresh windows -----------------------------------------------------------------------------


def test_a_burst_then_quiet_traffic_is_one_drifted_window_not_a_sustained_drift(tmp_path, plog):
    """It tests each row in one window at most: a burst followed by quiet traffic never triggers."""
    trigger = _Trigger()
    watch = _watch(tmp_path, plog, trigger=trigger)
    _traffic(plog, "burst", 150, seed=2, drifted=True)
    first = watch.tick()
    assert first["drift_window"]["tested"] is True
    assert first["drift"]["dataset_drift"] is True and watch.streak == 1

    _traffic(plog, "quiet-0", 30, seed=10, drifted=False)
    quiet = watch.tick()
    assert quiet["drift_window"] == {
        "tested": False,
        "fresh_rows": 30,
        "needed_rows": WINDOW,
        "after_id": watch.last_tested_id,
    }
    assert watch.streak == 1  # an untested tick does not move the streak
    shown = latest(watch.folder)
    assert shown is not None and shown["drift"] == first["drift"]  # GET /drift: last evaluation
    assert shown["drift_at"] == first["at"]

    for k in range(1, 6):
        _traffic(plog, f"quiet-{k}", 30, seed=10 + k, drifted=False)
        watch.tick()
    tested = [h for h in _history(watch) if h["tested"]]
    assert len(tested) == 2  # the burst, then the first 100 quiet rows
    assert [h["dataset_drift"] for h in tested].count(True) <= 1
    assert trigger.calls == []


def test_three_fresh_drifted_windows_trigger_a_retrain(tmp_path, plog):
    """It triggers after three separate drifted windows; a tick with no fresh rows holds it."""
    trigger = _Trigger()
    watch = _watch(tmp_path, plog, trigger=trigger)
    streaks = []
    for k in range(3):
        _traffic(plog, f"w{k}", WINDOW, seed=20 + k, drifted=True)
        watch.tick()
        streaks.append(watch.streak)
        watch.tick()  # nothing fresh
        streaks.append(watch.streak)
    assert streaks == [1, 1, 2, 2, 0, 0]
    assert trigger.calls == ["drift"]
    (entry,) = [e for e in watch.ledger.entries() if e.get("event") == "drift_trigger"]
    assert "salary" in entry["features"]


def test_the_streak_and_the_cooldown_survive_a_restart(tmp_path, plog):
    """It keeps the streak, the last row tested and the cooldown across a new Watch."""
    first = _watch(tmp_path, plog)
    for k in range(2):
        _traffic(plog, f"w{k}", WINDOW, seed=30 + k, drifted=True)
        first.tick()
    assert first.streak == 2

    trigger = _Trigger()
    second = _watch(tmp_path, plog, trigger=trigger)
    assert (second.streak, second.last_tested_id) == (2, first.last_tested_id)
    assert second.tick()["drift_window"]["tested"] is False  # old rows are not tested again
    _traffic(plog, "w2", WINDOW, seed=32, drifted=True)
    second.tick()
    assert trigger.calls == ["drift"]

    again = _Trigger()
    third = _watch(tmp_path, plog, trigger=again)
    assert third.last_trigger == 1_000.0
    for k in range(3, 7):
        _traffic(plog, f"w{k}", WINDOW, seed=30 + k, drifted=True)
        third.tick()
    assert third.streak == 4 and again.calls == []  # inside the 600 s cooldown
    state = json.loads((third.folder / "state.json").read_text())
    assert state == {
        "last_tested_id": third.last_tested_id,
        "streak": 4,
        "last_trigger": 1_000.0,
        "version": "1",
    }


def test_a_standby_worker_taking_over_continues_the_streak(tmp_path, plog):
    """It carries on from the state the previous leader wrote, not from its own start."""
    leader = _watch(tmp_path, plog)
    trigger = _Trigger()
    standby = _watch(tmp_path, plog, trigger=trigger)  # built at start, leads later
    for k in range(2):
        _traffic(plog, f"w{k}", WINDOW, seed=60 + k, drifted=True)
        leader.tick()
    assert standby.tick()["drift_window"]["tested"] is False  # the leader's rows were tested
    assert standby.streak == 2
    _traffic(plog, "w2", WINDOW, seed=62, drifted=True)
    standby.tick()
    assert trigger.calls == ["drift"]


def test_a_new_champion_starts_a_new_streak(tmp_path, plog):
    """It resets the streak and the last row tested when the champion version changes."""
    registry = _Registry("1")
    watch = _watch(tmp_path, plog, registry=registry)
    _traffic(plog, "v1", WINDOW, seed=40, drifted=True)
    watch.tick()
    assert watch.streak == 1 and watch.last_tested_id > 0
    registry.version = "2"
    summary = watch.tick()
    assert (watch.streak, watch.last_tested_id, watch.version) == (0, 0, "2")
    assert summary["drift_window"]["fresh_rows"] == 0  # v1 rows are not v2's window
    _traffic(plog, "v2", WINDOW, seed=41, drifted=True, version="2")
    assert watch.tick()["drift_window"]["tested"] is True and watch.streak == 1


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '{"streak": 2}',
        '{"last_tested_id": 1, "streak": "x", "last_trigger": null, "version": "1"}',
        "[1, 2]",
    ],
)
def test_an_unreadable_state_file_starts_fresh(tmp_path, plog, caplog, text):
    """It starts with a fresh streak, and says so, when drift/state.json cannot be used."""
    folder = tmp_path / "home" / "drift"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(text)
    caplog.set_level(logging.WARNING, logger="champion.monitoring.watch")
    watch = _watch(tmp_path, plog)
    assert (watch.streak, watch.last_tested_id, watch.version) == (0, 0, None)
    assert any("drift state unreadable" in r.getMessage() for r in caplog.records)


# -- history -----------------------------------------------------------------------------------


def test_history_keeps_at_most_drift_history_rows_lines(tmp_path, plog):
    """It trims drift/history.jsonl to the newest drift_history_rows lines past 10 % more."""
    folder = tmp_path / "home" / "drift"
    folder.mkdir(parents=True)
    (folder / "history.jsonl").write_text("".join(f'{{"old": {i}}}\n' for i in range(50)))
    watch = _watch(tmp_path, plog, drift_history_rows=10)
    ticks = []
    for _ in range(40):
        ticks.append(watch.tick()["at"])
        assert len(_history(watch)) <= 11
    lines = _history(watch)
    assert len(lines) >= 10
    assert [line["at"] for line in lines] == ticks[-len(lines) :]  # the newest, in order


# -- failures inside a tick --------------------------------------------------------------------


class _BrokenLog:
    """A prediction log whose export and quality reads fail; drift reads work."""

    def __init__(self, real: PredictionLog) -> None:
        self.real = real

    def claimed(self) -> list[str]:
        raise sqlite3.OperationalError("disk I/O error")

    def labelled(self, *, limit: int) -> list[dict[str, Any]]:
        raise RuntimeError("unexpected")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_a_failing_part_is_counted_and_the_tick_goes_on(tmp_path, plog):
    """It counts each failing part of a tick through on_error and still runs the others."""
    registry = _Registry()
    registry.fail = {"run_summary"}
    watch = _watch(tmp_path, _BrokenLog(plog), registry=registry)  # type: ignore[arg-type]
    watch.metrics = ServiceMetrics(CollectorRegistry(), features=FEATURES)
    errors: list[int] = []
    watch.on_error = lambda: errors.append(1)
    _traffic(plog, "a", WINDOW, seed=50, drifted=True)
    summary = watch.tick()
    assert set(summary["errors"]) == {"export", "quality", "cv_score"}
    assert len(errors) == 3
    assert summary["drift"]["dataset_drift"] is True  # drift ran despite the other failures
    assert latest(watch.folder) == summary

    registry.fail = {"profile"}
    broken_drift = _watch(tmp_path / "other", plog, registry=registry)
    broken_drift.on_error = lambda: errors.append(1)
    summary = broken_drift.tick()
    assert set(summary["errors"]) == {"drift"} and len(errors) == 4
    assert latest(broken_drift.folder) is not None  # the summary is still written

    registry.fail = {"alias"}
    summary = broken_drift.tick()
    assert "registry unreachable" in summary["error"] and len(errors) == 5


# -- feedback export ---------------------------------------------------------------------------


def _labelled(plog: PredictionLog, prefix: str, n: int, *, start: int = 0) -> None:
    """Capture n rows (salary start, start + 1, ...) and label them all."""
    now = time.time()
    plog.write(
        [
            Captured(prefix, i, now + i, "1", {"salary": float(start + i), "elevel": "e1"}, 1, 0.5)
            for i in range(n)
        ]
    )
    assert plog.label([(prefix, i, i % 2) for i in range(n)]) == ([], [])


def _batches(watch: Watch) -> list[Path]:
    return sorted(watch.contract.data.landing_zone.glob("feedback-*.csv"))


class _Writes:
    """Records every file the export writes, then writes it."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, str]] = []

    def __call__(self, path: Path, text: str) -> None:
        self.calls.append((path, text))
        atomic_write_text(path, text)


def test_a_crash_before_the_file_is_written_resumes_the_same_batch(tmp_path, plog, monkeypatch):
    """It writes a batch named before a crash under that name, with its rows only, once."""
    watch = _watch(tmp_path, plog)
    _labelled(plog, "a", 25)

    def power_cut(path: Path, text: str) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(watch_module, "atomic_write_text", power_cut)
    with pytest.raises(OSError):
        watch.export_feedback()
    assert _batches(watch) == []
    (name,) = plog.claimed()

    _labelled(plog, "b", 25, start=100)  # new labels arrive before the next tick
    writes = _Writes()
    monkeypatch.setattr(watch_module, "atomic_write_text", writes)
    watch.export_feedback()
    assert writes.calls[0][0].name == name  # the named batch goes first
    assert plog.claimed() == [] and watch.export_feedback() is None
    first, second = _batches(watch)
    assert first.name == name
    assert pd.read_csv(first)["salary"].tolist() == [float(i) for i in range(25)]
    assert pd.read_csv(second)["salary"].tolist() == [float(100 + i) for i in range(25)]
    assert plog.claimed() == [] and plog.claim_export("more", min_rows=1) == 0


def test_a_crash_before_marking_rewrites_the_same_bytes_once(tmp_path, plog, monkeypatch):
    """It rewrites a written but unmarked batch to the same name and bytes, then marks it."""
    watch = _watch(tmp_path, plog)
    _labelled(plog, "a", 25)
    real_finish = plog.finish_export

    def power_cut(name: str) -> int:
        raise sqlite3.OperationalError("power cut")

    monkeypatch.setattr(plog, "finish_export", power_cut)
    with pytest.raises(sqlite3.OperationalError):
        watch.export_feedback()
    (path,) = _batches(watch)
    written = path.read_bytes()
    assert plog.claimed() == [path.name]

    monkeypatch.setattr(plog, "finish_export", real_finish)
    writes = _Writes()
    monkeypatch.setattr(watch_module, "atomic_write_text", writes)
    assert watch.export_feedback() == path
    assert writes.calls == [(path, written.decode())]  # rewritten, byte for byte
    assert path.read_bytes() == written
    assert plog.claimed() == [] and watch.export_feedback() is None
    assert _batches(watch) == [path]
    assert len(pd.read_csv(path)) == 25


def test_an_export_failure_in_a_tick_is_retried_on_the_next(tmp_path, plog, monkeypatch):
    """It counts a failed export in a tick and exports the same rows on the next tick."""
    watch = _watch(tmp_path, plog)
    errors: list[int] = []
    watch.on_error = lambda: errors.append(1)
    _labelled(plog, "a", 25)
    calls = {"n": 0}

    def flaky(path: Path, text: str) -> None:
        calls["n"] += 1
        if path.name.startswith("feedback-") and calls["n"] == 1:
            raise OSError("landing zone unmounted")
        atomic_write_text(path, text)

    monkeypatch.setattr(watch_module, "atomic_write_text", flaky)
    summary = watch.tick()
    assert "export" in summary["errors"] and errors == [1]
    summary = watch.tick()
    (path,) = _batches(watch)
    assert summary["feedback_batch"] == path.name and errors == [1]
    assert len(pd.read_csv(path)) == 25
