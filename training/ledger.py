"""The append-only promotion ledger: one JSON line per verdict, alias move or manual action."""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock

from champion.training.clock import SystemClock
from champion.training.ports import Clock
from champion.training.records import LedgerEntry

log = logging.getLogger(__name__)


SEGMENT = "ledger_segment"  # first entry of a new segment: what the archived one ended with


class Ledger:
    """JSON lines, appended under a lock and fsynced; a torn last line is skipped on read.

    The current file holds at most about `max_bytes`: past it, the file is archived whole
    (gzip, `ledger-0001.jsonl.gz`, ...; nothing is deleted) and the new one starts with a
    segment entry carrying the last champion and the last cycle, so every reader of the
    current file (the service's /model, reconciliation) still finds them.
    """

    def __init__(self, path: Path, *, max_bytes: int = 8 << 20, clock: Clock | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.clock = clock or SystemClock()
        self._lock = FileLock(str(path) + ".lock")

    def append(self, entry: LedgerEntry | Mapping[str, Any]) -> dict[str, Any]:
        """Append one entry (a LedgerEntry, or a record in the stored form); returns it as
        stored, with its time and its sequence number (1, 2, ... across archives)."""
        body = entry.to_record() if isinstance(entry, LedgerEntry) else dict(entry)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self.path.exists() and self.path.stat().st_size > self.max_bytes:
                self._rotate()
            last = next(self._current_newest_first(), None)  # a segment carries the last seq
            seq = int(last.get("seq") or 0) + 1 if last is not None else 1
            line = json.dumps(
                {"at": self.clock.now().isoformat(), **body, "seq": seq},
                sort_keys=True,
                default=str,
            )
            self._write(line)
        stored: dict[str, Any] = json.loads(line)  # as every reader will see it
        return stored

    def _write(self, line: str) -> None:
        with self.path.open("ab+") as fh:
            # A crash mid-write can leave a line without its newline; never glue onto it.
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write(line.encode("utf-8") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())

    def archives(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.stem}-*.jsonl.gz"))

    def _rotate(self) -> None:
        """Archive the current file (caller holds the lock) and start a segment."""
        last = next(self._current_newest_first(), None)
        carried: dict[str, Any] = {
            "event": SEGMENT,
            "at": self.clock.now().isoformat(),
            "seq": int(last.get("seq") or 0) if last is not None else 0,  # the next one goes on
        }
        champion = self.last_champion()
        if champion is not None:
            carried["champion_after"] = champion
        if (cycle := self.last("cycle")) is not None:
            carried["last_cycle"] = cycle
        target = self.path.with_name(f"{self.path.stem}-{len(self.archives()) + 1:04d}.jsonl.gz")
        tmp = target.with_name("." + target.name)
        with self.path.open("rb") as src, gzip.open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        with tmp.open("rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)  # the archive is complete before the current file goes
        carried["archived"] = target.name
        fresh = self.path.with_name("." + self.path.name + ".new")
        fresh.write_text(json.dumps(carried, sort_keys=True, default=str) + "\n")
        os.replace(fresh, self.path)
        log.info("ledger archived", extra={"archive": target.name})

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first, archives included (segment markers left out)."""
        out: list[dict[str, Any]] = []
        for archive in self.archives():
            with gzip.open(archive, "rb") as fh:
                out.extend(e for line in fh if (e := _parse(line)) is not None)
        if self.path.exists():
            with self.path.open("rb") as fh:
                out.extend(e for line in fh if (e := _parse(line)) is not None)
        return [e for e in out if e.get("event") != SEGMENT]

    def tail(self) -> Iterator[dict[str, Any]]:
        """Every entry, newest first (archives included, segment markers left out). Read
        backwards in blocks: the cost is what is read, not the ledger's length."""
        for entry in self._current_newest_first():
            if entry.get("event") != SEGMENT:
                yield entry
        yield from self._archived_newest_first()

    def _current_newest_first(self) -> Iterator[dict[str, Any]]:
        """The current file's lines, newest first, its segment marker included."""
        if not self.path.exists():
            return
        with self.path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            end = fh.tell()
            rest = b""
            while end > 0:
                start = max(0, end - _BLOCK)
                fh.seek(start)
                block = fh.read(end - start) + rest
                end = start
                lines = block.split(b"\n")
                rest = lines.pop(0) if start > 0 else b""  # may be a partial line
                for line in reversed(lines):
                    if entry := _parse(line):
                        yield entry
            if rest and (entry := _parse(rest)):
                yield entry

    def _archived_newest_first(self) -> Iterator[dict[str, Any]]:
        for archive in reversed(self.archives()):
            with gzip.open(archive, "rb") as fh:
                found = [e for line in fh if (e := _parse(line)) is not None]
            yield from (e for e in reversed(found) if e.get("event") != SEGMENT)

    def last(self, event: str) -> dict[str, Any] | None:
        """The newest entry of one event kind ("cycle", "rollback", ...)."""
        for entry in self._current_newest_first():
            if entry.get("event") == event:
                return entry
            if entry.get("event") == SEGMENT:
                # The segment carries the last cycle; rarer events are in the archives.
                found = entry.get(f"last_{event}")
                if isinstance(found, dict):
                    return found
                break
        return next((e for e in self._archived_newest_first() if e.get("event") == event), None)

    def last_champion(self) -> str | None:
        """The champion version the ledger last recorded (None before the first promotion)."""
        # A segment carries the champion when there was one: no need to open the archives.
        for entry in self._current_newest_first():
            if "champion_after" in entry:
                return entry["champion_after"]
        return None


_BLOCK = 1 << 16


def _parse(line: bytes) -> dict[str, Any] | None:
    if not line.strip():
        return None
    try:
        found = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("skipping torn ledger line")
        return None
    return found if isinstance(found, dict) else None
