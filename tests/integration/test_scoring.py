"""`champion score`: a file of any size scored in chunks, offline, as the service would."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from champion.service.cli import app
from champion.service.scoring import instances
from champion.service.slot import ModelSlot
from champion.service.validation import validate_instances
from champion.training.config import get_settings
from champion.training.demo.simulate import agrawal_frame
from champion.training.records import Verdict

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def scored_project(project, monkeypatch):
    project.simulate(2)
    assert project.cycle().verdict is Verdict.PROMOTE
    for key, value in project.env().items():
        if key.startswith(("CHAMPION_", "MLFLOW_")):
            monkeypatch.setenv(key, value)
    monkeypatch.chdir(project.root)
    get_settings.cache_clear()
    yield project
    get_settings.cache_clear()


def _rows(n: int) -> pd.DataFrame:
    """A batch-shaped file: the features plus the target and timestamp columns."""
    return agrawal_frame(n, function=1, seed=21, label_noise=0.05)


def test_a_file_larger_than_a_request_is_scored_in_chunks_as_the_service_answers(
    scored_project, tmp_path
):
    """It scores 2,500 rows in 3 chunks; every prediction and probability is what the served
    champion answers for the same row, the extra columns are kept, a bad row is named."""
    frame = _rows(2500).astype({"salary": object, "age": object})
    frame.loc[7, "salary"] = "lots"  # a text in a numeric feature
    frame.loc[8, "age"] = ""  # missing: imputed, as the API does
    src = tmp_path / "rows.csv"
    frame.to_csv(src, index=False)
    out = tmp_path / "scored.csv"
    result = CliRunner().invoke(
        app, ["score", str(src), "--out", str(out), "--chunk-rows", "1000", "--no-progress"]
    )
    assert result.exit_code == 1, result.output  # one row could not be scored
    assert "scored 2499 of 2500 rows with v1" in result.output and "(3 chunks)" in result.output
    scored = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(scored) == 2500
    assert list(scored.columns[: len(frame.columns)]) == list(frame.columns)
    assert scored.loc[7, "error"].startswith("salary:") and scored.loc[7, "prediction"] == ""
    assert (scored["error"] != "").sum() == 1

    components = scored_project.components()
    slot = ModelSlot(
        registry=components.registry,
        contract=components.contract,
        cache_dir=tmp_path / "cache",
    )
    slot.refresh()
    assert slot.current is not None
    text = pd.read_csv(src, dtype=str, keep_default_na=False).drop(index=7)
    rows = instances(text, components.contract)
    batch = validate_instances({"instances": rows}, contract=components.contract, max_rows=5000)
    pred, proba = slot.current.predict(batch)
    mine = scored.drop(index=7).reset_index(drop=True)
    assert list(mine["prediction"]) == [str(v) for v in pred]
    classes = slot.current.classes
    assert proba is not None and classes is not None
    for k, cls in enumerate(classes):
        np.testing.assert_allclose(mine[f"probability_{cls}"].astype(float), proba[:, k], rtol=1e-6)


def test_parquet_in_and_out_and_nothing_half_written_on_failure(scored_project, tmp_path):
    """It reads and writes Parquet; a file it cannot read leaves no output file behind."""
    src = tmp_path / "rows.parquet"
    _rows(1200).to_parquet(src)
    out = tmp_path / "scored.parquet"
    ok = CliRunner().invoke(app, ["score", str(src), "--out", str(out), "--no-progress"])
    assert ok.exit_code == 0, ok.output
    back = pd.read_parquet(out)
    assert len(back) == 1200 and (back["error"] == "").all()
    assert {"probability_0", "probability_1"} <= set(back.columns)

    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet at all")
    failed = CliRunner().invoke(
        app, ["score", str(broken), "--out", str(tmp_path / "x.csv"), "--no-progress"]
    )
    assert failed.exit_code != 0
    assert not (tmp_path / "x.csv").exists() and not list(tmp_path.glob(".x.csv*"))
    bad_suffix = CliRunner().invoke(
        app, ["score", str(src), "--out", str(tmp_path / "x.json"), "--no-progress"]
    )
    assert bad_suffix.exit_code != 0 and ".csv or .parquet" in bad_suffix.output


def test_scoring_through_a_url_that_does_not_answer_is_a_clear_error(scored_project, tmp_path):
    """It says it cannot reach the service, without a traceback."""
    src = tmp_path / "rows.csv"
    _rows(10).to_csv(src, index=False)
    result = CliRunner().invoke(
        app,
        ["score", str(src), "--out", str(tmp_path / "o.csv"), "--url", "http://127.0.0.1:1"],
    )
    assert result.exit_code != 0 and "cannot reach http://127.0.0.1:1" in result.output
    assert "Traceback" not in result.output


def test_offline_scores_are_the_services_answers(scored_project, tmp_path):
    """It writes the same predictions and probabilities offline as through a running
    service's /predict, chunk by chunk (1,500 rows, the service's 1,000-row limit)."""
    from tests.integration.test_serve import serving

    src = tmp_path / "rows.csv"
    _rows(1500).to_csv(src, index=False)
    offline, remote = tmp_path / "offline.csv", tmp_path / "remote.csv"
    runner = CliRunner()
    assert (
        runner.invoke(app, ["score", str(src), "--out", str(offline), "--no-progress"]).exit_code
        == 0
    )
    with serving(scored_project, workers=1) as base:
        result = runner.invoke(
            app, ["score", str(src), "--out", str(remote), "--url", base, "--no-progress"]
        )
    assert result.exit_code == 0, result.output
    assert "scored 1500 of 1500 rows with v1" in result.output
    a, b = pd.read_csv(offline), pd.read_csv(remote)
    assert list(a["prediction"]) == list(b["prediction"])
    np.testing.assert_allclose(a["probability_1"], b["probability_1"], rtol=1e-6)
