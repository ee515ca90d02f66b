"""The benchmark harness runs end to end in quick mode and reports every section (no timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]

LOAD_KEYS = {"tool", "connections", "seconds", "requests", "errors", "rps", "p50_ms", "p99_ms"}


def _leftovers(workdir: str) -> list[str]:
    """Live processes that belong to the benchmark's work folder (servers it started)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            cwd = p.info["cwd"] or ""
            home = p.environ().get("BENTOML_HOME", "")
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if workdir in cmd or cwd.startswith(workdir) or home.startswith(workdir):
            found.append(f"{p.info['pid']}: {cmd[:120]}")
    return found


@pytest.mark.timeout(480)
def test_quick_benchmark_writes_every_section(tmp_path: Path) -> None:
    """It runs `python -m benchmarks.run --quick`, writes JSON + Markdown, stops its servers."""
    out = tmp_path / "results.json"
    md = tmp_path / "performance.md"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.run",
            "--quick",
            "--out",
            str(out),
            "--markdown",
            str(md),
        ],
        cwd=ROOT,
        env=dict(os.environ, BENTOML_DO_NOT_TRACK="true"),
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    results = json.loads(out.read_text())

    assert {
        "meta",
        "setup",
        "single_row",
        "head_to_head",
        "batch",
        "monitoring",
        "swap",
        "cold_start",
        "retrain",
        "targets",
    } <= set(results)
    meta = results["meta"]
    assert meta["mode"] == "quick"
    assert {"nproc", "cpu_model"} <= set(meta["machine"])
    assert {"python", "bentoml", "mlflow", "scikit-learn", "numpy"} <= set(meta["versions"])
    assert meta["loadgen"]

    # The primary champion is the one the shipped contract's own search picks; the forced
    # forest and gbt versions are secondary.
    setup = results["setup"]
    default = setup["default_champion"]
    assert default["family"] and default["runtime"] and default["version"]
    assert setup["models"]["default"] == default
    assert setup["models"]["forest"]["family"] == "random_forest"
    assert setup["models"]["gbt"]["family"] == "hist_gradient_boosting"

    # 1. single row: the champion (default, then the secondary versions) and the no-op at the
    # one quick level, nothing failed, the workers' CPU time per answered request measured.
    for service in ("champion", "champion_forest", "champion_gbt", "noop"):
        levels = results["single_row"][service]
        assert list(levels) == ["32"], levels
        assert set(levels["32"]) >= LOAD_KEYS
        assert levels["32"]["requests"] > 0
        assert levels["32"]["errors"] == 0
        assert levels["32"]["cpu_ms_per_request"] > 0
    assert "skipped" in results["single_row"]["mlflow"]
    assert "skipped" in results["head_to_head"]  # full mode only

    # 2. batch: served rows/s against in-process rows/s.
    batch = results["batch"]
    assert batch["service"]["rows_per_s"] > 0
    assert batch["in_process"]["rows_per_s"] > 0
    assert batch["ratio"] is not None
    assert batch["validate_batch"]["ms_per_call"] > 0
    assert batch["service"]["cpu_ms_per_request"] > 0

    # 3. monitoring: drift evaluation of 30 features over 10,000 rows.
    drift = results["monitoring"]["drift"]
    assert drift["features"] == 30 and drift["window_rows"] == 10_000
    assert drift["evaluate_seconds_median"] > 0

    # 4. swap: the promoted version answers, every request answered.
    swap = results["swap"]
    assert {"windows", "swap_p99_ms", "steady_p99_ms", "errors", "requests"} <= set(swap)
    assert swap["serving_after"] == swap["to_version"]
    assert swap["from_version"] == default["version"]
    assert swap["errors"] == 0

    # 5. cold start and memory.
    for service in ("champion", "noop"):
        cold = results["cold_start"][service]
        assert cold["seconds"] > 0
        assert cold["worker_rss_mb_at_ready"] > 0

    # 6. retraining is not part of the quick mode.
    assert "skipped" in results["retrain"]

    # The v2 route, the open-loop rates and the BentoML stack ladder are measured too.
    assert results["single_row"]["champion_v2"]["32"]["ok"] > 0
    assert results["single_row"]["noop_lean"]["32"]["cpu_ms_per_request"] > 0
    steps = [s["key"] for s in results["stack"]["steps"]]
    assert steps[0] == "default" and "lean" in steps
    assert results["open_loop"]["servers"]

    names = [t["name"] for t in results["targets"]]
    assert len(names) == 16 and len(set(names)) == 16
    assert all(t["met"] in (True, False, None) for t in results["targets"])

    text = md.read_text()
    assert "## Targets" in text and "shared and loaded" in text
    assert f"a **{default['family']}** model" in text and "CPU ms/req" in text
    assert "secondary: champion, forced random_forest" in text

    assert _leftovers(meta["workdir"]) == []
    assert not Path(meta["workdir"]).exists()
