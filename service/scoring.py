"""Batch scoring: a CSV or Parquet file of any size, in chunks, by the champion.

Offline, the champion is loaded exactly as a serving worker loads it (`ModelSlot`: digest,
signature, compiled form and parity checks) and each chunk goes through the request
validation the API applies, so a file scored here gets the answers `/predict` would give.
Against a URL, the chunks go to a running service's `/predict`. A row that fails validation
is written with its problem in the `error` column; the others are scored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from champion.service.validation import RequestInvalid, validate_instances
from champion.training.config import Contract
from champion.training.encoding import boolean_value
from champion.training.errors import ChampionError, DataError

FORMATS = (".csv", ".parquet")


class Scorer(Protocol):
    version: str

    def score(self, rows: list[dict[str, Any]]) -> Scored:
        """Predictions (and class probabilities) for `rows`, or raise RequestInvalid."""
        ...


@dataclass(frozen=True)
class Scored:
    predictions: list[Any]
    probabilities: list[list[float]] | None
    classes: list[Any] | None


@dataclass(frozen=True)
class Summary:
    rows: int
    scored: int
    failed: int
    chunks: int
    version: str


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(f"{path}: scoring reads and writes .csv or .parquet files, not {suffix!r}")
    return suffix


def read_chunks(path: Path, rows: int) -> Iterator[pd.DataFrame]:
    """The file's rows, `rows` at a time, never the whole file in memory."""
    if _format(path) == ".csv":
        # Text as written: numbers are parsed against the contract, so "007" stays a code.
        yield from pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=rows)
        return
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches(batch_size=rows):
        yield batch.to_pandas()


def count_rows(path: Path) -> int | None:
    """How many rows the file holds, when that is cheap to know (for the progress bar)."""
    if _format(path) == ".parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    with path.open("rb") as fh:
        return max(0, sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b"")) - 1)


def instances(frame: pd.DataFrame, contract: Contract) -> list[dict[str, Any]]:
    """The contract's features of each row as the API takes them: other columns (the target,
    a timestamp, an id) left out, empty or missing values as null, numbers from text."""
    features = contract.features
    names = [c for c in frame.columns if c in features]
    out: list[dict[str, Any]] = []
    for record in frame[names].to_dict(orient="records"):
        row: dict[str, Any] = {}
        for key, value in record.items():
            name = str(key)
            if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
                row[name] = None
            elif features[name].type == "numeric" and isinstance(value, str):
                try:
                    row[name] = float(value)
                except ValueError:
                    row[name] = value  # validation names the problem
            elif features[name].type == "boolean" and not isinstance(value, bool):
                # A file's true/false/1/0 (any case), as batch intake reads them.
                coded = boolean_value(value)
                row[name] = value if coded is None else bool(coded)
            elif isinstance(value, np.generic):
                row[name] = value.item()
            else:
                row[name] = value
        out.append(row)
    return out


class OfflineScorer:
    """The champion, loaded as a serving worker loads it, scoring in this process."""

    def __init__(self, slot: Any, contract: Contract) -> None:
        served = slot.current
        if served is None:
            raise ChampionError("there is no champion to score with: run `champion retrain`")
        self.served = served
        self.contract = contract
        self.version = str(served.version)

    def score(self, rows: list[dict[str, Any]]) -> Scored:
        batch = validate_instances({"instances": rows}, contract=self.contract, max_rows=len(rows))
        pred, proba = self.served.predict(batch)
        classes = self.served.classes
        return Scored(
            [v.item() if isinstance(v, np.generic) else v for v in pred],
            None if proba is None else np.asarray(proba, dtype=float).tolist(),
            None if classes is None else list(classes),
        )


