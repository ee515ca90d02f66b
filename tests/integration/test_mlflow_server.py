"""Models travel through the MLflow server: PostgreSQL backend store, `--serve-artifacts`.

One real `mlflow server` per module. A model registered by one `Registry` is resolved by
alias, downloaded and loaded by another, in a separate process whose global MLflow URIs name
a store that does not exist, from another folder: only the server connects the two.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from champion.training.files import sha256_file
from champion.training.registry import Registry, artifact_location
from tests import pg
from tests.mlflow_server import mlflow_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


class Server:
    def __init__(self, url: str, artifacts: Path) -> None:
        self.url = url
        self.artifacts = artifacts


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    pg.require()
    artifacts = tmp_path_factory.mktemp("mlflow-server") / "artifacts"
    with pg.fresh_database("champion_mlflow") as db, mlflow_server(db, artifacts) as url:
        yield Server(url, artifacts)


def _fitted() -> tuple[Any, pd.DataFrame]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(5)
    x = pd.DataFrame({"a": rng.normal(size=200), "b": rng.normal(size=200)})
    y = (x["a"] + 0.5 * x["b"] > 0).astype(int)
    return make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y), x


def _location(registry: Registry) -> str:
    """The stored artifact location of the registry's experiment."""
    experiment = registry.client.get_experiment_by_name(registry.model_name)
    assert experiment is not None
    return str(experiment.artifact_location)


# The second host: only the server's URL in common with the first.
READER = """
import json, sys
from pathlib import Path
from typing import Any
import pandas as pd
from champion.training.registry import Registry

url, name, cache, run_id = sys.argv[1:5]
registry = Registry(tracking_uri=url, model_name=name)
ref = registry.alias("champion")
loaded = registry.load(ref, cache_dir=Path(cache))
rows = pd.DataFrame(json.loads(sys.argv[5]))
print(json.dumps({
    "version": ref.version,
    "sha256": loaded.sha256,
    "inputs": list(loaded.input_names),
    "proba": loaded.pipeline.predict_proba(rows)[:, 1].tolist(),
    "note": registry.run_json(run_id, "note.json"),
}))
"""


def test_a_model_registered_on_one_host_is_served_from_another(
    server: Server, tmp_path: Path
) -> None:
    name = f"travel-{uuid.uuid4().hex[:8]}"
    # As the composition root builds it: with a local artifact root, which must not be used.
    local_root = tmp_path / "writer-artifacts"
    writer = Registry(tracking_uri=server.url, model_name=name, artifact_root=local_root)
    pipeline, x = _fitted()
    run_id = writer.start_run(name="cycle", tags={"champion.kind": "cycle"})
    writer.log_json(run_id, {"hello": "server"}, "note.json")
    ref = writer.register(run_id, pipeline, example=x.head(5), tags={})
    writer.end_run(run_id)
    assert writer.move_champion(expected=None, new=ref.version)

    location = _location(writer)
    assert location.startswith("mlflow-artifacts:"), location
    assert not local_root.exists(), "artifact_root was used with a tracking server"
    # The bytes went through the server into its --artifacts-destination.
    stored = [p for p in server.artifacts.rglob("model.skops") if p.parent.name == "artifacts"]
    assert ref.sha256 in {sha256_file(p) for p in stored}, stored

    bogus = tmp_path / "bogus" / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env |= {
        "MLFLOW_TRACKING_URI": f"sqlite:///{bogus}",
        "MLFLOW_REGISTRY_URI": f"sqlite:///{bogus}",
    }
    reader_home = tmp_path / "reader"
    reader_home.mkdir()
    rows = x.head(3)
    cache = str(reader_home / "cache")
    argv = [READER, server.url, name, cache, run_id, json.dumps(rows.to_dict(orient="list"))]
    out = subprocess.run(
        [sys.executable, "-c", *argv],
        cwd=reader_home,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["version"] == ref.version and seen["sha256"] == ref.sha256
    assert seen["inputs"] == ["a", "b"]
    assert seen["note"] == {"hello": "server"}
    np.testing.assert_allclose(seen["proba"], pipeline.predict_proba(rows)[:, 1])
    assert (reader_home / "cache" / f"v{ref.version}").is_dir()
    assert not bogus.parent.exists(), "the reader touched the global tracking URI"


def test_a_tracking_server_never_gets_a_file_artifact_location(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guard: with a server, the experiment is created without a `file:` location."""
    name = f"guard-{uuid.uuid4().hex[:8]}"
    registry = Registry(tracking_uri=server.url, model_name=name, artifact_root=tmp_path / "pin")
    passed: list[str | None] = []
    create = registry.client.create_experiment

    def spy(experiment: str, artifact_location: str | None = None, **kw: Any) -> str:
        passed.append(artifact_location)
        return create(experiment, artifact_location=artifact_location, **kw)

    monkeypatch.setattr(registry.client, "create_experiment", spy)
    registry.start_run(name="probe", tags={})
    assert passed == [None]
    stored = _location(registry)
    assert not stored.startswith("file:"), stored
    assert artifact_location("HTTPS://mlflow.example", tmp_path, name) is None
    # The embedded default is unchanged: a store opened directly keeps the local root.
    embedded = artifact_location(f"sqlite:///{tmp_path}/m.db", tmp_path, name)
    assert embedded == (tmp_path / name).resolve().as_uri()
