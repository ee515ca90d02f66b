"""`champion drift-report`: a self-contained page a person can read."""

from __future__ import annotations

import re
import time

import pytest
from typer.testing import CliRunner

from champion.monitoring.capture import Captured, PredictionLog
from champion.service.cli import app
from champion.training.config import get_settings
from champion.training.demo.simulate import FEATURES_CATEGORICAL, FEATURES_NUMERIC, agrawal_frame

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_drift_report_shows_drifted_features_thresholds_and_history(project, monkeypatch):
    """It writes one HTML file with inline charts, flags the shifted feature, lists verdicts."""
    project.simulate(2)
    project.cycle()
    live = agrawal_frame(600, function=1, seed=42)
    live["salary"] = live["salary"] * 3  # a shift no one could miss
    rows = live[list(FEATURES_NUMERIC) + list(FEATURES_CATEGORICAL)].to_dict("records")
    log = PredictionLog(project.settings.prediction_log_path)
    log.write([Captured("r", i, time.time(), "1", row, 1, 0.7) for i, row in enumerate(rows)])
    for key, value in project.env().items():
        if key.startswith(("CHAMPION_", "MLFLOW_")):
            monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    out = project.root / "report.html"
    try:
        result = CliRunner().invoke(app, ["drift-report", "--out", str(out), "--rows", "500"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "Dataset drift detected" in page
    assert re.search(r"salary\s*<span class=\"badge drift\">", page)
    assert re.search(r"age\s*<span class=\"badge ok\">", page)
    assert page.count("data:image/png;base64,") == len(project.contract.features)
    assert "No champion yet" in page  # the bootstrap verdict from the ledger
    assert not re.search(r"(src|href)=\"https?://", page), "the page must be self-contained"


def test_drift_report_without_a_champion_says_so(project, monkeypatch):
    """It exits non-zero with a clear message when there is nothing to compare against."""
    for key, value in project.env().items():
        if key.startswith(("CHAMPION_", "MLFLOW_")):
            monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["drift-report", "--out", str(project.root / "r.html")])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "no champion yet" in result.output
