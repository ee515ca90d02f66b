"""One shared-mode database: its engine, its schema migrations, its dedicated sessions."""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from champion.training.errors import ConfigError, StoreUnavailable
from champion.training.postgres.schema import VERSION_TABLE

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
SCHEMES = ("postgresql", "postgres")
# Ask the server to notice a vanished peer within about 30 s (a dead host, a cut link): it
# then ends that session, and with it the session's advisory locks.
KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 4,
}


class DatabaseError(StoreUnavailable):
    """The shared database is unreachable or refused a statement."""


F = TypeVar("F", bound=Callable[..., Any])


def guarded(what: str) -> Callable[[F], F]:
    """The driver's errors as a DatabaseError naming what failed (the service answers 503,
    the CLI prints it, background loops count it): never a bare driver traceback."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except SQLAlchemyError as exc:
                raise DatabaseError(f"{what}: the shared database failed: {_reason(exc)}") from exc

        return call  # type: ignore[return-value]

    return wrap


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name (the same on every host)."""
    return int.from_bytes(
        hashlib.sha256(f"champion:{name}".encode()).digest()[:8], "big", signed=True
    )


def parse_url(url: str) -> URL:
    """The SQLAlchemy URL of a `postgresql://` (or `postgres://`) database URL, on psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"CHAMPION_DATABASE_URL is not a database URL: {exc}") from None
    backend = parsed.get_backend_name()
    if backend not in SCHEMES or parsed.get_driver_name() not in ("psycopg", "", "postgresql"):
        raise ConfigError(
            "CHAMPION_DATABASE_URL must be a PostgreSQL URL "
            f"(postgresql://user@host:5432/db), not {parsed.drivername}://…"
        )
    if not parsed.database:
        raise ConfigError("CHAMPION_DATABASE_URL names no database (…:5432/<database>)")
    return parsed.set(drivername="postgresql+psycopg")


class Database:
    """The engine (a small pool) plus the schema check, done once per process on first use."""

    def __init__(self, url: str, *, pool_size: int = 4) -> None:
        self.url = parse_url(url)
        self._pool_size = pool_size
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    @property
    def safe_url(self) -> str:
        """The URL with its password hidden (for logs and errors)."""
        return self.url.render_as_string(hide_password=True)

    @property
    def libpq(self) -> str:
        """The URL as psycopg's own `connect` takes it (for dedicated sessions)."""
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    @property
    def engine(self) -> Engine:
        """The migrated database's engine (migrated by whichever process gets there first)."""
        with self._lock:
            if self._engine is None:
                engine = create_engine(
                    self.url,
                    pool_size=self._pool_size,
                    max_overflow=self._pool_size,
                    pool_pre_ping=True,
                    # A black-holed host fails in seconds instead of hanging a request.
                    connect_args={**KEEPALIVES, "connect_timeout": 10},
                )
                try:
                    migrate(engine)
                except SQLAlchemyError as exc:
                    engine.dispose()
                    raise DatabaseError(
                        f"the database {self.safe_url} cannot be used: {_reason(exc)}"
                    ) from exc
                self._engine = engine
            return self._engine

    def session(self, *, application_name: str = "champion") -> Any:
        """A dedicated psycopg connection, outside the pool (a lease or LISTEN lives on it)."""
        import psycopg

        try:
            return psycopg.connect(
                self.libpq,
                autocommit=True,
                application_name=application_name[:63],
                connect_timeout=10,
                **KEEPALIVES,
            )
        except psycopg.Error as exc:
            raise DatabaseError(f"cannot connect to {self.safe_url}: {exc}") from exc

    def dispose(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0]


def migrate(engine: Engine) -> str:
    """Bring the schema to the newest revision; returns it. Safe when replicas start at once:
    the upgrade runs under a transaction-scoped advisory lock, so one migrates, the rest wait
    and find nothing to do."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()
    if current == head:
        return str(head)
    with engine.begin() as conn:
        conn.execute(select(func.pg_advisory_xact_lock(lock_key("schema"))))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    log.info("shared database migrated", extra={"from": current, "to": head})
    return str(head)
