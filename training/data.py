"""Landing-zone intake: validate batches, quarantine bad ones, keep accepted ones by content."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from champion.training.checks import (
    BatchReport,
    distinct,
    merge_classes,
    parse_batch,
    validate_batch,
)
from champion.training.config import Contract
from champion.training.errors import DataError
from champion.training.files import sha256_bytes
from champion.training.manifest import BatchEntry, BatchStatus, Manifest
from champion.training.storage import Entry, Folder, location

log = logging.getLogger(__name__)

# Longest first, so "daily.csv.gz" is gzipped CSV and not "daily.csv" + ".gz". Matched
# case-insensitively; the store names a batch with the lower-case form.
BATCH_SUFFIXES = (".csv.gz", ".csv", ".parquet")
# Names that download tools and copy programs give files they are still writing.
PARTIAL_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".filepart", ".tmp", "~")
BATCH_COLUMN = "__batch__"


@dataclass(frozen=True)
class IntakeReport:
    accepted: tuple[BatchReport, ...]
    quarantined: tuple[BatchReport, ...]
    # Batch files modified within the settle time, left for the next cycle.
    waiting: tuple[str, ...] = ()
    # Files of a type intake does not read, left where they are.
    ignored: tuple[str, ...] = ()


@dataclass(frozen=True)
class LandingScan:
    """The landing zone's files by what intake will do with them now."""

    ready: tuple[Entry, ...]
    waiting: tuple[Entry, ...]
    ignored: tuple[Entry, ...]


@dataclass(frozen=True)
class LandingStatus:
    """Landing-zone file names not (yet) taken in, for `champion status` and `batches`."""

    new: tuple[str, ...]
    waiting: tuple[str, ...]
    ignored: tuple[str, ...]


@dataclass(frozen=True)
class TrainingData:
    """The training window: features + target, with the batch each row came from."""

    frame: pd.DataFrame
    batch_ids: tuple[str, ...]
    new_batch_ids: tuple[str, ...]

    @property
    def rows(self) -> int:
        return len(self.frame)


def batch_suffix(name: str) -> str | None:
    """The batch format of a file name (lower case), or None when intake does not read it."""
    lower = name.lower()
    for suffix in BATCH_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return suffix
    return None


def batch_id_for(name: str, digest: str) -> str:
    """Name stem plus content prefix: a file overwritten with new content is a new batch."""
    suffix = batch_suffix(name) or ""
    return f"{name[: len(name) - len(suffix)]}-{digest[:12]}"


def _folder(where: Path | str | Folder) -> Folder:
    return where if isinstance(where, Folder) else location(where)


def _quarantine(
    zone: Folder,
    name: str,
    data: bytes,
    seen: Entry,
    quarantine: Folder,
    batch_id: str,
    reasons: list[str],
) -> str:
    """Put the judged bytes in quarantine, then remove the landing file unless it changed.

    Returns the name the bytes are kept under in quarantine.
    """
    target = name
    if quarantine.exists(target):
        suffix_len = len(batch_suffix(name) or "")
        stem, suffix = name[: len(name) - suffix_len], name[-suffix_len:]
        target = f"{stem}.{batch_id}{suffix}"
    reason = {
        "batch_id": batch_id,
        "file": name,
        "quarantined_at": datetime.now(UTC).isoformat(),
        "reasons": reasons,
    }
    # The reason goes first: a crash between the steps leaves an explained file, never a
    # silently missing one.
    quarantine.write_text(f"{target}.reason.json", json.dumps(reason, indent=1))
    quarantine.write_bytes(target, data)
    if not zone.remove_unchanged(name, seen):
        # rewritten since it was read: the new content is judged by the next cycle
        log.info("quarantined file changed since it was read", extra={"file": name})
    return target


def scan_landing(
    landing_zone: Path | str | Folder, settle_seconds: float, *, now: float | None = None
) -> LandingScan:
    """Sort the landing zone's files: batches ready, batches still settling, unknown types.

    Hidden files and partial-download names are not looked at. The settle time counts from
    the file's modification time (an object's Last-Modified).
    """
    zone = _folder(landing_zone)
    cutoff = (time.time() if now is None else now) - settle_seconds
    ready: list[Entry] = []
    waiting: list[Entry] = []
    ignored: list[Entry] = []
    for entry in zone.list():
        name = entry.name
        if name.startswith(".") or name.lower().endswith(PARTIAL_SUFFIXES):
            continue
        if batch_suffix(name) is None:
            ignored.append(entry)
        elif settle_seconds > 0 and entry.mtime > cutoff:
            waiting.append(entry)
        else:
            ready.append(entry)
    return LandingScan(tuple(ready), tuple(waiting), tuple(ignored))


