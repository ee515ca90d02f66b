"""A compiled champion end to end: registered with its ONNX form, served by ONNX Runtime under
uvloop + httptools with scikit-learn's answers, and refused (scikit-learn serves) when tampered."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from champion.service.runtime import ONNX_FILE, PARITY_TOLERANCE, RUNTIME_ONNX, RUNTIME_SKLEARN
from champion.training.artifacts import (
    TAG_ONNX_SHA256,
    TAG_PARITY_SHA256,
    TAG_RUNTIME,
    TAG_RUNTIME_NOTE,
)
from champion.training.pipeline import prepare_features
from champion.training.records import Verdict
from tests.integration.conftest import SMALL, make_project
from tests.integration.test_serve import ROW, serving

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FOREST_ONLY = copy.deepcopy(SMALL["search"]) | {
    "families": ["random_forest"],
    "space": {
        "random_forest": {
            "n_estimators": {"choices": [40]},
            "max_depth": {"choices": [10]},
            "min_samples_leaf": {"choices": [2]},
        }
    },
    "max_trials": 1,
}


@pytest.fixture
def forest(tmp_path: Path, template_db: Path):
    project = make_project(tmp_path / "forest", template_db, search=FOREST_ONLY)
    project.simulate(2)
    assert project.cycle().verdict is Verdict.PROMOTE
    return project


def _rows(n: int) -> list[dict]:
    rng = np.random.default_rng(5)
    rows = []
    for i in range(n):
        row = dict(ROW)
        row["salary"] = float(rng.uniform(20_000, 150_000))
        row["age"] = float(rng.integers(20, 80))
        row["loan"] = float(rng.uniform(0, 500_000))
        row["car"] = f"car{1 + i % 20}"
        rows.append(row)
    rows[-1]["zipcode"] = "z-unseen"  # an unseen category encodes as all zeros in both forms
    return rows


def _sklearn_proba(project, rows: list[dict]) -> np.ndarray:
    registry = project.registry()
    loaded = registry.load(registry.alias("champion"), cache_dir=project.root / "check")
    frame = prepare_features(pd.DataFrame(rows), project.contract)
    return np.asarray(loaded.pipeline.predict_proba(frame))


def test_a_forest_champion_serves_from_onnx_with_sklearns_answers(forest):
    ref = forest.registry().alias("champion")
    assert ref.tags[TAG_RUNTIME] == RUNTIME_ONNX, ref.tags.get(TAG_RUNTIME_NOTE)
    assert len(ref.tags[TAG_ONNX_SHA256]) == 64
    assert len(ref.tags[TAG_PARITY_SHA256]) == 64
    rows = _rows(40)
    with serving(forest, workers=1) as base:
        ready = httpx.get(f"{base}/readyz").json()
        assert ready["server"] == {"loop": "uvloop", "http": "httptools"}
        model = httpx.get(f"{base}/model").json()
        assert model["runtime"] == RUNTIME_ONNX, model["runtime_note"]
        # Re-checked at load on the held-out rows registered with it, not on the 5-row example.
        checked = re.search(r"on (\d+) rows at load", model["runtime_note"])
        assert checked and int(checked.group(1)) >= 300, model["runtime_note"]
        r = httpx.post(f"{base}/predict", json={"instances": rows})
        assert r.status_code == 200, r.text
        body = r.json()
    got = np.asarray(body["probabilities"])
    want = _sklearn_proba(forest, rows)
    assert np.abs(got - want).max() <= PARITY_TOLERANCE
    classes = np.asarray(body["classes"])
    assert body["predictions"] == classes[want.argmax(axis=1)].tolist()


def test_a_tampered_compiled_file_is_refused_and_sklearn_serves(forest):
    stored = list(Path(forest.settings.artifact_root).rglob(ONNX_FILE))
    assert len(stored) == 1
    stored[0].write_bytes(stored[0].read_bytes()[:-64] + b"\0" * 64)
    shutil.rmtree(forest.settings.cache_dir, ignore_errors=True)
    rows = _rows(10)
    with serving(forest, workers=1) as base:
        model = httpx.get(f"{base}/model").json()
        assert model["runtime"] == RUNTIME_SKLEARN
        assert "refused" in model["runtime_note"] and "digest" in model["runtime_note"]
        r = httpx.post(f"{base}/predict", json={"instances": rows})
        assert r.status_code == 200, r.text
        got = np.asarray(r.json()["probabilities"])
    np.testing.assert_allclose(got, _sklearn_proba(forest, rows), rtol=0, atol=1e-12)
