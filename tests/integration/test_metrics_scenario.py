"""Every metric the alert rules and the dashboard read is on a real service's /metrics.

A scripted scenario drives a `bentoml serve` with the shipped (lean) BentoML configuration:
traffic, bad input, an unseen category, feedback, one retrain cycle and a monitoring run.
Then each metric name any rule or panel selects must have a sample on /metrics, so a rule
can never watch a series that the configuration champion ships does not export.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.integration.test_alert_rules import (
    SYNTHETIC,
    dashboard_queries,
    load_dashboard,
    recorded,
    rules,
    selectors,
    template_queries,
)
from tests.integration.test_monitoring import (
    MONITOR_ENV,
    _drifted,
    _predict_in_batches,
    _records,
    _scrape,
    _until,
    champion,  # noqa: F401  (fixture)
)
from tests.integration.test_serve import FEEDBACK, ROW, TOKEN, _workers_report, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def referenced_metrics() -> set[str]:
    """Every metric name the alert rules (expressions and annotation queries) and the
    dashboard's panels and annotations select, less recorded and Prometheus-made series."""
    names: set[str] = set()
    for rule in rules():
        names |= {m for m, _ in selectors(rule["expr"])}
        for text in (rule.get("annotations") or {}).values():
            for query in template_queries(text):
                names |= {m for m, _ in selectors(query)}
    for _, expr in dashboard_queries(load_dashboard()):
        names |= {m for m, _ in selectors(expr)}
    return names - recorded() - set(SYNTHETIC)


def test_a_scripted_scenario_exports_every_metric_the_rules_and_dashboard_read(champion):  # noqa: F811
    wanted = referenced_metrics()
    assert {"champion_predictions_total", "champion_request_duration_seconds_bucket"} <= wanted
    champion.simulate(1)  # fresh data, so the cycle below trains
    frame = _drifted(300, seed=11)
    records = _records(frame)
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with serving(champion, **MONITOR_ENV) as base:
        _workers_report(base, want={"1"})
        # traffic, captured for the drift window and for feedback
        _predict_in_batches(base, records, prefix="scenario")
        # bad input, and an unseen category
        assert httpx.post(f"{base}/predict", content=b"{").status_code == 400
        assert httpx.post(f"{base}/predict", json={"instances": [{"age": 1}]}).status_code == 422
        r = httpx.post(f"{base}/predict", json={"instances": [ROW | {"car": "car99"}]})
        assert r.status_code == 200, r.text
        labels = [int(v) for v in frame["approved"][:30]]
        feedback = [{"request_id": "scenario-0", "row": i, "label": labels[i]} for i in range(30)]
        assert httpx.post(f"{base}/feedback", json=feedback, headers=FEEDBACK).status_code == 200
        # a retrain cycle, and the monitoring job's run over the window
        assert httpx.post(f"{base}/admin/retrain", headers=admin).status_code == 202

        def scenario_done() -> set[str] | None:
            samples = _scrape(base)
            runs = sum(v for (n, _), v in samples.items() if n == "champion_retrain_runs_total")
            have = {name for name, _ in samples}
            return have if runs >= 1 and "champion_live_quality" in have else None

        exported = _until(scenario_done, timeout=120, what="a finished cycle and live quality")
    missing = sorted(wanted - exported)
    assert not missing, f"named by a rule or panel, absent from /metrics: {missing}"
    # The shipped configuration leaves BentoML's request metrics off (service/stack.py).
    assert not any(name.startswith("bentoml_service_request") for name in exported)


def _access_lines(log: Path) -> list[str]:
    return [line for line in log.read_text().splitlines() if "path=/predict" in line]


def test_access_log_is_off_by_default_and_one_override_away(champion, tmp_path):  # noqa: F811
    """The access log costs a formatted line per request: off as shipped, on by config."""
    logs = {}
    for name, extra in (
        ("default", {}),
        (
            "on",
            {
                "BENTOML_CONFIG_OPTIONS": "services.champion.workers=1"
                " services.champion.logging.access.enabled=true"
            },
        ),
    ):
        with serving(champion, workers=1, **extra) as base:
            _workers_report(base, want={"1"}, workers=1)
            for _ in range(3):
                assert httpx.post(f"{base}/predict", json={"instances": [ROW]}).status_code == 200
            text = httpx.get(f"{base}/metrics").text
            time.sleep(0.5)  # the log line is written after the answer
        logs[name] = sorted(champion.root.glob("serve-*.log"), key=lambda p: p.stat().st_mtime)[-1]
        assert "champion_predictions_total" in text  # /metrics served either way
    assert _access_lines(logs["default"]) == []
    # Nor uvicorn's own line per request, which the service's root logger would write.
    assert "POST /predict" not in logs["default"].read_text()
    lines = _access_lines(logs["on"])
    assert len(lines) == 3, lines
    assert all(re.search(r"status=200", line) for line in lines), json.dumps(lines)
