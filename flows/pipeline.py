"""The ingestion core, free of Prefect: parse, chunk, embed and commit the documents a plan found to do.

Documents are embedded in batches that span documents (one big ``encode`` is cheaper than many small ones)
and each batch is committed in one transaction (a group commit, ``flows.commits``), every document version
whole or absent, so a crash loses at most the batches in flight and a re-run finishes them. With ``Writers``
the commits run on connections of their own while the next batch is parsed and embedded; ``ingest`` returns
only once every batch it began is settled, so a cursor saved after it never runs ahead of the rows.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

import numpy as np

from connectors.base import DocumentError, DocumentGone, ParsedDocument, SourceDocument
from embedding.chunking import ChunkTooLongError, chunk_pages
from embedding.model import TextEmbedder
from flows.claims import Claims
from flows.commits import Commits, Prepared
from flows.counts import Counts, Progress
from flows.planning import Plan, SourceRef, count_decision, pipeline_fingerprints, plan
from flows.settings import RaglineSettings
from vectorstore import generations, indexing, ledger, store
from vectorstore.db import Connection
from vectorstore.generations import Generation
from vectorstore.ids import chunk_id
from vectorstore.indexing import IndexLoad, IndexOptions
from vectorstore.ledger import Decision, DocumentVersion
from vectorstore.store import ChunkRow
from vectorstore.writers import Writers

log = logging.getLogger(__name__)


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
        self.fingerprints = pipeline_fingerprints(settings, embedder)
        self.index_options = IndexOptions.from_settings(settings.database)
        self._generation: Generation | None = None
        self._load: IndexLoad | None = None
        self.claims = Claims(conn)
        self.commits = Commits(conn, self.claims, self._embed)

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

    def plan(
        self,
        source: SourceRef,
        documents: Iterable[SourceDocument],
        covers: Callable[[str], bool],
        *,
        only: list[str] | None = None,
    ) -> Plan:
        """``planning.plan`` with this pipeline's fingerprints; stat keys are trusted unless ``pdf.rehash``."""
        trust = not self.settings.pdf.rehash
        return plan(self.conn, source.id, documents, self.fingerprints, covers, only=only, trust_stat_keys=trust)

    def ingest(
        self,
        source: SourceRef,
        documents: Sequence[SourceDocument],
        progress: Progress | None = None,
        *,
        planned_at: datetime | None = None,
    ) -> Counts:
        """Parse, chunk, embed and commit ``documents``; poison documents are quarantined, never fatal.

        Documents claimed by a concurrent run are left to it at first; at the end each is waited for and
        processed here only if that run did not commit it. A document whose ledger row changed after
        ``planned_at`` (default: now) was done by another run, or by an earlier batch of this one.
        """
        since = planned_at or ledger.now(self.conn)
        counts = Counts()
        pending: list[Prepared] = []
        pending_chunks = 0
        contended: list[SourceDocument] = []
        try:
            for listed in documents:
                # Listed twice (paging over records that change meanwhile): its earlier batch is committed
                # first, and the second sight finds it done.
                if any(p.doc.external_id == listed.external_id for p in pending):
                    self._flush(source, pending, counts, progress)
                    pending, pending_chunks = [], 0
                if self.commits.holds(source.id, listed.external_id):
                    self._drain()
                if not self.claims.claim(source.id, listed.external_id, wait=False):
                    contended.append(listed)
                    continue
                prepared = self._claimed(source, listed, since, counts, progress)
                if prepared is None:
                    continue
                pending.append(prepared)
                pending_chunks += len(prepared.missing)
                if pending_chunks >= self.settings.batch_chunks:
                    self._flush(source, pending, counts, progress)
                    pending, pending_chunks = [], 0
            self._flush(source, pending, counts, progress)
            self._drain()
            for listed in contended:  # one at a time: never wait while holding another claim
                self.claims.claim(source.id, listed.external_id, wait=True)
                prepared = self._claimed(source, listed, since, counts, progress)
                if prepared is not None:
                    self._flush(source, [prepared], counts, progress)
                    self._drain()
                self.claims.release(source.id, [listed.external_id])
        finally:
            self.commits.abandon()  # batches an error left in flight: waited for, never half-settled
            self.claims.release_all()  # whatever an error left claimed
        return counts

    def _claimed(
        self, source: SourceRef, listed: SourceDocument, since: datetime, counts: Counts, progress: Progress | None
    ) -> Prepared | None:
        """A claimed document, prepared if it still needs work; its claim is released when it does not."""
        doc = self._due(source, listed, since, counts, progress)
        prepared = self._prepare(source, doc, counts, progress) if doc is not None else None
        if prepared is None:
            self.claims.release(source.id, [listed.external_id])
        return prepared

    def _due(
        self, source: SourceRef, listed: SourceDocument, since: datetime, counts: Counts, progress: Progress | None
    ) -> SourceDocument | None:
        """Once claimed, the document if it still needs work, decided again against its ledger row: a
        concurrent run may have committed (or quarantined) this very version since the plan. A document read
        on demand is read here, once, and judged by what was read (a file only touched stays unchanged)."""
        doc = listed
        if listed.read is not None:
            try:
                content = listed.read()
            except DocumentGone:
                log.warning("%s disappeared before it could be ingested", listed.uri)
                return None
            counts.bytes_read += content.size
            doc = dataclasses.replace(
                listed, content_hash=content.content_hash, load=content.load, stat_key=content.stat_key, read=None
            )
        entry = ledger.entries(self.conn, source.id, [doc.external_id]).get(doc.external_id)
        decision = ledger.decide(entry, doc.content_hash, self.fingerprints, ledger.now(self.conn))
        if decision not in (Decision.UNCHANGED, Decision.QUARANTINED):
            count_decision(counts, decision)
            return doc
        if entry is not None and entry.updated_at is not None and entry.updated_at > since:
            counts.done_elsewhere += 1  # committed or quarantined by another run, or an earlier batch
            return None
        # Judged only now that it was read (its stat key had changed, or was never trusted): it is what the
        # ledger has, e.g. a file touched or copied over. Its new stat key spares the next run the read.
        if listed.read is not None:
            ledger.record_stat_key(self.conn, source.id, doc.external_id, doc.content_hash, doc.stat_key)
        count_decision(counts, decision)
        if progress and decision is Decision.UNCHANGED:
            progress("unchanged", doc.external_id)
        return None

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
            stat_key=doc.stat_key,
        )

    def _prepare(
        self, source: SourceRef, doc: SourceDocument, counts: Counts, progress: Progress | None
    ) -> Prepared | None:
        try:
            parsed = doc.load()
            chunks = chunk_pages(
                [(p.number, p.text) for p in parsed.pages],
                self.embedder.tokenizer,
                self.settings.embedding.chunking,
                self.embedder.max_seq_length,
            )
        except DocumentError as err:
            self._quarantine(source, doc, None, err, counts, progress)
            return None
        except ChunkTooLongError as err:
            self._quarantine(source, doc, parsed, DocumentError("oversize_text", str(err)), counts, progress)
            return None
        except Exception as err:
            log.exception("unexpected error on %s", doc.uri)
            error = DocumentError("internal", f"{type(err).__name__}: {err}", retryable=True)
            self._quarantine(source, doc, None, error, counts, progress)
            return None
        version = self._version(doc, parsed, self.fingerprints.committed)
        rows = [
            ChunkRow(
                id=chunk_id(source.name, doc.external_id, c.index, c.text, self.model_key),
                chunk_index=c.index,
                page=c.page,
                text=c.text,
                token_count=c.token_count,
            )
            for c in chunks
        ]
        present = store.existing_chunk_ids(self.conn, source.id, doc.external_id)
        missing = [r for r in rows if r.id not in present]
        return Prepared(version, rows, missing)

    def _quarantine(
        self,
        source: SourceRef,
        doc: SourceDocument,
        parsed: ParsedDocument | None,
        err: DocumentError,
        counts: Counts,
        progress: Progress | None,
    ) -> None:
        log.warning("quarantined %s: %s", doc.uri, err)
        ledger.quarantine(
            self.conn,
            source.id,
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

    def _flush(self, source: SourceRef, pending: list[Prepared], counts: Counts, progress: Progress | None) -> None:
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
            writers = None if scoped else self.writers  # a load of its own is settled before it finishes
            self.commits.submit(source.id, pending, vectors, model_id, counts, progress, writers)
            submitted = True
            self.commits.settle_beyond(writers.count if writers is not None else 0, self._observe)
        finally:
            if not submitted:
                self.claims.release(source.id, [p.doc.external_id for p in pending])  # no-op for released ones
            if scoped and not self.conn.closed:
                self.finish_quietly()

    def _observe(self, rows: int, seconds: float) -> None:
        if self._load is not None:
            self._load.observe(rows, seconds)

    def _drain(self) -> None:
        """Settle every batch in flight, oldest first."""
        self.commits.settle_beyond(0, self._observe)

    def delete(self, document_ids: list[int], planned_at: datetime) -> int:
        return ledger.mark_deleted(self.conn, document_ids, planned_at)
