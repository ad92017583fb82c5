"""Recording into ragline's metrics (``telemetry.metrics``) what only flows know: a run's counts as it ends
(``flows.runs``), and the warm service's queues, read when scraped."""

from __future__ import annotations

from collections.abc import Callable

from flows.counts import Counts
from flows.planning import SourceRef
from telemetry.metrics import CHUNKS, DOCUMENTS, QUEUED, RUN_SECONDS, RUNNING, RUNS, SEARCHES, TOKENS

_EVENTS = ("committed", "quarantined", "deleted", "unchanged")


def record_run(source: SourceRef, outcome: str, counts: Counts, seconds: float) -> None:
    """What one run did, as it ends (any way it ends). Quarantines by reason and phase times are recorded as
    the pipeline meets them (``flows.watch``)."""
    name, tenant = source.name, source.tenant
    RUNS.labels(name, tenant, outcome).inc()
    for event in _EVENTS:
        value = getattr(counts, event)
        if value:
            DOCUMENTS.labels(name, tenant, event).inc(value)
    if counts.chunks_written:
        CHUNKS.labels(name, tenant, "embedded").inc(counts.chunks_written)
    if counts.chunks_reused:
        CHUNKS.labels(name, tenant, "reused").inc(counts.chunks_reused)
    if counts.embedded_tokens:
        TOKENS.labels(name, tenant).inc(counts.embedded_tokens)
    RUN_SECONDS.labels(name).observe(seconds)


def watch_service(queued: Callable[[], float], running: Callable[[], float], searches: Callable[[], float]) -> None:
    """Read the service's queues when scraped (the latest service of the process)."""
    QUEUED.set_function(queued)
    RUNNING.set_function(running)
    SEARCHES.set_function(searches)
