"""The port contracts (tests/unit/test_port_contracts.py) on the PostgreSQL adapters.

Each contract test runs here unchanged: the fixtures it asks for build the shared-mode
adapter on a real PostgreSQL, one fresh database for this module, emptied between tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text

from champion.training import ports
from champion.training.postgres.database import Database
from champion.training.postgres.drift import PgDriftStore
from champion.training.postgres.leases import AdvisoryLeases
from champion.training.postgres.ledger import PgLedger
from champion.training.postgres.predictions import PgPredictionLog
from champion.training.postgres.schema import metadata
from tests import pg
from tests.fakes import FakeClock
from tests.unit import test_port_contracts as contracts

pytestmark = pytest.mark.integration

CONTRACTS = [
    name
    for name in dir(contracts)
    if name.startswith("test_")
    and any(
        fixture in contracts.__dict__[name].__code__.co_varnames
        for fixture in ("ledger", "leases_for", "store", "store_for", "drift_store")
    )
]
globals().update({name: getattr(contracts, name) for name in CONTRACTS})


@pytest.fixture(scope="module")
def database() -> Iterator[Database]:
    with pg.fresh_database() as url:
        db = Database(url)
        yield db
        db.dispose()


@pytest.fixture(autouse=True)
def empty(database: Database) -> None:
    names = ", ".join(t.name for t in metadata.sorted_tables)
    with database.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))


@pytest.fixture(params=["postgres"])
def ledger(database: Database) -> ports.LedgerStore:
    return PgLedger(database, clock=FakeClock())


@pytest.fixture(params=["postgres"])
def leases_for(database: Database) -> Iterator[Callable[[str], ports.Leases]]:
    yield lambda owner: AdvisoryLeases(database, owner=owner)


@pytest.fixture(params=["postgres"])
def store_for(database: Database) -> Callable[..., ports.PredictionStore]:
    def make(*, max_rows: int = 1_000) -> ports.PredictionStore:
        return PgPredictionLog(database, max_rows=max_rows)

    return make


@pytest.fixture(params=["postgres"])
def drift_store(database: Database) -> ports.DriftStore:
    return PgDriftStore(database)


@pytest.fixture
def store(store_for: Callable[..., Any]) -> ports.PredictionStore:
    return store_for()


def test_every_ledger_lease_and_prediction_contract_runs_here():
    """It collects the contract tests of the four ports (none silently left out)."""
    assert len(CONTRACTS) >= 38
