"""Progress of a long ingest, reported to whoever listens in this process (the CLI's progress bar)."""

from __future__ import annotations

from typing import Protocol


class Listener(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, event: str, external_id: str) -> None: ...
    def finish(self) -> None: ...


_listener: Listener | None = None


def listen(listener: Listener | None) -> None:
    global _listener
    _listener = listener


def start(total: int) -> None:
    if _listener is not None:
        _listener.start(total)


def report(event: str, external_id: str) -> None:
    if _listener is not None:
        _listener.advance(event, external_id)


def finish() -> None:
    if _listener is not None:
        _listener.finish()
