"""Unit tests of the scheduler's leadership and tick accounting, on fake leases and jobs.

Ticks are fired by moving the retrain job's next run to now, so each goes through
APScheduler's executor and event listener exactly as a scheduled one does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from champion.service.scheduler import JOB_ID, CycleOutcome, RetrainScheduler
from champion.training.config import ScheduleSection
from champion.training.errors import StoreUnavailable
from champion.training.lease import SCHEDULER
from champion.training.records import Verdict
from tests.fakes import FakeLeases
from tests.polling import eventually

SCHEDULE = ScheduleSection(cron="0 0 1 1 *")  # never due during a test
STANDBY = 0.02


@pytest.fixture
def started() -> Any:
    """Start schedulers through this and they are stopped after the test."""
    running: list[RetrainScheduler] = []

    def start(sched: RetrainScheduler) -> RetrainScheduler:
        running.append(sched)
        sched.start()
        return sched

    yield start
    for sched in running:
        sched.stop()


def _scheduler(leases: FakeLeases, **kw: Any) -> RetrainScheduler:
    kw.setdefault("job", lambda trigger: CycleOutcome(Verdict.SKIPPED))
    return RetrainScheduler(schedule=SCHEDULE, leases=leases, standby_seconds=STANDBY, **kw)


def _tick(sched: RetrainScheduler) -> None:
    """Make the retrain job due now."""
    assert sched.scheduler is not None
    job = sched.scheduler.get_job(JOB_ID)
    assert job is not None
    job.modify(next_run_time=datetime.now(UTC))


# -- leadership -------------------------------------------------------------------------------


def test_a_leader_whose_lease_is_lost_steps_down_and_another_leads(started):
    """It stops scheduling as soon as its lease is gone without a release (a dropped database
    session), counts it as a scheduler error, and the standby takes over: one leader."""
    errors: list[str] = []
    leases = FakeLeases("host-a")
    first = started(_scheduler(leases, on_error=errors.append))
    assert first.is_leader and first._lease is not None
    second = started(_scheduler(leases.peer("host-b")))
    first._lease.lose()  # type: ignore[attr-defined]
    assert eventually(lambda: second.is_leader, within=5)
    assert eventually(lambda: not first.is_leader, within=5)
    assert errors.count("scheduler") == 1
    assert leases.holder(SCHEDULER) == "host-b"
    second.stop()  # the first leads again once the lease is free
    assert eventually(lambda: first.is_leader, within=5)


def test_the_first_scheduler_leads_and_a_second_stands_by(started):
    """It lets one process hold the scheduler lease and schedule; the other only waits."""
    leases = FakeLeases("host-a")
    first = started(_scheduler(leases))
    second = started(_scheduler(leases.peer("host-b")))

    assert first.is_leader and leases.holder(SCHEDULER) == "host-a"
    assert first.scheduler is not None and first.scheduler.get_job(JOB_ID) is not None
    time.sleep(5 * STANDBY)  # the standby has tried a few times
    assert not second.is_leader and leases.holder(SCHEDULER) == "host-a"


def test_a_standby_takes_over_when_the_leader_stops(started):
    """It hands the lease to the standby once the leader stops, which then schedules."""
    leases = FakeLeases("host-a")
    first = started(_scheduler(leases))
    second = started(_scheduler(leases.peer("host-b")))
    assert not second.is_leader

    first.stop()
    assert not first.is_leader
    assert eventually(lambda: second.is_leader), "the standby never took over"
    assert leases.holder(SCHEDULER) == "host-b"
    assert second.scheduler is not None and second.scheduler.get_job(JOB_ID) is not None
    second.stop()
    assert leases.holder(SCHEDULER) is None


class FlakyLeases(FakeLeases):
    """Leases whose first few acquire attempts fail as a full disk would."""

    def __init__(self, *args: Any, failures: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.failures = failures

    def acquire(self, name: str, *, timeout: float = 0.0) -> Any:
        if self.failures > 0 and threading.current_thread().name == "scheduler-standby":
            self.failures -= 1
            raise OSError("No space left on device")
        return super().acquire(name, timeout=timeout)


def test_a_standby_whose_attempt_fails_reports_it_and_keeps_trying(started):
    """It counts a failed lease attempt as a scheduler error and still takes over later."""
    leases = FakeLeases("host-a")
    errors: list[str] = []
    flaky = FlakyLeases("host-b", table=leases.table, failures=2)
    leader = started(_scheduler(leases))
    standby = started(_scheduler(flaky, on_error=errors.append))
    leader.stop()

    assert eventually(lambda: standby.is_leader)
    assert errors == ["scheduler", "scheduler"]
    assert leases.holder(SCHEDULER) == "host-b"


# -- tick accounting --------------------------------------------------------------------------


def _counted(started: Any, job: Callable[[str], Any], **kw: Any) -> tuple[list[str], list[Any]]:
    """Fire one tick of `job` on a leading scheduler; (what `count` got, what `on_cycle` got)."""
    counts: list[str] = []
    cycles: list[Any] = []
    sched = started(
        _scheduler(FakeLeases(), job=job, count=counts.append, on_cycle=cycles.append, **kw)
    )
    assert sched.is_leader
    _tick(sched)
    assert eventually(lambda: bool(counts)), "the tick was never counted"
    return counts, cycles


@pytest.mark.parametrize("verdict", list(Verdict))
def test_each_verdict_of_a_scheduled_cycle_is_counted_by_name(started, verdict):
    """It counts a scheduled tick under the verdict its job returned, with the trigger set."""
    triggers: list[str] = []

    def job(trigger: str) -> CycleOutcome:
        triggers.append(trigger)
        return CycleOutcome(verdict, 0.1, "fake")

    counts, cycles = _counted(started, job)
    assert counts == [verdict.value] and triggers == ["schedule"]
    assert [c.verdict for c in cycles] == [verdict]


def test_a_timed_out_cycle_is_counted_as_a_timeout(started):
    """It counts a cycle stopped for running over its time as `timeout`, not FAILED."""
    outcome = CycleOutcome(Verdict.FAILED, 3600.0, "ran over", timed_out=True)
    counts, cycles = _counted(started, lambda trigger: outcome)
    assert counts == ["timeout"] and cycles == [outcome]


def test_a_job_that_raises_is_counted_as_failed(started):
    """It counts a tick whose job raised as FAILED (the job's error becomes an outcome)."""

    def boom(trigger: str) -> CycleOutcome:
        raise RuntimeError("boom")

    counts, cycles = _counted(started, boom)
    assert counts == ["FAILED"] and "boom" in cycles[0].reason


def test_a_job_returning_no_outcome_is_counted_as_an_error(started):
    """It counts a tick whose job returned something other than an outcome as `error`."""
    counts, _ = _counted(started, lambda trigger: "PROMOTE")
    assert counts == ["error"]


def test_a_tick_whose_outcome_handler_raises_is_counted_as_an_error(started):
    """It counts `error` and reports the scheduler loop when recording the outcome raised."""
    errors: list[str] = []
    counts: list[str] = []

    def broken(outcome: CycleOutcome) -> None:
        raise ValueError("metrics backend gone")

    sched = started(
        _scheduler(FakeLeases(), count=counts.append, on_cycle=broken, on_error=errors.append)
    )
    _tick(sched)
    assert eventually(lambda: bool(counts))
    assert counts == ["error"] and errors == ["scheduler"]


def test_a_tick_while_the_last_one_still_runs_is_counted_as_an_overlap(started):
    """It counts a tick that came while the previous scheduled cycle still ran as `overlap`."""
    release = threading.Event()
    counts: list[str] = []
    runs: list[str] = []

    def slow(trigger: str) -> CycleOutcome:
        runs.append(trigger)
        release.wait(2.0)
        return CycleOutcome(Verdict.PROMOTE)

    sched = started(_scheduler(FakeLeases(), job=slow, count=counts.append))
    _tick(sched)
    assert eventually(lambda: runs == ["schedule"])
    _tick(sched)
    assert eventually(lambda: counts == ["overlap"]), counts
    release.set()
    assert eventually(lambda: counts == ["overlap", "PROMOTE"])
    assert runs == ["schedule"]


# -- manual runs ------------------------------------------------------------------------------


def test_a_manual_run_refuses_to_overlap_a_running_one(started):
    """It starts one manual run at a time and accepts the next once the first finished."""
    release = threading.Event()
    done: list[CycleOutcome] = []
    triggers: list[str] = []

    def job(trigger: str) -> CycleOutcome:
        triggers.append(trigger)
        release.wait(2.0)
        return CycleOutcome(Verdict.HOLD)

    sched = started(_scheduler(FakeLeases(), job=job, on_cycle=done.append))
    assert sched.run_now("drift") is True
    assert eventually(lambda: triggers == ["drift"])
    assert sched.run_now("admin") is False, "a second run overlapped the first"
    release.set()
    assert eventually(lambda: len(done) == 1)
    assert eventually(lambda: sched.run_now("admin"))
    assert eventually(lambda: triggers == ["drift", "admin"])


def test_a_scheduled_tick_waits_for_a_manual_run_to_finish(started):
    """It never runs a scheduled cycle beside a manual one in the same process."""
    release = threading.Event()
    active = 0
    overlap: list[int] = []
    finished: list[str] = []
    lock = threading.Lock()

    def job(trigger: str) -> CycleOutcome:
        nonlocal active
        with lock:
            active += 1
            overlap.append(active)
        if trigger == "admin":
            release.wait(2.0)
        with lock:
            active -= 1
        finished.append(trigger)
        return CycleOutcome(Verdict.SKIPPED)

    sched = started(_scheduler(FakeLeases(), job=job))
    assert sched.run_now("admin")
    assert eventually(lambda: overlap == [1])
    _tick(sched)
    time.sleep(0.1)
    assert finished == [], "the scheduled tick ran beside the manual run"
    release.set()
    assert eventually(lambda: finished == ["admin", "schedule"])
    assert max(overlap) == 1


class _DownThenUp(FakeLeases):
    """Leases whose store refuses the first `down` acquires (a database not yet reachable)."""

    def __init__(self, down: int) -> None:
        super().__init__("host-a")
        self.down = down

    def acquire(self, name: str, *, timeout: float = 0.0):  # type: ignore[override]
        if self.down > 0:
            self.down -= 1
            raise StoreUnavailable("lease store: connection refused")
        return super().acquire(name, timeout=timeout)


def test_a_lease_store_down_at_start_neither_stops_the_start_nor_the_later_lead(started):
    """It starts (the worker serves) though the lease store refuses, counts the failures as
    scheduler errors, and leads once the store answers."""
    errors: list[str] = []
    leases = _DownThenUp(down=3)
    sched = started(_scheduler(leases, on_error=errors.append))
    assert eventually(lambda: sched.is_leader, within=5)
    assert errors == ["scheduler"] * 3
