"""A hostile front for an emulated API: a per-second request limit enforced by the server (429 with
``Retry-After``), a share of calls failing the ways real APIs fail, and some slow answers. Used by the
acceptance test and by ``bench/throttled_sync.py``, so both see the same server."""

from __future__ import annotations

import random
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.support.fake_mediawiki import flaky
from tests.support.httpserver import Handler, Logged, Reply


@dataclass
class Hostile:
    inner: Handler
    limit_per_second: float
    fail_rate: float = 0.2
    slow_rate: float = 0.05
    slow_seconds: float = 0.3
    seed: int = 7
    throttled: int = 0
    failed: int = 0
    _recent: deque[float] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._faults = flaky(self.fail_rate, seed=self.seed)
        self._rng = random.Random(self.seed + 1)

    def __call__(self, req: Logged) -> Reply:
        with self._lock:
            while self._recent and self._recent[0] <= req.at - 1.0:
                self._recent.popleft()
            over = len(self._recent) >= self.limit_per_second
            self._recent.append(req.at)
            if over:
                self.throttled += 1
                return Reply(429, {"message": "You have reached your secondly limit."}, {"Retry-After": "1"})
            fault = self._faults(req)
            slow = self._rng.random() < self.slow_rate
        if fault is not None:
            with self._lock:
                self.failed += 1
            return fault
        reply = self.inner(req)
        if slow:
            reply.delay = self.slow_seconds
        return reply


def max_in_window(times: Sequence[float], window: float) -> int:
    """The most requests that arrived within any ``window`` seconds (a sliding window over sorted times)."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best
