"""The machine's clocks, the adapter of the `Clock` port."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class SystemClock:
    """Wall time for records, a monotonic clock for durations."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()
