"""Runs one cycle in a child process; with PAUSE_AT set, it stops at that stage for a kill."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from champion.training.config import Settings, load_contract
from champion.training.cycle import Context, run_cycle
from champion.training.ledger import Ledger
from champion.training.registry import Registry


def main() -> int:
    settings = Settings()
    contract = load_contract(settings.project_file)
    registry = Registry(
        tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
        model_name=contract.project.name,
        artifact_root=settings.artifact_root,
    )
    pause_at = os.environ.get("PAUSE_AT")
    marker = Path(os.environ.get("PAUSE_MARKER", "paused"))

    def checkpoint(stage: str) -> None:
        if stage == pause_at:
            marker.write_text(stage)
            time.sleep(600)

    ctx = Context(
        contract,
        settings,
        registry,
        Ledger(settings.ledger_path),
        progress=False,
        checkpoint=checkpoint,
    )
    result = run_cycle(ctx, trigger="child")
    sys.stdout.write(result.verdict.value + "\n")
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
