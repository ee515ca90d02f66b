"""The shared-mode tables, in one place: what the migrations create and the adapters query."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

metadata = MetaData()

# Alembic's record of the schema revision. Its own name: the database may also hold Optuna's
# tables, which use Alembic's default `alembic_version`.
VERSION_TABLE = "champion_schema_version"

# Each entry's stored form is its JSON text, exactly as the file ledger's line: readers get
# back what `append` returned. `seq` is given under a table lock, so it has no gaps.
ledger = Table(
    "ledger",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("event", Text, nullable=False),
    Column("names_champion", Boolean, nullable=False),  # the entry has `champion_after`
    Column("record", Text, nullable=False),
    Index("ledger_event", "event", "seq"),
    Index("ledger_champion", "seq", postgresql_where=text("names_champion")),
)

# Who holds an advisory-lock lease: written by the holder's own session (`pid`), so a row
# whose session no longer holds the lock is recognisably stale.
lease_holders = Table(
    "lease_holders",
    metadata,
    Column("name", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("since", Double, nullable=False),
)

predictions = Table(
    "predictions",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("request_id", Text, nullable=False),
    Column("row", BigInteger, nullable=False),
    Column("at", Double, nullable=False),
    Column("model_version", Text, nullable=False),
    Column("features", Text, nullable=False),
    Column("prediction", Text, nullable=False),
    Column("score", Double),
    Column("label", Text),
    Column("labelled_at", Double),
    Column("exported", Boolean, nullable=False, server_default=false()),
    Column("export_name", Text),
    UniqueConstraint("request_id", "row", name="predictions_key"),
    Index("predictions_labelled_rows", "labelled_at", postgresql_where=text("label IS NOT NULL")),
    Index("predictions_version", "model_version", "id"),
    Index(
        "predictions_pending",
        "export_name",
        "id",
        postgresql_where=text("label IS NOT NULL AND NOT exported"),
    ),
)

# The batch manifest: one row per batch, its entry as the manifest file holds it (JSON text).
batches = Table(
    "batches",
    metadata,
    Column("batch_id", Text, primary_key=True),
    Column("record", Text, nullable=False),
)

# Small named documents: the manifest's classes, the drift state, the latest drift summary.
documents = Table(
    "documents",
    metadata,
    Column("name", Text, primary_key=True),
    Column("body", Text, nullable=False),
)

drift_history = Table(
    "drift_history",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("body", Text, nullable=False),
)

# Distributed tuning (`champion.training.postgres.tuning`): one row per candidate a process
# of a cycle's shared Optuna study took on, given under the study's advisory lock so no two
# processes score one candidate and the study's trial budget holds. The row of the empty
# candidate is the study itself: open while its `finished_at` is NULL.
tuning_claims = Table(
    "tuning_claims",
    metadata,
    Column("study", Text, primary_key=True),
    Column("candidate", Text, primary_key=True),
    Column("seq", BigInteger, Identity(), nullable=False),
    Column("owner", Text, nullable=False),
    Column("trial", Integer),
    Column("claimed_at", Double, nullable=False),
    Column("finished_at", Double),
)
