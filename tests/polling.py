"""Waiting, in tests, for what a background thread or process does: bounded, never a sleep."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(condition: Callable[[], object], within: float = 10.0, step: float = 0.01) -> bool:
    """Whether `condition()` became true within `within` seconds (checked every `step`)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True
