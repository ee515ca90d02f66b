"""Generates the Agrawal loan-approval demo stream and writes it as batches into a landing zone."""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

FEATURES_NUMERIC = ("salary", "commission", "age", "hvalue", "hyears", "loan")
FEATURES_CATEGORICAL = ("elevel", "car", "zipcode")
TARGET = "approved"
TIMESTAMP = "event_time"

# Column order of the frames: the classic attribute order of the generator, then label and time.
COLUMNS = (
    "salary",
    "commission",
    "age",
    "elevel",
    "car",
    "zipcode",
    "hvalue",
    "hyears",
    "loan",
    TARGET,
    TIMESTAMP,
)

DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)
DEFAULT_STEP_SECONDS = 60.0
FORMATS = ("csv", "parquet")

# Multiplier of the per-batch seed derivation (seed * SEED_STRIDE + global batch index).
SEED_STRIDE = 100_003

# Default concept after the drift: function 9 (disposable income from salary + commission, loan
# and education level).  Measured on the same 20,000 rows (seed 0, no label noise): agreement of
# each function's labels with function 1's, and positive rate:
#   f1 1.000 / 0.674   f2 0.461 / 0.388   f3 0.469 / 0.535   f4 0.456 / 0.384   f5 0.466 / 0.401
#   f6 0.302 / 0.404   f7 0.488 / 0.484   f8 0.667 / 0.980   f9 0.490 / 0.485   f10 0.674 / 0.997
# In both bands (agreement 0.45-0.70, positive rate 0.30-0.70): 2, 3, 4, 5, 7, 9; 9 sits well
# inside them and uses a categorical attribute.  HistGradientBoostingClassifier (native
# categorical support on ordinal codes), 3,000 training rows, roc_auc on the 20,000 rows:
# f1 1.000, f9 0.997 (0.940 and 0.941 with 5% label noise); the f1 model scores 0.495 on f9.
FUNCTION_AFTER_DEFAULT = 9

# Boundaries of the three age groups shared by functions 1-6.
_YOUNG_BELOW = 40
_OLD_FROM = 60

_BATCH_NAME = re.compile(r"^batch-(\d+)\.[^/]+$")

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class _Applicants:
    """Raw attribute arrays of n generated applicants (categoricals still as integer codes)."""

    salary: FloatArray
    commission: FloatArray
    age: IntArray
    elevel: IntArray
    car: IntArray
    zipcode: IntArray
    hvalue: FloatArray
    hyears: IntArray
    loan: FloatArray


def _draw_applicants(rng: np.random.Generator, n: int) -> _Applicants:
    """Draw n applicants as in Agrawal et al. (1993) / MOA's AgrawalGenerator."""
    salary = 20_000.0 + 130_000.0 * rng.random(n)
    commission_draw = 10_000.0 + 65_000.0 * rng.random(n)
    commission = np.where(salary >= 75_000.0, 0.0, commission_draw)
    age = rng.integers(20, 81, size=n, dtype=np.int64)
    elevel = rng.integers(0, 5, size=n, dtype=np.int64)
    car = rng.integers(1, 21, size=n, dtype=np.int64)
    zipcode = rng.integers(0, 9, size=n, dtype=np.int64)
    hvalue = (9 - zipcode) * 100_000.0 * (0.5 + rng.random(n))
    hyears = rng.integers(1, 31, size=n, dtype=np.int64)
    loan = 500_000.0 * rng.random(n)
    return _Applicants(
        salary=salary,
        commission=commission,
        age=age,
        elevel=elevel,
        car=car,
        zipcode=zipcode,
        hvalue=hvalue,
        hyears=hyears,
        loan=loan,
    )


def _between(x: npt.NDArray[np.float64] | IntArray, low: float, high: float) -> BoolArray:
    """Elementwise low <= x <= high."""
    return np.asarray((x >= low) & (x <= high), dtype=np.bool_)


