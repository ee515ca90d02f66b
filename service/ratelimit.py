"""A token bucket: how many labels one worker takes per second, with a bounded burst."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """`rate` tokens a second up to `burst`; `take(n)` spends n or says how long to wait."""

    def __init__(
        self, *, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._lock = threading.Lock()

    def take(self, n: int) -> float:
        """Spend `n` tokens and return 0, or spend none and return the seconds until n fit."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if n <= self._tokens:
                self._tokens -= n
                return 0.0
            return (min(n, self.burst) - self._tokens) / self.rate