def pending_files(landing_zone: Path | str | Folder) -> list[str]:
    """The name of every batch file in the landing zone, settled or not, taken in or not."""
    scan = scan_landing(landing_zone, 0.0)
    return [entry.name for entry in scan.ready]


def landing_status(
    contract: Contract, manifest: Manifest, *, now: float | None = None
) -> LandingStatus:
    """The landing-zone files intake has not taken in: new, still settling, or ignored."""
    zone = location(contract.data.landing_zone)
    scan = scan_landing(zone, contract.data.settle_seconds, now=now)
    new: list[str] = []
    for entry in scan.ready:
        try:
            digest = zone.sha256(entry.name)
        except FileNotFoundError:
            continue
        if not manifest.holds(entry.name, batch_id_for(entry.name, digest)):
            new.append(entry.name)
    return LandingStatus(
        tuple(new), tuple(e.name for e in scan.waiting), tuple(e.name for e in scan.ignored)
    )


def _store(store: Folder, name: str, data: bytes, digest: str) -> None:
    if store.exists(name) and store.sha256(name) == digest:
        return  # written by an intake that stopped before saving the manifest
    store.write_bytes(name, data)


def _stored_bytes(contract: Contract, manifest: Manifest, batch_id: str) -> tuple[bytes, str]:
    """An accepted batch's bytes from the store, checked against the digest taken at intake."""
    entry = manifest.batches[batch_id]
    stored = entry.stored
    if stored is None:
        return _migrate(contract, manifest, batch_id), batch_suffix(entry.file) or ".csv"
    store = location(contract.data.store)
    path = store.join(stored)
    try:
        data = store.read_bytes(stored)
    except FileNotFoundError:
        raise DataError(
            f"accepted batch {batch_id}: its stored copy {path} is missing; restore it, or "
            f"retire the batch (champion batches retire {batch_id} --reason ...)"
        ) from None
    if sha256_bytes(data) != entry.sha256:
        raise DataError(
            f"accepted batch {batch_id}: the stored file {path} does not match the digest "
            "recorded at intake; it was altered after intake (restore it from a backup, or "
            f"retire the batch: champion batches retire {batch_id} --reason ...)"
        )
    return data, batch_suffix(stored) or ".csv"


def _migrate(contract: Contract, manifest: Manifest, batch_id: str) -> bytes:
    """Copy a batch accepted before the store existed into it, if its file is unchanged."""
    entry = manifest.batches[batch_id]
    zone = location(contract.data.landing_zone)
    path = zone.join(entry.file)
    try:
        data: bytes | None = zone.read_bytes(entry.file)
    except FileNotFoundError:
        data = None
    if data is None or sha256_bytes(data) != entry.sha256:
        state = "is missing" if data is None else "has changed since intake"
        raise DataError(
            f"accepted batch {batch_id} predates the batch store and its landing-zone file "
            f"{path} {state}; retire it: champion batches retire {batch_id} --reason ..."
        )
    stored = f"{entry.sha256}{batch_suffix(entry.file) or '.csv'}"
    _store(location(contract.data.store), stored, data, entry.sha256)
    manifest.batches[batch_id] = replace(entry, stored=stored)
    manifest.save()
    log.info("batch copied into the store", extra={"batch": batch_id, "stored": stored})
    return data


def _load_batch(contract: Contract, manifest: Manifest, batch_id: str) -> pd.DataFrame:
    data, suffix = _stored_bytes(contract, manifest, batch_id)
    retire = f"champion batches retire {batch_id} --reason ..."
    try:
        raw = parse_batch(data, suffix, contract)
    except Exception as exc:  # any parser failure means the batch is unusable
        raise DataError(
            f"accepted batch {batch_id} cannot be read: {type(exc).__name__}: {exc}; {retire}"
        ) from None
    frame, report = validate_batch(raw, contract)
    if frame is None:
        raise DataError(
            f"accepted batch {batch_id} no longer validates against the contract: "
            f"{'; '.join(report.reasons)}; fix the contract or retire the batch ({retire})"
        )
    return frame