class RemoteScorer:
    """A running service's `/predict`, a chunk per request."""

    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.client = httpx.Client(timeout=timeout)
        self.version = "?"

    def score(self, rows: list[dict[str, Any]]) -> Scored:
        import httpx

        try:
            r = self.client.post(f"{self.url}/predict", json={"instances": rows})
        except httpx.HTTPError as exc:
            raise ChampionError(f"cannot reach {self.url}: {exc}") from None
        body = r.json()
        if r.status_code == 422:
            from champion.service.validation import Problem

            problems = [Problem(**p) for p in body.get("problems", [])]
            raise RequestInvalid.listing(problems, what="instances")
        if not r.is_success:
            raise ChampionError(f"{self.url}/predict answered {r.status_code}: {body.get('error')}")
        self.version = str(body.get("model_version", "?"))
        return Scored(body["predictions"], body.get("probabilities"), body.get("classes"))


def _score_chunk(scorer: Scorer, rows: list[dict[str, Any]]) -> tuple[Scored, dict[int, str]]:
    """Score what validates; the rows that do not, each with its first problem."""
    try:
        return scorer.score(rows), {}
    except RequestInvalid as exc:
        bad: dict[int, str] = {}
        for p in exc.problems:
            if p.row is not None and p.row not in bad:
                bad[p.row] = f"{p.field}: {p.problem}" if p.field else p.problem
        if not bad:  # a problem of the whole chunk, not of its rows
            raise ChampionError(f"the chunk was refused: {exc.message}") from None
    good = [r for i, r in enumerate(rows) if i not in bad]
    scored = scorer.score(good) if good else Scored([], None, None)
    return scored, bad


def _columns(frame: pd.DataFrame, scored: Scored, bad: dict[int, str]) -> pd.DataFrame:
    n = len(frame)
    good = [i for i in range(n) if i not in bad]
    out = frame.reset_index(drop=True).copy()
    prediction: list[Any] = [None] * n
    for i, value in zip(good, scored.predictions, strict=True):
        prediction[i] = value
    out["prediction"] = pd.Series(prediction, dtype=object)  # labels stay labels beside None
    if scored.classes is not None and scored.probabilities is not None:
        for k, cls in enumerate(scored.classes):
            column = [math.nan] * n
            for i, probs in zip(good, scored.probabilities, strict=True):
                column[i] = probs[k]
            out[f"probability_{cls}"] = column
    out["error"] = [bad.get(i, "") for i in range(n)]
    return out


def score_file(
    src: Path,
    dst: Path,
    scorer: Scorer,
    contract: Contract,
    *,
    chunk_rows: int = 1000,
    on_chunk: Callable[[int], None] | None = None,
) -> Summary:
    """Score `src` into `dst` (CSV or Parquet by its suffix), `chunk_rows` at a time. The
    output is written beside `dst` and moved into place at the end: never half a file."""
    out_format = _format(dst)
    _format(src)
    tmp = dst.with_name(f".{dst.name}.part")
    rows = scored = failed = chunks = 0
    writer: Any = None
    try:
        for frame in read_chunks(src, chunk_rows):
            result, bad = _score_chunk(scorer, instances(frame, contract))
            table = _columns(frame, result, bad)
            if out_format == ".csv":
                table.to_csv(tmp, mode="w" if chunks == 0 else "a", header=chunks == 0, index=False)
            else:
                import pyarrow as pa
                import pyarrow.parquet as pq

                # One schema for every chunk: a regression's predictions are floats, class
                # labels are written as text (as a CSV holds them).
                kind: Callable[[Any], Any] = float if contract.task == "regression" else str
                predictions: list[Any] = [
                    None if v is None else kind(v) for v in table["prediction"]
                ]
                typed = table.assign(prediction=predictions)
                arrow = pa.Table.from_pandas(
                    typed, preserve_index=False, schema=None if writer is None else writer.schema
                )
                if writer is None:
                    writer = pq.ParquetWriter(tmp, arrow.schema)
                writer.write_table(arrow)
            chunks += 1
            rows += len(frame)
            failed += len(bad)
            scored += len(frame) - len(bad)
            if on_chunk is not None:
                on_chunk(len(frame))
        if writer is not None:
            writer.close()
            writer = None
        if chunks == 0:
            raise DataError(f"{src} holds no rows to score")
        tmp.replace(dst)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return Summary(rows, scored, failed, chunks, scorer.version)
