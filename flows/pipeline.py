"""The ingestion core, free of Prefect: plan against the ledger, then parse, chunk, embed and commit.

Documents are embedded in batches that span documents (one big ``encode`` is cheaper than many small ones)
and each batch is committed in one transaction (a group commit), every document version whole or absent, so
a crash loses at most the batches in flight and a re-run finishes them. With ``Writers`` the commits run on
connections of their own while the next batch is parsed and embedded; ``ingest`` returns only once every
batch it began is settled, so a cursor saved after it never runs ahead of the rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

import numpy as np
import psycopg

from connectors.base import DocumentError, ParsedDocument, RemoteSource, SourceDocument
from embedding.chunking import ChunkTooLongError, chunk_pages
from embedding.model import TextEmbedder
from flows.prefetch import prefetch
from flows.settings import RaglineSettings
from vectorstore import cursors, generations, indexing, ledger, store
from vectorstore.db import Connection
from vectorstore.generations import Generation
from vectorstore.ids import chunk_id
from vectorstore.indexing import IndexLoad, IndexOptions
from vectorstore.ledger import Decision, DocumentVersion, Fingerprints
from vectorstore.store import ChunkRow
from vectorstore.writers import Writers, Written

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
    done_elsewhere: int = 0
    """Planned here but committed by a concurrent run (another worker claimed it first)."""

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


@dataclass
class _InFlight:
    """A batch handed to a writer: its documents stay claimed until it is settled."""

    source_id: int
    pending: list[_Prepared]
    vectors: dict[uuid.UUID, np.ndarray]
    model_id: int
    counts: Counts
    progress: Progress | None
    future: Future[Written]


def claim_key(source_id: int, external_id: str) -> int:
    """The advisory lock of one document: a 64-bit hash, so concurrent runs agree on it without a table."""
    digest = hashlib.sha256(f"{source_id}\x1f{external_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Pipeline:
    """Parse, chunk, embed and commit documents through one connection.

    Concurrent runs over the same documents (several workers on one source set) claim each document with a
    session advisory lock before parsing it and re-read its ledger row once claimed: a document is processed
    by one run, the others skip it, and a run that dies releases its claims with its connection.

    With ``writers``, batches of a run-wide load (``begin_load``) are committed in the background, at most
    ``writers.count`` waiting or being written while the next is prepared; without, on ``conn``.
    """

    def __init__(
        self, conn: Connection, settings: RaglineSettings, embedder: TextEmbedder, writers: Writers | None = None
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.embedder = embedder
        self.writers = writers
        self._inflight: deque[_InFlight] = deque()
        self.fingerprints = pipeline_fingerprints(settings, embedder)
        self.index_options = IndexOptions.from_settings(settings.database)
        self._generation: Generation | None = None
        self._load: IndexLoad | None = None
        self._claims: set[int] = set()

    @property
    def model_key(self) -> str:
        return f"{self.embedder.settings.model}@{self.embedder.revision}"

    @property
    def generation(self) -> Generation:
        """The generation this pipeline writes: the serving one, or the one being built when the configured
        model differs from the model that serves search. A serving index lost with a killed load is rebuilt."""
        if self._generation is None:
            self._generation = generations.register(self.conn, self.embedder.identity, self.fingerprints.committed)
            if self._generation.state == "active":
                indexing.repair(self.conn, self.index_options)
        return self._generation

    def model_id(self) -> int:
        return self.generation.id

    def refresh_generation(self) -> None:
        """Forget the cached generation (after a switch, its state changed)."""
        self._generation = None

    def source_id(self, name: str, kind: str) -> int:
        """The ledger id of source ``name``, with the tenant its configuration names."""
        tenant = next((s.tenant for s in self.settings.sources if s.name == name), None)
        return ledger.ensure_source(self.conn, name, kind, tenant)

    def begin_load(self, expected_chunks: int | None = None) -> IndexLoad:
        """Start (or extend) this run's load: ``expected_chunks``, when known, lets a large load skip the live
        index from its first write instead of switching once it has grown."""
        if self._load is None:
            self._load = IndexLoad(self.conn, self.generation, self.index_options, expected=expected_chunks)
        elif expected_chunks is not None:
            self._load.expected = max(self._load.expected or 0, expected_chunks)
        return self._load

    def finish_quietly(self) -> None:
        """Finish the load without hiding an error already on its way out (a broken connection fails both);
        a build that fails here is done by the next run's repair."""
        try:
            self.finish_load()
        except Exception:  # logged; the caller's own error, if any, is the one raised
            log.warning("could not rebuild the index after a load; the next run will", exc_info=True)

    def expected_chunks(self, documents: int) -> int:
        """Chunks ``documents`` new documents will likely make, from this generation's chunks per document."""
        row = self.conn.execute(
            "SELECT count(*) AS chunks, count(DISTINCT document_id) AS docs FROM chunks WHERE model_id = %s",
            (self.model_id(),),
        ).fetchone()
        self.conn.commit()
        per_doc = row["chunks"] / row["docs"] if row and row["docs"] else 20.0
        return int(documents * per_doc)

    def finish_load(self) -> float:
        """End this run's load: an index dropped for it is built again (unless another load still runs)."""
        load, self._load = self._load, None
        return load.finish() if load is not None else 0.0

    def plan(self, source_id: int, documents: Iterable[SourceDocument], covers: Callable[[str], bool]) -> Plan:
        return plan(self.conn, source_id, documents, self.fingerprints, covers)

    def ingest(
        self,
        source_id: int,
        source_name: str,
        documents: Sequence[SourceDocument],
        progress: Progress | None = None,
    ) -> Counts:
        """Parse, chunk, embed and commit ``documents``; poison documents are quarantined, never fatal.

        Documents claimed by a concurrent run are left to it at first; at the end each is waited for and
        processed here only if that run did not commit it.
        """
        counts = Counts()
        pending: list[_Prepared] = []
        pending_chunks = 0
        contended: list[SourceDocument] = []
        try:
            for source_doc in documents:
                # Listed twice (paging over records that change meanwhile): its earlier batch is committed
                # first, and the second sight finds it done.
                if any(p.doc.external_id == source_doc.external_id for p in pending):
                    self._flush(source_id, pending, counts, progress)
                    pending, pending_chunks = [], 0
                if self._in_flight(source_id, source_doc.external_id):
                    self._drain()
                if not self._claim(source_id, source_doc, wait=False):
                    contended.append(source_doc)
                    continue
                if not self._still_due(source_id, source_doc, counts):
                    continue
                prepared = self._prepare(source_id, source_name, source_doc, counts, progress)
                if prepared is None:
                    self._release(source_id, [source_doc.external_id])
                    continue
                pending.append(prepared)
                pending_chunks += len(prepared.missing)
                if pending_chunks >= self.settings.batch_chunks:
                    self._flush(source_id, pending, counts, progress)
                    pending, pending_chunks = [], 0
            self._flush(source_id, pending, counts, progress)
            self._drain()
            for source_doc in contended:  # one at a time: never wait while holding another claim
                self._claim(source_id, source_doc, wait=True)
                if not self._still_due(source_id, source_doc, counts):
                    continue
                prepared = self._prepare(source_id, source_name, source_doc, counts, progress)
                if prepared is not None:
                    self._flush(source_id, [prepared], counts, progress)
                    self._drain()
                self._release(source_id, [source_doc.external_id])
        finally:
            self._abandon()  # batches an error left in flight: waited for, never half-settled
            self._release_all()  # whatever an error left claimed
        return counts

    def _claim(self, source_id: int, doc: SourceDocument, *, wait: bool) -> bool:
        key = claim_key(source_id, doc.external_id)
        if key in self._claims:
            return True
        if wait:
            self.conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            got = True
        else:
            row = self.conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (key,)).fetchone()
            got = bool(row and row["got"])
        self.conn.commit()
        if got:
            self._claims.add(key)
        return got

    def _release(self, source_id: int, external_ids: Sequence[str]) -> None:
        self._unlock([k for k in (claim_key(source_id, e) for e in external_ids) if k in self._claims])

    def _release_all(self) -> None:
        try:
            self._unlock(list(self._claims))
        except psycopg.Error:  # a broken connection: its session locks went with it
            log.warning("could not release document claims", exc_info=True)
            self._claims.clear()

    def _unlock(self, keys: list[int]) -> None:
        if not keys or self.conn.closed:
            return
        self.conn.rollback()  # an unlock inside a failed transaction would fail too
        for key in keys:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            self._claims.discard(key)
        self.conn.commit()

    def _still_due(self, source_id: int, doc: SourceDocument, counts: Counts) -> bool:
        """Once claimed, whether the document still needs work: a concurrent run may have committed (or
        quarantined) this very version since it was planned. Releases the claim when it does not."""
        entry = ledger.entries(self.conn, source_id, [doc.external_id]).get(doc.external_id)
        decision = ledger.decide(entry, doc.content_hash, self.fingerprints, ledger.now(self.conn))
        if decision in (Decision.UNCHANGED, Decision.QUARANTINED):
            counts.done_elsewhere += 1
            self._release(source_id, [doc.external_id])
            return False
        return True

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
        # Without a load begun for the whole run, this batch is a load of its own: a long-lived process (the
        # trigger endpoint) must never leave an index dropped for a load nobody finishes.
        scoped = self._load is None
        submitted = False
        try:
            vectors = self._embed([r for p in pending for r in p.missing], counts)
            model_id = self.model_id()
            load = self.begin_load()
            load.before_write(sum(len(p.missing) for p in pending))
            items = [store.DocumentCommit(p.doc, p.rows) for p in pending]
            writers = None if scoped else self.writers  # a load of its own is settled before it finishes
            if writers is not None:
                future = writers.submit(source_id, items, vectors, model_id)
            else:
                future = self._commit_here(source_id, items, vectors, model_id)
            self._inflight.append(_InFlight(source_id, pending, vectors, model_id, counts, progress, future))
            submitted = True
            while len(self._inflight) > (writers.count if writers is not None else 0):
                self._settle(self._inflight.popleft())
        finally:
            if not submitted:
                self._release(source_id, [p.doc.external_id for p in pending])  # no-op for released ones
            if scoped and not self.conn.closed:
                self.finish_quietly()

    def _committed(
        self, source_id: int, pending: list[_Prepared], written: list[int], counts: Counts, progress: Progress | None
    ) -> None:
        for p, n in zip(pending, written, strict=True):
            self._release(source_id, [p.doc.external_id])
            counts.committed += 1
            counts.chunks_written += n
            counts.chunks_reused += len(p.rows) - n
            if progress:
                progress("committed", p.doc.external_id)

    def _in_flight(self, source_id: int, external_id: str) -> bool:
        return any(
            f.source_id == source_id and any(p.doc.external_id == external_id for p in f.pending)
            for f in self._inflight
        )

    def _settle(self, flight: _InFlight) -> None:
        """Wait for a batch's group commit; if it failed, commit the batch here one document at a time, so a
        document that cannot be written fails alone and the batch's others still commit. Its documents are
        released either way."""
        try:
            try:
                done = flight.future.result()
                written, seconds = [c.written for c in done.committed], done.seconds
            except (store.StaleChunksError, psycopg.Error) as err:
                log.info("group commit of %d documents failed (%s): one at a time", len(flight.pending), err)
                started = time.perf_counter()
                written = self._commit_each(
                    flight.source_id, flight.pending, flight.vectors, flight.model_id, flight.counts
                )
                seconds = time.perf_counter() - started
            self._committed(flight.source_id, flight.pending, written, flight.counts, flight.progress)
            if self._load is not None:
                self._load.observe(sum(written), seconds)
        finally:
            self._release(flight.source_id, [p.doc.external_id for p in flight.pending])

    def _drain(self) -> None:
        """Settle every batch in flight, oldest first."""
        while self._inflight:
            self._settle(self._inflight.popleft())

    def _abandon(self) -> None:
        """On the way out of an error: wait for the batches in flight (committed or not, as their futures
        say), so nothing is still being written once ``ingest`` has returned."""
        while self._inflight:
            flight = self._inflight.popleft()
            try:
                flight.future.result()
            except Exception:  # the error already on its way out is the one raised
                log.warning("a background commit of %d documents failed", len(flight.pending), exc_info=True)

    def _commit_here(
        self,
        source_id: int,
        items: list[store.DocumentCommit],
        vectors: dict[uuid.UUID, np.ndarray],
        model_id: int,
    ) -> Future[Written]:
        """The group commit on this pipeline's connection, its outcome in a settled future: ``_settle`` treats it
        as a writer's (a failed batch is committed again one document at a time)."""
        future: Future[Written] = Future()
        started = time.perf_counter()
        try:
            committed = store.commit_documents(self.conn, source_id, items, vectors, model_id)
        except (store.StaleChunksError, psycopg.Error) as err:
            future.set_exception(err)
        else:
            future.set_result(Written(committed, time.perf_counter() - started))
        return future

    def _commit_each(
        self,
        source_id: int,
        pending: list[_Prepared],
        vectors: dict[uuid.UUID, np.ndarray],
        model_id: int,
        counts: Counts,
    ) -> list[int]:
        """One transaction per document on this pipeline's connection: a document whose chunks a concurrent
        writer removed is embedded whole and committed again."""
        written: list[int] = []
        for p in pending:
            one = [store.DocumentCommit(p.doc, p.rows)]
            try:
                [done_one] = store.commit_documents(self.conn, source_id, one, vectors, model_id)
            except store.StaleChunksError:
                # A concurrent writer removed chunks we meant to keep: embed the whole document and retry.
                vectors.update(self._embed(p.rows, counts))
                [done_one] = store.commit_documents(self.conn, source_id, one, vectors, model_id)
            written.append(done_one.written)
        return written

    def delete(self, document_ids: list[int], planned_at: datetime) -> int:
        return ledger.mark_deleted(self.conn, document_ids, planned_at)


