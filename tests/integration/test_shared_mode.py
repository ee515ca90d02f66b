"""Shared mode end to end: two replicas on PostgreSQL, an MLflow server and S3.

Real engines only: the machine's PostgreSQL (fresh databases), `mlflow server` on PostgreSQL
with `--serve-artifacts`, moto's S3 server, and two `bentoml serve` replicas with their own
homes and ports, each one worker. The figures (cycles per tick, failover time, swap
propagation with and without notices, race outcomes) are printed at the end of the module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from champion.service.root import Components, build
from champion.training import actions
from champion.training.config import Settings, load_contract
from champion.training.cycle import run_cycle
from champion.training.demo.simulate import SimulationPlan, simulate_batches
from champion.training.postgres.database import Database
from champion.training.postgres.drift import PgDriftStore
from champion.training.postgres.leases import AdvisoryLeases
from champion.training.postgres.ledger import PgLedger
from champion.training.postgres.predictions import PgPredictionLog
from champion.training.records import Verdict
from tests import pg
from tests.integration.conftest import FIGURES, project_raw
from tests.integration.test_serve import ROW, stop_group
from tests.mlflow_server import free_port, mlflow_server
from tests.polling import eventually
from tests.s3 import S3Server, moto_s3

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BENTOML = Path(sys.executable).with_name("bentoml")
TOKEN = "shared-admin-token"
FEEDBACK_TOKEN = "shared-feedback-token"
TICK_SECONDS = 6.0  # the schedule's interval (0.1 minute)


@dataclass
class Replica:
    name: str
    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    def readyz(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.base}/readyz", timeout=5).json())

    def version(self) -> str | None:
        try:
            return self.readyz().get("model_version")
        except httpx.HTTPError:
            return None

    def kill(self) -> None:
        """SIGKILL the whole replica: supervisor and worker, no clean shutdown."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@dataclass
