"""Recording a run: the one place where a run of a source starts, counts and ends in the ``runs`` table.

Every entry point (the CLI's no-op ingest, the Prefect flows, the on-demand endpoint, library use) records its
runs through ``recorded_run``, so the outcome rules (quarantined documents make a run
``completed_with_quarantine``, an error makes it ``failed`` whatever it did) live here alone, and so does
what watches a run: its trace span (``ragline.run``, the parent of its documents, batches and source calls),
its metrics, its figures and trace id on its row, its drift and its push to a Pushgateway.

The trace id is recorded only when the run is traced (``OTEL_EXPORTER_OTLP_ENDPOINT`` set, ``telemetry.tracing``):
an id with no spans behind it would send an operator looking for a trace that was never kept.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from opentelemetry.trace import Span, Status, StatusCode

from flows import drift, metrics
from flows.counts import Counts
from flows.pipeline import Pipeline
from flows.planning import SourceRef
from flows.watch import Figures, RunWatch, watching
from telemetry import push, tracing
from vectorstore import runs
from vectorstore.db import Connection, first_line
from vectorstore.runs import RunStatus

log = logging.getLogger(__name__)


def outcome(counts: Counts, error: str | None = None) -> RunStatus:
    """A run that quarantined documents is not a clean success; one that raised failed (whatever it did)."""
    if error is not None:
        return RunStatus.FAILED
    return RunStatus.COMPLETED_WITH_QUARANTINE if counts.quarantined else RunStatus.COMPLETED


@dataclass
class Run:
    """A run in progress: its row in ``runs``, its source, and what it has done so far."""

    id: int
    source: SourceRef
    counts: Counts = field(default_factory=Counts)
    started: float = field(default_factory=time.monotonic)
    status: RunStatus = RunStatus.RUNNING
    error: str | None = None
    watch: RunWatch | None = None
    """Its span, phase times and figures (``flows.watch``)."""

    @property
    def trace_id(self) -> str | None:
        """Its OpenTelemetry trace id (32 hex digits), None when it is not traced."""
        return self.watch.trace_id if self.watch is not None else None

    def figures(self) -> dict[str, Any]:
        """What ``runs.figures`` keeps: phase times, throughput and batches, with its trace id."""
        figures = self.watch.figures if self.watch is not None else Figures()
        return {"seconds": round(self.seconds, 3), **figures.as_dict(self.counts, self.trace_id)}

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


Report = Callable[[Run], None]
"""Told of a run once it is recorded as finished, failed ones included (the flows publish an artifact)."""


@contextmanager
def recorded_run(
    pipeline: Pipeline,
    source: SourceRef,
    *,
    flow_run_id: str | None = None,
    lease_id: uuid.UUID | None = None,
    report: Report | None = None,
    counts: Counts | None = None,
) -> Iterator[Run]:
    """Open a run of ``source`` (dead runs of the source are abandoned first), yield it for its counts (filled
    into ``counts`` when given, so a caller keeps them after a failure), and record how it ended. On an error
    the run is recorded as failed with what it did, then the error goes on; a failing ``report`` never hides
    it. The run's row is written on the pipeline's connection as it is then (a run that reconnected writes
    its end on the new one).

    The run's span is the current span inside (a connector iterated there nests its calls under it), and
    ends, flushed to the collector, once the run's end is recorded."""
    tracing.setup()
    span = tracing.tracer().start_span("ragline.run", attributes=_run_attributes(source, flow_run_id))
    watch = RunWatch(source, span)
    trace_id = watch.trace_id
    try:
        run_id = pipeline.retrying(lambda: runs.start_run(pipeline.conn, source.id, flow_run_id, lease_id, trace_id))
    except BaseException as err:
        _end_span(span, f"{type(err).__name__}: {first_line(err)}")
        raise
    run = Run(run_id, source, counts if counts is not None else Counts(), watch=watch)
    if span.is_recording():
        span.set_attribute("ragline.run.id", run_id)
        log.info("run %d of %s: trace %s", run_id, source.name, trace_id)
    try:
        with watching(watch):  # its end's recording, drift and push too: they are part of the run
            try:
                yield run
            except BaseException as err:
                run.error = f"{type(err).__name__}: {first_line(err)}"
                run.status = outcome(run.counts, run.error)
                try:
                    pipeline.retrying(lambda: _finish(pipeline.conn, run))
                    _watch_end(pipeline, run)
                    if report is not None:
                        report(run)
                except Exception:  # the run's own error is the one to raise
                    log.warning("could not record the end of failed run %d of %s", run.id, source.name, exc_info=True)
                raise
            run.status = outcome(run.counts)
            pipeline.retrying(lambda: _finish(pipeline.conn, run))
            _watch_end(pipeline, run)
            if report is not None:
                report(run)
    finally:
        _end_span(span, run.error, run)


def _run_attributes(source: SourceRef, flow_run_id: str | None) -> dict[str, str]:
    attributes = {"ragline.source": source.name, "ragline.source.kind": source.kind, "ragline.tenant": source.tenant}
    if flow_run_id is not None:
        attributes["prefect.flow_run.id"] = flow_run_id
    return attributes


def _end_span(span: Span, error: str | None, run: Run | None = None) -> None:
    """End the run's span with its outcome and counts, and send it (a CLI process may exit right after)."""
    if span.is_recording():
        if run is not None:
            span.set_attribute("ragline.run.outcome", run.status.value)
            for key in ("seen", "committed", "quarantined", "deleted", "chunks_written", "chunks_reused"):
                span.set_attribute(f"ragline.run.{key}", getattr(run.counts, key))
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
    span.end()
    if tracing.enabled():
        tracing.flush()


def _watch_end(pipeline: Pipeline, run: Run) -> None:
    """What watches a run's end, once its row is final: its metrics, its drift against its source's embedding
    baseline (kept on the run's row), and a push of the process's metrics to the Pushgateway when one is set
    (runs outside ``ragline serve``, which is scraped)."""
    metrics.record_run(run.source, run.status.value, run.counts, run.seconds)
    drift.check_run(pipeline, run)
    push.after_run(pipeline.settings, run.source.name)


def _finish(conn: Connection, run: Run) -> None:
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
        conn.rollback()  # an error left the transaction failed: the run's row is written in a fresh one
    runs.finish_run(conn, run.id, run.status, run.counts.as_dict(), run.error, run.figures())
