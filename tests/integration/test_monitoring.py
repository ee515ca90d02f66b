"""Monitoring over a real `bentoml serve`: worker-aggregated metrics, capture, feedback, drift."""

from __future__ import annotations

import json
import random
import string
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import tomli_w
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from champion.monitoring.capture import PredictionLog
from champion.monitoring.metrics import PREDICTION_OUTCOMES, REQUEST_BUCKETS, TICK_OUTCOMES
from champion.service.validation import REASONS
from champion.training.demo.simulate import agrawal_frame
from champion.training.records import Verdict
from tests.integration.conftest import project_raw
from tests.integration.test_serve import (
    FEEDBACK,
    ROOT,
    ROW,
    _free_port,
    _workers_report,
    serving,
    stop_group,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROMETHEUS = Path("/usr/bin/prometheus")
PROMETHEUS_DIR = ROOT / "monitoring" / "prometheus"
FEATURES = tuple(ROW)
CATEGORICAL = ("elevel", "car", "zipcode")
CLASSES = ("0", "1")

Series = tuple[str, frozenset[tuple[str, str]]]
T = TypeVar("T")


# -- helpers -----------------------------------------------------------------------------------


def _scrape(base: str) -> dict[Series, float]:
    """Every sample on /metrics, keyed by name and label set."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict[Series, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def _until(probe: Callable[[], T | None], *, timeout: float, what: str) -> T:
    """Call `probe` until it returns something truthy (bounded by `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def _predict_on_new_connection(base: str, body: Any, **headers: str) -> tuple[int, int]:
    """POST /predict on a fresh connection; returns (status, pid of the worker that answered).

    A connection stays on one worker, so /readyz on the same connection names that worker.
    """
    with httpx.Client(timeout=10) as client:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = client.post(
            f"{base}/predict",
            content=content,
            headers={"Content-Type": "application/json", **headers},
        )
        pid = client.get(f"{base}/readyz").json()["pid"]
    return r.status_code, pid


def _long_schedule(project) -> None:
    """Rewrite the served contract so no scheduled retrain tick falls inside a test."""
    raw = project_raw()
    raw["schedule"] = {"interval_minutes": 600, "misfire_grace_seconds": 5}
    (project.root / "champion.toml").write_text(tomli_w.dumps(raw))


MONITOR_ENV = {
    "CHAMPION_SCHEDULER": "true",
    "CHAMPION_MONITOR_SECONDS": "2",
    "CHAMPION_DRIFT_WINDOW_ROWS": "200",
    # Drift here must be reported, not acted on: no drift-triggered retrain during a test.
    "CHAMPION_DRIFT_SUSTAINED_WINDOWS": "1000",
}


@pytest.fixture
def champion(project):
    """A project whose registry has champion version 1 and no scheduled tick for hours."""
    project.simulate(2)
    assert project.cycle().verdict is Verdict.PROMOTE
    _long_schedule(project)
    return project


def _records(frame) -> list[dict[str, Any]]:
    return [{k: row[k] for k in FEATURES} for row in frame.to_dict("records")]


# -- a. metrics summed over workers ------------------------------------------------------------


def test_metrics_are_exact_sums_over_two_workers(champion):
    """It counts every request once on /metrics, whichever of two workers answered it."""
    with serving(champion) as base:
        _workers_report(base, want={"1"})
        pids: Counter[int] = Counter()
        ok = 0
        for _ in range(200):  # bounded: stop once both workers have served enough
            status, pid = _predict_on_new_connection(base, {"instances": [ROW]})
            assert status == 200
            ok += 1
            pids[pid] += 1
            if ok >= 40 and len(pids) == 2 and min(pids.values()) >= 5:
                break
        assert len(pids) == 2 and min(pids.values()) >= 5, f"one worker served all: {pids}"

        invalid = [
            ({"instances": [{k: v for k, v in ROW.items() if k != "salary"}]}, "missing"),
            ({"instances": [ROW | {"salary": "lots"}]}, "wrong_type"),
            ({"instances": [ROW | {"age": True}]}, "wrong_type"),
            ({"instances": []}, "empty"),
            (b'{"instances": [', "malformed_json"),
            ({"rows": [ROW]}, "bad_envelope"),
        ]
        for body, _ in invalid:
            status, pid = _predict_on_new_connection(base, body)
            assert 400 <= status < 500
            pids[pid] += 1
        unseen = [ROW | {"elevel": "e9"}, ROW | {"elevel": "e7", "car": "car99"}]
        for row in unseen:
            status, _ = _predict_on_new_connection(base, {"instances": [row]})
            assert status == 200
            ok += 1
        samples = _scrape(base)

    def value(name: str, **labels: str) -> float | None:
        return _value(samples, name, **labels)

    assert value("champion_predictions_total", outcome="ok") == ok
    assert value("champion_predictions_total", outcome="invalid") == len(invalid)
    assert value("champion_predictions_total", outcome="error") == 0
    # champion's own latency histogram counts the same requests, by outcome and version.
    assert value("champion_request_duration_seconds_count", outcome="ok", version="1") == ok
    assert value("champion_request_duration_seconds_count", outcome="invalid", version="1") == len(
        invalid
    )
    assert value("champion_request_duration_seconds_bucket", outcome="ok", version="1", le="+Inf")
    assert value("champion_predicted_rows_total") == ok
    assert sum(value("champion_predicted_class_total", **{"class": c}) or 0 for c in CLASSES) == ok
    reasons = Counter(reason for _, reason in invalid)
    for reason in REASONS:
        assert (value("champion_validation_failures_total", reason=reason) or 0) == reasons[
            reason
        ], reason
    assert value("champion_unseen_categories_total", feature="elevel") == 2
    assert value("champion_unseen_categories_total", feature="car") == 1
    assert value("champion_unseen_categories_total", feature="zipcode") is None
    assert value("champion_model_info", version="1") == 1
    assert value("champion_model_swaps_total") == 2  # one load per worker


# -- b. request text never becomes a label ----------------------------------------------------


def _token(rng: random.Random) -> str:
    return "zq" + "".join(rng.choices(string.ascii_lowercase + string.digits, k=12))


def test_random_input_creates_no_new_series(champion):
    """It adds only bounded label values to champion_* series, whatever the requests carry."""
    rng = random.Random(20240611)
    sent: list[str] = []

    def token() -> str:
        sent.append(_token(rng))
        return sent[-1]

    with serving(champion) as base:
        _workers_report(base, want={"1"})
        before = _scrape(base)
        with httpx.Client(timeout=10) as client:
            for i in range(50):
                kind = i % 5
                if kind == 0:  # an extra feature with a random name and value
                    body: Any = {"instances": [ROW | {token(): token()}]}
                elif kind == 1:  # random categories for every categorical feature
                    body = {"instances": [ROW | {c: token() for c in CATEGORICAL}]}
                elif kind == 2:  # random text where a number belongs
                    body = {"instances": [ROW | {rng.choice(FEATURES[:6]): token()}]}
                elif kind == 3:  # a random top-level key
                    body = {"instances": [ROW], token(): [token()]}
                else:  # random keys only
                    body = {"instances": [{token(): rng.random() for _ in range(3)}]}
                r = client.post(
                    f"{base}/predict",
                    json=body,
                    headers={"X-Request-ID": token(), f"X-{token()}": token()},
                )
                assert r.status_code in (200, 422), r.text
        text = httpx.get(f"{base}/metrics", timeout=10).text
        after = _scrape(base)

    allowed = {
        "outcome": set(PREDICTION_OUTCOMES),
        "reason": set(REASONS),
        "feature": set(FEATURES),
        "class": set(CLASSES),
        "version": {"1", "none"},  # model versions the registry holds, never request text
        "le": {floatToGoString(b) for b in REQUEST_BUCKETS} | {"+Inf"},
    }
    new = {series for series in after if series[0].startswith("champion_")} - set(before)
    assert new, "the random requests were not counted at all"
    for name, labels in new:
        for label, label_value in labels:
            assert label in allowed, (name, label)
            assert label_value in allowed[label], (name, label, label_value)
    latency = {f"champion_request_duration_seconds_{s}" for s in ("bucket", "count", "sum")}
    assert {name for name, _ in new} <= {
        "champion_predictions_total",
        "champion_validation_failures_total",
        "champion_unseen_categories_total",
        "champion_predicted_class_total",
        *latency,
    }
    leaked = [s for s in sent if s in text]
    assert leaked == [], f"request text became metric text: {leaked[:5]}"
    assert len(sent) > 100


# -- c. capture, feedback and drift over HTTP -------------------------------------------------


def _drifted(rows: int, *, seed: int):
    frame = agrawal_frame(rows, function=1, seed=seed)
    frame["salary"] = frame["salary"] * 3
    return frame


def _predict_in_batches(base: str, records: list[dict[str, Any]], *, prefix: str) -> None:
    """POST `records` 100 at a time, request ids `<prefix>-0`, `<prefix>-1`, ..."""
    for k in range(0, len(records), 100):
        rid = f"{prefix}-{k // 100}"
        r = httpx.post(
            f"{base}/predict",
            json={"instances": records[k : k + 100]},
            headers={"X-Request-ID": rid},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.json()["request_id"] == rid


def test_capture_feedback_and_drift_over_http(champion):
    """It captures predictions, joins labels, reports drift and quality, and exports feedback."""
    frame = _drifted(300, seed=5)
    records = _records(frame)
    with serving(champion, **MONITOR_ENV) as base:
        _workers_report(base, want={"1"})
        _predict_in_batches(base, records, prefix="drift")
        # Each worker flushes its own buffer; wait until both have written.
        plog = PredictionLog(champion.settings.prediction_log_path)
        try:
            _until(lambda: plog.count() == 300, timeout=10, what="300 captured rows")
        finally:
            plog.close()

        labels = [int(v) for v in frame["approved"][:30]]
        feedback = [{"request_id": "drift-0", "row": i, "label": labels[i]} for i in range(30)]
        r = httpx.post(f"{base}/feedback", json=feedback, headers=FEEDBACK)
        assert r.status_code == 200 and r.json() == {"labelled": 30}, r.text

        def drift_seen() -> dict[str, Any] | None:
            r = httpx.get(f"{base}/drift")
            if r.status_code != 200:
                return None
            body = r.json()
            drift = body.get("drift") or {}
            return body if drift.get("window_rows") == 200 and body.get("live_quality") else None

        body = _until(drift_seen, timeout=30, what="a drift report over 200 rows with quality")
        assert body["model_version"] == "1"
        drift = body["drift"]
        assert drift["dataset_drift"] is True
        assert "salary" in drift["family_flagged"]
        salary = next(f for f in drift["features"] if f["feature"] == "salary")
        assert salary["status"] == "drift" and salary["window_rows"] == 200
        assert {"roc_auc", "accuracy"} <= set(body["live_quality"])

        batches = _until(
            lambda: sorted(champion.landing.glob("feedback-*.csv")),
            timeout=10,
            what="a feedback batch in the landing zone",
        )
        assert len(batches) == 1
        exported = batches[0].read_text().splitlines()
        assert len(exported) == 31 and "approved" in exported[0]

        samples = _scrape(base)
        assert _value(samples, "champion_drift_detected", feature="salary") == 1
        assert (_value(samples, "champion_dataset_drift_share") or 0) > 0
        assert _value(samples, "champion_drift_window_rows") == 200
        assert _value(samples, "champion_live_quality", metric="roc_auc") is not None
        assert _value(samples, "champion_feedback_labels_total") == 30

        # All or nothing: an unknown id refuses the whole call, naming only the unknown one.
        r = httpx.post(
            f"{base}/feedback",
            headers=FEEDBACK,
            json=[
                {"request_id": "drift-1", "row": 0, "label": 1},
                {"request_id": "never-sent", "label": 1},
            ],
        )
        assert r.status_code == 404 and r.json()["unknown"] == ["never-sent#0"], r.text
        r = httpx.post(
            f"{base}/feedback",
            json={"request_id": "drift-1", "row": 0, "label": 1},
            headers=FEEDBACK,
        )
        assert r.status_code == 200 and r.json() == {"labelled": 1}, r.text
        r = httpx.post(
            f"{base}/feedback",
            json={"request_id": "drift-1", "row": 0, "label": 0},
            headers=FEEDBACK,
        )
        assert r.status_code == 409 and r.json()["already_labelled"] == ["drift-1#0"], r.text
        assert _value(_scrape(base), "champion_feedback_labels_total") == 31


def test_label_right_after_its_prediction_is_joined(champion):
    """It joins a label sent right after its prediction, whichever worker takes the label."""
    with serving(champion) as base:
        _workers_report(base, want={"1"})
        refused = []
        for i in range(20):
            rid = f"quick-{i}"
            headers = {"X-Request-ID": rid}
            status, predicted_by = _predict_on_new_connection(base, {"instances": [ROW]}, **headers)
            assert status == 200
            with httpx.Client(timeout=10) as client:  # a new connection: any worker
                r = client.post(
                    f"{base}/feedback", json={"request_id": rid, "label": 1}, headers=FEEDBACK
                )
                labelled_by = client.get(f"{base}/readyz").json()["pid"]
            if r.status_code != 200:
                refused.append((rid, r.status_code, predicted_by, labelled_by))
        # (request id, status, pid that predicted, pid that got the label)
        assert refused == []


# -- d. a real Prometheus scraping the service -------------------------------------------------


@contextmanager
def _prometheus(tmp_path: Path, target: str) -> Iterator[str]:
    """Run Prometheus on a loopback port with the shipped config pointed at `target`."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [target]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
            try:
                return httpx.get(f"{base}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _until(ready, timeout=30, what="prometheus to be ready")
        yield base
    finally:
        stop_group(proc)
        log.close()


def _query(prom: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    return list(r.json()["data"]["result"])


@pytest.mark.skipif(not PROMETHEUS.exists(), reason="run monitoring/install-prometheus.sh")
def test_prometheus_scrapes_the_service_and_evaluates_the_rules(champion, tmp_path):
    """It lets a real Prometheus scrape every champion_* family and evaluate the alert rules."""
    # A drift window is tested once it holds CHAMPION_DRIFT_WINDOW_ROWS fresh rows.
    window = int(MONITOR_ENV["CHAMPION_DRIFT_WINDOW_ROWS"])
    records = _records(agrawal_frame(window, function=1, seed=9))
    with serving(champion, **MONITOR_ENV) as base:
        _workers_report(base, want={"1"})
        r = httpx.post(f"{base}/predict", json={"instances": records}, timeout=30)
        assert r.status_code == 200, r.text
        target = base.removeprefix("http://")
        with _prometheus(tmp_path, target) as prom:
            up = _until(
                lambda: [s for s in _query(prom, 'up{job="champion"}') if s["value"][1] == "1"],
                timeout=20,
                what="the champion target to be up",
            )
            assert up[0]["metric"]["instance"] == target

            info = _until(
                lambda: _query(prom, "champion_model_info == 1"),
                timeout=20,
                what="champion_model_info",
            )
            assert [s["metric"]["version"] for s in info] == ["1"]

            def drift_series() -> set[str] | None:
                found = {
                    s["metric"]["__name__"]
                    for s in _query(prom, '{__name__=~"champion_drift_.*|champion_dataset_.*"}')
                }
                return found if "champion_drift_score" in found else None

            drift = _until(drift_series, timeout=20, what="champion_drift_* series")
            assert {
                "champion_drift_detected",
                "champion_drift_window_rows",
                "champion_drift_p_value",
                "champion_drift_threshold",
                "champion_drift_triggers_total",
                "champion_dataset_drift_share",
            } <= drift
            scores = _query(prom, "champion_drift_score")
            assert {s["metric"]["feature"] for s in scores} == set(FEATURES)

            ticks = _query(prom, "champion_retrain_ticks_total")
            assert len(ticks) == len(TICK_OUTCOMES) and {s["value"][1] for s in ticks} == {"0"}
            retrain = {
                s["metric"]["__name__"] for s in _query(prom, '{__name__=~"champion_retrain_.*"}')
            }
            assert {
                "champion_retrain_ticks_total",
                "champion_retrain_runs_total",
                "champion_retrain_duration_seconds_count",
            } <= retrain

            def evaluated() -> list[dict[str, Any]] | None:
                r = httpx.get(f"{prom}/api/v1/rules", timeout=10)
                assert r.status_code == 200, r.text
                groups = r.json()["data"]["groups"]
                rules = [rule for group in groups for rule in group["rules"]]
                done = rules and all(rule.get("health") != "unknown" for rule in rules)
                return groups if done else None

            groups = _until(evaluated, timeout=20, what="every rule to be evaluated")
            shipped = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
            assert sorted(g["name"] for g in groups) == sorted(g["name"] for g in shipped)
            assert sum(len(g["rules"]) for g in groups) == sum(len(g["rules"]) for g in shipped)
            broken = [
                (rule["name"], rule.get("lastError"))
                for group in groups
                for rule in group["rules"]
                if rule["health"] != "ok" or rule.get("lastError")
            ]
            assert broken == []