def ingest_pdf_paths(pipeline: Pipeline, paths: Sequence[str], source: str = "pdf") -> Counts:
    """The whole PDF ingestion in this process without Prefect: for benchmarks, tests and embedding ragline
    as a library. The ``ingest-pdf`` flow runs the same steps as tasks."""
    from pathlib import Path

    from connectors.pdf import PdfConnector

    source_id = pipeline.source_id(source, "pdf")
    connector = PdfConnector([Path(p) for p in paths], pipeline.settings.pdf)
    planned = pipeline.plan(source_id, connector.iter_documents(), connector.covers)
    counts = planned.counts
    try:
        pipeline.begin_load(pipeline.expected_chunks(len(planned.work)))
        counts.merge(pipeline.ingest(source_id, source, planned.work))
    finally:
        pipeline.finish_load()
    counts.deleted += pipeline.delete(planned.deleted, planned.planned_at)
    return counts


def sync_remote(
    pipeline: Pipeline,
    source: str,
    connector: RemoteSource,
    counts: Counts | None = None,
    *,
    prefetch_depth: int = 2,
    progress: Progress | None = None,
) -> Counts:
    """Pull a remote source batch by batch from its saved cursor: each batch is planned against the ledger
    (unchanged records cost nothing), ingested, its deletions applied, and only then is its cursor saved.
    A crash resumes after the last saved batch; replaying a batch writes the same rows. The next pages are
    fetched while this one is embedded (``prefetch_depth``). ``counts`` is filled as the sync goes, so a
    failed sync still reports what it did."""
    source_id = pipeline.source_id(source, connector.kind)
    counts = Counts() if counts is None else counts
    pipeline.begin_load()  # a sync of unknown size: the index is dropped only once it proves large
    try:
        for batch in prefetch(connector.batches(cursors.load_cursor(pipeline.conn, source_id)), depth=prefetch_depth):
            ids = [d.external_id for d in batch.documents]
            planned = plan(pipeline.conn, source_id, batch.documents, pipeline.fingerprints, lambda _: False, only=ids)
            counts.merge(planned.counts)
            counts.merge(pipeline.ingest(source_id, source, planned.work, progress))
            if batch.deleted:
                known = ledger.entries(pipeline.conn, source_id, batch.deleted)
                counts.deleted += pipeline.delete([e.id for e in known.values()], planned.planned_at)
            cursors.save_cursor(pipeline.conn, source_id, batch.cursor)
    finally:
        _http_counts(connector, counts)
        pipeline.finish_load()
    return counts


def _http_counts(connector: object, counts: Counts) -> None:
    stats = getattr(getattr(connector, "client", None), "stats", None)
    if stats is not None:
        counts.http_requests, counts.http_retries, counts.throttled = stats.requests, stats.retries, stats.throttled