class Cluster:
    root: Path
    state_url: str
    tracking_uri: str
    s3: S3Server
    project_file: Path
    figures: dict[str, Any] = field(default_factory=dict)

    def settings(self, home: str, **more: Any) -> Settings:
        return Settings(
            home=self.root / home,
            project_file=self.project_file,
            database_url=self.state_url,
            lease_timeout_seconds=30,
            **more,
        )

    def components(self, home: str) -> Components:
        return build(
            self.settings(home),
            contract=load_contract(self.project_file),
            configure_logging=False,
            tracking_uri=self.tracking_uri,
        )

    def database(self) -> Database:
        return Database(self.state_url)

    def land(
        self, batches: int, *, seed: int, rows: int = 600, drift_at: int | None = None
    ) -> None:
        """Simulated batches, put into the S3 landing zone."""
        local = self.root / f"made-{seed}"
        plan = SimulationPlan(batches=batches, rows=rows, drift_at=drift_at, seed=seed)
        for path in simulate_batches(plan, landing_zone=local):
            self.s3.put(f"landing/{seed}-{path.name}", path.read_bytes())

    def env(self, home: str, **more: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            CHAMPION_PROJECT_FILE=str(self.project_file),
            CHAMPION_HOME=str(self.root / home),
            CHAMPION_DATABASE_URL=self.state_url,
            MLFLOW_TRACKING_URI=self.tracking_uri,
            CHAMPION_LOG_FORMAT="json",
            CHAMPION_ADMIN_TOKEN=TOKEN,
            CHAMPION_FEEDBACK_TOKEN=FEEDBACK_TOKEN,
            BENTOML_CONFIG_OPTIONS="services.champion.workers=1",
            BENTOML_DO_NOT_TRACK="true",
        )
        env.update(more)
        return env

    @contextmanager
    def replica(self, home: str, **env: str) -> Iterator[Replica]:
        port = free_port()
        log = self.root / f"{home}-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    str(BENTOML),
                    "serve",
                    "champion.service.app:Champion",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                cwd=self.root,
                env=self.env(home, **env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        replica = Replica(home, f"http://127.0.0.1:{port}", proc, log)
        try:
            up = eventually(
                lambda: proc.poll() is not None or replica.version() is not None, within=90
            )
            assert up and proc.poll() is None, log.read_text()[-3000:]
            yield replica
        finally:
            if proc.poll() is None:
                stop_group(proc)

    def pair(self, stack: ExitStack, tag: str, **env: str) -> tuple[Replica, Replica]:
        """Two replicas, started one after the other (their imports compete for two cores)."""
        return (
            stack.enter_context(self.replica(f"{tag}-a", **env)),
            stack.enter_context(self.replica(f"{tag}-b", **env)),
        )


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Cluster]:
    import tomli_w

    pg.require()
    root = tmp_path_factory.mktemp("shared")
    with ExitStack() as stack:
        state_url = stack.enter_context(pg.fresh_database("champion_state"))
        mlflow_db = stack.enter_context(pg.fresh_database("champion_mlflow"))
        tracking = stack.enter_context(mlflow_server(mlflow_db, root / "mlflow-artifacts"))
        s3 = stack.enter_context(moto_s3())
        raw = project_raw()
        raw["data"] |= {
            "landing_zone": s3.uri("landing"),
            "quarantine": s3.uri("quarantine"),
            "store": s3.uri("store"),
            "manifest": str(root / "unused-manifest.json"),  # shared mode: in PostgreSQL
        }
        raw["schedule"] = {"interval_minutes": TICK_SECONDS / 60, "misfire_grace_seconds": 5}
        project_file = root / "champion.toml"
        project_file.write_text(tomli_w.dumps(raw))
        found = Cluster(root, state_url, tracking, s3, project_file)
        # Champion v1 on two batches, then v2 registered on one more (held, not promoted).
        boot = found.components("boot")
        found.land(2, seed=3)
        first = run_cycle(boot.cycle_context(progress=False), trigger="test")
        assert first.verdict is Verdict.PROMOTE, first.reason
        found.land(1, seed=4)
        second = run_cycle(boot.cycle_context(progress=False), trigger="test")
        assert second.version is not None, second.reason
        found.figures["versions"] = {"champion": first.version, "held": second.version}
        FIGURES["shared mode"] = found.figures
        yield found


def _converged(replicas: tuple[Replica, ...], version: str, within: float) -> float | None:
    """Seconds until every replica serves `version` (None when they did not within)."""
    started = time.monotonic()
    if eventually(lambda: all(r.version() == version for r in replicas), within=within, step=0.02):
        return round(time.monotonic() - started, 3)
    return None


def _swap(cluster: Cluster, home: str, to: str) -> None:
    """A manual promotion of `to`, made from the components of replica `home`."""
    c = cluster.components(home)
    actions.promote(
        to, reason="shared-mode test", registry=c.registry, ledger=c.ledger, leases=c.leases
    )


# -- swaps --------------------------------------------------------------------------------------


def test_a_promotion_is_served_by_both_replicas_within_a_second_by_notice(cluster):
    """It notifies every replica of an alias move: both serve the new champion within a
    second, though their poll interval is a minute."""
    v1, v2 = cluster.figures["versions"]["champion"], cluster.figures["versions"]["held"]
    with ExitStack() as stack:
        pair = cluster.pair(stack, "notice", CHAMPION_SCHEDULER="false", CHAMPION_POLL_SECONDS="60")
        assert _converged(pair, v1, within=30) is not None
        times = []
        for target in (v2, v1, v2):
            _swap(cluster, "notice-a", target)  # returns once the ledger entry committed
            seconds = _converged(pair, target, within=10)
            assert seconds is not None, f"replicas did not serve v{target}"
            times.append(seconds)
        cluster.figures["swap propagation with notices, after the commit (s)"] = times
        assert max(times) < 1.0, times
        _swap(cluster, "notice-a", v1)
        assert _converged(pair, v1, within=10) is not None


