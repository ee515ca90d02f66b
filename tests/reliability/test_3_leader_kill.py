"""Scenario 3: SIGKILL of the scheduler leader's worker in the middle of a cycle, under load.

Two workers with the scheduler on and a contract schedule that ticks soon; a new batch is in
the landing zone, so the tick really trains. Sixteen clients send /predict on keep-alive
connections, each knowing (from /readyz on the same connection) which worker it talks to.
Once the leader's `champion.service.cli retrain` child has its cycle run open in the registry, the
leader worker (not the supervisor) gets SIGKILL.

The client rule: a request that fails on a connection held by the killed worker is retried
once, on a new connection; it must then succeed. A request failing on any other worker's
connection is a failure. Afterwards the registry, ledger and manifest must agree, and the
next cycle (run here once the server is stopped) must reconcile the killed cycle and end
PROMOTE or HOLD, not FAILED.
"""

from __future__ import annotations

import http.client
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any, cast

import psutil
import pytest

from tests.integration.conftest import SMALL
from tests.integration.test_serve import ROW, serving
from tests.reliability.conftest import (
    Clients,
    Connection,
    Results,
    Scenario,
    champion_project,
    consistency,
    lock_holder,
    pick,
    readyz_pids,
    retrain_children,
    rewrite_contract,
    supervisor_of,
    wait_until,
    whole,
    worker_pids,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

CLIENTS = 16
AFTER_KILL_SECONDS = pick(5, 10)  # traffic kept up once the leader is gone
INTERVAL_MINUTES = 0.15  # the first tick 9 s after the scheduler starts
# The served contract's search: long enough (eight trials) for the kill to land mid-cycle.
OVERRIDES: dict[str, Any] = {
    "search": {**cast("dict[str, Any]", SMALL["search"]), "strategy": "random", "max_trials": 8}
}
THINK_SECONDS = pick(0.02, 0.0)  # pause between a client's requests (the full form saturates)
MAX_REQUESTS_PER_CLIENT = 200_000


class Traffic(Clients):
    """Sixteen keep-alive clients; failures sorted by the worker holding their connection."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.killed: set[int] = set()
        self.sent = 0
        self.ok = 0
        self.by_worker: Counter[int] = Counter()
        self.statuses: Counter[int] = Counter()
        self.failed_on_killed = 0  # connection failures on the killed worker's connections
        self.retried_ok = 0
        self.retried_failed: list[str] = []
        self.failed_on_survivors: list[str] = []
        self.non_200: list[str] = []
        super().__init__(CLIENTS)

    def _connect(self) -> Connection:
        conn = Connection(self.base, timeout=30)
        conn.learn_pid()
        return conn

    def _predict(self, conn: Connection) -> int:
        status, _, body = conn.request("POST", "/predict", {"instances": [ROW]})
        with self.lock:
            self.sent += 1
            self.statuses[status] += 1
            self.by_worker[conn.pid or 0] += 1
            if status == 200:
                self.ok += 1
            elif len(self.non_200) < 10:
                self.non_200.append(f"{status} from pid {conn.pid}: {str(body)[:200]}")
        return status

    def _client(self) -> None:
        conn: Connection | None = None
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if self.stop.is_set():
                break
            try:
                if conn is None:
                    conn = self._connect()
                self._predict(conn)
                if THINK_SECONDS:
                    time.sleep(THINK_SECONDS)
            except (OSError, http.client.HTTPException) as exc:
                pid = conn.pid if conn is not None else None
                if conn is not None:
                    conn.close()
                conn = None
                if pid is not None and pid in self.killed:
                    with self.lock:
                        self.failed_on_killed += 1
                    try:  # the rule: once, on a new connection
                        conn = self._connect()
                        self._predict(conn)
                        with self.lock:
                            self.retried_ok += 1
                    except (OSError, http.client.HTTPException) as again:
                        with self.lock:
                            self.sent += 1
                            self.retried_failed.append(f"{type(again).__name__}: {again}")
                        conn = None
                else:
                    with self.lock:
                        self.sent += 1
                        self.failed_on_survivors.append(f"pid {pid}: {type(exc).__name__}: {exc}")
                    time.sleep(0.05)
        if conn is not None:
            conn.close()


def test_killing_the_leader_mid_cycle_loses_nothing(
    module_dir: Path, template_db: Path, report: Results
) -> None:
    """It keeps serving on the surviving worker, hands the lease over, and recovers the cycle."""
    from champion.training.records import Verdict

    scn = Scenario(
        "leader_kill",
        "kill -9 of the scheduler leader's worker mid-cycle under traffic",
        [
            "no request fails on a surviving worker's connection; no answer other than 200",
            "a request failing on a connection of the killed worker is retried once, on a "
            "new connection, and that retry succeeds (at most one such failure per client)",
            "the retrain child does not outlive its worker; another worker takes the lease",
            "registry, ledger and manifest agree after the kill and after the next cycle; "
            "the next cycle reconciles the killed run and ends PROMOTE or HOLD, not FAILED",
        ],
    )
    # The champion and the cycle after the kill search as usual; the served contract, which
    # the killed cycle reads, searches longer.
    project = champion_project(module_dir / "proj", template_db)
    rewrite_contract(
        project,
        **OVERRIDES,
        schedule={"interval_minutes": INTERVAL_MINUTES, "misfire_grace_seconds": 30},
    )
    project.simulate(1)  # new data: the tick trains
    lease = project.settings.lock_dir / "scheduler.lock"
    facts: dict[str, Any] = {}
    started = time.monotonic()
    with serving(project, workers=2, CHAMPION_SCHEDULER="true") as base:
        pids = set(readyz_pids(base, workers=2))
        supervisor = supervisor_of(next(iter(pids)))
        traffic = Traffic(base)
        traffic.start()
        try:
            assert wait_until(lambda: bool(retrain_children(pids)), timeout=120, every=0.1), (
                "no retrain child started within 120 s"
            )
            child = retrain_children(pids)[0]
            leader = child.ppid()
            facts["leader is the worker holding the lease (/proc/locks)"] = (
                lock_holder(lease) == leader
            )
            registry = project.registry()
            mid_cycle = wait_until(
                lambda: bool(registry.running_cycle_runs()), timeout=60, every=0.1
            )
            facts["cycle run open in the registry at the kill"] = mid_cycle
            facts["retrain child running at the kill"] = child.is_running()
            facts["seconds into the child at the kill"] = round(
                time.time() - child.create_time(), 1
            )
            traffic.killed.add(leader)
            os.kill(leader, signal.SIGKILL)
            killed_at = time.monotonic()
            _, alive = psutil.wait_procs([child], timeout=30)
            facts["retrain child exited after its worker was killed"] = not alive
            facts["seconds until the child exited"] = (
                round(time.monotonic() - killed_at, 1) if not alive else None
            )
            took_over = wait_until(
                lambda: lock_holder(lease) not in (None, leader), timeout=30, every=0.1
            )
            facts["another worker took the lease"] = took_over
            facts["seconds until the lease was taken over"] = (
                round(time.monotonic() - killed_at, 1) if took_over else None
            )
            time.sleep(max(0.0, AFTER_KILL_SECONDS - (time.monotonic() - killed_at)))
        finally:
            traffic.finish()
        facts["workers alive after the kill"] = len(worker_pids(supervisor) - {leader})
        facts["supervisor alive"] = supervisor.is_running()
    before = consistency(project)
    result = project.cycle()
    after = consistency(project)
    interrupted = [e for e in project.ledger().entries() if e.get("event") == "cycle_interrupted"]
    scn.figures.update(
        {
            "clients (keep-alive connections)": CLIENTS,
            "requests sent": traffic.sent,
            "answered 200": traffic.ok,
            "answered otherwise": sum(v for k, v in traffic.statuses.items() if k != 200),
            "requests by worker": {f"pid {p}": n for p, n in sorted(traffic.by_worker.items())},
            "failed on the killed worker's connections": traffic.failed_on_killed,
            "  retried once, succeeded": traffic.retried_ok,
            "  retried once, failed": len(traffic.retried_failed),
            "failed on surviving workers": len(traffic.failed_on_survivors),
            **facts,
            "state after the kill (before the next cycle)": before,
            "next cycle verdict": result.verdict.value,
            "next cycle reason": result.reason,
            "killed cycle runs recorded by the reconcile": len(interrupted),
            "state after the next cycle": after,
            "seconds": round(time.monotonic() - started, 1),
        }
    )
    problems = traffic.failed_on_survivors[:5] + traffic.retried_failed[:5] + traffic.non_200[:5]
    if problems:
        scn.put("examples of failures", problems)
    report.record(scn)

    assert traffic.sent > 200, traffic.sent
    assert traffic.failed_on_survivors == [], traffic.failed_on_survivors[:5]
    assert traffic.non_200 == [], traffic.non_200
    assert traffic.retried_failed == [], traffic.retried_failed
    assert traffic.failed_on_killed <= CLIENTS
    assert facts["retrain child exited after its worker was killed"], facts
    assert facts["another worker took the lease"], facts
    assert mid_cycle, "the cycle's run was never seen open: the kill was not mid-cycle"
    for state in (before, after):
        assert whole(state), state
    assert after["cycle runs left RUNNING"] == 0, after
    assert before["cycle runs left RUNNING"] == 0 or interrupted, (before, interrupted)
    assert result.verdict in (Verdict.PROMOTE, Verdict.HOLD), result.reason
