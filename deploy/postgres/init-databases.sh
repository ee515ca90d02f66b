#!/bin/sh
# Run once by the postgres image on an empty data directory (/docker-entrypoint-initdb.d):
# one role and one database each for champion's shared state and for MLflow's backend store.
# They stay apart: both migrate their schema with Alembic (champion's version table is
# champion_schema_version, MLflow's alembic_version), and neither reads the other's tables.
# The passwords come from the container's environment (deploy/.env), never from this file.
set -e  # no -u: the image sources a non-executable script into its entrypoint
: "${CHAMPION_DB_PASSWORD:?}" "${MLFLOW_DB_PASSWORD:?}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v champion_password="$CHAMPION_DB_PASSWORD" -v mlflow_password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE champion LOGIN PASSWORD :'champion_password';
CREATE DATABASE champion OWNER champion;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
SQL