def _by_age(a: _Applicants, young: BoolArray, middle: BoolArray, old: BoolArray) -> BoolArray:
    """Pick per row the outcome of the applicant's age group (<40, 40-59, >=60)."""
    is_young = a.age < _YOUNG_BELOW
    is_middle = (a.age >= _YOUNG_BELOW) & (a.age < _OLD_FROM)
    return np.asarray(np.where(is_young, young, np.where(is_middle, middle, old)), dtype=np.bool_)


def _elevel_in(a: _Applicants, levels: tuple[int, ...]) -> BoolArray:
    return np.asarray(np.isin(a.elevel, levels), dtype=np.bool_)


def _total_income(a: _Applicants) -> FloatArray:
    return np.asarray(a.salary + a.commission, dtype=np.float64)


def _f1(a: _Applicants) -> BoolArray:
    return np.asarray((a.age < _YOUNG_BELOW) | (a.age >= _OLD_FROM), dtype=np.bool_)


def _f2(a: _Applicants) -> BoolArray:
    s = a.salary
    return _by_age(
        a, _between(s, 50_000, 100_000), _between(s, 75_000, 125_000), _between(s, 25_000, 75_000)
    )


def _f3(a: _Applicants) -> BoolArray:
    return _by_age(a, _elevel_in(a, (0, 1)), _elevel_in(a, (1, 2, 3)), _elevel_in(a, (2, 3, 4)))


def _f4(a: _Applicants) -> BoolArray:
    s = a.salary
    band_25_75 = _between(s, 25_000, 75_000)
    band_50_100 = _between(s, 50_000, 100_000)
    band_75_125 = _between(s, 75_000, 125_000)
    return _by_age(
        a,
        np.where(_elevel_in(a, (0, 1)), band_25_75, band_50_100),
        np.where(_elevel_in(a, (1, 2, 3)), band_50_100, band_75_125),
        np.where(_elevel_in(a, (2, 3, 4)), band_50_100, band_25_75),
    )


def _f5(a: _Applicants) -> BoolArray:
    s, loan = a.salary, a.loan
    loan_100_300 = _between(loan, 100_000, 300_000)
    loan_200_400 = _between(loan, 200_000, 400_000)
    loan_300_500 = _between(loan, 300_000, 500_000)
    return _by_age(
        a,
        np.where(_between(s, 50_000, 100_000), loan_100_300, loan_200_400),
        np.where(_between(s, 75_000, 125_000), loan_200_400, loan_300_500),
        np.where(_between(s, 25_000, 75_000), loan_300_500, loan_100_300),
    )


def _f6(a: _Applicants) -> BoolArray:
    t = _total_income(a)
    return _by_age(
        a, _between(t, 50_000, 100_000), _between(t, 75_000, 125_000), _between(t, 25_000, 75_000)
    )


def _f7(a: _Applicants) -> BoolArray:
    disposable = 2.0 * _total_income(a) / 3.0 - a.loan / 5.0 - 20_000.0
    return np.asarray(disposable > 0, dtype=np.bool_)


def _f8(a: _Applicants) -> BoolArray:
    disposable = 2.0 * _total_income(a) / 3.0 - 5_000.0 * a.elevel - 20_000.0
    return np.asarray(disposable > 0, dtype=np.bool_)


def _f9(a: _Applicants) -> BoolArray:
    disposable = 2.0 * _total_income(a) / 3.0 - 5_000.0 * a.elevel - a.loan / 5.0 - 10_000.0
    return np.asarray(disposable > 0, dtype=np.bool_)


def _f10(a: _Applicants) -> BoolArray:
    equity = 0.1 * a.hvalue * np.maximum(a.hyears - 20, 0)
    disposable = 2.0 * _total_income(a) / 3.0 - 5_000.0 * a.elevel + equity / 5.0 - 10_000.0
    return np.asarray(disposable > 0, dtype=np.bool_)


# The ten classification functions of the paper; True = group A (loan approved).
_FUNCTIONS: dict[int, Callable[[_Applicants], BoolArray]] = {
    1: _f1,
    2: _f2,
    3: _f3,
    4: _f4,
    5: _f5,
    6: _f6,
    7: _f7,
    8: _f8,
    9: _f9,
    10: _f10,
}