def test_without_notices_both_replicas_follow_within_the_poll_interval(cluster):
    """It falls back to the alias poll when notices are off: both replicas follow a
    promotion within the poll interval (2 s here), and not by notice."""
    v1, v2 = cluster.figures["versions"]["champion"], cluster.figures["versions"]["held"]
    poll = 2.0
    with ExitStack() as stack:
        pair = cluster.pair(
            stack,
            "poll",
            CHAMPION_SCHEDULER="false",
            CHAMPION_POLL_SECONDS=str(poll),
            CHAMPION_SWAP_NOTICES="false",
        )
        assert _converged(pair, v1, within=30) is not None
        times = []
        for target in (v2, v1):
            _swap(cluster, "poll-a", target)
            seconds = _converged(pair, target, within=poll + 10)
            assert seconds is not None
            times.append(seconds)
        cluster.figures[f"swap propagation, notices off, poll every {poll:g} s (s)"] = times
        assert max(times) < poll + 2.0, times
        for replica in pair:
            assert "swap listener" not in replica.log.read_text()


# -- promotions racing ---------------------------------------------------------------------------


def test_two_promotions_racing_from_two_replicas_move_the_alias_once(cluster):
    """It lets one of two promotions decided against the same champion move the alias; the
    other ends STALE in the ledger, and the alias is the winner's."""
    v1, v2 = cluster.figures["versions"]["champion"], cluster.figures["versions"]["held"]
    a, b = cluster.components("race-a"), cluster.components("race-b")
    assert a.registry.alias("champion").version == v1  # type: ignore[union-attr]
    # A concept change: replica A's challenger beats v1 on the fresh rows and is promoted.
    cluster.land(2, seed=11, drift_at=0)
    moved = threading.Event()

    def at(stage: str) -> None:
        if stage == "promote":  # A has judged against v1; B moves the alias first
            _swap(cluster, "race-b", v2)
            moved.set()

    ctx = a.cycle_context(progress=False)
    ctx.checkpoint = at
    result = run_cycle(ctx, trigger="race")
    outcomes = {"B (manual promote)": "moved", "A (cycle)": result.verdict.value}
    cluster.figures["race outcomes"] = outcomes
    if not moved.is_set():
        pytest.fail(f"replica A's cycle never reached the promotion: {result.reason}")
    assert result.verdict is Verdict.STALE, result.reason
    champion = b.registry.alias("champion")
    assert champion is not None and champion.version == v2
    stale = b.ledger.last("cycle")
    assert stale is not None and stale["run_id"] == result.run_id
    assert stale["verdict"] == "STALE" and stale["champion_after"] == v2
    assert b.ledger.last_champion() == v2  # the ledger still names the registry's champion
    assert a.registry.version(result.version).verdict == "STALE"  # type: ignore[arg-type]
    _swap(cluster, "race-b", v1)


# -- one leader, feedback across replicas, drift once ---------------------------------------------


def _leader(db: Database, pair: tuple[Replica, ...]) -> Replica | None:
    holder = AdvisoryLeases(db).holder("scheduler")
    if holder is None or not holder.rpartition(":")[2].isdigit():
        return None  # free, or taken a moment ago and its owner not yet recorded
    pid = int(holder.rpartition(":")[2])
    return next((r for r in pair if r.readyz().get("pid") == pid), None)


