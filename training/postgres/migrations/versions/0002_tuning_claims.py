"""Distributed tuning: the claims a cycle's shared study gives out, one per candidate.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tuning_claims",
        sa.Column("study", sa.Text, primary_key=True),
        sa.Column("candidate", sa.Text, primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("trial", sa.Integer),
        sa.Column("claimed_at", sa.Double, nullable=False),
        sa.Column("finished_at", sa.Double),
    )


def downgrade() -> None:
    op.drop_table("tuning_claims")
