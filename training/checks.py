"""What a batch must satisfy: the pandera schema from the contract, typed targets, ranges."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from champion.training.config import FLOAT32_MAX, Contract
from champion.training.encoding import as_booleans, boolean_codes

log = logging.getLogger(__name__)


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


def class_key(value: Any) -> tuple[str, Any]:
    # True == 1 and 1 == 1.0 in Python; a class is a number, a text or a boolean, never mixed.
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if isinstance(value, str):
        return ("text", value)
    return ("other", repr(value))


def merge_classes(known: Sequence[Any], new: Sequence[Any]) -> list[Any]:
    merged = {class_key(v): v for v in [*known, *new]}
    return [merged[k] for k in sorted(merged)]


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
        # Booleans arrive normalised by `validate_batch` (pandas' nullable booleans).
        dtype: Any = {"numeric": float, "boolean": "boolean"}.get(feat.type, str)
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
    if contract.weight is not None:
        columns[contract.weight] = pa.Column(
            float,
            nullable=False,
            coerce=True,
            checks=[
                pa.Check(
                    lambda s: bool(np.isfinite(s).all() and (s >= 0).all()),
                    element_wise=False,
                    error="weights must be finite numbers >= 0",
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
    dtypes = {n: "string" for n in [*contract.categorical, *contract.ordinal, *contract.boolean]}
    if _text_classes(contract):
        dtypes[contract.target] = "string"  # so "01" stays "01"
    return pd.read_csv(
        buffer,
        dtype=dtypes,
        keep_default_na=True,
        compression="gzip" if suffix == ".csv.gz" else None,
    )


_DELIMITERS = {";": "`;`", "\t": "tab", "|": "`|`"}


def delimiter_hint(raw: pd.DataFrame, contract: Contract) -> str | None:
    """Why the header does not match when it is another delimiter's: None when it is not.

    A `;`-, tab- or `|`-separated file parses as one column named after the whole header line,
    which would otherwise be reported as every contract column missing.
    """
    expected = {*contract.features, contract.target}
    if expected <= {str(c) for c in raw.columns}:
        return None
    for sep, shown in _DELIMITERS.items():
        for column in (str(c) for c in raw.columns if sep in str(c)):
            # Two contract columns in one name: not a name that happens to hold the character.
            parts = {part.strip().strip('"') for part in column.split(sep)}
            if len(parts & expected) >= min(2, len(expected)):
                return (
                    f"the header looks {shown}-separated ({column[:60]!r}): "
                    "batches must be comma-separated CSV"
                )
    return None


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


def distinct(series: pd.Series) -> list[Any]:
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
    values = distinct(raw)
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
        keys = {class_key(v) for v in known}
        new = [v for v in values if class_key(v) not in keys]
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


def _booleans(raw: pd.DataFrame, contract: Contract) -> tuple[pd.DataFrame, list[str]]:
    """Boolean columns as nullable booleans, and a reason per column holding other values."""
    present = [n for n in contract.boolean if n in raw.columns]
    if not present:
        return raw, []
    reasons = []
    out = raw.copy()
    for name in present:
        coded, bad = boolean_codes(raw[name])
        if bad.any():
            reasons.append(
                f"column '{name}': {int(bad.sum())} values are not booleans (true/false or "
                f"1/0, any case), e.g. {_show(distinct(raw[name][bad]))}"
            )
        out[name] = as_booleans(coded)  # a bad value as missing: one reason, not two
    return out, reasons


def validate_batch(
    raw: pd.DataFrame, contract: Contract, *, known_classes: Sequence[Any] | None = None
) -> tuple[pd.DataFrame | None, BatchReport]:
    """Check one batch; returns the clean frame (or None) and what was found.

    `known_classes`: without declared classes, the target values of the batches taken in so
    far; a value outside them is refused (empty or None: anything goes).
    """
    hint = delimiter_hint(raw, contract)
    if hint is not None:
        # Every column would be reported missing: the one reason that explains them all.
        return None, BatchReport("", "", False, len(raw), (hint,))
    reasons: list[str] = []
    raw, boolean_reasons = _booleans(raw, contract)
    reasons.extend(boolean_reasons)
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
        if contract.weight:
            keep.append(contract.weight)
        frame = frame[keep].assign(**{contract.target: target})
        duplicated = frame.duplicated()
        dropped = int(duplicated.sum())
        if dropped / max(len(frame), 1) > contract.data.max_duplicate_rate:
            reasons.append(
                f"{dropped} of {len(frame)} rows are duplicates "
                f"(more than {contract.data.max_duplicate_rate:.0%})"
            )
        frame = frame.loc[~duplicated].reset_index(drop=True)
        for name in [*contract.categorical, *contract.ordinal]:
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
