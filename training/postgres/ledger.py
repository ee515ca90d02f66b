"""The `LedgerStore` port on PostgreSQL: an append-only table, numbered without gaps."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from sqlalchemy import func, insert, select, text

from champion.training.clock import SystemClock
from champion.training.ports import Clock
from champion.training.postgres.database import Database, guarded
from champion.training.postgres.notify import CHANNEL
from champion.training.postgres.schema import ledger
from champion.training.records import LedgerEntry

_PAGE = 500  # rows per round trip when reading newest first


class PgLedger:
    """Every replica's verdicts, alias moves and manual actions in one table.

    An entry is stored as the file ledger stores a line (its JSON text), so what `append`
    returns is what every reader gets back. Appends take the table's write lock, so `seq`
    is 1, 2, 3 … in commit order with no gap, whichever replica appends. An entry naming a
    champion notifies every replica's swap listener (`notify.CHANNEL`) when it commits.
    """

    def __init__(self, database: Database, *, clock: Clock | None = None) -> None:
        self.database = database
        self.clock = clock or SystemClock()

    @guarded("ledger append")
    def append(self, entry: LedgerEntry | Mapping[str, Any]) -> dict[str, Any]:
        body = entry.to_record() if isinstance(entry, LedgerEntry) else dict(entry)
        with self.database.engine.begin() as conn:
            # Blocks other appends (not readers) until commit: the next number is ours.
            conn.execute(text("LOCK TABLE ledger IN SHARE ROW EXCLUSIVE MODE"))
            seq = (
                int(conn.execute(select(func.coalesce(func.max(ledger.c.seq), 0))).scalar_one()) + 1
            )
            record = json.dumps(
                {"at": self.clock.now().isoformat(), **body, "seq": seq},
                sort_keys=True,
                default=str,
            )
            conn.execute(
                insert(ledger).values(
                    seq=seq,
                    event=str(body.get("event")),
                    names_champion="champion_after" in body,
                    record=record,
                )
            )
            if "champion_after" in body:  # delivered on commit: the record is there first
                conn.execute(select(func.pg_notify(CHANNEL, str(body["champion_after"] or ""))))
        stored: dict[str, Any] = json.loads(record)
        return stored

    @guarded("ledger read")
    def entries(self) -> list[dict[str, Any]]:
        with self.database.engine.connect() as conn:
            found = conn.execute(select(ledger.c.record).order_by(ledger.c.seq)).scalars()
            return [json.loads(r) for r in found]

    def tail(self) -> Iterator[dict[str, Any]]:
        """Newest first, a page at a time: the cost is what is read, not the ledger's length."""
        before: int | None = None
        while True:
            page = self._page(before)
            for seq, record in page:
                before = seq
                yield json.loads(record)
            if len(page) < _PAGE:
                return

    @guarded("ledger read")
    def _page(self, before: int | None) -> list[Any]:
        query = select(ledger.c.seq, ledger.c.record).order_by(ledger.c.seq.desc()).limit(_PAGE)
        if before is not None:
            query = query.where(ledger.c.seq < before)
        with self.database.engine.connect() as conn:
            return list(conn.execute(query).all())

    @guarded("ledger read")
    def _newest(self, *where: Any) -> dict[str, Any] | None:
        query = select(ledger.c.record).where(*where).order_by(ledger.c.seq.desc()).limit(1)
        with self.database.engine.connect() as conn:
            record = conn.execute(query).scalar_one_or_none()
        return None if record is None else dict(json.loads(record))

    def last(self, event: str) -> dict[str, Any] | None:
        return self._newest(ledger.c.event == event)

    def last_champion(self) -> str | None:
        found = self._newest(ledger.c.names_champion)
        return None if found is None else found["champion_after"]
