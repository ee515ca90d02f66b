"""Multiclass and regression cycles end to end, on the example contracts under `examples/`.

Each example's own champion.toml (with a small search budget) and generated batches
(`examples/make_batches.py`): a first cycle promotes v1, the service answers a request in
the task's shape, and a second cycle on more batches of the same data holds or promotes.
"""

from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from champion.monitoring import metrics
from champion.service.cli import app
from champion.service.scoring import instances
from champion.service.slot import ModelSlot
from champion.service.validation import validate_instances
from champion.training.config import get_settings
from champion.training.manifest import BatchStatus
from champion.training.pipeline import prepare_features
from champion.training.records import Verdict
from tests.integration.conftest import ROOT, SMALL, Project, make_project
from tests.integration.test_monitoring import MONITOR_ENV, _until
from tests.integration.test_service_asgi import serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = ROOT / "examples"

# The conftest's small budget, with the estimator families of each task.
SEARCH: dict[str, dict[str, Any]] = {
    "multiclass": SMALL["search"],
    "regression": {
        **SMALL["search"],
        "families": ["linear", "hist_gradient_boosting"],
        "space": {
            "linear": {"alpha": {"low": 0.1, "high": 10.0, "log": True}},
            "hist_gradient_boosting": SMALL["search"]["space"]["hist_gradient_boosting"],
        },
    },
}

ROWS = {
    "multiclass": {"x1": 0.3, "x2": -1.2, "x3": 0.8, "x4": None, "x5": 2.0, "x6": -0.4,
                   "shade": "mid", "size": "xl"},
    "regression": {"x1": 0.2, "x2": 0.7, "x3": None, "x4": 0.9, "x5": 0.1, "x6": 0.5,
                   "x7": 0.3, "region": "west"},
}  # fmt: skip


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_batches", EXAMPLES / "make_batches.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def example_project(name: str, root: Path, template_db: Path) -> Project:
    """A project on `examples/<name>/champion.toml`, its var/ folders under `root`."""
    raw = tomllib.loads((EXAMPLES / name / "champion.toml").read_text(encoding="utf-8"))
    raw["data"]["settle_seconds"] = 0  # batches written by a test are taken in at once
    raw.update(search=SEARCH[name], cv=SMALL["cv"], window=SMALL["window"])
    return make_project(root, template_db, raw=raw)


@pytest.mark.parametrize("name", ["multiclass", "regression"])
def test_example_cycles_promote_serve_and_retrain(name, tmp_path, template_db, monkeypatch):
    """It promotes v1 on the example's primary metric, serves a row in the task's shape
    (multiclass: 3 classes, probabilities summing to 1; regression: a float, no
    probabilities), captures predictions and labels into a drift report with live quality
    and a feedback batch, serves what scikit-learn answers, then holds or promotes on more
    batches of the same data (the feedback batch accepted with them)."""
    generator = _generator()
    project = example_project(name, tmp_path / name, template_db)
    generator.write_batches(name, project.landing, batches=2, rows=500)
    first = project.cycle()
    assert first.verdict is Verdict.PROMOTE, first.reason
    assert first.champion_after == first.version == "1"

    # One process serves one contract: its metrics are registered once per feature set, so
    # each example here gets a registry of its own.
    monkeypatch.setattr(
        metrics,
        "service_metrics",
        lambda features: metrics.ServiceMetrics(CollectorRegistry(), features=features),
    )
    frame = generator.pool(name).iloc[-200:].reset_index(drop=True)  # never trained on
    target = project.contract.target
    token = "other-tasks-feedback"
    env = {**MONITOR_ENV, "CHAMPION_FEEDBACK_TOKEN": token, "CHAMPION_MAX_ROWS": "500"}
    with serving(project, monkeypatch, **env, CHAMPION_MAX_BODY_BYTES="2000000") as client:
        response = client.post("/predict", json={"instances": [ROWS[name]] * 2})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model_version"] == "1"
        assert len(body["predictions"]) == 2
        if name == "multiclass":
            assert sorted(body["classes"]) == ["bronze", "gold", "silver"]  # probabilities order
            assert set(body["predictions"]) <= set(body["classes"])
            proba = np.asarray(body["probabilities"])
            assert proba.shape == (2, 3)
            assert np.allclose(proba.sum(axis=1), 1.0)
            assert [body["classes"][i] for i in proba.argmax(axis=1)] == body["predictions"]
        else:
            assert all(isinstance(p, float) for p in body["predictions"])
            assert body.get("probabilities") is None and body.get("classes") is None

        # 200 captured rows, 30 of them labelled: a drift report and live quality follow.
        rows = instances(frame, project.contract)
        response = client.post(
            "/predict", json={"instances": rows}, headers={"X-Request-ID": "other-1"}
        )
        assert response.status_code == 200, response.text
        labels = frame[target].tolist()[:30]
        feedback = [{"request_id": "other-1", "row": i, "label": labels[i]} for i in range(30)]
        response = client.post(
            "/feedback", json=feedback, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200 and response.json() == {"labelled": 30}, response.text

        def drift_seen() -> dict[str, Any] | None:
            response = client.get("/drift")
            found = response.json() if response.status_code == 200 else {}
            drift = found.get("drift") or {}
            return found if drift.get("window_rows") == 200 and found.get("live_quality") else None

        report = _until(drift_seen, timeout=30, what="a drift report with live quality")
        assert project.contract.metrics.primary in report["live_quality"]
        exported = _until(
            lambda: sorted(project.landing.glob("feedback-*.csv")),
            timeout=10,
            what="a feedback batch in the landing zone",
        )
        assert len(exported) == 1

    # The HTML drift report over the captured rows (the environment `serving` set is kept).
    get_settings.cache_clear()
    page = tmp_path / "drift.html"
    result = CliRunner().invoke(app, ["drift-report", "--out", str(page), "--rows", "200"])
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "200 live rows" in result.output and page.stat().st_size > 1000

    # The served runtime (compiled when it can be) answers as the scikit-learn pipeline does,
    # on generated rows with missing values.
    components = project.components()
    slot = ModelSlot(
        registry=components.registry, contract=components.contract, cache_dir=tmp_path / "cache"
    )
    slot.refresh()
    served = slot.current
    assert served is not None and served.version == "1"
    rows = instances(frame, project.contract)
    batch = validate_instances({"instances": rows}, contract=project.contract, max_rows=500)
    pred, proba = served.predict(batch)
    features = prepare_features(frame, project.contract)
    if name == "multiclass":
        assert proba is not None
        want = served.pipeline.predict_proba(features)
        np.testing.assert_allclose(proba, want, atol=1e-4)
        assert list(pred) == list(served.pipeline.predict(features))
    else:
        assert proba is None
        np.testing.assert_allclose(pred, served.pipeline.predict(features), rtol=1e-4)

    generator.write_batches(name, project.landing, batches=2, rows=500, first=3)
    second = project.cycle()
    assert second.verdict in (Verdict.HOLD, Verdict.PROMOTE), second.reason
    taken = {Path(e.file).name: e for e in project.components().manifest().batches.values()}
    assert len(taken) == 5  # four generated batches and the exported feedback
    assert all(e.status is BatchStatus.ACCEPTED for e in taken.values()), taken
    assert taken[exported[0].name].rows == 30
