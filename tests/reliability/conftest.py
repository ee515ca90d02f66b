"""Reliability scenarios: shared helpers, the figures they record, and docs/reliability.md.

`CHAMPION_RELIABILITY=quick` (the default, what `make test` runs) or `full` (`make
reliability`) sets every scenario's size. Each scenario records its figures into
`var/reliability/<form>.json` before it asserts, so a failing run still shows its numbers;
at the end of a full run the figures are rendered into docs/reliability.md. The quick form
never touches the document.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from champion.training.errors import ChampionError
from tests.integration.conftest import Project, make_project, project_raw
from tests.integration.conftest import template_db as template_db  # re-exported fixture
from tests.integration.test_serve import TOKEN, _free_port

free_port = _free_port  # a free loopback port

ROOT = Path(__file__).resolve().parents[2]
FORM = os.environ.get("CHAMPION_RELIABILITY", "quick").strip().lower() or "quick"
if FORM not in ("quick", "full"):
    raise pytest.UsageError(f"CHAMPION_RELIABILITY must be 'quick' or 'full', not {FORM!r}")
FULL = FORM == "full"
RESULTS = ROOT / "var" / "reliability" / f"{FORM}.json"
DOC = ROOT / "docs" / "reliability.md"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def pick(quick: Any, full: Any) -> Any:
    """The quick or the full form's value of a size."""
    return full if FULL else quick


# -- figures ------------------------------------------------------------------------------


@dataclass
class Scenario:
    """One scenario's figures, in the order they were measured."""

    key: str
    title: str
    rules: list[str]
    figures: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def put(self, name: str, value: Any) -> None:
        self.figures[name] = value


