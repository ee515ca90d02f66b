"""Swap notices over PostgreSQL LISTEN/NOTIFY: every replica hears an alias move at once.

The ledger sends the notice in the transaction that records a champion (`PgLedger.append`),
so it goes out when, and only if, the record commits. A listener only wakes its model slot,
which then reads the alias from the registry as its poll would: a lost or spurious notice
costs at most one poll interval, never a wrong model.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from champion.training.postgres.database import Database

log = logging.getLogger(__name__)

CHANNEL = "champion_alias"


class SwapListener:
    """A daemon thread on its own session: LISTEN, call `on_notice(payload)` per notice.

    It reconnects (backing off up to `max_backoff` seconds) when the session drops, and
    reports each failure to `on_error`; it stops only when `stop` is called.
    """

    def __init__(
        self,
        database: Database,
        on_notice: Callable[[str], None],
        *,
        on_error: Callable[[], None] | None = None,
        max_backoff: float = 30.0,
    ) -> None:
        self.database = database
        self.on_notice = on_notice
        self.on_error = on_error or (lambda: None)
        self.max_backoff = max_backoff
        self.listening = threading.Event()  # set while a session is LISTENing
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="champion-swap-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 1.0
            except Exception as exc:  # the listener must outlive the database going away
                self.listening.clear()
                self.on_error()
                log.warning(
                    "swap notices unavailable: polling only until reconnected",
                    extra={"error": f"{type(exc).__name__}: {exc}", "retry_seconds": backoff},
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def _listen(self) -> None:
        with self.database.session(application_name="champion swap listener") as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self.listening.set()
            while not self._stop.is_set():
                # Returns after `timeout` seconds without a notice, so `stop` is seen.
                for notice in conn.notifies(timeout=1.0):
                    try:
                        self.on_notice(notice.payload)
                    except Exception:
                        log.exception("swap notice handler failed")
                        self.on_error()
                conn.execute("SELECT 1")  # a dropped session raises here, not silently
        self.listening.clear()
