"""How ordinal and boolean values become the numbers the model reads.

One vocabulary for every path: batch intake (which refuses what is not a boolean), the
training frame (`prepare_features`), `champion score` files and the HTTP API, so a value
means the same thing wherever it arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

# Text a boolean feature accepts in a CSV, compared without case: true/false and 1/0.
TRUE_TEXT = frozenset({"true", "1"})
FALSE_TEXT = frozenset({"false", "0"})


def boolean_value(value: Any) -> float | None:
    """1.0 / 0.0 for a boolean-like value, NaN for a missing one; None when it is neither."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return np.nan
    if isinstance(value, bool | np.bool_):
        return 1.0 if value else 0.0
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value) if value in (0, 1) else None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in TRUE_TEXT:
            return 1.0
        if text in FALSE_TEXT:
            return 0.0
    return None


def boolean_codes(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The column as 1.0 / 0.0 / NaN, and a mask of the values that are not booleans."""
    coded = [boolean_value(v) for v in series.astype(object)]
    bad = pd.Series([c is None for c in coded], index=series.index)
    values = pd.Series([np.nan if c is None else c for c in coded], index=series.index)
    return values.astype("float64"), bad


def as_booleans(coded: pd.Series) -> pd.Series:
    """`boolean_codes`' 1.0 / 0.0 / NaN as pandas' nullable booleans (NaN: missing)."""
    return coded.map({1.0: True, 0.0: False}).astype("boolean")


def ordinal_codes(series: pd.Series, values: Sequence[str]) -> tuple[pd.Series, pd.Series]:
    """Each value's position in `values` (lowest first) as a float; NaN for missing and
    unknown values (the model imputes them), with a mask of the unknown ones."""
    position = {v: float(i) for i, v in enumerate(values)}
    raw = series.astype(object)
    present = raw.notna()
    coded = raw.map(lambda v: position.get(str(v), np.nan) if v is not None else np.nan)
    coded = coded.where(present, np.nan).astype("float64")
    return coded, present & coded.isna()
