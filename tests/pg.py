"""A real PostgreSQL for the tests: one fresh database per use, dropped afterwards.

The server is the machine's own (127.0.0.1:5432, trust auth; `make postgres` starts it).
`CHAMPION_TEST_POSTGRES` names another server. When none answers, the tests that need one
skip with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import pytest

SERVER = os.environ.get("CHAMPION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@lru_cache(maxsize=1)
def unavailable() -> str | None:
    """Why no PostgreSQL can be used here (None when one answers)."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - psycopg is a project dependency
        return f"psycopg is not installed: {exc}"
    try:
        with psycopg.connect(SERVER, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"no PostgreSQL answers at {SERVER} (`make postgres` starts it): {exc}"
    return None


def require() -> None:
    """Skip the calling test, with the reason, when no PostgreSQL answers."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(sql)


@contextmanager
def fresh_database(prefix: str = "champion_test") -> Iterator[str]:
    """A new, empty database; yields its URL (`postgresql://…`) and drops it afterwards."""
    require()
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    base, _, _ = SERVER.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        # FORCE ends what a killed test process left connected.
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
