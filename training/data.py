"""Landing-zone intake: validate batches, quarantine bad ones, keep a manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from training.config import Contract
from training.errors import DataError

log = logging.getLogger(__name__)

BATCH_SUFFIXES = (".csv", ".parquet")
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


@dataclass(frozen=True)
class IntakeReport:
    accepted: tuple[BatchReport, ...]
    quarantined: tuple[BatchReport, ...]


@dataclass(frozen=True)
class TrainingData:
    """The training window: features + target, with the batch each row came from."""

    frame: pd.DataFrame
    batch_ids: tuple[str, ...]
    new_batch_ids: tuple[str, ...]

    @property
    def rows(self) -> int:
        return len(self.frame)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so readers see the old or the new content, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Manifest:
    """Remembers every batch ever seen, so none is used twice or lost."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.batches: dict[str, dict[str, Any]] = {}
        if path.exists():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise DataError(f"manifest {path} is not valid JSON: {exc}") from None
            if raw.get("version") != MANIFEST_VERSION:
                raise DataError(f"manifest {path} has unknown version {raw.get('version')!r}")
            self.batches = raw["batches"]

    def save(self) -> None:
        body = {"version": MANIFEST_VERSION, "batches": self.batches}
        atomic_write_text(self.path, json.dumps(body, indent=1, sort_keys=True))

    def by_digest(self, sha256: str) -> str | None:
        """The accepted batch with this content; a quarantined one may come back once fixed."""
        for batch_id, entry in self.batches.items():
            if entry["sha256"] == sha256 and entry["status"] == "accepted":
                return batch_id
        return None

    def accepted(self) -> list[str]:
        return sorted(b for b, e in self.batches.items() if e["status"] == "accepted")

    def unconsumed(self) -> list[str]:
        return [b for b in self.accepted() if not self.batches[b].get("consumed_by")]

    def mark_consumed(self, batch_ids: list[str] | tuple[str, ...], run_id: str) -> None:
        for batch_id in batch_ids:
            self.batches[batch_id]["consumed_by"] = run_id
        self.save()


def _null_rate_check(limit: float) -> pa.Check:
    return pa.Check(
        lambda s: bool(s.isna().mean() <= limit),
        element_wise=False,
        ignore_na=False,
        error=f"null rate above {limit:.0%}",
    )


def batch_schema(contract: Contract) -> pa.DataFrameSchema:
    """The pandera schema a batch must satisfy; derived from the contract, never hand-kept."""
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
    target_checks = [
        pa.Check(
            lambda s: bool(s.notna().all()),
            element_wise=False,
            ignore_na=False,
            error="target has missing values",
        ),
    ]
    if contract.task == "classification":
        target_checks.append(
            pa.Check(
                lambda s: s.nunique(dropna=True) >= 2,
                element_wise=False,
                error="target has a single class",
            )
        )
        target_dtype: Any = None
    else:
        target_dtype = float
    columns[contract.target] = pa.Column(
        target_dtype, nullable=True, coerce=target_dtype is not None, checks=target_checks
    )
    if contract.timestamp is not None:
        columns[contract.timestamp] = pa.Column(
            pd.DatetimeTZDtype(tz="UTC"), nullable=False, coerce=True
        )
    return pa.DataFrameSchema(columns, strict=False, coerce=True)


def read_batch(path: Path, contract: Contract) -> pd.DataFrame:
    """Read a CSV or Parquet batch; categorical columns stay text so "01" is not 1."""
    if path.suffix == ".csv":
        dtypes = {n: "string" for n in contract.categorical}
        return pd.read_csv(path, dtype=dtypes, keep_default_na=True)
    return pd.read_parquet(path)


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


def validate_batch(
    raw: pd.DataFrame, contract: Contract
) -> tuple[pd.DataFrame | None, BatchReport]:
    """Check one batch; returns the clean frame (or None) and what was found."""
    reasons: list[str] = []
    try:
        frame = batch_schema(contract).validate(raw, lazy=True)
    except SchemaErrors as exc:
        reasons.extend(_describe_failures(exc))
        frame = None
    if frame is not None and len(frame) < contract.data.min_rows:
        reasons.append(f"only {len(frame)} rows; at least {contract.data.min_rows} needed")
    unknown: dict[str, int] = {}
    dropped = 0
    if frame is not None and not reasons:
        keep = [*contract.features, contract.target]
        if contract.timestamp:
            keep.append(contract.timestamp)
        frame = frame[keep]
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
    report = BatchReport(
        batch_id="",
        file="",
        accepted=not reasons,
        rows=len(raw),
        reasons=tuple(reasons),
        unknown_categories=unknown,
        duplicates_dropped=dropped,
    )
    return (frame if not reasons else None), report


