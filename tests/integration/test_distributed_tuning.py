"""Distributed tuning on a real PostgreSQL: a real cycle and two `champion tune-worker`
processes share one study; the budget holds, no candidate is scored twice.

Run with -s for the figures (trials per process).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from champion.service.cli import app
from champion.training.artifacts import TAG_SOURCE
from champion.training.config import get_settings
from champion.training.cycle import run_cycle
from champion.training.postgres.database import Database
from champion.training.postgres.tuning import PgTuning
from champion.training.records import Verdict
from champion.training.shared_tuning import RESULT_ATTR, Outcome, open_study, study_name
from tests import pg
from tests.integration.conftest import ROOT, Project, make_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BUDGET = 12
CHAMPION = str(ROOT / ".venv" / "bin" / "champion")
# Trials of about a second: long enough for both workers to join a search of twelve.
SEARCH = {
    "strategy": "bayes",
    "max_trials": BUDGET,
    "max_seconds": 90,
    "seed": 5,
    "families": ["logistic", "hist_gradient_boosting"],
    "space": {
        "logistic": {"C": {"low": 0.01, "high": 100.0, "log": True}},
        "hist_gradient_boosting": {
            "learning_rate": {"low": 0.03, "high": 0.3, "log": True},
            "max_leaf_nodes": {"low": 8, "high": 48, "integer": True},
            "max_iter": {"choices": [60]},
        },
    },
}


@dataclasses.dataclass
class Shared:
    project: Project
    url: str

    def env(self, **extra: str) -> dict[str, str]:
        return self.project.env() | {"CHAMPION_DATABASE_URL": self.url} | extra


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, template_db: Path) -> Iterator[Shared]:
    """A project in shared mode on a fresh database, its batches taken in."""
    with pg.fresh_database() as url:
        base = make_project(
            tmp_path_factory.mktemp("distributed") / "proj",
            template_db,
            search=SEARCH,
            cv={"scheme": "auto", "folds": 3, "repeats": 1},
        )
        settings = base.settings.model_copy(update={"database_url": SecretStr(url)})
        project = dataclasses.replace(base, settings=settings)
        project.simulate(4, rows=700)
        components = project.components()
        components.batches().intake()
        yield Shared(project, url)
        components.database.dispose()


class Worker:
    """A `champion tune-worker` subprocess; its stderr (JSON log lines) read as it comes."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [CHAMPION, "tune-worker", *args],
            env=env,
            cwd=env["CHAMPION_HOME"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def logged(self, message: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("message") == message]

    def wait_for(self, message: str, timeout: float) -> None:
        limit = time.monotonic() + timeout
        while not self.logged(message):
            if self.proc.poll() is not None or time.monotonic() > limit:
                self.stop()
                pytest.fail(f"the worker never logged {message!r}:\n{''.join(self.lines)}")
            time.sleep(0.1)

    def finish(self, timeout: float) -> tuple[int, str, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(5)
        return self.proc.returncode, out, "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_two_workers_share_a_cycles_study_within_its_budget_and_without_duplicates(shared):
    """It runs a real cycle while two `champion tune-worker` processes join its study: the
    cycle's result holds exactly the budget of trials, every candidate once, each with its
    fold scores, both workers scored some, and the cycle logged each to MLflow."""
    workers = [Worker(shared.env(), "--wait", "60") for _ in range(2)]
    try:
        for w in workers:
            w.wait_for("looking for a tuning study to join", timeout=60)
        started = time.monotonic()
        result = run_cycle(shared.project.components().cycle_context(progress=False))
        cycle_seconds = time.monotonic() - started
        ends = [w.finish(timeout=60) for w in workers]
    finally:
        for w in workers:
            w.stop()
    assert result.verdict is not Verdict.FAILED, result.reason
    for code, out, err in ends:
        assert code == 0, err
        assert "Traceback" not in err
        assert f"{study_name(str(result.run_id))}: " in out and " trials by " in out
    assert result.trials == BUDGET

    store = PgTuning(Database(shared.url))
    study = store.storage.get_study_id_from_name(study_name(str(result.run_id)))
    scored = [
        t.user_attrs[RESULT_ATTR]
        for t in store.storage.get_all_trials(study)
        if RESULT_ATTR in t.user_attrs
    ]
    assert len(scored) == BUDGET
    assert len({s["candidate"] for s in scored}) == BUDGET, "a candidate was scored twice"
    assert all(len(s["fold_scores"]) >= 2 for s in scored)
    assert all(len(s["fold_scores"]) == 3 for s in scored if not s["pruned"])
    per_source: dict[str, int] = {}
    for s in scored:
        per_source[s["source"]] = per_source.get(s["source"], 0) + 1
    worker_sources = [k for k in per_source if k.startswith("worker:")]
    assert len(worker_sources) == 2, per_source
    assert all(per_source[k] >= 1 for k in worker_sources), per_source
    # Each worker logged one line per trial it scored, and they add up to its share.
    for w in workers:
        lines = w.logged("trial scored")
        assert lines and per_source[f"worker:{lines[0]['owner']}"] == len(lines)
    with store.database.engine.connect() as conn:
        claims = conn.exec_driver_sql(
            "SELECT count(*), count(finished_at) FROM tuning_claims WHERE study = %(s)s"
            " AND candidate <> ''",
            {"s": study_name(str(result.run_id))},
        ).one()
    assert tuple(claims) == (BUDGET, BUDGET)

    logged = shared.project.registry().runs(kind="trial", parent=result.run_id)
    assert len(logged) == BUDGET
    assert {r.tags[TAG_SOURCE] for r in logged} == set(per_source)
    print(
        f"\n[distributed tuning] budget {BUDGET}: trials per process {per_source}; "
        f"cycle {cycle_seconds:.1f}s"
    )
    for _, out, err in ends:
        print(f"  {out.strip()}\n  last log line: {err.strip().splitlines()[-1]}")
    store.database.dispose()


@pytest.fixture
def cli(shared: Shared, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in shared.env().items():
        if key.startswith(("CHAMPION_", "MLFLOW_")):
            monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    runner = CliRunner()
    yield lambda *args: runner.invoke(app, ["tune-worker", *args])
    # The command set up logging on the runner's stream, closed now: put the test's back.
    root.handlers[:], root.level = handlers, level
    get_settings.cache_clear()


def test_a_worker_refuses_a_study_of_other_data(shared, cli):
    """It exits non-zero, naming the study and both data fingerprints, and scores nothing."""
    store = PgTuning(Database(shared.url))
    fp = {"sha256": "f" * 64, "rows": 5, "batches": ["elsewhere-0123456789ab"]}
    study = open_study(
        store, shared.project.contract, run_id="other-data", fingerprint=fp, owner="test"
    )
    study.publish()
    try:
        outcome = cli("--study", study.name, "--wait", "5")
    finally:
        study.close()
    assert outcome.exit_code != 0
    assert "refusing to score other data" in outcome.output, outcome.output
    assert "batches missing here: elsewhere-0123456789ab" in outcome.output
    assert outcome.exception is None or isinstance(outcome.exception, SystemExit)
    assert study.claims.pending() == []
    store.database.dispose()


def test_a_worker_with_no_open_study_exits_non_zero_after_its_wait(shared, cli, monkeypatch):
    """It waits --wait seconds, then says no study is open, with no traceback."""
    with pg.fresh_database() as empty:
        monkeypatch.setenv("CHAMPION_DATABASE_URL", empty)
        started = time.monotonic()
        outcome = cli("--wait", "1.5")
        waited = time.monotonic() - started
    assert outcome.exit_code != 0
    assert "no open tuning study of project" in outcome.output, outcome.output
    assert "after waiting 1.5s" in outcome.output
    assert waited >= 1.5
    assert outcome.exception is None or isinstance(outcome.exception, SystemExit)


def test_a_worker_without_a_shared_database_says_so(shared, cli, monkeypatch):
    """It exits 2 (a configuration error) when no CHAMPION_DATABASE_URL is set."""
    monkeypatch.delenv("CHAMPION_DATABASE_URL")
    outcome = cli("--wait", "0")
    assert outcome.exit_code == 2
    assert "tune-worker needs a shared tuning database" in outcome.output


def test_claims_of_a_process_that_is_gone_are_not_waited_for_and_are_taken_back(shared):
    """It tells a dead claimer's unfinished claims from a live one's (its liveness lock is
    free once its session ends), and a full budget takes them back for live processes."""
    db = Database(shared.url)
    store = PgTuning(db)
    name = "champion-cycle-liveness"
    a = store.claims(name, budget=2, deadline=store.now() + 60)
    b = store.claims(name, budget=2, deadline=store.now() + 60)
    a.open("test")
    assert a.claim("x", "worker-a", 0).outcome is Outcome.CLAIMED
    assert b.claim("y", "worker-b", 1).outcome is Outcome.CLAIMED
    assert [(p.candidate, p.alive) for p in b.pending()] == [("x", True), ("y", True)]
    assert b.claim("z", "worker-b", 2).outcome is Outcome.SPENT
    a.leave()  # as if worker-a's process died: its session, and lock, are gone
    assert [(p.candidate, p.alive) for p in b.pending()] == [("x", False), ("y", True)]
    assert b.claim("z", "worker-b", 2).outcome is Outcome.CLAIMED  # x's slot taken back
    assert [p.candidate for p in b.pending()] == ["y", "z"]
    b.close()
    b.leave()
    db.dispose()


def test_old_closed_studies_are_pruned_on_postgresql(shared):
    """It deletes, when a study closes, the project's closed studies beyond the newest
    KEEP_STUDIES, with their claims, from Optuna's tables and `tuning_claims`."""
    from champion.training.shared_tuning import KEEP_STUDIES

    db = Database(shared.url)
    store = PgTuning(db)
    contract = shared.project.contract
    fp = {"sha256": "0" * 64, "rows": 1, "batches": ["b"]}
    names = []
    for i in range(KEEP_STUDIES + 2):
        study = open_study(store, contract, run_id=f"prune-{i}", fingerprint=fp, owner="t")
        study.claims.claim("{}", "t", None)
        study.close()
        names.append(study.name)
    left = {s.study_name for s in store.storage.get_all_studies()}
    assert not left & set(names[:2]) and set(names[2:]) <= left
    with db.engine.connect() as conn:
        claimed = {
            r[0] for r in conn.exec_driver_sql("SELECT DISTINCT study FROM tuning_claims").all()
        }
    assert not claimed & set(names[:2]) and set(names[2:]) <= claimed
    db.dispose()
