"""Unit tests of the retrain scheduler's guards: timeouts, honest outcomes, leases, orphans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from filelock import FileLock, Timeout

from champion.service.scheduler import CycleOutcome, RetrainScheduler, run_cycle_subprocess
from champion.training.config import Settings
from champion.training.lease import FileLeases
from champion.training.ledger import Ledger
from tests.unit.conftest import make_contract


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _gone(pid: int, *, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def test_a_hung_child_is_stopped_with_its_whole_group(tmp_path):
    """It stops a child running past the timeout, grandchildren included, as timed out."""
    pid_file = tmp_path / "grandchild.pid"
    hang = f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(120)
    """
    started = time.monotonic()
    outcome = run_cycle_subprocess(
        trigger="test", timeout=2, command=lambda trigger, result: _python(hang)
    )
    assert outcome.timed_out and outcome.verdict == "FAILED" and not outcome.succeeded
    assert "stopped" in outcome.reason
    assert time.monotonic() - started < 30
    assert _gone(int(pid_file.read_text()), within=5)


def test_the_outcome_comes_from_the_result_file_not_stdout(tmp_path):
    """It reads the verdict the child wrote, and a busy lease as a run that did not happen."""

    def command(trigger: str, result: Path) -> list[str]:
        body = json.dumps({"verdict": "SKIPPED", "reason": "another cycle", "busy": True})
        return _python(f"print('PROMOTE: not this'); open({str(result)!r}, 'w').write({body!r})")

    outcome = run_cycle_subprocess(trigger="test", timeout=30, command=command)
    assert outcome == CycleOutcome("SKIPPED", outcome.seconds, "another cycle", ran=False)
    assert not outcome.succeeded


def test_a_child_without_a_result_is_failed():
    """It calls a child that died without writing its outcome FAILED."""
    outcome = run_cycle_subprocess(
        trigger="test", timeout=30, command=lambda t, r: _python("import sys; sys.exit(3)")
    )
    assert outcome.verdict == "FAILED" and "exited 3" in outcome.reason


@pytest.mark.parametrize(
    ("outcome", "succeeded"),
    [
        (CycleOutcome("PROMOTE"), True),
        (CycleOutcome("SKIPPED"), True),  # no new data: the machinery works
        (CycleOutcome("STALE"), True),
        (CycleOutcome("SKIPPED", ran=False), False),  # crowded out by another cycle
        (CycleOutcome("FAILED"), False),
        (CycleOutcome("FAILED", timed_out=True), False),
    ],
)
def test_only_a_cycle_that_ran_to_a_verdict_counts_as_a_success(outcome, succeeded):
    """It keeps the staleness alert honest: busy, failed and timed-out cycles are no success."""
    assert outcome.succeeded is succeeded


def _scheduler(tmp_path: Path, **kw: object) -> RetrainScheduler:
    contract = make_contract(tmp_path)
    settings = Settings(home=tmp_path / "var")
    return RetrainScheduler(
        schedule=contract.schedule,
        leases=FileLeases(settings.lock_dir),
        monitor_seconds=settings.monitor_seconds,
        standby_seconds=0.05,
        **kw,  # type: ignore[arg-type]
    )


def test_stop_releases_a_lease_the_standby_thread_took(tmp_path):
    """It gives up the leader lease on stop() even when a standby thread acquired it."""
    sched = _scheduler(tmp_path, job=lambda trigger: CycleOutcome("SKIPPED"))
    lock_file = str(tmp_path / "var" / "locks" / "scheduler.lock")
    (tmp_path / "var" / "locks").mkdir(parents=True)
    other = FileLock(lock_file, timeout=0)
    other.acquire()
    sched.start()
    assert not sched.is_leader
    other.release()
    deadline = time.monotonic() + 5
    while not sched.is_leader and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sched.is_leader  # taken by the standby thread
    sched.stop()  # from this thread
    try:
        FileLock(lock_file, timeout=0).acquire()
    except Timeout:
        pytest.fail("the leader lease was not released by stop()")


def test_a_job_that_raises_is_counted_and_the_scheduler_goes_on(tmp_path):
    """It turns a raising job into a FAILED outcome; a failing monitor pass is counted."""
    seen: list[CycleOutcome] = []
    errors: list[str] = []

    def boom(trigger: str) -> CycleOutcome:
        raise RuntimeError("boom")

    def bad_monitor() -> None:
        raise ValueError("bad pass")

    sched = _scheduler(
        tmp_path, job=boom, on_cycle=seen.append, monitor=bad_monitor, on_error=errors.append
    )
    assert sched._run("test").verdict == "FAILED"
    sched._monitor()
    sched._monitor()
    assert [o.verdict for o in seen] == ["FAILED"] and errors == ["monitor", "monitor"]


def test_a_process_exits_when_its_parent_dies(tmp_path):
    """It stops a process whose parent was killed (SIGKILL leaves children re-parented)."""
    pid_file = tmp_path / "child.pid"
    child = """
        import time
        from champion.training.process import exit_with_parent
        exit_with_parent(what="test", interval=0.1)
        time.sleep(120)
    """
    parent = f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {textwrap.dedent(child)!r}])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(120)
    """
    proc = subprocess.Popen(_python(parent), cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.monotonic() + 20
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.1)
        time.sleep(1.0)  # the child's watch is running
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert _gone(int(pid_file.read_text()), within=10)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_ledger_tail_reads_newest_first_past_torn_lines(tmp_path):
    """It finds the newest entry of a kind by reading backwards, skipping a torn line."""
    ledger = Ledger(tmp_path / "ledger.jsonl")
    for i in range(2_000):
        ledger.append({"event": "cycle" if i % 10 == 0 else "other", "i": i, "pad": "x" * 40})
    with ledger.path.open("ab") as fh:
        fh.write(b'{"event": "cycle", "i": "torn')
    entries = list(ledger.tail())
    assert [e["i"] for e in entries] == list(range(1_999, -1, -1))
    last = ledger.last("cycle")
    assert last is not None and last["i"] == 1_990
    assert ledger.last("never") is None


def test_a_full_ledger_is_archived_whole_and_its_state_carried(tmp_path):
    """It archives the ledger past its size (nothing lost) and keeps what readers need."""
    ledger = Ledger(tmp_path / "ledger.jsonl", max_bytes=4_000)
    for i in range(200):
        event = "cycle" if i % 50 == 0 else "other"
        ledger.append({"event": event, "i": i, "champion_after": str(i // 10), "pad": "x" * 40})
    assert ledger.archives(), "the ledger was never archived"
    assert ledger.path.stat().st_size < 8_000
    assert [e["i"] for e in ledger.entries()] == list(range(200))  # archives included
    ledger._rotate()  # right after a rotation, the current file holds only its segment entry
    assert len(ledger.path.read_text().splitlines()) == 1
    assert ledger.last_champion() == "19"
    last = ledger.last("cycle")
    assert last is not None and last["i"] == 150
