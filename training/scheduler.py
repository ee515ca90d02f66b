"""Scheduled retraining (APScheduler 3): one leader per home, no overlap, every tick counted."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
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
from filelock import FileLock, Timeout

from training.config import Contract, Settings

log = logging.getLogger(__name__)

JOB_ID = "retrain"
LEADER_LEASE = "scheduler"
VERDICTS = ("PROMOTE", "HOLD", "REJECT", "SKIPPED", "FAILED", "STALE")


def run_cycle_subprocess(*, trigger: str, timeout: float | None = None) -> str:
    """Run `champion retrain` in a child process and return its verdict.

    A child keeps tuning's CPU and memory out of the serving worker, at lower priority, and a
    crash in it cannot take the worker down.
    """
    cmd = [sys.executable, "-m", "training.cli", "retrain", "--no-progress", "--trigger", trigger]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=lambda: os.nice(10),
        env=os.environ.copy(),
    )
    for line in proc.stdout.splitlines():
        head = line.split(":", 1)[0]
        if head in VERDICTS:
            return head
    log.error(
        "retrain child gave no verdict",
        extra={"returncode": proc.returncode, "stderr": proc.stderr[-2000:]},
    )
    return "FAILED"


def trigger_for(contract: Contract) -> Any:
    sched = contract.schedule
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
        contract: Contract,
        settings: Settings,
        job: Callable[[str], str] | None = None,
        count: Callable[[str], None] | None = None,
        on_cycle: Callable[[str, float], None] | None = None,
        monitor: Callable[[], Any] | None = None,
        standby_seconds: float = 5.0,
    ) -> None:
        self.contract = contract
        self.settings = settings
        self.job = job or (lambda trigger: run_cycle_subprocess(trigger=trigger))
        self.count = count or (lambda outcome: None)
        self.on_cycle = on_cycle or (lambda verdict, seconds: None)
        self.monitor = monitor
        self.standby_seconds = standby_seconds
        self.scheduler: BackgroundScheduler | None = None
        self._lease = FileLock(str(Path(settings.lock_dir) / f"{LEADER_LEASE}.lock"), timeout=0)
        self._stop = threading.Event()
        self._manual = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def is_leader(self) -> bool:
        return self.scheduler is not None

    def start(self) -> None:
        Path(self.settings.lock_dir).mkdir(parents=True, exist_ok=True)
        if not self._try_lead():
            self._thread = threading.Thread(
                target=self._standby, name="scheduler-standby", daemon=True
            )
            self._thread.start()

    def _try_lead(self) -> bool:
        try:
            self._lease.acquire()
        except Timeout:
            return False
        sched = BackgroundScheduler(
            timezone="UTC",
            job_defaults={
                "coalesce": True,  # a late tick runs once, not once per missed slot
                "max_instances": 1,  # never overlapping
                "misfire_grace_time": self.contract.schedule.misfire_grace_seconds,
            },
        )
        sched.add_job(self._tick, trigger_for(self.contract), id=JOB_ID, name="retrain cycle")
        if self.monitor is not None:
            sched.add_job(
                self._monitor,
                IntervalTrigger(seconds=self.settings.monitor_seconds),
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
        while not self._stop.wait(self.standby_seconds):
            if self._try_lead():
                return

    def _run(self, trigger: str) -> str:
        started = time.monotonic()
        verdict = self.job(trigger)
        self.on_cycle(verdict, time.monotonic() - started)
        return verdict

    def _tick(self) -> str:
        with self._manual:
            return self._run("schedule")

    def _monitor(self) -> None:
        assert self.monitor is not None
        try:
            self.monitor()
        except Exception:  # a failed pass must not stop the next one
            log.exception("monitoring pass failed")

    def _on_event(self, event: JobEvent) -> None:
        if getattr(event, "job_id", JOB_ID) != JOB_ID:
            return
        if event.code == EVENT_JOB_EXECUTED:
            assert isinstance(event, JobExecutionEvent)
            outcome = str(event.retval) if event.retval in VERDICTS else "error"
            log.info("scheduled retrain finished", extra={"outcome": outcome})
        elif event.code == EVENT_JOB_ERROR:
            outcome = "error"
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
            finally:
                self._manual.release()

        threading.Thread(target=work, name="retrain-now", daemon=True).start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
            self._lease.release()