def _known_classes(contract: Contract, manifest: Manifest) -> list[Any]:
    """The target values taken in so far, learnt from the accepted batches if not recorded."""
    if manifest.classes is None:
        values: list[Any] = []
        for batch_id in manifest.accepted():
            try:
                frame = _load_batch(contract, manifest, batch_id)
            except DataError as exc:  # the window will name it; locking goes on without it
                log.warning(
                    "accepted batch unreadable", extra={"batch": batch_id, "error": str(exc)}
                )
                continue
            values = merge_classes(values, distinct(frame[contract.target]))
        manifest.classes = values
        manifest.save()
    return manifest.classes


@dataclass(frozen=True)
class _Arrival:
    """A landing-zone file read once: its bytes, the version they were read as, their digest."""

    zone: Folder
    name: str
    data: bytes
    seen: Entry
    digest: str

    @property
    def suffix(self) -> str:
        return batch_suffix(self.name) or ".csv"

    @property
    def batch_id(self) -> str:
        return batch_id_for(self.name, self.digest)


def _arrive(zone: Folder, name: str) -> _Arrival | None:
    """The file as read whole, or None when it changed while being read (still being written).

    Raises FileNotFoundError when it was removed since the listing.
    """
    taken = zone.read_whole(name)
    if taken is None:
        return None
    data, seen = taken
    return _Arrival(zone, name, data, seen, sha256_bytes(data))


def _judge(
    contract: Contract, manifest: Manifest, arrival: _Arrival, *, lock: bool
) -> tuple[pd.DataFrame | None, BatchReport]:
    """Check a batch not taken in before: a copy of a kept one, unreadable, or validated."""
    batch_id, name = arrival.batch_id, arrival.name
    duplicate_of = manifest.by_digest(arrival.digest)
    if duplicate_of is not None:
        status = manifest.batches[duplicate_of].status
        done = "already taken in" + (" and retired" if status is BatchStatus.RETIRED else "")
        reasons = (f"same content as batch {duplicate_of}, {done}",)
        return None, BatchReport(batch_id, name, False, 0, reasons)
    try:
        raw = parse_batch(arrival.data, arrival.suffix, contract)
    except Exception as exc:  # any parser failure means the file is unusable
        reasons = (f"unreadable: {type(exc).__name__}: {exc}",)
        return None, BatchReport(batch_id, name, False, 0, reasons)
    known = _known_classes(contract, manifest) if lock else None
    frame, report = validate_batch(raw, contract, known_classes=known)
    return frame, replace(report, batch_id=batch_id, file=name)


def _accept(
    contract: Contract,
    manifest: Manifest,
    arrival: _Arrival,
    report: BatchReport,
    frame: pd.DataFrame,
    base: BatchEntry,
) -> BatchEntry:
    """Store the judged bytes under their digest; the entry of the accepted batch."""
    stored = f"{arrival.digest}{arrival.suffix}"
    _store(location(contract.data.store), stored, arrival.data, arrival.digest)
    if manifest.classes is not None and contract.task == "classification":
        manifest.classes = merge_classes(manifest.classes, report.classes)
    log.info("batch accepted", extra={"batch": arrival.batch_id, "rows": len(frame)})
    return replace(
        base,
        status=BatchStatus.ACCEPTED,
        consumed_by=None,
        usable_rows=len(frame),
        stored=stored,
    )


def _refuse(
    contract: Contract, arrival: _Arrival, report: BatchReport, base: BatchEntry
) -> BatchEntry:
    """Move the judged bytes to quarantine with their reasons; the entry of the batch."""
    reasons = list(report.reasons)
    moved = _quarantine(
        arrival.zone,
        arrival.name,
        arrival.data,
        arrival.seen,
        location(contract.data.quarantine),
        arrival.batch_id,
        reasons,
    )
    log.warning("batch quarantined", extra={"batch": arrival.batch_id, "reasons": reasons})
    return replace(
        base, status=BatchStatus.QUARANTINED, reasons=report.reasons, quarantined_as=moved
    )