class Results:
    """The figures of this session's scenarios, rewritten to RESULTS after every change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.data: dict[str, Any] = {
            "form": FORM,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "scenarios": {},
            "outcomes": {},
        }
        self.save()

    def record(self, scenario: Scenario) -> None:
        with self.lock:
            self.data["scenarios"][scenario.key] = {
                "title": scenario.title,
                "rules": scenario.rules,
                "figures": scenario.figures,
                "notes": scenario.notes,
                "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            self.save()

    def outcome(self, key: str, test: str, outcome: str) -> None:
        with self.lock:
            self.data["outcomes"].setdefault(key, {})[test] = outcome
            self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=False, default=str) + "\n")
        tmp.replace(self.path)


_results: Results | None = None


def results() -> Results:
    global _results
    if _results is None:
        _results = Results(RESULTS)
    return _results


def scenario_key(nodeid: str) -> str | None:
    """`tests/reliability/test_3_leader_kill.py::...` → `leader_kill`."""
    path = nodeid.split("::", 1)[0]
    if "tests/reliability/" not in path:
        return None
    stem = Path(path).stem
    return stem.split("_", 2)[-1] if stem.startswith("test_") else None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    key = scenario_key(report.nodeid)
    if key is None or _results is None:
        return
    name = report.nodeid.split("::", 1)[-1]
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome: str = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = (
                f"xfailed (known defect): {report.wasxfail}"
                if report.outcome == "skipped"
                else f"xpassed: {report.wasxfail}"
            )
        _results.outcome(key, name, outcome)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print every scenario's figures (nested ones flattened), whatever the outcome."""
    if _results is None or not _results.data["scenarios"]:
        return
    from tests.reliability.report import flat

    write = terminalreporter.write_line
    terminalreporter.section(f"reliability figures ({FORM} form) -> {RESULTS}")
    for key, scn in _results.data["scenarios"].items():
        write(f"{scn['title']} [{key}]")
        for name, value in flat(scn["figures"]):
            write(f"    {name}: {value}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _results is None:
        return
    _results.data["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    _results.save()
    if FULL and _results.data["scenarios"]:
        from tests.reliability.report import render

        DOC.write_text(render(_results.data))


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("bentoml", "mlflow", "scikit-learn", "onnxruntime", "schemathesis", "hypothesis"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        commit, dirty = "", ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": versions,
        "commit": (commit or "unknown") + (" (with local changes)" if dirty else ""),
    }


@pytest.fixture(scope="session")
def report() -> Results:
    return results()


# -- projects and servers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def module_dir(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    return tmp_path_factory.mktemp(Path(str(request.module.__file__)).stem)


def champion_project(root: Path, template: Path, **overrides: Any) -> Project:
    """A project whose champion is v1 (two batches, one promoting cycle)."""
    from champion.training.records import Verdict

    project = make_project(root, template, **overrides)
    project.simulate(2)
    result = project.cycle()
    assert result.verdict is Verdict.PROMOTE, result.reason
    return project


def rewrite_contract(project: Project, **overrides: Any) -> None:
    """Rewrite the served champion.toml (the schedule, say); the test's own contract stays."""
    import tomli_w

    raw = project_raw(**overrides)
    (project.root / "champion.toml").write_text(tomli_w.dumps(raw))


def readyz_pids(base: str, *, workers: int, timeout: float = 60) -> dict[int, str | None]:
    """Every worker's pid and version, asked on new connections until `workers` answered."""
    seen: dict[int, str | None] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with httpx.Client(timeout=5) as client:
                r = client.get(f"{base}/readyz", headers={"Connection": "close"})
            body = r.json()
            if r.status_code == 200:
                seen[int(body["pid"])] = body.get("model_version")
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        if len(seen) >= workers:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"only {len(seen)} of {workers} workers answered: {seen}")


def supervisor_of(worker_pid: int) -> psutil.Process:
    """The `bentoml serve` process a worker was started by."""
    for parent in psutil.Process(worker_pid).parents():
        if "bentoml" in " ".join(parent.cmdline()):
            return parent
    raise AssertionError(f"no bentoml supervisor above pid {worker_pid}")


def worker_pids(supervisor: psutil.Process) -> set[int]:
    """The supervisor's live worker processes (serving `service.app`)."""
    out = set()
    for child in supervisor.children(recursive=True):
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "champion.service.cli" not in cmd and (
            "bentoml" in cmd or "champion.service.app" in cmd
        ):
            out.add(child.pid)
    return out


def retrain_children(pids: set[int] | None = None) -> list[psutil.Process]:
    """Running `champion.service.cli retrain` processes (children of `pids`, when given)."""
    found = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        ours = pids is None or proc.info["ppid"] in pids
        if "champion.service.cli" in cmd and " retrain" in cmd and ours:
            found.append(proc)
    return found


def lock_holder(path: Path) -> int | None:
    """The pid /proc/locks names as holding the flock on `path` (None when free)."""
    try:
        inode = path.stat().st_ino
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 12345 08:01:1234567 0 EOF"
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[-3].endswith(f":{inode}"):
            return int(parts[4])
    return None


class Clients:
    """`count` client threads running `_client` until `finish()`; subclasses count what they see."""

    def __init__(self, count: int) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(count)]

    def _client(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


class Connection:
    """One HTTP/1.1 keep-alive connection, and the worker (pid) at its other end.

    http.client, not httpx: a new connection costs no client set-up, and a failure is
    known to belong to this one connection (and so to the worker that holds it).
    """

    def __init__(self, base: str, *, timeout: float = 30) -> None:
        url = urlsplit(base)
        host = url.hostname or "127.0.0.1"
        self.conn = http.client.HTTPConnection(host, url.port, timeout=timeout)
        self.pid: int | None = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """Send one request; (status, headers, JSON body or text). Raises OSError and
        http.client.HTTPException when the connection fails."""
        data = None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if data is not None else {}
        self.conn.request(method, path, body=data, headers=sent | (headers or {}))
        response = self.conn.getresponse()
        raw = response.read()
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, parsed

    def learn_pid(self) -> int:
        status, _, body = self.request("GET", "/readyz")
        if status != 200 or not isinstance(body, dict):
            raise http.client.HTTPException(f"/readyz answered {status}: {body}")
        self.pid = int(body["pid"])
        return self.pid

    def close(self) -> None:
        self.conn.close()


def labelled_rows(path: Path) -> int:
    with read_only(path) as conn:
        query = "SELECT COUNT(*) FROM predictions WHERE label IS NOT NULL"
        return int(conn.execute(query).fetchone()[0])


class read_only:
    """A read-only connection to the prediction log (the service owns writing it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        return self.conn

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


def captured_keys(path: Path) -> set[tuple[str, int]]:
    with read_only(path) as conn:
        rows = conn.execute("SELECT request_id, row FROM predictions")
        return {(str(r), int(n)) for r, n in rows}


def wait_until(check: Callable[[], bool], *, timeout: float, every: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()


def consistency(project: Project) -> dict[str, Any]:
    """Registry, ledger and manifest facts that must agree after any crash."""
    registry = project.registry()
    aliases = registry.aliases()
    ledger = project.ledger()
    lines = ledger.path.read_text().splitlines() if ledger.path.exists() else []
    torn = 0
    for line in lines:
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError:
                torn += 1
    manifest = project.contract.data.manifest
    try:
        json.loads(manifest.read_text())
        manifest_ok = True
    except (OSError, ValueError):
        manifest_ok = False
    champion = aliases.get("champion")
    try:
        registered = champion is not None and registry.version(champion).version == champion
    except ChampionError:
        registered = False
    return {
        "champion alias": champion,
        "champion version registered": registered,
        "ledger's last champion": ledger.last_champion(),
        "ledger agrees with the registry": ledger.last_champion() == champion,
        "ledger lines": len(lines),
        "torn ledger lines": torn,
        "manifest parses": manifest_ok,
        "cycle runs left RUNNING": len(registry.running_cycle_runs()),
    }


def whole(state: dict[str, Any]) -> bool:
    """A consistent state: the champion is a registered version the ledger names, and the
    ledger and manifest parse."""
    return bool(
        state["champion version registered"]
        and state["ledger agrees with the registry"]
        and state["manifest parses"]
        and state["torn ledger lines"] == 0
    )
