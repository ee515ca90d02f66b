"""The `Leases` port on PostgreSQL advisory locks, each held on a session of its own.

The server releases a session's advisory locks when the session ends, as the kernel drops a
`flock` when its holder dies: a holder killed with SIGKILL frees its lease at once (its socket
closes), one on a vanished host once TCP keepalives give up (about 30 s, `KEEPALIVES`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from champion.training.errors import LeaseBusyError
from champion.training.postgres.database import Database, DatabaseError, guarded, lock_key
from champion.training.process import actor

log = logging.getLogger(__name__)

_HOLDER = """
SELECT h.owner FROM pg_locks l
LEFT JOIN lease_holders h ON h.name = %(name)s AND h.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
    SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %(hi)s AND l.objid = %(lo)s AND l.objsubid = 1
"""


def _halves(key: int) -> tuple[int, int]:
    """The (classid, objid) under which pg_locks shows a bigint advisory key."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


class AdvisoryLease:
    """A held lease: its session holds the advisory lock; `release` ends the session."""

    def __init__(self, name: str, owner: str, session: Any) -> None:
        self.name = name
        self.owner = owner
        self._session = session
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is None:
            return  # released already: never touch whoever holds it now
        with suppress(Exception):  # closing the session frees the lock in any case
            session.execute(
                "DELETE FROM lease_holders WHERE name = %s AND pid = pg_backend_pid()", (self.name,)
            )
        with suppress(Exception):
            session.close()

    def alive(self) -> bool:
        """Whether the session holding the lock still answers (False: the lease is gone)."""
        with self._lock:
            session = self._session
            if session is None:
                return False
            try:
                session.execute("SELECT 1")
            except Exception:
                return False
            return True


class AdvisoryLeases:
    """Named single-holder leases across every replica using one database."""

    owner: str
    domain: str

    def __init__(self, database: Database, *, owner: str | None = None) -> None:
        self.database = database
        self.owner = owner or f"{actor()}:{os.getpid()}"
        url = database.url
        self.domain = f"postgresql://{url.host}:{url.port or 5432}/{url.database}"

    def acquire(self, name: str, *, timeout: float = 0.0) -> AdvisoryLease:
        self.database.engine  # noqa: B018 - the schema (lease_holders) exists before we write it
        session = self.database.session(application_name=f"champion lease {name}")
        key = lock_key(name)
        try:
            if not self._lock(session, key, timeout):
                holder = self.holder(name) or "another session"
                raise LeaseBusyError(
                    f"the '{name}' lease is held by {holder} (waited {timeout:g}s)"
                )
            session.execute(
                "INSERT INTO lease_holders (name, owner, pid, since)"
                " VALUES (%s, %s, pg_backend_pid(), %s)"
                " ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner,"
                " pid = EXCLUDED.pid, since = EXCLUDED.since",
                (name, self.owner, time.time()),
            )
        except BaseException as exc:
            with suppress(Exception):
                session.close()
            if isinstance(exc, LeaseBusyError):
                raise
            import psycopg

            if isinstance(exc, psycopg.Error):
                raise DatabaseError(f"lease '{name}': {exc}") from exc
            raise
        return AdvisoryLease(name, self.owner, session)

    @staticmethod
    def _lock(session: Any, key: int, timeout: float) -> bool:
        """Take the advisory lock, waiting up to `timeout` s on the server (no polling: the
        wait ends the moment the holder's session lets go); False when it stays held."""
        if timeout <= 0:
            return bool(session.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])
        import psycopg

        session.execute(f"SET lock_timeout = {max(1, round(timeout * 1000))}")
        try:
            session.execute("SELECT pg_advisory_lock(%s)", (key,))
        except psycopg.errors.LockNotAvailable:
            return False
        finally:
            session.execute("RESET lock_timeout")
        return True

    @contextmanager
    def hold(self, name: str, *, timeout: float = 0.0) -> Iterator[AdvisoryLease]:
        held = self.acquire(name, timeout=timeout)
        try:
            yield held
        finally:
            held.release()

    @guarded("lease check")
    def holder(self, name: str) -> str | None:
        """Who holds the lease: the owner its session recorded ("unknown" when it recorded
        none yet), None when no session holds it."""
        hi, lo = _halves(lock_key(name))
        with self.database.engine.connect() as conn:
            row = conn.exec_driver_sql(_HOLDER, {"name": name, "hi": hi, "lo": lo}).first()
        if row is None:
            return None
        return row[0] or "unknown"
