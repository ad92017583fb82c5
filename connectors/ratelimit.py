"""A token bucket per source: every HTTP attempt (retries included) takes a token, so the configured rate is
never exceeded. Clock and sleep are injectable so the arithmetic is tested without waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self,
        rate: float,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(burst)
        self._last = clock()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def acquire(self) -> float:
        """Take one token, sleeping as long as needed; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._refill(now)
                if now < self._paused_until:
                    delay = self._paused_until - now
                elif self._tokens >= 1 - 1e-9:  # tolerance: a sub-ulp sleep would not move the clock
                    self._tokens = max(0.0, self._tokens - 1)
                    return waited
                else:
                    delay = (1 - self._tokens) / self.rate
            self._sleep(delay)
            waited += delay

    def pause_until(self, deadline: float) -> None:
        """The source said its quota is spent until ``deadline`` (clock time): nobody calls before then."""
        with self._lock:
            self._paused_until = max(self._paused_until, deadline)
            self._tokens = 0.0
