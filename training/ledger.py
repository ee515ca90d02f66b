"""The append-only promotion ledger: one JSON line per verdict, alias move or manual action."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)


class Ledger:
    """JSON lines, appended under a lock and fsynced; a torn last line is skipped on read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = FileLock(str(path) + ".lock")

    def append(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        record = {"at": datetime.now(UTC).isoformat(), **entry}
        line = json.dumps(record, sort_keys=True, default=str)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self.path.open("ab+") as fh:
            # A crash mid-write can leave a line without its newline; never glue onto it.
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write(line.encode("utf-8") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        return record

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out: list[dict[str, Any]] = []
        with self.path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("skipping torn ledger line", extra={"line": number})
        return out

    def tail(self) -> Iterator[dict[str, Any]]:
        """Entries newest first, read backwards in blocks: the cost is what is read, not the
        ledger's length (a year of half-hourly cycles is ~17,000 lines)."""
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

    def last(self, event: str) -> dict[str, Any] | None:
        """The newest entry of one event kind ("cycle", "rollback", ...)."""
        return next((e for e in self.tail() if e.get("event") == event), None)

    def last_champion(self) -> str | None:
        """The champion version the ledger last recorded (None before the first promotion)."""
        for entry in self.tail():
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
