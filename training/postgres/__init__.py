"""The shared-mode adapters: the ports on PostgreSQL (SQLAlchemy 2 + psycopg 3).

Chosen by `CHAMPION_DATABASE_URL=postgresql://…`; the schema is created and migrated by
Alembic (`migrations/`) the first time a process uses the database. The only package that
imports SQLAlchemy.
"""
