"""The batch manifest's storage on PostgreSQL: one row per batch, written only when changed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from champion.training.manifest import MANIFEST_VERSION
from champion.training.postgres.database import Database, guarded
from champion.training.postgres.schema import batches, documents

CLASSES = "manifest.classes"


class PgManifest:
    """`ManifestStorage` over the `batches` table (and the classes in `documents`).

    A save writes only the entries that differ from what this copy read, so two writers
    that change different batches (intake in a cycle, a retire by hand) both keep theirs.
    """

    def __init__(self, database: Database) -> None:
        self.database = database
        self.where = f"in {database.safe_url}"

    @guarded("manifest read")
    def read(self) -> Mapping[str, Any] | None:
        with self.database.engine.connect() as conn:
            rows = conn.execute(select(batches.c.batch_id, batches.c.record)).all()
            classes = conn.execute(
                select(documents.c.body).where(documents.c.name == CLASSES)
            ).scalar_one_or_none()
        if not rows and classes is None:
            return None
        return {
            "version": MANIFEST_VERSION,
            "batches": {batch_id: json.loads(record) for batch_id, record in rows},
            "classes": None if classes is None else json.loads(classes),
        }

    @guarded("manifest write")
    def write(self, body: Mapping[str, Any], *, before: Mapping[str, Any] | None) -> None:
        old = dict((before or {}).get("batches") or {})
        changed = [
            {"batch_id": b, "record": json.dumps(r, sort_keys=True)}
            for b, r in body["batches"].items()
            if old.get(b) != r
        ]
        with self.database.engine.begin() as conn:
            if changed:
                stmt = insert(batches).values(changed)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[batches.c.batch_id], set_={"record": stmt.excluded.record}
                    )
                )
            if before is None or before.get("classes") != body.get("classes"):
                doc = insert(documents).values(name=CLASSES, body=json.dumps(body.get("classes")))
                conn.execute(
                    doc.on_conflict_do_update(
                        index_elements=[documents.c.name], set_={"body": doc.excluded.body}
                    )
                )
