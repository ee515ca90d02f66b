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


def test_bentofile_ships_the_wheel_of_this_version() -> None:
    """It names the wheel `make bento` builds, for the version pyproject declares."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    wheels = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]["wheels"]
    assert wheels == [f"dist/champion-{version}-py3-none-any.whl"]


def test_the_distribution_installs_under_one_namespace() -> None:
    """It installs `champion.service`, `champion.training`, `champion.monitoring`, no bare
    top-level names that could collide with another project's `training`."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p.startswith("champion.") for p in tool["packages"])
    assert set(tool["package-dir"]) == {
        "champion.service",
        "champion.training",
        "champion.monitoring",
    }


def test_the_pins_satisfy_every_declared_dependency() -> None:
    """`make install` installs against deploy/constraints.txt: a dependency added to pyproject
    without `make lock` (or a pin outside its declared range) fails here, not in CI's pip."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    problems = []
    for text in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is None:
            problems.append(f"{req.name} is not pinned")
        elif not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req.name}=={pinned} is outside {req.specifier}")
    assert not problems, f"run `make lock`: {problems}"
