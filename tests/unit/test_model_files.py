"""Unit tests of loading a downloaded model folder: digest, safe format, confined file name."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression

from champion.training.errors import IntegrityError
from champion.training.registry import load_verified


def _model_dir(root: Path, *, pickled: str) -> tuple[Path, str]:
    """A minimal MLflow model folder naming `pickled` as its model file."""
    folder = root / "model"
    folder.mkdir(parents=True)
    data = sio.dumps(LogisticRegression().fit([[0.0], [1.0]], [0, 1]))
    target = (folder / pickled).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    (folder / "MLmodel").write_text(
        "flavors:\n"
        "  sklearn:\n"
        f"    pickled_model: {pickled}\n"
        "    serialization_format: skops\n"
        "    sklearn_version: 1.5.0\n"
    )
    return folder, hashlib.sha256(data).hexdigest()


def test_a_model_file_inside_its_folder_loads(tmp_path):
    """It loads the skops file the MLmodel names, after checking its digest."""
    folder, digest = _model_dir(tmp_path, pickled="model.skops")
    model, found = load_verified(folder, expected_sha256=digest)
    assert found == digest and list(model.classes_) == [0, 1]


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_a_model_file_outside_its_folder_is_refused(tmp_path, where):
    """It refuses an artifact whose MLmodel points out of the model folder, digest or not."""
    name = "../outside.skops" if where == "relative" else str(tmp_path / "elsewhere.skops")
    folder, digest = _model_dir(tmp_path, pickled=name)
    with pytest.raises(IntegrityError, match="not a file inside the model folder"):
        load_verified(folder, expected_sha256=digest)


def test_a_changed_model_file_is_refused(tmp_path):
    """It refuses a file whose bytes do not match the recorded digest."""
    folder, _ = _model_dir(tmp_path, pickled="model.skops")
    with pytest.raises(IntegrityError, match="does not match"):
        load_verified(folder, expected_sha256="0" * 64)
