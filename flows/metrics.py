"""ragline's Prometheus metrics (``prometheus_client``, the process's default registry), named and unitised by
Prometheus' conventions: what runs did, per source, recorded where every run ends (``flows.runs``), and the
warm service's requests, queues and load shedding (``flows.serve_api``). ``ragline serve`` serves them at
``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from flows.counts import Counts

RUNS = Counter("ragline_runs", "Runs ended, by source and outcome.", ["source", "outcome"])
DOCUMENTS = Counter("ragline_documents", "Documents a run settled, by what happened to them.", ["source", "event"])
CHUNKS = Counter(
    "ragline_chunks", "Chunks written: embedded by the model, or reused stored vectors.", ["source", "how"]
)
TOKENS = Counter("ragline_embedded_tokens", "Tokens the model embedded.", ["source"])
RUN_SECONDS = Histogram(
    "ragline_run_duration_seconds",
    "Wall time of runs.",
    ["source"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
HTTP_REQUESTS = Counter("ragline_http_requests", "Requests answered by the service.", ["method", "route", "status"])
HTTP_SECONDS = Histogram(
    "ragline_http_request_duration_seconds",
    "Time to answer a request (a posted file's whole upload included).",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SHED = Counter("ragline_shed_requests", "Requests refused for load (429, 503), by what they asked.", ["what", "status"])
QUEUED = Gauge("ragline_trigger_queue_length", "On-demand runs admitted and waiting for a worker.")
RUNNING = Gauge("ragline_trigger_running", "On-demand runs running now.")
SEARCHES = Gauge("ragline_searches_in_flight", "Searches running or waiting for a slot.")

_EVENTS = ("committed", "quarantined", "deleted", "unchanged")


def record_run(source: str, outcome: str, counts: Counts, seconds: float) -> None:
    """What one run did, as it ends (any way it ends)."""
    RUNS.labels(source, outcome).inc()
    for event in _EVENTS:
        value = getattr(counts, event)
        if value:
            DOCUMENTS.labels(source, event).inc(value)
    if counts.chunks_written:
        CHUNKS.labels(source, "embedded").inc(counts.chunks_written)
    if counts.chunks_reused:
        CHUNKS.labels(source, "reused").inc(counts.chunks_reused)
    if counts.embedded_tokens:
        TOKENS.labels(source).inc(counts.embedded_tokens)
    RUN_SECONDS.labels(source).observe(seconds)


def watch_service(queued: Callable[[], float], running: Callable[[], float], searches: Callable[[], float]) -> None:
    """Read the service's queues when scraped (the latest service of the process)."""
    QUEUED.set_function(queued)
    RUNNING.set_function(running)
    SEARCHES.set_function(searches)
