"""Scheduled retraining (APScheduler 3): one leader per home, no overlap, every tick counted."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
    JobExecutionEvent,
)
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from champion.training.config import ScheduleSection
from champion.training.errors import LeaseBusyError
from champion.training.lease import SCHEDULER
from champion.training.ports import Lease, Leases
from champion.training.records import CycleReport, Verdict

log = logging.getLogger(__name__)

JOB_ID = "retrain"


@dataclass(frozen=True)
class CycleOutcome:
    """What one run of the retrain job came to, as the scheduler and the metrics see it."""

    verdict: Verdict
    seconds: float = 0.0
    reason: str = ""
    ran: bool = True  # False: another cycle held the lease, so nothing was tried
    timed_out: bool = False

    @property
    def succeeded(self) -> bool:
        """The retraining machinery worked: a verdict was reached (SKIPPED for no new data
        included), not FAILED, not timed out, not crowded out by another cycle."""
        return self.verdict != Verdict.FAILED and self.ran and not self.timed_out


def retrain_command(trigger: str, result_file: Path) -> list[str]:
    """The child's command line: `champion retrain`, reporting its outcome into a file."""
    return [
        sys.executable,
        "-m",
        "champion.service.cli",
        "retrain",
        "--no-progress",
        "--trigger",
        trigger,
        "--nice",
        "10",
        "--exit-with-parent",
        "--result-file",
        str(result_file),
    ]


def run_cycle_subprocess(
    *,
    trigger: str,
    timeout: float,
    command: Callable[[str, Path], list[str]] = retrain_command,
) -> CycleOutcome:
    """Run `champion retrain` in a child process and return its outcome.

    A child keeps tuning's CPU and memory out of the serving worker, at lower priority, and a
    crash in it cannot take the worker down. It runs in its own session, so on timeout the
    whole group (joblib workers included) is stopped; it exits by itself if this process dies.
    """
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="champion-cycle-") as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = command(trigger, result_file)
        # No preexec_fn: running Python between fork and exec is unsafe in a threaded process.
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env=os.environ.copy(),
        )
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            log.error(
                "retrain child timed out and was stopped",
                extra={"timeout_seconds": timeout, "pid": proc.pid},
            )
            return CycleOutcome(
                Verdict.FAILED,
                time.monotonic() - started,
                f"the cycle ran over {timeout:g}s and was stopped",
                timed_out=True,
            )
        seconds = time.monotonic() - started
        try:
            report = CycleReport.from_json(result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError):
            log.error(
                "retrain child gave no verdict",
                extra={"returncode": proc.returncode, "stderr": (stderr or "")[-2000:]},
            )
            return CycleOutcome(Verdict.FAILED, seconds, f"the child exited {proc.returncode}")
        return CycleOutcome(report.verdict, seconds, report.reason, ran=not report.busy)


