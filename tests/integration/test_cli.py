"""The `champion` CLI end to end: simulate, retrain, status, history, exit codes and messages."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from champion.service.cli import app
from champion.training.config import get_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def cli(project, monkeypatch):
    for key, value in project.env().items():
        if key.startswith(("CHAMPION_", "MLFLOW_")):
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(project.root)
    get_settings.cache_clear()
    runner = CliRunner()
    yield lambda *args: runner.invoke(app, list(args))
    get_settings.cache_clear()


def test_simulate_retrain_status_history_tell_a_readable_story(cli):
    """It bootstraps, holds, promotes after a change, and `history` says why each time."""
    assert cli("simulate", "--batches", "2", "--rows", "600").exit_code == 0
    first = cli("retrain", "--no-progress")
    assert first.exit_code == 0, first.output
    # What intake did comes first, one line per file; then the verdict.
    intake_lines = [ln for ln in first.stdout.splitlines() if ln.startswith("intake: ")]
    assert len(intake_lines) == 2 and all("accepted batch-" in ln for ln in intake_lines)
    assert first.stdout.splitlines()[2].startswith("PROMOTE: No champion yet")
    assert cli("simulate", "--batches", "1", "--rows", "600").exit_code == 0
    hold = cli("retrain", "--no-progress")
    assert hold.exit_code == 0 and "\nHOLD:" in hold.stdout, hold.output
    assert cli("simulate", "--batches", "2", "--rows", "600", "--drift-at", "3").exit_code == 0
    promote = cli("retrain", "--no-progress")
    assert promote.exit_code == 0 and "\nPROMOTE:" in promote.stdout, promote.output
    skipped = cli("retrain", "--no-progress")
    assert skipped.exit_code == 0 and "No new batches" in skipped.stdout
    assert skipped.stdout.startswith("intake: no new batch files in the landing zone\n")
    history = cli("history")
    assert history.exit_code == 0
    lines = history.stdout.splitlines()
    assert [ln.split()[2] for ln in lines if ln[:1].isdigit()] == [
        "PROMOTE",
        "HOLD",
        "PROMOTE",
        "SKIPPED",
    ]
    assert "v1 → v3" in history.stdout and "credibly better" in history.stdout
    status = cli("status")
    assert status.exit_code == 0
    assert "champion=v3" in status.stdout and "previous=v1" in status.stdout
    assert re.search(r"^serves with: (onnxruntime|sklearn) \(.+\)$", status.stdout, re.M)
    rollback = cli("rollback", "--reason", "drill")
    assert rollback.exit_code == 0 and "v3 → v1" in rollback.stdout
    assert "ROLLBACK" in cli("history", "--limit", "1").stdout


def test_bad_usage_and_failures_exit_non_zero_with_a_message(cli, project, monkeypatch):
    """It exits non-zero with a clear message for bad input, a bad project file, or a failure."""
    no_reason = cli("rollback", "--reason", " ")
    assert no_reason.exit_code != 0 and "reason" in no_reason.output
    assert cli("simulate", "--batches", "0").exit_code == 2
    project_file = project.root / "champion.toml"
    text = project_file.read_text()
    project_file.write_text(text.replace("target =", "targett ="))
    bad = cli("status")
    assert bad.exit_code == 2
    assert "key 'target': required key is missing" in bad.output
    assert "key 'targett': unknown key" in bad.output
    project_file.write_text(text)
    cli("simulate", "--batches", "2", "--rows", "600")
    # A registry nobody answers on (loopback, closed port): the cycle fails, it does not crash.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    failed = cli("retrain", "--no-progress")
    assert failed.exit_code == 1 and failed.stdout.startswith("FAILED:"), failed.output
