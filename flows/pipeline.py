"""The ingestion core, free of Prefect: plan against the ledger, then parse, chunk, embed and commit.

Documents are embedded in batches that span documents (one big ``encode`` is cheaper than many small ones)
but committed one by one, each in its own transaction, so a crash loses at most the batch in flight and a
re-run finishes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np

from connectors.base import DocumentError, ParsedDocument, RemoteSource, SourceDocument
from embedding.chunking import ChunkTooLongError, chunk_pages
from embedding.model import TextEmbedder
from flows.prefetch import prefetch
from flows.settings import RaglineSettings
from vectorstore import cursors, ledger, store
from vectorstore.db import Connection
from vectorstore.ids import chunk_id
from vectorstore.ledger import Decision, DocumentVersion, Fingerprints
from vectorstore.store import ChunkRow

log = logging.getLogger(__name__)

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
    chunks_written: int = 0
    chunks_reused: int = 0
    embedded_tokens: int = 0
    http_requests: int = 0
    http_retries: int = 0
    throttled: int = 0

    def merge(self, other: Counts) -> None:
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Plan:
    """What a run has to do: documents to (re)process, ledger ids to delete, and what it can skip."""

    work: list[SourceDocument] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    planned_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def empty(self) -> bool:
        return not self.work and not self.deleted


def pipeline_fingerprints(settings: RaglineSettings, embedder: TextEmbedder) -> Fingerprints:
    """A change of chunking or model re-processes committed documents (chunks whose text is unchanged keep
    their vectors: their ids do not change); a change of parse settings (passwords, limits) only retries
    quarantined ones."""

    def digest(parts: object) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    committed = digest(
        {"chunking": settings.embedding.chunking.model_dump(), "model": [embedder.settings.model, embedder.revision]}
    )
    return Fingerprints(committed=committed, quarantined=digest([committed, settings.pdf.fingerprint()]))


def plan(
    conn: Connection,
    source_id: int,
    documents: Iterable[SourceDocument],
    fingerprints: Fingerprints,
    covers: Callable[[str], bool],
    *,
    only: list[str] | None = None,
) -> Plan:
    """Compare what the source has with the ledger. ``covers(external_id)`` tells whether the source was
    listed completely where that document lived, i.e. whether its absence means it was deleted."""
    now = ledger.now(conn)
    known = ledger.entries(conn, source_id, only)
    result = Plan(planned_at=now)
    seen: set[str] = set()
    for doc in documents:
        seen.add(doc.external_id)
        result.counts.seen += 1
        decision = ledger.decide(known.get(doc.external_id), doc.content_hash, fingerprints, now)
        if decision is Decision.UNCHANGED:
            result.counts.unchanged += 1
        elif decision is Decision.QUARANTINED:
            result.counts.still_quarantined += 1
        else:
            result.work.append(doc)
            if decision is Decision.NEW:
                result.counts.new += 1
            elif decision is Decision.CHANGED:
                result.counts.changed += 1
            else:
                result.counts.retried += 1
    result.deleted = [
        entry.id
        for external_id, entry in known.items()
        if entry.status != "deleted" and external_id not in seen and covers(external_id)
    ]
    return result


@dataclass
class _Prepared:
    doc: DocumentVersion
    rows: list[ChunkRow]
    missing: list[ChunkRow]


class Pipeline:
    def __init__(self, conn: Connection, settings: RaglineSettings, embedder: TextEmbedder) -> None:
        self.conn = conn
        self.settings = settings
        self.embedder = embedder
        self.fingerprints = pipeline_fingerprints(settings, embedder)
        self._model_id: int | None = None

    @property
    def model_key(self) -> str:
        return f"{self.embedder.settings.model}@{self.embedder.revision}"

    def model_id(self) -> int:
        if self._model_id is None:
            self._model_id = store.ensure_model(self.conn, self.embedder.identity)
        return self._model_id

    def plan(self, source_id: int, documents: Iterable[SourceDocument], covers: Callable[[str], bool]) -> Plan:
        return plan(self.conn, source_id, documents, self.fingerprints, covers)

    def ingest(
        self,
        source_id: int,
        source_name: str,
        documents: Sequence[SourceDocument],
        progress: Progress | None = None,
    ) -> Counts:
        """Parse, chunk, embed and commit ``documents``; poison documents are quarantined, never fatal."""
        counts = Counts()
        pending: list[_Prepared] = []
        pending_chunks = 0
        for source_doc in documents:
            prepared = self._prepare(source_id, source_name, source_doc, counts, progress)
            if prepared is None:
                continue
            pending.append(prepared)
            pending_chunks += len(prepared.missing)
            if pending_chunks >= self.settings.batch_chunks:
                self._flush(source_id, pending, counts, progress)
                pending, pending_chunks = [], 0
        self._flush(source_id, pending, counts, progress)
        return counts

    def _version(self, doc: SourceDocument, parsed: ParsedDocument | None, fingerprint: str) -> DocumentVersion:
        metadata = dict(doc.metadata)
        page_count = None
        if parsed is not None:
            metadata.update(parsed.metadata)
            page_count = parsed.metadata.get("page_count")
        return DocumentVersion(
            external_id=doc.external_id,
            uri=doc.uri,
            title=parsed.title if parsed else doc.title,
            content_hash=doc.content_hash,
            fingerprint=fingerprint,
            source_modified_at=doc.modified,
            page_count=page_count,
            metadata=metadata,
        )

    def _prepare(
        self,
        source_id: int,
        source_name: str,
        doc: SourceDocument,
        counts: Counts,
        progress: Progress | None,
    ) -> _Prepared | None:
        try:
            parsed = doc.load()
            chunks = chunk_pages(
                [(p.number, p.text) for p in parsed.pages],
                self.embedder.tokenizer,
                self.settings.embedding.chunking,
                self.embedder.max_seq_length,
            )
        except DocumentError as err:
            self._quarantine(source_id, doc, None, err, counts, progress)
            return None
        except ChunkTooLongError as err:
            self._quarantine(source_id, doc, parsed, DocumentError("oversize_text", str(err)), counts, progress)
            return None
        except Exception as err:
            log.exception("unexpected error on %s", doc.uri)
            error = DocumentError("internal", f"{type(err).__name__}: {err}", retryable=True)
            self._quarantine(source_id, doc, None, error, counts, progress)
            return None
        version = self._version(doc, parsed, self.fingerprints.committed)
        rows = [
            ChunkRow(
                id=chunk_id(source_name, doc.external_id, c.index, c.text, self.model_key),
                chunk_index=c.index,
                page=c.page,
                text=c.text,
                token_count=c.token_count,
            )
            for c in chunks
        ]
        present = store.existing_chunk_ids(self.conn, source_id, doc.external_id)
        missing = [r for r in rows if r.id not in present]
        return _Prepared(version, rows, missing)

    def _quarantine(
        self,
        source_id: int,
        doc: SourceDocument,
        parsed: ParsedDocument | None,
        err: DocumentError,
        counts: Counts,
        progress: Progress | None,
    ) -> None:
        log.warning("quarantined %s: %s", doc.uri, err)
        ledger.quarantine(
            self.conn,
            source_id,
            self._version(doc, parsed, self.fingerprints.quarantined),
            err.reason,
            err.message,
            retryable=err.retryable,
        )
        counts.quarantined += 1
        if progress:
            progress("quarantined", doc.external_id)

    def _embed(self, rows: Sequence[ChunkRow], counts: Counts) -> dict[uuid.UUID, np.ndarray]:
        vectors = self.embedder.embed([r.text for r in rows], token_counts=[r.token_count for r in rows])
        counts.embedded_tokens += sum(r.token_count for r in rows)
        return {r.id: vectors[i] for i, r in enumerate(rows)}

    def _flush(self, source_id: int, pending: list[_Prepared], counts: Counts, progress: Progress | None) -> None:
        if not pending:
            return
        vectors = self._embed([r for p in pending for r in p.missing], counts)
        model_id = self.model_id()
        for p in pending:
            try:
                store.commit_document(self.conn, source_id, p.doc, p.rows, vectors, model_id)
                written = len(p.missing)
            except store.StaleChunksError:
                # A concurrent writer removed chunks we meant to keep: embed the whole document and retry.
                vectors.update(self._embed(p.rows, counts))
                store.commit_document(self.conn, source_id, p.doc, p.rows, vectors, model_id)
                written = len(p.rows)
            counts.committed += 1
            counts.chunks_written += written
            counts.chunks_reused += len(p.rows) - written
            if progress:
                progress("committed", p.doc.external_id)

    def delete(self, document_ids: list[int], planned_at: datetime) -> int:
        return ledger.mark_deleted(self.conn, document_ids, planned_at)


def ingest_pdf_paths(pipeline: Pipeline, paths: Sequence[str], source: str = "pdf") -> Counts:
    """The whole PDF ingestion in this process without Prefect: for benchmarks, tests and embedding ragline
    as a library. The ``ingest-pdf`` flow runs the same steps as tasks."""
    from pathlib import Path

    from connectors.pdf import PdfConnector

    source_id = ledger.ensure_source(pipeline.conn, source, "pdf")
    connector = PdfConnector([Path(p) for p in paths], pipeline.settings.pdf)
    planned = pipeline.plan(source_id, connector.iter_documents(), connector.covers)
    counts = planned.counts
    counts.merge(pipeline.ingest(source_id, source, planned.work))
    counts.deleted += pipeline.delete(planned.deleted, planned.planned_at)
    return counts


def sync_remote(
    pipeline: Pipeline,
    source: str,
    connector: RemoteSource,
    counts: Counts | None = None,
    *,
    prefetch_depth: int = 2,
) -> Counts:
    """Pull a remote source batch by batch from its saved cursor: each batch is planned against the ledger
    (unchanged records cost nothing), ingested, its deletions applied, and only then is its cursor saved.
    A crash resumes after the last saved batch; replaying a batch writes the same rows. The next pages are
    fetched while this one is embedded (``prefetch_depth``). ``counts`` is filled as the sync goes, so a
    failed sync still reports what it did."""
    source_id = ledger.ensure_source(pipeline.conn, source, connector.kind)
    counts = Counts() if counts is None else counts
    try:
        for batch in prefetch(connector.batches(cursors.load_cursor(pipeline.conn, source_id)), depth=prefetch_depth):
            ids = [d.external_id for d in batch.documents]
            planned = plan(pipeline.conn, source_id, batch.documents, pipeline.fingerprints, lambda _: False, only=ids)
            counts.merge(planned.counts)
            counts.merge(pipeline.ingest(source_id, source, planned.work))
            if batch.deleted:
                known = ledger.entries(pipeline.conn, source_id, batch.deleted)
                counts.deleted += pipeline.delete([e.id for e in known.values()], planned.planned_at)
            cursors.save_cursor(pipeline.conn, source_id, batch.cursor)
    finally:
        _http_counts(connector, counts)
    return counts


def _http_counts(connector: object, counts: Counts) -> None:
    stats = getattr(getattr(connector, "client", None), "stats", None)
    if stats is not None:
        counts.http_requests, counts.http_retries, counts.throttled = stats.requests, stats.retries, stats.throttled
