"""Watching a run while the pipeline works: its OpenTelemetry spans, its phase times and its figures.

The pipeline's real structure is what the trace shows. A document's span (``ragline.document``) lasts from
its claim to its settlement (committed or quarantined); its ``ragline.parse`` and ``ragline.chunk`` children
carry the times measured in the parser process that did them. Embedding and committing work on batches that
span documents, so each batch has its own ``ragline.embed`` and ``ragline.commit`` spans under the run span,
linked to the documents in them (and the documents to them). A quarantine is an event on the document's span
with its reason, the span's status an error.

The pipeline tells a ``RunWatch`` what it measured; nothing here measures, decides or touches the store.
Attributes are computed only for spans that record: with tracing off a document costs a few calls.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from connectors.base import DocumentError, SourceDocument
from flows.counts import Counts
from flows.planning import SourceRef
from flows.preparing import Chunked
from telemetry import tracing
from telemetry.metrics import PHASE_SECONDS, QUARANTINED

PHASES = ("parse", "chunk", "embed", "commit")

_current: ContextVar[RunWatch | None] = ContextVar("ragline_run_watch", default=None)


@dataclass
class Figures:
    """What a run's phases took and how it batched: kept on its row (``runs.figures``) with its counts, for an
    operator with no Prometheus."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    """Summed per phase: parse and chunk per document (parser processes work in parallel, so their sum can
    exceed the run's wall time), embed and commit per batch."""
    batches: int = 0
    batch_chunks: list[int] = field(default_factory=list)
    """Chunks each batch sent to be embedded or reused, in order (a run's batches are few: ``batch_chunks``
    chunks each)."""

    def as_dict(self, counts: Counts, trace_id: str | None) -> dict[str, Any]:
        embed = self.seconds["embed"]
        sizes = self.batch_chunks
        return {
            "trace_id": trace_id,
            "phase_seconds": {phase: round(s, 6) for phase, s in self.seconds.items()},
            "embedded_tokens": counts.embedded_tokens,
            "tokens_per_second": round(counts.embedded_tokens / embed, 1) if embed > 0 else None,
            "batches": self.batches,
            "batch_chunks": {
                "min": min(sizes) if sizes else 0,
                "max": max(sizes) if sizes else 0,
                "mean": round(sum(sizes) / len(sizes), 1) if sizes else 0,
                "each": sizes[:1000],
            },
            "chunks_embedded": counts.chunks_written,
            "chunks_reused": counts.chunks_reused,
        }


class RunWatch:
    """One run's watcher: the span its documents and batches nest under, its phase histograms, its figures."""

    def __init__(self, source: SourceRef, span: Span | None = None) -> None:
        self.source = source
        self.span = span
        self.context = trace.set_span_in_context(span) if span is not None else None
        """The parent of documents and batches: the run's span (None: whatever is current)."""
        self.recording = span.is_recording() if span is not None else tracing.enabled()
        self.trace_id = tracing.trace_id(span) if span is not None else None
        """The run's trace id, None when not traced (read while the span records: an ended span says nothing)."""
        self.figures = Figures()
        self._phases = {phase: PHASE_SECONDS.labels(source.name, phase) for phase in PHASES}

    def phase(self, phase: str, seconds: float) -> None:
        self._phases[phase].observe(seconds)
        self.figures.seconds[phase] += seconds

    # Documents -------------------------------------------------------------------------------------------

    def document(self, doc: SourceDocument) -> Span | None:
        """A document's span, begun as it is claimed for work (None when not recording)."""
        if not self.recording:
            return None
        return tracing.tracer().start_span(
            "ragline.document",
            context=self.context,
            kind=SpanKind.INTERNAL,
            attributes={
                "ragline.document.external_id": doc.external_id,
                "url.full": tracing.safe_url(doc.uri),
                "ragline.source": self.source.name,
            },
        )

    def prepared(self, span: Span | None, chunked: Chunked) -> None:
        """A document parsed and chunked: its phase times, and its parse and chunk spans at the times the
        parser measured."""
        if chunked.started_ns:
            self.phase("parse", (chunked.parsed_ns - chunked.started_ns) / 1e9)
            self.phase("chunk", (chunked.chunked_ns - chunked.parsed_ns) / 1e9)
        if span is None or not span.is_recording():
            return
        span.set_attribute("ragline.document.chunks", len(chunked.chunks))
        span.set_attribute("ragline.document.tokens", sum(c.token_count for c in chunked.chunks))
        pages = chunked.document.metadata.get("page_count")
        if isinstance(pages, int):
            span.set_attribute("ragline.document.pages", pages)
        if chunked.started_ns:
            parent = trace.set_span_in_context(span)
            tracer = tracing.tracer()
            steps = {"ragline.parse.ahead": chunked.ahead}  # ahead: before the claim, so before this span began
            parse = tracer.start_span("ragline.parse", context=parent, start_time=chunked.started_ns, attributes=steps)
            parse.end(chunked.parsed_ns)
            chunk = tracer.start_span("ragline.chunk", context=parent, start_time=chunked.parsed_ns, attributes=steps)
            chunk.end(chunked.chunked_ns)

    def quarantined(self, span: Span | None, err: DocumentError) -> None:
        QUARANTINED.labels(self.source.name, self.source.tenant, err.reason).inc()
        if span is None or not span.is_recording():
            return
        span.add_event(
            "ragline.quarantined",
            {"ragline.quarantine.reason": err.reason, "ragline.quarantine.retryable": err.retryable},
        )
        span.set_status(Status(StatusCode.ERROR, f"quarantined: {err.reason}"))

    @staticmethod
    def settled(span: Span | None, outcome: str) -> None:
        """A document's end: committed, quarantined, or not finished (``abandoned``: the run failed)."""
        if span is None:
            return
        if span.is_recording():
            span.set_attribute("ragline.document.outcome", outcome)
            if outcome == "abandoned":
                span.set_status(Status(StatusCode.ERROR, "the run ended before this document was settled"))
        span.end()

    # Batches ---------------------------------------------------------------------------------------------

    def embedded(
        self, started_ns: int, ended_ns: int, chunks: int, embedded: int, tokens: int, documents: Sequence[Span]
    ) -> None:
        """One batch's vectors: ``chunks`` asked for, ``embedded`` of them by the model (the rest reused)."""
        self.phase("embed", (ended_ns - started_ns) / 1e9)
        self.figures.batches += 1
        self.figures.batch_chunks.append(chunks)
        if not self.recording:
            return
        span = self._batch_span("ragline.embed", started_ns, documents)
        span.set_attributes(
            {"ragline.batch.chunks": chunks, "ragline.batch.embedded_chunks": embedded, "ragline.batch.tokens": tokens}
        )
        span.end(ended_ns)

    def committing(self, started_ns: int, documents: Sequence[Span]) -> Span | None:
        """A batch handed to its group commit (ended by ``committed``)."""
        return self._batch_span("ragline.commit", started_ns, documents) if self.recording else None

    def committed(self, span: Span | None, seconds: float, done_ns: int, error: str | None) -> None:
        """A batch's group commit settled: its transaction took ``seconds`` and ended at ``done_ns``."""
        if error is None:
            self.phase("commit", seconds)
        if span is None:
            return
        if span.is_recording():
            span.set_attribute("ragline.commit.transaction_seconds", round(seconds, 6))
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
        span.end(done_ns)

    def _batch_span(self, name: str, started_ns: int, documents: Sequence[Span]) -> Span:
        links = [Link(d.get_span_context()) for d in documents]
        span = tracing.tracer().start_span(name, context=self.context, start_time=started_ns, links=links)
        span.set_attribute("ragline.batch.documents", len(documents))
        for document in documents:  # both ways: a document's trace view shows the batches it went through
            document.add_link(span.get_span_context())
        return span


def current(source: SourceRef) -> RunWatch:
    """The watch of the run of ``source`` in progress in this context, else a watch of its own (an ingest
    outside a recorded run: its phases are still measured, its documents' spans nest under whatever is
    current)."""
    watch = _current.get()
    if watch is not None and watch.source.id == source.id:
        return watch
    return RunWatch(source)


@contextmanager
def watching(watch: RunWatch) -> Iterator[RunWatch]:
    """Make ``watch`` the current run's, its span the current span (so a connector iterated here, or on a
    thread started in a copy of this context, nests its calls under the run)."""
    token = _current.set(watch)
    try:
        if watch.span is not None:
            with trace.use_span(watch.span, end_on_exit=False):
                yield watch
        else:
            yield watch
    finally:
        _current.reset(token)
