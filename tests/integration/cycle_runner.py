"""Runs one cycle in a child process; with PAUSE_AT set, it stops at that stage for a kill."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from champion.service.root import build
from champion.training.cycle import run_cycle


def main() -> int:
    pause_at = os.environ.get("PAUSE_AT")
    marker = Path(os.environ.get("PAUSE_MARKER", "paused"))

    def checkpoint(stage: str) -> None:
        if stage == pause_at:
            marker.write_text(stage)
            time.sleep(600)

    ctx = build().cycle_context(progress=False, checkpoint=checkpoint)
    result = run_cycle(ctx, trigger="child")
    sys.stdout.write(result.verdict.value + "\n")
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