def _stop_group(proc: subprocess.Popen[str], grace: float = 10.0) -> None:
    """SIGTERM the child's process group, SIGKILL it after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.communicate(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def trigger_for(sched: ScheduleSection) -> Any:
    if sched.cron is not None:
        return CronTrigger.from_crontab(sched.cron, timezone="UTC")
    assert sched.interval_minutes is not None
    return IntervalTrigger(seconds=sched.interval_minutes * 60, timezone="UTC")


class RetrainScheduler:
    """Runs the retrain job on the contract's schedule in exactly one process per home.

    Every process may start one; only the holder of the `scheduler` lease (a flock the kernel
    releases when its holder dies) schedules, and the others stand by to take over.
    """

    def __init__(
        self,
        *,
        schedule: ScheduleSection,
        leases: Leases,
        monitor_seconds: float = 60.0,
        retrain_timeout: float = 3600.0,
        job: Callable[[str], CycleOutcome] | None = None,
        count: Callable[[str], None] | None = None,
        on_cycle: Callable[[CycleOutcome], None] | None = None,
        monitor: Callable[[], Any] | None = None,
        on_error: Callable[[str], None] | None = None,
        standby_seconds: float = 5.0,
    ) -> None:
        self.schedule = schedule
        self.leases = leases
        self.monitor_seconds = monitor_seconds
        self.job = job or (
            lambda trigger: run_cycle_subprocess(trigger=trigger, timeout=retrain_timeout)
        )
        self.count = count or (lambda outcome: None)
        self.on_cycle = on_cycle or (lambda outcome: None)
        self.monitor = monitor
        self.on_error = on_error or (lambda loop: None)
        self.standby_seconds = standby_seconds
        self.scheduler: BackgroundScheduler | None = None
        self._lease: Lease | None = None  # the leader lease, once this process leads
        self._stop = threading.Event()
        self._manual = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        return self.scheduler is not None

    def start(self) -> None:
        try:
            self._try_lead()
        except Exception:  # the lease store is down at start: the standby keeps trying
            log.exception("scheduler could not try the lease at start")
            self.on_error("scheduler")
        # Standing by, it takes the lead when the lease frees; leading, it checks the lease is
        # still held (a database session can drop) and steps down at once when it is not.
        self._thread = threading.Thread(target=self._standby, name="scheduler-standby", daemon=True)
        self._thread.start()

    def _try_lead(self, wait: float = 0.0) -> bool:
        try:
            self._lease = self.leases.acquire(SCHEDULER, timeout=wait)
        except LeaseBusyError:
            return False
        sched = BackgroundScheduler(
            timezone="UTC",
            job_defaults={
                "coalesce": True,  # a late tick runs once, not once per missed slot
                "max_instances": 1,  # never overlapping
                "misfire_grace_time": self.schedule.misfire_grace_seconds,
            },
        )
        sched.add_job(self._tick, trigger_for(self.schedule), id=JOB_ID, name="retrain cycle")
        if self.monitor is not None:
            sched.add_job(
                self._monitor,
                IntervalTrigger(seconds=self.monitor_seconds),
                id="monitor",
                name="drift and quality",
                misfire_grace_time=None,
            )
        sched.add_listener(
            self._on_event,
            EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES,
        )
        sched.start()
        self.scheduler = sched
        job = sched.get_job(JOB_ID)
        log.info(
            "scheduler leading",
            extra={"pid": os.getpid(), "next_run": str(job.next_run_time if job else None)},
        )
        return True

    def _standby(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if self.scheduler is None:
                    # Waiting inside the acquire: the lease is taken the moment it frees.
                    self._try_lead(wait=self.standby_seconds)
                elif self._lease is not None and not self._lease.alive():
                    self._step_down()
            except Exception:  # a failed attempt (a full disk, a bad lock file) is retried
                log.exception("scheduler standby could not try the lease")
                self.on_error("scheduler")
            self._stop.wait(max(0.0, self.standby_seconds - (time.monotonic() - started)))

    def _step_down(self) -> None:
        """The leader lease was lost without a release: stop scheduling before another
        replica's leader starts, and stand by again."""
        log.error("scheduler lease lost: stepping down", extra={"pid": os.getpid()})
        self.on_error("scheduler")
        sched, self.scheduler = self.scheduler, None
        if sched is not None:
            sched.shutdown(wait=False)
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    def _run(self, trigger: str) -> CycleOutcome:
        started = time.monotonic()
        try:
            outcome = self.job(trigger)
        except Exception as exc:
            log.exception("retrain job raised")
            outcome = CycleOutcome(
                Verdict.FAILED, time.monotonic() - started, f"job raised: {exc!r}"
            )
        self.on_cycle(outcome)
        return outcome

    def _tick(self) -> CycleOutcome:
        with self._manual:
            return self._run("schedule")

    def _monitor(self) -> None:
        assert self.monitor is not None
        try:
            self.monitor()
        except Exception:  # a failed pass must not stop the next one
            log.exception("monitoring pass failed")
            self.on_error("monitor")

    def _on_event(self, event: JobEvent) -> None:
        if getattr(event, "job_id", JOB_ID) != JOB_ID:
            return
        if event.code == EVENT_JOB_EXECUTED:
            assert isinstance(event, JobExecutionEvent)
            result = event.retval
            if isinstance(result, CycleOutcome) and result.timed_out:
                outcome = "timeout"
            elif isinstance(result, CycleOutcome):
                outcome = Verdict.parse(result.verdict).value
            else:
                outcome = "error"
            log.info("scheduled retrain finished", extra={"outcome": outcome})
        elif event.code == EVENT_JOB_ERROR:
            outcome = "error"
            self.on_error("scheduler")
            log.error(
                "scheduled retrain raised", extra={"error": repr(getattr(event, "exception", None))}
            )
        elif event.code == EVENT_JOB_MISSED:
            outcome = "missed"
            log.warning(
                "scheduled retrain tick missed (beyond the misfire grace time)",
                extra={"scheduled": str(getattr(event, "scheduled_run_time", ""))},
            )
        else:
            outcome = "overlap"
            log.warning("scheduled retrain tick skipped: the previous run is still going")
        self.count(outcome)

    def run_now(self, trigger: str = "admin") -> bool:
        """Run the job once in the background (admin, drift); False if one is running here."""
        if not self._manual.acquire(blocking=False):
            return False

        def work() -> None:
            try:
                self._run(trigger)
            except Exception:
                log.exception("manual retrain failed")
                self.count("error")
                self.on_error("scheduler")
            finally:
                self._manual.release()

        threading.Thread(target=work, name="retrain-now", daemon=True).start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None
