"""The Bento is built with the same dependencies the project declares."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_bentofile_lists_every_runtime_dependency_of_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]["packages"]
    # BentoML is the builder itself; everything else must reach the image.
    missing = sorted(set(declared) - set(bento) - {d for d in declared if d.startswith("bentoml")})
    assert not missing, f"bentofile.yaml lacks {missing}"
