"""The `DriftStore` port on PostgreSQL: the leader's drift state wherever the leader runs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.dialects.postgresql import insert as upsert

from champion.training.postgres.database import Database, guarded
from champion.training.postgres.schema import documents, drift_history

STATE = "drift.state"
LATEST = "drift.latest"


class PgDriftStore:
    """State and latest summary as two documents; the history as rows, trimmed past 10 %."""

    where: str

    def __init__(self, database: Database) -> None:
        self.database = database
        self.where = f"{STATE} in {database.safe_url}"

    @guarded("drift state read")
    def _get(self, name: str) -> Any:
        with self.database.engine.connect() as conn:
            body = conn.execute(
                select(documents.c.body).where(documents.c.name == name)
            ).scalar_one_or_none()
        return None if body is None else json.loads(body)

    @guarded("drift state write")
    def _put(self, name: str, value: Mapping[str, Any]) -> None:
        stmt = upsert(documents).values(name=name, body=json.dumps(value))
        with self.database.engine.begin() as conn:
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[documents.c.name], set_={"body": stmt.excluded.body}
                )
            )

    def read_state(self) -> Mapping[str, Any] | None:
        raw = self._get(STATE)
        if raw is not None and not isinstance(raw, dict):
            raise TypeError(f"the state is {type(raw).__name__}, not an object")
        return raw

    def write_state(self, state: Mapping[str, Any]) -> None:
        self._put(STATE, state)

    def latest(self) -> dict[str, Any] | None:
        raw = self._get(LATEST)
        return None if raw is None else dict(raw)

    def write_latest(self, summary: Mapping[str, Any]) -> None:
        self._put(LATEST, summary)

    @guarded("drift history write")
    def append_history(self, entry: Mapping[str, Any], *, keep: int) -> None:
        with self.database.engine.begin() as conn:
            newest = conn.execute(
                insert(drift_history).values(body=json.dumps(entry)).returning(drift_history.c.id)
            ).scalar_one()
            oldest = conn.execute(select(func.min(drift_history.c.id))).scalar_one()
            if newest - oldest + 1 > keep + keep // 10:
                conn.execute(drift_history.delete().where(drift_history.c.id <= newest - keep))

    @guarded("drift history read")
    def history(self) -> list[dict[str, Any]]:
        """Every kept line, oldest first."""
        with self.database.engine.connect() as conn:
            found = conn.execute(select(drift_history.c.body).order_by(drift_history.c.id))
            return [json.loads(b) for b in found.scalars()]
