"""Single-writer leases: one retrain cycle at a time, one writer of aliases and the ledger."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from champion.training.errors import LeaseBusyError

# flock-based: the kernel drops the lock when its holder dies, even by SIGKILL, so a crashed
# cycle never wedges the next one.


@contextmanager
def lease(lock_dir: Path, name: str, *, timeout: float = 0.0) -> Iterator[None]:
    """Hold the named lease, waiting up to `timeout` seconds; raise LeaseBusyError if held."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_dir / f"{name}.lock"), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise LeaseBusyError(
            f"the '{name}' lease is held by another process (waited {timeout:g}s)"
        ) from None
    try:
        yield
    finally:
        lock.release()


CYCLE = "cycle"
REGISTRY = "registry"
