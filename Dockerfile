# The same process `make run` starts: API workers + the scheduler leader, on port 3000.
# Secrets (CHAMPION_ADMIN_TOKEN, MLFLOW_TRACKING_URI credentials) come from the runtime
# environment, never from the image.
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
COPY training ./training
COPY service ./service
COPY monitoring ./monitoring
RUN pip install .

USER champion
# var/ holds the landing zone, quarantine, ledger, locks and the local registry.
VOLUME ["/app/var"]
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:3000/readyz || exit 1
CMD ["champion", "serve", "--host", "0.0.0.0", "--port", "3000", "--workers", "2"]
