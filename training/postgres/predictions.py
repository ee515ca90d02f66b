"""The `PredictionStore` port on PostgreSQL: every replica's captured rows and labels."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from champion.monitoring.capture import (
    COLUMNS,
    ENCODED,
    LABELLED,
    UNSTORABLE,
    Captured,
    Fresh,
    Written,
    as_row,
    encode_row,
    labelled_row,
    storable_key,
)
from champion.training.postgres.database import Database, DatabaseError, guarded

_TYPES = ("text", "bigint", "float8", "text", "text", "text", "float8")
# One statement per write, whatever its size: the rows travel as one array per column.
_INSERT = (
    f"INSERT INTO predictions ({', '.join(ENCODED)}) SELECT {', '.join(ENCODED)} FROM unnest("
    + ", ".join(f"%s::{t}[]" for t in _TYPES)
    + f") WITH ORDINALITY AS t({', '.join(ENCODED)}, ord) ORDER BY ord"
    " ON CONFLICT (request_id, row) DO NOTHING"
)
_ROTATE = (
    "DELETE FROM predictions WHERE id <= (SELECT MAX(id) FROM predictions) - %s"
    " AND NOT (label IS NOT NULL AND NOT exported)"
)
# Label-once as one statement: rows still unlabelled take their label; for every item it
# says whether it was labelled now and whether its row exists at all. Under READ COMMITTED a
# row another session is labelling is re-checked after that session commits: one wins.
_LABEL = """
WITH items AS (
    SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[]) WITH ORDINALITY
        AS t(request_id, row, label, ord)
), done AS (
    UPDATE predictions p SET label = i.label, labelled_at = %s FROM items i
    WHERE p.request_id = i.request_id AND p.row = i.row AND p.label IS NULL
    RETURNING p.request_id, p.row
)
SELECT i.ord, d.request_id IS NOT NULL,
       EXISTS (SELECT 1 FROM predictions q WHERE q.request_id = i.request_id AND q.row = i.row)
