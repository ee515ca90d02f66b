"""Alembic migrations of the shared-mode schema (`champion.training.postgres.schema`)."""
