"""Landing-zone intake: validate batches, quarantine bad ones, keep accepted ones by content."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from champion.training.config import FLOAT32_MAX, Contract
from champion.training.errors import DataError
from champion.training.files import atomic_write_bytes, atomic_write_text, sha256_bytes, sha256_file

log = logging.getLogger(__name__)

# Longest first, so "daily.csv.gz" is gzipped CSV and not "daily.csv" + ".gz". Matched
# case-insensitively; the store names a batch with the lower-case form.
BATCH_SUFFIXES = (".csv.gz", ".csv", ".parquet")
# Names that download tools and copy programs give files they are still writing.
PARTIAL_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".filepart", ".tmp", "~")
MANIFEST_VERSION = 1
BATCH_COLUMN = "__batch__"


@dataclass(frozen=True)
class BatchReport:
    """What intake decided about one batch file."""

    batch_id: str
    file: str
    accepted: bool
    rows: int
    reasons: tuple[str, ...] = ()
    unknown_categories: dict[str, int] = field(default_factory=dict)
    duplicates_dropped: int = 0
    # Classification: the distinct target values of the batch.
    classes: tuple[Any, ...] = ()


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

    ready: tuple[Path, ...]
    waiting: tuple[Path, ...]
    ignored: tuple[Path, ...]


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


def _class_key(value: Any) -> tuple[str, Any]:
    # True == 1 and 1 == 1.0 in Python; a class is a number, a text or a boolean, never mixed.
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if isinstance(value, str):
        return ("text", value)
    return ("other", repr(value))


def _merge_classes(known: Sequence[Any], new: Sequence[Any]) -> list[Any]:
    merged = {_class_key(v): v for v in [*known, *new]}
    return [merged[k] for k in sorted(merged)]


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


class Manifest:
    """Remembers every batch ever seen, so none is used twice or lost."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.batches: dict[str, BatchEntry] = {}
        # Target values of the accepted batches; None for a manifest written before they were
        # recorded (learnt from the batches when first needed).
        self.classes: list[Any] | None = []
        if path.exists():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DataError(f"manifest {path} is not valid JSON: {exc}") from None
            if raw.get("version") != MANIFEST_VERSION:
                raise DataError(f"manifest {path} has unknown version {raw.get('version')!r}")
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
        atomic_write_text(self.path, json.dumps(body, indent=1, sort_keys=True))

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


def _null_rate_check(limit: float) -> pa.Check:
    return pa.Check(
        lambda s: bool(s.isna().mean() <= limit),
        element_wise=False,
        ignore_na=False,
        error=f"null rate above {limit:.0%}",
    )


def batch_schema(contract: Contract) -> pa.DataFrameSchema:
    """The pandera schema a batch must satisfy; derived from the contract, never hand-kept.

    The target's type and values are checked separately (`validate_batch`), value by value.
    """
    limit = contract.data.max_null_rate
    columns: dict[str, pa.Column] = {}
    for name, feat in contract.features.items():
        dtype: Any = float if feat.type == "numeric" else str
        columns[name] = pa.Column(
            dtype,
            nullable=True,
            coerce=True,
            checks=[_null_rate_check(0.0 if not feat.nullable else limit)],
            required=True,
        )
    columns[contract.target] = pa.Column(
        None,
        nullable=True,
        checks=[
            pa.Check(
                lambda s: bool(s.notna().all()),
                element_wise=False,
                ignore_na=False,
                error="target has missing values",
            )
        ],
    )
    if contract.timestamp is not None:
        columns[contract.timestamp] = pa.Column(
            pd.DatetimeTZDtype(tz="UTC"), nullable=False, coerce=True
        )
    return pa.DataFrameSchema(columns, strict=False, coerce=True)


def _text_classes(contract: Contract) -> bool:
    return contract.classes is not None and isinstance(contract.classes[0], str)


def parse_batch(data: bytes, suffix: str, contract: Contract) -> pd.DataFrame:
    """Parse a batch from its bytes; categorical columns (and text classes) stay text."""
    buffer = io.BytesIO(data)
    if suffix == ".parquet":
        return pd.read_parquet(buffer)
    dtypes = {n: "string" for n in contract.categorical}
    if _text_classes(contract):
        dtypes[contract.target] = "string"  # so "01" stays "01"
    return pd.read_csv(
        buffer,
        dtype=dtypes,
        keep_default_na=True,
        compression="gzip" if suffix == ".csv.gz" else None,
    )