FROM items i LEFT JOIN done d ON d.request_id = i.request_id AND d.row = i.row
ORDER BY i.ord
"""


def _encode(c: Captured) -> tuple[Any, ...]:
    """`encode_row`, plus what PostgreSQL text refuses that SQLite takes (a NUL character)."""
    if "\x00" in c.request_id or "\x00" in c.model_version:
        raise ValueError("a NUL character cannot be stored in PostgreSQL text")
    return encode_row(c)


def _key_storable(request_id: Any, row: Any) -> bool:
    return storable_key(request_id, row) and "\x00" not in request_id


class PgPredictionLog:
    """The prediction log every replica writes to; rotation keeps about `max_rows` rows.

    Ids grow with insertion, but with several writers a row may commit after a higher id
    already committed: a drift window read between the two misses that row (it stays in the
    log, labelled and exported as any other). Drift windows are samples; nothing is lost.
    """

    def __init__(self, database: Database, *, max_rows: int = 200_000) -> None:
        self.database = database
        self.max_rows = max_rows

    @guarded("prediction log read")
    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        with self.database.engine.connect() as conn:
            return list(conn.exec_driver_sql(sql, args).all())

    def write(self, items: Sequence[Captured]) -> Written:
        rows: list[tuple[Any, ...]] = []
        for c in items:
            try:
                rows.append(_encode(c))
            except UNSTORABLE:
                continue
        bad = len(items) - len(rows)
        inserted = 0
        try:
            with self.database.engine.begin() as conn:
                if rows:
                    columns = [list(col) for col in zip(*rows, strict=True)]
                    inserted = max(conn.exec_driver_sql(_INSERT, tuple(columns)).rowcount, 0)
                conn.exec_driver_sql(_ROTATE, (self.max_rows,))
        except SQLAlchemyError as exc:  # the capture buffer counts it as write_failed
            raise DatabaseError(
                f"prediction log write failed: {exc.__class__.__name__}: {exc}"
            ) from exc
        return Written(inserted=inserted, duplicates=len(rows) - inserted, unserialisable=bad)

    def recent(self, *, limit: int, version: str | None = None) -> list[dict[str, Any]]:
        if version is None:
            found = self._query(
                f"SELECT {COLUMNS} FROM predictions ORDER BY id DESC LIMIT %s", (limit,)
            )
        else:
            found = self._query(
                f"SELECT {COLUMNS} FROM predictions WHERE model_version = %s"
                " ORDER BY id DESC LIMIT %s",
                (version, limit),
            )
        return [as_row(r) for r in reversed(found)]

    @guarded("prediction log read")
    def since(self, after_id: int, *, limit: int, version: str) -> Fresh:
        with self.database.engine.connect() as conn, conn.begin():
            # One snapshot for the count and the rows.
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            fresh = int(
                conn.exec_driver_sql(
                    "SELECT COUNT(*) FROM predictions WHERE model_version = %s AND id > %s",
                    (version, after_id),
                ).scalar_one()
            )
            found = conn.exec_driver_sql(
                f"SELECT {COLUMNS} FROM predictions WHERE model_version = %s AND id > %s"
                " ORDER BY id DESC LIMIT %s",
                (version, after_id, limit),
            ).all()
        rows = [as_row(r) for r in reversed(found)]
        return Fresh(rows=rows, max_id=rows[-1]["id"] if rows else after_id, fresh=fresh)

    @guarded("labelling")
    def label(self, items: Sequence[tuple[str, int, Any]]) -> tuple[list[str], list[str]]:
        """All or nothing, each row exactly once across every replica (see `_LABEL`)."""
        verdict: list[str | None] = []  # per item: "unknown", "done", or None (to label)
        seen: set[tuple[str, int]] = set()
        ids: list[str] = []
        rows: list[int] = []
        labels: list[str] = []
        for request_id, row, label in items:
            if not _key_storable(request_id, row):
                verdict.append("unknown")  # it could never have been captured
            elif (request_id, row) in seen:
                verdict.append("done")  # named twice: its first mention labels it
            else:
                seen.add((request_id, row))
                verdict.append(None)
                ids.append(request_id)
                rows.append(row)
                labels.append(json.dumps(label))
        with self.database.engine.begin() as conn:
            if ids:
                found = conn.exec_driver_sql(_LABEL, (ids, rows, labels, time.time())).all()
                results = iter(found)
                for i, v in enumerate(verdict):
                    if v is None:
                        _, labelled, known = next(results)
                        verdict[i] = None if labelled else ("done" if known else "unknown")
            keys = [f"{r}#{n}" for r, n, _ in items]
            unknown = [k for k, v in zip(keys, verdict, strict=True) if v == "unknown"]
            done = [k for k, v in zip(keys, verdict, strict=True) if v == "done"]
            if unknown or done:
                conn.rollback()  # all or nothing
        return unknown, done

    def labelled(self, *, limit: int) -> list[dict[str, Any]]:
        found = self._query(
            f"SELECT {LABELLED} FROM predictions"
            " WHERE label IS NOT NULL ORDER BY labelled_at DESC, id DESC LIMIT %s",
            (limit,),
        )
        return [labelled_row(r) for r in found]

    @guarded("feedback export")
    def claim_export(self, name: str, *, min_rows: int) -> int:
        """Name every pending labelled row into batch `name` once there are `min_rows`; one
        transaction holding the rows it counts, so a row is named into one batch only."""
        with self.database.engine.begin() as conn:
            pending = conn.exec_driver_sql(
                "SELECT id FROM predictions"
                " WHERE label IS NOT NULL AND NOT exported AND export_name IS NULL FOR UPDATE"
            ).all()
            if len(pending) < min_rows or not pending:
                return 0
            return int(
                conn.exec_driver_sql(
                    "UPDATE predictions SET export_name = %s WHERE id = ANY(%s)",
                    (name, [i for (i,) in pending]),
                ).rowcount
            )

    def claimed(self) -> list[str]:
        found = self._query(
            "SELECT export_name FROM predictions"
            " WHERE label IS NOT NULL AND NOT exported AND export_name IS NOT NULL"
            " GROUP BY export_name ORDER BY MIN(id)"
        )
        return [name for (name,) in found]

    def export_rows(self, name: str) -> list[tuple[int, dict[str, Any], Any, float]]:
        found = self._query(
            "SELECT id, features, label, at FROM predictions WHERE export_name = %s ORDER BY id",
            (name,),
        )
        return [(i, json.loads(f), json.loads(lab), at) for i, f, lab, at in found]

    @guarded("feedback export")
    def finish_export(self, name: str) -> int:
        with self.database.engine.begin() as conn:
            return int(
                conn.exec_driver_sql(
                    "UPDATE predictions SET exported = TRUE"
                    " WHERE export_name = %s AND NOT exported",
                    (name,),
                ).rowcount
            )

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM predictions")[0][0])

    def close(self) -> None:
        """Nothing of its own to close: the database (and its pool) belongs to the caller."""