def _quarantine(path: Path, quarantine: Path, batch_id: str, reasons: list[str]) -> Path:
    quarantine.mkdir(parents=True, exist_ok=True)
    target = quarantine / path.name
    if target.exists():
        target = quarantine / f"{path.stem}.{batch_id}{path.suffix}"
    reason = {
        "batch_id": batch_id,
        "file": path.name,
        "quarantined_at": datetime.now(UTC).isoformat(),
        "reasons": reasons,
    }
    # The reason goes first: a crash between the two steps leaves an explained file, never a
    # silently missing one.
    atomic_write_text(target.with_name(target.name + ".reason.json"), json.dumps(reason, indent=1))
    os.replace(path, target)
    return target


def pending_files(landing_zone: Path) -> list[Path]:
    if not landing_zone.exists():
        return []
    return sorted(
        p
        for p in landing_zone.iterdir()
        if p.is_file() and p.suffix in BATCH_SUFFIXES and not p.name.startswith(".")
    )


def intake(contract: Contract, manifest: Manifest) -> IntakeReport:
    """Validate every batch not seen before; accept it into the manifest or quarantine it."""
    accepted: list[BatchReport] = []
    quarantined: list[BatchReport] = []
    known_files = {e["file"]: b for b, e in manifest.batches.items() if e["status"] == "accepted"}
    for path in pending_files(contract.data.landing_zone):
        digest = sha256_file(path)
        batch_id = f"{path.stem}-{digest[:12]}"
        if known_files.get(path.name) == batch_id:
            continue
        duplicate_of = manifest.by_digest(digest)
        reasons: list[str]
        frame: pd.DataFrame | None = None
        if duplicate_of is not None:
            reasons = [f"same content as batch {duplicate_of}, already taken in"]
            report = BatchReport(batch_id, path.name, False, 0, tuple(reasons))
        else:
            try:
                raw = read_batch(path, contract)
            except Exception as exc:  # any parser failure means the file is unusable
                reasons = [f"unreadable: {type(exc).__name__}: {exc}"]
                report = BatchReport(batch_id, path.name, False, 0, tuple(reasons))
            else:
                frame, report = validate_batch(raw, contract)
                reasons = list(report.reasons)
                report = BatchReport(
                    batch_id,
                    path.name,
                    report.accepted,
                    report.rows,
                    report.reasons,
                    report.unknown_categories,
                    report.duplicates_dropped,
                )
        entry: dict[str, Any] = {
            "file": path.name,
            "sha256": digest,
            "seen_at": datetime.now(UTC).isoformat(),
            "rows": report.rows,
            "unknown_categories": report.unknown_categories,
            "duplicates_dropped": report.duplicates_dropped,
        }
        if report.accepted and frame is not None:
            entry.update(status="accepted", consumed_by=None, usable_rows=len(frame))
            accepted.append(report)
            log.info("batch accepted", extra={"batch": batch_id, "rows": len(frame)})
        else:
            moved = _quarantine(path, contract.data.quarantine, batch_id, reasons)
            entry.update(status="quarantined", reasons=reasons, quarantined_as=moved.name)
            quarantined.append(report)
            log.warning("batch quarantined", extra={"batch": batch_id, "reasons": reasons})
        manifest.batches[batch_id] = entry
        manifest.save()
    return IntakeReport(tuple(accepted), tuple(quarantined))


def load_window(contract: Contract, manifest: Manifest) -> TrainingData:
    """Re-read accepted batches and keep the most recent rows the window allows."""
    frames: list[pd.DataFrame] = []
    for batch_id in manifest.accepted():
        entry = manifest.batches[batch_id]
        path = contract.data.landing_zone / entry["file"]
        if not path.exists():
            raise DataError(f"accepted batch {batch_id} is missing from {path.parent}")
        if sha256_file(path) != entry["sha256"]:
            raise DataError(f"accepted batch {path} changed after intake; move it aside")
        frame, report = validate_batch(read_batch(path, contract), contract)
        if frame is None:
            raise DataError(f"accepted batch {path} no longer validates: {report.reasons}")
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
