"""Single-holder leases on `flock` files: one cycle, one alias and ledger writer, one leader."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from champion.training.errors import LeaseBusyError
from champion.training.process import actor

# flock-based: the kernel drops the lock when its holder dies, even by SIGKILL, so a crashed
# cycle never wedges the next one.

CYCLE = "cycle"
REGISTRY = "registry"
SCHEDULER = "scheduler"


class FileLease:
    """A held flock lease; the owner's identity is written beside it for `holder`."""

    def __init__(self, name: str, owner: str, lock: FileLock, owner_file: Path) -> None:
        self.name = name
        self.owner = owner
        self._lock = lock
        self._owner_file = owner_file

    def release(self) -> None:
        if self._lock.is_locked:
            self._owner_file.unlink(missing_ok=True)
            self._lock.release()

    def alive(self) -> bool:
        """A flock is held until released: this process is alive to ask."""
        return self._lock.is_locked


class FileLeases:
    """The `Leases` adapter for one host: lock files in `lock_dir`."""

    owner: str
    domain: str

    def __init__(self, lock_dir: Path, *, owner: str | None = None) -> None:
        self.lock_dir = lock_dir
        self.owner = owner or f"{actor()}:{os.getpid()}"
        self.domain = f"file://{socket.gethostname()}{lock_dir.resolve()}"

    def acquire(self, name: str, *, timeout: float = 0.0) -> FileLease:
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        # Not thread-local: a lease taken by one thread (the scheduler's standby) may be
        # released by another (shutdown).
        lock = FileLock(str(self.lock_dir / f"{name}.lock"), timeout=timeout, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            raise LeaseBusyError(
                f"the '{name}' lease is held by another process (waited {timeout:g}s)"
            ) from None
        owner_file = self.lock_dir / f"{name}.owner"
        with contextlib.suppress(OSError):  # the identity is for operators; the lock decides
            owner_file.write_text(self.owner, encoding="utf-8")
        return FileLease(name, self.owner, lock, owner_file)

    @contextmanager
    def hold(self, name: str, *, timeout: float = 0.0) -> Iterator[FileLease]:
        held = self.acquire(name, timeout=timeout)
        try:
            yield held
        finally:
            held.release()

    def holder(self, name: str) -> str | None:
        try:
            held = self.acquire(name, timeout=0.0)
        except LeaseBusyError:
            try:
                return (self.lock_dir / f"{name}.owner").read_text(encoding="utf-8") or "unknown"
            except OSError:
                return "unknown"
        held.release()
        return None
