"""The ingestion core, free of Prefect: parse, chunk, embed and commit the documents a plan found to do.

Documents are embedded in batches that span documents (one big ``encode`` is cheaper than many small ones)
and each batch is committed in one transaction (a group commit, ``flows.commits``), every document version
whole or absent, so a crash loses at most the batches in flight and a re-run finishes them. With ``Writers``
the commits run on connections of their own while the next batch is parsed and embedded; ``ingest`` returns
only once every batch it began is settled, so a cursor saved after it never runs ahead of the rows.

One concern at some 450 lines: the loop and the state it keeps. Claims, group commits, planning and parsing
live in their own modules; reconnecting stays here because it rebinds this state to the new connection.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TypeVar

import psycopg
from opentelemetry.trace import Span

from connectors.base import DocumentError, DocumentGone, Load, ParsedDocument, SourceDocument
from embedding.model import TextEmbedder
from flows.claims import Claims
from flows.commits import Commits, Prepared
from flows.counts import Counts, Progress
from flows.planning import Plan, SourceRef, count_decision, pipeline_fingerprints, plan
from flows.preparing import Chunked, parse_and_chunk
from flows.sandbox import ParseSandbox, ParseSettings
from flows.settings import RaglineSettings
from flows.watch import RunWatch, current
from vectorstore import generations, indexing, ledger, store
from vectorstore.db import Connection, disconnected, first_line
from vectorstore.generations import Generation
from vectorstore.ids import chunk_id
from vectorstore.indexing import IndexLoad, IndexOptions
from vectorstore.ledger import Decision, DocumentVersion
from vectorstore.reuse import Vectors, VectorSource
from vectorstore.store import ChunkRow
from vectorstore.writers import Writers

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_RECONNECTS = 5
"""Lost connections one ``ingest`` (or one ``retrying`` call) survives; each reconnect has its own time bound."""


@dataclass
class _Ingest:
    """One ``Pipeline.ingest`` call: what it counts, the documents in parse (oldest first), and the prepared
    documents waiting for their batch to fill."""

    source: SourceRef
    since: datetime
    counts: Counts
    progress: Progress | None
    watch: RunWatch
    parsing: deque[tuple[SourceDocument, Future[Chunked]]] = field(default_factory=deque)
    pending: list[Prepared] = field(default_factory=list)
    pending_chunks: int = 0
    decided: set[str] = field(default_factory=set)
    """Documents whose decision (new, changed...) is counted: a retry after a reconnect counts none twice."""
    settled: set[str] = field(default_factory=set)
    """Documents whose outcome is recorded (committed, quarantined, found done): a retry skips them."""
    spans: dict[str, Span] = field(default_factory=dict)
    """The trace spans of documents claimed and not settled yet (none when tracing is off)."""

    def holds(self, external_id: str) -> bool:
        return any(d.external_id == external_id for d, _ in self.parsing) or any(
            p.doc.external_id == external_id for p in self.pending
        )

    def decide(self, external_id: str, decision: Decision) -> None:
        if external_id not in self.decided:
            self.decided.add(external_id)
            count_decision(self.counts, decision)

    def report(self, event: str, external_id: str) -> None:
        """A document's outcome: settled for this run, its span ended, and told to the caller's progress."""
        self.settled.add(external_id)
        if self.spans:
            self.watch.settled(self.spans.pop(external_id, None), event)
        if self.progress is not None:
            self.progress(event, external_id)


class Pipeline:
    """Parse, chunk, embed and commit documents through one connection.

    Concurrent runs over the same documents (several workers on one source set) claim each document with a
    session advisory lock before parsing it and re-read its ledger row once claimed: a document is processed
    by one run, the others skip it, and a run that dies releases its claims with its connection.

    With ``writers``, batches of a run-wide load (``begin_load``) are committed in the background, at most
    ``writers.count`` waiting or being written while the next is prepared; without, on ``conn``.
    """

    def __init__(
        self,
        conn: Connection,
        settings: RaglineSettings,
        embedder: TextEmbedder,
        writers: Writers | None = None,
        parser: ParseSandbox | None = None,
        reconnect: Callable[[], Connection] | None = None,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.embedder = embedder
        self.writers = writers
        self.parser = parser or ParseSandbox(ParseSettings(isolate=False))
        """Where documents are parsed: the process's sandbox (``Services.parser``); without one, in this process."""
        self._reconnect = reconnect
        self.fingerprints = pipeline_fingerprints(settings, embedder)
        self.index_options = IndexOptions.from_settings(settings.database)
        self._generation: Generation | None = None
        self._load: IndexLoad | None = None
        self.reuse = VectorSource(lambda texts, tokens: self.embedder.embed(texts, token_counts=tokens))
        """Where chunk vectors come from: stored ones for text this generation already embedded, else the model."""
        self.parsed_ahead: dict[tuple[str, str], Chunked] = {}
        """Documents parsed and chunked ahead of their run (``flows.ahead``), by external id and content hash:
        the run takes the parse of the very bytes it read instead of parsing them again."""
        self.claims = Claims(conn)
        self.commits = Commits(conn, self.claims, self._vectors)

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

        def count() -> dict[str, int] | None:
            row = self.conn.execute(
                "SELECT count(*) AS chunks, count(DISTINCT document_id) AS docs FROM chunks WHERE model_id = %s",
                (self.model_id(),),
            ).fetchone()
            self.conn.commit()
            return row

        row = self.retrying(count)
        per_doc = row["chunks"] / row["docs"] if row and row["docs"] else 20.0
        return int(documents * per_doc)

    def finish_load(self) -> float:
        """End this run's load: an index dropped for it is built again (unless another load still runs)."""
        load, self._load = self._load, None
        if load is None:
            return 0.0

        def finish() -> float:
            load.conn = self.conn  # a reconnect in between gave the pipeline a new connection
            return load.finish()

        return self.retrying(finish)

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
        listed = list(documents)  # listed once: a retry after a reconnect plans the same documents
        return self.retrying(
            lambda: plan(self.conn, source.id, listed, self.fingerprints, covers, only=only, trust_stat_keys=trust)
        )

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
        since = planned_at or self.retrying(lambda: ledger.now(self.conn))
        run = _Ingest(source, since, Counts(), progress, current(source))
        remaining = list(documents)
        for attempt in range(MAX_RECONNECTS + 1):
            try:
                self._ingest(run, remaining)
                break
            except (psycopg.OperationalError, psycopg.InterfaceError) as err:
                if attempt == MAX_RECONNECTS or not self._reconnected(err):
                    raise
                # Whatever was not settled is done again: committed versions are whole or absent.
                remaining = [d for d in remaining if d.external_id not in run.settled]
        return run.counts

    def _ingest(self, run: _Ingest, documents: Sequence[SourceDocument]) -> None:
        source = run.source
        contended: list[SourceDocument] = []
        try:
            for listed in documents:
                # Listed twice (paging over records that change meanwhile): its earlier sight is committed
                # first, and the second finds it done.
                if run.holds(listed.external_id):
                    self._parse_all(run)
                    self._flush(run)
                if self.commits.holds(source.id, listed.external_id):
                    self._drain()
                if not self.claims.claim(source.id, listed.external_id, wait=False):
                    contended.append(listed)
                    continue
                self._start_parse(run, listed)
                while len(run.parsing) > self.parser.lookahead:
                    self._take_parsed(run)
            self._parse_all(run)
            self._flush(run)
            self._drain()
            for listed in contended:  # one at a time: never wait while holding another claim
                self.claims.claim(source.id, listed.external_id, wait=True)
                self._start_parse(run, listed)
                self._parse_all(run)
                self._flush(run)
                self._drain()
                self.claims.release(source.id, [listed.external_id])
        finally:
            for _, parse in run.parsing:
                parse.cancel()  # an error on its way out: parses not yet taken are dropped
            run.parsing.clear()
            run.pending, run.pending_chunks = [], 0
            self.commits.abandon()  # batches an error left in flight: waited for, never half-settled
            self.claims.release_all()  # whatever an error left claimed
            for span in run.spans.values():
                run.watch.settled(span, "abandoned")
            run.spans.clear()

    def retrying(self, work: Callable[[], T]) -> T:
        """``work`` (which uses ``self.conn``), done again on a new connection if the database went away."""
        for attempt in range(MAX_RECONNECTS + 1):
            try:
                return work()
            except (psycopg.OperationalError, psycopg.InterfaceError) as err:
                if attempt == MAX_RECONNECTS or not self._reconnected(err):
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises

    def _reconnected(self, err: BaseException) -> bool:
        """On a lost connection, a new one (``reconnect``, with backoff within its bound); False when ``err``
        is not a lost connection or this pipeline cannot reconnect."""
        if self._reconnect is None or not disconnected(self.conn, err):
            return False
        log.warning("lost the database connection (%s): reconnecting", first_line(err))
        started = time.monotonic()
        self.rebind(self._reconnect())
        log.warning("reconnected to the database after %.1f s; going on from the ledger", time.monotonic() - started)
        return True

    def rebind(self, conn: Connection) -> None:
        """Go on with ``conn``: document claims died with the old session, the load keeps its registration."""
        self.conn = conn
        self.claims = Claims(conn)
        self.commits = Commits(conn, self.claims, self._vectors)
        self._generation = None
        if self._load is not None:
            self._load.conn = conn

    def _start_parse(self, run: _Ingest, listed: SourceDocument) -> None:
        """A claimed document: parsed in the sandbox if it still needs work, else its claim released."""
        doc = self._due(run, listed)
        if doc is None:
            self.claims.release(run.source.id, [listed.external_id])
            return
        span = run.watch.document(doc)
        if span is not None:
            run.spans[doc.external_id] = span
        ahead = self.parsed_ahead.pop((doc.external_id, doc.content_hash), None)
        if ahead is not None:
            parsed: Future[Chunked] = Future()
            parsed.set_result(ahead)
            run.parsing.append((doc, parsed))
            return
        run.parsing.append((doc, self.submit_parse(doc.load)))

    def submit_parse(self, load: Load) -> Future[Chunked]:
        """``load`` parsed and chunked for this pipeline's model, in the parse sandbox."""
        tokenizer_dir = str(self.embedder.tokenizer.model_dir)
        chunking, window = self.settings.embedding.chunking, self.embedder.max_seq_length
        return self.parser.submit(partial(parse_and_chunk, load, tokenizer_dir, chunking, window))

    def _take_parsed(self, run: _Ingest) -> None:
        """The oldest parse, chunked into the pending batch (flushed once it holds enough chunks)."""
        doc, parse = run.parsing.popleft()
        prepared = self._prepare(run, doc, parse)
        if prepared is None:
            self.claims.release(run.source.id, [doc.external_id])
            return
        run.pending.append(prepared)
        run.pending_chunks += len(prepared.missing)
        if run.pending_chunks >= self.settings.batch_chunks:
            self._flush(run)

    def _parse_all(self, run: _Ingest) -> None:
        while run.parsing:
            self._take_parsed(run)

    def _due(self, run: _Ingest, listed: SourceDocument) -> SourceDocument | None:
        """Once claimed, the document if it still needs work, decided again against its ledger row: a
        concurrent run may have committed (or quarantined) this very version since the plan. A document read
        on demand is read here, once, and judged by what was read (a file only touched stays unchanged)."""
        source, counts = run.source, run.counts
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
            run.decide(doc.external_id, decision)
            return doc
        if entry is not None and entry.updated_at is not None and entry.updated_at > run.since:
            counts.done_elsewhere += 1  # committed or quarantined by another run, or an earlier batch
            run.settled.add(doc.external_id)
            return None
        # Judged only now that it was read (its stat key had changed, or was never trusted): it is what the
        # ledger has, e.g. a file touched or copied over. Its new stat key spares the next run the read.
        if listed.read is not None:
            ledger.record_stat_key(self.conn, source.id, doc.external_id, doc.content_hash, doc.stat_key)
        run.decide(doc.external_id, decision)
        if decision is Decision.UNCHANGED:
            run.report("unchanged", doc.external_id)
        else:
            run.settled.add(doc.external_id)
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

    def _prepare(self, run: _Ingest, doc: SourceDocument, parse: Future[Chunked]) -> Prepared | None:
        """A parsed and chunked document with the chunks not stored yet; a document that failed to parse or
        chunk (or went over a parse limit) is quarantined."""
        source = run.source
        try:
            chunked = parse.result()
            parsed, chunks = chunked.document, chunked.chunks
        except DocumentError as err:
            self._quarantine(run, doc, None, err)
            return None
        except Exception as err:
            log.exception("unexpected error on %s", doc.uri)
            error = DocumentError("internal", f"{type(err).__name__}: {err}", retryable=True)
            self._quarantine(run, doc, None, error)
            return None
        run.watch.prepared(run.spans.get(doc.external_id), chunked)
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

    def _quarantine(self, run: _Ingest, doc: SourceDocument, parsed: ParsedDocument | None, err: DocumentError) -> None:
        log.warning("quarantined %s: %s", doc.uri, err)
        ledger.quarantine(
            self.conn,
            run.source.id,
            self._version(doc, parsed, self.fingerprints.quarantined),
            err.reason,
            err.message,
            retryable=err.retryable,
        )
        run.watch.quarantined(run.spans.get(doc.external_id), err)
        run.counts.quarantined += 1
        run.report("quarantined", doc.external_id)

    def _vectors(self, rows: Sequence[ChunkRow], counts: Counts) -> Vectors:
        """Vectors of ``rows``: a text this generation already embedded (any document, source or tenant)
        takes the stored vector; only the rest is embedded, each distinct text once."""
        vectors = self.reuse.vectors(self.conn, self.model_id(), rows)
        counts.embedded_tokens += vectors.embedded_tokens
        return vectors

    def _flush(self, run: _Ingest) -> None:
        """Embed the pending batch and hand it to its group commit."""
        pending, source, counts = run.pending, run.source, run.counts
        run.pending, run.pending_chunks = [], 0
        if not pending:
            return
        # Without a load begun for the whole run, this batch is a load of its own: a long-lived process (the
        # trigger endpoint) must never leave an index dropped for a load nobody finishes.
        scoped = self._load is None
        submitted = False
        spans = [run.spans[p.doc.external_id] for p in pending if p.doc.external_id in run.spans]
        try:
            missing = [r for p in pending for r in p.missing]
            started = time.time_ns()
            vectors = self._vectors(missing, counts)
            embedded = len(missing) - len(vectors.copied)
            run.watch.embedded(started, time.time_ns(), len(missing), embedded, vectors.embedded_tokens, spans)
            model_id = self.model_id()
            load = self.begin_load()
            load.before_write(len(missing))
            writers = None if scoped else self.writers  # a load of its own is settled before it finishes
            span = run.watch.committing(time.time_ns(), spans)
            settled = partial(run.watch.committed, span)
            self.commits.submit(source.id, pending, vectors, model_id, counts, run.report, writers, settled)
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