def _describe_failures(exc: SchemaErrors) -> list[str]:
    cases = exc.failure_cases
    reasons: list[str] = []
    for (column, check), group in cases.groupby(["column", "check"], dropna=False, sort=True):
        sample = [str(v) for v in group["failure_case"].head(3).tolist()]
        text = str(check)
        if text.startswith("column_in_dataframe"):
            names = [str(v) for v in group["failure_case"].tolist()]
            reasons.extend(f"column '{name}': missing" for name in names)
        elif text.startswith("coerce_dtype"):
            reasons.append(
                f"column '{column}': wrong type, expected {text[13:-1]}; e.g. {', '.join(sample)}"
            )
        elif not text.startswith("dtype("):
            reasons.append(f"column '{column}': {text}")
    return sorted(set(reasons))


def _distinct(series: pd.Series) -> list[Any]:
    """Distinct non-missing values as Python scalars; True, 1 and "1" stay apart."""
    values = series.dropna()
    if values.dtype != object:
        return list(pd.unique(values).tolist())
    seen: dict[tuple[type, Any], Any] = {}
    for value in values.tolist():
        plain = value.item() if isinstance(value, np.generic) else value
        seen.setdefault((type(plain), plain), plain)
    return list(seen.values())


def _show(values: Sequence[Any], limit: int = 5) -> str:
    ordered = sorted(values, key=repr)
    text = "[" + ", ".join(repr(v) for v in ordered[:limit]) + "]"
    return text if len(ordered) <= limit else f"{text} (and {len(ordered) - limit} more)"


def _is_whole(value: Any) -> bool:
    """An integer-valued number; a boolean is not one."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):  # CSV text in a column that also holds non-numbers
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


def _check_target(
    raw: pd.Series, contract: Contract, known: Sequence[Any] | None
) -> tuple[pd.Series | None, list[str], tuple[Any, ...]]:
    """Check the target's type and values; returns it cast to one dtype, reasons, classes."""
    name = contract.target
    values = _distinct(raw)
    if contract.task == "regression":
        bad = [v for v in values if not _is_number(v)]
        if bad:
            return None, [f"column '{name}': values {_show(bad)} are not numbers"], ()
        if raw.isna().any():  # refused by the schema; nothing to cast
            return None, [], ()
        return pd.to_numeric(raw.astype(object)).astype("float64"), [], ()
    declared = contract.classes
    if declared is not None:
        if isinstance(declared[0], int):
            bad = [v for v in values if not (_is_whole(v) and int(v) in declared)]
        else:
            bad = [v for v in values if not (isinstance(v, str) and v in declared)]
        if bad:
            return (
                None,
                [
                    f"column '{name}': values {_show(bad)} are not among the declared classes "
                    f"{list(declared)}"
                ],
                (),
            )
    elif known:
        keys = {_class_key(v) for v in known}
        new = [v for v in values if _class_key(v) not in keys]
        if new:
            return (
                None,
                [
                    f"column '{name}': values {_show(new)} are not among the classes of the "
                    f"batches taken in so far {_show(known, limit=20)}; if they are real "
                    "classes, declare every class in champion.toml (classes = [...])"
                ],
                (),
            )
    if raw.isna().any():
        return None, [], tuple(values)
    if declared is None:
        return raw, [], tuple(values)
    if isinstance(declared[0], int):
        return raw.astype(object).astype("int64"), [], tuple(int(v) for v in values)
    return raw.astype(object), [], tuple(values)


def _range_reasons(frame: pd.DataFrame, contract: Contract) -> list[str]:
    # The models' trees compare 32-bit floats, and serving refuses these values too.
    reasons: list[str] = []
    for name in contract.numeric:
        column = frame[name].to_numpy(dtype="float64", na_value=np.nan)
        over = np.abs(column) > FLOAT32_MAX
        if over.any():
            reasons.append(
                f"column '{name}': {int(over.sum())} values beyond the 32-bit float range "
                f"(magnitude above {FLOAT32_MAX:.8g}), e.g. {float(column[over][0])!r}"
            )
    return reasons


