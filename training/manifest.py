"""The batch manifest: every batch intake has seen, typed, in one JSON file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from champion.training.errors import DataError
from champion.training.files import atomic_write_text

MANIFEST_VERSION = 1


class BatchStatus(StrEnum):
    """Where a batch stands: in the window's pool, refused at intake, or taken out by hand."""

    ACCEPTED = "accepted"
    QUARANTINED = "quarantined"
    RETIRED = "retired"


# Statuses whose content intake took in (and keeps in the store).
KEPT = frozenset({BatchStatus.ACCEPTED, BatchStatus.RETIRED})


@dataclass(frozen=True)
class BatchEntry:
    """One batch in the manifest: what intake recorded, and what later steps changed.

    Only `file`, `sha256` and `status` are always there. The other fields are None when the
    entry has no such key: its status does not use it, or an older manifest did not record it.
    `from_record` and `to_record` are the one way in from, and out to, the manifest file.
    """

    file: str
    sha256: str
    status: BatchStatus
    seen_at: str | None = None
    rows: int | None = None
    unknown_categories: Mapping[str, int] | None = None
    duplicates_dropped: int | None = None
    # Accepted (and retired) batches. `stored` is None for a batch accepted before the store
    # existed: it is copied into the store when first used.
    consumed_by: str | None = None
    usable_rows: int | None = None
    stored: str | None = None
    # Quarantined batches.
    reasons: tuple[str, ...] | None = None
    quarantined_as: str | None = None
    # Retired batches.
    retired_at: str | None = None
    retired_reason: str | None = None
    retired_by: str | None = None
    # Keys this version does not know, written back as they were read.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> BatchEntry:
        """The entry a manifest file holds (raises KeyError, TypeError or ValueError if bad)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in record.items() if k in known}
        values["status"] = BatchStatus(record["status"])
        if values.get("reasons") is not None:
            values["reasons"] = tuple(values["reasons"])
        if values.get("unknown_categories") is not None:
            values["unknown_categories"] = dict(values["unknown_categories"])
        extra = {k: v for k, v in record.items() if k not in known}
        return cls(**values, extra=extra)

    def to_record(self) -> dict[str, Any]:
        """The entry as the manifest file holds it: the keys it has, none of the absent ones."""
        record: dict[str, Any] = dict(self.extra)
        record.update(file=self.file, sha256=self.sha256, status=self.status.value)
        if self.status in KEPT or self.consumed_by is not None:
            record["consumed_by"] = self.consumed_by  # null until a run trains on the batch
        optional: dict[str, Any] = {
            "seen_at": self.seen_at,
            "rows": self.rows,
            "unknown_categories": (
                None if self.unknown_categories is None else dict(self.unknown_categories)
            ),
            "duplicates_dropped": self.duplicates_dropped,
            "usable_rows": self.usable_rows,
            "stored": self.stored,
            "reasons": None if self.reasons is None else list(self.reasons),
            "quarantined_as": self.quarantined_as,
            "retired_at": self.retired_at,
            "retired_reason": self.retired_reason,
            "retired_by": self.retired_by,
        }
        record.update((k, v) for k, v in optional.items() if v is not None)
        return record


class ManifestStorage(Protocol):
    """Where the manifest lives: a JSON file here, a table in shared mode."""

    where: str  # for messages: the file, or the database

    def read(self) -> Mapping[str, Any] | None:
        """The manifest as its file holds it (`version`, `batches`, `classes`); None if new."""
        ...

    def write(self, body: Mapping[str, Any], *, before: Mapping[str, Any] | None) -> None:
        """Store `body`; `before` is what `read` gave (a table writes only what changed)."""
        ...


class ManifestFile:
    """The manifest as one JSON file, replaced atomically on each save."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def read(self) -> Mapping[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"manifest {self.path} is not valid JSON: {exc}") from None
        return raw if isinstance(raw, dict) else {"version": None}

    def write(self, body: Mapping[str, Any], *, before: Mapping[str, Any] | None) -> None:
        atomic_write_text(self.path, json.dumps(body, indent=1, sort_keys=True))


class Manifest:
    """Remembers every batch ever seen, so none is used twice or lost."""

    def __init__(self, source: Path | ManifestStorage) -> None:
        self.storage: ManifestStorage = ManifestFile(source) if isinstance(source, Path) else source
        self.path = self.storage.where
        self.batches: dict[str, BatchEntry] = {}
        # Target values of the accepted batches; None for a manifest written before they were
        # recorded (learnt from the batches when first needed).
        self.classes: list[Any] | None = []
        self._read = self.storage.read()
        if self._read is not None:
            raw = self._read
            if raw.get("version") != MANIFEST_VERSION:
                raise DataError(f"manifest {self.path} has unknown version {raw.get('version')!r}")
            self.batches = {b: self._entry(b, r) for b, r in raw["batches"].items()}
            self.classes = raw.get("classes")

    def _entry(self, batch_id: str, record: Mapping[str, Any]) -> BatchEntry:
        try:
            return BatchEntry.from_record(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"manifest {self.path}: the entry of batch {batch_id} cannot be read: "
                f"{type(exc).__name__}: {exc}"
            ) from None

    def records(self) -> dict[str, dict[str, Any]]:
        """The entries as the manifest file holds them (and `champion batches --json` prints)."""
        return {batch_id: entry.to_record() for batch_id, entry in self.batches.items()}

    def save(self) -> None:
        body = {"version": MANIFEST_VERSION, "batches": self.records(), "classes": self.classes}
        self.storage.write(body, before=self._read)
        self._read = body

    def by_digest(self, sha256: str) -> str | None:
        """The batch taken in with this content; a quarantined one may come back once fixed."""
        for batch_id, entry in self.batches.items():
            if entry.sha256 == sha256 and entry.status in KEPT:
                return batch_id
        return None

    def holds(self, name: str, batch_id: str) -> bool:
        """Whether this landing-zone file, with this content, was already taken in."""
        entry = self.batches.get(batch_id)
        return entry is not None and entry.status in KEPT and entry.file == name

    def accepted(self) -> list[str]:
        """Batches in the training window's pool (retired and quarantined ones excluded)."""
        return sorted(b for b, e in self.batches.items() if e.status is BatchStatus.ACCEPTED)

    def unconsumed(self) -> list[str]:
        return [b for b in self.accepted() if not self.batches[b].consumed_by]

    def mark_consumed(self, batch_ids: list[str] | tuple[str, ...], run_id: str) -> None:
        for batch_id in batch_ids:
            self.batches[batch_id] = replace(self.batches[batch_id], consumed_by=run_id)
        self.save()

    def retire(self, batch_id: str, *, reason: str, who: str) -> BatchEntry:
        """Take an accepted batch out of every future window; its stored file is kept."""
        entry = self.batches.get(batch_id)
        if entry is None:
            raise DataError(
                f"no batch {batch_id!r} in the manifest {self.path}; `champion batches` lists them"
            )
        if entry.status is not BatchStatus.ACCEPTED:
            raise DataError(
                f"batch {batch_id} is {entry.status}, not accepted; "
                "only an accepted batch can be retired"
            )
        retired = replace(
            entry,
            status=BatchStatus.RETIRED,
            retired_at=datetime.now(UTC).isoformat(),
            retired_reason=reason,
            retired_by=who,
        )
        self.batches[batch_id] = retired
        self.save()
        return retired
