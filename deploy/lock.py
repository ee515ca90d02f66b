"""Resolve pyproject's dependencies (with the test extra) and write them as exact pins.

Why: pip's backtracking resolver, given ``-e .[test]``, can spend hours reconciling moto's
boto3 with the botocore that s3fs's aiobotocore pins. Installing against these pins is
fast, and CI, images and fresh checkouts get the same versions.

    .venv/bin/python deploy/lock.py            # rewrite deploy/constraints.txt
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "deploy" / "constraints.txt"


def requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["test"], "boto3"]


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp) / "requirements.txt"
        report = Path(tmp) / "report.json"
        reqs.write_text("\n".join(requirements()) + "\n")
        # Listed as direct requirements the resolver settles botocore early and finishes
        # in seconds; --ignore-installed so the pins do not depend on this venv.
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--dry-run",
                "--ignore-installed",
                "--report",
                str(report),
                "-r",
                str(reqs),
            ],
            check=True,
        )
        installed = json.loads(report.read_text())["install"]
    pins = sorted(
        f"{item['metadata']['name'].lower()}=={item['metadata']['version']}" for item in installed
    )
    header = (
        "# Exact versions for CI, images and fresh checkouts: `make lock` rewrites this file.\n"
        f"# Resolved on {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}.\n"
    )
    OUT.write_text(header + "\n".join(pins) + "\n")
    print(f"{len(pins)} pins written to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