def _take_in(
    contract: Contract, manifest: Manifest, arrival: _Arrival, *, lock: bool
) -> tuple[BatchReport, BatchEntry]:
    """Judge one new batch, accept or quarantine it, and record it in the manifest."""
    frame, report = _judge(contract, manifest, arrival, lock=lock)
    # What every entry records; `_accept` or `_refuse` sets the status and its fields.
    base = BatchEntry(
        file=arrival.name,
        sha256=arrival.digest,
        status=BatchStatus.QUARANTINED,
        seen_at=datetime.now(UTC).isoformat(),
        rows=report.rows,
        unknown_categories=report.unknown_categories,
        duplicates_dropped=report.duplicates_dropped,
    )
    if report.accepted and frame is not None:
        entry = _accept(contract, manifest, arrival, report, frame, base)
    else:
        entry = _refuse(contract, arrival, report, base)
    manifest.batches[arrival.batch_id] = entry
    manifest.save()
    return report, entry


def _warn_ignored(ignored: Sequence[Entry]) -> None:
    if ignored:
        log.warning(
            "files of a type intake does not read are left in the landing zone",
            extra={"files": [e.name for e in ignored], "accepted_types": list(BATCH_SUFFIXES)},
        )


def intake(contract: Contract, manifest: Manifest, *, now: float | None = None) -> IntakeReport:
    """Validate every batch not seen before; store and accept it, or quarantine it.

    Each file is read once: the digest, the checks and the stored copy all come from the
    same bytes, so a file rewritten meanwhile can never be accepted under another's digest.
    """
    zone = location(contract.data.landing_zone)
    scan = scan_landing(zone, contract.data.settle_seconds, now=now)
    _warn_ignored(scan.ignored)
    lock = contract.task == "classification" and contract.classes is None
    accepted: list[BatchReport] = []
    quarantined: list[BatchReport] = []
    waiting = [e.name for e in scan.waiting]
    for listed in scan.ready:
        try:
            arrival = _arrive(zone, listed.name)
        except FileNotFoundError:  # removed since the listing
            continue
        if arrival is None:
            waiting.append(listed.name)
            continue
        if manifest.holds(listed.name, arrival.batch_id):
            continue
        report, entry = _take_in(contract, manifest, arrival, lock=lock)
        (accepted if entry.status is BatchStatus.ACCEPTED else quarantined).append(report)
    if waiting:
        log.info(
            "batch files still being written are left for the next cycle",
            extra={"waiting": len(waiting), "settle_seconds": contract.data.settle_seconds},
        )
    return IntakeReport(
        tuple(accepted), tuple(quarantined), tuple(waiting), tuple(e.name for e in scan.ignored)
    )


def load_window(contract: Contract, manifest: Manifest) -> TrainingData:
    """Read accepted batches from the store and keep the most recent rows the window allows."""
    frames: list[pd.DataFrame] = []
    for batch_id in manifest.accepted():
        frame = _load_batch(contract, manifest, batch_id)
        frame[BATCH_COLUMN] = batch_id
        frames.append(frame)
    if not frames:
        return TrainingData(pd.DataFrame(), (), ())
    data = pd.concat(frames, ignore_index=True)
    if contract.timestamp is not None:
        data = data.sort_values(contract.timestamp, kind="stable").reset_index(drop=True)
        if contract.window.max_days is not None:
            newest = data[contract.timestamp].max()
            cutoff = newest - timedelta(days=contract.window.max_days)
            data = data.loc[data[contract.timestamp] >= cutoff]
    if contract.window.max_rows is not None:
        data = data.tail(contract.window.max_rows)
    data = data.reset_index(drop=True)
    present = tuple(dict.fromkeys(data[BATCH_COLUMN].tolist()))
    unconsumed = set(manifest.unconsumed())
    new = tuple(b for b in present if b in unconsumed)
    return TrainingData(data, present, new)


def fingerprint(data: TrainingData, contract: Contract) -> dict[str, Any]:
    """A content hash plus rows, time range and batch ids: enough to tell two datasets apart."""
    frame = data.frame
    cols = [*contract.features, contract.target, *([contract.weight] if contract.weight else [])]
    hashed = pd.util.hash_pandas_object(frame[cols], index=False).to_numpy()
    digest = hashlib.sha256(np.ascontiguousarray(hashed).tobytes()).hexdigest()
    result: dict[str, Any] = {
        "sha256": digest,
        "rows": len(frame),
        "batches": list(data.batch_ids),
        "new_batches": list(data.new_batch_ids),
    }
    if contract.timestamp is not None and len(frame):
        ts = frame[contract.timestamp]
        result["time_min"] = ts.min().isoformat()
        result["time_max"] = ts.max().isoformat()
    return result
