"""This process: who it acts as (recorded in the ledger), and a lifetime tied to its parent."""

from __future__ import annotations

import getpass
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def actor() -> str:
    """`user@host`: who made a ledger entry."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def exit_with_parent(
    *,
    what: str,
    interval: float = 1.0,
    on_orphan: Callable[[], None] | None = None,
) -> threading.Thread:
    """Watch the parent; when it is gone (this process re-parented), stop this process.

    A supervisor killed with SIGKILL cannot stop its children: they are re-parented to init
    (or a subreaper) and would go on serving, leading the scheduler and retraining. Polling
    `getppid` needs no signal handler, no fork-time hook, and works from any thread.
    """
    parent = os.getppid()

    def orphaned() -> None:
        # SIGTERM first: the service shuts down cleanly (flushes capture, gives up leases).
        os.kill(os.getpid(), signal.SIGTERM)

    stop = on_orphan or orphaned

    def watch() -> None:
        event = threading.Event()
        while not event.wait(interval):
            if os.getppid() != parent:
                log.warning("parent process gone; exiting", extra={"what": what, "parent": parent})
                stop()
                # If a clean stop hangs, leave anyway: an orphan must not keep working.
                if event.wait(30):
                    return
                os._exit(1)

    thread = threading.Thread(target=watch, name=f"{what}-parent-watch", daemon=True)
    thread.start()
    return thread
