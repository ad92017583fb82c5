"""The pool's Prometheus metrics (defined in ``telemetry.metrics``), recorded where the pool already keeps its
figures, never per chunk:

- per batch, under the pool's lock (a few gauge sets against a batch of milliseconds or more): the device's
  last batch size, its weighted throughput; per out-of-memory and regrow: the counters and the budget in bytes;
- when scraped: queue depth and in-flight chunks per lane, summed over the process's open pools (weakly held,
  so a pool that is dropped stops counting without being closed), and a GPU worker's allocated memory.
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from typing import Protocol

from embedding.pool_queue import Lane
from telemetry.metrics import (
    EMBEDDING_ALLOCATED_BYTES,
    EMBEDDING_BATCH_TOKENS,
    EMBEDDING_BUDGET_BYTES,
    EMBEDDING_IN_FLIGHT,
    EMBEDDING_OOM_SHRINKS,
    EMBEDDING_QUEUE_DEPTH,
    EMBEDDING_REGROWS,
    EMBEDDING_TOKENS_PER_SECOND,
)

WEIGHT = 0.1
"""Weight of the newest batch in the device's throughput: steady over batch-size noise, yet a device that
slows down (thermal throttling, a neighbour on the GPU) shows it within a few dozen batches."""


class LaneLoad(Protocol):
    def lane_load(self) -> dict[Lane, tuple[int, int]]:
        """Per lane: chunks queued, chunks in batches being embedded."""
        ...


_pools: weakref.WeakSet[LaneLoad] = weakref.WeakSet()
_watching = threading.Lock()
_installed = False


def watch_lanes(pool: LaneLoad) -> None:
    """Count ``pool`` in the lane gauges until it closes (``unwatch_lanes``) or is collected."""
    global _installed
    with _watching:
        _pools.add(pool)
        if _installed:
            return
        for lane in Lane:
            name = lane.name.lower()
            EMBEDDING_QUEUE_DEPTH.labels(name).set_function(functools.partial(_lane_sum, lane, 0))
            EMBEDDING_IN_FLIGHT.labels(name).set_function(functools.partial(_lane_sum, lane, 1))
        _installed = True


def unwatch_lanes(pool: LaneLoad) -> None:
    with _watching:
        _pools.discard(pool)


def _lane_sum(lane: Lane, which: int) -> float:
    with _watching:
        pools = list(_pools)
    return float(sum(pool.lane_load()[lane][which] for pool in pools))


class DeviceMetrics:
    """One worker's metric children, looked up once; the throughput state lives here."""

    def __init__(self, key: str) -> None:
        self.key = key
        self._tps = EMBEDDING_TOKENS_PER_SECOND.labels(key)
        self._batch = EMBEDDING_BATCH_TOKENS.labels(key)
        self._shrinks = EMBEDDING_OOM_SHRINKS.labels(key)
        self._regrows = EMBEDDING_REGROWS.labels(key)
        self._budget = EMBEDDING_BUDGET_BYTES.labels(key)
        self._tokens = 0.0
        self._seconds = 0.0

    def batch(self, tokens: int, padded: int, seconds: float) -> None:
        """A batch done: ``tokens`` real, ``padded`` as run. Throughput is the ratio of weighted sums (not a
        weighted mean of ratios, which a tiny fast batch would skew)."""
        if self._seconds == 0.0:
            self._tokens, self._seconds = float(tokens), seconds
        else:
            self._tokens += WEIGHT * (tokens - self._tokens)
            self._seconds += WEIGHT * (seconds - self._seconds)
        if self._seconds > 0:
            self._tps.set(self._tokens / self._seconds)
        self._batch.set(padded)

    def shrank(self, budget_bytes: float) -> None:
        self._shrinks.inc()
        self._budget.set(budget_bytes)

    def regrew(self, budget_bytes: float) -> None:
        self._regrows.inc()
        self._budget.set(budget_bytes)

    def budget(self, budget_bytes: float) -> None:
        self._budget.set(budget_bytes)

    def watch_cuda(self, torch_device: str) -> None:
        """Read what torch holds in tensors on ``torch_device`` when scraped (no device sync, no CUDA init)."""
        EMBEDDING_ALLOCATED_BYTES.labels(self.key).set_function(lambda: cuda_allocated(torch_device))


def cuda_allocated(torch_device: str) -> float:
    """``torch.cuda.memory_allocated``, or NaN where torch cannot tell: a scrape must never fail on it."""
    import torch

    try:
        return float(torch.cuda.memory_allocated(torch_device))
    except (RuntimeError, AssertionError, ValueError):
        return math.nan
