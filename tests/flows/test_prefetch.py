"""Fetch-ahead keeps order, re-raises the producer's error in place, and stops the producer when the
consumer stops."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from flows.prefetch import prefetch


def test_order_and_values_are_kept() -> None:
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))
    assert list(prefetch(iter(range(5)), depth=0)) == list(range(5))


def test_an_error_arrives_after_the_items_before_it() -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise RuntimeError("source broke")

    gen = prefetch(items())
    assert [next(gen), next(gen)] == [1, 2]
    with pytest.raises(RuntimeError, match="source broke"):
        next(gen)


def test_the_producer_runs_ahead_by_at_most_depth_and_stops_with_the_consumer() -> None:
    produced: list[int] = []
    closed = threading.Event()

    def items() -> Iterator[int]:
        try:
            for i in range(1000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    gen = prefetch(items(), depth=2)
    assert next(gen) == 0
    gen.close()
    assert closed.wait(5)
    assert len(produced) <= 1 + 2 + 1  # the one consumed, the queue, and the one waiting to be put