def test_one_leader_across_replicas_feedback_anywhere_drift_once_and_failover(cluster):
    """With both schedulers on: one cycle per tick across the replicas; a prediction answered
    by one replica is labelled through the other; drift is tested once, over both replicas'
    traffic; killing the leader's replica hands the lead to the other within seconds."""
    db = cluster.database()
    ledger = PgLedger(db)
    window = 200
    with ExitStack() as stack:
        pair = cluster.pair(
            stack,
            "lead",
            CHAMPION_SCHEDULER="true",
            CHAMPION_POLL_SECONDS="5",
            CHAMPION_MONITOR_SECONDS="1",
            CHAMPION_DRIFT_WINDOW_ROWS=str(window),
        )
        assert eventually(lambda: _leader(db, pair) is not None, within=30)
        leader = _leader(db, pair)
        assert leader is not None
        other = next(r for r in pair if r is not leader)
        shown = subprocess.run(
            [str(BENTOML.with_name("champion")), "status"],
            env=cluster.env("status"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "(shared mode)" in shown.stdout and "postgresql" in shown.stdout
        assert f"scheduler held by {AdvisoryLeases(db).holder('scheduler')}" in shown.stdout

        # Feedback: answered by one replica, labelled through the other.
        rid = "shared-feedback-1"
        r = httpx.post(
            f"{other.base}/predict", json={"instances": [ROW]}, headers={"X-Request-ID": rid}
        )
        assert r.status_code == 200, r.text
        log = PgPredictionLog(db)
        assert eventually(lambda: any(x["request_id"] == rid for x in log.recent(limit=50)), 10)
        r = httpx.post(
            f"{leader.base}/feedback",
            json=[{"request_id": rid, "row": 0, "label": 1}],
            headers={"Authorization": f"Bearer {FEEDBACK_TOKEN}"},
        )
        assert r.status_code == 200 and r.json() == {"labelled": 1}, r.text

        # Drift: half the window through each replica; tested once, over both.
        drift = PgDriftStore(db)
        before = len([h for h in drift.history() if h.get("tested")])
        for k, replica in enumerate(pair):
            rows = [ROW | {"salary": 30000.0 + i} for i in range(window // 2)]
            r = httpx.post(
                f"{replica.base}/predict",
                json={"instances": rows},
                headers={"X-Request-ID": f"drift-{k}"},
            )
            assert r.status_code == 200, r.text

        def tested() -> list[dict[str, Any]]:
            return [h for h in drift.history() if h.get("tested")]

        assert eventually(lambda: len(tested()) > before, within=20), drift.latest()
        time.sleep(3)  # several more monitoring ticks, on whichever replica leads
        latest = drift.latest()
        assert latest is not None and latest["drift_window"]["tested"] in (True, False)
        assert len(tested()) == before + 1, "the same rows were tested more than once"
        cluster.figures["drift windows tested over both replicas' 2 x 100 rows"] = (
            len(tested()) - before
        )

        # One cycle per tick across both replicas.
        start_seq = ledger.entries()[-1]["seq"] if ledger.entries() else 0

        def scheduled() -> list[dict[str, Any]]:
            entries = ledger.entries()
            return [e for e in entries if e["seq"] > start_seq and e.get("trigger") == "schedule"]

        started = time.monotonic()
        time.sleep(4 * TICK_SECONDS)
        # On a loaded machine a tick can miss its 5 s grace and be skipped: wait for two.
        assert eventually(lambda: len(scheduled()) >= 2, within=8 * TICK_SECONDS), scheduled()
        elapsed = time.monotonic() - started
        ticks = scheduled()
        # Never more cycles than ticks, whichever replica ran them.
        assert len(ticks) <= elapsed / TICK_SECONDS + 1, ticks
        assert not any("Another retrain cycle" in e["reason"] for e in ticks)
        cluster.figures[f"scheduled cycles in {elapsed:.0f} s of {TICK_SECONDS:g} s ticks"] = len(
            ticks
        )

        # Failover: kill -9 the leader's replica.
        killed_at = time.monotonic()
        leader.kill()
        assert eventually(lambda: _leader(db, (other,)) is other, within=20)
        failover = round(time.monotonic() - killed_at, 2)
        cluster.figures["failover after kill -9 of the leader's replica (s)"] = failover
        assert failover < 5  # the server frees the lock at once; the standby waits on it
        seq = ledger.entries()[-1]["seq"]
        assert eventually(
            lambda: any(
                e["seq"] > seq and e.get("trigger") == "schedule" for e in ledger.entries()
            ),
            within=3 * TICK_SECONDS,
        ), "the new leader never ran a scheduled cycle"
    db.dispose()
