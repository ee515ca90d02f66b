"""Scenario 5: the MLflow registry server stopped and started again, under traffic and mid-cycle.

A real `mlflow server` (SQLite behind it) on a loopback port is the registry, and the
service follows it (MLFLOW_TRACKING_URI=http://...); the champion is registered through
the server. With
clients sending /predict throughout, the registry server is stopped, started again, then
stopped again while a `champion retrain` child is in the middle of its cycle, and kept down
until that child gives up. Serving must never stop; the interrupted cycle must end FAILED
(or finish, had it retried through) with nothing half-written: the champion alias unchanged
or moved with its ledger entry, the ledger and manifest parse, and the next cycle with the
registry back reconciles the run left open and reaches a verdict.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Project, make_project
from tests.integration.test_serve import ROW, serving, stop_group
from tests.reliability.conftest import (
    FULL,
    Clients,
    Connection,
    Results,
    Scenario,
    consistency,
    free_port,
    pick,
    readyz_pids,
    wait_until,
    whole,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

CLIENTS = 4
DOWN_SECONDS = pick(5, 30)  # an outage under traffic
UP_SECONDS = pick(2, 10)  # traffic before an outage and after a restart
# Bounded MLflow client retries: a call to a stopped registry fails within seconds.
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
CHILD_TIMEOUT = 300
SEEN_AGAIN_TIMEOUT = 330  # the workers' poll backs off to at most 300 s while it is down


class RegistryServer:
    """`mlflow server` as a subprocess on a fixed loopback port, stopped and started at will."""

    def __init__(self, root: Path, template: Path) -> None:
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.db = root / "registry.db"
        self.db.write_bytes(template.read_bytes())  # already migrated
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> float:
        started = time.monotonic()
        log = (self.root / f"mlflow-server-{self.starts}.log").open("w")
        self.proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("mlflow")),
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.db}",
                "--serve-artifacts",
                "--artifacts-destination",
                str(self.root / "registry-artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            cwd=self.root,
            env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.starts += 1
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_tail()
            try:
                if httpx.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"mlflow server did not come up: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_group(self.proc)
        self.proc = None

    def log_tail(self) -> str:
        logs = sorted(self.root.glob("mlflow-server-*.log"))
        return logs[-1].read_text()[-2000:] if logs else ""


@contextmanager
def registry_server(root: Path, template: Path) -> Iterator[RegistryServer]:
    server = RegistryServer(root, template)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _on(project: Project, uri: str) -> Project:
    return dataclasses.replace(project, tracking_uri=uri)


@pytest.fixture(scope="module")
def server(module_dir: Path, template_db: Path) -> Iterator[RegistryServer]:
    with registry_server(module_dir, template_db) as running:
        yield running


def test_a_cycle_registers_a_version_through_the_registry_server(
    module_dir: Path, template_db: Path, server: RegistryServer
) -> None:
    """It bootstraps a champion with MLFLOW_TRACKING_URI naming an MLflow server."""
    from champion.training.records import Verdict

    raw_project = {"name": "reliability-through-server", "description": "registered over HTTP"}
    project = _on(
        make_project(module_dir / "direct", template_db, project=raw_project),
        server.uri,
    )
    project.simulate(2)
    result = project.cycle()
    assert result.verdict is Verdict.PROMOTE, result.reason


class Traffic(Clients):
    """A few keep-alive /predict clients; every failure counted by phase."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.phase = "registry up"
        self.sent: Counter[str] = Counter()
        self.ok: Counter[str] = Counter()
        self.failures: list[str] = []
        super().__init__(CLIENTS)

    def _client(self) -> None:
        conn = Connection(self.base, timeout=30)
        for _ in range(10_000_000):  # bounded; stops on the event
            if self.stop.is_set():
                break
            phase = self.phase
            try:
                status, _, body = conn.request("POST", "/predict", {"instances": [ROW]})
            except (OSError, http.client.HTTPException) as exc:
                status, body = 0, f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = Connection(self.base, timeout=30)
            with self.lock:
                self.sent[phase] += 1
                if status == 200:
                    self.ok[phase] += 1
                elif len(self.failures) < 20:
                    self.failures.append(f"{phase}: {status} {str(body)[:200]}")
            time.sleep(0.01)
        conn.close()