def validate_batch(
    raw: pd.DataFrame, contract: Contract, *, known_classes: Sequence[Any] | None = None
) -> tuple[pd.DataFrame | None, BatchReport]:
    """Check one batch; returns the clean frame (or None) and what was found.

    `known_classes`: without declared classes, the target values of the batches taken in so
    far; a value outside them is refused (empty or None: anything goes).
    """
    reasons: list[str] = []
    try:
        frame = batch_schema(contract).validate(raw, lazy=True)
    except SchemaErrors as exc:
        reasons.extend(_describe_failures(exc))
        frame = None
    target: pd.Series | None = None
    classes: tuple[Any, ...] = ()
    if contract.target in raw.columns:
        target, target_reasons, classes = _check_target(
            raw[contract.target], contract, known_classes
        )
        reasons.extend(target_reasons)
    if frame is not None:
        reasons.extend(_range_reasons(frame, contract))
    if frame is not None and len(frame) < contract.data.min_rows:
        reasons.append(f"only {len(frame)} rows; at least {contract.data.min_rows} needed")
    unknown: dict[str, int] = {}
    dropped = 0
    if frame is not None and target is not None and not reasons:
        keep = [*contract.features, contract.target]
        if contract.timestamp:
            keep.append(contract.timestamp)
        frame = frame[keep].assign(**{contract.target: target})
        duplicated = frame.duplicated()
        dropped = int(duplicated.sum())
        if dropped / max(len(frame), 1) > contract.data.max_duplicate_rate:
            reasons.append(
                f"{dropped} of {len(frame)} rows are duplicates "
                f"(more than {contract.data.max_duplicate_rate:.0%})"
            )
        frame = frame.loc[~duplicated].reset_index(drop=True)
        for name in contract.categorical:
            allowed = contract.features[name].values
            if allowed is not None:
                col = frame[name]
                count = int((col.notna() & ~col.isin(allowed)).sum())
                if count:
                    unknown[name] = count
    accepted = not reasons and frame is not None and target is not None
    report = BatchReport(
        batch_id="",
        file="",
        accepted=accepted,
        rows=len(raw),
        reasons=tuple(reasons),
        unknown_categories=unknown,
        duplicates_dropped=dropped,
        classes=classes if contract.task == "classification" else (),
    )
    return (frame if accepted else None), report


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns) == (
        b.st_dev,
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
    )


def _read_whole(path: Path) -> tuple[bytes, os.stat_result] | None:
    """The file's bytes, or None when it changed while being read (still being written)."""
    with path.open("rb") as fh:
        before = os.fstat(fh.fileno())
        data = fh.read()
        after = os.fstat(fh.fileno())
    if not _same_file(before, after) or len(data) != after.st_size:
        return None
    return data, after


def _quarantine(
    path: Path,
    data: bytes,
    seen: os.stat_result,
    quarantine: Path,
    batch_id: str,
    reasons: list[str],
) -> Path:
    """Put the judged bytes in quarantine, then remove the landing file unless it changed."""
    quarantine.mkdir(parents=True, exist_ok=True)
    target = quarantine / path.name
    if target.exists():
        suffix_len = len(batch_suffix(path.name) or "")
        stem, suffix = path.name[: len(path.name) - suffix_len], path.name[-suffix_len:]
        target = quarantine / f"{stem}.{batch_id}{suffix}"
    reason = {
        "batch_id": batch_id,
        "file": path.name,
        "quarantined_at": datetime.now(UTC).isoformat(),
        "reasons": reasons,
    }
    # The reason goes first: a crash between the steps leaves an explained file, never a
    # silently missing one.
    atomic_write_text(target.with_name(target.name + ".reason.json"), json.dumps(reason, indent=1))
    atomic_write_bytes(target, data)
    try:
        if _same_file(path.stat(), seen):
            path.unlink()
        else:  # rewritten since it was read: the new content is judged by the next cycle
            log.info("quarantined file changed since it was read", extra={"file": path.name})
    except FileNotFoundError:
        pass
    return target


def scan_landing(
    landing_zone: Path, settle_seconds: float, *, now: float | None = None
) -> LandingScan:
    """Sort the landing zone's files: batches ready, batches still settling, unknown types.

    Hidden files and partial-download names are not looked at.
    """
    if not landing_zone.exists():
        return LandingScan((), (), ())
    cutoff = (time.time() if now is None else now) - settle_seconds
    ready: list[Path] = []
    waiting: list[Path] = []
    ignored: list[Path] = []
    for path in sorted(landing_zone.iterdir()):
        name = path.name
        if name.startswith(".") or name.lower().endswith(PARTIAL_SUFFIXES):
            continue
        try:
            info = path.stat()
        except FileNotFoundError:  # removed since the listing
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        if batch_suffix(name) is None:
            ignored.append(path)
        elif settle_seconds > 0 and info.st_mtime > cutoff:
            waiting.append(path)
        else:
            ready.append(path)
    return LandingScan(tuple(ready), tuple(waiting), tuple(ignored))


def pending_files(landing_zone: Path) -> list[Path]:
    """Every batch file in the landing zone, settled or not, taken in or not."""
    scan = scan_landing(landing_zone, 0.0)
    return list(scan.ready)


def landing_status(
    contract: Contract, manifest: Manifest, *, now: float | None = None
) -> LandingStatus:
    """The landing-zone files intake has not taken in: new, still settling, or ignored."""
    scan = scan_landing(contract.data.landing_zone, contract.data.settle_seconds, now=now)
    new: list[str] = []
    for path in scan.ready:
        try:
            digest = sha256_file(path)
        except FileNotFoundError:
            continue
        if not manifest.holds(path.name, batch_id_for(path.name, digest)):
            new.append(path.name)
    return LandingStatus(
        tuple(new), tuple(p.name for p in scan.waiting), tuple(p.name for p in scan.ignored)
    )


