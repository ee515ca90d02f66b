"""Shared-mode state on a real PostgreSQL: schema, manifest, drift store, cross-process guards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from champion.monitoring.state import DriftFiles
from champion.training.config import Settings
from champion.training.errors import ConfigError, LeaseBusyError
from champion.training.manifest import BatchEntry, BatchStatus, Manifest
from champion.training.postgres.database import Database, parse_url
from champion.training.postgres.drift import PgDriftStore
from champion.training.postgres.leases import AdvisoryLeases
from champion.training.postgres.ledger import PgLedger
from champion.training.postgres.manifest import PgManifest
from champion.training.postgres.predictions import PgPredictionLog
from champion.training.postgres.schema import VERSION_TABLE, metadata
from tests import pg
from tests.polling import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def url() -> Iterator[str]:
    with pg.fresh_database() as found:
        yield found


@pytest.fixture
def database(url: str) -> Iterator[Database]:
    db = Database(url)
    yield db
    db.dispose()


def test_the_migrated_schema_is_exactly_the_declared_one(database):
    """It creates, by migration, every table, column and index the adapters query, no more."""
    with database.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}), metadata
        )
        version = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar_one()
    assert diff == []
    assert version == "0002"


def test_replicas_starting_at_once_migrate_once(url):
    """It lets four processes' first use race: one migrates, none fails, the schema is whole."""
    with ThreadPoolExecutor(4) as pool:
        heads = list(pool.map(lambda _: Database(url).engine.dialect.name, range(4)))
    assert heads == ["postgresql"] * 4
    db = Database(url)
    assert PgLedger(db).append({"event": "cycle"})["seq"] == 1
    db.dispose()


@pytest.mark.parametrize(
    "bad", ["sqlite:///x.db", "mysql://root@127.0.0.1/x", "postgresql://127.0.0.1:5432", "::"]
)
def test_a_database_url_that_is_not_postgresql_is_a_config_error(bad):
    """It refuses, naming the setting, a URL of another engine or with no database."""
    with pytest.raises(ConfigError, match="CHAMPION_DATABASE_URL"):
        parse_url(bad)


def test_an_unreachable_database_is_a_clear_error():
    """It says which database (password hidden) cannot be used, instead of a driver trace."""
    db = Database("postgresql://champion:s3cret@127.0.0.1:1/nowhere")
    with pytest.raises(Exception, match=r"127\.0\.0\.1:1/nowhere") as caught:
        db.engine  # noqa: B018
    assert "s3cret" not in str(caught.value)


# -- the composition root ------------------------------------------------------------------------


def test_the_composition_root_puts_every_state_port_on_postgresql(url, tmp_path, monkeypatch):
    """It builds the PostgreSQL adapters when CHAMPION_DATABASE_URL is set, files otherwise."""
    from champion.service.root import build
    from champion.training.config import load_contract

    contract = load_contract(Path(__file__).resolve().parents[2] / "champion.toml")
    shared = build(
        Settings(home=tmp_path / "a", database_url=url), contract=contract, configure_logging=False
    )
    assert isinstance(shared.ledger, PgLedger)
    assert isinstance(shared.leases, AdvisoryLeases)
    assert isinstance(shared.prediction_log, PgPredictionLog)
    assert isinstance(shared.drift_store, PgDriftStore)
    assert isinstance(shared.manifest().storage, PgManifest)
    local = build(Settings(home=tmp_path / "b"), contract=contract, configure_logging=False)
    assert isinstance(local.drift_store, DriftFiles)
    assert not local.shared
    assert not (tmp_path / "a" / "ledger.jsonl").exists()
    shared.database.dispose()


# -- the manifest --------------------------------------------------------------------------------


def _entry(n: int) -> BatchEntry:
    return BatchEntry(
        file=f"b{n}.csv", sha256=f"{n:064x}", status=BatchStatus.ACCEPTED, rows=10 + n
    )


def test_the_manifest_round_trips_through_the_table(database):
    """It reads back every entry and the classes as saved, in the file manifest's form."""
    first = Manifest(PgManifest(database))
    assert first.batches == {}
    first.batches = {f"id{n}": _entry(n) for n in range(3)}
    first.classes = [0, 1]
    first.save()
    again = Manifest(PgManifest(database))
    assert again.records() == first.records()
    assert again.classes == [0, 1]
    assert again.accepted() == ["id0", "id1", "id2"]


def test_two_writers_changing_different_batches_both_keep_their_change(database):
    """It writes only what a copy changed: a retire by hand and a cycle's marks both stay."""
    seed = Manifest(PgManifest(database))
    seed.batches = {f"id{n}": _entry(n) for n in range(2)}
    seed.save()
    by_hand, cycle = Manifest(PgManifest(database)), Manifest(PgManifest(database))
    by_hand.retire("id0", reason="bad sensor", who="ops")
    cycle.mark_consumed(["id1"], "run-9")
    now = Manifest(PgManifest(database))
    assert now.batches["id0"].status is BatchStatus.RETIRED
    assert now.batches["id1"].consumed_by == "run-9"


# -- the drift store -----------------------------------------------------------------------------


def test_the_drift_store_keeps_state_latest_and_a_trimmed_history(database):
    """It reads back the state and summary, and trims the history to `keep` past 10 %."""
    store = PgDriftStore(database)
    assert store.read_state() is None and store.latest() is None
    store.write_state({"streak": 2, "last_tested_id": 9, "last_trigger": None, "version": "3"})
    store.write_latest({"at": "now", "streak": 2})
    for i in range(40):
        store.append_history({"n": i}, keep=10)
        assert len(store.history()) <= 11
    other = PgDriftStore(database)  # another replica's leader
    assert other.read_state() == {
        "streak": 2,
        "last_tested_id": 9,
        "last_trigger": None,
        "version": "3",
    }
    assert other.latest() == {"at": "now", "streak": 2}
    kept = [e["n"] for e in other.history()]
    assert len(kept) >= 10 and kept == list(range(40 - len(kept), 40))


