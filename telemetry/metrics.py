"""ragline's Prometheus metrics, all defined here (``prometheus_client``, the process's default registry) and
named and unitised by Prometheus' conventions, so that every layer records into the same names and the alert
rules and dashboards in ``deploy/`` have one place to look. ``ragline serve`` serves them at ``/metrics``; runs
outside it push them to a Pushgateway when one is set (``telemetry.push``).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# What runs did, per source (recorded where every run ends: flows/runs.py).
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
# The warm service (flows/serve_api.py): requests, queues and load shedding.
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
