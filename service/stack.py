"""The BentoML configuration champion ships: the framework's per-request layers it can spare.

BentoML treats a service's decorator configuration as defaults: a `BENTOML_CONFIG` file or
`BENTOML_CONFIG_OPTIONS` overrides any of it at `bentoml serve` time, e.g. the access log
back on with

    BENTOML_CONFIG_OPTIONS='services.champion.logging.access.enabled=true'

What each setting buys is measured by `make bench` (docs/performance.md, "BentoML stack").
"""

from __future__ import annotations

import os
from typing import Any

# The paths answered on every request or scrape; a span each would be pure cost when no
# exporter is configured, and noise when one is.
UNTRACED = ("/predict", "/v2/models/", "/metrics", "/livez", "/readyz", "/v2/health/")

SERVICE_CONFIG: dict[str, Any] = {
    # BentoML's schema requires a timeout, so its timeout middleware always runs, and it
    # leaves each request's timer (a handle, a future, a context) scheduled for the whole
    # timeout: rate x timeout live objects that every full garbage collection walks. At 2,500
    # req/s, 60 s made those collections grow to 150-230 ms and p99 65-200 ms; 10 s, p99
    # 4-13 ms. A prediction takes milliseconds; the slowest route, /admin/reload, seconds.
    "traffic": {"timeout": 10},
    # champion_request_duration_seconds{outcome,version} and champion_predictions_total
    # cover request counts and latency; champion serves /metrics itself (`metrics_text`).
    "metrics": {"enabled": False},
    # One line per request, formatted by a middleware around every call: off by default,
    # one override away (module docstring).
    "logging": {"access": {"enabled": False}},
    "tracing": {"excluded_urls": list(UNTRACED)},
}


def metrics_text() -> tuple[bytes, str]:
    """Every process's metrics (BentoML's own too, when enabled): under `bentoml serve` from
    prometheus_client's multiprocess directory, which BentoML sets up for its workers, else
    (the app served in-process) from this process's registry."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST
