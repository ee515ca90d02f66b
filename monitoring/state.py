"""The monitoring job's memory on local files: drift/state.json, latest.json, history.jsonl."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from champion.training.files import atomic_write_text

LATEST = "latest.json"
HISTORY = "history.jsonl"
STATE = "state.json"


class DriftFiles:
    """The `DriftStore` port for one host: three files in one folder.

    The history is appended line by line and rewritten only once it holds 10 % more than it
    keeps: one rewrite per keep/10 ticks, not one per tick.
    """

    where: str

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.where = str(folder / STATE)
        # (size, lines) of history.jsonl after this process last wrote it; recounted on a change.
        self._history_mark: tuple[int, int] | None = None

    def read_state(self) -> Mapping[str, Any] | None:
        path = self.folder / STATE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        if not isinstance(raw, dict):
            raise TypeError(f"the state is {type(raw).__name__}, not an object")
        return raw

    def write_state(self, state: Mapping[str, Any]) -> None:
        atomic_write_text(self.folder / STATE, json.dumps(state))

    def latest(self) -> dict[str, Any] | None:
        path = self.folder / LATEST
        if not path.exists():
            return None
        return dict(json.loads(path.read_text(encoding="utf-8")))

    def write_latest(self, summary: Mapping[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / LATEST, json.dumps(summary, indent=1))

    def append_history(self, entry: Mapping[str, Any], *, keep: int) -> None:
        """Append one line; past `keep` + 10 % keep only the newest `keep` lines."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / HISTORY
        size = path.stat().st_size if path.exists() else 0
        if self._history_mark is not None and self._history_mark[0] == size:
            lines = self._history_mark[1]
        else:  # first append here, or another process wrote since: count again
            with path.open("a+b") as fh:
                fh.seek(0)
                lines = sum(1 for _ in fh)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        lines += 1
        if lines > keep + keep // 10:
            kept = path.read_text(encoding="utf-8").splitlines(keepends=True)[-keep:]
            atomic_write_text(path, "".join(kept))
            lines = len(kept)
        self._history_mark = (path.stat().st_size, lines)

    def history(self) -> list[dict[str, Any]]:
        """Every kept line, oldest first."""
        path = self.folder / HISTORY
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