def _store(path: Path, data: bytes, digest: str) -> None:
    if path.exists() and sha256_file(path) == digest:
        return  # written by an intake that stopped before saving the manifest
    atomic_write_bytes(path, data)


def _stored_bytes(contract: Contract, manifest: Manifest, batch_id: str) -> tuple[bytes, str]:
    """An accepted batch's bytes from the store, checked against the digest taken at intake."""
    entry = manifest.batches[batch_id]
    stored = entry.stored
    if stored is None:
        return _migrate(contract, manifest, batch_id), batch_suffix(entry.file) or ".csv"
    path = contract.data.store / stored
    try:
        data = path.read_bytes()
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
    path = contract.data.landing_zone / entry.file
    try:
        data: bytes | None = path.read_bytes()
    except FileNotFoundError:
        data = None
    if data is None or sha256_bytes(data) != entry.sha256:
        state = "is missing" if data is None else "has changed since intake"
        raise DataError(
            f"accepted batch {batch_id} predates the batch store and its landing-zone file "
            f"{path} {state}; retire it: champion batches retire {batch_id} --reason ..."
        )
    stored = f"{entry.sha256}{batch_suffix(entry.file) or '.csv'}"
    _store(contract.data.store / stored, data, entry.sha256)
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
            values = _merge_classes(values, _distinct(frame[contract.target]))
        manifest.classes = values
        manifest.save()
    return manifest.classes


@dataclass(frozen=True)
class _Arrival:
    """A landing-zone file read once: its bytes, the stat they were read under, their digest."""

    path: Path
    data: bytes
    seen: os.stat_result
    digest: str

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def suffix(self) -> str:
        return batch_suffix(self.path.name) or ".csv"

    @property
    def batch_id(self) -> str:
        return batch_id_for(self.path.name, self.digest)


def _arrive(path: Path) -> _Arrival | None:
    """The file as read whole, or None when it changed while being read (still being written).

    Raises FileNotFoundError when it was removed since the listing.
    """
    taken = _read_whole(path)
    if taken is None:
        return None
    data, seen = taken
    return _Arrival(path, data, seen, sha256_bytes(data))


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
    _store(contract.data.store / stored, arrival.data, arrival.digest)
    if manifest.classes is not None and contract.task == "classification":
        manifest.classes = _merge_classes(manifest.classes, report.classes)
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
        arrival.path,
        arrival.data,
        arrival.seen,
        contract.data.quarantine,
        arrival.batch_id,
        reasons,
    )
    log.warning("batch quarantined", extra={"batch": arrival.batch_id, "reasons": reasons})
    return replace(
        base, status=BatchStatus.QUARANTINED, reasons=report.reasons, quarantined_as=moved.name
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


def _warn_ignored(ignored: Sequence[Path]) -> None:
    if ignored:
        log.warning(
            "files of a type intake does not read are left in the landing zone",
            extra={"files": [p.name for p in ignored], "accepted_types": list(BATCH_SUFFIXES)},
        )


def intake(contract: Contract, manifest: Manifest, *, now: float | None = None) -> IntakeReport:
    """Validate every batch not seen before; store and accept it, or quarantine it.

    Each file is read once: the digest, the checks and the stored copy all come from the
    same bytes, so a file rewritten meanwhile can never be accepted under another's digest.
    """
    scan = scan_landing(contract.data.landing_zone, contract.data.settle_seconds, now=now)
    _warn_ignored(scan.ignored)
    lock = contract.task == "classification" and contract.classes is None
    accepted: list[BatchReport] = []
    quarantined: list[BatchReport] = []
    waiting = [p.name for p in scan.waiting]
    for path in scan.ready:
        try:
            arrival = _arrive(path)
        except FileNotFoundError:  # removed since the listing
            continue
        if arrival is None:
            waiting.append(path.name)
            continue
        if manifest.holds(path.name, arrival.batch_id):
            continue
        report, entry = _take_in(contract, manifest, arrival, lock=lock)
        (accepted if entry.status is BatchStatus.ACCEPTED else quarantined).append(report)
    if waiting:
        log.info(
            "batch files still being written are left for the next cycle",
            extra={"waiting": len(waiting), "settle_seconds": contract.data.settle_seconds},
        )
    return IntakeReport(
        tuple(accepted), tuple(quarantined), tuple(waiting), tuple(p.name for p in scan.ignored)
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
    cols = [*contract.features, contract.target]
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
