"""The live demo: traffic against a running service while a concept change is retrained away."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from champion.training.demo.simulate import (
    FEATURES_CATEGORICAL,
    FEATURES_NUMERIC,
    SimulationPlan,
    agrawal_frame,
)
from champion.training.demo.simulate import simulate_batches as write_batches


@dataclass
class Traffic:
    """Bounded background traffic: single-row requests at a steady rate."""

    base: str
    rate: float = 20.0
    max_requests: int = 100_000
    outcomes: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        rows = agrawal_frame(2000, function=1, seed=123)
        records = rows[list(FEATURES_NUMERIC) + list(FEATURES_CATEGORICAL)].to_dict("records")
        with httpx.Client(timeout=10) as client:
            for i in range(self.max_requests):
                if self._stop.is_set():
                    return
                try:
                    r = client.post(
                        f"{self.base}/predict", json={"instances": [records[i % len(records)]]}
                    )
                    self.outcomes[str(r.status_code)] += 1
                    if r.status_code == 200:
                        self.versions[r.json()["model_version"]] += 1
                except httpx.HTTPError as exc:
                    self.outcomes[type(exc).__name__] += 1
                self._stop.wait(1.0 / self.rate)


def wait_ready(base: str, *, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{base}/readyz", timeout=2)
            if r.status_code == 200:
                return dict(r.json())
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{base} did not become ready in {timeout:.0f}s")


def run_demo(
    *,
    base: str,
    landing_zone: Path,
    token: str | None,
    say: Callable[[str], None],
    drifted_batches: int = 3,
    rows: int = 1000,
    timeout: float = 900,
) -> bool:
    """Traffic on, concept change in, retrain, and report until a new champion serves."""
    ready = wait_ready(base)
    start_version = ready["model_version"]
    say(f"service ready, serving v{start_version}; starting traffic (20 requests/s)")
    traffic = Traffic(base)
    traffic.start()
    try:
        time.sleep(10)
        plan = SimulationPlan(batches=drifted_batches, rows=rows, drift_at=0, seed=int(time.time()))
        paths = write_batches(plan, landing_zone=landing_zone)
        say(f"wrote {len(paths)} batches with a concept change into {landing_zone}")
        if token:
            r = httpx.post(
                f"{base}/admin/retrain", headers={"Authorization": f"Bearer {token}"}, timeout=10
            )
            say(f"asked for a retrain now: HTTP {r.status_code}")
        else:
            say("waiting for the scheduled retrain (set CHAMPION_ADMIN_TOKEN to trigger it now)")
        deadline = time.monotonic() + timeout
        last_report = 0.0
        while time.monotonic() < deadline:
            model = httpx.get(f"{base}/model", timeout=5).json()
            if time.monotonic() - last_report > 10:
                last_report = time.monotonic()
                say(
                    f"serving v{model.get('version')}; traffic {dict(traffic.outcomes)}; "
                    f"last verdict: {(model.get('last_verdict') or {}).get('verdict')}"
                )
            if model.get("version") != start_version:
                verdict = model.get("last_verdict") or {}
                say(f"new champion v{model['version']}: {verdict.get('reason')}")
                time.sleep(5)
                return True
            time.sleep(2)
        say("no new champion before the time limit; see `champion history`")
        return False
    finally:
        traffic.stop()
        say(
            f"traffic summary: {dict(traffic.outcomes)}; answered by versions "
            f"{dict(traffic.versions)}"
        )