def _as_int(value: object) -> int | None:
    """`value` as an int if it is an integer (bool excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        return None
    return int(value)


def _check_function(name: str, value: object) -> None:
    number = _as_int(value)
    if number is None or number not in _FUNCTIONS:
        raise ValueError(f"{name}: must be an integer from 1 to 10, got {value!r}")


def _check_int_at_least(name: str, value: object, minimum: int) -> None:
    number = _as_int(value)
    if number is None or number < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")


def _check_label_noise(value: object) -> None:
    if not isinstance(value, Real) or isinstance(value, bool) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"label_noise: must be a number in [0, 1), got {value!r}")


def _as_utc(start: datetime | None) -> pd.Timestamp:
    """The start instant as a UTC timestamp; a naive datetime is taken to be UTC."""
    ts = pd.Timestamp(DEFAULT_START if start is None else start)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _prefixed(prefix: str, codes: IntArray) -> npt.NDArray[np.str_]:
    return np.char.add(prefix, codes.astype(np.str_))


def agrawal_frame(
    n_rows: int,
    *,
    function: int,
    seed: int,
    label_noise: float = 0.0,
    start: datetime | None = None,
    step_seconds: float = DEFAULT_STEP_SECONDS,
) -> pd.DataFrame:
    """Generate `n_rows` Agrawal applicants labelled by classification `function` (1-10).

    Numeric features are float64, categorical ones strings ("e0".."e4", "car1".."car20",
    "z0".."z8"), `approved` is int64 (1 = group A) and `event_time` is UTC, `step_seconds`
    apart from `start` (default 2026-01-01T00:00Z; a naive `start` is read as UTC).  A
    `label_noise` fraction of the labels, chosen by the seeded generator, is flipped.  The same
    arguments always give the same frame.
    """
    _check_int_at_least("n_rows", n_rows, 1)
    _check_function("function", function)
    _check_int_at_least("seed", seed, 0)
    _check_label_noise(label_noise)
    if not isinstance(step_seconds, Real) or not np.isfinite(step_seconds) or step_seconds <= 0:
        raise ValueError(f"step_seconds: must be a finite number > 0, got {step_seconds!r}")
    n = int(n_rows)

    rng = np.random.default_rng(int(seed))
    applicants = _draw_applicants(rng, n)
    label = _FUNCTIONS[int(function)](applicants).astype(np.int64)
    n_flip = round(float(label_noise) * n)
    if n_flip > 0:
        flip = rng.choice(n, size=n_flip, replace=False)
        label[flip] = 1 - label[flip]

    offsets_ns = np.round(np.arange(n, dtype=np.float64) * float(step_seconds) * 1e9)
    event_time = _as_utc(start).as_unit("ns") + pd.to_timedelta(offsets_ns.astype(np.int64))

    frame = pd.DataFrame(
        {
            "salary": applicants.salary,
            "commission": applicants.commission,
            "age": applicants.age.astype(np.float64),
            "elevel": pd.Series(_prefixed("e", applicants.elevel), dtype=str),
            "car": pd.Series(_prefixed("car", applicants.car), dtype=str),
            "zipcode": pd.Series(_prefixed("z", applicants.zipcode), dtype=str),
            "hvalue": applicants.hvalue,
            "hyears": applicants.hyears.astype(np.float64),
            "loan": applicants.loan,
            TARGET: label,
            TIMESTAMP: pd.Series(event_time),
        }
    )
    return frame.loc[:, list(COLUMNS)]


@dataclass(frozen=True)
class SimulationPlan:
    """What `simulate_batches` writes: how many batches of how many rows, and when drift starts.

    Batches whose global index (0 = the first batch ever, file `batch-00001`) is >= `drift_at`
    are labelled with `function_after`, all others with `function_before`; `drift_at=None`
    means no drift.
    """

    batches: int
    rows: int
    drift_at: int | None
    seed: int
    function_before: int = 1
    function_after: int = FUNCTION_AFTER_DEFAULT
    label_noise: float = 0.05
    fmt: str = "csv"

    def __post_init__(self) -> None:
        _check_int_at_least("batches", self.batches, 1)
        _check_int_at_least("rows", self.rows, 1)
        if self.drift_at is not None:
            _check_int_at_least("drift_at", self.drift_at, 0)
        _check_int_at_least("seed", self.seed, 0)
        _check_function("function_before", self.function_before)
        _check_function("function_after", self.function_after)
        _check_label_noise(self.label_noise)
        if self.fmt not in FORMATS:
            raise ValueError(f"fmt: must be one of {', '.join(FORMATS)}, got {self.fmt!r}")

    def function_for(self, global_index: int) -> int:
        """The classification function of the batch with this global (0-based) index."""
        drifted = self.drift_at is not None and global_index >= self.drift_at
        return self.function_after if drifted else self.function_before

    def seed_for(self, global_index: int) -> int:
        """The generator seed of the batch with this global (0-based) index."""
        return self.seed * SEED_STRIDE + global_index


# How far back a written batch is dated (longer than any sensible `data.settle_seconds`).
SETTLED_AGE_SECONDS = 24 * 3600


def _existing_batch_numbers(folder: Path) -> list[int]:
    """File numbers (1-based) of the `batch-NNNNN.*` files in `folder` (hidden files skipped)."""
    numbers = []
    for entry in folder.iterdir():
        match = _BATCH_NAME.match(entry.name)
        if match is not None:
            numbers.append(int(match.group(1)))
    return numbers


def _write_atomically(frame: pd.DataFrame, target: Path, fmt: str) -> None:
    """Write to a hidden temp file beside `target`, flush it to disk, then rename it into place."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        # Complete the moment it appears: dated back so intake's settle time does not hold it.
        settled = time.time() - SETTLED_AGE_SECONDS
        os.utime(tmp, (settled, settled))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def simulate_batches(
    plan: SimulationPlan, *, landing_zone: Path, first_index: int | None = None
) -> list[Path]:
    """Write `plan.batches` batch files into `landing_zone` and return their paths in order.

    Files are named `batch-NNNNN.<fmt>`, numbered from 1.  With `first_index=None` numbering
    continues after the highest `batch-NNNNN.*` already in the folder, so repeated calls append;
    otherwise `first_index` is the global 0-based index of the first batch (file number
    `first_index + 1`).  Existing files are never overwritten (FileExistsError).  Batch `g`
    (global index) uses seed `plan.seed * 100003 + g` and its rows start at
    2026-01-01T00:00Z + g * rows * 60 s, one minute apart, so time continues across batches
    of equal size.  Each file appears atomically (temp name starting with "." then rename).
    """
    if not isinstance(plan, SimulationPlan):
        raise ValueError(f"plan: must be a SimulationPlan, got {type(plan).__name__}")
    if first_index is not None:
        _check_int_at_least("first_index", first_index, 0)
    folder = Path(landing_zone)
    folder.mkdir(parents=True, exist_ok=True)

    existing = _existing_batch_numbers(folder)
    start_index = max(existing, default=0) if first_index is None else int(first_index)
    indices = range(start_index, start_index + plan.batches)
    clashes = sorted(set(existing) & {g + 1 for g in indices})
    if clashes:
        raise FileExistsError(
            f"first_index: batch number(s) {clashes} already exist in {folder}; "
            "batches are never overwritten"
        )

    start = _as_utc(DEFAULT_START)
    step = pd.Timedelta(seconds=DEFAULT_STEP_SECONDS)
    written = []
    for global_index in indices:
        frame = agrawal_frame(
            plan.rows,
            function=plan.function_for(global_index),
            seed=plan.seed_for(global_index),
            label_noise=plan.label_noise,
            start=(start + step * (global_index * plan.rows)).to_pydatetime(),
            step_seconds=DEFAULT_STEP_SECONDS,
        )
        target = folder / f"batch-{global_index + 1:05d}.{plan.fmt}"
        _write_atomically(frame, target, plan.fmt)
        written.append(target)
    return written
