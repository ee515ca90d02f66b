# The same process `make run` starts: API workers + the scheduler leader, on port 3000.
# Secrets (CHAMPION_ADMIN_TOKEN, CHAMPION_DATABASE_URL, MLFLOW_TRACKING_URI credentials, S3
# keys) come from the runtime environment, never from the image.
#
# The same image runs the MLflow tracking server of a shared-mode deployment
# (deploy/compose.yaml: `mlflow server`, the version the project's client and tests use).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CHAMPION_HOME=/app/var \
    CHAMPION_PROJECT_FILE=/app/champion.toml \
    CHAMPION_LOG_FORMAT=json \
    BENTOML_DO_NOT_TRACK=true

RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 champion \
    && mkdir -p /app/var && chown champion:champion /app/var

WORKDIR /app
COPY pyproject.toml README.md champion.toml ./
COPY deploy/constraints.txt ./deploy/
COPY training ./training
COPY service ./service
COPY monitoring ./monitoring
# The package brings shared mode with it (psycopg, SQLAlchemy, Alembic, s3fs). boto3 is for
# `mlflow server --artifacts-destination s3://…` only: champion reaches S3 through s3fs, and
# MLflow artifacts through the server (--serve-artifacts).
# The pins keep pip from backtracking for hours between boto3 and s3fs's aiobotocore.
RUN pip install -c deploy/constraints.txt . boto3

USER champion
# No VOLUME: what /app/var (CHAMPION_HOME) holds depends on the mode, so the image does not
# decide it.
# - Embedded mode (no CHAMPION_DATABASE_URL): /app/var is the deployment's state (landing zone,
#   quarantine, manifest, ledger, leases, predictions, the local MLflow store). Run exactly one
#   container on it and mount a volume: `docker run -v champion-var:/app/var …`.
# - Shared mode (CHAMPION_DATABASE_URL + an MLflow server + s3:// batches): the state is in
#   PostgreSQL, the registry and the object store; /app/var is a local-only home (the model
#   cache, rebuilt from the registry at start). A VOLUME here would give every replica a
#   leader, ledger and manifest of its own, as if it held shared state: nothing to mount.
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:3000/readyz || exit 1
CMD ["champion", "serve", "--host", "0.0.0.0", "--port", "3000", "--workers", "2"]
