"""Fetch ahead: a remote source's next page is requested while the current one is embedded and committed,
so a rate-limited source and the model both stay busy. The producer thread owns the connector's generator
(its client is used from that thread only); the consumer sees the same batches in the same order."""

from __future__ import annotations

import contextvars
import queue
import threading
from collections.abc import Generator, Iterator
from typing import TypeVar, cast

T = TypeVar("T")

_DONE = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def prefetch(items: Iterator[T], depth: int = 2) -> Generator[T, None, None]:
    """Yield ``items`` while up to ``depth`` of the next ones are produced in a thread. An exception in the
    producer is re-raised at its place in the sequence; closing the consumer stops the producer."""
    if depth < 1:
        yield from items
        return
    slots: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    break
            else:
                put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(_Failed(err))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    # In a copy of the caller's context: the source's calls nest under the run's trace span, current there.
    thread = threading.Thread(
        target=contextvars.copy_context().run, args=(produce,), name="ragline-prefetch", daemon=True
    )
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield cast(T, item)
    finally:
        stop.set()
        # A producer stuck in a long backoff is not waited for: it is a daemon, and it sees `stop` next.
        thread.join(timeout=10)