# -- across processes ----------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    from champion.training.postgres.database import Database
    from champion.training.postgres.leases import AdvisoryLeases
    lease = AdvisoryLeases(Database(sys.argv[1]), owner="replica-a").acquire("scheduler")
    print("held", flush=True)
    time.sleep(600)
    """
)


def test_a_killed_holder_frees_its_lease_at_once(database, url):
    """It frees a lease whose holder died by SIGKILL: the server ends the session and its lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, url], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        mine = AdvisoryLeases(database, owner="replica-b")
        assert mine.holder("scheduler") == "replica-a"
        with pytest.raises(LeaseBusyError, match="replica-a"):
            mine.acquire("scheduler")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert eventually(lambda: mine.holder("scheduler") is None, within=5)
        lease = mine.acquire("scheduler", timeout=1)
        assert mine.holder("scheduler") == "replica-b"
        lease.release()
    finally:
        proc.kill()
        proc.wait(10)


def test_a_lease_whose_session_the_server_ends_is_no_longer_alive(database):
    """It reports the lease lost when its session ends (a restart, a network cut), so a
    leader can step down before another replica leads."""
    lease = AdvisoryLeases(database, owner="a").acquire("scheduler")
    assert lease.alive()
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'champion lease scheduler'"
            )
        )
    assert eventually(lambda: not lease.alive(), within=5)
    other = AdvisoryLeases(database, owner="b").acquire("scheduler", timeout=5)
    assert other.alive()
    lease.release()  # a late release never frees the new holder
    assert AdvisoryLeases(database).holder("scheduler") == "b"
    other.release()


APPENDER = textwrap.dedent(
    """
    import sys
    from champion.training.postgres.database import Database
    from champion.training.postgres.ledger import PgLedger
    ledger = PgLedger(Database(sys.argv[1]))
    for i in range(25):
        ledger.append({"event": "cycle", "by": sys.argv[2], "n": i})
    """
)


def test_appends_from_several_processes_are_numbered_without_gap_or_repeat(database, url):
    """It numbers 100 appends racing from four processes 1..100, each once."""
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, url, f"p{k}"]) for k in range(4)]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    entries = PgLedger(database).entries()
    assert [e["seq"] for e in entries] == list(range(1, 101))
    for k in range(4):  # each process's own entries in its own order
        assert [e["n"] for e in entries if e["by"] == f"p{k}"] == list(range(25))


def test_two_replicas_labelling_one_row_label_it_once(database):
    """It lets exactly one of two concurrent label calls for the same rows win."""
    from champion.monitoring.capture import Captured

    a, b = PgPredictionLog(database), PgPredictionLog(database)
    a.write([Captured("r", i, 1.0, "1", {"x": i}, 1, 0.5) for i in range(50)])
    items = [("r", i, 1) for i in range(50)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda store: store.label(items), [a, b]))
    assert sorted(len(done) for _, done in results) == [0, 50]
    assert len(b.labelled(limit=100)) == 50


def test_a_nul_character_is_unstorable_not_a_failed_write(database):
    """It counts a row PostgreSQL text cannot hold as unserialisable and keeps the others."""
    from champion.monitoring.capture import Captured

    log = PgPredictionLog(database)
    written = log.write(
        [
            Captured("ok", 0, 1.0, "1", {"x": "\x00"}, 1, None),
            Captured("n\x00", 0, 1.0, "1", {}, 1, None),
        ]
    )
    assert (written.inserted, written.unserialisable) == (1, 1)
    assert log.recent(limit=1)[0]["features"] == {"x": "\x00"}
    assert log.label([("n\x00", 0, 1)]) == (["n\x00#0"], [])


# -- swap notices --------------------------------------------------------------------------------


def test_a_recorded_champion_is_heard_by_every_listener_on_commit(database):
    """It notifies each listening replica when, and only when, an entry naming a champion
    commits; a listener whose session the server ends reconnects and hears the next one."""
    from champion.training.postgres.notify import SwapListener

    heard: list[list[str]] = [[], []]
    errors: list[int] = []
    listeners = [
        SwapListener(database, heard[i].append, on_error=lambda: errors.append(1), max_backoff=0.2)
        for i in range(2)
    ]
    for listener in listeners:
        listener.start()
    try:
        assert all(eventually(lambda it=x: it.listening.is_set(), within=5) for x in listeners)
        ledger = PgLedger(database)
        ledger.append({"event": "cycle", "verdict": "HOLD"})
        ledger.append({"event": "cycle", "verdict": "PROMOTE", "champion_after": "7"})
        assert eventually(lambda: heard == [["7"], ["7"]], within=5), heard
        with database.engine.begin() as conn:  # the server ends the listeners' sessions
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = 'champion swap listener'"
                )
            )
        assert eventually(lambda: len(errors) >= 2, within=5)
        assert all(eventually(lambda it=x: it.listening.is_set(), within=5) for x in listeners)
        ledger.append({"event": "rollback", "champion_after": "6"})
        assert eventually(lambda: heard == [["7", "6"], ["7", "6"]], within=5), heard
        assert all(listener.is_alive() for listener in listeners)
    finally:
        for listener in listeners:
            listener.stop()
    assert not any(listener.is_alive() for listener in listeners)
