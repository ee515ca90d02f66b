"""Write CSV batches of generated data into an example's landing zone.

    python examples/make_batches.py --task multiclass --batches 3
    python examples/make_batches.py --task regression --batches 2 --first 4

`multiclass`: scikit-learn's `make_classification` (3 classes, named "bronze", "silver",
"gold"), six numeric columns and two categorical ones made by binning two more, with a few
missing values.  `regression`: Friedman #1 (`make_friedman1`) plus a categorical `region`
with an effect of its own, and a positive, right-skewed target (`demand`).

Every batch is a slice of one fixed pool of rows drawn with `--seed`, so batches written by
later runs (`--first`) follow the same distribution as the earlier ones.  Needs nothing
beyond numpy, pandas and scikit-learn: no dataset is downloaded.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification, make_friedman1

HERE = Path(__file__).resolve().parent
TASKS = ("multiclass", "regression")
POOL_ROWS = 20_000  # every batch is a slice of this pool
START = pd.Timestamp("2026-01-01T00:00:00Z")
STEP = pd.Timedelta(seconds=60)
CLASSES = ("bronze", "silver", "gold")
REGIONS = ("north", "south", "east", "west")
MISSING_RATE = 0.03


def _with_missing(frame: pd.DataFrame, columns: list[str], rng: np.random.Generator) -> None:
    for name in columns:
        frame.loc[rng.random(len(frame)) < MISSING_RATE, name] = np.nan


def multiclass_pool(seed: int = 7, rows: int = POOL_ROWS) -> pd.DataFrame:
    """Three classes; `shade` and `size` are binned from two informative columns."""
    x, y = make_classification(
        n_samples=rows,
        n_features=8,
        n_informative=5,
        n_redundant=1,
        n_classes=3,
        n_clusters_per_class=1,
        class_sep=1.2,
        flip_y=0.02,
        random_state=seed,
    )
    frame = pd.DataFrame(x[:, :6], columns=[f"x{i}" for i in range(1, 7)])
    frame["shade"] = pd.cut(x[:, 6], [-np.inf, -0.5, 0.5, np.inf], labels=["dark", "mid", "light"])
    frame["size"] = pd.qcut(x[:, 7], 4, labels=["s", "m", "l", "xl"])
    frame = frame.astype({"shade": object, "size": object})
    _with_missing(frame, ["x2", "x5", "shade"], np.random.default_rng(seed + 1))
    frame["tier"] = np.asarray(CLASSES, dtype=object)[y]
    return frame


def regression_pool(seed: int = 7, rows: int = POOL_ROWS) -> pd.DataFrame:
    """Friedman #1 (x6, x7 are noise) plus `region`; `demand` = exp of it, so skewed and > 0."""
    x, y = make_friedman1(n_samples=rows, n_features=7, noise=1.0, random_state=seed)
    rng = np.random.default_rng(seed + 1)
    region = rng.integers(0, len(REGIONS), size=rows)
    effect = np.array([0.0, 0.3, -0.2, 0.5])[region]
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(1, 8)])
    frame["region"] = np.asarray(REGIONS, dtype=object)[region]
    _with_missing(frame, ["x3", "x6", "region"], rng)
    frame["demand"] = np.round(5.0 * np.exp(0.08 * y + effect), 3)
    return frame


def pool(task: str, seed: int = 7) -> pd.DataFrame:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    frame = multiclass_pool(seed) if task == "multiclass" else regression_pool(seed)
    stamps = pd.date_range(START, periods=len(frame), freq=STEP)
    frame["event_time"] = stamps.strftime("%Y-%m-%dT%H:%M:%SZ")
    return frame


def write_batches(
    task: str,
    landing_zone: Path,
    *,
    batches: int,
    rows: int = 500,
    first: int = 1,
    seed: int = 7,
) -> list[Path]:
    """Write batches `first`..`first + batches - 1` (batch-0001.csv, ...); return their paths."""
    if first < 1 or batches < 1 or rows < 1:
        raise ValueError("first, batches and rows must be positive")
    if (first - 1 + batches) * rows > POOL_ROWS:
        raise ValueError(f"at most {POOL_ROWS} rows in all: lower --rows or --batches")
    data = pool(task, seed)
    landing_zone.mkdir(parents=True, exist_ok=True)
    written = []
    for number in range(first, first + batches):
        part = data.iloc[(number - 1) * rows : number * rows]
        path = landing_zone / f"batch-{number:04d}.csv"
        tmp = path.with_name(f".{path.name}.tmp")
        part.to_csv(tmp, index=False)
        os.replace(tmp, path)  # a reader never sees half a batch
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--rows", type=int, default=500, help="rows per batch")
    parser.add_argument("--first", type=int, default=1, help="number of the first batch")
    parser.add_argument("--seed", type=int, default=7, help="the pool's seed (keep it)")
    parser.add_argument(
        "--landing-zone",
        type=Path,
        default=None,
        help="default: the example's var/landing (as its champion.toml names)",
    )
    args = parser.parse_args(argv)
    landing = args.landing_zone or HERE / args.task / "var" / "landing"
    for path in write_batches(
        args.task, landing, batches=args.batches, rows=args.rows, first=args.first, seed=args.seed
    ):
        print(path)


if __name__ == "__main__":
    main()
