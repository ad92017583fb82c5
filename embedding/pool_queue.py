"""The pool's work queue: requests, their chunks, and the two lanes batches are taken from. Not thread-safe on
its own: the pool calls it under its lock.

Each lane holds units (a request's chunks, or a re-queued batch), each sorted longest first, so a batch packed
from the head pads little; a re-queued batch goes back to the head of its lane.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from embedding.budget import take_batch


class Lane(IntEnum):
    """Served in this order."""

    INTERACTIVE = 0
    BULK = 1


class EmbeddingError(RuntimeError):
    """A request that could not be embedded; the message names the device, the chunk and the cause."""


class EmbedRequest:
    """A submitted request: ``result()`` waits for its vectors (in the order of its texts)."""

    def __init__(self, count: int, dim: int, lane: Lane, tokens: int) -> None:
        self.lane = lane
        self.tokens = tokens
        self.vectors = np.zeros((count, dim), dtype=np.float32)
        self._written = np.zeros(count, dtype=bool)
        self._remaining = count
        self._event = threading.Event()
        self.error: EmbeddingError | None = None
        if count == 0:
            self._event.set()

    def done(self) -> bool:
        return self._event.is_set()

    def result(self, timeout: float | None = None) -> np.ndarray:
        if not self._event.wait(timeout):
            raise TimeoutError(f"embedding request of {len(self.vectors)} chunks not done after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.vectors

    def put(self, index: int, vector: np.ndarray) -> bool:
        """Store chunk ``index``'s vector (the request is done with its last one); False when it was stored
        already, which is never expected: a chunk is in one place at a time."""
        if self._written[index]:
            return False
        self.vectors[index] = vector
        self._written[index] = True
        self._remaining -= 1
        if self._remaining == 0:
            self._event.set()
        return True

    def fail(self, error: EmbeddingError) -> bool:
        """End the request with ``error``; False when it had ended already."""
        if self.error is not None or self.done():
            return False
        self.error = error
        self._event.set()
        return True


@dataclass(eq=False)
class Item:
    """One chunk of a request, as queued and batched."""

    request: EmbedRequest
    index: int
    text: str
    tokens: int
    attempts: int = 0


class Lanes:
    def __init__(self) -> None:
        self._units: dict[Lane, deque[deque[Item]]] = {lane: deque() for lane in Lane}

    def add(self, lane: Lane, items: Iterable[Item]) -> None:
        self._units[lane].append(deque(sorted(items, key=lambda item: -item.tokens)))

    def take(self, budget: Callable[[int], int], max_items: int) -> list[Item]:
        """The next batch within ``budget`` (padded tokens for a padded length): from the interactive lane if
        it has work, else the bulk lane; empty when both are."""
        for lane in Lane:
            units = self._units[lane]
            if not units:
                continue
            count = take_batch((item.tokens for unit in units for item in unit), budget, max_items)
            batch: list[Item] = []
            while len(batch) < count:
                unit = units[0]
                batch.append(unit.popleft())
                if not unit:
                    units.popleft()
            return batch
        return []

    def push_front(self, items: Iterable[Item]) -> None:
        """Put ``items`` back at the head of their lanes, leaving out those of failed requests."""
        by_lane: dict[Lane, list[Item]] = {}
        for item in items:
            if item.request.error is None:
                by_lane.setdefault(item.request.lane, []).append(item)
        for lane, alive in by_lane.items():
            self._units[lane].appendleft(deque(sorted(alive, key=lambda item: -item.tokens)))

    def drop(self, request: EmbedRequest) -> None:
        """Remove ``request``'s queued chunks."""
        for lane in Lane:
            units = [deque(item for item in unit if item.request is not request) for unit in self._units[lane]]
            self._units[lane] = deque(unit for unit in units if unit)

    def clear(self) -> None:
        for units in self._units.values():
            units.clear()

    def count(self, lane: Lane) -> int:
        """Chunks waiting in ``lane``, without listing them."""
        return sum(len(unit) for unit in self._units[lane])

    def queued(self, lane: Lane | None = None) -> list[Item]:
        """The chunks waiting, in ``lane`` or in both."""
        lanes = list(Lane) if lane is None else [lane]
        return [item for each in lanes for unit in self._units[each] for item in unit]
