"""ragline's Prometheus metrics, all defined here (``prometheus_client``, the process's default registry) and
named and unitised by Prometheus' conventions, so that every layer records into the same names and the alert
rules and dashboards in ``deploy/`` have one place to look. ``ragline serve`` serves them at ``/metrics``; runs
outside it push them to a Pushgateway when one is set (``telemetry.push``).
"""

from __future__ import annotations

import threading

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

# What runs did, per source and its tenant (recorded where every run ends: flows/runs.py; quarantines and
# phase times as the pipeline meets them: flows/pipeline.py).
RUNS = Counter("ragline_runs", "Runs ended, by source and outcome.", ["source", "tenant", "outcome"])
DOCUMENTS = Counter(
    "ragline_documents", "Documents a run settled, by what happened to them.", ["source", "tenant", "event"]
)
QUARANTINED = Counter(
    "ragline_quarantined_documents",
    "Documents quarantined, by the reason recorded in the ledger (encrypted, truncated, parse_timeout...).",
    ["source", "tenant", "reason"],
)
CHUNKS = Counter(
    "ragline_chunks",
    "Chunks written: embedded by the model, or reused stored vectors.",
    ["source", "tenant", "how"],
)
TOKENS = Counter("ragline_embedded_tokens", "Tokens the model embedded.", ["source", "tenant"])
RUN_SECONDS = Histogram(
    "ragline_run_duration_seconds",
    "Wall time of runs.",
    ["source"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
)
PHASE_SECONDS = Histogram(
    "ragline_phase_duration_seconds",
    "Time of a pipeline phase: parse and chunk per document (in the parser process), embed and commit per batch"
    " of documents (commit: the group commit's transaction).",
    ["source", "phase"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
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

# -- sources ---------------------------------------------------------------------------------------------------
# Recorded by the one resilient HTTP layer (connectors/http.py, connectors/breaker.py), per attempt, so a source
# that throttles or flakes shows here even when its run ends well. Label children are looked up once per client.
SOURCE_REQUESTS = Counter(
    "ragline_source_requests",
    "HTTP attempts sent to a source, retries included, by outcome: the HTTP status code, or the transport "
    "error that left none (timeout, connect, transport).",
    ["source", "status"],
)
SOURCE_RETRIES = Counter(
    "ragline_source_retries",
    "Attempts to a source that failed transiently (429, 5xx, reset, timeout, unparseable 2xx body) and were "
    "retried after a backoff.",
    ["source"],
)
SOURCE_THROTTLED = Counter(
    "ragline_source_throttled",
    "Answers in which a source pushed back on our rate: 429, or 503 with Retry-After. Waits ragline imposes on "
    "itself (token bucket, shared quota) are not counted here: see ragline_source_wait_seconds_total.",
    ["source"],
)
SOURCE_WAIT_SECONDS = Counter(
    "ragline_source_wait_seconds",
    "Seconds calls to a source spent waiting instead of sending, by why: backoff (between retries, Retry-After "
    "included), bucket (the source's token bucket, provider rate-limit headers included), quota (the quota "
    "shared with other processes).",
    ["source", "why"],
)
SOURCE_BREAKER_OPEN = Gauge(
    "ragline_source_breaker_open",
    "State of the source's circuit breaker, set on every transition: 1 open (calls refused), 0.5 half-open "
    "(one probe call let through), 0 closed. Keeps the last state after a run ends; a new run starts closed.",
    ["source"],
)

# -- embedding pool ----------------------------------------------------------------------------------------------
# Recorded by embedding/pool.py per batch (never per chunk) or read when scraped. A lane is one of the pool's two
# queues (interactive: small requests served first; bulk); a device is a pool worker's key (cpu, cuda:0).
EMBEDDING_QUEUE_DEPTH = Gauge(
    "ragline_embedding_queue_depth",
    "Chunks queued for embedding and not yet taken by a worker, per lane (the scaling signal, with "
    "ragline_embedding_in_flight_chunks). Read when scraped, over the process's open pools.",
    ["lane"],
)
EMBEDDING_IN_FLIGHT = Gauge(
    "ragline_embedding_in_flight_chunks",
    "Chunks in batches being embedded now, per lane of their request. Read when scraped.",
    ["lane"],
)
EMBEDDING_TOKENS_PER_SECOND = Gauge(
    "ragline_embedding_tokens_per_second",
    "Tokens a device embeds per second of batch time, exponentially weighted over its recent batches (each "
    "new batch weighs 0.1); padding not counted. Set after each batch.",
    ["device"],
)
EMBEDDING_BATCH_TOKENS = Gauge(
    "ragline_embedding_batch_tokens",
    "Padded tokens (chunks x longest chunk) of the last batch a device embedded: what its memory budget limits.",
    ["device"],
)
EMBEDDING_OOM_SHRINKS = Counter(
    "ragline_embedding_oom_shrinks",
    "Out-of-memory errors on a device, each of which halved its batch budget (the batch was re-queued).",
    ["device"],
)
EMBEDDING_REGROWS = Counter(
    "ragline_embedding_regrows",
    "Times a device's batch budget grew back after a streak of successful batches following a shrink.",
    ["device"],
)
EMBEDDING_BUDGET_BYTES = Gauge(
    "ragline_embedding_budget_bytes",
    "Device memory the pool allows one batch now: its padded-token budget at the model's full window priced by "
    "the calibrated memory model (within the free memory last probed x embedding.pool.memory_fraction). Set "
    "when the budget moves (calibration, shrink, regrow, memory probe).",
    ["device"],
)
EMBEDDING_ALLOCATED_BYTES = Gauge(
    "ragline_embedding_allocated_bytes",
    "Device memory the pool's worker holds in tensors now (torch.cuda.memory_allocated), read when scraped; "
    "GPU devices only (a CPU worker's memory is not told apart from the process's).",
    ["device"],
)

# -- index builds and snapshots ------------------------------------------------------------------------------------
INDEX_BUILDS = Counter(
    "ragline_index_builds",
    "Indexes built on chunks (after a bulk load dropped them, or by repair): kind hnsw (a generation's vector "
    "index) or full_text (the GIN index).",
    ["kind"],
)
INDEX_BUILD_SECONDS = Histogram(
    "ragline_index_build_duration_seconds",
    "Wall time of index builds (either kind); writes to chunks wait meanwhile.",
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
# The snapshot gauges are exported only by a process that watches the snapshot destination (``expose``): a CLI
# run or a worker that knows nothing of snapshots must not report (or push) "no snapshot since 1970".
SNAPSHOT_LAST_SUCCESS = Gauge(
    "ragline_snapshot_last_success_timestamp_seconds",
    "Unix time the newest verified snapshot under snapshots.destination was written (its manifest's "
    "created_at); 0 when there is none. Read from the destination when scraped (cached 30 s), so it is right "
    "whoever took the snapshot and after a restart.",
    registry=None,
)
SNAPSHOT_SIZE = Gauge(
    "ragline_snapshot_size_bytes",
    "Bytes of the newest verified snapshot's table files (as its manifest lists them); 0 when there is none.",
    registry=None,
)
SNAPSHOT_SCHEDULE = Gauge(
    "ragline_snapshot_schedule_seconds",
    "Longest interval between two consecutive runs of snapshots.cron (over a year of its runs, wall clock): a "
    "newest snapshot older than this plus the time one takes means a scheduled snapshot was missed or failed. "
    "Exported only when snapshots are scheduled.",
    registry=None,
)
_exposed: set[int] = set()
_exposing = threading.Lock()


def expose(*metrics: Collector) -> None:
    """Register metrics defined with ``registry=None`` in the default registry, once each (idempotent)."""
    with _exposing:
        for metric in metrics:
            if id(metric) not in _exposed:
                REGISTRY.register(metric)
                _exposed.add(id(metric))


# -- drift: embedding drift per source against its baseline, and the model canary (flows/drift.py, flows/canary.py)
DRIFT_SCORE = Gauge(
    "ragline_drift_score",
    "Embedding drift score of the source's latest run that measured one, against the source's baseline "
    "(centroid shift in units of the baseline's spread + KS statistics; drift.threshold is the alert line).",
    ["source", "tenant"],
)
DRIFT_ALERT = Gauge(
    "ragline_drift_alert",
    "1 when the source's latest measured run drifted over drift.threshold (and significantly), else 0.",
    ["source", "tenant"],
)
CANARY_OK = Gauge(
    "ragline_canary_ok",
    "1 when the model canary's texts embed as stored for the model (name@revision), 0 on a mismatch: writes "
    "into that generation are stopped until resolved (`ragline canary accept`).",
    ["model"],
)
