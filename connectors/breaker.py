"""A circuit breaker per source: after ``threshold`` consecutive failures it opens and calls fail fast;
after ``reset_seconds`` one probe is let through (half-open): success closes it, failure opens it again.

Its state is the gauge ``ragline_source_breaker_open`` (1 open, 0.5 half-open, 0 closed), set at each transition
as it happens: open when the threshold is crossed or a probe fails, half-open when the probe is let through
(the reset time passing alone changes nothing a caller sees), closed on a success."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum

from connectors.errors import CircuitOpenError
from telemetry.metrics import SOURCE_BREAKER_OPEN


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_GAUGE = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 0.5, BreakerState.OPEN: 1.0}


class CircuitBreaker:
    def __init__(
        self,
        source: str,
        threshold: int = 5,
        reset_seconds: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._lock = threading.Lock()
        self.opened_count = 0
        self._gauge = SOURCE_BREAKER_OPEN.labels(source)
        self._shown = BreakerState.CLOSED
        self._gauge.set(0.0)  # a new breaker (a new run's client) starts closed

    def _show(self, state: BreakerState) -> None:
        """Set the gauge on a transition (callers hold the lock); a call that changes nothing costs nothing."""
        if state is not self._shown:
            self._shown = state
            self._gauge.set(_GAUGE[state])

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state(self._clock())

    def _state(self, now: float) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if now - self._opened_at >= self.reset_seconds:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def before_call(self) -> None:
        """Raise ``CircuitOpenError`` unless a call may go out now."""
        with self._lock:
            state = self._state(self._clock())
            if state is BreakerState.CLOSED:
                return
            if state is BreakerState.HALF_OPEN and not self._probing:
                self._probing = True
                self._show(BreakerState.HALF_OPEN)
                return
            raise CircuitOpenError(
                self.source, f"circuit open after {self._failures} consecutive failures; not calling the source"
            )

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._probing = False
            self._show(BreakerState.CLOSED)

    def record_throttled(self) -> None:
        """The source answered but asked us to slow down (429): neither a success nor a failure. A probe so
        answered frees the probe slot, so the next call after the wait probes again instead of the breaker
        refusing calls for good."""
        with self._lock:
            self._probing = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            now = self._clock()
            if self._probing or self._failures >= self.threshold:
                if self._opened_at is None or self._probing:
                    self.opened_count += 1
                self._opened_at = now
                self._probing = False
                self._show(BreakerState.OPEN)