def _readiness(base: str, workers: int = 2) -> dict[str, dict[str, Any]]:
    """Each worker's /readyz (status, degraded), asked on new connections."""
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 30
    while len(seen) < workers and time.monotonic() < deadline:
        conn = Connection(base, timeout=10)
        try:
            status, _, body = conn.request("GET", "/readyz")
        finally:
            conn.close()
        seen[f"pid {body['pid']}"] = {"status": status, "degraded": body.get("degraded")}
    return seen


@pytest.mark.timeout(CHILD_TIMEOUT + 600)
def test_a_registry_outage_stops_neither_serving_nor_leaves_a_half_written_cycle(
    module_dir: Path, template_db: Path, server: RegistryServer, report: Results
) -> None:
    """It serves through registry outages; a cycle cut off mid-way writes nothing half-way."""
    from champion.training.records import Verdict

    scn = Scenario(
        "registry_restart",
        "the MLflow registry server stopped and restarted",
        [
            "no prediction fails while the registry is up, down, or restarting",
            "the service reports the registry unreachable while it is down, and sees it "
            "again after it restarts (full form)",
            "a cycle whose registry stops mid-way ends FAILED (or completes, had it retried "
            "through) with the champion alias unchanged or moved with its ledger entry",
            "the ledger and manifest parse; the next cycle, registry back, reconciles any run "
            "left open and reaches a verdict, not FAILED",
        ],
    )
    root = module_dir / "proj"
    started = time.monotonic()
    # `store` reads the server's own SQLite store: the checks, and the quick form's last
    # cycle (its registry stays down), need no server.
    store = _on(make_project(root, template_db), f"sqlite:///{server.db}")
    project = _on(store, server.uri)
    project.simulate(2)
    first = project.cycle()  # registered through the server
    assert first.verdict is Verdict.PROMOTE, first.reason
    env = CLIENT_ENV | {"MLFLOW_TRACKING_URI": server.uri, "CHAMPION_SCHEDULER": "false"}
    with serving(project, workers=2, **env) as base:
        readyz_pids(base, workers=2)
        traffic = Traffic(base)
        traffic.start()
        try:
            time.sleep(UP_SECONDS)
            down: dict[str, dict[str, Any]] = {}
            restart_seconds = seen_after = None
            seen_again: bool | None = None
            if FULL:
                # 1. An outage under traffic, and a restart (the quick form has only the
                # outage of step 2).
                traffic.phase = "registry down"
                server.stop()
                time.sleep(DOWN_SECONDS)
                down = _readiness(base)
                traffic.phase = "registry restarting"
                restart_seconds = round(server.start(), 1)
                traffic.phase = "registry back"
                back_at = time.monotonic()
                # Each worker backs off (doubling its poll interval) while the registry is
                # unreachable, so it may take about as long as the outage lasted to notice.
                seen_again = wait_until(
                    lambda: all(w["degraded"] is None for w in _readiness(base).values()),
                    timeout=SEEN_AGAIN_TIMEOUT,
                    every=0.5,
                )
                seen_after = round(time.monotonic() - back_at, 1)
                time.sleep(UP_SECONDS)
            # 2. The registry stops in the middle of a cycle, and stays down until the
            # cycle's process gives up.
            traffic.phase = "cycle, registry stopped mid-way"
            project.simulate(1)
            before = consistency(store)
            registry = store.registry()
            result_file = module_dir / "cycle-result.json"
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "champion.service.cli",
                    "retrain",
                    "--no-progress",
                    "--result-file",
                    str(result_file),
                ],
                cwd=project.root,
                env=project.env() | CLIENT_ENV,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            mid_cycle = wait_until(
                lambda: bool(registry.running_cycle_runs()) or child.poll() is not None,
                timeout=120,
                every=0.1,
            )
            mid_cycle = mid_cycle and child.poll() is None
            server.stop()
            stopped_at = time.monotonic()
            try:
                output, _ = child.communicate(timeout=CHILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.kill()
                output, _ = child.communicate()
            child_seconds = round(time.monotonic() - stopped_at, 1)
            if not down:
                traffic.phase = "registry down, after the cycle"
                time.sleep(DOWN_SECONDS)
                down = _readiness(base)
            if FULL:  # the quick form starts it again only after the traffic
                server.start()
                traffic.phase = "after the cycle, registry back"
                time.sleep(UP_SECONDS)
        finally:
            traffic.finish()
    try:
        cut = json.loads(result_file.read_text())
    except (OSError, ValueError):
        cut = {"verdict": None, "reason": "no result file"}
    during = consistency(store)
    if not FULL:
        # The models' artifacts are proxied by the server (mlflow-artifacts:), so the next
        # cycle, which loads the champion, goes through it.
        server.start()
    following = project.cycle()
    after = consistency(store)
    interrupted = [e for e in store.ledger().entries() if e.get("event") == "cycle_interrupted"]
    scn.figures.update(
        {
            "prediction clients": CLIENTS,
            "requests sent": sum(traffic.sent.values()),
            "requests failed": sum(traffic.sent.values()) - sum(traffic.ok.values()),
            "requests by phase": {
                phase: {"sent": n, "failed": n - traffic.ok[phase]}
                for phase, n in traffic.sent.items()
            },
            "outage under traffic (s)": DOWN_SECONDS,
            "readiness while the registry was down": down,
            "registry restart (s)": restart_seconds,
            "service saw the registry again": seen_again,
            "  seconds after the restart": seen_after,
            "registry stopped mid-cycle (cycle run open)": mid_cycle,
            "cut cycle: exit code": child.returncode,
            "cut cycle: verdict": cut.get("verdict"),
            "cut cycle: reason": str(cut.get("reason"))[:300],
            "cut cycle: seconds until it gave up": child_seconds,
            "state before the cut cycle": before,
            "state after the cut cycle": during,
            "next cycle verdict": following.verdict.value,
            "next cycle reason": following.reason[:300],
            "runs left open, recorded by the reconcile": len(interrupted),
            "state after the next cycle": after,
            "seconds": round(time.monotonic() - started, 1),
        }
    )
    if traffic.failures:
        scn.put("examples of failures", traffic.failures[:10])
    scn.notes.append(
        f"{'Full' if FULL else 'Quick'} form: {CLIENTS} keep-alive /predict clients throughout; "
        + (
            "an outage under traffic, a restart, then a cycle cut off mid-way and a restart. "
            if FULL
            else "one outage, from a cycle cut off mid-way to the end (no restart). "
        )
        + "While the registry is unreachable each worker doubles its poll interval, so the "
        "time to see the registry again grows with the outage (POST /admin/reload asks at "
        "once). The champion is registered through the server; the cycle after the cut goes "
        "through it too in the full form (the quick form reads its store directly, as the "
        "server stays down)."
    )
    report.record(scn)

    assert sum(traffic.sent.values()) > 100, traffic.sent
    assert traffic.failures == [], traffic.failures
    assert all(w["status"] == 200 and w["degraded"] for w in down.values()), down
    assert seen_again or not FULL, "the service never saw the registry again"
    assert mid_cycle, "the cycle ended before the registry could be stopped mid-way"
    assert cut.get("verdict") in ("FAILED", "PROMOTE", "HOLD", "REJECT"), (cut, output[-2000:])
    if cut.get("verdict") == "FAILED":
        assert child.returncode == 1, child.returncode
    for state in (during, after):
        assert whole(state), state
    if cut.get("verdict") == "FAILED":
        assert during["champion alias"] == before["champion alias"], (before, during)
    assert after["cycle runs left RUNNING"] == 0, after
    assert following.verdict in (Verdict.PROMOTE, Verdict.HOLD, Verdict.REJECT), following.reason
