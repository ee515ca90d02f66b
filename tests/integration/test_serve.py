"""A real `bentoml serve` with two workers: hot swap, rollback, load, scheduler, degraded modes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from champion.service.scheduler import CycleOutcome, RetrainScheduler
from champion.training import actions
from champion.training.pipeline import prepare_features
from champion.training.records import Verdict

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-admin-token"
FEEDBACK_TOKEN = "serve-test-feedback-token"
FEEDBACK = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
ROW = {
    "salary": 61000.0,
    "commission": 20000.0,
    "age": 45.0,
    "hvalue": 250000.0,
    "hyears": 12.0,
    "loan": 150000.0,
    "elevel": "e2",
    "car": "car4",
    "zipcode": "z3",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(project, *, workers: int = 2, **env: str) -> Iterator[str]:
    """Start `bentoml serve` on a loopback port; yield its base URL; stop the whole group."""
    port = _free_port()
    full = (
        project.env()
        | {
            "BENTOML_CONFIG_OPTIONS": f"services.champion.workers={workers}",
            "CHAMPION_POLL_SECONDS": "1",
            "CHAMPION_ADMIN_TOKEN": TOKEN,
            "CHAMPION_FEEDBACK_TOKEN": FEEDBACK_TOKEN,
            "CHAMPION_SCHEDULER": "false",
            "BENTOML_DO_NOT_TRACK": "true",
        }
        | env
    )
    log = (project.root / f"serve-{port}.log").open("w")
    proc = subprocess.Popen(
        [
            str(Path(os.sys.executable).with_name("bentoml")),
            "serve",
            "champion.service.app:Champion",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=project.root,
        env=full,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, (project.root / f"serve-{port}.log").read_text()[-3000:]
            try:
                if httpx.get(f"{base}/livez", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.3)
        yield base
    finally:
        stop_group(proc)
        log.close()


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process started with start_new_session, and everything it spawned."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _workers_report(base: str, *, want: set[str], workers: int = 2, timeout: float = 30) -> dict:
    """Poll /readyz on new connections until every worker (by pid) reports a wanted version."""
    seen: dict[int, str | None] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with httpx.Client(timeout=5) as client:  # a new connection lands on any worker
            body = client.get(f"{base}/readyz", headers={"Connection": "close"}).json()
        seen[body["pid"]] = body.get("model_version")
        if len(seen) >= workers and all(v in want for v in seen.values()):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"workers never converged on {want}: {seen}")


@pytest.fixture
def two_versions(project):
    """Champion v1 and a registered, not promoted v2."""
    project.simulate(2)
    assert project.cycle().verdict is Verdict.PROMOTE
    project.simulate(1)
    assert project.cycle().verdict is Verdict.HOLD
    return project


def test_two_workers_follow_promotion_and_rollback(two_versions):
    """It makes every worker serve a promoted version within the poll interval, and roll back."""
    project = two_versions
    with serving(project) as base:
        _workers_report(base, want={"1"})
        r = httpx.post(f"{base}/predict", json={"instances": [ROW]})
        assert r.status_code == 200 and r.json()["model_version"] == "1"
        actions.promote(
            "2",
            reason="test",
            registry=project.registry(),
            ledger=project.ledger(),
            leases=project.components().leases,
        )
        _workers_report(base, want={"2"})
        r = httpx.post(
            f"{base}/admin/rollback",
            json={"reason": "drill"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["champion_after"] == "1"
        _workers_report(base, want={"1"})
        assert project.ledger().entries()[-1]["event"] == "rollback"
        metrics = httpx.get(f"{base}/metrics").text
        assert 'champion_model_info{version="1"} 1.0' in metrics
        assert "champion_model_swaps_total" in metrics


def test_swap_under_load_loses_no_request(two_versions):
    """It answers every request during swaps under 8 clients, each by one whole model."""
    project = two_versions
    registry = project.registry()
    expected = {}
    for version in ("1", "2"):
        model = registry.load(registry.version(version), cache_dir=project.root / "expect")
        frame = prepare_features(pd.DataFrame([ROW]), project.contract)
        expected[version] = model.pipeline.predict_proba(frame)[0]
    assert not np.allclose(expected["1"], expected["2"])
    with serving(project) as base:
        _workers_report(base, want={"1"})
        stop = threading.Event()
        results: list[tuple[int, str | None, list[float] | None]] = []
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(timeout=10) as c:
                for _ in range(2000):  # bounded
                    if stop.is_set():
                        return
                    try:
                        r = c.post(f"{base}/predict", json={"instances": [ROW]})
                        body = r.json()
                        item = (
                            r.status_code,
                            body.get("model_version"),
                            (body.get("probabilities") or [None])[0],
                        )
                    except httpx.HTTPError as exc:
                        item = (0, repr(exc), None)
                    with lock:
                        results.append(item)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        actions.promote(
            "2",
            reason="load test",
            registry=registry,
            ledger=project.ledger(),
            leases=project.components().leases,
        )
        _workers_report(base, want={"2"})
        time.sleep(1.0)
        actions.rollback(
            reason="load test",
            registry=registry,
            ledger=project.ledger(),
            leases=project.components().leases,
        )
        _workers_report(base, want={"1"})
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    failed = [r for r in results if r[0] != 200]
    versions = {r[1] for r in results}
    assert len(results) > 100
    assert failed == [], failed[:5]
    assert versions == {"1", "2"}
    for _, version, proba in results:
        # The answer matches, to the last digit, the whole model named in it.
        assert np.allclose(proba, expected[version], atol=1e-12), (version, proba)
    by_version = {v: sum(1 for r in results if r[1] == v) for v in ("1", "2")}
    print(
        f"swap under load: {len(results)} requests, {len(failed)} failed, by version {by_version}"
    )


def test_scheduler_runs_once_per_tick_with_two_workers(project, tmp_path):
    """It runs each scheduled tick once across two workers; a second scheduler stays standby."""
    import tomli_w

    from tests.integration.conftest import project_raw

    raw = project_raw()
    raw["schedule"] = {"interval_minutes": 0.1, "misfire_grace_seconds": 5}
    (project.root / "champion.toml").write_text(tomli_w.dumps(raw))
    project.simulate(2)
    started = time.monotonic()
    with serving(project, CHAMPION_SCHEDULER="true") as base:
        assert httpx.get(f"{base}/livez").status_code == 200
        second = RetrainScheduler(
            schedule=project.contract.schedule,
            leases=project.components().leases,
            job=lambda trigger: CycleOutcome("SKIPPED"),
        )
        second.start()
        assert not second.is_leader  # started by mistake: stands by
        second.stop()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            scheduled = [e for e in project.ledger().entries() if e.get("trigger") == "schedule"]
            if len(scheduled) >= 3:
                break
            time.sleep(1)
        elapsed = time.monotonic() - started
        metrics = httpx.get(f"{base}/metrics").text
    scheduled = [e for e in project.ledger().entries() if e.get("trigger") == "schedule"]
    assert len(scheduled) >= 3
    assert len(scheduled) <= elapsed / 6 + 1  # one per 6 s tick at most
    assert not any("Another retrain cycle" in e["reason"] for e in scheduled)
    assert scheduled[0]["verdict"] == "PROMOTE"
    assert {e["verdict"] for e in scheduled[1:]} == {"SKIPPED"}
    assert "champion_retrain_ticks_total" in metrics


def test_registry_down_at_start_serves_from_cache(two_versions):
    """It serves the cached champion, says so, when the registry is unreachable at start."""
    project = two_versions
    with serving(project, workers=1) as base:
        _workers_report(base, want={"1"}, workers=1)
    down = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
    }
    with serving(project, workers=1, **down) as base:
        ready = httpx.get(f"{base}/readyz").json()
        assert ready["ready"] and ready["source"] == "cache" and ready["model_version"] == "1"
        # The cache serves first; the poller's first check then finds the registry down.
        deadline = time.monotonic() + 30
        while "degraded" not in ready and time.monotonic() < deadline:
            time.sleep(0.2)
            ready = httpx.get(f"{base}/readyz").json()
        assert "registry unreachable" in ready["degraded"] and ready["source"] == "cache"
        r = httpx.post(f"{base}/predict", json={"instances": [ROW]})
        assert r.status_code == 200 and r.json()["model_version"] == "1"
        assert httpx.get(f"{base}/model").json()["degraded"].startswith("registry unreachable")


def test_nothing_cached_and_registry_down_is_not_ready_but_alive(project):
    """It reports not ready (503 on /predict with a reason) and keeps running with no model."""
    down = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "2",
    }
    with serving(project, workers=1, **down) as base:
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        r = httpx.post(f"{base}/predict", json={"instances": [ROW]})
        assert r.status_code == 503 and "no champion model is loaded" in r.json()["error"]
        assert httpx.get(f"{base}/livez").status_code == 200


def test_bentoml_build_packages_the_service(tmp_path):
    """It builds a Bento with `make bento` (what a container image is made from): the contract,
    and the code as the project's wheel, which holds the `champion` namespace."""
    import zipfile

    env = dict(os.environ, BENTOML_HOME=str(tmp_path / "bentoml"), BENTOML_DO_NOT_TRACK="true")
    out = subprocess.run(
        ["make", "--no-print-directory", "bento"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-2000:]
    store = tmp_path / "bentoml" / "bentos" / "champion"
    bentos = [b for b in store.glob("*") if b.name != "latest"]
    assert len(bentos) == 1, "one Bento is built"
    assert (bentos[0] / "src" / "champion.toml").is_file(), "the contract ships inside"
    wheels = list(bentos[0].glob("env/python/wheels/champion-*.whl"))
    assert wheels, "the project's wheel ships inside"
    names = set(zipfile.ZipFile(wheels[0]).namelist())
    assert {"champion/service/app.py", "champion/training/cycle.py"} <= names
    assert not any(n.startswith(("service/", "training/", "monitoring/")) for n in names)


def test_predict_command_sends_a_csv_and_reports_problems(project):
    """It sends a batch file's rows to a running service; bad rows exit 1 with the 422 body."""
    first, _ = project.simulate(2)
    assert project.cycle().verdict is Verdict.PROMOTE
    batch = project.root / "rows.csv"
    batch.write_text("".join(first.read_text().splitlines(keepends=True)[:31]))
    champion = str(Path(os.sys.executable).with_name("champion"))
    bad = project.root / "bad.csv"
    bad.write_text(batch.read_text().replace(",e", ",").replace("salary", "salery", 1))
    # 8 rows per request on the service only: the command learns the limit from its OpenAPI.
    with serving(project, workers=1, CHAMPION_MAX_ROWS="8") as base:
        ok = subprocess.run(
            [champion, "predict", "--file", str(batch), "--url", base],
            env=project.env(),
            cwd=project.root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ok.returncode == 0, ok.stderr[-2000:]
        assert '"model_version": "1"' in ok.stdout and ok.stdout.count('"predictions"') == 1
        answer = json.loads(ok.stdout)
        assert len(answer["predictions"]) == 30 and len(answer["probabilities"]) == 30
        assert len(answer["request_ids"]) == 4 and answer["chunk_rows"] == 8
        wrong = subprocess.run(
            [champion, "predict", "--file", str(bad), "--url", base],
            env=project.env(),
            cwd=project.root,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert wrong.returncode == 1
        assert '"field": "salary"' in wrong.stdout and '"kind": "missing"' in wrong.stdout


def test_a_nested_bracket_body_gets_a_400_at_once_and_the_worker_serves_on(project):
    """It answers a 40 KB body of nested brackets with a 400 at once; the next request is served."""
    project.simulate(2)
    assert project.cycle().verdict is Verdict.PROMOTE
    with serving(project, workers=1) as base:
        _workers_report(base, want={"1"}, workers=1)
        for path in ("/predict", "/feedback"):
            started = time.monotonic()
            r = httpx.post(f"{base}{path}", content=b"[" * 40_000, headers=FEEDBACK, timeout=30)
            assert r.status_code == 400 and r.json()["error"].startswith("malformed JSON"), r.text
            assert time.monotonic() - started < 5
        r = httpx.post(f"{base}/predict", json={"instances": [ROW]}, timeout=10)
        assert r.status_code == 200, r.text


def test_workers_exit_when_their_supervisor_is_killed(project):
    """It leaves no worker behind (serving, leading the scheduler) once `bentoml serve` dies."""
    import psutil

    project.simulate(2)
    assert project.cycle().verdict is Verdict.PROMOTE
    with serving(project, workers=2, CHAMPION_SCHEDULER="true") as base:
        pids = set(_workers_report(base, want={"1"}, workers=2))
        supervisor = next(
            p
            for p in psutil.Process(next(iter(pids))).parents()
            if "bentoml" in " ".join(p.cmdline())
        )
        supervisor.kill()  # SIGKILL: it cannot stop its children itself
        deadline = time.monotonic() + 30
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = {
                p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
            }
            time.sleep(0.2)
        assert not alive, f"workers {alive} outlived their supervisor"
    lock = project.settings.lock_dir / "scheduler.lock"
    from filelock import FileLock

    FileLock(str(lock), timeout=5).acquire()  # the leader's lease was released with it
