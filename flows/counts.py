"""What a run did, counted: documents by decision and outcome, chunks, tokens and HTTP calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

Progress = Callable[[str, str], None]
"""Called with (event, external id): event is one of committed, quarantined, unchanged."""


@dataclass
class Counts:
    seen: int = 0
    unchanged: int = 0
    new: int = 0
    changed: int = 0
    retried: int = 0
    still_quarantined: int = 0
    committed: int = 0
    quarantined: int = 0
    deleted: int = 0
    deletions_held: int = 0
    """Documents gone from the source whose deletion the mass-delete guard holds (their chunks stay)."""
    chunks_written: int = 0
    """Chunks embedded by the model and written."""
    chunks_reused: int = 0
    """Chunks that took a stored vector instead: kept from the document's stored version, or written with the
    vector of a stored chunk of the same text and model (another document, source or tenant)."""
    embedded_tokens: int = 0
    bytes_read: int = 0
    """Bytes of source content read (files whose stat matched the ledger are not read at all)."""
    http_requests: int = 0
    http_retries: int = 0
    throttled: int = 0
    done_elsewhere: int = 0
    """Planned here but committed by a concurrent run (another worker claimed it first)."""

    def merge(self, other: Counts) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
