"""Group commits in flight and their settlement.

A flush of prepared documents is committed in one transaction, on a background writer's connection
(``Writers``) or on the pipeline's own. Either way its outcome is a future, settled oldest first: a batch whose
group commit failed is committed again one document at a time on the pipeline's connection, so a document
that cannot be written fails alone. A flush's documents stay claimed until it is settled.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import psycopg

from flows.claims import Claims
from flows.counts import Counts, Progress
from vectorstore import store
from vectorstore.db import Connection, DatabaseError
from vectorstore.ledger import DocumentVersion
from vectorstore.reuse import Vectors
from vectorstore.store import ChunkRow, Committed
from vectorstore.writers import Writers, Written

log = logging.getLogger(__name__)

Embed = Callable[[Sequence[ChunkRow], Counts], Vectors]
"""Vectors for chunk rows (stored ones where the same text has one), the model's work counted."""
Observe = Callable[[int, float], None]
"""Told (rows written, seconds) of every settled batch: the index-load cost model learns from it."""
Settled = Callable[[float, int, str | None], None]
"""Told of one batch as it is settled: (seconds its transaction took, when it was committed as
``time.time_ns()``, the error when it could not be): the batch's trace span and phase time."""


@dataclass
class Prepared:
    """A document parsed and chunked: its version, all its chunk rows, and those not stored yet."""

    doc: DocumentVersion
    rows: list[ChunkRow]
    missing: list[ChunkRow]


@dataclass
class _InFlight:
    source_id: int
    pending: list[Prepared]
    vectors: Vectors
    model_id: int
    counts: Counts
    progress: Progress | None
    future: Future[Written]
    settled: Settled | None
    done_ns: list[int]
    """When the future completed (stamped by its done callback, on the thread that committed)."""

    def stamp(self, _: Future[Written]) -> None:
        self.done_ns.append(time.time_ns())


class Commits:
    """The batches of one pipeline between their submission and their settlement."""

    def __init__(self, conn: Connection, claims: Claims, embed: Embed) -> None:
        self.conn = conn
        self.claims = claims
        self.embed = embed
        self._inflight: deque[_InFlight] = deque()

    def submit(
        self,
        source_id: int,
        pending: list[Prepared],
        vectors: Vectors,
        model_id: int,
        counts: Counts,
        progress: Progress | None,
        writers: Writers | None,
        settled: Settled | None = None,
    ) -> None:
        """Start the group commit of ``pending`` (on ``writers`` when given, else here, at once); ``settled``
        is told how it went once it is settled."""
        items = [store.DocumentCommit(p.doc, p.rows) for p in pending]
        if writers is not None:
            future = writers.submit(source_id, items, vectors.by_id, model_id)
        else:
            future = self._commit_here(source_id, items, vectors, model_id)
        flight = _InFlight(source_id, pending, vectors, model_id, counts, progress, future, settled, [])
        future.add_done_callback(flight.stamp)
        self._inflight.append(flight)

    def settle_beyond(self, limit: int, observe: Observe | None) -> None:
        """Settle the oldest batches until at most ``limit`` are in flight."""
        while len(self._inflight) > limit:
            self._settle(self._inflight.popleft(), observe)

    def holds(self, source_id: int, external_id: str) -> bool:
        """Whether a batch in flight carries this document."""
        return any(
            f.source_id == source_id and any(p.doc.external_id == external_id for p in f.pending)
            for f in self._inflight
        )

    def abandon(self) -> None:
        """On the way out of an error: wait for the batches in flight, so nothing is still being written once
        the caller has returned; those that committed are counted (their claims go with the caller's)."""
        while self._inflight:
            flight = self._inflight.popleft()
            try:
                done = flight.future.result()
            except Exception as err:  # the error already on its way out is the one raised
                log.warning("a background commit of %d documents failed", len(flight.pending), exc_info=True)
                if flight.settled is not None:
                    flight.settled(0.0, time.time_ns(), f"{type(err).__name__}: {err}")
            else:
                self._count(flight, done.committed)
                if flight.settled is not None:
                    flight.settled(done.seconds, flight.done_ns[0] if flight.done_ns else time.time_ns(), None)

    def _settle(self, flight: _InFlight, observe: Observe | None) -> None:
        try:
            try:
                done = flight.future.result()
                committed, seconds = done.committed, done.seconds
                done_ns = flight.done_ns[0] if flight.done_ns else time.time_ns()
            except (store.StaleChunksError, psycopg.Error, DatabaseError) as err:
                log.info("group commit of %d documents failed (%s): one at a time", len(flight.pending), err)
                started = time.perf_counter()
                committed = self._commit_each(flight)
                seconds, done_ns = time.perf_counter() - started, time.time_ns()
            self._count(flight, committed)
            if flight.settled is not None:
                flight.settled(seconds, done_ns, None)
            if observe is not None:
                observe(sum(c.written for c in committed), seconds)
        finally:
            self.claims.release(flight.source_id, [p.doc.external_id for p in flight.pending])

    def _count(self, flight: _InFlight, committed: list[Committed]) -> None:
        """Chunks the model embedded for a document are written; the others (kept from its stored version,
        or written with a vector copied from a stored chunk of the same text) are reused."""
        counts = flight.counts
        for p, done in zip(flight.pending, committed, strict=True):
            embedded = [r for r in p.rows if r.id in done.written_ids and r.id not in flight.vectors.copied]
            counts.committed += 1
            counts.chunks_written += len(embedded)
            counts.chunks_reused += len(p.rows) - len(embedded)
            if flight.progress:
                flight.progress("committed", p.doc.external_id)

    def _commit_here(
        self,
        source_id: int,
        items: list[store.DocumentCommit],
        vectors: Vectors,
        model_id: int,
    ) -> Future[Written]:
        """The group commit on the pipeline's connection, its outcome in a settled future, so it is settled
        like a writer's."""
        future: Future[Written] = Future()
        started = time.perf_counter()
        try:
            committed = store.commit_documents(self.conn, source_id, items, vectors.by_id, model_id)
        except (store.StaleChunksError, psycopg.Error) as err:
            future.set_exception(err)
        else:
            future.set_result(Written(committed, time.perf_counter() - started))
        return future

    def _commit_each(self, flight: _InFlight) -> list[Committed]:
        """One transaction per document on the pipeline's connection: a document whose kept chunks a
        concurrent writer removed gets vectors for them too and is committed again."""
        committed: list[Committed] = []
        vectors = flight.vectors
        for p in flight.pending:
            one = [store.DocumentCommit(p.doc, p.rows)]
            try:
                [done] = store.commit_documents(self.conn, flight.source_id, one, vectors.by_id, flight.model_id)
            except store.StaleChunksError:
                vectors.update(self.embed([r for r in p.rows if r.id not in vectors.by_id], flight.counts))
                [done] = store.commit_documents(self.conn, flight.source_id, one, vectors.by_id, flight.model_id)
            committed.append(done)
        return committed
