"""The first shared-mode schema: ledger, leases, prediction log, manifest, drift state.

Revision ID: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("names_champion", sa.Boolean, nullable=False),
        sa.Column("record", sa.Text, nullable=False),
    )
    op.create_index("ledger_event", "ledger", ["event", "seq"])
    op.create_index(
        "ledger_champion", "ledger", ["seq"], postgresql_where=sa.text("names_champion")
    )
    op.create_table(
        "lease_holders",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("since", sa.Double, nullable=False),
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("row", sa.BigInteger, nullable=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("model_version", sa.Text, nullable=False),
        sa.Column("features", sa.Text, nullable=False),
        sa.Column("prediction", sa.Text, nullable=False),
        sa.Column("score", sa.Double),
        sa.Column("label", sa.Text),
        sa.Column("labelled_at", sa.Double),
        sa.Column("exported", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("export_name", sa.Text),
        sa.UniqueConstraint("request_id", "row", name="predictions_key"),
    )
    op.create_index(
        "predictions_labelled_rows",
        "predictions",
        ["labelled_at"],
        postgresql_where=sa.text("label IS NOT NULL"),
    )
    op.create_index("predictions_version", "predictions", ["model_version", "id"])
    op.create_index(
        "predictions_pending",
        "predictions",
        ["export_name", "id"],
        postgresql_where=sa.text("label IS NOT NULL AND NOT exported"),
    )
    op.create_table(
        "batches",
        sa.Column("batch_id", sa.Text, primary_key=True),
        sa.Column("record", sa.Text, nullable=False),
    )
    op.create_table(
        "documents",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_table(
        "drift_history",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("body", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("drift_history", "documents", "batches", "predictions", "lease_holders"):
        op.drop_table(table)
    op.drop_table("ledger")
